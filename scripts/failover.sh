#!/usr/bin/env bash
# PostgreSQL primary failover under load, optimised build: the CI test
# tests/tests/failover.rs with more devices. Two PostgreSQL clusters of its own on free ports
# (synchronous standby), a node on the multi-host URL, devices publishing every 20 ms; the
# primary is stopped in immediate mode and the standby promoted.
#
#   bash scripts/failover.sh            (DEVICES=200 by default)
#
# env: DEVICES, SENTINELLA_PG_BIN (/usr/lib/postgresql/15/bin), OUT (artifacts/failover).
# Prints and saves (in $OUT/failover-$DEVICES.txt) the time from promotion to the first ack
# and to /readyz 200, and the count of readings generated, acked and lost (must be 0: the
# test fails otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-200}
OUT=${OUT:-artifacts/failover}
mkdir -p "$OUT"
if [ "$(id -u)" = 0 ]; then ulimit -n 20000 2>/dev/null || true; fi
SENTINELLA_FAILOVER_DEVICES=$DEVICES cargo test --release --locked -p e2e --test failover \
  -- --nocapture 2>&1 | tee "$OUT/failover-$DEVICES.log" | grep '^failover:' | tee "$OUT/failover-$DEVICES.txt"
test "${PIPESTATUS[0]}" = 0
