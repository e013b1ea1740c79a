//! `dynamowave dlq list|show|replay|purge`: the dead-letter queue of a running server, through
//! its management API (`/dlq`, docs/openapi.yaml).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct DlqArgs {
    /// The server's base URL.
    #[arg(long, env = "DYNAMOWAVE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The management API's bearer token (not needed on loopback when the server has none).
    #[arg(long, env = "DYNAMOWAVE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Print the server's JSON instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// List entries, oldest first, with the queue's depth.
    List {
        /// Only entries not replayed yet.
        #[arg(long)]
        pending: bool,
        /// Start after this entry id.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one entry with its payload.
    Show { id: u64 },
    /// Deliver an entry again (to its connection, or another); replaying twice delivers once.
    Replay {
        /// The entry; omit with --all.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Deliver to this connection instead of the original one.
        #[arg(long, conflicts_with = "all")]
        to_connection: Option<String>,
        /// Every pending entry, each to its original connection.
        #[arg(long)]
        all: bool,
    },
    /// Delete entries.
    Purge {
        /// The entry; or use --replayed / --all.
        #[arg(required_unless_present_any = ["replayed", "all"], conflicts_with_all = ["replayed", "all"])]
        id: Option<u64>,
        /// Every entry already replayed.
        #[arg(long, conflicts_with = "all")]
        replayed: bool,
        /// Every entry, pending or not.
        #[arg(long)]
        all: bool,
    },
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// Calls the API; a non-2xx answer becomes an error carrying the server's message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            bail!("{status}: {message} (pass --admin-token or set DYNAMOWAVE_ADMIN_TOKEN)");
        }
        bail!("{status}: {message}")
    }
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let api = Api {
        http: reqwest::Client::new(),
        base: args.url.trim_end_matches('/').to_owned(),
        token: args.admin_token,
    };
    let answer = match args.command {
        DlqCommand::List {
            pending,
            after,
            limit,
        } => {
            let state = if pending { "pending" } else { "all" };
            let page = api
                .call(
                    Method::GET,
                    &format!("/dlq?state={state}&after={after}&limit={limit}"),
                    None,
                )
                .await?;
            if !args.json {
                print_list(&page);
                return Ok(());
            }
            page
        }
        DlqCommand::Show { id } => {
            let entry = api.call(Method::GET, &format!("/dlq/{id}"), None).await?;
            if !args.json {
                print_entry(&entry);
                return Ok(());
            }
            entry
        }
        DlqCommand::Replay { all: true, .. } => {
            let r = api.call(Method::POST, "/dlq/replay", None).await?;
            if !args.json {
                println!(
                    "replayed {}, failed {}, still pending {}",
                    r["replayed"], r["failed"], r["depth"]
                );
                return Ok(());
            }
            r
        }
        DlqCommand::Replay {
            id, to_connection, ..
        } => {
            let id = id.context("give an entry id or --all")?;
            let body = to_connection.map(|c| json!({ "connectionId": c }));
            let r = api
                .call(Method::POST, &format!("/dlq/{id}/replay"), body)
                .await?;
            if !args.json {
                if r["replayed"] == true {
                    println!(
                        "dead letter {id} delivered to {}",
                        r["to"].as_str().unwrap_or("?")
                    );
                } else {
                    println!(
                        "dead letter {id} was already replayed (to {} at {}); nothing sent",
                        r["to"].as_str().unwrap_or("?"),
                        time_of(&r["alreadyReplayedAt"])
                    );
                }
                return Ok(());
            }
            r
        }
        DlqCommand::Purge { id: Some(id), .. } => {
            api.call(Method::DELETE, &format!("/dlq/{id}"), None)
                .await?;
            json!({ "purged": 1 })
        }
        DlqCommand::Purge { replayed, .. } => {
            let state = if replayed { "replayed" } else { "all" };
            api.call(Method::DELETE, &format!("/dlq?state={state}"), None)
                .await?
        }
    };
    if args.json {
        println!("{answer}");
    } else {
        println!("purged {}", answer["purged"]);
    }
    Ok(())
}

fn time_of(ms: &Value) -> String {
    ms.as_u64()
        .map(dynamowave_core::types::rfc3339_ms)
        .unwrap_or_else(|| "-".to_owned())
}

fn print_list(page: &Value) {
    println!("depth (pending): {}", page["depth"]);
    let entries = page["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if entries.is_empty() {
        println!("no entries");
        return;
    }
    println!(
        "{:>6}  {:<24}  {:<20}  {:>8}  {:>8}  reason",
        "id", "created", "target", "bytes", "state"
    );
    for e in entries {
        let state = if e["replayedAt"].is_null() {
            "pending"
        } else {
            "replayed"
        };
        println!(
            "{:>6}  {:<24}  {:<20}  {:>8}  {:>8}  {}",
            e["id"],
            time_of(&e["createdAt"]),
            e["target"].as_str().unwrap_or("?"),
            e["payload"].as_str().map_or(0, str::len),
            state,
            e["reason"].as_str().unwrap_or("")
        );
    }
    if page["more"] == true {
        let last = entries.last().map(|e| e["id"].clone()).unwrap_or_default();
        println!("more: dynamowave dlq list --after {last}");
    }
}

fn print_entry(e: &Value) {
    println!("id:          {}", e["id"]);
    println!("kind:        {}", e["kind"].as_str().unwrap_or("?"));
    println!("created:     {}", time_of(&e["createdAt"]));
    println!("target:      {}", e["target"].as_str().unwrap_or("?"));
    println!("user:        {}", e["user"].as_str().unwrap_or("-"));
    println!("reason:      {}", e["reason"].as_str().unwrap_or(""));
    println!("attempts:    {}", e["attempts"]);
    println!("last error:  {}", e["lastError"].as_str().unwrap_or("-"));
    match e["replayedAt"].as_u64() {
        Some(_) => println!(
            "replayed:    {} to {}",
            time_of(&e["replayedAt"]),
            e["replayedTo"].as_str().unwrap_or("?")
        ),
        None => println!("replayed:    no (pending)"),
    }
    println!("payload:");
    println!("{}", e["payload"].as_str().unwrap_or(""));
}
