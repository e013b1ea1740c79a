//! Webhooks (`--webhook-url`): the product's backend hears what happens in its chat.
//!
//! The store writes each event (`connect`, `disconnect`, `join`, `leave`, `message`, `edit`,
//! `delete`, `reaction`; `dynamowave_core::webhook`) to its outbox in the same commit as what
//! it reports ([`WebhookOutbox`]). The [`Dispatcher`] here, one task per server, POSTs the
//! oldest waiting events in batches, `{"events":[{"id":17,"event":"message",...},...]}`,
//! signed like the join hook (`X-DynamoWave-Signature`), and removes them once the backend
//! answered 2xx. So delivery is **at least once** (a batch whose answer was lost is sent
//! again; `id` is unique and increasing, for the backend to drop repeats) and **in commit
//! order** (so in order per room): a batch is retried with exponential backoff until it is
//! delivered, and after `--webhook-max-attempts` it goes to the dead-letter queue (kind
//! `webhook`; `POST /dlq/{id}/replay` sends it again) and the next batch goes. Chat never
//! waits for any of this: a backend that is down only makes the outbox grow
//! (`dynamowave_webhook_outbox_depth`).

use std::sync::Arc;
use std::time::Duration;

use dynamowave_core::ports::{DeadLetterKind, NewDeadLetter, OutboxEntry, WebhookOutbox};
use dynamowave_core::retry::RetryPolicy;
use tokio::sync::watch;

use crate::config::HooksConfig;
use crate::dlq::DeadLetterQueue;
use crate::hooks::{SIGNATURE_HEADER, signature};

/// How often an empty outbox is looked at again.
const POLL: Duration = Duration::from_millis(100);

/// POSTs signed bodies to the webhook URL.
pub struct WebhookClient {
    client: reqwest::Client,
    url: String,
    key: Option<ring::hmac::Key>,
}

impl WebhookClient {
    /// The client `hooks` configures; `None` without a `webhook-url`.
    pub fn from_config(hooks: &HooksConfig) -> Option<Self> {
        let url = hooks.webhook_url.clone()?;
        Some(WebhookClient {
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(hooks.webhook_timeout_ms))
                .build()
                .expect("a plain HTTP client always builds"),
            url,
            key: hooks
                .webhook_secret
                .as_deref()
                .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s.as_bytes())),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one batch; `Err` says why it was not taken (for logs and the dead letter).
    pub async fn post(&self, body: &str) -> Result<(), String> {
        let mut post = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.key {
            post = post.header(SIGNATURE_HEADER, signature(key, body.as_bytes()));
        }
        match post.body(body.to_owned()).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the backend answered {}", r.status())),
            Err(e) if e.is_timeout() => Err("the backend did not answer in time".into()),
            Err(e) => Err(format!("the backend could not be reached: {e}")),
        }
    }
}

/// `{"events":[...]}` of `entries`, each with its outbox id first.
pub fn batch_body(entries: &[OutboxEntry]) -> String {
    let size: usize = entries.iter().map(|e| e.body.len() + 24).sum();
    let mut body = String::with_capacity(size + 16);
    body.push_str(r#"{"events":["#);
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        // Every event body is a JSON object (`dynamowave_core::webhook`): splice the id in.
        body.push_str(r#"{"id":"#);
        body.push_str(&e.id.to_string());
        match e.body.strip_prefix('{') {
            Some(rest) if rest.trim_start().starts_with('}') => body.push('}'),
            Some(rest) => {
                body.push(',');
                body.push_str(rest);
            }
            None => {
                body.push_str(r#","body":"#);
                body.push_str(&serde_json::to_string(&e.body).expect("a string serializes"));
                body.push('}');
            }
        }
    }
    body.push_str("]}");
    body
}

/// Delivers the outbox to the backend, until the server stops.
pub struct Dispatcher {
    pub outbox: Arc<dyn WebhookOutbox>,
    pub client: Arc<WebhookClient>,
    pub dead_letters: Arc<DeadLetterQueue>,
    /// Events per POST.
    pub batch_max: usize,
    /// Attempts of one batch before it is dead-lettered.
    pub max_attempts: u32,
    /// Backoff between attempts: from `base` doubling up to `cap`, with jitter.
    pub backoff: RetryPolicy,
}

impl Dispatcher {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(url = %self.client.url(), "webhooks: delivering events");
        loop {
            if *stop.borrow() {
                return;
            }
            let batch = match self.outbox.pending(self.batch_max).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot read the outbox; retrying");
                    if pause(&mut stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(last) = batch.last().map(|e| e.id) else {
                if let Ok(depth) = self.outbox.depth().await {
                    metrics::gauge!("dynamowave_webhook_outbox_depth").set(depth as f64);
                }
                if pause(&mut stop, POLL).await {
                    return;
                }
                continue;
            };
            let body = batch_body(&batch);
            if !self.deliver(&body, batch.len(), &mut stop).await {
                return;
            }
            // Delivered or dead-lettered: off the outbox. Until this succeeds the batch would
            // be sent again (at least once), so retry rather than move on.
            while let Err(e) = self.outbox.remove_through(last).await {
                tracing::warn!(error = %e, "webhooks: cannot remove delivered events; retrying");
                if pause(&mut stop, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    }

    /// Sends one batch until it is taken or dead-lettered; `false` when the server stopped
    /// first (the batch stays in the outbox for the next start).
    async fn deliver(&self, body: &str, events: usize, stop: &mut watch::Receiver<bool>) -> bool {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            // A stop interrupts the POST: the batch stays in the outbox, and the server's
            // shutdown (which waits for every holder of `stop`) is not held up by a slow backend.
            let sent = tokio::select! {
                sent = self.client.post(body) => sent,
                _ = stop.changed() => return false,
            };
            metrics::histogram!("dynamowave_webhook_post_seconds").record(started.elapsed());
            let reason = match sent {
                Ok(()) => {
                    metrics::counter!("dynamowave_webhook_events_delivered_total")
                        .increment(events as u64);
                    return true;
                }
                Err(reason) => reason,
            };
            metrics::counter!("dynamowave_webhook_post_failures_total").increment(1);
            if attempt >= self.max_attempts {
                let entry = NewDeadLetter {
                    kind: DeadLetterKind::Webhook,
                    target: self.client.url().to_owned(),
                    user: None,
                    reason: format!("{attempt} attempts; the last: {reason}"),
                    payload: body.into(),
                };
                match self.dead_letters.add(entry).await {
                    Ok(_) => {
                        metrics::counter!("dynamowave_webhook_events_dead_lettered_total")
                            .increment(events as u64);
                        return true;
                    }
                    // Not recorded: keep the batch in the outbox and keep trying.
                    Err(_) => attempt = 0,
                }
            } else {
                tracing::warn!(attempt, %reason, "webhooks: a batch was not delivered; retrying");
            }
            if pause(stop, self.backoff.backoff(attempt.max(1))).await {
                return false;
            }
            attempt += 1;
        }
    }
}

/// Sleeps for `d`; `true` when the server is stopping.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_puts_each_id_first() {
        let entries = [
            OutboxEntry {
                id: 7,
                body: r#"{"event":"join","room":"r"}"#.into(),
            },
            OutboxEntry {
                id: 9,
                body: "{}".into(),
            },
        ];
        let body = batch_body(&entries);
        assert_eq!(
            body,
            r#"{"events":[{"id":7,"event":"join","room":"r"},{"id":9}]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["events"][0]["id"], 7);
    }
}
