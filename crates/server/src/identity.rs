//! Who may open a WebSocket, decided in `GET /ws` before the upgrade (docs/security.md).
//!
//! 1. **Origin** ([`OriginPolicy`], against cross-site WebSocket hijacking): a browser's
//!    `Origin` must be the server's own (its host:port is the request's `Host`), or, when
//!    `access.allowed-origins` is set, one of those. Requests without `Origin` are not from a
//!    browser (wscat, the Rust client) and pass: a web page cannot leave it out.
//! 2. **Authentication** ([`Verifier`]): with `auth.mode = jwt`, a JWT from `?token=`,
//!    `Authorization: Bearer` or an offered subprotocol `dynamowave.token.<JWT>`; its signature
//!    is checked with the one algorithm the configured key is for (HS256 for `jwt-secret`,
//!    EdDSA or RS256 for a public key, per key in a JWKS, picked by `kid`); `exp` is required;
//!    `exp` and `nbf` are checked with `auth.leeway-s` of clock skew. Its `sub` is the user
//!    (`?name=` is ignored) and its optional `rooms` claim lists the only rooms the connection
//!    may join, post to and read. With `auth.mode = none`, `?name=` names the user, unverified.
//!
//! [`Guard`] holds both. It is built once when the server starts, so a bad key file stops the
//! server before it listens. Refusals are answered with 401 or 403 and a JSON body saying what
//! is wrong, and counted: `dynamowave_origin_refused_total` and
//! `dynamowave_auth_failures_total{reason}`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use dynamowave_core::protocol::Mode;
use dynamowave_core::{ChatError, ErrorCode, RoomId, UserName};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey, Header, Validation};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::Value;

use crate::api::ApiError;
use crate::config::{AuthConfig, AuthMode, ConfigError, ServerConfig};

/// An offered subprotocol `dynamowave.token.<JWT>` carries a token (browsers cannot set
/// headers on a WebSocket). It is never selected: only `dynamowave.v1` is.
pub const TOKEN_PROTOCOL_PREFIX: &str = "dynamowave.token.";

/// Smallest RSA modulus accepted for RS256.
const MIN_RSA_BITS: usize = 2048;

/// The checks of `GET /ws` that come before the upgrade: origin, then identity.
pub struct Guard {
    origins: OriginPolicy,
    verifier: Option<Verifier>,
}

/// Who the client is, as admitted by the [`Guard`].
#[derive(Debug)]
pub struct Admitted {
    pub user: UserName,
    /// The token's `rooms` claim: the only rooms the connection may use. `None`: any room.
    pub rooms: Option<Vec<RoomId>>,
}

impl Guard {
    /// Reads the keys and checks the origins of `config`; any problem stops the server.
    pub fn from_config(config: &ServerConfig) -> Result<Self, ConfigError> {
        let verifier = Verifier::from_config(&config.auth)?;
        if let (Some(secret), Some(admin)) = (&config.auth.jwt_secret, &config.admin_token)
            && secret == admin
        {
            return Err(invalid(
                "jwt-secret and admin-token must differ: whoever can mint user tokens must not \
                 hold the management API's key",
            ));
        }
        Ok(Guard {
            origins: OriginPolicy::from_list(&config.access.allowed_origins)?,
            verifier,
        })
    }

    /// No origin check beyond same-origin, no authentication: `auth = none`, the default.
    pub fn open() -> Self {
        Guard {
            origins: OriginPolicy::default(),
            verifier: None,
        }
    }

