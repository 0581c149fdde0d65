//! Sentinella's device CA: one CA key and certificate, kept in the data directory, that issues
//! every device's client certificate and the edge's server certificate; and the rule that
//! reads a device's identity back from a certificate the edge verified.
//!
//! # Identity rule
//! A device certificate names its device twice: subject CN = device id, and exactly one
//! subject alternative name URI `urn:sentinella:device:{id}` ([`device_uri`]). The edge takes
//! the identity from the URI and refuses a certificate whose CN differs from it, or that has no
//! such URI: a certificate of the same CA issued for another purpose (the edge's own server
//! certificate, whose SANs are DNS names and IPs) can therefore never pass as a device. Device
//! certificates carry the `clientAuth` extended key usage only, the edge's `serverAuth` only.
//!
//! Keys are ECDSA P-256 (rcgen with the ring backend). Private keys are written with mode 0600
//! and never logged: [`IssuedCert`]'s `Debug` leaves the key out.

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The SAN URI prefix naming a device.
pub const DEVICE_URI_PREFIX: &str = "urn:sentinella:device:";

/// File names of the CA inside its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a device certificate is valid.
pub const DEVICE_CERT_DAYS: i64 = 5 * 365;
/// How long the CA is valid.
const CA_DAYS: i64 = 20 * 365;
/// How long an edge server certificate is valid (re-issued at every start by default).
const SERVER_CERT_DAYS: i64 = 365;
/// Back-dating of `not_before`, for devices whose clock is a little behind.
const CLOCK_SLACK: Duration = Duration::hours(1);

/// What can go wrong with the CA or a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused to build or parse something.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// Only one of the CA's two files exists.
    #[error("{0}")]
    Incomplete(String),
    /// A certificate does not name a device as the identity rule requires.
    #[error("not a device certificate: {0}")]
    NotDevice(&'static str),
}

/// The device `id`'s SAN URI, `urn:sentinella:device:{id}`.
pub fn device_uri(id: &str) -> String {
    format!("{DEVICE_URI_PREFIX}{id}")
}

/// Lowercase hex SHA-256 of a certificate's DER: the fingerprint the store keeps per device.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Never log it.
    pub key_pem: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the certificate's DER, lowercase hex ([`fingerprint`]).
    pub sha256: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("sha256", &self.sha256)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The device CA: its certificate and the means to sign with its key.
pub struct DeviceCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCa").finish_non_exhaustive()
    }
}

impl DeviceCa {
    /// A new CA (kept in memory only; see [`DeviceCa::load_or_create`]).
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Sentinella");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SLACK;
        params.not_after = now + Duration::days(CA_DAYS);
        params.serial_number = Some(random_serial());
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DeviceCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads a CA from its certificate and key files (PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(DeviceCa { cert_pem, issuer })
    }

    /// The CA in `dir` (`ca.pem`, `ca.key`), created there on first use with the key file
    /// readable by its owner only. Returns the CA and whether it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), PkiError> {
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((DeviceCa::load(&cert, &key)?, false)),
            (false, false) => {
                create_private_dir(dir)?;
                let ca = DeviceCa::generate("Sentinella device CA")?;
                write_private(&key, ca.issuer.key().serialize_pem().as_bytes())?;
                write_public(&cert, ca.cert_pem.as_bytes())?;
                Ok((ca, true))
            }
            _ => Err(PkiError::Incomplete(format!(
                "{} and {} must both exist or both be absent",
                cert.display(),
                key.display()
            ))),
        }
    }

    /// The CA certificate, PEM (what devices and the edge trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate for device `id`: CN = id, SAN URI [`device_uri`], `clientAuth`.
    pub fn issue_device(&self, id: &str) -> Result<IssuedCert, PkiError> {
        let mut params = leaf_params(DEVICE_CERT_DAYS);
        params.distinguished_name.push(DnType::CommonName, id);
        params.subject_alt_names = vec![SanType::URI(device_uri(id).try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A server certificate for the edge's TLS listener, for `names` (DNS names or IP
    /// addresses), `serverAuth` only.
    pub fn issue_server(&self, names: &[String]) -> Result<IssuedCert, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        let leaf = leaf_params(SERVER_CERT_DAYS);
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.serial_number = leaf.serial_number;
        params.key_usages = leaf.key_usages;
        params.use_authority_key_identifier_extension = true;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Sentinella edge");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            sha256: fingerprint(cert.der()),
            not_after: params.not_after,
        })
    }
}

fn leaf_params(days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SLACK;
    params.not_after = now + Duration::days(days);
    params.serial_number = Some(random_serial());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

/// 16 random bytes, positive (top bit clear) as RFC 5280 wants.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The device id a device certificate names (see the identity rule in the crate docs). Only
/// call it on a certificate the TLS layer has verified against the device CA.
pub fn device_id_from_cert(der: &[u8]) -> Result<String, PkiError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| PkiError::NotDevice("unparsable certificate"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| PkiError::NotDevice("malformed subject alternative names"))?
        .ok_or(PkiError::NotDevice("no subject alternative name"))?;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(DEVICE_URI_PREFIX),
            _ => None,
        });
    let id = ids.next().ok_or(PkiError::NotDevice("no device URI"))?;
    if ids.next().is_some() {
        return Err(PkiError::NotDevice("more than one device URI"));
    }
    let mut cns = cert.subject().iter_common_name();
    let cn = cns
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or(PkiError::NotDevice("no common name"))?;
    if cns.next().is_some() || cn != id {
        return Err(PkiError::NotDevice(
            "common name differs from the device URI",
        ));
    }
    Ok(id.to_owned())
}

