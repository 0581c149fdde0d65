//! `sentinella user`: staff users and service accounts.

use anyhow::{Context, bail};
use clap::Subcommand;
use store::Store;
use time::OffsetDateTime;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: a person (password read from standard input) or, with --service, a
    /// service account that authenticates with API keys (`sentinella token create`).
    Add {
        /// Login name (1-64 of A-Z a-z 0-9 . _ @ -).
        #[arg(long)]
        username: String,
        /// Name shown in the console and on alert assignments.
        #[arg(long)]
        display_name: String,
        /// nurse, physician, device_manager or admin.
        #[arg(long)]
        role: String,
        /// A COT code the user belongs to; repeat for several.
        #[arg(long = "cot", required = true)]
        cots: Vec<String>,
        /// A service account (no password, API keys only).
        #[arg(long)]
        service: bool,
        /// Read the password (one line, at least 12 characters) from standard input.
        #[arg(long, conflicts_with = "service")]
        password_stdin: bool,
    },
    /// Set a person's password, read from standard input.
    Password { username: String },
    /// Disable a user and revoke all their tokens.
    Disable { username: String },
    /// List users.
    List,
}

/// Reads one line from standard input: a password, never echoed by us nor logged.
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Hashes a password (Argon2id) off the async threads.
pub(crate) async fn hash_password(password: String) -> anyhow::Result<String> {
    api::http::session::hash_password_off_thread(password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs a `user` command.
pub async fn run(store: &Store, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            username,
            display_name,
            role,
            cots,
            service,
            password_stdin,
        } => {
            let role = store::Role::parse(&role)
                .context("--role must be nurse, physician, device_manager or admin")?;
            let mut cot_ids = Vec::new();
            for code in &cots {
                let cot = store
                    .cot_by_code(code)
                    .await?
                    .with_context(|| format!("no COT with code {code}"))?;
                cot_ids.push(cot.id);
            }
            let hash = if service {
                None
            } else if password_stdin {
                Some(hash_password(read_password()?).await?)
            } else {
                bail!("a person needs --password-stdin (or use --service for an integration)")
            };
            let user = store
                .add_user(&store::NewUser {
                    username: &username,
                    display_name: &display_name,
                    role,
                    kind: if service {
                        store::UserKind::Service
                    } else {
                        store::UserKind::Person
                    },
                    password_hash: hash.as_deref(),
                    cot_ids: &cot_ids,
                })
                .await
                .context("add user")?;
            store
                .record_audit(&store::NewAudit {
                    actor: "cli".into(),
                    action: "user.create".into(),
                    target: format!("user:{}", user.username),
                    detail: Some(format!("role={} cots={cots:?}", role.as_str())),
                    cot_ids: user.cot_ids.clone(),
                    ..store::NewAudit::default()
                })
                .await?;
            println!(
                "user {} added (id {}, {}, COTs {})",
                user.username,
                user.id,
                role.as_str(),
                cots.join(", ")
            );
        }
        UserCommand::Password { username } => {
            let user = store
                .user_by_username(&username)
                .await?
                .with_context(|| format!("no user {username}"))?;
            if user.kind == store::UserKind::Service {
                bail!("{username} is a service account: it uses API keys, not a password");
            }
            let hash = hash_password(read_password()?).await?;
            store.set_user_password(user.id, &hash).await?;
            store
                .record_audit(&store::NewAudit {
                    actor: "cli".into(),
                    action: "user.password".into(),
                    target: format!("user:{username}"),
                    detail: Some("every token of the user revoked".into()),
                    cot_ids: user.cot_ids.clone(),
                    ..store::NewAudit::default()
                })
                .await?;
            println!("password of {username} changed; their tokens are revoked");
        }
        UserCommand::Disable { username } => {
            let user = store
                .user_by_username(&username)
                .await?
                .with_context(|| format!("no user {username}"))?;
            store
                .disable_user(user.id, OffsetDateTime::now_utc())
                .await?;
            store
                .record_audit(&store::NewAudit {
                    actor: "cli".into(),
                    action: "user.disable".into(),
                    target: format!("user:{username}"),
                    cot_ids: user.cot_ids.clone(),
                    ..store::NewAudit::default()
                })
                .await?;
            println!("user {username} disabled; their tokens are revoked");
        }
        UserCommand::List => {
            for u in store.list_users(None).await? {
                println!(
                    "{}\t{}\t{}\t{:?}\tCOTs {:?}{}",
                    u.id,
                    u.username,
                    u.role.as_str(),
                    u.kind,
                    u.cot_ids,
                    if u.disabled_at.is_some() {
                        "\tdisabled"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}
