//! Fuzz target `mqtt_v4`: rumqttd's MQTT 3.1.1 codec on untrusted device bytes.
//!
//! The gateway's edge (gateway/src/edge.rs) reads every device's TCP stream with
//! `V4.read_mut` and writes packets back with `V4.write`. This target does the same on
//! arbitrary bytes: decode packets until the codec errors (including "need more bytes"),
//! and re-encode each decoded packet. A panic here is in rumqttd, a third-party crate; such
//! findings are recorded in FINDINGS.md, not patched.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::{Protocol, v4::V4};

/// The edge's packet size limit: the default `max_packet_size` of gateway/src/config.rs.
const MAX_PACKET: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Same as `loop { match V4.read_mut(..) { Ok(p) => write, Err(_) => break } }`.
    while let Ok(packet) = V4.read_mut(&mut buf, MAX_PACKET) {
        let mut out = BytesMut::new();
        let _ = V4.write(packet, &mut out);
    }
});
