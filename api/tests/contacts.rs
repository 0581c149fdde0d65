//! Patient contacts and the interventions on alerts, through the router, on SQLite and
//! PostgreSQL: what is stored and shown, the note's author and time, validation, the
//! re-queue of a call not reached, the rule that a medium-or-worse alert needs an
//! intervention before it is resolved, the patient timeline, tenancy and the audit of each.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{TOKEN_NAME, fixture, open, trigger};
use serde_json::{Value, json};

use store::testing::TestDb;
use store::{Role, Severity};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[tokio::test]
async fn contacts_sqlite() {
    contacts(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn contacts_postgres() {
    contacts(TestDb::postgres().await).await;
}

#[tokio::test]
async fn interventions_sqlite() {
    interventions(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn interventions_postgres() {
    interventions(TestDb::postgres().await).await;
}

fn ts(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        &Rfc3339,
    )
    .unwrap()
}

/// A second COT with a patient, and a nurse of COT A.
async fn other_cot_and_nurse(f: &common::Fixture) -> (i64, String) {
    let store = &f.db.store;
    let cot_b = store.add_cot("COT-B", "Altra COT").await.unwrap();
    let other = store
        .add_patient(&store::NewPatient {
            cot_id: cot_b.id,
            code: "P-B".into(),
            display_name: "Altra Paziente".into(),
            birth_year: None,
            conditions: vec![],
        })
        .await
        .unwrap();
    let nurse = api::ops::identity::service_account(store, "nurse-a", Role::Nurse, &[f.cot_id])
        .await
        .unwrap();
    (other.id, nurse)
}

async fn contacts(db: TestDb) {
    let f = fixture(db).await;
    let store = &f.db.store;
    let (other, nurse) = other_cot_and_nurse(&f).await;
    let uri = format!("/api/v1/patients/{}/contacts", f.p1);
    let actor = format!("user:{TOKEN_NAME}");

    // Nothing recorded yet.
    let (status, body) = f.get(&uri).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["recorded"], false);
    assert_eq!(body["patient_id"], f.p1);
    assert_eq!(body["phones"], json!([]));

    let audit_before = store.list_audit(10_000).await.unwrap().len();
    let record = json!({
        "phones": [
            {"label": "casa", "number": "+39 02 555 0101"},
            {"label": "cellulare", "number": "333 123 4567"}
        ],
        "caregiver_name": "Anna Rossi",
        "caregiver_relation": "figlia",
        "caregiver_phone": "+39 347 000 1111",
        "gp_name": "Dott. Bruno Neri",
        "gp_phone": "02 555 0199",
        "gp_email": "b.neri@mmg.example.it",
        "preferred_language": "it",
        "clinical_note": "Vive sola; sorda dall'orecchio destro, chiamare a voce alta."
    });
    let (status, body) = f
        .call("PUT", &uri, Some(record.clone()), Some(&f.token.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["recorded"], true);
    assert_eq!(body["phones"][1]["number"], "333 123 4567");
    assert_eq!(body["caregiver_relation"], "figlia");
    assert_eq!(body["note_author"], actor);
    assert_eq!(body["updated_by"], actor);
    let note_at = ts(&body["note_at"]);

    // A nurse reads them; the answer is what was stored.
    let (status, shown) = f.call("GET", &uri, None, Some(&nurse)).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown, body);

    // An edit that keeps the note keeps its author and time; a new note takes the editor's.
    let mut same_note = record.clone();
    same_note["gp_phone"] = json!(null);
    let (_, body) = f
        .call("PUT", &uri, Some(same_note), Some(&f.token.clone()))
        .await;
    assert_eq!(body["gp_phone"], Value::Null);
    assert_eq!(ts(&body["note_at"]), note_at);
    let mut new_note = record.clone();
    new_note["clinical_note"] = json!("Ricoverata dal 3/12 al 10/12: nuovo piano.");
    let (_, body) = f
        .call("PUT", &uri, Some(new_note), Some(&f.token.clone()))
        .await;
    assert!(ts(&body["note_at"]) >= note_at);
    assert_eq!(
        body["clinical_note"],
        "Ricoverata dal 3/12 al 10/12: nuovo piano."
    );

    // Validation: each bad field is named.
    for (field, value, needle) in [
        (
            "phones",
            json!([{"label": "x", "number": "chiamami"}]),
            "phones[0].number",
        ),
        (
            "phones",
            json!([{"label": "x", "number": "12"}]),
            "phones[0].number",
        ),
        ("phones", json!([{"number": "0255501"}]), "label"),
        ("gp_email", json!("no-at-sign"), "gp_email"),
        (
            "preferred_language",
            json!("Italiano"),
            "preferred_language",
        ),
        ("caregiver_name", json!("x".repeat(201)), "caregiver_name"),
        ("clinical_note", json!("a\u{0007}b"), "clinical_note"),
        ("unknown_field", json!(1), "unknown_field"),
    ] {
        let mut bad = record.clone();
        bad[field] = value;
        let (status, body) = f.call("PUT", &uri, Some(bad), Some(&f.token.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{field}: {message}");
    }

    // Roles and tenancy: a nurse does not edit; another COT's patient is not found.
    let (status, _) = f
        .call("PUT", &uri, Some(record.clone()), Some(&nurse))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other_uri = format!("/api/v1/patients/{other}/contacts");
    let (status, _) = f.get(&other_uri).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = f
        .call(
            "PUT",
            &other_uri,
            Some(record.clone()),
            Some(&f.token.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(store.patient_contacts(other).await.unwrap().is_none());

    // The audit: every read and every edit, about the patient, naming the fields set and
    // never their values.
    let audit = f.audit_since(audit_before).await;
    let reads: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "patient.contacts.read")
        .collect();
    assert_eq!(reads.len(), 1, "{audit:?}");
    assert_eq!(reads[0].actor, "user:nurse-a");
    assert_eq!(reads[0].patient_id, Some(f.p1));
    let edits: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "patient.contacts.update")
        .collect();
    // Three accepted edits; refused ones (validation, role, tenancy) are not attempted.
    assert_eq!(edits.len(), 3, "{audit:?}");
    for e in &edits {
        assert_eq!(e.patient_id, Some(f.p1));
        let detail = e.detail.as_deref().unwrap();
        assert!(detail.contains("clinical_note"), "{detail}");
        assert!(
            !detail.contains("555") && !detail.contains("Vive sola"),
            "values in the audit: {detail}"
        );
    }
    let access = store
        .query_audit(&store::AuditQuery {
            patient_id: Some(f.p1),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        access
            .iter()
            .any(|e| e.action == "patient.contacts.read" && e.actor == "user:nurse-a")
    );
}

async fn interventions(db: TestDb) {
    let f = fixture(db).await;
    let store = &f.db.store;
    let (other, nurse) = other_cot_and_nurse(&f).await;
    let actor = "user:nurse-a";
    let a = open(&f, &trigger(f.p1, "bp-high", Severity::High, 10, &[3])).await;
    let low = open(&f, &trigger(f.p1, "no-reading", Severity::Low, 11, &[])).await;
    let nurse_post = |uri: String, body: Value| {
        let nurse = nurse.clone();
        let f = &f;
        async move { f.call("POST", &uri, Some(body), Some(&nurse)).await }
    };
    let audit_before = store.list_audit(10_000).await.unwrap().len();

    // The nurse takes the alert, calls, nobody answers: the alert goes back to the queue,
    // due at the retry time.
    let (status, _) = nurse_post(format!("/api/v1/alerts/{a}/ack"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = nurse_post(
        format!("/api/v1/alerts/{a}/resolve"),
        json!({"outcome": "called_patient"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "invalid_transition");
    let before = OffsetDateTime::now_utc();
    let (status, body) = nurse_post(
        format!("/api/v1/alerts/{a}/interventions"),
        json!({"kind": "phone_call", "result": "not_reached", "note": "segreteria",
               "retry_in_minutes": 15}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["alert"]["workflow"], "new");
    assert_eq!(body["alert"]["interventions"], 1);
    let retry = ts(&body["alert"]["retry_at"]);
    assert_eq!(ts(&body["alert"]["due_at"]), retry);
    let wait = retry - before;
    assert!(
        wait >= time::Duration::minutes(15) && wait < time::Duration::minutes(16),
        "{wait}"
    );
    assert_eq!(body["event"]["kind"], "intervention");
    assert_eq!(body["event"]["actor"], actor);
    assert_eq!(body["event"]["detail"]["call_result"], "not_reached");
    assert_eq!(body["event"]["detail"]["requeued"], true);
    assert_eq!(body["intervention"]["kind"], "phone_call");
    assert_eq!(body["intervention"]["note"], "segreteria");
    let (_, queue) = f.get("/api/v1/alerts?status=new").await;
    assert!(
        queue["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == a && x["retry_at"].is_string()),
        "{queue}"
    );

    // Called again, reached: the retry is cleared, and the alert can be resolved.
    let (status, body) = nurse_post(
        format!("/api/v1/alerts/{a}/interventions"),
        json!({"kind": "phone_call", "result": "reached", "note": "PA ricontrollata 150/90"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["alert"]["retry_at"], Value::Null);
    assert_eq!(body["alert"]["interventions"], 2);
    let (status, body) = nurse_post(
        format!("/api/v1/alerts/{a}/interventions"),
        json!({"kind": "advice_given", "note": "riposo, ripetere la misura"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = nurse_post(
        format!("/api/v1/alerts/{a}/resolve"),
        json!({"outcome": "called_patient"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alert"]["workflow"], "resolved");
    // Resolved: no more interventions.
    let (status, body) = nurse_post(
        format!("/api/v1/alerts/{a}/interventions"),
        json!({"kind": "gp_informed"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A low alert needs none.
    let (status, body) = nurse_post(
        format!("/api/v1/alerts/{low}/resolve"),
        json!({"outcome": "no_action_needed"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The alert's history and the patient's timeline show them, oldest first.
    let (_, detail) = f.get(&format!("/api/v1/alerts/{a}")).await;
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "acknowledged",
            "intervention",
            "intervention",
            "intervention",
            "resolved"
        ]
    );
    let listed: Vec<(&str, &str)> = detail["intervention_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap(),
                i["call_result"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("phone_call", "not_reached"),
            ("phone_call", "reached"),
            ("advice_given", "-")
        ]
    );
    let (status, timeline) = f
        .get(&format!("/api/v1/patients/{}/interventions", f.p1))
        .await;
    assert_eq!(status, StatusCode::OK, "{timeline}");
    assert_eq!(timeline["count"], 3);
    assert!(
        timeline["interventions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["alert_id"] == a && i["actor"] == actor)
    );
    let later = (OffsetDateTime::now_utc() + time::Duration::minutes(1))
        .format(&Rfc3339)
        .unwrap();
    let (_, empty) = f
        .get(&format!(
            "/api/v1/patients/{}/interventions?from={}",
            f.p1,
            later.replace('+', "%2B")
        ))
        .await;
    assert_eq!(empty["count"], 0, "{empty}");

    // Bad requests.
    let b = open(&f, &trigger(f.p2, "bp-high", Severity::Medium, 12, &[])).await;
    for (bad, needle) in [
        (json!({"kind": "phone_call"}), "result"),
        (
            json!({"kind": "advice_given", "result": "reached"}),
            "result",
        ),
        (json!({"kind": "telepathy"}), "kind"),
        (json!({"kind": "phone_call", "result": "busy"}), "result"),
        (
            json!({"kind": "phone_call", "result": "reached", "retry_in_minutes": 10}),
            "retry_in_minutes",
        ),
        (
            json!({"kind": "phone_call", "result": "not_reached", "retry_in_minutes": 1}),
            "retry_in_minutes",
        ),
        (json!({"kind": "gp_informed", "extra": 1}), "extra"),
    ] {
        let (status, body) =
            nurse_post(format!("/api/v1/alerts/{b}/interventions"), bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{bad}: {message}");
    }
    // The default retry is 30 minutes; a wrong number does not re-queue.
    let (_, body) = nurse_post(
        format!("/api/v1/alerts/{b}/interventions"),
        json!({"kind": "phone_call", "result": "not_reached"}),
    )
    .await;
    let wait = ts(&body["alert"]["retry_at"]) - ts(&body["intervention"]["at"]);
    assert_eq!(wait, time::Duration::minutes(30));
    let (_, body) = nurse_post(
        format!("/api/v1/alerts/{b}/interventions"),
        json!({"kind": "phone_call", "result": "wrong_number"}),
    )
    .await;
    assert_eq!(body["alert"]["retry_at"], Value::Null);

    // Tenancy: another COT's alert and patient are not found, and nothing is written there.
    let other_alert = open(&f, &trigger(other, "bp-high", Severity::High, 13, &[])).await;
    let (status, _) = nurse_post(
        format!("/api/v1/alerts/{other_alert}/interventions"),
        json!({"kind": "advice_given"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = f
        .call(
            "GET",
            &format!("/api/v1/patients/{other}/interventions"),
            None,
            Some(&nurse),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        store
            .alert_interventions(other_alert)
            .await
            .unwrap()
            .is_empty()
    );

    // The audit: each accepted intervention (before it was recorded) and each read, about
    // the patient.
    let audit = f.audit_since(audit_before).await;
    let recorded: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "alert.intervention")
        .collect();
    // Three on `a`, one refused on resolved `a` (audited, then refused by the store), two on
    // `b`.
    assert_eq!(recorded.len(), 6, "{audit:?}");
    assert!(recorded.iter().all(|e| e.actor == actor));
    assert_eq!(recorded[0].patient_id, Some(f.p1));
    let detail: Value = serde_json::from_str(recorded[0].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["kind"], "phone_call");
    assert_eq!(detail["result"], "not_reached");
    assert_eq!(detail["retry_in_minutes"], 15);
    assert!(
        audit
            .iter()
            .any(|e| e.action == "patient.interventions.read" && e.patient_id == Some(f.p1))
    );
}
