//! The FHIR R4 API through the router, on SQLite and PostgreSQL: a generated set of patients
//! covering every reading kind, every measurement-status and sensor-status bit and every
//! alert state; every resource and search page the API returns is written to a folder and
//! checked by an independent validator (`tests/fhir/validate.py`: the R4 models of the
//! `fhir.resources` PyPI package, pinned in `tests/fhir/requirements.txt`). The test fails
//! if the validator reports any error; the validator's own self-test proves it rejects
//! invalid resources.
//!
//! The validator runs from the virtualenv named by `SENTINELLA_FHIR_PYTHON` (what
//! `scripts/test.sh` creates), or from one this test creates under the target folder.
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use api::app;
use api::http::{AppState, auth};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use store::testing::TestDb;
use store::{
    AlertReading, CommitBatch, DeviceKind, DeviceStatusUpdate, NewCarePlan, NewDevice, NewPatient,
    NewReading, ReadingKind, Severity, Trigger,
};
use time::OffsetDateTime;
use time::macros::datetime;
use tower::ServiceExt;

use protocol::reading::{MealContext, MeasurementStatus as Ms, SampleType};

const T0: OffsetDateTime = datetime!(2026-11-01 08:00 UTC);

#[tokio::test]
async fn fhir_api_sqlite() {
    fhir_api(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn fhir_api_postgres() {
    fhir_api(TestDb::postgres().await).await;
}

#[test]
fn validator_rejects_invalid_resources() {
    let python = validator_python();
    let out = Command::new(&python)
        .arg(validator_script())
        .arg("--self-test")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "validator self-test failed:\n{text}");
    // And through the same path the API's resources take: a folder with one bad file fails.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"resourceType":"Observation","id":"x","status":"final","valueString":"no code"}"#,
    )
    .unwrap();
    let out = Command::new(&python)
        .arg(validator_script())
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "an Observation without code passed");
}

// ----- the validator -------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator_script() -> PathBuf {
    repo_root().join("tests/fhir/validate.py")
}

/// The Python with the pinned validator: `SENTINELLA_FHIR_PYTHON`, or a virtualenv created
/// once under the target folder from `tests/fhir/requirements.txt`.
fn validator_python() -> PathBuf {
    static VENV: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Ok(p) = std::env::var("SENTINELLA_FHIR_PYTHON") {
        return PathBuf::from(p);
    }
    let mut guard = VENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        return p.clone();
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fhir-venv");
    let python = venv.join("bin/python");
    let requirements = repo_root().join("tests/fhir/requirements.txt");
    let stamp = venv.join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let ok = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .unwrap()
            .success();
        assert!(ok, "python3 -m venv failed: Python 3 with venv is needed");
        let ok = Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(&requirements)
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip install -r {} failed", requirements.display());
        std::fs::write(&stamp, wanted).unwrap();
    }
    *guard = Some(python.clone());
    python
}

fn validate_folder(dir: &Path) {
    let out = Command::new(validator_python())
        .arg(validator_script())
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the FHIR validator found errors:\n{text}\n{err}"
    );
    eprintln!("{}", text.lines().last().unwrap_or(""));
}

// ----- the generated data set ----------------------------------------------------------------

struct Fixture {
    db: TestDb,
    /// A physician of both COTs (sees every generated patient).
    token: String,
    /// A nurse of COT-A only.
    token_a: String,
    /// Hypertension (BP cuff with an underscore in its id; stored plan v1 and v2).
    p_bp: i64,
    /// COPD (oximeter; no stored plan: the template applies).
    p_copd: i64,
    /// Diabetes (glucose meter; stored plan v1).
    p_dia: i64,
    /// A patient of another COT.
    p_other: i64,
    other_cot: i64,
}

const STATUS_BITS: [u16; 9] = [
    Ms::INVALID,
    Ms::QUESTIONABLE,
    Ms::NOT_AVAILABLE,
    Ms::CALIBRATION_ONGOING,
    Ms::TEST_DATA,
    Ms::DEMO_DATA,
    Ms::VALIDATED,
    Ms::EARLY_INDICATION,
    Ms::MSMT_ONGOING,
];

fn blank(device: &str, seq: i64, patient: i64, kind: ReadingKind) -> NewReading {
    let at = T0 + time::Duration::minutes(seq * 10);
    NewReading {
        ..NewReading::bare(
            device,
            seq,
            patient,
            kind,
            at,
            at + time::Duration::seconds(5),
        )
    }
}

