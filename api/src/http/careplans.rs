//! Care plans: versioned, each version with its author, time and reason.
//!
//! - `GET /api/v1/care-plan-templates`: the clinical templates (`alerting::plan`),
//!   each with its plan.
//! - `GET /api/v1/patients/{id}/care-plan`: the current version, with the plan as JSON.
//! - `GET /api/v1/patients/{id}/care-plan/effective`: what the alert engine applies now: the
//!   current version (or, with none stored, the templates of every condition composed:
//!   `from_conditions`, `templates`) as `plan`, and `effective`: that plan with the safety
//!   net joined in, each rule with its `origin` (`template:<name>`, `plan`, `safety-net`,
//!   or one of those `+safety-net`).
//! - `GET /api/v1/patients/{id}/care-plan/versions`: every version, newest first, without
//!   the plan bodies (fetch a version for its plan).
//! - `GET /api/v1/patients/{id}/care-plan/versions/{v}`: one version, with its plan.
//! - `POST /api/v1/patients/{id}/care-plan`: a new version, answered 201 with it. The body is
//!   either `{"template": "hypertension", "reason": "…", "overrides": {…}?}` or
//!   `{"plan": {…}, "reason": "…"}`. `overrides` is a JSON merge patch (RFC 7386) on the
//!   template, except that `rules` is an object keyed by rule id: each value is merged into
//!   that rule of the template (`null` drops it). The plan is validated by
//!   [`validate_plan`]; an invalid one answers 400 `invalid_care_plan` with every problem in
//!   `problems`. The author is `token:<name>`; the reason is required.
//!
//! Reads are audited (`careplan.read`, `careplan.versions`); a new version is audited before
//! it is stored (`careplan.create`, with its template and reason).

use alerting::plan::{self, CarePlan};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};
use super::patients::visible_patient;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/care-plan-templates", get(templates))
        .route("/patients/{id}/care-plan", get(current).post(create))
        .route("/patients/{id}/care-plan/effective", get(effective))
        .route("/patients/{id}/care-plan/versions", get(versions))
        .route("/patients/{id}/care-plan/versions/{version}", get(version))
}

const MAX_REASON: usize = 2000;

/// Parses and validates a plan: the one place the API decides what a valid plan is (the
/// schema and the rules live with the alert engine, in `alerting::plan`). Returns the
/// plan or every problem found, as messages for the clinician.
pub(crate) fn validate_plan(plan: Value) -> Result<CarePlan, Vec<String>> {
    let plan: CarePlan =
        serde_json::from_value(plan).map_err(|e| vec![format!("care plan: {e}")])?;
    let problems = plan.problems();
    if problems.is_empty() {
        Ok(plan)
    } else {
        Err(problems)
    }
}

/// A stored version as the API shows it: the plan parsed.
#[derive(Debug, Serialize)]
struct PlanOut {
    id: i64,
    patient_id: i64,
    version: i64,
    template: Option<String>,
    author: String,
    reason: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Value>,
}

impl PlanOut {
    fn new(row: store::CarePlanRow, with_plan: bool) -> PlanOut {
        let plan = with_plan.then(|| {
            // Stored by this API or the engine as JSON; should a row not parse, show the text.
            serde_json::from_str(&row.plan).unwrap_or(Value::String(row.plan.clone()))
        });
        PlanOut {
            id: row.id,
            patient_id: row.patient_id,
            version: row.version,
            template: row.template,
            author: row.author,
            reason: row.reason,
            created_at: row.created_at,
            plan,
        }
    }
}

#[derive(Debug, Serialize)]
struct TemplateOut {
    name: &'static str,
    plan: CarePlan,
}

async fn templates(_caller: Caller) -> Json<Value> {
    let list: Vec<TemplateOut> = plan::TEMPLATE_NAMES
        .iter()
        .filter_map(|&name| plan::template(name).map(|plan| TemplateOut { name, plan }))
        .collect();
    Json(json!({ "templates": list }))
}

async fn current(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<PlanOut>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let row = state
        .store
        .current_care_plan(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("care plan of patient {id}")))?;
    state
        .audit_patient(
            &caller,
            "careplan.read",
            format!("patient:{id} care-plan version={}", row.version),
            &patient,
            None,
        )
        .await?;
    Ok(Json(PlanOut::new(row, true)))
}

/// The plan in force and what the engine makes of it.
#[derive(Debug, Serialize)]
struct EffectiveOut {
    patient_id: i64,
    /// No stored version: the plan comes from the patient's conditions.
    from_conditions: bool,
    /// The templates composed (with no stored version), most precedent first.
    templates: Vec<&'static str>,
    /// The stored version, if any (its author, reason and time as in `GET …/care-plan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    stored: Option<PlanOut>,
    /// The plan as written: the stored one, or the composed templates.
    plan: CarePlan,
    /// The plan with the safety net, as the engine runs it.
    effective: CarePlan,
}

async fn effective(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<EffectiveOut>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let row = state.store.current_care_plan(id).await?;
    let version = row
        .as_ref()
        .map_or("none".into(), |r| r.version.to_string());
    state
        .audit_patient(
            &caller,
            "careplan.read",
            format!("patient:{id} care-plan effective version={version}"),
            &patient,
            None,
        )
        .await?;
    let (plan, templates) = match &row {
        Some(r) => (
            // As the engine does: a stored plan that no longer parses runs as `general`.
            CarePlan::from_json(&r.plan)
                .ok()
                .or_else(|| plan::template("general"))
                .ok_or_else(|| ApiError::NotFound("the general template".into()))?,
            Vec::new(),
        ),
        None => (
            plan::for_conditions(&patient.conditions),
            plan::templates_for_conditions(&patient.conditions),
        ),
    };
    let effective = alerting::net::effective(&plan.clone().normalized());
    Ok(Json(EffectiveOut {
        patient_id: id,
        from_conditions: row.is_none(),
        templates,
        stored: row.map(|r| PlanOut::new(r, false)),
        plan,
        effective,
    }))
}

