//! `sentinella`: the gateway, the API and the provisioning commands in one binary.
//!
//! Thin on purpose: arguments → configuration → tracing → store, then one library call per
//! subcommand. See `sentinella --help`.

#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use server::config::{Config, SAMPLE};
use server::http::{AppState, auth};
use store::{DeviceKind, NewDevice, NewPatient, Store};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "sentinella",
    version,
    about = "Telemonitoring gateway for territorial healthcare"
)]
struct Cli {
    /// Configuration file (TOML); see `sentinella config sample`.
    #[arg(long, global = true, env = "SENTINELLA_CONFIG")]
    config: Option<PathBuf>,
    /// Store URL: postgres://… or sqlite:PATH (default: SQLite under the data directory).
    #[arg(
        long,
        global = true,
        env = "SENTINELLA_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Data directory for the embedded SQLite store and the demo fleet.
    #[arg(long, global = true, env = "SENTINELLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "gateway=debug,info".
    #[arg(long, global = true, env = "SENTINELLA_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker, the ingest pipeline and the API in one process (the default).
    Run(RunArgs),
    /// Apply database migrations and report the readings layout.
    Migrate,
    /// Manage COTs (Centrali Operative Territoriali).
    #[command(subcommand)]
    Cot(CotCommand),
    /// Manage patients.
    #[command(subcommand)]
    Patient(PatientCommand),
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Manage staff users and service accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys of service accounts.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args, Default)]
struct RunArgs {
    /// Also provision and run this many simulated patients with their home devices (needs a
    /// binary built with the `demo` feature).
    #[arg(long, value_name = "PATIENTS")]
    demo: Option<usize>,
    /// Days of history the demo patients first catch up on (readings dated in the past,
    /// sent in about a minute), before measuring in real time.
    #[arg(long, default_value_t = 14)]
    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    demo_days: u32,
}

