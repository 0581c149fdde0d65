//! `sentinella`: the gateway, the alert engine, the API and the provisioning commands in one
//! binary. Arguments → tracing → runtime → one command of [`sentinella::cli`].

use anyhow::Context;
use clap::Parser;
use sentinella::cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio")?;
    runtime.block_on(sentinella::cli::dispatch(cli))
}

fn init_tracing(filter: &str, json: bool) -> anyhow::Result<()> {
    // rumqttd sits behind the edge, which logs every device connection itself. rumqttd's
    // connection-level modules log each clean disconnect as an ERROR ("router-drop", "no-
    // connection id … is already gone"), so they are silenced; the rest of rumqttd, including
    // the commit-log warning when a slow consumer loses data, stays at warn.
    let filter = EnvFilter::try_new(format!(
        "rumqttd=warn,rumqttd::server=off,rumqttd::router::routing=off,{filter}"
    ))
    .context("parse --log")?;
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init()
    } else {
        builder.init()
    }
    Ok(())
}
