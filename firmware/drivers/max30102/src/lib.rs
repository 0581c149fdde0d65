//! A `no_std` driver for the Maxim (Analog Devices) MAX30102 pulse-oximetry and heart-rate
//! front-end, over any `embedded-hal` 1.0 I2C bus, plus an SpO2 / pulse estimator.
//!
//! Datasheet: <https://www.analog.com/media/en/technical-documentation/data-sheets/MAX30102.pdf>
//!
//! # Capabilities
//! - Check the part id ([`Max30102::part_id`]) and reset the chip ([`Max30102::reset`]).
//! - Configure SpO2 mode: sample rate, LED pulse width (ADC resolution), ADC full scale, sample
//!   averaging, LED currents, FIFO roll-over and almost-full level ([`Config`]);
//!   [`Max30102::into_spo2`].
//! - Read the FIFO: how many samples wait ([`Max30102::available`], overflow-aware), burst-read
//!   them into a caller buffer ([`Max30102::read_fifo`]), clear it.
//! - Read the die temperature ([`Max30102::temperature`]).
//! - Shut down ([`Max30102::into_idle`]); hand the bus back ([`Max30102::destroy`]).
//! - Estimate SpO2, pulse rate and perfusion index from red/IR samples ([`spo2::estimate`]).
//! - With the `protocol` feature (default), turn an estimate into a Sentinella reading with
//!   its PLX status bits ([`reading`]).
//!
//! Modes are type states: a [`Max30102<I2C, Idle>`] cannot read the FIFO, a
//! [`Max30102<I2C, Spo2Mode>`] can. A failed mode change hands the device back in
//! [`ModeChangeError`].
//!
//! No allocator, no panics: every bus error is returned as [`Error::I2c`].
#![no_std]
#![deny(unsafe_code, missing_docs)]

use core::marker::PhantomData;

use embedded_hal::i2c::I2c;

pub mod spo2;

#[cfg(feature = "protocol")]
pub mod reading;

/// The MAX30102's fixed 7-bit I2C address.
pub const ADDRESS: u8 = 0x57;

/// The value of the PART_ID register.
pub const PART_ID: u8 = 0x15;

/// Depth of the FIFO, in samples.
pub const FIFO_DEPTH: usize = 32;

/// Bytes per SpO2-mode sample in the FIFO (3 red + 3 IR).
pub const BYTES_PER_SAMPLE: usize = 6;

/// Register addresses.
struct Register;
impl Register {
    const INT_STATUS_1: u8 = 0x00;
    const INT_ENABLE_1: u8 = 0x02;
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
    const TEMP_CONFIG: u8 = 0x21;
    const PART_ID: u8 = 0xFF;
}

/// Bits of MODE_CONFIG.
struct ModeBits;
impl ModeBits {
    const SHUTDOWN: u8 = 1 << 7;
    const RESET: u8 = 1 << 6;
    const SPO2: u8 = 0b011;
}

/// Bits of FIFO_CONFIG and TEMP_CONFIG.
struct Bits;
impl Bits {
    const FIFO_ROLLOVER: u8 = 1 << 4;
    const TEMP_EN: u8 = 1 << 0;
    const PPG_RDY: u8 = 1 << 6;
}

/// How many times [`Max30102::reset`] and [`Max30102::temperature`] poll before giving up.
const POLL_LIMIT: u32 = 100;

/// A driver error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// The chip at the address is not a MAX30102 (the PART_ID it returned).
    WrongPart(u8),
    /// The chip did not finish a reset or a temperature conversion in time.
    Timeout,
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::I2c(e) => write!(f, "I2C: {e:?}"),
            Error::WrongPart(id) => write!(f, "part id 0x{id:02x}, expected 0x{PART_ID:02x}"),
            Error::Timeout => f.write_str("the chip did not respond in time"),
        }
    }
}

/// A failed mode change: the error, and the device in its previous mode.
#[derive(Debug)]
pub struct ModeChangeError<E, DEV> {
    /// What failed.
    pub error: Error<E>,
    /// The device, unchanged in type (its registers may be partly written).
    pub device: DEV,
}

