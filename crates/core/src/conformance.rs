//! The store conformance suite. Every adapter of [`MessageLog`] and [`ConnectionStore`] runs it
//! from its own tests, so the contract in `ports` holds the same in every deployment shape:
//!
//! ```ignore
//! #[tokio::test]
//! async fn sqlite_log_conforms() {
//!     conformance::message_log(|listener| async move { open_store(listener) }).await;
//! }
//! ```
//!
//! Each case asks the factory for a fresh, empty store.
//!
//! The commit listener is checked with [`RecordingListener::wait_for`]: the embedded store calls
//! it before `append` returns, a cluster store when its node consumes the commit from the
//! stream, a moment later. Both must deliver every commit exactly once, in seq order per room.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use crate::error::ErrorCode;
use crate::ports::{
    Appended, Claim, CommitListener, ConnectionRecord, ConnectionStore, DeadLetterKind,
    DeadLetters, Deletion, MessageLog, NewDeadLetter, NewEvent, NewMessage, Purge, ReadMark,
    StoreError,
};
use crate::protocol::{ChatMessage, EntryEvent, HistoryQuery, Mode, ReactionCounts};
use crate::types::{ConnectionId, RoomId, Seq, UserName};

/// A fan-out with no connections, to open a store with when only its commits matter: it
/// joins nothing, has no members and reaches no connection.
pub struct NoHub;

#[async_trait::async_trait]
impl crate::ports::RoomMembership for NoHub {
    fn join(&self, _: &ConnectionId, _: &RoomId) {}
    fn leave(&self, _: &ConnectionId, _: &RoomId) {}
    async fn members(&self, _: &RoomId) -> Result<Vec<crate::protocol::Member>, StoreError> {
        Ok(Vec::new())
    }
    fn presence(
        &self,
        _: &RoomId,
        _: crate::protocol::PresenceEvent,
        _: &UserName,
        _: &ConnectionId,
    ) {
    }
    fn signal(&self, _: &RoomId, _: &str, _: Option<&ConnectionId>) {}
}

impl crate::ports::LocalConnections for NoHub {
    fn post(&self, _: &ConnectionId, _: String) -> Result<(), crate::ports::PostError> {
        Err(crate::ports::PostError::Gone)
    }
    fn describe(&self, _: &ConnectionId) -> Option<crate::ports::ConnectionDescription> {
        None
    }
    fn close(&self, _: &ConnectionId, _: u16, _: &str) -> bool {
        false
    }
}

/// Remembers every committed message it is told about, in order.
#[derive(Default)]
pub struct RecordingListener {
    seen: Mutex<Vec<Arc<ChatMessage>>>,
}

impl RecordingListener {
    pub fn seen(&self) -> Vec<Arc<ChatMessage>> {
        self.seen.lock().unwrap().clone()
    }

    /// What it has seen once it has seen at least `n` messages (up to 10 s), then a little
    /// longer so that a duplicate delivery would show.
    pub async fn wait_for(&self, n: usize) -> Vec<Arc<ChatMessage>> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.seen.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        self.seen()
    }
}

impl CommitListener for RecordingListener {
    fn committed(&self, messages: &[Arc<ChatMessage>]) {
        self.seen.lock().unwrap().extend_from_slice(messages);
    }
}

/// Helpers for store tests, here and in the adapters' own test files.
pub fn room(name: &str) -> RoomId {
    RoomId::parse(name).unwrap()
}

pub fn user(name: &str) -> UserName {
    UserName::parse(name).unwrap()
}

/// A message `data` by `u` in room `r` with id `id`.
pub fn msg(r: &str, u: &str, id: &str, data: &str) -> NewMessage {
    NewMessage::message(room(r), id.into(), user(u), data.into())
}

/// An event entry, as [`msg`] with `event`.
pub fn event(r: &str, u: &str, id: &str, data: &str, event: NewEvent) -> NewMessage {
    NewMessage {
        event: Some(event),
        ..msg(r, u, id, data)
    }
}

pub fn react(target: u64, emoji: &str, on: bool) -> NewEvent {
    NewEvent::React {
        target: Seq(target),
        emoji: emoji.into(),
        on,
    }
}

fn refused_with(result: Result<Appended, StoreError>, code: ErrorCode, what: &str) {
    match result {
        Err(StoreError::Refused(e)) => assert_eq!(e.code, code, "{what}: {e}"),
        other => panic!("{what}: expected a refusal with {code}, got {other:?}"),
    }
}

