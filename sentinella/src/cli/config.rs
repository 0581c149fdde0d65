//! `sentinella config`: configuration helpers.

use clap::Subcommand;

use crate::config::SAMPLE;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the documented sample configuration.
    Sample,
}

/// Runs a `config` command (none needs the store).
pub fn run(cmd: &ConfigCommand) {
    match cmd {
        ConfigCommand::Sample => print!("{SAMPLE}"),
    }
}
