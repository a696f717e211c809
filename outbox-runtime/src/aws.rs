//! Configuration the way AWS deployments provide it: queue URLs and the
//! database from environment variables, or the database credentials from a
//! Secrets Manager secret. Read once per cold start.
//!
//! | variable | meaning |
//! |---|---|
//! | `OUTBOX_QUEUE_URL` | the FIFO queue envelopes are published to (required) |
//! | `OUTBOX_QUEUE_URL_<NAME>` | the queue of logical queue `name` (`#[outbox(queue = "name")]`; upper case, `-` and `.` as `_`) |
//! | `OUTBOX_PUMP_QUEUE_URL` | where pumps go (default: `OUTBOX_QUEUE_URL`) |
//! | `DATABASE_URL` | the database, such as `postgres://user:pass@host:5432/db` |
//! | `DATABASE_SECRET_ARN` | instead of `DATABASE_URL`: a Secrets Manager secret holding `host`, `port`, `username`, `password`, `dbname` (as RDS writes it); needs the `secrets` feature |
//!
//! Endpoint, region and credentials come from the standard AWS variables
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...).

#[cfg(feature = "sqs")]
use std::collections::BTreeMap;

#[cfg(feature = "sqs")]
use crate::registry::MESSAGES;
#[cfg(feature = "sqs")]
use crate::transport::sqs::{SqsPump, SqsTransport, env_suffix};

/// Where the outbox's queues are (feature `sqs`).
#[cfg(feature = "sqs")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// `OUTBOX_QUEUE_URL`.
    pub queue_url: String,
    /// `OUTBOX_PUMP_QUEUE_URL`, or `queue_url`.
    pub pump_queue_url: String,
    /// Logical queue name → URL, for every logical queue a registered
    /// message uses and the environment names.
    pub queues: BTreeMap<String, String>,
}

/// Configuration is missing or wrong. The message names the variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    /// Neither `DATABASE_URL` nor `DATABASE_SECRET_ARN` is set.
    #[error(
        "set DATABASE_URL, or DATABASE_SECRET_ARN to read the credentials from Secrets Manager"
    )]
    NoDatabase,
    /// The secret could not be read or is not an RDS-style credentials secret.
    #[error("database secret {arn}: {reason}")]
    Secret {
        /// The secret's ARN.
        arn: String,
        /// What went wrong.
        reason: String,
    },
}

#[cfg(feature = "sqs")]
impl QueueConfig {
    /// Reads the queue URLs from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the queue URLs through `lookup` (the environment, in production).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let queue_url =
            lookup("OUTBOX_QUEUE_URL").ok_or(ConfigError::Missing("OUTBOX_QUEUE_URL"))?;
        let pump_queue_url = lookup("OUTBOX_PUMP_QUEUE_URL").unwrap_or_else(|| queue_url.clone());
        let mut queues = BTreeMap::new();
        for name in MESSAGES.iter().filter_map(|m| m.queue) {
            let variable = format!("OUTBOX_QUEUE_URL_{}", env_suffix(name));
            match lookup(&variable) {
                Some(url) => {
                    queues.insert(name.to_owned(), url);
                }
                None => {
                    tracing::warn!(queue = name, %variable, "no URL for a logical queue; its messages stay pending")
                }
            }
        }
        Ok(QueueConfig {
            queue_url,
            pump_queue_url,
            queues,
        })
    }

    /// The relay's transport.
    pub fn transport(&self, client: aws_sdk_sqs::Client) -> SqsTransport {
        self.queues.iter().fold(
            SqsTransport::new(client, &self.queue_url),
            |t, (name, url)| t.with_queue(name, url),
        )
    }

    /// The app's pump.
    pub fn pump(&self, client: aws_sdk_sqs::Client) -> SqsPump {
        SqsPump::new(client, &self.pump_queue_url)
    }
}

/// The standard AWS configuration (region, endpoint, credentials), with
/// [`http_client`].
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await
}

/// The HTTPS client the toolkit's AWS clients use: rustls with the ring
/// crypto provider and the system's root certificates. outbox-runtime builds
/// the AWS SDK without its default client (rustls on aws-lc, about 2 MB more
/// in a Lambda binary), so a configuration loaded with `aws_config::defaults`
/// needs this client (`.http_client(http_client())`), unless the app enables
/// the SDK's `default-https-client` feature itself.
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The database URL: `DATABASE_URL`, or built from the Secrets Manager secret
/// named by `DATABASE_SECRET_ARN`.
pub async fn database_url(sdk: &aws_config::SdkConfig) -> Result<String, ConfigError> {
    database_url_from(|name| std::env::var(name).ok(), sdk).await
}

