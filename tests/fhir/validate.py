#!/usr/bin/env python3
"""Validates FHIR R4 resources (JSON files) with an independent implementation.

Structure, data types, cardinalities, required elements, unknown elements and choice types
([x] one of) are checked by the R4 (4.0.1) models of `fhir.resources` 6.4.0 (pydantic), which
are generated from the R4 StructureDefinitions. On top of them this script checks what those
models leave out and the Sentinella resources rely on:

- codes with a *required* binding to a closed value set (the models carry the allowed codes
  as `enum_values` but do not enforce them);
- the R4 vital-signs profiles (bp, heartrate, oxygensat) where a resource claims them in
  `meta.profile`: category, LOINC codes of the Observation and its components, UCUM units;
- invariants obs-6 (dataAbsentReason only without a value), obs-7 (no component with the
  Observation's own code), vs-2 (a vital sign has a value, a dataAbsentReason, components or
  members), dom-3 (every contained resource is referenced), bdl-7-like fullUrl/id agreement
  in Bundles, and that every Bundle entry is itself valid.

Usage:
  validate.py DIR|FILE...     validate every *.json; exit 1 if any resource is invalid
  validate.py --self-test     feed known-invalid resources; exit 1 if any is accepted
"""

import json
import pathlib
import sys

import fhir.resources
from fhir.resources import construct_fhir_element
from fhir.resources.core.fhirabstractmodel import FHIRAbstractModel
from fhir.resources.resource import Resource

assert fhir.resources.__fhir_version__ == "4.0.1", fhir.resources.__fhir_version__

VITAL_SIGNS_PROFILES = (
    "http://hl7.org/fhir/StructureDefinition/vitalsigns",
    "http://hl7.org/fhir/StructureDefinition/bp",
    "http://hl7.org/fhir/StructureDefinition/heartrate",
    "http://hl7.org/fhir/StructureDefinition/oxygensat",
)


# Required bindings whose code lists the models cut short with "+" (R4 value sets).
FULL_VALUE_SETS = {
    "Observation.status": ["registered", "preliminary", "final", "amended", "corrected",
                           "cancelled", "entered-in-error", "unknown"],
    "Task.status": ["draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
                    "in-progress", "on-hold", "failed", "completed", "entered-in-error"],
    "Task.intent": ["unknown", "proposal", "plan", "order", "original-order", "reflex-order",
                    "filler-order", "instance-order", "option"],
    "CarePlan.status": ["draft", "active", "on-hold", "revoked", "completed", "entered-in-error",
                        "unknown"],
    "CarePlan.intent": ["proposal", "plan", "order", "option"],
    "CarePlan.activity.detail.status": ["not-started", "scheduled", "in-progress", "on-hold",
                                        "completed", "cancelled", "stopped", "unknown",
                                        "entered-in-error"],
    "Bundle.type": ["document", "message", "transaction", "transaction-response", "batch",
                    "batch-response", "history", "searchset", "collection"],
    "ActivityDefinition.status": ["draft", "active", "retired", "unknown"],
    "CapabilityStatement.status": ["draft", "active", "retired", "unknown"],
}


def closed_codes(model, path, errors):
    """Required-binding codes outside their (closed) value set."""
    for name, field in model.__fields__.items():
        value = getattr(model, name, None)
        if value is None:
            continue
        key = "".join(ch for ch in f"{path}.{field.alias}" if ch not in "[]0123456789")
        allowed = FULL_VALUE_SETS.get(key) or field.field_info.extra.get("enum_values")
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            where = f"{path}.{field.alias}" + (f"[{i}]" if isinstance(value, list) else "")
            if allowed and "+" not in allowed and isinstance(v, str) and v not in allowed:
                errors.append(f"{where}: {v!r} is not one of {allowed}")
            if isinstance(v, Resource):
                closed_codes(v, v.resource_type, errors)
            elif isinstance(v, FHIRAbstractModel):
                closed_codes(v, where, errors)


