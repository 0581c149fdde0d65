//! Staff identity and tenancy: users (people and service accounts) with one role, members of
//! one or more COTs, and the registry queries scoped to a set of COTs.
//!
//! A scope is `Option<&[i64]>`: `None` means every COT (only the gateway's own components and
//! the operator's CLI use it), `Some(ids)` only those COTs; an empty list matches nothing.
//! Password hashing is the server's business: the store keeps the PHC string it is given.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::what;
use crate::registry::{COT_COLUMNS, MAX_NAME, bounded, cot_from_row, id_list, non_empty};
use crate::rows::Columns;
use crate::sql::{AnyRow, Val};
use crate::{ApiToken, Cot, Result, Store, StoreError};

/// A staff role; each grants a fixed set of permissions (see the server's `auth` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Works alerts and reads the patients of her COTs.
    Nurse,
    /// Reads patients, works alerts, edits care plans, enrolls patients.
    Physician,
    /// Provisions and revokes devices.
    DeviceManager,
    /// Manages COTs, users and reads the audit log; no clinical data.
    Admin,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [
        Role::Nurse,
        Role::Physician,
        Role::DeviceManager,
        Role::Admin,
    ];

    /// As stored and serialized: `nurse`, `physician`, `device_manager`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Nurse => "nurse",
            Role::Physician => "physician",
            Role::DeviceManager => "device_manager",
            Role::Admin => "admin",
        }
    }

    /// The role named `s`, if any.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A person who logs in with a password, or a service account that uses API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    Person,
    Service,
}

impl UserKind {
    fn as_str(self) -> &'static str {
        match self {
            UserKind::Person => "person",
            UserKind::Service => "service",
        }
    }
}

/// A user to create with [`Store::add_user`].
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// 1–64 characters of `A-Z a-z 0-9 . _ @ -`.
    pub username: &'a str,
    pub display_name: &'a str,
    pub role: Role,
    pub kind: UserKind,
    /// Argon2id PHC string; `None` for service accounts.
    pub password_hash: Option<&'a str>,
    /// The COTs the user belongs to (at least one).
    pub cot_ids: &'a [i64],
}

/// A stored user (never with its password hash).
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    pub kind: UserKind,
    pub cot_ids: Vec<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
}

const USER_COLUMNS: &str = "id, username, display_name, role, kind, created_at, disabled_at";

/// Usernames appear in audit entries and alert assignments: a small, unambiguous alphabet.
fn validate_username(username: &str) -> Result<()> {
    let ok = (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "username {username:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '@' and '-'"
        )))
    }
}

/// Maps a unique or foreign-key violation of a write into Conflict / NotFound.
fn constraint(e: StoreError, conflict: impl FnOnce() -> String, missing: &str) -> StoreError {
    e.or_constraint(conflict, || missing.to_owned())
}

impl Store {
    /// Creates a user in its COTs. [`StoreError::Conflict`] if the username is taken,
    /// [`StoreError::NotFound`] if a COT does not exist, [`StoreError::Invalid`] for a bad
    /// username, an empty display name or no COT.
    pub async fn add_user(&self, new: &NewUser<'_>) -> Result<User> {
        validate_username(new.username)?;
        bounded("display name", new.display_name, MAX_NAME)?;
        if new.cot_ids.is_empty() {
            return Err(StoreError::Invalid(
                "a user belongs to at least one COT".into(),
            ));
        }
        if new.kind == UserKind::Person && new.password_hash.is_none() {
            return Err(StoreError::Invalid("a person needs a password".into()));
        }
        let now = OffsetDateTime::now_utc();
        let mut tx = self.tx().await?;
        let sql = format!(
            "INSERT INTO users (username, display_name, role, kind, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}"
        );
        let row = tx
            .one(
                &sql,
                &[
                    Val::Text(new.username),
                    Val::Text(new.display_name),
                    Val::Text(new.role.as_str()),
                    Val::Text(new.kind.as_str()),
                    Val::OptText(new.password_hash),
                    Val::Ts(now),
                ],
            )
            .await
            .map_err(|e| {
                constraint(
                    e,
                    || what("user", format_args!("{:?}", new.username)),
                    "user",
                )
            })?
            .ok_or_else(|| StoreError::decode("INSERT … RETURNING gave no row".into()))?;
        let id = row.bigint("id")?;
        let mut cots = new.cot_ids.to_vec();
        cots.sort_unstable();
        cots.dedup();
        for cot in &cots {
            tx.exec(
                "INSERT INTO user_cots (user_id, cot_id) VALUES ($1, $2)",
                &[Val::I64(id), Val::I64(*cot)],
            )
            .await
            .map_err(|e| constraint(e, || format!("COT {cot}"), &format!("COT {cot}")))?;
        }
        tx.commit().await?;
        user_from_row(&row, cots)
    }

