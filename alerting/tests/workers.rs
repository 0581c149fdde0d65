//! The engine's workers: patients of different workers are evaluated at the same time, and
//! each patient's readings stay in order across batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alerting::{AlertsConfig, Committed, Engine, EngineMetrics, system_clock};
use store::testing::TestDb;
use store::{CommitBatch, DeviceKind, NewDevice, NewPatient, NewReading, ReadingKind, Store};
use time::OffsetDateTime;

const PATIENTS: i64 = 16;
/// Makes each reading's evaluation last long enough for the workers to overlap.
const DELAY: Duration = Duration::from_millis(30);

/// Enrols `PATIENTS` hypertensive patients with a cuff each; returns (patient, device).
async fn enrol(store: &Store) -> Vec<(i64, String)> {
    let cot = store.add_cot("COT-W", "Workers").await.expect("cot");
    let mut out = Vec::new();
    for n in 0..PATIENTS {
        let p = store
            .add_patient(&NewPatient {
                cot_id: cot.id,
                code: format!("W{n:03}"),
                display_name: format!("Patient {n}"),
                birth_year: None,
                conditions: vec!["hypertension".into()],
            })
            .await
            .expect("patient");
        let device = format!("bp-w{n:03}");
        store
            .add_device(&NewDevice {
                id: device.clone(),
                patient_id: p.id,
                kind: DeviceKind::BloodPressure,
                secret_hash: store::credentials::hash_secret("secret-not-used"),
                model: None,
            })
            .await
            .expect("device");
        out.push((p.id, device));
    }
    out
}

fn bp(patient: i64, device: &str, seq: i64, at: OffsetDateTime, sys: f32, dia: f32) -> NewReading {
    let mut r = NewReading::bare(device, seq, patient, ReadingKind::BloodPressure, at, at);
    r.systolic = Some(sys);
    r.diastolic = Some(dia);
    r.pulse = Some(70.0);
    r.source_unit = Some("mmHg".into());
    r
}

async fn commit(store: &Store, readings: Vec<NewReading>) -> Committed {
    let outcome = store
        .commit_batch(&CommitBatch {
            readings: readings.clone(),
            outbox: true,
            ..CommitBatch::default()
        })
        .await
        .expect("commit");
    Committed {
        readings,
        outbox: outcome.outbox.clone(),
        committed: Instant::now(),
    }
}

/// An engine on `store` with `config` on the system clock, and its metrics.
fn engine(store: &Store, config: AlertsConfig) -> (Engine, Arc<EngineMetrics>) {
    let metrics = Arc::new(EngineMetrics::default());
    let engine = Engine::new(store.clone(), config, system_clock(), metrics.clone());
    (engine, metrics)
}

