//! Counters of what the gateway did, shared by every stage and rendered for Prometheus.
//!
//! Each notable happening bumps one counter; the log line is written at the call site with the
//! same name, so a metric and its log agree.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use ::telemetry::Histogram;

macro_rules! metrics {
    ($($name:ident: $help:literal,)+) => {
        /// Monotonic counters and gauges of the gateway.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)+
            /// Whether the last store operation succeeded (readiness).
            pub store_ok: AtomicBool,
            /// Whether the broker's ingest link is receiving (its heartbeat arrives); while it
            /// is not, nothing devices publish is stored (readiness).
            pub ingest_link_up: AtomicBool,
            /// How long one batch commit took.
            pub batch_commit_seconds: Histogram,
            /// From a message's arrival off the broker to its ack being handed to the broker:
            /// batching wait + commit (+ retries while the store is down).
            pub ingest_latency_seconds: Histogram,
        }

        impl Metrics {
            /// Prometheus text exposition of every counter.
            pub fn render_prometheus(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP sentinella_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE sentinella_{} {}", stringify!($name),
                        if stringify!($name).ends_with("_total") { "counter" } else { "gauge" });
                    let _ = writeln!(out, "sentinella_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )+
                let _ = writeln!(out, "# HELP sentinella_store_up Whether the last store operation succeeded.");
                let _ = writeln!(out, "# TYPE sentinella_store_up gauge");
                let _ = writeln!(out, "sentinella_store_up {}", u8::from(self.store_ok.load(Ordering::Relaxed)));
                let _ = writeln!(out, "# HELP sentinella_ingest_link_up Whether the broker's ingest link receives its heartbeat.");
                let _ = writeln!(out, "# TYPE sentinella_ingest_link_up gauge");
                let _ = writeln!(out, "sentinella_ingest_link_up {}", u8::from(self.ingest_link_up.load(Ordering::Relaxed)));
                self.batch_commit_seconds.render(&mut out, "sentinella_batch_commit_seconds", "Duration of one batch commit.");
                self.ingest_latency_seconds.render(&mut out, "sentinella_ingest_latency_seconds", "From arrival off the broker to the commit ack.");
                out
            }
        }
    };
}

metrics! {
    edge_connections_total: "Device connections accepted by the edge.",
    edge_refused_total: "Device connections refused (bad credentials, revoked, unknown device, limits).",
    edge_violations_total: "Device connections closed for a protocol or authorization violation.",
    edge_connections_open: "Device connections open now.",
    edge_tls_handshake_failures_total: "TLS handshakes that failed (no, invalid or untrusted client certificate, or not TLS).",
    edge_tls_handshake_timeouts_total: "TLS connections closed for not completing the handshake in time.",
    edge_ip_concurrency_refused_total: "TLS connections refused at accept: too many open from the same source IP.",
    edge_ip_rate_refused_total: "TLS connections refused at accept: too many new ones per second from the same source IP.",
    edge_proxy_untrusted_refused_total: "Connections closed at accept for coming from outside proxy_trusted while proxy_protocol is on.",
    edge_proxy_header_failures_total: "Connections closed for a missing, malformed or slow PROXY protocol header.",
    edge_revoked_closed_total: "Live device connections closed because the device was revoked or its certificate superseded.",
    edge_max_connections: "Most device connections the edge holds at once (from the descriptor budget or the configuration).",
    process_open_files_limit: "The process's open-file (descriptor) limit the edge's budget was computed from.",
    ingest_link_restarts_total: "Times the broker's ingest link was found dead (no heartbeat) and rebuilt.",
    messages_received_total: "Readings messages received from the broker link.",
    readings_received_total: "Readings received (inside those messages).",
    readings_committed_total: "Readings newly stored.",
    readings_duplicate_total: "Readings received again that were already stored (resends).",
    quarantined_total: "Messages or readings put in quarantine.",
    readings_late_total: "Readings received more than an hour after they were measured (offline backlog).",
    readings_clock_implausible_total: "Readings whose device time is implausible (clock ahead, or more than a year behind).",
    readings_acked_total: "Readings acknowledged to devices as committed.",
    batches_committed_total: "Batches committed to the store.",
    commits_in_flight: "Batch commits running now, over all writer lanes.",
    commits_in_flight_peak: "Most batch commits that ran at once since start (at most gateway.writers).",
    engine_lagging_batches_total: "Committed batches left to the alert engine's outbox because the engine lagged (it catches up from the store; ingest never waits for it).",
    store_retries_total: "Store commits that failed and were retried.",
    queue_depth: "Messages waiting between the broker link and the batcher.",
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Whether the gateway can take readings now: the store answers and the broker's ingest
    /// link receives. `/readyz` answers with this.
    pub fn ready(&self) -> bool {
        self.store_ok.load(Ordering::Relaxed) && self.ingest_link_up.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.readings_committed_total, 5);
        m.batch_commit_seconds.observe(Duration::from_millis(3));
        m.batch_commit_seconds.observe(Duration::from_secs(9));
        let text = m.render_prometheus();
        assert!(
            text.contains("sentinella_readings_committed_total 5\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE sentinella_readings_committed_total counter"));
        assert!(text.contains("# TYPE sentinella_queue_depth gauge"));
        assert!(
            text.contains("sentinella_batch_commit_seconds_bucket{le=\"0.002\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("sentinella_batch_commit_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("sentinella_batch_commit_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("sentinella_batch_commit_seconds_count 2\n"));
        assert!(
            text.contains("# HELP sentinella_readings_committed_total Readings newly stored."),
            "{text}"
        );
    }
}
