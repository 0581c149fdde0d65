//! The edge's TLS listener: rustls 0.23 (ring provider) through tokio-rustls, client
//! certificates required and verified against the device CA; per-source-IP admission limits.
//!
//! The handshake runs inside each connection's task under `tls_handshake_timeout`, never in the
//! accept loop, so silent or stalled sockets cost one task each and block nobody (the fault
//! that keeps rumqttd's own TLS listener out, see `rumqttd-notes.md` §1.3).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::GatewayError;

/// What the TLS listener presents and trusts, all PEM.
#[derive(Clone)]
pub struct EdgeTls {
    /// The edge's certificate chain (leaf first).
    pub cert_chain_pem: String,
    /// The private key of the leaf. Never logged.
    pub key_pem: String,
    /// The CA certificates a device certificate must chain to.
    pub client_ca_pem: String,
}

impl fmt::Debug for EdgeTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeTls").finish_non_exhaustive()
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 with the ring provider, client
/// certificates required (`WebPkiClientVerifier`, which also checks the `clientAuth` usage).
pub(crate) fn server_config(tls: &EdgeTls) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let bad = |what: &str, e: &dyn fmt::Display| GatewayError::Tls(format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(tls.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("server certificate", &e))?;
    if chain.is_empty() {
        return Err(GatewayError::Tls(
            "server certificate: no certificate".into(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| bad("server key", &e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(tls.client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| bad("client CA", &e))?;
        roots.add(ca).map_err(|e| bad("client CA", &e))?;
    }
    if roots.is_empty() {
        return Err(GatewayError::Tls("client CA: no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad("client verifier", &e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("server certificate", &e))?;
    Ok(Arc::new(config))
}

/// Why a source IP was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpRefusal {
    /// Too many connections open from it.
    Concurrency,
    /// Too many new connections from it in the current second.
    Rate,
}

#[derive(Debug)]
struct IpState {
    open: usize,
    window: Instant,
    new_in_window: u32,
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or
/// /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `text`; the host bits need not be zero.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let bad = || format!("{text:?} is not a network in CIDR notation (e.g. 10.0.0.0/8)");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (net[full] & mask) == (ip[full] & mask)
}

/// Per-source-IP admission: at most `max_open` connections at once and `per_sec` new ones per
/// one-second window, except from the `exempt` networks. Entries without open connections are
/// pruned when the table grows.
#[derive(Debug)]
pub(crate) struct IpLimits {
    max_open: usize,
    per_sec: u32,
    exempt: Vec<IpNet>,
    state: Mutex<HashMap<IpAddr, IpState>>,
}

/// One admitted connection; releases its slot when dropped.
#[derive(Debug)]
pub(crate) struct IpSlot {
    /// `None` for an exempt address, which holds no slot.
    held: Option<(Arc<IpLimits>, IpAddr)>,
}

const WINDOW: Duration = Duration::from_secs(1);
const PRUNE_ABOVE: usize = 10_000;

impl IpLimits {
    pub(crate) fn new(max_open: usize, per_sec: u32, exempt: Vec<IpNet>) -> Arc<Self> {
        Arc::new(IpLimits {
            max_open,
            per_sec,
            exempt,
            state: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one new connection from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, IpRefusal> {
        if self.exempt.iter().any(|net| net.contains(ip)) {
            return Ok(IpSlot { held: None });
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() > PRUNE_ABOVE {
            state.retain(|_, s| s.open > 0 || now.duration_since(s.window) < WINDOW);
        }
        let entry = state.entry(ip).or_insert(IpState {
            open: 0,
            window: now,
            new_in_window: 0,
        });
        if now.duration_since(entry.window) >= WINDOW {
            entry.window = now;
            entry.new_in_window = 0;
        }
        if entry.new_in_window >= self.per_sec {
            return Err(IpRefusal::Rate);
        }
        entry.new_in_window += 1;
        if entry.open >= self.max_open {
            return Err(IpRefusal::Concurrency);
        }
        entry.open += 1;
        Ok(IpSlot {
            held: Some((self.clone(), ip)),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some((limits, ip)) = &self.held else {
            return;
        };
        let mut state = limits.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = state.get_mut(ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && entry.window.elapsed() >= WINDOW {
                state.remove(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_networks() {
        let net = IpNet::parse("10.20.0.0/16").unwrap();
        assert!(net.contains([10, 20, 255, 1].into()));
        assert!(!net.contains([10, 21, 0, 1].into()));
        let mapped: IpAddr = "::ffff:10.20.3.4".parse().unwrap();
        assert!(net.contains(mapped));
        let odd = IpNet::parse("192.168.1.128/25").unwrap();
        assert!(odd.contains([192, 168, 1, 200].into()));
        assert!(!odd.contains([192, 168, 1, 100].into()));
        let one = IpNet::parse("127.0.0.7").unwrap();
        assert!(one.contains([127, 0, 0, 7].into()) && !one.contains([127, 0, 0, 8].into()));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains([10, 20, 0, 1].into()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains([8, 8, 8, 8].into())
        );
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "nope",
            "::/129",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exempt_networks_are_not_limited() {
        let limits = IpLimits::new(1, 1, vec![IpNet::parse("10.9.0.0/16").unwrap()]);
        let nat: IpAddr = [10, 9, 0, 1].into();
        let held: Vec<_> = (0..100).map(|_| limits.admit(nat).unwrap()).collect();
        assert_eq!(held.len(), 100);
        let other: IpAddr = [10, 10, 0, 1].into();
        let _one = limits.admit(other).unwrap();
        assert!(limits.admit(other).is_err());
    }

    #[test]
    fn per_ip_limits() {
        let limits = IpLimits::new(2, 3, Vec::new());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = limits.admit(a).unwrap();
        let _s2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), IpRefusal::Concurrency);
        // The rate counts attempts: the fourth in the same second is refused for rate.
        drop(s1);
        assert_eq!(limits.admit(a).unwrap_err(), IpRefusal::Rate);
        // Another IP is not affected.
        assert!(limits.admit(b).is_ok());
    }

    #[test]
    fn server_config_needs_valid_material() {
        let ca = pki::DeviceCa::generate("t").unwrap();
        let server = ca.issue_server(&["localhost".into()]).unwrap();
        let tls = EdgeTls {
            cert_chain_pem: server.cert_pem.clone(),
            key_pem: server.key_pem.clone(),
            client_ca_pem: ca.cert_pem().to_owned(),
        };
        assert!(server_config(&tls).is_ok());
        assert!(!format!("{tls:?}").contains("PRIVATE"));
        let no_ca = EdgeTls {
            client_ca_pem: String::new(),
            ..tls.clone()
        };
        assert!(server_config(&no_ca).is_err());
        let bad_key = EdgeTls {
            key_pem: "nope".into(),
            ..tls
        };
        assert!(server_config(&bad_key).is_err());
    }
}
