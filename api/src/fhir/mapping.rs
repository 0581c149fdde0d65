//! Store rows → FHIR R4 resources (JSON). Pure functions: no IO, no failure on odd data
//! (a value that cannot be shown becomes a `dataAbsentReason`).
//!
//! Ids: `Patient/{id}`, `Device/{device id with '_' as '.'}`,
//! `Observation/{part}-{seq}-{device}` (part `bp`, `hr`, `spo2`, `glu`, `meal`, `st`: one
//! reading of a cuff gives a BP panel and a heart rate, an oximeter an SpO2 and a heart rate,
//! a meter a glucose and its meal context; `st` holds the sensor-status bits set),
//! `CarePlan/{patient}-{version}`, `ObservationDefinition/{patient}-{version}-{metric}`,
//! `Task/{alert id}`.

use alerting::plan::{Band, CarePlan, Check, Condition, Metric};
use serde_json::{Map, Value, json};
use store::{
    Alert, AlertReading, CarePlanRow, Device, Patient, ReadingKind, Severity, StoredReading,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::codes::{self, Code};
use protocol::reading::MeasurementStatus as Ms;

// ----- ids ---------------------------------------------------------------------------------

/// Which Observation of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The blood-pressure panel (systolic, diastolic, mean as components).
    Bp,
    /// Heart rate from a cuff or an oximeter.
    Hr,
    /// Oxygen saturation (perfusion index as a component).
    Spo2,
    /// Glucose.
    Glu,
    /// The meal context of a glucose reading (PHD IG: its own Observation).
    Meal,
    /// The sensor-status bits set on a reading (PHD IG bits-enumeration Observation).
    Status,
}

impl Part {
    fn as_str(self) -> &'static str {
        match self {
            Part::Bp => "bp",
            Part::Hr => "hr",
            Part::Spo2 => "spo2",
            Part::Glu => "glu",
            Part::Meal => "meal",
            Part::Status => "st",
        }
    }

    fn parse(s: &str) -> Option<Part> {
        [
            Part::Bp,
            Part::Hr,
            Part::Spo2,
            Part::Glu,
            Part::Meal,
            Part::Status,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    /// The Observation a metric of an alert refers to.
    fn of_metric(metric: Option<&str>, kind: Option<ReadingKind>) -> Part {
        match metric {
            Some("systolic" | "diastolic" | "mean_arterial") => Part::Bp,
            Some("pulse") => Part::Hr,
            Some("spo2" | "perfusion_index") => Part::Spo2,
            Some("glucose") => Part::Glu,
            _ => match kind {
                Some(ReadingKind::Spo2) => Part::Spo2,
                Some(ReadingKind::Glucose) => Part::Glu,
                _ => Part::Bp,
            },
        }
    }
}

/// A device id as a FHIR id: device ids are `[A-Za-z0-9_-]`, FHIR ids `[A-Za-z0-9.-]`, and
/// device ids never hold a `.`, so `_` ↔ `.` is reversible.
pub(crate) fn device_fhir_id(device_id: &str) -> String {
    device_id.replace('_', ".")
}

/// The inverse of [`device_fhir_id`].
pub(crate) fn device_from_fhir_id(id: &str) -> String {
    id.replace('.', "_")
}

/// The id of one Observation of a reading.
pub(crate) fn observation_id(part: Part, device_id: &str, seq: i64) -> String {
    format!("{}-{seq}-{}", part.as_str(), device_fhir_id(device_id))
}

/// The inverse of [`observation_id`]: (part, device id, seq).
pub(crate) fn parse_observation_id(id: &str) -> Option<(Part, String, i64)> {
    let (part, rest) = id.split_once('-')?;
    let (seq, device) = rest.split_once('-')?;
    let seq: i64 = seq.parse().ok()?;
    if device.is_empty() || seq < 0 {
        return None;
    }
    Some((Part::parse(part)?, device_from_fhir_id(device), seq))
}

/// `{patient}-{version}` → (patient, version).
pub(crate) fn parse_plan_id(id: &str) -> Option<(i64, i64)> {
    let (p, v) = id.split_once('-')?;
    Some((p.parse().ok()?, v.parse().ok()?))
}

/// `{patient}-{version}-{metric}` → (patient, version, metric).
pub(crate) fn parse_definition_id(id: &str) -> Option<(i64, i64, Metric)> {
    let mut it = id.splitn(3, '-');
    let p = it.next()?.parse().ok()?;
    let v = it.next()?.parse().ok()?;
    let m = codes::metric_from_slug(it.next()?)?;
    Some((p, v, m))
}

fn plan_id(patient: i64, version: i64) -> String {
    format!("{patient}-{version}")
}

fn definition_id(patient: i64, version: i64, metric: Metric) -> String {
    format!("{patient}-{version}-{}", codes::metric_slug(metric))
}

// ----- small builders ----------------------------------------------------------------------

/// RFC 3339, as FHIR `dateTime` and `instant` want it.
pub(crate) fn time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn coding((system, code, display): Code) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn concept(codes: &[Code], text: &str) -> Value {
    json!({"coding": codes.iter().map(|c| coding(*c)).collect::<Vec<_>>(), "text": text})
}

fn reference(kind: &str, id: impl std::fmt::Display) -> Value {
    json!({"reference": format!("{kind}/{id}")})
}

/// One decimal, as the store keeps values (f32 → f64 would show float noise).
fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn quantity(value: f64, metric: Metric) -> Option<Value> {
    value.is_finite().then(|| {
        json!({
            "value": round1(value),
            "unit": codes::unit_display(metric),
            "system": codes::UCUM,
            "code": codes::ucum(metric),
        })
    })
}

fn data_absent(code: &str) -> Value {
    json!({"coding": [{"system": codes::DATA_ABSENT, "code": code}]})
}

fn vital_signs_category() -> Value {
    json!([{"coding": [{"system": codes::OBS_CATEGORY, "code": "vital-signs",
                         "display": "Vital Signs"}]}])
}

fn severity_text(s: Severity) -> &'static str {
    s.as_str()
}

// ----- thresholds from the care plan -------------------------------------------------------

/// The threshold conditions of a care plan, per metric: what `interpretation` and
/// `referenceRange` of a reading, and `ObservationDefinition.qualifiedInterval`, come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    /// Plan version, when the plan is a stored one (not a template).
    pub(crate) version: Option<i64>,
    entries: Vec<Limit>,
}

#[derive(Debug, Clone)]
struct Limit {
    rule_title: String,
    severity: Severity,
    band: Band,
    condition: Condition,
}

impl Limits {
    /// The thresholds of `plan` (glucose bounds normalised to mg/dL).
    pub(crate) fn of(plan: &CarePlan, version: Option<i64>) -> Limits {
        let plan = plan.clone().normalized();
        let mut entries = Vec::new();
        for rule in &plan.rules {
            if let Check::Threshold { bands, .. } = &rule.check {
                for band in bands {
                    for condition in &band.any {
                        entries.push(Limit {
                            rule_title: rule.title.clone(),
                            severity: band.severity,
                            band: band.clone(),
                            condition: condition.clone(),
                        });
                    }
                }
            }
        }
        Limits { version, entries }
    }

