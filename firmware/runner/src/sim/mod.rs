//! Register-level simulations of the board's sensors, for running the firmware on any Linux
//! host: the same drivers run against them as against the chips.
//!
//! - [`max30102`]: the MAX30102's register file and FIFO, fed by a synthetic PPG.
//! - [`meter`]: a cuff or glucose meter on the far side of the UART framing.

pub mod max30102;
pub mod meter;
