//! The JSON batch envelope: strict decoding with typed errors, and encoding.
//!
//! ```json
//! {"v":1,"readings":[
//!   {"seq":41,"ts":1763798400000,"kind":"bp","sys":128,"dia":82,"map":97,"pulse":71,"unit":"mmHg"},
//!   {"seq":42,"ts":1763798460000,"kind":"spo2","spo2":95,"pulse":74,"pi":2.1,"status":0,"sensor":32},
//!   {"seq":43,"ts":1763798520000,"kind":"glucose","value":6.1,"unit":"mmol/L",
//!    "sample":"capillary_plasma","meal":"fasting"}
//! ]}
//! ```
//!
//! Decoding has two levels of failure. A message whose *structure* is wrong (not JSON, unknown
//! field, wrong type, wrong version, too many readings) fails as a whole with a
//! [`DecodeError`]: nothing in it can be trusted, not even its seqs. A well-formed reading whose
//! *content* is wrong (unknown kind or unit, a field that does not belong to its kind, an
//! implausible value) becomes a per-reading [`ReadingError`] carrying its seq, so the rest of
//! the batch is still accepted and the device can be told which seq was refused.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{self, Limit};
use crate::reading::{
    BloodPressure, Glucose, GlucoseUnit, Kind, MealContext, Measurement, MeasurementStatus,
    PressureUnit, Reading, SampleType, Spo2, sensor,
};
use crate::{MAX_BATCH, MAX_PAYLOAD, VERSION};

/// One entry of a decoded batch: the reading, or why this seq was refused.
pub type BatchItem = Result<Reading, (u32, ReadingError)>;

/// A decoded batch, in the order the device sent it.
pub type DecodedBatch = heapless::Vec<BatchItem, MAX_BATCH>;

/// Decodes a readings payload.
///
/// Never panics, whatever the input.
pub fn decode_batch(payload: &[u8]) -> Result<DecodedBatch, DecodeError> {
    check_size(payload)?;
    let batch: WireBatch<'_> = from_slice_exact(payload)?;
    if batch.v != VERSION {
        return Err(DecodeError::UnsupportedVersion(batch.v));
    }
    if batch.readings.is_empty() {
        return Err(DecodeError::EmptyBatch);
    }
    let mut out = DecodedBatch::new();
    for wire in &batch.readings {
        let item = wire.to_reading().map_err(|e| (wire.seq, e));
        // Both vectors have capacity MAX_BATCH, so this cannot overflow.
        let _ = out.push(item);
    }
    Ok(out)
}

/// Encodes `readings` as one batch message into `buf`, returning the length written.
pub fn encode_batch(readings: &[Reading], buf: &mut [u8]) -> Result<usize, EncodeError> {
    if readings.is_empty() || readings.len() > MAX_BATCH {
        return Err(EncodeError::BatchSize);
    }
    let mut wire = heapless::Vec::<WireReading<'_>, MAX_BATCH>::new();
    for r in readings {
        let _ = wire.push(WireReading::from_reading(r));
    }
    let batch = WireBatch {
        v: VERSION,
        readings: wire,
    };
    serde_json_core::to_slice(&batch, buf).map_err(|_| EncodeError::BufferFull)
}

pub(crate) fn check_size(payload: &[u8]) -> Result<(), DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge);
    }
    Ok(())
}

/// Deserializes `payload`, refusing anything but whitespace after the value.
pub(crate) fn from_slice_exact<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
) -> Result<T, DecodeError> {
    let (value, used) = serde_json_core::from_slice::<T>(payload).map_err(DecodeError::json)?;
    let rest = payload.get(used..).unwrap_or_default();
    if rest.iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(DecodeError::TrailingData);
    }
    Ok(value)
}

/// Why a whole message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload is empty.
    Empty,
    /// The payload is larger than [`MAX_PAYLOAD`].
    TooLarge,
    /// The payload is not the expected JSON document; the text says what the parser saw.
    Json(&'static str),
    /// Something other than whitespace follows the JSON document.
    TrailingData,
    /// The envelope's `v` is not a version this code speaks.
    UnsupportedVersion(u8),
    /// The batch holds no readings.
    EmptyBatch,
}