    fn of_metric(&self, metric: Metric) -> impl Iterator<Item = &Limit> {
        self.entries
            .iter()
            .filter(move |l| l.condition.metric == metric)
    }

    /// The metrics the plan has thresholds for.
    pub(crate) fn metrics(&self) -> Vec<Metric> {
        codes::METRICS
            .into_iter()
            .filter(|m| self.of_metric(*m).next().is_some())
            .collect()
    }

    /// v3 ObservationInterpretation of one value: the worst band any of whose conditions the
    /// value meets on its own (persistence is the alert engine's business, not a reading's):
    /// HH/LL for high and critical bands, H/L below that, N when no band holds.
    pub(crate) fn interpret(
        &self,
        metric: Metric,
        value: f64,
    ) -> Option<(&'static str, &'static str)> {
        let mut limits = self.of_metric(metric).peekable();
        limits.peek()?;
        let worst = limits
            .filter(|l| l.condition.holds(value))
            .max_by_key(|l| l.severity);
        Some(match worst {
            None => ("N", "Normal"),
            Some(l) => match (l.condition.higher_is_worse(), l.severity >= Severity::High) {
                (true, true) => ("HH", "Critical high"),
                (true, false) => ("H", "High"),
                (false, true) => ("LL", "Critical low"),
                (false, false) => ("L", "Low"),
            },
        })
    }

    /// The range inside which no threshold band holds: the lowest upper threshold and the
    /// highest lower one.
    fn normal_bounds(&self, metric: Metric) -> (Option<f64>, Option<f64>) {
        let mut low: Option<f64> = None;
        let mut high: Option<f64> = None;
        for l in self.of_metric(metric) {
            let c = &l.condition;
            for v in [c.at_least, c.above].into_iter().flatten() {
                high = Some(high.map_or(v, |h| h.min(v)));
            }
            for v in [c.at_most, c.below].into_iter().flatten() {
                low = Some(low.map_or(v, |h| h.max(v)));
            }
        }
        (low, high)
    }

    /// `referenceRange` for a reading of `metric`.
    pub(crate) fn reference_range(&self, metric: Metric) -> Option<Value> {
        let (low, high) = self.normal_bounds(metric);
        if low.is_none() && high.is_none() {
            return None;
        }
        let mut range = Map::new();
        if let Some(q) = low.and_then(|v| quantity(v, metric)) {
            range.insert("low".into(), q);
        }
        if let Some(q) = high.and_then(|v| quantity(v, metric)) {
            range.insert("high".into(), q);
        }
        range.insert(
            "type".into(),
            json!({"coding": [{"system": codes::REFERENCE_RANGE_MEANING, "code": "normal",
                               "display": "Normal Range"}]}),
        );
        let plan = self.version.map_or_else(
            || "care-plan template".to_owned(),
            |v| format!("care plan v{v}"),
        );
        range.insert(
            "text".into(),
            Value::String(format!(
                "Alert thresholds of the {plan}: bounds are where a band starts"
            )),
        );
        Some(Value::Object(range))
    }
}

fn condition_text(c: &Condition, metric: Metric) -> String {
    let unit = codes::unit_display(metric);
    let mut parts = Vec::new();
    if let Some(v) = c.at_least {
        parts.push(format!("≥ {v} {unit}"));
    }
    if let Some(v) = c.above {
        parts.push(format!("> {v} {unit}"));
    }
    if let Some(v) = c.at_most {
        parts.push(format!("≤ {v} {unit}"));
    }
    if let Some(v) = c.below {
        parts.push(format!("< {v} {unit}"));
    }
    parts.join(" and ")
}

// ----- Patient -----------------------------------------------------------------------------

/// A Patient: pseudonymous code as identifier, display name, birth year, managing COT.
pub(crate) fn patient(p: &Patient) -> Value {
    let mut r = json!({
        "resourceType": "Patient",
        "id": p.id.to_string(),
        "meta": {"lastUpdated": time(p.created_at)},
        "identifier": [{"use": "usual", "system": codes::SYS_PATIENT_CODE, "value": p.code}],
        "active": true,
        "name": [{"text": p.display_name}],
        "managingOrganization": {
            "identifier": {"system": codes::SYS_COT, "value": p.cot_id.to_string()},
            "display": format!("COT {}", p.cot_id),
        },
    });
    if let Some(y) = p.birth_year.filter(|y| (1000..=9999).contains(y)) {
        r["birthDate"] = Value::String(y.to_string());
    }
    r
}

// ----- Device ------------------------------------------------------------------------------

/// A Device as the PHD IG's PhdDevice: MDC type, the IEEE 11073 specialisation, firmware,
/// the patient, battery as a property.
pub(crate) fn device(d: &Device) -> Value {
    let kind = ReadingKind::from(d.kind);
    let (spec, spec_text) = codes::specialization(kind);
    let mut r = json!({
        "resourceType": "Device",
        "id": device_fhir_id(&d.id),
        "identifier": [{"system": codes::SYS_DEVICE, "value": d.id}],
        "status": if d.revoked_at.is_some() { "inactive" } else { "active" },
        "deviceName": [{"name": d.id, "type": "user-friendly-name"}],
        "type": concept(&[codes::MDC_MDS_SIMPLE], spec_text),
        "specialization": [{"systemType": concept(&[spec], spec_text), "version": "1"}],
        "patient": reference("Patient", d.patient_id),
    });
    if let Some(model) = d.model.as_deref().filter(|m| !m.trim().is_empty()) {
        r["modelNumber"] = Value::String(model.to_owned());
    }
    if let Some(fw) = d.firmware.as_deref().filter(|f| !f.trim().is_empty()) {
        r["version"] = json!([{"type": {"text": "firmware revision"}, "value": fw}]);
    }
    let mut props = Vec::new();
    if let Some(b) = d.battery_pct {
        props.push(json!({
            "type": {"coding": [{"system": codes::MDC, "code": "67996",
                                 "display": "MDC_ATTR_VAL_BATT_CHARGE"}],
                     "text": "battery level"},
            "valueQuantity": [{"value": b, "unit": "%", "system": codes::UCUM, "code": "%"}],
        }));
    }
    if !props.is_empty() {
        r["property"] = Value::Array(props);
    }
    let mut notes = Vec::new();
    if let Some(seen) = d.last_seen_at {
        notes.push(json!({"time": time(seen), "text": format!(
            "last seen {}; {}", time(seen), if d.online { "online" } else { "offline" })}));
    }
    if !notes.is_empty() {
        r["note"] = Value::Array(notes);
    }
    r
}

// ----- Observation -------------------------------------------------------------------------

/// What the measurement-status bits say, mapped as the PHD IG does.
#[derive(Clone)]
struct StatusMap {
    status: &'static str,
    absent: Option<&'static str>,
    interpretation: Vec<Value>,
    security: Vec<Value>,
}

