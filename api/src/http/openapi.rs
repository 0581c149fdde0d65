//! The OpenAPI 3.1 contract of `/api/v1`, served at `/api/v1/openapi.json`.
//!
//! Generated from code: every operation comes from the access-policy table
//! ([`super::policy::ROUTES`], the table the router enforces, so a route cannot exist without
//! it), with its security (who may call it) derived from the route's [`Access`]; what the table
//! does not know (parameters, bodies, answers) comes from [`OPERATIONS`] below, one entry per
//! route. `api/tests/openapi.rs` fails, naming them, on routes of the policy table without
//! an entry here, and when the committed `api/openapi/api-v1.json` differs from this
//! document (`SENTINELLA_BLESS=1` rewrites it). CI also runs `openapi-spec-validator` on it
//! and schemathesis against a live `sentinella run` (scripts/contract-test.sh).
//!
//! Every error has one shape, [`error_schema`]: `{"error":{"code","message","problems"?}}`.
//! Bearer tokens are of three kinds, all in `Authorization: Bearer`: a session token from
//! `POST /auth/login`, an API key of a service account, or a JWT of the identity provider.

use axum::Json;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use super::policy::{Access, ROUTES};

/// A query parameter: its name and JSON schema.
pub type Param = (&'static str, fn() -> Value);

/// What the policy table does not say about an operation.
#[derive(Debug)]
pub struct Operation {
    /// HTTP method as in the policy table.
    pub method: &'static str,
    /// Path as routed, with `{params}`, under `/api/v1`.
    pub path: &'static str,
    /// One line for the reader.
    pub summary: &'static str,
    /// The resource group (OpenAPI tag).
    pub tag: &'static str,
    /// Query parameters: name and JSON schema.
    pub query: &'static [Param],
    /// The JSON request body's schema, when there is one.
    pub body: Option<fn() -> Value>,
    /// The success status.
    pub status: u16,
    /// What the success answer holds.
    pub answer: Answer,
}

/// The success answer of an operation.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// A JSON body of this schema.
    Json(fn() -> Value),
    /// No body (204).
    Empty,
    /// Server-Sent Events.
    EventStream,
    /// A PDF document.
    Pdf,
}

use Answer::{Empty, EventStream, Json as J, Pdf};

fn integer() -> Value {
    json!({"type": "integer", "format": "int64"})
}
fn string() -> Value {
    json!({"type": "string"})
}
fn date_time() -> Value {
    json!({"type": "string", "format": "date-time"})
}
fn offset() -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 0})
}
fn reading_kind() -> Value {
    json!({"type": "string", "enum": ["bp", "spo2", "glucose"]})
}
fn object() -> Value {
    json!({"type": "object"})
}
/// Free text as the store takes it: not blank, at most `max` characters.
fn text(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": "\\S"})
}
fn clamped_limit() -> Value {
    json!({"type": "integer", "format": "int64", "description": "taken as 1 to 1000 (default 100)"})
}
fn limit_to(max: i64) -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": max})
}
fn audit_limit() -> Value {
    limit_to(1000)
}
fn readings_limit() -> Value {
    limit_to(10_000)
}
fn severity() -> Value {
    json!({"type": "string", "enum": ["info", "low", "medium", "high", "critical"]})
}
fn workflow_list() -> Value {
    json!({"type": "string", "description": "comma-separated workflow states",
        "pattern": "^(new|acknowledged|resolved)(,(new|acknowledged|resolved))*$"})
}
fn alert_condition() -> Value {
    json!({"type": "string", "enum": ["active", "cleared"]})
}
fn ids() -> Value {
    json!({"type": "array", "minItems": 1, "items": {"type": "integer", "format": "int64"}})
}
fn list_of(key: &str) -> Value {
    json!({"type": "object", "required": [key], "properties": {key: {"type": "array", "items": {"type": "object"}}}})
}

