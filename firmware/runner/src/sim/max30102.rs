//! A register-level model of the MAX30102 on an `embedded-hal` I2C bus.
//!
//! It answers at address 0x57 like the chip: PART_ID, reset, FIFO configuration, SpO2 mode,
//! a 32-sample FIFO with write/read pointers and an overflow counter (roll-over or not),
//! burst reads of FIFO_DATA, the PPG_RDY interrupt flag and a temperature conversion. While in
//! SpO2 mode it fills the FIFO at the configured rate from a synthetic photoplethysmogram: a
//! systolic wave and a dicrotic wave per beat, red and IR with the ratio of ratios that the
//! estimator maps back to the patient's SpO2, a perfusion index, and a little noise. Time runs
//! `speed` times faster than the wall clock, so a spot check of several seconds of signal
//! takes a fraction of a second in tests.
//!
//! Unknown addresses get a NACK, like an empty bus.

use std::collections::VecDeque;
use std::time::Instant;

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ADDRESS: u8 = 0x57;
const FIFO_DEPTH: usize = 32;

struct Reg;
impl Reg {
    const INT_STATUS_1: u8 = 0x00;
    const FIFO_WR_PTR: u8 = 0x04;
    const OVF_COUNTER: u8 = 0x05;
    const FIFO_RD_PTR: u8 = 0x06;
    const FIFO_DATA: u8 = 0x07;
    const FIFO_CONFIG: u8 = 0x08;
    const MODE_CONFIG: u8 = 0x09;
    const SPO2_CONFIG: u8 = 0x0A;
    const LED1_PA: u8 = 0x0C;
    const LED2_PA: u8 = 0x0D;
    const TEMP_INT: u8 = 0x1F;
    const TEMP_FRAC: u8 = 0x20;
    const TEMP_CONFIG: u8 = 0x21;
    const REV_ID: u8 = 0xFE;
    const PART_ID: u8 = 0xFF;
}

/// The patient on the sensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finger {
    /// Arterial oxygen saturation, percent (70-99.9).
    pub spo2: f32,
    /// Heart rate, beats per minute.
    pub bpm: f64,
    /// Perfusion index, percent (IR AC/DC).
    pub perfusion_index: f64,
}

impl Default for Finger {
    fn default() -> Self {
        Finger {
            spo2: 97.0,
            bpm: 72.0,
            perfusion_index: 2.0,
        }
    }
}

/// The simulated chip.
#[derive(Debug)]
pub struct SimMax30102 {
    regs: [u8; 256],
    fifo: VecDeque<(u32, u32)>,
    wr_ptr: u8,
    rd_ptr: u8,
    overflow: u8,
    pointer: u8,
    ppg_ready: bool,
    /// Signal time, seconds, and the beat phase.
    phase: f64,
    owed: f64,
    last: Instant,
    speed: f64,
    finger: Option<Finger>,
    /// A new patient variation is drawn at each start of SpO2 mode.
    base: Finger,
    rng: StdRng,
}

impl SimMax30102 {
    /// A chip with `finger` on it (or none), time running `speed` times faster.
    pub fn new(finger: Option<Finger>, speed: f64, seed: u64) -> Self {
        let mut sim = SimMax30102 {
            regs: [0; 256],
            fifo: VecDeque::with_capacity(FIFO_DEPTH),
            wr_ptr: 0,
            rd_ptr: 0,
            overflow: 0,
            pointer: 0,
            ppg_ready: false,
            phase: 0.0,
            owed: 0.0,
            last: Instant::now(),
            speed: speed.max(0.001),
            finger,
            base: finger.unwrap_or_default(),
            rng: StdRng::seed_from_u64(seed),
        };
        sim.power_on_reset();
        sim
    }

    /// Puts a finger on the sensor, or takes it off.
    pub fn set_finger(&mut self, finger: Option<Finger>) {
        self.finger = finger;
        if let Some(f) = finger {
            self.base = f;
        }
    }

    fn power_on_reset(&mut self) {
        self.regs = [0; 256];
        self.regs[usize::from(Reg::REV_ID)] = 0x03;
        self.regs[usize::from(Reg::PART_ID)] = 0x15;
        self.clear_fifo();
    }

    fn clear_fifo(&mut self) {
        self.fifo.clear();
        self.wr_ptr = 0;
        self.rd_ptr = 0;
        self.overflow = 0;
    }