#[derive(Debug, Serialize)]
struct VersionList {
    patient_id: i64,
    versions: Vec<PlanOut>,
}

async fn versions(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<VersionList>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let rows = state.store.list_care_plans(id).await?;
    state
        .audit_patient(
            &caller,
            "careplan.versions",
            format!("patient:{id} care-plan"),
            &patient,
            None,
        )
        .await?;
    Ok(Json(VersionList {
        patient_id: id,
        versions: rows.into_iter().map(|r| PlanOut::new(r, false)).collect(),
    }))
}

async fn version(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(i64, i64)>, PathRejection>,
) -> Result<Json<PlanOut>, ApiError> {
    let Path((id, v)) = path.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let row = state
        .store
        .care_plan_version(id, v)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("care plan version {v} of patient {id}")))?;
    state
        .audit_patient(
            &caller,
            "careplan.read",
            format!("patient:{id} care-plan version={v}"),
            &patient,
            None,
        )
        .await?;
    Ok(Json(PlanOut::new(row, true)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    template: Option<String>,
    plan: Option<Value>,
    overrides: Option<Value>,
    reason: String,
}

/// Applies an RFC 7386 merge patch.
fn merge_patch(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        map.remove(&key);
                    } else {
                        merge_patch(map.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other,
    }
}

/// The template `name` with `overrides` applied (see the module docs).
fn from_template(name: &str, overrides: Option<Value>) -> Result<Value, ApiError> {
    let template = plan::template(name).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "template must be one of {}; got {name:?}",
            plan::TEMPLATE_NAMES.join(", ")
        ))
    })?;
    let mut base = serde_json::to_value(&template)
        .map_err(|e| ApiError::BadRequest(format!("template {name}: {e}")))?;
    let Some(overrides) = overrides else {
        return Ok(base);
    };
    let Value::Object(mut overrides) = overrides else {
        return Err(ApiError::BadRequest(
            "overrides must be a JSON object".into(),
        ));
    };
    if let Some(rules) = overrides.remove("rules") {
        let Value::Object(rules) = rules else {
            return Err(ApiError::BadRequest(
                "overrides.rules must be an object keyed by rule id".into(),
            ));
        };
        let list = base
            .get_mut("rules")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| ApiError::BadRequest(format!("template {name} has no rules")))?;
        for (rule_id, patch) in rules {
            let at = list
                .iter()
                .position(|r| r.get("id").and_then(Value::as_str) == Some(rule_id.as_str()))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "overrides.rules: template {name} has no rule {rule_id:?}"
                    ))
                })?;
            if patch.is_null() {
                list.remove(at);
            } else if let Some(rule) = list.get_mut(at) {
                merge_patch(rule, patch);
            }
        }
    }
    merge_patch(&mut base, Value::Object(overrides));
    Ok(base)
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<(StatusCode, Json<PlanOut>), ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Json(body) =
        body.map_err(|e| ApiError::BadRequest(format!("invalid body: {}", e.body_text())))?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ApiError::BadRequest(format!(
            "reason must be 1 to {MAX_REASON} characters: say why the plan changes"
        )));
    }
    let (template, json) = match (body.template, body.plan, body.overrides) {
        (Some(name), None, overrides) => {
            let json = from_template(&name, overrides)?;
            (Some(name), json)
        }
        (None, Some(plan), None) => (None, plan),
        (None, Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "overrides apply to a template; with plan, send the whole plan".into(),
            ));
        }
        (Some(_), Some(_), _) => {
            return Err(ApiError::BadRequest(
                "give either template or plan, not both".into(),
            ));
        }
        (None, None, _) => {
            return Err(ApiError::BadRequest(
                "give a template (with optional overrides) or a plan".into(),
            ));
        }
    };
    let plan = validate_plan(json).map_err(|problems| ApiError::Invalid {
        code: "invalid_care_plan",
        message: format!("the care plan is invalid: {}", problems.join("; ")),
        problems,
    })?;
    let text = serde_json::to_string(&plan)
        .map_err(|e| ApiError::BadRequest(format!("care plan: {e}")))?;
    let patient = visible_patient(&state, &caller, id).await?;
    state
        .audit_patient(
            &caller,
            "careplan.create",
            format!("patient:{id} care-plan"),
            &patient,
            Some(json!({ "template": template, "reason": reason }).to_string()),
        )
        .await?;
    let row = state
        .store
        .add_care_plan(&store::NewCarePlan {
            patient_id: id,
            template,
            plan: text,
            author: caller.actor(),
            reason: reason.to_owned(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(PlanOut::new(row, true))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut v, json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn every_template_is_valid() {
        for name in plan::TEMPLATE_NAMES {
            let json = from_template(name, None).expect("template");
            assert!(validate_plan(json).is_ok(), "{name}");
        }
    }

    #[test]
    fn overrides_by_rule_id() {
        let json = from_template(
            "hypertension",
            Some(json!({"rules": {"bp-high": {"title": "Pressione alta"}}})),
        )
        .expect("template");
        let plan = validate_plan(json).expect("valid");
        assert!(plan.rules.iter().any(|r| r.title == "Pressione alta"));
        assert!(from_template("hypertension", Some(json!({"rules": {"nope": null}}))).is_err());
        assert!(from_template("nope", None).is_err());
    }
}
