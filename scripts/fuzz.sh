#!/usr/bin/env bash
# Coverage-guided fuzzing of Sentinella's untrusted-input decoders with cargo fuzz (libFuzzer).
#
#   scripts/fuzz.sh [TARGET] [RUNS]
#
# TARGET: decode_batch, topic, ack_status, mqtt_v4, or all (the default). RUNS: executions per
# target (default 10000000, i.e. -runs=10000000). Targets run one after another. Prints the
# executions, exec/s, wall time and crashes of each target; exits 1 if any target crashed
# (reproducers land in fuzz/artifacts/TARGET/, logs in fuzz/target/fuzz-logs/).
#
# How long (measured 2026-11-22 on this project's 2-core machine, other work on the other
# core; numbers per target in fuzz/README.md). A full run, all four targets at 10,000,000 runs:
#   ASan build (default): ~35 min of fuzzing (decode_batch 7, topic 13, ack_status 3.5,
#     mqtt_v4 12 min), after a first build of ~5-8 min (rebuilds ~15 s);
#   FUZZ_SANITIZER=none: ~7.5 min of fuzzing (1, 3, 0.5, 3 min), first build ~3 min.
# FUZZ_CMIN=1 adds a few seconds per target.
#
# Stable toolchain: cargo fuzz's instrumentation flags (-Cpasses=sancov-module, -Cllvm-args)
# are stable; only AddressSanitizer (-Zsanitizer=address) needs a nightly flag, which stable
# rustc accepts with RUSTC_BOOTSTRAP=1 (set here, for the fuzz build only). With
# FUZZ_SANITIZER=none the build needs no RUSTC_BOOTSTRAP at all (faster; the protocol crate
# forbids unsafe code, but rumqttd and bytes do use it).
#
# Environment:
#   FUZZ_SANITIZER=address|none   sanitizer of the build (default address)
#   FUZZ_CMIN=1                   afterwards, merge what the run found into fuzz/corpus/TARGET
#                                 and minimise it with `cargo fuzz cmin` (commit the result)
#   FUZZ_ARGS="..."               extra libFuzzer flags (e.g. -max_total_time=600)
#   SENTINELLA_FUZZ_STRICT=1      no exemption for the known protocol issues of FINDINGS.md
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

ALL_TARGETS=(decode_batch topic ack_status mqtt_v4)
TARGET="${1:-all}"
RUNS="${2:-10000000}"
SAN="${FUZZ_SANITIZER:-address}"
CARGO_FUZZ_VERSION=0.13.2

case "$TARGET" in
  all) TARGETS=("${ALL_TARGETS[@]}") ;;
  decode_batch | topic | ack_status | mqtt_v4) TARGETS=("$TARGET") ;;
  *) echo "unknown target '$TARGET' (one of: ${ALL_TARGETS[*]} all)" >&2; exit 2 ;;
esac
[[ "$RUNS" =~ ^[0-9]+$ ]] || { echo "RUNS must be a number, got '$RUNS'" >&2; exit 2; }

# Per-target libFuzzer flags. decode_batch may grow past MAX_PAYLOAD (16 KiB) so the size
# limit itself is exercised; the others' messages are small.
max_len() {
  case "$1" in
    decode_batch) echo 17000 ;;
    mqtt_v4) echo 8192 ;;
    *) echo 4096 ;;
  esac
}
dict_args() { [ -f "$ROOT/fuzz/dict/$1.dict" ] && echo "-dict=$ROOT/fuzz/dict/$1.dict" || true; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION (a few minutes)" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# Own target dir (git-ignored), so fuzz builds never wait on the workspace's build lock;
# one per sanitizer, so switching does not rebuild everything.
export CARGO_TARGET_DIR="$ROOT/fuzz/target"
if [ "$SAN" != address ]; then export CARGO_TARGET_DIR="$ROOT/fuzz/target/sanitizer-$SAN"; fi
if [ "$SAN" != none ]; then export RUSTC_BOOTSTRAP=1; fi
# Default profile of cargo fuzz: optimised, with debug assertions and overflow checks.
BUILD=(--fuzz-dir fuzz --sanitizer "$SAN")

echo "== building fuzz targets (sanitizer: $SAN)" >&2
if [ "${#TARGETS[@]}" -eq 1 ]; then
  cargo fuzz build "${BUILD[@]}" "${TARGETS[0]}"
else
  cargo fuzz build "${BUILD[@]}"
fi

LOGS="$ROOT/fuzz/target/fuzz-logs"
mkdir -p "$LOGS"
failed=0
summary=()
for t in "${TARGETS[@]}"; do
  work="$ROOT/fuzz/target/corpus-work/$t" # new inputs go here, not into the committed seeds
  mkdir -p "$work" "fuzz/artifacts/$t"
  log="$LOGS/$t.log"
  echo "== fuzzing $t: $RUNS runs (log: $log)" >&2
  start=$(date +%s)
  set +e
  # shellcheck disable=SC2046,SC2086
  cargo fuzz run "${BUILD[@]}" "$t" "$work" "$ROOT/fuzz/corpus/$t" -- \
    -runs="$RUNS" -max_len="$(max_len "$t")" -timeout=25 -rss_limit_mb=2048 \
    -print_final_stats=1 $(dict_args "$t") ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  if [ -z "$execs" ]; then execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1); fi
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  crashes=$(grep -c 'Test unit written to .*/\(crash\|timeout\|oom\|leak\)-' "$log" || true)
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  line=$(printf '%-13s executions %-10s exec/s %-7s time %5ss  crashes %s' \
    "$t" "${execs:-?}" "${rate:-?}" "$secs" "$crashes")
  echo "$line"
  summary+=("$line")
  if [ "$crashes" -ne 0 ]; then
    failed=1
    grep -m1 -A3 'panicked at\|ERROR: ' "$log" | sed 's/^/    /' || true
    grep 'Test unit written to' "$log" | sed 's/^/    /' || true
  fi
  if [ "${FUZZ_CMIN:-0}" = 1 ] && [ "$crashes" -eq 0 ]; then
    echo "== minimising fuzz/corpus/$t" >&2
    cp -n "$work"/* "fuzz/corpus/$t/" 2>/dev/null || true
    cargo fuzz cmin "${BUILD[@]}" "$t" "fuzz/corpus/$t" -- -max_len="$(max_len "$t")" \
      >"$LOGS/$t.cmin.log" 2>&1
    echo "   $(find "fuzz/corpus/$t" -type f | wc -l) files, $(du -sh "fuzz/corpus/$t" | cut -f1)"
  fi
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzzing found crashes: see fuzz/artifacts/ and fuzz/FINDINGS.md" >&2
  exit 1
fi
echo "no crashes"
