//! The SQS dead-letter queue: posts that kept failing, and their replay
//! (`dynamowave-aws dlq replay`).
//!
//! A Lambda function's own DLQ (`DeadLetterConfig`) only catches failed *asynchronous*
//! invocations; API Gateway invokes synchronously, so the handler queues what it could not post.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use serde::{Deserialize, Serialize};

use crate::connections_api::{ConnectionsApi, PostFailure};

/// One queued post, the body of an SQS message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// `"post_to_connection"`, as the server's dead letters.
    pub kind: String,
    /// The `@connections` base URL it was for.
    pub endpoint: String,
    /// The connection id.
    pub target: String,
    pub user: Option<String>,
    pub reason: String,
    pub payload: String,
    /// Milliseconds since the epoch.
    pub created_at: u64,
    pub attempts: u32,
}

#[derive(Clone)]
pub struct SqsDeadLetters {
    client: Client,
    url: String,
}

/// A dead letter as received, with what it takes to delete it.
pub struct Received {
    pub message_id: String,
    pub receipt: String,
    pub letter: Result<DeadLetter, String>,
}

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Posted and deleted from the queue.
    pub replayed: u64,
    /// Still in the queue: the connection is gone (use `--to` or `--drop-gone`).
    pub gone: u64,
    /// Dropped from the queue because their connection is gone (`--drop-gone`).
    pub dropped: u64,
    /// Still in the queue: the post failed again, or the body is not a dead letter.
    pub failed: u64,
}

impl SqsDeadLetters {
    pub fn new(client: Client, url: String) -> Self {
        SqsDeadLetters { client, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn send(&self, letter: &DeadLetter) -> Result<(), String> {
        let body = serde_json::to_string(letter).map_err(|e| e.to_string())?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| format!("SQS SendMessage: {}", DisplayErrorContext(&e)))?;
        Ok(())
    }

    /// Up to 10 letters, hidden from other readers for `hide_secs`. Short polling: an empty
    /// answer means the queue has nothing visible now.
    pub async fn receive(&self, hide_secs: i32) -> Result<Vec<Received>, String> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .visibility_timeout(hide_secs)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(|e| format!("SQS ReceiveMessage: {}", DisplayErrorContext(&e)))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Received {
                message_id: m.message_id.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
                letter: serde_json::from_str(m.body.as_deref().unwrap_or(""))
                    .map_err(|e| format!("not a dead letter: {e}")),
            })
            .collect())
    }

    pub async fn delete(&self, receipt: &str) -> Result<(), String> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| format!("SQS DeleteMessage: {}", DisplayErrorContext(&e)))?;
        Ok(())
    }

    /// Makes a letter visible again now (after `list`, which only looks).
    pub async fn unhide(&self, receipt: &str) -> Result<(), String> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| format!("SQS ChangeMessageVisibility: {}", DisplayErrorContext(&e)))?;
        Ok(())
    }

    /// Every letter in the queue, oldest first as SQS hands them out, left in the queue.
    pub async fn list(&self) -> Result<Vec<Received>, String> {
        let mut all: Vec<Received> = Vec::new();
        loop {
            let batch = self.receive(60).await?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                if !all.iter().any(|seen| seen.message_id == r.message_id) {
                    all.push(r);
                }
            }
        }
        for r in &all {
            self.unhide(&r.receipt).await?;
        }
        Ok(all)
    }

    /// Posts every letter again, to its own connection or to `to`; a letter leaves the queue
    /// only once its post succeeded, so each is delivered once. What stays is visible again
    /// when the run ends, for the next one.
    pub async fn replay(
        &self,
        api: &ConnectionsApi,
        endpoint: Option<&str>,
        to: Option<&str>,
        drop_gone: bool,
    ) -> Result<ReplayReport, String> {
        let mut report = ReplayReport::default();
        let mut kept: Vec<String> = Vec::new();
        loop {
            // Hidden while this run lasts: what it leaves in the queue it does not see again.
            let batch = self.receive(300).await?;
            if batch.is_empty() {
                for receipt in &kept {
                    self.unhide(receipt).await?;
                }
                return Ok(report);
            }
            for r in batch {
                let letter = match r.letter {
                    Ok(letter) => letter,
                    Err(e) => {
                        tracing::warn!(message_id = %r.message_id, error = %e, "skipped");
                        kept.push(r.receipt);
                        report.failed += 1;
                        continue;
                    }
                };
                let endpoint = endpoint.unwrap_or(&letter.endpoint);
                let target = to.unwrap_or(&letter.target);
                match api.post(endpoint, target, letter.payload.as_bytes()).await {
                    Ok(()) => {
                        self.delete(&r.receipt).await?;
                        report.replayed += 1;
                    }
                    Err(PostFailure::Gone) if drop_gone => {
                        self.delete(&r.receipt).await?;
                        report.dropped += 1;
                    }
                    Err(PostFailure::Gone) => {
                        kept.push(r.receipt);
                        report.gone += 1;
                    }
                    Err(e) => {
                        tracing::warn!(target, error = ?e, "replay failed; the letter stays");
                        kept.push(r.receipt);
                        report.failed += 1;
                    }
                }
            }
        }
    }

    /// `ApproximateNumberOfMessages`: what CloudWatch's depth alarm watches.
    pub async fn depth(&self) -> Result<u64, String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| format!("SQS GetQueueAttributes: {}", DisplayErrorContext(&e)))?;
        Ok(out
            .attributes
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0))
    }
}
