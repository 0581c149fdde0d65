//! The Bluetooth record layouts: Blood Pressure Measurement (0x2A35), Glucose Measurement
//! (0x2A18) and Glucose Measurement Context (0x2A34), parsed and encoded byte for byte.
//!
//! All multi-byte fields are little endian; numbers are [`SFloat`]s. Parsing never panics and
//! refuses truncated records and trailing bytes.

use crate::sfloat::SFloat;

/// Characteristic UUID of Blood Pressure Measurement.
pub const UUID_BP_MEASUREMENT: u16 = 0x2A35;
/// Characteristic UUID of Glucose Measurement.
pub const UUID_GLUCOSE_MEASUREMENT: u16 = 0x2A18;
/// Characteristic UUID of Glucose Measurement Context.
pub const UUID_GLUCOSE_CONTEXT: u16 = 0x2A34;

/// Longest encoded record of the three (a context with every field: 17 bytes).
pub const MAX_RECORD_LEN: usize = 20;

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The record ends before a field its flags announce.
    Truncated,
    /// Bytes follow the last field.
    TrailingBytes,
    /// The output buffer is too small (encoding).
    BufferTooSmall,
}

/// Bluetooth Date Time (0x2A08): local time of the device, no zone. `year == 0` means
/// "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DateTime {
    /// 1582-9999, or 0 if not known.
    pub year: u16,
    /// 1-12, or 0 if not known.
    pub month: u8,
    /// 1-31, or 0 if not known.
    pub day: u8,
    /// 0-23.
    pub hours: u8,
    /// 0-59.
    pub minutes: u8,
    /// 0-59.
    pub seconds: u8,
}

impl DateTime {
    /// Milliseconds since the Unix epoch, taking the device's local time as UTC plus
    /// `utc_offset_min`; `None` if the date is not known or not a valid calendar date.
    pub fn unix_ms(&self, utc_offset_min: i16) -> Option<i64> {
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if is_leap(self.year) => 29,
            2 => 28,
            _ => return None,
        };
        if self.year < 1582
            || self.day == 0
            || self.day > days_in_month
            || self.hours > 23
            || self.minutes > 59
            || self.seconds > 59
        {
            return None;
        }
        let days = days_from_civil(i64::from(self.year), self.month.into(), self.day.into());
        let secs = days * 86_400
            + i64::from(self.hours) * 3600
            + i64::from(self.minutes) * 60
            + i64::from(self.seconds)
            - i64::from(utc_offset_min) * 60;
        Some(secs * 1000)
    }

    fn parse(r: &mut Reader<'_>) -> Result<Self, RecordError> {
        Ok(DateTime {
            year: r.u16()?,
            month: r.u8()?,
            day: r.u8()?,
            hours: r.u8()?,
            minutes: r.u8()?,
            seconds: r.u8()?,
        })
    }

    fn encode(&self, w: &mut Writer<'_>) -> Result<(), RecordError> {
        w.u16(self.year)?;
        w.u8(self.month)?;
        w.u8(self.day)?;
        w.u8(self.hours)?;
        w.u8(self.minutes)?;
        w.u8(self.seconds)
    }
}

fn is_leap(y: u16) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Blood Pressure Measurement (0x2A35).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BloodPressureMeasurement {
    /// Flags bit 0: pressures in kPa (else mmHg).
    pub kpa: bool,
    /// Systolic pressure.
    pub systolic: SFloat,
    /// Diastolic pressure.
    pub diastolic: SFloat,
    /// Mean arterial pressure.
    pub mean_arterial: SFloat,
    /// Flags bit 1: when it was measured.
    pub timestamp: Option<DateTime>,
    /// Flags bit 2: pulse rate, beats per minute.
    pub pulse_rate: Option<SFloat>,
    /// Flags bit 3: user id (255 = unknown user).
    pub user_id: Option<u8>,
    /// Flags bit 4: measurement status bits (see [`bp_status`]).
    pub status: Option<u16>,
}

