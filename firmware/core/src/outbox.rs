//! The store-and-forward outbox: readings in a flash queue until the gateway's ack settles them.
//!
//! Two regions of one NOR flash, both managed by `sequential-storage` (power-fail safe, CRC per
//! item, wear levelled):
//! - **queue** (`sequential-storage` queue): one [`record`] per unsettled reading, oldest first.
//!   A reading is popped only by [`Outbox::settle`], i.e. when an ack lists its seq. Popping
//!   works anywhere in the queue (acks may settle seqs out of order, e.g. a rejected seq in the
//!   middle of a batch).
//! - **meta** (`sequential-storage` map, at least two pages): the seq *ceiling*, the first seq
//!   not yet reserved. Before handing out a seq at or above it, [`Outbox::append`] reserves a
//!   block of [`OutboxLayout::seq_reserve`] seqs by storing a new ceiling. After a reboot or a
//!   power cut the counter restarts at the stored ceiling, so a seq is never used twice; a cut
//!   costs at most one block of unused seqs (gaps are harmless to the gateway). A larger block
//!   means fewer writes to the meta region. The meta map also keeps the id of the last
//!   repeat request the device measured ([`Outbox::repeat_done`]), so a retained config
//!   delivered again after a reboot does not make it measure the same request twice.
//!
//! Every operation opens the `sequential-storage` structures anew without a cache: state lives
//! only in flash, so there is nothing in RAM that a power cut could make disagree with it.
//!
//! When the queue is full, a new reading is refused ([`OutboxError::Full`]) rather than
//! overwriting the oldest: what is stored is kept until the gateway has it.

use core::ops::Range;

use protocol::Reading;
use protocol::ack::Ack;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};
use sequential_storage::queue::{QueueConfig, QueueStorage};

use crate::record::{self, RECORD_LEN};

pub use embedded_storage_async::nor_flash::{MultiwriteNorFlash, NorFlash};

/// Map key of the seq ceiling in the meta region.
const SEQ_CEILING_KEY: u8 = 1;

/// Map key of the id of the last repeat request measured, in the meta region.
const REPEAT_DONE_KEY: u8 = 2;

/// Buffer for reading one queue item; larger than a record so that an item written by another
/// firmware version can still be read (and then discarded) instead of jamming the queue.
const ITEM_BUF: usize = 256;

/// Buffer for the meta map (key + value, word aligned).
const META_BUF: usize = 32;

/// The first seq of a new device.
pub const FIRST_SEQ: u32 = 1;

/// Default number of seqs reserved per write to the meta region.
pub const DEFAULT_SEQ_RESERVE: u32 = 16;

/// Where the outbox lives in the flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxLayout {
    /// The meta region (seq ceiling): at least two erase pages, page aligned.
    pub meta: Range<u32>,
    /// The queue region (readings): at least one erase page, page aligned, not overlapping
    /// `meta`.
    pub queue: Range<u32>,
    /// Seqs reserved per write of the ceiling (at least 1).
    pub seq_reserve: u32,
}

impl OutboxLayout {
    /// The first `meta_pages` pages of a flash of `capacity` bytes hold the meta region, the
    /// rest the queue.
    pub const fn split(capacity: u32, page: u32, meta_pages: u32) -> Self {
        let boundary = page * meta_pages;
        OutboxLayout {
            meta: 0..boundary,
            queue: boundary..capacity,
            seq_reserve: DEFAULT_SEQ_RESERVE,
        }
    }
}