    /// Decides whether the upgrade request may go on, and as whom. `offered` is the request's
    /// subprotocol list; `mode` the mode it selects.
    pub fn admit(
        &self,
        headers: &HeaderMap,
        query: &HashMap<String, String>,
        offered: &[&str],
        mode: Mode,
    ) -> Result<Admitted, Refusal> {
        if let Err(message) = self.origins.check(headers) {
            metrics::counter!("dynamowave_origin_refused_total").increment(1);
            tracing::debug!(%message, "origin refused");
            return Err(Refusal {
                error: ChatError::new(ErrorCode::Forbidden, message),
                challenge: false,
            });
        }
        let Some(verifier) = &self.verifier else {
            let user = match query.get("name") {
                Some(name) => UserName::parse(name).map_err(|error| Refusal {
                    error,
                    challenge: false,
                })?,
                None => UserName::guest(),
            };
            return Ok(Admitted { user, rooms: None });
        };
        let claims = find_token(headers, query, offered)
            .and_then(|token| verifier.verify(token, unix_now()))
            .map_err(AuthFailure::refuse)?;
        if mode == Mode::Compat
            && let Some(rooms) = &claims.rooms
            && !rooms.contains(&RoomId::default_room())
        {
            let general = RoomId::default_room();
            return Err(AuthFailure::new(
                Reason::Forbidden,
                format!(
                    "this token does not allow room {general}, and a compat connection (no \
                     {} subprotocol) is always in {general}: connect in v1 mode",
                    dynamowave_core::protocol::SUBPROTOCOL_V1
                ),
            )
            .refuse());
        }
        Ok(Admitted {
            user: claims.user,
            rooms: claims.rooms,
        })
    }
}

/// An upgrade request turned away: 400, 401 or 403 with `{"code", "message"}`.
#[derive(Debug)]
pub struct Refusal {
    pub error: ChatError,
    /// 401: add `WWW-Authenticate: Bearer` (RFC 6750).
    challenge: bool,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = ApiError(self.error).into_response();
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dynamowave\""),
            );
        }
        response
    }
}

/// Why a token was refused: the `reason` label of `dynamowave_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No token in any of the three places.
    Missing,
    /// Different tokens in more than one place.
    Conflicting,
    /// Not a JWT, or a header or payload that is not valid JSON.
    Malformed,
    /// Signed with another algorithm than the key's (e.g. HS256 against an RSA key).
    Algorithm,
    /// A `kid` the JWKS does not have (or none, with a JWKS).
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// Past `exp` (plus the leeway).
    Expired,
    /// Before `nbf` (minus the leeway).
    NotYetValid,
    /// Missing or invalid claims: `exp`, `sub`, `rooms`, or an `aud` for someone else.
    Claims,
    /// A valid token that does not allow this connection (403).
    Forbidden,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Conflicting => "conflicting",
            Reason::Malformed => "malformed",
            Reason::Algorithm => "algorithm",
            Reason::UnknownKey => "unknown_kid",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Claims => "claims",
            Reason::Forbidden => "forbidden",
        }
    }
}

/// A refused token: why (for the metric) and what to tell the client.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthFailure {
    pub reason: Reason,
    pub message: String,
}

impl AuthFailure {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        AuthFailure {
            reason,
            message: message.into(),
        }
    }

    /// Counts the failure and makes the response: 403 for [`Reason::Forbidden`], else 401.
    fn refuse(self) -> Refusal {
        metrics::counter!("dynamowave_auth_failures_total", "reason" => self.reason.as_str())
            .increment(1);
        tracing::debug!(reason = self.reason.as_str(), message = %self.message, "authentication failed");
        let forbidden = self.reason == Reason::Forbidden;
        Refusal {
            error: ChatError::new(
                if forbidden {
                    ErrorCode::Forbidden
                } else {
                    ErrorCode::Unauthorized
                },
                self.message,
            ),
            challenge: !forbidden,
        }
    }
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.reason.as_str())
    }
}

/// The token of a request: `?token=`, `Authorization: Bearer`, or an offered subprotocol
/// `dynamowave.token.<JWT>`. Several places may carry it, as long as they carry the same one.
pub fn find_token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
    offered: &[&'a str],
) -> Result<&'a str, AuthFailure> {
    let mut other_authorization = false;
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let bearer = v
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            other_authorization |= bearer.is_none();
            bearer
        });
    let protocol = offered
        .iter()
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX));
    let carried = [query.get("token").map(|t| t.trim()), bearer, protocol];
    let mut tokens = carried.into_iter().flatten();
    let Some(token) = tokens.next() else {
        let hint = if other_authorization {
            " (the Authorization header is not `Bearer <JWT>`)"
        } else {
            ""
        };
        return Err(AuthFailure::new(
            Reason::Missing,
            format!(
                "a token is required{hint}: send it as Authorization: Bearer <JWT>, as ?token=<JWT>, \
                 or as the subprotocol {TOKEN_PROTOCOL_PREFIX}<JWT> next to dynamowave.v1"
            ),
        ));
    };
    if tokens.any(|other| other != token) {
        return Err(AuthFailure::new(
            Reason::Conflicting,
            "different tokens in ?token=, Authorization and the subprotocol list: send one",
        ));
    }
    if token.is_empty() {
        return Err(AuthFailure::new(Reason::Missing, "the token is empty"));
    }
    Ok(token)
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: UserName,
    pub rooms: Option<Vec<RoomId>>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Checks tokens against the configured key(s). The algorithm comes from the key, never from
