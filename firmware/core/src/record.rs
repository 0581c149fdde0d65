//! One reading in flash: a fixed 40-byte little-endian layout.
//!
//! The outbox stores readings in this binary form rather than as JSON: it is a third of the
//! size, its length is fixed (so any record fits one buffer), and decoding is a handful of
//! slice reads. `sequential-storage` adds a CRC over each item, so a torn write is never
//! mistaken for a record.
//!
//! ```text
//! offset size field
//!  0     1    format version (1)
//!  1     1    kind: 1 bp, 2 spo2, 3 glucose
//!  2     1    flags: bit0 clock_unset, bit1 optional field A present, bit2 optional field B present
//!  3     1    reserved (0)
//!  4     4    seq (u32)
//!  8     8    ts_ms (i64)
//! 16     2    IEEE 11073 measurement status (u16)
//! 18     4    sensor status bits (u32)
//! 22    18    kind-specific:
//!             bp:      unit (0 mmHg, 1 kPa), sys f32, dia f32, map f32 (A), pulse f32 (B)
//!             spo2:    percent f32, pulse f32 (A), perfusion index f32 (B)
//!             glucose: unit (0 mg/dL, 1 mmol/L), sample type index, meal index (A), value f32
//! ```
//!
//! Sample type and meal are stored as their index in [`SampleType::ALL`] and
//! [`MealContext::ALL`]; a change to those lists must bump [`FORMAT`].

use protocol::{
    BloodPressure, Glucose, GlucoseUnit, MealContext, Measurement, MeasurementStatus, PressureUnit,
    Reading, SampleType, Spo2,
};

/// The format version written in byte 0.
pub const FORMAT: u8 = 1;

/// Length of every record, a multiple of any common flash word size (1, 2, 4, 8 bytes).
pub const RECORD_LEN: usize = 40;

const CLOCK_UNSET: u8 = 1 << 0;
const HAS_A: u8 = 1 << 1;
const HAS_B: u8 = 1 << 2;

