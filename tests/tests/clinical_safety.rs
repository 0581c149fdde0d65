//! The clinical safety net, through the real stack: a device publishes over MQTT, the gateway
//! commits, the engine evaluates with the plan production picks (no stored plan: the
//! patient's conditions composed, with the safety net), and the alerts are read back from the
//! alerts API. On SQLite and PostgreSQL.
//!
//! The cases were written from the guidelines (NEWS2 2017 single-parameter scores, ESC/ESH
//! 2018/2023 grades, ADA Standards of Care hypoglycaemia levels and hyperglycaemia ranges, ESH
//! home BP monitoring), before the expected severities were compared with the engine's bands:
//! - a single reading scoring NEWS2 3 (SpO2 ≤91 % on scale 1, ≤83 % on scale 2; SBP ≤90;
//!   pulse ≤40 or ≥131), ESC/ESH grade 3 (≥180 and/or ≥110), or ADA level 2 hypoglycaemia
//!   (<54 mg/dL) → critical at once, whatever the patient's conditions and devices;
//! - ADA level 1 (<70) → high; >250 mg/dL → medium, ≥350 → high, on one reading;
//! - NEWS2 2 (SpO2 92-93 %, SBP 91-100) → medium only when a repeat confirms it;
//! - quiet: a stable COPD patient at 88-92 %, grade 1-2 BP on one reading, normal values,
//!   device-flagged readings (cuff loose, low perfusion, control solution), resends;
//! - 7-day home BP mean ≥135/85 → a low review.

use std::time::Duration;

use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use serde_json::Value;
use store::DeviceKind;

const MIN: i64 = 60_000;

fn bp(seq: u32, ts: i64, sys: u32, dia: u32, pulse: u32) -> String {
    format!(
        r#"{{"seq":{seq},"ts":{ts},"kind":"bp","sys":{sys},"dia":{dia},"pulse":{pulse},"unit":"mmHg"}}"#
    )
}

