//! A small multimorbid cohort through the real alert engine, plans composed by the engine as in
//! production and repeats honoured by the devices: every urgent event must be alerted at its
//! expected severity, and the artefacts a repeat disproves must not stay standing. Guards the
//! templates, the safety net and the engine against regressions (the full benchmark is
//! `sentinella-sim alert-quality`, see BENCHMARKS.md).

use simulators::alert_quality::{QualityOptions, run_alert_quality};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cohort_alerts_every_urgent_event() -> anyhow::Result<()> {
    let mut opts = QualityOptions {
        patients: 60,
        days: 10,
        seed: 7,
        // Enough events in a small cohort to mean something.
        event_scale: 4.0,
        // Every device honours its repeat requests: an artefact is always disproved.
        repeat_compliance: 1.0,
        ..QualityOptions::default()
    };
    // A COPD baseline of 88-90 % is judged by the full benchmark; kept out here.
    opts.rates.copd_low_baseline = 0.0;
    let report = run_alert_quality(&opts).await?;
    println!("{report}");
    assert!(report.critical_injected >= 10, "{report}");
    assert_eq!(
        report.critical_detected, report.critical_injected,
        "every urgent event alerted: {:?}",
        report.missed
    );
    // An artefact disproved by its repeat must not be left standing.
    for name in ["spurious-low-spo2", "spurious-high-bp", "control-solution"] {
        if let Some(row) = report.by_scenario.iter().find(|r| r.scenario == name) {
            assert_eq!(row.violated, 0, "{name}: {report}");
        }
    }
    assert!(report.repeats_taken > 0, "{report}");
    Ok(())
}
