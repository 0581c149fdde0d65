//! The device loop against a scripted transport, a virtual clock and fake sensors.
//!
//! The clock is virtual: `sleep_until` jumps to the deadline at once, so each `step` runs
//! instantly and deterministically; messages from the "gateway" are queued between steps.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use embassy_futures::block_on;
use firmware_core::Clock;
use firmware_core::device::{Device, DeviceSettings, Event, Observer};
use firmware_core::flash::{Blocking, RamFlash};
use firmware_core::outbox::{Outbox, OutboxLayout, dummy_reading};
use firmware_core::sampling::{Sample, Schedule, Sensors};
use firmware_core::transport::{Incoming, Transport};
use firmware_core::uplink::UplinkConfig;
use protocol::{BloodPressure, Channel, Kind, Measurement, PressureUnit, Spo2};

const PAGE: usize = 1024;
type Flash = Blocking<RamFlash<{ 16 * PAGE }, PAGE>>;
const T0: i64 = 1_763_798_400_000;

#[derive(Debug, Default)]
struct Net {
    /// Results of the next connect attempts (Ok when empty).
    connects: VecDeque<Result<(), &'static str>>,
    connect_calls: u32,
    disconnects: u32,
    /// Messages the gateway sends; `Err` makes receive fail (connection lost).
    incoming: VecDeque<Result<(Channel, Vec<u8>), &'static str>>,
    published: Vec<(Channel, String)>,
    /// Fail the next publish.
    fail_publish: bool,
}

#[derive(Debug, Clone, Default)]
struct FakeTransport(Rc<RefCell<Net>>);

impl Transport for FakeTransport {
    type Error = &'static str;

    async fn connect(&mut self) -> Result<(), Self::Error> {
        let mut net = self.0.borrow_mut();
        net.connect_calls += 1;
        net.connects.pop_front().unwrap_or(Ok(()))
    }

    async fn publish(&mut self, channel: Channel, payload: &[u8]) -> Result<(), Self::Error> {
        let mut net = self.0.borrow_mut();
        if std::mem::take(&mut net.fail_publish) {
            return Err("broken pipe");
        }
        net.published
            .push((channel, String::from_utf8_lossy(payload).into_owned()));
        Ok(())
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<Incoming, Self::Error> {
        let next = self.0.borrow_mut().incoming.pop_front();
        match next {
            Some(Ok((channel, payload))) => {
                let n = payload.len().min(buf.len());
                buf[..n].copy_from_slice(&payload[..n]);
                Ok(Incoming {
                    channel,
                    len: payload.len(),
                })
            }
            Some(Err(e)) => Err(e),
            None => core::future::pending().await,
        }
    }

    async fn disconnect(&mut self) {
        self.0.borrow_mut().disconnects += 1;
    }
}

#[derive(Debug, Clone, Default)]
struct VirtualClock(Rc<RefCell<u64>>);

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        *self.0.borrow()
    }
    async fn sleep_until(&mut self, at_ms: u64) {
        // Time passes only once nothing else is ready: yield once before jumping.
        embassy_futures::yield_now().await;
        let mut now = self.0.borrow_mut();
        *now = (*now).max(at_ms);
    }
}

#[derive(Debug, Default)]
struct Probe {
    spo2: f32,
    /// Samples a meter reports on its own.
    records: VecDeque<Sample>,
    confirms: u32,
    fail_measure: bool,
    /// What was measured on schedule, and when (the rig's clock).
    measured: Vec<(Kind, u64)>,
    clock: Rc<RefCell<u64>>,
}

#[derive(Debug, Clone, Default)]
struct FakeSensors(Rc<RefCell<Probe>>);

impl Sensors for FakeSensors {
    type Error = &'static str;

