//! Authentication on `$connect` (`auth = jwt`) and authorization by the token's claims, against
//! the real server: HS256, EdDSA and RS256 keys (made at test time), a JWKS, every refusal with
//! its 401 and reason, the three token carriers, the `rooms` claim, and the management API
//! refusing user tokens.

mod common;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{TestServer, until};
use dynamowave_client::{Client, CompatClient};
use dynamowave_core::ErrorCode;
use dynamowave_core::protocol::ServerFrame;
use dynamowave_server::ServerConfig;
use dynamowave_server::config::{AuthConfig, AuthMode};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt_config(auth: AuthConfig) -> ServerConfig {
    ServerConfig {
        auth: AuthConfig {
            mode: AuthMode::Jwt,
            ..auth
        },
        ..ServerConfig::unthrottled()
    }
}

fn hs256_config() -> ServerConfig {
    jwt_config(AuthConfig {
        jwt_secret: Some(SECRET.to_owned()),
        ..AuthConfig::default()
    })
}

fn sign(header: Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn hs256(claims: Value) -> String {
    sign(
        Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// Claims for `user`, valid for an hour.
fn claims(user: &str) -> Value {
    json!({"sub": user, "iat": now(), "exp": now() + 3600})
}

/// An Ed25519 key pair: (PKCS#8 private PEM, public PEM, raw public key).
fn ed25519_pem() -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    (
        key.serialize_pem(),
        key.public_key_pem(),
        key.public_key_raw().to_vec(),
    )
}

/// An RSA key pair of `bits`: (private PEM, public PEM). openssl is quick; the `rsa` crate, the
/// fallback, takes a while in a debug build.
fn rsa_pem(dir: &Path, bits: usize) -> (String, String) {
    let private = dir.join(format!("rsa-{bits}-{}.pem", rand_suffix()));
    let public = private.with_extension("pub.pem");
    let made = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
        .arg(format!("rsa_keygen_bits:{bits}"))
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .status()
            .is_ok_and(|s| s.success());
    if made {
        return (
            std::fs::read_to_string(&private).unwrap(),
            std::fs::read_to_string(&public).unwrap(),
        );
    }
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap();
    (
        key.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
        key.to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
}

fn rand_suffix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ u64::from(std::process::id())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn ws(server: &TestServer, query: &str) -> String {
    format!("ws://{}/ws{query}", server.addr)
}

/// The user the server gave the connection in `connected`.
fn user_of(c: &Client) -> &str {
    match &c.connected {
        ServerFrame::Connected { user, .. } => user.as_str(),
        other => panic!("{other:?}"),
    }
}

/// Asserts a 401 whose message contains `says`, and returns the message.
async fn unauthorized(server: &TestServer, target: &str, headers: &[(&str, &str)], says: &str) {
    let (status, head, body) = common::raw_upgrade(server.addr, target, headers).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(says), "expected {says:?} in {message:?}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(
        !target.contains("token=") || !message.contains(target.split("token=").nth(1).unwrap()),
        "the token is never echoed"
    );
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn hs256_token_names_the_user_whatever_the_frame_or_name_says() {
    let server = TestServer::start_with(hs256_config()).await;
    let token = hs256(claims("alice"));
    // ?name= is ignored in jwt mode.
    let mut alice = Client::connect_with_token(&ws(&server, "?name=mallory"), &token)
        .await
        .unwrap();
    assert_eq!(user_of(&alice), "alice");
    let mut watcher = Client::connect_with_token(&ws(&server, ""), &hs256(claims("bob")))
        .await
        .unwrap();
    assert_eq!(user_of(&watcher), "bob");
    for c in [&mut alice, &mut watcher] {
        c.join("general", None).await.unwrap();
        until(c, |f| matches!(f, ServerFrame::Joined { .. })).await;
    }
    // A `user` field in the frame changes nothing: the decoder does not read it.
    alice
        .send_raw(
            json!({"action": "sendmessage", "room": "general", "data": "hi", "id": "m1", "user": "mallory"})
                .to_string(),
        )
        .await
        .unwrap();
    until(&mut alice, |f| matches!(f, ServerFrame::Ack { .. })).await;
    let (message, _) = until(&mut watcher, |f| matches!(f, ServerFrame::Message(_))).await;
    let ServerFrame::Message(m) = message else {
        unreachable!()
    };
    assert_eq!(m.user.as_str(), "alice");
    assert_eq!(m.data, "hi");

    // History says the same, and so does a compat connection's message (token in ?token=).
    let mut compat = CompatClient::connect(&ws(
        &server,
        &format!("?name=mallory&token={}", hs256(claims("carol"))),
    ))
    .await
    .unwrap();
    compat.send_message("from compat").await.unwrap();
    let (message, _) = until(&mut watcher, |f| matches!(f, ServerFrame::Message(_))).await;
    let ServerFrame::Message(m) = message else {
        unreachable!()
    };
    assert_eq!(m.user.as_str(), "carol");
    watcher.history("general", None, None, None).await.unwrap();
    let (history, _) = until(&mut watcher, |f| matches!(f, ServerFrame::History { .. })).await;
    let ServerFrame::History { messages, .. } = history else {
        unreachable!()
    };
    let users: Vec<&str> = messages.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, ["alice", "carol"]);
}

#[tokio::test]
async fn eddsa_and_rs256_tokens_verify_with_public_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ed_private, ed_public, _) = ed25519_pem();
    let (rsa_private, rsa_public) = rsa_pem(dir.path(), 2048);
    for (alg, private, public) in [
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ed_private.as_bytes()).unwrap(),
            ed_public,
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            rsa_public,
        ),
    ] {
        let config = jwt_config(AuthConfig {
            jwt_public_key: Some(write(dir.path(), &format!("{alg:?}.pub.pem"), &public)),
            ..AuthConfig::default()
        });
        let server = TestServer::start_with(config).await;
        let token = sign(Header::new(alg), &claims("dana"), &private);
        let mut c = Client::connect_with_token(&ws(&server, ""), &token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(user_of(&c), "dana", "{alg:?}");
        let (ack, _) = {
            c.join("r", None).await.unwrap();
            until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;
            c.send_and_ack("r", "signed", "s1").await.unwrap()
        };
        assert!(matches!(ack, ServerFrame::Ack { .. }));
        // An HS256 token is refused by a server that verifies with a public key.
        unauthorized(
            &server,
            "/ws",
            &[("authorization", &bearer(&hs256(claims("dana"))))],
            &format!("takes only {alg:?} tokens"),
        )
        .await;
        server.stop().await;
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: a server that let the token's alg choose would check this HMAC
    // with the public key's bytes as the secret, and anyone can read a public key.
    let dir = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = rsa_pem(dir.path(), 2048);
    let config = jwt_config(AuthConfig {
        jwt_public_key: Some(write(dir.path(), "rsa.pub.pem", &rsa_public)),
        ..AuthConfig::default()
    });
    let server = TestServer::start_with(config).await;
    let forged = sign(
        Header::new(Algorithm::HS256),
        &claims("mallory"),
        &EncodingKey::from_secret(rsa_public.as_bytes()),
    );
    unauthorized(
        &server,
        "/ws",
        &[("authorization", &bearer(&forged))],
        "signed with HS256, but this server takes only RS256 tokens",
    )
    .await;
    // Another RSA family algorithm is refused too: the key fixes RS256.
    let ps256 = sign(
        Header::new(Algorithm::PS256),
        &claims("mallory"),
        &EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
    );
    unauthorized(
        &server,
        "/ws",
        &[("authorization", &bearer(&ps256))],
        "takes only RS256 tokens",
    )
    .await;
    // A well-formed RS256 token from another key: a bad signature.
    let (other_private, _) = rsa_pem(dir.path(), 2048);
    let other = sign(
        Header::new(Algorithm::RS256),
        &claims("mallory"),
        &EncodingKey::from_rsa_pem(other_private.as_bytes()).unwrap(),
    );
    unauthorized(
        &server,
        "/ws",
        &[("authorization", &bearer(&other))],
        "signature does not verify",
    )
    .await;
}

#[tokio::test]
async fn jwks_kid_picks_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (ed_private, _, ed_public) = ed25519_pem();
    let (rsa_private, _) = rsa_pem(dir.path(), 2048);
    let ed = EncodingKey::from_ed_pem(ed_private.as_bytes()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".to_owned());
    let keys = vec![
        serde_json::from_value::<Jwk>(json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "kid": "ed-1",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&ed_public),
        }))
        .unwrap(),
        rsa_jwk,
    ];
    // A key the server cannot use is skipped, not fatal.
    let mut set = serde_json::to_value(JwkSet { keys }).unwrap();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}));
    let jwks = write(dir.path(), "jwks.json", &set.to_string());
    let server = TestServer::start_with(jwt_config(AuthConfig {
        jwks: Some(jwks),
        ..AuthConfig::default()
    }))
    .await;

    for (kid, key, alg, user) in [
        ("ed-1", &ed, Algorithm::EdDSA, "erin"),
        ("rsa-1", &rsa, Algorithm::RS256, "rick"),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        let token = sign(header, &claims(user), key);
        let c = Client::connect_with_token(&ws(&server, ""), &token)
            .await
            .unwrap_or_else(|e| panic!("{kid}: {e}"));
        assert_eq!(user_of(&c), user);
    }
    // The kid must be there and be known; and the key it names fixes the algorithm.
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("rsa-1".to_owned());
    let mismatched = sign(header, &claims("x"), &ed);
    unauthorized(
        &server,
        "/ws",
        &[("authorization", &bearer(&mismatched))],
        "takes only RS256 tokens",
    )
    .await;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("nope".to_owned());
    let unknown = sign(header, &claims("x"), &ed);
    unauthorized(
        &server,
        "/ws",
        &[("authorization", &bearer(&unknown))],
        "kid \"nope\" is not in the server's JWKS",
    )
    .await;
    let no_kid = sign(Header::new(Algorithm::EdDSA), &claims("x"), &ed);
    unauthorized(
        &server,
        "/ws",
        &[("authorization", &bearer(&no_kid))],
        "no kid header",
    )
    .await;
}

