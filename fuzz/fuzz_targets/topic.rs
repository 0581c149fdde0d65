//! Fuzz target `topic`: see `checks::topic` for what it asserts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sentinella_fuzz::checks::topic(data);
});
