//! DynamoWave's serverless shape: the core's route handlers as AWS Lambda functions behind an
//! API Gateway WebSocket API, with the store on DynamoDB and an SQS dead-letter queue
//! (deploy/aws/template.yaml deploys it; docs/aws.md explains it).
//!
//! # Layout
//!
//! - [`dynamo`]: the DynamoDB store (connections with a room index, the room logs, message ids).
//! - [`handler`]: one invocation: the event's route, the core's handler, and its effects.
//! - [`fanout`]: posts to a room's members with bounded concurrency; 410 removes the stale
//!   recipient, other failures retry and then go to the dead-letter queue.
//! - [`connections_api`]: `POST`/`DELETE @connections/{id}` (the Management API), a client per
//!   endpoint.
//! - [`dead_letters`]: the SQS dead-letter queue and its replay.
//! - [`config`]: settings from the function's environment.
//! - `bin/dynamowave-lambda.rs`: the function's `bootstrap`; `bin/dynamowave-aws.rs`: operator
//!   tools (create the tables, list and replay the DLQ, purge connections).

pub mod config;
pub mod connections_api;
pub mod dead_letters;
pub mod dynamo;
pub mod fanout;
pub mod handler;

pub use config::Config;
pub use handler::Handler;
