//! Counters of what the gateway did, shared by every stage and rendered for Prometheus.
//!
//! Each notable happening bumps one counter; the log line is written at the call site with the
//! same name, so a metric and its log agree.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[$doc:meta])* $name:ident,)+) => {
        /// Monotonic counters and gauges of the gateway.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)+
            /// Whether the last store operation succeeded (readiness).
            pub store_ok: AtomicBool,
        }

        impl Metrics {
            /// Prometheus text exposition of every counter.
            pub fn render_prometheus(&self) -> String {
                let mut out = String::new();
                $(
                    let help = concat!($(stringify!($doc)),+);
                    let help = help.trim_start_matches("doc = ").trim_matches('"').trim();
                    let _ = writeln!(out, "# HELP sentinella_{} {}", stringify!($name), help);
                    let _ = writeln!(out, "# TYPE sentinella_{} {}", stringify!($name),
                        if stringify!($name).ends_with("_total") { "counter" } else { "gauge" });
                    let _ = writeln!(out, "sentinella_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )+
                let _ = writeln!(out, "# HELP sentinella_store_up Whether the last store operation succeeded.");
                let _ = writeln!(out, "# TYPE sentinella_store_up gauge");
                let _ = writeln!(out, "sentinella_store_up {}", u8::from(self.store_ok.load(Ordering::Relaxed)));
                out
            }
        }
    };
}

metrics! {
    /// Device connections accepted by the edge.
    edge_connections_total,
    /// Device connections refused (bad credentials, revoked, unknown device, limits).
    edge_refused_total,
    /// Device connections closed for a protocol or authorization violation.
    edge_violations_total,
    /// Device connections open now.
    edge_connections_open,
    /// Readings messages received from the broker link.
    messages_received_total,
    /// Readings received (inside those messages).
    readings_received_total,
    /// Readings newly stored.
    readings_committed_total,
    /// Readings received again that were already stored (resends).
    readings_duplicate_total,
    /// Messages or readings put in quarantine.
    quarantined_total,
    /// Readings acknowledged to devices as committed.
    readings_acked_total,
    /// Batches committed to the store.
    batches_committed_total,
    /// Sum of batch commit durations, microseconds.
    batch_commit_micros_total,
    /// Store commits that failed and were retried.
    store_retries_total,
    /// Messages waiting between the broker link and the batcher.
    queue_depth,
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
}
