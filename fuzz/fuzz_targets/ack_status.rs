//! Fuzz target `ack_status`: see `checks::ack_status` for what it asserts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sentinella_fuzz::checks::ack_status(data);
});