    async fn measure(&mut self, kind: Kind) -> Result<Option<Sample>, Self::Error> {
        let mut p = self.0.borrow_mut();
        if p.fail_measure {
            return Err("no finger");
        }
        let now = *p.clock.borrow();
        p.measured.push((kind, now));
        match kind {
            Kind::Spo2 => {}
            Kind::BloodPressure => {
                return Ok(Some(Sample::plain(Measurement::BloodPressure(
                    BloodPressure {
                        systolic: 150.0,
                        diastolic: 95.0,
                        mean: None,
                        pulse: None,
                        unit: PressureUnit::MmHg,
                    },
                ))));
            }
            // A patient-operated meter: nothing to measure on request.
            Kind::Glucose => return Ok(None),
        }
        p.spo2 = if p.spo2 >= 99.0 { 90.0 } else { p.spo2 + 1.0 };
        Ok(Some(Sample::plain(Measurement::Spo2(Spo2 {
            percent: p.spo2,
            pulse: Some(70.0),
            perfusion_index: None,
        }))))
    }

    async fn next_record(&mut self) -> Result<Sample, Self::Error> {
        let next = self.0.borrow_mut().records.pop_front();
        match next {
            Some(s) => Ok(s),
            None => core::future::pending().await,
        }
    }

    async fn confirm(&mut self) -> Result<(), Self::Error> {
        self.0.borrow_mut().confirms += 1;
        Ok(())
    }

    fn battery(&self) -> Option<u8> {
        Some(88)
    }
}

#[derive(Debug, Default)]
struct Log(Rc<RefCell<Vec<String>>>);

impl Observer for Log {
    fn event(&mut self, event: Event<'_>) {
        self.0.borrow_mut().push(format!("{event:?}"));
    }
}

struct Rig {
    device: Device<'static, Flash, FakeTransport, FakeSensors, VirtualClock, Log>,
    net: Rc<RefCell<Net>>,
    probe: Rc<RefCell<Probe>>,
    clock: Rc<RefCell<u64>>,
    log: Rc<RefCell<Vec<String>>>,
}

fn layout() -> OutboxLayout {
    OutboxLayout::split((16 * PAGE) as u32, PAGE as u32, 2)
}

fn uplink() -> UplinkConfig {
    UplinkConfig {
        max_batch: 4,
        max_in_flight: 2,
        resend_after_ms: 5_000,
        resend_max_ms: 60_000,
        connect_timeout_ms: 1_000,
        backoff_min_ms: 100,
        backoff_max_ms: 3_000,
        stable_after_ms: 10_000,
    }
}

fn rig_on(flash: Flash, now: u64) -> Rig {
    let net = Rc::new(RefCell::new(Net::default()));
    let probe = Rc::new(RefCell::new(Probe {
        spo2: 94.0,
        ..Probe::default()
    }));
    let clock = Rc::new(RefCell::new(now));
    probe.borrow_mut().clock = clock.clone();
    let log = Rc::new(RefCell::new(Vec::new()));
    let outbox = block_on(Outbox::open(flash, layout())).expect("open");
    let mut schedule = Schedule::new();
    schedule.set(Kind::Spo2, 1_000, now);
    let device = Device::new(
        outbox,
        FakeTransport(net.clone()),
        FakeSensors(probe.clone()),
        VirtualClock(clock.clone()),
        Log(log.clone()),
        schedule,
        DeviceSettings {
            firmware: "test-1.0",
            uplink: uplink(),
            seed: 99,
        },
    );
    Rig {
        device,
        net,
        probe,
        clock,
        log,
    }
}

fn rig() -> Rig {
    rig_on(Blocking(RamFlash::new()), 0)
}

