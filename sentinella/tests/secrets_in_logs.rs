//! A full run of the `sentinella` binary at debug log level, every secret exercised: staff
//! passwords (right, wrong, set through the API), session tokens, a service account's API key,
//! a device secret over the plain listener and a device key over mutual TLS (both with
//! `mosquitto_pub`), the device CA's key. The process's whole output must contain none of them.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const PASSWORD: &str = "Passw0rd-of-the-nurse";
const WRONG: &str = "Wr0ng-guess-of-an-attacker";
const NEW_PASSWORD: &str = "Passw0rd-set-by-the-admin";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a CLI command against the data dir; its own stdout (where secrets are shown once, by
/// design) is returned, not part of the log under test.
fn cli(url: &str, data: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentinella"))
        .args(["--database-url", url, "--data-dir"])
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{input}\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn mosquitto_pub(args: &[&str]) {
    let status = Command::new("mosquitto_pub").args(args).status().expect(
        "mosquitto_pub is needed (Debian package mosquitto-clients; scripts/test.sh installs it)",
    );
    assert!(status.success(), "mosquitto_pub {args:?}");
}

/// The base64 body lines of a PEM file (what would show if a key were logged).
fn pem_body(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_full_run_logs_no_password_token_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let url = format!("sqlite:{}", data.join("s.sqlite").display());
    cli(&url, data, &["migrate"], None);
    cli(
        &url,
        data,
        &["cot", "add", "--code", "COT-L", "--name", "COT Log"],
        None,
    );
    cli(
        &url,
        data,
        &[
            "patient",
            "add",
            "--cot",
            "COT-L",
            "--code",
            "P-L",
            "--name",
            "Maria Log",
        ],
        None,
    );
    let certs = data.join("bp-log");
    let device: Value = serde_json::from_str(&cli(
        &url,
        data,
        &[
            "device",
            "add",
            "--patient",
            "P-L",
            "--kind",
            "bp",
            "--id",
            "bp-log",
            "--json",
            "--cert-out",
            certs.to_str().unwrap(),
        ],
        None,
    ))
    .unwrap();
    let secret = device["secret"].as_str().unwrap().to_owned();
    let args = [
        "user",
        "add",
        "--username",
        "nurse.log",
        "--display-name",
        "Nurse",
        "--role",
        "nurse",
        "--cot",
        "COT-L",
        "--password-stdin",
    ];
    cli(&url, data, &args, Some(PASSWORD));
    let args = [
        "user",
        "add",
        "--username",
        "admin.log",
        "--display-name",
        "Admin",
        "--role",
        "admin",
        "--cot",
        "COT-L",
        "--password-stdin",
    ];
    cli(&url, data, &args, Some(PASSWORD));
    let args = [
        "user",
        "add",
        "--username",
        "svc.log",
        "--display-name",
        "Export",
        "--role",
        "nurse",
        "--cot",
        "COT-L",
        "--service",
    ];
    cli(&url, data, &args, None);
    let api_key = cli(
        &url,
        data,
        &["token", "create", "--user", "svc.log", "--name", "export"],
        None,
    )
    .trim()
    .to_owned();
    assert!(api_key.starts_with("stk_"), "{api_key}");

    let (api, plain, tls) = (free_port(), free_port(), free_port());
    let log_path = data.join("run.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentinella"))
        .args([
            "--database-url",
            &url,
            "--log",
            "debug",
            "run",
            "--data-dir",
        ])
        .arg(data)
        .env("SENTINELLA_API_LISTEN", format!("127.0.0.1:{api}"))
        .env("SENTINELLA_EDGE_LISTEN", format!("127.0.0.1:{plain}"))
        .env("SENTINELLA_EDGE_TLS_LISTEN", format!("127.0.0.1:{tls}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{api}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "sentinella did not become ready");

    let login = |username: &'static str, password: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.post(format!("{base}/api/v1/auth/login"))
                .json(&json!({"username": username, "password": password}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(login("nurse.log", WRONG).await.status(), 401);
    let session: Value = login("nurse.log", PASSWORD).await.json().await.unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    let admin: Value = login("admin.log", PASSWORD).await.json().await.unwrap();
    let admin = admin["token"].as_str().unwrap().to_owned();
    for token in [&session, &api_key] {
        let resp = http
            .get(format!("{base}/api/v1/patients"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = http
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(&admin)
        .json(
            &json!({"username": "new.log", "display_name": "New", "role": "physician",
                      "cots": [1], "password": NEW_PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = http
        .post(format!("{base}/api/v1/auth/logout"))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    // The device, with its secret and with its key.
    let payload = |seq: u32| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        format!(
            r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{now},"kind":"bp","sys":128,"dia":82,"pulse":70,"unit":"mmHg"}}]}}"#
        )
    };
    let plain_port = plain.to_string();
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &plain_port,
        "-V",
        "mqttv311",
        "-q",
        "1",
        "-i",
        "bp-log",
        "-u",
        "bp-log",
        "-P",
        &secret,
        "-t",
        "sentinella/v1/devices/bp-log/readings",
        "-m",
        &payload(1),
    ]);
    let tls_port = tls.to_string();
    let (ca, cert, key) = (
        certs.join("ca.crt"),
        certs.join("bp-log.crt"),
        certs.join("bp-log.key"),
    );
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &tls_port,
        "-V",
        "mqttv311",
        "-q",
        "1",
        "-i",
        "bp-log",
        "--cafile",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-t",
        "sentinella/v1/devices/bp-log/readings",
        "-m",
        &payload(2),
    ]);
    // Both readings stored (so the run did handle them) before stopping.
    let mut stored = 0;
    for _ in 0..100 {
        let resp: Value = http
            .get(format!("{base}/api/v1/patients/1/readings"))
            .bearer_auth(&api_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stored = resp["count"].as_u64().unwrap_or(0);
        if stored == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, 2);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();

    let output = std::fs::read_to_string(&log_path).unwrap();
    assert!(output.contains("sentinella running"), "{output}");
    assert!(
        output.contains("/api/v1/auth/login"),
        "requests are logged at debug: {output}"
    );
    assert!(output.lines().count() > 20, "a real log: {output}");
    let mut secrets: Vec<(String, String)> = vec![
        ("nurse password".into(), PASSWORD.into()),
        ("wrong password".into(), WRONG.into()),
        ("password set through the API".into(), NEW_PASSWORD.into()),
        ("session token".into(), session[4..].to_owned()),
        ("admin session token".into(), admin[4..].to_owned()),
        ("API key".into(), api_key[4..].to_owned()),
        ("device secret".into(), secret.clone()),
        ("password hash".into(), "$argon2id$".into()),
    ];
    for line in pem_body(&key) {
        secrets.push(("device private key".into(), line));
    }
    for line in pem_body(&data.join("pki").join("ca.key")) {
        secrets.push(("device CA private key".into(), line));
    }
    for (what, secret) in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "the log contains the {what}"
        );
    }
}
