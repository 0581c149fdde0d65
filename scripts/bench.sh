#!/usr/bin/env bash
# Load benchmark of the device path: M simulated devices publish as fast as the gateway's
# commit acks allow, against a `sentinella run` (release build) in its own process; reports
# sustained readings/s from publish to commit ack, publish→ack latency and the gateway's peak
# RSS. The load generator runs on the same machine.
#
#   bash scripts/bench.sh [sqlite|postgres|all]      (default: all)
#   env: DEVICES (200), DURATION (30s), BATCH (32), IN_FLIGHT (4), PG (postgres base URL),
#        WRITERS (gateway.writers, default 4: commit lanes; 1 = one commit at a time),
#        ALERTS (1; 0 runs the gateway without its alert engine: the device path alone),
#        HALF (1: on PostgreSQL also run a steady load at half the measured rate for its p99
#        publish→ack), HALF_DURATION (30s), STORE_ROWS (200000: the store-alone runs),
#        ALERT_RATES ("": on PostgreSQL, after the half-rate run, steady loads at these
#        readings/s, each for HALF_DURATION, reporting commit -> alert evaluated at each)
#
# On PostgreSQL the same run then measures the store alone (`store/examples/bulk_insert.rs`:
# `Store::commit_batch` with batches of 1,000 on the same schema, one writer; and the narrow-row
# UNNEST + ON CONFLICT ceiling) and prints the ratios end to end ÷ store alone and ÷ ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
DEVICES=${DEVICES:-200}
DURATION=${DURATION:-30s}
BATCH=${BATCH:-32}
IN_FLIGHT=${IN_FLIGHT:-4}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-artifacts/bench}
HALF=${HALF:-1}
HALF_DURATION=${HALF_DURATION:-30s}
STORE_ROWS=${STORE_ROWS:-200000}
WRITERS=${WRITERS:-4}
ALERTS=${ALERTS:-1}
ALERT_RATES=${ALERT_RATES:-}
mkdir -p "$OUT"

cargo build --release --locked -p sentinella -p simulators >&2
cargo build --release --locked -p store --example bulk_insert >&2
BIN=${CARGO_TARGET_DIR:-target}/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_one() {
  local backend=$1 url work edge api pid
  work=$(mktemp -d)
  case $backend in
    sqlite) url="sqlite:$work/bench.sqlite" ;;
    postgres)
      local db="sentinella_bench_$$"
      psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >&2
      url="$PG/$db" ;;
  esac
  # An earlier run's phases are not this one's.
  rm -f "$OUT/$backend".half.* "$OUT/$backend".rate* "$OUT/$backend".caughtup.*
  edge=$(free_port); api=$(free_port)
  printf '[gateway]\nwriters = %s\n[gateway.alerts]\nenabled = %s\n' "$WRITERS" \
    "$([ "$ALERTS" = 1 ] && echo true || echo false)" > "$work/bench.toml"
  echo "== $backend: $DEVICES devices, batch $BATCH, in flight $IN_FLIGHT, $DURATION, writers $WRITERS, alerts $ALERTS" >&2
  $BIN/sentinella-sim provision --database-url "$url" --patients "$DEVICES" --prefix bench --out "$work/fleet.json" >&2
  SENTINELLA_EDGE_LISTEN=127.0.0.1:$edge SENTINELLA_EDGE_TLS_LISTEN=127.0.0.1:0 SENTINELLA_API_LISTEN=127.0.0.1:$api \
    $BIN/sentinella --config "$work/bench.toml" --database-url "$url" --data-dir "$work" --log warn run &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$api/readyz" >/dev/null && break; sleep 0.1; done
  $BIN/sentinella-sim bench --fleet "$work/fleet.json" --broker "127.0.0.1:$edge" --devices "$DEVICES" \
    --duration "$DURATION" --batch "$BATCH" --in-flight "$IN_FLIGHT" --gateway-pid "$pid" --json \
    > "$OUT/$backend.json"
  curl -s "http://127.0.0.1:$api/metrics" > "$OUT/$backend.metrics.txt"
  if [ "$backend" = postgres ]; then
    # The alert engine lags at full load (the outbox holds what it has not evaluated yet);
    # wait until it has caught up, so the half-rate run measures the device path in a
    # steady state, and report how long the catch-up took.
    local waited=0
    while [ "$(psql "$url" -tAc 'SELECT count(*) FROM alert_outbox')" != 0 ] && [ $waited -lt 600 ]; do
      sleep 1; waited=$((waited + 1))
    done
    echo "alert engine caught up ${waited} s after the full-load run ($(curl -s "http://127.0.0.1:$api/metrics" | awk '/^sentinella_alert_readings_evaluated_total/ {print $2}') readings evaluated)" | tee "$OUT/$backend.catchup.txt" >&2
    curl -s "http://127.0.0.1:$api/metrics" > "$OUT/$backend.caughtup.metrics.txt"
  fi
  if [ "$backend" = postgres ] && [ "$HALF" = 1 ]; then
    # The same fleet at half the rate just measured, paced: its publish→ack latency.
    local rate
    rate=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["readings_per_sec"] / 2))' "$OUT/$backend.json")
    echo "== $backend: steady load at half that rate, $rate readings/s, $HALF_DURATION" >&2
    $BIN/sentinella-sim chaos --fleet "$work/fleet.json" --broker "127.0.0.1:$edge" \
      --database-url "$url" --devices "$DEVICES" --rate "$rate" --duration "$HALF_DURATION" \
      --drain 60s --gateway-pid "$pid" --seed 2 --out "$OUT/$backend.half.json" > "$OUT/$backend.half.txt" || true
    curl -s "http://127.0.0.1:$api/metrics" > "$OUT/$backend.half.metrics.txt"
  fi
  if [ "$backend" = postgres ]; then
    for rate in $ALERT_RATES; do
      # Each from a caught-up engine, so each rate's histogram is its own.
      local waited=0
      while [ "$(psql "$url" -tAc 'SELECT count(*) FROM alert_outbox')" != 0 ] && [ $waited -lt 600 ]; do
        sleep 1; waited=$((waited + 1))
      done
      curl -s "http://127.0.0.1:$api/metrics" > "$OUT/$backend.rate$rate.before.txt"
      echo "== $backend: steady load at $rate readings/s, $HALF_DURATION" >&2
      $BIN/sentinella-sim chaos --fleet "$work/fleet.json" --broker "127.0.0.1:$edge" \
        --database-url "$url" --devices "$DEVICES" --rate "$rate" --duration "$HALF_DURATION" \
        --drain 60s --gateway-pid "$pid" --seed 3 --out "$OUT/$backend.rate$rate.json" > "$OUT/$backend.rate$rate.txt" || true
      curl -s "http://127.0.0.1:$api/metrics" > "$OUT/$backend.rate$rate.after.txt"
    done
  fi
  kill -TERM "$pid"; wait "$pid" || true
  if [ "$backend" = postgres ]; then psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS sentinella_bench_$$" >&2; fi
  rm -rf "$work"
  echo "$backend:"; cat "$OUT/$backend.json"; echo
  if [ "$backend" = postgres ]; then
    echo "== the store alone: bulk_insert postgres 1000 $STORE_ROWS 1" >&2
    SENTINELLA_TEST_PG="$PG/postgres" "$BIN/examples/bulk_insert" postgres 1000 "$STORE_ROWS" 1 | tee "$OUT/store-alone.txt"
    python3 - "$OUT" <<'PY'