#[derive(Debug, Subcommand)]
enum CotCommand {
    /// Add a COT.
    Add {
        /// Short unique code, e.g. COT-MI-01.
        #[arg(long)]
        code: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// List COTs.
    List,
}

#[derive(Debug, Subcommand)]
enum PatientCommand {
    /// Enrol a patient with a COT.
    Add {
        /// The COT's code.
        #[arg(long)]
        cot: String,
        /// Pseudonymous patient code, unique.
        #[arg(long)]
        code: String,
        /// Name shown to the COT's staff.
        #[arg(long)]
        name: String,
        /// Year of birth.
        #[arg(long)]
        birth_year: Option<i32>,
        /// Conditions, comma-separated (hypertension, copd, diabetes, heart_failure).
        #[arg(long, value_delimiter = ',')]
        conditions: Vec<String>,
    },
    /// List patients.
    List,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Provision a device for a patient: print its MQTT secret (shown only once, for the
    /// loopback plain listener) and write its client certificate, key and the CA bundle for
    /// the mutual-TLS listener.
    Add {
        /// The patient's code.
        #[arg(long)]
        patient: String,
        /// bp, spo2 or glucose.
        #[arg(long)]
        kind: String,
        /// Device id (1-64 of A-Z a-z 0-9 _ -); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Device model, free text.
        #[arg(long)]
        model: Option<String>,
        /// Print the credentials as JSON.
        #[arg(long)]
        json: bool,
        /// Where to write the certificate (`{id}.crt`), key (`{id}.key`, mode 0600) and CA
        /// bundle (`ca.crt`); default: a folder named after the device in the current
        /// directory.
        #[arg(long, value_name = "DIR")]
        cert_out: Option<PathBuf>,
        /// Issue no certificate (the device uses the plain listener only).
        #[arg(long, conflicts_with = "cert_out")]
        no_cert: bool,
    },
    /// Issue a new client certificate to a device; the previous one stops working.
    Cert {
        /// Device id.
        id: String,
        /// Where to write the files; default: a folder named after the device.
        #[arg(long, value_name = "DIR")]
        cert_out: Option<PathBuf>,
    },
    /// Revoke a device: it can no longer connect, and its open connections are closed within
    /// the gateway's `revocation_poll` interval (2 s by default).
    Revoke {
        /// Device id.
        id: String,
    },
    /// List devices.
    List,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user: a person (password read from standard input) or, with --service, a
    /// service account that authenticates with API keys (`sentinella token create`).
    Add {
        /// Login name (1-64 of A-Z a-z 0-9 . _ @ -).
        #[arg(long)]
        username: String,
        /// Name shown in the console and on alert assignments.
        #[arg(long)]
        display_name: String,
        /// nurse, physician, device_manager or admin.
        #[arg(long)]
        role: String,
        /// A COT code the user belongs to; repeat for several.
        #[arg(long = "cot", required = true)]
        cots: Vec<String>,
        /// A service account (no password, API keys only).
        #[arg(long)]
        service: bool,
        /// Read the password (one line, at least 12 characters) from standard input.
        #[arg(long, conflicts_with = "service")]
        password_stdin: bool,
    },
    /// Set a person's password, read from standard input.
    Password { username: String },
    /// Disable a user and revoke all their tokens.
    Disable { username: String },
    /// List users.
    List,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an API key for a service account and print it (shown only once).
    Create {
        /// The service account's username.
        #[arg(long)]
        user: String,
        /// What the key is for (e.g. the integration); recorded with the key.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. "90d" or "12h"; no expiry when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the documented sample configuration.
    Sample,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio")?;
    runtime.block_on(dispatch(cli))
}

fn init_tracing(filter: &str, json: bool) -> anyhow::Result<()> {
    // rumqttd sits behind the edge, which logs every device connection itself. rumqttd's
    // connection-level modules log each clean disconnect as an ERROR ("router-drop", "no-
    // connection id … is already gone"), so they are silenced; the rest of rumqttd, including
    // the commit-log warning when a slow consumer loses data, stays at warn.
    let filter = EnvFilter::try_new(format!(
        "rumqttd=warn,rumqttd::server=off,rumqttd::router::routing=off,{filter}"
    ))
    .context("parse --log")?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init()
    } else {
        builder.init()
    }
    Ok(())
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env()?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    if let Some(url) = cli.database_url {
        config.database_url = Some(url);
    }
    let command = cli.command.unwrap_or(Command::Run(RunArgs::default()));
    if let Command::Config(ConfigCommand::Sample) = command {
        print!("{SAMPLE}");
        return Ok(());
    }
    #[cfg(not(feature = "demo"))]
    if let Command::Run(RunArgs { demo: Some(_), .. }) = &command {
        bail!(
            "this sentinella was built without the demo; build it with the `demo` feature: \
             cargo run --release -p server --features demo -- run --demo 20"
        );
    }
    let store = open_store(&config).await?;
    match command {
        Command::Run(args) => run(config, store, args).await,
        Command::Migrate => Ok(()),
        Command::Cot(cmd) => cot(&store, cmd).await,
        Command::Patient(cmd) => patient(&store, cmd).await,
        Command::Device(cmd) => device(&store, &config, cmd).await,
        Command::User(cmd) => user(&store, cmd).await,
        Command::Token(cmd) => token(&store, cmd).await,
        Command::Config(_) => Ok(()),
    }
}

/// Connects and migrates; every subcommand works on an up-to-date schema.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.store_url();
    if url.starts_with("sqlite:") {
        private_dir(&config.data_dir)?;
    }
    let store = Store::connect(&url).await.context("connect to the store")?;
    let layout = store.migrate().await.context("apply migrations")?;
    tracing::info!(backend = ?store.backend(), readings = %layout, "store ready");
    Ok(store)
}

#[cfg_attr(not(feature = "demo"), allow(unused_variables))]
async fn run(config: Config, store: Store, args: RunArgs) -> anyhow::Result<()> {
    let (tls, ca) = edge_tls(&config)?;
    let cancel = CancellationToken::new();
    // The gateway raises the open-files limit to the hard one and sizes the edge's
    // connection limit from it, leaving the API's and the store's share.
    let mut gateway_config = config.gateway.clone();
    // The API's share is its own cap, `[api] max_connections` (1,024 by default).
    gateway_config.api_descriptors = config.api.max_connections;
    let gateway = gateway::start_with_tls(gateway_config, store.clone(), Some(tls), cancel.clone())
        .await
        .context("start the gateway")?;
    let tls_addr = gateway.tls_addr.context("TLS listener address")?;
    let metrics = gateway.metrics.clone();
    let alert_metrics = gateway.alert_metrics.clone();
    let ready_metrics = metrics.clone();
    let api_tls = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls::acceptor(cert, key)?),
        (None, None) => None,
        _ => bail!("[api] needs both tls_cert and tls_key, or neither"),
    };
    let oidc = config
        .api
        .oidc
        .clone()
        .map(server::http::oidc::Oidc::load)
        .transpose()
        .context("[api.oidc]")?;
    let auth_state = server::http::AuthState {
        session_ttl: time::Duration::try_from(config.api.session_ttl)
            .context("[api] session_ttl is too long")?,
        oidc,
        tls: api_tls.is_some(),
        trusted_proxies: config.api.trusted_proxies.clone(),
        ..server::http::AuthState::default()
    };
    let state = AppState {
        store: store.clone(),
        auth: Arc::new(auth_state),
        device_ca: Some(ca.clone()),
        ready: Arc::new(move || ready_metrics.ready()),
        metrics: Arc::new(move || {
            let mut out = metrics.render_prometheus();
            alert_metrics.render_prometheus(&mut out);
            out
        }),
    };
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("bind the API on {}", config.api.listen))?;
    let api_addr = listener.local_addr().context("API address")?;
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    tracing::info!(%api_addr, api_scheme = scheme, edge_tls = %tls_addr, edge_plain = %gateway.edge_addr, "sentinella running");
    let api = tokio::spawn(server::serve_with(
        listener,
        api_tls,
        state,
        config.api.conn_limits(),
        cancel.clone(),
    ));

    let monthly = config.reports.monthly_dir.clone().map(|dir| {
        tracing::info!(dir = %dir.display(), "monthly reports on");
        tokio::spawn(server::report::monthly::run(
            store.clone(),
            dir,
            cancel.clone(),
        ))
    });

    // The demo devices stop first, so the gateway does not log them being cut off.
    let demo_cancel = CancellationToken::new();
    #[cfg(feature = "demo")]
    let demo = args.demo.map(|patients| {
        tokio::spawn(demo_progress(gateway.metrics.clone(), demo_cancel.clone()));
        tokio::spawn(demo(
            store.clone(),
            config.data_dir.clone(),
            patients,
            args.demo_days,
            DemoEdge {
                tls: dial_addr(tls_addr),
                ca: ca.clone(),
            },
            api_addr,
            demo_cancel.clone(),
        ))
    });
    #[cfg(not(feature = "demo"))]
    let demo: Option<tokio::task::JoinHandle<()>> = None;

    shutdown_signal().await;
    tracing::info!("shutting down: flushing in-flight batches and acks");
    demo_cancel.cancel();
    if let Some(demo) = demo {
        let _ = demo.await;
    }
    cancel.cancel();
    if let Some(monthly) = monthly {
        let _ = monthly.await;
    }
    api.await.context("API task")?.context("API server")?;
    gateway.join().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The device CA (created on first use) and the edge's TLS material: the configured server