/// Readings of one kind: plain ones across the clinical range, one per measurement-status
/// bit, one per sensor-status bit, and the odd ones (clock not set, late, converted units,
/// missing optional values).
fn readings_of(device: &str, patient: i64, kind: ReadingKind) -> Vec<NewReading> {
    let bits: Vec<u32> = match kind {
        ReadingKind::BloodPressure => (0..6).map(|b| 1 << b).collect(),
        ReadingKind::Spo2 => (0..16).map(|b| 1 << b).collect(),
        ReadingKind::Glucose => (0..12).map(|b| 1 << b).collect(),
    };
    let values: Vec<f32> = match kind {
        ReadingKind::BloodPressure => vec![120.0, 165.0, 185.0, 95.0, 85.0],
        ReadingKind::Spo2 => vec![97.0, 90.5, 86.0, 82.0],
        ReadingKind::Glucose => vec![100.0, 65.0, 50.0, 260.0, 380.0],
    };
    let mut out = Vec::new();
    let mut seq = 0;
    let mut next = |f: &dyn Fn(&mut NewReading)| {
        let mut r = blank(device, seq, patient, kind);
        let v = values[usize::try_from(seq).unwrap() % values.len()];
        match kind {
            ReadingKind::BloodPressure => {
                r.systolic = Some(v);
                r.diastolic = Some(v * 0.6);
                r.mean_arterial = Some(v * 0.73);
                r.pulse = Some(40.0 + v / 3.0);
            }
            ReadingKind::Spo2 => {
                r.spo2 = Some(v);
                r.pulse = Some(130.0 - v / 2.0);
                r.perfusion_index = Some(1.5);
            }
            ReadingKind::Glucose => {
                r.glucose_mg_dl = Some(v);
                r.glucose_sample = Some("capillary_whole_blood".into());
            }
        }
        f(&mut r);
        out.push(r);
        seq += 1;
    };
    for _ in 0..values.len() {
        next(&|_| {});
    }
    for bit in STATUS_BITS {
        next(&|r| r.status = i32::from(bit));
    }
    next(&|r| r.status = i32::from(Ms::QUESTIONABLE | Ms::TEST_DATA | Ms::EARLY_INDICATION));
    for &bit in &bits {
        next(&|r| r.sensor = i64::from(bit));
    }
    next(&|r| r.sensor = i64::from(bits.iter().fold(0, |a, b| a | b)));
    next(&|r| {
        r.clock_unset = true;
        r.measured_at = r.received_at;
    });
    // A backlog reading (late) and a clock far ahead.
    next(&|r| r.received_at += time::Duration::hours(30));
    next(&|r| r.measured_at += time::Duration::days(400));
    match kind {
        ReadingKind::BloodPressure => {
            next(&|r| r.source_unit = Some("kPa".into()));
            next(&|r| r.mean_arterial = None);
            next(&|r| r.pulse = None);
            next(&|r| {
                r.pulse = None;
                r.status = i32::from(Ms::INVALID);
            });
        }
        ReadingKind::Spo2 => {
            next(&|r| r.perfusion_index = None);
            next(&|r| r.pulse = None);
        }
        ReadingKind::Glucose => {
            for sample in SampleType::ALL {
                next(&|r| r.glucose_sample = Some(sample.as_str().into()));
            }
            next(&|r| r.glucose_sample = None);
            for meal in MealContext::ALL {
                next(&|r| r.glucose_meal = Some(meal.as_str().into()));
            }
            next(&|r| {
                r.source_unit = Some("mmol/L".into());
                r.glucose_meal = Some("postprandial".into());
            });
        }
    }
    out
}

fn plan_json(template: &str) -> String {
    let mut plan = alerting::plan::template(template).unwrap();
    if template == "diabetes" {
        // A patient-specific hypoglycaemia threshold: level 1 below 80 instead of 70, so a
        // reading of 75 mg/dL is L under this plan and N under the template.
        for rule in &mut plan.rules {
            if let alerting::plan::Check::Threshold { bands, .. } = &mut rule.check {
                for c in bands.iter_mut().flat_map(|b| b.any.iter_mut()) {
                    if c.below == Some(70.0) {
                        c.below = Some(80.0);
                    }
                }
            }
        }
    }
    serde_json::to_string(&plan).unwrap()
}

