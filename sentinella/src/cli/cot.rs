//! `sentinella cot`: manage COTs (Centrali Operative Territoriali).

use anyhow::Context;
use clap::Subcommand;
use store::Store;

#[derive(Debug, Subcommand)]
pub enum CotCommand {
    /// Add a COT.
    Add {
        /// Short unique code, e.g. COT-MI-01.
        #[arg(long)]
        code: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// List COTs.
    List,
}

/// Runs a `cot` command.
pub async fn run(store: &Store, cmd: CotCommand) -> anyhow::Result<()> {
    match cmd {
        CotCommand::Add { code, name } => {
            let cot = store.add_cot(&code, &name).await.context("add COT")?;
            println!("COT {} added (id {})", cot.code, cot.id);
        }
        CotCommand::List => {
            for c in store.list_cots().await? {
                println!("{}\t{}\t{}", c.id, c.code, c.name);
            }
        }
    }
    Ok(())
}
