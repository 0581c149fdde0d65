//! The driver against a replayed serial port.

mod common;

use common::{
    BP, BP_FULL, CONTEXT, CONTEXT_FASTING, GLUCOSE, confirmation, confirms, done, frame,
    glucose_with_context, meter, reads,
};
use embedded_hal_mock::eh1::serial::Transaction;
use embedded_hal_nb::serial::ErrorKind;
use meter_uart::record::RecordError;
use meter_uart::{Error, NbError, Record};

#[test]
fn reads_a_blood_pressure_record_and_confirms_it() {
    let mut t = vec![reads(&frame(BP, &BP_FULL))];
    t.extend(confirms());
    let mut m = meter(&t);
    let Record::BloodPressure(bp) = m.next_record().expect("record") else {
        panic!("expected blood pressure");
    };
    assert_eq!(bp.systolic.to_f32(), Some(121.0));
    m.confirm().expect("confirm");
    done(m);
}

#[test]
fn pairs_glucose_with_its_context() {
    let mut bytes = frame(GLUCOSE, &glucose_with_context());
    bytes.extend(frame(CONTEXT, &CONTEXT_FASTING));
    let mut t = vec![reads(&bytes)];
    t.extend(confirms());
    let mut m = meter(&t);
    let Record::Glucose(g, Some(c)) = m.next_record().expect("record") else {
        panic!("expected glucose with context");
    };
    assert_eq!((g.sequence, c.sequence, c.meal), (7, 7, Some(3)));
    m.confirm().expect("confirm");
    done(m);
}

#[test]
fn skips_noise_bad_frames_unknown_characteristics_and_orphan_contexts() {
    let mut bytes = vec![0x00, 0x42];
    let mut bad = frame(BP, &BP_FULL);
    bad[5] ^= 0x10;
    bytes.extend(bad);
    bytes.extend(frame(0x2A9D, &[1, 2, 3])); // weight measurement: not ours
    let mut other_ctx = CONTEXT_FASTING;
    other_ctx[1] = 9; // context of seq 9, no such measurement
    bytes.extend(frame(CONTEXT, &other_ctx));
    bytes.extend(frame(BP, &BP_FULL));
    let mut m = meter(&[reads(&bytes)]);
    assert!(matches!(m.next_record(), Ok(Record::BloodPressure(_))));
    let c = m.counters();
    assert_eq!(
        (c.bad_frames, c.unknown_frames, c.orphan_contexts),
        (2, 1, 1)
    );
    done(m);
}

#[test]
fn a_resend_of_the_confirmed_record_is_confirmed_again_not_reported() {
    let record = frame(BP, &BP_FULL);
    let mut second = BP_FULL;
    second[1] = 0x7A; // systolic 122: a new record
    let mut t = vec![reads(&record)];
    t.extend(confirms());
    // Our confirmation got lost: the meter sends the same record again, then a new one.
    t.push(reads(&record));
    t.extend(confirms());
    t.push(reads(&frame(BP, &second)));
    let mut m = meter(&t);
    m.next_record().expect("first");
    m.confirm().expect("confirm");
    let Record::BloodPressure(bp) = m.next_record().expect("second") else {
        panic!("expected blood pressure");
    };
    assert_eq!(bp.systolic.to_f32(), Some(122.0));
    assert_eq!(m.counters().duplicates, 1);
    done(m);
}

#[test]
fn an_unconfirmed_record_sent_again_is_reported_again() {
    // The host did not confirm (e.g. its flash was full): the resend is a fresh chance.
    let record = frame(BP, &BP_FULL);
    let mut m = meter(&[reads(&record), reads(&record)]);
    m.next_record().expect("first");
    m.next_record().expect("the same record again");
    assert_eq!(m.counters().duplicates, 0);
    done(m);
}

#[test]
fn malformed_record_is_confirmed_and_reported() {
    let mut t = vec![reads(&frame(BP, &BP_FULL[..10]))];
    t.extend(confirms());
    let mut m = meter(&t);
    assert_eq!(
        m.next_record(),
        Err(Error::Malformed {
            uuid: BP,
            error: RecordError::Truncated
        })
    );
    done(m);
}

#[test]
fn uart_errors_are_returned() {
    let mut m = meter(&[
        Transaction::read(0x7E),
        Transaction::read_error(nb::Error::Other(ErrorKind::Overrun)),
    ]);
    assert_eq!(m.next_record(), Err(Error::Io(NbError(ErrorKind::Overrun))));
    done(m);

    let mut t = vec![reads(&frame(BP, &BP_FULL))];
    t.push(Transaction::write_error(
        confirmation()[0],
        nb::Error::Other(ErrorKind::Other),
    ));
    let mut m = meter(&t);
    m.next_record().expect("record");
    assert_eq!(m.confirm(), Err(Error::Io(NbError(ErrorKind::Other))));
    done(m);
}