#[tokio::test]
async fn refusals_are_401_with_a_reason_before_the_upgrade() {
    let server = TestServer::start_with(hs256_config()).await;
    let t = now();
    let expired = hs256(json!({"sub": "a", "exp": t - 120}));
    let early = hs256(json!({"sub": "a", "exp": t + 3600, "nbf": t + 600}));
    let no_exp = hs256(json!({"sub": "a"}));
    let no_sub = hs256(json!({"exp": t + 60}));
    let wrong_key = sign(
        Header::new(Algorithm::HS256),
        &claims("a"),
        &EncodingKey::from_secret(b"not-the-server-secret-not-the-server-secret"),
    );
    // Missing: nothing in any of the three places (?name= does not count in jwt mode).
    unauthorized(&server, "/ws?name=alice", &[], "a token is required").await;
    unauthorized(
        &server,
        "/ws",
        &[("authorization", "Basic YWxpY2U6cHc=")],
        "not `Bearer <JWT>`",
    )
    .await;
    for (token, says) in [
        (expired.as_str(), "the token expired at "),
        (early.as_str(), "the token is not valid before "),
        (no_exp.as_str(), "no exp claim"),
        (no_sub.as_str(), "no sub claim"),
        (wrong_key.as_str(), "signature does not verify"),
        ("definitely-not-a-jwt", "not a JWT"),
    ] {
        unauthorized(&server, &format!("/ws?token={token}"), &[], says).await;
    }
    // Inside the leeway (30 s by default) a token still works.
    let just_expired = hs256(json!({"sub": "a", "exp": t - 5}));
    Client::connect_with_token(&ws(&server, ""), &just_expired)
        .await
        .unwrap();

    // Every refusal is counted by reason.
    let metrics = reqwest::get(server.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "missing",
        "expired",
        "not_yet_valid",
        "claims",
        "signature",
        "malformed",
    ] {
        assert!(
            metrics.contains(&format!(
                "dynamowave_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason} in {metrics}"
        );
    }
}

#[tokio::test]
async fn the_token_comes_in_any_of_three_carriers() {
    let server = TestServer::start_with(hs256_config()).await;
    let token = hs256(claims("tom"));

    // ?token=
    let c = Client::connect(&ws(&server, &format!("?token={token}")))
        .await
        .unwrap();
    assert_eq!(user_of(&c), "tom");
    // Authorization: Bearer
    let c = Client::connect_with_token(&ws(&server, ""), &token)
        .await
        .unwrap();
    assert_eq!(user_of(&c), "tom");
    // The subprotocol list, as a browser would send it; only dynamowave.v1 comes back.
    let mut request = ws(&server, "").into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(&format!("dynamowave.v1, dynamowave.token.{token}")).unwrap(),
    );
    let (_socket, response) = tokio_tungstenite::connect_async(request.clone())
        .await
        .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "dynamowave.v1",
        "the token protocol is never echoed"
    );
    let c = Client::connect_request(
        {
            let mut r = ws(&server, "").into_client_request().unwrap();
            r.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&format!("dynamowave.token.{token}")).unwrap(),
            );
            r
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(user_of(&c), "tom");

    // Two different tokens: refused rather than guessing which one counts.
    let other = hs256(claims("tim"));
    unauthorized(
        &server,
        &format!("/ws?token={token}"),
        &[("authorization", &bearer(&other))],
        "different tokens",
    )
    .await;
    // The same token twice is fine.
    let (status, _, _) = common::raw_upgrade(
        server.addr,
        &format!("/ws?token={token}"),
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(status, 101);
}

/// Reads until an error frame and returns its id, code and message.
async fn error_frame(c: &mut Client) -> (Option<String>, ErrorCode, String) {
    let (frame, _) = until(c, |f| matches!(f, ServerFrame::Error { .. })).await;
    let ServerFrame::Error {
        id, code, message, ..
    } = frame
    else {
        unreachable!()
    };
    (id, code, message)
}

#[tokio::test]
async fn the_rooms_claim_limits_join_send_history_and_members() {
    let server = TestServer::start_with(hs256_config()).await;
    let mut claims_ab = claims("rita");
    claims_ab["rooms"] = json!(["a", "b"]);
    let mut c = Client::connect_with_token(&ws(&server, ""), &hs256(claims_ab.clone()))
        .await
        .unwrap();
    // Someone unrestricted makes room x and writes in it.
    let mut free = Client::connect_with_token(&ws(&server, ""), &hs256(claims("fred")))
        .await
        .unwrap();
    free.join("x", None).await.unwrap();
    until(&mut free, |f| matches!(f, ServerFrame::Joined { .. })).await;
    free.send_and_ack("x", "secret", "x1").await.unwrap();

    c.join("a", None).await.unwrap();
    until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;
    c.send_and_ack("a", "in a", "a1").await.unwrap();

    c.join("x", None).await.unwrap();
    let (_, code, message) = error_frame(&mut c).await;
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("room x is not allowed"), "{message}");
    assert!(message.contains("a, b"), "{message}");
    c.send_message("x", "let me in", "x2").await.unwrap();
    let (id, code, _) = error_frame(&mut c).await;
    assert_eq!((id.as_deref(), code), (Some("x2"), ErrorCode::Forbidden));
    c.history("x", None, None, None).await.unwrap();
    assert_eq!(error_frame(&mut c).await.1, ErrorCode::Forbidden);
    c.members("x").await.unwrap();
    assert_eq!(error_frame(&mut c).await.1, ErrorCode::Forbidden);
    // Nothing of x reached this connection, and the connection goes on.
    c.join("b", None).await.unwrap();
    let (_, skipped) = until(&mut c, |f| matches!(f, ServerFrame::Joined { .. })).await;
    assert!(skipped.is_empty(), "{skipped:?}");
    free.history("x", None, None, None).await.unwrap();
    let (history, _) = until(&mut free, |f| matches!(f, ServerFrame::History { .. })).await;
    assert!(matches!(history, ServerFrame::History { messages, .. } if messages.len() == 1));

    // A compat connection is always in general: with a rooms claim without it, 403 up front.
    let (status, _, body) =
        common::raw_upgrade(server.addr, &format!("/ws?token={}", hs256(claims_ab)), &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not allow room general"),
        "{body}"
    );
    let mut with_general = claims("gina");
    with_general["rooms"] = json!(["general"]);
    let mut compat =
        CompatClient::connect(&ws(&server, &format!("?token={}", hs256(with_general))))
            .await
            .unwrap();
    compat.send_message("hello general").await.unwrap();
    assert_eq!(compat.next().await.unwrap(), "hello general");
}