import json, re, sys
out = sys.argv[1]
e2e = json.load(open(f"{out}/postgres.json"))["readings_per_sec"]
text = open(f"{out}/store-alone.txt").read()
store = float(re.search(r"^insert: .* = (\d+) rows/s", text, re.M).group(1))
ceiling = float(re.search(r"^narrow ceiling .* = (\d+) rows/s", text, re.M).group(1))
half = None
try:
    half = json.load(open(f"{out}/postgres.half.json"))
except (OSError, ValueError):
    pass
lines = [
    f"end to end (durable, acked): {e2e:,.0f} readings/s",
    f"store alone (commit_batch, batches of 1,000): {store:,.0f} rows/s -> ratio {e2e / store:.2f}",
    f"narrow-row UNNEST + ON CONFLICT ceiling: {ceiling:,.0f} rows/s -> ratio {e2e / ceiling:.2f}",
]
def buckets(path):
    """The gateway's commit -> alert histogram: {upper bound: cumulative count}."""
    out = {}
    try:
        for line in open(path):
            m = re.match(r'sentinella_commit_to_alert_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
            if m:
                out[float(m.group(1))] = int(m.group(2))
    except OSError:
        pass
    return out
def alert_p99(now, before=None):
    """The bucket bound that holds 99 % of the batches evaluated between two scrapes."""
    before = before or {}
    delta = {b: n - before.get(b, 0) for b, n in now.items()}
    total = delta.get(float("inf"), 0)
    if not total:
        return "no batches evaluated"
    bound = next(b for b in sorted(delta) if delta[b] >= 0.99 * total)
    within = delta.get(0.25, 0) / total * 100
    return f"p99 <= {bound * 1000:.0f} ms, {within:.1f} % within 250 ms ({total:,} batches)"
full = buckets(f"{out}/postgres.metrics.txt")
if full:
    lines.append(f"commit -> alert evaluated, during the full-load run (batches evaluated as handed over; see the catch-up line for the rest): {alert_p99(full)}")
if half:
    after = buckets(f"{out}/postgres.half.metrics.txt")
    if after:
        lines.append(f"commit -> alert evaluated, at half the rate: {alert_p99(after, buckets(f'{out}/postgres.caughtup.metrics.txt'))}")
import glob
for before in sorted(glob.glob(f"{out}/postgres.rate*.before.txt")):
    rate = before.split(".rate")[1].split(".")[0]
    try:
        run = json.load(open(f"{out}/postgres.rate{rate}.json"))
        acks = f"{run['generated'] / run['generating_secs']:,.0f} readings/s generated; publish->ack p99 {run['latency']['p99_ms']:.0f} ms"
    except (OSError, ValueError, KeyError):
        acks = "no chaos report"
    lines.append(f"commit -> alert evaluated, at {int(rate):,} readings/s offered: {alert_p99(buckets(f'{out}/postgres.rate{rate}.after.txt'), buckets(before))}; {acks}")
if half:
    l = half["latency"]
    lines.append(f"at half the rate ({half['target_rate']:,.0f} readings/s offered): publish->ack p50 {l['p50_ms']:.0f} ms, p99 {l['p99_ms']:.0f} ms, max {l['max_ms']:.0f} ms")
open(f"{out}/ratio.txt", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
  fi
}

case $which in
  sqlite|postgres) bench_one "$which" ;;
  all) bench_one sqlite; bench_one postgres ;;
  *) echo "usage: $0 [sqlite|postgres|all]" >&2; exit 2 ;;
esac