/// Blood Pressure Measurement Status bits.
pub mod bp_status {
    /// Body movement detected during measurement.
    pub const BODY_MOVEMENT: u16 = 1 << 0;
    /// Cuff too loose.
    pub const CUFF_TOO_LOOSE: u16 = 1 << 1;
    /// Irregular pulse detected.
    pub const IRREGULAR_PULSE: u16 = 1 << 2;
    /// Pulse rate range (bits 3-4): 1 above the upper limit.
    pub const PULSE_ABOVE_RANGE: u16 = 1 << 3;
    /// Pulse rate range (bits 3-4): 2 below the lower limit.
    pub const PULSE_BELOW_RANGE: u16 = 2 << 3;
    /// Improper measurement position.
    pub const IMPROPER_POSITION: u16 = 1 << 5;
    /// Bits defined by the characteristic.
    pub const DEFINED: u16 = 0x3F;
}

impl BloodPressureMeasurement {
    /// Parses the characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(bytes);
        let flags = r.u8()?;
        let m = BloodPressureMeasurement {
            kpa: flags & 0x01 != 0,
            systolic: r.sfloat()?,
            diastolic: r.sfloat()?,
            mean_arterial: r.sfloat()?,
            timestamp: r.when(flags & 0x02 != 0, DateTime::parse)?,
            pulse_rate: r.when(flags & 0x04 != 0, Reader::sfloat)?,
            user_id: r.when(flags & 0x08 != 0, Reader::u8)?,
            status: r.when(flags & 0x10 != 0, Reader::u16)?,
        };
        r.end()?;
        Ok(m)
    }

    /// Encodes into `buf`, returning the length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, RecordError> {
        let mut w = Writer::new(buf);
        let flags = u8::from(self.kpa)
            | u8::from(self.timestamp.is_some()) << 1
            | u8::from(self.pulse_rate.is_some()) << 2
            | u8::from(self.user_id.is_some()) << 3
            | u8::from(self.status.is_some()) << 4;
        w.u8(flags)?;
        w.sfloat(self.systolic)?;
        w.sfloat(self.diastolic)?;
        w.sfloat(self.mean_arterial)?;
        if let Some(t) = &self.timestamp {
            t.encode(&mut w)?;
        }
        if let Some(p) = self.pulse_rate {
            w.sfloat(p)?;
        }
        if let Some(u) = self.user_id {
            w.u8(u)?;
        }
        if let Some(s) = self.status {
            w.u16(s)?;
        }
        Ok(w.at)
    }
}

/// Glucose Measurement (0x2A18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlucoseMeasurement {
    /// The meter's sequence number; a context record with the same number belongs to it.
    pub sequence: u16,
    /// When it was measured (base time).
    pub base_time: DateTime,
    /// Flags bit 0: minutes to add to the base time.
    pub time_offset_min: Option<i16>,
    /// Flags bit 1: the concentration, with its type and sample location.
    pub concentration: Option<Concentration>,
    /// Flags bit 3: sensor status annunciation (see [`glucose_status`]).
    pub status: Option<u16>,
    /// Flags bit 4: a Glucose Measurement Context record follows.
    pub context_follows: bool,
}

/// A glucose concentration with its sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concentration {
    /// The value, in kg/L (`mol_per_l == false`) or mol/L.
    pub value: SFloat,
    /// Flags bit 2: the unit is mol/L (else kg/L).
    pub mol_per_l: bool,
    /// Type nibble: 1 capillary whole blood … 10 control solution.
    pub sample_type: u8,
    /// Location nibble: 1 finger, 2 alternate site, 3 earlobe, 4 control solution, 15 not
    /// available.
    pub location: u8,
}

