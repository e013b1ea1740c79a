//! `dynamowave-aws`: the operator's tools for the AWS shape. Region, credentials and
//! `AWS_ENDPOINT_URL` (an emulator) come from the environment, as for every AWS tool; the table
//! names from `CONNECTIONS_TABLE`, `MESSAGES_TABLE`, `MESSAGE_IDS_TABLE` and
//! `READ_POSITIONS_TABLE`, and the queue from `DLQ_URL`, as the functions read them.

use clap::{Parser, Subcommand};
use dynamowave_core::ports::{ConnectionStore, NoListener};
use dynamowave_lambda::connections_api::ConnectionsApi;
use dynamowave_lambda::dead_letters::SqsDeadLetters;
use dynamowave_lambda::dynamo::{DynamoStore, Tables, create_tables};

#[derive(Parser)]
#[command(
    name = "dynamowave-aws",
    version,
    about = "Operator tools for DynamoWave on AWS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the four tables as deploy/aws/template.yaml does (for an emulator or a test
    /// account; the template creates them on AWS), and with --dlq the dead-letter queue.
    CreateTables {
        /// Also create this SQS queue and print its URL (the value for DLQ_URL).
        #[arg(long)]
        dlq: Option<String>,
    },
    /// The dead-letter queue: posts that kept failing.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        /// The queue URL.
        #[arg(long, env = "DLQ_URL", global = true)]
        queue_url: Option<String>,
    },
    /// Delete every connection row and room index entry (after an outage where $disconnect
    /// did not run; on AWS the TTL removes them within two hours anyway).
    PurgeConnections,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Print each dead letter as a JSON line; they stay in the queue.
    List,
    /// How many letters wait (ApproximateNumberOfMessages, what the depth alarm watches).
    Depth,
    /// Post every letter again; a letter leaves the queue once its post succeeded.
    Replay {
        /// Post to this @connections base URL instead of the one each letter names.
        #[arg(long, env = "DYNAMOWAVE_CONNECTIONS_ENDPOINT")]
        endpoint: Option<String>,
        /// Post every letter to this connection instead of its own (its own is gone).
        #[arg(long)]
        to: Option<String>,
        /// Delete letters whose connection is gone instead of keeping them.
        #[arg(long)]
        drop_gone: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let sdk = aws_config::load_from_env().await;
    match cli.command {
        Command::CreateTables { dlq } => {
            let tables = Tables::from_env();
            create_tables(&aws_sdk_dynamodb::Client::new(&sdk), &tables).await?;
            eprintln!(
                "tables ready: {}, {}, {}, {}",
                tables.connections, tables.messages, tables.message_ids, tables.read_positions
            );
            if let Some(name) = dlq {
                let out = aws_sdk_sqs::Client::new(&sdk)
                    .create_queue()
                    .queue_name(&name)
                    .attributes(
                        aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
                        "1209600",
                    )
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "SQS CreateQueue: {}",
                            aws_sdk_sqs::error::DisplayErrorContext(&e)
                        )
                    })?;
                println!("{}", out.queue_url.unwrap_or_default());
            }
        }
        Command::PurgeConnections => {
            let store = DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                Tables::from_env(),
                std::sync::Arc::new(NoListener),
            );
            let purged = store.purge_stale().await?;
            println!("purged {purged} connections");
        }
        Command::Dlq { command, queue_url } => {
            let url = queue_url.ok_or_else(|| {
                anyhow::anyhow!("no queue: give --queue-url or set DLQ_URL (the template's DeadLetterQueueUrl output)")
            })?;
            let dlq = SqsDeadLetters::new(aws_sdk_sqs::Client::new(&sdk), url);
            match command {
                DlqCommand::List => {
                    for r in dlq.list().await.map_err(anyhow::Error::msg)? {
                        match r.letter {
                            Ok(letter) => println!("{}", serde_json::to_string(&letter)?),
                            Err(e) => println!(
                                "{}",
                                serde_json::json!({"messageId": r.message_id, "error": e})
                            ),
                        }
                    }
                }
                DlqCommand::Depth => println!("{}", dlq.depth().await.map_err(anyhow::Error::msg)?),
                DlqCommand::Replay {
                    endpoint,
                    to,
                    drop_gone,
                } => {
                    let api = ConnectionsApi::new(sdk.clone());
                    let report = dlq
                        .replay(&api, endpoint.as_deref(), to.as_deref(), drop_gone)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    println!("{}", serde_json::to_string(&report)?);
                    if report.failed > 0 {
                        anyhow::bail!(
                            "{} letters could not be replayed and stay in the queue",
                            report.failed
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
