//! Encryption at rest of message bodies (`messages.data`), dead-letter payloads
//! (`dead_letters.payload`) and queued webhook events (`webhook_outbox.body`, which quote message
//! text): AES-256-GCM (ring) under the keys of `[encryption]`.
//!
//! - **Keys** are 32 random bytes, given in base64 (`head -c 32 /dev/urandom | base64`), from
//!   files (`--encryption-key-file`, repeatable; `encryption.key-files`) and then inline
//!   (`--encryption-key` / `DYNAMOWAVE_ENCRYPTION_KEY`, comma-separated; `encryption.keys`). The
//!   last one configured encrypts new rows; every configured key decrypts.
//! - **Key id**: the first 8 bytes of SHA-256("dynamowave key id v1" ‖ key), in hex. Each row
//!   records the id of its key (`key_id`; NULL is a plaintext row written before encryption was
//!   turned on), so the order of the configured keys never matters for reading.
//! - **Row format**: `nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)` in the same column that
//!   holds the text of a plaintext row (as a BLOB). The nonce is random per row
//!   ([`SystemRandom`]); a key should encrypt well under 2^32 rows (rotate before).
//! - **AAD** binds a ciphertext to its row: a message to its room, seq, user and id; a dead
//!   letter to its id, kind, target and creation time; a webhook event to its id and creation
//!   time (see [`Row`]). A ciphertext copied or moved
//!   to another row, or a row whose identity was edited, fails to authenticate.
//!
//! Decryption failures never yield garbage: the caller gets a [`CipherError`] that names the
//! row, and the store answers `unavailable`.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::backend::StartError;
use crate::sqlite::SqliteStore;

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of the tag after the ciphertext.
const TAG_LEN: usize = 16;
/// How to make a key, for error messages and docs.
pub const KEY_HOWTO: &str = "make one with `head -c 32 /dev/urandom | base64 > dynamowave.key`";

/// The configured keys: the newest encrypts, all decrypt.
pub struct Keyring {
    /// Unique by id, in configuration order.
    keys: Vec<Entry>,
    /// Index in `keys` of the key that encrypts new rows (the last configured).
    newest: usize,
    rng: SystemRandom,
}

struct Entry {
    id: String,
    key: LessSafeKey,
}

impl fmt::Debug for Keyring {
    /// Ids only: key material never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("newest", &self.newest_id())
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

/// Why the configured keys cannot be used. The text says what to fix; it never holds a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cannot read the encryption key file {0}: {1}; it must hold a {KEY_LEN}-byte key in base64 ({KEY_HOWTO})"
    )]
    Unreadable(PathBuf, std::io::Error),
    #[error(
        "the encryption key {0} is not base64 ({1}); a key is {KEY_LEN} random bytes in base64 ({KEY_HOWTO})"
    )]
    NotBase64(String, String),
    #[error(
        "the encryption key {0} is {1} bytes long; AES-256 needs exactly {KEY_LEN} bytes, in base64 ({KEY_HOWTO})"
    )]
    WrongLength(String, usize),
}

impl Keyring {
    /// The keys of `[encryption]`: those in `key_files` first, then the `inline` ones (base64).
    /// `None` when none is set: the store then writes plaintext.
    pub fn from_sources(
        key_files: &[PathBuf],
        inline: &[String],
    ) -> Result<Option<Keyring>, KeyError> {
        let mut keys = Vec::new();
        for path in key_files {
            keys.push(read_key_file(path)?);
        }
        let count = inline.len();
        for (i, text) in inline.iter().enumerate() {
            const INLINE: &str =
                "given inline (--encryption-key, DYNAMOWAVE_ENCRYPTION_KEY or encryption.keys)";
            let what = if count == 1 {
                INLINE.to_owned()
            } else {
                format!("number {} of {count} {INLINE}", i + 1)
            };
            keys.push(decode_key(text, &what)?);
        }
        Ok((!keys.is_empty()).then(|| Keyring::from_keys(&keys)))
    }

