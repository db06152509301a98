//! Where login's signing key comes from on AWS: an SSM Parameter Store SecureString
//! (`JWT_PRIVATE_KEY_PARAMETER`), read once at cold start, so that the key is never in the
//! function's configuration, and no other function can read it.

use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_ssm::error::DisplayErrorContext;
use secrecy::SecretString;

/// The decrypted value of the SecureString `name`, through `endpoint` when given (tests), else
/// through the default AWS chain.
pub async fn from_parameter(name: &str, endpoint: Option<&str>) -> anyhow::Result<SecretString> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(
        aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_secs(5)).build(),
    );
    if let Some(endpoint) = endpoint {
        loader = loader
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_ssm::config::Credentials::new("local", "local", None, None, "test"))
            .region(aws_sdk_ssm::config::Region::new("us-east-1"));
    }
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
