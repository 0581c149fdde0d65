//! The device loop: sensors → outbox → uplink → ack → outbox.
//!
//! [`Device`] owns the outbox, the transport, the sensors and the clock, and runs one loop;
//! each turn ([`Device::step`]):
//! 1. takes the measurements the [`Schedule`] says are due (regular ones and repeats the
//!    gateway asked for) and appends them to the outbox;
//! 2. connects if the uplink is down and its back-off has elapsed (then publishes its status);
//! 3. publishes unsettled readings, oldest first, while the in-flight window has room;
//! 4. waits for the first of: a message from the gateway (an `ack` settles seqs in the outbox,
//!    a `config` sets the clock and the schedule and may ask for a repeat), a reading a meter
//!    reports on its own, or the next deadline (measurement due, resend, reconnection).
//!
//! **Repeat requests.** A config's `repeat` (`{"id":…,"kind":"spo2","in_s":300}`) schedules
//! one extra measurement of that kind `in_s` seconds after the config arrived
//! ([`Schedule::repeat_once`]: a one-shot slot beside the regular cadence, which stays as it
//! was). The gateway republishes its retained config at every connection, so a request
//! arrives more than once; the device applies an id once. It knows the ids of its pending
//! repeats and the id of the last repeat it measured, which it also keeps in the outbox's meta
//! region ([`Outbox::set_repeat_done`]), so a reboot does not measure a request again. A
//! reboot *before* the measurement loses the pending slot; the config delivered at the next
//! connection (with the wait the gateway shortened by the time gone by) schedules it again. A
//! repeat of a kind the device cannot measure on its own (a patient-operated meter) ends in
//! [`Sensors::measure`] returning `Ok(None)`, like a scheduled one; the
//! [`Event::RepeatRequested`] lets a board prompt the patient instead.//!
//! Failures never end the loop: a lost session backs off and reconnects, a flash or sensor
//! error is reported to the [`Observer`] and retried later, a malformed message is ignored.

use embassy_futures::select::{Either, Either3, select, select3};
use protocol::ack::Ack;
use protocol::status::{DeviceConfig, Status};
use protocol::{Channel, Kind, Reading};

use crate::clock::{Clock, WallClock};
use crate::outbox::{MultiwriteNorFlash, NorFlash, Outbox, OutboxError, dummy_reading};
use crate::sampling::{Sample, Schedule, Sensors};
use crate::transport::Transport;
use crate::uplink::{Uplink, UplinkConfig};
use crate::{MAX_BATCH, PAYLOAD_BUF, RX_BUF};

/// How long the loop leaves a failing meter alone before it listens again.
const SENSOR_RETRY_MS: u64 = 1_000;

/// What the device does besides its parts.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSettings<'a> {
    /// Firmware version reported in the status message (1-32 printable ASCII characters).
    pub firmware: &'a str,
    /// Uplink tuning.
    pub uplink: UplinkConfig,
    /// Seed of the back-off jitter; differ it between devices.
    pub seed: u64,
}

/// Something that happened, for logs and tests.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A reading is in the outbox under `seq`.
    Stored {
        /// Its seq.
        seq: u32,
        /// Its kind.
        kind: Kind,
        /// Whether it was timed without a set clock.
        clock_unset: bool,
    },
    /// A reading could not be stored (outbox full or flash failure); a meter keeps it and
    /// reports it again, a scheduled measurement is lost.
    StoreFailed {
        /// Its kind.
        kind: Kind,
        /// Why.
        error: &'a dyn core::fmt::Debug,
    },
    /// A sensor failed.
    SensorFailed {
        /// The kind measured, if it was a scheduled measurement.
        kind: Option<Kind>,
        /// Why.
        error: &'a dyn core::fmt::Debug,
    },
    /// The session is up.
    Connected,
    /// A connection attempt failed or timed out.
    ConnectFailed {
        /// Next attempt in this many ms.
        retry_in_ms: u64,
        /// Why (`None`: timed out).
        error: Option<&'a dyn core::fmt::Debug>,
    },
    /// The session was lost.
    ConnectionLost {
        /// Next attempt in this many ms.
        retry_in_ms: u64,
        /// Why.
        error: &'a dyn core::fmt::Debug,
    },
    /// A batch of readings was published.
    Published {
        /// Its lowest seq.
        first_seq: u32,
        /// Its highest seq.
        last_seq: u32,
        /// How many readings it holds.
        count: usize,
    },
    /// An ack dropped readings from the outbox.
    Settled {
        /// Stored by the gateway.
        committed: u32,
        /// Refused for their content (quarantined by the gateway).
        rejected: u32,
    },
    /// The wall clock was set from the gateway's config.
    ClockSet {
        /// The gateway's time, Unix ms.
        unix_ms: i64,
    },
    /// The gateway's config changed the schedule.
    ScheduleChanged,
    /// The gateway's config asked for a repeat measurement, scheduled `in_s` seconds from now
    /// (only the first time a request id arrives).
    RepeatRequested {
        /// What to measure.
        kind: Kind,
        /// In how many seconds.
        in_s: u32,
        /// The request's id.
        id: i64,
    },
    /// A message from the gateway could not be decoded; ignored.
    BadMessage {
        /// Where it came.
        channel: Channel,
    },
    /// The outbox flash failed while reading or settling; retried later.
    FlashError {
        /// Why.
        error: &'a dyn core::fmt::Debug,
    },
}