def references(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                out.add(v)
            elif k == "instantiatesCanonical" and isinstance(v, list):
                out.update(x for x in v if isinstance(x, str))
            else:
                references(v, out)
    elif isinstance(node, list):
        for v in node:
            references(v, out)


def has_value(d):
    return any(k.startswith("value") for k in d)


# What the R4 vital-signs profiles fix, per profile: the LOINC code of Observation.code, the
# LOINC codes its components must carry, and the UCUM unit of its values.
VITAL_PROFILES = {
    "http://hl7.org/fhir/StructureDefinition/bp": ("85354-9", ["8480-6", "8462-4"], "mm[Hg]"),
    "http://hl7.org/fhir/StructureDefinition/heartrate": ("8867-4", [], "/min"),
    "http://hl7.org/fhir/StructureDefinition/oxygensat": ("2708-6", [], "%"),
}


def loinc_codes(concept):
    return {c.get("code") for c in (concept or {}).get("coding", []) if c.get("system") == "http://loinc.org"}


def vital_signs(res, path, errors):
    """The R4 vital-signs profile rules a structure check misses (category, codes, units)."""
    profiles = res.get("meta", {}).get("profile", [])
    if not any(p in VITAL_SIGNS_PROFILES for p in profiles):
        return
    cats = {(c.get("system"), c.get("code")) for cc in res.get("category", []) for c in cc.get("coding", [])}
    if ("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs") not in cats:
        errors.append(f"{path}: vital signs without category vital-signs")
    if "subject" not in res or "effectiveDateTime" not in res and "effectivePeriod" not in res:
        errors.append(f"{path}: vital signs need subject and effective[x]")
    for profile in profiles:
        if profile not in VITAL_PROFILES:
            continue
        code, components, unit = VITAL_PROFILES[profile]
        if code not in loinc_codes(res.get("code")):
            errors.append(f"{path}: {profile} needs LOINC {code} in code")
        present = set().union(*[loinc_codes(c.get("code")) for c in res.get("component", [])] or [set()])
        for needed in components:
            if needed not in present:
                errors.append(f"{path}: {profile} needs a component coded LOINC {needed}")
        quantities = [res.get("valueQuantity")] + [
            c.get("valueQuantity") for c in res.get("component", []) if loinc_codes(c.get("code")) & set(components)]
        for q in filter(None, quantities):
            if q.get("system") != "http://unitsofmeasure.org" or q.get("code") != unit:
                errors.append(f"{path}: {profile} values must be UCUM {unit}, got {q.get('code')!r}")


def invariants(res, path, errors):
    rt = res.get("resourceType")
    if rt == "Observation":
        if has_value(res) and "dataAbsentReason" in res:
            errors.append(f"{path}: obs-6 dataAbsentReason with a value")
        own = {(c.get("system"), c.get("code")) for c in res.get("code", {}).get("coding", [])}
        for i, comp in enumerate(res.get("component", [])):
            if has_value(comp) and "dataAbsentReason" in comp:
                errors.append(f"{path}.component[{i}]: obs-6 dataAbsentReason with a value")
            codes = {(c.get("system"), c.get("code")) for c in comp.get("code", {}).get("coding", [])}
            if codes & own:
                errors.append(f"{path}.component[{i}]: obs-7 component has the Observation's code")
        vital_signs(res, path, errors)
        if any(p in VITAL_SIGNS_PROFILES for p in res.get("meta", {}).get("profile", [])):
            if not (has_value(res) or "dataAbsentReason" in res or res.get("component") or res.get("hasMember")):
                errors.append(f"{path}: vs-2 no value, dataAbsentReason, component or member")
            for i, comp in enumerate(res.get("component", [])):
                if comp.get("valueBoolean") is None and not (has_value(comp) or "dataAbsentReason" in comp):
                    errors.append(f"{path}.component[{i}]: vs-3 no value or dataAbsentReason")
    contained = res.get("contained", [])
    if contained:
        refs = set()
        references({k: v for k, v in res.items() if k != "contained"}, refs)
        for c in contained:
            if f"#{c.get('id')}" not in refs:
                errors.append(f"{path}: dom-3 contained {c.get('resourceType')}/{c.get('id')} is not referenced")
            if "contained" in c:
                errors.append(f"{path}: dom-2 contained resource has contained resources")
    if rt == "Bundle":
        for i, e in enumerate(res.get("entry", [])):
            r = e.get("resource", {})
            url = e.get("fullUrl", "")
            if r and not url.endswith(f"/{r.get('resourceType')}/{r.get('id')}"):
                errors.append(f"{path}.entry[{i}]: fullUrl {url!r} does not name the resource")
            invariants(r, f"{path}.entry[{i}].resource", errors)
        if res.get("type") == "searchset" and "total" not in res:
            errors.append(f"{path}: searchset without total")


def validate(res, path="resource"):
    """The errors of one resource (empty: valid)."""
    errors = []
    if not isinstance(res, dict) or "resourceType" not in res:
        return [f"{path}: not a FHIR resource (no resourceType)"]
    try:
        model = construct_fhir_element(res["resourceType"], res)
    except Exception as e:  # pydantic.ValidationError, KeyError for unknown types, …
        return [f"{path}: {e}".replace("\n", "\n    ")]
    closed_codes(model, res["resourceType"], errors)
    invariants(res, res["resourceType"], errors)
    return errors


SELF_TEST = [
    ("missing required code", {"resourceType": "Observation", "status": "final"}),
    ("unknown element", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "colour": "red"}),
    ("two value[x]", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "valueString": "a", "valueBoolean": True}),
    ("subject as a list", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                           "subject": [{"reference": "Patient/1"}]}),
    ("bad dateTime", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "effectiveDateTime": "2026-13-01"}),
    ("status outside the value set", {"resourceType": "Observation", "status": "done", "code": {"text": "x"}}),
    ("obs-6", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
               "valueQuantity": {"value": 1}, "dataAbsentReason": {"text": "error"}}),
    ("Task priority outside the value set", {"resourceType": "Task", "status": "requested",
                                              "intent": "order", "priority": "soon"}),
    ("Task without intent", {"resourceType": "Task", "status": "requested"}),
    ("bad Bundle entry", {"resourceType": "Bundle", "type": "searchset", "total": 1,
                          "entry": [{"fullUrl": "http://x/Observation/1",
                                     "resource": {"resourceType": "Observation", "id": "1", "status": "final"}}]}),
    ("unreferenced contained", {"resourceType": "CarePlan", "status": "active", "intent": "plan",
                                "subject": {"reference": "Patient/1"},
                                "contained": [{"resourceType": "ActivityDefinition", "id": "a", "status": "active"}]}),
    ("Device status outside the value set", {"resourceType": "Device", "status": "broken"}),
    ("heart rate profile in the wrong unit", {
        "resourceType": "Observation", "status": "final",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/1"}, "effectiveDateTime": "2026-11-01",
        "valueQuantity": {"value": 70, "system": "http://unitsofmeasure.org", "code": "bpm"}}),
    ("bp profile without diastolic", {
        "resourceType": "Observation", "status": "final",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/1"}, "effectiveDateTime": "2026-11-01",
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                       "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org",
                                         "code": "mm[Hg]"}}]}),
]

VALID = {"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "x"},
         "valueQuantity": {"value": 1, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}


def self_test():
    failures = 0
    for name, res in SELF_TEST:
        errors = validate(res, name)
        print(f"{'rejected' if errors else 'ACCEPTED'}: {name}" + (f" ({errors[0][:120]})" if errors else ""))
        failures += not errors
    if validate(VALID):
        print(f"REJECTED a valid resource: {validate(VALID)}")
        failures += 1
    print(f"self-test: {len(SELF_TEST) - failures} of {len(SELF_TEST)} invalid resources rejected")
    return 1 if failures else 0


def main(args):
    if args == ["--self-test"]:
        return self_test()
    files = []
    for a in args:
        p = pathlib.Path(a)
        files.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    if not files:
        print("no resources to validate")
        return 1
    bad = 0
    for f in files:
        errors = validate(json.loads(f.read_text()), f.name)
        if errors:
            bad += 1
            print(f"INVALID {f}:")
            for e in errors:
                print(f"  {e}")
    print(f"{len(files) - bad} valid, {bad} invalid (FHIR {fhir.resources.__fhir_version__}, "
          f"fhir.resources {fhir.resources.__version__})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
