//! The registry: COTs, patients, devices and API tokens.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::what;
use crate::rows::Columns;
use crate::sql::{AnyRow, Val};
use crate::{Result, Store, StoreError};

/// A COT (Centrale Operativa Territoriale): the telemedicine central patients are enrolled with.
#[derive(Debug, Clone, Serialize)]
pub struct Cot {
    pub id: i64,
    /// Short unique code, e.g. `COT-MI-01`.
    pub code: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A patient to enroll with [`Store::add_patient`].
#[derive(Debug, Clone)]
pub struct NewPatient {
    pub cot_id: i64,
    /// Pseudonymous code, unique across the installation.
    pub code: String,
    pub display_name: String,
    pub birth_year: Option<i32>,
    /// Condition codes, e.g. `hypertension`, `copd`, `diabetes`, `heart_failure` (no commas).
    pub conditions: Vec<String>,
}

/// An enrolled patient.
#[derive(Debug, Clone, Serialize)]
pub struct Patient {
    pub id: i64,
    pub cot_id: i64,
    /// Pseudonymous code, unique across the installation.
    pub code: String,
    pub display_name: String,
    pub birth_year: Option<i32>,
    pub conditions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What a device measures. Serialized as `"bp"`, `"spo2"`, `"glucose"`, like [`Self::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    #[serde(rename = "bp")]
    BloodPressure,
    #[serde(rename = "spo2")]
    Spo2,
    #[serde(rename = "glucose")]
    Glucose,
}

impl DeviceKind {
    /// `"bp"`, `"spo2"` or `"glucose"`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::BloodPressure => "bp",
            DeviceKind::Spo2 => "spo2",
            DeviceKind::Glucose => "glucose",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(s: &str) -> Option<DeviceKind> {
        match s {
            "bp" => Some(DeviceKind::BloodPressure),
            "spo2" => Some(DeviceKind::Spo2),
            "glucose" => Some(DeviceKind::Glucose),
            _ => None,
        }
    }
}

/// A device to provision with [`Store::add_device`].
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// 1 to 64 characters of `[A-Za-z0-9_-]`; it is also the MQTT client id and topic segment.
    pub id: String,
    pub patient_id: i64,
    pub kind: DeviceKind,
    /// [`crate::credentials::hash_secret`] of the device secret (64 hex digits).
    pub secret_hash: String,
    pub model: Option<String>,
}

/// A provisioned device and its last known state. The secret hash is not part of it (see
/// [`DeviceAuth`]).
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub patient_id: i64,
    pub kind: DeviceKind,
    pub model: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Latest receive time of its readings, or of a status saying it is online.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    pub online: bool,
    pub battery_pct: Option<i16>,
    pub firmware: Option<String>,
    pub rssi: Option<i16>,
    /// Time of the status update the `online`, battery, firmware and rssi fields come from.
    #[serde(with = "time::serde::rfc3339::option")]
    pub status_at: Option<OffsetDateTime>,
    /// Highest seq among its stored readings.
    pub last_seq: Option<i64>,
}

/// What the gateway's edge needs to authenticate a device.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub id: String,
    pub patient_id: i64,
    /// Lowercase hex SHA-256 of the device secret; check with
    /// [`crate::credentials::verify_secret`].
    pub secret_hash: String,
    pub revoked: bool,
    /// Lowercase hex SHA-256 of the DER of the one client certificate the edge accepts for
    /// this device over mutual TLS (the last one issued); `None` when none was recorded, in
    /// which case any certificate of the device CA naming the device is accepted.
    pub cert_sha256: Option<String>,
}

/// What a token is: a login session, or an API key of a service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Session,
    ApiKey,
}

impl TokenKind {
    /// As stored: `session` or `api_key`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::ApiKey => "api_key",
        }
    }
}

/// A token to store with [`Store::add_api_token`].
#[derive(Debug, Clone)]
pub struct NewApiToken<'a> {
    /// The user the token acts for.
    pub user_id: i64,
    /// A label, e.g. `login` or the integration's name.
    pub name: &'a str,
    pub kind: TokenKind,
    /// SHA-256 of the token (hex); the token itself is never stored.
    pub token_hash: &'a str,
    pub expires_at: Option<OffsetDateTime>,
}

/// An API token: a login session or a service account's key. The token itself is never
/// stored, only its hash. Tokens stored before users existed have no user and are refused.
#[derive(Debug, Clone, Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub user_id: Option<i64>,
    pub kind: TokenKind,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

pub(crate) const COT_COLUMNS: &str = "id, code, name, created_at";
pub(crate) const PATIENT_COLUMNS: &str =
    "id, cot_id, code, display_name, birth_year, conditions, created_at";
pub(crate) const DEVICE_COLUMNS: &str = "id, patient_id, kind, model, created_at, revoked_at, last_seen_at, \
     online, battery_pct, firmware, rssi, status_at, last_seq";
const TOKEN_COLUMNS: &str = "id, name, user_id, kind, created_at, expires_at, revoked_at";

impl Store {
    /// Adds a COT. [`StoreError::Conflict`] if the code is taken.
    pub async fn add_cot(&self, code: &str, name: &str) -> Result<Cot> {
        bounded("COT code", code, MAX_CODE)?;
        bounded("COT name", name, MAX_NAME)?;
        let sql = format!(
            "INSERT INTO cots (code, name, created_at) VALUES ($1, $2, $3) RETURNING {COT_COLUMNS}"
        );
        let now = OffsetDateTime::now_utc();
        let row = self
            .inserted(&sql, &[Val::Text(code), Val::Text(name), Val::Ts(now)])
            .await
            .map_err(|e| {
                e.or_constraint(
                    || what("COT", format_args!("{code:?}")),
                    || what("COT", format_args!("{code:?}")),
                )
            })?;
        cot_from_row(&row)
    }

    /// The COT with this code, if any.
    pub async fn cot_by_code(&self, code: &str) -> Result<Option<Cot>> {
        let sql = format!("SELECT {COT_COLUMNS} FROM cots WHERE code = $1");
        let row = self.read_one(&sql, &[Val::Text(code)]).await?;
        row.as_ref().map(cot_from_row).transpose()
    }

    /// All COTs, by id.
    pub async fn list_cots(&self) -> Result<Vec<Cot>> {
        let sql = format!("SELECT {COT_COLUMNS} FROM cots ORDER BY id");
        let rows = self.read(&sql, &[]).await?;
        rows.iter().map(cot_from_row).collect()
    }

    /// Enrolls a patient. [`StoreError::Conflict`] if the code is taken,
    /// [`StoreError::NotFound`] if the COT does not exist, [`StoreError::Invalid`] for an
    /// empty code or a condition that is empty or contains a comma.
    pub async fn add_patient(&self, new: &NewPatient) -> Result<Patient> {
        bounded("patient code", &new.code, MAX_CODE)?;
        bounded("display name", &new.display_name, MAX_NAME)?;
        if new.conditions.len() > MAX_CONDITIONS {
            return Err(StoreError::Invalid(format!(
                "a patient has at most {MAX_CONDITIONS} conditions"
            )));
        }
        for condition in &new.conditions {
            bounded("condition", condition, MAX_CODE)?;
        }
        let conditions = join_conditions(&new.conditions)?;
        let sql = format!(
            "INSERT INTO patients (cot_id, code, display_name, birth_year, conditions, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {PATIENT_COLUMNS}"
        );
        let now = OffsetDateTime::now_utc();
        let vals = [
            Val::I64(new.cot_id),
            Val::Text(&new.code),
            Val::Text(&new.display_name),
            Val::OptI32(new.birth_year),
            Val::Text(&conditions),
            Val::Ts(now),
        ];
        let row = self.inserted(&sql, &vals).await.map_err(|e| {
            e.or_constraint(
                || what("patient", format_args!("{:?}", new.code)),
                || what("COT", new.cot_id),
            )
        })?;
        patient_from_row(&row)
    }

    /// The patient with this pseudonymous code, if any.
    pub async fn patient_by_code(&self, code: &str) -> Result<Option<Patient>> {
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE code = $1");
        let row = self.read_one(&sql, &[Val::Text(code)]).await?;
        row.as_ref().map(patient_from_row).transpose()
    }

    /// The patient with this id, if any.
    pub async fn get_patient(&self, id: i64) -> Result<Option<Patient>> {
        let sql = format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE id = $1");
        let row = self.read_one(&sql, &[Val::I64(id)]).await?;
        row.as_ref().map(patient_from_row).transpose()
    }

    /// Patients by id: those of the COTs in `scope` (`None`: all COTs; an empty scope sees
    /// no one), and of them only those of COT `cot` when given.
    pub async fn list_patients(
        &self,
        scope: Option<&[i64]>,
        cot: Option<i64>,
    ) -> Result<Vec<Patient>> {
        let mut sql = format!("SELECT {PATIENT_COLUMNS} FROM patients WHERE 1 = 1");
        if let Some(cots) = scope {
            if cots.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(&format!(" AND cot_id IN ({})", id_list(cots)));
        }
        let mut vals = Vec::new();
        if let Some(cot) = cot {
            sql.push_str(" AND cot_id = $1");
            vals.push(Val::I64(cot));
        }
        sql.push_str(" ORDER BY id");
        let rows = self.read(&sql, &vals).await?;
        rows.iter().map(patient_from_row).collect()
    }

    /// Provisions a device. [`StoreError::Invalid`] for a malformed id or secret hash,
    /// [`StoreError::Conflict`] if the id exists, [`StoreError::NotFound`] if the patient
    /// does not.
    pub async fn add_device(&self, new: &NewDevice) -> Result<Device> {
        validate_device_id(&new.id)?;
        if let Some(model) = &new.model {
            bounded("model", model, MAX_NAME)?;
        }
        if new.secret_hash.len() != 64 || !new.secret_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Invalid(
                "secret_hash must be a hex SHA-256 (64 hex digits), see credentials::hash_secret"
                    .into(),
            ));
        }
        let secret_hash = new.secret_hash.to_ascii_lowercase();
        let sql = format!(
            "INSERT INTO devices (id, patient_id, kind, model, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {DEVICE_COLUMNS}"
        );
        let now = OffsetDateTime::now_utc();
        let vals = [
            Val::Text(&new.id),
            Val::I64(new.patient_id),
            Val::Text(new.kind.as_str()),
            Val::OptText(new.model.as_deref()),
            Val::Text(&secret_hash),
            Val::Ts(now),
        ];
        let row = self.inserted(&sql, &vals).await.map_err(|e| {
            e.or_constraint(
                || what("device", format_args!("{:?}", new.id)),
                || what("patient", new.patient_id),
            )
        })?;
        device_from_row(&row)
    }

    /// Credentials and revocation state of a device, for the edge; `None` if unknown.
    pub async fn device_auth(&self, id: &str) -> Result<Option<DeviceAuth>> {
        let sql = "SELECT id, patient_id, secret_hash, revoked_at, cert_sha256 FROM devices \
                   WHERE id = $1";
        let row = self.read_one(sql, &[Val::Text(id)]).await?;
        row.as_ref().map(device_auth_from_row).transpose()
    }

    /// Revokes a device from `at` on (a second revocation keeps the first time).
    /// [`StoreError::NotFound`] if the device does not exist.
    pub async fn revoke_device(&self, id: &str, at: OffsetDateTime) -> Result<()> {
        let sql = "UPDATE devices SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1";
        let updated = self.exec(sql, &[Val::Text(id), Val::Ts(at)]).await?;
        found_device(updated, id)
    }

    /// Records the client certificate issued to a device (serial and SHA-256 of its DER, both
    /// lowercase hex): from now on the edge accepts only this certificate for the device.
    /// [`StoreError::NotFound`] if the device does not exist.
    pub async fn set_device_cert(
        &self,
        id: &str,
        serial: &str,
        sha256: &str,
        at: OffsetDateTime,
    ) -> Result<()> {
        let sql = "UPDATE devices SET cert_serial = $2, cert_sha256 = $3, cert_issued_at = $4 \
                   WHERE id = $1";
        let vals = [
            Val::Text(id),
            Val::Text(serial),
            Val::Text(sha256),
            Val::Ts(at),
        ];
        let updated = self.exec(sql, &vals).await?;
        found_device(updated, id)
    }

    /// Devices revoked, or issued a certificate, at or after `since`, for the edge's
    /// revocation poll; each with whether it is revoked.
    pub async fn device_auth_changes_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Vec<(String, bool)>> {
        let sql = "SELECT id, revoked_at IS NOT NULL AS revoked FROM devices \
                   WHERE revoked_at >= $1 OR cert_issued_at >= $1 ORDER BY id";
        let rows = self.read(sql, &[Val::Ts(since)]).await?;
        rows.iter()
            .map(|r| Ok((r.text("id")?, r.flag("revoked")?)))
            .collect()
    }

    /// Devices by id: those of the patients of the COTs in `scope` (`None`: all COTs; an
    /// empty scope sees none), and of them only those of patient `patient` when given.
    pub async fn list_devices(
        &self,
        scope: Option<&[i64]>,
        patient: Option<i64>,
    ) -> Result<Vec<Device>> {
        let mut sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE 1 = 1");
        if let Some(cots) = scope {
            if cots.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(&format!(
                " AND patient_id IN (SELECT id FROM patients WHERE cot_id IN ({}))",
                id_list(cots)
            ));
        }
        let mut vals = Vec::new();
        if let Some(patient) = patient {
            sql.push_str(" AND patient_id = $1");
            vals.push(Val::I64(patient));
        }
        sql.push_str(" ORDER BY id");
        let rows = self.read(&sql, &vals).await?;
        rows.iter().map(device_from_row).collect()
    }

    /// The device with this id, if any.
    pub async fn get_device(&self, id: &str) -> Result<Option<Device>> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        let row = self.read_one(&sql, &[Val::Text(id)]).await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Stores a new API token by its hash. [`StoreError::Conflict`] if the hash exists,
    /// [`StoreError::NotFound`] if the user does not.
    pub async fn add_api_token(&self, new: &NewApiToken<'_>) -> Result<ApiToken> {
        non_empty("token hash", new.token_hash)?;
        bounded("token name", new.name, MAX_NAME)?;
        let sql = format!(
            "INSERT INTO api_tokens (name, user_id, kind, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TOKEN_COLUMNS}"
        );
        let now = OffsetDateTime::now_utc();
        let vals = [
            Val::Text(new.name),
            Val::I64(new.user_id),
            Val::Text(new.kind.as_str()),
            Val::Text(new.token_hash),
            Val::Ts(now),
            Val::OptTs(new.expires_at),
        ];
        let row = self.inserted(&sql, &vals).await.map_err(|e| {
            e.or_constraint(
                || "API token with this hash".to_owned(),
                || format!("user {}", new.user_id),
            )
        })?;
        token_from_row(&row)
    }

    /// The token with this hash, if any, revoked and expired ones included: the caller
    /// checks `revoked_at` and `expires_at`.
    pub async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1");
        let row = self.read_one(&sql, &[Val::Text(token_hash)]).await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Runs an `INSERT … RETURNING` of one row and returns that row.
    async fn inserted(&self, sql: &str, vals: &[Val<'_>]) -> Result<AnyRow> {
        self.read_one(sql, vals)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }
}

/// [`StoreError::NotFound`] for a device an UPDATE changed no row of.
fn found_device(updated: u64, id: &str) -> Result<()> {
    if updated == 0 {
        return Err(StoreError::NotFound {
            what: what("device", format_args!("{id:?}")),
        });
    }
    Ok(())
}

/// Ids as an SQL list (`1, 2, 3`): integers formatted here, never caller text.
pub(crate) fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Device ids are 1 to 64 characters of `[A-Za-z0-9_-]`: they appear in MQTT topics and
/// client ids, so nothing that could change a topic's meaning (`/`, `+`, `#`) gets in.
pub(crate) fn validate_device_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "device id {id:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
        )))
    }
}

