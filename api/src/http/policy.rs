//! The access policy: one table naming, for every route, who may call it. A middleware on
//! every route looks the matched route up here before the handler runs: it authenticates the
//! caller (401), checks the role's permission (403) and hands the caller to the handler.
//! Tenancy (which COTs' data) is the handler's job, through [`Caller::cot_scope`].
//!
//! A route missing from the table is refused with 500 and logged: the API fails closed, and
//! the authorization-matrix test (api/tests/authz.rs) fails on any route it does not list.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::auth::{Caller, Permission, authenticate};
use super::error::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token (login, probes, the console's static files).
    Public,
    /// Any authenticated caller.
    Authenticated,
    /// Callers whose role has this permission.
    Allowed(Permission),
}

use Access::{Allowed, Authenticated, Public};
use Permission::*;

/// Every route: method, path as routed (with `{params}`), access.
pub const ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Public),
    ("GET", "/readyz", Public),
    ("GET", "/metrics", Public),
    ("GET", "/", Public),
    ("GET", "/console", Public),
    ("GET", "/console/", Public),
    ("GET", "/console/{file}", Public),
    ("GET", "/api/v1/openapi.json", Public),
    ("POST", "/api/v1/auth/login", Public),
    ("POST", "/api/v1/auth/logout", Authenticated),
    ("GET", "/api/v1/auth/me", Authenticated),
    ("GET", "/api/v1/cots", Authenticated),
    ("POST", "/api/v1/cots", Allowed(ManageCots)),
    ("GET", "/api/v1/users", Allowed(ManageUsers)),
    ("POST", "/api/v1/users", Allowed(ManageUsers)),
    ("GET", "/api/v1/users/{id}", Allowed(ManageUsers)),
    ("POST", "/api/v1/users/{id}/disable", Allowed(ManageUsers)),
    ("POST", "/api/v1/users/{id}/password", Allowed(ManageUsers)),
    ("PUT", "/api/v1/users/{id}/cots", Allowed(ManageUsers)),
    ("POST", "/api/v1/users/{id}/api-keys", Allowed(ManageUsers)),
    ("GET", "/api/v1/audit", Allowed(ReadAudit)),
    ("GET", "/api/v1/patients", Allowed(ReadPatients)),
    ("POST", "/api/v1/patients", Allowed(EnrollPatients)),
    ("GET", "/api/v1/patients/{id}", Allowed(ReadPatients)),
    (
        "GET",
        "/api/v1/patients/{id}/readings",
        Allowed(ReadClinical),
    ),
    (
        "GET",
        "/api/v1/patients/{id}/access-history",
        Allowed(ReadAudit),
    ),
    (
        "GET",
        "/api/v1/patients/{id}/care-plan",
        Allowed(ReadClinical),
    ),
    (
        "POST",
        "/api/v1/patients/{id}/care-plan",
        Allowed(EditCarePlans),
    ),
    (
        "GET",
        "/api/v1/patients/{id}/care-plan/effective",
        Allowed(ReadClinical),
    ),
    (
        "GET",
        "/api/v1/patients/{id}/care-plan/versions",
        Allowed(ReadClinical),
    ),
    (
        "GET",
        "/api/v1/patients/{id}/care-plan/versions/{version}",
        Allowed(ReadClinical),
    ),
    ("GET", "/api/v1/care-plan-templates", Allowed(ReadClinical)),
    (
        "GET",
        "/api/v1/patients/{id}/contacts",
        Allowed(ReadClinical),
    ),
    (
        "PUT",
        "/api/v1/patients/{id}/contacts",
        Allowed(EnrollPatients),
    ),
    (
        "GET",
        "/api/v1/patients/{id}/interventions",
        Allowed(ReadClinical),
    ),
    (
        "POST",
        "/api/v1/alerts/{id}/interventions",
        Allowed(WorkAlerts),
    ),
    ("GET", "/api/v1/patients/{id}/report", Allowed(ReadClinical)),
    ("GET", "/api/v1/devices", Allowed(ReadDevices)),
    ("POST", "/api/v1/devices", Allowed(ManageDevices)),
    ("GET", "/api/v1/devices/{id}", Allowed(ReadDevices)),
    (
        "POST",
        "/api/v1/devices/{id}/revoke",
        Allowed(ManageDevices),
    ),
    ("GET", "/api/v1/quarantine", Allowed(ManageDevices)),
    ("GET", "/api/v1/alerts", Allowed(ReadClinical)),
    ("GET", "/api/v1/alerts/outcomes", Authenticated),
    ("GET", "/api/v1/alerts/stream", Allowed(ReadClinical)),
    ("GET", "/api/v1/alerts/{id}", Allowed(ReadClinical)),
    ("POST", "/api/v1/alerts/{id}/ack", Allowed(WorkAlerts)),
    ("POST", "/api/v1/alerts/{id}/assign", Allowed(WorkAlerts)),
    ("POST", "/api/v1/alerts/{id}/comments", Allowed(WorkAlerts)),
    ("POST", "/api/v1/alerts/{id}/resolve", Allowed(WorkAlerts)),
    ("GET", "/fhir/r4/metadata", Public),
    ("GET", "/fhir/r4/Patient", Allowed(ReadPatients)),
    ("GET", "/fhir/r4/Patient/{id}", Allowed(ReadPatients)),
    ("GET", "/fhir/r4/Device", Allowed(ReadDevices)),
    ("GET", "/fhir/r4/Device/{id}", Allowed(ReadDevices)),
    ("GET", "/fhir/r4/Observation", Allowed(ReadClinical)),
    ("GET", "/fhir/r4/Observation/{id}", Allowed(ReadClinical)),
    ("GET", "/fhir/r4/CarePlan", Allowed(ReadClinical)),
    ("GET", "/fhir/r4/CarePlan/{id}", Allowed(ReadClinical)),
    (
        "GET",
        "/fhir/r4/ObservationDefinition/{id}",
        Allowed(ReadClinical),
    ),
    ("GET", "/fhir/r4/Task", Allowed(ReadClinical)),
    ("GET", "/fhir/r4/Task/{id}", Allowed(ReadClinical)),
    ("GET", "/fhir/r4/DiagnosticReport", Allowed(ReadClinical)),
    (
        "GET",
        "/fhir/r4/DiagnosticReport/{id}",
        Allowed(ReadClinical),
    ),
    ("GET", "/fhir/r4/DocumentReference", Allowed(ReadClinical)),
    (
        "GET",
        "/fhir/r4/DocumentReference/{id}",
        Allowed(ReadClinical),
    ),
];

