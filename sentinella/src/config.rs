//! The `sentinella` configuration: defaults, then the TOML file, then environment variables,
//! then command-line flags. `sentinella config sample` prints a documented sample
//! (`sentinella.sample.toml` at the repository root is the same text).

use std::path::{Path, PathBuf};

use alerting::AlertsConfig;
use anyhow::Context;
use api::config::ApiConfig;
use gateway::GatewayConfig;
use serde::Deserialize;

/// The documented sample configuration.
pub const SAMPLE: &str = include_str!("../../sentinella.sample.toml");

/// Everything the `sentinella` binary reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    /// Where the embedded SQLite database and the demo fleet live.
    pub data_dir: PathBuf,
    /// The store: `postgres://…` for PostgreSQL/TimescaleDB, `sqlite:PATH` for SQLite. When
    /// absent, SQLite at `{data_dir}/sentinella.sqlite`. A URL holding a password belongs in
    /// the `SENTINELLA_DATABASE_URL` environment variable, not in this file.
    pub database_url: Option<String>,
    /// The device CA's directory (`ca.pem`, `ca.key`, created on first use, key mode 0600).
    /// Absent: `{data_dir}/pki`.
    pub pki_dir: Option<PathBuf>,
    /// The HTTP API.
    pub api: ApiConfig,
    /// The device side: edge, broker, ingest (`[gateway]`).
    pub gateway: GatewayConfig,
    /// The alert engine (`[gateway.alerts]` in the file, where it has always been).
    pub alerts: AlertsConfig,
    /// The telemonitoring reports (`[reports]`).
    pub reports: ReportsConfig,
    /// This node among several on one database (`[cluster]`).
    pub cluster: ClusterConfig,
}

/// Several nodes on one PostgreSQL database: each needs a name of its own. Alert work is
/// shared out by the database (`store::leases`), so nothing else is configured per node.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, unique among the nodes on one database (the outbox entries it
    /// writes and its logs carry it). Absent: `SENTINELLA_NODE_ID`, else the host name.
    pub node_id: Option<String>,
}

impl ClusterConfig {
    /// This node's name: configured, else the host name, else `node`.
    pub fn node_id(&self) -> String {
        if let Some(id) = self.node_id.as_ref().filter(|s| !s.trim().is_empty()) {
            return id.trim().to_owned();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".to_owned())
    }
}

/// Scheduled telemonitoring reports.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// When set, every patient's report of the previous calendar month is written here once,
    /// in Italian and English (`{COT}/{patient}/{yyyy-mm}-{it|en}.pdf`); absent: no scheduled
    /// reports (they are always available on request through the API and FHIR).
    pub monthly_dir: Option<PathBuf>,
}

/// The file as written: `[gateway.alerts]` sits inside `[gateway]`, but the gateway knows
/// nothing of the alert engine, so the composition splits the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    data_dir: PathBuf,
    database_url: Option<String>,
    pki_dir: Option<PathBuf>,
    api: ApiConfig,
    gateway: toml::Table,
    reports: ReportsConfig,
    cluster: ClusterConfig,
}

