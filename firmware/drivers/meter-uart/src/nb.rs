//! [`Nb`]: an `embedded-hal-nb` serial port (e.g. `linux-embedded-hal`'s `Serial`, or
//! `embedded-hal-mock`'s serial mock) seen as an `embedded-io` byte stream.
//!
//! Reads block until one byte is there and return it; writes send every byte; both spin on
//! `WouldBlock`, which is what a blocking byte stream means.

use embedded_hal_nb::serial;

/// The adapter.
#[derive(Debug)]
pub struct Nb<S>(pub S);

impl<S> Nb<S> {
    /// The wrapped port.
    pub fn into_inner(self) -> S {
        self.0
    }
}

/// A serial port error, as an `embedded-io` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbError<E>(pub E);

impl<E: core::fmt::Debug> core::fmt::Display for NbError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "serial port: {:?}", self.0)
    }
}

impl<E: core::fmt::Debug> core::error::Error for NbError<E> {}

impl<E: serial::Error> embedded_io::Error for NbError<E> {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::Other
    }
}

impl<S: serial::ErrorType> embedded_io::ErrorType for Nb<S> {
    type Error = NbError<S::Error>;
}

impl<S: serial::Read<u8>> embedded_io::Read for Nb<S> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let Some(first) = buf.first_mut() else {
            return Ok(0);
        };
        *first = nb::block!(self.0.read()).map_err(NbError)?;
        Ok(1)
    }
}

impl<S: serial::Write<u8>> embedded_io::Write for Nb<S> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &b in buf {
            nb::block!(self.0.write(b)).map_err(NbError)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        nb::block!(self.0.flush()).map_err(NbError)
    }
}