/// certificate, or one issued now from the device CA.
fn edge_tls(config: &Config) -> anyhow::Result<(gateway::EdgeTls, Arc<pki::DeviceCa>)> {
    let dir = config.pki_dir();
    let (ca, created) = pki::DeviceCa::load_or_create(&dir)
        .with_context(|| format!("device CA in {}", dir.display()))?;
    if created {
        tracing::info!(dir = %dir.display(), "device CA created");
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()));
    let g = &config.gateway;
    let (cert_chain_pem, key_pem) = match (&g.tls_cert, &g.tls_key) {
        (Some(cert), Some(key)) => (read(cert)?, read(key)?),
        (None, None) => {
            let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            let ip = g.tls_listen.ip();
            if !ip.is_unspecified() && !ip.is_loopback() {
                names.push(ip.to_string());
            }
            names.extend(g.tls_server_names.iter().cloned());
            let server = ca
                .issue_server(&names)
                .context("issue the edge's server certificate")?;
            (server.cert_pem, server.key_pem)
        }
        _ => bail!("[gateway] tls_cert and tls_key must be set together"),
    };
    let client_ca_pem = match &g.tls_client_ca {
        Some(path) => read(path)?,
        None => ca.cert_pem().to_owned(),
    };
    let tls = gateway::EdgeTls {
        cert_chain_pem,
        key_pem,
        client_ca_pem,
    };
    Ok((tls, Arc::new(ca)))
}