/// Mode type states.
pub mod mode {
    /// Not sampling (after power-on, reset or shutdown).
    #[derive(Debug, Clone, Copy)]
    pub struct Idle;
    /// Sampling red and IR into the FIFO.
    #[derive(Debug, Clone, Copy)]
    pub struct Spo2Mode;

    mod private {
        pub trait Sealed {}
        impl Sealed for super::Idle {}
        impl Sealed for super::Spo2Mode {}
    }

    /// A mode marker.
    pub trait Mode: private::Sealed {}
    impl Mode for Idle {}
    impl Mode for Spo2Mode {}
}

pub use mode::{Idle, Spo2Mode};

/// Samples per second (SPO2_SR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleRate {
    /// 50 Hz.
    Hz50 = 0,
    /// 100 Hz.
    Hz100 = 1,
    /// 200 Hz.
    Hz200 = 2,
    /// 400 Hz.
    Hz400 = 3,
    /// 800 Hz.
    Hz800 = 4,
    /// 1000 Hz.
    Hz1000 = 5,
    /// 1600 Hz.
    Hz1600 = 6,
    /// 3200 Hz.
    Hz3200 = 7,
}

impl SampleRate {
    /// In hertz.
    pub const fn hz(self) -> u16 {
        match self {
            SampleRate::Hz50 => 50,
            SampleRate::Hz100 => 100,
            SampleRate::Hz200 => 200,
            SampleRate::Hz400 => 400,
            SampleRate::Hz800 => 800,
            SampleRate::Hz1000 => 1000,
            SampleRate::Hz1600 => 1600,
            SampleRate::Hz3200 => 3200,
        }
    }
}

/// LED pulse width, which sets the ADC resolution (LED_PW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PulseWidth {
    /// 69 µs, 15 bits.
    Us69 = 0,
    /// 118 µs, 16 bits.
    Us118 = 1,
    /// 215 µs, 17 bits.
    Us215 = 2,
    /// 411 µs, 18 bits.
    Us411 = 3,
}

/// ADC full scale (SPO2_ADC_RGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdcRange {
    /// 2048 nA.
    Na2048 = 0,
    /// 4096 nA.
    Na4096 = 1,
    /// 8192 nA.
    Na8192 = 2,
    /// 16384 nA.
    Na16384 = 3,
}

/// Samples averaged into each FIFO sample (SMP_AVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleAveraging {
    /// No averaging.
    One = 0,
    /// 2 samples.
    Two = 1,
    /// 4 samples.
    Four = 2,
    /// 8 samples.
    Eight = 3,
    /// 16 samples.
    Sixteen = 4,
    /// 32 samples.
    ThirtyTwo = 5,
}

impl SampleAveraging {
    /// How many samples are averaged.
    pub const fn count(self) -> u16 {
        1 << (self as u16)
    }
}

/// SpO2-mode configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// ADC sample rate.
    pub sample_rate: SampleRate,
    /// LED pulse width (ADC resolution).
    pub pulse_width: PulseWidth,
    /// ADC full scale.
    pub adc_range: AdcRange,
    /// On-chip averaging (the FIFO rate is `sample_rate / averaging`).
    pub averaging: SampleAveraging,
    /// Red LED current, 0.2 mA per step (0-255 → 0-51 mA).
    pub red_current: u8,
    /// IR LED current, 0.2 mA per step.
    pub ir_current: u8,
    /// Let the FIFO overwrite old samples when full (else new samples are lost).
    pub fifo_rollover: bool,
}

impl Config {
    /// Samples per second that reach the FIFO.
    pub const fn fifo_rate_hz(&self) -> u16 {
        self.sample_rate.hz() / self.averaging.count()
    }
}

