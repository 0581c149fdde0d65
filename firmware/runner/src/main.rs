//! `sentinella-device`: the Sentinella device firmware on a Linux board.
//!
//! ```sh
//! # mutual TLS with the bundle `sentinella device add --cert-out spo2-0001` wrote
//! sentinella-device --id spo2-0001 --broker gateway.lan --tls-dir spo2-0001 --oximeter sim
//! # or username/password over plain TCP (trusted networks only)
//! SENTINELLA_DEVICE_SECRET='<printed by device add>' \
//!     sentinella-device --id spo2-0001 --plain --broker 127.0.0.1:1884 --oximeter sim
//! ```
//! See `firmware/README.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use firmware_runner::{BundleFiles, DeviceTls, MeterSource, OximeterSource, RunnerConfig};
use tokio_util::sync::CancellationToken;

/// Sentinella device firmware on a Linux board (Raspberry Pi or any Linux host).
#[derive(Debug, Parser)]
#[command(name = "sentinella-device", version)]
struct Args {
    /// Device id, as provisioned with `sentinella device add`.
    #[arg(long, env = "SENTINELLA_DEVICE_ID")]
    id: String,
    /// The gateway's device edge, `host` or `host:port` (default port 8883 with mutual TLS,
    /// 1884 with `--plain`).
    #[arg(long, env = "SENTINELLA_BROKER", default_value = "127.0.0.1")]
    broker: String,
    /// Folder with the certificate bundle written by `sentinella device add --cert-out`:
    /// `<id>.crt`, `<id>.key`, `ca.crt`. Default: `./<id>` (where `device add` writes it).
    #[arg(long, env = "SENTINELLA_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// The device certificate (default `<tls-dir>/<id>.crt`).
    #[arg(long, env = "SENTINELLA_TLS_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The device's private key (default `<tls-dir>/<id>.key`; keep it mode 0600).
    #[arg(long, env = "SENTINELLA_TLS_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// The CA the gateway's certificate must chain to (default `<tls-dir>/ca.crt`).
    #[arg(long, env = "SENTINELLA_TLS_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The name the gateway's certificate must carry (default: the host of `--broker`).
    #[arg(long, env = "SENTINELLA_TLS_SERVER_NAME", value_name = "NAME")]
    server_name: Option<String>,
    /// Username/password over plain TCP instead of mutual TLS (the secret comes from
    /// `SENTINELLA_DEVICE_SECRET`); secret and readings travel in clear: trusted networks only.
    #[arg(long, conflicts_with_all = ["tls_dir", "cert", "key", "ca", "server_name"])]
    plain: bool,
    /// Flash image file for the outbox (created if missing); default `<id>.flash`.
    #[arg(long, env = "SENTINELLA_FLASH")]
    flash: Option<PathBuf>,
    /// Flash image size in KiB (multiple of 4).
    #[arg(long, default_value_t = 256)]
    flash_kib: usize,
    /// Pulse oximeter: `sim` or an I2C adapter such as `/dev/i2c-1`.
    #[arg(long)]
    oximeter: Option<String>,
    /// Interval between oximeter spot checks.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Seconds of signal per spot check.
    #[arg(long, default_value_t = 8)]
    window: u16,
    /// Meter: `sim-bp`, `sim-glucose` or a serial port such as `/dev/serial0`.
    #[arg(long)]
    meter: Option<String>,
    /// Meter baud rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Interval between readings of a simulated meter.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    sim_meter_every: Duration,
    /// The meter's clock is local time this many minutes ahead of UTC (60 for CET).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    meter_utc_offset_min: i16,
    /// On a shared cuff, the patient's user id.
    #[arg(long)]
    patient_user: Option<u8>,
    /// Time runs this many times faster in simulated sensors.
    #[arg(long, default_value_t = 1.0)]
    sim_speed: f64,
    /// Trust the system clock (NTP) before the gateway sends its time.
    #[arg(long)]
    system_clock: bool,
    /// Stop measuring after this many readings.
    #[arg(long)]
    max_readings: Option<u32>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SENTINELLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let flash = args
        .flash
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.flash", args.id)));
    let mut config = if args.plain {
        // The secret only ever comes from the environment, never from a flag (shell history,
        // process list) or a committed file.
        let secret = std::env::var("SENTINELLA_DEVICE_SECRET").context(
            "set SENTINELLA_DEVICE_SECRET to the secret printed by `sentinella device add`",
        )?;
        tracing::warn!("plain MQTT: the secret and the readings travel in clear");
        RunnerConfig::new(&args.id, &secret, &args.broker, flash)
    } else {
        let dir = args
            .tls_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&args.id));
        let default = BundleFiles::in_dir(&dir, &args.id);
        let files = BundleFiles {
            cert: args.cert.clone().unwrap_or(default.cert),
            key: args.key.clone().unwrap_or(default.key),
            ca: args.ca.clone().unwrap_or(default.ca),
        };
        let mut tls = DeviceTls::from_files(&files)?;
        tls.server_name = args.server_name.clone();
        tracing::info!(
            cert = %files.cert.display(),
            ca = %files.ca.display(),
            server_name = ?tls.server_name,
            "mutual TLS with the device certificate"
        );
        RunnerConfig::mutual_tls(&args.id, tls, &args.broker, flash)
    };
    config.flash_size = args.flash_kib * 1024;
    config.spot_check_every = args.every;
    config.spot_check_window_s = args.window;
    config.sim_speed = args.sim_speed;
    config.trust_system_clock = args.system_clock;
    config.meter_utc_offset_min = args.meter_utc_offset_min;
    config.meter_patient_user = args.patient_user;
    config.max_readings = args.max_readings;
    config.oximeter = args.oximeter.as_deref().map(|o| match o {
        "sim" => OximeterSource::Sim,
        path => OximeterSource::I2c(PathBuf::from(path)),
    });
    config.meter = args.meter.as_deref().map(|m| match m {
        "sim-bp" => MeterSource::SimBloodPressure {
            every: args.sim_meter_every,
        },
        "sim-glucose" => MeterSource::SimGlucose {
            every: args.sim_meter_every,
        },
        path => MeterSource::Serial {
            path: PathBuf::from(path),
            baud: args.baud,
        },
    });
    if config.oximeter.is_none() && config.meter.is_none() {
        anyhow::bail!("no sensor: pass --oximeter and/or --meter");
    }

    let cancel = CancellationToken::new();
    let runner = firmware_runner::start(config, cancel.clone()).await?;
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = ctrl_c => r?,
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        ctrl_c.await?;
        anyhow::Ok(())
    };
    shutdown.await.context("waiting for a signal")?;
    tracing::info!("stopping");
    cancel.cancel();
    runner.join().await
}