fn trigger(
    patient: i64,
    rule: &str,
    severity: Severity,
    metric: Option<&str>,
    readings: &[(&str, i64)],
) -> Trigger {
    Trigger {
        patient_id: patient,
        rule_id: rule.into(),
        rule_kind: if metric.is_some() {
            "threshold"
        } else {
            "device"
        }
        .into(),
        title: format!("{rule} for patient {patient}"),
        severity,
        plan_version: metric.map(|_| 1),
        metric: metric.map(str::to_owned),
        unit: metric.map(|_| "mm[Hg]".to_owned()),
        value: metric.map(|_| 185.0),
        higher_is_worse: true,
        readings: readings
            .iter()
            .map(|&(device, seq)| AlertReading {
                device_id: device.into(),
                seq,
                measured_at: T0 + time::Duration::minutes(seq * 10),
                value: Some(185.0),
            })
            .collect(),
        at: T0 + time::Duration::hours(1),
        due_at: Some(T0 + time::Duration::hours(2)),
        detail: None,
        unconfirmed: false,
    }
}

async fn open(store: &store::Store, t: &Trigger) -> i64 {
    match store.trigger_alert(t).await.unwrap() {
        store::TriggerOutcome::Opened { alert_id } => alert_id,
        other => panic!("expected a new alert, got {other:?}"),
    }
}

