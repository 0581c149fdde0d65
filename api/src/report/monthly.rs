//! Scheduled monthly reports (`[reports] monthly_dir` in the configuration): for every
//! patient, the report of the previous calendar month in Italian and English, written once
//! as `{monthly_dir}/{COT code}/{patient code}/{yyyy-mm}-{it|en}.pdf` (for the integration that
//! sends documents to the GP or the FSE). The task looks at start and every hour; a report
//! already written is left alone, so a restart or a second pass writes nothing twice. Each
//! file written is audited (`report.monthly`, actor `system:reports`, naming the patient).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Lang, Period, Report, pdf};

/// How often the task looks for reports to write.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// The actor of the audit entries.
pub const ACTOR: &str = "system:reports";

/// A path component from a code: letters, digits, `-` and `_` kept, anything else `_`.
fn component(code: &str) -> String {
    let out: String = code
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.chars().all(|c| c == '_') {
        "_".to_owned()
    } else {
        out
    }
}

/// Where the report of `period` in `lang` of a patient goes.
pub fn path_of(dir: &Path, cot: &str, patient: &str, period: Period, lang: Lang) -> PathBuf {
    dir.join(component(cot))
        .join(component(patient))
        .join(format!(
            "{:04}-{:02}-{}.pdf",
            period.from.year(),
            u8::from(period.from.month()),
            lang.as_str()
        ))
}

/// Writes the previous month's reports (relative to `now`) that are missing; returns how many
/// files it wrote.
pub async fn generate_due(
    store: &store::Store,
    dir: &Path,
    now: OffsetDateTime,
) -> anyhow::Result<usize> {
    let period = Period::previous_month(now.date());
    let cots = store.list_cots().await.context("list COTs")?;
    let patients = store
        .list_patients(None, None)
        .await
        .context("list patients")?;
    let mut written = 0;
    for patient in &patients {
        let Some(cot) = cots.iter().find(|c| c.id == patient.cot_id) else {
            continue;
        };
        let targets: Vec<(Lang, PathBuf)> = [Lang::It, Lang::En]
            .into_iter()
            .map(|l| (l, path_of(dir, &cot.code, &patient.code, period, l)))
            .filter(|(_, p)| !p.exists())
            .collect();
        if targets.is_empty() {
            continue;
        }
        let report = Report::gather(store, patient, period, now)
            .await
            .with_context(|| format!("gather the report of patient {}", patient.id))?;
        for (lang, path) in targets {
            let bytes = pdf::render(&report, lang);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            store
                .record_audit(&store::NewAudit {
                    actor: ACTOR.into(),
                    action: "report.monthly".into(),
                    target: format!("patient:{}", patient.id),
                    source: None,
                    detail: Some(
                        serde_json::json!({ "from": period.from.to_string(),
                            "to": period.to.to_string(), "lang": lang.as_str(),
                            "file": path.display().to_string() })
                        .to_string(),
                    ),
                    patient_id: Some(patient.id),
                    cot_id: Some(patient.cot_id),
                    cot_ids: Vec::new(),
                })
                .await
                .context("audit the monthly report")?;
            // Written aside and renamed, so a reader never sees half a file.
            let partial = path.with_extension("pdf.partial");
            tokio::fs::write(&partial, &bytes)
                .await
                .with_context(|| format!("write {}", partial.display()))?;
            tokio::fs::rename(&partial, &path)
                .await
                .with_context(|| format!("rename {}", partial.display()))?;
            written += 1;
        }
    }
    Ok(written)
}

/// Runs [`generate_due`] at start and every [`INTERVAL`] until `cancel`; errors are logged
/// and retried at the next pass.
pub async fn run(store: store::Store, dir: PathBuf, cancel: CancellationToken) {
    loop {
        match generate_due(&store, &dir, OffsetDateTime::now_utc()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, dir = %dir.display(), "monthly reports written"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "monthly reports: retrying at the next pass")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn paths_are_safe() {
        let p = Period::new(date!(2026 - 11 - 01), date!(2026 - 11 - 30)).unwrap();
        let path = path_of(Path::new("/r"), "COT-A", "../P 1", p, Lang::En);
        assert_eq!(path, Path::new("/r/COT-A/___P_1/2026-11-en.pdf"));
        assert_eq!(component(".."), "_");
    }
}
