//! Flash adapters: blocking `embedded-storage` → async, and a RAM model that loses power.
//!
//! `sequential-storage` speaks the async `embedded-storage-async` traits. Most MCU HALs and the
//! Linux runner's flash-image file implement the blocking `embedded-storage` traits instead;
//! [`Blocking`] bridges the two (each call completes at once, so any executor will do).
//!
//! [`RamFlash`] is a NOR flash in RAM with real NOR rules (erase sets bytes to `0xFF`, a write
//! can only clear bits, writes are word-aligned) and a power-cut switch: after a given number
//! of write/erase operations, the next one is torn part-way and every later operation fails
//! until [`RamFlash::power_on`]. The outbox's power-cut tests iterate that number over every
//! step of an append or a pop.

use embedded_storage::nor_flash::{
    ErrorType, MultiwriteNorFlash as BlockingMultiwrite, NorFlash as BlockingNorFlash,
    NorFlashError, NorFlashErrorKind, ReadNorFlash as BlockingRead,
};
use embedded_storage_async::nor_flash::{MultiwriteNorFlash, NorFlash, ReadNorFlash};

/// Makes a blocking `embedded-storage` flash usable where the async traits are required.
#[derive(Debug)]
pub struct Blocking<F>(pub F);

impl<F> Blocking<F> {
    /// The wrapped flash.
    pub fn into_inner(self) -> F {
        self.0
    }

    /// A reference to the wrapped flash.
    pub fn inner(&self) -> &F {
        &self.0
    }
}

impl<F: ErrorType> ErrorType for Blocking<F> {
    type Error = F::Error;
}

impl<F: BlockingRead> ReadNorFlash for Blocking<F> {
    const READ_SIZE: usize = F::READ_SIZE;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<F: BlockingNorFlash> NorFlash for Blocking<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.0.erase(from, to)
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.write(offset, bytes)
    }
}

impl<F: BlockingMultiwrite> MultiwriteNorFlash for Blocking<F> {}

/// Word size of [`RamFlash`] (bytes per write unit).
pub const RAM_WORD: usize = 4;

/// Why a [`RamFlash`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFlashError {
    /// Offset or length not a multiple of the word (write) or page (erase) size.
    NotAligned,
    /// Outside the flash.
    OutOfBounds,
    /// The power was cut (during this operation or before it).
    PowerCut,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            RamFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            RamFlashError::PowerCut => NorFlashErrorKind::Other,
        }
    }
}

/// How a power cut tears the operation it interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tear {
    /// Nothing of the operation reaches the flash.
    Nothing,
    /// The first half of the words (write) or bytes (erase) are done.
    Half,
    /// All but the last word (write) or byte (erase) are done.
    AllButLast,
}

/// A NOR flash of `SIZE` bytes in RAM, pages of `PAGE` bytes, words of [`RAM_WORD`] bytes.
#[derive(Debug, Clone)]
pub struct RamFlash<const SIZE: usize, const PAGE: usize> {
    bytes: [u8; SIZE],
    /// Write/erase operations allowed before the power is cut.
    budget: Option<u32>,
    tear: Tear,
    dead: bool,
    ops: u32,
}

impl<const SIZE: usize, const PAGE: usize> Default for RamFlash<SIZE, PAGE> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const SIZE: usize, const PAGE: usize> RamFlash<SIZE, PAGE> {
    /// An erased flash with the power on for good.
    pub const fn new() -> Self {
        RamFlash {
            bytes: [0xFF; SIZE],
            budget: None,
            tear: Tear::Nothing,
            dead: false,
            ops: 0,
        }
    }

    /// Cuts the power during the write/erase operation after `ops` more have completed,
    /// tearing it as `tear` says.
    pub fn cut_after(&mut self, ops: u32, tear: Tear) {
        self.budget = Some(ops);
        self.tear = tear;
    }

    /// Restores the power (a reboot): the contents stay as the cut left them.
    pub fn power_on(&mut self) {
        self.dead = false;
        self.budget = None;
    }

    /// Whether a cut has happened and the power is still off.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Write and erase operations performed (or started) so far.
    pub fn ops(&self) -> u32 {
        self.ops
    }

