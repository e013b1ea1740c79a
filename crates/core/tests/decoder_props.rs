//! Property tests of the frame decoder and the route parser ([`ClientFrame::decode`]) and of the
//! validated types behind them, on hostile input: arbitrary text and bytes, and JSON objects
//! that are well-formed but wrong (wrong types, huge and negative numbers, floats, deep
//! nesting, unknown and duplicate fields, escapes, unicode, overlong ids and room names).
//!
//! Structured frames are checked against a model of docs/protocol.md written here: the decoder
//! must give exactly the frame the model gives, or an error naming the field the model names.
//! Valid frames are written the way a client would (and with every character escaped) and must
//! decode to what was written; server frames must survive `to_json` and back.
//!
//! Case counts are kept small for CI (the whole file runs in a few seconds); raise them with
//! `PROPTEST_CASES=100000 cargo test -p dynamowave-core --test decoder_props --release`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use dynamowave_core::protocol::{
    ChatMessage, ClientFrame, ConnectionInfo, DecodeError, HistoryQuery, Identity,
    MAX_HISTORY_LIMIT, Member, Mode, PresenceEvent, ServerFrame,
};
use dynamowave_core::types::{MAX_MESSAGE_ID_LEN, MAX_ROOM_LEN, MAX_USER_LEN};
use dynamowave_core::{ChatError, ConnectionId, ErrorCode, RoomId, Seq, UserName};
use proptest::prelude::*;

/// The fields the decoder reads; any other key is ignored.
const KNOWN: [&str; 8] = [
    "action", "room", "data", "message", "id", "after", "before", "limit",
];
const ACTIONS: [&str; 7] = [
    "sendmessage",
    "join",
    "leave",
    "history",
    "members",
    "SendMessage",
    "whoami",
];
/// serde_json's recursion limit, which deeper values must not run into.
const SERDE_JSON_DEPTH_LIMIT: usize = 128;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES, when set, wins over the defaults chosen here for CI.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// A JSON value as a client may write it.

#[derive(Clone, Debug)]
enum Json {
    Null,
    Bool(bool),
    /// A number exactly as written: `0`, `18446744073709551616`, `-1`, `-0`, `1.5`, `1E400`...
    Number(String),
    Str(Text),
    Array(Vec<Json>),
    Object(Vec<(Text, Json)>),
    /// `[[[...]]]` this deep, past serde_json's recursion limit (128). The decoder only skips
    /// over values (without recursion), so this is just an array: never a stack overflow.
    Deep(usize),
}

/// A string and how its characters are written.
#[derive(Clone, Debug)]
struct Text {
    value: String,
    escapes: Escapes,
}

#[derive(Clone, Copy, Debug)]
enum Escapes {
    /// Only what JSON requires (what `serde_json` writes).
    Minimal,
    /// Every character as `\uXXXX` (UTF-16, with surrogate pairs).
    All,
    /// Every other character escaped.
    Mixed,
}

impl Text {
    fn plain(value: &str) -> Self {
        Text {
            value: value.to_owned(),
            escapes: Escapes::Minimal,
        }
    }

    fn write(&self, out: &mut String) {
        out.push('"');
        for (i, c) in self.value.chars().enumerate() {
            let escape = match self.escapes {
                Escapes::Minimal => false,
                Escapes::All => true,
                Escapes::Mixed => i % 2 == 0,
            };
            if escape {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            } else {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
                    c => out.push(c),
                }
            }
        }
        out.push('"');
    }
}

impl Json {
    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => write!(out, "{b}").unwrap(),
            Json::Number(n) => out.push_str(n),
            Json::Str(t) => t.write(out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(fields) => write_object(fields, out),
            Json::Deep(depth) => {
                out.push_str(&"[".repeat(*depth));
                out.push_str(&"]".repeat(*depth));
            }
        }
    }
}

