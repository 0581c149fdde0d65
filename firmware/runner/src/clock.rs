//! The core's [`Clock`] on tokio's monotonic clock.

use std::time::Duration;

use firmware_core::Clock;
use tokio::time::Instant;

/// Longest single sleep (keeps `Instant` arithmetic far from overflow).
const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);

/// Milliseconds since the runner started.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Instant,
}

impl TokioClock {
    /// A clock starting now.
    pub fn new() -> Self {
        TokioClock {
            start: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn sleep_until(&mut self, at_ms: u64) {
        let wait = Duration::from_millis(at_ms.saturating_sub(self.now_ms())).min(MAX_SLEEP);
        tokio::time::sleep(wait).await;
    }
}
