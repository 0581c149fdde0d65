//! Power cuts at every step of every append and pop.
//!
//! A workload of appends, in-order and out-of-order settles and reboots runs once without a
//! cut to count its flash operations (writes and erases); then, for every operation index `n`
//! and every way of tearing it ([`Tear`]), it runs again with the power cut during operation
//! `n`, reboots (reopens the outbox on the torn flash) and checks against a model:
//! - every reading whose append returned `Ok` and that no completed settle removed is there,
//!   byte for byte;
//! - no reading that a completed settle removed comes back;
//! - anything else present is the reading whose append was interrupted, intact;
//! - the seq counter is above every seq ever handed out (no reuse) and never went backwards;
//! - the outbox keeps working: the rest of the workload runs, and a final settle empties it.
//!
//! The flash has small pages (256 bytes, about five readings), so the workload crosses many
//! page boundaries, wraps the queue around, and (with one seq reserved per write) makes the
//! meta map compact itself several times. Some cuts are followed by a second cut during the
//! recovery itself.

use std::collections::{BTreeMap, BTreeSet};

use embassy_futures::block_on;
use firmware_core::flash::{Blocking, RamFlash, Tear};
use firmware_core::outbox::{Outbox, OutboxError, OutboxLayout, dummy_reading};
use protocol::ack::{Ack, SeqRange, ranges};
use protocol::{Measurement, MeasurementStatus, Reading, Spo2};

const PAGE: usize = 256;
const SIZE: usize = 12 * PAGE;
type Ram = RamFlash<SIZE, PAGE>;

fn layout(seq_reserve: u32) -> OutboxLayout {
    OutboxLayout {
        meta: 0..(2 * PAGE) as u32,
        queue: (2 * PAGE) as u32..SIZE as u32,
        seq_reserve,
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Append(u32),
    /// Commit the k oldest stored readings.
    CommitOldest(usize),
    /// Reject the i-th oldest stored reading.
    RejectNth(usize),
    /// Commit every other one of the k oldest (settles out of order).
    CommitEveryOther(usize),
    /// Commit everything.
    CommitAll,
    /// A clean reboot.
    Reboot,
}

const WORKLOAD: &[Op] = &[
    Op::Append(12),
    Op::CommitOldest(3),
    Op::RejectNth(2),
    Op::Append(8),
    Op::CommitEveryOther(8),
    Op::Reboot,
    Op::Append(12),
    Op::CommitOldest(10),
    Op::Append(10),
    Op::CommitAll,
    Op::Append(6),
    Op::RejectNth(0),
    Op::CommitAll,
    Op::Append(14),
    Op::CommitEveryOther(14),
    Op::Append(10),
    Op::CommitAll,
];

/// What must hold, tracked beside the outbox.
#[derive(Debug, Default)]
struct Model {
    /// Appended (Ok) and not removed by a completed settle.
    durable: BTreeMap<u32, Reading>,
    /// Removed by a completed settle: must never come back.
    settled: BTreeSet<u32>,
    /// Highest seq an append consumed (completed or not).
    max_issued: u32,
    /// Highest next_seq observed.
    max_next_seq: u32,
    /// Readings made so far (gives each one unique content).
    made: u32,
}

/// What a cut interrupted.
#[derive(Debug)]
enum Doubt {
    Append(Reading),
    Settle(Vec<u32>),
}

fn reading(k: u32) -> Reading {
    Reading {
        ts_ms: 1_763_798_400_000 + i64::from(k) * 1000,
        clock_unset: k.is_multiple_of(5),
        status: MeasurementStatus(0),
        sensor: k % 3,
        measurement: Measurement::Spo2(Spo2 {
            percent: 90.0 + (k % 10) as f32,
            pulse: Some(50.0 + (k % 50) as f32),
            perfusion_index: k.is_multiple_of(2).then_some(1.5),
        }),
        ..dummy_reading()
    }
}

fn ack_of(committed: &[u32], rejected: &[u32]) -> Ack {
    let mut ack = Ack::default();
    for r in ranges(committed.iter().copied()) {
        ack.committed.push(r).expect("few ranges");
    }
    for r in ranges(rejected.iter().copied()) {
        ack.rejected.push(r).expect("few ranges");
    }
    ack
}

type Ob<'r> = Outbox<Blocking<&'r mut Ram>>;

fn is_dead(ob: &Ob<'_>) -> bool {
    ob.flash().inner().is_dead()
}

async fn contents(ob: &mut Ob<'_>) -> Vec<Reading> {
    let mut buf = [dummy_reading(); 128];
    let n = ob
        .pending(|_| false, &mut buf)
        .await
        .expect("reading the outbox after recovery");
    buf[..n].to_vec()
}

/// Reboots after a cut: power on and reopen; with `second_cut`, the first recovery attempt
/// is itself cut after that many flash operations (then power on and reopen again).
async fn reboot<'r>(ram: &'r mut Ram, reserve: u32, second_cut: Option<u32>, ctx: &str) -> Ob<'r> {
    ram.power_on();
    if let Some(m) = second_cut {
        ram.cut_after(m, Tear::Half);
        // Whatever this attempt does or fails to do, the next one must cope.
        let _ = Outbox::open(Blocking(&mut *ram), layout(reserve)).await;
        ram.power_on();
    }
    Outbox::open(Blocking(ram), layout(reserve))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: outbox does not open after a power cut: {e}"))
}