    /// A keyring of raw keys; the last encrypts. Panics on an empty list.
    pub fn from_keys(keys: &[[u8; KEY_LEN]]) -> Keyring {
        assert!(!keys.is_empty(), "a keyring needs at least one key");
        let mut entries: Vec<Entry> = Vec::with_capacity(keys.len());
        let mut newest = 0;
        for raw in keys {
            let id = key_id(raw);
            match entries.iter().position(|e| e.id == id) {
                // The same key twice: the last mention decides whether it is the newest.
                Some(i) => newest = i,
                None => {
                    let unbound = UnboundKey::new(&AES_256_GCM, raw)
                        .expect("AES-256-GCM takes any 32-byte key");
                    entries.push(Entry {
                        id,
                        key: LessSafeKey::new(unbound),
                    });
                    newest = entries.len() - 1;
                }
            }
        }
        Keyring {
            keys: entries,
            newest,
            rng: SystemRandom::new(),
        }
    }

    /// The id of the key that encrypts new rows.
    pub fn newest_id(&self) -> &str {
        &self.keys[self.newest].id
    }

    /// Every configured key id, in configuration order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|e| e.id.as_str())
    }

    /// Whether a configured key has this id.
    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.iter().any(|e| e.id == key_id)
    }

    /// Encrypts `plaintext` of `row` under the newest key: one allocation, the stored blob.
    /// Returns the key id to store with it.
    pub fn seal(&self, row: &Row<'_>, plaintext: &[u8]) -> Result<(&str, Vec<u8>), CipherError> {
        let entry = &self.keys[self.newest];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| CipherError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = with_aad(row, |aad| {
            entry.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
        })
        .map_err(|_| CipherError::TooLong(row.to_string()))?;
        out.extend_from_slice(tag.as_ref());
        Ok((&entry.id, out))
    }

    /// Decrypts the blob of `row`, stored under `key_id`: one allocation, the plaintext.
    pub fn open(&self, row: &Row<'_>, key_id: &str, blob: &[u8]) -> Result<Vec<u8>, CipherError> {
        let Some(entry) = self.keys.iter().find(|e| e.id == key_id) else {
            return Err(CipherError::UnknownKey {
                row: row.to_string(),
                key_id: key_id.to_owned(),
            });
        };
        let corrupt = || CipherError::Corrupt {
            row: row.to_string(),
            key_id: key_id.to_owned(),
        };
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt());
        }
        let nonce = Nonce::try_assume_unique_for_key(&blob[..NONCE_LEN]).map_err(|_| corrupt())?;
        let mut buf = blob[NONCE_LEN..].to_vec();
        let len = with_aad(row, |aad| {
            entry
                .key
                .open_in_place(nonce, Aad::from(aad), &mut buf)
                .map(|plain| plain.len())
        })
        .map_err(|_| corrupt())?;
        buf.truncate(len);
        Ok(buf)
    }
}

/// The keyring of `[encryption]` ([`Keyring::from_sources`]) for a starting server, said once
/// in its log: a warning when there is none (the store is unencrypted), the key ids when there
/// is. Bad key input stops the start with a message that says what to fix.
pub fn keyring_at_start(
    key_files: &[PathBuf],
    inline: &[String],
) -> Result<Option<Arc<Keyring>>, StartError> {
    let keys = Keyring::from_sources(key_files, inline).map_err(StartError::Keys)?;
    match &keys {
        None => tracing::warn!(
            "encryption at rest is off: the store keeps message bodies and dead-letter payloads in plaintext; \
             give a key with --encryption-key-file FILE ({KEY_HOWTO}) to encrypt new rows, then `dynamowave rekey` for the old ones"
        ),
        Some(k) => tracing::info!(
            key_id = k.newest_id(),
            decrypts = ?k.ids().collect::<Vec<_>>(),
            "encryption at rest is on: new message bodies and dead-letter payloads are encrypted (AES-256-GCM) under key id {}",
            k.newest_id()
        ),
    }
    Ok(keys.map(Arc::new))
}

