//! Provisioning round trips: COTs, patients, devices, API tokens, credentials.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

mod common;

use store::testing::TestDb;
use store::{
    DeviceKind, NewApiToken, NewDevice, NewPatient, NewUser, ReadingsLayout, Role, StoreError,
    TokenKind, UserKind, credentials,
};
use time::macros::datetime;

on_all_backends!(
    provisioning_round_trip,
    devices_and_credentials,
    api_tokens,
    users_and_scopes
);

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
        ids(store.list_patients(None, None).await.unwrap()),
        [patient.id, other.id]
    );
    assert_eq!(
        ids(store.list_patients(None, Some(south.id)).await.unwrap()),
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
        .list_devices(None, Some(f.patient.id))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, ["bp-0001", "dev-bp", "dev-glucose", "dev-spo2"]);
    assert_eq!(store.list_devices(None, None).await.unwrap().len(), 4);
    assert!(store.list_devices(None, Some(-5)).await.unwrap().is_empty());

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
    let cot = store.add_cot("COT-T", "COT Token").await.unwrap();
    let svc = store
        .add_user(&NewUser {
            username: "svc-fse",
            display_name: "FSE export",
            role: Role::Nurse,
            kind: UserKind::Service,
            password_hash: None,
            cot_ids: &[cot.id],
        })
        .await
        .unwrap();
    let hash = credentials::hash_secret("token-1");
    let expires = datetime!(2030-01-01 0:00 UTC);
    let token = |name, hash, expires_at| NewApiToken {
        user_id: svc.id,
        name,
        kind: TokenKind::ApiKey,
        token_hash: hash,
        expires_at,
    };
    let stored = store
        .add_api_token(&token("fhir-export", &hash, Some(expires)))
        .await
        .unwrap();
    assert_eq!(stored.expires_at, Some(expires));
    assert_eq!(stored.revoked_at, None);
    assert_eq!(
        (stored.user_id, stored.kind),
        (Some(svc.id), TokenKind::ApiKey)
    );
    assert!(matches!(
        store.add_api_token(&token("again", &hash, None)).await,
        Err(StoreError::Conflict { .. })
    ));
    let orphan = NewApiToken {
        user_id: 999_999,
        ..token("orphan", "ab", None)
    };
    assert!(matches!(
        store.add_api_token(&orphan).await,
        Err(StoreError::NotFound { .. })
    ));
    let found = store.api_token_by_hash(&hash).await.unwrap().unwrap();
    assert_eq!((found.id, found.name.as_str()), (stored.id, "fhir-export"));
    assert!(store.api_token_by_hash("nope").await.unwrap().is_none());
    let forever = store
        .add_api_token(&token("console", &credentials::hash_secret("t2"), None))
        .await
        .unwrap();
    assert_eq!(forever.expires_at, None);

    // Logout revokes one token; disabling the user revokes the rest.
    let now = time::OffsetDateTime::now_utc();
    assert!(store.revoke_api_token(&hash, now).await.unwrap());
    assert!(!store.revoke_api_token(&hash, now).await.unwrap());
    assert!(
        store
            .api_token_by_hash(&hash)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    store.disable_user(svc.id, now).await.unwrap();
    assert!(
        store
            .user_tokens(svc.id)
            .await
            .unwrap()
            .iter()
            .all(|t| t.revoked_at.is_some())
    );
    assert!(
        store
            .get_user(svc.id)
            .await
            .unwrap()
            .unwrap()
            .disabled_at
            .is_some()
    );
}

