//! Shared machinery: the clock, the latency recorder, payload stamps, and connecting many
//! clients at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamowave_client::{ClientError, CompatClient, FrameReceiver, FrameSender};
use futures_util::StreamExt;
use hdrhistogram::Histogram;

/// Microseconds since the run started; every stamp and every reading uses the same origin.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }

    pub fn micros(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// Latencies from many tasks: a few locked histograms, so recording rarely contends.
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

const SHARDS: usize = 16;

impl Recorder {
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"))
            })
            .collect();
        Recorder { shards }
    }

    pub fn record(&self, shard: usize, micros: u64) {
        let mut h = self.shards[shard % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.saturating_record(micros.max(1));
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
        for shard in &self.shards {
            all.add(&*shard.lock().unwrap_or_else(|e| e.into_inner()))
                .expect("same bounds");
        }
        all
    }
}

/// Counters shared by a run's tasks.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
    /// Clock micros of the latest delivery, for the throughput window.
    pub last_delivery: AtomicU64,
}

impl Counters {
    pub fn delivered_at(&self, now: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_delivery.fetch_max(now, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What a run that counts deliveries shares between its tasks.
#[derive(Clone)]
pub struct Run {
    pub clock: Clock,
    pub counters: Arc<Counters>,
    pub recorder: Arc<Recorder>,
}

impl Run {
    pub fn new() -> Self {
        Run {
            clock: Clock::start(),
            counters: Arc::new(Counters::default()),
            recorder: Arc::new(Recorder::new()),
        }
    }

    /// Counts a delivery whose frame carries a send stamp.
    pub fn delivered(&self, shard: usize, frame: &str) -> bool {
        let Some(sent_at) = stamp_micros(frame) else {
            return false;
        };
        let now = self.clock.micros();
        self.recorder.record(shard, now.saturating_sub(sent_at));
        self.counters.delivered_at(now);
        true
    }

    pub fn error(&self) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until `expected` deliveries arrived, or until none arrived for `patience`.
    pub async fn wait_for(&self, expected: u64, patience: Duration) {
        let delivered = || Counters::get(&self.counters.delivered);
        let mut last = delivered();
        let mut quiet_since = Instant::now();
        while delivered() < expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = delivered();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= patience {
                break;
            }
        }
    }
}

/// The timer of an open-loop sender: the first tick after `offset`, then one every `period`.
/// Late ticks fire at once, so a stalled sender catches up and the offered rate holds.
pub fn pacer(period: Duration, offset: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tick
}

/// The text a sender puts in `data`: `b:<sender>:<seq>:<micros>:` padded with `x` to `size`.
pub fn stamp(sender: usize, seq: u64, micros: u64, size: usize) -> String {
    let mut s = format!("b:{sender}:{seq}:{micros}:");
    if s.len() < size {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// The send time in a delivered frame: the raw text (compat) or a v1 `message` envelope.
pub fn stamp_micros(frame: &str) -> Option<u64> {
    let rest = match frame.strip_prefix("b:") {
        Some(rest) => rest,
        None => {
            const DATA: &str = r#""data":"b:"#;
            &frame[frame.find(DATA)? + DATA.len()..]
        }
    };
    let mut fields = rest.splitn(4, ':');
    fields.next()?;
    fields.next()?;
    fields.next()?.parse().ok()
}

/// A warm-up probe's text; never counted as a delivery.
pub const PROBE: &str = "w:probe";

/// How a bench client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// The AWS sample's protocol: any compatible server.
    Compat,
    /// dynamowave.v1: rooms and acks.
    V1,
}

impl Protocol {
    /// The name `--protocol` takes, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Compat => "compat",
            Protocol::V1 => "v1",
        }
    }
}

/// The frame that sends `data` to `room` in this protocol.
pub fn send_frame(protocol: Protocol, room: &str, data: &str, id: Option<&str>) -> String {
    let data = serde_json::to_string(data).expect("strings serialize");
    match (protocol, id) {
        (Protocol::Compat, _) => format!(r#"{{"action":"sendmessage","data":{data}}}"#),
        (Protocol::V1, Some(id)) => {
            format!(r#"{{"action":"sendmessage","room":"{room}","data":{data},"id":"{id}"}}"#)
        }
        (Protocol::V1, None) => {
            format!(r#"{{"action":"sendmessage","room":"{room}","data":{data}}}"#)
        }
    }
}

/// One connected client, split for a writer and a reader task, with how long the handshake took.
pub struct Conn {
    pub tx: FrameSender,
    pub rx: FrameReceiver,
    pub handshake: Duration,
}

/// Connects one client; in v1 mode it has read the `connected` frame and, given a room, joined it
/// and read `joined`.
pub async fn connect(
    url: &str,
    protocol: Protocol,
    room: Option<&str>,
) -> Result<Conn, ClientError> {
    let started = Instant::now();
    let (mut tx, mut rx) = match protocol {
        Protocol::Compat => CompatClient::connect(url).await?.split(),
        Protocol::V1 => {
            let c = dynamowave_client::Client::connect(url).await?;
            c.split()
        }
    };
    let handshake = started.elapsed();
    if let (Protocol::V1, Some(room)) = (protocol, room) {
        tx.send_text(format!(r#"{{"action":"join","room":"{room}"}}"#))
            .await?;
        loop {
            let text = rx.next_text().await?;
            if text.as_str().starts_with(r#"{"type":"joined""#) {
                break;
            }
        }
    }
    Ok(Conn { tx, rx, handshake })
}

/// Connects `n` clients, `concurrency` handshakes at a time; with several comma-separated URLs
/// (the nodes of a cluster) client `i` goes to URL `i mod count`. Returns the clients (in order
/// of completion) and the number that failed.
pub async fn connect_many(
    url: &str,
    n: usize,
    concurrency: usize,
    protocol: Protocol,
    room_of: impl Fn(usize) -> Option<String>,
    on_progress: impl Fn(usize),
) -> (Vec<(usize, Conn)>, u64) {
    let mut conns = Vec::with_capacity(n);
    let mut failures = 0;
    let urls: Vec<&str> = url.split(',').collect();
    let mut pending = futures_util::stream::iter((0..n).map(|i| {
        let room = room_of(i);
        let url = urls[i % urls.len()];
        async move { (i, connect(url, protocol, room.as_deref()).await) }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some((i, result)) = pending.next().await {
        match result {
            Ok(c) => conns.push((i, c)),
            Err(_) => failures += 1,
        }
        on_progress(conns.len() + failures as usize);
    }
    (conns, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_in_both_protocols() {
        let s = stamp(3, 17, 123_456, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(stamp_micros(&s), Some(123_456));
        let v1 = format!(
            r#"{{"type":"message","room":"r","seq":1,"id":"x","user":"u","data":"{s}","ts":1}}"#
        );
        assert_eq!(stamp_micros(&v1), Some(123_456));
        assert_eq!(stamp_micros(PROBE), None);
        assert_eq!(stamp_micros("hello"), None);
    }
}