fn write_object(fields: &[(Text, Json)], out: &mut String) {
    out.push('{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(if i % 3 == 0 { " ,\n " } else { "," });
        }
        key.write(out);
        out.push(':');
        value.write(out);
    }
    out.push('}');
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn escapes() -> impl Strategy<Value = Escapes> {
    prop_oneof![
        6 => Just(Escapes::Minimal),
        1 => Just(Escapes::All),
        1 => Just(Escapes::Mixed),
    ]
}

/// Strings a hostile client sends: anything, near the limits, in several alphabets.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.-]{1,64}",
        "[A-Za-z0-9_.-]{65,70}",
        "[ \t\r\nA-Za-z0-9 /é漢😀\u{0}\u{7f}\u{85}\u{2028}\u{feff}]{0,20}",
        // Around the 128-byte `id` limit in 1-, 2- and 4-byte characters.
        (120usize..=136).prop_map(|n| "x".repeat(n)),
        (60usize..=68).prop_map(|n| "é".repeat(n)),
        (30usize..=34).prop_map(|n| "😀".repeat(n)),
        // Overlong.
        (1000usize..5000).prop_map(|n| "y".repeat(n)),
        Just(String::new()),
        prop::sample::select(ACTIONS.to_vec()).prop_map(str::to_owned),
    ]
}

fn text() -> impl Strategy<Value = Text> {
    (hostile_string(), escapes()).prop_map(|(value, escapes)| Text { value, escapes })
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..1000).prop_map(|n| n.to_string()),
        (0u64..600).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        Just(u64::MAX.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("340282366920938463463374607431768211456".to_owned()),
        Just("-0".to_owned()),
        Just("-1".to_owned()),
        Just("1.0".to_owned()),
        Just("1e2".to_owned()),
        Just("1E400".to_owned()),
        Just("-1e-400".to_owned()),
        "[1-9][0-9]{0,60}",
    ]
}

fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number().prop_map(Json::Number),
        text().prop_map(Json::Str),
        (SERDE_JSON_DEPTH_LIMIT + 2..400).prop_map(Json::Deep),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec((text(), inner), 0..4).prop_map(Json::Object),
        ]
    })
}

/// A value for a known field: mostly plausible for some field, often wrong for this one.
fn field_value() -> impl Strategy<Value = Json> {
    prop_oneof![
        4 => text().prop_map(Json::Str),
        3 => number().prop_map(Json::Number),
        1 => Just(Json::Null),
        1 => any::<bool>().prop_map(Json::Bool),
        1 => json(),
    ]
}

fn key() -> impl Strategy<Value = Text> {
    let name = prop_oneof![
        6 => prop::sample::select(KNOWN.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["Action", "ROOM", "action ", "", "type", "user", "rooms"])
            .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    (name, escapes()).prop_map(|(value, escapes)| Text { value, escapes })
}

/// A frame: an action (usually one the server knows), then fields, known ones repeated at times.
fn frame_fields() -> impl Strategy<Value = Vec<(Text, Json)>> {
    let action = prop_oneof![
        6 => (prop::sample::select(ACTIONS.to_vec()), escapes()).prop_map(|(a, escapes)| {
            Some(Json::Str(Text { value: a.to_owned(), escapes }))
        }),
        1 => field_value().prop_map(Some),
        1 => Just(None),
    ];
    (
        action,
        prop::collection::vec((key(), field_value()), 0..6),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(action, mut fields, at)| {
            if let Some(action) = action {
                let at = at.index(fields.len() + 1);
                fields.insert(at, (Text::plain("action"), action));
            }
            fields
        })
}

// ---------------------------------------------------------------------------------------------
// The model: what docs/protocol.md says a frame decodes to.

#[derive(Debug)]
enum Expected {
    /// Not a JSON object (or one that repeats a field the server reads).
    NotJson,
    /// `bad_request` whose message names the field (contains `needle`); the error carries `id`.
    Invalid {
        needle: &'static str,
        id: Option<String>,
    },
    Frame(ClientFrame<'static>),
}

/// A known field's value: `null` counts as absent.
fn get<'f>(fields: &'f [(Text, Json)], name: &str) -> Option<&'f Json> {
    fields
        .iter()
        .find(|(k, _)| k.value == name)
        .map(|(_, v)| v)
        .filter(|v| !matches!(v, Json::Null))
}