/// Checks the outbox against the model after a recovery; resolves the doubt.
async fn verify(ob: &mut Ob<'_>, model: &mut Model, doubt: Option<Doubt>, ctx: &str) {
    let present = contents(ob).await;
    let seqs: Vec<u32> = present.iter().map(|r| r.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{ctx}: seqs not unique and in order: {seqs:?}"
    );
    let by_seq: BTreeMap<u32, Reading> = present.iter().map(|r| (r.seq, *r)).collect();
    let maybe_gone: BTreeSet<u32> = match &doubt {
        Some(Doubt::Settle(s)) => s.iter().copied().collect(),
        _ => BTreeSet::new(),
    };
    for (seq, r) in &model.durable {
        match by_seq.get(seq) {
            Some(p) => assert_eq!(p, r, "{ctx}: seq {seq} changed"),
            None => assert!(
                maybe_gone.contains(seq),
                "{ctx}: unacked seq {seq} lost (present {seqs:?})"
            ),
        }
    }
    for (seq, p) in &by_seq {
        assert!(
            !model.settled.contains(seq),
            "{ctx}: settled seq {seq} resurrected"
        );
        if !model.durable.contains_key(seq) {
            match &doubt {
                Some(Doubt::Append(r)) if r.seq == *seq => {
                    assert_eq!(p, r, "{ctx}: interrupted append {seq} torn");
                }
                _ => panic!("{ctx}: unknown seq {seq} appeared"),
            }
        }
    }
    // Resolve the doubt: what is there is durable from now on, what went is settled.
    if let Some(Doubt::Append(r)) = &doubt
        && let Some(p) = by_seq.get(&r.seq)
    {
        model.durable.insert(r.seq, *p);
    }
    for seq in maybe_gone {
        if !by_seq.contains_key(&seq) {
            model.durable.remove(&seq);
            model.settled.insert(seq);
        }
    }
    assert!(
        ob.next_seq() > model.max_issued,
        "{ctx}: next_seq {} would reuse seq {}",
        ob.next_seq(),
        model.max_issued
    );
    assert!(
        ob.next_seq() >= model.max_next_seq,
        "{ctx}: seq counter went backwards: {} < {}",
        ob.next_seq(),
        model.max_next_seq
    );
    model.max_next_seq = ob.next_seq();
}

