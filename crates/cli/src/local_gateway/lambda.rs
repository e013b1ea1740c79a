//! Lambda on this machine: one [`Function`] per route, each with up to `concurrency` execution
//! environments, started on demand. An environment is the handler binary, unchanged, as a
//! child process, talking to its own Lambda Runtime API on a local port
//! (`/2018-06-01/runtime/invocation/next`, `/{id}/response`, `/{id}/error`, `/init/error`, with
//! the documented headers). One port per environment, as on AWS: the gateway knows which
//! invocation a crashed or timed-out process held, fails it at once, and kills the process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dynamowave_core::types::now_ms;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

/// How an invocation ended, when it did not return a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeError {
    /// The function reported an error (`/error`), or its process failed to start.
    Function(String),
    /// No answer within the timeout: the process was killed, as Lambda does.
    Timeout,
    /// The process exited while it held the invocation.
    Crashed(String),
}

/// The invocation an environment holds: its request id and where its result goes.
type Held = (String, oneshot::Sender<Result<Value, InvokeError>>);

struct Invocation {
    request_id: String,
    event: Value,
    reply: oneshot::Sender<Result<Value, InvokeError>>,
}

/// One route's function.
pub struct Function {
    pub name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    region: String,
    concurrency: usize,
    timeout: Duration,
    queue: mpsc::UnboundedSender<Invocation>,
    /// Shared by the environments: whichever asks for `next` first gets the invocation.
    pending: tokio::sync::Mutex<mpsc::UnboundedReceiver<Invocation>>,
    environments: AtomicUsize,
    /// Environments waiting in `next` now.
    idle: AtomicUsize,
    /// Told when the gateway stops: every environment's process is killed.
    stopping: Arc<Notify>,
}

impl Function {
    pub fn new(
        name: String,
        binary: PathBuf,
        env: Vec<(String, String)>,
        region: String,
        concurrency: usize,
        timeout: Duration,
        stopping: Arc<Notify>,
    ) -> Arc<Function> {
        let (queue, pending) = mpsc::unbounded_channel();
        Arc::new(Function {
            name,
            binary,
            env,
            region,
            concurrency: concurrency.max(1),
            timeout,
            queue,
            pending: tokio::sync::Mutex::new(pending),
            environments: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            stopping,
        })
    }

    fn arn(&self) -> String {
        format!(
            "arn:aws:lambda:{}:000000000000:function:{}",
            self.region, self.name
        )
    }

    /// Runs `event` on an environment of this function and returns its result.
    pub async fn invoke(self: &Arc<Self>, event: Value) -> Result<Value, InvokeError> {
        let (reply, result) = oneshot::channel();
        let invocation = Invocation {
            request_id: uuid_like(),
            event,
            reply,
        };
        if self.queue.send(invocation).is_err() {
            return Err(InvokeError::Function("the gateway is stopping".into()));
        }
        if self.idle.load(Ordering::SeqCst) == 0 {
            self.clone().start_environment().await;
        }
        result
            .await
            .unwrap_or_else(|_| Err(InvokeError::Crashed("the invocation was dropped".into())))
    }

