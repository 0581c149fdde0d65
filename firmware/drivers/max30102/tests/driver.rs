//! The driver against a replayed I2C bus.

mod common;

use common::{ADDR, Reg, device, done, read, spo2_setup, write};
use embedded_hal::i2c::ErrorKind;
use embedded_hal_mock::eh1::i2c::Transaction;
use max30102::{AdcRange, Config, Error, PulseWidth, Sample, SampleAveraging, SampleRate};

#[test]
fn reads_part_id() {
    let mut dev = device(&[read(Reg::PART_ID, &[0x15])]);
    assert_eq!(dev.part_id(), Ok(0x15));
    done(dev);
}

#[test]
fn reset_polls_until_done() {
    let mut dev = device(&[
        write(Reg::MODE_CONFIG, 0x40),
        read(Reg::MODE_CONFIG, &[0x40]),
        read(Reg::MODE_CONFIG, &[0x00]),
    ]);
    assert_eq!(dev.reset(), Ok(()));
    done(dev);
}

#[test]
fn reset_gives_up() {
    let mut t = vec![write(Reg::MODE_CONFIG, 0x40)];
    t.extend((0..100).map(|_| read(Reg::MODE_CONFIG, &[0x40])));
    let mut dev = device(&t);
    assert_eq!(dev.reset(), Err(Error::Timeout));
    done(dev);
}

#[test]
fn default_config_enters_spo2_mode() {
    // 4x averaging + roll-over; 4096 nA, 400 Hz, 411 µs; 7.2 mA on both LEDs.
    let dev = device(&spo2_setup(0x50, 0x2F, 0x24, 0x24));
    let dev = dev.into_spo2(&Config::default()).expect("spo2 mode");
    assert_eq!(Config::default().fifo_rate_hz(), 100);
    done(dev);
}

/// One line per configuration: the register values it must produce.
macro_rules! config_test {
    ($name:ident, $config:expr, fifo = $fifo:expr, spo2 = $spo2:expr) => {
        #[test]
        fn $name() {
            let config: Config = $config;
            let dev = device(&spo2_setup(
                $fifo,
                $spo2,
                config.red_current,
                config.ir_current,
            ));
            let dev = dev.into_spo2(&config).expect("spo2 mode");
            done(dev);
        }
    };
}

config_test!(
    fastest_no_averaging,
    Config {
        sample_rate: SampleRate::Hz3200,
        pulse_width: PulseWidth::Us69,
        adc_range: AdcRange::Na16384,
        averaging: SampleAveraging::One,
        fifo_rollover: false,
        ..Config::default()
    },
    fifo = 0x00,
    spo2 = 0x7C
);
config_test!(
    slowest_max_averaging,
    Config {
        sample_rate: SampleRate::Hz50,
        pulse_width: PulseWidth::Us118,
        adc_range: AdcRange::Na2048,
        averaging: SampleAveraging::ThirtyTwo,
        red_current: 0xFF,
        ir_current: 0x01,
        fifo_rollover: true,
    },
    fifo = 0xB0,
    spo2 = 0x01
);
config_test!(
    mid_settings,
    Config {
        sample_rate: SampleRate::Hz1000,
        pulse_width: PulseWidth::Us215,
        adc_range: AdcRange::Na8192,
        averaging: SampleAveraging::Eight,
        ..Config::default()
    },
    fifo = 0x70,
    spo2 = 0x56
);

#[test]
fn wrong_part_hands_the_device_back() {
    let dev = device(&[read(Reg::PART_ID, &[0x11])]);
    let err = dev
        .into_spo2(&Config::default())
        .expect_err("not a MAX30102");
    assert_eq!(err.error, Error::WrongPart(0x11));
    done(err.device);
}

#[test]
fn bus_error_during_setup_hands_the_device_back() {
    let dev = device(&[
        read(Reg::PART_ID, &[0x15]),
        write(Reg::FIFO_CONFIG, 0x50).with_error(ErrorKind::Other),
    ]);
    let err = dev.into_spo2(&Config::default()).expect_err("bus fault");
    assert_eq!(err.error, Error::I2c(ErrorKind::Other));
    done(err.device);
}

#[test]
fn bus_error_on_read_is_returned() {
    let mut dev = device(&[read(Reg::PART_ID, &[0]).with_error(ErrorKind::Other)]);
    assert_eq!(dev.part_id(), Err(Error::I2c(ErrorKind::Other)));
    done(dev);
}

fn running(
    extra: &[Transaction],
) -> max30102::Max30102<embedded_hal_mock::eh1::i2c::Mock, max30102::Spo2Mode> {
    let mut t = spo2_setup(0x50, 0x2F, 0x24, 0x24);
    t.extend_from_slice(extra);
    device(&t).into_spo2(&Config::default()).expect("spo2 mode")
}

