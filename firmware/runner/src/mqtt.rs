//! The uplink transport over rumqttc: the core's [`Transport`] contract on a Linux board.
//!
//! Each [`Transport::connect`] builds a fresh rumqttc client and event loop (clean session),
//! drives it until the CONNACK and the SUBACK of the `ack` and `config` topics, then hands the
//! event loop to a task that only polls: it forwards the gateway's messages to
//! [`Transport::receive`] through a channel and, on the first error, reports the session lost
//! and **stops**. rumqttc would otherwise reconnect on the next poll, in a tight loop and
//! behind the core's back; here the core decides when to try again (back-off with jitter) and
//! re-sends what was in flight, since a clean session forgets unacknowledged publishes.
//!
//! **Security.** [`Security::MutualTls`] (the default deployment) speaks TLS to the gateway's
//! TLS listener (port 8883) with rustls and the ring provider, presenting the device
//! certificate ([`crate::tls`]); the certificate is the identity, so no username or password
//! is sent, and the client id is the device id the certificate names. [`Security::Plain`] is
//! username/password over plain TCP, for the gateway's loopback or trusted-network listener.

use std::time::Duration;

use bytes::Bytes;
use firmware_core::transport::{Incoming as CoreIncoming, Transport};
use protocol::{Channel, DeviceId, Topic};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
};

use crate::tls::DeviceTls;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest MQTT packet either way: a full batch (16 KiB) plus topic and header, with room.
const MAX_PACKET: usize = 32 * 1024;
/// Messages buffered between the poll task and the device loop.
const INBOX: usize = 64;
/// How long a clean disconnect may take.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);

/// How the session is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Mutual TLS with the device certificate (the gateway's TLS listener; no password).
    MutualTls(DeviceTls),
    /// Username (the device id) and password (the device secret) over plain TCP: the secret
    /// and the readings travel in clear; keep it to loopback or a trusted network.
    Plain,
}

impl Security {
    /// The gateway's default port for this mode: 8883 (TLS) or 1884 (plain).
    pub fn default_port(&self) -> u16 {
        match self {
            Security::MutualTls(_) => 8883,
            Security::Plain => 1884,
        }
    }
}

/// Where and who.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// The gateway's edge host.
    pub host: String,
    /// The gateway's edge port.
    pub port: u16,
    /// Device id (client id, username, topic level).
    pub device_id: String,
    /// Device secret (password; plain mode only).
    pub secret: String,
    /// Transport security.
    pub security: Security,
}

/// Why the transport failed (the session is gone).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The connection or the MQTT session failed.
    #[error("mqtt: {0}")]
    Connection(#[from] rumqttc::ConnectionError),
    /// The gateway refused the CONNECT (4: bad credentials, 5: not authorised).
    #[error("connection refused: {0:?}")]
    Refused(ConnectReturnCode),
    /// The gateway refused the subscription to the ack/config topics.
    #[error("subscription to ack/config refused")]
    SubscribeRefused,
    /// The client could not queue a request: the event loop is gone. (rumqttc's error
    /// carries the whole request, readings included; it is not kept, so patient data never
    /// reach the logs.)
    #[error("the MQTT event loop is gone")]
    Client,
    /// No session is open.
    #[error("not connected")]
    NotConnected,
    /// The poll task reported the session lost.
    #[error("connection lost: {0}")]
    Lost(String),
}

enum Inbound {
    Message(Channel, Bytes),
    Lost(String),
}

/// The device's topics.
#[derive(Debug, Clone)]
struct Topics {
    readings: String,
    status: String,
    ack: String,
    config: String,
}

/// The rumqttc transport.
#[derive(Debug)]
pub struct MqttTransport {
    settings: MqttSettings,
    topics: Topics,
    tls: Option<TlsConfig>,
    session: Option<Session>,
}

/// The rustls configuration, built once; its `Debug` shows nothing of the key.
#[derive(Clone)]
struct TlsConfig(std::sync::Arc<rustls::ClientConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Session {
    client: AsyncClient,
    inbox: mpsc::Receiver<InboundMsg>,
    poll: JoinHandle<()>,
}

impl Drop for Session {
    /// A dropped session (the runner stopped, or was killed like a power cut) closes its
    /// socket instead of leaving a poll task keeping the connection alive.
    fn drop(&mut self) {
        self.poll.abort();
    }
}

/// `Inbound` with a Debug impl for the channel type.
struct InboundMsg(Inbound);

impl std::fmt::Debug for InboundMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inbound::Message(c, b) => write!(f, "Message({c:?}, {} bytes)", b.len()),
            Inbound::Lost(e) => write!(f, "Lost({e})"),
        }
    }
}

