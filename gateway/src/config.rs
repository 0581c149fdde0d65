//! The gateway's typed configuration (the `[gateway]` table of the `sentinella` config file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the gateway listens for devices and batches their readings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the edge accepts device MQTT connections over plain TCP (MQTT 3.1.1, client id =
    /// username = device id, password = device secret). Plain TCP carries device secrets and
    /// readings in clear: the gateway refuses to start with a non-loopback address here unless
    /// `allow_plain_on_non_loopback` is set.
    pub listen: SocketAddr,
    /// Lets the plain listener bind a non-loopback address (a trusted network only).
    pub allow_plain_on_non_loopback: bool,
    /// Where the edge accepts device MQTT connections over TLS with client certificates (the
    /// production listener). The device's identity is its certificate's.
    pub tls_listen: SocketAddr,
    /// The edge's own server certificate chain (PEM). Absent: `sentinella run` issues one from
    /// the device CA at every start, for `localhost`, `127.0.0.1`, `::1` and `tls_server_names`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) device certificates must chain to. Absent: the device CA.
    pub tls_client_ca: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the server certificate issued from the device CA.
    pub tls_server_names: Vec<String>,
    /// How long a new TLS connection may take to complete its handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Most connections held at once from one source IP on the TLS listener (256). Devices
    /// behind one NAT address share it: list such networks in `per_ip_exempt`.
    pub max_connections_per_ip: usize,
    /// Most new connections accepted from one source IP per second on the TLS listener (50).
    pub max_new_connections_per_ip_per_sec: u32,
    /// Source networks (CIDR, e.g. `"10.20.0.0/16"`, `"2001:db8::/32"`, or a single address)
    /// the per-IP limits do not apply to: a carrier's NAT or a hospital's egress address that
    /// many real devices share. Connections from them still count against
    /// `max_connections`. Empty by default.
    pub per_ip_exempt: Vec<String>,
    /// Both device listeners expect a PROXY protocol header (v1 or v2, HAProxy's
    /// `send-proxy-v2`) at the start of every connection, naming the device's own address, which
    /// then replaces the load balancer's for the per-IP limits, the logs and the records. Only
    /// connections from `proxy_trusted` are accepted while this is on: an untrusted peer's
    /// header is never believed, so any other connection is closed at accept. Off by default.
    pub proxy_protocol: bool,
    /// The load balancers' networks (CIDR or single addresses, as `per_ip_exempt`), required
    /// when `proxy_protocol` is on.
    pub proxy_trusted: Vec<String>,
    /// How long a connection may take to send its whole PROXY header (then it is closed).
    #[serde(with = "humantime_serde")]
    pub proxy_header_timeout: Duration,
    /// How often the store is polled for revoked devices, whose live connections are then
    /// closed (`sentinella device revoke` runs in another process). Worst-case latency from
    /// the revocation to the close: this interval plus one store query.
    #[serde(with = "humantime_serde")]
    pub revocation_poll: Duration,
    /// Most device connections held at once over both listeners; further ones are closed at
    /// accept. Unset (the default): as many as the process's descriptor budget allows, i.e.
    /// open-files limit − `api_descriptors` − the store's pool − 256 spare, since each device
    /// holds one descriptor (its socket). A value above that budget is refused at start.
    pub max_connections: Option<usize>,
    /// Descriptors the API's connections may hold, counted in the budget above. Not read from
    /// the file: the program composing the process sets it (`sentinella run`: the API's
    /// connection cap). Default 1,024.
    #[serde(skip)]
    pub api_descriptors: usize,
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
    /// Writer lanes: batches committed at once, each lane over its own patients (a patient's
    /// devices always share a lane). On SQLite, whose writes take one lock, always 1.
    pub writers: usize,
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
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1884)),
            allow_plain_on_non_loopback: false,
            tls_listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_server_names: Vec::new(),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections_per_ip: 256,
            max_new_connections_per_ip_per_sec: 50,
            per_ip_exempt: Vec::new(),
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
            proxy_header_timeout: Duration::from_secs(5),
            revocation_poll: Duration::from_secs(2),
            max_connections: None,
            api_descriptors: 1024,
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024,
            batch_max_rows: 1000,
            batch_max_delay: Duration::from_millis(20),
            writers: 4,
            queue_capacity: 8192,
            registry_ttl: Duration::from_secs(30),
            broker_segment_size: 16 * 1024 * 1024,
            broker_segment_count: 8,
        }
    }
}
