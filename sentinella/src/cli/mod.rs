//! The `sentinella` command line: one module per subcommand, each a thin adapter over the
//! store, the node or the API's use cases.

pub mod config;
pub mod cot;
pub mod device;
pub mod patient;
pub mod run;
pub mod token;
pub mod user;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use store::Store;

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "sentinella",
    version,
    about = "Telemonitoring gateway for territorial healthcare"
)]
pub struct Cli {
    /// Configuration file (TOML); see `sentinella config sample`.
    #[arg(long, global = true, env = "SENTINELLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store URL: postgres://… or sqlite:PATH (default: SQLite under the data directory).
    #[arg(
        long,
        global = true,
        env = "SENTINELLA_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Data directory for the embedded SQLite store and the demo fleet.
    #[arg(long, global = true, env = "SENTINELLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "gateway=debug,info".
    #[arg(long, global = true, env = "SENTINELLA_LOG", default_value = "info")]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker, the ingest pipeline and the API in one process (the default).
    Run(run::RunArgs),
    /// Apply database migrations and report the readings layout.
    Migrate,
    /// Manage COTs (Centrali Operative Territoriali).
    #[command(subcommand)]
    Cot(cot::CotCommand),
    /// Manage patients.
    #[command(subcommand)]
    Patient(patient::PatientCommand),
    /// Manage devices.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Manage staff users and service accounts.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Manage API keys of service accounts.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

/// The configuration `cli` names: defaults, then the file, the environment and the flags.
pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env()?;
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(url) = &cli.database_url {
        config.database_url = Some(url.clone());
    }
    Ok(config)
}

/// Runs the command `cli` names (`run` when none); the process's exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    if let Some(Command::Config(config::ConfigCommand::Check)) = &cli.command {
        let code = config::check(load_config(&cli), cli.config.as_deref()).await;
        return Ok(std::process::ExitCode::from(code));
    }
    run_command(cli).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli)?;
    let command = cli.command.unwrap_or(Command::Run(run::RunArgs::default()));
    if let Command::Config(cmd) = &command {
        config::run(cmd);
        return Ok(());
    }
    #[cfg(not(feature = "demo"))]
    if let Command::Run(run::RunArgs { demo: Some(_), .. }) = &command {
        anyhow::bail!(
            "this sentinella was built without the demo; build it with the `demo` feature: \
             cargo run --release -p sentinella --features demo -- run --demo 20"
        );
    }
    if let Command::Run(_) = &command {
        // The checks of `sentinella config check`, with the same messages.
        crate::config_check::refuse_invalid(&config).await?;
    }
    let store = open_store(&config).await?;
    match command {
        Command::Run(args) => run::run(config, store, args).await,
        Command::Migrate => Ok(()),
        Command::Cot(cmd) => cot::run(&store, cmd).await,
        Command::Patient(cmd) => patient::run(&store, cmd).await,
        Command::Device(cmd) => device::run(&store, &config, cmd).await,
        Command::User(cmd) => user::run(&store, cmd).await,
        Command::Token(cmd) => token::run(&store, cmd).await,
        Command::Config(_) => Ok(()),
    }
}

/// Connects and migrates; every subcommand works on an up-to-date schema.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let url = config.store_url();
    if url.starts_with("sqlite:") {
        private_dir(&config.data_dir)?;
    }
    let store = Store::connect(&url).await.context("connect to the store")?;
    let layout = store.migrate().await.context("apply migrations")?;
    tracing::info!(backend = ?store.backend(), readings = %layout, "store ready");
    Ok(store)
}

/// Creates the data dir readable by its owner only (0700), or brings an existing one down to
/// 0700: it holds the SQLite database, the device CA and the demo's secrets.
pub(crate) fn private_dir(dir: &Path) -> anyhow::Result<()> {
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