impl Default for Config {
    /// 100 samples/s into the FIFO (400 Hz, 4× averaged), 18 bits, 4096 nA full scale,
    /// 7 mA on both LEDs: a common finger-clip setting.
    fn default() -> Self {
        Config {
            sample_rate: SampleRate::Hz400,
            pulse_width: PulseWidth::Us411,
            adc_range: AdcRange::Na4096,
            averaging: SampleAveraging::Four,
            red_current: 0x24,
            ir_current: 0x24,
            fifo_rollover: true,
        }
    }
}

/// One SpO2-mode sample: 18-bit red and IR ADC counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Red LED (660 nm) reading.
    pub red: u32,
    /// IR LED (880 nm) reading.
    pub ir: u32,
}

/// A MAX30102 on bus `I2C`, in mode `MODE`.
#[derive(Debug)]
pub struct Max30102<I2C, MODE = Idle> {
    i2c: I2C,
    address: u8,
    _mode: PhantomData<MODE>,
}

impl<I2C: I2c> Max30102<I2C, Idle> {
    /// A driver for the chip at the standard address. Does not touch the bus.
    pub fn new(i2c: I2C) -> Self {
        Self::with_address(i2c, ADDRESS)
    }

    /// A driver for a chip behind an address translator.
    pub fn with_address(i2c: I2C, address: u8) -> Self {
        Max30102 {
            i2c,
            address,
            _mode: PhantomData,
        }
    }

    /// Resets every register to its power-on value and waits for the reset to finish.
    pub fn reset(&mut self) -> Result<(), Error<I2C::Error>> {
        self.write(Register::MODE_CONFIG, ModeBits::RESET)?;
        for _ in 0..POLL_LIMIT {
            if self.read(Register::MODE_CONFIG)? & ModeBits::RESET == 0 {
                return Ok(());
            }
        }
        Err(Error::Timeout)
    }

    /// Configures SpO2 mode and starts sampling, with an empty FIFO.
    pub fn into_spo2(
        mut self,
        config: &Config,
    ) -> Result<Max30102<I2C, Spo2Mode>, ModeChangeError<I2C::Error, Self>> {
        match self.configure(config) {
            Ok(()) => Ok(self.into_mode()),
            Err(error) => Err(ModeChangeError {
                error,
                device: self,
            }),
        }
    }

    fn configure(&mut self, config: &Config) -> Result<(), Error<I2C::Error>> {
        let id = self.part_id()?;
        if id != PART_ID {
            return Err(Error::WrongPart(id));
        }
        let mut fifo = (config.averaging as u8) << 5;
        if config.fifo_rollover {
            fifo |= Bits::FIFO_ROLLOVER;
        }
        self.write(Register::FIFO_CONFIG, fifo)?;
        let spo2 = ((config.adc_range as u8) << 5)
            | ((config.sample_rate as u8) << 2)
            | config.pulse_width as u8;
        self.write(Register::SPO2_CONFIG, spo2)?;
        self.write(Register::LED1_PA, config.red_current)?;
        self.write(Register::LED2_PA, config.ir_current)?;
        // No interrupts: the board polls the FIFO.
        self.write(Register::INT_ENABLE_1, 0)?;
        self.clear_fifo_pointers()?;
        self.write(Register::MODE_CONFIG, ModeBits::SPO2)
    }
}

impl<I2C: I2c> Max30102<I2C, Spo2Mode> {
    /// Samples waiting in the FIFO (32 after an overflow, when the oldest were lost or
    /// overwritten).
    pub fn available(&mut self) -> Result<usize, Error<I2C::Error>> {
        let mut ptrs = [0u8; 3];
        self.read_many(Register::FIFO_WR_PTR, &mut ptrs)?;
        let [wr, ovf, rd] = ptrs;
        if ovf & 0x1F != 0 {
            return Ok(FIFO_DEPTH);
        }
        Ok(usize::from(wr.wrapping_sub(rd) & 0x1F))
    }

