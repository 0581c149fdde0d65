//! Typed readings: what a home device measured, in declared units, with its status bits.
//!
//! Kinds follow the Bluetooth health services and their IEEE 11073 specialisations
//! (10407 blood pressure, 10404 pulse oximeter, 10417 glucose meter). Values keep the unit the
//! device declared; [`BloodPressure::mmhg`] and [`Glucose::mg_dl`] give the canonical units the
//! store keeps (UCUM `mm[Hg]`, `%`, `/min`, `mg/dL`).

/// Milligrams per decilitre in one millimole per litre of glucose (molar mass 180.16 g/mol).
pub const MG_DL_PER_MMOL_L: f32 = 18.016;

/// Millimetres of mercury in one kilopascal.
pub const MMHG_PER_KPA: f32 = 7.500_617;

/// One reading as the device made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The device's own monotonic sequence number, kept across reboots; with the device id it
    /// identifies the reading everywhere (dedupe, ack).
    pub seq: u32,
    /// Measurement time from the device clock, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// The device clock was not set when it measured, so `ts_ms` is not a wall-clock time
    /// (PLX "device clock not set" flag); the gateway then uses the receive time.
    pub clock_unset: bool,
    /// IEEE 11073-20601 Measurement-Status bits.
    pub status: MeasurementStatus,
    /// Kind-specific device/sensor status bits exactly as the Bluetooth characteristic defines
    /// them: BP Measurement Status (0x2A35), PLX Device and Sensor Status (0x2A5E), or Glucose
    /// Sensor Status Annunciation (0x2A18). See [`sensor`].
    pub sensor: u32,
    /// What was measured.
    pub measurement: Measurement,
}

/// The measured values of one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measurement {
    /// A blood-pressure monitor (Bluetooth BLS 0x1810, IEEE 11073-10407).
    BloodPressure(BloodPressure),
    /// A pulse oximeter spot check (Bluetooth PLXS 0x1822, IEEE 11073-10404).
    Spo2(Spo2),
    /// A glucose meter (Bluetooth GLS 0x1808, IEEE 11073-10417).
    Glucose(Glucose),
}

impl Measurement {
    /// The kind of this measurement.
    pub fn kind(&self) -> Kind {
        match self {
            Measurement::BloodPressure(_) => Kind::BloodPressure,
            Measurement::Spo2(_) => Kind::Spo2,
            Measurement::Glucose(_) => Kind::Glucose,
        }
    }
}

/// Measurement kinds, as named on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `"bp"`
    BloodPressure,
    /// `"spo2"`
    Spo2,
    /// `"glucose"`
    Glucose,
}

impl Kind {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::BloodPressure => "bp",
            Kind::Spo2 => "spo2",
            Kind::Glucose => "glucose",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bp" => Some(Kind::BloodPressure),
            "spo2" => Some(Kind::Spo2),
            "glucose" => Some(Kind::Glucose),
            _ => None,
        }
    }
}

/// Blood pressure with the cuff's derived values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BloodPressure {
    /// Systolic pressure, in `unit`.
    pub systolic: f32,
    /// Diastolic pressure, in `unit`.
    pub diastolic: f32,
    /// Mean arterial pressure, in `unit`, when the device reports it.
    pub mean: Option<f32>,
    /// Pulse rate, beats per minute.
    pub pulse: Option<f32>,
    /// Unit of the three pressures.
    pub unit: PressureUnit,
}

impl BloodPressure {
    /// (systolic, diastolic, mean) in mmHg, the canonical unit.
    pub fn mmhg(&self) -> (f32, f32, Option<f32>) {
        let k = match self.unit {
            PressureUnit::MmHg => 1.0,
            PressureUnit::KPa => MMHG_PER_KPA,
        };
        (
            self.systolic * k,
            self.diastolic * k,
            self.mean.map(|m| m * k),
        )
    }
}

/// Pressure units a cuff may declare (Bluetooth BP flags bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureUnit {
    /// `"mmHg"` (UCUM `mm[Hg]`).
    MmHg,
    /// `"kPa"`.
    KPa,
}

impl PressureUnit {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PressureUnit::MmHg => "mmHg",
            PressureUnit::KPa => "kPa",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mmHg" => Some(PressureUnit::MmHg),
            "kPa" => Some(PressureUnit::KPa),
            _ => None,
        }
    }
}

/// A pulse-oximeter spot check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spo2 {
    /// Oxygen saturation, percent.
    pub percent: f32,
    /// Pulse rate, beats per minute.
    pub pulse: Option<f32>,
    /// Perfusion index (pulse amplitude index), percent.
    pub perfusion_index: Option<f32>,
}