pub fn counts(pairs: &[(&str, u64)]) -> ReactionCounts {
    pairs.iter().map(|(e, n)| ((*e).to_owned(), *n)).collect()
}

/// Runs the cases of event entries (edits, deletions, reactions) and read positions against
/// logs made by `make`: every log that stores them.
pub async fn events<F, Fut>(make: F)
where
    F: Fn(Arc<dyn CommitListener>) -> Fut,
    Fut: Future<Output = Arc<dyn MessageLog>>,
{
    let fresh = || async {
        let listener = Arc::new(RecordingListener::default());
        let log = make(listener.clone()).await;
        (log, listener)
    };

    // An edit takes the next seq, is delivered, and history shows the new text.
    let (log, listener) = fresh().await;
    log.append(msg("r", "ann", "m1", "helo")).await.unwrap();
    log.append(msg("r", "bob", "m2", "hi")).await.unwrap();
    let edit = NewEvent::Edit { target: Seq(1) };
    let e = log
        .append(event("r", "ann", "e1", "hello", edit.clone()))
        .await
        .unwrap();
    assert_eq!(e.message.seq, Seq(3), "an event takes the next seq");
    assert!(!e.duplicate);
    assert_eq!(
        e.message.event.as_deref(),
        Some(&EntryEvent::Edit { target: Seq(1) })
    );
    assert_eq!(
        (e.message.user.as_str(), e.message.data.as_str()),
        ("ann", "hello")
    );
    let seen = listener.wait_for(3).await;
    assert_eq!(seqs(&seen), vec![1, 2, 3]);
    assert_eq!(
        seen[2].event.as_deref(),
        Some(&EntryEvent::Edit { target: Seq(1) })
    );
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(
        seqs(&page.messages),
        vec![1, 2],
        "history holds messages only"
    );
    assert_eq!(page.messages[0].data, "hello");
    assert_eq!(page.messages[0].edited_at, Some(e.message.ts));
    assert_eq!(page.messages[1].edited_at, None);
    assert_eq!(log.head(&room("r")).await.unwrap(), Some(Seq(3)));
    // A retried id is a duplicate: nothing new.
    let again = log
        .append(event("r", "ann", "e1", "hello", edit))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message.seq, Seq(3));
    assert_eq!(
        again.message.event.as_deref(),
        Some(&EntryEvent::Edit { target: Seq(1) })
    );
    assert_eq!(log.head(&room("r")).await.unwrap(), Some(Seq(3)));
    // A second edit wins.
    log.append(event(
        "r",
        "ann",
        "e2",
        "hello!",
        NewEvent::Edit { target: Seq(1) },
    ))
    .await
    .unwrap();
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(page.messages[0].data, "hello!");

    // Refusals store nothing: someone else's message, no such message, an event as target.
    let (log, _) = fresh().await;
    log.append(msg("r", "ann", "m1", "x")).await.unwrap();
    refused_with(
        log.append(event(
            "r",
            "bob",
            "e1",
            "y",
            NewEvent::Edit { target: Seq(1) },
        ))
        .await,
        ErrorCode::Forbidden,
        "an edit by another user",
    );
    refused_with(
        log.append(event(
            "r",
            "bob",
            "d1",
            "",
            NewEvent::Delete { target: Seq(1) },
        ))
        .await,
        ErrorCode::Forbidden,
        "a deletion by another user",
    );
    refused_with(
        log.append(event(
            "r",
            "ann",
            "e2",
            "y",
            NewEvent::Edit { target: Seq(9) },
        ))
        .await,
        ErrorCode::NotFound,
        "an edit of a message that does not exist",
    );
    refused_with(
        log.append(event("x", "ann", "e3", "", react(1, "👍", true)))
            .await,
        ErrorCode::NotFound,
        "a reaction in a room with no messages",
    );
    assert_eq!(
        log.head(&room("r")).await.unwrap(),
        Some(Seq(1)),
        "nothing stored"
    );
    log.append(event("r", "bob", "r1", "", react(1, "👍", true)))
        .await
        .unwrap();
    refused_with(
        log.append(event("r", "ann", "r2", "", react(2, "👍", true)))
            .await,
        ErrorCode::BadRequest,
        "a reaction to a reaction",
    );
    // A refused id is not taken: the same id with a valid target goes through.
    let ok = log
        .append(event(
            "r",
            "ann",
            "e2",
            "fixed",
            NewEvent::Edit { target: Seq(1) },
        ))
        .await
        .unwrap();
    assert!(!ok.duplicate);
    assert_eq!(ok.message.seq, Seq(3));

    // Deletion by the author: a tombstone in history, an entry in the log, no edit after.
    let (log, listener) = fresh().await;
    log.append(msg("r", "ann", "m1", "oops")).await.unwrap();
    log.append(msg("r", "ann", "m2", "keep")).await.unwrap();
    let d = log
        .append(event(
            "r",
            "ann",
            "d1",
            "",
            NewEvent::Delete { target: Seq(1) },
        ))
        .await
        .unwrap();
    assert_eq!(d.message.seq, Seq(3));
    assert_eq!(
        d.message.event.as_deref(),
        Some(&EntryEvent::Delete { target: Seq(1) })
    );
    assert_eq!(seqs(&listener.wait_for(3).await), vec![1, 2, 3]);
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(seqs(&page.messages), vec![2]);
    refused_with(
        log.append(event(
            "r",
            "ann",
            "e1",
            "x",
            NewEvent::Edit { target: Seq(1) },
        ))
        .await,
        ErrorCode::NotFound,
        "an edit of a deleted message",
    );
    refused_with(
        log.append(event(
            "r",
            "ann",
            "d2",
            "",
            NewEvent::Delete { target: Seq(1) },
        ))
        .await,
        ErrorCode::NotFound,
        "deleting twice",
    );
    assert!(
        matches!(
            log.delete(&room("r"), Seq(1)).await.unwrap(),
            Deletion::AlreadyDeleted { .. }
        ),
        "the socket's deletion is the management API's tombstone"
    );

    // Reactions: one per user and emoji, counts with the entry and in history.
    let (log, _) = fresh().await;
    log.append(msg("r", "ann", "m1", "x")).await.unwrap();
    let one = log
        .append(event("r", "bob", "r1", "", react(1, "👍", true)))
        .await
        .unwrap();
    assert_eq!(
        one.message.event.as_deref(),
        Some(&EntryEvent::Reaction {
            target: Seq(1),
            emoji: "👍".into(),
            on: true,
            counts: counts(&[("👍", 1)]),
        })
    );
    let twice = log
        .append(event("r", "bob", "r2", "", react(1, "👍", true)))
        .await
        .unwrap();
    assert_eq!(twice.message.seq, Seq(3), "a repeated reaction is an entry");
    assert!(
        matches!(twice.message.event.as_deref(), Some(EntryEvent::Reaction { counts: c, .. }) if *c == counts(&[("👍", 1)])),
        "but one per user and emoji: {:?}",
        twice.message.event
    );
    log.append(event("r", "cy", "r1", "", react(1, "👍", true)))
        .await
        .unwrap();
    log.append(event("r", "cy", "r2", "", react(1, "🎉", true)))
        .await
        .unwrap();
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(page.messages[0].reactions, counts(&[("🎉", 1), ("👍", 2)]));
    let off = log
        .append(event("r", "bob", "r3", "", react(1, "👍", false)))
        .await
        .unwrap();
    assert!(
        matches!(off.message.event.as_deref(), Some(EntryEvent::Reaction { on: false, counts: c, .. }) if *c == counts(&[("🎉", 1), ("👍", 1)])),
        "{:?}",
        off.message.event
    );
    log.append(event("r", "cy", "r4", "", react(1, "🎉", false)))
        .await
        .unwrap();
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(
        page.messages[0].reactions,
        counts(&[("👍", 1)]),
        "zero counts are left out"
    );
    // A bounded number of distinct emojis per message.
    for i in 1..crate::protocol::MAX_EMOJIS_PER_MESSAGE {
        log.append(event(
            "r",
            "ann",
            &format!("e{i}"),
            "",
            react(1, &format!(":e{i}:"), true),
        ))
        .await
        .unwrap();
    }
    refused_with(
        log.append(event(
            "r",
            "ann",
            "over",
            "",
            react(1, ":one-too-many:", true),
        ))
        .await,
        ErrorCode::BadRequest,
        "one emoji past the limit",
    );
    log.append(event("r", "bob", "again", "", react(1, ":e1:", true)))
        .await
        .expect("an emoji already on the message is still fine");

    // read_entries: messages now and every event entry, in seq order, paged; history pages
    // count messages only.
    let (log, _) = fresh().await;
    log.append(msg("r", "ann", "m1", "a")).await.unwrap();
    log.append(msg("r", "bob", "m2", "b")).await.unwrap();
    log.append(event(
        "r",
        "ann",
        "e1",
        "A",
        NewEvent::Edit { target: Seq(1) },
    ))
    .await
    .unwrap();
    log.append(event("r", "bob", "r1", "", react(1, "👍", true)))
        .await
        .unwrap();
    log.append(event(
        "r",
        "bob",
        "d1",
        "",
        NewEvent::Delete { target: Seq(2) },
    ))
    .await
    .unwrap();
    log.append(msg("r", "ann", "m3", "c")).await.unwrap();
    let all = log.read_entries(&room("r"), Seq(0), 100).await.unwrap();
    assert_eq!(
        seqs(&all.messages),
        vec![1, 3, 4, 5, 6],
        "the deleted message is skipped"
    );
    assert!(!all.more);
    assert_eq!(all.messages[0].data, "A", "messages as they are now");
    assert_eq!(all.messages[0].reactions, counts(&[("👍", 1)]));
    assert!(matches!(
        all.messages[1].event.as_deref(),
        Some(EntryEvent::Edit { target: Seq(1) })
    ));
    assert_eq!(all.messages[1].data, "A");
    assert!(matches!(
        all.messages[2].event.as_deref(),
        Some(EntryEvent::Reaction { .. })
    ));
    assert!(matches!(
        all.messages[3].event.as_deref(),
        Some(EntryEvent::Delete { target: Seq(2) })
    ));
    assert!(all.messages[4].is_message());
    let first = log.read_entries(&room("r"), Seq(2), 2).await.unwrap();
    assert_eq!(seqs(&first.messages), vec![3, 4]);
    assert!(first.more);
    let rest = log.read_entries(&room("r"), Seq(4), 2).await.unwrap();
    assert_eq!(seqs(&rest.messages), vec![5, 6]);
    assert!(!rest.more);
    assert!(
        log.read_entries(&room("none"), Seq(0), 10)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 2 })
        .await
        .unwrap();
    assert_eq!(seqs(&page.messages), vec![1, 6]);
    assert!(!page.more, "events and tombstones are not older messages");
    let before = log
        .read(
            &room("r"),
            HistoryQuery::Before {
                seq: Seq(6),
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(&before.messages), vec![1]);

    // Read positions: monotonic per room and user, not past the head.
    let (log, _) = fresh().await;
    for i in 1..=5 {
        log.append(msg("r", "ann", &format!("m{i}"), "x"))
            .await
            .unwrap();
    }
    log.append(msg("s", "ann", "m1", "x")).await.unwrap();
    let r = room("r");
    assert!(log.read_positions(&r).await.unwrap().is_empty());
    assert_eq!(
        log.mark_read(&r, &user("bob"), Seq(3)).await.unwrap(),
        ReadMark {
            seq: Seq(3),
            moved: true
        }
    );
    assert_eq!(
        log.mark_read(&r, &user("bob"), Seq(2)).await.unwrap(),
        ReadMark {
            seq: Seq(3),
            moved: false
        },
        "never back"
    );
    assert_eq!(
        log.mark_read(&r, &user("bob"), Seq(3)).await.unwrap(),
        ReadMark {
            seq: Seq(3),
            moved: false
        }
    );
    assert!(
        matches!(
            log.mark_read(&r, &user("bob"), Seq(6)).await,
            Err(StoreError::Refused(e)) if e.code == ErrorCode::BadRequest
        ),
        "past the head"
    );
    log.mark_read(&r, &user("cy"), Seq(5)).await.unwrap();
    log.mark_read(&room("s"), &user("bob"), Seq(1))
        .await
        .unwrap();
    let mut positions = log.read_positions(&r).await.unwrap();
    positions.sort();
    assert_eq!(positions, vec![(user("bob"), Seq(3)), (user("cy"), Seq(5))]);
    assert_eq!(
        log.read_positions(&room("s")).await.unwrap(),
        vec![(user("bob"), Seq(1))]
    );

    // Concurrent reactions to one message from many users: every one counted once.
    let (log, _) = fresh().await;
    log.append(msg("r", "ann", "m1", "x")).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let log = log.clone();
        tasks.spawn(async move {
            log.append(event("r", &format!("u{i}"), "r", "", react(1, "👍", true)))
                .await
                .unwrap()
        });
    }
    let mut entry_seqs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        entry_seqs.push(done.unwrap().message.seq.0);
    }
    entry_seqs.sort();
    assert_eq!(entry_seqs, (2..=41).collect::<Vec<_>>(), "no gap, no reuse");
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 1 })
        .await
        .unwrap();
    assert_eq!(page.messages[0].reactions, counts(&[("👍", 40)]));
}