/// Why an outbox operation failed.
#[derive(Debug)]
pub enum OutboxError<E> {
    /// The layout does not fit the flash (alignment, sizes, overlap).
    Layout(&'static str),
    /// The queue is full: the reading was not stored.
    Full,
    /// Every seq up to `u32::MAX` has been used.
    SeqExhausted,
    /// The flash failed, or `sequential-storage` found corruption it could not repair.
    Storage(sequential_storage::Error<E>),
}

impl<E: core::fmt::Debug> core::fmt::Display for OutboxError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OutboxError::Layout(what) => write!(f, "outbox layout: {what}"),
            OutboxError::Full => f.write_str("outbox full"),
            OutboxError::SeqExhausted => f.write_str("seq counter exhausted"),
            OutboxError::Storage(e) => write!(f, "outbox flash: {e:?}"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: core::fmt::Debug> std::error::Error for OutboxError<E> {}

impl<E> From<sequential_storage::Error<E>> for OutboxError<E> {
    fn from(e: sequential_storage::Error<E>) -> Self {
        match e {
            sequential_storage::Error::FullStorage => OutboxError::Full,
            e => OutboxError::Storage(e),
        }
    }
}

/// How many seqs one [`Outbox::settle`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Dropped because the gateway stored them.
    pub committed: u32,
    /// Dropped because the gateway refused their content (quarantined).
    pub rejected: u32,
}

/// What [`Outbox::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Readings waiting in the queue.
    pub pending: u32,
    /// Items that were not records of this firmware's format, dropped.
    pub discarded: u32,
}

/// The outbox over the flash `F`.
#[derive(Debug)]
pub struct Outbox<F> {
    flash: F,
    layout: OutboxLayout,
    next_seq: u32,
    /// First seq not reserved in flash.
    ceiling: u32,
    recovered: Recovered,
    /// The last repeat request measured, as stored in the meta region.
    repeat_done: Option<i64>,
}

type QueueCache = Cache<Uncached, Uncached, Uncached>;
type MapCache = Cache<Uncached, Uncached, Uncached, u8>;

fn queue<F: NorFlash>(
    flash: &mut F,
    range: Range<u32>,
) -> Result<QueueStorage<&mut F, QueueCache>, OutboxError<F::Error>> {
    let config = QueueConfig::try_new(range).map_err(|_| OutboxError::Layout("queue region"))?;
    Ok(QueueStorage::new(flash, config, Cache::new_uncached()))
}

fn meta<F: NorFlash>(
    flash: &mut F,
    range: Range<u32>,
) -> Result<MapStorage<u8, &mut F, MapCache>, OutboxError<F::Error>> {
    let config = MapConfig::try_new(range).map_err(|_| OutboxError::Layout("meta region"))?;
    Ok(MapStorage::new(flash, config, Cache::new_uncached()))
}

impl<F: NorFlash + MultiwriteNorFlash> Outbox<F> {
    /// Opens the outbox: repairs what a power cut may have torn, counts the pending readings,
    /// drops items this firmware cannot read, and restores the seq counter.
    pub async fn open(mut flash: F, layout: OutboxLayout) -> Result<Self, OutboxError<F::Error>> {
        let cap = u32::try_from(flash.capacity()).unwrap_or(u32::MAX);
        if layout.meta.end > cap || layout.queue.end > cap {
            return Err(OutboxError::Layout("region beyond the flash capacity"));
        }
        if layout.meta.start < layout.queue.end && layout.queue.start < layout.meta.end {
            return Err(OutboxError::Layout("meta and queue regions overlap"));
        }
        if layout.seq_reserve == 0 {
            return Err(OutboxError::Layout("seq_reserve must be at least 1"));
        }
        let mut buf = [0u8; META_BUF];
        let stored: Option<u32> = meta(&mut flash, layout.meta.clone())?
            .fetch_item(&mut buf, &SEQ_CEILING_KEY)
            .await?;
        let ceiling = stored.unwrap_or(FIRST_SEQ).max(FIRST_SEQ);
        // Only a convenience (without it a request may be measured twice): an item this
        // firmware cannot read never keeps the outbox from opening.
        let repeat_done: Option<i64> = meta(&mut flash, layout.meta.clone())?
            .fetch_item(&mut buf, &REPEAT_DONE_KEY)
            .await
            .unwrap_or(None);

        let mut recovered = Recovered::default();
        let mut max_seq = None::<u32>;
        {
            let mut q = queue(&mut flash, layout.queue.clone())?;
            let mut it = q.iter().await?;
            let mut item = [0u8; ITEM_BUF];
            while let Some(entry) = it.next(&mut item).await? {
                match record::decode(&entry) {
                    Ok(r) => {
                        recovered.pending += 1;
                        max_seq = Some(max_seq.map_or(r.seq, |m: u32| m.max(r.seq)));
                    }
                    Err(_) => {
                        recovered.discarded += 1;
                        entry.pop().await?;
                    }
                }
            }
        }
        // The ceiling is written before any seq under it is used, so it already covers every
        // record; the max is a second line of defence (e.g. a meta region that was erased).
        let next_seq = match max_seq {
            Some(m) => ceiling.max(m.saturating_add(1)),
            None => ceiling,
        };
        Ok(Outbox {
            flash,
            layout,
            next_seq,
            ceiling,
            recovered,
            repeat_done,
        })
    }

