//! [`Meter`]: records from a blood-pressure monitor or glucose meter on a UART.

use embedded_io::{Read, Write};

use crate::frame::{self, Deframer, Pushed, UUID_CONFIRM};
use crate::record::{
    BloodPressureMeasurement, GlucoseContext, GlucoseMeasurement, RecordError, UUID_BP_MEASUREMENT,
    UUID_GLUCOSE_CONTEXT, UUID_GLUCOSE_MEASUREMENT,
};

/// One record a meter reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A blood-pressure measurement.
    BloodPressure(BloodPressureMeasurement),
    /// A glucose measurement, with its context when the meter sent one.
    Glucose(GlucoseMeasurement, Option<GlucoseContext>),
}

/// A driver error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The UART failed.
    Io(E),
    /// The stream ended (the port was closed).
    Eof,
    /// A well-framed record did not parse; it was confirmed (so the meter drops it instead of
    /// resending it for ever) and is reported here. `uuid` names its characteristic.
    Malformed {
        /// The characteristic.
        uuid: u16,
        /// What was wrong.
        error: RecordError,
    },
}

impl<E: core::fmt::Debug> core::fmt::Display for Error<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "UART: {e:?}"),
            Error::Eof => f.write_str("UART closed"),
            Error::Malformed { uuid, error } => {
                write!(f, "malformed record 0x{uuid:04X}: {error:?}")
            }
        }
    }
}

/// Counters of what the driver dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames that failed a check.
    pub bad_frames: u32,
    /// Frames of characteristics this driver does not read.
    pub unknown_frames: u32,
    /// Resends of the record confirmed last, confirmed again and not reported.
    pub duplicates: u32,
    /// Contexts without their measurement.
    pub orphan_contexts: u32,
}

/// A meter on the byte stream `IO`.
#[derive(Debug)]
pub struct Meter<IO> {
    io: IO,
    deframer: Deframer,
    rx: [u8; 32],
    rx_len: usize,
    rx_pos: usize,
    /// A glucose measurement waiting for its context.
    waiting: Option<(GlucoseMeasurement, u16)>,
    /// Identity (CRCs of its frames) of the record returned last, until confirmed.
    current: Option<u32>,
    /// Identity of the record confirmed last.
    confirmed: Option<u32>,
    counters: Counters,
}

impl<IO: Read + Write> Meter<IO> {
    /// A driver on `io`. Does not touch the stream.
    pub fn new(io: IO) -> Self {
        Meter {
            io,
            deframer: Deframer::new(),
            rx: [0; 32],
            rx_len: 0,
            rx_pos: 0,
            waiting: None,
            current: None,
            confirmed: None,
            counters: Counters::default(),
        }
    }

    /// Blocks until the meter reports a record. Call [`Meter::confirm`] once it is stored;
    /// until then the meter keeps it and sends it again.
    pub fn next_record(&mut self) -> Result<Record, Error<IO::Error>> {
        loop {
            let (uuid, value, crc) = self.next_frame()?;
            let value = value
                .get(..usize::from(value[frame::MAX_VALUE]))
                .unwrap_or_default();
            match uuid {
                UUID_BP_MEASUREMENT => {
                    let identity = u32::from(crc) | (u32::from(uuid) << 16);
                    match BloodPressureMeasurement::parse(value) {
                        Ok(m) => {
                            if self.is_resend(identity)? {
                                continue;
                            }
                            self.current = Some(identity);
                            return Ok(Record::BloodPressure(m));
                        }
                        Err(error) => return Err(self.malformed(uuid, error)),
                    }
                }
                UUID_GLUCOSE_MEASUREMENT => match GlucoseMeasurement::parse(value) {
                    Ok(m) if m.context_follows => {
                        // A measurement still waiting is superseded: the meter sends records
                        // one at a time, so it will send that one again.
                        self.waiting = Some((m, crc));
                    }
                    Ok(m) => {
                        self.waiting = None;
                        let identity = u32::from(crc) | (u32::from(uuid) << 16);
                        if self.is_resend(identity)? {
                            continue;
                        }
                        self.current = Some(identity);
                        return Ok(Record::Glucose(m, None));
                    }
                    Err(error) => return Err(self.malformed(uuid, error)),
                },
                UUID_GLUCOSE_CONTEXT => match GlucoseContext::parse(value) {
                    Ok(c) => match self.waiting.take() {
                        Some((m, mcrc)) if m.sequence == c.sequence => {
                            let identity = (u32::from(mcrc) << 16) | u32::from(crc);
                            if self.is_resend(identity)? {
                                continue;
                            }
                            self.current = Some(identity);
                            return Ok(Record::Glucose(m, Some(c)));
                        }
                        other => {
                            self.waiting = other;
                            self.counters.orphan_contexts += 1;
                        }
                    },
                    Err(error) => return Err(self.malformed(uuid, error)),
                },
                _ => self.counters.unknown_frames += 1,
            }
        }
    }

    /// Tells the meter the record returned last is stored: it may drop it.
    pub fn confirm(&mut self) -> Result<(), Error<IO::Error>> {
        self.send_confirmation()?;
        if let Some(id) = self.current.take() {
            self.confirmed = Some(id);
        }
        Ok(())
    }

    /// What the driver dropped so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Gives the stream back.
    pub fn destroy(self) -> IO {
        self.io
    }

    fn is_resend(&mut self, identity: u32) -> Result<bool, Error<IO::Error>> {
        if self.confirmed == Some(identity) && self.current.is_none() {
            // Our confirmation was lost and the meter sent the stored record again.
            self.counters.duplicates += 1;
            self.send_confirmation()?;
            return Ok(true);
        }
        Ok(false)
    }

    fn malformed(&mut self, uuid: u16, error: RecordError) -> Error<IO::Error> {
        match self.send_confirmation() {
            Ok(()) => Error::Malformed { uuid, error },
            Err(e) => e,
        }
    }

    fn send_confirmation(&mut self) -> Result<(), Error<IO::Error>> {
        let mut buf = [0u8; 16];
        let n = frame::encode(UUID_CONFIRM, &[], &mut buf).unwrap_or(0);
        self.io
            .write_all(buf.get(..n).unwrap_or_default())
            .map_err(Error::Io)?;
        self.io.flush().map_err(Error::Io)
    }

    /// The next valid frame: its UUID, its value (with the length in the last byte of the
    /// array) and its CRC.
    fn next_frame(&mut self) -> Result<(u16, [u8; frame::MAX_VALUE + 1], u16), Error<IO::Error>> {
        loop {
            if self.rx_pos == self.rx_len {
                let n = self.io.read(&mut self.rx).map_err(Error::Io)?;
                if n == 0 {
                    return Err(Error::Eof);
                }
                self.rx_len = n.min(self.rx.len());
                self.rx_pos = 0;
            }
            let byte = self.rx[self.rx_pos];
            self.rx_pos += 1;
            match self.deframer.push(byte) {
                Pushed::Frame => {
                    if let Some(f) = self.deframer.frame() {
                        let mut value = [0u8; frame::MAX_VALUE + 1];
                        let len = f.value.len().min(frame::MAX_VALUE);
                        value[..len].copy_from_slice(&f.value[..len]);
                        value[frame::MAX_VALUE] = len as u8;
                        let crc = frame::crc16(f.value) ^ f.uuid;
                        return Ok((f.uuid, value, crc));
                    }
                }
                Pushed::Discarded => self.counters.bad_frames += 1,
                Pushed::Nothing => {}
            }
        }
    }
}