    /// Reads up to `out.len()` waiting samples (oldest first) in one burst; returns how many.
    pub fn read_fifo(&mut self, out: &mut [Sample]) -> Result<usize, Error<I2C::Error>> {
        let n = self.available()?.min(out.len()).min(FIFO_DEPTH);
        if n == 0 {
            return Ok(0);
        }
        let mut raw = [0u8; FIFO_DEPTH * BYTES_PER_SAMPLE];
        let raw = raw.get_mut(..n * BYTES_PER_SAMPLE).unwrap_or_default();
        self.read_many(Register::FIFO_DATA, raw)?;
        for (slot, chunk) in out.iter_mut().zip(raw.chunks_exact(BYTES_PER_SAMPLE)) {
            if let [r0, r1, r2, i0, i1, i2] = *chunk {
                *slot = Sample {
                    red: counts(r0, r1, r2),
                    ir: counts(i0, i1, i2),
                };
            }
        }
        Ok(n)
    }

    /// Empties the FIFO.
    pub fn clear_fifo(&mut self) -> Result<(), Error<I2C::Error>> {
        self.clear_fifo_pointers()
    }

    /// Whether a new sample arrived since the interrupt status was last read (reading clears
    /// it).
    pub fn sample_ready(&mut self) -> Result<bool, Error<I2C::Error>> {
        Ok(self.read(Register::INT_STATUS_1)? & Bits::PPG_RDY != 0)
    }

    /// Stops sampling and shuts the LEDs and ADC down (registers keep their values).
    pub fn into_idle(mut self) -> Result<Max30102<I2C, Idle>, ModeChangeError<I2C::Error, Self>> {
        match self.write(Register::MODE_CONFIG, ModeBits::SHUTDOWN | ModeBits::SPO2) {
            Ok(()) => Ok(self.into_mode()),
            Err(error) => Err(ModeChangeError {
                error,
                device: self,
            }),
        }
    }
}

impl<I2C: I2c, MODE: mode::Mode> Max30102<I2C, MODE> {
    /// Reads PART_ID (0x15 for a MAX30102).
    pub fn part_id(&mut self) -> Result<u8, Error<I2C::Error>> {
        self.read(Register::PART_ID)
    }

    /// Die temperature in °C (starts a conversion and waits for it).
    pub fn temperature(&mut self) -> Result<f32, Error<I2C::Error>> {
        self.write(Register::TEMP_CONFIG, Bits::TEMP_EN)?;
        for _ in 0..POLL_LIMIT {
            if self.read(Register::TEMP_CONFIG)? & Bits::TEMP_EN == 0 {
                let mut t = [0u8; 2];
                self.read_many(Register::TEMP_INT, &mut t)?;
                let [int, frac] = t;
                // Integer part is two's complement; the fraction is in 1/16 °C.
                return Ok(f32::from(int as i8) + f32::from(frac & 0x0F) * 0.0625);
            }
        }
        Err(Error::Timeout)
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    fn into_mode<M: mode::Mode>(self) -> Max30102<I2C, M> {
        Max30102 {
            i2c: self.i2c,
            address: self.address,
            _mode: PhantomData,
        }
    }

    fn clear_fifo_pointers(&mut self) -> Result<(), Error<I2C::Error>> {
        self.write(Register::FIFO_WR_PTR, 0)?;
        self.write(Register::OVF_COUNTER, 0)?;
        self.write(Register::FIFO_RD_PTR, 0)
    }

    fn write(&mut self, register: u8, value: u8) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[register, value])
            .map_err(Error::I2c)
    }

    fn read(&mut self, register: u8) -> Result<u8, Error<I2C::Error>> {
        let mut buf = [0u8; 1];
        self.read_many(register, &mut buf)?;
        Ok(buf[0])
    }

    fn read_many(&mut self, register: u8, buf: &mut [u8]) -> Result<(), Error<I2C::Error>> {
        self.i2c
            .write_read(self.address, &[register], buf)
            .map_err(Error::I2c)
    }
}

/// An 18-bit FIFO value from its three bytes (MSB first, top 6 bits unused).
fn counts(b0: u8, b1: u8, b2: u8) -> u32 {
    (u32::from(b0 & 0x03) << 16) | (u32::from(b1) << 8) | u32::from(b2)
}