/// A device's mutual-TLS credentials, all PEM: its certificate (from the device CA), its
/// private key, and the CA certificate the edge's server certificate must chain to. What
/// provisioning hands a device, what the simulators keep in their fleet files.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBundle {
    /// The device's certificate chain.
    pub cert_pem: String,
    /// The device's private key. Never logged.
    pub key_pem: String,
    /// The CA certificates the edge's server certificate must chain to.
    pub ca_pem: String,
}

impl fmt::Debug for DeviceBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceBundle").finish_non_exhaustive()
    }
}

impl DeviceBundle {
    /// The bundle of a certificate just issued by a CA whose certificate is `ca_pem`.
    pub fn issued(issued: IssuedCert, ca_pem: &str) -> Self {
        DeviceBundle {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem: ca_pem.to_owned(),
        }
    }

    /// Writes the bundle of device `id` into `dir` (created with mode 0700): `{id}.crt`,
    /// `{id}.key` (mode 0600) and `ca.crt`. An existing key file is replaced.
    pub fn write(&self, dir: &Path, id: &str) -> Result<BundlePaths, PkiError> {
        create_private_dir(dir)?;
        let paths = BundlePaths::in_dir(dir, id);
        write_private(&paths.key, self.key_pem.as_bytes())?;
        write_public(&paths.cert, self.cert_pem.as_bytes())?;
        write_public(&paths.ca, self.ca_pem.as_bytes())?;
        Ok(paths)
    }

    /// Reads the three files of a bundle.
    pub fn read(paths: &BundlePaths) -> Result<Self, PkiError> {
        Ok(DeviceBundle {
            cert_pem: read(&paths.cert)?,
            key_pem: read(&paths.key)?,
            ca_pem: read(&paths.ca)?,
        })
    }
}

/// Where the files of a [`DeviceBundle`] are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundlePaths {
    /// The device certificate.
    pub cert: PathBuf,
    /// The device's private key (mode 0600).
    pub key: PathBuf,
    /// The CA certificate (to verify the edge).
    pub ca: PathBuf,
}

impl BundlePaths {
    /// The files `sentinella device add --cert-out DIR` writes for device `id`.
    pub fn in_dir(dir: &Path, id: &str) -> Self {
        BundlePaths {
            cert: dir.join(format!("{id}.crt")),
            key: dir.join(format!("{id}.key")),
            ca: dir.join("ca.crt"),
        }
    }
}

/// Writes a device's bundle from a certificate just issued: see [`DeviceBundle::write`].
pub fn write_device_bundle(
    dir: &Path,
    id: &str,
    issued: &IssuedCert,
    ca_pem: &str,
) -> Result<BundlePaths, PkiError> {
    DeviceBundle::issued(issued.clone(), ca_pem).write(dir, id)
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(io(dir))
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    std::fs::write(path, bytes).map_err(io(path))
}

/// Writes a file readable by its owner only (mode 0600 from creation on, also when replacing):
/// keys, and every other secret the tools write (fleet files, the demo password).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path))?;
        file.write_all(bytes).map_err(io(path))
    }
    #[cfg(not(unix))]
    std::fs::write(path, bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn device_certificates_name_their_device() {
        let ca = DeviceCa::generate("test CA").unwrap();
        let issued = ca.issue_device("bp-0001").unwrap();
        assert_eq!(
            device_id_from_cert(&der(&issued.cert_pem)).unwrap(),
            "bp-0001"
        );
        assert_eq!(issued.sha256, fingerprint(&der(&issued.cert_pem)));
        assert_eq!(issued.serial.len(), 32);
        assert!(!format!("{issued:?}").contains("PRIVATE"));
        // The edge's own certificate is not a device.
        let server = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        assert!(device_id_from_cert(&der(&server.cert_pem)).is_err());
        assert!(device_id_from_cert(b"garbage").is_err());
    }

    #[test]
    fn ca_is_created_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let (ca, created) = DeviceCa::load_or_create(&pki).unwrap();
        assert!(created);
        let (again, created) = DeviceCa::load_or_create(&pki).unwrap();
        assert!(!created);
        assert_eq!(ca.cert_pem(), again.cert_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(pki.join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A certificate issued by the reloaded CA chains to the same CA certificate.
        let issued = again.issue_device("spo2-7").unwrap();
        let paths =
            write_device_bundle(&dir.path().join("out"), "spo2-7", &issued, again.cert_pem())
                .unwrap();
        assert!(
            std::fs::read_to_string(&paths.key)
                .unwrap()
                .contains("PRIVATE KEY")
        );
        std::fs::remove_file(pki.join(CA_CERT_FILE)).unwrap();
        assert!(DeviceCa::load_or_create(&pki).is_err());
    }
}
