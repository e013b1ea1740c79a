//! DynamoWave's serverless shape: the core's route handlers as AWS Lambda functions behind an
//! API Gateway WebSocket API, with the store on DynamoDB and an SQS dead-letter queue.
//!
//! # Layout
//!
//! - [`dynamo`]: the DynamoDB store (connections with a room index, the room logs, message ids).
pub mod dynamo;
