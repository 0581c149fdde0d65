//! The web console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `tests/browser/console.test.mjs` (playwright-core from npm, installed by `npm ci` in
//! `tests/browser`, which `scripts/test.sh` runs).
//!
//! The system runs in-process (gateway + API, SQLite); two COTs each get a patient with a
//! blood-pressure cuff and a nurse, COT A also a physician. The script logs in as nurse A
//! (username and password, through the login form) and prints
//! `CONSOLE_TEST READY_FOR_ALERT` once the inbox is live; this side then publishes a
//! hypertensive crisis from patient A's simulated cuff through the edge, and the script
//! checks that the alert appears without a reload, acknowledges, assigns, comments and
//! resolves it, and finds the care-plan threshold lines on the patient's chart; the physician
//! changes the care plan twice and sees the differences; then nurse B must see none of COT A's
//! patients or alerts, and COT A's patient page answers "not found". Screenshots go to `target/browser-artifacts/` (or `$ARTIFACTS`).
//!
//! `nurse_works_sixty_alerts_from_the_worklist_and_downloads_a_report` opens 60 alerts over
//! 20 patients and runs `tests/browser/worklist.test.mjs`: a nurse works them from the
//! worklist by keyboard (sort, filter, bulk acknowledgement of the low ones, a call not
//! reached that re-queues an alert, a call reached, resolution) and downloads the patient's
//! report; this side then reads the PDF with poppler's `pdftotext` (patient, period, calls)
//! and `pdftoppm` (page 1's pixels: the chart's line is there; PNG pages kept beside the
//! screenshots).
//!
//! `console_modules` runs the unit tests of the console's pure modules under `node --test`.
//!
//! A missing `node`, `chromium` or `tests/browser/node_modules` fails the test with what to
//! install; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use e2e::harness::{Db, RawDevice, Stack, now_ms, topic, unique};
use store::{DeviceKind, NewPatient, Role};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
/// The whole browser run, generous for a loaded 2-core machine.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What the browser test needs on this machine, or an error saying how to get it.
async fn prerequisites(root: &Path) -> anyhow::Result<PathBuf> {
    let node = Command::new("node").arg("--version").output().await;
    match node {
        Ok(out) if out.status.success() => {}
        _ => bail!(
            "node is not installed: the console's browser test needs Node.js ≥ 20 \
             (apt-get install -y nodejs npm); scripts/test.sh installs it"
        ),
    }
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        bail!(
            "{} not found: the console's browser test runs Debian's Chromium \
             (apt-get install -y chromium, as scripts/test.sh does) or set CHROMIUM",
            chromium.display()
        );
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        bail!(
            "tests/browser/node_modules is missing: run `npm ci` in tests/browser \
             (scripts/test.sh does)"
        );
    }
    Ok(chromium)
}

/// The password of the test's staff (the minimum length is 12).
const PASSWORD: &str = "console-test-password";

/// A person with a password, as `sentinella user add --password-stdin` creates one (the same
/// library calls: Argon2id hash on a blocking thread, then the store).
async fn staff(
    store: &store::Store,
    display_name: &str,
    role: Role,
    cot_id: i64,
) -> anyhow::Result<store::User> {
    let hash = tokio::task::spawn_blocking(|| api::http::session::hash_password(PASSWORD))
        .await?
        .map_err(|e| anyhow::anyhow!("hash the password: {e}"))?;
    let username = unique(&format!("{}.", role.as_str()));
    Ok(store
        .add_user(&store::NewUser {
            username: &username,
            display_name,
            role,
            kind: store::UserKind::Person,
            password_hash: Some(&hash),
            cot_ids: &[cot_id],
        })
        .await?)
}

fn bp(seq: u32, ts: i64, sys: u32, dia: u32, sensor: u32) -> String {
    format!(
        r#"{{"seq":{seq},"ts":{ts},"kind":"bp","sys":{sys},"dia":{dia},"pulse":74,"unit":"mmHg","sensor":{sensor}}}"#
    )
}

