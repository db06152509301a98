//! Where login's signing key comes from on AWS: an SSM Parameter Store SecureString
//! (`JWT_PRIVATE_KEY_PARAMETER`), read once at cold start, so that the key is never in the
//! function's configuration, and no other function can read it.

use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_ssm::error::DisplayErrorContext;
use secrecy::SecretString;

/// The decrypted value of the SecureString `name`, through `endpoint` when given (tests), else
/// through the default AWS chain ([`ifs_store::sdk_loader`]).
pub async fn from_parameter(name: &str, endpoint: Option<&str>) -> anyhow::Result<SecretString> {
    let loader = ifs_store::sdk_loader(endpoint).timeout_config(
        aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(5)).build(),
    );
    let client = aws_sdk_ssm::Client::new(&loader.load().await);
    let output = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))
        .with_context(|| format!("reading JWT_PRIVATE_KEY_PARAMETER {name} from SSM"))?;
    let value = output
        .parameter
        .and_then(|parameter| parameter.value)
        .with_context(|| format!("SSM parameter {name} has no value"))?;
    Ok(SecretString::from(value))
}