fn cot_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["code", "name"],
        "properties": {"code": text(64), "name": text(200)}})
}
fn login_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["username", "password"],
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}}})
}
fn login_answer() -> Value {
    json!({"type": "object", "required": ["token", "expires_at", "user"], "properties": {
        "token": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"},
        "user": {"$ref": "#/components/schemas/Me"}}})
}
fn me_answer() -> Value {
    json!({"type": "object", "required": ["user"],
        "properties": {"user": {"$ref": "#/components/schemas/Me"}}})
}
fn password() -> Value {
    json!({"type": "string", "minLength": super::session::MIN_PASSWORD})
}
fn user_body() -> Value {
    json!({"type": "object", "additionalProperties": false,
    "required": ["username", "display_name", "role", "cots"], "properties": {
    "username": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
    "display_name": text(200),
    "role": {"$ref": "#/components/schemas/Role"},
    "cots": ids(),
    "password": {"type": ["string", "null"]}, "service": {"type": "boolean"}},
    "description": "A person has a password; a service account (`service: true`) has none \
        and authenticates with API keys.",
    "oneOf": [
        {"required": ["service"], "properties": {"service": {"const": true},
            "password": {"type": "null"}}},
        {"required": ["password"], "properties": {"service": {"const": false},
            "password": password()}}
    ]})
}
fn password_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["password"],
        "properties": {"password": password()}})
}
fn cots_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["cots"],
        "properties": {"cots": ids()}})
}
fn api_key_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
        "name": text(200),
        "expires_in_days": {"type": ["integer", "null"], "format": "int64", "minimum": 1,
            "maximum": 3650}}})
}
fn patient_body() -> Value {
    json!({"type": "object", "additionalProperties": false,
        "required": ["cot", "code", "display_name"], "properties": {
        "cot": {"type": "integer", "format": "int64"}, "code": text(64),
        "display_name": text(200),
        "birth_year": {"type": ["integer", "null"], "format": "int32"},
        "conditions": {"type": "array", "maxItems": 32, "items": {"type": "string",
            "minLength": 1, "maxLength": 64, "pattern": "^[^,]*\\S[^,]*$"}}}})
}
fn care_plan_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["reason"],
        "description": "Exactly one of `template` (a template name), `plan` (a whole plan, \
            validated by the alert engine's rules: see GET /care-plan-templates for examples) \
            or `overrides` (a JSON merge patch over the plan in force), with the reason.",
        "properties": {
        "template": {"type": ["string", "null"], "enum": template_names()},
        "plan": {"type": ["object", "null"]},
        "overrides": {"type": ["object", "null"]}, "reason": text(2000)}})
}
fn template_names() -> Value {
    let mut names: Vec<Value> = alerting::plan::TEMPLATE_NAMES
        .iter()
        .map(|n| json!(n))
        .collect();
    names.push(Value::Null);
    Value::Array(names)
}
fn device_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["patient", "kind"],
        "properties": {
        "patient": {"type": "integer", "format": "int64"},
        "kind": reading_kind(),
        "id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "model": {"oneOf": [text(200), {"type": "null"}]}}})
}
fn assign_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["assignee"],
        "properties": {"assignee": {"oneOf": [text(200), {"type": "null"}],
            "description": "a username, or null to unassign"}}})
}
fn comment_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["text"],
        "properties": {"text": text(4000)}})
}
fn resolve_body() -> Value {
    let outcomes: Vec<&str> = super::alerts::OUTCOMES.iter().map(|(o, _)| *o).collect();
    json!({"type": "object", "additionalProperties": false, "required": ["outcome"],
        "properties": {"outcome": {"type": "string", "enum": outcomes},
            "note": {"type": ["string", "null"], "maxLength": 4000}}})
}

fn nullable_text(max: usize) -> Value {
    json!({"type": ["string", "null"], "maxLength": max})
}
fn contacts_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "phones": {"type": "array", "maxItems": 6, "items": {"type": "object",
            "additionalProperties": false, "required": ["label", "number"],
            "properties": {"label": {"type": "string", "maxLength": 60},
                "number": {"type": "string", "maxLength": 32}}}},
        "caregiver_name": nullable_text(200), "caregiver_relation": nullable_text(60),
        "caregiver_phone": nullable_text(32), "gp_name": nullable_text(200),
        "gp_phone": nullable_text(32), "gp_email": nullable_text(254),
        "preferred_language": nullable_text(35), "clinical_note": nullable_text(4000)}})
}
fn intervention_body() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["kind"], "properties": {
        "kind": {"type": "string", "enum": ["phone_call", "advice_given", "gp_informed",
            "home_visit_requested", "emergency_services"]},
        "result": {"type": ["string", "null"], "enum": ["reached", "not_reached", "wrong_number", null],
            "description": "required for a phone_call, absent otherwise"},
        "note": nullable_text(4000),
        "retry_in_minutes": {"type": ["integer", "null"], "minimum": 5, "maximum": 1440,
            "description": "for a call not_reached (default 30)"}}})
}
fn day() -> Value {
    json!({"type": "string", "format": "date"})
}
fn report_lang() -> Value {
    json!({"type": "string", "enum": ["it", "en"]})
}

