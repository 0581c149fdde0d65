//! `sentinella token`: API keys of service accounts.

use std::time::Duration;

use anyhow::{Context, bail};
use api::ops;
use clap::Subcommand;
use store::Store;
use time::OffsetDateTime;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API key for a service account and print it (shown only once).
    Create {
        /// The service account's username.
        #[arg(long)]
        user: String,
        /// What the key is for (e.g. the integration); recorded with the key.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. "90d" or "12h"; no expiry when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
}

/// Runs a `token` command.
pub async fn run(store: &Store, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            user,
            name,
            expires_in,
        } => {
            let account = store
                .user_by_username(&user)
                .await?
                .with_context(|| format!("no user {user}"))?;
            if account.kind != store::UserKind::Service {
                bail!(
                    "{user} is a person, who logs in; API keys are for service accounts (user add --service)"
                );
            }
            let expires_at = expires_in
                .map(|d| time::Duration::try_from(d).map(|d| OffsetDateTime::now_utc() + d))
                .transpose()
                .context("--expires-in is too long")?;
            let (token, _) = ops::identity::issue_api_key(store, account.id, &name, expires_at)
                .await
                .context("create token")?;
            println!("{token}");
            eprintln!("API key {name:?} for {user} created; it is shown only now");
        }
    }
    Ok(())
}
