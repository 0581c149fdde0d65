//! Devices behind a TCP load balancer: the PROXY protocol at the edge (`[gateway]
//! proxy_protocol`), first with headers written by a test client (v1 and v2, malformed, slow,
//! from an untrusted peer), then through a real HAProxy (Debian's) in TCP mode with TLS passed
//! through to the node and `send-proxy-v2`, with its health check on the node's `/readyz`.
//! The device's own address, not the balancer's, is what the per-IP limits count.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use e2e::harness::{Db, RawDevice, Stack, now_ms, topic};
use e2e::kit::{Haproxy, closed_by_server, free_port};
use gateway::Metrics;
use store::DeviceKind;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// A TCP connection to `to` from the loopback address `from` (the whole 127/8 is local).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    Ok(socket.connect(to).await?)
}

/// A test load balancer: forwards every connection it accepts to `edge` after writing
/// `header` (a PROXY protocol header) in front of it.
async fn forwarder(edge: SocketAddr, header: Vec<u8>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let header = header.clone();
            tokio::spawn(async move {
                let Ok(mut node) = TcpStream::connect(edge).await else {
                    return;
                };
                if node.write_all(&header).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
                }
            });
        }
    });
    Ok(addr)
}

fn v2_header(source: &str, destination: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let source: SocketAddr = source.parse()?;
    Ok(ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()?)
}

fn bp(seq: u32) -> String {
    format!(
        r#"{{"v":1,"readings":[{{"seq":{seq},"ts":{},"kind":"bp","sys":128,"dia":82,"pulse":70,"unit":"mmHg"}}]}}"#,
        now_ms()
    )
}

/// Connects `dev`, subscribes to its acks, publishes reading `seq` and waits for its ack.
async fn publish_acked(dev: &mut RawDevice, id: &str, seq: u32) -> anyhow::Result<()> {
    dev.connected().await.map_err(anyhow::Error::msg)?;
    dev.subscribe(&topic(id, "ack")).await?;
    dev.publish(&topic(id, "readings"), bp(seq)).await?;
    loop {
        let (t, payload) = dev
            .next_message(WAIT)
            .await
            .ok_or_else(|| anyhow::anyhow!("{id}: no ack"))?;
        if t.ends_with("/ack") {
            let ack = String::from_utf8(payload)?;
            anyhow::ensure!(ack.contains(&format!("[{seq},{seq}]")), "{ack}");
            return Ok(());
        }
    }
}

async fn wait_counter(counter: &std::sync::atomic::AtomicU64, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while Metrics::get(counter) < at_least && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Metrics::get(counter)
}