async fn fixture(db: TestDb) -> Fixture {
    let store = &db.store;
    let cot = store.add_cot("COT-A", "COT di test").await.unwrap();
    let other = store.add_cot("COT-B", "Altra COT").await.unwrap();
    let mut ids = Vec::new();
    for (cot_id, code, condition) in [
        (cot.id, "P-BP", "hypertension"),
        (cot.id, "P-COPD", "copd"),
        (cot.id, "P-DIA", "diabetes"),
        (other.id, "P-OTHER", "hypertension"),
    ] {
        let p = store
            .add_patient(&NewPatient {
                cot_id,
                code: code.into(),
                display_name: format!("Paziente {code}"),
                birth_year: Some(1950),
                conditions: vec![condition.into()],
            })
            .await
            .unwrap();
        ids.push(p.id);
    }
    let (p_bp, p_copd, p_dia, p_other) = (ids[0], ids[1], ids[2], ids[3]);
    for (id, patient, kind, model) in [
        ("bp_1", p_bp, DeviceKind::BloodPressure, Some("UA-651")),
        ("ox-1", p_copd, DeviceKind::Spo2, None),
        ("glu-1", p_dia, DeviceKind::Glucose, Some("Contour")),
        ("bp-old", p_bp, DeviceKind::BloodPressure, None),
        ("bp-other", p_other, DeviceKind::BloodPressure, None),
    ] {
        store
            .add_device(&NewDevice {
                id: id.into(),
                patient_id: patient,
                kind,
                secret_hash: store::credentials::hash_secret("s"),
                model: model.map(str::to_owned),
            })
            .await
            .unwrap();
    }
    store.revoke_device("bp-old", T0).await.unwrap();
    let mut batch = CommitBatch::default();
    batch
        .readings
        .extend(readings_of("bp_1", p_bp, ReadingKind::BloodPressure));
    batch
        .readings
        .extend(readings_of("ox-1", p_copd, ReadingKind::Spo2));
    batch
        .readings
        .extend(readings_of("glu-1", p_dia, ReadingKind::Glucose));
    batch.readings.extend(
        readings_of("bp-other", p_other, ReadingKind::BloodPressure)
            .into_iter()
            .take(3),
    );
    batch.statuses.push(DeviceStatusUpdate {
        device_id: "bp_1".into(),
        at: T0,
        online: true,
        battery: Some(64),
        firmware: Some("1.4.2".into()),
        rssi: Some(-60),
    });
    store.commit_batch(&batch).await.unwrap();
    for (patient, template, versions) in [
        (p_bp, "hypertension", 2),
        (p_dia, "diabetes", 1),
        (p_other, "hypertension", 1),
    ] {
        for v in 0..versions {
            store
                .add_care_plan(&NewCarePlan {
                    patient_id: patient,
                    template: Some(template.into()),
                    plan: plan_json(template),
                    author: "token:dottoressa".into(),
                    reason: format!("version {}", v + 1),
                })
                .await
                .unwrap();
        }
    }
    // A reading that arrives after the stored plans: judged by the patient's own plan.
    let now = OffsetDateTime::now_utc();
    let mut after = blank("glu-1", 1000, p_dia, ReadingKind::Glucose);
    after.measured_at = now;
    after.received_at = now + time::Duration::seconds(1);
    after.glucose_mg_dl = Some(75.0);
    after.glucose_sample = Some("capillary_whole_blood".into());
    store
        .commit_batch(&CommitBatch {
            readings: vec![after],
            ..CommitBatch::default()
        })
        .await
        .unwrap();
    // Every alert state: new and active; acknowledged; acknowledged and assigned (taken);
    // resolved with an outcome; cleared while new; escalated; a device alert without
    // readings; an alert on SpO2 and one on glucose; one in the other COT.
    let a_new = open(
        store,
        &trigger(
            p_bp,
            "bp-high",
            Severity::Critical,
            Some("systolic"),
            &[("bp_1", 2), ("bp_1", 7)],
        ),
    )
    .await;
    let a_ack = open(
        store,
        &trigger(p_bp, "pulse", Severity::High, Some("pulse"), &[("bp_1", 3)]),
    )
    .await;
    let a_taken = open(
        store,
        &trigger(
            p_bp,
            "bp-low",
            Severity::Medium,
            Some("systolic"),
            &[("bp_1", 4)],
        ),
    )
    .await;
    let a_done = open(
        store,
        &trigger(
            p_copd,
            "spo2-low",
            Severity::High,
            Some("spo2"),
            &[("ox-1", 3)],
        ),
    )
    .await;
    let _cleared = open(
        store,
        &trigger(
            p_dia,
            "glucose-low",
            Severity::Low,
            Some("glucose"),
            &[("glu-1", 2)],
        ),
    )
    .await;
    let a_escalated = open(
        store,
        &trigger(
            p_dia,
            "glucose-high",
            Severity::Info,
            Some("glucose"),
            &[("glu-1", 3)],
        ),
    )
    .await;
    let _device = open(
        store,
        &trigger(p_copd, "device-offline", Severity::Medium, None, &[]),
    )
    .await;
    let _other = open(
        store,
        &trigger(
            p_other,
            "bp-high",
            Severity::High,
            Some("systolic"),
            &[("bp-other", 1)],
        ),
    )
    .await;
    let at = T0 + time::Duration::hours(1);
    store
        .acknowledge_alert(a_ack, "token:nurse", at)
        .await
        .unwrap();
    store
        .acknowledge_alert(a_taken, "token:nurse", at)
        .await
        .unwrap();
    store
        .assign_alert(a_taken, "token:nurse", Some("giulia.verdi"), at)
        .await
        .unwrap();
    store
        .acknowledge_alert(a_done, "token:nurse", at)
        .await
        .unwrap();
    store
        .resolve_alert(a_done, "token:nurse", "called_patient", Some("ok"), at)
        .await
        .unwrap();
    store
        .clear_alert(p_dia, "glucose-low", at, None, None)
        .await
        .unwrap();
    let late = T0 + time::Duration::hours(3);
    store
        .escalate_alert(a_escalated, late, late + time::Duration::hours(1))
        .await
        .unwrap()
        .unwrap();
    let _ = a_new;
    let token = api::ops::identity::service_account(
        store,
        "fhir-client",
        store::Role::Physician,
        &[cot.id, other.id],
    )
    .await
    .unwrap();
    let token_a =
        api::ops::identity::service_account(store, "fhir-client-a", store::Role::Nurse, &[cot.id])
            .await
            .unwrap();
    Fixture {
        db,
        token,
        token_a,
        p_bp,
        p_copd,
        p_dia,
        p_other,
        other_cot: other.id,
    }
}

// ----- requests ------------------------------------------------------------------------------

struct Client<'a> {
    f: &'a Fixture,
    out: PathBuf,
    n: usize,
    /// Every reference any answer held.
    references: BTreeSet<String>,
}

fn collect_references(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => collect_references(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, out)),
        _ => {}
    }
}

