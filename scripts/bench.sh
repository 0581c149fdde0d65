#!/usr/bin/env bash
# Load benchmark of the device path: M simulated devices publish as fast as the gateway's
# commit acks allow, against a `sentinella run` (release build) in its own process; reports
# sustained readings/s from publish to commit ack, publish→ack latency and the gateway's peak
# RSS. The load generator runs on the same machine.
#
#   bash scripts/bench.sh [sqlite|postgres|all]      (default: all)
#   env: DEVICES (200), DURATION (30s), BATCH (32), IN_FLIGHT (4), PG (postgres base URL)
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
DEVICES=${DEVICES:-200}
DURATION=${DURATION:-30s}
BATCH=${BATCH:-32}
IN_FLIGHT=${IN_FLIGHT:-4}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-artifacts/bench}
mkdir -p "$OUT"

cargo build --release --locked -p sentinella -p simulators >&2
BIN=target/release

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
  edge=$(free_port); api=$(free_port)
  echo "== $backend: $DEVICES devices, batch $BATCH, in flight $IN_FLIGHT, $DURATION" >&2
  $BIN/sentinella-sim provision --database-url "$url" --patients "$DEVICES" --prefix bench --out "$work/fleet.json" >&2
  SENTINELLA_EDGE_LISTEN=127.0.0.1:$edge SENTINELLA_EDGE_TLS_LISTEN=127.0.0.1:0 SENTINELLA_API_LISTEN=127.0.0.1:$api \
    $BIN/sentinella --database-url "$url" --data-dir "$work" --log warn run &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$api/readyz" >/dev/null && break; sleep 0.1; done
  $BIN/sentinella-sim bench --fleet "$work/fleet.json" --broker "127.0.0.1:$edge" --devices "$DEVICES" \
    --duration "$DURATION" --batch "$BATCH" --in-flight "$IN_FLIGHT" --gateway-pid "$pid" --json \
    > "$OUT/$backend.json"
  curl -s "http://127.0.0.1:$api/metrics" > "$OUT/$backend.metrics.txt"
  kill -TERM "$pid"; wait "$pid" || true
  if [ "$backend" = postgres ]; then psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS sentinella_bench_$$" >&2; fi
  rm -rf "$work"
  echo "$backend:"; cat "$OUT/$backend.json"; echo
}

case $which in
  sqlite|postgres) bench_one "$which" ;;
  all) bench_one sqlite; bench_one postgres ;;
  *) echo "usage: $0 [sqlite|postgres|all]" >&2; exit 2 ;;
esac