/// Every `/api/v1` operation beyond what the policy table says.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/contacts",
        summary: "A patient's contacts and context (phones, caregiver, GP, language, clinical note)",
        tag: "patients",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "PUT",
        path: "/api/v1/patients/{id}/contacts",
        summary: "Replace a patient's contacts and context",
        tag: "patients",
        query: &[],
        body: Some(contacts_body),
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/interventions",
        summary: "A patient's interventions on all alerts (timeline)",
        tag: "patients",
        query: &[("from", date_time), ("to", date_time)],
        body: None,
        status: 200,
        answer: J(|| list_of("interventions")),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/report",
        summary: "The telemonitoring report of a period as a PDF",
        tag: "patients",
        query: &[("from", day), ("to", day), ("lang", report_lang)],
        body: None,
        status: 200,
        answer: Pdf,
    },
    Operation {
        method: "POST",
        path: "/api/v1/alerts/{id}/interventions",
        summary: "Record an intervention on an alert (a call not reached re-queues it)",
        tag: "alerts",
        query: &[],
        body: Some(intervention_body),
        status: 201,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/openapi.json",
        summary: "This contract (OpenAPI 3.1)",
        tag: "meta",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/auth/login",
        summary: "Log in: a session token for a shift",
        tag: "auth",
        query: &[],
        body: Some(login_body),
        status: 200,
        answer: J(login_answer),
    },
    Operation {
        method: "POST",
        path: "/api/v1/auth/logout",
        summary: "Revoke the session token",
        tag: "auth",
        query: &[],
        body: None,
        status: 204,
        answer: Empty,
    },
    Operation {
        method: "GET",
        path: "/api/v1/auth/me",
        summary: "Who the token names: role, COTs, how authenticated",
        tag: "auth",
        query: &[],
        body: None,
        status: 200,
        answer: J(me_answer),
    },
    Operation {
        method: "GET",
        path: "/api/v1/cots",
        summary: "The caller's COTs",
        tag: "admin",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/cots",
        summary: "Add a COT",
        tag: "admin",
        query: &[],
        body: Some(cot_body),
        status: 201,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/users",
        summary: "Users of the COTs the caller administers",
        tag: "admin",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/users",
        summary: "Add a person or a service account",
        tag: "admin",
        query: &[],
        body: Some(user_body),
        status: 201,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/users/{id}",
        summary: "A user",
        tag: "admin",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/users/{id}/disable",
        summary: "Disable a user and revoke their tokens",
        tag: "admin",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/users/{id}/password",
        summary: "Set a person's password (revokes their tokens)",
        tag: "admin",
        query: &[],
        body: Some(password_body),
        status: 204,
        answer: Empty,
    },
    Operation {
        method: "PUT",
        path: "/api/v1/users/{id}/cots",
        summary: "Set a user's COTs",
        tag: "admin",
        query: &[],
        body: Some(cots_body),
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/users/{id}/api-keys",
        summary: "Create an API key for a service account (shown once)",
        tag: "admin",
        query: &[],
        body: Some(api_key_body),
        status: 201,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/audit",
        summary: "The audit log of the caller's COTs",
        tag: "admin",
        query: &[
            ("actor", string),
            ("action", string),
            ("patient", integer),
            ("from", date_time),
            ("to", date_time),
            ("before", integer),
            ("limit", audit_limit),
        ],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients",
        summary: "Patients of the caller's COTs",
        tag: "patients",
        query: &[("cot", integer)],
        body: None,
        status: 200,
        answer: J(|| list_of("patients")),
    },
    Operation {
        method: "POST",
        path: "/api/v1/patients",
        summary: "Enrol a patient with one of the caller's COTs",
        tag: "patients",
        query: &[],
        body: Some(patient_body),
        status: 201,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}",
        summary: "A patient with their devices and care-plan template",
        tag: "patients",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/readings",
        summary: "A patient's readings by measurement time, oldest first (from inclusive, to exclusive; from must not be after to)",
        tag: "patients",
        query: &[
            ("from", date_time),
            ("to", date_time),
            ("kind", reading_kind),
            ("limit", readings_limit),
        ],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/access-history",
        summary: "Who read or changed a patient's data",
        tag: "admin",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/care-plan",
        summary: "The care plan in force",
        tag: "care plans",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/patients/{id}/care-plan",
        summary: "A new care-plan version, with its reason",
        tag: "care plans",
        query: &[],
        body: Some(care_plan_body),
        status: 201,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/care-plan/effective",
        summary: "The plan the alert engine runs, with each rule's origin",
        tag: "care plans",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/care-plan/versions",
        summary: "Every care-plan version",
        tag: "care plans",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/patients/{id}/care-plan/versions/{version}",
        summary: "One care-plan version",
        tag: "care plans",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/care-plan-templates",
        summary: "The clinical templates, with their sources",
        tag: "care plans",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/devices",
        summary: "Devices of the caller's COTs' patients",
        tag: "devices",
        query: &[("patient", integer)],
        body: None,
        status: 200,
        answer: J(|| list_of("devices")),
    },
    Operation {
        method: "POST",
        path: "/api/v1/devices",
        summary: "Provision a device (secret and certificate shown once)",
        tag: "devices",
        query: &[],
        body: Some(device_body),
        status: 201,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/devices/{id}",
        summary: "A device: battery, firmware, last seen, last acknowledged seq",
        tag: "devices",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/devices/{id}/revoke",
        summary: "Revoke a device: it is disconnected and cannot connect again",
        tag: "devices",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/quarantine",
        summary: "Quarantined device input, newest first",
        tag: "devices",
        query: &[("limit", clamped_limit)],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/alerts",
        summary: "The alert queue of the caller's COTs, most urgent first (severity or min_severity, not both)",
        tag: "alerts",
        query: &[
            ("status", workflow_list),
            ("severity", severity),
            ("min_severity", severity),
            ("patient", integer),
            ("condition", alert_condition),
            ("limit", audit_limit),
            ("offset", offset),
        ],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/alerts/outcomes",
        summary: "The outcomes an alert can be resolved with",
        tag: "alerts",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "GET",
        path: "/api/v1/alerts/stream",
        summary: "Alert events as Server-Sent Events, resumable by Last-Event-ID or ?after=",
        tag: "alerts",
        query: &[("after", integer)],
        body: None,
        status: 200,
        answer: EventStream,
    },
    Operation {
        method: "GET",
        path: "/api/v1/alerts/{id}",
        summary: "An alert with its readings and history",
        tag: "alerts",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/alerts/{id}/ack",
        summary: "Acknowledge an alert",
        tag: "alerts",
        query: &[],
        body: None,
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/alerts/{id}/assign",
        summary: "Assign an alert to a user, or unassign it",
        tag: "alerts",
        query: &[],
        body: Some(assign_body),
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/alerts/{id}/comments",
        summary: "Comment on an alert",
        tag: "alerts",
        query: &[],
        body: Some(comment_body),
        status: 200,
        answer: J(object),
    },
    Operation {
        method: "POST",
        path: "/api/v1/alerts/{id}/resolve",
        summary: "Resolve an alert with an outcome",
        tag: "alerts",
        query: &[],
        body: Some(resolve_body),
        status: 200,
        answer: J(object),
    },
];