/// the token: a token's `alg` must match it.
pub struct Verifier {
    keys: Keys,
    leeway_s: u64,
    /// `auth.audience`: when set, a token's `aud` must name it; when not, tokens with `aud`
    /// are refused (RFC 7519 4.1.3).
    audience: Option<String>,
    /// `auth.issuer`: when set, a token's `iss` must equal it.
    issuer: Option<String>,
}

enum Keys {
    /// `jwt-secret` or `jwt-public-key`: one key, one algorithm.
    One(Key),
    /// `jwks`: the token's `kid` picks the key.
    Set(HashMap<String, Key>),
}

struct Key {
    key: DecodingKey,
    alg: Algorithm,
    /// Says where the key came from, for messages.
    source: String,
}

/// The claims as they come, checked one by one so a message can say which is wrong.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    aud: Option<Value>,
    iss: Option<Value>,
    rooms: Option<Value>,
}

impl Verifier {
    /// `None` for `auth = none`; otherwise the key(s) read and checked now.
    pub fn from_config(auth: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        if auth.mode == AuthMode::None {
            if auth.jwt_secret.is_some() || auth.jwt_public_key.is_some() || auth.jwks.is_some() {
                tracing::warn!("a JWT key is configured but auth is none: tokens are not checked");
            }
            return Ok(None);
        }
        let keys = match (&auth.jwt_secret, &auth.jwt_public_key, &auth.jwks) {
            (Some(secret), None, None) => Keys::One(Key {
                key: DecodingKey::from_secret(secret.as_bytes()),
                alg: Algorithm::HS256,
                source: "jwt-secret".to_owned(),
            }),
            (None, Some(path), None) => Keys::One(load_pem(path)?),
            (None, None, Some(path)) => Keys::Set(load_jwks(path)?),
            _ => {
                return Err(invalid(
                    "auth = jwt needs exactly one of jwt-secret, jwt-public-key or jwks",
                ));
            }
        };
        Ok(Some(Verifier {
            keys,
            leeway_s: auth.leeway_s,
            audience: auth.audience.clone(),
            issuer: auth.issuer.clone(),
        }))
    }

    /// An HS256 verifier (tests, `dynamowave token`'s own check).
    pub fn hs256(secret: &[u8], leeway_s: u64) -> Self {
        Verifier {
            keys: Keys::One(Key {
                key: DecodingKey::from_secret(secret),
                alg: Algorithm::HS256,
                source: "jwt-secret".to_owned(),
            }),
            leeway_s,
            audience: None,
            issuer: None,
        }
    }

