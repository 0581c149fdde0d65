//! The board's sensors as the core sees them: drivers (over real or simulated buses) wrapped
//! in the core's sensor traits.
//!
//! - [`Oximeter`]: a MAX30102 on I2C. A spot check switches the chip to SpO2 mode, polls the
//!   FIFO until the window is full, shuts the chip down again and runs the estimator.
//! - [`MeterLink`]: a meter on a UART. The blocking driver runs on its own thread, which
//!   hands each record to the device loop and waits for the loop to say it is stored before
//!   confirming it to the meter.
//! - [`BoardSensors`]: both, as the core's [`Sensors`].

use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, Operation};
use firmware_core::sampling::{PulseOximeter, Sample, Sensors};
use max30102::spo2::{EstimateError, estimate};
use max30102::{Config as ChipConfig, Idle, Max30102};
use meter_uart::Meter;
use meter_uart::reading::{MapOptions, to_reading};
use protocol::{Kind, Measurement, Spo2};
use tokio::sync::mpsc;

use crate::sim::max30102::SimMax30102;
use crate::sim::meter::MeterStop;

/// How long the meter thread waits for the loop to store a record before letting the meter
/// send it again.
const STORE_WAIT: Duration = Duration::from_secs(10);

/// An I2C bus: simulated, or a Linux `/dev/i2c-*`.
pub enum AnyI2c {
    /// The register-level MAX30102 model.
    Sim(Box<SimMax30102>),
    /// A Linux I2C adapter.
    #[cfg(target_os = "linux")]
    Linux(linux_embedded_hal::I2cdev),
}

impl std::fmt::Debug for AnyI2c {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyI2c::Sim(sim) => f.debug_tuple("Sim").field(sim).finish(),
            #[cfg(target_os = "linux")]
            AnyI2c::Linux(_) => f.write_str("Linux(I2cdev)"),
        }
    }
}

impl ErrorType for AnyI2c {
    type Error = ErrorKind;
}

impl I2c for AnyI2c {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        match self {
            AnyI2c::Sim(sim) => sim.as_mut().transaction(address, operations),
            #[cfg(target_os = "linux")]
            AnyI2c::Linux(dev) => dev
                .transaction(address, operations)
                .map_err(|e| embedded_hal::i2c::Error::kind(&e)),
        }
    }
}

/// Why a spot check failed.
#[derive(Debug, thiserror::Error)]
pub enum OximeterError {
    /// The chip or the bus failed.
    #[error("MAX30102: {0}")]
    Chip(max30102::Error<ErrorKind>),
    /// The FIFO did not fill in time.
    #[error("the FIFO did not fill in time")]
    Timeout,
}

/// A MAX30102 spot-check oximeter.
#[derive(Debug)]
pub struct Oximeter {
    dev: Option<Max30102<AnyI2c, Idle>>,
    config: ChipConfig,
    /// Seconds of signal per spot check.
    window_s: u16,
    /// How often the FIFO is read (must be well under 32 samples' worth).
    poll: Duration,
    /// Longest a spot check may take.
    timeout: Duration,
}

impl Oximeter {
    /// An oximeter on `bus`. `speed` > 1 for a simulated chip whose time runs faster.
    pub fn new(bus: AnyI2c, window_s: u16, speed: f64) -> Self {
        let config = ChipConfig::default();
        let fifo_period_ms = 1000.0 * 32.0 / f64::from(config.fifo_rate_hz().max(1));
        // Read at a third of the time the FIFO takes to fill.
        let poll_ms = (fifo_period_ms / 3.0 / speed.max(1.0)).clamp(1.0, 100.0);
        let window_real_s = f64::from(window_s) / speed.max(1.0);
        Oximeter {
            dev: Some(Max30102::new(bus)),
            config,
            window_s: window_s.max(max30102::spo2::MIN_SECONDS as u16),
            poll: Duration::from_micros((poll_ms * 1000.0) as u64),
            timeout: Duration::from_secs_f64(3.0 * window_real_s + 2.0),
        }
    }

    fn restore(&mut self, bus: AnyI2c) {
        self.dev = Some(Max30102::new(bus));
    }
}

impl PulseOximeter for Oximeter {
    type Error = OximeterError;

    async fn spot_check(&mut self) -> Result<Option<Sample<Spo2>>, OximeterError> {
        let Some(dev) = self.dev.take() else {
            return Err(OximeterError::Timeout);
        };
        let mut dev = match dev.into_spo2(&self.config) {
            Ok(d) => d,
            Err(e) => {
                self.dev = Some(e.device);
                return Err(OximeterError::Chip(e.error));
            }
        };
        let rate = self.config.fifo_rate_hz();
        let need = usize::from(rate) * usize::from(self.window_s);
        let mut samples = Vec::with_capacity(need + 32);
        let mut chunk = [max30102::Sample::default(); max30102::FIFO_DEPTH];
        let deadline = tokio::time::Instant::now() + self.timeout;
        while samples.len() < need {
            tokio::time::sleep(self.poll).await;
            match dev.read_fifo(&mut chunk) {
                Ok(n) => samples.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) => {
                    self.restore(dev.destroy());
                    return Err(OximeterError::Chip(e));
                }
            }
            if tokio::time::Instant::now() > deadline {
                self.restore(dev.destroy());
                return Err(OximeterError::Timeout);
            }
        }
        match dev.into_idle() {
            Ok(idle) => self.dev = Some(idle),
            Err(e) => self.restore(e.device.destroy()),
        }
        match estimate(&samples, rate) {
            Ok(e) => {
                let (value, status, sensor) = max30102::reading::to_reading(&e);
                Ok(Some(Sample {
                    value,
                    status,
                    sensor,
                    taken_at_ms: None,
                }))
            }
            Err(reason) => {
                let level_info = !matches!(reason, EstimateError::NoFinger);
                if level_info {
                    tracing::info!(%reason, "spot check without a reading");
                } else {
                    tracing::debug!(%reason, "spot check without a reading");
                }
                Ok(None)
            }
        }
    }
}

