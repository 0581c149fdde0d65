//! Code systems and codes the FHIR export uses, each with where it comes from
//! (`clinical-defaults.md` §2 and §4 in the team's notes).
//!
//! - LOINC for the vital-signs profiles (85354-9 BP panel, 8480-6/8462-4/8478-0, 8867-4 heart
//!   rate, 2708-6 + 59408-5 SpO2, glucose by sample type).
//! - IEEE 11073-10101 (MDC) as the primary coding of device data, as the HL7 PHD IG requires:
//!   32-bit codes, partition × 65536 + term code.
//! - UCUM units.
//! - PHD IG `ASN1ToHL7` codes (`{MDC code}.{bit}`) for sensor-status bits, and the PoCD
//!   measurement-status code system for the measurement-status interpretations.

use alerting::plan::Metric;
use store::ReadingKind;

pub(crate) const LOINC: &str = "http://loinc.org";
pub(crate) const MDC: &str = "urn:iso:std:iso:11073:10101";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";
pub(crate) const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub(crate) const V3_INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
pub(crate) const POCD_STATUS: &str = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status";
pub(crate) const DATA_ABSENT: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
pub(crate) const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
pub(crate) const ASN1_TO_HL7: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/ASN1ToHL7";
pub(crate) const REFERENCE_RANGE_MEANING: &str =
    "http://terminology.hl7.org/CodeSystem/referencerange-meaning";

/// Sentinella's own identifier and code systems (URNs: no resolvable server is implied).
pub(crate) const SYS_PATIENT_CODE: &str = "urn:sentinella:patient-code";
pub(crate) const SYS_COT: &str = "urn:sentinella:cot";
pub(crate) const SYS_DEVICE: &str = "urn:sentinella:device";
pub(crate) const SYS_READING: &str = "urn:sentinella:reading";
pub(crate) const SYS_ALERT: &str = "urn:sentinella:alert";
pub(crate) const SYS_RULE: &str = "urn:sentinella:care-plan-rule";
pub(crate) const SYS_ALERT_CONDITION: &str = "urn:sentinella:alert-condition";
pub(crate) const SYS_OUTCOME: &str = "urn:sentinella:alert-outcome";
pub(crate) const SYS_SEVERITY: &str = "urn:sentinella:alert-severity";
pub(crate) const SYS_CLOCK: &str = "urn:sentinella:clock";
pub(crate) const SYS_SENSOR_BIT: &str = "urn:sentinella:sensor-status";
pub(crate) const SYS_MEAL: &str = "urn:sentinella:glucose-meal";