/// Longest code (COT, patient, condition), in characters.
pub(crate) const MAX_CODE: usize = 64;
/// Longest name (display names, COT names, device models, token names), in characters.
pub(crate) const MAX_NAME: usize = 200;
/// Most conditions of one patient.
const MAX_CONDITIONS: usize = 32;

/// A free-text field: not blank, at most `max` characters (a 1.5 MB display name is refused
/// here, for the API and the CLI alike).
pub(crate) fn bounded(name: &str, value: &str, max: usize) -> Result<()> {
    non_empty(name, value)?;
    if value.chars().count() > max {
        return Err(StoreError::Invalid(format!(
            "{name} must be at most {max} characters"
        )));
    }
    Ok(())
}

pub(crate) fn non_empty(name: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(StoreError::Invalid(format!("{name} must not be empty")))
    } else {
        Ok(())
    }
}

fn join_conditions(conditions: &[String]) -> Result<String> {
    for condition in conditions {
        if condition.trim().is_empty() || condition.contains(',') {
            return Err(StoreError::Invalid(format!(
                "condition {condition:?} must be non-empty and contain no comma"
            )));
        }
    }
    Ok(conditions.join(","))
}

fn split_conditions(stored: &str) -> Vec<String> {
    stored
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn cot_from_row(row: &impl Columns) -> Result<Cot> {
    Ok(Cot {
        id: row.bigint("id")?,
        code: row.text("code")?,
        name: row.text("name")?,
        created_at: row.ts("created_at")?,
    })
}

pub(crate) fn patient_from_row(row: &impl Columns) -> Result<Patient> {
    Ok(Patient {
        id: row.bigint("id")?,
        cot_id: row.bigint("cot_id")?,
        code: row.text("code")?,
        display_name: row.text("display_name")?,
        birth_year: row.int_opt("birth_year")?,
        conditions: split_conditions(&row.text("conditions")?),
        created_at: row.ts("created_at")?,
    })
}

pub(crate) fn device_kind(stored: &str) -> Result<DeviceKind> {
    DeviceKind::parse(stored)
        .ok_or_else(|| StoreError::decode(format!("unknown device kind {stored:?}")))
}

pub(crate) fn device_from_row(row: &impl Columns) -> Result<Device> {
    Ok(Device {
        id: row.text("id")?,
        patient_id: row.bigint("patient_id")?,
        kind: device_kind(&row.text("kind")?)?,
        model: row.text_opt("model")?,
        created_at: row.ts("created_at")?,
        revoked_at: row.ts_opt("revoked_at")?,
        last_seen_at: row.ts_opt("last_seen_at")?,
        online: row.flag("online")?,
        battery_pct: row.smallint_opt("battery_pct")?,
        firmware: row.text_opt("firmware")?,
        rssi: row.smallint_opt("rssi")?,
        status_at: row.ts_opt("status_at")?,
        last_seq: row.bigint_opt("last_seq")?,
    })
}

fn device_auth_from_row(row: &impl Columns) -> Result<DeviceAuth> {
    Ok(DeviceAuth {
        id: row.text("id")?,
        patient_id: row.bigint("patient_id")?,
        secret_hash: row.text("secret_hash")?,
        revoked: row.ts_opt("revoked_at")?.is_some(),
        cert_sha256: row.text_opt("cert_sha256")?,
    })
}

pub(crate) fn token_from_row(row: &impl Columns) -> Result<ApiToken> {
    Ok(ApiToken {
        id: row.bigint("id")?,
        name: row.text("name")?,
        user_id: row.bigint_opt("user_id")?,
        kind: match row.text("kind")?.as_str() {
            "session" => TokenKind::Session,
            _ => TokenKind::ApiKey,
        },
        created_at: row.ts("created_at")?,
        expires_at: row.ts_opt("expires_at")?,
        revoked_at: row.ts_opt("revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["a", "bp-0001", "SPO2_x", &"x".repeat(64)] {
            assert!(validate_device_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a+b", "#", "ü", "a b", &"x".repeat(65)] {
            assert!(
                matches!(validate_device_id(bad), Err(StoreError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [
            DeviceKind::BloodPressure,
            DeviceKind::Spo2,
            DeviceKind::Glucose,
        ] {
            assert_eq!(DeviceKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(DeviceKind::parse("BP"), None);
    }

    #[test]
    fn conditions_round_trip() {
        let conditions = vec!["hypertension".to_owned(), "copd".to_owned()];
        assert_eq!(
            split_conditions(&join_conditions(&conditions).unwrap()),
            conditions
        );
        assert!(split_conditions("").is_empty());
        assert!(join_conditions(&["a,b".to_owned()]).is_err());
        assert!(join_conditions(&[String::new()]).is_err());
    }
}