#[cfg(feature = "demo")]
/// Where a local client reaches a listener bound to `addr` (loopback for a wildcard address).
fn dial_addr(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

#[cfg(feature = "demo")]
/// How the demo devices reach the edge.
#[derive(Debug, Clone)]
struct DemoEdge {
    tls: SocketAddr,
    ca: Arc<pki::DeviceCa>,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(feature = "demo")]
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

#[cfg(feature = "demo")]
/// Where the demo users' password is kept (mode 0600), so every demo run can print it.
const DEMO_PASSWORD_FILE: &str = "demo-password.txt";

#[cfg(feature = "demo")]
/// The demo COT's staff, one per role, created on the first demo run with one random
/// password (a demo convenience: real users each set their own).
async fn demo_users(store: &Store, data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join(DEMO_PASSWORD_FILE);
    let password = match std::fs::read_to_string(&path) {
        Ok(p) => p.trim().to_owned(),
        Err(_) => {
            let p = hex::encode(rand::random::<[u8; 8]>());
            write_private(&path, p.as_bytes()).context("write the demo password")?;
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
        let hash = hash_password(password.clone()).await?;
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

/// Creates the data dir readable by its owner only (0700), or brings an existing one down to
/// 0700: it holds the SQLite database, the device CA and the demo's secrets.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("create data dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("data dir {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("make data dir {} private", dir.display()))?;
            tracing::info!(dir = %dir.display(), "data dir made private (0700)");
        }
    }
    Ok(())
}

#[cfg(feature = "demo")]
/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(feature = "demo")]
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

#[cfg(feature = "demo")]
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

async fn cot(store: &Store, cmd: CotCommand) -> anyhow::Result<()> {
    match cmd {
        CotCommand::Add { code, name } => {
            let cot = store.add_cot(&code, &name).await.context("add COT")?;
            println!("COT {} added (id {})", cot.code, cot.id);
        }
        CotCommand::List => {
            for c in store.list_cots().await? {
                println!("{}\t{}\t{}", c.id, c.code, c.name);
            }
        }
    }
    Ok(())
}

async fn patient(store: &Store, cmd: PatientCommand) -> anyhow::Result<()> {
    match cmd {
        PatientCommand::Add {
            cot,
            code,
            name,
            birth_year,
            conditions,
        } => {
            let cot = store
                .cot_by_code(&cot)
                .await?
                .with_context(|| format!("no COT with code {cot}"))?;
            let new = NewPatient {
                cot_id: cot.id,
                code,
                display_name: name,
                birth_year,
                conditions,
            };
            let p = store.add_patient(&new).await.context("add patient")?;
            println!("patient {} added (id {}) to {}", p.code, p.id, cot.code);
        }
        PatientCommand::List => {
            for p in store.list_patients(None).await? {
                println!(
                    "{}\t{}\t{}\tcot {}\t{}",
                    p.id,
                    p.code,
                    p.display_name,
                    p.cot_id,
                    p.conditions.join(",")
                );
            }
        }
    }
    Ok(())
}