/// Runs the workload, cutting the power during flash operation `n` of `cut` (if any), torn
/// as it says, optionally cutting again during the recovery. Returns the number of flash
/// operations the run performed.
async fn run(reserve: u32, cut: Option<(u32, Tear, Option<u32>)>) -> u32 {
    let ctx = format!("reserve {reserve}, cut {cut:?}");
    let mut ram = Ram::new();
    if let Some((n, tear, _)) = cut {
        ram.cut_after(n, tear);
    }
    let second = cut.and_then(|(_, _, s)| s);
    let mut model = Model {
        max_next_seq: 1,
        ..Model::default()
    };
    let mut cuts = 0;
    // Opening a blank flash may itself be cut.
    let mut ob = match Outbox::open(Blocking(&mut ram), layout(reserve)).await {
        Ok(ob) if !is_dead(&ob) => ob,
        _ => {
            cuts += 1;
            let mut ob = reboot(&mut ram, reserve, second, &ctx).await;
            verify(
                &mut ob,
                &mut model,
                None,
                &format!("{ctx}, during first open"),
            )
            .await;
            ob
        }
    };
    let mut i = 0;
    while i < WORKLOAD.len() {
        let op = WORKLOAD[i];
        let mut doubt = None;
        let mut cut_now = false;
        match op {
            Op::Append(n) => {
                let mut done = 0;
                while done < n {
                    model.made += 1;
                    let r = reading(model.made);
                    let seq = ob.next_seq();
                    let result = ob.append(&r).await;
                    if ob.next_seq() > seq {
                        // The seq was consumed (even if the append then failed).
                        model.max_issued = model.max_issued.max(seq);
                    }
                    match result {
                        Ok(got) => {
                            assert_eq!(got, seq, "{ctx}");
                            model.durable.insert(seq, Reading { seq, ..r });
                            done += 1;
                        }
                        Err(_) if is_dead(&ob) => {
                            doubt = Some(Doubt::Append(Reading { seq, ..r }));
                            cut_now = true;
                            break;
                        }
                        Err(OutboxError::Full) => panic!("{ctx}: workload overfills the queue"),
                        Err(e) => panic!("{ctx}: append failed without a cut: {e}"),
                    }
                    model.max_next_seq = model.max_next_seq.max(ob.next_seq());
                }
            }
            Op::CommitOldest(_) | Op::RejectNth(_) | Op::CommitEveryOther(_) | Op::CommitAll => {
                let stored: Vec<u32> = model.durable.keys().copied().collect();
                let (committed, rejected): (Vec<u32>, Vec<u32>) = match op {
                    Op::CommitOldest(k) => (stored.iter().take(k).copied().collect(), vec![]),
                    Op::RejectNth(i) => (vec![], stored.get(i).copied().into_iter().collect()),
                    Op::CommitEveryOther(k) => {
                        (stored.iter().take(k).step_by(2).copied().collect(), vec![])
                    }
                    _ => (stored.clone(), vec![]),
                };
                let ack = ack_of(&committed, &rejected);
                match ob.settle(&ack).await {
                    Ok(s) => {
                        assert_eq!(
                            (s.committed as usize, s.rejected as usize),
                            (committed.len(), rejected.len()),
                            "{ctx}: {op:?}"
                        );
                        for seq in committed.iter().chain(&rejected) {
                            model.durable.remove(seq);
                            model.settled.insert(*seq);
                        }
                    }
                    Err(_) if is_dead(&ob) => {
                        doubt = Some(Doubt::Settle(
                            committed.iter().chain(&rejected).copied().collect(),
                        ));
                        cut_now = true;
                    }
                    Err(e) => panic!("{ctx}: settle failed without a cut: {e}"),
                }
            }
            Op::Reboot => {
                ob = match Outbox::open(Blocking(&mut ram), layout(reserve)).await {
                    Ok(ob) if !is_dead(&ob) => ob,
                    Ok(_) | Err(_) => {
                        // The cut hit the clean reboot's own recovery pass.
                        cuts += 1;
                        reboot(&mut ram, reserve, second, &ctx).await
                    }
                };
                verify(&mut ob, &mut model, None, &format!("{ctx}, clean reboot")).await;
            }
        }
        if cut_now {
            cuts += 1;
            ob = reboot(&mut ram, reserve, second, &ctx).await;
            verify(&mut ob, &mut model, doubt, &format!("{ctx}, after {op:?}")).await;
            if matches!(op, Op::Append(_)) {
                // The step's remaining appends are lost with the power; go on.
                i += 1;
            }
            // An interrupted settle runs again: the gateway acks again after the resend.
            continue;
        }
        i += 1;
    }
    assert!(cuts <= 1, "{ctx}: {cuts} cuts");
    if cut.is_some_and(|(n, _, _)| n < ob.flash().inner().ops()) {
        assert_eq!(cuts, 1, "{ctx}: the cut never happened");
    }
    // Everything was committed: the outbox is empty, also after one more reboot.
    assert!(model.durable.is_empty(), "{ctx}");
    assert!(
        ob.is_empty().await.expect("read"),
        "{ctx}: outbox not empty at the end"
    );
    let total = ram.ops();
    let mut ob = Outbox::open(Blocking(&mut ram), layout(reserve))
        .await
        .expect("final reboot");
    verify(&mut ob, &mut model, None, &format!("{ctx}, final reboot")).await;
    assert!(ob.is_empty().await.expect("read"), "{ctx}");
    total
}

fn exhaust(reserve: u32) {
    block_on(async {
        let total = run(reserve, None).await;
        assert!(total > 100, "workload too small: {total} flash operations");
        eprintln!("reserve {reserve}: {total} flash operations, each cut 3 ways");
        let mut runs = 0;
        for n in 0..total {
            for tear in [Tear::Nothing, Tear::Half, Tear::AllButLast] {
                // A second cut during the recovery, for a share of the cases.
                let second = (tear == Tear::Half && n % 5 == 0).then_some(n % 3);
                run(reserve, Some((n, tear, second))).await;
                runs += 1;
            }
        }
        assert_eq!(runs, total * 3);
    });
}

#[test]
fn power_cut_at_every_step_one_seq_reserved_per_write() {
    exhaust(1);
}

#[test]
fn power_cut_at_every_step_seq_blocks() {
    exhaust(16);
}

#[test]
fn ack_ranges_helper_collapses() {
    let ack = ack_of(&[1, 2, 3, 7], &[5]);
    assert_eq!(ack.committed.as_slice(), [SeqRange(1, 3), SeqRange(7, 7)]);
    assert_eq!(ack.rejected.as_slice(), [SeqRange(5, 5)]);
}
