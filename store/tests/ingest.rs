//! The gateway's batch commit, reading queries, quarantine, device status, audit.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

mod common;

use common::{T0, fixture, reading};
use store::testing::TestDb;
use store::{
    AuditQuery, CommitBatch, CommitOutcome, DeviceStatusUpdate, NewAudit, NewQuarantine,
    ReadingKind, ReadingQuery, ReadingsLayout, StoreError,
};
use time::Duration;

on_all_backends!(
    commit_is_idempotent,
    readings_filter_and_order,
    failed_batch_commits_nothing,
    quarantine_and_status,
    audit_log,
    concurrent_writers,
);

async fn commit_is_idempotent(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = fixture(store, "idem").await;
    let batch = CommitBatch {
        readings: (1..=100)
            .map(|seq| reading(&f.bp, seq, T0 + Duration::minutes(seq)))
            .collect(),
        ..Default::default()
    };
    let first = store.commit_batch(&batch).await.unwrap();
    assert_eq!(
        first,
        CommitOutcome {
            inserted: 100,
            duplicates: 0,
            fresh: vec![true; 100],
            outbox: Vec::new(),
        }
    );
    assert_eq!(store.count_readings(Some(&f.bp.id)).await.unwrap(), 100);

    // The device resends the whole batch: all duplicates, nothing changes.
    let again = store.commit_batch(&batch).await.unwrap();
    assert_eq!(
        again,
        CommitOutcome {
            inserted: 0,
            duplicates: 100,
            fresh: vec![false; 100],
            outbox: Vec::new(),
        }
    );
    assert_eq!(store.count_readings(None).await.unwrap(), 100);

    // Duplicates inside one batch, mixed with stored ones and new ones; the first
    // occurrence of a repeated seq wins.
    let mut first_101 = reading(&f.bp, 101, T0);
    first_101.systolic = Some(150.0);
    let mut second_101 = reading(&f.bp, 101, T0);
    second_101.systolic = Some(99.0);
    let mixed = CommitBatch {
        readings: vec![
            reading(&f.bp, 50, T0),
            first_101,
            second_101,
            reading(&f.spo2, 1, T0),
            reading(&f.bp, 102, T0),
            reading(&f.spo2, 1, T0),
        ],
        ..Default::default()
    };
    let outcome = store.commit_batch(&mixed).await.unwrap();
    assert_eq!(
        outcome,
        CommitOutcome {
            inserted: 3,
            duplicates: 3,
            fresh: vec![false, true, false, true, true, false],
            outbox: Vec::new(),
        }
    );
    assert_eq!(store.count_readings(None).await.unwrap(), 103);
    let expected: Vec<i64> = (1..=102).collect();
    assert_eq!(store.stored_seqs(&f.bp.id).await.unwrap(), expected);
    assert_eq!(store.stored_seqs(&f.spo2.id).await.unwrap(), vec![1]);
    assert!(store.stored_seqs("unknown").await.unwrap().is_empty());
    let at_t0 = store
        .readings(&ReadingQuery {
            patient_id: f.patient.id,
            from: Some(T0),
            to: Some(T0 + Duration::seconds(1)),
            kind: Some(ReadingKind::BloodPressure),
            limit: 10,
        })
        .await
        .unwrap();
    let seq_101 = at_t0.iter().find(|r| r.seq == 101).unwrap();
    assert_eq!(seq_101.systolic, Some(150.0));

    // The readings table itself holds what the keys say.
    let all = store
        .readings(&ReadingQuery {
            patient_id: f.patient.id,
            from: None,
            to: None,
            kind: None,
            limit: 10_000,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 103);

    // An empty batch is fine.
    let empty = store.commit_batch(&CommitBatch::default()).await.unwrap();
    assert_eq!(empty, CommitOutcome::default());
}

async fn readings_filter_and_order(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = fixture(store, "query").await;
    let other = fixture(store, "other").await;
    let t = |minutes: i64| T0 + Duration::minutes(minutes);
    let mut readings = vec![
        reading(&f.spo2, 7, t(10)),
        reading(&f.bp, 2, t(10)),
        reading(&f.bp, 1, t(0)),
        reading(&f.glucose, 1, t(20)),
        reading(&f.bp, 3, t(30)),
        reading(&other.bp, 1, t(10)),
    ];
    // Same time, same device, two seqs: seq breaks the tie.
    readings.push(reading(&f.bp, 4, t(30)));
    let mut stored = reading(&f.glucose, 2, t(40) + Duration::milliseconds(123));
    stored.clock_unset = true;
    stored.status = 0x0102;
    stored.sensor = 1 << 40;
    readings.push(stored.clone());
    store
        .commit_batch(&CommitBatch {
            readings,
            ..Default::default()
        })
        .await
        .unwrap();

    let query = |from, to, kind, limit| ReadingQuery {
        patient_id: f.patient.id,
        from,
        to,
        kind,
        limit,
    };
    let keys = |rs: Vec<store::StoredReading>| {
        rs.into_iter()
            .map(|r| (r.device_id, r.seq))
            .collect::<Vec<_>>()
    };
    let k = |d: &str, seq: i64| (d.to_owned(), seq);

    let all = store.readings(&query(None, None, None, 100)).await.unwrap();
    assert!(all.iter().all(|r| r.patient_id == f.patient.id));
    assert_eq!(
        keys(all.clone()),
        [
            k("query-bp", 1),
            k("query-bp", 2),
            k("query-spo2", 7),
            k("query-glucose", 1),
            k("query-bp", 3),
            k("query-bp", 4),
            k("query-glucose", 2),
        ]
    );
    // Values survive the round trip.
    let last = all.last().unwrap();
    assert_eq!(last.kind, ReadingKind::Glucose);
    assert_eq!(last.measured_at, stored.measured_at);
    assert_eq!(last.received_at, stored.received_at);
    assert!(last.clock_unset);
    assert_eq!((last.status, last.sensor), (0x0102, 1 << 40));
    assert_eq!(last.glucose_mg_dl, stored.glucose_mg_dl);
    assert_eq!(last.glucose_sample, stored.glucose_sample);
    assert_eq!(last.glucose_meal, stored.glucose_meal);
    assert_eq!(last.source_unit.as_deref(), Some("mmol/L"));
    assert_eq!(last.systolic, None);
    let json = serde_json::to_value(last).unwrap();
    assert_eq!(json["kind"], "glucose");
    assert_eq!(json["measured_at"], "2025-03-10T08:40:00.123Z");

    // from is inclusive, to exclusive.
    let window = store
        .readings(&query(Some(t(10)), Some(t(30)), None, 100))
        .await
        .unwrap();
    assert_eq!(
        keys(window),
        [k("query-bp", 2), k("query-spo2", 7), k("query-glucose", 1)]
    );
    let since = store
        .readings(&query(Some(t(30)), None, None, 100))
        .await
        .unwrap();
    assert_eq!(since.len(), 3);
    let until = store
        .readings(&query(None, Some(t(10)), None, 100))
        .await
        .unwrap();
    assert_eq!(keys(until), [k("query-bp", 1)]);

    let bp = store
        .readings(&query(None, None, Some(ReadingKind::BloodPressure), 100))
        .await
        .unwrap();
    assert_eq!(
        keys(bp),
        [
            k("query-bp", 1),
            k("query-bp", 2),
            k("query-bp", 3),
            k("query-bp", 4)
        ]
    );
    let glucose_window = store
        .readings(&query(
            Some(t(15)),
            Some(t(60)),
            Some(ReadingKind::Glucose),
            100,
        ))
        .await
        .unwrap();
    assert_eq!(
        keys(glucose_window),
        [k("query-glucose", 1), k("query-glucose", 2)]
    );

    // The limit is clamped to 1..=10,000.
    assert_eq!(
        store
            .readings(&query(None, None, None, 2))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        store
            .readings(&query(None, None, None, 0))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .readings(&query(None, None, None, -5))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .readings(&query(None, None, None, i64::MAX))
            .await
            .unwrap()
            .len(),
        7
    );

    let nobody = ReadingQuery {
        patient_id: -1,
        from: None,
        to: None,
        kind: None,
        limit: 10,
    };
    assert!(store.readings(&nobody).await.unwrap().is_empty());
}

/// A batch with a reading for an unprovisioned device fails as a whole: its quarantine rows,
/// status updates and valid readings are not written either.
async fn failed_batch_commits_nothing(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = fixture(store, "atomic").await;
    let mut ghost = reading(&f.bp, 1, T0);
    ghost.device_id = "ghost".into();
    let batch = CommitBatch {
        outbox: false,
        readings: vec![reading(&f.bp, 1, T0), ghost],
        quarantine: vec![quarantined("atomic-bp", b"{}".to_vec())],
        statuses: vec![DeviceStatusUpdate {
            device_id: f.bp.id.clone(),
            at: T0,
            online: true,
            battery: Some(50),
            firmware: None,
            rssi: None,
        }],
    };
    let error = store.commit_batch(&batch).await.unwrap_err();
    match &error {
        StoreError::NotFound { what } => assert!(what.contains("\"ghost\""), "{what}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(!error.is_transient());
    assert_eq!(store.count_readings(None).await.unwrap(), 0);
    assert_eq!(store.count_quarantine().await.unwrap(), 0);
    let device = store.get_device(&f.bp.id).await.unwrap().unwrap();
    assert_eq!(
        (device.battery_pct, device.last_seq, device.online),
        (None, None, false)
    );

    // The store is still usable, and the same reading commits once the batch is fixed.
    let fixed = CommitBatch {
        readings: vec![reading(&f.bp, 1, T0)],
        ..batch
    };
    assert_eq!(store.commit_batch(&fixed).await.unwrap().inserted, 1);
    assert_eq!(store.count_quarantine().await.unwrap(), 1);
}

async fn quarantine_and_status(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = fixture(store, "status").await;
    let received = |s: i64| T0 + Duration::seconds(s);

    // Readings move last_seen_at (latest received_at) and last_seq (highest seq), whatever
    // their order in the batch.
    let mut late = reading(&f.bp, 5, T0);
    late.received_at = received(100);
    let mut early = reading(&f.bp, 9, T0);
    early.received_at = received(50);
    let mut long_text = vec![b'x'; 600];
    long_text[0] = 0xff; // not UTF-8
    let batch = CommitBatch {
        outbox: false,
        readings: vec![late, early],
        quarantine: vec![
            quarantined("status-bp", b"{\"seq\":".to_vec()),
            NewQuarantine {
                received_at: received(1),
                ..quarantined("status-spo2", long_text)
            },
        ],
        statuses: vec![
            DeviceStatusUpdate {
                device_id: f.bp.id.clone(),
                at: received(10),
                online: true,
                battery: Some(87),
                firmware: Some("1.4.2".into()),
                rssi: Some(-61),
            },
            DeviceStatusUpdate {
                device_id: f.bp.id.clone(),
                at: received(20),
                online: true,
                battery: Some(86),
                firmware: None,
                rssi: None,
            },
            // Unknown devices are ignored, not an error.
            DeviceStatusUpdate {
                device_id: "nobody".into(),
                at: received(20),
                online: true,
                battery: None,
                firmware: None,
                rssi: None,
            },
        ],
    };
    let outcome = store.commit_batch(&batch).await.unwrap();
    assert_eq!(outcome.inserted, 2);
    let bp = store.get_device(&f.bp.id).await.unwrap().unwrap();
    assert_eq!(bp.last_seen_at, Some(received(100)));
    assert_eq!(bp.last_seq, Some(9));
    assert!(bp.online);
    assert_eq!(bp.battery_pct, Some(86));
    assert_eq!(bp.firmware.as_deref(), Some("1.4.2"));
    assert_eq!(bp.rssi, Some(-61));
    assert_eq!(bp.status_at, Some(received(20)));

    // Older data never moves them back.
    let mut old = reading(&f.bp, 3, T0);
    old.received_at = received(60);
    let stale_status = DeviceStatusUpdate {
        device_id: f.bp.id.clone(),
        at: received(15),
        online: false,
        battery: Some(5),
        firmware: None,
        rssi: None,
    };
    store
        .commit_batch(&CommitBatch {
            readings: vec![old],
            statuses: vec![stale_status],
            ..Default::default()
        })
        .await
        .unwrap();
    let bp = store.get_device(&f.bp.id).await.unwrap().unwrap();
    assert_eq!(
        (bp.last_seen_at, bp.last_seq),
        (Some(received(100)), Some(9))
    );
    assert!(bp.online);
    assert_eq!(bp.battery_pct, Some(86));

    // Connection events from the edge.
    store
        .set_device_online(&f.bp.id, false, received(200))
        .await
        .unwrap();
    let bp = store.get_device(&f.bp.id).await.unwrap().unwrap();
    assert!(!bp.online);
    assert_eq!(
        bp.battery_pct,
        Some(86),
        "going offline keeps the last battery"
    );
    assert_eq!(bp.last_seen_at, Some(received(100)));
    store
        .set_device_online(&f.spo2.id, true, received(300))
        .await
        .unwrap();
    let spo2 = store.get_device(&f.spo2.id).await.unwrap().unwrap();
    assert!(spo2.online);
    assert_eq!(spo2.last_seen_at, Some(received(300)));
    assert_eq!(spo2.last_seq, None);
    assert!(matches!(
        store.set_device_online("nobody", true, received(300)).await,
        Err(StoreError::NotFound { .. })
    ));

    // Quarantine, newest first, with a lossy preview of at most 512 bytes.
    store
        .record_quarantine(&[NewQuarantine {
            received_at: received(500),
            device_id: None,
            seq: None,
            topic: "sentinella/v1/devices/+/readings".into(),
            ..quarantined("x", b"\x00garbage".to_vec())
        }])
        .await
        .unwrap();
    store.record_quarantine(&[]).await.unwrap();
    assert_eq!(store.count_quarantine().await.unwrap(), 3);
    let entries = store.list_quarantine(10, None).await.unwrap();
    let topics: Vec<&str> = entries.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "sentinella/v1/devices/+/readings",
            "sentinella/v1/devices/status-spo2/readings",
            "sentinella/v1/devices/status-bp/readings",
        ]
    );
    let newest = &entries[0];
    assert_eq!((newest.device_id.as_deref(), newest.seq), (None, None));
    assert_eq!(newest.payload_preview, "\u{0}garbage");
    let first = &entries[2];
    assert_eq!(first.device_id.as_deref(), Some("status-bp"));
    assert_eq!(first.seq, Some(7));
    assert_eq!(first.reason, "payload.malformed");
    assert_eq!(first.payload_preview, "{\"seq\":");
    let long = &entries[1];
    assert_eq!(long.payload_size, 600);
    assert!(long.payload_preview.starts_with('\u{fffd}'));
    assert_eq!(long.payload_preview.chars().count(), 512);
    assert_eq!(store.list_quarantine(1, None).await.unwrap().len(), 1);
    assert_eq!(store.list_quarantine(0, None).await.unwrap().len(), 1);
    let json = serde_json::to_value(newest).unwrap();
    assert_eq!(json["received_at"], "2025-03-10T08:08:20Z");
}

async fn audit_log(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    for (i, action) in ["device.provision", "readings.read", "device.revoke"]
        .iter()
        .enumerate()
    {
        store
            .record_audit(&NewAudit {
                actor: "nurse:anna".into(),
                action: (*action).into(),
                target: format!("device:bp-{i}"),
                source: (i == 1).then(|| "10.0.0.7".into()),
                detail: None,
                patient_id: (i == 1).then_some(7),
                cot_id: Some(if i == 2 { 2 } else { 1 }),
                cot_ids: Vec::new(),
            })
            .await
            .unwrap();
    }
    let entries = store.list_audit(10).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["device.revoke", "readings.read", "device.provision"]
    );
    assert_eq!(entries[1].source.as_deref(), Some("10.0.0.7"));
    assert_eq!(entries[1].target, "device:bp-1");
    assert!(entries[0].at >= entries[2].at);
    let age = time::OffsetDateTime::now_utc() - entries[0].at;
    assert!(
        age < Duration::minutes(5),
        "stamped now, got {}",
        entries[0].at
    );
    assert_eq!(store.list_audit(2).await.unwrap().len(), 2);

    // Queries: by patient (the access history), by COT, by action prefix, paging by id.
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        f(&mut q);
        q
    };
    let history = store
        .query_audit(&q(&|q| q.patient_id = Some(7)))
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].action, "readings.read");
    let cot1 = store
        .query_audit(&q(&|q| q.cot_ids = Some(vec![1])))
        .await
        .unwrap();
    assert_eq!(cot1.len(), 2);
    assert!(cot1.iter().all(|e| e.cot_id == Some(1)));
    let none = store
        .query_audit(&q(&|q| q.cot_ids = Some(vec![])))
        .await
        .unwrap();
    assert!(none.is_empty());
    let devices = store
        .query_audit(&q(&|q| q.action = Some("device.".into())))
        .await
        .unwrap();
    assert_eq!(devices.len(), 2);
    let older = store
        .query_audit(&q(&|q| q.before_id = Some(entries[0].id)))
        .await
        .unwrap();
    assert_eq!(older.len(), 2);

    // Append-only: the schema refuses to change or remove history, whoever asks.
    assert!(
        db.exec("UPDATE audit_log SET actor = 'someone-else'")
            .await
            .is_err()
    );
    assert!(db.exec("DELETE FROM audit_log").await.is_err());
    assert_eq!(store.list_audit(100).await.unwrap().len(), 3);
    assert_eq!(store.list_audit(100).await.unwrap()[2].actor, "nurse:anna");
}