fn status_map(status: i32) -> StatusMap {
    let ms = Ms(u16::try_from(status & 0xFFFF).unwrap_or(0));
    let mut m = StatusMap {
        status: "final",
        absent: None,
        interpretation: Vec::new(),
        security: Vec::new(),
    };
    let pocd = |code: &str, display: &str| {
        json!({"coding": [{"system": codes::POCD_STATUS, "code": code, "display": display}],
               "text": display})
    };
    if ms.has(Ms::QUESTIONABLE) {
        m.interpretation.push(pocd("questionable", "questionable"));
    }
    if ms.has(Ms::CALIBRATION_ONGOING) {
        m.interpretation
            .push(pocd("calibration-ongoing", "calibration ongoing"));
    }
    if ms.has(Ms::VALIDATED) {
        m.interpretation
            .push(pocd("validated-data", "validated data"));
    }
    if ms.has(Ms::EARLY_INDICATION) {
        m.interpretation
            .push(pocd("early-indication", "early indication"));
        m.status = "preliminary";
    }
    if ms.has(Ms::MSMT_ONGOING) {
        m.interpretation
            .push(pocd("msmt-ongoing", "measurement ongoing"));
        m.status = "preliminary";
    }
    if ms.has(Ms::TEST_DATA) || ms.has(Ms::DEMO_DATA) {
        m.security
            .push(json!({"system": codes::ACT_REASON, "code": "HTEST",
                               "display": "test health data"}));
    }
    if ms.has(Ms::NOT_AVAILABLE) {
        m.absent = Some("not-performed");
    }
    if ms.has(Ms::INVALID) {
        m.absent = Some("error");
        m.status = "entered-in-error";
    }
    m
}

/// Components for the sensor-status bits that are set (`valueBoolean` true), PHD style.
fn sensor_components(kind: ReadingKind, sensor: i64) -> Vec<Value> {
    codes::sensor_bits(kind)
        .iter()
        .filter(|(bit, _, _)| sensor & i64::from(*bit) != 0)
        .map(|(_, phd, name)| {
            let coding = match phd {
                Some(code) => json!({"system": codes::ASN1_TO_HL7, "code": code, "display": name}),
                None => json!({"system": codes::SYS_SENSOR_BIT, "code": name, "display": name}),
            };
            json!({"code": {"coding": [coding], "text": name}, "valueBoolean": true})
        })
        .collect()
}

/// What a reading's Observations share, built once per reading.
struct Common<'a> {
    r: &'a StoredReading,
    limits: Option<&'a Limits>,
    status: StatusMap,
    clock: &'static str,
}

impl Common<'_> {
    fn base(&self, part: Part, codes_: &[Code], text: &str, profile: Option<&str>) -> Value {
        let r = self.r;
        let mut meta = Map::new();
        meta.insert("lastUpdated".into(), Value::String(time(r.received_at)));
        if let Some(p) = profile {
            meta.insert("profile".into(), json!([p]));
        }
        if !self.status.security.is_empty() {
            meta.insert(
                "security".into(),
                Value::Array(self.status.security.clone()),
            );
        }
        if self.clock != "ok" {
            meta.insert(
                "tag".into(),
                json!([{"system": codes::SYS_CLOCK, "code": self.clock,
                         "display": format!("device clock: {}", self.clock)}]),
            );
        }
        let mut o = json!({
            "resourceType": "Observation",
            "id": observation_id(part, &r.device_id, r.seq),
            "meta": meta,
            "identifier": [{"system": codes::SYS_READING,
                            "value": format!("{}/{}/{}", r.device_id, r.seq, part.as_str())}],
            "status": self.status.status,
            "code": concept(codes_, text),
            "subject": reference("Patient", r.patient_id),
            "effectiveDateTime": time(r.measured_at),
            "issued": time(r.received_at),
            "device": reference("Device", device_fhir_id(&r.device_id)),
        });
        if profile.is_some() {
            o["category"] = vital_signs_category();
        }
        let mut notes = Vec::new();
        if r.clock_unset {
            notes.push(
                json!({"text": "The device clock was not set: the effective time is \
                                       the gateway's receive time."}),
            );
        }
        if let Some(u) = r
            .source_unit
            .as_deref()
            .filter(|u| *u == "kPa" || *u == "mmol/L")
        {
            notes.push(
                json!({"text": format!("Converted from {u}, the unit the device reported.")}),
            );
        }
        if !notes.is_empty() {
            o["note"] = Value::Array(notes);
        }
        o
    }

    /// Value, interpretation and reference range of a single-valued Observation (or of a
    /// component), honouring the status bits: no value when the status says there is none.
    fn fill_value(&self, target: &mut Value, metric: Metric, value: Option<f32>) {
        let q = value.and_then(|v| quantity(f64::from(v), metric));
        match (self.status.absent, q) {
            (None, Some(q)) => {
                let mut interp = Vec::new();
                if let Some((code, display)) = self
                    .limits
                    .and_then(|l| value.and_then(|v| l.interpret(metric, f64::from(v))))
                {
                    interp.push(json!({"coding": [{"system": codes::V3_INTERPRETATION,
                                                   "code": code, "display": display}]}));
                }
                target["valueQuantity"] = q;
                if !interp.is_empty() {
                    target["interpretation"] = Value::Array(interp);
                }
                if let Some(range) = self.limits.and_then(|l| l.reference_range(metric)) {
                    target["referenceRange"] = json!([range]);
                }
            }
            (Some(reason), _) => target["dataAbsentReason"] = data_absent(reason),
            (None, None) => target["dataAbsentReason"] = data_absent("unknown"),
        }
    }

    fn add_status_interpretation(&self, o: &mut Value) {
        if self.status.interpretation.is_empty() {
            return;
        }
        let mut all = o["interpretation"].as_array().cloned().unwrap_or_default();
        all.extend(self.status.interpretation.iter().cloned());
        o["interpretation"] = Value::Array(all);
    }
}

