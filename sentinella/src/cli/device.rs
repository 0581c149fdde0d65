//! `sentinella device`: provision devices, issue and revoke their certificates.

use std::path::PathBuf;

use anyhow::{Context, bail};
use api::ops;
use clap::Subcommand;
use store::{DeviceKind, Store};
use time::OffsetDateTime;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Provision a device for a patient: print its MQTT secret (shown only once, for the
    /// loopback plain listener) and write its client certificate, key and the CA bundle for
    /// the mutual-TLS listener.
    Add {
        /// The patient's code.
        #[arg(long)]
        patient: String,
        /// bp, spo2 or glucose.
        #[arg(long)]
        kind: String,
        /// Device id (1-64 of A-Z a-z 0-9 _ -); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Device model, free text.
        #[arg(long)]
        model: Option<String>,
        /// Print the credentials as JSON.
        #[arg(long)]
        json: bool,
        /// Where to write the certificate (`{id}.crt`), key (`{id}.key`, mode 0600) and CA
        /// bundle (`ca.crt`); default: a folder named after the device in the current
        /// directory.
        #[arg(long, value_name = "DIR")]
        cert_out: Option<PathBuf>,
        /// Issue no certificate (the device uses the plain listener only).
        #[arg(long, conflicts_with = "cert_out")]
        no_cert: bool,
    },
    /// Issue a new client certificate to a device; the previous one stops working.
    Cert {
        /// Device id.
        id: String,
        /// Where to write the files; default: a folder named after the device.
        #[arg(long, value_name = "DIR")]
        cert_out: Option<PathBuf>,
    },
    /// Revoke a device: it can no longer connect, and its open connections are closed within
    /// the gateway's `revocation_poll` interval (2 s by default).
    Revoke {
        /// Device id.
        id: String,
    },
    /// List devices.
    List,
}

/// Issues device `id` a client certificate from the device CA, records its fingerprint (so
/// only this certificate is accepted from now on) and writes the bundle into `out` (default
/// `./{id}`).
async fn issue_device_cert(
    store: &Store,
    config: &Config,
    id: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<pki::BundlePaths> {
    let dir = config.pki_dir();
    let (ca, created) = pki::DeviceCa::load_or_create(&dir)
        .with_context(|| format!("device CA in {}", dir.display()))?;
    if created {
        eprintln!("device CA created in {}", dir.display());
    }
    let issued = ops::devices::issue_cert(store, &ca, id)
        .await
        .context("issue the device certificate")?;
    let out = out.unwrap_or_else(|| PathBuf::from(id));
    pki::write_device_bundle(&out, id, &issued, ca.cert_pem())
        .context("write the device certificate")
}

/// Runs a `device` command.
pub async fn run(store: &Store, config: &Config, cmd: DeviceCommand) -> anyhow::Result<()> {
    match cmd {
        DeviceCommand::Add {
            patient,
            kind,
            id,
            model,
            json,
            cert_out,
            no_cert,
        } => {
            let Some(kind) = DeviceKind::parse(&kind) else {
                bail!("--kind must be bp, spo2 or glucose")
            };
            let patient = store
                .patient_by_code(&patient)
                .await?
                .with_context(|| format!("no patient with code {patient}"))?;
            let ops::devices::Provisioned { device, secret } =
                ops::devices::provision(store, patient.id, kind, id, model)
                    .await
                    .context("add device")?;
            let id = device.id;
            let paths = if no_cert {
                None
            } else {
                Some(issue_device_cert(store, config, &id, cert_out).await?)
            };
            if json {
                let cert = paths
                    .as_ref()
                    .map(|p| serde_json::json!({"cert": p.cert, "key": p.key, "ca": p.ca}));
                println!(
                    "{}",
                    serde_json::json!({"id": id, "secret": secret, "patient": patient.code, "kind": kind.as_str(), "tls": cert})
                );
            } else {
                println!(
                    "device {id} provisioned for patient {} ({})",
                    patient.code,
                    kind.as_str()
                );
                println!("  MQTT client id / username: {id}");
                println!("  MQTT password (shown only now): {secret}");
                println!("  readings topic: sentinella/v1/devices/{id}/readings");
                println!("  acks topic:     sentinella/v1/devices/{id}/ack");
                if let Some(p) = &paths {
                    print_bundle(p);
                }
            }
        }
        DeviceCommand::Cert { id, cert_out } => {
            if store.device_auth(&id).await?.is_none() {
                bail!("no device {id}");
            }
            let paths = issue_device_cert(store, config, &id, cert_out).await?;
            println!("device {id}: new certificate issued; the previous one no longer connects");
            print_bundle(&paths);
        }
        DeviceCommand::Revoke { id } => {
            store
                .revoke_device(&id, OffsetDateTime::now_utc())
                .await
                .context("revoke device")?;
            println!("device {id} revoked");
        }
        DeviceCommand::List => {
            for d in store.list_devices(None, None).await? {
                let seen = d
                    .last_seen_at
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{}\t{}\tpatient {}\tlast seen {seen}",
                    d.id,
                    d.kind.as_str(),
                    d.patient_id
                );
            }
        }
    }
    Ok(())
}

fn print_bundle(p: &pki::BundlePaths) {
    println!("  mutual TLS (port 8883 by default; client id = device id, no password):");
    println!("    certificate: {}", p.cert.display());
    println!("    private key: {}", p.key.display());
    println!("    CA bundle:   {}", p.ca.display());
}
