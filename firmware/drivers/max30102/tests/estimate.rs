//! The SpO2 / pulse estimator on synthetic photoplethysmograms.

use max30102::Sample;
use max30102::spo2::{EstimateError, estimate, ratio_for};

const RATE: u16 = 100;

/// A pulse shape over one beat (phase 0..1): a systolic peak and a smaller dicrotic wave.
fn shape(phase: f64) -> f64 {
    let g = |c: f64, w: f64| (-((phase - c) / w).powi(2)).exp();
    g(0.2, 0.08) + 0.35 * g(0.5, 0.1)
}

struct Ppg {
    spo2: f32,
    bpm: f64,
    /// IR AC/DC, as a fraction.
    perfusion: f64,
    dc_ir: f64,
    dc_red: f64,
    /// Beat-to-beat interval jitter, as a fraction.
    jitter: f64,
    noise: f64,
}

impl Ppg {
    fn normal(spo2: f32, bpm: f64) -> Self {
        Ppg {
            spo2,
            bpm,
            perfusion: 0.02,
            dc_ir: 120_000.0,
            dc_red: 90_000.0,
            jitter: 0.0,
            noise: 0.0,
        }
    }

    fn samples(&self, seconds: f64) -> Vec<Sample> {
        let r = f64::from(ratio_for(self.spo2).expect("reachable SpO2"));
        let mut out = Vec::new();
        let mut phase = 0.0;
        let mut beat = 0u32;
        let mut seed = 12345u64;
        let mut rand = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        let n = (seconds * f64::from(RATE)) as usize;
        for _ in 0..n {
            let factor = if beat.is_multiple_of(2) {
                1.0 + self.jitter
            } else {
                1.0 - self.jitter
            };
            phase += self.bpm / 60.0 / f64::from(RATE) * factor;
            if phase >= 1.0 {
                phase -= 1.0;
                beat += 1;
            }
            let p = shape(phase);
            let ir = self.dc_ir * (1.0 - self.perfusion * p) + self.noise * rand();
            let red = self.dc_red * (1.0 - r * self.perfusion * p) + self.noise * rand();
            out.push(Sample {
                red: red.max(0.0) as u32,
                ir: ir.max(0.0) as u32,
            });
        }
        out
    }
}

#[test]
fn recovers_saturation_and_rate() {
    for (spo2, bpm) in [
        (98.0, 60.0),
        (95.0, 75.0),
        (91.0, 110.0),
        (85.0, 48.0),
        (97.0, 150.0),
    ] {
        let e = estimate(&Ppg::normal(spo2, bpm).samples(8.0), RATE).expect("estimate");
        assert!((e.spo2 - spo2).abs() < 1.0, "SpO2 {spo2}: got {}", e.spo2);
        assert!(
            (f64::from(e.pulse_bpm) - bpm).abs() < 3.0,
            "{bpm}/min: got {}",
            e.pulse_bpm
        );
        assert!(
            (e.perfusion_index - 2.0).abs() < 0.6,
            "PI {}",
            e.perfusion_index
        );
        assert!(!e.irregular && !e.low_perfusion, "{e:?}");
    }
}

#[test]
fn tolerates_noise() {
    let ppg = Ppg {
        noise: 150.0,
        ..Ppg::normal(96.0, 72.0)
    };
    let e = estimate(&ppg.samples(8.0), RATE).expect("estimate");
    assert!((e.spo2 - 96.0).abs() < 2.0, "{e:?}");
    assert!((e.pulse_bpm - 72.0).abs() < 4.0, "{e:?}");
}

#[test]
fn flags_irregular_rhythm_and_low_perfusion() {
    let ppg = Ppg {
        jitter: 0.45,
        perfusion: 0.002,
        ..Ppg::normal(96.0, 70.0)
    };
    let e = estimate(&ppg.samples(10.0), RATE).expect("estimate");
    assert!(e.irregular, "{e:?}");
    assert!(e.low_perfusion, "{e:?}");
}

#[test]
fn refuses_what_it_cannot_measure() {
    let ppg = Ppg::normal(97.0, 70.0);
    assert_eq!(
        estimate(&ppg.samples(2.0), RATE),
        Err(EstimateError::TooFewSamples)
    );
    assert_eq!(
        estimate(&ppg.samples(4.0), 0),
        Err(EstimateError::TooFewSamples)
    );
    let off = Ppg {
        dc_ir: 2_000.0,
        dc_red: 1_500.0,
        ..Ppg::normal(97.0, 70.0)
    };
    assert_eq!(
        estimate(&off.samples(5.0), RATE),
        Err(EstimateError::NoFinger)
    );
    let blinding = Ppg {
        dc_ir: 261_000.0,
        ..Ppg::normal(97.0, 70.0)
    };
    assert_eq!(
        estimate(&blinding.samples(5.0), RATE),
        Err(EstimateError::Saturated)
    );
    let flat = vec![
        Sample {
            red: 90_000,
            ir: 120_000
        };
        500
    ];
    assert_eq!(estimate(&flat, RATE), Err(EstimateError::NoPulse));
    // Red barely pulsing while IR does: R far below any physiological value.
    let odd = Ppg {
        dc_red: 90_000.0,
        ..Ppg::normal(97.0, 70.0)
    };
    let mut s = odd.samples(6.0);
    for x in &mut s {
        x.red = 90_000;
    }
    assert!(estimate(&s, RATE).is_err());
}

#[test]
fn ratio_inverts_the_calibration() {
    for spo2 in [70.0f32, 85.0, 95.0, 99.0] {
        let r = ratio_for(spo2).expect("reachable");
        let back = -45.060 * r * r + 30.354 * r + 94.845;
        assert!((back - spo2).abs() < 0.01, "{spo2}: {back}");
    }
    assert_eq!(ratio_for(101.0), None);
}