/// The Observations of one stored reading, in a fixed order, with their part. `limits` are
/// the thresholds of the care plan in force (for interpretation and reference range).
pub(crate) fn observations(r: &StoredReading, limits: Option<&Limits>) -> Vec<(Part, Value)> {
    let ms = |t: OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let clock =
        protocol::limits::ClockState::assess(ms(r.measured_at), ms(r.received_at), r.clock_unset)
            .as_str();
    let c = Common {
        r,
        limits,
        status: status_map(r.status),
        clock,
    };
    let main = match r.kind {
        ReadingKind::BloodPressure => Part::Bp,
        ReadingKind::Spo2 => Part::Spo2,
        ReadingKind::Glucose => Part::Glu,
    };
    let derived = || {
        json!([reference(
            "Observation",
            observation_id(main, &r.device_id, r.seq)
        )])
    };
    let mut out = Vec::new();
    match r.kind {
        ReadingKind::BloodPressure => {
            let mut o = c.base(
                Part::Bp,
                &codes::BP_PANEL,
                "Blood pressure",
                Some("http://hl7.org/fhir/StructureDefinition/bp"),
            );
            let mut comps = Vec::new();
            for (metric, value, text) in [
                (Metric::Systolic, r.systolic, "Systolic blood pressure"),
                (Metric::Diastolic, r.diastolic, "Diastolic blood pressure"),
                (Metric::MeanArterial, r.mean_arterial, "Mean blood pressure"),
            ] {
                if metric == Metric::MeanArterial && value.is_none() {
                    continue;
                }
                let mut comp = json!({"code": concept(&codes::bp_component(metric), text)});
                c.fill_value(&mut comp, metric, value);
                comps.push(comp);
            }
            o["component"] = Value::Array(comps);
            c.add_status_interpretation(&mut o);
            out.push((Part::Bp, o));
        }
        ReadingKind::Spo2 => {
            let mut o = c.base(
                Part::Spo2,
                &codes::SPO2,
                "Oxygen saturation by pulse oximetry",
                Some("http://hl7.org/fhir/StructureDefinition/oxygensat"),
            );
            c.fill_value(&mut o, Metric::Spo2, r.spo2);
            if let Some(pi) = r.perfusion_index {
                let mut comp = json!({"code": concept(&codes::PERFUSION_INDEX, "Perfusion index")});
                c.fill_value(&mut comp, Metric::PerfusionIndex, Some(pi));
                o["component"] = json!([comp]);
            }
            c.add_status_interpretation(&mut o);
            out.push((Part::Spo2, o));
        }
        ReadingKind::Glucose => {
            let sample = r.glucose_sample.as_deref();
            let mut o = c.base(Part::Glu, &codes::glucose(sample), "Glucose", None);
            if sample == Some("control_solution") {
                // A meter check: not the patient's value, so no interpretation against the
                // plan, and marked as test data.
                o["meta"]["security"] = json!([{"system": codes::ACT_REASON, "code": "HTEST",
                                                  "display": "test health data"}]);
                let quiet = Common {
                    limits: None,
                    status: c.status.clone(),
                    ..c
                };
                quiet.fill_value(&mut o, Metric::Glucose, r.glucose_mg_dl);
            } else {
                c.fill_value(&mut o, Metric::Glucose, r.glucose_mg_dl);
            }
            if let Some(s) = sample {
                o["component"] = json!([{"code": {"text": "sample type"},
                                         "valueString": s.replace('_', " ")}]);
            }
            c.add_status_interpretation(&mut o);
            out.push((Part::Glu, o));
            // The meal context as the PHD IG models it: its own coded Observation, derived
            // from the glucose one.
            if let Some(meal) = r.glucose_meal.as_deref() {
                let mut m = c.base(Part::Meal, &[codes::MEAL_CONTEXT], "Meal context", None);
                m["status"] = Value::String("final".into());
                let coding = match codes::meal(meal) {
                    Some(code) => coding(code),
                    None => json!({"system": codes::SYS_MEAL, "code": meal}),
                };
                m["valueCodeableConcept"] = json!({"coding": [coding], "text": meal});
                m["derivedFrom"] = derived();
                out.push((Part::Meal, m));
            }
        }
    }
    if matches!(r.kind, ReadingKind::BloodPressure | ReadingKind::Spo2) && r.pulse.is_some() {
        let mut o = c.base(
            Part::Hr,
            &codes::heart_rate(r.kind),
            "Heart rate",
            Some("http://hl7.org/fhir/StructureDefinition/heartrate"),
        );
        c.fill_value(&mut o, Metric::Pulse, r.pulse);
        c.add_status_interpretation(&mut o);
        o["derivedFrom"] = derived();
        out.push((Part::Hr, o));
    }
    // Sensor-status bits as the PHD IG's bits-enumeration Observation: one component per bit
    // set, `valueBoolean` true, derived from the measurement.
    let bits = sensor_components(r.kind, r.sensor);
    if !bits.is_empty() {
        let mut o = c.base(
            Part::Status,
            &[codes::sensor_status(r.kind)],
            "Measurement and sensor status",
            None,
        );
        // The bits are what the device reported, whatever the value's own validity.
        o["status"] = Value::String("final".into());
        o["component"] = Value::Array(bits);
        o["derivedFrom"] = derived();
        out.push((Part::Status, o));
    }
    out
}

/// The one Observation `part` of a reading, if the reading has it.
pub(crate) fn observation(r: &StoredReading, limits: Option<&Limits>, part: Part) -> Option<Value> {
    observations(r, limits)
        .into_iter()
        .find(|(p, _)| *p == part)
        .map(|(_, o)| o)
}

/// Whether an Observation's `code` matches a FHIR token (`system|code`, `code`, `system|`).
pub(crate) fn code_matches(o: &Value, token: &str) -> bool {
    let (system, code) = match token.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, token),
    };
    o["code"]["coding"].as_array().is_some_and(|codings| {
        codings.iter().any(|c| {
            system.is_none_or(|s| (s.is_empty() && c.get("system").is_none()) || c["system"] == s)
                && (code.is_empty() || c["code"] == code)
        })
    })
}

// ----- care plan ---------------------------------------------------------------------------

fn kind_code(kind: ReadingKind) -> Vec<Code> {
    match kind {
        ReadingKind::BloodPressure => codes::BP_PANEL.to_vec(),
        ReadingKind::Spo2 => codes::SPO2.to_vec(),
        ReadingKind::Glucose => codes::glucose(Some("capillary_whole_blood")),
    }
}

fn kind_text(kind: ReadingKind) -> &'static str {
    match kind {
        ReadingKind::BloodPressure => "Blood pressure",
        ReadingKind::Spo2 => "Oxygen saturation by pulse oximetry",
        ReadingKind::Glucose => "Capillary glucose",
    }
}

