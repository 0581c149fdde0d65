//! Alert partitions leased through PostgreSQL, so several nodes on one database share the
//! alert work without evaluating one patient twice at once.
//!
//! Patients fall into [`PARTITIONS`] fixed partitions ([`partition_of`]). A node's alert
//! engine evaluates only the patients of the partitions it holds. On PostgreSQL a partition is
//! held through a session advisory lock on one dedicated connection (`pg_try_advisory_lock`):
//! the server frees it the moment that connection ends, so a node that dies (even by
//! `kill -9`) gives its partitions back at once, and another node takes them over on its next
//! round and evaluates their pending outbox entries. Every node also holds a membership lock
//! keyed by its backend's pid; the count of those locks is the number of live nodes, and each
//! node aims at its fair share (`PARTITIONS / live nodes`, rounded up): it takes free partitions
//! below it and gives back those above it, so a node that joins gets work and one that dies
//! leaves none behind.
//!
//! The engine drives [`Leases::rebalance`] from its own loop, between evaluations, so a
//! partition is never given back while one of its patients is being evaluated. If the lease
//! connection fails, every partition is dropped at once (the server has freed them, or will
//! when it notices), and the next round reconnects and takes a share again. A duplicate
//! evaluation in that window cannot open a second alert: the store allows one unresolved alert
//! per patient and rule (a unique index).
//!
//! On SQLite there is one node by construction: it holds every partition.

use sqlx::Row;
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, postgres::PgRow};

use crate::{Db, Result, Store};

/// How many alert partitions patients fall into. A bit mask of them fits in a `u64`.
pub const PARTITIONS: u32 = 64;

/// Every partition.
pub const ALL_PARTITIONS: u64 = u64::MAX;

/// The partition of a patient.
pub fn partition_of(patient_id: i64) -> u32 {
    // rem_euclid by a positive constant is in 0..PARTITIONS.
    u32::try_from(patient_id.rem_euclid(i64::from(PARTITIONS))).unwrap_or(0)
}

/// Whether `mask` holds the partition of `patient_id`.
pub fn holds(mask: u64, patient_id: i64) -> bool {
    mask & (1u64 << partition_of(patient_id)) != 0
}

/// The partitions of `mask`, ascending.
pub fn partitions_in(mask: u64) -> impl Iterator<Item = u32> {
    (0..PARTITIONS).filter(move |p| mask & (1u64 << p) != 0)
}

/// The first keys of our advisory locks (`pg_advisory_lock(int4, int4)`): this one for
/// partitions (second key: the partition), the next for membership (second key: the
/// backend's pid). A store scoped to a schema (`search_path`, as the tests do on one shared
/// server) gets keys of its own, so each schema is its own cluster.
fn lock_keys(search_path: Option<&str>) -> (i32, i32) {
    let h = search_path.map_or(0, |s| {
        s.bytes()
            .fold(7i32, |h, b| h.wrapping_mul(31).wrapping_add(i32::from(b)))
            & 0x7fff
    });
    let base = 0x5e17_0000 + (h << 1) + 2;
    (base, base + 1)
}

/// What one round changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseChange {
    /// Partitions taken this round (their pending outbox entries are to be evaluated).
    pub gained: u64,
    /// Partitions given back or lost this round (forget their patients' state).
    pub lost: u64,
    /// Live nodes counted this round.
    pub nodes: u32,
}

/// This node's leases on alert partitions.
#[derive(Debug)]
pub struct Leases {
    store: Store,
    held: u64,
    conn: Option<PoolConnection<Postgres>>,
    /// Where this node starts looking for free partitions, so nodes spread.
    offset: u32,
    /// The first advisory-lock keys of partitions and of membership.
    keys: (i32, i32),
}

impl Store {
    /// This node's alert-partition leases, holding none yet (SQLite: all, for good); call
    /// [`Leases::rebalance`] to take a share. `node` spreads the nodes' first choices.
    pub fn leases(&self, node: &str) -> Leases {
        let (held, keys) = match &self.db {
            Db::Sqlite(_) => (ALL_PARTITIONS, (0, 0)),
            Db::Postgres(pg) => (0, lock_keys(pg.search_path.as_deref())),
        };
        let offset = node
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % PARTITIONS;
        Leases {
            store: self.clone(),
            held,
            conn: None,
            offset,
            keys,
        }
    }
}

impl Leases {
    /// The partitions held now, as a mask.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether this node holds the partition of `patient_id`.
    pub fn holds(&self, patient_id: i64) -> bool {
        holds(self.held, patient_id)
    }

