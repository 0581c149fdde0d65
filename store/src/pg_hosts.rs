//! Multi-host PostgreSQL URLs, as libpq writes them:
//! `postgres://user:pw@h1:5432,h2:5432/db?target_session_attrs=read-write`.
//!
//! sqlx connects to one host. With several hosts (or `target_session_attrs=read-write`), the
//! store looks for the read-write server itself: at start it tries the hosts in order and
//! keeps the first that accepts connections (and, with `read-write`, answers
//! `SHOW transaction_read_only` with `off`); the pool's connections go there. A watcher task
//! keeps one connection of its own to that server and checks it every
//! [`WATCH_INTERVAL`]; when the check fails (the primary died, or was demoted) it looks
//! again through the hosts in order and points the pool's new connections at the one found
//! (`Pool::set_connect_options`). The pool drops broken connections by itself; connections
//! opened before the move are dropped when next taken from the pool, and every new
//! connection is checked read-write before use, so a standby is never written to.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection, Row};

/// How often the watcher checks the server the pool writes to.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a probe of one host may take (connect plus the check).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A URL split into one set of options per host.
#[derive(Debug, Clone)]
pub(crate) struct HostList {
    /// One per host, in the URL's order; everything but the host and port is shared.
    pub(crate) hosts: Vec<PgConnectOptions>,
    /// `host:port` as written, for logs (never the credentials).
    pub(crate) labels: Vec<String>,
    /// `target_session_attrs=read-write` (or `primary`): only a read-write server will do.
    pub(crate) read_write: bool,
}

impl HostList {
    /// One host and no session requirement: an ordinary pool, no watcher.
    pub(crate) fn is_plain(&self) -> bool {
        self.hosts.len() == 1 && !self.read_write
    }
}

/// Splits a `postgres://` URL with a comma-separated host list and an optional
/// `target_session_attrs` (`any`, `read-write` or `primary`). Errors never quote the URL
/// (it may hold a password), only the offending part.
pub(crate) fn parse(url: &str) -> Result<HostList, String> {
    let scheme_end = url.find("://").ok_or("expected postgres://")? + 3;
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host_list) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let tail = tail.split('#').next().unwrap_or_default();
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, query),
        None => (tail, ""),
    };
    let mut read_write = false;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("target_session_attrs", value)) => {
                read_write = match value {
                    "any" => false,
                    "read-write" | "primary" => true,
                    other => {
                        return Err(format!(
                            "target_session_attrs={other} is not supported (use read-write, \
                             primary or any)"
                        ));
                    }
                }
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let written: Vec<&str> = host_list.split(',').collect();
    if written.len() > 1 && written.iter().any(|h| h.is_empty()) {
        return Err("empty host in the host list".into());
    }
    let mut hosts = Vec::with_capacity(written.len());
    for host in &written {
        let one = format!("{scheme}{userinfo}{host}{path}{query}");
        let options = PgConnectOptions::from_str(&one)
            .map_err(|e| format!("host {host:?}: {}", without(&e.to_string(), userinfo)))?;
        hosts.push(options);
    }
    Ok(HostList {
        hosts,
        labels: written.iter().map(|h| (*h).to_owned()).collect(),
        read_write,
    })
}

/// `message` with the URL's credentials cut out, should a parser have quoted them.
fn without(message: &str, userinfo: &str) -> String {
    let secret = userinfo.trim_end_matches('@');
    match secret.split_once(':') {
        Some((_, password)) if !password.is_empty() => message.replace(password, "***"),
        _ => message.to_owned(),
    }
}

/// Fails unless the session may write (`SHOW transaction_read_only` is `off`), as libpq's
/// `target_session_attrs=read-write` checks.
pub(crate) async fn check_writable(conn: &mut PgConnection) -> sqlx::Result<()> {
    let row = sqlx::query("SHOW transaction_read_only")
        .fetch_one(&mut *conn)
        .await?;
    let read_only: String = row.try_get(0)?;
    if read_only == "off" {
        Ok(())
    } else {
        Err(not_writable())
    }
}

fn not_writable() -> sqlx::Error {
    // An IO error: transient for the store and retried by the pool.
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "the server is read-only (a standby): looking for the read-write one",
    ))
}