/// A (system, code, display) triple.
pub(crate) type Code = (&'static str, &'static str, &'static str);

/// MDC_MOC_VMS_MDS_SIMP: the PHD IG's Device.type for a simple personal health device.
pub(crate) const MDC_MDS_SIMPLE: Code = (MDC, "65573", "MDC_MOC_VMS_MDS_SIMP");

/// The IEEE 11073 device specialisation of a device kind (MDC_DEV_SPEC_PROFILE_*:
/// partition 8, terms 4103 / 4100 / 4113 for 10407 / 10404 / 10417).
pub(crate) fn specialization(kind: ReadingKind) -> (Code, &'static str) {
    match kind {
        ReadingKind::BloodPressure => (
            (MDC, "528391", "MDC_DEV_SPEC_PROFILE_BPM"),
            "IEEE 11073-10407 blood pressure monitor",
        ),
        ReadingKind::Spo2 => (
            (MDC, "528388", "MDC_DEV_SPEC_PROFILE_PULS_OXIM"),
            "IEEE 11073-10404 pulse oximeter",
        ),
        ReadingKind::Glucose => (
            (MDC, "528401", "MDC_DEV_SPEC_PROFILE_GLUCOSE"),
            "IEEE 11073-10417 glucose meter",
        ),
    }
}

/// The BP panel (MDC_PRESS_BLD_NONINV, LOINC 85354-9).
pub(crate) const BP_PANEL: [Code; 2] = [
    (MDC, "150020", "MDC_PRESS_BLD_NONINV"),
    (
        LOINC,
        "85354-9",
        "Blood pressure panel with all children optional",
    ),
];

/// Heart rate from a BP cuff (MDC_PULS_RATE_NON_INV) or an oximeter
/// (MDC_PULS_OXIM_PULS_RATE), LOINC 8867-4 either way.
pub(crate) fn heart_rate(kind: ReadingKind) -> [Code; 2] {
    let mdc = match kind {
        ReadingKind::Spo2 => (MDC, "149530", "MDC_PULS_OXIM_PULS_RATE"),
        _ => (MDC, "149546", "MDC_PULS_RATE_NON_INV"),
    };
    [mdc, (LOINC, "8867-4", "Heart rate")]
}

/// SpO2: MDC first, then the core oxygensat code 2708-6 and the pulse-oximetry 59408-5
/// (US Core requires both).
pub(crate) const SPO2: [Code; 3] = [
    (MDC, "150456", "MDC_PULS_OXIM_SAT_O2"),
    (LOINC, "2708-6", "Oxygen saturation in Arterial blood"),
    (
        LOINC,
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
    ),
];

/// Perfusion index (MDC_PULS_OXIM_PERF_REL, partition 2 term 19376); no LOINC code.
pub(crate) const PERFUSION_INDEX: [Code; 1] = [(MDC, "150448", "MDC_PULS_OXIM_PERF_REL")];

/// Glucose meal context (MDC_CTXT_GLU_MEAL, partition 128 term 29256).
pub(crate) const MEAL_CONTEXT: Code = (MDC, "8417864", "MDC_CTXT_GLU_MEAL");

/// A meal context value (terms 29260–29272); bedtime has no code we could verify, so it
/// stays in Sentinella's own system.
pub(crate) fn meal(meal: &str) -> Option<Code> {
    Some(match meal {
        "preprandial" => (MDC, "8417868", "MDC_CTXT_GLU_MEAL_PREPRANDIAL"),
        "postprandial" => (MDC, "8417872", "MDC_CTXT_GLU_MEAL_POSTPRANDIAL"),
        "fasting" => (MDC, "8417876", "MDC_CTXT_GLU_MEAL_FASTING"),
        "casual" => (MDC, "8417880", "MDC_CTXT_GLU_MEAL_CASUAL"),
        _ => return None,
    })
}

/// The status attribute whose bits [`sensor_bits`] maps: MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS,
/// MDC_PULS_OXIM_DEV_STATUS (partition 2 term 19532), MDC_GLU_METER_DEV_STATUS (partition
/// 128 term 29144).
pub(crate) fn sensor_status(kind: ReadingKind) -> Code {
    match kind {
        ReadingKind::BloodPressure => (MDC, "8410608", "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS"),
        ReadingKind::Spo2 => (MDC, "150604", "MDC_PULS_OXIM_DEV_STATUS"),
        ReadingKind::Glucose => (MDC, "8417752", "MDC_GLU_METER_DEV_STATUS"),
    }
}

/// The codes of a blood-pressure component.
pub(crate) fn bp_component(metric: Metric) -> [Code; 2] {
    match metric {
        Metric::Diastolic => [
            (MDC, "150022", "MDC_PRESS_BLD_NONINV_DIA"),
            (LOINC, "8462-4", "Diastolic blood pressure"),
        ],
        Metric::MeanArterial => [
            (MDC, "150023", "MDC_PRESS_BLD_NONINV_MEAN"),
            (LOINC, "8478-0", "Mean blood pressure"),
        ],
        _ => [
            (MDC, "150021", "MDC_PRESS_BLD_NONINV_SYS"),
            (LOINC, "8480-6", "Systolic blood pressure"),
        ],
    }
}

/// Glucose by sample type (Bluetooth Glucose "type" as stored): the MDC concentration code
/// (partition 2: 160184 + 4 per type) and the LOINC code for that specimen, when one fits.
/// Capillary plasma-calibrated meters are coded 41653-7 too, as is usual in practice.
/// Control solution has no LOINC code: it is a meter check, not a patient value.
pub(crate) fn glucose(sample: Option<&str>) -> Vec<Code> {
    let (mdc, loinc): (Code, Option<Code>) = match sample.unwrap_or("") {
        "capillary_whole_blood" => (
            (MDC, "160184", "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
            Some(GLU_CAPILLARY),
        ),
        "capillary_plasma" => (
            (MDC, "160188", "MDC_CONC_GLU_CAPILLARY_PLASMA"),
            Some(GLU_CAPILLARY),
        ),
        "venous_whole_blood" => (
            (MDC, "160192", "MDC_CONC_GLU_VENOUS_WHOLEBLOOD"),
            Some(GLU_BLOOD),
        ),
        "venous_plasma" => (
            (MDC, "160196", "MDC_CONC_GLU_VENOUS_PLASMA"),
            Some(GLU_PLASMA),
        ),
        "arterial_whole_blood" => (
            (MDC, "160200", "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD"),
            Some(GLU_BLOOD),
        ),
        "arterial_plasma" => (
            (MDC, "160204", "MDC_CONC_GLU_ARTERIAL_PLASMA"),
            Some(GLU_PLASMA),
        ),
        "control_solution" => ((MDC, "160208", "MDC_CONC_GLU_CONTROL"), None),
        "interstitial_fluid" => (
            (MDC, "160212", "MDC_CONC_GLU_ISF"),
            Some((
                LOINC,
                "99504-3",
                "Glucose [Mass/volume] in Interstitial fluid",
            )),
        ),
        _ => ((MDC, "160020", "MDC_CONC_GLU_GEN"), Some(GLU_BLOOD)),
    };
    let mut codes = vec![mdc];
    codes.extend(loinc);
    codes
}

const GLU_CAPILLARY: Code = (
    LOINC,
    "41653-7",
    "Glucose [Mass/volume] in Capillary blood by Glucometer",
);
const GLU_BLOOD: Code = (LOINC, "2339-0", "Glucose [Mass/volume] in Blood");
const GLU_PLASMA: Code = (LOINC, "2345-7", "Glucose [Mass/volume] in Serum or Plasma");

/// The codes of a metric as the ObservationDefinition of a care plan states them.
pub(crate) fn metric_codes(metric: Metric) -> Vec<Code> {
    match metric {
        Metric::Systolic | Metric::Diastolic | Metric::MeanArterial => {
            bp_component(metric).to_vec()
        }
        // The plan's pulse rule applies to cuffs and oximeters alike: LOINC only.
        Metric::Pulse => vec![(LOINC, "8867-4", "Heart rate")],
        Metric::Spo2 => SPO2.to_vec(),
        Metric::PerfusionIndex => PERFUSION_INDEX.to_vec(),
        Metric::Glucose => vec![(MDC, "160020", "MDC_CONC_GLU_GEN"), GLU_BLOOD],
    }
}

/// The UCUM code of a metric's stored unit.
pub(crate) fn ucum(metric: Metric) -> &'static str {
    match metric {
        Metric::Systolic | Metric::Diastolic | Metric::MeanArterial => "mm[Hg]",
        Metric::Pulse => "/min",
        Metric::Spo2 | Metric::PerfusionIndex => "%",
        Metric::Glucose => "mg/dL",
    }
}

/// The human unit shown next to the UCUM code.
pub(crate) fn unit_display(metric: Metric) -> &'static str {
    match metric {
        Metric::Systolic | Metric::Diastolic | Metric::MeanArterial => "mmHg",
        Metric::Pulse => "beats/minute",
        Metric::Spo2 | Metric::PerfusionIndex => "%",
        Metric::Glucose => "mg/dL",
    }
}

