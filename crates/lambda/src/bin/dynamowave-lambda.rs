//! The Lambda function's `bootstrap`: every route's function runs this one binary (the event's
//! `eventType` picks the route). Settings come from the environment: see `Config::from_env`.

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use dynamowave_lambda::{Config, Handler};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // One JSON object per line: what CloudWatch Logs Insights queries best.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_current_span(false)
        .without_time() // CloudWatch stamps every line
        .init();
    let config = Config::from_env()?;
    let sdk = aws_config::load_from_env().await;
    let handler = Handler::new(&sdk, config);
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let handler = handler.clone();
            async move { handler.handle(event.payload).await }
        },
    ))
    .await
}