/// Refuses to start when the store holds rows under a key id that no configured key matches
/// (a key removed before `dynamowave rekey` finished, the wrong key file, or a backup restored
/// from before a rotation): those rows could not be read, and serving would turn every history
/// page that holds one into an error. Each such key id is logged with its row counts.
pub async fn refuse_unknown_keys(store: &SqliteStore, data_dir: &Path) -> Result<(), StartError> {
    let unknown = store.unknown_keys().await.map_err(StartError::Store)?;
    if unknown.is_empty() {
        return Ok(());
    }
    let mut listed = Vec::new();
    for u in &unknown {
        tracing::error!(
            key_id = %u.key_id,
            messages = u.messages,
            dead_letters = u.dead_letters,
            webhook_events = u.webhook_events,
            "the store holds rows encrypted under a key that is not configured"
        );
        // Webhook events only when there are any: the usual message stays as it was.
        let events = if u.webhook_events > 0 {
            format!(", {} webhook events", u.webhook_events)
        } else {
            String::new()
        };
        listed.push(format!(
            "key id {} ({} messages, {} dead letters{events})",
            u.key_id, u.messages, u.dead_letters
        ));
    }
    Err(StartError::UnknownKeys(format!(
        "the store in {} holds rows encrypted under keys that are not configured: {}. \
         Refusing to start, since they could not be read: configure those keys as well \
         (--encryption-key-file FILE, encryption.key-files, or DYNAMOWAVE_ENCRYPTION_KEY; the key for new rows last), \
         and remove an old key only after `dynamowave rekey` has moved every row off it",
        data_dir.display(),
        listed.join(", ")
    )))
}

/// The id of a key: the first 8 bytes of SHA-256("dynamowave key id v1" ‖ key), hex. It tells
/// keys apart without revealing anything usable about them.
pub fn key_id(key: &[u8; KEY_LEN]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"dynamowave key id v1");
    ctx.update(key);
    let digest = ctx.finish();
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key in the form the configuration takes (standard base64 with padding), e.g. for tests.
pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Decodes a configured key (whitespace around it is ignored; padding is optional).
/// `what` names where it came from, for the error.
pub fn decode_key(text: &str, what: &str) -> Result<[u8; KEY_LEN], KeyError> {
    const ENGINE: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let compact = text.trim();
    if compact.is_empty() {
        return Err(KeyError::WrongLength(what.to_owned(), 0));
    }
    // The decoder's own message quotes the offending character; say where it is instead.
    let mut bytes = ENGINE.decode(compact).map_err(|e| {
        let reason = match e {
            base64::DecodeError::InvalidByte(at, _) => {
                format!("invalid character at position {}", at + 1)
            }
            base64::DecodeError::InvalidLength(n) => {
                format!("{n} characters is not a valid length")
            }
            base64::DecodeError::InvalidLastSymbol(at, _) => {
                format!("invalid last character at position {}", at + 1)
            }
            base64::DecodeError::InvalidPadding => "bad padding".to_owned(),
        };
        KeyError::NotBase64(what.to_owned(), reason)
    })?;
    let key: Result<[u8; KEY_LEN], _> = bytes.as_slice().try_into();
    let len = bytes.len();
    bytes.fill(0);
    key.map_err(|_| KeyError::WrongLength(what.to_owned(), len))
}

/// Reads a key file as `--encryption-key-file` does.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| KeyError::Unreadable(path.to_owned(), e))?;
    decode_key(&text, &format!("in {}", path.display()))
}

/// The row a ciphertext belongs to: its identity is the AAD, and names it in errors.
#[derive(Clone, Copy, Debug)]
pub enum Row<'a> {
    Message {
        room: &'a str,
        seq: u64,
        user: &'a str,
        id: &'a str,
    },
    DeadLetter {
        id: u64,
        kind: &'a str,
        target: &'a str,
        created_at: u64,
    },
    /// A row of `webhook_outbox`.
    Outbox { id: u64, created_at: u64 },
}

impl fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Row::Message { room, seq, .. } => write!(f, "message {seq} of room {room}"),
            Row::DeadLetter { id, .. } => write!(f, "dead letter {id}"),
            Row::Outbox { id, .. } => write!(f, "webhook event {id}"),
        }
    }
}