    /// RFC 7519 4.1.3: `aud` (a string or an array of strings) must name this server's
    /// audience; without a configured audience, a token meant for some audience is refused.
    fn check_audience(&self, aud: Option<Value>) -> Result<(), AuthFailure> {
        let claims = |message: String| AuthFailure::new(Reason::Claims, message);
        let aud = aud.filter(|a| !a.is_null());
        match (&self.audience, aud) {
            (None, None) => Ok(()),
            (None, Some(aud)) => Err(claims(format!(
                "the token is meant for audience {aud}, and this server has no audience \
                 configured (auth.audience): it takes only tokens without aud"
            ))),
            (Some(ours), None) => Err(claims(format!(
                "the token has no aud claim; this server is audience {ours:?} (auth.audience)"
            ))),
            (Some(ours), Some(aud)) => {
                let named = match &aud {
                    Value::String(a) => a == ours,
                    Value::Array(list) => list.iter().any(|a| a.as_str() == Some(ours)),
                    _ => false,
                };
                if named {
                    Ok(())
                } else {
                    Err(claims(format!(
                        "the token is meant for audience {aud}, not this server's {ours:?} (auth.audience)"
                    )))
                }
            }
        }
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            AuthFailure::new(
                Reason::Malformed,
                format!("the token is not a JWT with a supported header: {e}"),
            )
        })?;
        let key = self.key_for(&header)?;
        if header.alg != key.alg {
            return Err(AuthFailure::new(
                Reason::Algorithm,
                format!(
                    "the token is signed with {:?}, but this server takes only {:?} tokens ({})",
                    header.alg, key.alg, key.source
                ),
            ));
        }
        // The signature and the algorithm here; the claims below, with messages of our own.
        let mut validation = Validation::new(key.alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let raw = jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => AuthFailure::new(
                    Reason::Signature,
                    format!(
                        "the token's signature does not verify with the server's key ({})",
                        key.source
                    ),
                ),
                ErrorKind::InvalidAlgorithm => AuthFailure::new(
                    Reason::Algorithm,
                    format!("this server takes only {:?} tokens", key.alg),
                ),
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => AuthFailure::new(
                    Reason::Malformed,
                    format!("the token's payload is not a JSON object of claims: {e}"),
                ),
                _ => {
                    tracing::warn!(error = %e, key = %key.source, "token verification failed");
                    AuthFailure::new(
                        Reason::Signature,
                        "the token's signature does not verify with the server's key",
                    )
                }
            })?
            .claims;
        self.check_claims(raw, now)
    }

    fn key_for(&self, header: &Header) -> Result<&Key, AuthFailure> {
        match &self.keys {
            Keys::One(key) => Ok(key),
            Keys::Set(keys) => {
                let kid = header.kid.as_deref().ok_or_else(|| {
                    AuthFailure::new(
                        Reason::UnknownKey,
                        "the token has no kid header; the server's JWKS needs it to pick the key",
                    )
                })?;
                keys.get(kid).ok_or_else(|| {
                    AuthFailure::new(
                        Reason::UnknownKey,
                        format!("the token's kid {kid:?} is not in the server's JWKS"),
                    )
                })
            }
        }
    }

    fn check_claims(&self, raw: RawClaims, now: u64) -> Result<Claims, AuthFailure> {
        let claims = |message: String| AuthFailure::new(Reason::Claims, message);
        let exp = numeric_date("exp", raw.exp)?.ok_or_else(|| {
            claims("the token has no exp claim; the server requires one".to_owned())
        })?;
        if now >= exp.saturating_add(self.leeway_s) {
            return Err(AuthFailure::new(
                Reason::Expired,
                format!(
                    "the token expired at {} (the server's clock: {}, leeway {} s)",
                    rfc3339(exp),
                    rfc3339(now),
                    self.leeway_s
                ),
            ));
        }
        if let Some(nbf) = numeric_date("nbf", raw.nbf)?
            && now.saturating_add(self.leeway_s) < nbf
        {
            return Err(AuthFailure::new(
                Reason::NotYetValid,
                format!(
                    "the token is not valid before {} (the server's clock: {}, leeway {} s)",
                    rfc3339(nbf),
                    rfc3339(now),
                    self.leeway_s
                ),
            ));
        }
        self.check_audience(raw.aud)?;
        if let Some(issuer) = &self.issuer {
            match raw.iss {
                Some(Value::String(iss)) if iss == *issuer => {}
                Some(other) => {
                    return Err(claims(format!(
                        "the token was issued by {other}, and this server takes tokens of {issuer:?} (auth.issuer)"
                    )));
                }
                None => {
                    return Err(claims(format!(
                        "the token has no iss claim; this server takes tokens of {issuer:?} (auth.issuer)"
                    )));
                }
            }
        }
        let user = match raw.sub {
            Some(Value::String(sub)) => UserName::parse(&sub).map_err(|e| {
                claims(format!(
                    "the token's sub is not a valid user name: {}",
                    e.message
                ))
            })?,
            None | Some(Value::Null) => {
                return Err(claims(
                    "the token has no sub claim; sub names the user".to_owned(),
                ));
            }
            Some(other) => {
                return Err(claims(format!(
                    "the token's sub must be a string, got {other}"
                )));
            }
        };
        let rooms = match raw.rooms {
            None | Some(Value::Null) => None,
            Some(Value::Array(names)) => {
                let mut rooms: Vec<RoomId> = Vec::with_capacity(names.len());
                for name in names {
                    let room = name
                        .as_str()
                        .ok_or_else(|| {
                            claims(format!(
                                "the token's rooms claim must list room names, got {name}"
                            ))
                        })
                        .and_then(|n| {
                            RoomId::parse(n).map_err(|e| {
                                claims(format!("the token's rooms claim: {}", e.message))
                            })
                        })?;
                    if !rooms.contains(&room) {
                        rooms.push(room);
                    }
                }
                Some(rooms)
            }
            Some(other) => {
                return Err(claims(format!(
                    "the token's rooms claim must be an array of room names, got {other}"
                )));
            }
        };
        Ok(Claims {
            user,
            rooms,
            expires_at: exp,
        })
    }
}

