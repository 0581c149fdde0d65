//! The PROXY protocol (v1 text and v2 binary, as HAProxy's `send-proxy` / `send-proxy-v2`
//! write it) on the device listeners, when they sit behind a TCP load balancer.
//!
//! With `[gateway] proxy_protocol = true` every connection must come from a network listed in
//! `proxy_trusted` (the load balancers) and must begin with a PROXY header; anything else is
//! closed at accept (an untrusted peer's header is never believed, and a direct connection from
//! a device would otherwise be parsed as a header and fail anyway). The header names the
//! device's own address, which then takes the socket peer's place for the per-IP limits, the
//! logs and the connection records. A `LOCAL` header (the balancer's own health check) or an
//! `UNKNOWN`/unspecified family keeps the socket peer.
//!
//! The header is read byte-exact (never past its end: the TLS handshake or the MQTT CONNECT
//! follows in the same stream) under `proxy_header_timeout`, and parsed by the `ppp` crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::tls::IpNet;

/// The v2 signature (12 bytes) that starts every binary header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// The longest v2 header this edge reads: the 16-byte fixed part plus addresses and TLVs.
/// HAProxy's are well under 600 bytes with every TLV it can send.
const V2_MAX: usize = 16 + 1024;

/// Who may put a PROXY header in front of a device connection, and how long it may take.
#[derive(Debug, Clone)]
pub(crate) struct ProxyProtocol {
    pub(crate) trusted: Vec<IpNet>,
    pub(crate) header_timeout: Duration,
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no complete PROXY header within the timeout")]
    Timeout,
    #[error("io while reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY header over {0} bytes")]
    TooLong(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

impl ProxyProtocol {
    /// Whether a connection from `peer` may carry a header (it comes from a load balancer).
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(peer))
    }

    /// Reads the header at the start of `stream` (bounded by the header timeout) and returns
    /// the client address it names, or `peer` for a `LOCAL` or address-less header.
    pub(crate) async fn read<S>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyError>
    where
        S: AsyncRead + Unpin,
    {
        let header = tokio::time::timeout(self.header_timeout, read_header(stream))
            .await
            .map_err(|_| ProxyError::Timeout)??;
        Ok(source(&header)?.unwrap_or(peer))
    }
}

/// Reads exactly one header's bytes, v1 or v2, never a byte past it.
async fn read_header<S>(stream: &mut S) -> Result<Vec<u8>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    // Both versions are recognisable from 6 bytes ("PROXY " or the v2 signature's first six).
    let mut buf = vec![0u8; 6];
    stream.read_exact(&mut buf).await?;
    if buf.as_slice() == b"PROXY " {
        // v1: up to CRLF, byte by byte (one header per connection, at most 107 bytes).
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::TooLong(V1_MAX));
            }
            stream.read_exact(&mut byte).await?;
            buf.push(byte[0]);
        }
        return Ok(buf);
    }
    if buf.as_slice() != &V2_SIGNATURE[..6] {
        return Err(ProxyError::NotProxy);
    }
    buf.resize(16, 0);
    stream.read_exact(&mut buf[6..]).await?;
    if &buf[..12] != V2_SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > V2_MAX {
        return Err(ProxyError::TooLong(V2_MAX));
    }
    buf.resize(16 + len, 0);
    stream.read_exact(&mut buf[16..]).await?;
    Ok(buf)
}

/// The client address a complete header names (`None`: keep the socket peer).
fn source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::HeaderResult;
    use ppp::{v1, v2};
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => {
            if h.command == v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            })
        }
        HeaderResult::V1(Err(e)) => Err(ProxyError::Malformed(format!("v1: {e}"))),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Malformed(format!("v2: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .build()
        .expect("header")
    }

    fn proxy() -> ProxyProtocol {
        ProxyProtocol {
            trusted: vec![IpNet::parse("127.0.0.1/32").expect("net")],
            header_timeout: Duration::from_millis(200),
        }
    }

    const PEER: &str = "127.0.0.1:40000";

    #[tokio::test]
    async fn reads_v1_and_v2_without_consuming_what_follows() {
        let peer: SocketAddr = PEER.parse().expect("addr");
        let mut v1 = &b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8883\r\nTLS"[..];
        let got = proxy().read(&mut v1, peer).await.expect("v1");
        assert_eq!(
            got,
            "203.0.113.7:51000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(v1, b"TLS");

        let mut bytes = v2_header(
            "[2001:db8::5]:6000".parse().expect("addr"),
            "[2001:db8::1]:8883".parse().expect("addr"),
        );
        bytes.extend_from_slice(b"\x16\x03\x01");
        let mut v2 = bytes.as_slice();
        let got = proxy().read(&mut v2, peer).await.expect("v2");
        assert_eq!(
            got,
            "[2001:db8::5]:6000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(v2, b"\x16\x03\x01");

        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("header");
        let got = proxy()
            .read(&mut local.as_slice(), peer)
            .await
            .expect("local");
        assert_eq!(got, peer);
        let mut unknown = &b"PROXY UNKNOWN\r\n"[..];
        assert_eq!(
            proxy().read(&mut unknown, peer).await.expect("unknown"),
            peer
        );
    }

    #[tokio::test]
    async fn refuses_malformed_long_or_slow_headers() {
        let peer: SocketAddr = PEER.parse().expect("addr");
        let cases: Vec<Vec<u8>> = vec![
            // Straight into TLS or MQTT: no header.
            b"\x16\x03\x01\x00\xa5\x01\x00\x00".to_vec(),
            b"\x10\x1a\x00\x04MQTT\x04".to_vec(),
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n".to_vec(),
            b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 2\r\n".to_vec(),
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
            // v2 signature with a bad version nibble.
            [&V2_SIGNATURE[..], &[0x31, 0x11, 0x00, 0x0c], &[0u8; 12]].concat(),
            // v2 claiming more than the bound.
            [&V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat(),
            // Truncated (the peer closes mid-header).
            V2_SIGNATURE[..9].to_vec(),
            b"PROXY TCP4 1.2.3.4".to_vec(),
        ];
        for case in cases {
            let got = proxy().read(&mut case.as_slice(), peer).await;
            assert!(got.is_err(), "accepted {case:?}: {got:?}");
        }
        // A peer that sends half a header and waits: refused at the timeout.
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 1.2")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        let got = proxy().read(&mut server, peer).await;
        assert!(matches!(got, Err(ProxyError::Timeout)), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn trust_is_by_network() {
        let p = proxy();
        assert!(p.trusts("127.0.0.1".parse().expect("ip")));
        assert!(p.trusts("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!p.trusts("127.0.0.2".parse().expect("ip")));
    }
}