/// The schema of every error answer.
pub fn error_schema() -> Value {
    json!({"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "description": "stable machine code, e.g. not_found"},
            "message": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "string"}}}}}})
}

/// The type of a path parameter (device ids are strings, everything else an integer id).
fn path_parameter(path: &str, name: &str) -> Value {
    if path.starts_with("/api/v1/devices/") && name == "id" {
        json!({"type": "string"})
    } else {
        integer()
    }
}

/// The `/api/v1` routes of the policy table without an entry in [`OPERATIONS`].
pub fn undocumented() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .filter(|(_, path, _)| path.starts_with("/api/v1/"))
        .filter(|(m, p, _)| !OPERATIONS.iter().any(|op| op.method == *m && op.path == *p))
        .map(|(m, p, _)| (*m, *p))
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, access) in ROUTES {
        let Some(short) = path.strip_prefix("/api/v1") else {
            continue;
        };
        let op = OPERATIONS
            .iter()
            .find(|op| op.method == *method && op.path == *path);
        if let Some(item) = paths
            .entry(short.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            item.insert(
                method.to_ascii_lowercase(),
                operation(method, path, *access, op),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Sentinella API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The API of Sentinella for COT staff and integrations. Every route \
                but the login and this document needs a bearer token: a session token \
                (POST /auth/login), an API key of a service account, or a JWT of the regional \
                identity provider. Staff see only their COTs' patients: another COT's patient \
                answers 404. Every read of patient data and every change is audited. The FHIR \
                R4 API (/fhir/r4) describes itself in its CapabilityStatement \
                (/fhir/r4/metadata).",
            "license": {"name": "EUPL-1.2", "identifier": "EUPL-1.2"}
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {
            "schemas": {
                "Error": error_schema(),
                "Role": {"type": "string", "enum": ["nurse", "physician", "device_manager", "admin"]},
                "Me": {"type": "object", "required": ["username", "display_name", "role", "via", "cots"],
                    "properties": {
                        "id": {"type": ["integer", "null"], "format": "int64"},
                        "username": {"type": "string"}, "display_name": {"type": "string"},
                        "role": {"$ref": "#/components/schemas/Role"},
                        "via": {"type": "string", "enum": ["session", "api_key", "identity_provider"]},
                        "cots": {"type": "array", "items": {"type": "object",
                            "required": ["id", "code", "name"], "properties": {
                            "id": {"type": "integer", "format": "int64"},
                            "code": {"type": "string"}, "name": {"type": "string"}}}}}}
            },
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer",
                    "description": "A session token from POST /auth/login (a shift long)."},
                "apiKey": {"type": "http", "scheme": "bearer",
                    "description": "An API key of a service account (sentinella token create, or POST /users/{id}/api-keys)."},
                "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A JWT of the regional identity provider, verified against its JWKS; role and COTs from its claims."}
            },
            "responses": {
                "Error": {"description": "An error; `code` says which.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        }
    })
}

