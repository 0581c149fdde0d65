//! Shared test helpers: register constants re-declared from the datasheet (not imported from
//! the driver, so a wrong constant there fails here), and mock builders.
#![allow(dead_code)]

use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
use max30102::{Idle, Max30102};

pub(crate) const ADDR: u8 = 0x57;

pub(crate) struct Reg;
impl Reg {
    pub(crate) const INT_STATUS_1: u8 = 0x00;
    pub(crate) const INT_ENABLE_1: u8 = 0x02;
    pub(crate) const FIFO_WR_PTR: u8 = 0x04;
    pub(crate) const OVF_COUNTER: u8 = 0x05;
    pub(crate) const FIFO_RD_PTR: u8 = 0x06;
    pub(crate) const FIFO_DATA: u8 = 0x07;
    pub(crate) const FIFO_CONFIG: u8 = 0x08;
    pub(crate) const MODE_CONFIG: u8 = 0x09;
    pub(crate) const SPO2_CONFIG: u8 = 0x0A;
    pub(crate) const LED1_PA: u8 = 0x0C;
    pub(crate) const LED2_PA: u8 = 0x0D;
    pub(crate) const TEMP_INT: u8 = 0x1F;
    pub(crate) const TEMP_CONFIG: u8 = 0x21;
    pub(crate) const PART_ID: u8 = 0xFF;
}

pub(crate) fn write(reg: u8, value: u8) -> Transaction {
    Transaction::write(ADDR, vec![reg, value])
}

pub(crate) fn read(reg: u8, values: &[u8]) -> Transaction {
    Transaction::write_read(ADDR, vec![reg], values.to_vec())
}

/// A driver over a mock expecting `transactions`.
pub(crate) fn device(transactions: &[Transaction]) -> Max30102<Mock, Idle> {
    Max30102::new(Mock::new(transactions))
}

/// The transactions of `into_spo2` with the given FIFO_CONFIG, SPO2_CONFIG and LED values.
pub(crate) fn spo2_setup(fifo: u8, spo2: u8, red: u8, ir: u8) -> Vec<Transaction> {
    vec![
        read(Reg::PART_ID, &[0x15]),
        write(Reg::FIFO_CONFIG, fifo),
        write(Reg::SPO2_CONFIG, spo2),
        write(Reg::LED1_PA, red),
        write(Reg::LED2_PA, ir),
        write(Reg::INT_ENABLE_1, 0),
        write(Reg::FIFO_WR_PTR, 0),
        write(Reg::OVF_COUNTER, 0),
        write(Reg::FIFO_RD_PTR, 0),
        write(Reg::MODE_CONFIG, 0x03),
    ]
}

/// Ends a test: every expected transaction happened, no more.
pub(crate) fn done<M: max30102::mode::Mode>(dev: Max30102<Mock, M>) {
    let mut bus = dev.destroy();
    bus.done();
}
