//! What administrators manage: COTs, users, API keys of service accounts, and the audit log.
//!
//! - `GET /api/v1/cots` (anyone): the caller's COTs. `POST /api/v1/cots` `{"code","name"}`
//!   (admin): a new COT, which the creating administrator joins.
//! - `GET /api/v1/users`, `GET /api/v1/users/{id}`: users sharing a COT with the admin.
//! - Changes to a user (below) need an admin of EVERY COT of that user (else 403
//!   `not_governed`): sharing one COT is not enough to take an account over.
//! - `POST /api/v1/users` `{"username","display_name","role","cots":[ids],"password"?,
//!   "service"?}`: a person (password ≥ 12 characters, Argon2id) or a service account (no
//!   password). Only into the admin's own COTs.
//! - `POST /api/v1/users/{id}/disable` (revokes every token), `POST /users/{id}/password`
//!   `{"password"}`, `PUT /users/{id}/cots` `{"cots":[ids]}`,
//!   `POST /users/{id}/api-keys` `{"name","expires_in_days"?}` → the key, shown once.
//! - `GET /api/v1/audit?actor=&action=&patient=&from=&to=&before=&limit=`: entries of the
//!   admin's COTs and about users of them (logins, user changes); entries about no COT at
//!   all (failed logins of unknown usernames) only for an admin of every COT; newest first,
//!   page with `before`.
//! - `GET /api/v1/patients/{id}/access-history`: who read or changed this patient's data.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use store::{AuditQuery, NewUser, Role, User, UserKind};
use time::OffsetDateTime;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, rejection};
use super::patients::{parse_time, visible_patient};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/cots", get(list_cots).post(add_cot))
        .route("/users", get(list_users).post(add_user))
        .route("/users/{id}", get(show_user))
        .route("/users/{id}/disable", post(disable_user))
        .route("/users/{id}/password", post(set_password))
        .route("/users/{id}/cots", put(set_cots))
        .route("/users/{id}/api-keys", post(add_api_key))
        .route("/audit", get(audit))
        .route("/patients/{id}/access-history", get(access_history))
}