/// A metric's short, id-safe name (FHIR ids allow `[A-Za-z0-9.-]`).
pub(crate) fn metric_slug(metric: Metric) -> &'static str {
    match metric {
        Metric::Systolic => "sys",
        Metric::Diastolic => "dia",
        Metric::MeanArterial => "map",
        Metric::Pulse => "pulse",
        Metric::Spo2 => "spo2",
        Metric::PerfusionIndex => "pi",
        Metric::Glucose => "glu",
    }
}

/// Every metric, in the order the export lists them.
pub(crate) const METRICS: [Metric; 7] = Metric::ALL;

/// The inverse of [`metric_slug`].
pub(crate) fn metric_from_slug(slug: &str) -> Option<Metric> {
    METRICS.into_iter().find(|m| metric_slug(*m) == slug)
}

/// Sensor-status bits (as the Bluetooth characteristic defines them) → PHD IG `ASN1ToHL7`
/// code (`{MDC attribute}.{11073 bit}`) and a display; `None` where the PHD IG has no code
/// for the bit (Sentinella's own URN system is used then).
pub(crate) fn sensor_bits(
    kind: ReadingKind,
) -> &'static [(u32, Option<&'static str>, &'static str)] {
    use protocol::reading::sensor as s;
    match kind {
        // MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS (8410608): the BLE bit order.
        ReadingKind::BloodPressure => &[
            (s::BP_BODY_MOVEMENT, Some("8410608.0"), "body-movement"),
            (s::BP_CUFF_TOO_LOOSE, Some("8410608.1"), "cuff-too-loose"),
            (s::BP_IRREGULAR_PULSE, Some("8410608.2"), "irregular-pulse"),
            (
                s::BP_PULSE_ABOVE_RANGE,
                Some("8410608.3"),
                "pulse-over-range-limit",
            ),
            (
                s::BP_PULSE_BELOW_RANGE,
                Some("8410608.4"),
                "pulse-under-range-limit",
            ),
            (
                s::BP_IMPROPER_POSITION,
                Some("8410608.5"),
                "improper-body-position",
            ),
        ],
        // MDC_PULS_OXIM_DEV_STATUS (150604): 11073 numbers the 16 bits from the most
        // significant, so the PHD bit is 15 − the BLE bit.
        ReadingKind::Spo2 => &[
            (
                s::PLX_EXTENDED_DISPLAY_UPDATE,
                Some("150604.15"),
                "device-extended-update",
            ),
            (
                s::PLX_EQUIPMENT_MALFUNCTION,
                Some("150604.14"),
                "device-equipment-malfunction",
            ),
            (
                s::PLX_SIGNAL_IRREGULARITY,
                Some("150604.13"),
                "signal-processing-irregularity",
            ),
            (
                s::PLX_INADEQUATE_SIGNAL,
                Some("150604.12"),
                "signal-inadequate",
            ),
            (s::PLX_POOR_SIGNAL, Some("150604.11"), "signal-poor"),
            (
                s::PLX_LOW_PERFUSION,
                Some("150604.10"),
                "signal-low-perfusion",
            ),
            (s::PLX_ERRATIC_SIGNAL, Some("150604.9"), "signal-erratic"),
            (
                s::PLX_NON_PULSATILE,
                Some("150604.8"),
                "signal-non-pulsatile",
            ),
            (
                s::PLX_QUESTIONABLE_PULSE,
                Some("150604.7"),
                "signal-pulse-questionable",
            ),
            (
                s::PLX_ANALYSIS_ONGOING,
                Some("150604.6"),
                "signal-searching",
            ),
            (
                s::PLX_SENSOR_INTERFERENCE,
                Some("150604.5"),
                "sensor-interference",
            ),
            (s::PLX_SENSOR_UNCONNECTED, Some("150604.4"), "sensor-off"),
            (
                s::PLX_UNKNOWN_SENSOR,
                Some("150604.3"),
                "sensor-unsupported",
            ),
            (
                s::PLX_SENSOR_DISPLACED,
                Some("150604.2"),
                "sensor-displaced",
            ),
            (
                s::PLX_SENSOR_MALFUNCTION,
                Some("150604.1"),
                "sensor-malfunction",
            ),
            (
                s::PLX_SENSOR_DISCONNECTED,
                Some("150604.0"),
                "sensor-disconnected",
            ),
        ],
        // MDC_GLU_METER_DEV_STATUS annunciation (8417752): BLE bits 0-10 in the same order;
        // the BLE "time fault" (bit 11) differs from the PHD's bit 11, so it stays ours.
        ReadingKind::Glucose => &[
            (s::GLU_BATTERY_LOW, Some("8417752.0"), "device-battery-low"),
            (
                s::GLU_SENSOR_MALFUNCTION,
                Some("8417752.1"),
                "sensor-malfunction",
            ),
            (
                s::GLU_SAMPLE_SIZE_INSUFFICIENT,
                Some("8417752.2"),
                "sensor-sample-size-insufficient",
            ),
            (
                s::GLU_STRIP_INSERTION_ERROR,
                Some("8417752.3"),
                "sensor-strip-insertion",
            ),
            (
                s::GLU_STRIP_TYPE_INCORRECT,
                Some("8417752.4"),
                "sensor-strip-type-incorrect",
            ),
            (
                s::GLU_RESULT_TOO_HIGH,
                Some("8417752.5"),
                "sensor-result-too-high",
            ),
            (
                s::GLU_RESULT_TOO_LOW,
                Some("8417752.6"),
                "sensor-result-too-low",
            ),
            (
                s::GLU_TEMPERATURE_TOO_HIGH,
                Some("8417752.7"),
                "sensor-temp-too-high",
            ),
            (
                s::GLU_TEMPERATURE_TOO_LOW,
                Some("8417752.8"),
                "sensor-temp-too-low",
            ),
            (
                s::GLU_READ_INTERRUPTED,
                Some("8417752.9"),
                "sensor-read-interrupt",
            ),
            (s::GLU_GENERAL_FAULT, Some("8417752.10"), "device-gen-fault"),
            (s::GLU_TIME_FAULT, None, "time-fault"),
        ],
    }
}