/// A meter on a UART, driven from its own thread.
#[derive(Debug)]
pub struct MeterLink {
    records: mpsc::Receiver<(u64, Sample)>,
    stored: std_mpsc::Sender<u64>,
    last: Option<u64>,
    stop: Option<MeterStop>,
    thread: Option<JoinHandle<()>>,
}

impl MeterLink {
    /// Starts the driver thread on `io`. `stop` closes a simulated meter's stream when the
    /// link is dropped (a real port's thread ends with the process).
    pub fn spawn<IO>(io: IO, options: MapOptions, stop: Option<MeterStop>) -> std::io::Result<Self>
    where
        IO: embedded_io::Read + embedded_io::Write + Send + 'static,
    {
        let (tx, records) = mpsc::channel(1);
        let (stored, stored_rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("meter-uart".into())
            .spawn(move || meter_thread(Meter::new(io), options, tx, stored_rx))?;
        Ok(MeterLink {
            records,
            stored,
            last: None,
            stop,
            thread: Some(thread),
        })
    }

    async fn next(&mut self) -> Sample {
        match self.records.recv().await {
            Some((id, sample)) => {
                self.last = Some(id);
                sample
            }
            // The thread ended (end of stream): no more records.
            None => std::future::pending().await,
        }
    }

    fn confirm(&mut self) {
        if let Some(id) = self.last.take() {
            let _ = self.stored.send(id);
        }
    }
}

impl Drop for MeterLink {
    /// Lets the driver thread end on its own: no more records are taken, and a simulated
    /// meter's stream closes. (Joining here could wait for a blocked UART read.)
    fn drop(&mut self) {
        self.records.close();
        if let Some(stop) = &self.stop {
            stop.stop();
        }
        drop(self.thread.take());
    }
}

fn meter_thread<IO: embedded_io::Read + embedded_io::Write>(
    mut meter: Meter<IO>,
    options: MapOptions,
    records: mpsc::Sender<(u64, Sample)>,
    stored: std_mpsc::Receiver<u64>,
) {
    let mut next_id = 0u64;
    loop {
        let record = match meter.next_record() {
            Ok(r) => r,
            Err(meter_uart::Error::Eof) => {
                tracing::info!("meter stream closed");
                return;
            }
            Err(e @ meter_uart::Error::Malformed { .. }) => {
                tracing::warn!(error = %e, "meter sent a malformed record; dropped");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "meter UART error");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        let reading = match to_reading(&record, &options) {
            Ok(r) => r,
            Err(e) => {
                // Nothing to store (no value, or another user's): let the meter drop it.
                tracing::warn!(error = %e, "meter record without a reading for the patient; dropped");
                if let Err(e) = meter.confirm() {
                    tracing::warn!(error = %e, "meter UART error");
                }
                continue;
            }
        };
        next_id += 1;
        let sample = Sample {
            value: reading.measurement,
            status: reading.status,
            sensor: reading.sensor,
            taken_at_ms: reading.taken_at_ms,
        };
        if records.blocking_send((next_id, sample)).is_err() {
            return;
        }
        // Confirm only once the loop says this record is in the outbox.
        let deadline = std::time::Instant::now() + STORE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match stored.recv_timeout(left) {
                Ok(id) if id == next_id => {
                    if let Err(e) = meter.confirm() {
                        tracing::warn!(error = %e, "meter UART error while confirming");
                    }
                    break;
                }
                Ok(_) => {}
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!("record not stored in time; the meter will send it again");
                    break;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// Why a sensor failed.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// The oximeter.
    #[error(transparent)]
    Oximeter(#[from] OximeterError),
}

/// The board's sensors.
#[derive(Debug, Default)]
pub struct BoardSensors {
    /// The oximeter, if fitted.
    pub oximeter: Option<Oximeter>,
    /// The meter, if fitted.
    pub meter: Option<MeterLink>,
    /// Readings left to produce (`None`: no limit); for tests and demos.
    pub budget: Option<u32>,
}

impl BoardSensors {
    fn spend(&mut self) -> bool {
        match &mut self.budget {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    fn exhausted(&self) -> bool {
        self.budget == Some(0)
    }
}

impl Sensors for BoardSensors {
    type Error = SensorError;

    async fn measure(&mut self, kind: Kind) -> Result<Option<Sample>, SensorError> {
        if self.exhausted() {
            return Ok(None);
        }
        let sample = match (kind, self.oximeter.as_mut()) {
            (Kind::Spo2, Some(ox)) => ox.spot_check().await?.map(|s| s.map(Measurement::Spo2)),
            _ => None,
        };
        Ok(sample.filter(|_| self.spend()))
    }

    async fn next_record(&mut self) -> Result<Sample, SensorError> {
        if self.exhausted() {
            return std::future::pending().await;
        }
        match self.meter.as_mut() {
            Some(m) => {
                let sample = m.next().await;
                self.spend();
                Ok(sample)
            }
            None => std::future::pending().await,
        }
    }

    async fn confirm(&mut self) -> Result<(), SensorError> {
        if let Some(m) = self.meter.as_mut() {
            m.confirm();
        }
        Ok(())
    }
}