fn seqs(messages: &[Arc<ChatMessage>]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.0).collect()
}

/// Runs every [`MessageLog`] case against stores made by `make`.
pub async fn message_log<F, Fut>(make: F)
where
    F: Fn(Arc<dyn CommitListener>) -> Fut,
    Fut: Future<Output = Arc<dyn MessageLog>>,
{
    let fresh = || async {
        let listener = Arc::new(RecordingListener::default());
        let log = make(listener.clone()).await;
        (log, listener)
    };

    // Seqs start at 1 and count up per room, independently.
    let (log, _) = fresh().await;
    assert_eq!(
        log.head(&room("a")).await.unwrap(),
        None,
        "unknown room has no head"
    );
    for i in 1..=3 {
        let a = log
            .append(msg("a", "ann", &format!("a{i}"), "x"))
            .await
            .unwrap();
        assert_eq!(a.message.seq, Seq(i));
        assert!(!a.duplicate);
    }
    for i in 1..=2 {
        let b = log
            .append(msg("b", "ann", &format!("b{i}"), "x"))
            .await
            .unwrap();
        assert_eq!(b.message.seq, Seq(i));
    }
    assert_eq!(log.head(&room("a")).await.unwrap(), Some(Seq(3)));
    assert_eq!(log.head(&room("b")).await.unwrap(), Some(Seq(2)));

    // create_room is idempotent and reports the head.
    let (log, _) = fresh().await;
    assert_eq!(log.create_room(&room("r")).await.unwrap(), Seq(0));
    assert_eq!(log.head(&room("r")).await.unwrap(), Some(Seq(0)));
    assert_eq!(log.create_room(&room("r")).await.unwrap(), Seq(0));
    log.append(msg("r", "ann", "1", "x")).await.unwrap();
    assert_eq!(log.create_room(&room("r")).await.unwrap(), Seq(1));

    // Fields survive as given: unicode, escapes, large bodies.
    let (log, _) = fresh().await;
    let big = "é\"\\\n🙂".repeat(20_000);
    let a = log.append(msg("r", "zoë", "id-1", &big)).await.unwrap();
    let m = &a.message;
    assert_eq!(
        (m.room.as_str(), m.user.as_str(), m.id.as_str()),
        ("r", "zoë", "id-1")
    );
    assert_eq!(m.data, big);
    assert!(m.ts > 1_600_000_000_000, "ts is epoch milliseconds");
    let page = log
        .read(&room("r"), HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(page.messages, vec![a.message.clone()]);

    // Idempotency: (room, user, id) is stored once; the original comes back as a duplicate.
    let (log, listener) = fresh().await;
    let first = log.append(msg("r", "ann", "same", "first")).await.unwrap();
    let again = log
        .append(msg("r", "ann", "same", "changed"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        again.message, first.message,
        "a retry gets the original back"
    );
    let other_user = log.append(msg("r", "bob", "same", "bob's")).await.unwrap();
    assert_eq!(
        (other_user.message.seq, other_user.duplicate),
        (Seq(2), false)
    );
    let other_room = log
        .append(msg("s", "ann", "same", "elsewhere"))
        .await
        .unwrap();
    assert_eq!(
        (other_room.message.seq, other_room.duplicate),
        (Seq(1), false)
    );
    assert_eq!(log.head(&room("r")).await.unwrap(), Some(Seq(2)));
    assert_eq!(
        listener.wait_for(3).await.len(),
        3,
        "duplicates are not delivered again"
    );

    // History pages.
    let (log, _) = fresh().await;
    for i in 1..=10 {
        log.append(msg("h", "ann", &i.to_string(), &format!("m{i}")))
            .await
            .unwrap();
    }
    let h = room("h");
    let read = |q| {
        let log = log.clone();
        let h = h.clone();
        async move { log.read(&h, q).await.unwrap() }
    };
    let p = read(HistoryQuery::Latest { limit: 3 }).await;
    assert_eq!((seqs(&p.messages), p.more), (vec![8, 9, 10], true));
    let p = read(HistoryQuery::Latest { limit: 50 }).await;
    assert_eq!((seqs(&p.messages), p.more), ((1..=10).collect(), false));
    let p = read(HistoryQuery::Before {
        seq: Seq(8),
        limit: 3,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![5, 6, 7], true));
    let p = read(HistoryQuery::Before {
        seq: Seq(3),
        limit: 5,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![1, 2], false));
    let p = read(HistoryQuery::Before {
        seq: Seq(1),
        limit: 5,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![], false));
    let p = read(HistoryQuery::Before {
        seq: Seq(99),
        limit: 2,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![9, 10], true));
    let p = read(HistoryQuery::After {
        seq: Seq(0),
        limit: 4,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![1, 2, 3, 4], true));
    let p = read(HistoryQuery::After {
        seq: Seq(8),
        limit: 4,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![9, 10], false));
    let p = read(HistoryQuery::After {
        seq: Seq(10),
        limit: 4,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![], false));
    assert_eq!(p.messages.len(), 0);
    let p = log
        .read(&room("nope"), HistoryQuery::Latest { limit: 5 })
        .await
        .unwrap();
    assert!(
        p.messages.is_empty() && !p.more,
        "an unknown room reads as empty"
    );
    let p = read(HistoryQuery::After {
        seq: Seq(2),
        limit: 1,
    })
    .await;
    assert_eq!(p.messages[0].data, "m3");

    // Concurrent appends: no gap, no reuse, and the listener sees each commit once, in order.
    let (log, listener) = fresh().await;
    let mut tasks = JoinSet::new();
    for writer in 0..8 {
        let log = log.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            for i in 0..25 {
                let a = log
                    .append(msg("c", &format!("w{writer}"), &i.to_string(), "x"))
                    .await
                    .unwrap();
                got.push(a.message.seq.0);
            }
            got
        });
    }
    let mut all: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=200).collect::<Vec<_>>(),
        "every append got its own seq"
    );
    let seen: Vec<u64> = listener
        .wait_for(200)
        .await
        .iter()
        .filter(|m| m.room.as_str() == "c")
        .map(|m| m.seq.0)
        .collect();
    assert_eq!(
        seen,
        (1..=200).collect::<Vec<_>>(),
        "the listener sees commits in seq order"
    );
    let p = log
        .read(
            &room("c"),
            HistoryQuery::After {
                seq: Seq(0),
                limit: 500,
            },
        )
        .await
        .unwrap();
    assert_eq!(seqs(&p.messages), (1..=200).collect::<Vec<_>>());

    // Deletion leaves a tombstone: reads skip it, pages stay full, seqs and ids are not reused.
    let (log, _) = fresh().await;
    for i in 1..=6 {
        log.append(msg("d", "ann", &format!("m{i}"), &format!("m{i}")))
            .await
            .unwrap();
    }
    let Deletion::Deleted { at } = log.delete(&room("d"), Seq(3)).await.unwrap() else {
        panic!("seq 3 exists and was not deleted");
    };
    assert!(at > 0);
    assert_eq!(
        log.delete(&room("d"), Seq(3)).await.unwrap(),
        Deletion::AlreadyDeleted { at },
        "deleting again is idempotent and keeps the first time"
    );
    assert_eq!(
        log.delete(&room("d"), Seq(7)).await.unwrap(),
        Deletion::NotFound
    );
    assert_eq!(
        log.delete(&room("d"), Seq(0)).await.unwrap(),
        Deletion::NotFound
    );
    assert_eq!(
        log.delete(&room("nope"), Seq(1)).await.unwrap(),
        Deletion::NotFound
    );
    log.delete(&room("d"), Seq(5)).await.unwrap();
    let read = |query| {
        let log = log.clone();
        async move { log.read(&room("d"), query).await.unwrap() }
    };
    let p = read(HistoryQuery::Latest { limit: 3 }).await;
    assert_eq!((seqs(&p.messages), p.more), (vec![2, 4, 6], true));
    let p = read(HistoryQuery::After {
        seq: Seq(1),
        limit: 2,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![2, 4], true));
    let p = read(HistoryQuery::After {
        seq: Seq(0),
        limit: 10,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![1, 2, 4, 6], false));
    let p = read(HistoryQuery::Before {
        seq: Seq(6),
        limit: 2,
    })
    .await;
    assert_eq!((seqs(&p.messages), p.more), (vec![2, 4], true));
    assert_eq!(
        log.head(&room("d")).await.unwrap(),
        Some(Seq(6)),
        "the head does not move back"
    );
    let again = log.append(msg("d", "ann", "m3", "m3")).await.unwrap();
    assert!(
        again.duplicate && again.message.seq == Seq(3),
        "a deleted message's id still deduplicates"
    );
    let next = log.append(msg("d", "ann", "m7", "m7")).await.unwrap();
    assert_eq!(next.message.seq, Seq(7), "no seq is reused");

    // Appends queued one after another commit in that order (for a log that queues them; the
    // others give every message back), duplicates included, and as `append` would.
    let (log, listener) = fresh().await;
    let mut queued = Vec::new();
    let mut given_back = 0;
    for i in 1..=50 {
        // The 26th repeats the 5th's id: a duplicate of it.
        let id = if i == 26 {
            "q5".to_owned()
        } else {
            format!("q{i}")
        };
        match log.queue_append(msg("q", "ann", &id, &format!("m{i}"))) {
            Ok(commit) => queued.push(commit),
            Err(message) => {
                given_back += 1;
                assert_eq!(message.id, id, "the message comes back whole");
            }
        }
    }
    if given_back == 0 {
        let mut results = Vec::new();
        for commit in queued {
            results.push(commit.await.unwrap());
        }
        let committed: Vec<u64> = results.iter().map(|a| a.message.seq.0).collect();
        let mut expected: Vec<u64> = (1..=25).chain([5]).chain(26..=49).collect();
        assert_eq!(committed, expected, "queue order is commit order");
        assert!(results[25].duplicate && !results[24].duplicate);
        expected.remove(25);
        assert_eq!(seqs(&listener.wait_for(49).await), expected);
    } else {
        assert_eq!(
            given_back, 50,
            "a log queues every append or none while idle"
        );
    }
}

