//! The engine's evaluation alone, without the store: one patient's readings inserted into
//! its window and evaluated against the composed plan of every condition (with the safety
//! net), in time order with one batch in eight a moment behind, as the engine's workers do.
//! Prints readings evaluated per second of one core.
//!
//!   cargo run --release -p alerting --example evaluate [READINGS] [PER_SECOND]
//!
//! READINGS (default 300,000) at PER_SECOND readings per second of measurement time (default
//! 20: a window of 15 days then holds every reading, the densest the engine sees).

use std::time::Instant;

use alerting::plan::{self, net};
use alerting::rules::{Obs, Window};
use store::{NewReading, ReadingKind};
use time::{Duration, OffsetDateTime};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let per_second: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let conditions: Vec<String> = ["hypertension", "copd", "diabetes", "heart_failure"]
        .map(String::from)
        .into();
    let plan = net::effective(&plan::for_conditions(&conditions));
    let start = OffsetDateTime::now_utc() - Duration::days(30);
    let readings: Vec<Obs> = (0..count as i64)
        .map(|i| {
            // Batches of 8 readings; every eighth batch lands 8 readings behind.
            let t = if (i / 8) % 8 == 7 { i - 8 } else { i };
            let at = start + Duration::milliseconds(t * 1000 / per_second);
            let (device, kind) = match i % 3 {
                0 => ("bench-bp", ReadingKind::BloodPressure),
                1 => ("bench-spo2", ReadingKind::Spo2),
                _ => ("bench-glucose", ReadingKind::Glucose),
            };
            let wave = (i % 97) as f32;
            let r = NewReading::bare(device, i, 1, kind, at, at);
            Obs::from_new(&match kind {
                ReadingKind::BloodPressure => NewReading {
                    systolic: Some(120.0 + wave),
                    diastolic: Some(75.0 + wave / 3.0),
                    pulse: Some(70.0),
                    ..r
                },
                ReadingKind::Spo2 => NewReading {
                    spo2: Some(99.0 - wave / 10.0),
                    pulse: Some(70.0),
                    ..r
                },
                ReadingKind::Glucose => NewReading {
                    glucose_mg_dl: Some(90.0 + 2.0 * wave),
                    ..r
                },
            })
        })
        .collect();
    let mut window = Window::default();
    let mut effects = 0usize;
    let began = Instant::now();
    for o in &readings {
        window.insert(o, Duration::days(15));
        window.trim(Duration::days(15));
        effects += window.evaluate(&plan, o).len();
    }
    let took = began.elapsed().as_secs_f64();
    println!(
        "evaluated {count} readings in {took:.2} s = {:.0} readings/s ({effects} effects, window {} readings)",
        count as f64 / took,
        window.readings().len()
    );
}