/// Glucose Sensor Status Annunciation bits.
pub mod glucose_status {
    /// Device battery low at time of measurement.
    pub const BATTERY_LOW: u16 = 1 << 0;
    /// Sensor malfunction or faulting.
    pub const SENSOR_MALFUNCTION: u16 = 1 << 1;
    /// Sample size insufficient.
    pub const SAMPLE_SIZE_INSUFFICIENT: u16 = 1 << 2;
    /// Strip insertion error.
    pub const STRIP_INSERTION_ERROR: u16 = 1 << 3;
    /// Strip type incorrect.
    pub const STRIP_TYPE_INCORRECT: u16 = 1 << 4;
    /// Result higher than the device can process.
    pub const RESULT_TOO_HIGH: u16 = 1 << 5;
    /// Result lower than the device can process.
    pub const RESULT_TOO_LOW: u16 = 1 << 6;
    /// Sensor temperature too high.
    pub const TEMPERATURE_TOO_HIGH: u16 = 1 << 7;
    /// Sensor temperature too low.
    pub const TEMPERATURE_TOO_LOW: u16 = 1 << 8;
    /// Sensor read interrupted (strip pulled too soon).
    pub const READ_INTERRUPTED: u16 = 1 << 9;
    /// General device fault.
    pub const GENERAL_FAULT: u16 = 1 << 10;
    /// Time fault (the time may be inaccurate).
    pub const TIME_FAULT: u16 = 1 << 11;
    /// Bits defined by the characteristic.
    pub const DEFINED: u16 = 0x0FFF;
}

impl GlucoseMeasurement {
    /// Parses the characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(bytes);
        let flags = r.u8()?;
        let sequence = r.u16()?;
        let base_time = DateTime::parse(&mut r)?;
        let time_offset_min = r.when(flags & 0x01 != 0, |r| r.u16().map(|v| v as i16))?;
        let concentration = r.when(flags & 0x02 != 0, |r| {
            let value = r.sfloat()?;
            let tl = r.u8()?;
            Ok(Concentration {
                value,
                mol_per_l: flags & 0x04 != 0,
                sample_type: tl & 0x0F,
                location: tl >> 4,
            })
        })?;
        let status = r.when(flags & 0x08 != 0, Reader::u16)?;
        r.end()?;
        Ok(GlucoseMeasurement {
            sequence,
            base_time,
            time_offset_min,
            concentration,
            status,
            context_follows: flags & 0x10 != 0,
        })
    }

    /// Encodes into `buf`, returning the length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, RecordError> {
        let mut w = Writer::new(buf);
        let mol = self.concentration.is_some_and(|c| c.mol_per_l);
        let flags = u8::from(self.time_offset_min.is_some())
            | u8::from(self.concentration.is_some()) << 1
            | u8::from(mol) << 2
            | u8::from(self.status.is_some()) << 3
            | u8::from(self.context_follows) << 4;
        w.u8(flags)?;
        w.u16(self.sequence)?;
        self.base_time.encode(&mut w)?;
        if let Some(o) = self.time_offset_min {
            w.u16(o as u16)?;
        }
        if let Some(c) = self.concentration {
            w.sfloat(c.value)?;
            w.u8((c.location << 4) | (c.sample_type & 0x0F))?;
        }
        if let Some(s) = self.status {
            w.u16(s)?;
        }
        Ok(w.at)
    }

    /// Measurement time, Unix ms: base time plus offset, the meter's local time taken as UTC
    /// plus `utc_offset_min`.
    pub fn unix_ms(&self, utc_offset_min: i16) -> Option<i64> {
        let base = self.base_time.unix_ms(utc_offset_min)?;
        Some(base + i64::from(self.time_offset_min.unwrap_or(0)) * 60_000)
    }
}

/// Glucose Measurement Context (0x2A34).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlucoseContext {
    /// The sequence number of the measurement it belongs to.
    pub sequence: u16,
    /// Flags bit 7: extended flags (reserved, kept as read).
    pub extended_flags: Option<u8>,
    /// Flags bit 0: carbohydrate id (1 breakfast … 7 brunch) and amount in kg.
    pub carbohydrate: Option<(u8, SFloat)>,
    /// Flags bit 1: meal (1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime).
    pub meal: Option<u8>,
    /// Flags bit 2: tester (low nibble) and health (high nibble).
    pub tester_health: Option<u8>,
    /// Flags bit 3: exercise duration (s) and intensity (%).
    pub exercise: Option<(u16, u8)>,
    /// Flags bit 4: medication id and amount; flags bit 5: in litres (else kg).
    pub medication: Option<(u8, SFloat, bool)>,
    /// Flags bit 6: HbA1c, percent.
    pub hba1c: Option<SFloat>,
}