/// The first bytes of a TLS ClientHello: what a device sends when it connects directly.
const PARTIAL_CLIENT_HELLO: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_names_the_device_for_limits_and_bad_headers_are_refused() -> anyhow::Result<()>
{
    let header_timeout = Duration::from_secs(1);
    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.proxy_protocol = true;
        c.gateway.proxy_trusted = vec!["127.0.0.1/32".into()];
        c.gateway.proxy_header_timeout = header_timeout;
        c.gateway.max_connections_per_ip = 2;
    })
    .await?;
    let m = stack.metrics.clone();
    let patient = stack.patient(&["hypertension"]).await?;
    let first = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let second = stack.device(patient.id, DeviceKind::BloodPressure).await?;

    // A v2 header (binary, HAProxy's send-proxy-v2) in front of an mTLS device.
    let via_a = forwarder(
        stack.tls_edge,
        v2_header("203.0.113.9:5000", stack.tls_edge)?,
    )
    .await?;
    let mut dev = RawDevice::connect_tls(via_a, &first.id, &stack.device_tls(&first.id).await?)?;
    publish_acked(&mut dev, &first.id, 1).await?;
    stack.wait_readings(&first.id, 1, WAIT).await?;

    // The per-IP limit (2) counts 203.0.113.9, not the balancer: one more connection from it is
    // held, the next is refused; another device address is unaffected.
    let mut held = TcpStream::connect(via_a).await?;
    // (Admitted before the next one arrives: the forwarder connects each on its own.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = TcpStream::connect(via_a).await?;
    assert!(closed_by_server(&mut refused, Duration::from_secs(2)).await);
    assert!(!closed_by_server(&mut held, Duration::from_millis(300)).await);
    assert_eq!(
        wait_counter(&m.edge_ip_concurrency_refused_total, 1).await,
        1
    );
    // A v1 header (text) naming another address.
    let v1 = format!(
        "PROXY TCP4 198.51.100.4 127.0.0.1 41000 {}\r\n",
        stack.tls_edge.port()
    );
    let via_b = forwarder(stack.tls_edge, v1.into_bytes()).await?;
    let mut dev2 = RawDevice::connect_tls(via_b, &second.id, &stack.device_tls(&second.id).await?)?;
    publish_acked(&mut dev2, &second.id, 1).await?;
    assert_eq!(Metrics::get(&m.edge_ip_concurrency_refused_total), 1);

    // The plain (password) listener takes the header too.
    let via_plain = forwarder(stack.edge, v2_header("203.0.113.50:1", stack.edge)?).await?;
    let third = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let mut dev3 = RawDevice::connect(via_plain, &third.id, &third.secret);
    publish_acked(&mut dev3, &third.id, 1).await?;

    // A peer outside proxy_trusted is closed at accept, whatever it sends.
    let mut untrusted = connect_from(Ipv4Addr::new(127, 0, 0, 2), stack.tls_edge).await?;
    let _ = untrusted
        .write_all(&v2_header("203.0.113.77:1", stack.tls_edge)?)
        .await;
    assert!(closed_by_server(&mut untrusted, Duration::from_secs(2)).await);
    assert_eq!(
        wait_counter(&m.edge_proxy_untrusted_refused_total, 1).await,
        1
    );

    // From a trusted peer: no header (straight into TLS), a malformed one, a slow one.
    let mut direct = TcpStream::connect(stack.tls_edge).await?;
    direct.write_all(&PARTIAL_CLIENT_HELLO).await?;
    assert!(closed_by_server(&mut direct, Duration::from_secs(2)).await);
    let mut malformed = TcpStream::connect(stack.tls_edge).await?;
    malformed
        .write_all(b"PROXY TCP4 203.0.113.1 nonsense 1 2\r\n")
        .await?;
    assert!(closed_by_server(&mut malformed, Duration::from_secs(2)).await);
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(stack.tls_edge).await?;
    slow.write_all(b"PROXY TCP4 203.0").await?;
    assert!(closed_by_server(&mut slow, header_timeout + Duration::from_secs(2)).await);
    assert!(started.elapsed() >= header_timeout - Duration::from_millis(100));
    assert_eq!(
        wait_counter(&m.edge_proxy_header_failures_total, 3).await,
        3
    );

    // The connected devices are untouched by all of this.
    dev.publish(&topic(&first.id, "readings"), bp(2)).await?;
    stack.wait_readings(&first.id, 2, WAIT).await?;
    let text = stack.get("/metrics").await?.1;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.contains("sentinella_edge_proxy_header_failures_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("sentinella_edge_proxy_untrusted_refused_total 1\n"),
        "{text}"
    );
    dev.close();
    dev2.close();
    dev3.close();
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_through_haproxy_send_proxy_v2() -> anyhow::Result<()> {
    let stack = Stack::start_with(Db::Sqlite, |c| {
        c.gateway.proxy_protocol = true;
        c.gateway.proxy_trusted = vec!["127.0.0.1/32".into()];
        c.gateway.max_connections_per_ip = 2;
    })
    .await?;
    let devices = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // The shape of packaging/haproxy/sentinella.cfg, on this test's ports.
    let config = format!(
        r#"
global
    maxconn 2000
defaults
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout check 2s
frontend devices_tls
    mode tcp
    bind {devices}
    default_backend nodes_tls
backend nodes_tls
    mode tcp
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    server node1 {tls} send-proxy-v2 check port {api_port} inter 500ms fall 2 rise 1
frontend api
    mode http
    bind {api}
    timeout client 30s
    default_backend nodes_api
backend nodes_api
    mode http
    timeout server 30s
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    server node1 {node_api} check inter 500ms fall 2 rise 1
"#,
        tls = stack.tls_edge,
        api_port = stack.api.port(),
        node_api = stack.api,
    );
    let _haproxy = Haproxy::start(&config, devices).await?;

    // The API through HAProxy (HTTP mode): the node's /readyz.
    let status = reqwest::get(format!("http://{api}/readyz")).await?.status();
    assert_eq!(status.as_u16(), 200);

    // An mTLS device through HAProxy (TLS passed through; mutual TLS ends at the node, which
    // only accepts the connection because HAProxy's v2 header came first).
    let patient = stack.patient(&["hypertension"]).await?;
    let device = stack.device(patient.id, DeviceKind::BloodPressure).await?;
    let tls = stack.device_tls(&device.id).await?;
    let mut dev = RawDevice::connect_tls(devices, &device.id, &tls)?;
    publish_acked(&mut dev, &device.id, 1).await?;
    stack.wait_readings(&device.id, 1, WAIT).await?;

    // The node counts the device's address HAProxy saw (127.0.0.7), not HAProxy's: two held,
    // the third refused, while the device from 127.0.0.1 stays connected.
    let from = Ipv4Addr::new(127, 0, 0, 7);
    let mut a = connect_from(from, devices).await?;
    let mut b = connect_from(from, devices).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = connect_from(from, devices).await?;
    assert!(closed_by_server(&mut c, Duration::from_secs(3)).await);
    assert!(!closed_by_server(&mut a, Duration::from_millis(200)).await);
    assert!(!closed_by_server(&mut b, Duration::from_millis(200)).await);
    assert_eq!(
        wait_counter(&stack.metrics.edge_ip_concurrency_refused_total, 1).await,
        1
    );
    assert_eq!(
        Metrics::get(&stack.metrics.edge_proxy_header_failures_total),
        0
    );
    dev.publish(&topic(&device.id, "readings"), bp(2)).await?;
    stack.wait_readings(&device.id, 2, WAIT).await?;
    dev.close();
    stack.stop().await;
    Ok(())
}