    /// Starts a process with its own Runtime API, unless the function is at its concurrency.
    /// Boxed: an environment that ends starts the next one when invocations are queued.
    fn start_environment(self: Arc<Self>) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(self.start_environment_now())
    }

    async fn start_environment_now(self: Arc<Self>) {
        let n = self.environments.fetch_add(1, Ordering::SeqCst);
        if n >= self.concurrency {
            self.environments.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(function = %self.name, error = %e, "no port for a runtime API");
                self.environments.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let env = Arc::new(Environment {
            function: self.clone(),
            holding: Mutex::new(None),
            kill: Notify::new(),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(env.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let log_stream = format!(
            "2026/12/06/[$LATEST]{}",
            dynamowave_core::types::random_token(32)
        );
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", log_stream)
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
            .env("AWS_REGION", &self.region)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
            .env("_HANDLER", "bootstrap")
            .env(
                "LAMBDA_TASK_ROOT",
                self.binary.parent().unwrap_or(std::path::Path::new(".")),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(function = %self.name, binary = %self.binary.display(), error = %e, "the handler did not start");
                server.abort();
                self.environments.fetch_sub(1, Ordering::SeqCst);
                // Fail what is queued, or it waits for the timeout.
                self.fail_queued(&format!(
                    "the handler {} did not start: {e}",
                    self.binary.display()
                ))
                .await;
                return;
            }
        };
        tracing::debug!(function = %self.name, port, "execution environment started");
        let function = self.clone();
        tokio::spawn(async move {
            let why = tokio::select! {
                status = child.wait() => format!("the process exited ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string())),
                () = env.kill.notified() => {
                    let _ = child.kill().await;
                    "killed after the timeout".to_owned()
                }
                () = function.stopping.notified() => {
                    let _ = child.kill().await;
                    "the gateway stopped".to_owned()
                }
            };
            server.abort();
            if let Some(held) = env.holding.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = held.1.send(Err(InvokeError::Crashed(why.clone())));
            }
            function.environments.fetch_sub(1, Ordering::SeqCst);
            tracing::debug!(function = %function.name, %why, "execution environment ended");
            // Invocations queued meanwhile need an environment.
            if function.idle.load(Ordering::SeqCst) == 0 && !function.queue.is_closed() {
                let queued = function
                    .pending
                    .try_lock()
                    .map(|q| !q.is_empty())
                    .unwrap_or(false);
                if queued {
                    function.clone().start_environment().await;
                }
            }
        });
    }

    async fn fail_queued(&self, why: &str) {
        let mut pending = self.pending.lock().await;
        while let Ok(invocation) = pending.try_recv() {
            let _ = invocation
                .reply
                .send(Err(InvokeError::Function(why.to_owned())));
        }
    }
}

/// One execution environment: its process and the invocation it holds.
struct Environment {
    function: Arc<Function>,
    holding: Mutex<Option<Held>>,
    kill: Notify,
}

impl Environment {
    fn finish(&self, id: &str, result: Result<Value, InvokeError>) -> Response {
        let mut holding = self.holding.lock().unwrap_or_else(|e| e.into_inner());
        match holding.take() {
            Some((held, reply)) if held == id => {
                let _ = reply.send(result);
                (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
            }
            other => {
                *holding = other;
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({
                        "errorMessage": format!("no invocation {id} is in progress here"),
                        "errorType": "InvalidRequestID"
                    })),
                )
                    .into_response()
            }
        }
    }
}

/// `GET /runtime/invocation/next`: waits for an invocation; the event is the body.
async fn next(State(env): State<Arc<Environment>>) -> Response {
    let f = &env.function;
    f.idle.fetch_add(1, Ordering::SeqCst);
    let invocation = {
        let mut pending = f.pending.lock().await;
        pending.recv().await
    };
    f.idle.fetch_sub(1, Ordering::SeqCst);
    let Some(invocation) = invocation else {
        return StatusCode::GONE.into_response();
    };
    let deadline = now_ms() + f.timeout.as_millis() as u64;
    let id = invocation.request_id.clone();
    *env.holding.lock().unwrap_or_else(|e| e.into_inner()) = Some((id.clone(), invocation.reply));
    // The timeout: fail the invocation and kill the process that still holds it.
    let watchdog = env.clone();
    let timeout = f.timeout;
    let watched = id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let expired = {
            let mut holding = watchdog.holding.lock().unwrap_or_else(|e| e.into_inner());
            match holding.take() {
                Some((held, reply)) if held == watched => Some(reply),
                other => {
                    *holding = other;
                    None
                }
            }
        };
        if let Some(reply) = expired {
            tracing::warn!(function = %watchdog.function.name, request = %watched, "invocation timed out");
            let _ = reply.send(Err(InvokeError::Timeout));
            watchdog.kill.notify_one();
        }
    });
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("lambda-runtime-aws-request-id", id.clone());
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set("lambda-runtime-invoked-function-arn", f.arn());
    set(
        "lambda-runtime-trace-id",
        format!(
            "Root=1-{:08x}-{};Parent={};Sampled=0",
            now_ms() / 1000,
            dynamowave_core::types::random_token(24).to_lowercase(),
            &id[..16.min(id.len())]
        ),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, invocation.event.to_string()).into_response()
}

/// `POST /runtime/invocation/{id}/response`.
async fn response(
    State(env): State<Arc<Environment>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    env.finish(&id, Ok(value))
}

/// `POST /runtime/invocation/{id}/error`: `{"errorMessage", "errorType"}`.
async fn error(
    State(env): State<Arc<Environment>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    tracing::warn!(function = %env.function.name, request = %id, error = %text, "the function failed");
    env.finish(&id, Err(InvokeError::Function(text)))
}

/// `POST /runtime/init/error`: the process could not initialize; Lambda then stops it.
async fn init_error(State(env): State<Arc<Environment>>, body: Bytes) -> Response {
    tracing::error!(function = %env.function.name, error = %String::from_utf8_lossy(&body), "init error");
    env.kill.notify_one();
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

/// A request id in Lambda's form (a UUID v4 layout).
fn uuid_like() -> String {
    let hex: String = dynamowave_core::types::random_token(64)
        .bytes()
        .map(|b| char::from(b"0123456789abcdef"[(b % 16) as usize]))
        .take(32)
        .collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}
