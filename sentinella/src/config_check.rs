//! `sentinella config check`: every value of a configuration checked before anything starts,
//! and the same checks `sentinella run` makes before it opens anything (same messages).
//!
//! [`check`] returns every [`Problem`] found, not just the first: listeners (ports, which
//! listener may bind what, two listeners on one port), every number and duration that must
//! not be zero, the paths (the data directory and the device CA's directory must be usable
//! directories; private keys must not be readable by every user; the CA key must be the
//! owner's only), the TLS material of the API and of the device edge (readable, parsed, the
//! key matching its certificate, the client CA holding certificates), the identity provider's
//! JWKS, the database (reachable; an SQLite file that does not exist yet needs a writable
//! folder) and the descriptor budget of `[gateway] max_connections`.
//! [`report`] prints what `run` would use (the database password redacted) and the problems.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// How long `check` waits for the database to answer.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit code of `config check` when the configuration has problems.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code of `config check` when the file cannot be read or parsed (nothing else checked).
pub const EXIT_UNREADABLE: u8 = 2;

/// One thing wrong with a configuration: the key it concerns (`api.tls_key`, `database_url`)
/// and what is wrong, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The configuration key, as a TOML path (`gateway.alerts.tick`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The problems found, one per line, as `run` and `config check` print them.
pub fn describe(problems: &[Problem]) -> String {
    let mut out = format!(
        "the configuration has {} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  - ");
        out.push_str(&p.to_string());
    }
    out
}

/// Everything that can be checked about `config`, the database included.
pub async fn check(config: &Config) -> Vec<Problem> {
    let mut problems = check_values(config);
    problems.extend(check_store(config).await);
    problems
}

/// What `sentinella run` calls before it opens anything: an error listing every problem.
pub async fn refuse_invalid(config: &Config) -> anyhow::Result<()> {
    let problems = check(config).await;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(describe(&problems)))
    }
}

/// The checks that need no database: values, paths and files.
pub fn check_values(config: &Config) -> Vec<Problem> {
    let mut p = Problems::default();
    listeners(config, &mut p);
    api(config, &mut p);
    gateway(config, &mut p);
    paths(config, &mut p);
    p.0
}

#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn nonzero_duration(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.add(key, "must be longer than zero");
        }
    }

    fn nonzero(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.add(key, "must be at least 1");
        }
    }
}

fn listeners(config: &Config, p: &mut Problems) {
    let g = &config.gateway;
    if !g.listen.ip().is_loopback() && !g.allow_plain_on_non_loopback {
        p.add(
            "gateway.listen",
            format!(
                "the plain (password, no TLS) device listener may bind only a loopback \
                 address, not {}: device secrets and readings would cross the network in \
                 clear. Devices should use the TLS listener (tls_listen); set \
                 allow_plain_on_non_loopback = true only on a trusted network",
                g.listen
            ),
        );
    }
    let all = [
        ("api.listen", config.api.listen),
        ("gateway.tls_listen", g.tls_listen),
        ("gateway.listen", g.listen),
    ];
    for (i, (key_a, a)) in all.iter().enumerate() {
        for (key_b, b) in &all[i + 1..] {
            if clash(*a, *b) {
                p.add(
                    key_b,
                    format!("{b} clashes with {key_a} ({a}): two listeners cannot share a port"),
                );
            }
        }
    }
}

/// Two listeners that would fight over one port (port 0 asks the system for a free one).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn api(config: &Config, p: &mut Problems) {
    let api = &config.api;
    p.nonzero("api.max_connections", api.max_connections);
    p.nonzero_duration("api.header_read_timeout", api.header_read_timeout);
    p.nonzero_duration("api.session_ttl", api.session_ttl);
    if time::Duration::try_from(api.session_ttl).is_err() {
        p.add("api.session_ttl", "is too long");
    }
    tls_pair(p, "api", api.tls_cert.as_deref(), api.tls_key.as_deref());
    if let Some(oidc) = &api.oidc {
        if oidc.issuer.trim().is_empty() {
            p.add("api.oidc.issuer", "must not be empty");
        }
        if oidc.audience.trim().is_empty() {
            p.add("api.oidc.audience", "must not be empty");
        }
        if let Err(e) = api::http::oidc::Oidc::load(oidc.clone()) {
            p.add("api.oidc.jwks_file", format!("{e:#}"));
        }
    }
}