fn operation(method: &str, path: &str, access: Access, op: Option<&Operation>) -> Value {
    let mut parameters = Vec::new();
    for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
        parameters.push(json!({"name": name, "in": "path", "required": true,
            "schema": path_parameter(path, name)}));
    }
    if let Some(op) = op {
        for (name, schema) in op.query {
            parameters.push(json!({"name": name, "in": "query", "required": false,
                "schema": schema()}));
        }
    }
    let error = json!({"$ref": "#/components/responses/Error"});
    let mut responses = Map::new();
    match op {
        Some(op) => {
            let ok = match op.answer {
                J(schema) => json!({"description": "OK",
                    "content": {"application/json": {"schema": schema()}}}),
                Empty => json!({"description": "Done; no content"}),
                EventStream => json!({"description": "Server-Sent Events, one per alert event",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
                Pdf => json!({"description": "a PDF document (attachment)",
                    "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}}}),
            };
            responses.insert(op.status.to_string(), ok);
        }
        None => {
            responses.insert("200".into(), json!({"description": "OK"}));
        }
    }
    responses.insert("4XX".into(), error.clone());
    // A store that is momentarily unavailable, or a full password-hashing pool at login.
    responses.insert("503".into(), error);
    let mut out = json!({
        "operationId": operation_id(method, path),
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(op) = op {
        out["summary"] = json!(op.summary);
        out["tags"] = json!([op.tag]);
        if let Some(body) = op.body {
            out["requestBody"] = json!({"required": true,
                "content": {"application/json": {"schema": body()}}});
        }
    }
    out["security"] = match access {
        Access::Public => json!([]),
        Access::Authenticated | Access::Allowed(_) => {
            json!([{"session": []}, {"apiKey": []}, {"jwt": []}])
        }
    };
    if let Access::Allowed(permission) = access {
        out["x-permission"] = json!(format!("{permission:?}"));
    }
    out
}

/// `get_patients_id_readings` for `GET /api/v1/patients/{id}/readings`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path.trim_start_matches("/api/v1").split('/') {
        let part: String = part
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .map(|c| if c == '-' { '_' } else { c })
            .collect();
        if !part.is_empty() {
            id.push('_');
            id.push_str(&part);
        }
    }
    id
}

/// `GET /api/v1/openapi.json`.
pub(crate) async fn serve() -> impl IntoResponse {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (method, path, _) in ROUTES.iter().filter(|(_, p, _)| p.starts_with("/api/v1/")) {
            assert!(seen.insert(operation_id(method, path)), "{method} {path}");
        }
    }

    #[test]
    fn every_entry_names_a_route() {
        for op in OPERATIONS {
            assert!(
                ROUTES
                    .iter()
                    .any(|(m, p, _)| *m == op.method && *p == op.path),
                "{} {} is documented but not routed",
                op.method,
                op.path
            );
        }
    }
}