impl Rig {
    fn step(&mut self) {
        block_on(self.device.step());
    }
    fn now(&self) -> u64 {
        *self.clock.borrow()
    }
    fn gateway_sends(&self, channel: Channel, payload: &str) {
        self.net
            .borrow_mut()
            .incoming
            .push_back(Ok((channel, payload.as_bytes().to_vec())));
    }
    fn readings_published(&self) -> Vec<Vec<u32>> {
        self.net
            .borrow()
            .published
            .iter()
            .filter(|(c, _)| *c == Channel::Readings)
            .map(|(_, p)| {
                protocol::decode_batch(p.as_bytes())
                    .expect("valid batch")
                    .iter()
                    .map(|r| r.expect("valid reading").seq)
                    .collect()
            })
            .collect()
    }
    fn pending(&mut self) -> Vec<u32> {
        let mut buf = [dummy_reading(); 64];
        let n = block_on(self.device.outbox().pending(|_| false, &mut buf)).expect("read");
        buf[..n].iter().map(|r| r.seq).collect()
    }
    fn measured(&self, kind: Kind) -> Vec<u64> {
        self.probe
            .borrow()
            .measured
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, at)| *at)
            .collect()
    }
    /// Steps until the virtual clock reaches `at_ms`.
    fn run_until(&mut self, at_ms: u64) {
        while self.now() < at_ms {
            self.step();
        }
    }
    /// Sends a config and steps until the device has read it; returns the time it did.
    fn config(&mut self, payload: &str) -> u64 {
        self.gateway_sends(Channel::Config, payload);
        while !self.net.borrow().incoming.is_empty() {
            self.step();
        }
        self.now()
    }
    fn logged(&self, needle: &str) -> usize {
        self.log
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

#[test]
fn measures_publishes_and_drops_only_on_ack() {
    let mut r = rig();
    r.step(); // connects, publishes status, sleeps until the first measurement
    assert_eq!(r.net.borrow().connect_calls, 1);
    assert_eq!(
        r.net.borrow().published[0],
        (
            Channel::Status,
            r#"{"online":true,"battery":88,"fw":"test-1.0"}"#.to_owned()
        )
    );
    assert_eq!(r.now(), 1_000);
    r.step(); // measures seq 1 and publishes it
    assert_eq!(r.readings_published(), [vec![1]]);
    // Without the clock set, the reading is marked and timed since boot.
    let batch = r.net.borrow().published[1].1.clone();
    assert!(batch.contains(r#""ts":1000,"clock_unset":true"#), "{batch}");

    // The broker's PUBACK is not an ack: only the ack topic drops the reading.
    assert_eq!(r.pending(), [1]);
    r.gateway_sends(Channel::Ack, r#"{"committed":[[1,1]],"rejected":[]}"#);
    r.step(); // measures seq 2 at 2 s, then reads the ack
    assert_eq!(r.pending(), [2]);
    assert_eq!(r.logged("Settled { committed: 1, rejected: 0 }"), 1);
}

#[test]
fn config_sets_the_clock_and_schedule() {
    let mut r = rig();
    r.step();
    let t = T0;
    r.gateway_sends(
        Channel::Config,
        &format!(r#"{{"time_ms":{t},"schedule":[{{"kind":"spo2","every_s":120}}]}}"#),
    );
    r.step(); // measures at 1 s (config not read yet), then reads the config
    assert_eq!(r.logged("ClockSet"), 1);
    assert_eq!(r.logged("ScheduleChanged"), 1);
    let set_at = 1_000;
    // The next measurement at 2 s (the earlier due time is kept), with the clock set.
    while r.readings_published().len() < 2 {
        r.step();
    }
    let published = r.net.borrow().published.last().cloned().expect("published");
    let expected_ts = t + (2_000 - set_at);
    assert!(
        published
            .1
            .contains(&format!(r#""ts":{expected_ts},"kind":"spo2""#)),
        "{published:?}"
    );
    assert_eq!(r.device.schedule().entries()[0].every_ms, 120_000);
}

#[test]
fn resends_after_timeout_and_after_reconnection() {
    let mut r = rig();
    r.step();
    r.step(); // seq 1 out at 1 s
    for _ in 0..4 {
        r.step(); // seqs 2..5 at 2..5 s: batches [2] — window of 2 is full after [1], [2]
    }
    let first = r.readings_published();
    assert_eq!(first, [vec![1], vec![2]], "window of two batches");
    // At 6 s the first batch's deadline (1 s + 5 s) passed: seq 1 goes again, with the new ones.
    r.step();
    let all = r.readings_published();
    assert!(all.len() > 2 && all[2].contains(&1), "{all:?}");

    // The connection drops: everything unsettled is sent again after reconnecting.
    r.net
        .borrow_mut()
        .incoming
        .push_back(Err("connection reset"));
    r.step();
    assert_eq!(r.logged("ConnectionLost"), 1);
    assert!(!r.device.uplink().is_up());
    let before = r.readings_published().len();
    while !r.device.uplink().is_up() {
        r.step();
    }
    r.step();
    let after = r.readings_published();
    let resent: Vec<u32> = after[before..].iter().flatten().copied().collect();
    assert_eq!(
        &resent[..4],
        &[1, 2, 3, 4],
        "oldest first after reconnection: {after:?}"
    );
    // The gateway stores them all and acks: the outbox empties.
    r.gateway_sends(Channel::Ack, r#"{"committed":[[1,100]]}"#);
    r.step();
    assert!(r.pending().is_empty() || r.pending().iter().all(|s| *s > 100));
}

#[test]
fn refused_connections_back_off_with_growing_delays() {
    let mut r = rig();
    r.net.borrow_mut().connects = (0..6).map(|_| Err("connack 5")).collect();
    let mut attempts = Vec::new();
    while r.net.borrow().connect_calls < 7 {
        let calls = r.net.borrow().connect_calls;
        r.step();
        if r.net.borrow().connect_calls > calls {
            attempts.push(r.now());
        }
    }
    let gaps: Vec<u64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g >= 50), "{gaps:?}");
    assert!(gaps[4] > gaps[0], "back-off grows: {gaps:?}");
    assert!(gaps.iter().all(|g| *g <= 3_000 + 1_000), "capped: {gaps:?}");
    assert!(r.device.uplink().is_up());
    assert_eq!(r.logged("ConnectFailed"), 6);
    // Readings measured meanwhile wait in the outbox and go out once connected.
    r.step();
    assert!(!r.readings_published().is_empty());
}

#[test]
fn a_publish_failure_is_a_lost_session() {
    let mut r = rig();
    r.step();
    r.net.borrow_mut().fail_publish = true;
    r.step();
    assert_eq!(r.logged("ConnectionLost"), 1);
    assert_eq!(r.pending(), [1]);
    assert!(r.net.borrow().disconnects >= 1);
}

#[test]
fn garbage_from_the_gateway_is_ignored() {
    let mut r = rig();
    r.step();
    r.step();
    for (channel, payload) in [
        (Channel::Ack, "not json"),
        (Channel::Ack, r#"{"committed":[[1]]}"#),
        (Channel::Config, r#"{"time_ms":"soon"}"#),
        (Channel::Readings, "{}"),
    ] {
        r.gateway_sends(channel, payload);
        r.step();
    }
    let big = format!(r#"{{"committed":[[1,1]]{}}}"#, " ".repeat(4096));
    r.gateway_sends(Channel::Ack, &big);
    r.step();
    assert_eq!(r.logged("BadMessage"), 5);
    assert_eq!(r.pending()[0], 1, "nothing settled by garbage");
    // A config with a nonsense time does not set the clock.
    r.gateway_sends(Channel::Config, r#"{"time_ms":42}"#);
    r.step();
    assert!(!r.device.wall_clock().is_set());
}

#[test]
fn rejected_readings_are_dropped_too() {
    let mut r = rig();
    r.step();
    r.step();
    r.step();
    r.gateway_sends(Channel::Ack, r#"{"committed":[[1,1]],"rejected":[[2,2]]}"#);
    r.step();
    assert_eq!(r.logged("Settled { committed: 1, rejected: 1 }"), 1);
    assert!(!r.pending().contains(&1) && !r.pending().contains(&2));
}

#[test]
fn meter_records_are_confirmed_only_once_stored() {
    let mut r = rig();
    r.step();
    let sample = Sample {
        taken_at_ms: Some(T0 - 60_000),
        ..Sample::plain(Measurement::Spo2(Spo2 {
            percent: 96.0,
            pulse: None,
            perfusion_index: None,
        }))
    };
    r.probe.borrow_mut().records.push_back(sample);
    r.step();
    assert_eq!(r.probe.borrow().confirms, 1, "{:#?}", r.log.borrow());
    // Seq 1 is the scheduled measurement at 1 s; the meter's record, timed by the meter's
    // own clock, is seq 2.
    assert_eq!(
        r.logged("Stored { seq: 2, kind: Spo2, clock_unset: false }"),
        1
    );
    r.step();
    let published = r.net.borrow().published.clone();
    assert!(
        published
            .iter()
            .any(|(_, p)| p.contains(&format!(r#""seq":2,"ts":{}"#, T0 - 60_000))),
        "{published:?}"
    );
}

#[test]
fn sensor_failures_are_reported_not_fatal() {
    let mut r = rig();
    r.probe.borrow_mut().fail_measure = true;
    for _ in 0..3 {
        r.step();
    }
    assert_eq!(r.logged("SensorFailed"), 2);
    assert!(r.pending().is_empty());
    r.probe.borrow_mut().fail_measure = false;
    r.step();
    assert_eq!(r.pending(), [1]);
}

#[test]
fn reboot_resends_pending_and_continues_the_seq() {
    let mut r = rig();
    r.step();
    for _ in 0..3 {
        r.step();
    }
    r.gateway_sends(Channel::Ack, r#"{"committed":[[1,1]]}"#);
    r.step();
    let pending = r.pending();
    assert_eq!(pending, [2, 3, 4]);
    let (outbox, ..) = r.device.into_parts();
    let mut r = rig_on(outbox.into_flash(), 0);
    assert_eq!(r.pending(), [2, 3, 4]);
    r.step(); // reconnects, resends 2..4
    let published = r.readings_published();
    assert_eq!(published[0], [2, 3, 4]);
    r.step(); // measures: a seq after the reserved block, never a repeat
    let next: Vec<u32> = r.readings_published().concat();
    assert!(next.iter().any(|s| *s >= 17), "{next:?}");
}

fn repeat_config(id: i64, kind: &str, in_s: u32) -> String {
    format!(r#"{{"time_ms":{T0},"repeat":{{"id":{id},"kind":"{kind}","in_s":{in_s}}}}}"#)
}

#[test]
fn a_repeat_is_measured_once_at_its_time_and_the_schedule_goes_on() {
    let mut r = rig();
    r.step();
    // Blood pressure is not in this device's schedule (SpO2 every second): measured anyway.
    let received = r.config(&repeat_config(5, "bp", 30));
    assert_eq!(
        r.logged("RepeatRequested { kind: BloodPressure, in_s: 30, id: 5 }"),
        1
    );
    r.run_until(received + 29_000);
    assert!(
        r.measured(Kind::BloodPressure).is_empty(),
        "not before its time"
    );
    r.run_until(received + 60_000);
    assert_eq!(r.measured(Kind::BloodPressure), [received + 30_000]);
    // The regular cadence went on, once a second, untouched.
    let spo2 = r.measured(Kind::Spo2);
    let expected: Vec<u64> = (1..=spo2.len() as u64).map(|s| s * 1_000).collect();
    assert_eq!(spo2, expected);
    assert!(spo2.len() >= 60, "{spo2:?}");
    assert_eq!(r.device.schedule().entries().len(), 1);
    assert!(r.device.schedule().repeats().is_empty());
    // The repeat reading went into the outbox like any other.
    assert_eq!(r.logged("kind: BloodPressure, clock_unset: false"), 1);
}

#[test]
fn the_same_request_delivered_again_is_measured_once() {
    let mut r = rig();
    r.step();
    let received = r.config(&repeat_config(9, "bp", 10));
    // The gateway republishes its retained config on every connection, with the wait
    // shortened by the time gone by: before the measurement…
    r.run_until(received + 4_000);
    r.config(&repeat_config(9, "bp", 6));
    r.run_until(received + 20_000);
    // …and after it.
    r.config(&repeat_config(9, "bp", 0));
    r.run_until(received + 40_000);
    assert_eq!(r.measured(Kind::BloodPressure), [received + 10_000]);
    assert_eq!(r.logged("RepeatRequested"), 1);

    // A new request is a new measurement.
    let again = r.config(&repeat_config(10, "bp", 5));
    r.run_until(again + 10_000);
    assert_eq!(
        r.measured(Kind::BloodPressure),
        [received + 10_000, again + 5_000]
    );
}

#[test]
fn a_measured_request_is_remembered_across_a_reboot() {
    let mut r = rig();
    r.step();
    let received = r.config(&repeat_config(11, "bp", 5));
    r.run_until(received + 10_000);
    assert_eq!(r.measured(Kind::BloodPressure).len(), 1);
    let now = r.now();
    let (outbox, ..) = r.device.into_parts();
    let mut r = rig_on(outbox.into_flash(), now);
    assert_eq!(r.device.outbox().repeat_done(), Some(11));
    r.step();
    let again = r.config(&repeat_config(11, "bp", 0));
    r.run_until(again + 10_000);
    assert!(r.measured(Kind::BloodPressure).is_empty());
    assert_eq!(r.logged("RepeatRequested"), 0);
}

#[test]
fn a_reboot_before_the_measurement_takes_it_from_the_next_config() {
    let mut r = rig();
    r.step();
    let received = r.config(&repeat_config(12, "bp", 60));
    r.run_until(received + 20_000);
    let now = r.now();
    let (outbox, ..) = r.device.into_parts();
    let mut r = rig_on(outbox.into_flash(), now);
    r.step();
    // The gateway's config at the new connection: 40 s left.
    let again = r.config(&repeat_config(12, "bp", 40));
    r.run_until(again + 60_000);
    assert_eq!(r.measured(Kind::BloodPressure), [again + 40_000]);
}

#[test]
fn a_malformed_repeat_is_ignored_and_the_schedule_kept() {
    let mut r = rig();
    r.step();
    let cadence = |r: &Rig| -> Vec<(Kind, u64)> {
        let entries = r.device.schedule().entries();
        entries.iter().map(|e| (e.kind, e.every_ms)).collect()
    };
    let before = cadence(&r);
    for payload in [
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":1,"kind":"weight","in_s":30}}}}"#),
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":1,"kind":"bp","in_s":90000}}}}"#),
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":1,"kind":"bp","in_s":-1}}}}"#),
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":1,"kind":"bp"}}}}"#),
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":"x","kind":"bp","in_s":30}}}}"#),
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":1,"kind":"b\u0070","in_s":30}}}}"#),
        format!(r#"{{"time_ms":{T0},"repeat":[1,"bp",30]}}"#),
        format!(r#"{{"time_ms":{T0},"repeat":{{"id":1,"kind":"bp","in_s":30,"x":0}}}}"#),
    ] {
        r.config(&payload);
    }
    assert_eq!(r.logged("BadMessage"), 8, "{:#?}", r.log.borrow());
    assert_eq!(r.logged("RepeatRequested"), 0);
    assert!(r.device.schedule().repeats().is_empty());
    assert_eq!(cadence(&r), before);
    // The whole config is refused, its time too.
    assert!(!r.device.wall_clock().is_set());
    r.run_until(r.now() + 30_000);
    assert!(r.measured(Kind::BloodPressure).is_empty());
    // SpO2 still once a second, without a gap, up to now.
    let spo2 = r.measured(Kind::Spo2);
    let expected: Vec<u64> = (1..=spo2.len() as u64).map(|s| s * 1_000).collect();
    assert_eq!(spo2, expected, "cadence kept");
    assert!(
        spo2.last().is_some_and(|t| *t + 1_000 >= r.now()),
        "{spo2:?}"
    );
}

#[test]
fn a_repeat_the_sensors_cannot_take_is_tried_once() {
    let mut r = rig();
    r.step();
    let received = r.config(&repeat_config(13, "glucose", 2));
    r.run_until(received + 10_000);
    assert_eq!(r.measured(Kind::Glucose), [received + 2_000]);
    assert!(r.device.schedule().repeats().is_empty());
    assert_eq!(r.device.outbox().repeat_done(), Some(13));
}
