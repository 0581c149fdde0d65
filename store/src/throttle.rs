//! Failed-login counts, shared by every node on the database.
//!
//! The API's limiter (`api::http::session::LoginLimiter`) decides the keys (a (username,
//! address) pair, and the address) and the limits; this module counts. Each admission is
//! one write transaction that first locks the keys' rows of `login_throttle` (an upsert, in
//! key order so two admissions never wait on each other crosswise), then counts the keys'
//! attempts inside the window in `login_attempts`, and either refuses or records the
//! attempt. Two nodes admitting attempts on one key are thus counted one after the other: no
//! burst of parallel guesses passes the check before the first is counted, whichever nodes
//! they reach. Attempts older than the window are deleted on the way.

use time::{Duration, OffsetDateTime};

use crate::rows::Columns;
use crate::sql::Val;
use crate::{Result, Store};

/// Most expired rows of each table one admission deletes.
const PURGE: i64 = 1000;

/// The limits of [`Store::admit_login`].
#[derive(Clone, Copy, Debug)]
pub struct LoginLimits {
    /// How long an attempt counts.
    pub window: Duration,
    /// Most attempts per pair key within the window.
    pub per_pair: u64,
    /// Most attempts per address key within the window.
    pub per_source: u64,
}

/// An admitted attempt, counted already; [`Store::login_succeeded`] takes it back.
#[derive(Clone, Debug)]
pub struct LoginAttempt {
    pair: String,
    /// The address key's attempt row.
    source_attempt: Option<i64>,
}

/// A refused attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginRefusal {
    /// Seconds until an attempt of this pair and address may be admitted again (at least 1).
    pub retry_after: u64,
    /// Whether this refusal opens a new audit window for its pair: the caller writes one
    /// audit row for it; the refusals that follow in the window are only counted.
    pub audit: bool,
    /// When `audit`: refusals of the pair's previous window that had no row of their own.
    pub unlogged_before: u64,
}

impl Store {
    /// Admits and counts a login attempt of `pair` (and of `source`, the address key, when
    /// known), or refuses it when either is at its limit within the window. `now` is this
    /// node's clock; nodes' clocks should agree within a second (NTP).
    pub async fn admit_login(
        &self,
        pair: &str,
        source: Option<&str>,
        limits: LoginLimits,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<LoginAttempt, LoginRefusal>> {
        let cutoff = now - limits.window;
        let mut tx = self.tx().await?;
        let mut keys: Vec<(&str, u64)> = vec![(pair, limits.per_pair.max(1))];
        if let Some(s) = source {
            keys.push((s, limits.per_source.max(1)));
        }
        let mut locking: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
        locking.sort_unstable();
        locking.dedup();
        for key in locking {
            tx.exec(
                "INSERT INTO login_throttle (key, touched_at) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET touched_at = excluded.touched_at",
                &[Val::Text(key), Val::Ts(now)],
            )
            .await?;
        }
        let mut wait: Option<u64> = None;
        for (key, limit) in &keys {
            let Some(row) = tx
                .one(
                    "SELECT COUNT(*) AS n, MIN(at) AS oldest FROM login_attempts \
                     WHERE key = $1 AND at > $2",
                    &[Val::Text(key), Val::Ts(cutoff)],
                )
                .await?
            else {
                continue;
            };
            let n = u64::try_from(row.bigint("n")?).unwrap_or(0);
            if n >= *limit
                && let Some(oldest) = row.ts_opt("oldest")?
            {
                let left = limits.window - (now - oldest);
                let secs = u64::try_from(left.whole_seconds()).unwrap_or(0).max(1);
                wait = Some(wait.map_or(secs, |w| w.max(secs)));
            }
        }
        if let Some(retry_after) = wait {
            let row = tx
                .one(
                    "SELECT refused_since, refused_count FROM login_throttle WHERE key = $1",
                    &[Val::Text(pair)],
                )
                .await?;
            let (since, count) = match &row {
                Some(r) => (r.ts_opt("refused_since")?, r.bigint("refused_count")?),
                None => (None, 0),
            };
            let new_window = count == 0 || since.is_none_or(|s| s <= cutoff);
            let (audit, unlogged_before) = if new_window {
                tx.exec(
                    "UPDATE login_throttle SET refused_since = $2, refused_count = 1 WHERE key = $1",
                    &[Val::Text(pair), Val::Ts(now)],
                )
                .await?;
                (true, u64::try_from(count.saturating_sub(1)).unwrap_or(0))
            } else {
                tx.exec(
                    "UPDATE login_throttle SET refused_count = refused_count + 1 WHERE key = $1",
                    &[Val::Text(pair)],
                )
                .await?;
                (false, 0)
            };
            tx.commit().await?;
            return Ok(Err(LoginRefusal {
                retry_after,
                audit,
                unlogged_before,
            }));
        }
        let insert = "INSERT INTO login_attempts (key, at) VALUES ($1, $2) RETURNING id";
        tx.exec(
            "INSERT INTO login_attempts (key, at) VALUES ($1, $2)",
            &[Val::Text(pair), Val::Ts(now)],
        )
        .await?;
        let source_attempt = match source {
            Some(s) => tx
                .one(insert, &[Val::Text(s), Val::Ts(now)])
                .await?
                .map(|r| r.bigint("id"))
                .transpose()?,
            None => None,
        };
        // Forget what no window reaches any more. Rows another admission holds are left for
        // later (SKIP LOCKED): waiting for them while holding this one's keys could deadlock.
        let skip_locked = self.dialect(" FOR UPDATE SKIP LOCKED", "");
        tx.exec(
            &format!(
                "DELETE FROM login_attempts WHERE id IN \
                 (SELECT id FROM login_attempts WHERE at <= $1 LIMIT {PURGE}{skip_locked})"
            ),
            &[Val::Ts(cutoff)],
        )
        .await?;
        tx.exec(
            &format!(
                "DELETE FROM login_throttle WHERE key IN \
                 (SELECT key FROM login_throttle WHERE touched_at <= $1 LIMIT {PURGE}{skip_locked})"
            ),
            &[Val::Ts(cutoff)],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(LoginAttempt {
            pair: pair.to_owned(),
            source_attempt,
        }))
    }

    /// A successful login: clears its pair's attempts and takes its own attempt back from
    /// the address's count (the address's other attempts stay).
    pub async fn login_succeeded(&self, attempt: &LoginAttempt) -> Result<()> {
        let mut tx = self.tx().await?;
        tx.exec(
            "DELETE FROM login_attempts WHERE key = $1",
            &[Val::Text(&attempt.pair)],
        )
        .await?;
        if let Some(id) = attempt.source_attempt {
            tx.exec("DELETE FROM login_attempts WHERE id = $1", &[Val::I64(id)])
                .await?;
        }
        tx.commit().await
    }
}
