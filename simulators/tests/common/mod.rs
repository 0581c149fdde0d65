//! A fake gateway on the real Mosquitto broker (127.0.0.1:1883): it subscribes to the
//! readings and status topics of the devices under test, decodes batches with `protocol`,
//! and publishes acks at QoS 0 like the real gateway, automatically or when told.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use protocol::ack::{Ack, SeqRange, ranges};
use protocol::{Channel, DeviceId, Reading, Topic};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const MOSQUITTO: &str = "127.0.0.1:1883";

/// A device id unique to this test run (process id, time, counter).
pub fn unique_id(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "simtest-{tag}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn topic(device: &str, channel: Channel) -> String {
    Topic::new(DeviceId::parse(device).unwrap(), channel).to_string()
}

/// One readings message as the gateway saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub device: String,
    pub readings: Vec<Reading>,
    pub at: tokio::time::Instant,
}

impl Received {
    pub fn seqs(&self) -> Vec<u32> {
        self.readings.iter().map(|r| r.seq).collect()
    }
}

pub struct FakeGateway {
    client: AsyncClient,
    batches: mpsc::UnboundedReceiver<Received>,
    statuses: mpsc::UnboundedReceiver<(String, String)>,
    auto_ack: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl FakeGateway {
    /// Subscribes to the devices' readings and status topics and waits for the SUBACK.
    pub async fn start(devices: &[String], auto_ack: bool) -> FakeGateway {
        let mut options = MqttOptions::new(unique_id("gw"), "127.0.0.1", 1883);
        options.set_max_packet_size(64 * 1024, 64 * 1024);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 1_000);
        let filters: Vec<SubscribeFilter> = devices
            .iter()
            .flat_map(|d| {
                [
                    SubscribeFilter::new(topic(d, Channel::Readings), QoS::AtLeastOnce),
                    SubscribeFilter::new(topic(d, Channel::Status), QoS::AtLeastOnce),
                ]
            })
            .collect();
        client.subscribe_many(filters).await.unwrap();
        let (batch_tx, batches) = mpsc::unbounded_channel();
        let (status_tx, statuses) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let auto = Arc::new(AtomicBool::new(auto_ack));
        let auto_flag = auto.clone();
        let acker = client.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let parsed = Topic::parse(&p.topic).unwrap();
                        let device = parsed.device.as_str().to_owned();
                        match parsed.channel {
                            Channel::Readings => {
                                let batch = protocol::decode_batch(&p.payload)
                                    .unwrap_or_else(|e| panic!("undecodable batch: {e}"));
                                let readings: Vec<Reading> = batch
                                    .iter()
                                    .map(|item| {
                                        item.unwrap_or_else(|e| panic!("bad reading {e:?}"))
                                    })
                                    .collect();
                                if auto_flag.load(Ordering::Relaxed) {
                                    let mut seqs: Vec<u32> =
                                        readings.iter().map(|r| r.seq).collect();
                                    seqs.sort_unstable();
                                    let mut ack = Ack::default();
                                    for r in ranges(seqs.into_iter()) {
                                        ack.committed.push(r).unwrap();
                                    }
                                    // Never block the poll loop: try_publish into a roomy channel.
                                    acker
                                        .try_publish(
                                            topic(&device, Channel::Ack),
                                            QoS::AtMostOnce,
                                            false,
                                            encode(&ack),
                                        )
                                        .unwrap();
                                }
                                let _ = batch_tx.send(Received {
                                    device,
                                    readings,
                                    at: tokio::time::Instant::now(),
                                });
                            }
                            Channel::Status => {
                                let text = String::from_utf8_lossy(&p.payload).into_owned();
                                let _ = status_tx.send((device, text));
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("fake gateway lost Mosquitto: {e}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(5), ready_rx)
            .await
            .expect("Mosquitto on 127.0.0.1:1883 did not acknowledge the subscription")
            .unwrap();
        FakeGateway {
            client,
            batches,
            statuses,
            auto_ack: auto,
            task,
        }
    }

    pub fn set_auto_ack(&self, on: bool) {
        self.auto_ack.store(on, Ordering::Relaxed);
    }

    /// The next readings message, or a panic after `timeout`.
    pub async fn next_batch(&mut self, timeout: Duration) -> Received {
        tokio::time::timeout(timeout, self.batches.recv())
            .await
            .expect("no readings message in time")
            .unwrap()
    }

    /// The next readings message, if one comes within `timeout`.
    pub async fn try_next_batch(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.batches.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects messages until `want` distinct seqs have been seen.
    pub async fn collect_seqs(&mut self, want: usize, timeout: Duration) -> Vec<u32> {
        let mut seen = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while seen.len() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let batch = self.next_batch(left).await;
            seen.extend(batch.seqs());
        }
        seen.into_iter().collect()
    }

    /// The next status message within `timeout`.
    pub async fn next_status(&mut self, timeout: Duration) -> Option<(String, String)> {
        tokio::time::timeout(timeout, self.statuses.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn ack(&self, device: &str, committed: &[(u32, u32)], rejected: &[(u32, u32)]) {
        let mut ack = Ack::default();
        for &(a, b) in committed {
            ack.committed.push(SeqRange(a, b)).unwrap();
        }
        for &(a, b) in rejected {
            ack.rejected.push(SeqRange(a, b)).unwrap();
        }
        self.raw_ack(device, encode(&ack)).await;
    }

    /// Publishes the device's `config` at QoS 1, retained or not, as the gateway does.
    pub async fn config(&self, device: &str, payload: &str, retain: bool) {
        self.client
            .publish(
                topic(device, Channel::Config),
                QoS::AtLeastOnce,
                retain,
                payload.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    pub async fn raw_ack(&self, device: &str, payload: Vec<u8>) {
        self.client
            .publish(topic(device, Channel::Ack), QoS::AtMostOnce, false, payload)
            .await
            .unwrap();
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn encode(ack: &Ack) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = ack.encode(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
