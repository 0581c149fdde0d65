//! The device's mutual-TLS credentials and the rustls client configuration built from them.
//!
//! The bundle is what `sentinella device add --cert-out DIR` writes: `{id}.crt` (the device
//! certificate, issued by the gateway's device CA with the device id as CN and SAN URI
//! `urn:sentinella:device:{id}`), `{id}.key` (its private key, mode 0600) and `ca.crt` (the CA
//! the gateway's server certificate must chain to). The configuration is the one the
//! simulators use (`simulators::device::DeviceTls::client_config`): rustls 0.23 with the ring
//! provider, TLS 1.2/1.3, only the bundle's CA trusted, the device certificate presented.
//! (The runner does not depend on the simulators crate; the twenty lines are repeated here.)
//!
//! The private key is never logged: [`DeviceTls`]'s `Debug` leaves the PEM out, and errors
//! name files, never their content.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The CA file of a bundle.
pub const CA_FILE: &str = "ca.crt";

/// A device's mutual-TLS credentials, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceTls {
    /// The device certificate (chain, leaf first).
    pub cert_pem: String,
    /// The device's private key. Never logged.
    pub key_pem: String,
    /// The CA certificates the gateway's server certificate must chain to.
    pub ca_pem: String,
    /// The name the gateway's certificate must carry; `None`: the broker host as given.
    pub server_name: Option<String>,
}

impl fmt::Debug for DeviceTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Where the three files of a bundle are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFiles {
    /// The device certificate.
    pub cert: PathBuf,
    /// The device's private key.
    pub key: PathBuf,
    /// The CA bundle.
    pub ca: PathBuf,
}

impl BundleFiles {
    /// The files `sentinella device add --cert-out DIR` writes for device `id`.
    pub fn in_dir(dir: &Path, id: &str) -> Self {
        BundleFiles {
            cert: dir.join(format!("{id}.crt")),
            key: dir.join(format!("{id}.key")),
            ca: dir.join(CA_FILE),
        }
    }
}

impl DeviceTls {
    /// Reads a bundle; checks that the PEM parses and the key fits the certificate.
    pub fn from_files(files: &BundleFiles) -> anyhow::Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        warn_if_key_readable_by_others(&files.key);
        let tls = DeviceTls {
            cert_pem: read(&files.cert)?,
            key_pem: read(&files.key)?,
            ca_pem: read(&files.ca)?,
            server_name: None,
        };
        tls.client_config("localhost").with_context(|| {
            format!(
                "TLS bundle {}, {}, {}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            )
        })?;
        Ok(tls)
    }

    /// The rustls client configuration (ring provider) presenting the device certificate and
    /// trusting only the bundle's CA. `host` is the broker host the connection goes to: the
    /// gateway's certificate must name it, or [`DeviceTls::server_name`] when that is set.
    pub fn client_config(&self, host: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(ca.context("CA certificate PEM")?)
                .context("CA certificate")?;
        }
        if roots.is_empty() {
            anyhow::bail!("CA bundle: no certificate");
        }
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("device certificate PEM")?;
        if chain.is_empty() {
            anyhow::bail!("device certificate: no certificate");
        }
        // The error of a bad key says nothing about its content.
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| anyhow::anyhow!("device key: not a PEM private key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?;
        let builder = match self.server_name.as_deref() {
            Some(name) if name != host => {
                let name = ServerName::try_from(name.to_owned())
                    .with_context(|| format!("server name {name:?}"))?;
                let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .context("server verifier")?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NamedServer { inner, name }))
            }
            _ => builder.with_root_certificates(roots),
        };
        let config = builder
            .with_client_auth_cert(chain, key)
            .context("device certificate and key do not match")?;
        Ok(Arc::new(config))
    }
}

/// The standard WebPKI verification of the gateway's certificate against the bundle's CA, for
/// a configured name instead of the host connected to (e.g. a gateway reached by IP address
/// whose certificate names `gateway.lan`). Nothing is skipped: chain, validity, usage and
/// signatures are checked as usual.
#[derive(Debug)]
struct NamedServer {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _connected_to: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(unix)]
fn warn_if_key_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            key = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "the device key is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_key_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, id: &str) -> anyhow::Result<(pki::DeviceCa, BundleFiles)> {
        let ca = pki::DeviceCa::generate("test CA")?;
        let cert = ca.issue_device(id)?;
        pki::write_device_bundle(dir, id, &cert, ca.cert_pem())?;
        Ok((ca, BundleFiles::in_dir(dir, id)))
    }

    #[test]
    fn reads_the_bundle_device_add_writes_and_never_shows_the_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (_, files) = bundle(dir.path(), "spo2-0001")?;
        assert_eq!(files.cert, dir.path().join("spo2-0001.crt"));
        assert_eq!(files.key, dir.path().join("spo2-0001.key"));
        assert_eq!(files.ca, dir.path().join("ca.crt"));
        let mut tls = DeviceTls::from_files(&files)?;
        assert!(tls.key_pem.contains("PRIVATE KEY"));
        tls.server_name = Some("gateway.lan".into());
        let shown = format!("{tls:?}");
        assert!(
            !shown.contains("PRIVATE") && shown.contains("gateway.lan"),
            "{shown}"
        );
        tls.client_config("10.0.0.2")?;
        tls.client_config("gateway.lan")?;
        Ok(())
    }

    #[test]
    fn a_bad_bundle_fails_early_without_quoting_the_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (_, files) = bundle(dir.path(), "bp-0001")?;
        // Missing file: the error names it.
        let missing = BundleFiles::in_dir(dir.path(), "bp-0002");
        let e = format!(
            "{:#}",
            DeviceTls::from_files(&missing).err().context("missing")?
        );
        assert!(e.contains("bp-0002.crt"), "{e}");
        // Another device's key: refused, and the message shows no key material.
        let other = dir.path().join("other");
        let (_, other_files) = bundle(&other, "bp-0001")?;
        let mixed = BundleFiles {
            key: other_files.key,
            ..files
        };
        let e = format!(
            "{:#}",
            DeviceTls::from_files(&mixed).err().context("mixed")?
        );
        assert!(e.contains("do not match") && !e.contains("PRIVATE"), "{e}");
        // Not a key at all.
        std::fs::write(
            &mixed.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )?;
        let e = format!(
            "{:#}",
            DeviceTls::from_files(&mixed).err().context("garbage")?
        );
        assert!(!e.contains("AAAA"), "{e}");
        Ok(())
    }
}