    /// Whether leases are shared with other nodes (PostgreSQL), rather than all held (SQLite).
    pub fn shared(&self) -> bool {
        matches!(self.store.db, Db::Postgres(_))
    }

    /// One round: checks the lease connection (reconnecting if needed), counts the live
    /// nodes, takes free partitions up to the fair share and gives back those above it. On an
    /// error every partition is dropped (reported as lost) and the error returned.
    pub async fn rebalance(&mut self) -> Result<LeaseChange> {
        if !self.shared() {
            return Ok(LeaseChange {
                nodes: 1,
                ..LeaseChange::default()
            });
        }
        let before = self.held;
        match self.round().await {
            Ok(nodes) => Ok(LeaseChange {
                gained: self.held & !before,
                lost: before & !self.held,
                nodes,
            }),
            Err(e) => {
                // Whatever the server still thinks, this node stops evaluating now; closing
                // the connection frees whatever it held.
                if let Some(conn) = self.conn.take() {
                    drop(conn.detach());
                }
                self.held = 0;
                Err(e)
            }
        }
    }

    /// Gives every partition back (at shutdown, after the last evaluation).
    pub async fn release_all(&mut self) {
        if !self.shared() {
            return;
        }
        if let Some(conn) = self.conn.take() {
            let mut conn = conn.detach();
            let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut conn)
                .await;
        }
        self.held = 0;
    }

    async fn round(&mut self) -> Result<u32> {
        if self.conn.is_none() {
            let Db::Postgres(pg) = &self.store.db else {
                return Ok(1);
            };
            let mut conn = pg.pool.acquire().await?;
            // A connection the pool had lent before holds nothing of ours, but say so.
            sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *conn)
                .await?;
            sqlx::query("SELECT pg_advisory_lock($1, pg_backend_pid())")
                .bind(self.keys.1)
                .execute(&mut *conn)
                .await?;
            self.held = 0;
            self.conn = Some(conn);
        }
        let (partition_locks, member_locks) = self.keys;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(1);
        };
        // Granted advisory locks in this database: live members, and partitions taken.
        let rows: Vec<PgRow> = sqlx::query(
            "SELECT classid::int8 AS ns, objid::int8 AS key FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid::int8 IN ($1, $2)",
        )
        .bind(i64::from(partition_locks))
        .bind(i64::from(member_locks))
        .fetch_all(&mut **conn)
        .await?;
        let mut nodes = 0u32;
        let mut taken = 0u64;
        for row in &rows {
            let ns: i64 = row.try_get("ns")?;
            let key: i64 = row.try_get("key")?;
            if ns == i64::from(member_locks) {
                nodes += 1;
            } else if (0..i64::from(PARTITIONS)).contains(&key) {
                taken |= 1u64 << key;
            }
        }
        let nodes = nodes.max(1);
        let share = PARTITIONS.div_ceil(nodes);
        let mut count = self.held.count_ones();
        // Above the share (a node joined): give back the highest first.
        while count > share {
            let p = 63 - self.held.leading_zeros();
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(partition_locks)
                .bind(i32::try_from(p).unwrap_or(0))
                .execute(&mut **conn)
                .await?;
            self.held &= !(1u64 << p);
            count -= 1;
        }
        // Below it: try the free ones, starting at this node's offset.
        let free = !taken & !self.held;
        for i in 0..PARTITIONS {
            if count >= share {
                break;
            }
            let p = (self.offset + i) % PARTITIONS;
            if free & (1u64 << p) == 0 {
                continue;
            }
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(partition_locks)
                .bind(i32::try_from(p).unwrap_or(0))
                .fetch_one(&mut **conn)
                .await?;
            if got {
                self.held |= 1u64 << p;
                count += 1;
            }
        }
        Ok(nodes)
    }
}

impl Drop for Leases {
    /// Closes the lease connection rather than returning it to the pool: the server frees
    /// every partition it held at once (a pooled connection would keep holding them).
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_every_patient_id() {
        assert_eq!(partition_of(0), 0);
        assert_eq!(partition_of(65), 1);
        assert_eq!(partition_of(-1), 63);
        assert_eq!(partition_of(i64::MIN), 0);
        assert!(holds(ALL_PARTITIONS, 12345));
        assert!(!holds(1 << 3, 4));
        assert_eq!(partitions_in(0b1010).collect::<Vec<_>>(), vec![1, 3]);
        let (a, b) = lock_keys(None);
        let (c, _) = lock_keys(Some("t_12"));
        assert!(a > 0 && b == a + 1 && c > 0 && c != a);
    }
}