impl Client<'_> {
    async fn raw(&self, uri: &str, token: Option<&str>) -> (StatusCode, String, Value) {
        let mut req = Request::get(uri).header("host", "fhir.test");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app(AppState::new(self.f.db.store.clone()))
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, ct, body)
    }

    /// GETs `uri` (relative to /fhir/r4), checks the status and the content type, and keeps
    /// the body for the validator.
    async fn get_as(&mut self, uri: &str, token: Option<&str>, want: StatusCode) -> Value {
        let full = if uri.starts_with("http") {
            uri.strip_prefix("http://fhir.test").unwrap().to_owned()
        } else {
            format!("/fhir/r4/{uri}")
        };
        let (status, ct, body) = self.raw(&full, token).await;
        assert_eq!(status, want, "GET {full}: {body}");
        assert_eq!(ct, "application/fhir+json", "GET {full}");
        collect_references(&body, &mut self.references);
        self.n += 1;
        let name: String = full
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(80)
            .collect();
        std::fs::write(
            self.out.join(format!("{:04}-{name}.json", self.n)),
            serde_json::to_vec_pretty(&body).unwrap(),
        )
        .unwrap();
        body
    }

    async fn get(&mut self, uri: &str) -> Value {
        let token = self.f.token.clone();
        self.get_as(uri, Some(&token), StatusCode::OK).await
    }

    /// Every resource of a search, following `next` links; checks `total`.
    async fn search_all(&mut self, uri: &str) -> Vec<Value> {
        let mut page = self.get(uri).await;
        let total = page["total"].as_u64().unwrap();
        let mut all = Vec::new();
        loop {
            assert_eq!(page["resourceType"], "Bundle");
            assert_eq!(page["type"], "searchset");
            for e in page["entry"].as_array().cloned().unwrap_or_default() {
                all.push(e["resource"].clone());
            }
            let next = page["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().to_owned());
            match next {
                Some(url) => page = self.get(&url).await,
                None => break,
            }
        }
        assert_eq!(all.len() as u64, total, "{uri}");
        all
    }
}