/// `Err(())` when present and not a string.
fn string(fields: &[(Text, Json)], name: &str) -> Result<Option<String>, ()> {
    match get(fields, name) {
        None => Ok(None),
        Some(Json::Str(t)) => Ok(Some(t.value.clone())),
        Some(_) => Err(()),
    }
}

/// JSON integers from 0 to 2^64-1 only; `Err(())` for anything else that is present.
fn integer(fields: &[(Text, Json)], name: &str) -> Result<Option<u64>, ()> {
    match get(fields, name) {
        None => Ok(None),
        Some(Json::Number(n)) if n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse().map(Some).map_err(|_| ())
        }
        Some(_) => Err(()),
    }
}

fn valid_room(name: &str) -> bool {
    (1..=MAX_ROOM_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn expect(fields: &[(Text, Json)], mode: Mode) -> Expected {
    for name in KNOWN {
        if fields.iter().filter(|(k, _)| k.value == name).count() > 1 {
            return Expected::NotJson;
        }
    }
    let action = string(fields, "action");
    if mode == Mode::Compat && action != Ok(Some("sendmessage".to_owned())) {
        return Expected::Frame(ClientFrame::Default {
            action: Cow::Owned(action.ok().flatten().unwrap_or_default()),
        });
    }
    // Errors carry the frame's `id` whenever it is a JSON string, whatever is wrong.
    let echo = string(fields, "id").ok().flatten();
    let invalid = |field: &'static str| Expected::Invalid {
        // How the decoder's messages name each field.
        needle: match field {
            "action" => "`action`",
            "data" => "`data`",
            "message" => "`message`",
            "id" => "`id`",
            "after" => "`after`",
            "before" => "`before`",
            "limit" => "limit",
            _ => "room",
        },
        id: echo.clone(),
    };
    macro_rules! field {
        ($e:expr, $name:literal) => {
            match $e {
                Ok(v) => v,
                Err(()) => return invalid($name),
            }
        };
    }
    let room = |required: bool| -> Result<Option<RoomId>, &'static str> {
        match string(fields, "room") {
            Err(()) => Err("room"),
            Ok(None) if required => Err("room"),
            Ok(None) => Ok(None),
            Ok(Some(name)) if valid_room(&name) => Ok(Some(RoomId::parse(&name).unwrap())),
            Ok(Some(_)) => Err("room"),
        }
    };
    let Some(action) = field!(action, "action") else {
        return invalid("action");
    };
    let frame = match action.as_str() {
        "sendmessage" => {
            let data = if get(fields, "data").is_some() {
                field!(string(fields, "data"), "data")
            } else {
                field!(string(fields, "message"), "message")
            };
            let Some(data) = data else {
                return invalid("data");
            };
            let id = field!(string(fields, "id"), "id");
            if id
                .as_ref()
                .is_some_and(|id| id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN)
            {
                return invalid("id");
            }
            let room = match room(false) {
                Ok(room) => room,
                Err(field) => return invalid(field),
            };
            ClientFrame::SendMessage {
                room,
                data: Cow::Owned(data),
                id: id.map(Cow::Owned),
            }
        }
        "join" | "leave" | "members" | "history" => {
            let room = match room(true) {
                Ok(room) => room.unwrap(),
                Err(field) => return invalid(field),
            };
            match action.as_str() {
                "join" => ClientFrame::Join {
                    room,
                    after: field!(integer(fields, "after"), "after").map(Seq),
                },
                "leave" => ClientFrame::Leave { room },
                "members" => ClientFrame::Members { room },
                _ => {
                    let before = field!(integer(fields, "before"), "before");
                    let after = field!(integer(fields, "after"), "after");
                    let limit = field!(integer(fields, "limit"), "limit");
                    if limit.is_some_and(|n| !(1..=MAX_HISTORY_LIMIT as u64).contains(&n)) {
                        return invalid("limit");
                    }
                    let limit = limit.map_or(50, |n| n as usize);
                    let query = match (before, after) {
                        (Some(_), Some(_)) => return invalid("before"),
                        (Some(b), None) => HistoryQuery::Before { seq: Seq(b), limit },
                        (None, Some(a)) => HistoryQuery::After { seq: Seq(a), limit },
                        (None, None) => HistoryQuery::Latest { limit },
                    };
                    ClientFrame::History { room, query }
                }
            }
        }
        _ => ClientFrame::Default {
            action: Cow::Owned(action),
        },
    };
    Expected::Frame(frame)
}

