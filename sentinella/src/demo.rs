//! `sentinella run --demo N` (feature `demo`): provisions a demo COT's fleet and staff, and
//! runs the simulated patients against this node's TLS edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::node::Node;

/// Starts the demo fleet and its progress log on `node`.
pub(crate) fn spawn(
    node: &Node,
    store: Store,
    config: &Config,
    patients: usize,
    days: u32,
    ca: Arc<pki::DeviceCa>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(demo_progress(node.metrics.clone(), cancel.clone()));
    tokio::spawn(demo(
        store,
        config.data_dir.clone(),
        patients,
        days,
        DemoEdge {
            tls: dial_addr(node.tls_addr),
            ca,
        },
        node.api_addr,
        cancel,
    ))
}

/// Where a local client reaches a listener bound to `addr` (loopback for a wildcard address).
fn dial_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// How the demo devices reach the edge.
#[derive(Debug, Clone)]
struct DemoEdge {
    tls: SocketAddr,
    ca: Arc<pki::DeviceCa>,
}

/// Logs what the pipeline did every ten seconds while the demo runs.
async fn demo_progress(metrics: Arc<gateway::Metrics>, cancel: CancellationToken) {
    use gateway::Metrics as M;
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => tracing::info!(
                received = M::get(&metrics.readings_received_total),
                stored = M::get(&metrics.readings_committed_total),
                duplicates = M::get(&metrics.readings_duplicate_total),
                quarantined = M::get(&metrics.quarantined_total),
                acked = M::get(&metrics.readings_acked_total),
                devices_online = M::get(&metrics.edge_connections_open),
                "demo progress"
            ),
        }
    }
}

/// Where the demo users' password is kept (mode 0600), so every demo run can print it.
const DEMO_PASSWORD_FILE: &str = "demo-password.txt";

/// The demo COT's staff, one per role, created on the first demo run with one random
/// password (a demo convenience: real users each set their own).
async fn demo_users(store: &Store, data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join(DEMO_PASSWORD_FILE);
    let password = match std::fs::read_to_string(&path) {
        Ok(p) => p.trim().to_owned(),
        Err(_) => {
            let p = hex::encode(rand::random::<[u8; 8]>());
            pki::write_private(&path, p.as_bytes()).context("write the demo password")?;
            p
        }
    };
    let cot = store
        .cot_by_code("COT-DEMO")
        .await?
        .context("the demo COT")?;
    for (username, display_name, role) in [
        ("infermiera", "Infermiera Demo", store::Role::Nurse),
        ("medico", "Medico Demo", store::Role::Physician),
        ("tecnico", "Tecnico Demo", store::Role::DeviceManager),
        ("amministratore", "Amministratore Demo", store::Role::Admin),
    ] {
        if store.user_by_username(username).await?.is_some() {
            continue;
        }
        let hash = api::http::session::hash_password_off_thread(password.clone())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store
            .add_user(&store::NewUser {
                username,
                display_name,
                role,
                kind: store::UserKind::Person,
                password_hash: Some(&hash),
                cot_ids: &[cot.id],
            })
            .await?;
    }
    Ok(password)
}

/// Provisions (once) a demo fleet and its COT's staff, then runs the simulated patients.
async fn demo(
    store: Store,
    data_dir: PathBuf,
    patients: usize,
    days: u32,
    edge: DemoEdge,
    api: std::net::SocketAddr,
    cancel: CancellationToken,
) {
    if let Err(e) = demo_inner(store, data_dir, patients, days, edge, api, cancel).await {
        tracing::error!(error = format!("{e:#}"), "demo stopped");
    }
}

async fn demo_inner(
    store: Store,
    data_dir: PathBuf,
    patients: usize,
    days: u32,
    demo_edge: DemoEdge,
    api: std::net::SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let fleet_path = data_dir.join(format!("demo-fleet-{patients}.json"));
    let mut fleet = if fleet_path.exists() {
        simulators::fleet::FleetFile::load(&fleet_path).context("read demo fleet")?
    } else {
        let fleet = simulators::fleet::provision(&store, "COT-DEMO", patients, 1, "demo")
            .await
            .context("provision the demo fleet")?;
        fleet.save(&fleet_path).context("write demo fleet")?;
        fleet
    };
    // The demo devices connect over mutual TLS: each gets a certificate from the device CA
    // (again if the CA changed since the fleet was written). The fleet file, which then holds
    // their private keys, is readable by its owner only.
    for d in &mut fleet.devices {
        if d.tls
            .as_ref()
            .is_some_and(|t| t.ca_pem != demo_edge.ca.cert_pem())
        {
            d.tls = None;
        }
    }
    if simulators::fleet::issue_certs(&store, &demo_edge.ca, &mut fleet).await? > 0 {
        fleet.save(&fleet_path).context("write demo fleet")?;
    }
    let edge = demo_edge.tls;
    let password = demo_users(&store, &data_dir).await?;
    eprintln!(
        "\nDemo: {} simulated devices of {patients} patients publish over mutual TLS to the edge on {edge}.\n\
         Console: http://{api}/ — users infermiera (nurse), medico (physician), tecnico (device\n\
         \x20 manager), amministratore (admin) of COT-DEMO, password {password}\n\
         \x20 (kept in {}).\n\
         API: log in, then use the token:\n\
         \x20 curl -s -H 'Content-Type: application/json' -d '{{\"username\":\"infermiera\",\"password\":\"{password}\"}}' http://{api}/api/v1/auth/login\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" http://{api}/api/v1/alerts\n\
         \x20 curl -sN -H \"Authorization: Bearer $TOKEN\" 'http://{api}/api/v1/alerts/stream?after=0'\n\
         \x20 curl -s http://{api}/metrics\n\
         (The 14-day history arrives late, so it raises no current alerts, only `late-review`\n\
         \x20 ones; readings measured from now on are evaluated as current.)\n",
        fleet.devices.len(),
        data_dir.join(DEMO_PASSWORD_FILE).display(),
    );
    // Devices keep their seq across runs, as real ones do across reboots.
    let floor = simulators::fleet::SeqFloor::beside(&fleet_path);
    let catch_up = Duration::from_secs(60);
    if days > 0 {
        eprintln!("Catching up on {days} days of measurements in about a minute…");
        let first_seq = floor.first_seq()?;
        let opts = simulators::fleet::RunOptions {
            speed: f64::from(days) * 86_400.0 / catch_up.as_secs_f64(),
            duration: catch_up,
            seed: 1,
            first_seq,
            backdate: true,
            ..Default::default()
        };
        let report =
            simulators::fleet::run_fleet(&fleet, &edge.to_string(), opts, cancel.clone()).await?;
        // No device used more seqs than the whole fleet generated.
        floor.store(
            first_seq
                .saturating_add(u32::try_from(report.generated).unwrap_or(u32::MAX))
                .saturating_add(1),
        )?;
        tracing::info!(
            generated = report.generated,
            committed = report.committed,
            pending = report.pending,
            "demo history sent"
        );
    }
    if cancel.is_cancelled() {
        return Ok(());
    }
    eprintln!("Demo patients now measure in real time (a few spot checks a day each).");
    let opts = simulators::fleet::RunOptions {
        speed: 1.0,
        duration: Duration::from_secs(365 * 24 * 3600),
        seed: 2,
        first_seq: floor.first_seq()?,
        ..Default::default()
    };
    let report = simulators::fleet::run_fleet(&fleet, &edge.to_string(), opts, cancel).await?;
    tracing::info!(?report, "demo fleet stopped");
    Ok(())
}