#[test]
fn available_wraps_and_reports_overflow() {
    let mut dev = running(&[
        read(Reg::FIFO_WR_PTR, &[3, 0, 30]),
        read(Reg::FIFO_WR_PTR, &[7, 0, 7]),
        read(Reg::FIFO_WR_PTR, &[7, 4, 7]),
    ]);
    assert_eq!(dev.available(), Ok(5));
    assert_eq!(dev.available(), Ok(0));
    assert_eq!(dev.available(), Ok(32), "overflow: the FIFO is full");
    done(dev);
}

#[test]
fn reads_the_fifo_in_one_burst() {
    let mut dev = running(&[
        read(Reg::FIFO_WR_PTR, &[2, 0, 0]),
        read(
            Reg::FIFO_DATA,
            &[
                0x01, 0x23, 0x45, 0x02, 0x34, 0x56, // red 0x12345, ir 0x23456
                0xFF, 0xFF, 0xFF, 0xFC, 0x00, 0x01, // top 6 bits ignored
            ],
        ),
    ]);
    let mut out = [Sample::default(); 8];
    assert_eq!(dev.read_fifo(&mut out), Ok(2));
    assert_eq!(
        out[..2],
        [
            Sample {
                red: 0x12345,
                ir: 0x23456
            },
            Sample {
                red: 0x3FFFF,
                ir: 0x00001
            },
        ]
    );
    done(dev);
}

#[test]
fn reads_no_more_than_the_buffer_and_nothing_when_empty() {
    let mut dev = running(&[
        read(Reg::FIFO_WR_PTR, &[10, 0, 0]),
        read(Reg::FIFO_DATA, &[0, 0, 1, 0, 0, 2]),
        read(Reg::FIFO_WR_PTR, &[10, 0, 10]),
    ]);
    let mut out = [Sample::default(); 1];
    assert_eq!(dev.read_fifo(&mut out), Ok(1));
    assert_eq!(out[0], Sample { red: 1, ir: 2 });
    assert_eq!(dev.read_fifo(&mut out), Ok(0));
    done(dev);
}

#[test]
fn fifo_bus_error_is_returned() {
    let mut dev = running(&[
        read(Reg::FIFO_WR_PTR, &[1, 0, 0]),
        read(Reg::FIFO_DATA, &[0; 6]).with_error(ErrorKind::Other),
    ]);
    let mut out = [Sample::default(); 4];
    assert_eq!(dev.read_fifo(&mut out), Err(Error::I2c(ErrorKind::Other)));
    done(dev);
}

#[test]
fn clear_fifo_sample_ready_and_shutdown() {
    let dev = running(&[
        write(Reg::FIFO_WR_PTR, 0),
        write(Reg::OVF_COUNTER, 0),
        write(Reg::FIFO_RD_PTR, 0),
        read(Reg::INT_STATUS_1, &[0x40]),
        read(Reg::INT_STATUS_1, &[0x00]),
        write(Reg::MODE_CONFIG, 0x83),
    ]);
    let mut dev = dev;
    dev.clear_fifo().expect("clear");
    assert_eq!(dev.sample_ready(), Ok(true));
    assert_eq!(dev.sample_ready(), Ok(false));
    let dev = dev.into_idle().expect("idle");
    done(dev);
}

#[test]
fn failed_shutdown_keeps_sampling_mode() {
    let dev = running(&[write(Reg::MODE_CONFIG, 0x83).with_error(ErrorKind::Other)]);
    let err = dev.into_idle().expect_err("bus fault");
    assert_eq!(err.error, Error::I2c(ErrorKind::Other));
    done(err.device);
}

#[test]
fn temperature() {
    let mut dev = device(&[
        write(Reg::TEMP_CONFIG, 1),
        read(Reg::TEMP_CONFIG, &[1]),
        read(Reg::TEMP_CONFIG, &[0]),
        read(Reg::TEMP_INT, &[0xFE, 0x08]),
        write(Reg::TEMP_CONFIG, 1),
        read(Reg::TEMP_CONFIG, &[0]),
        read(Reg::TEMP_INT, &[0x21, 0x0F]),
    ]);
    assert_eq!(dev.temperature(), Ok(-1.5));
    assert_eq!(dev.temperature(), Ok(33.9375));
    done(dev);
}

#[test]
fn custom_address() {
    let bus = embedded_hal_mock::eh1::i2c::Mock::new(&[Transaction::write_read(
        0x29,
        vec![Reg::PART_ID],
        vec![0x15],
    )]);
    let mut dev = max30102::Max30102::with_address(bus, 0x29);
    assert_eq!(dev.part_id(), Ok(0x15));
    done(dev);
    let _ = ADDR;
}
