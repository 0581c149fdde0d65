//! SpO2, pulse rate and perfusion index from red/IR samples.
//!
//! A transmissive/reflective PPG has a large steady part (DC: tissue, venous blood) and a small
//! pulsatile part (AC: arterial blood). Oxygenated and deoxygenated haemoglobin absorb red and
//! infrared light differently, so the *ratio of ratios*
//! `R = (AC_red / DC_red) / (AC_ir / DC_ir)` maps to saturation. This estimator:
//! 1. checks there is a finger (IR DC above [`FINGER_IR_MIN`]) and no saturation;
//! 2. takes the IR AC part as the 4-sample smoothed signal minus a centred one-second moving
//!    average, and finds beats as its valleys (the raw signal dips at systole), at least a
//!    refractory period apart (220 /min at most);
//! 3. gets the pulse rate from the mean beat interval, and flags irregular rhythm when an
//!    interval is more than 25 % off the mean;
//! 4. measures each channel's AC as the peak-to-trough swing per beat, averaged, and the DC as
//!    the window mean;
//! 5. maps `R` with Maxim's calibration for the MAX30102 reference design,
//!    `SpO2 = -45.060 R² + 30.354 R + 94.845`, capped at 100 %.
//!
//! It is a reference implementation for development boards, not a calibrated medical
//! algorithm: a certified device replaces step 5 with its own clinical calibration curve.
//! No allocator: it works in place on the caller's slice, in `O(n)` time.

use crate::Sample;

/// Least mean IR count taken as "a finger is on the sensor" (18-bit ADC).
pub const FINGER_IR_MIN: f32 = 30_000.0;

/// Mean counts above this are too close to the ADC's full scale (2^18 - 1) to measure.
pub const SATURATION: f32 = 250_000.0;

/// Least number of seconds of samples [`estimate`] needs.
pub const MIN_SECONDS: usize = 3;

/// Most beats used (extra beats in a long window are ignored).
pub const MAX_BEATS: usize = 64;

/// Perfusion index (percent) under which perfusion is flagged as low.
pub const LOW_PERFUSION_PI: f32 = 0.3;

/// What [`estimate`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Oxygen saturation, percent.
    pub spo2: f32,
    /// Pulse rate, beats per minute.
    pub pulse_bpm: f32,
    /// Perfusion index, percent (IR AC / DC).
    pub perfusion_index: f32,
    /// The ratio of ratios.
    pub ratio: f32,
    /// Beats found.
    pub beats: usize,
    /// Some beat interval was more than 25 % off the mean.
    pub irregular: bool,
    /// Perfusion index under [`LOW_PERFUSION_PI`].
    pub low_perfusion: bool,
}

/// Why no estimate could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateError {
    /// Fewer than [`MIN_SECONDS`] seconds of samples, or a zero sample rate.
    TooFewSamples,
    /// The IR level says nothing is on the sensor.
    NoFinger,
    /// The signal is at the ADC's full scale (LED current too high for this finger).
    Saturated,
    /// Fewer than three beats found.
    NoPulse,
    /// The ratio of ratios is outside what a living finger gives (motion, ambient light).
    Implausible,
}

impl core::fmt::Display for EstimateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EstimateError::TooFewSamples => "too few samples",
            EstimateError::NoFinger => "no finger on the sensor",
            EstimateError::Saturated => "signal saturated",
            EstimateError::NoPulse => "no pulse found",
            EstimateError::Implausible => "implausible signal",
        })
    }
}