/// A care-plan version as the HL7 Italia telemonitoring IG models it: a CarePlan whose
/// activities instantiate (contained) ActivityDefinitions, each with the measurement timing
/// and `observationRequirement` → the ObservationDefinitions holding the alarm thresholds.
/// `superseded_at`: when the next version replaced it (`None`: the current version).
pub(crate) fn care_plan(
    row: &CarePlanRow,
    plan: &CarePlan,
    superseded_at: Option<OffsetDateTime>,
) -> Value {
    let limits = Limits::of(plan, Some(row.version));
    let metrics = limits.metrics();
    // The kinds the plan asks for: scheduled ones and those of metrics only one kind
    // measures; a metric several kinds carry (pulse) joins those, or the first of its own.
    let mut kinds: Vec<ReadingKind> = plan.schedule.iter().map(|e| e.kind).collect();
    for m in metrics.iter().filter(|m| m.kinds().len() == 1) {
        if !kinds.contains(&m.kinds()[0]) {
            kinds.push(m.kinds()[0]);
        }
    }
    for m in metrics.iter().filter(|m| m.kinds().len() > 1) {
        if let Some(first) = m.kinds().first()
            && !m.kinds().iter().any(|k| kinds.contains(k))
        {
            kinds.push(*first);
        }
    }
    let current = superseded_at.is_none();
    let mut contained = Vec::new();
    let mut activities = Vec::new();
    for kind in kinds {
        let ad_id = format!("ad-{}", kind.as_str());
        let requirements: Vec<Value> = metrics
            .iter()
            .filter(|m| m.kinds().contains(&kind))
            .map(|m| {
                reference(
                    "ObservationDefinition",
                    definition_id(row.patient_id, row.version, *m),
                )
            })
            .collect();
        let mut ad = json!({
            "resourceType": "ActivityDefinition",
            "id": ad_id,
            "status": if current { "active" } else { "retired" },
            "kind": "ServiceRequest",
            "code": concept(&kind_code(kind), kind_text(kind)),
        });
        let mut detail = json!({
            "kind": "ServiceRequest",
            "instantiatesCanonical": [format!("#{ad_id}")],
            "code": concept(&kind_code(kind), kind_text(kind)),
            "status": if current { "in-progress" } else { "stopped" },
        });
        if let Some(e) = plan.schedule.iter().find(|e| e.kind == kind) {
            let timing = json!({"repeat": {"frequency": 1, "period": round1(e.every_hours),
                                           "periodUnit": "h"}});
            ad["timingTiming"] = timing.clone();
            detail["scheduledTiming"] = timing;
            detail["description"] = Value::String(format!(
                "One reading every {} h (missed after {} h more)",
                round1(e.every_hours),
                round1(e.grace_hours)
            ));
        }
        if !requirements.is_empty() {
            ad["observationRequirement"] = Value::Array(requirements);
        }
        contained.push(ad);
        activities.push(json!({"detail": detail}));
    }
    let mut notes = vec![
        json!({"authorString": row.author, "time": time(row.created_at),
                                "text": format!("Reason for this version: {}", row.reason)}),
    ];
    for rule in &plan.rules {
        let what = match &rule.check {
            Check::Threshold { .. } => continue,
            Check::Trend {
                metric,
                delta,
                baseline_days,
                severity,
                ..
            } => format!(
                "trend: {} {delta} from the {baseline_days}-day median → {}",
                metric.as_str(),
                severity_text(*severity)
            ),
            Check::Adherence { kind, severity } => format!(
                "adherence: no {} reading within the schedule → {}",
                kind.as_str(),
                severity_text(*severity)
            ),
            Check::DeviceOffline {
                after_hours,
                severity,
            } => {
                format!(
                    "device offline for {after_hours} h → {}",
                    severity_text(*severity)
                )
            }
            Check::LowBattery {
                below_pct,
                severity,
            } => {
                format!(
                    "device battery below {below_pct} % → {}",
                    severity_text(*severity)
                )
            }
            Check::Clock { severity } => {
                format!(
                    "device clock not set or implausible → {}",
                    severity_text(*severity)
                )
            }
            Check::Average {
                any,
                days,
                severity,
                ..
            } => {
                let bounds: Vec<String> = any
                    .iter()
                    .map(|c| {
                        let v = c.at_least.or(c.above).or(c.at_most).or(c.below);
                        format!("{} {}", c.metric.as_str(), v.unwrap_or_default())
                    })
                    .collect();
                format!(
                    "{days}-day mean reaching {} → {}",
                    bounds.join(" or "),
                    severity_text(*severity)
                )
            }
        };
        notes.push(json!({"text": format!("Rule {} ({}): {what}", rule.id, rule.title)}));
    }
    let mut period = json!({"start": time(row.created_at)});
    if let Some(end) = superseded_at {
        period["end"] = Value::String(time(end));
    }
    let title = match row.template.as_deref() {
        Some(t) => format!("Piano di telemonitoraggio v{} ({t})", row.version),
        None => format!("Piano di telemonitoraggio v{}", row.version),
    };
    let mut r = json!({
        "resourceType": "CarePlan",
        "id": plan_id(row.patient_id, row.version),
        "meta": {"versionId": row.version.to_string(), "lastUpdated": time(row.created_at)},
        "contained": contained,
        "identifier": [{"system": "urn:sentinella:care-plan",
                        "value": format!("{}/{}", row.patient_id, row.version)}],
        // The current version is active; an older one was revoked when it was replaced.
        "status": if current { "active" } else { "revoked" },
        "intent": "plan",
        "title": title,
        "subject": reference("Patient", row.patient_id),
        "period": period,
        "created": time(row.created_at),
        "author": {"display": row.author},
        "activity": activities,
        "note": notes,
    });
    if contained.is_empty() {
        r.as_object_mut().map(|o| o.remove("contained"));
    }
    if activities.is_empty() {
        r.as_object_mut().map(|o| o.remove("activity"));
    }
    if row.version > 1 {
        r["replaces"] = json!([reference(
            "CarePlan",
            plan_id(row.patient_id, row.version - 1)
        )]);
    }
    r
}

/// The ObservationDefinition of one metric of a plan version: the alarm thresholds as
/// `qualifiedInterval`s (category `critical`, one per band condition, `condition` saying
/// the severity and persistence) plus the `reference` interval where no band holds.
/// `None` when the plan has no threshold on the metric.
pub(crate) fn observation_definition(
    patient_id: i64,
    version: i64,
    plan: &CarePlan,
    metric: Metric,
) -> Option<Value> {
    let limits = Limits::of(plan, Some(version));
    let mut intervals = Vec::new();
    let (low, high) = limits.normal_bounds(metric);
    if low.is_none() && high.is_none() {
        return None;
    }
    let mut normal = Map::new();
    if let Some(q) = low.and_then(|v| quantity(v, metric)) {
        normal.insert("low".into(), q);
    }
    if let Some(q) = high.and_then(|v| quantity(v, metric)) {
        normal.insert("high".into(), q);
    }
    intervals.push(json!({
        "category": "reference",
        "range": normal,
        "condition": "no alert band holds (bounds are where a band starts)",
    }));
    for l in limits.of_metric(metric) {
        let c = &l.condition;
        let mut range = Map::new();
        if let Some(q) = c.at_least.or(c.above).and_then(|v| quantity(v, metric)) {
            range.insert("low".into(), q);
        }
        if let Some(q) = c.at_most.or(c.below).and_then(|v| quantity(v, metric)) {
            range.insert("high".into(), q);
        }
        let mut persistence = format!("{} consecutive reading(s)", l.band.consecutive);
        if let Some(m) = l.band.within_minutes {
            persistence.push_str(&format!(" within {m} min"));
        }
        intervals.push(json!({
            "category": "critical",
            "range": range,
            "condition": format!("{}: {} → alert \"{}\" on {persistence}",
                                 l.severity.as_str(), condition_text(c, metric), l.rule_title),
        }));
    }
    let unit = codes::ucum(metric);
    Some(json!({
        "resourceType": "ObservationDefinition",
        "id": definition_id(patient_id, version, metric),
        "identifier": [{"system": "urn:sentinella:care-plan-threshold",
                        "value": format!("{patient_id}/{version}/{}", codes::metric_slug(metric))}],
        "category": vital_signs_category(),
        "code": concept(&codes::metric_codes(metric), metric.as_str()),
        "permittedDataType": ["Quantity"],
        "multipleResultsAllowed": false,
        "quantitativeDetails": {
            "unit": {"coding": [{"system": codes::UCUM, "code": unit,
                                 "display": codes::unit_display(metric)}]},
            "decimalPrecision": 1,
        },
        "qualifiedInterval": intervals,
    }))
}