/// A NumericDate claim (seconds since the epoch; fractions are allowed and dropped).
fn numeric_date(name: &str, raw: Option<Value>) -> Result<Option<u64>, AuthFailure> {
    match raw {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(s), _) => Ok(Some(s)),
            (None, Some(f)) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
            _ => Err(AuthFailure::new(
                Reason::Claims,
                format!("the token's {name} must be a date in seconds since 1970, got {n}"),
            )),
        },
        Some(other) => Err(AuthFailure::new(
            Reason::Claims,
            format!("the token's {name} must be a date in seconds since 1970, got {other}"),
        )),
    }
}

fn rfc3339(seconds: u64) -> String {
    dynamowave_core::types::rfc3339_ms(seconds.saturating_mul(1000))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// `jwt-public-key`: one Ed25519 (EdDSA) or RSA (RS256) public key in PEM.
fn load_pem(path: &Path) -> Result<Key, ConfigError> {
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| invalid(format!("cannot read jwt-public-key {shown}: {e}")))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY-----") {
        return Err(invalid(format!(
            "jwt-public-key {shown} holds a private key: give the server only the public key \
             (openssl pkey -in KEY -pubout)"
        )));
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----")
        && !text.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        return Err(invalid(format!(
            "jwt-public-key {shown} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        )));
    }
    let source = format!("jwt-public-key {shown}");
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        check_ed25519(&key).map_err(|e| invalid(format!("{source}: {e}")))?;
        return Ok(Key {
            key,
            alg: Algorithm::EdDSA,
            source,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        check_rsa(&key).map_err(|e| invalid(format!("{source}: {e}")))?;
        return Ok(Key {
            key,
            alg: Algorithm::RS256,
            source,
        });
    }
    Err(invalid(format!(
        "jwt-public-key {shown} is neither an Ed25519 (EdDSA) nor an RSA (RS256) public key"
    )))
}

/// `jwks`: a JSON Web Key Set. Keys with a `kid`, for signatures, RSA (RS256) or Ed25519
/// (EdDSA), are used; others are skipped with a warning. A set without usable keys is an error.
fn load_jwks(path: &Path) -> Result<HashMap<String, Key>, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read jwks {shown}: {e}")))?;
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_str(&text).map_err(|e| {
        invalid(format!(
            "jwks {shown} is not a JWK Set ({{\"keys\": [...]}}): {e}"
        ))
    })?;
    let mut keys = HashMap::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        let key = match jwk_key(value) {
            Ok(key) => key,
            Err(why) => {
                tracing::warn!(jwks = %shown, key = i, "skipping a key of the JWKS: {why}");
                continue;
            }
        };
        let (kid, key) = key;
        let source = format!("key {kid:?} of jwks {shown}");
        if keys.insert(kid.clone(), Key { source, ..key }).is_some() {
            return Err(invalid(format!(
                "jwks {shown} has two keys with kid {kid:?}"
            )));
        }
    }
    if keys.is_empty() {
        return Err(invalid(format!(
            "jwks {shown} has no usable key: RS256 (kty RSA) or EdDSA (kty OKP, crv Ed25519) \
             signing keys with a kid"
        )));
    }
    Ok(keys)
}

/// One JWK as a verification key, or why it cannot be one.
fn jwk_key(value: Value) -> Result<(String, Key), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    let kid = jwk.common.key_id.clone().ok_or("it has no kid")?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err(format!("{kid:?} is an encryption key (use enc)"));
    }
    let stated = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return Err(format!("{kid:?} is neither an RSA nor an Ed25519 key")),
    };
    if let Some(stated) = stated
        && stated != format!("{alg:?}")
    {
        return Err(format!(
            "{kid:?} is for {stated}; only RS256 and EdDSA are taken"
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{kid:?}: {e}"))?;
    match alg {
        Algorithm::EdDSA => check_ed25519(&key),
        _ => check_rsa(&key),
    }
    .map_err(|e| format!("{kid:?}: {e}"))?;
    Ok((
        kid,
        Key {
            key,
            alg,
            source: String::new(),
        },
    ))
}

fn check_ed25519(key: &DecodingKey) -> Result<(), String> {
    match key.try_get_as_bytes() {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        _ => Err("not a 32-byte Ed25519 public key".to_owned()),
    }
}

/// The RSA key parses, and is big enough: the library would find out at the first token.
fn check_rsa(key: &DecodingKey) -> Result<(), String> {
    let public = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => rsa::RsaPublicKey::from_pkcs1_der(der)
            .map_err(|e| format!("not a valid RSA public key: {e}"))?,
        DecodingKeyKind::RsaModulusExponent { n, e } => rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(n),
            rsa::BigUint::from_bytes_be(e),
        )
        .map_err(|e| format!("not a valid RSA public key: {e}"))?,
    };
    let bits = public.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits is too small (at least {MIN_RSA_BITS})"
        ));
    }
    Ok(())
}