impl DecodeError {
    fn json(e: serde_json_core::de::Error) -> Self {
        use serde_json_core::de::Error as E;
        // Also what serde-json-core reports for an extra tuple element (`[1,2,3]` for a
        // pair): it cannot be told apart from text after the document (fuzz note O1).
        if e == E::TrailingCharacters {
            return DecodeError::TrailingData;
        }
        DecodeError::Json(match e {
            E::EofWhileParsingList
            | E::EofWhileParsingObject
            | E::EofWhileParsingString
            | E::EofWhileParsingNumber
            | E::EofWhileParsingValue => "unexpected end of input",
            E::ExpectedColon => "expected ':'",
            E::ExpectedListCommaOrEnd => "expected ',' or ']'",
            E::ExpectedObjectCommaOrEnd => "expected ',' or '}'",
            E::ExpectedSomeIdent => "expected an identifier",
            E::ExpectedSomeValue => "expected a value",
            E::InvalidNumber => "invalid number",
            E::InvalidType => "a field has the wrong type",
            E::InvalidUnicodeCodePoint => "invalid unicode",
            E::InvalidEscapeSequence | E::EscapedStringIsTooLong => "unsupported string escape",
            E::KeyMustBeAString => "object key must be a string",
            E::TrailingComma => "trailing comma",
            E::CustomError => {
                "unknown, duplicate or missing field, or more readings than one batch may carry"
            }
            _ => "malformed JSON",
        })
    }