impl Row<'_> {
    /// The AAD: a version tag, the table, then each field (strings length-prefixed, numbers
    /// big-endian), so that no two rows share one.
    fn write_aad(&self, out: &mut Vec<u8>) {
        fn text(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.clear();
        out.extend_from_slice(b"dynamowave/v1/");
        match *self {
            Row::Message {
                room,
                seq,
                user,
                id,
            } => {
                out.extend_from_slice(b"messages\0");
                text(out, room);
                out.extend_from_slice(&seq.to_be_bytes());
                text(out, user);
                text(out, id);
            }
            Row::DeadLetter {
                id,
                kind,
                target,
                created_at,
            } => {
                out.extend_from_slice(b"dead_letters\0");
                out.extend_from_slice(&id.to_be_bytes());
                text(out, kind);
                text(out, target);
                out.extend_from_slice(&created_at.to_be_bytes());
            }
            Row::Outbox { id, created_at } => {
                out.extend_from_slice(b"webhook_outbox\0");
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&created_at.to_be_bytes());
            }
        }
    }
}

/// Runs `f` with the AAD of `row`, built in a buffer reused per thread (the writer thread and
/// the reader threads), so sealing and opening allocate nothing for it.
fn with_aad<R>(row: &Row<'_>, f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static AAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    AAD.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            row.write_aad(&mut buf);
            f(&buf)
        }
        // Not reentrant today; should it become so, a fresh buffer is still correct.
        Err(_) => {
            let mut buf = Vec::new();
            row.write_aad(&mut buf);
            f(&buf)
        }
    })
}

/// Why a stored value could not be read or written. Each names the row.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error(
        "{row} is encrypted under key id {key_id}, which no configured key matches; configure that key (--encryption-key-file) to read it"
    )]
    UnknownKey { row: String, key_id: String },
    #[error(
        "{row} is encrypted (key id {key_id}) but no encryption key is configured; configure that key (--encryption-key-file) to read it"
    )]
    NoKeys { row: String, key_id: String },
    #[error(
        "{row} failed authentication under key id {key_id}: it was altered, copied from another row, or damaged"
    )]
    Corrupt { row: String, key_id: String },
    #[error("{0} is stored as neither text nor an encrypted blob")]
    BadType(String),
    #[error("{0} does not hold UTF-8 text")]
    NotUtf8(String),
    #[error("{0} is too long to encrypt")]
    TooLong(String),
    #[error("the system's random number generator failed")]
    Random,
}

/// The text of a stored value: `data` as it is for a plaintext row (`key_id` NULL), else
/// decrypted with `keys`.
pub fn stored_text(
    keys: Option<&Keyring>,
    row: &Row<'_>,
    key_id: Option<&str>,
    data: rusqlite::types::ValueRef<'_>,
) -> Result<String, CipherError> {
    use rusqlite::types::ValueRef;
    let bytes = match (key_id, data) {
        (None, ValueRef::Text(t)) => t.to_vec(),
        (Some(id), ValueRef::Blob(b)) => match keys {
            Some(k) => k.open(row, id, b)?,
            None => {
                return Err(CipherError::NoKeys {
                    row: row.to_string(),
                    key_id: id.to_owned(),
                });
            }
        },
        _ => return Err(CipherError::BadType(row.to_string())),
    };
    String::from_utf8(bytes).map_err(|_| CipherError::NotUtf8(row.to_string()))
}