/// Renders a refusal in the shape of the API the path belongs to (given by the application,
/// which knows every surface; the policy knows none).
pub(crate) type Refusal = fn(&str, ApiError) -> Response;

/// The access rule of a routed request, if the table has one (HEAD follows GET).
pub fn access_of(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, a)| *a)
}

/// The middleware every route runs through.
pub(crate) async fn enforce(
    State((state, refuse)): State<(AppState, Refusal)>,
    request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(access) = path.as_deref().and_then(|p| access_of(request.method(), p)) else {
        let p = path.unwrap_or_default();
        if ROUTES.iter().any(|(_, route, _)| *route == p) {
            return refuse(&p, ApiError::MethodNotAllowed);
        }
        tracing::error!(method = %request.method(), path = %p, "route without an access rule: refused");
        return refuse(
            &p,
            ApiError::Store(store::StoreError::Invalid(
                "route without an access rule".into(),
            )),
        );
    };
    if access == Access::Public {
        return next.run(request).await;
    }
    let path = path.unwrap_or_default();
    let (mut parts, body) = request.into_parts();
    let caller: Caller = match authenticate(&parts, &state).await {
        Ok(c) => c,
        Err(e) => return refuse(&path, e),
    };
    if let Access::Allowed(permission) = access
        && !caller.can(permission)
    {
        return refuse(&path, ApiError::Forbidden);
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}