/// Makes an HS256 token for `user` valid for `ttl` from now (`dynamowave token`, tests).
pub fn mint_hs256(
    secret: &[u8],
    user: &UserName,
    rooms: Option<&[RoomId]>,
    ttl: Duration,
    auth: &AuthConfig,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let mut claims = serde_json::json!({
        "sub": user.as_str(),
        "iat": now,
        "exp": now.saturating_add(ttl.as_secs().max(1)),
    });
    // What the server that reads the same config will ask for.
    if let Some(aud) = &auth.audience {
        claims["aud"] = aud.as_str().into();
    }
    if let Some(iss) = &auth.issuer {
        claims["iss"] = iss.as_str().into();
    }
    if let Some(rooms) = rooms {
        claims["rooms"] = rooms.iter().map(|r| r.as_str()).collect::<Vec<_>>().into();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Which browser origins may open a WebSocket.
#[derive(Debug, Default)]
pub struct OriginPolicy {
    /// Empty: same-origin only.
    allowed: Vec<Origin>,
    /// `*` was listed: any origin (turns the check off).
    any: bool,
}

/// `scheme://host[:port]`, lower-case, with the port made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl Origin {
    /// Parses an `Origin` header or an `allowed-origins` entry (a trailing `/` is forgiven).
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        let (scheme, rest) = text.split_once("://")?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if scheme.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        let default_port = match scheme {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => 0,
        };
        let (host, port) = split_host_port(authority)?;
        Some(Origin {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
            port: port.unwrap_or(default_port),
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

impl OriginPolicy {
    /// `access.allowed-origins`: exact origins like `https://chat.example.com`, or `*`.
    pub fn from_list(list: &[String]) -> Result<Self, ConfigError> {
        let mut policy = OriginPolicy::default();
        for entry in list {
            if entry.trim() == "*" {
                policy.any = true;
                continue;
            }
            let origin = Origin::parse(entry).ok_or_else(|| {
                invalid(format!(
                    "allowed-origins entry {entry:?} is not an origin like https://chat.example.com \
                     (scheme://host[:port], no path)"
                ))
            })?;
            policy.allowed.push(origin);
        }
        Ok(policy)
    }

    /// `Ok` when the request has no `Origin` (not a browser) or an allowed one; otherwise the
    /// reason, naming the origin.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        if self.any {
            return Ok(());
        }
        let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let parsed = origin.to_str().ok().and_then(Origin::parse);
        if !self.allowed.is_empty() {
            return match parsed {
                Some(o) if self.allowed.contains(&o) => Ok(()),
                _ => Err(format!(
                    "origin {shown} may not open a WebSocket here: it is not in the server's \
                     allowed-origins"
                )),
            };
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if let Some(o) = &parsed
            && matches!(o.scheme.as_str(), "http" | "https")
            && let Some((h, port)) = split_host_port(&host.to_ascii_lowercase())
            && h == o.host
            && port.unwrap_or(o.port) == o.port
        {
            return Ok(());
        }
        Err(format!(
            "origin {shown} may not open a WebSocket here: only pages from this server \
             ({host}) may (cross-site WebSocket hijacking); the server's --allowed-origins \
             can allow other origins"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn same_origin_by_default() {
        let p = OriginPolicy::default();
        let ok = |origin: &str, host: &str| {
            p.check(&headers(&[("origin", origin), ("host", host)]))
                .is_ok()
        };
        assert!(p.check(&headers(&[("host", "a:1")])).is_ok(), "no Origin");
        assert!(ok("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(ok("https://Chat.Example.com", "chat.example.com"));
        assert!(ok("https://chat.example.com", "chat.example.com:443"));
        assert!(ok("http://[::1]:8080", "[::1]:8080"));
        assert!(!ok("http://127.0.0.1:8081", "127.0.0.1:8080"), "other port");
        assert!(!ok("http://evil.example", "chat.example.com"));
        assert!(!ok("https://chat.example.com", "chat.example.com:80"));
        assert!(!ok("null", "chat.example.com"));
        assert!(!ok("chrome-extension://abc", "abc"));
        assert!(
            p.check(&headers(&[("origin", "http://a")])).is_err(),
            "no Host"
        );
    }

    #[test]
    fn allowed_list_is_exact() {
        let p = OriginPolicy::from_list(&[
            "https://chat.example.com".into(),
            "http://localhost:3000/".into(),
        ])
        .unwrap();
        let ok = |origin: &str| {
            p.check(&headers(&[("origin", origin), ("host", "127.0.0.1:8080")]))
                .is_ok()
        };
        assert!(ok("https://chat.example.com"));
        assert!(ok("https://chat.example.com:443"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("http://chat.example.com"), "scheme");
        assert!(!ok("https://chat.example.com.evil.example"));
        assert!(!ok("http://localhost:3001"));
        assert!(!ok("http://127.0.0.1:8080"), "same-origin is not implied");
        assert!(OriginPolicy::from_list(&["chat.example.com".into()]).is_err());
        assert!(OriginPolicy::from_list(&["https://a/path".into()]).is_err());
        let any = OriginPolicy::from_list(&["*".into()]).unwrap();
        assert!(any.check(&headers(&[("origin", "https://x")])).is_ok());
    }

    #[test]
    fn token_carriers() {
        let none = HashMap::new();
        let q: HashMap<String, String> = [("token".to_owned(), "t1".to_owned())].into();
        let h = headers(&[("authorization", "Bearer t1")]);
        assert_eq!(find_token(&HeaderMap::new(), &q, &[]), Ok("t1"));
        assert_eq!(find_token(&h, &none, &[]), Ok("t1"));
        assert_eq!(
            find_token(
                &HeaderMap::new(),
                &none,
                &["dynamowave.v1", "dynamowave.token.t1"]
            ),
            Ok("t1")
        );
        assert_eq!(find_token(&h, &q, &["dynamowave.token.t1"]), Ok("t1"));
        let other = find_token(&h, &q, &["dynamowave.token.t2"]).unwrap_err();
        assert_eq!(other.reason, Reason::Conflicting);
        let basic = headers(&[("authorization", "Basic YWxpY2U6eA==")]);
        let missing = find_token(&basic, &none, &["dynamowave.v1"]).unwrap_err();
        assert_eq!(missing.reason, Reason::Missing);
        assert!(missing.message.contains("not `Bearer <JWT>`"), "{missing}");
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = Verifier {
            audience: Some("chat".into()),
            issuer: Some("https://id.example.com/".into()),
            ..Verifier::hs256(SECRET, 0)
        };
        let now = 2_000_000_000;
        let check = |extra: Value| {
            let mut claims = serde_json::json!({"sub": "alice", "exp": now + 60});
            for (k, val) in extra.as_object().unwrap() {
                claims[k] = val.clone();
            }
            v.verify(&sign(claims), now)
                .map(|_| ())
                .map_err(|e| e.message)
        };
        let iss = "https://id.example.com/";
        assert_eq!(
            check(serde_json::json!({"aud": "chat", "iss": iss})),
            Ok(())
        );
        assert_eq!(
            check(serde_json::json!({"aud": ["billing", "chat"], "iss": iss})),
            Ok(())
        );
        let e = check(serde_json::json!({"aud": "billing", "iss": iss})).unwrap_err();
        assert!(e.contains("not this server's \"chat\""), "{e}");
        let e = check(serde_json::json!({"iss": iss})).unwrap_err();
        assert!(e.contains("no aud claim"), "{e}");
        let e =
            check(serde_json::json!({"aud": "chat", "iss": "https://evil.example/"})).unwrap_err();
        assert!(e.contains("auth.issuer"), "{e}");
        let e = check(serde_json::json!({"aud": "chat"})).unwrap_err();
        assert!(e.contains("no iss claim"), "{e}");
        // Minted for the same config, a token passes.
        let auth = AuthConfig {
            audience: v.audience.clone(),
            issuer: v.issuer.clone(),
            ..AuthConfig::default()
        };
        let user = UserName::parse("bob").unwrap();
        let token = mint_hs256(SECRET, &user, None, Duration::from_secs(60), &auth).unwrap();
        assert!(v.verify(&token, unix_now()).is_ok());
    }

    #[test]
    fn claims_are_checked_with_reasons() {
        let v = Verifier::hs256(SECRET, 30);
        let now = 2_000_000_000;
        let reason = |claims: Value| v.verify(&sign(claims), now).map_err(|e| e.reason);
        let ok = v
            .verify(
                &sign(
                    serde_json::json!({"sub": "alice", "exp": now + 60, "rooms": ["a", "a", "b"]}),
                ),
                now,
            )
            .unwrap();
        assert_eq!(ok.user.as_str(), "alice");
        assert_eq!(ok.rooms.unwrap().len(), 2);
        // Within the leeway either side.
        assert!(reason(serde_json::json!({"sub": "a", "exp": now - 29})).is_ok());
        assert!(reason(serde_json::json!({"sub": "a", "exp": now + 9, "nbf": now + 29})).is_ok());
        assert_eq!(
            reason(serde_json::json!({"sub": "a", "exp": now - 30})),
            Err(Reason::Expired)
        );
        assert_eq!(
            reason(serde_json::json!({"sub": "a", "exp": now + 99, "nbf": now + 31})),
            Err(Reason::NotYetValid)
        );
        assert_eq!(reason(serde_json::json!({"sub": "a"})), Err(Reason::Claims));
        assert_eq!(
            reason(serde_json::json!({"exp": now + 9})),
            Err(Reason::Claims)
        );
        assert_eq!(
            reason(serde_json::json!({"sub": "", "exp": now + 9})),
            Err(Reason::Claims)
        );
        assert_eq!(
            reason(serde_json::json!({"sub": "a", "exp": now + 9, "rooms": "a"})),
            Err(Reason::Claims)
        );
        assert_eq!(
            reason(serde_json::json!({"sub": "a", "exp": now + 9, "rooms": ["no spaces"]})),
            Err(Reason::Claims)
        );
        assert_eq!(
            reason(serde_json::json!({"sub": "a", "exp": now + 9, "aud": "other"})),
            Err(Reason::Claims)
        );
        assert_eq!(
            reason(serde_json::json!({"sub": "a", "exp": "tomorrow"})),
            Err(Reason::Claims)
        );
        let expired = v
            .verify(
                &sign(serde_json::json!({"sub": "a", "exp": now - 100})),
                now,
            )
            .unwrap_err();
        assert!(
            expired
                .message
                .contains("expired at 2033-05-18T03:31:40.000Z"),
            "{expired}"
        );
        assert_eq!(
            v.verify("not.a.jwt", now).unwrap_err().reason,
            Reason::Malformed
        );
        // "alg":"none" is not an algorithm the library knows: refused as malformed.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(v.verify(none, now).unwrap_err().reason, Reason::Malformed);
        let other_key = Verifier::hs256(b"another-secret-another-secret-xx", 30);
        let token = sign(serde_json::json!({"sub": "a", "exp": now + 9}));
        assert_eq!(
            other_key.verify(&token, now).unwrap_err().reason,
            Reason::Signature
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let user = UserName::parse("alice").unwrap();
        let rooms = [RoomId::parse("a").unwrap()];
        let token = mint_hs256(
            SECRET,
            &user,
            Some(&rooms),
            Duration::from_secs(60),
            &AuthConfig::default(),
        )
        .unwrap();
        let claims = Verifier::hs256(SECRET, 0)
            .verify(&token, unix_now())
            .unwrap();
        assert_eq!(claims.user, user);
        assert_eq!(claims.rooms.as_deref(), Some(&rooms[..]));
    }
}
