//! The alerts API through the router: the queue's order and filters, the detail view, the
//! workflow (ack, assign, comment, resolve), its errors and its audit trail, on SQLite and
//! PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{T0, TOKEN_NAME, fixture, open, trigger};
use serde_json::{Value, json};
use store::Severity;
use store::testing::TestDb;

#[tokio::test]
async fn alert_workflow_sqlite() {
    alert_workflow(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn alert_workflow_postgres() {
    alert_workflow(TestDb::postgres().await).await;
}

fn ids(body: &Value) -> Vec<i64> {
    body["alerts"]
        .as_array()
        .unwrap_or_else(|| panic!("no alerts in {body}"))
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect()
}

async fn alert_workflow(db: TestDb) {
    let f = fixture(db).await;
    let store = &f.db.store;
    // Opened in this order; the queue orders by severity, escalation, then age.
    let a = open(&f, &trigger(f.p1, "bp-high", Severity::High, 10, &[3, 4])).await;
    let b = open(
        &f,
        &trigger(f.p1, "bp-very-high", Severity::Critical, 11, &[5]),
    )
    .await;
    let c = open(&f, &trigger(f.p2, "bp-high", Severity::Medium, 12, &[])).await;
    let d = open(&f, &trigger(f.p2, "no-reading", Severity::Low, 13, &[])).await;
    let e = open(&f, &trigger(f.p2, "bp-high-2", Severity::High, 14, &[])).await;
    // `a` is older than `e` (both high), so it comes first, until `e` escalates.
    let (_, body) = f.get("/api/v1/alerts").await;
    assert_eq!(ids(&body), vec![b, a, e, c, d], "{body}");
    assert_eq!(body["count"], 5);
    store
        .escalate_alert(
            e,
            T0 + time::Duration::hours(2),
            T0 + time::Duration::hours(3),
        )
        .await
        .unwrap()
        .unwrap();
    let (status, body) = f.get("/api/v1/alerts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), vec![b, e, a, c, d], "{body}");
    assert_eq!(body["alerts"][1]["escalation_level"], 1);

    // Filters.
    for (query, expected) in [
        ("severity=high", vec![e, a]),
        ("min_severity=high", vec![b, e, a]),
        (&*format!("patient={}", f.p2), vec![e, c, d]),
        (
            &*format!("patient={}&min_severity=medium", f.p2),
            vec![e, c],
        ),
        ("condition=active", vec![b, e, a, c, d]),
        ("condition=cleared", vec![]),
        ("status=resolved", vec![]),
        ("status=new,acknowledged,resolved", vec![b, e, a, c, d]),
        ("limit=2", vec![b, e]),
        ("limit=2&offset=2", vec![a, c]),
        ("offset=10", vec![]),
    ] {
        let (status, body) = f.get(&format!("/api/v1/alerts?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(ids(&body), expected, "{query}");
    }
    store
        .clear_alert(
            f.p2,
            "no-reading",
            T0 + time::Duration::hours(1),
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let (_, body) = f.get("/api/v1/alerts?condition=cleared").await;
    assert_eq!(ids(&body), vec![d]);
    assert_eq!(body["alerts"][0]["condition"], "cleared");

    // Unknown values are refused with a message that says what is accepted.
    for (query, needle) in [
        ("status=open", "new, acknowledged, resolved"),
        ("status=new,", "new, acknowledged, resolved"),
        ("severity=urgent", "info, low, medium, high, critical"),
        ("min_severity=HIGH", "info, low, medium, high, critical"),
        ("severity=high&min_severity=low", "not both"),
        ("condition=gone", "active or cleared"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("offset=-1", "offset"),
        ("patient=abc", "patient"),
        ("sort=age", "sort"),
    ] {
        let (status, body) = f.get(&format!("/api/v1/alerts?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{query}: {message}");
    }

    // The detail view: events, linked readings, the readings as stored.
    let (status, body) = f.get(&format!("/api/v1/alerts/{a}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], a);
    assert_eq!(body["severity"], "high");
    assert_eq!(body["workflow"], "new");
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["events"][0]["kind"], "opened");
    assert_eq!(body["events"][0]["actor"], "engine");
    let seqs: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![3, 4]);
    let stored = body["stored_readings"].as_array().unwrap();
    assert_eq!(stored.len(), 2, "{body}");
    assert_eq!(stored[0]["seq"], 3);
    assert_eq!(stored[0]["systolic"], 153.0);
    assert_eq!(stored[1]["systolic"], 154.0);
    assert_eq!(stored[0]["clock"], "ok");

    // The workflow. Each change answers the alert after it and the event it appended.
    let audit_before = store.list_audit(10_000).await.unwrap().len();
    let actor = format!("user:{TOKEN_NAME}");
    let (status, body) = f.post(&format!("/api/v1/alerts/{a}/ack"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alert"]["workflow"], "acknowledged");
    assert_eq!(body["alert"]["acknowledged_by"], actor);
    assert_eq!(body["event"]["kind"], "acknowledged");
    assert_eq!(body["event"]["actor"], actor);
    // The default queue still shows it (unresolved).
    let (_, body) = f.get("/api/v1/alerts?status=acknowledged").await;
    assert_eq!(ids(&body), vec![a]);

    let (status, body) = f.post(&format!("/api/v1/alerts/{a}/ack"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "invalid_transition");
    assert_eq!(
        body["error"]["message"],
        format!("alert {a} is already acknowledged")
    );

    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/assign"),
            json!({"assignee": "Giulia Verdi"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alert"]["assignee"], "Giulia Verdi");
    assert_eq!(body["event"]["detail"]["assignee"], "Giulia Verdi");
    // `{}` does not unassign by accident; `null` does.
    let (status, body) = f
        .post(&format!("/api/v1/alerts/{a}/assign"), json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("assignee")
    );
    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/assign"),
            json!({"assignee": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alert"]["assignee"], Value::Null);

    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/comments"),
            json!({"text": "Called, no answer; retry at 11"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["event"]["kind"], "commented");
    assert_eq!(
        body["event"]["detail"]["text"],
        "Called, no answer; retry at 11"
    );
    for bad in [json!({"text": "  "}), json!({}), json!({"text": 3})] {
        let (status, body) = f
            .post(&format!("/api/v1/alerts/{a}/comments"), bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/resolve"),
            json!({"outcome": "fixed_it"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("called_patient") && message.contains("fixed_it"),
        "{message}"
    );
    // A high alert leaves the queue only with what was done on record.
    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/resolve"),
            json!({"outcome": "medication_adjusted", "note": "ramipril 5 mg"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("record an intervention"),
        "{body}"
    );
    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/interventions"),
            json!({"kind": "gp_informed", "note": "MMG: ramipril 5 mg"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/resolve"),
            json!({"outcome": "medication_adjusted", "note": "ramipril 5 mg"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alert"]["workflow"], "resolved");
    assert_eq!(body["alert"]["outcome"], "medication_adjusted");
    assert_eq!(body["alert"]["resolved_by"], actor);
    assert_eq!(body["event"]["detail"]["note"], "ramipril 5 mg");

    // A resolved alert takes no more workflow changes, but still comments.
    for (path, body) in [
        ("resolve", json!({"outcome": "called_patient"})),
        ("ack", json!({})),
        ("assign", json!({"assignee": "x"})),
    ] {
        let (status, resp) = f.post(&format!("/api/v1/alerts/{a}/{path}"), body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {resp}");
        assert_eq!(resp["error"]["code"], "invalid_transition");
        assert!(
            resp["error"]["message"]
                .as_str()
                .unwrap()
                .contains("resolved"),
            "{resp}"
        );
    }
    let (status, _) = f
        .post(
            &format!("/api/v1/alerts/{a}/comments"),
            json!({"text": "Follow-up booked"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Resolving a new alert directly is allowed (it counts as acknowledged then).
    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{c}/interventions"),
            json!({"kind": "phone_call", "result": "reached"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{c}/resolve"),
            json!({"outcome": "reading_error"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["alert"]["acknowledged_by"], actor);

    // The history, oldest first, with who did what.
    let (_, body) = f.get(&format!("/api/v1/alerts/{a}")).await;
    let kinds: Vec<(&str, &str)> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("opened", "engine"),
            ("acknowledged", actor.as_str()),
            ("assigned", actor.as_str()),
            ("assigned", actor.as_str()),
            ("commented", actor.as_str()),
            ("intervention", actor.as_str()),
            ("resolved", actor.as_str()),
            ("commented", actor.as_str()),
        ]
    );
    let event_ids: Vec<i64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(event_ids.windows(2).all(|w| w[0] < w[1]), "{event_ids:?}");
    let (_, body) = f.get("/api/v1/alerts").await;
    assert_eq!(ids(&body), vec![b, e, d], "resolved alerts leave the queue");
    let (_, body) = f.get("/api/v1/alerts?status=resolved").await;
    assert_eq!(ids(&body), vec![a, c]);

    // Every change was audited (before it was made) with what it asked for, and every read.
    let audit = f.audit_since(audit_before).await;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert!(audit.iter().all(|e| e.actor == actor), "{audit:?}");
    for action in [
        "alert.acknowledge",
        "alert.assign",
        "alert.comment",
        "alert.resolve",
        "alerts.list",
        "alert.read",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    let resolve = audit
        .iter()
        .find(|e| e.action == "alert.resolve" && e.target.starts_with(&format!("alert:{a} ")))
        .unwrap();
    assert_eq!(resolve.target, format!("alert:{a} patient:{}", f.p1));
    let detail: Value = serde_json::from_str(resolve.detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["outcome"], "medication_adjusted");
}

#[tokio::test]
async fn unknown_alerts_missing_tokens_and_outcomes() {
    let f = fixture(TestDb::sqlite().await).await;
    let a = open(&f, &trigger(f.p1, "bp-high", Severity::High, 10, &[1])).await;
    let audit_before = f.db.store.list_audit(10_000).await.unwrap().len();

    for (method, path, body) in [
        ("GET", "", None),
        ("POST", "/ack", Some(json!({}))),
        ("POST", "/assign", Some(json!({"assignee": "x"}))),
        ("POST", "/comments", Some(json!({"text": "x"}))),
        (
            "POST",
            "/resolve",
            Some(json!({"outcome": "called_patient"})),
        ),
    ] {
        let token = f.token.clone();
        let uri = format!("/api/v1/alerts/999999{path}");
        let (status, resp) = f.call(method, &uri, body.clone(), Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {resp}");
        assert_eq!(resp["error"]["code"], "not_found");
        assert_eq!(resp["error"]["message"], "alert 999999 not found");
        let uri = format!("/api/v1/alerts/{a}{path}");
        let (status, resp) = f.call(method, &uri, body, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {resp}");
        assert_eq!(resp["error"]["code"], "unauthorized");
    }
    for uri in [
        "/api/v1/alerts",
        "/api/v1/alerts/outcomes",
        "/api/v1/alerts/stream",
    ] {
        let (status, _) = f.call("GET", uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    // Refused requests change nothing and audit nothing.
    assert_eq!(
        f.db.store.list_audit(10_000).await.unwrap().len(),
        audit_before
    );
    let (_, body) = f.get(&format!("/api/v1/alerts/{a}")).await;
    assert_eq!(body["events"].as_array().unwrap().len(), 1);
    assert_eq!(body["workflow"], "new");

    let (status, body) = f.get("/api/v1/alerts/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = f
        .call(
            "POST",
            &format!("/api/v1/alerts/{a}/resolve"),
            None,
            Some(&f.token.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no body: {body}");
    let (status, body) = f
        .post(
            &format!("/api/v1/alerts/{a}/resolve"),
            json!({"outcome": "called_patient", "extra": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = f.get("/api/v1/alerts/outcomes").await;
    assert_eq!(status, StatusCode::OK);
    let outcomes: Vec<&str> = body["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            "called_patient",
            "reading_error",
            "referred_to_gp",
            "sent_to_emergency",
            "medication_adjusted",
            "no_action_needed",
            "patient_hospitalised"
        ]
    );
    // Every documented outcome is accepted.
    for (i, outcome) in outcomes.iter().enumerate() {
        let id = open(
            &f,
            &trigger(f.p2, &format!("rule-{i}"), Severity::Low, 20, &[]),
        )
        .await;
        let (status, body) = f
            .post(
                &format!("/api/v1/alerts/{id}/resolve"),
                json!({"outcome": outcome}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{outcome}: {body}");
        assert_eq!(body["alert"]["outcome"], *outcome);
    }
}
