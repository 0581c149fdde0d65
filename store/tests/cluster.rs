//! What the nodes of a cluster share through the database: two stores (two pools, as two
//! nodes would have) on one database. On PostgreSQL, a write through one wakes the other's
//! subscribers (`LISTEN`/`NOTIFY`), which nothing else could do here (a store's own writes
//! wake only its own subscribers); login throttling counts across both; repeat requests
//! written through one are read through the other.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{T0, fixture};
use store::testing::TestDb;
use store::{
    AlertReading, DeviceWakeup, LoginLimits, PendingRepeat, ReadingKind, ReadingsLayout, Severity,
    Trigger, TriggerOutcome,
};
use time::OffsetDateTime;

on_all_backends!(throttling_is_shared, repeat_requests_are_shared);

/// Long enough for a notification on a loaded CI machine; it normally takes milliseconds.
const WAKE: Duration = Duration::from_secs(10);

fn trigger(patient_id: i64, device: &str) -> Trigger {
    Trigger {
        patient_id,
        rule_id: "bp-high".into(),
        rule_kind: "threshold".into(),
        title: "Systolic high".into(),
        severity: Severity::High,
        plan_version: None,
        metric: Some("systolic".into()),
        unit: Some("mmHg".into()),
        value: Some(170.0),
        higher_is_worse: true,
        readings: vec![AlertReading {
            device_id: device.into(),
            seq: 1,
            measured_at: T0,
            value: Some(170.0),
        }],
        at: T0,
        due_at: None,
        detail: None,
        unconfirmed: false,
    }
}

