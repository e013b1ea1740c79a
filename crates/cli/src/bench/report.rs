//! What a run measured, printed for people or as one JSON object.

use std::io::IsTerminal;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Common;
use super::load::{Counters, Run};

/// Latency percentiles in microseconds.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct Latency {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

#[derive(Serialize, Debug, Default)]
pub struct Report {
    pub scenario: &'static str,
    pub url: String,
    pub params: serde_json::Value,
    pub connections: u64,
    pub connect_failures: u64,
    pub errors: u64,
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub delivery_ratio: f64,
    pub deliveries_per_sec: f64,
    /// Delivery latency (fanout, rooms), ack latency (ack) or handshake time (connect).
    pub latency_us: Option<Latency>,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connects_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_baseline_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_connection_bytes: Option<f64>,
    /// `fanout --flood-rate`: what the flooding client sent and how the server answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<serde_json::Value>,
    /// Set when `--json` was given.
    #[serde(skip)]
    pub json: bool,
}

impl Report {
    /// The report of a run that counted deliveries (or acks) against `expected`, measured from
    /// `started` (clock micros of the first send). `connections` is (connected, failed).
    pub fn of_deliveries(
        scenario: &'static str,
        common: &Common,
        params: serde_json::Value,
        connections: (usize, u64),
        run: &Run,
        started: u64,
        expected: u64,
    ) -> Report {
        let counters = &run.counters;
        let delivered = Counters::get(&counters.delivered).min(expected);
        let window = Counters::get(&counters.last_delivery)
            .saturating_sub(started)
            .max(1) as f64
            / 1e6;
        Report {
            scenario,
            url: common.url.clone(),
            params,
            connections: connections.0 as u64,
            connect_failures: connections.1,
            errors: Counters::get(&counters.errors),
            sent: Counters::get(&counters.sent),
            expected,
            delivered,
            delivery_ratio: Report::ratio(delivered, expected),
            deliveries_per_sec: delivered as f64 / window,
            latency_us: Latency::of(&run.recorder.merged()),
            elapsed_s: run.clock.micros() as f64 / 1e6,
            json: common.json,
            ..Report::default()
        }
    }

    pub fn ratio(delivered: u64, expected: u64) -> f64 {
        if expected == 0 {
            1.0
        } else {
            delivered as f64 / expected as f64
        }
    }

    pub fn print(&self) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(self).expect("reports serialize")
            );
            return;
        }
        let mut out = format!(
            "{} against {}\n  params       {}\n  connections  {} ({} failed)\n  errors       {}\n  elapsed      {:.2} s\n",
            self.scenario,
            self.url,
            self.params,
            self.connections,
            self.connect_failures,
            self.errors,
            self.elapsed_s
        );
        if self.expected > 0 {
            out += &format!(
                "  sent         {}\n  delivered    {} of {} (ratio {:.6})\n  throughput   {:.0} deliveries/s\n",
                self.sent,
                self.delivered,
                self.expected,
                self.delivery_ratio,
                self.deliveries_per_sec
            );
        }
        if let Some(cps) = self.connects_per_sec {
            out += &format!("  connects     {cps:.0} /s\n");
        }
        if let Some(l) = self.latency_us {
            out += &format!(
                "  latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})\n",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.count
            );
        }
        if let (Some(rss), Some(per)) = (self.server_rss_bytes, self.rss_per_connection_bytes) {
            out += &format!(
                "  server RSS   {:.1} MiB ({:.0} bytes per connection over the baseline)\n",
                rss as f64 / 1048576.0,
                per
            );
        }
        if let Some(flood) = &self.flood {
            out += &format!("  flooder      {flood}\n");
        }
        print!("{out}");
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A progress line on stderr when it is a terminal and the output is not JSON.
pub fn progress(json: bool) -> indicatif::ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