    fn sampling(&self) -> bool {
        let mode = self.regs[usize::from(Reg::MODE_CONFIG)];
        mode & 0x80 == 0 && mode & 0x07 == 0x03
    }

    fn fifo_rate(&self) -> f64 {
        let spo2 = self.regs[usize::from(Reg::SPO2_CONFIG)];
        let rate = [50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1600.0, 3200.0]
            [usize::from((spo2 >> 2) & 0x07)];
        let avg = f64::from(1u16 << ((self.regs[usize::from(Reg::FIFO_CONFIG)] >> 5).min(5)));
        rate / avg
    }

    /// Brings the FIFO up to date with the (accelerated) time that passed.
    fn advance(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64() * self.speed;
        self.last = now;
        if !self.sampling() {
            self.owed = 0.0;
            return;
        }
        let rate = self.fifo_rate();
        self.owed += dt * rate;
        // More than a FIFO's worth is lost anyway; cap the work.
        let n = (self.owed.floor() as usize).min(4 * FIFO_DEPTH);
        self.owed -= self.owed.floor();
        for _ in 0..n {
            let sample = self.next_sample(rate);
            self.push(sample);
        }
    }

    fn next_sample(&mut self, rate: f64) -> (u32, u32) {
        let led_on =
            self.regs[usize::from(Reg::LED1_PA)] > 0 && self.regs[usize::from(Reg::LED2_PA)] > 0;
        let Some(f) = self.finger.filter(|_| led_on) else {
            // Ambient light only.
            let noise = self.rng.gen_range(0.0..200.0);
            return (noise as u32, noise as u32);
        };
        self.phase += f.bpm / 60.0 / rate;
        if self.phase >= 1.0 {
            self.phase -= 1.0;
        }
        let g = |c: f64, w: f64| (-((self.phase - c) / w).powi(2)).exp();
        let pulse = g(0.2, 0.08) + 0.35 * g(0.5, 0.1);
        let ratio = f64::from(max30102::spo2::ratio_for(f.spo2).unwrap_or(0.6));
        let pi = f.perfusion_index / 100.0;
        let (dc_ir, dc_red) = (120_000.0, 95_000.0);
        let ir = dc_ir * (1.0 - pi * pulse) + self.rng.gen_range(-60.0..60.0);
        let red = dc_red * (1.0 - ratio * pi * pulse) + self.rng.gen_range(-60.0..60.0);
        (
            red.clamp(0.0, 262_143.0) as u32,
            ir.clamp(0.0, 262_143.0) as u32,
        )
    }

    fn push(&mut self, sample: (u32, u32)) {
        self.ppg_ready = true;
        if self.fifo.len() == FIFO_DEPTH {
            self.overflow = (self.overflow + 1).min(0x1F);
            let rollover = self.regs[usize::from(Reg::FIFO_CONFIG)] & 0x10 != 0;
            if !rollover {
                return;
            }
            self.fifo.pop_front();
            self.rd_ptr = (self.rd_ptr + 1) & 0x1F;
        }
        self.fifo.push_back(sample);
        self.wr_ptr = (self.wr_ptr + 1) & 0x1F;
    }

    fn start_spo2(&mut self) {
        // Each spot check sees the patient a little differently.
        if self.finger.is_some() {
            let b = self.base;
            self.finger = Some(Finger {
                spo2: (b.spo2 + self.rng.gen_range(-1.0..1.0)).min(99.5),
                bpm: b.bpm + self.rng.gen_range(-4.0..4.0),
                perfusion_index: b.perfusion_index * self.rng.gen_range(0.8..1.2),
            });
        }
        self.last = Instant::now();
        self.owed = 0.0;
    }