/// An alert event written through node B wakes node A's alert feed with its id, and a
/// repeat request stored through node B wakes node A's device wake-ups with its device.
#[tokio::test]
async fn postgres_nodes_wake_each_other() {
    let a = TestDb::postgres().await;
    let b = a.another_node().await;
    let f = fixture(&a.store, "wake").await;
    let mut feed = a.store.alert_feed();
    let mut devices = a.store.device_wakeups();
    // A write before the LISTEN would not be heard (production subscribers poll as well).
    tokio::time::timeout(WAKE, async {
        while !a.store.listening() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("node A's store listens");
    let outcome = b
        .store
        .trigger_alert(&trigger(f.patient.id, &f.bp.id))
        .await
        .unwrap();
    assert!(
        matches!(outcome, TriggerOutcome::Opened { .. }),
        "{outcome:?}"
    );
    let newest = b.store.last_alert_event_id().await.unwrap();
    tokio::time::timeout(WAKE, async {
        while *feed.borrow_and_update() < newest {
            feed.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "node A's feed is at {} after {WAKE:?}; node B wrote event {newest}",
            *feed.borrow()
        )
    });

    let request = PendingRepeat {
        device_id: f.spo2.id.clone(),
        kind: ReadingKind::Spo2,
        in_minutes: 5,
        asked_at: OffsetDateTime::now_utc(),
        received_at: OffsetDateTime::now_utc(),
    };
    b.store.put_repeat_request(&request).await.unwrap();
    let woken = tokio::time::timeout(WAKE, async {
        loop {
            match devices.recv().await.unwrap() {
                DeviceWakeup::One(d) if d == f.spo2.id => return d,
                _ => {}
            }
        }
    })
    .await
    .expect("node A is woken for the device");
    assert_eq!(woken, f.spo2.id);
    let pending = a
        .store
        .pending_repeat(&f.spo2.id, OffsetDateTime::now_utc())
        .await
        .unwrap()
        .expect("node A reads the request node B stored");
    assert_eq!((pending.kind, pending.in_minutes), (ReadingKind::Spo2, 5));
}

/// On SQLite (one process) a store's own repeat request wakes its own subscribers.
#[tokio::test]
async fn sqlite_wakes_itself() {
    let db = TestDb::sqlite().await;
    let f = fixture(&db.store, "self").await;
    let mut devices = db.store.device_wakeups();
    let now = OffsetDateTime::now_utc();
    db.store
        .put_repeat_request(&PendingRepeat {
            device_id: f.bp.id.clone(),
            kind: ReadingKind::BloodPressure,
            in_minutes: 5,
            asked_at: now,
            received_at: now,
        })
        .await
        .unwrap();
    assert_eq!(
        devices.try_recv().unwrap(),
        DeviceWakeup::One(f.bp.id.clone())
    );
}

/// Failed logins admitted through one node count on the other: the limit is reached
/// wherever the attempts land, and a success on either takes its own attempt back.
async fn throttling_is_shared(a: TestDb, _layout: ReadingsLayout) {
    let b = a.another_node().await;
    let limits = LoginLimits {
        window: time::Duration::minutes(1),
        per_pair: 3,
        per_source: 5,
    };
    let now = OffsetDateTime::now_utc();
    let (pair, ip) = ("anna\n10.0.0.1", Some("ip:10.0.0.1"));
    for store in [&a.store, &b.store, &a.store] {
        store
            .admit_login(pair, ip, limits, now)
            .await
            .unwrap()
            .unwrap();
    }
    let refused = b
        .store
        .admit_login(pair, ip, limits, now)
        .await
        .unwrap()
        .unwrap_err();
    assert!(refused.audit, "the first refusal of a window is audited");
    assert!((1..=60).contains(&refused.retry_after), "{refused:?}");
    let again = a
        .store
        .admit_login(pair, ip, limits, now)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        !again.audit,
        "later refusals in the window are only counted"
    );
    // Another user from that address: the address has 3 attempts of 5.
    let ok = b
        .store
        .admit_login("bruno\n10.0.0.1", ip, limits, now)
        .await
        .unwrap()
        .unwrap();
    a.store.login_succeeded(&ok).await.unwrap();
    for _ in 0..2 {
        a.store
            .admit_login("carla\n10.0.0.1", ip, limits, now)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        b.store
            .admit_login("dario\n10.0.0.1", ip, limits, now)
            .await
            .unwrap()
            .is_err(),
        "the address is at its limit on both nodes"
    );
    // Past the window, everything is admitted again.
    let later = now + time::Duration::minutes(2);
    b.store
        .admit_login(pair, ip, limits, later)
        .await
        .unwrap()
        .unwrap();
    // Parallel attempts through both nodes are counted one after the other.
    let limits = LoginLimits {
        per_pair: 4,
        ..limits
    };
    let pair = "eva\n10.0.0.2";
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = if i % 2 == 0 {
            a.store.clone()
        } else {
            b.store.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .admit_login(pair, Some("ip:10.0.0.2"), limits, later)
                .await
                .unwrap()
                .is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 4, "exactly the limit is admitted");
}

/// A repeat request stored through one node is read through the other, the latest replaces
/// the one before, and an expired one is no longer pending.
async fn repeat_requests_are_shared(a: TestDb, _layout: ReadingsLayout) {
    let b = a.another_node().await;
    let f = fixture(&a.store, "rep").await;
    // Whole seconds: both backends keep them exactly.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let request = |kind, in_minutes, at| PendingRepeat {
        device_id: f.bp.id.clone(),
        kind,
        in_minutes,
        asked_at: at,
        received_at: at,
    };
    a.store
        .put_repeat_request(&request(ReadingKind::BloodPressure, 5, now))
        .await
        .unwrap();
    b.store
        .put_repeat_request(&request(ReadingKind::BloodPressure, 15, now))
        .await
        .unwrap();
    let seen = b
        .store
        .pending_repeat(&f.bp.id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.in_minutes, 15,
        "the latest request replaces the one before"
    );
    assert_eq!(a.store.pending_repeats(now).await.unwrap().len(), 1);
    // Deliverable until an hour after it was due.
    let expires = seen.expires_at();
    assert_eq!(expires, now + time::Duration::minutes(75));
    assert!(
        a.store
            .pending_repeat(&f.bp.id, expires - time::Duration::seconds(1))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        a.store
            .pending_repeat(&f.bp.id, expires)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        a.store
            .pending_repeat(&f.spo2.id, now)
            .await
            .unwrap()
            .is_none()
    );
}
