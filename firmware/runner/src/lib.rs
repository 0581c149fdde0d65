//! Sentinella's device firmware on a Linux development board.
//!
//! Runs `firmware-core`'s device loop with the board's parts:
//! - sensors: a MAX30102 oximeter on I2C and/or a blood-pressure or glucose meter on a UART,
//!   either real (`/dev/i2c-1`, `/dev/serial0`, through `linux-embedded-hal`) or simulated at
//!   register level ([`sim`]);
//! - the outbox in a flash-image file with power-safe writes ([`flash_file`]);
//! - the uplink over MQTT with rumqttc ([`mqtt`]), with mutual TLS from the device certificate
//!   bundle ([`tls`]) or, on a trusted network, username and password;
//! - tokio's clock ([`clock`]).
//!
//! # Layout
//! - [`run`] / [`start`]: the entry points; [`RunnerConfig`] says what to run.
//! - [`sensors`]: driver adapters to the core's sensor traits.
//! - [`sim`]: the simulated MAX30102 register file and UART meter.
//! - [`hw`] (Linux only): the real buses.
//!
//! The binary `sentinella-device` (`src/main.rs`) parses flags into a [`RunnerConfig`] and calls
//! [`run`]; tests call [`start`] and drive the returned [`Runner`]. `firmware/README.md` is the
//! guide for device teams.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use firmware_core::device::{Device, DeviceSettings, Event, Observer};
use firmware_core::flash::Blocking;
use firmware_core::outbox::{Outbox, OutboxLayout};
use firmware_core::sampling::Schedule;
use firmware_core::uplink::UplinkConfig;
use protocol::Kind;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod clock;
pub mod flash_file;
#[cfg(target_os = "linux")]
pub mod hw;
pub mod mqtt;
pub mod sensors;
pub mod sim;
pub mod tls;

pub use mqtt::Security;
pub use tls::{BundleFiles, DeviceTls};

/// Firmware version reported in the device status.
pub const FIRMWARE: &str = concat!("runner-", env!("CARGO_PKG_VERSION"));

/// Erase page of the flash image.
pub const FLASH_PAGE: usize = 4096;

/// Pages of the flash image that hold the seq counter.
const META_PAGES: u32 = 2;

/// The flash image type.
pub type Flash = Blocking<flash_file::FileFlash<FLASH_PAGE>>;

/// Where the oximeter is.
#[derive(Debug, Clone, PartialEq)]
pub enum OximeterSource {
    /// The simulated MAX30102 with a finger on it.
    Sim,
    /// A MAX30102 on a Linux I2C adapter (e.g. `/dev/i2c-1`).
    I2c(PathBuf),
}

/// Where the meter is.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterSource {
    /// A simulated cuff measuring every `every`.
    SimBloodPressure {
        /// Interval between measurements.
        every: Duration,
    },
    /// A simulated glucose meter measuring every `every`.
    SimGlucose {
        /// Interval between measurements.
        every: Duration,
    },
    /// A meter on a serial port.
    Serial {
        /// The port, e.g. `/dev/serial0`.
        path: PathBuf,
        /// Baud rate (8N1).
        baud: u32,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Device id, as provisioned (`sentinella device add`).
    pub device_id: String,
    /// Device secret, as printed once by `sentinella device add` (plain mode only; empty with
    /// mutual TLS).
    pub secret: String,
    /// The gateway's device edge, `host` or `host:port` (default port: 8883 with mutual TLS,
    /// 1884 plain; IPv6 as `[::1]:8883`).
    pub broker: String,
    /// Transport security.
    pub security: Security,
    /// The flash image file (created erased if missing).
    pub flash_path: PathBuf,
    /// Size of the flash image, bytes (a multiple of 4096; at least 3 pages).
    pub flash_size: usize,
    /// `fdatasync` every flash write (keep on; off only for throw-away images).
    pub flash_sync: bool,
    /// The oximeter, if any.
    pub oximeter: Option<OximeterSource>,
    /// Interval between spot checks.
    pub spot_check_every: Duration,
    /// Seconds of signal per spot check (at least 3).
    pub spot_check_window_s: u16,
    /// The meter, if any.
    pub meter: Option<MeterSource>,
    /// The meter's clock is local time this many minutes ahead of UTC.
    pub meter_utc_offset_min: i16,
    /// On a shared cuff, the patient's user id (other users' readings are dropped).
    pub meter_patient_user: Option<u8>,
    /// How much faster time runs in the simulated sensors (1 = real time).
    pub sim_speed: f64,
    /// Trust the system clock (NTP) from the start instead of waiting for the gateway's time.
    pub trust_system_clock: bool,
    /// Uplink tuning.
    pub uplink: UplinkConfig,
    /// Stop measuring after this many readings (for tests and demos).
    pub max_readings: Option<u32>,
}

