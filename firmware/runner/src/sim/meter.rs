//! A simulated blood-pressure monitor or glucose meter on the far end of a UART.
//!
//! It is the meter's side of the `meter-uart` framing, as an `embedded-io` byte stream the
//! driver reads and writes: every `every` it "takes a measurement" (a Blood Pressure
//! Measurement, or a Glucose Measurement with its Context), keeps it until the host sends a
//! confirmation frame, and sends it again after `resend_after` without one, like a Bluetooth
//! indication. Readings are plausible and timed by the system clock (local time = UTC).
//! `limit` stops it after that many records; [`MeterStop`] closes the stream (reads return
//! end of stream), which ends the driver's thread.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meter_uart::SFloat;
use meter_uart::frame::{self, Deframer, Pushed, UUID_CONFIRM};
use meter_uart::record::{
    BloodPressureMeasurement, Concentration, DateTime, GlucoseContext, GlucoseMeasurement,
    UUID_BP_MEASUREMENT, UUID_GLUCOSE_CONTEXT, UUID_GLUCOSE_MEASUREMENT, bp_status,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What kind of meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterKind {
    /// A blood-pressure cuff.
    BloodPressure,
    /// A glucose meter.
    Glucose,
}

/// Closes a [`SimMeter`]'s stream from another thread.
#[derive(Debug, Clone, Default)]
pub struct MeterStop(Arc<AtomicBool>);

impl MeterStop {
    /// Closes the stream.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether the stream was closed.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The simulated meter.
#[derive(Debug)]
pub struct SimMeter {
    kind: MeterKind,
    every: Duration,
    resend_after: Duration,
    next_at: Instant,
    limit: Option<u32>,
    made: u32,
    /// Frames of the record not yet confirmed.
    unconfirmed: Option<Vec<u8>>,
    sent_at: Instant,
    out: VecDeque<u8>,
    deframer: Deframer,
    sequence: u16,
    rng: StdRng,
    stop: MeterStop,
    /// Confirmations received.
    confirmations: u32,
}

impl SimMeter {
    /// A meter that measures every `every` (first after one interval).
    pub fn new(kind: MeterKind, every: Duration, seed: u64) -> Self {
        let now = Instant::now();
        SimMeter {
            kind,
            every,
            resend_after: Duration::from_secs(3),
            next_at: now + every,
            limit: None,
            made: 0,
            unconfirmed: None,
            sent_at: now,
            out: VecDeque::new(),
            deframer: Deframer::new(),
            sequence: 0,
            rng: StdRng::seed_from_u64(seed),
            stop: MeterStop::default(),
            confirmations: 0,
        }
    }

    /// Stops measuring after `limit` records.
    pub fn with_limit(mut self, limit: Option<u32>) -> Self {
        self.limit = limit;
        self
    }

    /// Sends an unconfirmed record again after `after`.
    pub fn with_resend_after(mut self, after: Duration) -> Self {
        self.resend_after = after;
        self
    }

    /// A handle that closes the stream.
    pub fn stopper(&self) -> MeterStop {
        self.stop.clone()
    }

    fn now_local() -> DateTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        DateTime {
            year: y as u16,
            month: m as u8,
            day: d as u8,
            hours: (rem / 3600) as u8,
            minutes: (rem % 3600 / 60) as u8,
            seconds: (rem % 60) as u8,
        }
    }

    fn make_record(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut value = [0u8; 32];
        let mut frame_buf = [0u8; frame::MAX_FRAME];
        let mut put = |uuid: u16, value: &[u8]| {
            if let Ok(n) = frame::encode(uuid, value, &mut frame_buf) {
                out.extend_from_slice(&frame_buf[..n]);
            }
        };
        match self.kind {
            MeterKind::BloodPressure => {
                let sys: i16 = self.rng.gen_range(112..160);
                let dia: i16 = self.rng.gen_range(68..sys.min(100) - 10);
                let map = dia + (sys - dia) / 3;
                let moved = self.rng.gen_bool(0.1);
                let m = BloodPressureMeasurement {
                    kpa: false,
                    systolic: sfloat(sys, 0),
                    diastolic: sfloat(dia, 0),
                    mean_arterial: sfloat(map, 0),
                    timestamp: Some(Self::now_local()),
                    pulse_rate: Some(sfloat(self.rng.gen_range(55..95), 0)),
                    user_id: Some(1),
                    status: Some(if moved { bp_status::BODY_MOVEMENT } else { 0 }),
                };
                if let Ok(n) = m.encode(&mut value) {
                    put(UUID_BP_MEASUREMENT, &value[..n]);
                }
            }
            MeterKind::Glucose => {
                self.sequence = self.sequence.wrapping_add(1);
                let mg_dl: i16 = self.rng.gen_range(75..190);
                let with_context = self.rng.gen_bool(0.7);
                let m = GlucoseMeasurement {
                    sequence: self.sequence,
                    base_time: Self::now_local(),
                    time_offset_min: Some(0),
                    concentration: Some(Concentration {
                        value: sfloat(mg_dl, -5),
                        mol_per_l: false,
                        sample_type: 1,
                        location: 1,
                    }),
                    status: Some(0),
                    context_follows: with_context,
                };
                if let Ok(n) = m.encode(&mut value) {
                    put(UUID_GLUCOSE_MEASUREMENT, &value[..n]);
                }
                if with_context {
                    let c = GlucoseContext {
                        sequence: self.sequence,
                        meal: Some(self.rng.gen_range(1..=5)),
                        ..GlucoseContext::default()
                    };
                    if let Ok(n) = c.encode(&mut value) {
                        put(UUID_GLUCOSE_CONTEXT, &value[..n]);
                    }
                }
            }
        }
        out
    }

    /// Decides what to send now; returns how long to wait if nothing.
    fn tick(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if let Some(record) = &self.unconfirmed {
            let due = self.sent_at + self.resend_after;
            if now >= due {
                self.out.extend(record.iter().copied());
                self.sent_at = now;
                return None;
            }
            return Some(due - now);
        }
        if self.limit.is_some_and(|l| self.made >= l) {
            return Some(Duration::from_millis(50));
        }
        if now >= self.next_at {
            let record = self.make_record();
            self.made += 1;
            self.out.extend(record.iter().copied());
            self.unconfirmed = Some(record);
            self.sent_at = now;
            self.next_at = now + self.every;
            return None;
        }
        Some(self.next_at - now)
    }
}

fn sfloat(mantissa: i16, exponent: i8) -> SFloat {
    SFloat::new(mantissa, exponent).unwrap_or(SFloat::NAN)
}

/// Proleptic Gregorian date of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl embedded_io::ErrorType for SimMeter {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io::Read for SimMeter {
    /// Blocks until the meter has bytes to send; 0 once stopped.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        loop {
            if self.stop.is_stopped() {
                return Ok(0);
            }
            if !self.out.is_empty() {
                let n = buf.len().min(self.out.len());
                for (d, s) in buf.iter_mut().zip(self.out.drain(..n)) {
                    *d = s;
                }
                return Ok(n);
            }
            if let Some(wait) = self.tick() {
                std::thread::sleep(wait.min(Duration::from_millis(20)));
            }
        }
    }
}