/// Why bytes read from flash are not a record this firmware understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Not [`RECORD_LEN`] bytes long.
    Length(usize),
    /// Written by another format version (e.g. before a firmware downgrade).
    Format(u8),
    /// A kind, unit or enumeration index this version does not know.
    Field(&'static str),
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecordError::Length(n) => write!(f, "record of {n} bytes, expected {RECORD_LEN}"),
            RecordError::Format(v) => write!(f, "record format {v}, expected {FORMAT}"),
            RecordError::Field(name) => write!(f, "record field {name} out of range"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RecordError {}

/// Encodes `reading`.
pub fn encode(reading: &Reading) -> [u8; RECORD_LEN] {
    let mut out = Writer {
        buf: [0; RECORD_LEN],
        at: 0,
    };
    out.u8(FORMAT);
    let (kind, a, b) = match reading.measurement {
        Measurement::BloodPressure(bp) => (1, bp.mean.is_some(), bp.pulse.is_some()),
        Measurement::Spo2(ox) => (2, ox.pulse.is_some(), ox.perfusion_index.is_some()),
        Measurement::Glucose(g) => (3, g.meal.is_some(), false),
    };
    out.u8(kind);
    let mut flags = 0;
    if reading.clock_unset {
        flags |= CLOCK_UNSET;
    }
    if a {
        flags |= HAS_A;
    }
    if b {
        flags |= HAS_B;
    }
    out.u8(flags);
    out.u8(0);
    out.bytes(&reading.seq.to_le_bytes());
    out.bytes(&reading.ts_ms.to_le_bytes());
    out.bytes(&reading.status.0.to_le_bytes());
    out.bytes(&reading.sensor.to_le_bytes());
    match reading.measurement {
        Measurement::BloodPressure(bp) => {
            out.u8(match bp.unit {
                PressureUnit::MmHg => 0,
                PressureUnit::KPa => 1,
            });
            out.f32(bp.systolic);
            out.f32(bp.diastolic);
            out.f32(bp.mean.unwrap_or(0.0));
            out.f32(bp.pulse.unwrap_or(0.0));
        }
        Measurement::Spo2(ox) => {
            out.f32(ox.percent);
            out.f32(ox.pulse.unwrap_or(0.0));
            out.f32(ox.perfusion_index.unwrap_or(0.0));
        }
        Measurement::Glucose(g) => {
            out.u8(match g.unit {
                GlucoseUnit::MgDl => 0,
                GlucoseUnit::MmolL => 1,
            });
            out.u8(index_of(SampleType::ALL, g.sample));
            out.u8(g.meal.map_or(0, |m| index_of(MealContext::ALL, m)));
            out.f32(g.value);
        }
    }
    out.buf
}

/// Decodes a record.
pub fn decode(bytes: &[u8]) -> Result<Reading, RecordError> {
    let bytes: &[u8; RECORD_LEN] = bytes
        .try_into()
        .map_err(|_| RecordError::Length(bytes.len()))?;
    let mut r = Reader { buf: bytes, at: 0 };
    let format = r.u8();
    if format != FORMAT {
        return Err(RecordError::Format(format));
    }
    let kind = r.u8();
    let flags = r.u8();
    let _reserved = r.u8();
    let seq = u32::from_le_bytes(r.array());
    let ts_ms = i64::from_le_bytes(r.array());
    let status = MeasurementStatus(u16::from_le_bytes(r.array()));
    let sensor = u32::from_le_bytes(r.array());
    let a = flags & HAS_A != 0;
    let b = flags & HAS_B != 0;
    let measurement = match kind {
        1 => {
            let unit = match r.u8() {
                0 => PressureUnit::MmHg,
                1 => PressureUnit::KPa,
                _ => return Err(RecordError::Field("pressure unit")),
            };
            let systolic = r.f32();
            let diastolic = r.f32();
            let mean = r.f32();
            let pulse = r.f32();
            Measurement::BloodPressure(BloodPressure {
                systolic,
                diastolic,
                mean: a.then_some(mean),
                pulse: b.then_some(pulse),
                unit,
            })
        }
        2 => {
            let percent = r.f32();
            let pulse = r.f32();
            let pi = r.f32();
            Measurement::Spo2(Spo2 {
                percent,
                pulse: a.then_some(pulse),
                perfusion_index: b.then_some(pi),
            })
        }
        3 => {
            let unit = match r.u8() {
                0 => GlucoseUnit::MgDl,
                1 => GlucoseUnit::MmolL,
                _ => return Err(RecordError::Field("glucose unit")),
            };
            let sample = *SampleType::ALL
                .get(usize::from(r.u8()))
                .ok_or(RecordError::Field("sample type"))?;
            let meal = *MealContext::ALL
                .get(usize::from(r.u8()))
                .ok_or(RecordError::Field("meal"))?;
            let value = r.f32();
            Measurement::Glucose(Glucose {
                value,
                unit,
                sample,
                meal: a.then_some(meal),
            })
        }
        _ => return Err(RecordError::Field("kind")),
    };
    Ok(Reading {
        seq,
        ts_ms,
        clock_unset: flags & CLOCK_UNSET != 0,
        status,
        sensor,
        measurement,
    })
}

/// The seq of an encoded record, without decoding the rest (0 if too short).
pub fn seq_of(bytes: &[u8]) -> u32 {
    bytes
        .get(4..8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn index_of<T: PartialEq>(all: &[T], value: T) -> u8 {
    // The lists have fewer than 16 entries, so the index always fits.
    all.iter()
        .position(|v| *v == value)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(0)
}

/// Writes into a fixed buffer; the layout above never exceeds it, so writes past the end are
/// dropped instead of panicking.
struct Writer {
    buf: [u8; RECORD_LEN],
    at: usize,
}

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
        }
        self.at += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn f32(&mut self, v: f32) {
        self.bytes(&v.to_le_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8; RECORD_LEN],
    at: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let out = self
            .buf
            .get(self.at..self.at + N)
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(measurement: Measurement) -> Reading {
        Reading {
            seq: 0xDEAD_BEEF,
            ts_ms: 1_763_798_400_123,
            clock_unset: false,
            status: MeasurementStatus(MeasurementStatus::QUESTIONABLE),
            sensor: protocol::reading::sensor::PLX_LOW_PERFUSION,
            measurement,
        }
    }

    #[test]
    fn round_trips_every_kind_and_option() {
        let cases = [
            Measurement::BloodPressure(BloodPressure {
                systolic: 128.5,
                diastolic: 82.0,
                mean: Some(97.25),
                pulse: None,
                unit: PressureUnit::MmHg,
            }),
            Measurement::BloodPressure(BloodPressure {
                systolic: 17.1,
                diastolic: 10.9,
                mean: None,
                pulse: Some(71.0),
                unit: PressureUnit::KPa,
            }),
            Measurement::Spo2(Spo2 {
                percent: 95.5,
                pulse: Some(74.0),
                perfusion_index: Some(2.1),
            }),
            Measurement::Spo2(Spo2 {
                percent: 99.0,
                pulse: None,
                perfusion_index: None,
            }),
            Measurement::Glucose(Glucose {
                value: 6.1,
                unit: GlucoseUnit::MmolL,
                sample: SampleType::ControlSolution,
                meal: Some(MealContext::Bedtime),
            }),
            Measurement::Glucose(Glucose {
                value: 110.0,
                unit: GlucoseUnit::MgDl,
                sample: SampleType::CapillaryWholeBlood,
                meal: None,
            }),
        ];
        for m in cases {
            for clock_unset in [false, true] {
                let r = Reading {
                    clock_unset,
                    ..reading(m)
                };
                let bytes = encode(&r);
                assert_eq!(decode(&bytes), Ok(r), "{m:?}");
                assert_eq!(seq_of(&bytes), 0xDEAD_BEEF);
            }
        }
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let good = encode(&reading(Measurement::Spo2(Spo2 {
            percent: 97.0,
            pulse: None,
            perfusion_index: None,
        })));
        assert_eq!(decode(&good[..39]), Err(RecordError::Length(39)));
        let mut bad = good;
        bad[0] = 2;
        assert_eq!(decode(&bad), Err(RecordError::Format(2)));
        let mut bad = good;
        bad[1] = 9;
        assert_eq!(decode(&bad), Err(RecordError::Field("kind")));
        let mut bad = encode(&reading(Measurement::Glucose(Glucose {
            value: 5.0,
            unit: GlucoseUnit::MmolL,
            sample: SampleType::Undetermined,
            meal: None,
        })));
        bad[23] = 200;
        assert_eq!(decode(&bad), Err(RecordError::Field("sample type")));
        assert_eq!(seq_of(&[1, 2]), 0);
    }
}
