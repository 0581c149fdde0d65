//! `sentinella-sim`: provision a simulated fleet, run it on its schedule, load-test the
//! gateway with it, or check that nothing is lost or stored twice while the gateway is hurt
//! (`chaos`, `storm`; see `scripts/chaos.sh`); list and show the clinical scenarios
//! (`scenario`), and benchmark the alert engine (`alert-quality`, `alert-latency`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use simulators::alert_latency::{LatencyOptions, run_alert_latency};
use simulators::alert_quality::{QualityOptions, run_alert_quality};
use simulators::bench::{BenchOptions, run_bench};
use simulators::chaos::{ChaosOptions, run_chaos};
use simulators::fleet::{FleetFile, RunOptions, SeqFloor, provision, run_fleet};
use simulators::idle::{IdleOptions, run_idle};
use simulators::observe::GatewayPid;
use simulators::storm::{StormOptions, run_storm};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Simulated patients and home devices for Sentinella.
#[derive(Debug, Parser)]
#[command(name = "sentinella-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Hold many idle mutual-TLS MQTT connections (one per fleet device with a certificate)
    /// until Ctrl-C or SIGTERM: what a held connection costs a broker (`scripts/idle-rss.sh`).
    Idle {
        /// The fleet file written by `provision --ca-dir` (devices with certificates).
        #[arg(long)]
        fleet: PathBuf,
        /// The broker's TLS listener, `host:port`.
        #[arg(long, default_value = "127.0.0.1:8883")]
        broker: String,
        /// The name the broker's certificate must carry.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// How many connections.
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        /// TLS handshakes in progress at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// MQTT keep-alive, seconds (a PINGREQ every half of it).
        #[arg(long, default_value_t = 600)]
        keep_alive: u16,
        /// Once every connection is up, write the report (JSON) to this file.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Enroll simulated patients and their devices in the store; write the fleet file.
    Provision {
        /// The store, `postgres://…` or `sqlite:…`.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// How many patients to enroll (each gets 1-3 devices).
        #[arg(long)]
        patients: usize,
        /// The COT to enroll them in (created if missing).
        #[arg(long, default_value = "COT-DEMO")]
        cot: String,
        /// Seed for conditions, names and device mix.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Prefix of patient codes and device ids (`{prefix}-bp-00001`).
        #[arg(long, default_value = "sim")]
        prefix: String,
        /// Where to write the fleet file (it holds the device secrets).
        #[arg(long)]
        out: PathBuf,
        /// The device CA's directory (`ca.pem`, `ca.key`; `sentinella` keeps it in
        /// `{data_dir}/pki`): issue every device a client certificate, kept in the fleet file,
        /// so the fleet connects over mutual TLS.
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
    /// Connect every device of a fleet and measure on schedule in simulated time.
    Run {
        /// The fleet file written by `provision`.
        #[arg(long)]
        fleet: PathBuf,
        /// The gateway's device edge, `host:port`: the TLS listener (e.g. 127.0.0.1:8883) for
        /// a fleet with certificates, the plain one otherwise or with `--plain`.
        #[arg(long, default_value = "127.0.0.1:1884")]
        broker: String,
        /// Connect with passwords over plain TCP even if the fleet has certificates.
        #[arg(long)]
        plain: bool,
        /// Simulated time per real time (1440: a day per minute).
        #[arg(long, default_value_t = 1440.0)]
        speed: f64,
        /// How long to generate readings (real time), e.g. `60s`, `10m`.
        #[arg(long, default_value = "60s")]
        duration: humantime::Duration,
        /// Seed for the patients' physiology.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// End the simulated period now instead of starting it now (no future timestamps).
        #[arg(long)]
        backdate: bool,
        /// Longest wait for outboxes to drain at the end.
        #[arg(long, default_value = "30s")]
        drain: humantime::Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load-test the gateway: devices publish as fast as acks allow.
    Bench {
        /// The fleet file written by `provision`.
        #[arg(long)]
        fleet: PathBuf,
        /// The gateway's device edge, `host:port`.
        #[arg(long, default_value = "127.0.0.1:1884")]
        broker: String,
        /// How many of the fleet's devices to use (default: all).
        #[arg(long)]
        devices: Option<usize>,
        /// Length of the measured window.
        #[arg(long, default_value = "30s")]
        duration: humantime::Duration,
        /// Readings per batch (1-64).
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Batches awaiting the gateway's ack at once, per device.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        /// The gateway's pid, to report its peak memory.
        #[arg(long)]
        gateway_pid: Option<u32>,
        /// Seed for the generated values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reliability run: a steady load for a while (a script injects a fault meanwhile), then
    /// every generated seq checked against the store. Exits non-zero if a reading was lost,
    /// stored twice, or left pending.
    Chaos {
        /// The fleet file written by `provision`.
        #[arg(long)]
        fleet: PathBuf,
        /// The gateway's device edge, `host:port`.
        #[arg(long, default_value = "127.0.0.1:1884")]
        broker: String,
        /// The store the gateway writes to (read directly at the end).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// How many of the fleet's devices to use (default: all).
        #[arg(long)]
        devices: Option<usize>,
        /// Every device measures once per interval.
        #[arg(long, default_value = "1s", conflicts_with = "rate")]
        interval: humantime::Duration,
        /// Or: total readings/s over the fleet (sets the interval).
        #[arg(long)]
        rate: Option<f64>,
        /// How long readings are generated.
        #[arg(long, default_value = "120s")]
        duration: humantime::Duration,
        /// Longest wait for the outboxes to drain afterwards.
        #[arg(long, default_value = "120s")]
        drain: humantime::Duration,
        /// Longest wait for every device to connect before generation starts.
        #[arg(long, default_value = "60s")]
        connect_timeout: humantime::Duration,
        /// The gateway's pid, to sample its memory and CPU.
        #[arg(long)]
        gateway_pid: Option<u32>,
        /// A file holding the gateway's pid, read at every sample (follows restarts).
        #[arg(long)]
        gateway_pid_file: Option<PathBuf>,
        /// The fault file (`start=<unix ms>`, then `end=<unix ms>`), to measure recovery.
        #[arg(long)]
        fault_file: Option<PathBuf>,
        /// The gateway's API, `host:port`, to probe `/readyz` each second.
        #[arg(long)]
        api: Option<String>,
        /// Seed for the generated values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON (timeline included).
        #[arg(long)]
        json: bool,
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Reconnection storm: devices each hold a backlog, then all connect at once; reports how
    /// long until every backlog is committed and acked. Exits non-zero on loss, duplicates or
    /// readings left pending.
    Storm {
        /// The fleet file written by `provision`.
        #[arg(long)]
        fleet: PathBuf,
        /// The gateway's device edge, `host:port`: the TLS listener for a fleet with
        /// certificates (`provision --ca-dir`), the plain one otherwise or with `--plain`.
        #[arg(long, default_value = "127.0.0.1:1884")]
        broker: String,
        /// Connect with passwords over plain TCP even if the fleet has certificates.
        #[arg(long)]
        plain: bool,
        /// The store the gateway writes to (read directly at the end).
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        /// How many of the fleet's devices to use.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Readings each device holds before it connects.
        #[arg(long, default_value_t = 20)]
        backlog: usize,
        /// Let the connections go over this long (0s: all at the same instant).
        #[arg(long, default_value = "0s")]
        spread: humantime::Duration,
        /// Longest wait for every backlog to be acked.
        #[arg(long, default_value = "300s")]
        timeout: humantime::Duration,
        /// The gateway's pid, to sample its memory and CPU.
        #[arg(long)]
        gateway_pid: Option<u32>,
        /// A file holding the gateway's pid, read at every sample.
        #[arg(long)]
        gateway_pid_file: Option<PathBuf>,
        /// The gateway's API, `host:port`, to probe `/readyz` each second.
        #[arg(long)]
        api: Option<String>,
        /// Seed for the generated values.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON (timeline included).
        #[arg(long)]
        json: bool,
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The clinical scenarios and their ground truth: `--list`, or one scenario injected into
    /// a simulated patient, its readings printed.
    Scenario {
        /// List every scenario with its ground truth.
        #[arg(long)]
        list: bool,
        /// The scenario to show (see `--list`).
        name: Option<String>,
        /// Days to simulate (the scenario starts on day 8, or day 2 when shorter).
        #[arg(long, default_value_t = 14)]
        days: u32,
        /// Seed for the patient.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Alert quality: a simulated cohort with injected clinical events through the real alert
    /// engine and store in compressed time; detection rate, alerts per patient per month, PPV.
    AlertQuality {
        #[arg(long, default_value_t = 1_000)]
        patients: usize,
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// An empty store (`postgres://…`, `sqlite:…`); default: a temporary SQLite file.
        #[arg(long)]
        database_url: Option<String>,
        /// Multiplies every injected event rate (1: the rates documented in BENCHMARKS.md).
        #[arg(long, default_value_t = 1.0)]
        event_scale: f64,
        /// Share of patients whose device honours the engine's repeat requests.
        #[arg(long, default_value_t = 0.85)]
        repeat_compliance: f64,
        /// Chance that a patient skips a scheduled measurement.
        #[arg(long, default_value_t = 0.03)]
        skip_rate: f64,
        /// Store each patient's composed plan with the changes this benchmark proposes
        /// (BENCHMARKS.md) instead of letting the engine compose it.
        #[arg(long)]
        tuned: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Alert latency: commit → alert event on the live stream at a given readings/s, through
    /// the real engine task; then the engine's own throughput ceiling.
    AlertLatency {
        /// An empty store (`postgres://…`, `sqlite:…`); default: a temporary SQLite file.
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 5_000)]
        patients: usize,
        /// Readings per second offered.
        #[arg(long, default_value_t = 5_000.0)]
        rate: f64,
        #[arg(long, default_value = "30s")]
        duration: humantime::Duration,
        /// Share of readings that trigger an alert.
        #[arg(long, default_value_t = 0.01)]
        trigger_share: f64,
        /// Readings for the engine-ceiling phase (0: skip).
        #[arg(long, default_value_t = 100_000)]
        ceiling: usize,
        /// The alert engine's workers (1: the serial engine).
        #[arg(long, default_value_t = 32)]
        workers: usize,
        /// Producers committing at once, each its own patients (the gateway's commit lanes).
        #[arg(long, default_value_t = 1)]
        producers: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let progress = match &cli.command {
        Command::Run { .. } if std::io::stderr().is_terminal() => {
            let pb = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .context("progress bar template")?;
            pb.set_style(style);
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        }
        _ => ProgressBar::hidden(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(AroundProgress(progress.clone()))
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));

    match cli.command {
        Command::Idle {
            fleet,
            broker,
            server_name,
            connections,
            concurrency,
            keep_alive,
            ready_file,
        } => {
            let file = FleetFile::load(&fleet)?;
            let opts = IdleOptions {
                broker,
                server_name,
                connections,
                concurrency,
                keep_alive,
                ..IdleOptions::default()
            };
            let mut written = Ok(());
            let report = run_idle(&file, &opts, cancel, |report| {
                print!("{report}");
                let _ = std::io::stdout().flush();
                if let Some(path) = &ready_file {
                    written = serde_json::to_string(report)
                        .context("serializing the report")
                        .and_then(|text| {
                            std::fs::write(path, text)
                                .with_context(|| format!("writing {}", path.display()))
                        });
                }
            })
            .await?;
            written?;
            if report.failed > 0 {
                bail!("{} of {} connections failed", report.failed, report.wanted);
            }
        }
        Command::Provision {
            database_url,
            patients,
            cot,
            seed,
            prefix,
            out,
            ca_dir,
        } => {
            let store = store::Store::connect(&database_url)
                .await
                .context("connecting to the store")?;
            store.migrate().await.context("migrating the store")?;
            let mut fleet = provision(&store, &cot, patients, seed, &prefix).await?;
            if let Some(dir) = ca_dir {
                let (ca, _) = pki::DeviceCa::load_or_create(&dir)
                    .with_context(|| format!("device CA in {}", dir.display()))?;
                simulators::fleet::issue_certs(&store, &ca, &mut fleet).await?;
            }
            store.close().await;
            fleet.save(&out)?;
            let count = |kind: &str| fleet.devices.iter().filter(|d| d.kind == kind).count();
            println!(
                "provisioned {patients} patients in {cot}: {} devices ({} bp, {} spo2, {} glucose) -> {}",
                fleet.devices.len(),
                count("bp"),
                count("spo2"),
                count("glucose"),
                out.display()
            );
        }
        Command::Run {
            fleet,
            broker,
            plain,
            speed,
            duration,
            seed,
            backdate,
            drain,
            json,
        } => {
            let file = FleetFile::load(&fleet)?;
            let floor = SeqFloor::beside(&fleet);
            let opts = RunOptions {
                speed,
                duration: duration.into(),
                seed,
                first_seq: floor.first_seq()?,
                backdate,
                drain: drain.into(),
                progress: Some(progress.clone()),
                plain,
            };
            let report = run_fleet(&file, &broker, opts, cancel).await;
            progress.finish_and_clear();
            let report = report?;
            floor.store(report.next_seq)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("serializing the report")?
                );
            } else {
                print!("{report}");
            }
            if report.pending > 0 {
                bail!(
                    "{} readings were never acknowledged by the gateway",
                    report.pending
                );
            }
        }
        Command::Bench {
            fleet,
            broker,
            devices,
            duration,
            batch,
            in_flight,
            gateway_pid,
            seed,
            json,
        } => {
            let file = FleetFile::load(&fleet)?;
            let floor = SeqFloor::beside(&fleet);
            let opts = BenchOptions {
                devices,
                duration: duration.into(),
                batch,
                in_flight,
                gateway_pid,
                seed,
                first_seq: floor.first_seq()?,
                ..BenchOptions::default()
            };
            let report = run_bench(&file, &broker, &opts, cancel).await?;
            floor.store(report.next_seq)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("serializing the report")?
                );
            } else {
                print!("{report}");
            }
            if report.committed_in_window == 0 {
                bail!("the gateway acknowledged nothing during the measured window");
            }
        }
        Command::Chaos {
            fleet,
            broker,
            database_url,
            devices,
            interval,
            rate,
            duration,
            drain,
            connect_timeout,
            gateway_pid,
            gateway_pid_file,
            fault_file,
            api,
            seed,
            json,
            out,
        } => {
            let file = FleetFile::load(&fleet)?;
            let floor = SeqFloor::beside(&fleet);
            let count = devices.unwrap_or(file.devices.len());
            let interval = match rate {
                Some(rate) if rate > 0.0 && rate.is_finite() => {
                    Duration::from_secs_f64(count as f64 / rate)
                }
                Some(rate) => bail!("--rate must be a positive number of readings/s, not {rate}"),
                None => interval.into(),
            };
            let opts = ChaosOptions {
                devices,
                interval,
                duration: duration.into(),
                drain: drain.into(),
                connect_timeout: connect_timeout.into(),
                gateway: GatewayPid::from_args(gateway_pid, gateway_pid_file),
                fault_file,
                api,
                database_url,
                seed,
                first_seq: floor.first_seq()?,
                ..ChaosOptions::default()
            };
            let report = run_chaos(&file, &broker, &opts, cancel).await?;
            floor.store(report.next_seq)?;
            emit(&report, json, out.as_deref())?;
            if !report.ok() {
                bail!("chaos run failed: {}", report.failures.join("; "));
            }
        }
        Command::Storm {
            fleet,
            broker,
            plain,
            database_url,
            devices,
            backlog,
            spread,
            timeout,
            gateway_pid,
            gateway_pid_file,
            api,
            seed,
            json,
            out,
        } => {
            let file = FleetFile::load(&fleet)?;
            let floor = SeqFloor::beside(&fleet);
            let opts = StormOptions {
                devices: Some(devices),
                backlog,
                spread: spread.into(),
                timeout: timeout.into(),
                gateway: GatewayPid::from_args(gateway_pid, gateway_pid_file),
                api,
                database_url,
                seed,
                first_seq: floor.first_seq()?,
                plain,
                ..StormOptions::default()
            };
            let report = run_storm(&file, &broker, &opts, cancel).await?;
            floor.store(report.next_seq)?;
            emit(&report, json, out.as_deref())?;
            if !report.ok() {
                bail!("storm failed: {}", report.failures.join("; "));
            }
        }
        Command::Scenario {
            list,
            name,
            days,
            seed,
            json,
        } => scenario(list, name.as_deref(), days, seed, json)?,
        Command::AlertQuality {
            patients,
            days,
            seed,
            database_url,
            event_scale,
            repeat_compliance,
            skip_rate,
            tuned,
            json,
            out,
        } => {
            let mut opts = QualityOptions {
                patients,
                days,
                seed,
                database_url,
                event_scale,
                repeat_compliance,
                tuned,
                ..QualityOptions::default()
            };
            opts.habits.skip_rate = skip_rate;
            let report = run_alert_quality(&opts).await?;
            emit(&report, json, out.as_deref())?;
        }
        Command::AlertLatency {
            database_url,
            patients,
            rate,
            duration,
            trigger_share,
            ceiling,
            workers,
            producers,
            json,
            out,
        } => {
            let opts = LatencyOptions {
                workers,
                producers,
                database_url,
                patients,
                rate,
                duration: duration.into(),
                trigger_share,
                ceiling_readings: ceiling,
                ..LatencyOptions::default()
            };
            let report = run_alert_latency(&opts).await?;
            emit(&report, json, out.as_deref())?;
        }
    }
    Ok(())
}

/// `sentinella-sim scenario`.
fn scenario(
    list: bool,
    name: Option<&str>,
    days: u32,
    seed: u64,
    json: bool,
) -> anyhow::Result<()> {
    use protocol::{Kind, Measurement};
    use rand::SeedableRng;
    use simulators::Condition;
    use simulators::scenario::{DAY_MS, HOUR_MS, Scenario, ScenarioKind, SimPatient};
    let start = 1_763_942_400_000; // a midnight UTC
    let sample = |kind: ScenarioKind, rng: &mut rand::rngs::StdRng| {
        let device = kind.device().unwrap_or(Kind::BloodPressure);
        let day = if days >= 10 { 8 } else { 2 };
        Scenario::new(kind, start + day * DAY_MS + 14 * HOUR_MS, device, rng)
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if list || name.is_none() {
        let rows: Vec<serde_json::Value> = ScenarioKind::ALL
            .into_iter()
            .map(|k| {
                let truth = sample(k, &mut rng).truth();
                serde_json::json!({
                    "name": k.as_str(),
                    "description": k.description(),
                    "critical": k.critical(),
                    "device": k.device().map(Kind::as_str),
                    "expect": truth.expect,
                    "min_severity": truth.min_severity,
                    "related": truth.related,
                    "forbid": truth.forbid,
                    "window_hours": (truth.to_ms - truth.from_ms) as f64 / HOUR_MS as f64,
                })
            })
            .collect();
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            for r in &rows {
                let list = |k: &str| {
                    r[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                let truth = if list("expect").is_empty() {
                    format!("must not raise: {}", list("forbid"))
                } else {
                    format!(
                        "expects: {} >= {}{}",
                        list("expect"),
                        r["min_severity"].as_str().unwrap_or("-"),
                        if list("related").is_empty() {
                            String::new()
                        } else {
                            format!(" (explains: {})", list("related"))
                        }
                    )
                };
                println!(
                    "{:<26} {}\n{:<26} {} within {:.0} h of its start\n",
                    r["name"].as_str().unwrap_or(""),
                    r["description"].as_str().unwrap_or(""),
                    "",
                    truth,
                    r["window_hours"].as_f64().unwrap_or(0.0)
                );
            }
        }
        return Ok(());
    }
    let name = name.unwrap_or_default();
    let Some(kind) = ScenarioKind::parse(name) else {
        bail!("unknown scenario {name:?}; see `sentinella-sim scenario --list`");
    };
    let condition = match kind.device() {
        Some(Kind::Spo2) => Condition::Copd,
        Some(Kind::Glucose) => Condition::Diabetes,
        _ => Condition::Hypertension,
    };
    let mut patient = SimPatient::new(seed, condition, 2, &mut rng);
    let sc = sample(kind, &mut rng);
    let truth = sc.truth();
    patient.inject(sc.clone());
    let (readings, statuses) = patient.timeline(start, start + i64::from(days) * DAY_MS, &mut rng);
    let when = |ms: i64| {
        simulators::alert_quality::at_ms(ms)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let rows: Vec<serde_json::Value> = readings
        .iter()
        .map(|r| {
            let values = match r.sample.measurement {
                Measurement::BloodPressure(bp) => format!("{}/{} mmHg", bp.systolic, bp.diastolic),
                Measurement::Spo2(ox) => format!("{} %", ox.percent),
                Measurement::Glucose(g) => format!(
                    "{:.0} mg/dL{}",
                    g.mg_dl(),
                    if g.sample == protocol::SampleType::ControlSolution {
                        " (control solution)"
                    } else {
                        ""
                    }
                ),
            };
            serde_json::json!({
                "measured": when(r.measured_ms),
                "delivered": when(r.delivered_ms),
                "values": values,
                "injected": r.injected,
                "repeat": r.repeat,
            })
        })
        .collect();
    if json {
        let out = serde_json::json!({
            "scenario": sc, "truth": truth, "readings": rows,
            "statuses": statuses.iter().map(|s| serde_json::json!({"at": when(s.at_ms), "battery": s.battery})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} on a {} patient: {}",
            kind,
            condition,
            kind.description()
        );
        println!(
            "ground truth: {}",
            serde_json::to_string(&truth).unwrap_or_default()
        );
        for r in &rows {
            println!(
                "{}  delivered {}  {:<16} {}{}",
                r["measured"].as_str().unwrap_or(""),
                r["delivered"].as_str().unwrap_or(""),
                r["values"].as_str().unwrap_or(""),
                if r["injected"].as_bool().unwrap_or(false) {
                    "injected "
                } else {
                    ""
                },
                if r["repeat"].as_bool().unwrap_or(false) {
                    "repeat"
                } else {
                    ""
                },
            );
        }
        let low: Vec<String> = statuses
            .iter()
            .filter(|s| s.battery < 20)
            .map(|s| format!("{} {} %", when(s.at_ms), s.battery))
            .collect();
        if !low.is_empty() {
            println!("low battery statuses: {}", low.join(", "));
        }
    }
    Ok(())
}

/// Prints a report as text or JSON; also writes the JSON to `out` if given.
fn emit<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report).context("serializing the report")?;
    if let Some(out) = out {
        std::fs::write(out, format!("{text}\n"))
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if json {
        println!("{text}");
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Cancels on Ctrl-C or SIGTERM.
async fn cancel_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("stopping: draining outboxes (at most a few seconds)");
    cancel.cancel();
}

/// Writes log lines to stderr with the progress bar lifted out of the way.
#[derive(Debug, Clone)]
struct AroundProgress(ProgressBar);

impl<'a> MakeWriter<'a> for AroundProgress {
    type Writer = AroundProgress;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for AroundProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