fn batch(readings: &[String]) -> String {
    format!(r#"{{"v":1,"readings":[{}]}}"#, readings.join(","))
}

/// A patient of COT `cot_id` with a connected blood-pressure cuff that has sent `history`
/// normal readings over the last three days (one with a loose cuff) and a status report.
struct Home {
    patient: store::Patient,
    device_id: String,
    cuff: RawDevice,
    readings: String,
    next_seq: u32,
}

async fn home(stack: &Stack, cot_id: i64, name: &str) -> anyhow::Result<Home> {
    let patient = stack
        .store()
        .add_patient(&NewPatient {
            cot_id,
            code: unique("PAT-"),
            display_name: name.to_owned(),
            birth_year: Some(1948),
            conditions: vec!["hypertension".into()],
        })
        .await?;
    let creds = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let mut cuff = RawDevice::connect(stack.edge, &creds.id, &creds.secret);
    cuff.connected().await.map_err(anyhow::Error::msg)?;
    cuff.publish(
        &topic(&creds.id, "status"),
        r#"{"online":true,"battery":76,"fw":"2.3.1","rssi":-61}"#,
    )
    .await?;
    let now = now_ms();
    let history: Vec<String> = (0..12u32)
        .map(|i| {
            let ts = now - 72 * HOUR + i64::from(i) * 6 * HOUR;
            let sensor = if i == 5 { 2 } else { 0 };
            // Controlled at home (mean about 119/75), so the 7-day home average stays below
            // 135/85 even with the crisis in it: the crisis is the patient's only alert.
            bp(i + 1, ts, 112 + (i * 7) % 15, 72 + (i * 3) % 8, sensor)
        })
        .collect();
    let readings = topic(&creds.id, "readings");
    cuff.publish(&readings, batch(&history)).await?;
    stack
        .wait_readings(&creds.id, 12, Duration::from_secs(20))
        .await?;
    Ok(Home {
        patient,
        device_id: creds.id.clone(),
        cuff,
        readings,
        next_seq: 13,
    })
}

impl Home {
    /// A hypertensive crisis confirmed by a repeat: 192/112 then 188/110 two minutes apart.
    async fn crisis(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        let s = self.next_seq;
        self.next_seq += 2;
        self.cuff
            .publish(
                &self.readings,
                batch(&[
                    bp(s, now - 3 * MIN, 192, 112, 0),
                    bp(s + 1, now - MIN, 188, 110, 0),
                ]),
            )
            .await
    }
}

/// The console's pure modules (SSE parser, care-plan diff, chart thresholds, queue order)
/// under Node's own test runner.
#[tokio::test]
async fn console_modules() -> anyhow::Result<()> {
    let root = workspace_root();
    prerequisites(&root).await?;
    let out = Command::new("node")
        .args(["--test", "tests/browser/modules.test.mjs"])
        .current_dir(&root)
        .output()
        .await
        .context("run node --test")?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the console's module tests failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nurse_sees_live_alert_and_charts_and_other_cot_sees_nothing() -> anyhow::Result<()> {
    let root = workspace_root();
    let chromium = prerequisites(&root).await?;
    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.alerts.tick = Duration::from_millis(200);
    })
    .await?;
    let store = stack.store();
    let cot_a = store.add_cot(&unique("COT-A"), "COT Milano Nord").await?;
    let cot_b = store.add_cot(&unique("COT-B"), "COT Bergamo Est").await?;
    let mut a = home(&stack, cot_a.id, "Maria Rossi").await?;
    let mut b = home(&stack, cot_b.id, "Giovanni Bianchi").await?;
    // COT B has an alert of its own, which nurse B sees and nurse A must not.
    b.crisis().await?;
    let nurse_a = staff(store, "Giulia Verdi", Role::Nurse, cot_a.id).await?;
    let physician_a = staff(store, "Dott. Paolo Neri", Role::Physician, cot_a.id).await?;
    let nurse_b = staff(store, "Anna Galli", Role::Nurse, cot_b.id).await?;
    let manager_a = staff(store, "Luca Ferri", Role::DeviceManager, cot_a.id).await?;

    let artifacts = std::env::var_os("ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/browser-artifacts"));
    let mut child = Command::new("node")
        .arg(root.join("tests/browser/console.test.mjs"))
        .current_dir(&root)
        .env("SENTINELLA_URL", format!("http://{}", stack.api))
        .env("NURSE_A_USER", &nurse_a.username)
        .env("NURSE_A_PASSWORD", PASSWORD)
        .env("NURSE_B_USER", &nurse_b.username)
        .env("NURSE_B_PASSWORD", PASSWORD)
        .env("PHYSICIAN_A_USER", &physician_a.username)
        .env("PHYSICIAN_A_PASSWORD", PASSWORD)
        .env("MANAGER_A_USER", &manager_a.username)
        .env("MANAGER_A_PASSWORD", PASSWORD)
        .env("DEVICE_A_ID", &a.device_id)
        .env("PATIENT_A_ID", a.patient.id.to_string())
        .env("PATIENT_A_NAME", &a.patient.display_name)
        .env("PATIENT_B_ID", b.patient.id.to_string())
        .env("PATIENT_B_NAME", &b.patient.display_name)
        .env("ARTIFACTS", &artifacts)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("start node tests/browser/console.test.mjs")?;
    let stdout = child.stdout.take().context("browser test stdout")?;
    println!("browser screenshots: {}", artifacts.display());

    let drive = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut published = false;
        while let Some(line) = lines.next_line().await? {
            println!("[browser] {line}");
            if line.trim() == "CONSOLE_TEST READY_FOR_ALERT" && !published {
                a.crisis().await?;
                published = true;
            }
        }
        let status = child.wait().await?;
        anyhow::Ok((status, published))
    };
    let (status, published) = tokio::time::timeout(BROWSER_TIMEOUT, drive)
        .await
        .context("the browser test did not finish in time")??;
    println!("browser screenshots: {}", artifacts.display());
    assert!(
        status.success(),
        "the browser test failed ({status}); see its output above and the screenshots in {}",
        artifacts.display()
    );
    assert!(published, "the browser test never asked for the alert");

    a.cuff.close();
    b.cuff.close();
    stack.stop().await;
    Ok(())
}

