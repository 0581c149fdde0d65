//! Support code for Sentinella's fuzz targets (`fuzz_targets/`).
//!
//! [`checks`] holds the oracles of the protocol targets. `protocol/tests/corpus.rs` includes
//! the very same file, so `cargo test` replays every committed corpus input through exactly
//! the checks the fuzzer runs.

pub mod checks;
