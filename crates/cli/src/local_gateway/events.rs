//! The API Gateway WebSocket proxy events, field for field as AWS sends them to a Lambda
//! function (AWS_PROXY integration).

use std::collections::HashMap;

use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

/// What every event of one connection shares.
pub struct ConnectionFacts {
    pub connection_id: String,
    pub connected_at: u64,
    pub source_ip: String,
    pub user_agent: String,
}

/// The gateway's own facts.
pub struct Api {
    pub api_id: String,
    pub region: String,
    pub stage: String,
}

impl Api {
    pub fn domain_name(&self) -> String {
        format!("{}.execute-api.{}.amazonaws.com", self.api_id, self.region)
    }
}

/// API Gateway's request ids: 16 characters, base64 with a padding `=`.
pub fn request_id() -> String {
    format!("{}=", dynamowave_core::types::random_token(15))
}

/// `requestTime`, as API Gateway writes it: `06/Dec/2026:10:00:00 +0000`.
fn request_time(ms: u64) -> String {
    let format = time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

fn context(api: &Api, c: &ConnectionFacts, route: &str, event_type: &str, now: u64) -> Value {
    let id = request_id();
    json!({
        "routeKey": route,
        "eventType": event_type,
        "extendedRequestId": id,
        "requestTime": request_time(now),
        "messageDirection": "IN",
        "stage": api.stage,
        "connectedAt": c.connected_at,
        "requestTimeEpoch": now,
        "identity": {"sourceIp": c.source_ip, "userAgent": c.user_agent},
        "requestId": id,
        "domainName": api.domain_name(),
        "connectionId": c.connection_id,
        "apiId": api.api_id,
    })
}

/// `$connect`: the upgrade request's headers and query string, as single and multi values.
pub fn connect(
    api: &Api,
    c: &ConnectionFacts,
    headers: &HeaderMap,
    query: &[(String, String)],
    now: u64,
) -> Value {
    let mut single = Map::new();
    let mut multi: Map<String, Value> = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // API Gateway keeps the client's capitalization; http lower-cases names. The handlers
        // read headers case-insensitively, as they must on AWS.
        let name = name.as_str().to_owned();
        single.insert(name.clone(), json!(value));
        match multi.get_mut(&name) {
            Some(Value::Array(values)) => values.push(json!(value)),
            _ => {
                multi.insert(name, json!([value]));
            }
        }
    }
    let mut query_single = Map::new();
    let mut query_multi: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, v) in query {
        query_single.insert(k.clone(), json!(v));
        query_multi.entry(k).or_default().push(v);
    }
    let mut event = json!({
        "headers": single,
        "multiValueHeaders": multi,
        "requestContext": context(api, c, "$connect", "CONNECT", now),
        "isBase64Encoded": false,
    });
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query_single);
        event["multiValueQueryStringParameters"] = json!(query_multi);
    }
    event
}

/// A frame, routed by `$request.body.action`.
pub fn message(
    api: &Api,
    c: &ConnectionFacts,
    route: &str,
    body: String,
    base64: bool,
    now: u64,
) -> Value {
    let mut ctx = context(api, c, route, "MESSAGE", now);
    ctx["messageId"] = json!(request_id());
    json!({
        "requestContext": ctx,
        "body": body,
        "isBase64Encoded": base64,
    })
}

/// `$disconnect`, with the close code and reason as API Gateway reports them.
pub fn disconnect(api: &Api, c: &ConnectionFacts, code: u16, reason: &str, now: u64) -> Value {
    let mut ctx = context(api, c, "$disconnect", "DISCONNECT", now);
    ctx["disconnectStatusCode"] = json!(code);
    ctx["disconnectReason"] = json!(reason);
    json!({
        "headers": {"Host": api.domain_name(), "x-api-key": "", "x-restapi": ""},
        "multiValueHeaders": {"Host": [api.domain_name()], "x-api-key": [""], "x-restapi": [""]},
        "requestContext": ctx,
        "isBase64Encoded": false,
    })
}

/// The route key of a frame: its `action` when that is a route, else `$default`.
pub fn route_of(body: &str, routes: &[String]) -> String {
    #[derive(serde::Deserialize)]
    struct Action<'a> {
        #[serde(borrow)]
        action: Option<std::borrow::Cow<'a, str>>,
    }
    // Only an object has `$request.body.action`; serde would also read a struct from an array.
    if !body.trim_start().starts_with('{') {
        return "$default".to_owned();
    }
    match serde_json::from_str::<Action>(body) {
        Ok(Action {
            action: Some(action),
        }) if routes.iter().any(|r| *r == action) => action.into_owned(),
        _ => "$default".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_action() {
        let routes = vec!["sendmessage".to_owned(), "join".to_owned()];
        assert_eq!(route_of(r#"{"action":"join","room":"a"}"#, &routes), "join");
        assert_eq!(route_of(r#"{"action":"dance"}"#, &routes), "$default");
        assert_eq!(route_of("not json", &routes), "$default");
        assert_eq!(route_of(r#"{"action":7}"#, &routes), "$default");
        assert_eq!(route_of(r#"["sendmessage"]"#, &routes), "$default");
    }

    #[test]
    fn request_time_is_api_gateways_format() {
        assert_eq!(
            request_time(1_796_551_200_000),
            "06/Dec/2026:10:00:00 +0000"
        );
    }
}