async fn users_and_scopes(db: TestDb, _layout: ReadingsLayout) {
    let store = &db.store;
    let a = store.add_cot("COT-A", "A").await.unwrap();
    let b = store.add_cot("COT-B", "B").await.unwrap();
    fn user<'a>(username: &'a str, role: Role, cot_ids: &'a [i64]) -> NewUser<'a> {
        NewUser {
            username,
            display_name: "Anna Rossi",
            role,
            kind: UserKind::Person,
            password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"),
            cot_ids,
        }
    }
    let anna = store
        .add_user(&user("anna", Role::Nurse, &[a.id]))
        .await
        .unwrap();
    let both = store
        .add_user(&user("bruno", Role::Physician, &[b.id, a.id, a.id]))
        .await
        .unwrap();
    assert_eq!(both.cot_ids, vec![a.id, b.id]);
    assert!(matches!(
        store.add_user(&user("anna", Role::Nurse, &[a.id])).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        store.add_user(&user("carla", Role::Nurse, &[999])).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        store.user_by_username("carla").await.unwrap().is_none(),
        "rolled back"
    );
    assert!(matches!(
        store.add_user(&user("no cots", Role::Nurse, &[])).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .add_user(&user("bad name", Role::Nurse, &[a.id]))
            .await,
        Err(StoreError::Invalid(_))
    ));
    let (found, hash) = store.user_login("anna").await.unwrap().unwrap();
    assert_eq!(
        (found.id, found.role, found.cot_ids.clone()),
        (anna.id, Role::Nurse, vec![a.id])
    );
    assert!(hash.unwrap().starts_with("$argon2id$"));
    assert!(
        !serde_json::to_string(&found).unwrap().contains("argon2"),
        "never serialized"
    );

    let in_b: Vec<String> = store
        .list_users(Some(&[b.id]))
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(in_b, ["bruno"]);
    assert_eq!(store.list_users(None).await.unwrap().len(), 2);
    assert!(store.list_users(Some(&[])).await.unwrap().is_empty());
    store.set_user_cots(anna.id, &[b.id]).await.unwrap();
    assert_eq!(
        store.get_user(anna.id).await.unwrap().unwrap().cot_ids,
        vec![b.id]
    );
    store
        .set_user_password(anna.id, "$argon2id$new")
        .await
        .unwrap();
    assert_eq!(
        store
            .user_login("anna")
            .await
            .unwrap()
            .unwrap()
            .1
            .as_deref(),
        Some("$argon2id$new")
    );

    // Registry queries scoped to COTs.
    let patient = |cot_id, code: &str| NewPatient {
        cot_id,
        code: code.into(),
        display_name: code.into(),
        birth_year: None,
        conditions: vec![],
    };
    let pa = store.add_patient(&patient(a.id, "PA")).await.unwrap();
    let pb = store.add_patient(&patient(b.id, "PB")).await.unwrap();
    for (id, p) in [("dev-a", &pa), ("dev-b", &pb)] {
        store
            .add_device(&NewDevice {
                id: id.into(),
                patient_id: p.id,
                kind: DeviceKind::Spo2,
                secret_hash: credentials::hash_secret(id),
                model: None,
            })
            .await
            .unwrap();
    }
    let codes = |ps: Vec<store::Patient>| ps.into_iter().map(|p| p.code).collect::<Vec<_>>();
    assert_eq!(
        codes(store.list_patients(Some(&[a.id]), None).await.unwrap()),
        ["PA"]
    );
    assert_eq!(
        codes(store.list_patients(None, None).await.unwrap()),
        ["PA", "PB"]
    );
    assert!(
        store
            .list_patients(Some(&[a.id]), Some(b.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_patients(Some(&[]), None)
            .await
            .unwrap()
            .is_empty()
    );
    let ids = |ds: Vec<store::Device>| ds.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_devices(Some(&[b.id]), None).await.unwrap()),
        ["dev-b"]
    );
    assert!(
        store
            .list_devices(Some(&[b.id]), Some(pa.id))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.device_cot("dev-a").await.unwrap(), Some(a.id));
    assert_eq!(store.device_cot("nope").await.unwrap(), None);
    assert_eq!(
        store.cots_by_ids(&[b.id, 777]).await.unwrap()[0].code,
        "COT-B"
    );
}