async fn list_cots(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cots = state.store.cots_by_ids(&caller.cots).await?;
    Ok(Json(json!({ "cots": cots })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CotBody {
    code: String,
    name: String,
}

async fn add_cot(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CotBody>, JsonRejection>,
) -> Result<(StatusCode, Json<store::Cot>), ApiError> {
    let Json(body) = body.map_err(rejection)?;
    let cot = state.store.add_cot(&body.code, &body.name).await?;
    if let Some(user_id) = caller.user_id {
        let mut cots = caller.cots.clone();
        cots.push(cot.id);
        state.store.set_user_cots(user_id, &cots).await?;
    }
    state
        .audit_about(
            &caller,
            "cot.create",
            format!("cot:{}", cot.code),
            None,
            Some(cot.id),
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(cot)))
}

/// A user the admin may see: one sharing at least one of their COTs; else 404.
async fn visible_user(state: &AppState, caller: &Caller, id: i64) -> Result<User, ApiError> {
    state
        .store
        .get_user(id)
        .await?
        .filter(|u| u.cot_ids.iter().any(|c| caller.sees_cot(*c)))
        .ok_or_else(|| ApiError::NotFound(format!("user {id}")))
}

/// A user the admin may change (credentials, API keys, disabling, COTs): one whose EVERY COT
/// the admin governs. Sharing one COT is not enough: a user of COTs A and B taken over by
/// an admin of A would open B's patients to that admin (and, for an admin of A and B, B's
/// staff). The user's role does not matter past that: whatever it outranks lies in COTs the
/// admin already governs. A user the admin cannot see answers 404; one the admin sees but
/// does not wholly govern, 403.
async fn managed_user(state: &AppState, caller: &Caller, id: i64) -> Result<User, ApiError> {
    let user = visible_user(state, caller, id).await?;
    if governs(caller, &user) {
        Ok(user)
    } else {
        Err(ApiError::NotGoverned(format!("user {id}")))
    }
}

/// Whether every COT of `user` is one of the caller's (a user of no COT is governed by nobody).
fn governs(caller: &Caller, user: &User) -> bool {
    !user.cot_ids.is_empty() && user.cot_ids.iter().all(|c| caller.sees_cot(*c))
}

fn own_cots(caller: &Caller, cots: &[i64]) -> Result<(), ApiError> {
    if cots.is_empty() {
        return Err(ApiError::BadRequest(
            "cots must name at least one COT".into(),
        ));
    }
    match cots.iter().find(|c| !caller.sees_cot(**c)) {
        Some(c) => Err(ApiError::NotFound(format!("COT {c}"))),
        None => Ok(()),
    }
}

async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users = state.store.list_users(Some(&caller.cots)).await?;
    state.audit(&caller, "user.list", "users".into()).await?;
    Ok(Json(json!({ "users": users })))
}

async fn show_user(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let user = visible_user(&state, &caller, id).await?;
    let tokens = state.store.user_tokens(id).await?;
    state.audit_user(&caller, "user.read", &user, None).await?;
    Ok(Json(json!({ "user": user, "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    username: String,
    display_name: String,
    role: String,
    cots: Vec<i64>,
    password: Option<String>,
    #[serde(default)]
    service: bool,
}

async fn add_user(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<UserBody>, JsonRejection>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let Json(body) = body.map_err(rejection)?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::BadRequest("role must be nurse, physician, device_manager or admin".into())
    })?;
    own_cots(&caller, &body.cots)?;
    let (kind, hash) = match (body.service, body.password) {
        (true, None) => (UserKind::Service, None),
        (true, Some(_)) => {
            return Err(ApiError::BadRequest(
                "service accounts use API keys, not passwords".into(),
            ));
        }
        (false, Some(p)) => (UserKind::Person, Some(state.auth.hasher.hash(p).await?)),
        (false, None) => return Err(ApiError::BadRequest("a person needs a password".into())),
    };
    let user = state
        .store
        .add_user(&NewUser {
            username: &body.username,
            display_name: &body.display_name,
            role,
            kind,
            password_hash: hash.as_deref(),
            cot_ids: &body.cots,
        })
        .await?;
    state
        .audit_user(
            &caller,
            "user.create",
            &user,
            Some(json!({"role": role, "cots": user.cot_ids, "service": body.service}).to_string()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

async fn disable_user(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<User>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let user = managed_user(&state, &caller, id).await?;
    state
        .store
        .disable_user(id, OffsetDateTime::now_utc())
        .await?;
    state
        .audit_user(&caller, "user.disable", &user, None)
        .await?;
    Ok(Json(visible_user(&state, &caller, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    password: String,
}

async fn set_password(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<PasswordBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Json(body) = body.map_err(rejection)?;
    let user = managed_user(&state, &caller, id).await?;
    if user.kind == UserKind::Service {
        return Err(ApiError::BadRequest(
            "service accounts use API keys, not passwords".into(),
        ));
    }
    let hash = state.auth.hasher.hash(body.password).await?;
    // Every token of the user ends with the old password.
    state.store.set_user_password(id, &hash).await?;
    state
        .audit_user(
            &caller,
            "user.password",
            &user,
            Some(json!({"tokens_revoked": true}).to_string()),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CotsBody {
    cots: Vec<i64>,
}

async fn set_cots(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<CotsBody>, JsonRejection>,
) -> Result<Json<User>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Json(body) = body.map_err(rejection)?;
    let user = managed_user(&state, &caller, id).await?;
    own_cots(&caller, &body.cots)?;
    // COTs of the user the admin does not manage stay as they are.
    let mut cots: Vec<i64> = user
        .cot_ids
        .iter()
        .copied()
        .filter(|c| !caller.sees_cot(*c))
        .collect();
    cots.extend(&body.cots);
    cots.sort_unstable();
    cots.dedup();
    state.store.set_user_cots(id, &cots).await?;
    // Shown to the administrators of the COTs before and after.
    let mut concerned = user.clone();
    concerned.cot_ids.extend(&cots);
    state
        .audit_user(
            &caller,
            "user.cots",
            &concerned,
            Some(json!({"before": user.cot_ids, "after": cots}).to_string()),
        )
        .await?;
    Ok(Json(visible_user(&state, &caller, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    name: String,
    expires_in_days: Option<i64>,
}

async fn add_api_key(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<ApiKeyBody>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let Json(body) = body.map_err(rejection)?;
    let user = managed_user(&state, &caller, id).await?;
    if user.kind != UserKind::Service {
        return Err(ApiError::BadRequest(
            "API keys are for service accounts; people log in".into(),
        ));
    }
    if body.name.trim().is_empty() || body.name.chars().count() > 200 {
        return Err(ApiError::BadRequest(
            "name must be 1 to 200 characters".into(),
        ));
    }
    let expires_at = match body.expires_in_days {
        Some(d) if (1..=3650).contains(&d) => {
            Some(OffsetDateTime::now_utc() + time::Duration::days(d))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "expires_in_days must be between 1 and 3650".into(),
            ));
        }
        None => None,
    };
    let (token, stored) =
        crate::ops::identity::issue_api_key(&state.store, id, &body.name, expires_at).await?;
    state
        .audit_user(
            &caller,
            "user.api_key",
            &user,
            Some(json!({"key": stored.id}).to_string()),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "key": stored})),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    actor: Option<String>,
    action: Option<String>,
    patient: Option<i64>,
    from: Option<String>,
    to: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(rejection)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    // Entries about no COT and no user of one (failed logins of unknown usernames) are the
    // whole installation's business: only an administrator of every COT sees them.
    let all_cots = state.store.list_cots().await?;
    let governs_all = all_cots.iter().all(|c| caller.sees_cot(c.id));
    let entries = state
        .store
        .query_audit(&AuditQuery {
            cot_ids: caller.cot_scope(),
            include_unscoped: governs_all,
            patient_id: q.patient,
            actor: q.actor.clone(),
            action: q.action.clone(),
            from: parse_time("from", q.from.as_deref())?,
            to: parse_time("to", q.to.as_deref())?,
            before_id: q.before,
            limit,
        })
        .await?;
    state
        .audit_detail(
            &caller,
            "audit.read",
            "audit".into(),
            Some(format!("{q:?}")),
        )
        .await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next_before": next })))
}

async fn access_history(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(id) = id.map_err(rejection)?;
    let patient = visible_patient(&state, &caller, id).await?;
    let entries = state
        .store
        .query_audit(&AuditQuery {
            patient_id: Some(id),
            limit: 1000,
            ..AuditQuery::default()
        })
        .await?;
    state
        .audit_about(
            &caller,
            "patient.access_history",
            format!("patient:{id}"),
            None,
            Some(patient.cot_id),
            None,
        )
        .await?;
    Ok(Json(json!({ "patient_id": id, "entries": entries })))
}