impl RunnerConfig {
    /// A device connecting with mutual TLS (the gateway's TLS listener), default settings, no
    /// sensors.
    pub fn mutual_tls(device_id: &str, tls: DeviceTls, broker: &str, flash_path: PathBuf) -> Self {
        RunnerConfig {
            security: Security::MutualTls(tls),
            ..RunnerConfig::new(device_id, "", broker, flash_path)
        }
    }

    /// A device connecting with its secret over plain TCP, default settings, no sensors.
    pub fn new(device_id: &str, secret: &str, broker: &str, flash_path: PathBuf) -> Self {
        RunnerConfig {
            device_id: device_id.to_owned(),
            secret: secret.to_owned(),
            broker: broker.to_owned(),
            security: Security::Plain,
            flash_path,
            flash_size: 64 * FLASH_PAGE,
            flash_sync: true,
            oximeter: None,
            spot_check_every: Duration::from_secs(15 * 60),
            spot_check_window_s: 8,
            meter: None,
            meter_utc_offset_min: 0,
            meter_patient_user: None,
            sim_speed: 1.0,
            trust_system_clock: false,
            uplink: UplinkConfig::default(),
            max_readings: None,
        }
    }
}

/// What the device did (this run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Seqs stored in the outbox by this run, in order.
    pub stored: Vec<u32>,
    /// Readings found in the outbox at start (from before a restart).
    pub recovered: u32,
    /// Readings the gateway acked as committed.
    pub committed: u64,
    /// Readings the gateway acked as rejected.
    pub rejected: u64,
    /// Batches published (first sends and resends).
    pub batches: u64,
    /// Successful connections.
    pub connects: u64,
    /// Whether the session is up.
    pub connected: bool,
    /// Whether the wall clock is set.
    pub clock_set: bool,
    /// Readings that could not be stored, flash errors and sensor failures.
    pub failures: u64,
    /// The last error seen.
    pub last_error: Option<String>,
}

impl Stats {
    /// Readings in the outbox now.
    pub fn pending(&self) -> u64 {
        (u64::from(self.recovered) + self.stored.len() as u64)
            .saturating_sub(self.committed + self.rejected)
    }
}