fn spo2(seq: u32, ts: i64, v: u32, pulse: u32) -> String {
    format!(r#"{{"seq":{seq},"ts":{ts},"kind":"spo2","spo2":{v},"pulse":{pulse}}}"#)
}

fn glucose(seq: u32, ts: i64, v: f64, unit: &str) -> String {
    format!(
        r#"{{"seq":{seq},"ts":{ts},"kind":"glucose","value":{v},"unit":"{unit}","sample":"capillary_whole_blood"}}"#
    )
}

fn batch(readings: &[String]) -> String {
    format!(r#"{{"v":1,"readings":[{}]}}"#, readings.join(","))
}

/// What a case expects of the patient's open clinical alerts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// An alert of exactly this severity on this rule.
    Alert(&'static str, &'static str),
    /// No clinical alert (severity above info) at all.
    Quiet,
}

struct Case {
    name: &'static str,
    conditions: &'static [&'static str],
    device: DeviceKind,
    readings: fn(i64) -> Vec<String>,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    use DeviceKind::{BloodPressure as Bp, Glucose as Glu, Spo2 as Ox};
    use Expect::{Alert, Quiet};
    vec![
        // NEWS2 SpO2, scale 1 for everyone but hypercapnic COPD.
        Case {
            name: "no condition, SpO2 84 % once",
            conditions: &[],
            device: Ox,
            readings: |t| vec![spo2(1, t, 84, 88)],
            expect: Alert("spo2-low", "critical"),
        },
        Case {
            name: "heart failure, SpO2 84 % once a day",
            conditions: &["heart_failure"],
            device: Ox,
            readings: |t| vec![spo2(1, t, 84, 92)],
            expect: Alert("spo2-low", "critical"),
        },
        Case {
            name: "hypertension with an oximeter, SpO2 90 %",
            conditions: &["hypertension"],
            device: Ox,
            readings: |t| vec![spo2(1, t, 90, 80)],
            expect: Alert("spo2-low", "critical"),
        },
        Case {
            name: "no condition, SpO2 93 % once (NEWS2 2 needs a repeat)",
            conditions: &[],
            device: Ox,
            readings: |t| vec![spo2(1, t, 93, 80)],
            expect: Quiet,
        },
        Case {
            name: "no condition, SpO2 93 % then 92 % (confirmed)",
            conditions: &[],
            device: Ox,
            readings: |t| vec![spo2(1, t - 6 * MIN, 93, 80), spo2(2, t, 92, 82)],
            expect: Alert("spo2-low", "medium"),
        },
        Case {
            name: "no condition, SpO2 96 %",
            conditions: &[],
            device: Ox,
            readings: |t| vec![spo2(1, t, 96, 75)],
            expect: Quiet,
        },
        Case {
            name: "COPD, SpO2 80 % once",
            conditions: &["copd"],
            device: Ox,
            readings: |t| vec![spo2(1, t, 80, 95)],
            expect: Alert("spo2-low", "critical"),
        },
        Case {
            name: "COPD, SpO2 85 % once (NEWS2 scale 2 scores 2: urgent)",
            conditions: &["copd"],
            device: Ox,
            readings: |t| vec![spo2(1, t, 85, 90)],
            expect: Alert("spo2-low", "high"),
        },
        Case {
            name: "COPD stable at 88-92 %",
            conditions: &["copd"],
            device: Ox,
            readings: |t| {
                vec![
                    spo2(1, t - 60 * MIN, 89, 80),
                    spo2(2, t - 30 * MIN, 88, 82),
                    spo2(3, t, 91, 79),
                ]
            },
            expect: Quiet,
        },
        Case {
            name: "COPD and heart failure at 90 % (scale 2 takes precedence)",
            conditions: &["heart_failure", "copd"],
            device: Ox,
            readings: |t| vec![spo2(1, t, 90, 80)],
            expect: Quiet,
        },
        // ESC/ESH grade 3, NEWS2 systolic.
        Case {
            name: "hypertension, 185/95 once",
            conditions: &["hypertension"],
            device: Bp,
            readings: |t| vec![bp(1, t, 185, 95, 80)],
            expect: Alert("bp-high", "critical"),
        },
        Case {
            name: "diabetes with a cuff, 200/120",
            conditions: &["diabetes"],
            device: Bp,
            readings: |t| vec![bp(1, t, 200, 120, 88)],
            expect: Alert("bp-high", "critical"),
        },
        Case {
            name: "no condition, 150/112 (diastolic grade 3)",
            conditions: &[],
            device: Bp,
            readings: |t| vec![bp(1, t, 150, 112, 80)],
            expect: Alert("bp-high", "critical"),
        },
        Case {
            name: "heart failure, 88/55",
            conditions: &["heart_failure"],
            device: Bp,
            readings: |t| vec![bp(1, t, 88, 55, 70)],
            expect: Alert("bp-low", "critical"),
        },
        Case {
            name: "COPD with a cuff, 96/60 twice (NEWS2 2, confirmed)",
            conditions: &["copd"],
            device: Bp,
            readings: |t| vec![bp(1, t - 6 * MIN, 96, 60, 80), bp(2, t, 97, 61, 80)],
            expect: Alert("bp-low", "medium"),
        },
        Case {
            name: "hypertension, 142/91 once",
            conditions: &["hypertension"],
            device: Bp,
            readings: |t| vec![bp(1, t, 142, 91, 74)],
            expect: Quiet,
        },
        Case {
            name: "hypertension, 165/102 once (grade 2)",
            conditions: &["hypertension"],
            device: Bp,
            readings: |t| vec![bp(1, t, 165, 102, 74)],
            expect: Quiet,
        },
        // NEWS2 pulse, from either device.
        Case {
            name: "heart failure, pulse 38 on the cuff",
            conditions: &["heart_failure"],
            device: Bp,
            readings: |t| vec![bp(1, t, 118, 70, 38)],
            expect: Alert("pulse", "critical"),
        },
        Case {
            name: "COPD, pulse 135 on the oximeter",
            conditions: &["copd"],
            device: Ox,
            readings: |t| vec![spo2(1, t, 95, 135)],
            expect: Alert("pulse", "critical"),
        },
        // ADA glucose.
        Case {
            name: "diabetes, 45 mg/dL",
            conditions: &["diabetes"],
            device: Glu,
            readings: |t| vec![glucose(1, t, 45.0, "mg/dL")],
            expect: Alert("glucose-low", "critical"),
        },
        Case {
            name: "hypertension with a meter, 45 mg/dL",
            conditions: &["hypertension"],
            device: Glu,
            readings: |t| vec![glucose(1, t, 45.0, "mg/dL")],
            expect: Alert("glucose-low", "critical"),
        },
        Case {
            name: "hypertension and diabetes, 2.5 mmol/L",
            conditions: &["hypertension", "diabetes"],
            device: Glu,
            readings: |t| vec![glucose(1, t, 2.5, "mmol/L")],
            expect: Alert("glucose-low", "critical"),
        },
        Case {
            name: "diabetes, 65 mg/dL (level 1)",
            conditions: &["diabetes"],
            device: Glu,
            readings: |t| vec![glucose(1, t, 65.0, "mg/dL")],
            expect: Alert("glucose-low", "high"),
        },
        Case {
            name: "no condition, 265 mg/dL once",
            conditions: &[],
            device: Glu,
            readings: |t| vec![glucose(1, t, 265.0, "mg/dL")],
            expect: Alert("glucose-high", "medium"),
        },
        Case {
            name: "diabetes, 380 mg/dL once",
            conditions: &["diabetes"],
            device: Glu,
            readings: |t| vec![glucose(1, t, 380.0, "mg/dL")],
            expect: Alert("glucose-high", "high"),
        },
        Case {
            name: "diabetes, 130 mg/dL",
            conditions: &["diabetes"],
            device: Glu,
            readings: |t| vec![glucose(1, t, 130.0, "mg/dL")],
            expect: Quiet,
        },
        // Device-flagged readings raise no clinical alert.
        Case {
            name: "control solution at 40 mg/dL",
            conditions: &["diabetes"],
            device: Glu,
            readings: |t| {
                vec![format!(
                    r#"{{"seq":1,"ts":{t},"kind":"glucose","value":40,"unit":"mg/dL","sample":"control_solution"}}"#
                )]
            },
            expect: Quiet,
        },
        Case {
            name: "190/115 with the cuff too loose",
            conditions: &["hypertension"],
            device: Bp,
            readings: |t| {
                vec![format!(
                    r#"{{"seq":1,"ts":{t},"kind":"bp","sys":190,"dia":115,"unit":"mmHg","sensor":2}}"#
                )]
            },
            expect: Quiet,
        },
        Case {
            name: "SpO2 84 % with low perfusion",
            conditions: &["heart_failure"],
            device: Ox,
            readings: |t| {
                vec![format!(
                    r#"{{"seq":1,"ts":{t},"kind":"spo2","spo2":84,"sensor":32}}"#
                )]
            },
            expect: Quiet,
        },
        // A clock that says it is set but reads 1970: the reading is judged, not quarantined.
        Case {
            name: "diabetes, 48 mg/dL from a clock a day ahead",
            conditions: &["diabetes"],
            device: Glu,
            readings: |t| vec![glucose(1, t + 24 * 60 * MIN, 48.0, "mg/dL")],
            expect: Alert("glucose-low", "critical"),
        },
        Case {
            name: "diabetes, 45 mg/dL from a clock reset to 1970",
            conditions: &["diabetes"],
            device: Glu,
            readings: |_| vec![glucose(1, 12_000, 45.0, "mg/dL")],
            expect: Alert("glucose-low", "critical"),
        },
        // ESH home monitoring: six days of readings at 142/88 (a backlog, then today's).
        Case {
            name: "hypertension, 7-day home mean 142/88",
            conditions: &["hypertension"],
            device: Bp,
            readings: |t| {
                (0..14u32)
                    .map(|i| bp(i + 1, t - i64::from(13 - i) * 11 * 60 * MIN, 142, 88, 72))
                    .collect()
            },
            expect: Alert("bp-home-average", "low"),
        },
    ]
}