/// Issues device `id` a client certificate from the device CA, records its fingerprint (so
/// only this certificate is accepted from now on) and writes the bundle into `out` (default
/// `./{id}`).
async fn issue_device_cert(
    store: &Store,
    config: &Config,
    id: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<pki::BundlePaths> {
    let dir = config.pki_dir();
    let (ca, created) = pki::DeviceCa::load_or_create(&dir)
        .with_context(|| format!("device CA in {}", dir.display()))?;
    if created {
        eprintln!("device CA created in {}", dir.display());
    }
    let issued = ca
        .issue_device(id)
        .context("issue the device certificate")?;
    let out = out.unwrap_or_else(|| PathBuf::from(id));
    let paths = pki::write_device_bundle(&out, id, &issued, ca.cert_pem())
        .context("write the device certificate")?;
    store
        .set_device_cert(
            id,
            &issued.serial,
            &issued.sha256,
            OffsetDateTime::now_utc(),
        )
        .await
        .context("record the device certificate")?;
    Ok(paths)
}

async fn device(store: &Store, config: &Config, cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Add {
            patient,
            kind,
            id,
            model,
            json,
            cert_out,
            no_cert,
        } => {
            let Some(kind) = DeviceKind::parse(&kind) else {
                bail!("--kind must be bp, spo2 or glucose")
            };
            let patient = store
                .patient_by_code(&patient)
                .await?
                .with_context(|| format!("no patient with code {patient}"))?;
            let id = id.unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    kind.as_str(),
                    hex::encode(rand::random::<[u8; 4]>())
                )
            });
            protocol::DeviceId::parse(&id).map_err(|e| anyhow::anyhow!("device id {id:?}: {e}"))?;
            let secret = store::credentials::generate_secret();
            let new = NewDevice {
                id: id.clone(),
                patient_id: patient.id,
                kind,
                secret_hash: store::credentials::hash_secret(&secret),
                model,
            };
            store.add_device(&new).await.context("add device")?;
            let paths = if no_cert {
                None
            } else {
                Some(issue_device_cert(store, config, &id, cert_out).await?)
            };
            if json {
                let cert = paths
                    .as_ref()
                    .map(|p| serde_json::json!({"cert": p.cert, "key": p.key, "ca": p.ca}));
                println!(
                    "{}",
                    serde_json::json!({"id": id, "secret": secret, "patient": patient.code, "kind": kind.as_str(), "tls": cert})
                );
            } else {
                println!(
                    "device {id} provisioned for patient {} ({})",
                    patient.code,
                    kind.as_str()
                );
                println!("  MQTT client id / username: {id}");
                println!("  MQTT password (shown only now): {secret}");
                println!("  readings topic: sentinella/v1/devices/{id}/readings");
                println!("  acks topic:     sentinella/v1/devices/{id}/ack");
                if let Some(p) = &paths {
                    print_bundle(p);
                }
            }
        }
        DeviceCommand::Cert { id, cert_out } => {
            if store.device_auth(&id).await?.is_none() {
                bail!("no device {id}");
            }
            let paths = issue_device_cert(store, config, &id, cert_out).await?;
            println!("device {id}: new certificate issued; the previous one no longer connects");
            print_bundle(&paths);
        }
        DeviceCommand::Revoke { id } => {
            store
                .revoke_device(&id, OffsetDateTime::now_utc())
                .await
                .context("revoke device")?;
            println!("device {id} revoked");
        }
        DeviceCommand::List => {
            for d in store.list_devices(None).await? {
                let seen = d
                    .last_seen_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{}\t{}\tpatient {}\tlast seen {seen}",
                    d.id,
                    d.kind.as_str(),
                    d.patient_id
                );
            }
        }
    }
    Ok(())
}

fn print_bundle(p: &pki::BundlePaths) {
    println!("  mutual TLS (port 8883 by default; client id = device id, no password):");
    println!("    certificate: {}", p.cert.display());
    println!("    private key: {}", p.key.display());
    println!("    CA bundle:   {}", p.ca.display());
}

