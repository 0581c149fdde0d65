//! Care plans, alerts (trigger, clear, workflow), the event feed and the engine outbox.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Fixture, T0, fixture, reading};
use store::testing::TestDb;
use store::{
    AlertQuery, AlertReading, AlertWrite, AlertWritten, CommitBatch, Confirmation, NewCarePlan,
    ReadingsLayout, Severity, StoreError, Trigger, TriggerOutcome, Workflow,
};
use time::Duration;

on_all_backends!(
    care_plan_versions,
    alert_lifecycle,
    outbox_and_fresh,
    grouped_writes_match_one_by_one
);

async fn care_plan_versions(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = fixture(store, "cp").await;
    assert!(
        store
            .current_care_plan(f.patient.id)
            .await
            .unwrap()
            .is_none()
    );
    let new = |plan: &str, reason: &str| NewCarePlan {
        patient_id: f.patient.id,
        template: Some("hypertension".into()),
        plan: plan.into(),
        author: "dr.rossi".into(),
        reason: reason.into(),
    };
    let v1 = store
        .add_care_plan(&new("{\"a\":1}", "enrolment"))
        .await
        .unwrap();
    let v2 = store
        .add_care_plan(&new("{\"a\":2}", "titration"))
        .await
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    let current = store
        .current_care_plan(f.patient.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((current.version, current.plan.as_str()), (2, "{\"a\":2}"));
    let old = store
        .care_plan_version(f.patient.id, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (old.plan.as_str(), old.reason.as_str()),
        ("{\"a\":1}", "enrolment")
    );
    let all = store.list_care_plans(f.patient.id).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(
        store.care_plan_versions().await.unwrap(),
        vec![(f.patient.id, 2)]
    );
    assert!(matches!(
        store.add_care_plan(&new("{}", " ")).await,
        Err(StoreError::Invalid(_))
    ));
    let mut other = new("{}", "x");
    other.patient_id = 999_999;
    assert!(matches!(
        store.add_care_plan(&other).await,
        Err(StoreError::NotFound { .. })
    ));
}

fn trigger(patient_id: i64, severity: Severity, value: f64, seqs: &[i64]) -> Trigger {
    Trigger {
        patient_id,
        rule_id: "bp-high".into(),
        rule_kind: "threshold".into(),
        title: "Systolic high".into(),
        severity,
        plan_version: Some(1),
        metric: Some("systolic".into()),
        unit: Some("mmHg".into()),
        value: Some(value),
        higher_is_worse: true,
        readings: seqs
            .iter()
            .map(|&seq| AlertReading {
                device_id: "al-bp".into(),
                seq,
                measured_at: T0 + Duration::minutes(seq),
                value: Some(value),
            })
            .collect(),
        at: T0 + Duration::hours(1),
        due_at: Some(T0 + Duration::hours(3)),
        detail: None,
        unconfirmed: false,
    }
}

async fn alert_lifecycle(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = fixture(store, "al").await;
    let mut feed = store.alert_feed();
    let p = f.patient.id;

    let opened = store
        .trigger_alert(&trigger(p, Severity::High, 165.0, &[1, 2]))
        .await
        .unwrap();
    let TriggerOutcome::Opened { alert_id } = opened else {
        panic!("expected a new alert, got {opened:?}");
    };
    assert!(feed.has_changed().unwrap());
    // The same readings again (a re-evaluation after a restart) change nothing.
    assert_eq!(
        store
            .trigger_alert(&trigger(p, Severity::High, 165.0, &[2]))
            .await
            .unwrap(),
        TriggerOutcome::Unchanged { alert_id }
    );
    // A worse reading raises the severity in place.
    assert_eq!(
        store
            .trigger_alert(&trigger(p, Severity::Critical, 190.0, &[3]))
            .await
            .unwrap(),
        TriggerOutcome::Updated {
            alert_id,
            severity_raised: true,
            reactivated: false
        }
    );
    let a = store.get_alert(alert_id).await.unwrap().unwrap();
    assert_eq!(
        (a.severity, a.count, a.worst_value, a.last_value),
        (Severity::Critical, 3, Some(190.0), Some(190.0))
    );
    assert_eq!(a.condition, "active");
    assert_eq!(store.alert_readings(alert_id).await.unwrap().len(), 3);

    // Workflow: acknowledge, not twice; clear the condition; resolve; nothing after.
    let at = T0 + Duration::hours(2);
    let (a, ev) = store
        .acknowledge_alert(alert_id, "nurse.bianchi", at)
        .await
        .unwrap();
    assert_eq!(
        (a.workflow, ev.kind.as_str()),
        (Workflow::Acknowledged, "acknowledged")
    );
    assert!(matches!(
        store.acknowledge_alert(alert_id, "nurse.bianchi", at).await,
        Err(StoreError::InvalidTransition(_))
    ));
    store
        .assign_alert(alert_id, "nurse.bianchi", Some("nurse.verdi"), at)
        .await
        .unwrap();
    store
        .comment_alert(alert_id, "nurse.verdi", "called, no answer", at)
        .await
        .unwrap();
    // An older reading cannot clear it; a newer one does.
    assert_eq!(
        store
            .clear_alert(p, "bp-high", at, Some(T0), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .clear_alert(p, "bp-high", at, Some(T0 + Duration::minutes(30)), None)
            .await
            .unwrap(),
        Some(alert_id)
    );
    let a = store.get_alert(alert_id).await.unwrap().unwrap();
    assert_eq!(
        (a.condition.as_str(), a.workflow),
        ("cleared", Workflow::Acknowledged)
    );
    assert_eq!(a.assignee.as_deref(), Some("nurse.verdi"));
    let (a, _) = store
        .resolve_alert(alert_id, "nurse.verdi", "called_patient", Some("ok"), at)
        .await
        .unwrap();
    assert_eq!(
        (a.workflow, a.outcome.as_deref()),
        (Workflow::Resolved, Some("called_patient"))
    );
    for result in [
        store.acknowledge_alert(alert_id, "x", at).await,
        store
            .resolve_alert(alert_id, "x", "reading_error", None, at)
            .await,
        store.assign_alert(alert_id, "x", None, at).await,
    ] {
        assert!(
            matches!(result, Err(StoreError::InvalidTransition(_))),
            "{result:?}"
        );
    }
    assert!(matches!(
        store.acknowledge_alert(123_456, "x", at).await,
        Err(StoreError::NotFound { .. })
    ));
    let kinds: Vec<String> = store
        .alert_events(alert_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "severity_raised",
            "acknowledged",
            "assigned",
            "commented",
            "cleared",
            "resolved"
        ]
    );

    // Resolved: the next trigger opens a new alert, which escalates when overdue.
    let next = store
        .trigger_alert(&trigger(p, Severity::High, 170.0, &[10]))
        .await
        .unwrap();
    let TriggerOutcome::Opened { alert_id: second } = next else {
        panic!("expected a new alert, got {next:?}");
    };
    assert_ne!(second, alert_id);
    let due = T0 + Duration::hours(3);
    assert!(
        store
            .overdue_alerts(due - Duration::seconds(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let overdue = store.overdue_alerts(due, 10).await.unwrap();
    assert_eq!(
        overdue.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![second]
    );
    let ev = store
        .escalate_alert(second, due, due + Duration::hours(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.kind, "escalated");
    assert!(
        store
            .escalate_alert(second, due, due)
            .await
            .unwrap()
            .is_none(),
        "not due again yet"
    );

    // Listing: filters and triage order.
    let open = store
        .list_alerts(&AlertQuery {
            workflow: vec![Workflow::New, Workflow::Acknowledged],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(open.iter().map(|a| a.id).collect::<Vec<_>>(), vec![second]);
    let none = store
        .list_alerts(&AlertQuery {
            cot_ids: Some(vec![f.cot.id + 1000]),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let all = store
        .list_alerts(&AlertQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![alert_id, second],
        "critical first"
    );

    // The feed: every event in id order, resumable from any id.
    let events = store
        .alert_events_after(0, Some(&[f.cot.id]), 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 9);
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    let tail = store
        .alert_events_after(events[4].id, None, 100)
        .await
        .unwrap();
    assert_eq!(tail.len(), 4);
    assert_eq!(store.last_alert_event_id().await.unwrap(), events[8].id);
    assert_eq!(*feed.borrow_and_update(), events[8].id);
}

async fn outbox_and_fresh(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = fixture(store, "ob").await;
    let batch = CommitBatch {
        readings: vec![
            reading(&f.bp, 1, T0),
            reading(&f.bp, 2, T0 + Duration::minutes(1)),
        ],
        outbox: true,
        ..Default::default()
    };
    let first = store.commit_batch(&batch).await.unwrap();
    assert_eq!(first.fresh, vec![true, true]);
    // One patient: one entry, in the patient's alert partition.
    let [entry] = first.outbox[..] else {
        panic!("one outbox entry, got {:?}", first.outbox)
    };
    let id = entry.id;
    assert_eq!(entry.partition, store::leases::partition_of(f.patient.id));
    // All duplicates: no outbox entry.
    let again = store.commit_batch(&batch).await.unwrap();
    assert_eq!(
        (again.fresh, again.outbox),
        (vec![false, false], Vec::new())
    );
    let pending = store.pending_outbox().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].partition, entry.partition);
    // Filtered by partition, and by the node that wrote it (this store names none).
    let other = 1u64 << ((entry.partition + 1) % store::leases::PARTITIONS);
    assert!(
        store
            .pending_outbox_in(other, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .pending_outbox_in(1u64 << entry.partition, Some(""))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .pending_outbox_in(1u64 << entry.partition, Some("node-b"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(pending[0].patients, vec![f.patient.id]);
    assert_eq!(pending[0].min_received_at, T0 + Duration::seconds(5));
    assert_eq!(pending[0].max_received_at, T0 + Duration::seconds(65));
    store.finish_outbox(&[id]).await.unwrap();
    assert!(store.pending_outbox().await.unwrap().is_empty());
    let last = store.last_measured(T0 - Duration::days(1)).await.unwrap();
    assert_eq!(
        last,
        vec![(f.patient.id, "bp".to_owned(), T0 + Duration::minutes(1))]
    );

    // A batch over patients of several partitions: one entry per partition, each answered
    // with its own id (on PostgreSQL they are written by one statement).
    let mut readings = Vec::new();
    for i in 0..8 {
        let g = fixture(store, &format!("obp{i}")).await;
        readings.push(reading(&g.bp, 1, T0 + Duration::minutes(i)));
    }
    let parts: std::collections::BTreeSet<u32> = readings
        .iter()
        .map(|r| store::leases::partition_of(r.patient_id))
        .collect();
    assert!(parts.len() > 1, "{parts:?}");
    let done = store
        .commit_batch(&CommitBatch {
            readings: readings.clone(),
            outbox: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = store.pending_outbox().await.unwrap();
    assert_eq!(done.outbox.len(), parts.len());
    assert_eq!(pending.len(), parts.len());
    for entry in &done.outbox {
        let stored = pending.iter().find(|p| p.id == entry.id).unwrap();
        assert_eq!(stored.partition, entry.partition);
        let mut expected: Vec<i64> = readings
            .iter()
            .map(|r| r.patient_id)
            .filter(|&p| store::leases::partition_of(p) == entry.partition)
            .collect();
        expected.sort_unstable();
        let mut patients = stored.patients.clone();
        patients.sort_unstable();
        assert_eq!(patients, expected);
    }
}

/// The engine's writes of one script, in two twin worlds: one by one (`write_alert`, each its
/// own transaction) and in groups (`write_alerts`, one transaction each; on PostgreSQL the
/// set-by-set statements). Same answers, same alerts, same events.
async fn grouped_writes_match_one_by_one(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let mut solo = Vec::new();
    let mut grouped = Vec::new();
    for i in 0..3 {
        solo.push(fixture(store, &format!("gs{i}")).await);
        grouped.push(fixture(store, &format!("gg{i}")).await);
    }
    let feed = store.alert_feed();
    let mut answers: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (world, fixtures) in [&solo, &grouped].into_iter().enumerate() {
        for group in script(fixtures) {
            let done = if world == 0 {
                let mut done = Vec::new();
                for w in &group {
                    done.push(store.write_alert(w.clone()).await);
                }
                done
            } else {
                store.write_alerts(&group).await
            };
            assert_eq!(done.len(), group.len());
            for d in done {
                answers[world].push(answer(store, fixtures, d).await);
            }
        }
    }
    assert!(feed.has_changed().unwrap());
    assert_eq!(answers[0], answers[1]);
    // The script reaches every kind of answer.
    for kind in [
        "opened",
        "unchanged",
        "updated",
        "severity_raised",
        "reactivated",
        "cleared",
        "not cleared",
        "downgraded",
        "confirmed",
        "no unconfirmed",
        "not found",
    ] {
        assert!(
            answers[0].iter().any(|a| a.starts_with(kind)),
            "no {kind} in {:?}",
            answers[0]
        );
    }
    let (a, b) = (world(store, &solo).await, world(store, &grouped).await);
    assert_eq!(a.len(), 8, "{a:?}");
    assert_eq!(a, b);
}

/// Groups of writes touching every path: opened, unchanged, severity raised, reactivated,
/// cleared (and not: no alert, an older reading), confirmed, downgraded, a missing patient,
/// and the same (patient, rule) twice in one group, and runs of triggers and clears on one
/// alert.
fn script(f: &[Fixture]) -> Vec<Vec<AlertWrite>> {
    let (p0, p1, p2) = (f[0].patient.id, f[1].patient.id, f[2].patient.id);
    let on = |p: i64, rule: &str, severity: Severity, value: f64, seqs: &[i64], single: bool| {
        let mut t = trigger(p, severity, value, seqs);
        t.rule_id = rule.into();
        t.unconfirmed = single;
        t.detail = Some(format!("{{\"v\":{value}}}"));
        for r in &mut t.readings {
            r.device_id = format!("{rule}-{p}");
        }
        AlertWrite::Trigger(t)
    };
    let clear = |p: i64, rule: &str, minutes: i64| AlertWrite::Clear {
        patient_id: p,
        rule_id: rule.into(),
        at: T0 + Duration::hours(2),
        measured_at: Some(T0 + Duration::minutes(minutes)),
        detail: None,
    };
    let confirm = |p: i64, rule: &str, what: Confirmation| AlertWrite::Confirm {
        patient_id: p,
        rule_id: rule.into(),
        at: T0 + Duration::hours(2),
        what,
        detail: Some("{\"repeat\":true}".into()),
    };
    vec![
        vec![
            on(p0, "bp-high", Severity::High, 182.0, &[1], true),
            on(p1, "bp-high", Severity::Medium, 150.0, &[1, 2], false),
            clear(p2, "bp-high", 5),
            confirm(p2, "bp-high", Confirmation::Confirmed),
            on(p0, "bp-high", Severity::High, 182.0, &[1], true),
            on(p0, "spo2-low", Severity::Critical, 85.0, &[3], true),
        ],
        vec![
            on(p1, "bp-high", Severity::High, 170.0, &[3], false),
            confirm(
                p0,
                "bp-high",
                Confirmation::Downgraded {
                    severity: Severity::Medium,
                    due_at: Some(T0 + Duration::hours(6)),
                },
            ),
            confirm(p0, "spo2-low", Confirmation::Confirmed),
            clear(p0, "spo2-low", 10),
        ],
        vec![
            on(p0, "spo2-low", Severity::Critical, 84.0, &[4], false),
            clear(p1, "bp-high", 0),
            clear(p1, "bp-high", 20),
            on(p2, "glucose-low", Severity::High, 50.0, &[7], false),
        ],
        vec![
            on(999_999, "bp-high", Severity::High, 190.0, &[9], false),
            on(p2, "bp-high", Severity::Medium, 155.0, &[8], false),
        ],
        // Runs of triggers and clears on one alert, interleaved with others' and cut by a
        // confirmation: each write decided on the alert as the one before it left it (a
        // clear with none open, one older than the last reading, one already cleared).
        stamped(vec![
            on(p2, "spo2-low", Severity::Medium, 91.0, &[20], false),
            on(p1, "bp-high", Severity::High, 171.0, &[30], false),
            on(p2, "spo2-low", Severity::Medium, 90.0, &[20, 21], false),
            on(p2, "spo2-low", Severity::High, 88.0, &[21], false),
            on(p1, "bp-high", Severity::High, 172.0, &[30, 31], false),
            on(p2, "glucose-high", Severity::High, 300.0, &[50], true),
            on(p2, "spo2-low", Severity::High, 87.0, &[22], false),
            on(p2, "glucose-high", Severity::High, 310.0, &[51], true),
            clear(p2, "spo2-low", 40),
            confirm(p2, "glucose-high", Confirmation::Confirmed),
            on(p2, "spo2-low", Severity::High, 86.0, &[41], false),
            on(p2, "glucose-high", Severity::Critical, 320.0, &[52], false),
            on(p2, "spo2-low", Severity::Critical, 80.0, &[42, 42], false),
            on(p2, "spo2-low", Severity::Critical, 79.0, &[43], false),
            clear(p0, "temp-high", 5),
            on(p0, "temp-high", Severity::High, 39.0, &[60], false),
            clear(p0, "temp-high", 59),
            clear(p0, "temp-high", 61),
            clear(p0, "temp-high", 62),
            on(p0, "temp-high", Severity::High, 39.5, &[63], false),
        ]),
    ]
}

/// Each trigger of `group` a minute after the one before, so the order shows in the alerts.
fn stamped(mut group: Vec<AlertWrite>) -> Vec<AlertWrite> {
    for (n, w) in (0i64..).zip(&mut group) {
        if let AlertWrite::Trigger(t) = w {
            t.at = T0 + Duration::hours(1) + Duration::minutes(n);
        }
    }
    group
}

/// An answer in words, alerts named by (patient number, rule) so the two worlds compare.
async fn answer(
    store: &store::Store,
    f: &[Fixture],
    done: Result<AlertWritten, StoreError>,
) -> String {
    let who = |id: i64| async move {
        let a = store.get_alert(id).await.unwrap().unwrap();
        let n = f.iter().position(|f| f.patient.id == a.patient_id).unwrap();
        format!("{n}/{}", a.rule_id)
    };
    match done {
        Ok(AlertWritten::Trigger(TriggerOutcome::Opened { alert_id })) => {
            format!("opened {}", who(alert_id).await)
        }
        Ok(AlertWritten::Trigger(TriggerOutcome::Unchanged { alert_id })) => {
            format!("unchanged {}", who(alert_id).await)
        }
        Ok(AlertWritten::Trigger(TriggerOutcome::Updated {
            alert_id,
            severity_raised,
            reactivated,
        })) => {
            let kind = if severity_raised {
                "severity_raised"
            } else if reactivated {
                "reactivated"
            } else {
                "updated"
            };
            format!("{kind} {}", who(alert_id).await)
        }
        Ok(AlertWritten::Clear(Some(id))) => format!("cleared {}", who(id).await),
        Ok(AlertWritten::Clear(None)) => "not cleared".into(),
        Ok(AlertWritten::Confirm(Some(e))) => {
            format!("{} {:?} {}", e.kind, e.severity, who(e.alert_id).await)
        }
        Ok(AlertWritten::Confirm(None)) => "no unconfirmed".into(),
        Err(StoreError::NotFound { .. }) => "not found".into(),
        Err(e) => format!("error {e}"),
    }
}

/// Every alert of the fixtures' patients with its events, without ids.
async fn world(store: &store::Store, fixtures: &[Fixture]) -> Vec<(serde_json::Value, String)> {
    let mut rows = Vec::new();
    for f in fixtures {
        let mut alerts = store
            .list_alerts(&AlertQuery {
                patient_id: Some(f.patient.id),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        alerts.sort_by(|a, b| (&a.rule_id, a.id).cmp(&(&b.rule_id, b.id)));
        for a in alerts {
            let events: Vec<_> = store
                .alert_events(a.id)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.kind, e.severity, e.at, e.actor, e.detail))
                .collect();
            // Device ids name the patient, which differs between the worlds.
            let links: Vec<_> = store
                .alert_readings(a.id)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.seq, r.measured_at, r.value))
                .collect();
            let mut row = serde_json::to_value(&a).unwrap();
            for k in ["id", "patient_id", "cot_id"] {
                row.as_object_mut().unwrap().remove(k);
            }
            rows.push((row, format!("{events:?} {links:?}")));
        }
    }
    rows
}
