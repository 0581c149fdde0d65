//! The gateway's typed configuration (the `[gateway]` table of the `sentinella` config file).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// How the gateway listens for devices and batches their readings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the edge accepts device MQTT connections (plain TCP, MQTT 3.1.1). Loopback by
    /// default: plain TCP carries device secrets in clear, so open it beyond loopback only on a
    /// trusted network (mutual TLS comes with the security work).
    pub listen: SocketAddr,
    /// Most device connections held at once; further ones are closed at accept.
    pub max_connections: usize,
    /// How long a new connection may take to send its MQTT CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest MQTT packet a device may send (bytes). Publishes over `protocol::MAX_PAYLOAD`
    /// but under this limit are quarantined with their payload; larger packets close the
    /// connection and leave a quarantine record without the payload.
    pub max_packet_size: usize,
    /// A batch is written to the store when it holds this many rows…
    pub batch_max_rows: usize,
    /// …or when its oldest row has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_max_delay: Duration,
    /// Capacity of the queue between the broker link and the batcher (messages). When full,
    /// the link stops reading and the edge stops reading device sockets: backpressure.
    pub queue_capacity: usize,
    /// How long a device registry entry is trusted before it is read again from the store.
    #[serde(with = "humantime_serde")]
    pub registry_ttl: Duration,
    /// Commit-log segment size (bytes) of the embedded broker for the ingest filters.
    pub broker_segment_size: usize,
    /// Commit-log segments kept per filter; size × count bounds the broker's memory while the
    /// store is down (older data is dropped by the broker, and devices resend it because it was
    /// never acknowledged).
    pub broker_segment_count: usize,
    /// The alert engine (`[gateway.alerts]`).
    pub alerts: crate::alerts::AlertsConfig,
}

const fn default_max_connections() -> usize {
    20_000
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1884)),
            max_connections: default_max_connections(),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024,
            batch_max_rows: 1000,
            batch_max_delay: Duration::from_millis(20),
            queue_capacity: 8192,
            registry_ttl: Duration::from_secs(30),
            broker_segment_size: 16 * 1024 * 1024,
            broker_segment_count: 8,
            alerts: crate::alerts::AlertsConfig::default(),
        }
    }
}