/// A blood-glucose measurement with its Glucose Measurement Context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Glucose {
    /// Concentration, in `unit`.
    pub value: f32,
    /// Unit of `value`.
    pub unit: GlucoseUnit,
    /// Sample type (Bluetooth Glucose Measurement type nibble).
    pub sample: SampleType,
    /// Meal context (Glucose Measurement Context), when the patient gave one.
    pub meal: Option<MealContext>,
}

impl Glucose {
    /// The concentration in mg/dL, the canonical unit.
    pub fn mg_dl(&self) -> f32 {
        match self.unit {
            GlucoseUnit::MgDl => self.value,
            GlucoseUnit::MmolL => self.value * MG_DL_PER_MMOL_L,
        }
    }
}

/// Glucose units (UCUM spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlucoseUnit {
    /// `"mg/dL"`
    MgDl,
    /// `"mmol/L"`
    MmolL,
}

impl GlucoseUnit {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            GlucoseUnit::MgDl => "mg/dL",
            GlucoseUnit::MmolL => "mmol/L",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mg/dL" => Some(GlucoseUnit::MgDl),
            "mmol/L" => Some(GlucoseUnit::MmolL),
            _ => None,
        }
    }
}

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }

            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// Glucose sample type (Bluetooth Glucose Measurement, type nibble).
    SampleType {
        /// Capillary whole blood (type 1).
        CapillaryWholeBlood = "capillary_whole_blood",
        /// Capillary plasma (type 2).
        CapillaryPlasma = "capillary_plasma",
        /// Venous whole blood (type 3).
        VenousWholeBlood = "venous_whole_blood",
        /// Venous plasma (type 4).
        VenousPlasma = "venous_plasma",
        /// Arterial whole blood (type 5).
        ArterialWholeBlood = "arterial_whole_blood",
        /// Arterial plasma (type 6).
        ArterialPlasma = "arterial_plasma",
        /// Undetermined whole blood or plasma (types 7, 8).
        Undetermined = "undetermined",
        /// Interstitial fluid (type 9).
        InterstitialFluid = "interstitial_fluid",
        /// Control solution (type 10): a meter check, never a patient value.
        ControlSolution = "control_solution",
    }
}

wire_enum! {
    /// Meal context (Bluetooth Glucose Measurement Context, meal field).
    MealContext {
        /// Before a meal (1).
        Preprandial = "preprandial",
        /// After a meal (2).
        Postprandial = "postprandial",
        /// Fasting (3).
        Fasting = "fasting",
        /// Casual, no meal relation (4).
        Casual = "casual",
        /// At bedtime (5).
        Bedtime = "bedtime",
    }
}

/// IEEE 11073-20601 Measurement-Status (16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MeasurementStatus(pub u16);

impl MeasurementStatus {
    /// The value is invalid.
    pub const INVALID: u16 = 0x8000;
    /// The value is questionable.
    pub const QUESTIONABLE: u16 = 0x4000;
    /// No value is available.
    pub const NOT_AVAILABLE: u16 = 0x2000;
    /// The device was calibrating.
    pub const CALIBRATION_ONGOING: u16 = 0x1000;
    /// Test data, not a patient's.
    pub const TEST_DATA: u16 = 0x0800;
    /// Demonstration data, not a patient's.
    pub const DEMO_DATA: u16 = 0x0400;
    /// Validated (e.g. by a clinician).
    pub const VALIDATED: u16 = 0x0080;
    /// Early indication.
    pub const EARLY_INDICATION: u16 = 0x0040;
    /// The measurement was still ongoing.
    pub const MSMT_ONGOING: u16 = 0x0020;
    /// Bits defined by 20601; the others must be zero.
    pub const DEFINED: u16 = 0xFCE0;

    /// Whether `bit` (one of the constants) is set.
    pub const fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Whether the reading describes the patient: not invalid, unavailable, test or demo data.
    pub const fn is_patient_data(self) -> bool {
        !self.has(Self::INVALID | Self::NOT_AVAILABLE | Self::TEST_DATA | Self::DEMO_DATA)
    }
}