/// What every decode must satisfy, whatever the input.
fn check_any(text: &str, mode: Mode) -> Result<Option<ClientFrame<'_>>, TestCaseError> {
    match ClientFrame::decode(text, mode) {
        Ok(frame) => {
            if let ClientFrame::SendMessage { id: Some(id), .. } = &frame {
                prop_assert!((1..=MAX_MESSAGE_ID_LEN).contains(&id.len()), "id {id:?}");
            }
            if mode == Mode::Compat {
                prop_assert!(
                    matches!(
                        frame,
                        ClientFrame::SendMessage { .. } | ClientFrame::Default { .. }
                    ),
                    "compat mode has only sendmessage and $default: {frame:?}"
                );
            }
            Ok(Some(frame))
        }
        Err(DecodeError::NotJson(detail)) => {
            prop_assert!(!detail.is_empty());
            let error = ChatError::from(DecodeError::NotJson(detail));
            prop_assert_eq!(error.code, ErrorCode::BadRequest);
            prop_assert!(error.message.starts_with("frames must be JSON objects"));
            Ok(None)
        }
        Err(DecodeError::Invalid { error, .. }) => {
            prop_assert_eq!(error.code, ErrorCode::BadRequest);
            prop_assert!(
                KNOWN.iter().any(|f| error.message.contains(f)),
                "the message names no field: {}",
                error.message
            );
            Ok(None)
        }
    }
}

fn modes() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::V1), Just(Mode::Compat)]
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), mode in modes()) {
        check_any(&text, mode)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), mode in modes()) {
        // Text frames are UTF-8 (tungstenite refuses others); give the decoder what is left.
        let text = String::from_utf8_lossy(&bytes);
        check_any(&text, mode)?;
        let mut framed = String::from("{");
        framed.push_str(&text);
        check_any(&framed, mode)?;
    }

    #[test]
    fn json_like_text_never_panics(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                "{", "}", "[", "]", ":", ",", "\"", "\\", "\\u", "\\ud800", "\\udc00", "null",
                "\"action\"", "\"sendmessage\"", "\"room\"", "\"id\"", "\"after\"", "1e999", "-",
                "0", " ", "\u{0}",
            ]),
            0..40,
        ),
        mode in modes(),
    ) {
        check_any(&parts.concat(), mode)?;
    }
}

proptest! {
    #![proptest_config(config(1500))]

    /// Well-formed JSON objects with any fields: the decoder agrees with the model.
    #[test]
    fn structured_frames_follow_the_protocol(
        fields in frame_fields(),
        mode in modes(),
        space in prop::sample::select(vec!["", " ", "\n\t "]),
        trailing in prop::sample::select(vec!["", " ", "\n", " x", "{}", "]"]),
    ) {
        let mut text = String::from(space);
        write_object(&fields, &mut text);
        text.push_str(trailing);
        let decoded = ClientFrame::decode(&text, mode);
        check_any(&text, mode)?;
        let expected = if trailing.trim().is_empty() { expect(&fields, mode) } else { Expected::NotJson };
        match (&expected, &decoded) {
            (Expected::NotJson, Err(DecodeError::NotJson(_))) => {}
            (Expected::Invalid { needle, id }, Err(DecodeError::Invalid { error, id: got_id })) => {
                prop_assert!(
                    error.message.contains(needle),
                    "expected an error about {}, got {:?} for {}", needle, error.message, text
                );
                prop_assert_eq!(id, got_id, "echoed id for {}", text);
            }
            (Expected::Frame(want), Ok(got)) => prop_assert_eq!(want, got, "{}", text),
            _ => prop_assert!(false, "expected {:?}, got {:?} for {}", expected, decoded, text),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips.

fn room_name() -> impl Strategy<Value = RoomId> {
    "[A-Za-z0-9_.-]{1,64}".prop_map(|n| RoomId::parse(&n).unwrap())
}

fn message_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9-]{1,32}",
        any::<String>().prop_filter("1 to 128 bytes", |s| {
            (1..=MAX_MESSAGE_ID_LEN).contains(&s.len())
        }),
        (1usize..=64).prop_map(|n| "é".repeat(n)),
    ]
}