    /// A stable machine-readable code, used as the quarantine reason.
    pub const fn code(self) -> &'static str {
        match self {
            DecodeError::Empty => "payload.empty",
            DecodeError::TooLarge => "payload.too_large",
            DecodeError::Json(_) => "payload.malformed",
            DecodeError::TrailingData => "payload.trailing_data",
            DecodeError::UnsupportedVersion(_) => "payload.unsupported_version",
            DecodeError::EmptyBatch => "payload.empty_batch",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("empty payload"),
            DecodeError::TooLarge => write!(f, "payload larger than {MAX_PAYLOAD} bytes"),
            DecodeError::Json(what) => write!(f, "malformed payload: {what}"),
            DecodeError::TrailingData => f.write_str("data after the JSON document"),
            DecodeError::UnsupportedVersion(v) => {
                write!(f, "unsupported protocol version {v} (expected {VERSION})")
            }
            DecodeError::EmptyBatch => f.write_str("batch has no readings"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why one reading of a well-formed batch was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadingError {
    /// `kind` is not bp, spo2 or glucose.
    UnknownKind,
    /// A field the kind requires is absent.
    MissingField(&'static str),
    /// A field that belongs to another kind is present.
    FieldNotAllowed(&'static str),
    /// The unit is not one this kind may use (e.g. glucose in "mg").
    UnknownUnit,
    /// The glucose sample type is not a known one.
    UnknownSampleType,
    /// The glucose meal context is not a known one.
    UnknownMeal,
    /// A value lies outside its physiological plausibility range (canonical units).
    Implausible {
        /// Wire name of the field.
        field: &'static str,
        /// The value, converted to the canonical unit.
        value: f32,
    },
    /// Diastolic pressure is not below systolic.
    DiastolicNotBelowSystolic,
    /// A device with its clock set sent a time before 2000 or after 2100. No longer raised:
    /// such a reading is kept as one with its clock unset (kept for the wire names).
    TimestampOutOfRange,
    /// Status bits set that the standard does not define.
    UndefinedStatusBits,
}

impl ReadingError {
    /// A stable machine-readable code, used as the quarantine reason.
    pub const fn code(&self) -> &'static str {
        match self {
            ReadingError::UnknownKind => "reading.unknown_kind",
            ReadingError::MissingField(_) => "reading.missing_field",
            ReadingError::FieldNotAllowed(_) => "reading.field_not_allowed",
            ReadingError::UnknownUnit => "reading.unknown_unit",
            ReadingError::UnknownSampleType => "reading.unknown_sample_type",
            ReadingError::UnknownMeal => "reading.unknown_meal",
            ReadingError::Implausible { .. } => "reading.implausible",
            ReadingError::DiastolicNotBelowSystolic => "reading.diastolic_not_below_systolic",
            ReadingError::TimestampOutOfRange => "reading.timestamp_out_of_range",
            ReadingError::UndefinedStatusBits => "reading.undefined_status_bits",
        }
    }
}

impl fmt::Display for ReadingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadingError::UnknownKind => f.write_str("kind must be one of bp, spo2, glucose"),
            ReadingError::MissingField(name) => write!(f, "missing field {name:?}"),
            ReadingError::FieldNotAllowed(name) => {
                write!(f, "field {name:?} does not belong to this kind")
            }
            ReadingError::UnknownUnit => {
                f.write_str("unit must be mmHg or kPa for bp, mg/dL or mmol/L for glucose")
            }
            ReadingError::UnknownSampleType => f.write_str("unknown glucose sample type"),
            ReadingError::UnknownMeal => f.write_str("unknown meal context"),
            ReadingError::Implausible { field, value } => {
                write!(f, "{field} = {value} is outside the plausible range")
            }
            ReadingError::DiastolicNotBelowSystolic => {
                f.write_str("diastolic pressure is not below systolic")
            }
            ReadingError::TimestampOutOfRange => {
                f.write_str("device time outside 2000-2100 with the clock marked as set")
            }
            ReadingError::UndefinedStatusBits => f.write_str("undefined status bits are set"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ReadingError {}

/// Why encoding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small.
    BufferFull,
    /// A batch must hold 1 to [`MAX_BATCH`] readings.
    BatchSize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferFull => f.write_str("output buffer too small"),
            EncodeError::BatchSize => write!(f, "a batch holds 1 to {MAX_BATCH} readings"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBatch<'a> {
    v: u8,
    #[serde(borrow)]
    readings: heapless::Vec<WireReading<'a>, MAX_BATCH>,
}

/// One reading on the wire: every kind's fields, optional, validated by [`Self::to_reading`].
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireReading<'a> {
    seq: u32,
    ts: i64,
    #[serde(skip_serializing_if = "is_false", default)]
    clock_unset: bool,
    kind: &'a str,
    #[serde(skip_serializing_if = "is_zero_u16", default)]
    status: u16,
    #[serde(skip_serializing_if = "is_zero_u32", default)]
    sensor: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    sys: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dia: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    map: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pulse: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spo2: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pi: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none", borrow)]
    unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", borrow)]
    sample: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", borrow)]
    meal: Option<&'a str>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn require(value: Option<f32>, name: &'static str) -> Result<f32, ReadingError> {
    value.ok_or(ReadingError::MissingField(name))
}

fn forbid<T>(value: Option<T>, name: &'static str) -> Result<(), ReadingError> {
    match value {
        Some(_) => Err(ReadingError::FieldNotAllowed(name)),
        None => Ok(()),
    }
}

fn plausible(limit: Limit, value: f32) -> Result<(), ReadingError> {
    if limit.admits(value) {
        Ok(())
    } else {
        Err(ReadingError::Implausible {
            field: limit.field,
            value,
        })
    }
}

impl<'a> WireReading<'a> {
    fn to_reading(&self) -> Result<Reading, ReadingError> {
        let kind = Kind::parse(self.kind).ok_or(ReadingError::UnknownKind)?;
        let status = MeasurementStatus(self.status);
        if self.status & !MeasurementStatus::DEFINED != 0 {
            return Err(ReadingError::UndefinedStatusBits);
        }
        // A device that says its clock is set but sends a time before 2000 or after 2100 has
        // lost its clock (a reset to 1970 is the usual case): the reading is still the
        // patient's, so it is kept as if the clock were unset (dated at its receive time,
        // flagged) rather than refused where no nurse sees it.
        let clock_unset =
            self.clock_unset || !(limits::EARLIEST_TS_MS..=limits::LATEST_TS_MS).contains(&self.ts);
        let (measurement, sensor_defined) = match kind {
            Kind::BloodPressure => (self.blood_pressure()?, sensor::BP_DEFINED),
            Kind::Spo2 => (self.spo2()?, sensor::PLX_DEFINED),
            Kind::Glucose => (self.glucose()?, sensor::GLU_DEFINED),
        };
        if self.sensor & !sensor_defined != 0 {
            return Err(ReadingError::UndefinedStatusBits);
        }
        Ok(Reading {
            seq: self.seq,
            ts_ms: self.ts,
            clock_unset,
            status,
            sensor: self.sensor,
            measurement,
        })
    }

    fn blood_pressure(&self) -> Result<Measurement, ReadingError> {
        forbid(self.spo2, "spo2")?;
        forbid(self.pi, "pi")?;
        forbid(self.value, "value")?;
        forbid(self.sample, "sample")?;
        forbid(self.meal, "meal")?;
        let unit = self.unit.ok_or(ReadingError::MissingField("unit"))?;
        let unit = PressureUnit::parse(unit).ok_or(ReadingError::UnknownUnit)?;
        let bp = BloodPressure {
            systolic: require(self.sys, "sys")?,
            diastolic: require(self.dia, "dia")?,
            mean: self.map,
            pulse: self.pulse,
            unit,
        };
        let (sys, dia, map) = bp.mmhg();
        plausible(limits::SYSTOLIC, sys)?;
        plausible(limits::DIASTOLIC, dia)?;
        if let Some(map) = map {
            plausible(limits::MEAN_ARTERIAL, map)?;
        }
        if let Some(pulse) = bp.pulse {
            plausible(limits::PULSE, pulse)?;
        }
        if dia >= sys {
            return Err(ReadingError::DiastolicNotBelowSystolic);
        }
        Ok(Measurement::BloodPressure(bp))
    }

    fn spo2(&self) -> Result<Measurement, ReadingError> {
        forbid(self.sys, "sys")?;
        forbid(self.dia, "dia")?;
        forbid(self.map, "map")?;
        forbid(self.value, "value")?;
        forbid(self.sample, "sample")?;
        forbid(self.meal, "meal")?;
        if let Some(unit) = self.unit
            && unit != "%"
        {
            return Err(ReadingError::UnknownUnit);
        }
        let ox = Spo2 {
            percent: require(self.spo2, "spo2")?,
            pulse: self.pulse,
            perfusion_index: self.pi,
        };
        plausible(limits::SPO2, ox.percent)?;
        if let Some(pulse) = ox.pulse {
            plausible(limits::PULSE, pulse)?;
        }
        if let Some(pi) = ox.perfusion_index {
            plausible(limits::PERFUSION_INDEX, pi)?;
        }
        Ok(Measurement::Spo2(ox))
    }

    fn glucose(&self) -> Result<Measurement, ReadingError> {
        forbid(self.sys, "sys")?;
        forbid(self.dia, "dia")?;
        forbid(self.map, "map")?;
        forbid(self.pulse, "pulse")?;
        forbid(self.spo2, "spo2")?;
        forbid(self.pi, "pi")?;
        let unit = self.unit.ok_or(ReadingError::MissingField("unit"))?;
        let unit = GlucoseUnit::parse(unit).ok_or(ReadingError::UnknownUnit)?;
        let sample = match self.sample {
            Some(s) => SampleType::parse(s).ok_or(ReadingError::UnknownSampleType)?,
            None => SampleType::Undetermined,
        };
        let meal = match self.meal {
            Some(m) => Some(MealContext::parse(m).ok_or(ReadingError::UnknownMeal)?),
            None => None,
        };
        let g = Glucose {
            value: require(self.value, "value")?,
            unit,
            sample,
            meal,
        };
        plausible(limits::GLUCOSE_MG_DL, g.mg_dl())?;
        Ok(Measurement::Glucose(g))
    }

    fn from_reading(r: &Reading) -> Self {
        let mut w = WireReading {
            seq: r.seq,
            ts: r.ts_ms,
            clock_unset: r.clock_unset,
            kind: r.measurement.kind().as_str(),
            status: r.status.0,
            sensor: r.sensor,
            ..WireReading::default()
        };
        match r.measurement {
            Measurement::BloodPressure(bp) => {
                w.sys = Some(bp.systolic);
                w.dia = Some(bp.diastolic);
                w.map = bp.mean;
                w.pulse = bp.pulse;
                w.unit = Some(bp.unit.as_str());
            }
            Measurement::Spo2(ox) => {
                w.spo2 = Some(ox.percent);
                w.pulse = ox.pulse;
                w.pi = ox.perfusion_index;
            }
            Measurement::Glucose(g) => {
                w.value = Some(g.value);
                w.unit = Some(g.unit.as_str());
                w.sample = Some(g.sample.as_str());
                w.meal = g.meal.map(MealContext::as_str);
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_763_798_400_000;

    fn one(reading: &str) -> Result<BatchItem, DecodeError> {
        let mut buf = [0u8; 1024];
        let mut s = heapless::String::<1024>::new();
        core::fmt::write(&mut s, format_args!("{{\"v\":1,\"readings\":[{reading}]}}")).unwrap();
        buf[..s.len()].copy_from_slice(s.as_bytes());
        decode_batch(&buf[..s.len()]).map(|b| b[0])
    }

    fn check_reading(json: &str, expected: Result<Measurement, ReadingError>) {
        let got = one(json).unwrap_or_else(|e| panic!("{json}: whole message refused: {e}"));
        match (got, expected) {
            (Ok(r), Ok(m)) => assert_eq!(r.measurement, m, "{json}"),
            (Err((_, e)), Err(x)) => assert_eq!(e, x, "{json}"),
            (got, expected) => panic!("{json}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn readings_table() {
        use ReadingError::*;
        let bp = |sys, dia, map, pulse, unit| {
            Ok(Measurement::BloodPressure(BloodPressure {
                systolic: sys,
                diastolic: dia,
                mean: map,
                pulse,
                unit,
            }))
        };
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":128,"dia":82,"map":97,"pulse":71,"unit":"mmHg"}"#,
            bp(128.0, 82.0, Some(97.0), Some(71.0), PressureUnit::MmHg),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":17.1,"dia":10.9,"unit":"kPa"}"#,
            bp(17.1, 10.9, None, None, PressureUnit::KPa),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":128,"dia":82}"#,
            Err(MissingField("unit")),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","dia":82,"unit":"mmHg"}"#,
            Err(MissingField("sys")),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":128,"dia":82,"unit":"mbar"}"#,
            Err(UnknownUnit),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":128,"dia":82,"unit":"mmHg","spo2":97}"#,
            Err(FieldNotAllowed("spo2")),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":420,"dia":82,"unit":"mmHg"}"#,
            Err(Implausible {
                field: "sys",
                value: 420.0,
            }),
        );
        // 128 kPa is 960 mmHg: a unit mix-up, caught after conversion.
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":128,"dia":82,"unit":"kPa"}"#,
            Err(Implausible {
                field: "sys",
                value: 128.0 * crate::reading::MMHG_PER_KPA,
            }),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":80,"dia":90,"unit":"mmHg"}"#,
            Err(DiastolicNotBelowSystolic),
        );
        check_reading(
            r#"{"seq":1,"ts":1763798400000,"kind":"bp","sys":120,"dia":80,"pulse":5,"unit":"mmHg"}"#,
            Err(Implausible {
                field: "pulse",
                value: 5.0,
            }),
        );

        check_reading(
            r#"{"seq":2,"ts":1763798400000,"kind":"spo2","spo2":95,"pulse":74,"pi":2.5}"#,
            Ok(Measurement::Spo2(Spo2 {
                percent: 95.0,
                pulse: Some(74.0),
                perfusion_index: Some(2.5),
            })),
        );
        check_reading(
            r#"{"seq":2,"ts":1763798400000,"kind":"spo2","spo2":95,"unit":"%"}"#,
            Ok(Measurement::Spo2(Spo2 {
                percent: 95.0,
                pulse: None,
                perfusion_index: None,
            })),
        );
        check_reading(
            r#"{"seq":2,"ts":1763798400000,"kind":"spo2","spo2":101}"#,
            Err(Implausible {
                field: "spo2",
                value: 101.0,
            }),
        );
        check_reading(
            r#"{"seq":2,"ts":1763798400000,"kind":"spo2","spo2":0.95}"#,
            Err(Implausible {
                field: "spo2",
                value: 0.95,
            }),
        );
        check_reading(
            r#"{"seq":2,"ts":1763798400000,"kind":"spo2","spo2":95,"unit":"ratio"}"#,
            Err(UnknownUnit),
        );
        check_reading(
            r#"{"seq":2,"ts":1763798400000,"kind":"spo2"}"#,
            Err(MissingField("spo2")),
        );
        check_reading(
            r#"{"seq":2,"ts":1763798400000,"kind":"spo2","spo2":95,"value":3}"#,
            Err(FieldNotAllowed("value")),
        );

        check_reading(
            r#"{"seq":3,"ts":1763798400000,"kind":"glucose","value":6.1,"unit":"mmol/L","sample":"capillary_plasma","meal":"fasting"}"#,
            Ok(Measurement::Glucose(Glucose {
                value: 6.1,
                unit: GlucoseUnit::MmolL,
                sample: SampleType::CapillaryPlasma,
                meal: Some(MealContext::Fasting),
            })),
        );
        check_reading(
            r#"{"seq":3,"ts":1763798400000,"kind":"glucose","value":110,"unit":"mg/dL"}"#,
            Ok(Measurement::Glucose(Glucose {
                value: 110.0,
                unit: GlucoseUnit::MgDl,
                sample: SampleType::Undetermined,
                meal: None,
            })),
        );
        check_reading(
            r#"{"seq":3,"ts":1763798400000,"kind":"glucose","value":110,"unit":"mg"}"#,
            Err(UnknownUnit),
        );
        // 110 mmol/L is ~1982 mg/dL: a unit mix-up.
        check_reading(
            r#"{"seq":3,"ts":1763798400000,"kind":"glucose","value":110,"unit":"mmol/L"}"#,
            Err(Implausible {
                field: "value",
                value: 110.0 * crate::reading::MG_DL_PER_MMOL_L,
            }),
        );
        check_reading(
            r#"{"seq":3,"ts":1763798400000,"kind":"glucose","value":110,"unit":"mg/dL","sample":"urine"}"#,
            Err(UnknownSampleType),
        );
        check_reading(
            r#"{"seq":3,"ts":1763798400000,"kind":"glucose","value":110,"unit":"mg/dL","meal":"brunch"}"#,
            Err(UnknownMeal),
        );
        check_reading(
            r#"{"seq":3,"ts":1763798400000,"kind":"glucose","value":110,"unit":"mg/dL","pulse":60}"#,
            Err(FieldNotAllowed("pulse")),
        );

        check_reading(
            r#"{"seq":4,"ts":1763798400000,"kind":"weight","value":80,"unit":"kg"}"#,
            Err(UnknownKind),
        );
        // A clock that says it is set but reads 1970: kept, as a reading with its clock unset.
        let lost = one(r#"{"seq":4,"ts":12,"kind":"spo2","spo2":95}"#);
        assert!(matches!(lost, Ok(Ok(ref r)) if r.clock_unset), "{lost:?}");
        check_reading(
            r#"{"seq":4,"ts":12,"clock_unset":true,"kind":"spo2","spo2":95}"#,
            Ok(Measurement::Spo2(Spo2 {
                percent: 95.0,
                pulse: None,
                perfusion_index: None,
            })),
        );
        check_reading(
            r#"{"seq":4,"ts":1763798400000,"kind":"spo2","spo2":95,"status":1}"#,
            Err(UndefinedStatusBits),
        );
        check_reading(
            r#"{"seq":4,"ts":1763798400000,"kind":"spo2","spo2":95,"sensor":65536}"#,
            Err(UndefinedStatusBits),
        );
    }

    fn check_message(payload: &[u8], expected: &str) {
        let got = decode_batch(payload).map(|b| b.len()).map_err(|e| e.code());
        assert_eq!(got, Err(expected), "{:?}", core::str::from_utf8(payload));
    }

    #[test]
    fn messages_table() {
        check_message(b"", "payload.empty");
        check_message(b"not json", "payload.malformed");
        check_message(b"{\"v\":1,\"readings\":[]}", "payload.empty_batch");
        check_message(b"{\"v\":2,\"readings\":[]}", "payload.unsupported_version");
        check_message(b"{\"v\":1,\"readings\":[]} x", "payload.trailing_data");
        check_message(
            b"{\"v\":1,\"readings\":[],\"extra\":1}",
            "payload.malformed",
        );
        check_message(
            b"{\"v\":1,\"readings\":[{\"seq\":-1,\"ts\":1,\"kind\":\"bp\"}]}",
            "payload.malformed",
        );
        check_message(
            b"{\"v\":1,\"readings\":[{\"seq\":1,\"ts\":1,\"kind\":\"bp\",\"sys\":\"high\"}]}",
            "payload.malformed",
        );
        check_message(
            b"{\"v\":1,\"readings\":[{\"seq\":1,\"ts\":1,\"kind\":\"bp\",\"color\":1}]}",
            "payload.malformed",
        );
        check_message(
            b"{\"v\":1,\"readings\":[{\"seq\":1,\"ts\":1,\"kind\":\"bp\"",
            "payload.malformed",
        );
        check_message(b"{\"v\":1,\"v\":1,\"readings\":[]}", "payload.malformed");
        check_message(&[0xff, 0xfe, 0x00], "payload.malformed");
        let big = [b' '; MAX_PAYLOAD + 1];
        check_message(&big, "payload.too_large");
    }

    #[test]
    fn batch_larger_than_max_is_refused_whole() {
        let mut s = heapless::String::<{ 64 * 1024 }>::new();
        s.push_str("{\"v\":1,\"readings\":[").unwrap();
        for i in 0..=MAX_BATCH {
            if i > 0 {
                s.push(',').unwrap();
            }
            core::fmt::write(
                &mut s,
                format_args!("{{\"seq\":{i},\"ts\":{T},\"kind\":\"spo2\",\"spo2\":97}}"),
            )
            .unwrap();
        }
        s.push_str("]}").unwrap();
        assert!(matches!(
            decode_batch(s.as_bytes()),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn one_bad_reading_keeps_the_others() {
        let payload = br#"{"v":1,"readings":[
            {"seq":7,"ts":1763798400000,"kind":"spo2","spo2":96},
            {"seq":8,"ts":1763798400000,"kind":"spo2","spo2":196},
            {"seq":9,"ts":1763798400000,"kind":"glucose","value":5.5,"unit":"mmol/L"}]}"#;
        let batch = decode_batch(payload).unwrap();
        assert_eq!(batch.len(), 3);
        assert!(batch[0].is_ok());
        assert_eq!(batch[1].map(|r| r.seq).unwrap_err().0, 8);
        assert_eq!(batch[2].map(|r| r.seq), Ok(9));
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let readings = [
            Reading {
                seq: 1,
                ts_ms: T,
                clock_unset: false,
                status: MeasurementStatus(MeasurementStatus::QUESTIONABLE),
                sensor: sensor::BP_IRREGULAR_PULSE,
                measurement: Measurement::BloodPressure(BloodPressure {
                    systolic: 141.0,
                    diastolic: 92.5,
                    mean: Some(108.7),
                    pulse: Some(66.0),
                    unit: PressureUnit::MmHg,
                }),
            },
            Reading {
                seq: 2,
                ts_ms: 5_000,
                clock_unset: true,
                status: MeasurementStatus::default(),
                sensor: sensor::PLX_LOW_PERFUSION,
                measurement: Measurement::Spo2(Spo2 {
                    percent: 91.0,
                    pulse: Some(88.0),
                    perfusion_index: Some(0.4),
                }),
            },
            Reading {
                seq: u32::MAX,
                ts_ms: T,
                clock_unset: false,
                status: MeasurementStatus(MeasurementStatus::TEST_DATA),
                sensor: 0,
                measurement: Measurement::Glucose(Glucose {
                    value: 4.2,
                    unit: GlucoseUnit::MmolL,
                    sample: SampleType::ControlSolution,
                    meal: Some(MealContext::Bedtime),
                }),
            },
        ];
        let mut buf = [0u8; 2048];
        let n = encode_batch(&readings, &mut buf).unwrap();
        let decoded = decode_batch(&buf[..n]).unwrap();
        for (got, want) in decoded.iter().zip(readings.iter()) {
            assert_eq!(got.as_ref().unwrap(), want);
        }
        let mut tiny = [0u8; 16];
        assert_eq!(
            encode_batch(&readings, &mut tiny),
            Err(EncodeError::BufferFull)
        );
        assert_eq!(encode_batch(&[], &mut buf), Err(EncodeError::BatchSize));
    }
}
