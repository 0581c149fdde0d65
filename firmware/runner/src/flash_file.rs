//! A NOR flash in a file: the outbox of a Linux board.
//!
//! The file is the flash image, byte for byte (erased = `0xFF`), so it can be inspected,
//! copied to another board, or fed to the core's tests. It follows NOR rules (a write can only
//! clear bits, word-aligned writes, page erases), so `sequential-storage` sees the same medium
//! as on a microcontroller.
//!
//! **Power-safe writes.** A power cut must tear at most the operation in progress, and only as
//! a *prefix* (the first bytes done, the rest untouched): that is the failure the outbox's
//! power-cut tests prove it survives (`firmware/core/tests/outbox_power_cut.rs`). So every
//! write or erase goes to the file in 512-byte, sector-aligned pieces, in ascending order, each
//! followed by `fdatasync`, and returns only once the last piece is on the medium. This relies
//! on the storage keeping a single-sector write atomic and honouring flushes; SD cards do not
//! always (see `firmware/README.md`).
//!
//! The file is locked (`flock`) while open, so two runners cannot share one image.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use embedded_storage::nor_flash::{
    ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Write unit, bytes.
pub const WORD: usize = 4;

/// Granularity of ordered, flushed writes to the file.
const SECTOR: usize = 512;

/// Why a flash operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileFlashError {
    /// Offset or length not aligned to the word (write) or page (erase).
    #[error("not aligned")]
    NotAligned,
    /// Outside the image.
    #[error("out of bounds")]
    OutOfBounds,
    /// The file could not be written or flushed.
    #[error("flash image: {0}")]
    Io(#[from] io::Error),
}

impl NorFlashError for FileFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FileFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FileFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            FileFlashError::Io(_) => NorFlashErrorKind::Other,
        }
    }
}

/// A flash image file with pages of `PAGE` bytes.
#[derive(Debug)]
pub struct FileFlash<const PAGE: usize> {
    file: File,
    path: PathBuf,
    /// The image as it is on disk (reads come from here).
    mirror: Vec<u8>,
    /// `fdatasync` after each piece (turn off only for throw-away images).
    sync: bool,
}

impl<const PAGE: usize> FileFlash<PAGE> {
    /// Opens the image at `path`, creating an erased one of `capacity` bytes if there is
    /// none. An existing image must have exactly that size.
    pub fn open(path: &Path, capacity: usize, sync: bool) -> io::Result<Self> {
        if capacity == 0 || !capacity.is_multiple_of(PAGE) || !PAGE.is_multiple_of(SECTOR) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("flash size {capacity} must be a multiple of the {PAGE}-byte page"),
            ));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.try_lock().map_err(|e| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another runner ({e})", path.display()),
            )
        })?;
        let len = file.metadata()?.len();
        let mut mirror = vec![0xFF; capacity];
        if len == 0 {
            file.write_all_at(&mirror, 0)?;
            file.sync_all()?;
        } else if len == capacity as u64 {
            file.read_exact(&mut mirror)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {len} bytes, expected a {capacity}-byte flash image",
                    path.display()
                ),
            ));
        }
        Ok(FileFlash {
            file,
            path: path.to_owned(),
            mirror,
            sync,
        })
    }

    /// Where the image is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn range(&self, offset: u32, len: usize) -> Result<std::ops::Range<usize>, FileFlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(FileFlashError::OutOfBounds)?;
        if end > self.mirror.len() {
            return Err(FileFlashError::OutOfBounds);
        }
        Ok(start..end)
    }

    /// Writes `mirror[range]` to the file in ascending, flushed, sector-aligned pieces.
    fn persist(&mut self, range: std::ops::Range<usize>) -> Result<(), FileFlashError> {
        let mut at = range.start;
        while at < range.end {
            let piece_end = ((at / SECTOR) + 1) * SECTOR;
            let end = piece_end.min(range.end);
            let bytes = self
                .mirror
                .get(at..end)
                .ok_or(FileFlashError::OutOfBounds)?;
            let written = self.file.write_all_at(bytes, at as u64).and_then(|()| {
                if self.sync {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = written {
                // The disk and the mirror may now differ: read the truth back.
                let mut truth = vec![0u8; range.end - at];
                if self.file.read_exact_at(&mut truth, at as u64).is_ok()
                    && let Some(dst) = self.mirror.get_mut(at..range.end)
                {
                    dst.copy_from_slice(&truth);
                }
                return Err(e.into());
            }
            at = end;
        }
        Ok(())
    }
}

impl<const PAGE: usize> ErrorType for FileFlash<PAGE> {
    type Error = FileFlashError;
}

impl<const PAGE: usize> ReadNorFlash for FileFlash<PAGE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let range = self.range(offset, bytes.len())?;
        let src = self.mirror.get(range).ok_or(FileFlashError::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mirror.len()
    }
}

impl<const PAGE: usize> NorFlash for FileFlash<PAGE> {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = PAGE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if !(from as usize).is_multiple_of(PAGE) || !(to as usize).is_multiple_of(PAGE) || to < from
        {
            return Err(FileFlashError::NotAligned);
        }
        let range = self.range(from, (to - from) as usize)?;
        if let Some(dst) = self.mirror.get_mut(range.clone()) {
            dst.fill(0xFF);
        }
        self.persist(range)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        if !(offset as usize).is_multiple_of(WORD) || !bytes.len().is_multiple_of(WORD) {
            return Err(FileFlashError::NotAligned);
        }
        let range = self.range(offset, bytes.len())?;
        if let Some(dst) = self.mirror.get_mut(range.clone()) {
            for (d, s) in dst.iter_mut().zip(bytes) {
                *d &= *s;
            }
        }
        self.persist(range)
    }
}

impl<const PAGE: usize> MultiwriteNorFlash for FileFlash<PAGE> {}

#[cfg(test)]
mod tests {
    use super::*;

    type Flash = FileFlash<4096>;

    #[test]
    fn creates_persists_and_locks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("flash.img");
        {
            let mut f = Flash::open(&path, 4 * 4096, true).expect("create");
            assert_eq!(f.capacity(), 16_384);
            f.write(4092, &[0x0F, 0xF0, 0x00, 0xFF]).expect("write");
            f.write(4092, &[0xFF, 0x0F, 0xFF, 0x00])
                .expect("write again");
            f.write(4096, &[0x12; 8])
                .expect("write across a sector boundary");
            assert!(matches!(
                f.write(1, &[0; 4]),
                Err(FileFlashError::NotAligned)
            ));
            assert!(matches!(
                f.write(16_384, &[0; 4]),
                Err(FileFlashError::OutOfBounds)
            ));
            assert!(matches!(f.erase(0, 100), Err(FileFlashError::NotAligned)));
            let second = Flash::open(&path, 4 * 4096, true);
            assert!(second.is_err(), "the image is locked while open");
        }
        let mut f = Flash::open(&path, 4 * 4096, true).expect("reopen");
        let mut buf = [0u8; 12];
        f.read(4092, &mut buf).expect("read");
        assert_eq!(buf[..4], [0x0F, 0x00, 0x00, 0x00]);
        assert_eq!(buf[4..], [0x12; 8]);
        f.erase(4096, 8192).expect("erase");
        f.read(4092, &mut buf).expect("read");
        assert_eq!(buf[4..], [0xFF; 8]);
        drop(f);
        assert!(Flash::open(&path, 8 * 4096, true).is_err(), "size mismatch");
        let raw = std::fs::read(&path).expect("raw image");
        assert_eq!(raw.len(), 16_384);
        assert_eq!(raw[4092..4096], [0x0F, 0, 0, 0]);
    }
}
