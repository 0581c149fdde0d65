//! A small cohort through the real alert engine: every injected critical event must be
//! alerted, and the alerts must mostly be explained by what was injected. Guards the care-plan
//! templates and the engine against regressions (the full benchmark is
//! `sentinella-sim alert-quality`, see BENCHMARKS.md).

use simulators::alert_quality::{QualityOptions, run_alert_quality};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cohort_alerts_every_critical_event() -> anyhow::Result<()> {
    let report = run_alert_quality(&QualityOptions {
        patients: 50,
        days: 7,
        seed: 7,
        // Enough events in a small cohort to mean something.
        critical_rate: 0.3,
        missed_rate: 0.1,
        silent_rate: 0.05,
        battery_rate: 0.05,
        spurious_rate: 0.4,
        control_rate: 0.3,
        // A COPD baseline of 88-90 % still trips the scale-2 medium band now and then (a known
        // template limit the benchmark reports); kept out so a spurious low is judged alone.
        low_baseline_rate: 0.0,
        ..QualityOptions::default()
    })
    .await?;
    println!("{report}");
    assert!(report.critical_injected >= 8, "{report}");
    assert_eq!(
        report.critical_detected, report.critical_injected,
        "every critical event alerted: {:?}",
        report.missed
    );
    assert_eq!(report.events_detected, report.events_injected, "{report}");
    // A single spurious low and a control-solution check must raise nothing.
    for name in ["spurious-low-spo2", "control-solution"] {
        let row = report
            .by_scenario
            .iter()
            .find(|r| r.scenario == name)
            .unwrap_or_else(|| panic!("no {name} injected: {report}"));
        assert!(row.injected >= 2, "{report}");
        assert_eq!(row.violated, 0, "{name}: {report}");
    }
    assert!(
        report.ppv >= PPV_FLOOR,
        "PPV {} below {PPV_FLOOR}: {report}",
        report.ppv
    );
    Ok(())
}

const PPV_FLOOR: f64 = 0.5;