fn history_query() -> impl Strategy<Value = HistoryQuery> {
    let limit = 1..=MAX_HISTORY_LIMIT;
    prop_oneof![
        limit
            .clone()
            .prop_map(|limit| HistoryQuery::Latest { limit }),
        (any::<u64>(), limit.clone())
            .prop_map(|(s, limit)| HistoryQuery::Before { seq: Seq(s), limit }),
        (any::<u64>(), limit).prop_map(|(s, limit)| HistoryQuery::After { seq: Seq(s), limit }),
    ]
}

/// A valid client frame and the JSON a client would send for it.
fn valid_frame() -> impl Strategy<Value = (ClientFrame<'static>, serde_json::Value)> {
    use serde_json::json;
    prop_oneof![
        (
            prop::option::of(room_name()),
            any::<String>(),
            prop::option::of(message_id()),
            any::<bool>(),
        )
            .prop_map(|(room, data, id, tutorial_key)| {
                let mut v = json!({"action": "sendmessage"});
                v[if tutorial_key { "message" } else { "data" }] = data.clone().into();
                if let Some(room) = &room {
                    v["room"] = room.as_str().into();
                }
                if let Some(id) = &id {
                    v["id"] = id.clone().into();
                }
                let frame = ClientFrame::SendMessage {
                    room,
                    data: Cow::Owned(data),
                    id: id.map(Cow::Owned),
                };
                (frame, v)
            }),
        (room_name(), prop::option::of(any::<u64>())).prop_map(|(room, after)| {
            let mut v = json!({"action": "join", "room": room.as_str()});
            if let Some(after) = after {
                v["after"] = after.into();
            }
            (
                ClientFrame::Join {
                    room,
                    after: after.map(Seq),
                },
                v,
            )
        }),
        room_name().prop_map(|room| {
            let v = json!({"action": "leave", "room": room.as_str()});
            (ClientFrame::Leave { room }, v)
        }),
        room_name().prop_map(|room| {
            let v = json!({"action": "members", "room": room.as_str()});
            (ClientFrame::Members { room }, v)
        }),
        (room_name(), history_query(), any::<bool>()).prop_map(|(room, query, default_limit)| {
            let mut v = json!({"action": "history", "room": room.as_str()});
            let limit = match query {
                HistoryQuery::Latest { limit } => limit,
                HistoryQuery::Before { seq, limit } => {
                    v["before"] = seq.0.into();
                    limit
                }
                HistoryQuery::After { seq, limit } => {
                    v["after"] = seq.0.into();
                    limit
                }
            };
            let query = if default_limit {
                match query {
                    HistoryQuery::Latest { .. } => HistoryQuery::Latest { limit: 50 },
                    HistoryQuery::Before { seq, .. } => HistoryQuery::Before { seq, limit: 50 },
                    HistoryQuery::After { seq, .. } => HistoryQuery::After { seq, limit: 50 },
                }
            } else {
                v["limit"] = limit.into();
                query
            };
            (ClientFrame::History { room, query }, v)
        }),
        "[a-z]{0,12}"
            .prop_filter("not a route", |a| {
                !["sendmessage", "join", "leave", "history", "members"].contains(&a.as_str())
            })
            .prop_map(|action| {
                let v = json!({"action": action});
                (
                    ClientFrame::Default {
                        action: Cow::Owned(action),
                    },
                    v,
                )
            }),
    ]
}

