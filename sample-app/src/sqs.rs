//! The demo's SQS queue: a FIFO queue created on an SQS-compatible endpoint
//! (such as a local moto server) for one run, then deleted.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::QueueAttributeName;
use outbox_runtime::transport::sqs::{SqsReceiver, SqsTransport};

/// A FIFO queue that lives for one run.
#[derive(Debug)]
pub(crate) struct TempQueue {
    sqs: Client,
    url: String,
}

impl TempQueue {
    /// Creates a queue at `endpoint`, named after this process.
    pub(crate) async fn create(endpoint: &str) -> anyhow::Result<Self> {
        let sqs = client(endpoint).await;
        let name = format!("outbox-demo-{}.fifo", std::process::id());
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .map_err(|err| {
                anyhow::anyhow!(
                    "cannot create queue {name} at {endpoint}: {}",
                    DisplayErrorContext(err)
                )
            })?
            .queue_url
            .ok_or_else(|| anyhow::anyhow!("{endpoint} returned no queue URL"))?;
        Ok(TempQueue { sqs, url })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The relay's side of the queue.
    pub(crate) fn transport(&self) -> SqsTransport {
        SqsTransport::new(self.sqs.clone(), &self.url)
    }

    /// The workers' side of the queue.
    pub(crate) fn receiver(&self) -> SqsReceiver {
        SqsReceiver::new(self.sqs.clone(), &self.url)
    }

    /// Deletes the queue; a failure leaves it behind, unreported.
    pub(crate) async fn delete(self) {
        let _ = self.sqs.delete_queue().queue_url(&self.url).send().await;
    }
}

/// A client for `endpoint`. Region and credentials come from the standard
/// AWS variables; the region defaults to us-east-1, and without credentials
/// placeholders are used, as local servers accept any.
async fn client(endpoint: &str) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(outbox_runtime::aws::http_client())
        .endpoint_url(endpoint);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        loader = loader.region(aws_config::Region::new("us-east-1"));
    }
    // A local stand-in needs no real credentials; without any configured,
    // use placeholders rather than searching the machine for them.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() && std::env::var_os("AWS_PROFILE").is_none()
    {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "local",
            "local",
            None,
            None,
            "sample-app",
        ));
    }
    Client::new(&loader.load().await)
}