/// Receives [`Event`]s.
pub trait Observer {
    /// Called for each event.
    fn event(&mut self, event: Event<'_>);
}

impl Observer for () {
    fn event(&mut self, _: Event<'_>) {}
}

/// An [`Observer`] from a closure.
#[derive(Debug)]
pub struct FnObserver<F>(pub F);

impl<F: FnMut(Event<'_>)> Observer for FnObserver<F> {
    fn event(&mut self, event: Event<'_>) {
        (self.0)(event)
    }
}

/// A device: its outbox on flash `F`, transport `T`, sensors `S`, clock `C`, observer `O`.
#[derive(Debug)]
pub struct Device<'a, F, T, S, C, O = ()> {
    outbox: Outbox<F>,
    transport: T,
    sensors: S,
    clock: C,
    observer: O,
    uplink: Uplink,
    schedule: Schedule,
    wall: WallClock,
    /// The last repeat request measured (also in the outbox's meta region).
    repeat_done: Option<i64>,
    firmware: &'a str,
    sensor_pause_until_ms: u64,
    payload: [u8; PAYLOAD_BUF],
    rx: [u8; RX_BUF],
    batch: [Reading; MAX_BATCH],
}

impl<'a, F, T, S, C, O> Device<'a, F, T, S, C, O>
where
    F: NorFlash + MultiwriteNorFlash,
    T: Transport,
    S: Sensors,
    C: Clock,
    O: Observer,
{
    /// A device that measures on `schedule` until the gateway's config says otherwise.
    pub fn new(
        outbox: Outbox<F>,
        transport: T,
        sensors: S,
        clock: C,
        observer: O,
        schedule: Schedule,
        settings: DeviceSettings<'a>,
    ) -> Self {
        let repeat_done = outbox.repeat_done();
        Device {
            outbox,
            transport,
            sensors,
            clock,
            observer,
            uplink: Uplink::new(settings.uplink, settings.seed),
            repeat_done,
            schedule,
            wall: WallClock::unset(),
            firmware: settings.firmware,
            sensor_pause_until_ms: 0,
            payload: [0; PAYLOAD_BUF],
            rx: [0; RX_BUF],
            batch: [dummy_reading(); MAX_BATCH],
        }
    }

    /// Runs the loop for ever.
    pub async fn run(&mut self) -> core::convert::Infallible {
        loop {
            self.step().await;
        }
    }

    /// One turn of the loop (see the module docs).
    pub async fn step(&mut self) {
        let now = self.clock.now_ms();
        while let Some(due) = self.schedule.take_due(now) {
            self.measure(due.kind).await;
            if let Some(id) = due.repeat {
                self.repeat_measured(id).await;
            }
        }
        if self.uplink.should_connect(self.clock.now_ms()) {
            self.connect().await;
        }
        if self.uplink.is_up() {
            self.uplink.expire(self.clock.now_ms());
            self.send().await;
        }
        self.wait().await;
    }

    /// Sets the wall clock from a real-time clock the board trusts (e.g. a Linux system clock
    /// kept by NTP). The gateway's config corrects it again on every connection.
    pub fn set_clock(&mut self, unix_ms: i64) -> bool {
        let now = self.clock.now_ms();
        self.wall.set(unix_ms, now)
    }

    /// The outbox.
    pub fn outbox(&mut self) -> &mut Outbox<F> {
        &mut self.outbox
    }

    /// The uplink state machine.
    pub fn uplink(&self) -> &Uplink {
        &self.uplink
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The wall clock.
    pub fn wall_clock(&self) -> &WallClock {
        &self.wall
    }

    /// The sensors.
    pub fn sensors(&mut self) -> &mut S {
        &mut self.sensors
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The clock.
    pub fn clock(&mut self) -> &mut C {
        &mut self.clock
    }

    /// The observer.
    pub fn observer(&mut self) -> &mut O {
        &mut self.observer
    }

    /// Takes the device apart (e.g. to reboot it on the same flash).
    pub fn into_parts(self) -> (Outbox<F>, T, S, C, O) {
        (
            self.outbox,
            self.transport,
            self.sensors,
            self.clock,
            self.observer,
        )
    }

    async fn measure(&mut self, kind: Kind) {
        match self.sensors.measure(kind).await {
            Ok(Some(sample)) => {
                let _ = self.store(sample).await;
            }
            Ok(None) => {}
            Err(e) => self.observer.event(Event::SensorFailed {
                kind: Some(kind),
                error: &e,
            }),
        }
    }

    /// The repeat request `id` has had its measurement (successful or not: a repeat is tried
    /// once); remember it, in flash too.
    async fn repeat_measured(&mut self, id: i64) {
        self.repeat_done = Some(id);
        if let Err(e) = self.outbox.set_repeat_done(id).await {
            self.observer.event(Event::FlashError { error: &e });
        }
    }

    /// Schedules the repeat request `id` unless it is pending or was measured already.
    fn request_repeat(&mut self, kind: Kind, id: i64, in_s: u32, now_ms: u64) {
        let pending = self.schedule.repeats().iter().any(|r| r.id == id);
        if pending || self.repeat_done == Some(id) {
            return;
        }
        let due_ms = now_ms.saturating_add(u64::from(in_s).saturating_mul(1000));
        self.schedule.repeat_once(kind, id, due_ms);
        self.observer
            .event(Event::RepeatRequested { kind, in_s, id });
    }

    /// Appends a sample to the outbox; true if it is stored.
    async fn store(&mut self, sample: Sample) -> bool {
        let kind = sample.value.kind();
        let (ts_ms, clock_unset) = match sample.taken_at_ms {
            Some(t) => (t, false),
            None => self.wall.timestamp(self.clock.now_ms()),
        };
        let reading = Reading {
            seq: 0,
            ts_ms,
            clock_unset,
            status: sample.status,
            sensor: sample.sensor,
            measurement: sample.value,
        };
        match self.outbox.append(&reading).await {
            Ok(seq) => {
                self.observer.event(Event::Stored {
                    seq,
                    kind,
                    clock_unset,
                });
                true
            }
            Err(e) => {
                self.observer.event(Event::StoreFailed { kind, error: &e });
                false
            }
        }
    }

    async fn connect(&mut self) {
        let deadline = self
            .clock
            .now_ms()
            .saturating_add(self.uplink.config().connect_timeout_ms);
        let outcome = select(self.transport.connect(), self.clock.sleep_until(deadline)).await;
        let error = match outcome {
            Either::First(Ok(())) => {
                self.uplink.connected(self.clock.now_ms());
                self.observer.event(Event::Connected);
                self.publish_status().await;
                return;
            }
            Either::First(Err(e)) => Some(e),
            Either::Second(()) => None,
        };
        self.transport.disconnect().await;
        let retry_in_ms = self.uplink.down(self.clock.now_ms());
        self.observer.event(Event::ConnectFailed {
            retry_in_ms,
            error: error.as_ref().map(|e| e as &dyn core::fmt::Debug),
        });
    }

    async fn publish_status(&mut self) {
        let status = Status {
            online: true,
            battery: self.sensors.battery().filter(|b| *b <= 100),
            fw: Some(self.firmware).filter(|fw| !fw.is_empty()),
            rssi: None,
        };
        let Ok(len) = status.encode(&mut self.payload) else {
            return;
        };
        let payload = self.payload.get(..len).unwrap_or_default();
        if let Err(e) = self.transport.publish(Channel::Status, payload).await {
            self.lost(e).await;
        }
    }

    /// The session is gone: back off, report, close it. Generic rather than `&dyn Debug`, so
    /// that no borrowed trait object lives across the await and the loop's future stays
    /// `Send` for multi-threaded executors.
    async fn lost<E: core::fmt::Debug>(&mut self, error: E) {
        let retry_in_ms = self.uplink.down(self.clock.now_ms());
        self.observer.event(Event::ConnectionLost {
            retry_in_ms,
            error: &error,
        });
        drop(error);
        self.transport.disconnect().await;
    }

    /// Publishes batches while the window has room.
    async fn send(&mut self) {
        while self.uplink.can_send() {
            let max = self.uplink.config().max_batch;
            let uplink = &self.uplink;
            let out = self.batch.get_mut(..max).unwrap_or_default();
            let n = match self.outbox.pending(|seq| uplink.in_flight(seq), out).await {
                Ok(n) => n,
                Err(e) => {
                    self.observer.event(Event::FlashError { error: &e });
                    return;
                }
            };
            let readings = self.batch.get(..n).unwrap_or_default();
            let Some((count, len)) = encode_prefix(readings, &mut self.payload) else {
                // Cannot happen: one reading is a few hundred bytes and the buffer is 8 KiB.
                return;
            };
            let payload = self.payload.get(..len).unwrap_or_default();
            if let Err(e) = self.transport.publish(Channel::Readings, payload).await {
                self.lost(e).await;
                return;
            }
            let sent = self.batch.get(..count).unwrap_or_default();
            self.uplink
                .sent(sent.iter().map(|r| r.seq), self.clock.now_ms());
            self.observer.event(Event::Published {
                first_seq: sent.iter().map(|r| r.seq).min().unwrap_or(0),
                last_seq: sent.iter().map(|r| r.seq).max().unwrap_or(0),
                count,
            });
        }
    }

    async fn wait(&mut self) {
        let now = self.clock.now_ms();
        let wake = match (self.schedule.next_due(), self.uplink.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let up = self.uplink.is_up();
        let listen_sensors = now >= self.sensor_pause_until_ms;
        let pause_until = self.sensor_pause_until_ms;
        let Device {
            transport,
            rx,
            clock,
            sensors,
            ..
        } = self;
        let receive = async {
            if up {
                transport.receive(rx).await
            } else {
                core::future::pending().await
            }
        };
        let sleep = async {
            let at = match wake {
                Some(at) if !listen_sensors => at.min(pause_until),
                Some(at) => at,
                None if !listen_sensors => pause_until,
                None => return core::future::pending().await,
            };
            clock.sleep_until(at).await
        };
        let record = async {
            if listen_sensors {
                sensors.next_record().await
            } else {
                core::future::pending().await
            }
        };
        match select3(receive, sleep, record).await {
            Either3::First(Ok(incoming)) => {
                self.on_message(incoming.channel, incoming.len).await;
            }
            Either3::First(Err(e)) => self.lost(e).await,
            Either3::Second(()) => {}
            Either3::Third(Ok(sample)) => {
                if self.store(sample).await
                    && let Err(e) = self.sensors.confirm().await
                {
                    self.observer.event(Event::SensorFailed {
                        kind: None,
                        error: &e,
                    });
                }
            }
            Either3::Third(Err(e)) => {
                self.sensor_pause_until_ms = self.clock.now_ms().saturating_add(SENSOR_RETRY_MS);
                self.observer.event(Event::SensorFailed {
                    kind: None,
                    error: &e,
                });
            }
        }
    }

    async fn on_message(&mut self, channel: Channel, len: usize) {
        let Some(payload) = self.rx.get(..len) else {
            self.observer.event(Event::BadMessage { channel });
            return;
        };
        match channel {
            Channel::Ack => {
                let Ok(ack) = Ack::decode(payload) else {
                    self.observer.event(Event::BadMessage { channel });
                    return;
                };
                match self.outbox.settle(&ack).await {
                    Ok(settled) => {
                        // Only now may the batches forget these seqs: they are gone from
                        // flash, so they will not be sent again.
                        self.uplink.acked(&ack);
                        if settled.committed + settled.rejected > 0 {
                            self.observer.event(Event::Settled {
                                committed: settled.committed,
                                rejected: settled.rejected,
                            });
                        }
                    }
                    Err(e) => self.observer.event(Event::FlashError { error: &e }),
                }
            }
            Channel::Config => {
                let Ok(config) = DeviceConfig::decode(payload) else {
                    self.observer.event(Event::BadMessage { channel });
                    return;
                };
                let now = self.clock.now_ms();
                if self.wall.set(config.time_ms, now) {
                    self.observer.event(Event::ClockSet {
                        unix_ms: config.time_ms,
                    });
                }
                if self.schedule.apply(&config, now) {
                    self.observer.event(Event::ScheduleChanged);
                }
                // `decode` checked the kind and the wait; a kind it let through that this
                // firmware does not know is ignored.
                let repeat = config
                    .repeat
                    .and_then(|r| Some((Kind::parse(r.kind)?, r.id, r.in_s)));
                drop(config);
                if let Some((kind, id, in_s)) = repeat {
                    self.request_repeat(kind, id, in_s, now);
                }
            }
            Channel::Readings | Channel::Status => {
                self.observer.event(Event::BadMessage { channel });
            }
        }
    }
}

/// Encodes the longest prefix of `readings` that fits `buf`: `(readings, bytes)`, or `None` if
/// there is nothing to send or not even one reading fits.
fn encode_prefix(readings: &[Reading], buf: &mut [u8]) -> Option<(usize, usize)> {
    let mut n = readings.len().min(protocol::MAX_BATCH);
    while n > 0 {
        if let Ok(len) = protocol::encode_batch(readings.get(..n)?, buf) {
            return Some((n, len));
        }
        n /= 2;
    }
    None
}

/// Shorthand for the outbox error of a device's flash.
pub type DeviceOutboxError<F> = OutboxError<<F as embedded_storage::nor_flash::ErrorType>::Error>;