/// The same JSON with every string escaped character by character.
fn escape_all(v: &serde_json::Value) -> String {
    fn go(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => Text {
                value: s.clone(),
                escapes: Escapes::All,
            }
            .write(out),
            serde_json::Value::Object(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    Text {
                        value: k.clone(),
                        escapes: Escapes::All,
                    }
                    .write(out);
                    out.push(':');
                    go(v, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    go(v, &mut out);
    out
}

fn user_name() -> impl Strategy<Value = UserName> {
    prop_oneof!["[a-z][a-z0-9-]{0,20}", any::<String>(),]
        .prop_filter_map("a valid name", |n| UserName::parse(&n).ok())
}

fn connection_id() -> impl Strategy<Value = ConnectionId> {
    "[A-Za-z0-9_=.-]{1,128}".prop_map(|id| ConnectionId::parse(&id).unwrap())
}

fn chat_message() -> impl Strategy<Value = Arc<ChatMessage>> {
    (
        room_name(),
        any::<u64>(),
        message_id(),
        user_name(),
        any::<String>(),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        reaction_counts(),
    )
        .prop_map(|(room, seq, id, user, data, ts, edited_at, reactions)| {
            let mut m = ChatMessage::new(room, Seq(seq), id, user, data, ts);
            m.edited_at = edited_at;
            m.reactions = reactions;
            Arc::new(m)
        })
}

fn reaction_counts() -> impl Strategy<Value = std::collections::BTreeMap<String, u64>> {
    prop::collection::btree_map("[^\\s]{1,8}", 1..u64::MAX, 0..4)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::NotJoined,
        ErrorCode::Gone,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ])
}

/// Every server frame but `connected`, whose limits are still growing (issue 6).
fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        chat_message().prop_map(ServerFrame::Message),
        (
            message_id(),
            room_name(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(id, room, seq, ts, duplicate)| ServerFrame::Ack {
                id,
                room,
                seq: Seq(seq),
                ts,
                duplicate
            }),
        (room_name(), any::<u64>(), any::<u64>()).prop_map(|(room, seq, last_read)| {
            ServerFrame::Joined {
                room,
                seq: Seq(seq),
                last_read: Seq(last_read),
            }
        }),
        (
            room_name(),
            any::<u64>(),
            any::<String>(),
            user_name(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(room, seq, data, user, edited_at, event_seq)| {
                ServerFrame::Edited {
                    room,
                    seq: Seq(seq),
                    data,
                    user,
                    edited_at,
                    event_seq: Seq(event_seq),
                }
            }),
        (room_name(), any::<u64>(), any::<u64>()).prop_map(|(room, seq, event_seq)| {
            ServerFrame::Deleted {
                room,
                seq: Seq(seq),
                event_seq: Seq(event_seq),
            }
        }),
        (
            room_name(),
            any::<u64>(),
            "[^\\s]{1,8}",
            user_name(),
            any::<bool>(),
            reaction_counts(),
            any::<u64>()
        )
            .prop_map(|(room, seq, emoji, user, on, counts, event_seq)| {
                ServerFrame::Reaction {
                    room,
                    seq: Seq(seq),
                    emoji,
                    user,
                    on,
                    counts,
                    event_seq: Seq(event_seq),
                }
            }),
        (room_name(), user_name(), any::<u64>()).prop_map(|(room, user, seq)| {
            ServerFrame::Read {
                room,
                user,
                seq: Seq(seq),
            }
        }),
        (room_name(), user_name()).prop_map(|(room, user)| ServerFrame::Typing { room, user }),
        room_name().prop_map(|room| ServerFrame::Left { room }),
        (room_name(), any::<bool>(), user_name(), connection_id()).prop_map(
            |(room, joined, user, connection_id)| ServerFrame::Presence {
                room,
                event: if joined {
                    PresenceEvent::Joined
                } else {
                    PresenceEvent::Left
                },
                user,
                connection_id,
            }
        ),
        (
            room_name(),
            prop::collection::vec(chat_message(), 0..4),
            any::<bool>()
        )
            .prop_map(|(room, messages, more)| ServerFrame::History {
                room,
                messages,
                more
            }),
        (
            room_name(),
            prop::collection::vec((connection_id(), user_name(), any::<u64>()), 0..4)
        )
            .prop_map(|(room, members)| ServerFrame::Members {
                room,
                members: members
                    .into_iter()
                    .map(|(connection_id, user, last_read)| Member {
                        connection_id,
                        user,
                        last_read: Seq(last_read),
                    })
                    .collect(),
            }),
        (
            any::<String>(),
            connection_id(),
            any::<String>(),
            any::<String>(),
            any::<String>()
        )
            .prop_map(
                |(message, connection_id, connected_at, source_ip, user_agent)| {
                    ServerFrame::Info {
                        message,
                        connection: ConnectionInfo {
                            connection_id,
                            connected_at: connected_at.clone(),
                            identity: Identity {
                                source_ip,
                                user_agent,
                            },
                            last_active_at: connected_at,
                        },
                    }
                }
            ),
        (
            prop::option::of(any::<String>()),
            error_code(),
            any::<String>(),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(id, code, message, retry_after_ms)| ServerFrame::Error {
                id,
                code,
                message,
                retry_after_ms
            }),
    ]
}

proptest! {
    #![proptest_config(config(1000))]

    /// Valid frames decode to what was sent, in both modes where the route exists, however
    /// the JSON escapes its strings.
    #[test]
    fn valid_frames_round_trip((frame, json) in valid_frame()) {
        for text in [json.to_string(), escape_all(&json), serde_json::to_string_pretty(&json).unwrap()] {
            let decoded = ClientFrame::decode(&text, Mode::V1);
            prop_assert_eq!(decoded.as_ref(), Ok(&frame), "{}", text);
            let compat = ClientFrame::decode(&text, Mode::Compat).unwrap();
            match &frame {
                ClientFrame::SendMessage { .. } => prop_assert_eq!(&compat, &frame),
                ClientFrame::Default { action } => {
                    prop_assert_eq!(compat, ClientFrame::Default { action: action.clone() })
                }
                // Compat mode has no other route: `$default`, with the action named.
                _ => prop_assert!(
                    matches!(compat, ClientFrame::Default { .. }),
                    "compat mode routes {} to $default",
                    text
                ),
            }
        }
    }

    /// What the server sends parses back to the same frame.
    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let json = frame.to_json();
        let back: ServerFrame = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &frame);
        prop_assert_eq!(back.to_json(), json);
    }

    /// The validated types accept exactly what docs/protocol.md says, and never panic.
    #[test]
    fn names_and_ids_are_validated(s in hostile_string()) {
        prop_assert_eq!(RoomId::parse(&s).is_ok(), valid_room(&s));
        if let Ok(room) = RoomId::parse(&s) {
            prop_assert_eq!(room.as_str(), s.as_str());
            let json = serde_json::to_string(&room).unwrap();
            prop_assert_eq!(serde_json::from_str::<RoomId>(&json).unwrap(), room);
        } else {
            let error = RoomId::parse(&s).unwrap_err();
            prop_assert_eq!(error.code, ErrorCode::BadRequest);
            prop_assert!(error.message.contains("invalid room name"));
            prop_assert!(serde_json::from_str::<RoomId>(&serde_json::to_string(&s).unwrap()).is_err());
        }

        let trimmed = s.trim();
        let valid_user = (1..=MAX_USER_LEN).contains(&trimmed.len())
            && !trimmed.chars().any(char::is_control);
        match UserName::parse(&s) {
            Ok(user) => {
                prop_assert!(valid_user);
                prop_assert_eq!(user.as_str(), trimmed);
            }
            Err(e) => {
                prop_assert!(!valid_user);
                prop_assert!(e.message.contains("invalid user name"));
            }
        }

        let valid_connection = (1..=128).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=.".contains(&b));
        prop_assert_eq!(ConnectionId::parse(&s).is_ok(), valid_connection);
    }

    /// `history` and `GET /rooms/{room}/messages` share this parser.
    #[test]
    fn history_parameters(
        before in prop::option::of(any::<u64>()),
        after in prop::option::of(any::<u64>()),
        limit in prop::option::of(prop_oneof![any::<u64>(), 0u64..=501]),
    ) {
        let result = HistoryQuery::from_params(before, after, limit);
        let limit_ok = limit.is_none_or(|n| (1..=MAX_HISTORY_LIMIT as u64).contains(&n));
        prop_assert_eq!(result.is_ok(), limit_ok && !(before.is_some() && after.is_some()));
        match result {
            Ok(query) => prop_assert_eq!(query.limit() as u64, limit.unwrap_or(50)),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::BadRequest);
                prop_assert!(e.message.contains("limit") || e.message.contains("`before`"), "{}", e.message);
            }
        }
    }
}

