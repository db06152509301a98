//! Records the CPU features this crate is compiled for, so that a Lambda binary can be checked
//! for having been built for Lambda's CPUs rather than the build machine's (`infra/lambda-build.sh`).

fn main() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    println!("cargo:rustc-env=IFS_TARGET_FEATURES={features}");
    println!("cargo:rerun-if-env-changed=CARGO_CFG_TARGET_FEATURE");
}
