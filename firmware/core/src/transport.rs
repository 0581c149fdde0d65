//! The uplink transport a board provides: one MQTT 3.1.1 session with the gateway's edge.
//!
//! The implementation owns the network and the MQTT client. Its contract:
//! - **Session.** [`Transport::connect`] opens a *new, clean* session (client id = username =
//!   device id, password = device secret, will = `{"online":false}` on the device's `status`
//!   topic) and subscribes at QoS 1 to the device's `ack` and `config` topics; it returns once
//!   the SUBACK has arrived. It must not reconnect on its own afterwards: the core decides when
//!   to try again (with back-off), and re-sends everything in flight because a clean session
//!   forgets unacknowledged publishes.
//! - **Publish.** [`Transport::publish`] sends at QoS 1. Returning `Ok` means handed to the
//!   session, nothing more; durability comes from the gateway's `ack` topic.
//! - **Receive.** [`Transport::receive`] waits for the next message on the `ack` or `config`
//!   topic. It must be cancel-safe (the core races it against timers): dropping the future must
//!   not lose a message that was not yet returned.
//! - **Errors.** Any `Err` means the session is gone; the core calls [`Transport::disconnect`]
//!   and later [`Transport::connect`] again.
//!
//! Security (TLS, mutual TLS) is the transport's business and invisible here.

use protocol::Channel;

/// A message from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// [`Channel::Ack`] or [`Channel::Config`].
    pub channel: Channel,
    /// Payload length, written at the start of the receive buffer. A payload longer than the
    /// buffer is reported with its full length and must be ignored by the caller.
    pub len: usize,
}

/// One MQTT session with the gateway; see the module docs for the contract.
pub trait Transport {
    /// Why an operation failed (the session is then gone).
    type Error: core::fmt::Debug;

    /// Opens a clean session and subscribes to the device's `ack` and `config` topics.
    async fn connect(&mut self) -> Result<(), Self::Error>;

    /// Publishes `payload` at QoS 1 on the device's `channel` topic (`readings` or `status`).
    async fn publish(&mut self, channel: Channel, payload: &[u8]) -> Result<(), Self::Error>;

    /// Waits for the next message on the `ack` or `config` topic, copying its payload into
    /// `buf` (as much as fits). Cancel-safe.
    async fn receive(&mut self, buf: &mut [u8]) -> Result<Incoming, Self::Error>;

    /// Closes the session (cleanly if it is still up, so the broker drops the will).
    async fn disconnect(&mut self);
}