// A few hostile frames written out, so that their outcome is visible at a glance.
#[test]
fn hostile_examples() {
    let invalid_about = |text: &str, field: &str| match ClientFrame::decode(text, Mode::V1) {
        Err(DecodeError::Invalid { error, .. }) => {
            assert!(error.message.contains(field), "{text}: {}", error.message)
        }
        other => panic!("{text}: expected an error about {field}, got {other:?}"),
    };
    let not_json = |text: &str| {
        assert!(
            matches!(
                ClientFrame::decode(text, Mode::V1),
                Err(DecodeError::NotJson(_))
            ),
            "{text}"
        )
    };
    invalid_about(
        r#"{"action":"join","room":"r","after":18446744073709551616}"#,
        "`after`",
    );
    invalid_about(r#"{"action":"join","room":"r","after":-0}"#, "`after`");
    invalid_about(r#"{"action":"join","room":"r","after":1e3}"#, "`after`");
    invalid_about(
        r#"{"action":"history","room":"r","limit":1E400}"#,
        "`limit`",
    );
    invalid_about(
        r#"{"action":"sendmessage","data":"x","id":"\ud800"}"#,
        "`id`",
    );
    invalid_about(
        &format!(r#"{{"action":"join","room":"{}"}}"#, "r".repeat(65)),
        "room",
    );
    invalid_about(
        &format!(
            r#"{{"action":"sendmessage","data":"x","id":"{}"}}"#,
            "é".repeat(65)
        ),
        "`id`",
    );
    not_json(r#"{"action":"join","action":"join","room":"r"}"#);
    not_json(r#"{"action":"join","room":"r","room":null}"#);
    // Nesting deeper than any recursion limit, in a frame the size of the message limit: an
    // unknown field is skipped (without recursion), a known one is of the wrong type.
    let deep = format!("{}{}", "[".repeat(65_000), "]".repeat(65_000));
    assert_eq!(
        ClientFrame::decode(
            &format!(r#"{{"action":"leave","room":"r","x":{deep}}}"#),
            Mode::V1
        ),
        Ok(ClientFrame::Leave {
            room: RoomId::parse("r").unwrap()
        })
    );
    invalid_about(&format!(r#"{{"action":"leave","room":{deep}}}"#), "`room`");
    invalid_about(
        &format!(r#"{{"action":"sendmessage","data":{{"a":{deep}}}}}"#),
        "`data`",
    );
    not_json("\u{feff}{\"action\":\"join\",\"room\":\"r\"}");
    // Unknown fields are ignored, however odd; escaped keys are the same keys.
    assert_eq!(
        ClientFrame::decode(
            r#"{"\u0061ction":"le\u0061ve","ro\u006fm":"r","":{"a":[1,2e9]},"Action":7}"#,
            Mode::V1
        ),
        Ok(ClientFrame::Leave {
            room: RoomId::parse("r").unwrap()
        })
    );
}