fn gateway(config: &Config, p: &mut Problems) {
    let g = &config.gateway;
    for net in &g.per_ip_exempt {
        if let Err(e) = gateway::tls::IpNet::parse(net) {
            p.add("gateway.per_ip_exempt", e);
        }
    }
    for net in &g.proxy_trusted {
        if let Err(e) = gateway::tls::IpNet::parse(net) {
            p.add("gateway.proxy_trusted", e);
        }
    }
    if g.proxy_protocol {
        if g.proxy_trusted.is_empty() {
            p.add(
                "gateway.proxy_trusted",
                "proxy_protocol = true needs the load balancers' networks here: a PROXY header \
                 from anyone else is never believed",
            );
        }
        p.nonzero_duration("gateway.proxy_header_timeout", g.proxy_header_timeout);
    } else if !g.proxy_trusted.is_empty() {
        p.add(
            "gateway.proxy_trusted",
            "set, but proxy_protocol is off: devices connecting through the load balancer \
             would all share its address for the per-IP limits (set proxy_protocol = true)",
        );
    }
    for name in &g.tls_server_names {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            p.add(
                "gateway.tls_server_names",
                format!("{name:?} is neither a DNS name nor an IP address"),
            );
        }
    }
    p.nonzero_duration("gateway.tls_handshake_timeout", g.tls_handshake_timeout);
    p.nonzero("gateway.max_connections_per_ip", g.max_connections_per_ip);
    if g.max_new_connections_per_ip_per_sec == 0 {
        p.add(
            "gateway.max_new_connections_per_ip_per_sec",
            "must be at least 1",
        );
    }
    p.nonzero_duration("gateway.revocation_poll", g.revocation_poll);
    if g.max_connections == Some(0) {
        p.add("gateway.max_connections", "must be at least 1");
    }
    p.nonzero_duration("gateway.connect_timeout", g.connect_timeout);
    if g.max_packet_size < protocol::MAX_PAYLOAD {
        p.add(
            "gateway.max_packet_size",
            format!(
                "{} bytes is below the largest readings payload a device may send ({} bytes)",
                g.max_packet_size,
                protocol::MAX_PAYLOAD
            ),
        );
    }
    p.nonzero("gateway.batch_max_rows", g.batch_max_rows);
    p.nonzero_duration("gateway.batch_max_delay", g.batch_max_delay);
    // Each lane holds one of the store's 16 pooled connections while it commits.
    if g.writers == 0 || g.writers > 8 {
        p.add("gateway.writers", "must be 1 to 8");
    }
    p.nonzero("gateway.queue_capacity", g.queue_capacity);
    p.nonzero_duration("gateway.registry_ttl", g.registry_ttl);
    p.nonzero("gateway.broker_segment_size", g.broker_segment_size);
    p.nonzero("gateway.broker_segment_count", g.broker_segment_count);
    let a = &config.alerts;
    p.nonzero_duration("gateway.alerts.tick", a.tick);
    for (key, value) in [
        ("gateway.alerts.critical", a.critical),
        ("gateway.alerts.high", a.high),
        ("gateway.alerts.medium", a.medium),
        ("gateway.alerts.low", a.low),
        ("gateway.alerts.late_after", a.late_after),
    ] {
        p.nonzero_duration(key, value);
    }
    p.nonzero("gateway.alerts.max_cached_patients", a.max_cached_patients);
    // A worker evaluates whole alert partitions: more workers than partitions would idle.
    if a.workers == 0 || a.workers > store::leases::PARTITIONS as usize {
        p.add(
            "gateway.alerts.workers",
            format!("must be 1 to {}", store::leases::PARTITIONS),
        );
    }
    tls_pair(p, "gateway", g.tls_cert.as_deref(), g.tls_key.as_deref());
    if let Some(ca) = &g.tls_client_ca {
        match read_certs(ca) {
            Ok(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    if let Err(e) = roots.add(cert) {
                        p.add("gateway.tls_client_ca", format!("{}: {e}", ca.display()));
                    }
                }
            }
            Err(e) => p.add("gateway.tls_client_ca", e),
        }
    }
}