fn ids(resources: &[Value]) -> Vec<String> {
    resources
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn codes_of(resources: &[Value], pointer: &str) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|r| {
            r.pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

// ----- the test ------------------------------------------------------------------------------

async fn fhir_api(db: TestDb) {
    let f = fixture(db).await;
    // `SENTINELLA_FHIR_OUT=folder` keeps what the API answered, for a look by hand.
    let dir = tempfile::tempdir().unwrap();
    let out = match std::env::var("SENTINELLA_FHIR_OUT") {
        Ok(keep) => {
            let keep = Path::new(&keep).join(format!("{:?}", f.db.store.backend()).to_lowercase());
            std::fs::create_dir_all(&keep).unwrap();
            keep
        }
        Err(_) => dir.path().to_owned(),
    };
    let mut c = Client {
        f: &f,
        out: out.clone(),
        n: 0,
        references: BTreeSet::new(),
    };
    let audit_before = f.db.store.list_audit(10_000).await.unwrap().len();

    let cap = c.get("metadata").await;
    assert_eq!(cap["fhirVersion"], "4.0.1");

    // Patients.
    let patients = c.search_all("Patient?_count=2").await;
    for id in ids(&patients) {
        c.get(&format!("Patient/{id}")).await;
    }
    let found = c
        .search_all("Patient?identifier=urn:sentinella:patient-code%7CP-DIA")
        .await;
    assert_eq!(ids(&found), vec![f.p_dia.to_string()]);

    // Devices, with their IEEE 11073 specialisation.
    let devices = c.search_all("Device").await;
    assert_eq!(devices.len(), 5);
    for d in &devices {
        let read = c
            .get(&format!("Device/{}", d["id"].as_str().unwrap()))
            .await;
        assert_eq!(&read, d);
    }
    let specs = codes_of(&devices, "/specialization/0/systemType/coding/0/code");
    assert_eq!(
        specs,
        ["528388", "528391", "528401"].map(String::from).into()
    );
    let bp = c.get("Device/bp.1").await;
    assert_eq!(bp["version"][0]["value"], "1.4.2");
    assert_eq!(bp["patient"]["reference"], format!("Patient/{}", f.p_bp));
    assert_eq!(c.get("Device/bp-old").await["status"], "inactive");
    let mine = c
        .search_all(&format!("Device?patient=Patient/{}", f.p_bp))
        .await;
    assert_eq!(mine.len(), 2);

    // Observations: every one of every patient, page by page, then each read by id.
    let mut observations = Vec::new();
    for p in [f.p_bp, f.p_copd, f.p_dia, f.p_other] {
        let all = c
            .search_all(&format!("Observation?patient=Patient/{p}&_count=17"))
            .await;
        assert!(!all.is_empty());
        observations.extend(all);
    }
    for id in ids(&observations) {
        let o = c.get(&format!("Observation/{id}")).await;
        assert_eq!(o["id"], id.as_str());
    }
    let all_codes = codes_of(&observations, "/code/coding/0/code");
    for code in [
        "150020", "149546", "150456", "149530", "8410608", "150604", "8417752", "8417864",
        "160184", "160188", "160192", "160196", "160200", "160204", "160208", "160212", "160020",
    ] {
        assert!(
            all_codes.contains(code),
            "no Observation coded {code}: {all_codes:?}"
        );
    }
    let statuses = codes_of(&observations, "/status");
    assert_eq!(
        statuses,
        ["entered-in-error", "final", "preliminary"]
            .map(String::from)
            .into()
    );
    let flat = serde_json::to_string(&observations).unwrap();
    for needle in [
        "\"HTEST\"",
        "\"questionable\"",
        "\"calibration-ongoing\"",
        "\"validated-data\"",
        "\"early-indication\"",
        "\"msmt-ongoing\"",
        "\"not-performed\"",
        "\"error\"",
        "\"8410608.5\"",
        "\"150604.0\"",
        "\"150604.15\"",
        "\"8417752.10\"",
        "\"time-fault\"",
        "\"unset\"",
        "\"late\"",
        "\"ahead\"",
        "\"HH\"",
        "\"LL\"",
        "\"H\"",
        "\"L\"",
        "\"N\"",
        "\"8417864\"",
        "\"referenceRange\"",
    ] {
        assert!(flat.contains(needle), "no Observation carries {needle}");
    }
    // Interpretation and reference range from the plan in force when a reading arrived:
    // the stored plan (low below 80) for the late glucose reading, the template before it.
    let own = c.get("Observation/glu-1000-glu-1").await;
    assert_eq!(own["interpretation"][0]["coding"][0]["code"], "L", "{own}");
    assert_eq!(own["referenceRange"][0]["low"]["value"], 80.0);
    assert!(
        own["referenceRange"][0]["text"]
            .as_str()
            .unwrap()
            .contains("care plan v1")
    );
    let early = c.get("Observation/glu-0-glu-1").await;
    assert_eq!(early["referenceRange"][0]["low"]["value"], 70.0, "{early}");
    // Search by code and date.
    let hr = c
        .search_all(&format!(
            "Observation?subject={}&code=http://loinc.org%7C8867-4",
            f.p_bp
        ))
        .await;
    assert!(
        !hr.is_empty()
            && hr
                .iter()
                .all(|o| o["id"].as_str().unwrap().starts_with("hr-"))
    );
    let panel = c
        .search_all(&format!("Observation?patient={}&code=85354-9&date=ge2026-11-01T09:00:00Z&date=lt2026-11-01T10:00:00Z", f.p_bp))
        .await;
    assert_eq!(
        ids(&panel),
        [
            "bp-6-bp.1",
            "bp-7-bp.1",
            "bp-8-bp.1",
            "bp-9-bp.1",
            "bp-10-bp.1",
            "bp-11-bp.1"
        ]
    );
    // An offset past everything: an empty page, no next link.
    let far = c
        .get(&format!(
            "Observation?patient={}&_offset=18446744073709551615",
            f.p_bp
        ))
        .await;
    assert!(far.get("entry").is_none() && far["link"].as_array().unwrap().len() == 1);
    let none = c
        .search_all(&format!("Observation?patient={}&date=2020-01-01", f.p_bp))
        .await;
    assert!(none.is_empty());

    // Care plans and their thresholds.
    let plans = c.search_all(&format!("CarePlan?patient={}", f.p_bp)).await;
    assert_eq!(
        ids(&plans),
        [format!("{}-2", f.p_bp), format!("{}-1", f.p_bp)]
    );
    assert_eq!(plans[0]["status"], "active");
    assert_eq!(plans[1]["status"], "revoked");
    let active = c
        .search_all(&format!("CarePlan?patient={}&status=active", f.p_dia))
        .await;
    assert_eq!(active.len(), 1);
    let mut definitions = HashSet::new();
    for p in [f.p_bp, f.p_copd, f.p_dia, f.p_other] {
        for plan in c.search_all(&format!("CarePlan?patient={p}")).await {
            let read = c
                .get(&format!("CarePlan/{}", plan["id"].as_str().unwrap()))
                .await;
            assert_eq!(read["id"], plan["id"]);
            for ad in plan["contained"].as_array().unwrap() {
                for r in ad["observationRequirement"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    definitions.insert(r["reference"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    assert!(definitions.len() >= 6, "{definitions:?}");
    for d in &definitions {
        let od = c.get(d).await;
        assert!(od["qualifiedInterval"].as_array().unwrap().len() >= 2);
    }

    // Alerts as Tasks: every state, their focus resolves to an Observation.
    let tasks = c.search_all("Task?_count=3").await;
    assert_eq!(tasks.len(), 8);
    assert_eq!(
        codes_of(&tasks, "/status"),
        ["accepted", "completed", "in-progress", "requested"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        codes_of(&tasks, "/priority"),
        ["asap", "routine", "stat", "urgent"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        codes_of(&tasks, "/businessStatus/coding/0/code"),
        ["active", "cleared"].map(String::from).into()
    );
    for t in &tasks {
        let read = c.get(&format!("Task/{}", t["id"].as_str().unwrap())).await;
        assert_eq!(read["id"], t["id"]);
        for input in t["input"].as_array().cloned().unwrap_or_default() {
            c.get(input["valueReference"]["reference"].as_str().unwrap())
                .await;
        }
        if let Some(focus) = t["focus"]["reference"].as_str() {
            c.get(focus).await;
        }
    }
    assert!(
        serde_json::to_string(&tasks)
            .unwrap()
            .contains("escalated 1 time(s)"),
        "no escalated Task"
    );
    let taken = c
        .search_all(&format!("Task?patient={}&status=in-progress", f.p_bp))
        .await;
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0]["owner"]["display"], "giulia.verdi");
    let open = c.search_all("Task?status=requested,accepted").await;
    assert_eq!(open.len(), 6);

    // The telemonitoring report of November: a DiagnosticReport whose results are the
    // period's Observations (they resolve below, with every other reference), and a
    // DocumentReference with the PDF in Italian and English.
    let report_id = format!("tm-{}-20261101-20261130", f.p_bp);
    let dr = c.get(&format!("DiagnosticReport/{report_id}")).await;
    assert_eq!(dr["resourceType"], "DiagnosticReport");
    assert_eq!(dr["status"], "final");
    assert_eq!(dr["subject"]["reference"], format!("Patient/{}", f.p_bp));
    assert_eq!(dr["effectivePeriod"]["start"], "2026-11-01T00:00:00Z");
    let results = dr["result"].as_array().unwrap();
    assert!(results.len() >= 10, "{dr}");
    assert!(results.iter().all(|r| {
        r["reference"]
            .as_str()
            .unwrap()
            .starts_with("Observation/bp-")
    }));
    assert_eq!(dr["presentedForm"].as_array().unwrap().len(), 2);
    let doc = c.get(&format!("DocumentReference/{report_id}")).await;
    assert_eq!(
        doc["context"]["related"][0]["reference"],
        format!("DiagnosticReport/{report_id}")
    );
    let content = doc["content"].as_array().unwrap();
    assert_eq!(
        codes_of(content, "/attachment/language"),
        ["en", "it"].map(String::from).into()
    );
    for item in content {
        use base64::Engine;
        let pdf = base64::engine::general_purpose::STANDARD
            .decode(item["attachment"]["data"].as_str().unwrap())
            .unwrap();
        assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
        assert_eq!(item["attachment"]["size"], pdf.len());
    }
    let found = c
        .search_all(&format!("DiagnosticReport?patient={}", f.p_bp))
        .await;
    assert_eq!(found.len(), 2);
    let found = c
        .search_all(&format!("DocumentReference?patient={}", f.p_bp))
        .await;
    assert_eq!(found.len(), 2);

    // Errors are OperationOutcomes.
    for (uri, want) in [
        ("DiagnosticReport/tm-1-20261101", StatusCode::NOT_FOUND),
        (
            "DocumentReference/tm-999999-20261101-20261130",
            StatusCode::NOT_FOUND,
        ),
        ("DiagnosticReport", StatusCode::BAD_REQUEST),
        ("Patient/999999", StatusCode::NOT_FOUND),
        ("Patient/abc", StatusCode::NOT_FOUND),
        ("Observation/bp-999-bp.1", StatusCode::NOT_FOUND),
        ("Observation/hr-0-glu-1", StatusCode::NOT_FOUND),
        ("Observation/nonsense", StatusCode::NOT_FOUND),
        ("CarePlan/1-99", StatusCode::NOT_FOUND),
        ("ObservationDefinition/1-1-nope", StatusCode::NOT_FOUND),
        ("Task/999999", StatusCode::NOT_FOUND),
        ("Device/none", StatusCode::NOT_FOUND),
        ("Basic/1", StatusCode::NOT_FOUND),
        ("Observation", StatusCode::BAD_REQUEST),
        (
            "Observation?patient=1&date=yesterday",
            StatusCode::BAD_REQUEST,
        ),
        ("Observation?patient=1&colour=red", StatusCode::BAD_REQUEST),
        ("Observation?patient=1&_count=0", StatusCode::BAD_REQUEST),
        (
            "Observation?patient=1&date=9999-12-31",
            StatusCode::BAD_REQUEST,
        ),
        ("Task?status=done", StatusCode::BAD_REQUEST),
        ("CarePlan", StatusCode::BAD_REQUEST),
    ] {
        let token = f.token.clone();
        let body = c.get_as(uri, Some(&token), want).await;
        assert_eq!(body["resourceType"], "OperationOutcome", "{uri}");
    }
    let (bad, _) = auth::new_token();
    for token in [None, Some(bad.as_str())] {
        let body = c
            .get_as(
                &format!("Patient/{}", f.p_bp),
                token,
                StatusCode::UNAUTHORIZED,
            )
            .await;
        assert_eq!(body["resourceType"], "OperationOutcome");
    }

    // Tenancy: the physician of both COTs sees the other COT's patient; a nurse of COT-A
    // gets 404 for it and empty searches (api/tests/authz.rs covers every route).
    let other_refs = format!("Patient/{}", f.p_other);
    assert!(flat.contains(&other_refs));
    let _ = f.other_cot;
    let token_a = f.token_a.clone();
    c.get_as(&other_refs, Some(&token_a), StatusCode::NOT_FOUND)
        .await;
    for search in [
        "Observation",
        "Task",
        "Device",
        "CarePlan",
        "DiagnosticReport",
        "DocumentReference",
    ] {
        let bundle = c
            .get_as(
                &format!("{search}?patient={}", f.p_other),
                Some(&token_a),
                StatusCode::OK,
            )
            .await;
        assert_eq!(bundle["total"], 0, "{search}: {bundle}");
    }
    let own = c
        .get_as(
            &format!("Observation?patient={}", f.p_bp),
            Some(&token_a),
            StatusCode::OK,
        )
        .await;
    assert!(own["total"].as_u64().unwrap() > 0);

    // Every read of patient data is audited under the token's name.
    let audit = f.db.store.list_audit(10_000).await.unwrap();
    let fresh = &audit[..audit.len() - audit_before];
    assert!(
        fresh
            .iter()
            .all(|e| e.actor.starts_with("user:fhir-client"))
    );
    for action in [
        "fhir.patient.read",
        "fhir.patient.search",
        "fhir.device.read",
        "fhir.device.search",
        "fhir.observation.read",
        "fhir.observation.search",
        "fhir.careplan.read",
        "fhir.careplan.search",
        "fhir.observationdefinition.read",
        "fhir.task.read",
        "fhir.task.search",
        "fhir.diagnosticreport.read",
        "fhir.diagnosticreport.search",
        "fhir.documentreference.read",
        "fhir.documentreference.search",
    ] {
        assert!(
            fresh.iter().any(|e| e.action == action),
            "no audit entry {action}"
        );
    }
    assert!(fresh.iter().any(|e| e.action == "fhir.observation.search"
        && e.target.starts_with(&format!("patient:{} ", f.p_copd))));

    // Every reference in every answer resolves (the pages and resources it leads to are
    // validated too).
    let references = std::mem::take(&mut c.references);
    assert!(references.len() > 100, "{references:?}");
    for r in &references {
        c.get(r).await;
    }

    // Everything the API answered, through the independent validator.
    validate_folder(&out);
}