impl Default for RawConfig {
    fn default() -> Self {
        let c = Config::default();
        RawConfig {
            data_dir: c.data_dir,
            database_url: c.database_url,
            pki_dir: c.pki_dir,
            api: c.api,
            gateway: toml::Table::new(),
            reports: c.reports,
            cluster: c.cluster,
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(mut raw: RawConfig) -> Result<Self, String> {
        let alerts = match raw.gateway.remove("alerts") {
            Some(table) => AlertsConfig::deserialize(table)
                .map_err(|e| format!("[gateway.alerts]: {}", e.message()))?,
            None => AlertsConfig::default(),
        };
        let gateway = GatewayConfig::deserialize(toml::Value::Table(raw.gateway))
            .map_err(|e| format!("[gateway]: {}", e.message()))?;
        Ok(Config {
            data_dir: raw.data_dir,
            database_url: raw.database_url,
            pki_dir: raw.pki_dir,
            api: raw.api,
            gateway,
            alerts,
            reports: raw.reports,
            cluster: raw.cluster,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            database_url: None,
            pki_dir: None,
            api: ApiConfig::default(),
            gateway: GatewayConfig::default(),
            alerts: AlertsConfig::default(),
            reports: ReportsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path` (TOML) over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
    }

    /// Applies the environment variables `SENTINELLA_API_LISTEN`, `SENTINELLA_EDGE_LISTEN`,
    /// `SENTINELLA_EDGE_TLS_LISTEN` and `SENTINELLA_NODE_ID` (the database URL and data dir come through the command
    /// line's `env` fallbacks).
    pub fn apply_env(&mut self) -> anyhow::Result<()> {
        if let Ok(v) = std::env::var("SENTINELLA_API_LISTEN") {
            self.api.listen = v
                .parse()
                .context("SENTINELLA_API_LISTEN must be host:port")?;
        }
        if let Ok(v) = std::env::var("SENTINELLA_EDGE_LISTEN") {
            self.gateway.listen = v
                .parse()
                .context("SENTINELLA_EDGE_LISTEN must be host:port")?;
        }
        if let Ok(v) = std::env::var("SENTINELLA_NODE_ID") {
            self.cluster.node_id = Some(v);
        }
        if let Ok(v) = std::env::var("SENTINELLA_EDGE_TLS_LISTEN") {
            self.gateway.tls_listen = v
                .parse()
                .context("SENTINELLA_EDGE_TLS_LISTEN must be host:port")?;
        }
        Ok(())
    }

    /// The device CA's directory.
    pub fn pki_dir(&self) -> PathBuf {
        self.pki_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pki"))
    }

    /// The store URL to use.
    pub fn store_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite:{}",
                self.data_dir.join("sentinella.sqlite").display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_parses_and_matches_defaults() {
        let parsed: Config = toml::from_str(SAMPLE).unwrap();
        let defaults = Config::default();
        assert_eq!(parsed.api.listen, defaults.api.listen);
        assert_eq!(parsed.gateway.listen, defaults.gateway.listen);
        assert_eq!(
            parsed.gateway.batch_max_rows,
            defaults.gateway.batch_max_rows
        );
        assert_eq!(
            parsed.gateway.batch_max_delay,
            defaults.gateway.batch_max_delay
        );
        assert_eq!(parsed.data_dir, defaults.data_dir);
        assert_eq!(parsed.gateway.tls_listen, defaults.gateway.tls_listen);
        assert_eq!(
            parsed.gateway.tls_handshake_timeout,
            defaults.gateway.tls_handshake_timeout
        );
        assert_eq!(
            parsed.gateway.max_connections_per_ip,
            defaults.gateway.max_connections_per_ip
        );
        assert_eq!(
            parsed.gateway.max_new_connections_per_ip_per_sec,
            defaults.gateway.max_new_connections_per_ip_per_sec
        );
        assert_eq!(
            parsed.gateway.revocation_poll,
            defaults.gateway.revocation_poll
        );
        assert!(!parsed.gateway.allow_plain_on_non_loopback);
        assert_eq!(parsed.api.conn_limits(), defaults.api.conn_limits());
        assert_eq!(parsed.api.trusted_proxies, defaults.api.trusted_proxies);
        assert_eq!(parsed.reports.monthly_dir, defaults.reports.monthly_dir);
        assert_eq!(parsed.cluster.node_id, None);
        let named: Config = toml::from_str("[cluster]\nnode_id = \" node-b \"").unwrap();
        assert_eq!(named.cluster.node_id(), "node-b");
        assert!(!Config::default().cluster.node_id().is_empty());
        let on: Config = toml::from_str("[reports]\nmonthly_dir = \"data/reports\"").unwrap();
        assert_eq!(on.reports.monthly_dir, Some(PathBuf::from("data/reports")));
    }

    #[test]
    fn the_packaged_configuration_is_the_sample_with_the_state_directory() {
        let packaged = include_str!("../../packaging/debian/sentinella.toml");
        let expected = format!(
            "# Installed by the sentinella Debian package: the sample (`sentinella config sample`) \
             with\n# data_dir in /var/lib/sentinella, the service's state directory.\n{}",
            SAMPLE.replacen(
                "data_dir = \"data\"\n",
                "data_dir = \"/var/lib/sentinella\"\n",
                1
            )
        );
        assert_eq!(
            packaged, expected,
            "packaging/debian/sentinella.toml must follow sentinella.sample.toml"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<Config>("[api]\nlisten = \"127.0.0.1:1\"\nport = 3").is_err());
        assert!(toml::from_str::<Config>("[gateway]\nbatch_size = 3").is_err());
        assert!(toml::from_str::<Config>("[gateway.alerts]\nticks = \"1s\"").is_err());
    }

    #[test]
    fn the_alerts_table_stays_under_gateway() {
        let c: Config = toml::from_str(
            "[gateway]\nbatch_max_rows = 7\n[gateway.alerts]\nenabled = false\ntick = \"5s\"",
        )
        .unwrap();
        assert_eq!(c.gateway.batch_max_rows, 7);
        assert!(!c.alerts.enabled);
        assert_eq!(c.alerts.tick, std::time::Duration::from_secs(5));
        let d: Config = toml::from_str("").unwrap();
        assert!(d.alerts.enabled);
    }
}