/// Kind-specific sensor status bits, as the Bluetooth characteristics define them.
pub mod sensor {
    /// Blood Pressure Measurement Status (0x2A35): body movement during measurement.
    pub const BP_BODY_MOVEMENT: u32 = 1 << 0;
    /// BP: cuff too loose.
    pub const BP_CUFF_TOO_LOOSE: u32 = 1 << 1;
    /// BP: irregular pulse detected.
    pub const BP_IRREGULAR_PULSE: u32 = 1 << 2;
    /// BP: pulse rate above the upper limit (bits 3-4 = 1).
    pub const BP_PULSE_ABOVE_RANGE: u32 = 1 << 3;
    /// BP: pulse rate below the lower limit (bits 3-4 = 2).
    pub const BP_PULSE_BELOW_RANGE: u32 = 2 << 3;
    /// BP: improper measurement position.
    pub const BP_IMPROPER_POSITION: u32 = 1 << 5;
    /// Bits the BP status defines.
    pub const BP_DEFINED: u32 = 0x3F;

    /// PLX Device and Sensor Status (24 bits): extended display update ongoing.
    pub const PLX_EXTENDED_DISPLAY_UPDATE: u32 = 1 << 0;
    /// PLX: equipment malfunction detected.
    pub const PLX_EQUIPMENT_MALFUNCTION: u32 = 1 << 1;
    /// PLX: signal processing irregularity.
    pub const PLX_SIGNAL_IRREGULARITY: u32 = 1 << 2;
    /// PLX: inadequate signal.
    pub const PLX_INADEQUATE_SIGNAL: u32 = 1 << 3;
    /// PLX: poor signal.
    pub const PLX_POOR_SIGNAL: u32 = 1 << 4;
    /// PLX: low perfusion.
    pub const PLX_LOW_PERFUSION: u32 = 1 << 5;
    /// PLX: erratic signal.
    pub const PLX_ERRATIC_SIGNAL: u32 = 1 << 6;
    /// PLX: non-pulsatile signal.
    pub const PLX_NON_PULSATILE: u32 = 1 << 7;
    /// PLX: questionable pulse.
    pub const PLX_QUESTIONABLE_PULSE: u32 = 1 << 8;
    /// PLX: signal analysis ongoing.
    pub const PLX_ANALYSIS_ONGOING: u32 = 1 << 9;
    /// PLX: sensor interference.
    pub const PLX_SENSOR_INTERFERENCE: u32 = 1 << 10;
    /// PLX: sensor unconnected to user.
    pub const PLX_SENSOR_UNCONNECTED: u32 = 1 << 11;
    /// PLX: unknown sensor connected.
    pub const PLX_UNKNOWN_SENSOR: u32 = 1 << 12;
    /// PLX: sensor displaced.
    pub const PLX_SENSOR_DISPLACED: u32 = 1 << 13;
    /// PLX: sensor malfunctioning.
    pub const PLX_SENSOR_MALFUNCTION: u32 = 1 << 14;
    /// PLX: sensor disconnected.
    pub const PLX_SENSOR_DISCONNECTED: u32 = 1 << 15;
    /// Bits the PLX status defines.
    pub const PLX_DEFINED: u32 = 0xFFFF;

    /// Glucose Sensor Status Annunciation (0x2A18): device battery low.
    pub const GLU_BATTERY_LOW: u32 = 1 << 0;
    /// Glucose: sensor malfunction.
    pub const GLU_SENSOR_MALFUNCTION: u32 = 1 << 1;
    /// Glucose: sample size insufficient.
    pub const GLU_SAMPLE_SIZE_INSUFFICIENT: u32 = 1 << 2;
    /// Glucose: strip insertion error.
    pub const GLU_STRIP_INSERTION_ERROR: u32 = 1 << 3;
    /// Glucose: strip type incorrect.
    pub const GLU_STRIP_TYPE_INCORRECT: u32 = 1 << 4;
    /// Glucose: result higher than the device can process.
    pub const GLU_RESULT_TOO_HIGH: u32 = 1 << 5;
    /// Glucose: result lower than the device can process.
    pub const GLU_RESULT_TOO_LOW: u32 = 1 << 6;
    /// Glucose: sensor temperature too high.
    pub const GLU_TEMPERATURE_TOO_HIGH: u32 = 1 << 7;
    /// Glucose: sensor temperature too low.
    pub const GLU_TEMPERATURE_TOO_LOW: u32 = 1 << 8;
    /// Glucose: read interrupted.
    pub const GLU_READ_INTERRUPTED: u32 = 1 << 9;
    /// Glucose: general device fault.
    pub const GLU_GENERAL_FAULT: u32 = 1 << 10;
    /// Glucose: time fault.
    pub const GLU_TIME_FAULT: u32 = 1 << 11;
    /// Bits the glucose annunciation defines.
    pub const GLU_DEFINED: u32 = 0x0FFF;
}