/// Checks a certificate and key pair of `table` (`api` or `gateway`): both or neither, both
/// readable and parsed, the key not readable by every user and matching the certificate.
fn tls_pair(p: &mut Problems, table: &str, cert: Option<&Path>, key: Option<&Path>) {
    let cert_key = format!("{table}.tls_cert");
    let key_key = format!("{table}.tls_key");
    let (cert, key) = match (cert, key) {
        (None, None) => return,
        (Some(_), None) => return p.add(&key_key, "must be set with tls_cert (or neither)"),
        (None, Some(_)) => return p.add(&cert_key, "must be set with tls_key (or neither)"),
        (Some(c), Some(k)) => (c, k),
    };
    let certs = read_certs(cert).map_err(|e| p.add(&cert_key, e)).ok();
    private_file_mode(p, &key_key, key);
    let private = match PrivateKeyDer::from_pem_file(key) {
        Ok(k) => Some(k),
        Err(e) => {
            p.add(&key_key, format!("{}: {}", key.display(), pem_error(&e)));
            None
        }
    };
    if let (Some(certs), Some(private)) = (certs, private) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let built = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private));
        if let Err(e) = built {
            p.add(
                &key_key,
                format!(
                    "{} does not go with the certificate {}: {e}",
                    key.display(),
                    cert.display()
                ),
            );
        }
    }
}

/// The certificates of a PEM file: at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read it: {io}"),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key in it".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// A private key readable by every user of the machine is refused.
fn private_file_mode(p: &mut Problems, key: &str, path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                p.add(
                    key,
                    format!(
                        "{} has mode {mode:04o}: a private key must not be accessible to every \
                         user (chmod 0640 or 0600)",
                        path.display()
                    ),
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (p, key, path);
}

fn paths(config: &Config, p: &mut Problems) {
    let data_ok = usable_dir(p, "data_dir", &config.data_dir);
    let pki_key = if config.pki_dir.is_some() {
        "pki_dir"
    } else if data_ok {
        "data_dir"
    } else {
        // The device CA would live in the data directory, already reported.
        return;
    };
    let pki = config.pki_dir();
    if !usable_dir(p, pki_key, &pki) {
        return;
    }
    let cert = pki.join(pki::CA_CERT_FILE);
    let key = pki.join(pki::CA_KEY_FILE);
    match (cert.exists(), key.exists()) {
        (true, true) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(&key) {
                    let mode = meta.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        p.add(
                            pki_key,
                            format!(
                                "the device CA key {} has mode {mode:04o}: it must be readable \
                                 by its owner only (chmod 0600)",
                                key.display()
                            ),
                        );
                    }
                }
            }
            if let Err(e) = pki::DeviceCa::load(&cert, &key) {
                p.add(pki_key, format!("the device CA in {}: {e}", pki.display()));
            }
        }
        (false, false) => {}
        _ => p.add(
            pki_key,
            format!(
                "{} and {} must both exist or both be absent",
                cert.display(),
                key.display()
            ),
        ),
    }
}

/// A directory the service can write into: an existing one (written to as a probe), or one
/// it can create (its nearest existing ancestor is a writable directory). Returns whether it
/// is usable.
fn usable_dir(p: &mut Problems, key: &str, dir: &Path) -> bool {
    let before = p.0.len();
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            p.add(key, format!("{} is not a directory", dir.display()));
        }
        Ok(_) => {
            if let Err(e) = probe_write(dir) {
                p.add(key, format!("{} is not writable: {e}", dir.display()));
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            let ancestor = dir
                .ancestors()
                .skip(1)
                .map(|a| {
                    if a.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        a
                    }
                })
                .find(|a| a.exists());
            match ancestor {
                Some(a) if !a.is_dir() => p.add(
                    key,
                    format!(
                        "{} cannot be created: {} is not a directory",
                        dir.display(),
                        a.display()
                    ),
                ),
                Some(a) => {
                    if let Err(e) = probe_write(a) {
                        p.add(
                            key,
                            format!(
                                "{} does not exist and cannot be created: {} is not writable: {e}",
                                dir.display(),
                                a.display()
                            ),
                        );
                    }
                }
                None => p.add(key, format!("{} cannot be created", dir.display())),
            }
        }
        Err(e) => p.add(key, format!("{}: {e}", dir.display())),
    }
    p.0.len() == before
}