/// Estimates SpO2, pulse and perfusion from `samples` taken at `rate_hz` (the FIFO rate).
pub fn estimate(samples: &[Sample], rate_hz: u16) -> Result<Estimate, EstimateError> {
    let rate = usize::from(rate_hz);
    let n = samples.len();
    if rate == 0 || n < MIN_SECONDS * rate {
        return Err(EstimateError::TooFewSamples);
    }
    let dc_ir = mean(samples, ir);
    let dc_red = mean(samples, red);
    if dc_ir < FINGER_IR_MIN {
        return Err(EstimateError::NoFinger);
    }
    if dc_ir > SATURATION || dc_red > SATURATION {
        return Err(EstimateError::Saturated);
    }

    // Pass 1: the deepest dip of the AC part, for the detection threshold.
    let half = (rate / 2).max(1);
    let mut deepest = 0.0f32;
    for_each_ac(samples, half, |_, d| deepest = deepest.max(d));
    if deepest <= 0.0 {
        return Err(EstimateError::NoPulse);
    }
    let threshold = 0.3 * deepest;

    // Pass 2: beats are local maxima of the inverted AC part above the threshold.
    let refractory = (rate * 60 / 220).max(1);
    let mut beats = [0usize; MAX_BEATS];
    let mut count = 0;
    let mut prev = (0.0f32, 0.0f32); // d[i-2], d[i-1]
    let mut best: Option<(usize, f32)> = None;
    for_each_ac(samples, half, |i, d| {
        let (d2, d1) = prev;
        prev = (d1, d);
        // i-1 is a local maximum.
        if i >= 2 && d1 > threshold && d1 >= d2 && d1 > d {
            let at = i - 1;
            match best {
                Some((b, v)) if at - b < refractory => {
                    if d1 > v {
                        best = Some((at, d1));
                    }
                }
                Some((b, _)) => {
                    if count < MAX_BEATS {
                        beats[count] = b;
                        count += 1;
                    }
                    best = Some((at, d1));
                }
                None => best = Some((at, d1)),
            }
        }
    });
    if let Some((b, _)) = best
        && count < MAX_BEATS
    {
        beats[count] = b;
        count += 1;
    }
    let beats = beats.get(..count).unwrap_or_default();
    if beats.len() < 3 {
        return Err(EstimateError::NoPulse);
    }

    // Rate and rhythm.
    let intervals = beats.windows(2).map(|w| (w[1] - w[0]) as f32);
    let mean_interval = intervals.clone().sum::<f32>() / (beats.len() - 1) as f32;
    let irregular = intervals
        .clone()
        .any(|iv| abs(iv - mean_interval) > 0.25 * mean_interval);
    let pulse_bpm = 60.0 * rate_hz as f32 / mean_interval;

    // AC per beat, per channel.
    let (mut ac_ir, mut ac_red) = (0.0f32, 0.0f32);
    for w in beats.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        ac_ir += swing(samples, lo, hi, ir);
        ac_red += swing(samples, lo, hi, red);
    }
    let nbeats = (beats.len() - 1) as f32;
    ac_ir /= nbeats;
    ac_red /= nbeats;
    if ac_ir <= 0.0 || ac_red <= 0.0 {
        return Err(EstimateError::NoPulse);
    }
    let ratio = (ac_red / dc_red) / (ac_ir / dc_ir);
    if !(0.2..=2.0).contains(&ratio) {
        return Err(EstimateError::Implausible);
    }
    let spo2 = (-45.060 * ratio * ratio + 30.354 * ratio + 94.845).min(100.0);
    if spo2 < 50.0 {
        return Err(EstimateError::Implausible);
    }
    let perfusion_index = 100.0 * ac_ir / dc_ir;
    Ok(Estimate {
        spo2,
        pulse_bpm,
        perfusion_index,
        ratio,
        beats: beats.len(),
        irregular,
        low_perfusion: perfusion_index < LOW_PERFUSION_PI,
    })
}

/// The ratio of ratios that [`estimate`] maps to `spo2` (on the calibration's decreasing
/// branch, SpO2 ≤ 99.96 %); for simulators that synthesise a PPG. `None` above the curve's
/// maximum.
pub fn ratio_for(spo2: f32) -> Option<f32> {
    let (a, b, c) = (45.060f32, -30.354f32, spo2 - 94.845);
    let disc = b * b - 4.0 * a * c;
    if disc < 0.0 {
        return None;
    }
    Some((-b + sqrt(disc)) / (2.0 * a))
}

/// Square root by Newton's method (no `libm` in `no_std`); `x` ≥ 0.
fn sqrt(x: f32) -> f32 {
    if x <= 0.0 {
        return 0.0;
    }
    let mut g = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..32 {
        g = 0.5 * (g + x / g);
    }
    g
}

fn ir(s: &Sample) -> f32 {
    s.ir as f32
}

fn red(s: &Sample) -> f32 {
    s.red as f32
}

fn abs(x: f32) -> f32 {
    if x < 0.0 { -x } else { x }
}

fn mean(samples: &[Sample], ch: fn(&Sample) -> f32) -> f32 {
    // A running f32 sum of thousands of 18-bit values would lose precision; summing chunks
    // of 64 (at most 2^24, exact) and adding their scaled parts keeps the error small.
    let mut total = 0.0f32;
    for chunk in samples.chunks(64) {
        let part: f32 = chunk.iter().map(ch).sum();
        total += part / samples.len() as f32;
    }
    total
}

/// Mean of `ch` over the 4 samples around `i` (clipped at the ends).
fn smooth(samples: &[Sample], i: usize, ch: fn(&Sample) -> f32) -> f32 {
    let lo = i.saturating_sub(2);
    let hi = (i + 2).min(samples.len());
    let part = samples.get(lo..hi).unwrap_or_default();
    if part.is_empty() {
        return 0.0;
    }
    part.iter().map(ch).sum::<f32>() / part.len() as f32
}

/// Calls `f(i, d)` for every sample, `d` being the inverted IR AC part: the centred moving
/// average over `2 * half + 1` samples minus the smoothed signal (positive in a dip).
fn for_each_ac(samples: &[Sample], half: usize, mut f: impl FnMut(usize, f32)) {
    let n = samples.len();
    let mut sum = 0.0f32;
    let mut lo = 0usize;
    let mut hi = 0usize; // window is samples[lo..hi]
    for i in 0..n {
        let want_hi = (i + half + 1).min(n);
        while hi < want_hi {
            sum += samples.get(hi).map_or(0.0, ir);
            hi += 1;
        }
        let want_lo = i.saturating_sub(half);
        while lo < want_lo {
            sum -= samples.get(lo).map_or(0.0, ir);
            lo += 1;
        }
        let baseline = sum / (hi - lo) as f32;
        f(i, baseline - smooth(samples, i, ir));
    }
}

/// Peak-to-trough swing of the smoothed channel over `samples[lo..=hi]`.
fn swing(samples: &[Sample], lo: usize, hi: usize, ch: fn(&Sample) -> f32) -> f32 {
    let mut min = f32::MAX;
    let mut max = f32::MIN;
    for i in lo..=hi.min(samples.len().saturating_sub(1)) {
        let v = smooth(samples, i, ch);
        min = min.min(v);
        max = max.max(v);
    }
    if max >= min { max - min } else { 0.0 }
}
