//! `POST @connections/{id}`: the API Gateway Management API, one client per endpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::error::DisplayErrorContext;
use aws_sdk_apigatewaymanagement::primitives::Blob;

/// Why a post did not reach the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostFailure {
    /// 410: the connection is gone (its row is stale).
    Gone,
    /// 413: over 128 KB; retrying cannot help.
    TooLarge,
    /// Anything else (throttled, 5xx, network): worth retrying.
    Failed(String),
}

/// Management API clients by endpoint (`https://{domainName}/{stage}`), made once per
/// execution environment.
#[derive(Clone)]
pub struct ConnectionsApi {
    config: aws_config::SdkConfig,
    clients: Arc<Mutex<HashMap<String, Client>>>,
}

impl ConnectionsApi {
    pub fn new(config: aws_config::SdkConfig) -> Self {
        ConnectionsApi {
            config,
            clients: Arc::default(),
        }
    }

    fn client(&self, endpoint: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                // The endpoint is set here, so AWS_ENDPOINT_URL (an emulator for DynamoDB and
                // SQS) does not redirect the posts. No SDK retries: the fan-out retries with its
                // own backoff and then dead-letters, and retries at both levels would multiply.
                let config = aws_sdk_apigatewaymanagement::config::Builder::from(&self.config)
                    .endpoint_url(endpoint)
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .build();
                Client::from_conf(config)
            })
            .clone()
    }

    pub async fn post(&self, endpoint: &str, id: &str, payload: &[u8]) -> Result<(), PostFailure> {
        let sent = self
            .client(endpoint)
            .post_to_connection()
            .connection_id(id)
            .data(Blob::new(payload))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(s) if s.is_gone_exception() => Err(PostFailure::Gone),
                Some(s) if s.is_payload_too_large_exception() => Err(PostFailure::TooLarge),
                _ => Err(PostFailure::Failed(format!("{}", DisplayErrorContext(&e)))),
            },
        }
    }

    /// `DELETE @connections/{id}`: closes the connection. Gone is fine.
    pub async fn close(&self, endpoint: &str, id: &str) -> Result<(), PostFailure> {
        let deleted = self
            .client(endpoint)
            .delete_connection()
            .connection_id(id)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_gone_exception()) => Ok(()),
            Err(e) => Err(PostFailure::Failed(format!("{}", DisplayErrorContext(&e)))),
        }
    }
}