    fn write_reg(&mut self, reg: u8, value: u8) {
        match reg {
            Reg::MODE_CONFIG if value & 0x40 != 0 => self.power_on_reset(),
            Reg::MODE_CONFIG => {
                let was = self.sampling();
                self.regs[usize::from(reg)] = value;
                if !was && self.sampling() {
                    self.start_spo2();
                }
            }
            Reg::FIFO_WR_PTR | Reg::FIFO_RD_PTR | Reg::OVF_COUNTER => self.clear_fifo(),
            Reg::TEMP_CONFIG => {
                // The conversion finishes at once: 33.25 °C.
                self.regs[usize::from(Reg::TEMP_INT)] = 33;
                self.regs[usize::from(Reg::TEMP_FRAC)] = 4;
                self.regs[usize::from(reg)] = 0;
            }
            Reg::PART_ID | Reg::REV_ID | Reg::INT_STATUS_1 | Reg::FIFO_DATA => {}
            _ => self.regs[usize::from(reg)] = value,
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        match reg {
            Reg::FIFO_WR_PTR => self.wr_ptr,
            Reg::OVF_COUNTER => self.overflow,
            Reg::FIFO_RD_PTR => self.rd_ptr,
            Reg::INT_STATUS_1 => {
                if std::mem::take(&mut self.ppg_ready) {
                    0x40
                } else {
                    0
                }
            }
            _ => self.regs[usize::from(reg)],
        }
    }

    fn read_fifo(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(6) {
            let (red, ir) = match self.fifo.pop_front() {
                Some(s) => {
                    self.rd_ptr = (self.rd_ptr + 1) & 0x1F;
                    self.overflow = 0;
                    s
                }
                // Reading an empty FIFO returns stale data, like the chip.
                None => (0, 0),
            };
            let bytes = [
                (red >> 16) as u8 & 0x03,
                (red >> 8) as u8,
                red as u8,
                (ir >> 16) as u8 & 0x03,
                (ir >> 8) as u8,
                ir as u8,
            ];
            for (d, s) in chunk.iter_mut().zip(bytes) {
                *d = s;
            }
        }
    }
}

impl ErrorType for SimMax30102 {
    type Error = ErrorKind;
}

impl I2c for SimMax30102 {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != ADDRESS {
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        }
        self.advance();
        for op in operations {
            match op {
                Operation::Write(bytes) => {
                    let Some((&reg, data)) = bytes.split_first() else {
                        continue;
                    };
                    self.pointer = reg;
                    for &b in data {
                        self.write_reg(self.pointer, b);
                        if self.pointer != Reg::FIFO_DATA {
                            self.pointer = self.pointer.wrapping_add(1);
                        }
                    }
                }
                Operation::Read(buf) => {
                    if self.pointer == Reg::FIFO_DATA {
                        self.read_fifo(buf);
                    } else {
                        for b in buf.iter_mut() {
                            *b = self.read_reg(self.pointer);
                            self.pointer = self.pointer.wrapping_add(1);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use max30102::{Config, Max30102, Sample};

    #[test]
    fn the_driver_measures_the_simulated_patient() {
        let finger = Finger {
            spo2: 94.0,
            bpm: 80.0,
            perfusion_index: 2.5,
        };
        let chip = SimMax30102::new(Some(finger), 20.0, 7);
        let mut dev = Max30102::new(chip);
        dev.reset().expect("reset");
        let mut dev = dev.into_spo2(&Config::default()).expect("spo2 mode");
        let mut samples = Vec::new();
        let mut chunk = [Sample::default(); 32];
        while samples.len() < 600 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let n = dev.read_fifo(&mut chunk).expect("fifo");
            samples.extend_from_slice(&chunk[..n]);
        }
        let e = max30102::spo2::estimate(&samples, 100).expect("estimate");
        assert!((e.spo2 - 94.0).abs() < 2.0, "{e:?}");
        assert!((e.pulse_bpm - 80.0).abs() < 6.0, "{e:?}");
        assert!((e.perfusion_index - 2.5).abs() < 1.0, "{e:?}");
        let mut dev = dev.into_idle().expect("idle");
        assert_eq!(dev.temperature().expect("temp"), 33.25);
        let mut bus = dev.destroy();
        assert!(bus.write(0x42, &[0]).is_err(), "nothing at 0x42");
    }

    #[test]
    fn no_finger_no_pulse() {
        let chip = SimMax30102::new(None, 20.0, 7);
        let dev = Max30102::new(chip);
        let mut dev = dev.into_spo2(&Config::default()).expect("spo2 mode");
        let mut samples = Vec::new();
        let mut chunk = [Sample::default(); 32];
        while samples.len() < 400 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let n = dev.read_fifo(&mut chunk).expect("fifo");
            samples.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(
            max30102::spo2::estimate(&samples, 100),
            Err(max30102::spo2::EstimateError::NoFinger)
        );
    }
}
