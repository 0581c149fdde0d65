//! Real buses on a Linux board, through `linux-embedded-hal`.
//!
//! - I2C: `/dev/i2c-N` as an `embedded-hal` 1.0 bus ([`linux_embedded_hal::I2cdev`]).
//! - UART: `/dev/serial0`, `/dev/ttyAMA0`, `/dev/ttyUSB0`… opened with
//!   [`linux_embedded_hal::Serial`] (8N1, no flow control), used as an `embedded-io` stream
//!   through [`SerialIo`]: reads wait with a timeout so the thread can notice a shutdown.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use linux_embedded_hal::serialport::SerialPort;
use linux_embedded_hal::{I2cdev, Serial};

use crate::sim::meter::MeterStop;

/// How long one read waits before checking for a shutdown.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// Opens an I2C adapter.
pub fn open_i2c(path: &Path) -> anyhow::Result<I2cdev> {
    I2cdev::new(path).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))
}

/// Opens a serial port at `baud`.
pub fn open_serial(path: &Path, baud: u32, stop: MeterStop) -> anyhow::Result<SerialIo> {
    let mut serial = Serial::open(path.display().to_string(), baud)
        .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    serial
        .0
        .set_timeout(READ_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("configure {}: {e}", path.display()))?;
    Ok(SerialIo { serial, stop })
}

/// A serial port as an `embedded-io` stream.
pub struct SerialIo {
    serial: Serial,
    stop: MeterStop,
}

impl std::fmt::Debug for SerialIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialIo").finish_non_exhaustive()
    }
}

impl embedded_io::ErrorType for SerialIo {
    type Error = std::io::Error;
}

impl embedded_io::Read for SerialIo {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        loop {
            if self.stop.is_stopped() {
                return Ok(0);
            }
            match self.serial.0.read(buf) {
                Ok(0) => continue,
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl embedded_io::Write for SerialIo {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.serial.0.write(buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.serial.0.flush()
    }
}