/// Reads one line from standard input: a password, never echoed by us nor logged.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn hash_password(password: String) -> anyhow::Result<String> {
    server::http::session::hash_password_off_thread(password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn user(store: &Store, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            username,
            display_name,
            role,
            cots,
            service,
            password_stdin,
        } => {
            let role = store::Role::parse(&role)
                .context("--role must be nurse, physician, device_manager or admin")?;
            let mut cot_ids = Vec::new();
            for code in &cots {
                let cot = store
                    .cot_by_code(code)
                    .await?
                    .with_context(|| format!("no COT with code {code}"))?;
                cot_ids.push(cot.id);
            }
            let hash = if service {
                None
            } else if password_stdin {
                Some(hash_password(read_password()?).await?)
            } else {
                bail!("a person needs --password-stdin (or use --service for an integration)")
            };
            let user = store
                .add_user(&store::NewUser {
                    username: &username,
                    display_name: &display_name,
                    role,
                    kind: if service {
                        store::UserKind::Service
                    } else {
                        store::UserKind::Person
                    },
                    password_hash: hash.as_deref(),
                    cot_ids: &cot_ids,
                })
                .await
                .context("add user")?;
            store
                .record_audit(&store::NewAudit {
                    actor: "cli".into(),
                    action: "user.create".into(),
                    target: format!("user:{}", user.username),
                    detail: Some(format!("role={} cots={cots:?}", role.as_str())),
                    cot_ids: user.cot_ids.clone(),
                    ..store::NewAudit::default()
                })
                .await?;
            println!(
                "user {} added (id {}, {}, COTs {})",
                user.username,
                user.id,
                role.as_str(),
                cots.join(", ")
            );
        }
        UserCommand::Password { username } => {
            let user = store
                .user_by_username(&username)
                .await?
                .with_context(|| format!("no user {username}"))?;
            if user.kind == store::UserKind::Service {
                bail!("{username} is a service account: it uses API keys, not a password");
            }
            let hash = hash_password(read_password()?).await?;
            store.set_user_password(user.id, &hash).await?;
            store
                .record_audit(&store::NewAudit {
                    actor: "cli".into(),
                    action: "user.password".into(),
                    target: format!("user:{username}"),
                    detail: Some("every token of the user revoked".into()),
                    cot_ids: user.cot_ids.clone(),
                    ..store::NewAudit::default()
                })
                .await?;
            println!("password of {username} changed; their tokens are revoked");
        }
        UserCommand::Disable { username } => {
            let user = store
                .user_by_username(&username)
                .await?
                .with_context(|| format!("no user {username}"))?;
            store
                .disable_user(user.id, OffsetDateTime::now_utc())
                .await?;
            store
                .record_audit(&store::NewAudit {
                    actor: "cli".into(),
                    action: "user.disable".into(),
                    target: format!("user:{username}"),
                    cot_ids: user.cot_ids.clone(),
                    ..store::NewAudit::default()
                })
                .await?;
            println!("user {username} disabled; their tokens are revoked");
        }
        UserCommand::List => {
            for u in store.list_users(None).await? {
                println!(
                    "{}\t{}\t{}\t{:?}\tCOTs {:?}{}",
                    u.id,
                    u.username,
                    u.role.as_str(),
                    u.kind,
                    u.cot_ids,
                    if u.disabled_at.is_some() {
                        "\tdisabled"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

async fn token(store: &Store, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            user,
            name,
            expires_in,
        } => {
            let account = store
                .user_by_username(&user)
                .await?
                .with_context(|| format!("no user {user}"))?;
            if account.kind != store::UserKind::Service {
                bail!(
                    "{user} is a person, who logs in; API keys are for service accounts (user add --service)"
                );
            }
            let (token, hash) = auth::new_token();
            let expires_at = expires_in
                .map(|d| time::Duration::try_from(d).map(|d| OffsetDateTime::now_utc() + d))
                .transpose()
                .context("--expires-in is too long")?;
            store
                .add_api_token(&store::NewApiToken {
                    user_id: account.id,
                    name: &name,
                    kind: store::TokenKind::ApiKey,
                    token_hash: &hash,
                    expires_at,
                })
                .await
                .context("create token")?;
            println!("{token}");
            eprintln!("API key {name:?} for {user} created; it is shown only now");
        }
    }
    Ok(())
}
