//! The server's own metric handles (issue 7), registered once and shared by the gateway and the
//! hub, and the descriptions of every metric, the store's included. `GET /metrics` renders them
//! (`crate::telemetry`).
//!
//! Hot paths only touch pre-registered handles (no registry lookup per frame), and the fan-out
//! loop touches none at all:
//!
//! - `dynamowave_messages_delivered_total` and `dynamowave_delivery_latency_seconds` are
//!   recorded by the connection task once per *successful flush* (a write batch of up to 64
//!   frames): one counter add for the batch, and one latency sample, that of the oldest room
//!   message in the batch (commit → flushed). Per-recipient samples would cost a histogram
//!   insert per delivery (800k/s in `bench fanout`); the oldest-in-batch sample is the batch's
//!   worst case, so the histogram's tail is not flattered.
//! - `dynamowave_outbound_queue_depth` is not updated on the fan-out path at all: it is summed
//!   over the hub's connections (each queue's length, from its semaphore) when `/metrics` is
//!   scraped, so it is a sample at scrape time.
//! - The store histograms and `messages_received/acked` are recorded by the store itself, once
//!   per writer batch (`dynamowave-store-sqlite`, into the same process-wide recorder); they
//!   are only described here.

use std::sync::OnceLock;
use std::time::Instant;

use dynamowave_core::protocol::Mode;
use metrics::{Counter, Gauge, Histogram};

/// The handles; see the module docs for where each is recorded.
pub struct Instruments {
    /// Indexed by [`mode_index`].
    connections: [Gauge; 2],
    connects: [Counter; 2],
    disconnects: [Counter; 2],
    frames_received: [Counter; 2],
    pub messages_delivered: Counter,
    pub delivery_latency: Histogram,
    pub outbound_queue_depth: Gauge,
    pub slow_consumer_closes: Counter,
}

fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::V1 => 0,
        Mode::Compat => 1,
    }
}

/// The process-wide handles. The Prometheus recorder is installed first, so handles are never
/// registered with the no-op recorder.
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        crate::telemetry::prometheus();
        Instruments::register()
    })
}

impl Instruments {
    fn register() -> Self {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_gauge!(
            "dynamowave_connections",
            "Open WebSocket connections (upgraded, task running), by mode"
        );
        describe_counter!(
            "dynamowave_connects_total",
            "WebSocket connections upgraded, by mode"
        );
        describe_counter!(
            "dynamowave_disconnects_total",
            "WebSocket connections ended, by mode"
        );
        describe_counter!(
            "dynamowave_frames_received_total",
            "Text and binary frames received from clients, by mode"
        );
        describe_counter!(
            "dynamowave_messages_received_total",
            "Appends that reached the store's writer (sendmessage frames and API posts; a retry counts again)"
        );
        describe_counter!(
            "dynamowave_messages_acked_total",
            "Messages committed (duplicates not counted)"
        );
        describe_counter!(
            "dynamowave_messages_rejected_total",
            "Error frames sent to clients, by reason (the error code)"
        );
        describe_counter!(
            "dynamowave_messages_delivered_total",
            "Room message frames written and flushed to sockets"
        );
        describe_histogram!(
            "dynamowave_delivery_latency_seconds",
            metrics::Unit::Seconds,
            "Commit to flushed to the socket; one sample per write batch (its oldest message)"
        );
        describe_histogram!(
            "dynamowave_store_commit_seconds",
            metrics::Unit::Seconds,
            "One writer batch, BEGIN to COMMIT (fsync included)"
        );
        describe_histogram!(
            "dynamowave_store_batch_size",
            "Commands applied per writer batch (one transaction)"
        );
        describe_gauge!(
            "dynamowave_outbound_queue_depth",
            "Queue entries (one per room per commit, presence frame or post) waiting for all connections, sampled when /metrics is scraped"
        );
        describe_counter!(
            "dynamowave_slow_consumer_closes_total",
            "Connections closed with 1013 because their outbound queue was full"
        );
        let by_mode = |name: &'static str| {
            [Mode::V1, Mode::Compat].map(|m| metrics::counter!(name, "mode" => m.as_str()))
        };
        Instruments {
            connections: [Mode::V1, Mode::Compat]
                .map(|m| metrics::gauge!("dynamowave_connections", "mode" => m.as_str())),
            connects: by_mode("dynamowave_connects_total"),
            disconnects: by_mode("dynamowave_disconnects_total"),
            frames_received: by_mode("dynamowave_frames_received_total"),
            messages_delivered: metrics::counter!("dynamowave_messages_delivered_total"),
            delivery_latency: metrics::histogram!("dynamowave_delivery_latency_seconds"),
            outbound_queue_depth: metrics::gauge!("dynamowave_outbound_queue_depth"),
            slow_consumer_closes: metrics::counter!("dynamowave_slow_consumer_closes_total"),
        }
    }

    /// A connection task started; the guard counts its end when dropped.
    pub fn connection_opened(&'static self, mode: Mode) -> OpenConnection {
        let i = mode_index(mode);
        self.connects[i].increment(1);
        self.connections[i].increment(1.0);
        OpenConnection {
            instruments: self,
            i,
        }
    }

    pub fn frames_received(&self, mode: Mode) -> &Counter {
        &self.frames_received[mode_index(mode)]
    }

    /// A successful flush wrote `delivered` room messages, the oldest committed at `oldest`.
    pub fn delivered(&self, delivered: u64, oldest: Instant) {
        self.messages_delivered.increment(delivered);
        self.delivery_latency.record(oldest.elapsed());
    }
}

/// Counts a connection's end when dropped.
pub struct OpenConnection {
    instruments: &'static Instruments,
    i: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.instruments.disconnects[self.i].increment(1);
        self.instruments.connections[self.i].decrement(1.0);
    }
}