    /// Replaces a user's COTs. [`StoreError::NotFound`] for an unknown user or COT.
    pub async fn set_user_cots(&self, user_id: i64, cot_ids: &[i64]) -> Result<()> {
        if cot_ids.is_empty() {
            return Err(StoreError::Invalid(
                "a user belongs to at least one COT".into(),
            ));
        }
        let mut tx = self.tx().await?;
        let found = tx
            .one("SELECT id FROM users WHERE id = $1", &[Val::I64(user_id)])
            .await?;
        if found.is_none() {
            return Err(StoreError::NotFound {
                what: format!("user {user_id}"),
            });
        }
        tx.exec(
            "DELETE FROM user_cots WHERE user_id = $1",
            &[Val::I64(user_id)],
        )
        .await?;
        for cot in cot_ids {
            tx.exec(
                "INSERT INTO user_cots (user_id, cot_id) VALUES ($1, $2)",
                &[Val::I64(user_id), Val::I64(*cot)],
            )
            .await
            .map_err(|e| constraint(e, || format!("COT {cot}"), &format!("COT {cot}")))?;
        }
        tx.commit().await
    }

    /// The user and their password hash, by username (disabled users included: the caller
    /// checks `disabled_at`).
    pub async fn user_login(&self, username: &str) -> Result<Option<(User, Option<String>)>> {
        let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1");
        let rows = self.read(&sql, &[Val::Text(username)]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let hash = row.text_opt("password_hash")?;
        let mut users = self.with_cots(vec![row]).await?;
        Ok(users.pop().map(|u| (u, hash)))
    }

    /// The user with this id, if any.
    pub async fn get_user(&self, id: i64) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let rows = self.read(&sql, &[Val::I64(id)]).await?;
        Ok(self.with_cots(rows.iter().collect()).await?.pop())
    }

    /// The user with this username, if any.
    pub async fn user_by_username(&self, username: &str) -> Result<Option<User>> {
        Ok(self.user_login(username).await?.map(|(u, _)| u))
    }

    /// Users belonging to at least one COT of the scope, by id.
    pub async fn list_users(&self, scope: Option<&[i64]>) -> Result<Vec<User>> {
        let mut sql = format!("SELECT {USER_COLUMNS} FROM users");
        if let Some(cots) = scope {
            if cots.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(&format!(
                " WHERE id IN (SELECT user_id FROM user_cots WHERE cot_id IN ({}))",
                id_list(cots)
            ));
        }
        sql.push_str(" ORDER BY id");
        let rows = self.read(&sql, &[]).await?;
        self.with_cots(rows.iter().collect()).await
    }

