//! The `[api]` table of the configuration file: where the API listens, its TLS, sessions,
//! identity provider and connection limits.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The HTTP API's settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// PEM certificate chain: with `tls_key`, the API is served over HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How long a login session lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: std::time::Duration,
    /// JWTs from a regional identity provider, verified against its JWKS.
    pub oidc: Option<crate::http::oidc::OidcConfig>,
    /// Connections the API serves at once (TLS handshakes included); at the cap it stops
    /// accepting until one ends. The API's share of the process's descriptors: the device
    /// edge needs the rest (3 per device: its socket, and both ends of its loopback link to the
    /// broker).
    pub max_connections: usize,
    /// How long a client has to send a request's head, also the longest a kept-alive
    /// connection may sit idle between requests.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: std::time::Duration,
    /// Reverse proxies (exact addresses) whose `X-Forwarded-For` names the client, for login
    /// throttling and the audit log. From any other peer the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl ApiConfig {
    /// The connection limits of the API's listener.
    pub fn conn_limits(&self) -> crate::ConnLimits {
        crate::ConnLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            session_ttl: std::time::Duration::from_secs(8 * 3600),
            oidc: None,
            max_connections: crate::ConnLimits::default().max_connections,
            header_read_timeout: crate::ConnLimits::default().header_read_timeout,
            trusted_proxies: Vec::new(),
        }
    }
}