/// Creates and removes a file in `dir`: the only sure test of writing (read-only mounts,
/// ACLs, root's privileges).
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe: PathBuf = dir.join(format!(
        ".sentinella-check-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// The database answers (a connection opens), and the descriptor budget holds the configured
/// `[gateway] max_connections`. An SQLite file that does not exist yet is not created here:
/// its folder is checked instead (by `data_dir`, or below for a URL elsewhere).
async fn check_store(config: &Config) -> Vec<Problem> {
    let mut p = Problems::default();
    let url = config.store_url();
    let shown = redact_url(&url);
    let store_descriptors;
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = Path::new(path.trim_start_matches("//"));
        let path = Path::new(
            path.to_str()
                .and_then(|s| s.split('?').next())
                .unwrap_or(""),
        );
        // The store's pool: 8 connections, 3 descriptors each (database, WAL, shared memory).
        store_descriptors = 24;
        if path.exists() {
            match tokio::time::timeout(DATABASE_TIMEOUT, store::Store::connect(&url)).await {
                Ok(Ok(store)) => store.close().await,
                Ok(Err(e)) => p.add("database_url", format!("cannot open {shown}: {e}")),
                Err(_) => p.add(
                    "database_url",
                    format!("{shown} did not answer within {DATABASE_TIMEOUT:?}"),
                ),
            }
        } else if config.database_url.is_some()
            && let Some(parent) = path.parent()
        {
            let _ = usable_dir(&mut p, "database_url", parent);
        }
    } else {
        // PostgreSQL: a pool of 16 connections, one socket each; with several hosts
        // (`h1:p1,h2:p2`) or `target_session_attrs`, one more for the store's watcher.
        store_descriptors = if url.contains(',') || url.contains("target_session_attrs") {
            17
        } else {
            16
        };
        match tokio::time::timeout(DATABASE_TIMEOUT, store::Store::connect(&url)).await {
            Ok(Ok(store)) => store.close().await,
            Ok(Err(e)) => p.add("database_url", format!("cannot reach {shown}: {e}")),
            Err(_) => p.add(
                "database_url",
                format!("{shown} did not answer within {DATABASE_TIMEOUT:?}"),
            ),
        }
    }
    if let Some(n) = config.gateway.max_connections
        && n > 0
    {
        let budget = gateway::descriptors::DescriptorBudget::of_process(
            config.api.max_connections,
            store_descriptors,
        );
        if let Err(e) = budget.resolve(Some(n)) {
            p.add("gateway.max_connections", e);
        }
    }
    p.0
}

/// A store URL with its password (user info, or a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            let end = scheme_end + 3 + at;
            out.replace_range(start..end, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}{query}");
    }
    out
}

