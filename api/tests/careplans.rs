//! The care-plan API through the router: create from a template (with overrides), edit as a
//! new version with author and reason, old versions readable, invalid plans refused with
//! every problem, audit. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{TOKEN_NAME, fixture};
use serde_json::{Value, json};
use store::testing::TestDb;

#[tokio::test]
async fn care_plan_versions_sqlite() {
    care_plan_versions(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn care_plan_versions_postgres() {
    care_plan_versions(TestDb::postgres().await).await;
}

#[tokio::test]
async fn effective_plan_sqlite() {
    effective_plan(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn effective_plan_postgres() {
    effective_plan(TestDb::postgres().await).await;
}

/// The plan the engine runs: composed from every condition, the safety net joined in, each
/// rule's origin named; widening the net needs a reason; reads are audited.
async fn effective_plan(db: TestDb) {
    let f = fixture(db).await;
    let store = &f.db.store;
    let p = store
        .add_patient(&store::NewPatient {
            cot_id: f.cot_id,
            code: "P-HTN-DM".into(),
            display_name: "Anna Verdi".into(),
            birth_year: Some(1948),
            conditions: vec!["hypertension".into(), "diabetes".into()],
        })
        .await
        .unwrap()
        .id;
    let url = format!("/api/v1/patients/{p}/care-plan/effective");
    let (status, body) = f.get(&url).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["from_conditions"], true);
    assert_eq!(body["templates"], json!(["diabetes", "hypertension"]));
    let effective = &body["effective"];
    let origin = |id: &str| rule(effective, id).map(|r| r["origin"].as_str().unwrap().to_owned());
    assert_eq!(
        origin("glucose-low").as_deref(),
        Some("template:diabetes+safety-net")
    );
    assert_eq!(
        origin("bp-home-average").as_deref(),
        Some("template:hypertension")
    );
    // General brings SpO2 scale 1; the net joins it.
    assert_eq!(
        origin("spo2-low").as_deref(),
        Some("template:general+safety-net")
    );
    // The plan as written has no net bands; the effective one does.
    let bands = |plan: &Value, id: &str| rule(plan, id).unwrap()["bands"].as_array().unwrap().len();
    assert!(bands(effective, "glucose-low") > bands(&body["plan"], "glucose-low"));

    // Widening the net: refused without a reason or when it does not widen, kept with one.
    let base = format!("/api/v1/patients/{p}/care-plan");
    let mut plan = body["plan"].clone();
    plan["safety_net"] = json!({"widen": [{"rule": "bp-low", "severity": "critical",
        "metric": "systolic", "limit": 85, "reason": ""}]});
    let (status, err) = f.post(&base, json!({"plan": plan, "reason": "HF"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err.to_string().contains("a reason is required"), "{err}");
    plan["safety_net"]["widen"][0]["reason"] = json!("usual SBP 86-95 on sacubitril");
    let (status, created) = f
        .post(&base, json!({"plan": plan, "reason": "HF review"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (_, body) = f.get(&url).await;
    assert_eq!(body["from_conditions"], false);
    assert_eq!(body["stored"]["version"], 1);
    let low = rule(&body["effective"], "bp-low").unwrap();
    let critical: Vec<f64> = low["bands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["severity"] == "critical")
        .flat_map(|b| b["any"].as_array().unwrap().iter())
        .filter_map(|c| c["at_most"].as_f64())
        .collect();
    assert_eq!(critical, vec![85.0], "{low}");
    let audit = store.list_audit(1000).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "careplan.read" && e.target.contains("effective")),
        "{audit:?}"
    );
}

fn rule<'a>(plan: &'a Value, id: &str) -> Option<&'a Value> {
    plan["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
}

async fn care_plan_versions(db: TestDb) {
    let f = fixture(db).await;
    let p = f.p1;
    let base = format!("/api/v1/patients/{p}/care-plan");
    let actor = format!("user:{TOKEN_NAME}");

    let (status, body) = f.get(&base).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no plan yet: {body}");
    assert_eq!(
        body["error"]["message"],
        format!("care plan of patient {p} not found")
    );
    let (status, body) = f.get(&format!("{base}/versions")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["versions"], json!([]));

    // Version 1 from a template, with a rule retitled and one dropped.
    let audit_before = f.db.store.list_audit(10_000).await.unwrap().len();
    let (status, v1) = f
        .post(
            &base,
            json!({
                "template": "hypertension",
                "reason": "enrolment",
                "overrides": {"rules": {"bp-high": {"title": "Pressione alta"}, "bp-low": null}},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["template"], "hypertension");
    assert_eq!(v1["author"], actor);
    assert_eq!(v1["reason"], "enrolment");
    assert_eq!(
        rule(&v1["plan"], "bp-high").unwrap()["title"],
        "Pressione alta"
    );
    assert!(rule(&v1["plan"], "bp-low").is_none());
    assert_eq!(v1["plan"]["schedule"][0]["kind"], "bp");

    // Version 2: the whole plan edited (a lower critical threshold).
    let mut plan = v1["plan"].clone();
    let bp_high = plan["rules"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["id"] == "bp-high")
        .unwrap();
    bp_high["bands"][0]["any"][0]["at_least"] = json!(170);
    let (status, v2) = f
        .post(
            &base,
            json!({"plan": plan, "reason": "target lowered after cardiology review"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["template"], Value::Null);
    assert_eq!(v2["reason"], "target lowered after cardiology review");
    assert_eq!(
        rule(&v2["plan"], "bp-high").unwrap()["bands"][0]["any"][0]["at_least"],
        170.0
    );

    // Current is version 2; version 1 is still readable, unchanged.
    let (status, current) = f.get(&base).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(current["version"], 2);
    assert_eq!(current["plan"], v2["plan"]);
    let (status, old) = f.get(&format!("{base}/versions/1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(old["plan"], v1["plan"]);
    assert_eq!(old["reason"], "enrolment");
    let (_, list) = f.get(&format!("{base}/versions")).await;
    let versions: Vec<(i64, &str, &str)> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert!(v.get("plan").is_none(), "the list leaves plans out: {v}");
            (
                v["version"].as_i64().unwrap(),
                v["author"].as_str().unwrap(),
                v["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            (2, actor.as_str(), "target lowered after cardiology review"),
            (1, actor.as_str(), "enrolment")
        ]
    );
    let (status, _) = f.get(&format!("{base}/versions/3")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Invalid plans: 400 with every problem, and nothing stored.
    let mut bad = v2["plan"].clone();
    bad["rules"][0]["id"] = json!("device-x");
    bad["schedule"][0]["every_hours"] = json!(0);
    let (status, body) = f.post(&base, json!({"plan": bad, "reason": "typo"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_care_plan");
    let problems: Vec<&str> = body["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("reserved")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("every_hours")),
        "{problems:?}"
    );
    for (request, needle) in [
        (
            json!({"plan": {"rules": [{"id": "x"}]}, "reason": "r"}),
            "care plan:",
        ),
        (
            json!({"plan": {"rules": []}, "nope": 1, "reason": "r"}),
            "nope",
        ),
        (
            json!({"template": "asthma", "reason": "r"}),
            "hypertension, copd",
        ),
        (json!({"template": "copd", "reason": "  "}), "reason"),
        (json!({"template": "copd"}), "reason"),
        (json!({"reason": "r"}), "template"),
        (
            json!({"template": "copd", "plan": {"rules": []}, "reason": "r"}),
            "not both",
        ),
        (
            json!({"template": "copd", "reason": "r", "overrides": {"rules": {"bp-high": null}}}),
            "no rule \"bp-high\"",
        ),
        (
            json!({"template": "copd", "reason": "r", "overrides": {"schedule": [{"kind": "spo2", "every_hours": -1}]}}),
            "every_hours",
        ),
    ] {
        let (status, body) = f.post(&base, request.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{request}: {message}");
    }
    let (_, current) = f.get(&base).await;
    assert_eq!(current["version"], 2, "refused plans store nothing");

    // Unknown patients; no token.
    let (status, _) = f
        .post(
            "/api/v1/patients/999999/care-plan",
            json!({"template": "copd", "reason": "r"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for uri in [
        "/api/v1/patients/999999/care-plan",
        "/api/v1/patients/999999/care-plan/versions",
        "/api/v1/patients/999999/care-plan/versions/1",
    ] {
        assert_eq!(f.get(uri).await.0, StatusCode::NOT_FOUND, "{uri}");
    }
    for uri in [
        base.clone(),
        format!("{base}/versions"),
        format!("{base}/versions/1"),
    ] {
        assert_eq!(
            f.call("GET", &uri, None, None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, _) = f
        .call(
            "POST",
            &base,
            Some(json!({"template": "copd", "reason": "r"})),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Audited: each creation (with its reason) and each read.
    let audit = f.audit_since(audit_before).await;
    let creates: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "careplan.create")
        .collect();
    assert_eq!(creates.len(), 2, "{audit:?}");
    assert!(creates.iter().all(|e| e.actor == actor));
    assert_eq!(creates[0].target, format!("patient:{p} care-plan"));
    let detail: Value = serde_json::from_str(creates[1].detail.as_deref().unwrap()).unwrap();
    assert_eq!(detail["reason"], "target lowered after cardiology review");
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert!(actions.contains(&"careplan.read"), "{actions:?}");
    assert!(actions.contains(&"careplan.versions"), "{actions:?}");

    // The templates, each valid as it is.
    let (status, body) = f.get("/api/v1/care-plan-templates").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "hypertension",
            "copd",
            "diabetes",
            "heart_failure",
            "general"
        ]
    );
    for t in body["templates"].as_array().unwrap() {
        let (status, created) = f
            .post(
                &format!("/api/v1/patients/{}/care-plan", f.p2),
                json!({"plan": t["plan"], "reason": format!("try {}", t["name"])}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{}: {created}", t["name"]);
    }
}
