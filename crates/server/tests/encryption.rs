//! Encryption at rest as the server sees it: `Server::open` refuses a store holding rows under
//! a key that is not configured, naming the key id and the rows under it. (The store's own
//! tests of encryption, rekey and backups are in `crates/store-sqlite/tests/encryption.rs`.)

mod common;

use std::sync::Arc;

use dynamowave_core::ports::{
    DeadLetterKind, DeadLetters, MessageLog, NewDeadLetter, NewMessage, NoListener,
};
use dynamowave_core::{RoomId, UserName};
use dynamowave_server::ServerConfig;
use dynamowave_server::config::EncryptionConfig;
use dynamowave_store_sqlite::SqliteStore;
use dynamowave_store_sqlite::cipher::{self, Keyring};

const KEY_A: [u8; 32] = [0xa1; 32];
const KEY_B: [u8; 32] = [0xb2; 32];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_a_store_under_keys_it_is_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Some(Arc::new(Keyring::from_keys(&[KEY_A])));
    let store = SqliteStore::open_with_keys(dir.path(), Arc::new(NoListener), keys).unwrap();
    for i in 0..3 {
        store
            .append(NewMessage {
                room: RoomId::parse("general").unwrap(),
                id: format!("m{i}"),
                user: UserName::parse("ann").unwrap(),
                data: format!("secret-body-{i}"),
                event: None,
            })
            .await
            .unwrap();
    }
    store
        .add(NewDeadLetter {
            kind: DeadLetterKind::PostToConnection,
            target: "aaaaaaaaaaaaaaaa".into(),
            user: None,
            reason: "gone".into(),
            payload: "payload".into(),
        })
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);

    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        encryption: EncryptionConfig {
            key_files: vec![],
            keys: vec![cipher::encode_key(&KEY_B)],
        },
        ..ServerConfig::unthrottled()
    };
    let backend = common::backend(&config);
    let err = dynamowave_server::Server::open(config, backend)
        .await
        .err()
        .expect("refused")
        .to_string();
    let id_a = cipher::key_id(&KEY_A);
    assert!(
        err.contains(&format!("key id {id_a} (3 messages, 1 dead letters)"))
            && err.contains("Refusing to start"),
        "{err}"
    );
}