impl GlucoseContext {
    /// Parses the characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader::new(bytes);
        let flags = r.u8()?;
        let sequence = r.u16()?;
        let extended_flags = r.when(flags & 0x80 != 0, Reader::u8)?;
        let carbohydrate = r.when(flags & 0x01 != 0, |r| Ok((r.u8()?, r.sfloat()?)))?;
        let meal = r.when(flags & 0x02 != 0, Reader::u8)?;
        let tester_health = r.when(flags & 0x04 != 0, Reader::u8)?;
        let exercise = r.when(flags & 0x08 != 0, |r| Ok((r.u16()?, r.u8()?)))?;
        let medication = r.when(flags & 0x10 != 0, |r| {
            Ok((r.u8()?, r.sfloat()?, flags & 0x20 != 0))
        })?;
        let hba1c = r.when(flags & 0x40 != 0, Reader::sfloat)?;
        r.end()?;
        Ok(GlucoseContext {
            sequence,
            extended_flags,
            carbohydrate,
            meal,
            tester_health,
            exercise,
            medication,
            hba1c,
        })
    }

    /// Encodes into `buf`, returning the length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, RecordError> {
        let mut w = Writer::new(buf);
        let litres = self.medication.is_some_and(|m| m.2);
        let flags = u8::from(self.carbohydrate.is_some())
            | u8::from(self.meal.is_some()) << 1
            | u8::from(self.tester_health.is_some()) << 2
            | u8::from(self.exercise.is_some()) << 3
            | u8::from(self.medication.is_some()) << 4
            | u8::from(litres) << 5
            | u8::from(self.hba1c.is_some()) << 6
            | u8::from(self.extended_flags.is_some()) << 7;
        w.u8(flags)?;
        w.u16(self.sequence)?;
        if let Some(x) = self.extended_flags {
            w.u8(x)?;
        }
        if let Some((id, kg)) = self.carbohydrate {
            w.u8(id)?;
            w.sfloat(kg)?;
        }
        if let Some(m) = self.meal {
            w.u8(m)?;
        }
        if let Some(th) = self.tester_health {
            w.u8(th)?;
        }
        if let Some((secs, pct)) = self.exercise {
            w.u16(secs)?;
            w.u8(pct)?;
        }
        if let Some((id, amount, _)) = self.medication {
            w.u8(id)?;
            w.sfloat(amount)?;
        }
        if let Some(h) = self.hba1c {
            w.sfloat(h)?;
        }
        Ok(w.at)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let out = self
            .bytes
            .get(self.at..self.at + N)
            .and_then(|s| s.try_into().ok())
            .ok_or(RecordError::Truncated)?;
        self.at += N;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn sfloat(&mut self) -> Result<SFloat, RecordError> {
        Ok(SFloat::from_le_bytes(self.take()?))
    }
    fn when<T>(
        &mut self,
        present: bool,
        f: impl FnOnce(&mut Self) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        if present { f(self).map(Some) } else { Ok(None) }
    }
    fn end(&self) -> Result<(), RecordError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(RecordError::TrailingBytes)
        }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, at: 0 }
    }
    fn bytes(&mut self, b: &[u8]) -> Result<(), RecordError> {
        let dst = self
            .buf
            .get_mut(self.at..self.at + b.len())
            .ok_or(RecordError::BufferTooSmall)?;
        dst.copy_from_slice(b);
        self.at += b.len();
        Ok(())
    }
    fn u8(&mut self, v: u8) -> Result<(), RecordError> {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> Result<(), RecordError> {
        self.bytes(&v.to_le_bytes())
    }
    fn sfloat(&mut self, v: SFloat) -> Result<(), RecordError> {
        self.bytes(&v.to_le_bytes())
    }
}