fn record(id: &str, name: &str) -> ConnectionRecord {
    ConnectionRecord {
        id: ConnectionId::parse(id).unwrap(),
        user: user(name),
        mode: Mode::V1,
        source_ip: "127.0.0.1".into(),
        user_agent: "conformance".into(),
        connected_at: 1_700_000_000_000,
    }
}

/// Runs every [`ConnectionStore`] case against stores made by `make`.
pub async fn connection_store<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn ConnectionStore>>,
{
    let store = make().await;
    assert!(store.list().await.unwrap().is_empty());
    let (a, b) = (record("conn-a", "ann"), record("conn-b", "bob"));
    store.insert(&b).await.unwrap();
    store.insert(&a).await.unwrap();
    store.add_membership(&a.id, &room("x")).await.unwrap();
    store.add_membership(&a.id, &room("y")).await.unwrap();
    store.add_membership(&a.id, &room("x")).await.unwrap();
    store.add_membership(&b.id, &room("x")).await.unwrap();
    let rows = store.list().await.unwrap();
    assert_eq!(
        rows,
        vec![
            (a.clone(), vec![room("x"), room("y")]),
            (b.clone(), vec![room("x")])
        ]
    );

    store.remove_membership(&a.id, &room("x")).await.unwrap();
    store.remove(&b.id).await.unwrap();
    store.remove(&b.id).await.unwrap(); // removing twice is fine
    assert_eq!(
        store.list().await.unwrap(),
        vec![(a.clone(), vec![room("y")])]
    );

    store.insert(&b).await.unwrap();
    assert_eq!(store.purge_stale().await.unwrap(), 2);
    assert!(store.list().await.unwrap().is_empty());
}