    /// Sets a user's password hash (PHC string) and revokes every token of theirs, in one
    /// transaction: a reset must end the sessions of whoever knew the old password.
    pub async fn set_user_password(&self, user_id: i64, password_hash: &str) -> Result<()> {
        non_empty("password hash", password_hash)?;
        let now = OffsetDateTime::now_utc();
        let mut tx = self.tx().await?;
        let n = tx
            .exec(
                "UPDATE users SET password_hash = $1 WHERE id = $2",
                &[Val::Text(password_hash), Val::I64(user_id)],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: format!("user {user_id}"),
            });
        }
        tx.exec(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            &[Val::Ts(now), Val::I64(user_id)],
        )
        .await?;
        tx.commit().await
    }

    /// Disables a user and revokes every token of theirs.
    pub async fn disable_user(&self, user_id: i64, at: OffsetDateTime) -> Result<()> {
        let mut tx = self.tx().await?;
        let n = tx
            .exec(
                "UPDATE users SET disabled_at = COALESCE(disabled_at, $1) WHERE id = $2",
                &[Val::Ts(at), Val::I64(user_id)],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: format!("user {user_id}"),
            });
        }
        tx.exec(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            &[Val::Ts(at), Val::I64(user_id)],
        )
        .await?;
        tx.commit().await
    }

    /// Revokes the token with this hash (logout). Returns whether a live token was revoked.
    pub async fn revoke_api_token(&self, token_hash: &str, at: OffsetDateTime) -> Result<bool> {
        let mut tx = self.tx().await?;
        let n = tx
            .exec(
                "UPDATE api_tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL",
                &[Val::Ts(at), Val::Text(token_hash)],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// The tokens of a user, newest first (never their hashes).
    pub async fn user_tokens(&self, user_id: i64) -> Result<Vec<ApiToken>> {
        let rows = self
            .read(
                "SELECT id, name, user_id, kind, created_at, expires_at, revoked_at \
                 FROM api_tokens WHERE user_id = $1 ORDER BY id DESC",
                &[Val::I64(user_id)],
            )
            .await?;
        rows.iter().map(crate::registry::token_from_row).collect()
    }

    /// COTs by id (unknown ids are left out), by id.
    pub async fn cots_by_ids(&self, ids: &[i64]) -> Result<Vec<Cot>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {COT_COLUMNS} FROM cots WHERE id IN ({}) ORDER BY id",
            id_list(ids)
        );
        let rows = self.read(&sql, &[]).await?;
        rows.iter().map(cot_from_row).collect()
    }

    /// The COT of the patient a device belongs to, if the device exists.
    pub async fn device_cot(&self, device_id: &str) -> Result<Option<i64>> {
        let rows = self
            .read(
                "SELECT p.cot_id FROM devices d JOIN patients p ON p.id = d.patient_id \
                 WHERE d.id = $1",
                &[Val::Text(device_id)],
            )
            .await?;
        rows.first().map(|r| r.bigint("cot_id")).transpose()
    }

    /// Attaches each user's COTs.
    async fn with_cots(&self, rows: Vec<&AnyRow>) -> Result<Vec<User>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.bigint("id")).collect::<Result<_>>()?;
        let sql = format!(
            "SELECT user_id, cot_id FROM user_cots WHERE user_id IN ({}) ORDER BY cot_id",
            id_list(&ids)
        );
        let mut cots: HashMap<i64, Vec<i64>> = HashMap::new();
        for link in self.read(&sql, &[]).await? {
            cots.entry(link.bigint("user_id")?)
                .or_default()
                .push(link.bigint("cot_id")?);
        }
        rows.into_iter()
            .zip(ids)
            .map(|(row, id)| user_from_row(row, cots.remove(&id).unwrap_or_default()))
            .collect()
    }
}

/// Identity-provider JWTs ended by a logout, by their SHA-256, kept until they expire.
impl Store {
    /// Records that the JWT with this hash is revoked until `expires_at` (idempotent), and
    /// forgets revocations that have expired.
    pub async fn revoke_jwt(&self, token_hash: &str, expires_at: OffsetDateTime) -> Result<()> {
        let now = OffsetDateTime::now_utc();
        let mut tx = self.tx().await?;
        tx.exec(
            "DELETE FROM revoked_jwts WHERE expires_at < $1",
            &[Val::Ts(now)],
        )
        .await?;
        tx.exec(
            "INSERT INTO revoked_jwts (token_hash, expires_at, revoked_at) VALUES ($1, $2, $3) \
             ON CONFLICT (token_hash) DO NOTHING",
            &[Val::Text(token_hash), Val::Ts(expires_at), Val::Ts(now)],
        )
        .await?;
        tx.commit().await
    }

    /// Whether the JWT with this hash was revoked.
    pub async fn jwt_revoked(&self, token_hash: &str) -> Result<bool> {
        let rows = self
            .read(
                "SELECT token_hash FROM revoked_jwts WHERE token_hash = $1",
                &[Val::Text(token_hash)],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}

fn user_from_row(row: &AnyRow, cot_ids: Vec<i64>) -> Result<User> {
    let role = row.text("role")?;
    Ok(User {
        id: row.bigint("id")?,
        username: row.text("username")?,
        display_name: row.text("display_name")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::decode(format!("unknown role {role:?}")))?,
        kind: match row.text("kind")?.as_str() {
            "service" => UserKind::Service,
            _ => UserKind::Person,
        },
        cot_ids,
        created_at: row.ts("created_at")?,
        disabled_at: row.ts_opt("disabled_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["anna.rossi", "svc-fse", "a@b.it", "X_1"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a:b", &"x".repeat(65)] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