impl embedded_io::Write for SimMeter {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            if self.deframer.push(b) == Pushed::Frame
                && self
                    .deframer
                    .frame()
                    .is_some_and(|f| f.uuid == UUID_CONFIRM)
            {
                self.unconfirmed = None;
                self.confirmations += 1;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meter_uart::reading::{MapOptions, to_reading};
    use meter_uart::{Meter, Record};
    use protocol::Measurement;

    #[test]
    fn the_driver_reads_the_simulated_meters() {
        for kind in [MeterKind::BloodPressure, MeterKind::Glucose] {
            let sim = SimMeter::new(kind, Duration::from_millis(5), 3);
            let mut meter = Meter::new(sim);
            for _ in 0..5 {
                let record = meter.next_record().expect("record");
                let reading = to_reading(&record, &MapOptions::default()).expect("maps");
                match (kind, &record, reading.measurement) {
                    (
                        MeterKind::BloodPressure,
                        Record::BloodPressure(_),
                        Measurement::BloodPressure(bp),
                    ) => {
                        assert!(bp.diastolic < bp.systolic);
                    }
                    (MeterKind::Glucose, Record::Glucose(..), Measurement::Glucose(g)) => {
                        assert!((75.0..190.0).contains(&g.value));
                    }
                    other => panic!("{other:?}"),
                }
                let t = reading.taken_at_ms.expect("timed");
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock")
                    .as_millis() as i64;
                assert!((now - t).abs() < 5_000, "{now} vs {t}");
                meter.confirm().expect("confirm");
            }
            assert_eq!(meter.destroy().confirmations, 5);
        }
    }

    #[test]
    fn unconfirmed_records_come_again() {
        let sim = SimMeter::new(MeterKind::BloodPressure, Duration::from_millis(1), 3)
            .with_resend_after(Duration::from_millis(10));
        let mut meter = Meter::new(sim);
        let first = meter.next_record().expect("record");
        let again = meter.next_record().expect("resend");
        assert_eq!(first, again);
        meter.confirm().expect("confirm");
        let next = meter.next_record().expect("next");
        assert_ne!(first, next);
        let stop = meter.destroy();
        stop.stopper().stop();
        let mut meter = Meter::new(stop);
        assert_eq!(meter.next_record(), Err(meter_uart::Error::Eof));
    }
}