// ----- Task (alerts) -----------------------------------------------------------------------

fn task_status(a: &Alert) -> &'static str {
    match a.workflow {
        store::Workflow::New => "requested",
        store::Workflow::Acknowledged if a.assignee.is_some() => "in-progress",
        store::Workflow::Acknowledged => "accepted",
        store::Workflow::Resolved => "completed",
    }
}

fn task_priority(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "stat",
        Severity::High => "asap",
        Severity::Medium => "urgent",
        Severity::Low | Severity::Info => "routine",
    }
}

/// An alert as a Task for the COT: status from the workflow, priority from the severity,
/// owner the assignee, `focus` the first triggering Observation and `input` all of them,
/// `businessStatus` the alert's condition (active/cleared), `basedOn` the care plan version.
/// `kind_of` gives the kind of a reading's device (to pick the Observation of a rule that
/// names no metric); `plan_stored` whether the alert's plan version is a stored CarePlan.
pub(crate) fn task(
    a: &Alert,
    readings: &[AlertReading],
    kind_of: &dyn Fn(&str) -> Option<ReadingKind>,
    plan_stored: bool,
) -> Value {
    let obs: Vec<String> = readings
        .iter()
        .map(|r| {
            let part = Part::of_metric(a.metric.as_deref(), kind_of(&r.device_id));
            observation_id(part, &r.device_id, r.seq)
        })
        .collect();
    let mut t = json!({
        "resourceType": "Task",
        "id": a.id.to_string(),
        "meta": {"lastUpdated": time(a.updated_at)},
        "identifier": [{"system": codes::SYS_ALERT, "value": a.id.to_string()}],
        "status": task_status(a),
        "businessStatus": {"coding": [{"system": codes::SYS_ALERT_CONDITION, "code": a.condition}],
                           "text": format!("condition {}", a.condition)},
        "intent": "order",
        "priority": task_priority(a.severity),
        "code": {"coding": [{"system": codes::SYS_RULE, "code": a.rule_id}], "text": a.rule_kind},
        "description": a.title,
        "for": reference("Patient", a.patient_id),
        "authoredOn": time(a.opened_at),
        "lastModified": time(a.updated_at),
        "requester": {"display": "Sentinella alert engine"},
        "reasonCode": {"coding": [{"system": codes::SYS_SEVERITY, "code": a.severity.as_str()}],
                       "text": format!("severity {}", a.severity.as_str())},
    });
    if let Some(first) = obs.first() {
        t["focus"] = reference("Observation", first);
    }
    if !obs.is_empty() {
        t["input"] = Value::Array(
            obs.iter()
                .map(|id| {
                    json!({"type": {"text": "triggering observation"},
                                 "valueReference": reference("Observation", id)})
                })
                .collect(),
        );
    }
    if let Some(owner) = a.assignee.as_deref() {
        t["owner"] = json!({"display": owner});
    }
    // Only a stored version is a CarePlan; a template (no stored plan yet) has no resource.
    if let Some(v) = a.plan_version.filter(|_| plan_stored) {
        t["basedOn"] = json!([reference("CarePlan", plan_id(a.patient_id, v))]);
    }
    let mut period = json!({"start": time(a.opened_at)});
    if let Some(end) = a.resolved_at {
        period["end"] = Value::String(time(end));
    }
    t["executionPeriod"] = period;
    if let Some(due) = a.due_at {
        t["restriction"] = json!({"period": {"end": time(due)}});
    }
    if let Some(outcome) = a.outcome.as_deref() {
        t["statusReason"] = json!({"coding": [{"system": codes::SYS_OUTCOME, "code": outcome}],
                                   "text": outcome.replace('_', " ")});
    }
    let mut notes = Vec::new();
    if let (Some(at), Some(by)) = (a.acknowledged_at, a.acknowledged_by.as_deref()) {
        notes.push(json!({"authorString": by, "time": time(at), "text": "acknowledged"}));
    }
    if let (Some(at), Some(by)) = (a.resolved_at, a.resolved_by.as_deref()) {
        notes.push(
            json!({"authorString": by, "time": time(at), "text": format!(
            "resolved: {}", a.outcome.as_deref().unwrap_or("no outcome"))}),
        );
    }
    if a.escalation_level > 0 {
        notes.push(json!({"text": format!("escalated {} time(s)", a.escalation_level)}));
    }
    let unit = a.unit.as_deref().unwrap_or("");
    let values: Vec<String> = [
        ("first", a.first_value),
        ("worst", a.worst_value),
        ("last", a.last_value),
    ]
    .into_iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n} {} {unit}", round1(v))))
    .collect();
    if !values.is_empty() {
        notes.push(json!({"text": format!("{} reading(s); {}", a.count, values.join(", "))}));
    }
    if !notes.is_empty() {
        t["note"] = Value::Array(notes);
    }
    t
}

// ----- Bundle, OperationOutcome, CapabilityStatement ---------------------------------------

/// A searchset Bundle: `resources` are the page, `total` all matches (when known).
pub(crate) fn searchset(
    base: &str,
    resources: Vec<Value>,
    total: Option<usize>,
    self_url: &str,
    next_url: Option<&str>,
) -> Value {
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let url = format!(
                "{base}/{}/{}",
                r["resourceType"].as_str().unwrap_or(""),
                r["id"].as_str().unwrap_or("")
            );
            json!({"fullUrl": url, "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    let mut links = vec![json!({"relation": "self", "url": self_url})];
    if let Some(next) = next_url {
        links.push(json!({"relation": "next", "url": next}));
    }
    let mut b = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": time(OffsetDateTime::now_utc()),
        "link": links,
    });
    if let Some(total) = total {
        b["total"] = json!(total);
    }
    if !entry.is_empty() {
        b["entry"] = Value::Array(entry);
    }
    b
}

/// An OperationOutcome with one issue.
pub(crate) fn operation_outcome(severity: &str, code: &str, text: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    })
}

