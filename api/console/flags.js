// Human labels for a reading's status bits: IEEE 11073-20601 measurement status (`status`)
// and the kind's Bluetooth sensor status (`sensor`), as defined in protocol/src/reading.rs.
import { t } from './i18n.js';

const MEASUREMENT = [
  [0x8000, 'invalid', 'bad'],
  [0x4000, 'questionable', 'warn'],
  [0x2000, 'not_available', 'bad'],
  [0x1000, 'calibration', 'warn'],
  [0x0800, 'test_data', 'warn'],
  [0x0400, 'demo_data', 'warn'],
  [0x0080, 'validated', 'ok'],
  [0x0040, 'early_indication', 'info'],
  [0x0020, 'ongoing', 'warn'],
];

const BP = [
  [1 << 0, 'bp_body_movement'],
  [1 << 1, 'bp_cuff_loose'],
  [1 << 2, 'bp_irregular_pulse'],
  [1 << 5, 'bp_improper_position'],
];

const PLX = [
  [1 << 1, 'plx_equipment_malfunction'],
  [1 << 2, 'plx_signal_irregularity'],
  [1 << 3, 'plx_inadequate_signal'],
  [1 << 4, 'plx_poor_signal'],
  [1 << 5, 'plx_low_perfusion'],
  [1 << 6, 'plx_erratic_signal'],
  [1 << 7, 'plx_non_pulsatile'],
  [1 << 8, 'plx_questionable_pulse'],
  [1 << 9, 'plx_analysis_ongoing'],
  [1 << 10, 'plx_interference'],
  [1 << 11, 'plx_unconnected'],
  [1 << 12, 'plx_unknown_sensor'],
  [1 << 13, 'plx_displaced'],
  [1 << 14, 'plx_sensor_malfunction'],
  [1 << 15, 'plx_disconnected'],
];

const GLU = [
  [1 << 0, 'glu_battery_low'],
  [1 << 1, 'glu_sensor_malfunction'],
  [1 << 2, 'glu_sample_insufficient'],
  [1 << 3, 'glu_strip_insertion'],
  [1 << 4, 'glu_strip_type'],
  [1 << 5, 'glu_too_high'],
  [1 << 6, 'glu_too_low'],
  [1 << 7, 'glu_temp_high'],
  [1 << 8, 'glu_temp_low'],
  [1 << 9, 'glu_read_interrupted'],
  [1 << 10, 'glu_general_fault'],
  [1 << 11, 'glu_time_fault'],
];

/** The flags of a reading as [{key, label, tone}] (tone: ok, info, warn, bad). */
export function readingFlags(r) {
  const out = [];
  for (const [bit, key, tone] of MEASUREMENT) {
    if (r.status & bit) out.push({ key, label: t(`flag_${key}`), tone });
  }
  const sensor = Number(r.sensor) || 0;
  if (r.kind === 'bp') {
    for (const [bit, key] of BP) if (sensor & bit) out.push({ key, label: t(`flag_${key}`), tone: 'warn' });
    const pulse = (sensor >> 3) & 3;
    if (pulse === 1) out.push({ key: 'bp_pulse_high', label: t('flag_bp_pulse_high'), tone: 'warn' });
    if (pulse === 2) out.push({ key: 'bp_pulse_low', label: t('flag_bp_pulse_low'), tone: 'warn' });
  } else if (r.kind === 'spo2') {
    for (const [bit, key] of PLX) if (sensor & bit) out.push({ key, label: t(`flag_${key}`), tone: 'warn' });
  } else if (r.kind === 'glucose') {
    for (const [bit, key] of GLU) if (sensor & bit) out.push({ key, label: t(`flag_${key}`), tone: 'warn' });
    if (r.glucose_sample === 'control_solution') out.push({ key: 'control', label: t('flag_control'), tone: 'warn' });
  }
  if (r.clock && r.clock !== 'ok') out.push({ key: `clock_${r.clock}`, label: t(`clock_${r.clock}`), tone: r.clock === 'late' ? 'info' : 'warn' });
  return out;
}