fn dead_letter(target: &str, payload: &str) -> NewDeadLetter {
    NewDeadLetter {
        kind: DeadLetterKind::PostToConnection,
        target: target.into(),
        user: Some("ann".into()),
        reason: "gone".into(),
        payload: payload.into(),
    }
}

/// Runs every [`DeadLetters`] case against stores made by `make`.
pub async fn dead_letters<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn DeadLetters>>,
{
    // Add, get, list in order; fields survive as given.
    let dlq = make().await;
    assert_eq!(dlq.depth().await.unwrap(), 0);
    assert!(dlq.list(0, 10, false).await.unwrap().is_empty());
    assert_eq!(dlq.get(1).await.unwrap(), None);
    let big = "é\"🙂".repeat(10_000);
    let a = dlq.add(dead_letter("conn-a", "first")).await.unwrap();
    let b = dlq.add(dead_letter("conn-b", &big)).await.unwrap();
    let c = dlq.add(dead_letter("conn-c", "third")).await.unwrap();
    assert!(a < b && b < c, "ids increase: {a} {b} {c}");
    let e = dlq.get(b).await.unwrap().expect("entry b");
    assert_eq!(
        (
            e.id,
            e.target.as_str(),
            e.payload.as_str(),
            e.user.as_deref()
        ),
        (b, "conn-b", big.as_str(), Some("ann"))
    );
    assert_eq!(
        (e.kind, e.reason.as_str()),
        (DeadLetterKind::PostToConnection, "gone")
    );
    assert_eq!(
        (e.attempts, e.replayed_at, e.last_error.clone()),
        (1, None, None)
    );
    assert!(
        e.created_at > 1_600_000_000_000,
        "created_at is epoch milliseconds"
    );
    let ids = |v: Vec<crate::ports::DeadLetter>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(dlq.list(0, 10, false).await.unwrap()), vec![a, b, c]);
    assert_eq!(ids(dlq.list(a, 1, false).await.unwrap()), vec![b]);
    assert_eq!(
        ids(dlq.list(c, 10, false).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(dlq.depth().await.unwrap(), 3);

    // Claim: once; a second claim sees the first; release makes it pending again.
    let Claim::Claimed(before) = dlq.claim(a, "conn-x".into()).await.unwrap() else {
        panic!("a pending entry is claimed");
    };
    assert_eq!(before.payload, "first");
    let Claim::AlreadyReplayed { at, to } = dlq.claim(a, "conn-y".into()).await.unwrap() else {
        panic!("a claimed entry is not claimed twice");
    };
    assert!(at > 0);
    assert_eq!(to, "conn-x");
    assert_eq!(
        dlq.claim(999_999, "conn-x".into()).await.unwrap(),
        Claim::NotFound
    );
    assert_eq!(dlq.depth().await.unwrap(), 2);
    assert_eq!(ids(dlq.list(0, 10, true).await.unwrap()), vec![b, c]);
    let replayed = dlq.get(a).await.unwrap().unwrap();
    assert_eq!(replayed.replayed_to.as_deref(), Some("conn-x"));
    dlq.release(b, "nobody".into()).await.unwrap_or(()); // releasing an unclaimed entry is harmless
    dlq.claim(c, "conn-z".into()).await.unwrap();
    dlq.release(c, "conn-z is gone".into()).await.unwrap();
    let released = dlq.get(c).await.unwrap().unwrap();
    assert_eq!(
        (
            released.replayed_at,
            released.attempts,
            released.last_error.as_deref()
        ),
        (None, 2, Some("conn-z is gone"))
    );
    assert!(matches!(
        dlq.claim(c, "conn-w".into()).await.unwrap(),
        Claim::Claimed(_)
    ));

    // Concurrent claims of one entry: exactly one wins.
    let d = dlq.add(dead_letter("conn-d", "race")).await.unwrap();
    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let dlq = dlq.clone();
        tasks.spawn(async move { dlq.claim(d, format!("conn-{i}")).await.unwrap() });
    }
    let won = tasks
        .join_all()
        .await
        .into_iter()
        .filter(|c| matches!(c, Claim::Claimed(_)))
        .count();
    assert_eq!(won, 1, "one of eight concurrent claims wins");

    // Purge: one, the replayed ones, all.
    assert_eq!(dlq.purge(Purge::One(b)).await.unwrap(), 1);
    assert_eq!(dlq.purge(Purge::One(b)).await.unwrap(), 0);
    assert_eq!(dlq.get(b).await.unwrap(), None);
    // a, c and d are replayed now.
    assert_eq!(dlq.purge(Purge::Replayed).await.unwrap(), 3);
    let e = dlq.add(dead_letter("conn-e", "fifth")).await.unwrap();
    assert!(e > d, "ids are not reused after a purge");
    assert_eq!(dlq.depth().await.unwrap(), 1);
    assert_eq!(dlq.purge(Purge::All).await.unwrap(), 1);
    assert_eq!(dlq.depth().await.unwrap(), 0);
}
