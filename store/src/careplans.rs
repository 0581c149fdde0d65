//! Care plans: one row per version per patient. The plan body is JSON the store does not
//! interpret (its schema lives with the alert engine, `alerting::plan`).

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::what;
use crate::rows::Columns;
use crate::sql::{AnyRow, Val};
use crate::{Result, Store, StoreError};

/// A new version of a patient's care plan.
#[derive(Debug, Clone)]
pub struct NewCarePlan {
    pub patient_id: i64,
    pub template: Option<String>,
    /// The plan, JSON.
    pub plan: String,
    /// Who made the change.
    pub author: String,
    /// Why (required: the change is audited clinical work).
    pub reason: String,
}

/// A stored care-plan version.
#[derive(Debug, Clone, Serialize)]
pub struct CarePlanRow {
    pub id: i64,
    pub patient_id: i64,
    pub version: i64,
    pub template: Option<String>,
    /// The plan, JSON.
    pub plan: String,
    pub author: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const COLUMNS: &str = "id, patient_id, version, template, plan, author, reason, created_at";

impl Store {
    /// Stores `new` as the patient's next version (1 for the first) and returns it. Two
    /// concurrent changes cannot both take the same version: the loser gets
    /// [`StoreError::Conflict`] and may retry on the new current version.
    pub async fn add_care_plan(&self, new: &NewCarePlan) -> Result<CarePlanRow> {
        if new.reason.trim().is_empty() || new.author.trim().is_empty() {
            return Err(StoreError::Invalid(
                "a care-plan version needs an author and a reason".into(),
            ));
        }
        let now = OffsetDateTime::now_utc();
        let mut tx = self.tx().await?;
        let exists = tx
            .one(
                "SELECT id FROM patients WHERE id = $1",
                &[Val::I64(new.patient_id)],
            )
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                what: what("patient", new.patient_id),
            });
        }
        let version = tx
            .one(
                "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM care_plans WHERE patient_id = $1",
                &[Val::I64(new.patient_id)],
            )
            .await?
            .map(|r| r.bigint("next"))
            .transpose()?
            .unwrap_or(1);
        let sql = format!(
            "INSERT INTO care_plans (patient_id, version, template, plan, author, reason, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
        );
        let row = tx
            .one(
                &sql,
                &[
                    Val::I64(new.patient_id),
                    Val::I64(version),
                    Val::OptText(new.template.as_deref()),
                    Val::Text(&new.plan),
                    Val::Text(&new.author),
                    Val::Text(&new.reason),
                    Val::Ts(now),
                ],
            )
            .await
            .map_err(|e| match e {
                StoreError::Database(db) => StoreError::on_constraint(
                    db,
                    || what("care plan version", version),
                    || what("patient", new.patient_id),
                ),
                other => other,
            })?
            .ok_or_else(|| StoreError::decode("INSERT … RETURNING gave no row".into()))?;
        let plan = plan_from_row(&row)?;
        tx.commit().await?;
        Ok(plan)
    }

    /// The patient's current (highest) care-plan version.
    pub async fn current_care_plan(&self, patient_id: i64) -> Result<Option<CarePlanRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM care_plans WHERE patient_id = $1 ORDER BY version DESC LIMIT 1"
        );
        self.read(&sql, &[Val::I64(patient_id)])
            .await?
            .first()
            .map(plan_from_row)
            .transpose()
    }

    /// One version of the patient's care plan.
    pub async fn care_plan_version(
        &self,
        patient_id: i64,
        version: i64,
    ) -> Result<Option<CarePlanRow>> {
        let sql =
            format!("SELECT {COLUMNS} FROM care_plans WHERE patient_id = $1 AND version = $2");
        self.read(&sql, &[Val::I64(patient_id), Val::I64(version)])
            .await?
            .first()
            .map(plan_from_row)
            .transpose()
    }

    /// Every version of the patient's care plan, newest first.
    pub async fn list_care_plans(&self, patient_id: i64) -> Result<Vec<CarePlanRow>> {
        let sql =
            format!("SELECT {COLUMNS} FROM care_plans WHERE patient_id = $1 ORDER BY version DESC");
        self.read(&sql, &[Val::I64(patient_id)])
            .await?
            .iter()
            .map(plan_from_row)
            .collect()
    }

    /// The current version of every patient's care plan (one query, for the engine's start).
    pub async fn current_care_plans(&self) -> Result<Vec<CarePlanRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM care_plans c WHERE version = \
             (SELECT MAX(version) FROM care_plans m WHERE m.patient_id = c.patient_id)"
        );
        self.read(&sql, &[])
            .await?
            .iter()
            .map(plan_from_row)
            .collect()
    }

    /// `(patient_id, current version)` of every patient with a care plan: how the alert
    /// engine notices plan changes made by another process.
    pub async fn care_plan_versions(&self) -> Result<Vec<(i64, i64)>> {
        self.read(
            "SELECT patient_id, MAX(version) AS version FROM care_plans GROUP BY patient_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.bigint("patient_id")?, r.bigint("version")?)))
        .collect()
    }
}

fn plan_from_row(row: &AnyRow) -> Result<CarePlanRow> {
    Ok(CarePlanRow {
        id: row.bigint("id")?,
        patient_id: row.bigint("patient_id")?,
        version: row.bigint("version")?,
        template: row.text_opt("template")?,
        plan: row.text("plan")?,
        author: row.text("author")?,
        reason: row.text("reason")?,
        created_at: row.ts("created_at")?,
    })
}