/// [`database_url`] with the variables read through `lookup`.
pub async fn database_url_from(
    lookup: impl Fn(&str) -> Option<String>,
    sdk: &aws_config::SdkConfig,
) -> Result<String, ConfigError> {
    if let Some(url) = lookup("DATABASE_URL") {
        return Ok(url);
    }
    let Some(arn) = lookup("DATABASE_SECRET_ARN") else {
        return Err(ConfigError::NoDatabase);
    };
    secret_database_url(sdk, &arn).await
}

#[cfg(feature = "secrets")]
async fn secret_database_url(
    sdk: &aws_config::SdkConfig,
    arn: &str,
) -> Result<String, ConfigError> {
    let error = |reason: String| ConfigError::Secret {
        arn: arn.to_owned(),
        reason,
    };
    let client = aws_sdk_secretsmanager::Client::new(sdk);
    let secret = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|err| {
            error(aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string())
        })?;
    let text = secret
        .secret_string()
        .ok_or_else(|| error("the secret has no string value".into()))?;
    postgres_url_from_secret(text).map_err(error)
}

#[cfg(not(feature = "secrets"))]
async fn secret_database_url(_: &aws_config::SdkConfig, arn: &str) -> Result<String, ConfigError> {
    Err(ConfigError::Secret {
        arn: arn.to_owned(),
        reason: "this binary was built without the `secrets` feature of outbox-runtime".into(),
    })
}

/// Builds a PostgreSQL URL from an RDS credentials secret
/// (`{"username", "password", "host", "port", "dbname"}`), with TLS
/// required (`sslmode=require`): the credentials cross the network.
///
/// ```
/// # use outbox_runtime::aws::postgres_url_from_secret;
/// let url = postgres_url_from_secret(
///     r#"{"username":"app","password":"p@ss/word","host":"db.example","port":5432,"dbname":"orders","engine":"postgres"}"#,
/// ).unwrap();
/// assert_eq!(url, "postgres://app:p%40ss%2Fword@db.example:5432/orders?sslmode=require");
/// ```
pub fn postgres_url_from_secret(secret: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Rds {
        username: String,
        password: String,
        host: String,
        #[serde(default)]
        port: Option<serde_json::Value>,
        #[serde(default)]
        dbname: Option<String>,
    }
    let rds: Rds = serde_json::from_str(secret).map_err(|err| {
        format!("not an RDS credentials secret ({{host, port, username, password, dbname}}): {err}")
    })?;
    let port = match rds.port {
        None => 5432,
        Some(serde_json::Value::Number(n)) => n.as_u64().ok_or("port is not a port number")?,
        Some(serde_json::Value::String(s)) => s
            .parse()
            .map_err(|_| format!("port {s:?} is not a number"))?,
        Some(other) => return Err(format!("port {other} is not a number")),
    };
    Ok(format!(
        "postgres://{}:{}@{}:{port}/{}?sslmode=require",
        encode(&rds.username),
        encode(&rds.password),
        rds.host,
        encode(rds.dbname.as_deref().unwrap_or("postgres"))
    ))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "sqs")]
    #[test]
    fn a_missing_queue_url_names_the_variable() {
        let err = QueueConfig::from_lookup(|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable OUTBOX_QUEUE_URL is not set"
        );
        let config =
            QueueConfig::from_lookup(|name| (name == "OUTBOX_QUEUE_URL").then(|| "q".to_owned()))
                .unwrap();
        assert_eq!(config.pump_queue_url, "q");
    }

    #[test]
    fn bad_secrets_say_what_is_wrong() {
        assert!(
            postgres_url_from_secret("{}")
                .unwrap_err()
                .starts_with("not an RDS credentials secret")
        );
        assert_eq!(
            postgres_url_from_secret(r#"{"username":"u","password":"p","host":"h","port":"x"}"#)
                .unwrap_err(),
            r#"port "x" is not a number"#
        );
        assert_eq!(
            postgres_url_from_secret(r#"{"username":"u","password":"p","host":"h","port":"6543"}"#)
                .unwrap(),
            "postgres://u:p@h:6543/postgres?sslmode=require"
        );
    }
}