/// A running device.
#[derive(Debug)]
pub struct Runner {
    stats: Arc<Mutex<Stats>>,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Runner {
    /// A snapshot of the device's counters.
    pub fn stats(&self) -> Stats {
        lock(&self.stats).clone()
    }

    /// Waits until `f` holds for the counters, or fails after `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Stats) -> bool,
    ) -> anyhow::Result<Stats> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if f(&stats) {
                return Ok(stats);
            }
            if self.task.is_finished() {
                anyhow::bail!("device stopped while waiting for {what}: {stats:?}");
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("timed out waiting for {what}: {stats:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops cleanly: disconnects (the broker drops the will) and closes the flash image.
    pub async fn stop(self) -> anyhow::Result<Stats> {
        self.cancel.cancel();
        self.task.await.context("device task")??;
        Ok(lock(&self.stats).clone())
    }

    /// Stops like a power cut: the loop is dropped wherever it is, no disconnect. (Flash
    /// writes are synchronous, so a cut lands between two of them, not inside one; the
    /// core's power-cut tests cover the inside.)
    pub async fn kill(self) -> Stats {
        self.task.abort();
        let _ = self.task.await;
        lock(&self.stats).clone()
    }

    /// Waits for the device to stop (on the cancellation token given to [`start`]).
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("device task")?
    }
}

fn lock(stats: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    // Counters only: a panic elsewhere cannot leave them unusable.
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the device until `cancel` fires.
pub async fn run(config: RunnerConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    start(config, cancel).await?.join().await
}

/// Opens the flash image and the sensors, then starts the device loop on a task. Fails early
/// on what a retry cannot fix (bad id or address, unreadable or locked image, missing bus).
pub async fn start(config: RunnerConfig, cancel: CancellationToken) -> anyhow::Result<Runner> {
    let (host, port) = split_broker(&config.broker, config.security.default_port())?;
    let transport = mqtt::MqttTransport::new(mqtt::MqttSettings {
        host,
        port,
        device_id: config.device_id.clone(),
        secret: config.secret.clone(),
        security: config.security.clone(),
    })?;

    let flash = flash_file::FileFlash::<FLASH_PAGE>::open(
        &config.flash_path,
        config.flash_size,
        config.flash_sync,
    )
    .with_context(|| format!("flash image {}", config.flash_path.display()))?;
    let layout = OutboxLayout::split(
        u32::try_from(config.flash_size).context("flash size")?,
        FLASH_PAGE as u32,
        META_PAGES,
    );
    let outbox = Outbox::open(Blocking(flash), layout)
        .await
        .map_err(|e| anyhow::anyhow!("outbox in {}: {e}", config.flash_path.display()))?;
    let recovered = outbox.recovered();
    tracing::info!(
        device = %config.device_id,
        pending = recovered.pending,
        discarded = recovered.discarded,
        next_seq = outbox.next_seq(),
        "outbox opened"
    );

    let seed = seed(&config.device_id);
    let mut sensors = sensors::BoardSensors {
        budget: config.max_readings,
        ..Default::default()
    };
    let mut schedule = Schedule::new();
    if let Some(source) = &config.oximeter {
        let bus = match source {
            OximeterSource::Sim => sensors::AnyI2c::Sim(Box::new(sim::max30102::SimMax30102::new(
                Some(sim::max30102::Finger::default()),
                config.sim_speed,
                seed,
            ))),
            #[cfg(target_os = "linux")]
            OximeterSource::I2c(path) => sensors::AnyI2c::Linux(hw::open_i2c(path)?),
            #[cfg(not(target_os = "linux"))]
            OximeterSource::I2c(path) => {
                anyhow::bail!("I2C ({}) needs Linux", path.display())
            }
        };
        sensors.oximeter = Some(sensors::Oximeter::new(
            bus,
            config.spot_check_window_s,
            config.sim_speed,
        ));
        let every = u64::try_from(config.spot_check_every.as_millis()).unwrap_or(u64::MAX);
        schedule.set(Kind::Spo2, every, 0);
    }
    if let Some(source) = &config.meter {
        let options = meter_uart::reading::MapOptions {
            utc_offset_min: config.meter_utc_offset_min,
            patient_user: config.meter_patient_user,
        };
        let sim_meter = |kind, every: &Duration| {
            let every = every.div_f64(config.sim_speed.max(0.001));
            let meter = sim::meter::SimMeter::new(kind, every, seed);
            let stop = meter.stopper();
            sensors::MeterLink::spawn(meter, options, Some(stop))
        };
        let link = match source {
            MeterSource::SimBloodPressure { every } => {
                sim_meter(sim::meter::MeterKind::BloodPressure, every)?
            }
            MeterSource::SimGlucose { every } => sim_meter(sim::meter::MeterKind::Glucose, every)?,
            #[cfg(target_os = "linux")]
            MeterSource::Serial { path, baud } => {
                let stop = sim::meter::MeterStop::default();
                let io = hw::open_serial(path, *baud, stop.clone())?;
                sensors::MeterLink::spawn(io, options, Some(stop))?
            }
            #[cfg(not(target_os = "linux"))]
            MeterSource::Serial { path, .. } => {
                anyhow::bail!("serial ports ({}) need Linux", path.display())
            }
        };
        sensors.meter = Some(link);
    }

    let stats = Arc::new(Mutex::new(Stats {
        recovered: recovered.pending,
        ..Stats::default()
    }));
    let observer = Log {
        device: config.device_id.clone(),
        stats: stats.clone(),
    };
    let mut device = Box::new(Device::new(
        outbox,
        transport,
        sensors,
        clock::TokioClock::new(),
        observer,
        schedule,
        DeviceSettings {
            firmware: FIRMWARE,
            uplink: config.uplink,
            seed,
        },
    ));
    if config.trust_system_clock {
        device.set_clock(unix_ms());
        lock(&stats).clock_set = true;
    }
    let task_cancel = cancel.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = task_cancel.cancelled() => break,
                _ = device.step() => {}
            }
        }
        firmware_core::Transport::disconnect(device.transport()).await;
        Ok(())
    });
    Ok(Runner {
        stats,
        cancel,
        task,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; a bare IPv6 address takes the default port.
fn split_broker(broker: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let port = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("broker port in {broker:?}"))
    };
    let (host, port) = if let Some(rest) = broker.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .with_context(|| format!("broker {broker:?}: missing ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, port(p)?),
            None if after.is_empty() => (host, default_port),
            None => anyhow::bail!("broker {broker:?} must be host or host:port"),
        }
    } else {
        match broker.split_once(':') {
            Some((host, p)) if !p.contains(':') => (host, port(p)?),
            // Several colons: a bare IPv6 address.
            Some(_) => (broker, default_port),
            None => (broker, default_port),
        }
    };
    if host.is_empty() {
        anyhow::bail!("broker {broker:?}: no host");
    }
    Ok((host.to_owned(), port))
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Jitter seed: the device id, mixed with the boot time so a fleet rebooting together still
/// spreads out.
fn seed(id: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ rand::random::<u64>()
}

/// Logs events and keeps the counters.
struct Log {
    device: String,
    stats: Arc<Mutex<Stats>>,
}

impl Observer for Log {
    fn event(&mut self, event: Event<'_>) {
        let device = self.device.as_str();
        let mut s = lock(&self.stats);
        match event {
            Event::Stored {
                seq,
                kind,
                clock_unset,
            } => {
                tracing::debug!(
                    device,
                    seq,
                    kind = kind.as_str(),
                    clock_unset,
                    "reading stored"
                );
                s.stored.push(seq);
            }
            Event::StoreFailed { kind, error } => {
                tracing::error!(device, kind = kind.as_str(), error = ?error, "reading not stored");
                s.failures += 1;
                s.last_error = Some(format!("store: {error:?}"));
            }
            Event::SensorFailed { kind, error } => {
                tracing::warn!(device, kind = kind.map(Kind::as_str), error = ?error, "sensor failed");
                s.failures += 1;
                s.last_error = Some(format!("sensor: {error:?}"));
            }
            Event::Connected => {
                tracing::info!(device, "connected");
                s.connects += 1;
                s.connected = true;
            }
            Event::ConnectFailed { retry_in_ms, error } => {
                let error = error
                    .map(|e| format!("{e:?}"))
                    .unwrap_or_else(|| "timed out".into());
                tracing::warn!(device, %error, retry_in_ms, "connection failed");
                s.last_error = Some(format!("connect: {error}"));
            }
            Event::ConnectionLost { retry_in_ms, error } => {
                tracing::warn!(device, error = ?error, retry_in_ms, "connection lost");
                s.connected = false;
                s.last_error = Some(format!("connection: {error:?}"));
            }
            Event::Published {
                first_seq,
                last_seq,
                count,
            } => {
                tracing::debug!(device, first_seq, last_seq, count, "batch published");
                s.batches += 1;
            }
            Event::Settled {
                committed,
                rejected,
            } => {
                tracing::debug!(device, committed, rejected, "acked");
                if rejected > 0 {
                    tracing::warn!(
                        device,
                        rejected,
                        "the gateway refused readings (quarantined)"
                    );
                }
                s.committed += u64::from(committed);
                s.rejected += u64::from(rejected);
            }
            Event::ClockSet { unix_ms } => {
                if !s.clock_set {
                    tracing::info!(device, unix_ms, "clock set from the gateway");
                }
                s.clock_set = true;
            }
            Event::ScheduleChanged => tracing::info!(device, "schedule changed by the gateway"),
            Event::RepeatRequested { kind, in_s, id } => tracing::info!(
                device,
                kind = kind.as_str(),
                in_s,
                id,
                "repeat measurement requested by the gateway"
            ),
            Event::BadMessage { channel } => {
                tracing::warn!(
                    device,
                    channel = channel.as_str(),
                    "malformed message ignored"
                );
            }
            Event::FlashError { error } => {
                tracing::error!(device, error = ?error, "outbox flash error; will retry");
                s.failures += 1;
                s.last_error = Some(format!("flash: {error:?}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_broker;

    #[test]
    fn broker_addresses_take_the_mode_default_port() -> anyhow::Result<()> {
        let ok = |b: &str| split_broker(b, 8883);
        assert_eq!(ok("gateway.lan")?, ("gateway.lan".into(), 8883));
        assert_eq!(ok("gateway.lan:1884")?, ("gateway.lan".into(), 1884));
        assert_eq!(ok("10.0.0.2:8884")?, ("10.0.0.2".into(), 8884));
        assert_eq!(ok("[::1]:9000")?, ("::1".into(), 9000));
        assert_eq!(ok("[::1]")?, ("::1".into(), 8883));
        assert_eq!(ok("fe80::1")?, ("fe80::1".into(), 8883));
        for bad in ["", ":8883", "host:port", "[::1", "[::1]x", "host:70000"] {
            assert!(split_broker(bad, 8883).is_err(), "{bad:?}");
        }
        Ok(())
    }
}