    /// The raw contents.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Called at the start of each write/erase: returns how much of it to do.
    fn begin(&mut self) -> Result<Option<Tear>, RamFlashError> {
        if self.dead {
            return Err(RamFlashError::PowerCut);
        }
        self.ops = self.ops.saturating_add(1);
        match self.budget {
            Some(0) => {
                self.dead = true;
                Ok(Some(self.tear))
            }
            Some(n) => {
                self.budget = Some(n - 1);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, RamFlashError> {
        let start = usize::try_from(offset).map_err(|_| RamFlashError::OutOfBounds)?;
        let end = start.checked_add(len).ok_or(RamFlashError::OutOfBounds)?;
        if end > SIZE {
            return Err(RamFlashError::OutOfBounds);
        }
        Ok(start..end)
    }
}

fn torn_len(len: usize, unit: usize, tear: Tear) -> usize {
    let units = len / unit;
    let done = match tear {
        Tear::Nothing => 0,
        Tear::Half => units / 2,
        Tear::AllButLast => units.saturating_sub(1),
    };
    done * unit
}

impl<const SIZE: usize, const PAGE: usize> ErrorType for RamFlash<SIZE, PAGE> {
    type Error = RamFlashError;
}

impl<const SIZE: usize, const PAGE: usize> BlockingRead for RamFlash<SIZE, PAGE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        if self.dead {
            return Err(RamFlashError::PowerCut);
        }
        let range = self.range(offset, bytes.len())?;
        let src = self.bytes.get(range).ok_or(RamFlashError::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        SIZE
    }
}

impl<const SIZE: usize, const PAGE: usize> BlockingNorFlash for RamFlash<SIZE, PAGE> {
    const WRITE_SIZE: usize = RAM_WORD;
    const ERASE_SIZE: usize = PAGE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if !from.is_multiple_of(PAGE as u32) || !to.is_multiple_of(PAGE as u32) || to < from {
            return Err(RamFlashError::NotAligned);
        }
        let len = (to - from) as usize;
        let range = self.range(from, len)?;
        let tear = self.begin()?;
        let done = tear.map_or(len, |t| torn_len(len, 1, t));
        if let Some(dst) = self.bytes.get_mut(range.start..range.start + done) {
            dst.fill(0xFF);
        }
        if tear.is_some() {
            return Err(RamFlashError::PowerCut);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !(offset as usize).is_multiple_of(RAM_WORD) || !bytes.len().is_multiple_of(RAM_WORD) {
            return Err(RamFlashError::NotAligned);
        }
        let range = self.range(offset, bytes.len())?;
        let tear = self.begin()?;
        let done = tear.map_or(bytes.len(), |t| torn_len(bytes.len(), RAM_WORD, t));
        if let Some(dst) = self.bytes.get_mut(range.start..range.start + done) {
            // NOR: programming can only clear bits.
            for (d, s) in dst.iter_mut().zip(bytes) {
                *d &= *s;
            }
        }
        if tear.is_some() {
            return Err(RamFlashError::PowerCut);
        }
        Ok(())
    }
}

impl<const SIZE: usize, const PAGE: usize> BlockingMultiwrite for RamFlash<SIZE, PAGE> {}

#[cfg(test)]
mod tests {
    use super::*;

    type Flash = RamFlash<1024, 256>;

    #[test]
    fn nor_rules() {
        let mut f = Flash::new();
        f.write(0, &[0x0F, 0xF0, 0xFF, 0x00]).unwrap();
        f.write(0, &[0xFF, 0x0F, 0x00, 0xFF]).unwrap();
        let mut buf = [0; 4];
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0x0F, 0x00, 0x00, 0x00]);
        assert_eq!(f.write(1, &[0; 4]), Err(RamFlashError::NotAligned));
        assert_eq!(f.write(0, &[0; 3]), Err(RamFlashError::NotAligned));
        assert_eq!(f.write(1024, &[0; 4]), Err(RamFlashError::OutOfBounds));
        assert_eq!(f.erase(0, 100), Err(RamFlashError::NotAligned));
        f.erase(0, 256).unwrap();
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0xFF; 4]);
    }

    #[test]
    fn power_cut_tears_and_kills_until_power_on() {
        let mut f = Flash::new();
        f.cut_after(1, Tear::Half);
        f.write(0, &[0; 8]).unwrap();
        assert_eq!(f.write(8, &[0; 8]), Err(RamFlashError::PowerCut));
        assert!(f.is_dead());
        let mut buf = [0; 16];
        assert_eq!(f.read(0, &mut buf), Err(RamFlashError::PowerCut));
        f.power_on();
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf[..12], [0; 12]);
        assert_eq!(buf[12..], [0xFF; 4]);

        f.write(0, &[0; 256]).unwrap();
        f.cut_after(0, Tear::AllButLast);
        assert_eq!(f.erase(0, 256), Err(RamFlashError::PowerCut));
        f.power_on();
        f.read(0, &mut buf).unwrap();
        assert_eq!(buf, [0xFF; 16]);
        let mut last = [0; 1];
        f.read(255, &mut last).unwrap();
        assert_eq!(last, [0], "the last byte of the page was not erased");
    }
}