/// Two batches for every patient: a crisis reading (an unconfirmed alert), then a normal one
/// a minute later (it settles the alert: not confirmed, condition cleared). Evaluated in the
/// wrong order, the alert would stay active and unconfirmed. Returns the engine's metrics.
async fn two_batches(db: &TestDb, workers: usize) -> Arc<EngineMetrics> {
    let store = &db.store;
    let who = enrol(store).await;
    let (mut engine, metrics) = engine(
        store,
        AlertsConfig {
            workers,
            evaluation_delay: DELAY,
            ..AlertsConfig::default()
        },
    );
    let t0 = OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let crisis = who
        .iter()
        .map(|(p, d)| bp(*p, d, 1, t0, 200.0, 122.0))
        .collect();
    let normal = who
        .iter()
        .map(|(p, d)| bp(*p, d, 2, t0 + time::Duration::minutes(1), 124.0, 78.0))
        .collect();
    let first = commit(store, crisis).await;
    let second = commit(store, normal).await;
    engine.on_batch(first).await;
    engine.on_batch(second).await;

    assert_eq!(
        metrics.readings_evaluated.load(Ordering::Relaxed),
        2 * PATIENTS as u64
    );
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 0);
    for (patient, _) in &who {
        let alerts = store.open_alerts(*patient).await.expect("alerts");
        let crisis: Vec<_> = alerts
            .iter()
            .filter(|a| a.metric.as_deref() == Some("systolic") || a.rule_id.contains("sys"))
            .collect();
        assert!(
            !crisis.is_empty(),
            "patient {patient}: no alert for the crisis reading: {alerts:?}"
        );
        for a in crisis {
            assert_eq!(
                a.confirmation.as_deref(),
                Some("not_confirmed"),
                "patient {patient}: the later normal reading did not settle {} (order lost?)",
                a.rule_id
            );
            assert_ne!(
                a.condition, "active",
                "patient {patient}: {} still active after the normal reading",
                a.rule_id
            );
        }
    }
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_evaluate_patients_at_once_each_in_order_postgres() {
    let db = TestDb::postgres().await;
    let metrics = two_batches(&db, 4).await;
    // Every batch holds patients of all 4 workers, each evaluating for a while (the delay):
    // all 4 were busy at the same time.
    assert_eq!(metrics.workers_busy_peak.load(Ordering::Relaxed), 4);
    assert_eq!(metrics.workers_busy.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_evaluate_patients_at_once_each_in_order_sqlite() {
    let db = TestDb::sqlite().await;
    let metrics = two_batches(&db, 4).await;
    assert_eq!(metrics.workers_busy_peak.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_evaluates_one_patient_at_a_time() {
    let db = TestDb::postgres().await;
    let metrics = two_batches(&db, 1).await;
    assert_eq!(metrics.workers_busy_peak.load(Ordering::Relaxed), 1);
}

/// An alert write that fails (sent without waiting, settled at the end of the step) keeps its
/// step's outbox entries, and its patient's state is read back from the store: the next step
/// evaluates from what is stored, and the catch-up that follows does what the failed writes
/// should have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_alert_write_keeps_its_batches_in_the_outbox() {
    let db = TestDb::postgres().await;
    let store = &db.store;
    let who = enrol(store).await;
    let (mut engine, metrics) = engine(
        store,
        AlertsConfig {
            workers: 4,
            ..AlertsConfig::default()
        },
    );
    let t0 = OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let at = |m: i64| t0 + time::Duration::minutes(m);
    let crisis = who
        .iter()
        .map(|(p, d)| bp(*p, d, 1, at(0), 200.0, 122.0))
        .collect();
    engine.on_batch(commit(store, crisis).await).await;
    assert_eq!(
        engine.catch_up().await.expect("catch-up"),
        0,
        "all evaluated"
    );
    for (patient, _) in &who {
        let open = store.open_alerts(*patient).await.expect("alerts");
        assert!(open.iter().any(|a| a.condition == "active"), "{open:?}");
    }

    // Every alert write fails from here: an event can no longer be appended.
    db.exec("ALTER TABLE alert_events ADD CONSTRAINT no_events CHECK (false) NOT VALID")
        .await
        .expect("constraint");
    let normal = who
        .iter()
        .map(|(p, d)| bp(*p, d, 2, at(1), 124.0, 78.0))
        .collect();
    let second = commit(store, normal).await;
    let again = who
        .iter()
        .map(|(p, d)| bp(*p, d, 3, at(2), 122.0, 76.0))
        .collect();
    let third = commit(store, again).await;
    let kept = second.outbox.len() + third.outbox.len();
    assert!(kept > 0);
    // The second step's confirmations and clears are sent without waiting and fail; so do the
    // third's, from the states read back.
    engine.on_batches(vec![second]).await;
    engine.on_batches(vec![third]).await;
    assert_eq!(metrics.alerts_cleared.load(Ordering::Relaxed), 0);
    db.exec("ALTER TABLE alert_events DROP CONSTRAINT no_events")
        .await
        .expect("drop constraint");

    // Both steps' entries were kept: the catch-up evaluates them from the store.
    assert_eq!(engine.catch_up().await.expect("catch-up"), kept);
    assert!(metrics.errors.load(Ordering::Relaxed) >= PATIENTS as u64);
    for (patient, _) in &who {
        let open = store.open_alerts(*patient).await.expect("alerts");
        assert!(
            open.iter().all(|a| a.condition != "active"),
            "patient {patient}: {open:?}"
        );
    }
    assert_eq!(
        engine.catch_up().await.expect("catch-up"),
        0,
        "nothing left"
    );
}

/// A step whose batches wait in the queue longer than the engine's "behind" mark takes long
/// turns on the runtime (a yield every 512 readings instead of every 32), so the alerts catch
/// up rather than queue behind every device connection; a step on time keeps short turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_starts_behind_takes_long_turns() {
    let db = TestDb::sqlite().await;
    let store = &db.store;
    let who = enrol(store).await;
    let (patient, device) = &who[0];
    let (mut engine, metrics) = engine(
        store,
        AlertsConfig {
            workers: 1,
            ..AlertsConfig::default()
        },
    );
    let t0 = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let readings = |from: i64| -> Vec<NewReading> {
        (from..from + 1024)
            .map(|i| {
                bp(
                    *patient,
                    device,
                    i,
                    t0 + time::Duration::seconds(i),
                    124.0,
                    78.0,
                )
            })
            .collect()
    };
    let yields = || metrics.yields.load(Ordering::Relaxed);

    let on_time = commit(store, readings(0)).await;
    engine.on_batches(vec![on_time]).await;
    assert_eq!(metrics.steps_behind.load(Ordering::Relaxed), 0);
    let short = yields();
    assert!(
        short >= 1024 / 32,
        "{short} yields for 1,024 readings on time"
    );

    let mut late = commit(store, readings(1024)).await;
    late.committed = Instant::now() - Duration::from_secs(1);
    engine.on_batches(vec![late]).await;
    assert_eq!(metrics.steps_behind.load(Ordering::Relaxed), 1);
    let long = yields() - short;
    assert!(
        long <= 1024 / 512,
        "{long} yields for 1,024 readings behind"
    );
    assert_eq!(metrics.readings_evaluated.load(Ordering::Relaxed), 2048);
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 0);
    // Where a late alert's time went: both steps timed, and only the second started a
    // second after its batch's commit.
    let mut text = String::new();
    metrics.render_prometheus(&mut text);
    for line in [
        "sentinella_alert_step_wait_seconds_bucket{le=\"0.5\"} 1\n",
        "sentinella_alert_step_wait_seconds_bucket{le=\"1\"} 1\n",
        "sentinella_alert_step_wait_seconds_count 2\n",
        "sentinella_alert_step_seconds_count 2\n",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    assert!(metrics.settle_seconds.count() >= 2);
}

/// A patient's crisis readings, each over 30 minutes after the one before (each a single
/// reading's alert, high): the first one's trigger waits for its answer (an alert may open,
/// unconfirmed); the repeats in the same step update an alert the worker knows open and are
/// sent without waiting. A nurse then resolves them; the next crisis reading,
/// sent without waiting as an update, opens new alerts, and the end of its step learns so:
/// the normal reading of the next step settles them (not confirmed, cleared).
async fn a_stream_waits_once_and_a_resolved_alert_opens_again(db: &TestDb) {
    let store = &db.store;
    let who = enrol(store).await;
    let (mut engine, metrics) = engine(store, AlertsConfig::default());
    let t0 = OffsetDateTime::now_utc() - time::Duration::hours(3);
    let at = |m: i64| t0 + time::Duration::minutes(m);
    let stream = who
        .iter()
        .flat_map(|(p, d)| (1..=3).map(|s| bp(*p, d, s, at(31 * s), 200.0 + s as f32, 122.0)))
        .collect();
    engine.on_batch(commit(store, stream).await).await;
    let opened = metrics.alerts_opened.load(Ordering::Relaxed);
    assert!(opened >= PATIENTS as u64, "{opened} alerts opened");
    assert_eq!(
        metrics.alert_write_waits.load(Ordering::Relaxed),
        opened,
        "only the triggers that opened an alert waited for it"
    );
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 0);
    for (patient, _) in &who {
        for a in store.open_alerts(*patient).await.expect("alerts") {
            assert_eq!(
                a.confirmation.as_deref(),
                Some("confirmed"),
                "patient {patient}: {} was repeated",
                a.rule_id
            );
            store
                .resolve_alert(a.id, "nurse.test", "called_patient", None, at(100))
                .await
                .expect("resolve");
        }
    }

    let crisis = who.iter().map(|(p, d)| bp(*p, d, 4, at(124), 200.0, 122.0));
    engine.on_batch(commit(store, crisis.collect()).await).await;
    assert_eq!(
        metrics.alert_write_waits.load(Ordering::Relaxed),
        opened,
        "the worker knew the alerts open: nothing waited"
    );
    assert_eq!(
        metrics.alerts_opened.load(Ordering::Relaxed),
        2 * opened,
        "every resolved alert opened again"
    );
    let normal = who.iter().map(|(p, d)| bp(*p, d, 5, at(125), 124.0, 78.0));
    engine.on_batch(commit(store, normal.collect()).await).await;
    assert_eq!(metrics.errors.load(Ordering::Relaxed), 0);
    for (patient, _) in &who {
        let alerts = store.open_alerts(*patient).await.expect("alerts");
        assert!(!alerts.is_empty(), "patient {patient}: not opened again");
        for a in alerts {
            assert_eq!(
                a.confirmation.as_deref(),
                Some("not_confirmed"),
                "patient {patient}: the normal reading did not settle {} (opened unknown to the worker?)",
                a.rule_id
            );
            assert_ne!(a.condition, "active", "patient {patient}: {}", a.rule_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waits_once_and_a_resolved_alert_opens_again_postgres() {
    let db = TestDb::postgres().await;
    a_stream_waits_once_and_a_resolved_alert_opens_again(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waits_once_and_a_resolved_alert_opens_again_sqlite() {
    let db = TestDb::sqlite().await;
    a_stream_waits_once_and_a_resolved_alert_opens_again(&db).await;
}