/// The patient's alerts from the API.
async fn alerts_api(stack: &Stack, patient: i64) -> Vec<Value> {
    let (status, body) = stack
        .get(&format!("/api/v1/alerts?patient={patient}&limit=100"))
        .await
        .unwrap_or((0, Value::Null));
    assert_eq!(status, 200, "{body}");
    body["alerts"].as_array().cloned().unwrap_or_default()
}

fn clinical(alerts: &[Value]) -> Vec<(String, String)> {
    alerts
        .iter()
        .filter(|a| a["severity"] != "info" && a["rule_kind"] != "device")
        .map(|a| {
            (
                a["rule_id"].as_str().unwrap_or_default().to_owned(),
                a["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn guideline_cases(db: Db) -> anyhow::Result<()> {
    let stack = Stack::start(db).await?;
    let t = now_ms();
    let mut running = Vec::new();
    for case in cases() {
        let p = stack.patient(case.conditions).await?;
        let creds = stack.device(p.id, case.device).await?;
        let mut dev = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
        dev.connected().await.map_err(anyhow::Error::msg)?;
        let readings = (case.readings)(t);
        dev.publish(&topic(&creds.id, "readings"), batch(&readings))
            .await?;
        running.push((case, p.id, creds.id, readings.len(), dev));
    }
    let mut failures = Vec::new();
    for (case, patient, device, n, _) in &running {
        stack
            .wait_readings(device, *n as i64, Duration::from_secs(10))
            .await?;
        // The engine answers in tens of milliseconds; an alert gets 5 s, a quiet case 1.5 s.
        let wait = match case.expect {
            Expect::Alert(..) => Duration::from_secs(5),
            Expect::Quiet => Duration::from_millis(1500),
        };
        let deadline = tokio::time::Instant::now() + wait;
        let got = loop {
            let got = clinical(&alerts_api(&stack, *patient).await);
            let done = match case.expect {
                Expect::Alert(rule, severity) => {
                    got.iter().any(|(r, s)| r == rule && s == severity)
                }
                Expect::Quiet => false,
            };
            if done || tokio::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let ok = match case.expect {
            // Exactly the expected alert among the clinical ones (no second alert for the
            // same reading under another rule).
            Expect::Alert(rule, severity) => {
                got.len() == 1 && got.iter().any(|(r, s)| r == rule && s == severity)
            }
            Expect::Quiet => got.is_empty(),
        };
        if !ok {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.name, case.expect
            ));
        }
    }
    // The clock reset to 1970 also raises the device's clock alert, and nothing of it went
    // to quarantine.
    let clock_case = running
        .iter()
        .find(|(c, ..)| c.name.contains("1970"))
        .map(|(_, p, ..)| *p)
        .unwrap_or_default();
    let alerts = alerts_api(&stack, clock_case).await;
    assert!(
        alerts.iter().any(|a| a["rule_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("device-clock:"))),
        "{alerts:#?}"
    );
    assert_eq!(stack.store().count_quarantine().await?, 0);
    // The alert of the clock that ran ahead shows its reading as stored (the row keeps the
    // device's time, the engine dated it at its receive time).
    let ahead = running
        .iter()
        .find(|(c, ..)| c.name.contains("a day ahead"))
        .map(|(_, p, ..)| *p)
        .unwrap_or_default();
    let alert = alerts_api(&stack, ahead)
        .await
        .into_iter()
        .find(|a| a["rule_id"] == "glucose-low")
        .unwrap_or_default();
    let (_, detail) = stack
        .get(&format!(
            "/api/v1/alerts/{}",
            alert["id"].as_i64().unwrap_or_default()
        ))
        .await?;
    assert_eq!(
        detail["stored_readings"].as_array().map(Vec::len),
        Some(1),
        "{detail:#}"
    );
    for (.., dev) in running {
        dev.close();
    }
    stack.stop().await;
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guideline_cases_sqlite() -> anyhow::Result<()> {
    guideline_cases(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guideline_cases_postgres() -> anyhow::Result<()> {
    guideline_cases(Db::Postgres).await
}

/// A critical single reading of a cuff or an oximeter asks the device for a repeat on its
/// `config` topic; the repeat settles the alert: confirmed, downgraded to a milder band, or
/// downgraded to low (and the condition cleared) by a normal value.
async fn repeat_round_trip(db: Db) -> anyhow::Result<()> {
    let stack = Stack::start(db).await?;
    let t = now_ms();
    // (conditions, kind, first reading, repeat, expected after the repeat:
    //  confirmation, severity, condition)
    type Reading = fn(u32, i64) -> String;
    type Settled = (&'static str, &'static str, &'static str);
    type RepeatCase = (
        &'static [&'static str],
        DeviceKind,
        Reading,
        Reading,
        Settled,
    );
    let cases: [RepeatCase; 3] = [
        (
            &["heart_failure"],
            DeviceKind::Spo2,
            |s, t| spo2(s, t, 84, 90),
            |s, t| spo2(s, t, 85, 92),
            ("confirmed", "critical", "active"),
        ),
        (
            &[],
            DeviceKind::Spo2,
            |s, t| spo2(s, t, 84, 90),
            |s, t| spo2(s, t, 97, 72),
            ("not_confirmed", "low", "cleared"),
        ),
        (
            &[],
            DeviceKind::Spo2,
            |s, t| spo2(s, t, 87, 90),
            |s, t| spo2(s, t, 93, 84),
            ("not_confirmed", "medium", "active"),
        ),
    ];
    for (conditions, kind, first, repeat, (confirmation, severity, condition)) in cases {
        let p = stack.patient(conditions).await?;
        let creds = stack.device(p.id, kind).await?;
        let mut dev = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
        dev.connected().await.map_err(anyhow::Error::msg)?;
        let config_topic = topic(&creds.id, "config");
        dev.subscribe(&config_topic).await?;
        // The config retained at connect (time only) comes first.
        let hello = dev.next_message(Duration::from_secs(5)).await;
        assert!(hello.is_some_and(|(tp, _)| tp == config_topic));
        dev.publish(&topic(&creds.id, "readings"), batch(&[first(1, t)]))
            .await?;
        // The alert opens at once, unconfirmed, at the band's severity.
        let mut opened = None;
        for _ in 0..100 {
            let alerts = alerts_api(&stack, p.id).await;
            opened = alerts
                .into_iter()
                .find(|a| a["rule_kind"] == "threshold" && a["severity"] == "critical");
            if opened.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let opened = opened.unwrap_or_else(|| panic!("{conditions:?}: no critical alert"));
        assert_eq!(opened["confirmation"], "unconfirmed", "{opened}");
        // The repeat request reaches the device in its config.
        let mut request = None;
        while let Some((tp, payload)) = dev.next_message(Duration::from_secs(5)).await {
            let v: Value = serde_json::from_slice(&payload)?;
            if tp == config_topic && !v["repeat"].is_null() {
                request = Some(v["repeat"].clone());
                break;
            }
        }
        let request = request.unwrap_or_else(|| panic!("{conditions:?}: no repeat request"));
        assert_eq!(request["kind"], kind.as_str(), "{request}");
        let wait = if kind == DeviceKind::Glucose {
            900
        } else {
            300
        };
        assert!(
            request["in_s"]
                .as_u64()
                .is_some_and(|s| s <= wait && s > wait - 30),
            "{request}"
        );
        // The device repeats; the alert is settled.
        dev.publish(
            &topic(&creds.id, "readings"),
            batch(&[repeat(2, t + 5 * MIN)]),
        )
        .await?;
        let id = opened["id"].as_i64().unwrap_or_default();
        let mut settled = Value::Null;
        for _ in 0..100 {
            let (_, body) = stack.get(&format!("/api/v1/alerts/{id}")).await?;
            settled = body.clone();
            if settled["confirmation"] != "unconfirmed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            (
                settled["confirmation"].as_str(),
                settled["severity"].as_str(),
                settled["condition"].as_str()
            ),
            (Some(confirmation), Some(severity), Some(condition)),
            "{conditions:?}: {settled}"
        );
        let (_, body) = stack.get(&format!("/api/v1/alerts/{id}")).await?;
        let kinds: Vec<&str> = body["events"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["kind"].as_str()).collect())
            .unwrap_or_default();
        let expected_event = if confirmation == "confirmed" {
            "confirmed"
        } else {
            "downgraded"
        };
        assert!(kinds.contains(&expected_event), "{kinds:?}");
        // The worst value is the worst of the readings, not the last.
        assert_eq!(
            settled["worst_value"].as_f64(),
            opened["worst_value"].as_f64()
        );
        dev.close();
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_round_trip_sqlite() -> anyhow::Result<()> {
    repeat_round_trip(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_round_trip_postgres() -> anyhow::Result<()> {
    repeat_round_trip(Db::Postgres).await
}
