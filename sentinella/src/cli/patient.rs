//! `sentinella patient`: enrol and list patients.

use anyhow::Context;
use clap::Subcommand;
use store::{NewPatient, Store};

#[derive(Debug, Subcommand)]
pub enum PatientCommand {
    /// Enrol a patient with a COT.
    Add {
        /// The COT's code.
        #[arg(long)]
        cot: String,
        /// Pseudonymous patient code, unique.
        #[arg(long)]
        code: String,
        /// Name shown to the COT's staff.
        #[arg(long)]
        name: String,
        /// Year of birth.
        #[arg(long)]
        birth_year: Option<i32>,
        /// Conditions, comma-separated (hypertension, copd, diabetes, heart_failure).
        #[arg(long, value_delimiter = ',')]
        conditions: Vec<String>,
    },
    /// List patients.
    List,
}

/// Runs a `patient` command.
pub async fn run(store: &Store, cmd: PatientCommand) -> anyhow::Result<()> {
    match cmd {
        PatientCommand::Add {
            cot,
            code,
            name,
            birth_year,
            conditions,
        } => {
            let cot = store
                .cot_by_code(&cot)
                .await?
                .with_context(|| format!("no COT with code {cot}"))?;
            let new = NewPatient {
                cot_id: cot.id,
                code,
                display_name: name,
                birth_year,
                conditions,
            };
            let p = store.add_patient(&new).await.context("add patient")?;
            println!("patient {} added (id {}) to {}", p.code, p.id, cot.code);
        }
        PatientCommand::List => {
            for p in store.list_patients(None, None).await? {
                println!(
                    "{}\t{}\t{}\tcot {}\t{}",
                    p.id,
                    p.code,
                    p.display_name,
                    p.cot_id,
                    p.conditions.join(",")
                );
            }
        }
    }
    Ok(())
}