/// 60 open alerts over 20 patients (30 low, 15 medium, 10 high, 5 critical), straight into
/// the store as the engine would open them, due over the next hours.
async fn sixty_alerts(store: &store::Store, patients: &[store::Patient]) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    for i in 0..60usize {
        let (severity, rule, title) = match i {
            0..30 => (store::Severity::Low, "missed-bp", "Missed bp measurement"),
            30..45 => (
                store::Severity::Medium,
                "bp-average",
                "Home blood pressure average high",
            ),
            45..55 => (store::Severity::High, "spo2-low", "SpO2 low"),
            _ => (
                store::Severity::Critical,
                "bp-crisis",
                "Blood pressure high",
            ),
        };
        let patient = &patients[i % patients.len()];
        let at = now - time::Duration::minutes(90 - i as i64);
        store
            .trigger_alert(&store::Trigger {
                patient_id: patient.id,
                rule_id: format!("{rule}-{}", i / patients.len()),
                rule_kind: "threshold".into(),
                title: title.into(),
                severity,
                plan_version: None,
                metric: None,
                unit: None,
                value: None,
                higher_is_worse: true,
                readings: Vec::new(),
                at,
                due_at: Some(at + time::Duration::minutes(15 + (i as i64 * 37) % 240)),
                detail: None,
                unconfirmed: false,
            })
            .await?;
    }
    Ok(())
}

/// What a page of the report shows, from `pdftotext` (the text) and `pdftoppm` (the pixels):
/// the text of every page, and how many pixels of page 1 have the systolic series' colour.
async fn pdf_pages(pdf: &Path, artifacts: &Path) -> anyhow::Result<(String, usize)> {
    let text = Command::new("pdftotext")
        .args(["-layout", "-enc", "UTF-8"])
        .arg(pdf)
        .arg("-")
        .output()
        .await
        .context("run pdftotext (apt-get install -y poppler-utils)")?;
    anyhow::ensure!(text.status.success(), "pdftotext failed");
    // PNG pages for a look by hand, and page 1 as PPM for the pixel check.
    let png = Command::new("pdftoppm")
        .args(["-png", "-r", "110"])
        .arg(pdf)
        .arg(artifacts.join("worklist-report-page"))
        .status()
        .await
        .context("run pdftoppm (apt-get install -y poppler-utils)")?;
    anyhow::ensure!(png.success(), "pdftoppm -png failed");
    let prefix = artifacts.join("worklist-report-ppm");
    let ppm = Command::new("pdftoppm")
        .args(["-r", "72", "-f", "1", "-l", "1", "-singlefile"])
        .arg(pdf)
        .arg(&prefix)
        .status()
        .await
        .context("run pdftoppm")?;
    anyhow::ensure!(ppm.success(), "pdftoppm failed");
    let bytes = std::fs::read(prefix.with_extension("ppm")).context("read the PPM page")?;
    Ok((
        String::from_utf8_lossy(&text.stdout).into_owned(),
        series_pixels(&bytes)?,
    ))
}