async fn probe(options: &PgConnectOptions, read_write: bool) -> sqlx::Result<PgConnection> {
    let attempt = async {
        let mut conn = PgConnection::connect_with(options).await?;
        if read_write {
            if let Err(e) = check_writable(&mut conn).await {
                let _ = conn.close().await;
                return Err(e);
            }
        } else {
            sqlx::query("SELECT 1").execute(&mut conn).await?;
        }
        Ok(conn)
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// Tries the hosts in order; the first that fits, with a connection to it. The error, if
/// none fits, is the last host's (transient).
pub(crate) async fn find(list: &HostList) -> sqlx::Result<(usize, PgConnection)> {
    let mut last = None;
    for (i, options) in list.hosts.iter().enumerate() {
        match probe(options, list.read_write).await {
            Ok(conn) => return Ok((i, conn)),
            Err(e) => {
                tracing::debug!(host = %list.labels[i], error = %e, "PostgreSQL host not usable");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(not_writable))
}

/// When the pool last moved to another host: connections older than that are dropped.
#[derive(Debug, Default)]
pub(crate) struct Moved(Mutex<Option<Instant>>);

impl Moved {
    fn mark(&self) {
        if let Ok(mut at) = self.0.lock() {
            *at = Some(Instant::now());
        }
    }

    /// Whether a connection of this age was opened before the last move.
    pub(crate) fn predates(&self, age: Duration) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|at| *at)
            .is_some_and(|at| age > at.elapsed())
    }
}

/// Stops the watcher when the last clone of the store goes.
#[derive(Debug)]
pub(crate) struct Watcher(tokio::task::AbortHandle);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the watcher of `pool`, which now points at `list.hosts[current]` (`conn` is a
/// connection of the watcher's own to it).
pub(crate) fn spawn_watcher(
    pool: PgPool,
    list: HostList,
    current: usize,
    conn: PgConnection,
    moved: Arc<Moved>,
) -> Watcher {
    let task = tokio::spawn(watch(pool, list, current, conn, moved));
    Watcher(task.abort_handle())
}

async fn watch(
    pool: PgPool,
    list: HostList,
    mut current: usize,
    conn: PgConnection,
    moved: Arc<Moved>,
) {
    let mut conn = Some(conn);
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        if pool.is_closed() {
            break;
        }
        if let Some(c) = conn.as_mut() {
            let check = async {
                if list.read_write {
                    check_writable(c).await
                } else {
                    sqlx::query("SELECT 1").execute(&mut *c).await.map(drop)
                }
            };
            if matches!(tokio::time::timeout(PROBE_TIMEOUT, check).await, Ok(Ok(()))) {
                continue;
            }
            tracing::warn!(host = %list.labels[current], "PostgreSQL server lost or read-only: looking for the read-write one");
            conn = None;
        }
        if let Ok((found, c)) = find(&list).await {
            if found != current {
                pool.set_connect_options(list.hosts[found].clone());
                moved.mark();
                tracing::warn!(
                    from = %list.labels[current],
                    to = %list.labels[found],
                    "PostgreSQL: the store now writes to another server"
                );
                current = found;
            } else {
                tracing::info!(host = %list.labels[current], "PostgreSQL server back");
            }
            conn = Some(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_hosts_and_keeps_the_rest() {
        let list = parse(
            "postgres://app:s3cret@db1:5433,db2:5434/sentinella?sslmode=disable&target_session_attrs=read-write&application_name=x",
        )
        .unwrap();
        assert!(list.read_write);
        assert_eq!(list.labels, ["db1:5433", "db2:5434"]);
        assert_eq!(list.hosts[0].get_host(), "db1");
        assert_eq!(list.hosts[0].get_port(), 5433);
        assert_eq!(list.hosts[1].get_host(), "db2");
        assert_eq!(list.hosts[1].get_port(), 5434);
        for h in &list.hosts {
            assert_eq!(h.get_database(), Some("sentinella"));
            assert_eq!(h.get_username(), "app");
            assert_eq!(h.get_application_name(), Some("x"));
        }
    }

    #[test]
    fn one_host_is_plain() {
        let list = parse("postgres://u@h/db").unwrap();
        assert!(list.is_plain());
        let list = parse("postgresql://u@h:1/db?target_session_attrs=any").unwrap();
        assert!(list.is_plain());
        let list = parse("postgres://u@h/db?target_session_attrs=primary").unwrap();
        assert!(!list.is_plain());
    }

    #[test]
    fn refuses_without_quoting_the_password() {
        for url in [
            "postgres://u:s3cret@h1,h2/db?target_session_attrs=standby",
            "postgres://u:s3cret@h1,,h2/db",
            "postgres://u:s3cret@h1:notaport,h2/db",
        ] {
            let e = parse(url).unwrap_err();
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