/// What `run` would use, as TOML in the file's own shape (`[gateway.alerts]` inside
/// `[gateway]`), with the database password redacted.
pub fn effective_toml(config: &Config) -> String {
    let render = || -> Result<String, toml::ser::Error> {
        let mut file = toml::Table::new();
        file.insert("data_dir".into(), toml::Value::try_from(&config.data_dir)?);
        if let Some(url) = &config.database_url {
            file.insert("database_url".into(), toml::Value::String(redact_url(url)));
        }
        if let Some(dir) = &config.pki_dir {
            file.insert("pki_dir".into(), toml::Value::try_from(dir)?);
        }
        file.insert("api".into(), toml::Value::try_from(&config.api)?);
        let mut gateway = toml::Value::try_from(&config.gateway)?;
        if let toml::Value::Table(table) = &mut gateway {
            table.insert("alerts".into(), toml::Value::try_from(&config.alerts)?);
        }
        file.insert("gateway".into(), gateway);
        file.insert("reports".into(), toml::Value::try_from(&config.reports)?);
        // The name this node will use, wherever it came from.
        let mut cluster = toml::Table::new();
        cluster.insert(
            "node_id".into(),
            toml::Value::String(config.cluster.node_id()),
        );
        file.insert("cluster".into(), toml::Value::Table(cluster));
        toml::to_string(&file)
    };
    match render() {
        Ok(text) => text,
        Err(e) => format!("# (could not render the configuration: {e})\n"),
    }
}

/// `sentinella config check`: prints the configuration `run` would use (stdout) and every
/// problem (stderr); returns the exit code (0, or [`EXIT_PROBLEMS`]).
pub async fn report(config: &Config, source: Option<&Path>) -> u8 {
    let problems = check(config).await;
    let from = match source {
        Some(path) => format!("{} over the defaults", path.display()),
        None => "the defaults (no --config)".into(),
    };
    println!("# sentinella configuration: {from}, then environment and flags");
    println!("# store: {}", redact_url(&config.store_url()));
    print!("{}", effective_toml(config));
    if problems.is_empty() {
        eprintln!("configuration OK");
        0
    } else {
        eprintln!("{}", describe(&problems));
        EXIT_PROBLEMS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (url, shown) in [
            (
                "postgres://u:secret@db:5432/s",
                "postgres://u:***@db:5432/s",
            ),
            ("postgres://u@db/s", "postgres://u@db/s"),
            (
                "postgres://db/s?user=u&password=secret&sslmode=require",
                "postgres://db/s?user=u&password=***&sslmode=require",
            ),
            ("sqlite:data/x.sqlite", "sqlite:data/x.sqlite"),
            (
                "postgres://u:secret@db1:5432,db2:5433/s?target_session_attrs=read-write",
                "postgres://u:***@db1:5432,db2:5433/s?target_session_attrs=read-write",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn the_effective_configuration_is_toml_without_the_password() {
        let config = Config {
            database_url: Some("postgres://u:secret@db/s".into()),
            ..Config::default()
        };
        let text = effective_toml(&config);
        assert!(!text.contains("secret"), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back.api.listen, config.api.listen);
        assert_eq!(back.database_url.as_deref(), Some("postgres://u:***@db/s"));
    }

    #[test]
    fn proxy_protocol_keys() {
        let problems = |toml_text: &str| {
            let config: Config = toml::from_str(toml_text).unwrap();
            check_values(&config)
                .into_iter()
                .filter(|p| p.key.starts_with("gateway.proxy"))
                .map(|p| p.key)
                .collect::<Vec<_>>()
        };
        assert!(
            problems(
                "[gateway]\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.0/24\", \"::1\"]\n"
            )
            .is_empty()
        );
        assert_eq!(
            problems("[gateway]\nproxy_protocol = true\n"),
            ["gateway.proxy_trusted"]
        );
        assert_eq!(
            problems("[gateway]\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.0/33\"]\n"),
            ["gateway.proxy_trusted"]
        );
        assert_eq!(
            problems("[gateway]\nproxy_trusted = [\"10.0.0.1\"]\n"),
            ["gateway.proxy_trusted"]
        );
        assert_eq!(
            problems(
                "[gateway]\nproxy_protocol = true\nproxy_trusted = [\"10.0.0.1\"]\nproxy_header_timeout = \"0s\"\n"
            ),
            ["gateway.proxy_header_timeout"]
        );
    }

    #[test]
    fn clashing_listeners() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(clash(a("127.0.0.1:8080"), a("0.0.0.0:8080")));
        assert!(clash(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(!clash(a("127.0.0.1:8080"), a("127.0.0.2:8080")));
        assert!(!clash(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!clash(a("127.0.0.1:8080"), a("127.0.0.1:8081")));
    }
}