/// Several writers commit overlapping batches at once (shared devices, resends of each
/// other's readings): every reading is stored exactly once. Transient errors (a deadlock,
/// a busy SQLite) are retried, as the gateway does.
async fn concurrent_writers(db: TestDb, _layout: ReadingsLayout) {
    let f = fixture(&db.store, "conc").await;
    let devices = [f.bp.clone(), f.spo2.clone(), f.glucose.clone()];
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let store = db.store.clone();
            let devices = devices.clone();
            tokio::spawn(async move {
                let mut retries = 0;
                for round in 0..10i64 {
                    // Each writer owns seqs writer*1000 + ..., and resends writer 0's.
                    let mut readings = Vec::new();
                    for device in &devices {
                        for k in 0..5 {
                            let seq = writer * 1000 + round * 10 + k;
                            readings.push(reading(device, seq, T0 + Duration::seconds(seq)));
                            readings.push(reading(device, round * 10 + k, T0));
                        }
                    }
                    let batch = CommitBatch {
                        readings,
                        ..Default::default()
                    };
                    loop {
                        match store.commit_batch(&batch).await {
                            Ok(_) => break,
                            Err(e) if e.is_transient() => retries += 1,
                            Err(e) => panic!("writer {writer}: {e}"),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for device in &devices {
        let mut expected: Vec<i64> = (0..4)
            .flat_map(|w| (0..100).filter(|s| s % 10 < 5).map(move |s| w * 1000 + s))
            .collect();
        expected.sort_unstable();
        assert_eq!(db.store.stored_seqs(&device.id).await.unwrap(), expected);
        let stored = db.store.get_device(&device.id).await.unwrap().unwrap();
        assert_eq!(stored.last_seq, Some(3094));
    }
    assert_eq!(db.store.count_readings(None).await.unwrap(), 3 * 4 * 50);
}

fn quarantined(device: &str, payload: Vec<u8>) -> NewQuarantine {
    NewQuarantine {
        received_at: T0,
        topic: format!("sentinella/v1/devices/{device}/readings"),
        device_id: Some(device.into()),
        seq: Some(7),
        reason: "payload.malformed".into(),
        detail: "expected a JSON object".into(),
        payload_size: payload.len() as i64,
        payload,
    }
}
