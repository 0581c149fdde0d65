//! Provisioning round trips: COTs, patients, devices, API tokens, credentials.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

mod common;

use store::testing::TestDb;
use store::{DeviceKind, NewDevice, NewPatient, ReadingsLayout, StoreError, credentials};
use time::macros::datetime;

on_all_backends!(provisioning_round_trip, devices_and_credentials, api_tokens);

async fn provisioning_round_trip(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let north = store.add_cot("COT-N", "COT Nord").await.unwrap();
    let south = store.add_cot("COT-S", "COT Sud").await.unwrap();
    assert!(matches!(
        store.add_cot("COT-N", "again").await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        store.cot_by_code("COT-S").await.unwrap().unwrap().id,
        south.id
    );
    assert!(store.cot_by_code("nope").await.unwrap().is_none());
    let cots: Vec<String> = store
        .list_cots()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.code)
        .collect();
    assert_eq!(cots, ["COT-N", "COT-S"]);

    let new = NewPatient {
        cot_id: north.id,
        code: "PZ-0001".into(),
        display_name: "A. B.".into(),
        birth_year: Some(1950),
        conditions: vec!["hypertension".into(), "heart_failure".into()],
    };
    let patient = store.add_patient(&new).await.unwrap();
    assert_eq!(patient.cot_id, north.id);
    assert_eq!(patient.conditions, new.conditions);
    assert_eq!(patient.birth_year, Some(1950));
    let other = store
        .add_patient(&NewPatient {
            cot_id: south.id,
            code: "PZ-0002".into(),
            birth_year: None,
            conditions: vec![],
            ..new.clone()
        })
        .await
        .unwrap();
    assert!(other.conditions.is_empty());
    assert_eq!(other.birth_year, None);

    assert!(matches!(
        store.add_patient(&new).await,
        Err(StoreError::Conflict { .. })
    ));
    let orphan = NewPatient {
        cot_id: 999_999,
        code: "PZ-X".into(),
        ..new.clone()
    };
    assert!(matches!(
        store.add_patient(&orphan).await,
        Err(StoreError::NotFound { .. })
    ));
    let bad = NewPatient {
        code: "PZ-Y".into(),
        conditions: vec!["a,b".into()],
        ..new.clone()
    };
    assert!(matches!(
        store.add_patient(&bad).await,
        Err(StoreError::Invalid(_))
    ));

    let by_code = store.patient_by_code("PZ-0001").await.unwrap().unwrap();
    assert_eq!(by_code.id, patient.id);
    assert_eq!(by_code.created_at, patient.created_at);
    assert_eq!(
        store.get_patient(other.id).await.unwrap().unwrap().code,
        "PZ-0002"
    );
    assert!(store.get_patient(-1).await.unwrap().is_none());
    let ids = |ps: Vec<store::Patient>| ps.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_patients(None).await.unwrap()),
        [patient.id, other.id]
    );
    assert_eq!(
        ids(store.list_patients(Some(south.id)).await.unwrap()),
        [other.id]
    );
}

async fn devices_and_credentials(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let f = common::fixture(store, "dev").await;
    let secret = credentials::generate_secret();
    let new = NewDevice {
        id: "bp-0001".into(),
        patient_id: f.patient.id,
        kind: DeviceKind::BloodPressure,
        secret_hash: credentials::hash_secret(&secret),
        model: Some("Omron X7".into()),
    };
    let device = store.add_device(&new).await.unwrap();
    assert_eq!(device.kind, DeviceKind::BloodPressure);
    assert_eq!(device.model.as_deref(), Some("Omron X7"));
    assert!(!device.online);
    assert_eq!(
        (device.revoked_at, device.last_seen_at, device.last_seq),
        (None, None, None)
    );

    // Duplicate id: Conflict, and the original is untouched.
    let dup = NewDevice {
        kind: DeviceKind::Glucose,
        ..new.clone()
    };
    match store.add_device(&dup).await {
        Err(StoreError::Conflict { what }) => assert!(what.contains("bp-0001"), "{what}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(
        store.get_device("bp-0001").await.unwrap().unwrap().kind,
        DeviceKind::BloodPressure
    );

    for bad_id in ["", "has/slash", "plus+", &"x".repeat(65)] {
        let bad = NewDevice {
            id: bad_id.into(),
            ..new.clone()
        };
        assert!(
            matches!(store.add_device(&bad).await, Err(StoreError::Invalid(_))),
            "{bad_id}"
        );
    }
    let raw_secret = NewDevice {
        id: "raw".into(),
        secret_hash: secret.clone() + "x",
        ..new.clone()
    };
    assert!(matches!(
        store.add_device(&raw_secret).await,
        Err(StoreError::Invalid(_))
    ));
    let orphan = NewDevice {
        id: "orphan".into(),
        patient_id: 999_999,
        ..new.clone()
    };
    assert!(matches!(
        store.add_device(&orphan).await,
        Err(StoreError::NotFound { .. })
    ));

    let auth = store.device_auth("bp-0001").await.unwrap().unwrap();
    assert_eq!(auth.patient_id, f.patient.id);
    assert!(!auth.revoked);
    assert!(credentials::verify_secret(&secret, &auth.secret_hash));
    assert!(!credentials::verify_secret(
        &credentials::generate_secret(),
        &auth.secret_hash
    ));
    assert!(store.device_auth("unknown").await.unwrap().is_none());

    let at = datetime!(2025-04-01 12:00 UTC);
    store.revoke_device("bp-0001", at).await.unwrap();
    store
        .revoke_device("bp-0001", datetime!(2026-01-01 0:00 UTC))
        .await
        .unwrap();
    assert!(store.device_auth("bp-0001").await.unwrap().unwrap().revoked);
    assert_eq!(
        store
            .get_device("bp-0001")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(at)
    );
    assert!(matches!(
        store.revoke_device("unknown", at).await,
        Err(StoreError::NotFound { .. })
    ));

    let listed: Vec<String> = store
        .list_devices(Some(f.patient.id))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ["bp-0001", "dev-bp", "dev-glucose", "dev-spo2"]);
    assert_eq!(store.list_devices(None).await.unwrap().len(), 4);
    assert!(store.list_devices(Some(-5)).await.unwrap().is_empty());

    // What the API returns: kinds as short codes, RFC 3339 times, never the secret hash.
    let json = serde_json::to_value(store.get_device("bp-0001").await.unwrap().unwrap()).unwrap();
    assert_eq!(json["kind"], "bp");
    assert_eq!(json["revoked_at"], "2025-04-01T12:00:00Z");
    assert_eq!(json["last_seen_at"], serde_json::Value::Null);
    assert!(json.get("secret_hash").is_none());
    assert!(!json.to_string().contains(&auth.secret_hash));
}

async fn api_tokens(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let hash = credentials::hash_secret("token-1");
    let expires = datetime!(2030-01-01 0:00 UTC);
    let token = store
        .add_api_token("fhir-export", &hash, Some(expires))
        .await
        .unwrap();
    assert_eq!(token.expires_at, Some(expires));
    assert_eq!(token.revoked_at, None);
    assert!(matches!(
        store.add_api_token("again", &hash, None).await,
        Err(StoreError::Conflict { .. })
    ));
    let found = store.api_token_by_hash(&hash).await.unwrap().unwrap();
    assert_eq!((found.id, found.name.as_str()), (token.id, "fhir-export"));
    assert!(store.api_token_by_hash("nope").await.unwrap().is_none());
    let forever = store
        .add_api_token("console", &credentials::hash_secret("t2"), None)
        .await
        .unwrap();
    assert_eq!(forever.expires_at, None);
}