    /// The id of the last repeat request measured (see [`Outbox::set_repeat_done`]), as
    /// stored in flash; `None` on a new device.
    pub fn repeat_done(&self) -> Option<i64> {
        self.repeat_done
    }

    /// Records in flash that the repeat request `id` has been measured (one small map item,
    /// written only when the id changes). A power cut before this completes leaves the
    /// previous id, so the request may be measured once more after the reboot: a duplicate
    /// reading rather than a lost one.
    pub async fn set_repeat_done(&mut self, id: i64) -> Result<(), OutboxError<F::Error>> {
        if self.repeat_done == Some(id) {
            return Ok(());
        }
        let mut buf = [0u8; META_BUF];
        meta(&mut self.flash, self.layout.meta.clone())?
            .store_item_generic(&mut buf, &REPEAT_DONE_KEY, &id)
            .await?;
        self.repeat_done = Some(id);
        Ok(())
    }

    /// What [`Outbox::open`] found.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// The seq the next [`Outbox::append`] will use.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Stores `reading` under the next seq (its own `seq` field is ignored) and returns that
    /// seq. When this returns `Ok`, the reading survives any power cut until settled.
    ///
    /// Once the seq is reserved in flash, an error still consumes it, so a reading that may
    /// have reached the flash before a failure never shares its seq with a later one. (If the
    /// reservation itself fails, nothing was written under that seq and it is used next.)
    pub async fn append(&mut self, reading: &Reading) -> Result<u32, OutboxError<F::Error>> {
        if self.next_seq == u32::MAX {
            return Err(OutboxError::SeqExhausted);
        }
        if self.next_seq >= self.ceiling {
            let ceiling = self
                .next_seq
                .saturating_add(self.layout.seq_reserve)
                .max(self.next_seq + 1);
            let mut buf = [0u8; META_BUF];
            // The generic variant keeps the future `Send` (the default one holds a
            // `dyn Value` across an await).
            meta(&mut self.flash, self.layout.meta.clone())?
                .store_item_generic(&mut buf, &SEQ_CEILING_KEY, &ceiling)
                .await?;
            self.ceiling = ceiling;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let bytes = record::encode(&Reading { seq, ..*reading });
        queue(&mut self.flash, self.layout.queue.clone())?
            .push(&bytes, false)
            .await?;
        Ok(seq)
    }

    /// Drops every stored reading the ack settles (committed or rejected).
    pub async fn settle(&mut self, ack: &Ack) -> Result<Settled, OutboxError<F::Error>> {
        let mut settled = Settled::default();
        if ack.committed.is_empty() && ack.rejected.is_empty() {
            return Ok(settled);
        }
        let mut q = queue(&mut self.flash, self.layout.queue.clone())?;
        let mut it = q.iter().await?;
        let mut item = [0u8; ITEM_BUF];
        while let Some(entry) = it.next(&mut item).await? {
            if entry.len() != RECORD_LEN {
                continue;
            }
            let seq = record::seq_of(&entry);
            if !ack.settles(seq) {
                continue;
            }
            let committed = ack.committed.iter().any(|r| r.contains(seq));
            entry.pop().await?;
            if committed {
                settled.committed += 1;
            } else {
                settled.rejected += 1;
            }
        }
        Ok(settled)
    }

    /// Fills `out` with the oldest stored readings for which `skip` returns false, in the
    /// order they were stored; returns how many it wrote.
    pub async fn pending(
        &mut self,
        mut skip: impl FnMut(u32) -> bool,
        out: &mut [Reading],
    ) -> Result<usize, OutboxError<F::Error>> {
        let mut n = 0;
        if out.is_empty() {
            return Ok(0);
        }
        let mut q = queue(&mut self.flash, self.layout.queue.clone())?;
        let mut it = q.iter().await?;
        let mut item = [0u8; ITEM_BUF];
        while let Some(entry) = it.next(&mut item).await? {
            let Ok(reading) = record::decode(&entry) else {
                continue;
            };
            if skip(reading.seq) {
                continue;
            }
            if let Some(slot) = out.get_mut(n) {
                *slot = reading;
                n += 1;
            }
            if n == out.len() {
                break;
            }
        }
        Ok(n)
    }

    /// Number of stored readings (reads the whole queue).
    pub async fn len(&mut self) -> Result<usize, OutboxError<F::Error>> {
        let mut n = 0;
        let mut q = queue(&mut self.flash, self.layout.queue.clone())?;
        let mut it = q.iter().await?;
        let mut item = [0u8; ITEM_BUF];
        while let Some(entry) = it.next(&mut item).await? {
            if record::decode(&entry).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether no reading is stored (reads until the first one).
    pub async fn is_empty(&mut self) -> Result<bool, OutboxError<F::Error>> {
        let mut probe = [dummy_reading()];
        Ok(self.pending(|_| false, &mut probe).await? == 0)
    }

    /// Gives the flash back (e.g. to simulate a reboot).
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// The flash.
    pub fn flash(&self) -> &F {
        &self.flash
    }
}

/// A placeholder for buffers of readings.
pub const fn dummy_reading() -> Reading {
    Reading {
        seq: 0,
        ts_ms: 0,
        clock_unset: true,
        status: protocol::MeasurementStatus(0),
        sensor: 0,
        measurement: protocol::Measurement::Spo2(protocol::Spo2 {
            percent: 0.0,
            pulse: None,
            perfusion_index: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::{Blocking, RamFlash};
    use embassy_futures::block_on;
    use protocol::ack::SeqRange;

    type Flash = Blocking<RamFlash<{ 8 * 512 }, 512>>;

    fn layout() -> OutboxLayout {
        OutboxLayout::split(8 * 512, 512, 2)
    }

    fn reading(pulse: f32) -> Reading {
        Reading {
            ts_ms: 1_763_798_400_000,
            clock_unset: false,
            measurement: protocol::Measurement::Spo2(protocol::Spo2 {
                percent: 97.0,
                pulse: Some(pulse),
                perfusion_index: None,
            }),
            ..dummy_reading()
        }
    }

    fn ack(committed: &[(u32, u32)], rejected: &[(u32, u32)]) -> Ack {
        let mut a = Ack::default();
        for &(x, y) in committed {
            a.committed.push(SeqRange(x, y)).unwrap();
        }
        for &(x, y) in rejected {
            a.rejected.push(SeqRange(x, y)).unwrap();
        }
        a
    }

    async fn seqs(outbox: &mut Outbox<Flash>) -> std::vec::Vec<u32> {
        let mut buf = [dummy_reading(); 128];
        let n = outbox.pending(|_| false, &mut buf).await.unwrap();
        buf[..n].iter().map(|r| r.seq).collect()
    }

    #[test]
    fn append_settle_and_reopen() {
        block_on(async {
            let mut ob = Outbox::open(Blocking(RamFlash::new()), layout())
                .await
                .unwrap();
            assert_eq!(ob.next_seq(), FIRST_SEQ);
            for i in 0..10 {
                assert_eq!(ob.append(&reading(60.0 + i as f32)).await.unwrap(), i + 1);
            }
            let s = ob.settle(&ack(&[(1, 3)], &[(5, 5)])).await.unwrap();
            assert_eq!(
                s,
                Settled {
                    committed: 3,
                    rejected: 1
                }
            );
            assert_eq!(seqs(&mut ob).await, [4, 6, 7, 8, 9, 10]);
            // Skipping in-flight seqs.
            let mut buf = [dummy_reading(); 2];
            let n = ob.pending(|s| s < 7, &mut buf).await.unwrap();
            assert_eq!((n, buf[0].seq, buf[1].seq), (2, 7, 8));
            assert_eq!(
                buf[0],
                Reading {
                    seq: 7,
                    ..reading(66.0)
                }
            );

            // A reboot: same contents, the counter continues after the reserved block.
            let flash = ob.into_flash();
            let mut ob = Outbox::open(flash, layout()).await.unwrap();
            assert_eq!(ob.recovered().pending, 6);
            assert_eq!(ob.next_seq(), 1 + DEFAULT_SEQ_RESERVE);
            assert_eq!(seqs(&mut ob).await, [4, 6, 7, 8, 9, 10]);
            ob.settle(&ack(&[(0, u32::MAX)], &[])).await.unwrap();
            assert!(ob.is_empty().await.unwrap());
            // Empty queue, still no seq reuse after another reboot.
            let mut ob = Outbox::open(ob.into_flash(), layout()).await.unwrap();
            assert_eq!(ob.next_seq(), 1 + DEFAULT_SEQ_RESERVE);
            assert_eq!(
                ob.append(&reading(70.0)).await.unwrap(),
                1 + DEFAULT_SEQ_RESERVE
            );
        });
    }

    #[test]
    fn full_queue_refuses_and_keeps_what_it_has() {
        block_on(async {
            let mut ob = Outbox::open(Blocking(RamFlash::new()), layout())
                .await
                .unwrap();
            let mut stored = 0u32;
            loop {
                match ob.append(&reading(70.0)).await {
                    Ok(_) => stored += 1,
                    Err(OutboxError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(stored > 40, "{stored}");
            assert_eq!(ob.len().await.unwrap(), stored as usize);
            // Settling the oldest makes room again, and the queue wraps around its pages.
            for round in 0..5 {
                let first = seqs(&mut ob).await[0];
                ob.settle(&ack(&[(first, first + 19)], &[])).await.unwrap();
                for _ in 0..20 {
                    ob.append(&reading(71.0))
                        .await
                        .unwrap_or_else(|e| panic!("{round}: {e}"));
                }
            }
            let all = seqs(&mut ob).await;
            assert!(all.windows(2).all(|w| w[0] < w[1]));
        });
    }

    #[test]
    fn bad_layouts_are_errors() {
        block_on(async {
            let mut l = layout();
            l.meta = 0..512;
            assert!(matches!(
                Outbox::open(Blocking(RamFlash::<4096, 512>::new()), l).await,
                Err(OutboxError::Layout(_))
            ));
            let mut l = layout();
            l.queue = 512..4096;
            assert!(matches!(
                Outbox::open(Blocking(RamFlash::<4096, 512>::new()), l).await,
                Err(OutboxError::Layout(_))
            ));
            let mut l = layout();
            l.queue = 1024..8192;
            assert!(matches!(
                Outbox::open(Blocking(RamFlash::<4096, 512>::new()), l).await,
                Err(OutboxError::Layout(_))
            ));
        });
    }
}