/// Pixels of a binary PPM (P6, maxval 255) close to the systolic line's colour (26, 77, 191).
fn series_pixels(ppm: &[u8]) -> anyhow::Result<usize> {
    // Header: "P6", width, height, maxval, each followed by whitespace.
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while at < ppm.len() && ppm[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while at < ppm.len() && !ppm[at].is_ascii_whitespace() {
            at += 1;
        }
        anyhow::ensure!(start < at, "truncated PPM header");
        fields.push(String::from_utf8_lossy(&ppm[start..at]).into_owned());
    }
    anyhow::ensure!(
        fields[0] == "P6" && fields[3] == "255",
        "not an 8-bit P6 PPM"
    );
    let pixels = &ppm[at + 1..];
    let close = |a: u8, b: u8| a.abs_diff(b) <= 40;
    Ok(pixels
        .chunks_exact(3)
        .filter(|p| close(p[0], 26) && close(p[1], 77) && close(p[2], 191))
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nurse_works_sixty_alerts_from_the_worklist_and_downloads_a_report() -> anyhow::Result<()> {
    let root = workspace_root();
    let chromium = prerequisites(&root).await?;
    for tool in ["pdftoppm", "pdftotext"] {
        let found = Command::new(tool).arg("-v").output().await;
        anyhow::ensure!(
            found.is_ok(),
            "{tool} not found: the report check needs Debian's poppler-utils \
             (apt-get install -y poppler-utils, as scripts/test.sh does)"
        );
    }
    let stack = Stack::start(Db::Sqlite).await?;
    let store = stack.store();
    let cot = store.add_cot(&unique("COT-W"), "COT Lodi").await?;
    // The patient reported on has a cuff with three days of readings; 19 others have none.
    let maria = home(&stack, cot.id, "Maria Rossi").await?;
    let mut patients = vec![maria.patient.clone()];
    for i in 1..20 {
        let conditions = match i % 3 {
            0 => vec!["hypertension".to_owned()],
            1 => vec!["copd".to_owned()],
            _ => vec!["diabetes".to_owned(), "hypertension".to_owned()],
        };
        patients.push(
            store
                .add_patient(&NewPatient {
                    cot_id: cot.id,
                    code: unique("PAT-W-"),
                    display_name: format!("Paziente {i:02}"),
                    birth_year: Some(1940 + i),
                    conditions,
                })
                .await?,
        );
    }
    sixty_alerts(store, &patients).await?;
    // Maria's high alert: index 45 is patient 45 % 20 = 5, so give her one of her own.
    let work_rule = "spo2-low-maria";
    store
        .trigger_alert(&store::Trigger {
            patient_id: maria.patient.id,
            rule_id: work_rule.into(),
            rule_kind: "threshold".into(),
            title: "SpO2 low".into(),
            severity: store::Severity::High,
            plan_version: None,
            metric: Some("spo2".into()),
            unit: Some("%".into()),
            value: Some(89.0),
            higher_is_worse: false,
            readings: Vec::new(),
            at: time::OffsetDateTime::now_utc(),
            due_at: Some(time::OffsetDateTime::now_utc() + time::Duration::minutes(30)),
            detail: None,
            unconfirmed: false,
        })
        .await?;
    // ... and retire one of the other high ones, so the table holds 10 high alerts.
    let highs = store
        .list_alerts(&store::AlertQuery {
            severity: Some(store::Severity::High),
            limit: 100,
            ..Default::default()
        })
        .await?;
    let other = highs
        .iter()
        .find(|a| a.rule_id != work_rule)
        .context("a high alert")?;
    store
        .resolve_alert(
            other.id,
            "user:setup",
            "reading_error",
            None,
            time::OffsetDateTime::now_utc(),
        )
        .await?;
    let nurse = staff(store, "Chiara Fontana", Role::Nurse, cot.id).await?;

    let artifacts = std::env::var_os("ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/browser-artifacts"));
    let pdf = artifacts.join("worklist-report.pdf");
    let _ = std::fs::remove_file(&pdf);
    let out = tokio::time::timeout(
        BROWSER_TIMEOUT,
        Command::new("node")
            .arg(root.join("tests/browser/worklist.test.mjs"))
            .current_dir(&root)
            .env("SENTINELLA_URL", format!("http://{}", stack.api))
            .env("NURSE_USER", &nurse.username)
            .env("NURSE_PASSWORD", PASSWORD)
            .env("PATIENT_ID", maria.patient.id.to_string())
            .env("PATIENT_NAME", &maria.patient.display_name)
            .env("WORK_RULE", work_rule)
            .env("ARTIFACTS", &artifacts)
            .env("CHROMIUM", &chromium)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the worklist browser test did not finish in time")?
    .context("run node tests/browser/worklist.test.mjs")?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the worklist browser test failed; screenshots in {}",
        artifacts.display()
    );

    // The PDF the nurse downloaded: the patient, the period, the calls, and a chart.
    let (text, blue) = pdf_pages(&pdf, &artifacts).await?;
    let today = time::OffsetDateTime::now_utc().date();
    let from = today - time::Duration::days(29);
    let day = |d: time::Date| format!("{:02}/{:02}/{}", d.day(), u8::from(d.month()), d.year());
    for needle in [
        "Relazione di telemonitoraggio",
        "Maria Rossi",
        &format!("{} – {}", day(from), day(today)),
        "Pressione arteriosa",
        "Telefonata (non raggiunto)",
        "Telefonata (raggiunto)",
        "paziente chiamato",
    ] {
        assert!(
            text.contains(needle),
            "the report lacks {needle:?}:\n{text}"
        );
    }
    assert!(
        blue > 30,
        "page 1 has {blue} pixels of the systolic line's colour: no chart drawn"
    );
    println!(
        "report pages: {}",
        artifacts.join("worklist-report-page-1.png").display()
    );

    maria.cuff.close();
    stack.stop().await;
    Ok(())
}
