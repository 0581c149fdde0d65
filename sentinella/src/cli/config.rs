//! `sentinella config`: configuration helpers.

use clap::Subcommand;

use std::path::Path;

use crate::config::{Config, SAMPLE};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the documented sample configuration.
    Sample,
    /// Check a configuration (with --config, the environment and the flags, as `run` reads
    /// them): print what `run` would use, secrets redacted, and every problem; exit 0 when it
    /// is valid, 1 with problems, 2 when the file cannot be read or parsed. `run` refuses to
    /// start on the same problems.
    Check,
}

/// Runs `config sample` (`config check` is [`check`]).
pub fn run(cmd: &ConfigCommand) {
    match cmd {
        ConfigCommand::Sample => print!("{SAMPLE}"),
        ConfigCommand::Check => {}
    }
}

/// `sentinella config check` on the configuration `loaded` (or the error loading it): the
/// exit code.
pub async fn check(loaded: anyhow::Result<Config>, source: Option<&Path>) -> u8 {
    use crate::config_check as check;
    match loaded {
        Ok(config) => check::report(&config, source).await,
        Err(e) => {
            eprintln!("{e:#}");
            check::EXIT_UNREADABLE
        }
    }
}
