//! Interoperability with an independent MQTT client: Debian's mosquitto_pub / mosquitto_sub
//! against our edge, with device credentials.

use std::process::Output;
use std::time::Duration;

use e2e::harness::{Db, Stack, now_ms, topic};
use store::DeviceKind;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(10);

async fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let child = Command::new(program).args(args).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(20), child).await {
        Ok(out) => Ok(out?),
        Err(_) => anyhow::bail!("{program} did not finish within 20 s"),
    }
}

fn conn_args<'a>(stack_port: &'a str, id: &'a str, secret: &'a str) -> Vec<&'a str> {
    vec![
        "-h",
        "127.0.0.1",
        "-p",
        stack_port,
        "-i",
        id,
        "-u",
        id,
        "-P",
        secret,
        "-V",
        "mqttv311",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_against_the_edge() -> anyhow::Result<()> {
    let stack = Stack::start(Db::Postgres).await?;
    let patient = stack.patient(&["hypertension"]).await?;
    let me = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let other = stack.device(patient.id, DeviceKind::Spo2).await?;
    let port = stack.edge.port().to_string();
    let t = now_ms();
    let reading = format!(
        r#"{{"v":1,"readings":[{{"seq":1,"ts":{t},"kind":"bp","sys":152,"dia":94,"pulse":77,"unit":"mmHg"}}]}}"#
    );

    // A device publishes its reading with its own credentials: stored, with its values.
    let mut args = conn_args(&port, &me.id, &me.secret);
    let own_topic = topic(&me.id, "readings");
    args.extend(["-q", "1", "-t", &own_topic, "-m", &reading]);
    let out = run("mosquitto_pub", &args).await?;
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.wait_readings(&me.id, 1, WAIT).await?;
    let (status, body) = stack
        .get(&format!("/api/v1/patients/{}/readings", patient.id))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(body["readings"][0]["systolic"], 152.0);
    assert_eq!(body["readings"][0]["diastolic"], 94.0);

    // Wrong secret: refused with a CONNACK code, nothing stored.
    let mut args = conn_args(&port, &me.id, "not-the-secret");
    let seq2 = reading.replace("\"seq\":1", "\"seq\":2");
    args.extend(["-q", "1", "-t", &own_topic, "-m", &seq2]);
    let out = run("mosquitto_pub", &args).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("refused") || err.contains("bad user"),
        "unexpected stderr: {err}"
    );

    // Unknown device: refused too.
    let mut args = conn_args(&port, "nobody-42", "whatever");
    let nobody_topic = topic("nobody-42", "readings");
    args.extend(["-q", "1", "-t", &nobody_topic, "-m", &reading]);
    let out = run("mosquitto_pub", &args).await?;
    assert!(!out.status.success());

    // Publishing on another device's topic: the connection is closed, nothing is stored for
    // either device, and the attempt is on record.
    let mut args = conn_args(&port, &me.id, &me.secret);
    let other_topic = topic(&other.id, "readings");
    let spoof = format!(r#"{{"v":1,"readings":[{{"seq":1,"ts":{t},"kind":"spo2","spo2":97}}]}}"#);
    args.extend(["-q", "1", "-t", &other_topic, "-m", &spoof]);
    let _ = run("mosquitto_pub", &args).await?;
    let entries = stack.wait_quarantine(1, WAIT).await?;
    assert!(
        entries
            .iter()
            .any(|e| e.reason == "edge.publish_outside_own_topics" && e.topic == other_topic),
        "{entries:#?}"
    );

    // Publishing to its own ack topic (the gateway's) is refused as well.
    let mut args = conn_args(&port, &me.id, &me.secret);
    let ack_topic = topic(&me.id, "ack");
    args.extend([
        "-q",
        "1",
        "-t",
        &ack_topic,
        "-m",
        r#"{"committed":[[1,1000]]}"#,
    ]);
    let _ = run("mosquitto_pub", &args).await?;
    stack.wait_quarantine(2, WAIT).await?;

    // Subscribing to everything, or to another device's topics, is refused.
    for filter in [
        "#",
        "sentinella/#",
        &topic(&other.id, "ack"),
        "sentinella/v1/devices/+/readings",
    ] {
        let before = stack.store().count_quarantine().await?;
        let mut args = conn_args(&port, &me.id, &me.secret);
        args.extend(["-t", filter, "-C", "1", "-W", "2"]);
        let out = run("mosquitto_sub", &args).await?;
        assert!(
            out.stdout.is_empty(),
            "{filter}: received {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let entries = stack.wait_quarantine(before + 1, WAIT).await?;
        assert!(
            entries
                .iter()
                .any(|e| e.reason == "edge.subscribe_outside_own_topics" && e.topic == filter),
            "{filter}: {entries:#?}"
        );
    }

    // Its own ack topic is fine: mosquitto_sub receives the retained config on its config topic.
    let mut args = conn_args(&port, &me.id, &me.secret);
    let config_topic = topic(&me.id, "config");
    args.extend(["-t", &config_topic, "-C", "1", "-W", "5"]);
    let out = run("mosquitto_sub", &args).await?;
    assert!(
        out.status.success(),
        "mosquitto_sub on own config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        config["time_ms"]
            .as_i64()
            .is_some_and(|ms| (ms - now_ms()).abs() < 60_000),
        "{config}"
    );

    // Nothing from the refused attempts reached the store.
    assert_eq!(stack.store().stored_seqs(&me.id).await?, vec![1]);
    assert!(stack.store().stored_seqs(&other.id).await?.is_empty());
    assert!(gateway::Metrics::get(&stack.metrics.edge_refused_total) >= 2);
    assert!(gateway::Metrics::get(&stack.metrics.edge_violations_total) >= 6);
    stack.stop().await;
    Ok(())
}