/// A [`CipherError`] as a row-mapping error of rusqlite (column `col`), so the row functions
/// keep their signature; the store logs it and answers `unavailable`.
pub(crate) fn row_error(col: usize, e: CipherError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Blob, Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; KEY_LEN] = [1; KEY_LEN];
    const B: [u8; KEY_LEN] = [2; KEY_LEN];

    fn msg(seq: u64) -> Row<'static> {
        Row::Message {
            room: "general",
            seq,
            user: "ann",
            id: "m1",
        }
    }

    #[test]
    fn a_sealed_row_opens_only_as_itself() {
        let ring = Keyring::from_keys(&[A]);
        let (id, blob) = ring.seal(&msg(1), b"hello").unwrap();
        assert_eq!(id, key_id(&A));
        assert_eq!(blob.len(), NONCE_LEN + 5 + TAG_LEN);
        assert!(!blob.windows(5).any(|w| w == b"hello"));
        assert_eq!(ring.open(&msg(1), id, &blob).unwrap(), b"hello");
        let moved = ring.open(&msg(2), id, &blob).unwrap_err();
        assert!(matches!(moved, CipherError::Corrupt { .. }), "{moved}");
        assert!(moved.to_string().contains("message 2 of room general"));
        let mut flipped = blob.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(ring.open(&msg(1), id, &flipped).is_err());
        assert!(ring.open(&msg(1), id, &blob[..10]).is_err(), "short blob");
        let (_, again) = ring.seal(&msg(1), b"hello").unwrap();
        assert_ne!(blob, again, "a fresh nonce per row");
    }

    #[test]
    fn the_last_key_encrypts_and_every_key_decrypts() {
        let old = Keyring::from_keys(&[A]);
        let (a_id, a_blob) = old.seal(&msg(1), b"x").unwrap();
        let both = Keyring::from_keys(&[A, B]);
        assert_eq!(both.newest_id(), key_id(&B));
        assert_eq!(both.open(&msg(1), a_id, &a_blob).unwrap(), b"x");
        let (b_id, b_blob) = both.seal(&msg(2), b"y").unwrap();
        let err = old.open(&msg(2), b_id, &b_blob).unwrap_err();
        assert!(matches!(err, CipherError::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains(&key_id(&B)));
        assert_eq!(
            Keyring::from_keys(&[B, A, B]).newest_id(),
            key_id(&B),
            "a repeated key counts where it was last named"
        );
        assert_eq!(Keyring::from_keys(&[B, A, B]).ids().count(), 2);
    }

    #[test]
    fn key_ids_are_short_stable_fingerprints() {
        let id = key_id(&A);
        assert_eq!(id.len(), 16);
        assert_eq!(id, key_id(&A));
        assert_ne!(id, key_id(&B));
        let debug = format!("{:?}", Keyring::from_keys(&[A]));
        assert!(debug.contains(&id), "{debug}");
    }

    #[test]
    fn bad_key_input_says_what_to_fix() {
        assert_eq!(decode_key(&encode_key(&A), "k").unwrap(), A);
        assert_eq!(
            decode_key(
                &format!("  {}\n", encode_key(&A).trim_end_matches('=')),
                "k"
            )
            .unwrap(),
            A,
            "whitespace and missing padding are fine"
        );
        let e = decode_key("not base64 at all!", "k").unwrap_err();
        assert!(matches!(e, KeyError::NotBase64(..)), "{e}");
        assert!(e.to_string().contains("head -c 32 /dev/urandom | base64"));
        assert!(!e.to_string().contains("!"), "{e}");
        let e = decode_key(&encode_key(&A)[..20], "k").unwrap_err();
        assert!(e.to_string().contains("exactly 32 bytes"), "{e}");
        let e = decode_key("", "k").unwrap_err();
        assert!(matches!(e, KeyError::WrongLength(_, 0)), "{e}");
        let e = Keyring::from_sources(&["/nonexistent/dw.key".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dw.key"), "{e}");
        assert!(Keyring::from_sources(&[], &[]).unwrap().is_none());
    }

    #[test]
    fn plaintext_rows_read_as_they_are_and_encrypted_ones_need_their_key() {
        use rusqlite::types::ValueRef;
        let row = msg(1);
        assert_eq!(
            stored_text(None, &row, None, ValueRef::Text(b"plain")).unwrap(),
            "plain"
        );
        let ring = Keyring::from_keys(&[A]);
        assert_eq!(
            stored_text(Some(&ring), &row, None, ValueRef::Text(b"plain")).unwrap(),
            "plain"
        );
        let (id, blob) = ring.seal(&row, "é".as_bytes()).unwrap();
        assert_eq!(
            stored_text(Some(&ring), &row, Some(id), ValueRef::Blob(&blob)).unwrap(),
            "é"
        );
        let e = stored_text(None, &row, Some(id), ValueRef::Blob(&blob)).unwrap_err();
        assert!(matches!(e, CipherError::NoKeys { .. }), "{e}");
        let e = stored_text(Some(&ring), &row, Some(id), ValueRef::Text(b"x")).unwrap_err();
        assert!(matches!(e, CipherError::BadType(_)), "{e}");
    }
}