impl MqttTransport {
    /// A transport for the device; validates the id and, with TLS, the certificate bundle.
    pub fn new(settings: MqttSettings) -> anyhow::Result<Self> {
        let device = DeviceId::parse(&settings.device_id)
            .map_err(|e| anyhow::anyhow!("device id {:?}: {e}", settings.device_id))?;
        let topic = |channel| Topic::new(device, channel).to_string();
        let topics = Topics {
            readings: topic(Channel::Readings),
            status: topic(Channel::Status),
            ack: topic(Channel::Ack),
            config: topic(Channel::Config),
        };
        let tls = match &settings.security {
            Security::MutualTls(tls) => Some(TlsConfig(tls.client_config(&settings.host)?)),
            Security::Plain => None,
        };
        Ok(MqttTransport {
            settings,
            topics,
            tls,
            session: None,
        })
    }

    /// The rumqttc options of a new session.
    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let mut options = MqttOptions::new(s.device_id.clone(), s.host.clone(), s.port);
        match &self.tls {
            // The certificate is the credential: no username or password on the wire.
            Some(TlsConfig(config)) => {
                options.set_transport(rumqttc::Transport::tls_with_config(
                    TlsConfiguration::Rustls(config.clone()),
                ));
            }
            None => {
                options.set_credentials(s.device_id.clone(), s.secret.clone());
            }
        }
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                self.topics.status.clone(),
                r#"{"online":false}"#,
                QoS::AtLeastOnce,
                false,
            ));
        options
    }

    fn channel_of(&self, topic: &str) -> Option<Channel> {
        if topic == self.topics.ack {
            Some(Channel::Ack)
        } else if topic == self.topics.config {
            Some(Channel::Config)
        } else {
            None
        }
    }

    async fn close(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        // Ask for a DISCONNECT (so the broker drops the will) and give the poll task a moment
        // to send it; dropping the session stops it either way.
        let _ = session.client.try_disconnect();
        let _ = tokio::time::timeout(DISCONNECT_GRACE, &mut session.poll).await;
    }
}

impl Transport for MqttTransport {
    type Error = MqttError;

    async fn connect(&mut self) -> Result<(), MqttError> {
        self.close().await;
        let (client, mut eventloop) = AsyncClient::new(self.options(), 16);
        client
            .subscribe_many([
                SubscribeFilter::new(self.topics.ack.clone(), QoS::AtLeastOnce),
                SubscribeFilter::new(self.topics.config.clone(), QoS::AtLeastOnce),
            ])
            .await
            .map_err(|_| MqttError::Client)?;
        let (tx, inbox) = mpsc::channel(INBOX);
        // Until the SUBACK: a refused CONNECT or subscription fails the attempt.
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::ConnAck(ack)) if ack.code != ConnectReturnCode::Success => {
                    return Err(MqttError::Refused(ack.code));
                }
                Event::Incoming(Packet::SubAck(suback)) => {
                    if suback
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        return Err(MqttError::SubscribeRefused);
                    }
                    break;
                }
                Event::Incoming(Packet::Publish(p)) => {
                    if let Some(channel) = self.channel_of(&p.topic) {
                        let _ = tx.try_send(InboundMsg(Inbound::Message(channel, p.payload)));
                    }
                }
                _ => {}
            }
        }
        let topics = self.topics.clone();
        let poll = tokio::spawn(poll(eventloop, topics, tx));
        self.session = Some(Session {
            client,
            inbox,
            poll,
        });
        Ok(())
    }

    async fn publish(&mut self, channel: Channel, payload: &[u8]) -> Result<(), MqttError> {
        let session = self.session.as_ref().ok_or(MqttError::NotConnected)?;
        let topic = match channel {
            Channel::Readings => &self.topics.readings,
            Channel::Status => &self.topics.status,
            Channel::Ack | Channel::Config => &self.topics.readings,
        };
        session
            .client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .map_err(|_| MqttError::Client)?;
        Ok(())
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<CoreIncoming, MqttError> {
        let session = self.session.as_mut().ok_or(MqttError::NotConnected)?;
        match session.inbox.recv().await {
            Some(InboundMsg(Inbound::Message(channel, payload))) => {
                let n = payload.len().min(buf.len());
                if let (Some(dst), Some(src)) = (buf.get_mut(..n), payload.get(..n)) {
                    dst.copy_from_slice(src);
                }
                Ok(CoreIncoming {
                    channel,
                    len: payload.len(),
                })
            }
            Some(InboundMsg(Inbound::Lost(e))) => Err(MqttError::Lost(e)),
            None => Err(MqttError::Lost("poll task ended".into())),
        }
    }

    async fn disconnect(&mut self) {
        self.close().await;
    }
}

/// Polls until the first error, forwarding the gateway's messages; never reconnects.
async fn poll(mut eventloop: EventLoop, topics: Topics, tx: mpsc::Sender<InboundMsg>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let channel = if p.topic == topics.ack {
                    Channel::Ack
                } else if p.topic == topics.config {
                    Channel::Config
                } else {
                    tracing::debug!(topic = %p.topic, "message on an unexpected topic");
                    continue;
                };
                if tx
                    .send(InboundMsg(Inbound::Message(channel, p.payload)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                let _ = tx
                    .send(InboundMsg(Inbound::Lost("disconnected".into())))
                    .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(InboundMsg(Inbound::Lost(e.to_string()))).await;
                return;
            }
        }
    }
}