/// What this server offers.
pub(crate) fn capability_statement() -> Value {
    let search =
        |name: &str, ty: &str, doc: &str| json!({"name": name, "type": ty, "documentation": doc});
    let count = search("_count", "number", "page size, 1-1000 (default 100)");
    let offset = search(
        "_offset",
        "number",
        "matches to skip (paging; next links carry it)",
    );
    let read_search = |ty: &str, params: Vec<Value>| {
        json!({
            "type": ty,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": params,
        })
    };
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-30",
        "publisher": "Sentinella",
        "kind": "instance",
        "software": {"name": "Sentinella", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Sentinella telemonitoring gateway, read-only FHIR R4 API"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read-only. Every request needs Authorization: Bearer <API token>; \
                              a token sees the patients of its COTs only (others are not found).",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                         "code": "OAuth", "display": "OAuth"}],
                             "text": "Bearer API tokens"}],
                "description": "Bearer tokens issued by `sentinella token create`.",
            },
            "resource": [
                read_search("Patient", vec![
                    search("_id", "token", "logical id"),
                    search("identifier", "token", "patient code"),
                    count.clone(), offset.clone()]),
                read_search("Device", vec![
                    search("patient", "reference", "the patient's devices"),
                    count.clone(), offset.clone()]),
                read_search("Observation", vec![
                    search("patient", "reference", "required: Patient/{id} or {id}"),
                    search("subject", "reference", "as patient"),
                    search("code", "token", "system|code, code, comma = or (LOINC or MDC)"),
                    search("date", "date", "effective time, with ge/gt/le/lt/eq; repeat for a range"),
                    search("category", "token", "vital-signs"),
                    count.clone(), offset.clone()]),
                read_search("CarePlan", vec![
                    search("patient", "reference", "required"),
                    search("status", "token", "active or revoked"),
                    count.clone(), offset.clone()]),
                {"type": "ObservationDefinition", "interaction": [{"code": "read"}]},
                read_search("Task", vec![
                    search("patient", "reference", "the alerts of a patient"),
                    search("status", "token", "requested, accepted, in-progress, completed (comma = or)"),
                    count.clone(), offset.clone()]),
                read_search("DiagnosticReport", vec![
                    search("patient", "reference", "required: the telemonitoring reports of the last 30 days and of the previous month; read any period as tm-{patient}-{yyyymmdd}-{yyyymmdd}"),
                    count.clone(), offset.clone()]),
                read_search("DocumentReference", vec![
                    search("patient", "reference", "required: as DiagnosticReport; the PDF in Italian and English"),
                    count, offset]),
            ],
        }],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    fn reading(kind: ReadingKind) -> StoredReading {
        StoredReading {
            device_id: "bp_1".into(),
            seq: 7,
            patient_id: 3,
            kind,
            measured_at: datetime!(2026-11-01 08:00 UTC),
            received_at: datetime!(2026-11-01 08:00:05 UTC),
            clock_unset: false,
            status: 0,
            sensor: 0,
            systolic: Some(185.0),
            diastolic: Some(95.0),
            mean_arterial: None,
            pulse: Some(72.0),
            spo2: Some(87.3),
            perfusion_index: Some(2.1),
            glucose_mg_dl: Some(52.0),
            glucose_sample: Some("capillary_whole_blood".into()),
            glucose_meal: Some("fasting".into()),
            source_unit: None,
        }
    }

    fn limits(template: &str) -> Limits {
        Limits::of(&alerting::plan::template(template).unwrap(), Some(2))
    }

    #[test]
    fn ids_round_trip() {
        for (part, device, seq) in [
            (Part::Bp, "bp_1", 7),
            (Part::Hr, "a-b_c", 0),
            (Part::Glu, "x", 99),
        ] {
            let id = observation_id(part, device, seq);
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
                "{id}"
            );
            assert_eq!(
                parse_observation_id(&id),
                Some((part, device.to_owned(), seq))
            );
        }
        for bad in ["", "bp", "bp-x-d", "zz-1-d", "bp-1-", "bp--1-d"] {
            assert_eq!(parse_observation_id(bad), None, "{bad}");
        }
        assert_eq!(parse_plan_id("3-2"), Some((3, 2)));
        assert_eq!(
            parse_definition_id("3-2-sys"),
            Some((3, 2, Metric::Systolic))
        );
        assert_eq!(parse_definition_id("3-2-nope"), None);
    }

    #[test]
    fn interpretation_follows_the_plan_bands() {
        let l = limits("hypertension");
        let check = |m, v, want| assert_eq!(l.interpret(m, v).map(|x| x.0), want, "{m:?} {v}");
        check(Metric::Systolic, 120.0, Some("N"));
        check(Metric::Systolic, 165.0, Some("H"));
        check(Metric::Systolic, 185.0, Some("HH"));
        check(Metric::Systolic, 95.0, Some("L"));
        check(Metric::Systolic, 85.0, Some("LL"));
        check(Metric::Pulse, 35.0, Some("LL"));
        check(Metric::Glucose, 40.0, None);
        let d = limits("diabetes");
        assert_eq!(d.interpret(Metric::Glucose, 50.0).map(|x| x.0), Some("LL"));
        assert_eq!(d.interpret(Metric::Glucose, 100.0).map(|x| x.0), Some("N"));
        let r = l.reference_range(Metric::Systolic).unwrap();
        assert_eq!(r["low"]["value"], 100.0);
        assert_eq!(r["high"]["value"], 160.0);
        assert_eq!(r["high"]["code"], "mm[Hg]");
    }

    #[test]
    fn blood_pressure_is_a_panel_and_a_heart_rate() {
        let l = limits("hypertension");
        let obs = observations(&reading(ReadingKind::BloodPressure), Some(&l));
        assert_eq!(obs.len(), 2);
        let (_, bp) = &obs[0];
        assert_eq!(bp["id"], "bp-7-bp.1");
        assert_eq!(bp["code"]["coding"][0]["system"], codes::MDC);
        assert_eq!(bp["code"]["coding"][0]["code"], "150020");
        assert_eq!(bp["code"]["coding"][1]["code"], "85354-9");
        assert_eq!(bp["component"][0]["code"]["coding"][1]["code"], "8480-6");
        assert_eq!(bp["component"][0]["valueQuantity"]["value"], 185.0);
        assert_eq!(
            bp["component"][0]["interpretation"][0]["coding"][0]["code"],
            "HH"
        );
        assert_eq!(bp["component"][1]["code"]["coding"][1]["code"], "8462-4");
        assert_eq!(bp["status"], "final");
        assert!(bp.get("valueQuantity").is_none());
        let (_, hr) = &obs[1];
        assert_eq!(hr["code"]["coding"][0]["code"], "149546");
        assert_eq!(hr["code"]["coding"][1]["code"], "8867-4");
        assert_eq!(hr["valueQuantity"]["code"], "/min");
        assert_eq!(hr["derivedFrom"][0]["reference"], "Observation/bp-7-bp.1");
    }

    #[test]
    fn status_bits_map_as_the_phd_ig_does() {
        let mut r = reading(ReadingKind::Spo2);
        r.status = i32::from(Ms::INVALID);
        let (_, o) = observations(&r, None).remove(0);
        assert_eq!(o["status"], "entered-in-error");
        assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], "error");
        assert!(o.get("valueQuantity").is_none());

        r.status = i32::from(Ms::QUESTIONABLE | Ms::TEST_DATA | Ms::EARLY_INDICATION);
        r.sensor = i64::from(protocol::reading::sensor::PLX_LOW_PERFUSION);
        r.clock_unset = true;
        let (_, o) = observations(&r, None).remove(0);
        assert_eq!(o["status"], "preliminary");
        assert_eq!(o["valueQuantity"]["value"], 87.3);
        let interp: Vec<&str> = o["interpretation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(interp, ["questionable", "early-indication"]);
        assert_eq!(o["meta"]["security"][0]["code"], "HTEST");
        assert_eq!(o["meta"]["tag"][0]["code"], "unset");
        assert_eq!(o["component"][0]["code"]["coding"][0]["code"], "150448");
        assert_eq!(o["component"].as_array().unwrap().len(), 1);
        let st = observation(&r, None, Part::Status).unwrap();
        assert_eq!(st["id"], "st-7-bp.1");
        assert_eq!(st["code"]["coding"][0]["code"], "150604");
        assert_eq!(st["status"], "final");
        assert_eq!(st["component"][0]["code"]["coding"][0]["code"], "150604.10");
        assert_eq!(st["component"][0]["valueBoolean"], true);
        assert_eq!(st["derivedFrom"][0]["reference"], "Observation/spo2-7-bp.1");
        r.sensor = 0;
        assert!(observation(&r, None, Part::Status).is_none());

        r.status = i32::from(Ms::NOT_AVAILABLE);
        let (_, o) = observations(&r, None).remove(0);
        assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], "not-performed");
    }

    #[test]
    fn glucose_code_follows_the_sample_type() {
        let mut r = reading(ReadingKind::Glucose);
        let o = observation(&r, Some(&limits("diabetes")), Part::Glu).unwrap();
        assert_eq!(o["code"]["coding"][0]["code"], "160184");
        assert_eq!(o["code"]["coding"][1]["code"], "41653-7");
        assert_eq!(o["valueQuantity"]["code"], "mg/dL");
        assert_eq!(o["interpretation"][0]["coding"][0]["code"], "LL");
        let meal = observation(&r, None, Part::Meal).unwrap();
        assert_eq!(meal["code"]["coding"][0]["code"], "8417864");
        assert_eq!(meal["valueCodeableConcept"]["coding"][0]["code"], "8417876");
        assert_eq!(
            meal["derivedFrom"][0]["reference"],
            "Observation/glu-7-bp.1"
        );
        assert!(code_matches(&o, "http://loinc.org|41653-7"));
        assert!(code_matches(&o, "41653-7"));
        assert!(!code_matches(&o, "http://loinc.org|2339-0"));
        r.glucose_sample = Some("control_solution".into());
        let o = observation(&r, Some(&limits("diabetes")), Part::Glu).unwrap();
        assert_eq!(o["code"]["coding"].as_array().unwrap().len(), 1);
        assert!(o.get("interpretation").is_none());
        assert_eq!(o["meta"]["security"][0]["code"], "HTEST");
    }

    fn alert(workflow: store::Workflow, assignee: Option<&str>, severity: Severity) -> Alert {
        let t = datetime!(2026-11-01 08:00 UTC);
        Alert {
            id: 5,
            patient_id: 3,
            cot_id: 1,
            rule_id: "bp-high".into(),
            rule_kind: "threshold".into(),
            title: "Blood pressure high".into(),
            severity,
            condition: "active".into(),
            workflow,
            outcome: None,
            assignee: assignee.map(str::to_owned),
            plan_version: Some(2),
            metric: Some("systolic".into()),
            unit: Some("mmHg".into()),
            count: 1,
            first_value: Some(185.0),
            worst_value: Some(185.0),
            confirmation: None,
            last_value: Some(185.0),
            opened_at: t,
            last_triggered_at: t,
            last_measured_at: Some(t),
            cleared_at: None,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            resolved_by: None,
            due_at: None,
            escalation_level: 0,
            escalated_at: None,
            interventions: 0,
            retry_at: None,
            updated_at: t,
        }
    }

    #[test]
    fn alerts_become_tasks() {
        use store::Workflow::{Acknowledged, New, Resolved};
        let check = |workflow, assignee, severity, status: &str, priority: &str| {
            let readings = [AlertReading {
                device_id: "bp_1".into(),
                seq: 7,
                measured_at: datetime!(2026-11-01 08:00 UTC),
                value: Some(185.0),
            }];
            let t = task(
                &alert(workflow, assignee, severity),
                &readings,
                &|_| None,
                true,
            );
            assert_eq!(t["status"], status, "{workflow:?} {assignee:?}");
            assert_eq!(t["priority"], priority, "{severity:?}");
            assert_eq!(t["focus"]["reference"], "Observation/bp-7-bp.1");
            assert_eq!(t["basedOn"][0]["reference"], "CarePlan/3-2");
            assert_eq!(
                t["owner"]["display"],
                assignee.map_or(Value::Null, Value::from)
            );
        };
        check(New, None, Severity::Critical, "requested", "stat");
        check(Acknowledged, None, Severity::High, "accepted", "asap");
        check(
            Acknowledged,
            Some("giulia"),
            Severity::Medium,
            "in-progress",
            "urgent",
        );
        check(
            Resolved,
            Some("giulia"),
            Severity::Low,
            "completed",
            "routine",
        );
        check(New, None, Severity::Info, "requested", "routine");
        let t = task(&alert(New, None, Severity::Low), &[], &|_| None, false);
        assert!(t.get("basedOn").is_none() && t.get("focus").is_none());
    }

    #[test]
    fn care_plan_points_at_its_threshold_definitions() {
        let plan = alerting::plan::template("hypertension").unwrap();
        let row = CarePlanRow {
            id: 1,
            patient_id: 3,
            version: 2,
            template: Some("hypertension".into()),
            plan: String::new(),
            author: "token:doc".into(),
            reason: "enrolment".into(),
            created_at: datetime!(2026-11-01 08:00 UTC),
        };
        let cp = care_plan(&row, &plan, None);
        assert_eq!(cp["status"], "active");
        assert_eq!(cp["replaces"][0]["reference"], "CarePlan/3-1");
        let ad = &cp["contained"][0];
        assert_eq!(ad["resourceType"], "ActivityDefinition");
        let reqs: Vec<&str> = ad["observationRequirement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reference"].as_str().unwrap())
            .collect();
        assert!(reqs.contains(&"ObservationDefinition/3-2-sys"), "{reqs:?}");
        assert_eq!(
            cp["activity"][0]["detail"]["instantiatesCanonical"][0],
            "#ad-bp"
        );
        // The pulse rule joins the BP activity; no SpO2 activity for a hypertension plan.
        assert_eq!(cp["activity"].as_array().unwrap().len(), 1);
        let od = observation_definition(3, 2, &plan, Metric::Systolic).unwrap();
        let crit: Vec<&Value> = od["qualifiedInterval"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|q| q["category"] == "critical")
            .collect();
        assert!(crit.iter().any(|q| q["range"]["low"]["value"] == 180.0));
        assert!(observation_definition(3, 2, &plan, Metric::Glucose).is_none());
        let old = care_plan(&row, &plan, Some(datetime!(2026-11-02 08:00 UTC)));
        assert_eq!(old["status"], "revoked");
    }
}
