//! Fuzz target `decode_batch`: see `checks::decode_batch` for what it asserts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sentinella_fuzz::checks::decode_batch(data);
});
