#!/usr/bin/env bash
# Builds every zip function for Lambda with cargo-lambda (release, x86_64, glibc of
# provided.al2023, Zig as the linker), prints each zip's size, and checks every bootstrap was
# compiled for x86-64-v3 — not for this machine's CPU, which .cargo/config.toml would give it.
# `infra/lambda-build.sh --check DIR…` only runs the check on bootstraps built elsewhere (sam build).
set -euo pipefail
cd "$(dirname "$0")/.."

functions=(ifs-signup ifs-login ifs-me ifs-logout ifs-dialogue ifs-dialogues ifs-messages)
# RUSTFLAGS replaces the rustflags of .cargo/config.toml (target-cpu=native) for this build.
export RUSTFLAGS="-C target-cpu=x86-64-v3"

features() { tr ',' '\n' | grep -v '^$' | sort | paste -sd, -; }
expected=$(rustc --print cfg $RUSTFLAGS --target x86_64-unknown-linux-gnu \
  | sed -n 's/^target_feature="\(.*\)"$/\1/p' | features)

check() { # bootstrap…
  local failed=0
  for bootstrap in "$@"; do
    local built
    built=$(grep -ao 'ifs-guide-target-features:[A-Za-z0-9_.,+-]*;' "$bootstrap" | head -n1 | cut -d: -f2 | tr -d ';' | features)
    if [ "$built" != "$expected" ]; then
      echo "$bootstrap: built for [$built], not x86-64-v3 [$expected]" >&2
      failed=1
    fi
  done
  return $failed
}

if [ "${1:-}" = "--check" ]; then
  shift
  bootstraps=()
  for dir in "$@"; do bootstraps+=("$dir/bootstrap"); done
  check "${bootstraps[@]}"
  echo "every bootstrap targets x86-64-v3"
  exit 0
fi

export PATH="$PWD/.cache/venv/bin:$PATH" # cargo-lambda and its Zig
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
packages=()
for function in "${functions[@]}"; do packages+=(--package "$function"); done
cargo lambda build --release --locked --output-format zip "${packages[@]}"

bootstraps=()
printf '%-16s %10s %10s\n' function zip bootstrap
for function in "${functions[@]}"; do
  dir=$target_dir/lambda/$function
  # The zip holds `bootstrap`, what Lambda runs: unpacked beside it for the checks and benchmarks.
  rm -f "$dir/bootstrap"
  python3 -m zipfile -e "$dir/bootstrap.zip" "$dir"
  chmod +x "$dir/bootstrap"
  bootstraps+=("$dir/bootstrap")
  awk -v f="$function" -v z="$(stat -c %s "$dir/bootstrap.zip")" -v b="$(stat -c %s "$dir/bootstrap")" \
    'BEGIN { printf "%-16s %9.1fM %9.1fM\n", f, z / 1048576, b / 1048576 }'
  [ "$(stat -c %s "$dir/bootstrap.zip")" -lt $((10 * 1048576)) ] || { echo "$function: zip over 10 MB" >&2; exit 1; }
done
check "${bootstraps[@]}"
echo "every bootstrap targets x86-64-v3"