#[tokio::test]
async fn the_management_api_never_takes_a_user_token() {
    let admin = "admin-token-0123456789-abcdef";
    let server = TestServer::start_with(ServerConfig {
        admin_token: Some(admin.to_owned()),
        ..hs256_config()
    })
    .await;
    let http = reqwest::Client::new();
    let post = |bearer: String| {
        http.post(server.http("/rooms/general/messages"))
            .header("authorization", bearer)
            .header("content-type", "application/json")
            .body(r#"{"data":"from the API"}"#)
            .send()
    };
    for user in ["alice", "admin"] {
        let r = post(bearer(&hs256(claims(user)))).await.unwrap();
        assert_eq!(r.status(), 401, "a user token for {user}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    let r = post(bearer(admin)).await.unwrap();
    assert_eq!(r.status(), 201);
    // And the admin token is no user token.
    unauthorized(
        &server,
        "/ws",
        &[("authorization", &bearer(admin))],
        "not a JWT",
    )
    .await;
}

#[tokio::test]
async fn bad_keys_stop_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (ed_private, _, _) = ed25519_pem();
    let (_, small_public) = rsa_pem(dir.path(), 1024);
    let open = |auth: AuthConfig| {
        let config = ServerConfig {
            data_dir: dir.path().join("data"),
            ..jwt_config(auth)
        };
        async move {
            let backend = common::backend(&config);
            match dynamowave_server::Server::open(config, backend).await {
                Ok(_) => panic!("the server started"),
                Err(e) => e.to_string(),
            }
        }
    };
    let key_file = |name: &str, text: &str| AuthConfig {
        jwt_public_key: Some(write(dir.path(), name, text)),
        ..AuthConfig::default()
    };
    let cases = [
        (
            AuthConfig::default(),
            "auth = jwt needs exactly one of jwt-secret, jwt-public-key or jwks",
        ),
        (
            AuthConfig {
                jwt_public_key: Some(dir.path().join("missing.pem")),
                ..AuthConfig::default()
            },
            "cannot read jwt-public-key",
        ),
        (key_file("private.pem", &ed_private), "holds a private key"),
        (key_file("junk.pem", "hello"), "not a PEM public key"),
        (key_file("small.pem", &small_public), "too small"),
        (
            AuthConfig {
                jwks: Some(write(dir.path(), "empty.json", r#"{"keys":[]}"#)),
                ..AuthConfig::default()
            },
            "has no usable key",
        ),
        (
            AuthConfig {
                jwks: Some(write(dir.path(), "bad.json", "[1,2]")),
                ..AuthConfig::default()
            },
            "is not a JWK Set",
        ),
        (
            AuthConfig {
                jwt_secret: Some("short".to_owned()),
                ..AuthConfig::default()
            },
            "at least 32 characters",
        ),
    ];
    for (auth, says) in cases {
        let error = open(auth).await;
        assert!(error.contains(says), "expected {says:?} in {error:?}");
    }
}
