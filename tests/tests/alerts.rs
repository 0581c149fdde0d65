//! Golden clinical scenarios end to end: a device publishes through the edge and the broker,
//! the gateway commits, the alert engine evaluates, and the alerts in the store are checked.
//! Time-driven rules (adherence, escalation) run on a test clock the test moves forward.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use alerting::plan;
use e2e::harness::{Db, Launch, RawDevice, Stack, now_ms, topic};
use store::{
    Alert, AlertQuery, DeviceKind, NewCarePlan, NewReading, ReadingKind, Severity, Workflow,
};
use time::OffsetDateTime;

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<Mutex<OffsetDateTime>>);

impl TestClock {
    fn new() -> TestClock {
        TestClock::at(OffsetDateTime::now_utc())
    }
    fn at(t: OffsetDateTime) -> TestClock {
        TestClock(Arc::new(Mutex::new(t)))
    }
    fn clock(&self) -> alerting::Clock {
        let t = self.0.clone();
        Arc::new(move || *t.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn advance(&self, by: time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += by;
    }
}

/// A node on `clock` with fast timers.
fn on_test_clock(clock: &TestClock) -> Launch<'static> {
    Launch {
        clock: Some(clock.clock()),
        ..Launch::configured(fast)
    }
}

fn fast(config: &mut sentinella::Config) {
    config.alerts.tick = Duration::from_millis(100);
}

const MIN: i64 = 60_000;

fn bp(seq: u32, ts: i64, sys: u32, dia: u32) -> String {
    format!(
        r#"{{"seq":{seq},"ts":{ts},"kind":"bp","sys":{sys},"dia":{dia},"pulse":72,"unit":"mmHg"}}"#
    )
}

fn spo2(seq: u32, ts: i64, v: u32) -> String {
    format!(r#"{{"seq":{seq},"ts":{ts},"kind":"spo2","spo2":{v},"pulse":80}}"#)
}

fn batch(readings: &[String]) -> String {
    format!(r#"{{"v":1,"readings":[{}]}}"#, readings.join(","))
}

async fn alerts_of(stack: &Stack, patient: i64) -> Vec<Alert> {
    stack
        .store()
        .list_alerts(&AlertQuery {
            patient_id: Some(patient),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap_or_default()
}

/// Waits until `check` holds on the patient's alerts (or fails after 10 s).
async fn wait_alerts(
    stack: &Stack,
    patient: i64,
    what: &str,
    check: impl Fn(&[Alert]) -> bool,
) -> Vec<Alert> {
    for _ in 0..200 {
        let alerts = alerts_of(stack, patient).await;
        if check(&alerts) {
            return alerts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: alerts are {:#?}", alerts_of(stack, patient).await);
}

struct Patient {
    id: i64,
    device: String,
    dev: RawDevice,
    readings: String,
}

async fn patient(stack: &Stack, conditions: &[&str], kind: DeviceKind) -> anyhow::Result<Patient> {
    let p = stack.patient(conditions).await?;
    let creds = stack.device(p.id, kind).await?;
    let mut dev = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
    dev.connected().await.map_err(anyhow::Error::msg)?;
    Ok(Patient {
        id: p.id,
        device: creds.id.clone(),
        dev,
        readings: topic(&creds.id, "readings"),
    })
}

/// Lets the pipeline settle (commit, engine) before asserting that nothing happened.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

async fn clinical_scenarios(db: Db) -> anyhow::Result<()> {
    let clock = TestClock::new();
    let db = db.create().await;
    let stack = Stack::start_on(db, on_test_clock(&clock)).await?;
    let t = now_ms();

    // Hypertensive crisis: critical on the first reading (unconfirmed), confirmed by the
    // repeat: exactly one alert.
    let crisis = patient(&stack, &["hypertension"], DeviceKind::BloodPressure).await?;
    crisis
        .dev
        .publish(&crisis.readings, batch(&[bp(1, t - 6 * MIN, 192, 112)]))
        .await?;
    wait_alerts(&stack, crisis.id, "first severe reading", |a| {
        a.len() == 1
            && a[0].severity == Severity::Critical
            && a[0].confirmation.as_deref() == Some("unconfirmed")
    })
    .await;
    crisis
        .dev
        .publish(&crisis.readings, batch(&[bp(2, t - MIN, 188, 108)]))
        .await?;
    let alerts = wait_alerts(&stack, crisis.id, "confirmed crisis", |a| {
        a.len() == 1
            && a[0].severity == Severity::Critical
            && a[0].confirmation.as_deref() == Some("confirmed")
    })
    .await;
    let alert = &alerts[0];
    assert_eq!(
        (alert.rule_id.as_str(), alert.count, alert.workflow),
        ("bp-high", 2, Workflow::New)
    );
    assert_eq!(
        alert.plan_version, None,
        "no stored plan: the template for the conditions"
    );
    assert_eq!(stack.store().alert_readings(alert.id).await?.len(), 2);

    // COPD patient at a baseline of 89 %: nothing under scale 2.
    let copd = patient(&stack, &["copd"], DeviceKind::Spo2).await?;
    let baseline: Vec<String> = (1..=8)
        .map(|s| spo2(s, t - (20 - i64::from(s)) * 60 * MIN, 89))
        .collect();
    copd.dev.publish(&copd.readings, batch(&baseline)).await?;
    settle().await;
    stack
        .wait_readings(&copd.device, 8, Duration::from_secs(10))
        .await?;
    settle().await;
    assert!(alerts_of(&stack, copd.id).await.is_empty());

    // A single low under scale 2 (≤83 %, NEWS2 3) alerts at once, unconfirmed; the repeat
    // confirms it.
    copd.dev
        .publish(&copd.readings, batch(&[spo2(9, t - 10 * MIN, 82)]))
        .await?;
    wait_alerts(&stack, copd.id, "one low reading", |a| {
        a.iter().any(|x| {
            x.rule_id == "spo2-low"
                && x.severity == Severity::Critical
                && x.confirmation.as_deref() == Some("unconfirmed")
        })
    })
    .await;
    copd.dev
        .publish(&copd.readings, batch(&[spo2(10, t - 5 * MIN, 83)]))
        .await?;
    let alerts = wait_alerts(&stack, copd.id, "two consecutive lows", |a| {
        a.iter().any(|x| {
            x.rule_id == "spo2-low"
                && x.severity == Severity::Critical
                && x.confirmation.as_deref() == Some("confirmed")
                && x.worst_value == Some(82.0)
        })
    })
    .await;
    let low = alerts
        .iter()
        .find(|a| a.rule_id == "spo2-low")
        .map(|a| a.id)
        .unwrap_or(0);

    // Back in range: the condition clears, the alert stays for the nurse.
    copd.dev
        .publish(&copd.readings, batch(&[spo2(11, t - MIN, 90)]))
        .await?;
    wait_alerts(&stack, copd.id, "cleared", |a| {
        a.iter()
            .any(|x| x.id == low && x.condition == "cleared" && x.workflow == Workflow::New)
    })
    .await;

    // Unacknowledged past its response time (critical: 15 min): escalates.
    clock.advance(time::Duration::minutes(16));
    let alerts = wait_alerts(&stack, crisis.id, "escalation", |a| {
        a[0].escalation_level == 1
    })
    .await;
    let events = stack.store().alert_events(alerts[0].id).await?;
    assert!(events.iter().any(|e| e.kind == "escalated"), "{events:?}");
    // Acknowledged alerts do not escalate.
    stack
        .store()
        .acknowledge_alert(alerts[0].id, "nurse", clock.clock()())
        .await?;
    clock.advance(time::Duration::hours(3));
    settle().await;
    let crisis_alert = alerts_of(&stack, crisis.id).await;
    assert_eq!(
        crisis_alert
            .iter()
            .find(|a| a.rule_id == "bp-high")
            .map(|a| a.escalation_level),
        Some(1)
    );

    // Missed measurements: a stored hypertension plan expects BP every 12 h (+14 h grace: a whole day without BP).
    let quiet = stack.patient(&["hypertension"]).await?;
    // A cuff that never measures (without a device of the kind, nothing can be missed).
    stack.device(quiet.id, DeviceKind::BloodPressure).await?;
    let template = plan::template("hypertension").unwrap_or_else(|| unreachable!());
    stack
        .store()
        .add_care_plan(&NewCarePlan {
            patient_id: quiet.id,
            template: Some("hypertension".into()),
            plan: serde_json::to_string(&template)?,
            author: "dr.test".into(),
            reason: "enrolment".into(),
        })
        .await?;
    settle().await; // the engine meets the plan and starts its adherence clock
    assert!(alerts_of(&stack, quiet.id).await.is_empty());
    clock.advance(time::Duration::hours(27));
    let alerts = wait_alerts(&stack, quiet.id, "adherence", |a| {
        a.iter().any(|x| x.rule_id == "missed-bp")
    })
    .await;
    assert_eq!(
        alerts
            .iter()
            .find(|a| a.rule_id == "missed-bp")
            .map(|a| a.plan_version),
        Some(Some(1))
    );

    // A restart mid-scenario changes nothing: the same crisis reading resent, and a new
    // one, update the same alert.
    crisis.dev.close();
    copd.dev.close();
    let db = stack.stop().await;
    let stack = Stack::start_on(db, on_test_clock(&clock)).await?;
    // (30 h have passed on the engine's clock: the crisis patient has missed BP readings too.)
    let bp_high = |a: &[Alert]| {
        a.iter()
            .filter(|x| x.rule_id == "bp-high")
            .cloned()
            .collect::<Vec<_>>()
    };
    let crisis_alerts = bp_high(&alerts_of(&stack, crisis.id).await);
    assert_eq!(crisis_alerts.len(), 1);
    let before = crisis_alerts[0].count;
    let dev_id = stack.store().list_devices(None, Some(crisis.id)).await?[0]
        .id
        .clone();
    // The device's secret is gone; re-evaluation after a restart goes through the outbox:
    // a batch committed with an outbox entry but never evaluated (a crash in between).
    let again = NewReading {
        systolic: Some(195.0),
        diastolic: Some(100.0),
        pulse: Some(80.0),
        ..NewReading::bare(
            &dev_id,
            3,
            crisis.id,
            ReadingKind::BloodPressure,
            OffsetDateTime::now_utc(),
            OffsetDateTime::now_utc(),
        )
    };
    stack
        .store()
        .commit_batch(&store::CommitBatch {
            readings: vec![again],
            outbox: true,
            ..Default::default()
        })
        .await?;
    let db = stack.stop().await;
    let stack = Stack::start_on(db, on_test_clock(&clock)).await?;
    let after = wait_alerts(&stack, crisis.id, "outbox re-evaluation", |a| {
        bp_high(a).first().is_some_and(|x| x.count > before)
    })
    .await;
    let after = bp_high(&after);
    assert_eq!(after.len(), 1, "still one alert for the crisis: {after:#?}");
    assert_eq!(after[0].count, before + 1);
    // Once evaluated, the outbox entry is gone.
    let mut pending = stack.store().pending_outbox().await?;
    for _ in 0..100 {
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        pending = stack.store().pending_outbox().await?;
    }
    assert!(pending.is_empty(), "{pending:?}");
    stack.stop().await;
    Ok(())
}

/// A backlog delivered days late (a device that was offline) raises no current alert, only a
/// low-severity review of the out-of-range readings; a replay of it changes nothing.
async fn late_backlog(db: Db) -> anyhow::Result<()> {
    let clock = TestClock::new();
    let db = db.create().await;
    let stack = Stack::start_on(db, on_test_clock(&clock)).await?;
    let t = now_ms();
    let day = 24 * 60 * MIN;
    let p = patient(&stack, &["hypertension"], DeviceKind::BloodPressure).await?;
    let backlog = vec![
        bp(1, t - 2 * day, 130, 80),
        bp(2, t - 2 * day + 5 * MIN, 195, 115),
        bp(3, t - 2 * day + 10 * MIN, 192, 112),
        bp(4, t - 120 * MIN, 128, 79), // not late: keeps the adherence clock happy
    ];
    p.dev.publish(&p.readings, batch(&backlog)).await?;
    let alerts = wait_alerts(&stack, p.id, "late review", |a| {
        a.iter().any(|x| x.rule_id == "late-review")
    })
    .await;
    assert!(
        alerts.iter().all(|a| a.rule_id != "bp-high"),
        "a replayed crisis raised a current alert: {alerts:#?}"
    );
    let review = alerts
        .iter()
        .find(|a| a.rule_id == "late-review")
        .map(|a| (a.id, a.severity, a.count));
    let Some((review_id, severity, count)) = review else {
        unreachable!("checked above")
    };
    assert_eq!((severity, count), (Severity::Low, 2));
    // The same backlog again (the device never got its ack): stored once, nothing new.
    p.dev.publish(&p.readings, batch(&backlog)).await?;
    settle().await;
    let again = alerts_of(&stack, p.id).await;
    assert_eq!(again.len(), alerts.len(), "{again:#?}");
    assert_eq!(
        again.iter().find(|a| a.id == review_id).map(|a| a.count),
        Some(2)
    );
    // A current reading in the same range does raise the current alert.
    p.dev
        .publish(&p.readings, batch(&[bp(5, now_ms(), 196, 114)]))
        .await?;
    wait_alerts(&stack, p.id, "current crisis", |a| {
        a.iter().any(|x| x.rule_id == "bp-high")
    })
    .await;
    stack.stop().await;
    Ok(())
}

/// Adherence is judged on measurement time: a backlog measured during a gap meets the
/// schedule (its missed-measurement alert clears), and a patient without a device of a kind
/// misses nothing of it. The engine's clock runs 30 h behind the wall clock, so readings the
/// device dates in the past are late for the gateway and current for the schedule.
async fn adherence_on_measurement_time(db: Db) -> anyhow::Result<()> {
    let start = OffsetDateTime::now_utc() - time::Duration::hours(30);
    let clock = TestClock::at(start);
    let db = db.create().await;
    let stack = Stack::start_on(db, on_test_clock(&clock)).await?;
    let p = patient(
        &stack,
        &["hypertension", "diabetes"],
        DeviceKind::BloodPressure,
    )
    .await?;
    settle().await; // the engine meets the patient and starts the adherence clock
    clock.advance(time::Duration::hours(27));
    let alerts = wait_alerts(&stack, p.id, "missed BP", |a| {
        a.iter()
            .any(|x| x.rule_id == "missed-bp" && x.condition == "active")
    })
    .await;
    // Diabetes composes a glucose schedule, but the patient has no meter: nothing missed.
    assert!(
        alerts.iter().all(|x| x.rule_id != "missed-glucose"),
        "{alerts:#?}"
    );
    // The cuff was offline: its backlog, measured 20 and 10 hours ago, arrives now.
    let t = now_ms();
    let backlog = [
        bp(1, t - 20 * 60 * MIN, 128, 80),
        bp(2, t - 10 * 60 * MIN, 131, 82),
    ];
    p.dev.publish(&p.readings, batch(&backlog)).await?;
    let alerts = wait_alerts(&stack, p.id, "adherence met by the backlog", |a| {
        a.iter()
            .any(|x| x.rule_id == "missed-bp" && x.condition == "cleared")
    })
    .await;
    assert!(
        alerts.iter().all(|x| x.rule_id != "late-review"),
        "{alerts:#?}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adherence_on_measurement_time_sqlite() -> anyhow::Result<()> {
    adherence_on_measurement_time(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adherence_on_measurement_time_postgres() -> anyhow::Result<()> {
    adherence_on_measurement_time(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_backlog_sqlite() -> anyhow::Result<()> {
    late_backlog(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_backlog_postgres() -> anyhow::Result<()> {
    late_backlog(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinical_scenarios_sqlite() -> anyhow::Result<()> {
    clinical_scenarios(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinical_scenarios_postgres() -> anyhow::Result<()> {
    clinical_scenarios(Db::Postgres).await
}
