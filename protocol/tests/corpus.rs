//! Replays the committed fuzz corpora through the fuzz targets' own oracles, on plain
//! `cargo test` (stable, no fuzzer): `fuzz/corpus/{decode_batch,topic,ack_status}/*`.
//!
//! The checks are not copied: `fuzz/src/checks.rs` is compiled into this test as a module,
//! so a property the fuzzer asserts is asserted here too, on every input the fuzzer kept
//! (see fuzz/README.md). Every decoder must not panic, and every round trip must hold.

use std::fs;
use std::path::{Path, PathBuf};

#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

/// Fewest inputs a corpus may hold; a smaller count means the corpus went missing.
const MIN_FILES: usize = 10;

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("corpus directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = corpus_files(target);
    assert!(
        files.len() >= MIN_FILES,
        "fuzz/corpus/{target} holds {} files, expected at least {MIN_FILES}",
        files.len()
    );
    for path in &files {
        let data = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "{target} check failed on {} ({} bytes): {:?}",
            path.display(),
            data.len(),
            String::from_utf8_lossy(&data)
        );
    }
    eprintln!("{target}: {} corpus files checked", files.len());
}

#[test]
fn decode_batch_corpus() {
    replay("decode_batch", checks::decode_batch);
}

#[test]
fn topic_corpus() {
    replay("topic", checks::topic);
}

#[test]
fn ack_status_corpus() {
    replay("ack_status", checks::ack_status);
}
