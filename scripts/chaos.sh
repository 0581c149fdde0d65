#!/usr/bin/env bash
# Reliability runs of the device path, "nothing lost, nothing twice": release binaries, a fresh
# store for every run, `sentinella run` in its own process, and `sentinella-sim chaos|storm`
# driving the devices and, at the end, reading the store to compare it with every seq the
# devices generated. A run fails (non-zero exit) if a reading was lost, stored twice or left
# unacknowledged, or if the gateway misbehaved (wrong exit status, slow stop, /readyz wrong).
#
#   bash scripts/chaos.sh [kill|term|pg-outage|storm|all]      (default: all)
#
# !!! WARNING: `pg-outage` (and therefore `all`) STOPS THIS MACHINE'S POSTGRESQL for OUTAGE
# !!! seconds (default 60) with `pg_ctlcluster --skip-systemctl-redirect 15 main stop`: every
# !!! other user's connections and tests fail meanwhile. A trap starts it again on every exit
# !!! (success, failure, Ctrl-C). Run it only when nobody else needs PostgreSQL.
#
#   kill       DEVICES devices (2000) each measure every INTERVAL (1s) for DURATION (120s) on
#              PostgreSQL; FAULT_AFTER (40) seconds in, the gateway gets SIGKILL, stays down
#              DOWNTIME (5) seconds and restarts on the same ports; the devices reconnect and
#              resend.
#   term       the same with SIGTERM: the gateway must exit with status 0 within TERM_LIMIT (10)
#              seconds, having committed and acked what it had.
#   pg-outage  the same load; PostgreSQL stopped for OUTAGE (60) seconds. /readyz must answer
#              503 while it is down and 200 again within READY_LIMIT (60) seconds of its start.
#   storm      STORM_DEVICES (10000) devices each hold BACKLOG (20) readings, then all connect
#              within SPREAD (0s: at once); reports the time until every backlog is acked.
#              STORM_TLS=1: every device gets a client certificate from the gateway's device CA
#              and connects to its TLS listener over mutual TLS (the per-IP limits exempt
#              127.0.0.0/8: the devices all come from one address); artifacts storm-tls*.
#   steady     (not in `all`) the kill/term load without a fault: the control.
#
# env: BACKEND (postgres|sqlite; default postgres), PG (postgres://postgres@127.0.0.1:5432),
#      PG_VERSION/PG_CLUSTER (15/main), OUT (artifacts/chaos), KEEP_DB=1 (keep the databases),
#      DRAIN (180s), TAG (suffix of the artifact names, e.g. TAG=6000 → storm-6000.*), GATEWAY_LOG (the gateway's log filter, default info; e.g.
#      "gateway=debug,info"), and the knobs above.
# Results, per run: $OUT/<run>.txt (summary), <run>.json (full report with a per-second
# timeline), <run>.gateway.log, <run>.sim.log, <run>.metrics.*.txt, <run>.readyz.txt.
# As root the script raises the open-file limit to 200,000 first (each device costs the
# gateway one descriptor and the simulator one).
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
BACKEND=${BACKEND:-postgres}
DEVICES=${DEVICES:-2000}
INTERVAL=${INTERVAL:-1s}
DURATION=${DURATION:-120s}
DRAIN=${DRAIN:-180s}
FAULT_AFTER=${FAULT_AFTER:-40}
DOWNTIME=${DOWNTIME:-5}
TERM_LIMIT=${TERM_LIMIT:-10}
OUTAGE=${OUTAGE:-60}
READY_LIMIT=${READY_LIMIT:-60}
STORM_DEVICES=${STORM_DEVICES:-10000}
BACKLOG=${BACKLOG:-20}
SPREAD=${SPREAD:-0s}
STORM_TIMEOUT=${STORM_TIMEOUT:-600s}
STORM_TLS=${STORM_TLS:-0}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
PG_VERSION=${PG_VERSION:-15}
PG_CLUSTER=${PG_CLUSTER:-main}
OUT=${OUT:-artifacts/chaos}
GATEWAY_LOG=${GATEWAY_LOG:-info}
mkdir -p "$OUT"

case $which in
  kill|term|pg-outage|storm|steady|all) ;;
  *) echo "usage: $0 [kill|term|pg-outage|storm|steady|all]" >&2; exit 2 ;;
esac

if [ "$(id -u)" = 0 ]; then ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi
echo "open files: $(ulimit -n)" >&2

cargo build --release --locked -p sentinella -p simulators >&2
BIN=${CARGO_TARGET_DIR:-target}/release
# What was built: the tree may hold uncommitted work.
{ echo "built $(date -Is) from $(git rev-parse HEAD 2>/dev/null || echo '?')"; git status --short 2>/dev/null; } > "$OUT/build.txt" || true

now_ms() { date +%s%3N; }
sleep_until_ms() { # $1: unix ms
  local left=$(( $1 - $(now_ms) ))
  if [ "$left" -gt 0 ]; then sleep "$(printf '%d.%03d' $(( left / 1000 )) $(( left % 1000 )))"; fi
}
log() { echo "[$(date +%T)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
readyz() { curl -s -o /dev/null -m 10 -w '%{http_code}' "http://127.0.0.1:$API/readyz" || true; }

# State of the current run, for the cleanup trap.
GW=""; SIM=""; DB=""; WORK=""; PG_STOPPED=0; FAILED=0

pg_start() {
  if [ "$PG_STOPPED" = 1 ]; then
    log "starting PostgreSQL again"
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start || true
    PG_STOPPED=0
  fi
}

cleanup() {
  local rc=$?
  pg_start
  for pid in $SIM $GW; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  sleep 1
  for pid in $SIM $GW; do
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { log "FAILED: $*"; echo "FAILED: $*" >> "$OUT/$RUN.txt"; FAILED=1; }

# A fresh store and a fleet of at least $1 devices.
fresh_store() {
  local want=$1 patients
  WORK=$(mktemp -d)
  case $BACKEND in
    sqlite) URL="sqlite:$WORK/chaos.sqlite" ;;
    postgres)
      DB="sentinella_chaos_${RUN//-/_}_$$"
      psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >&2
      URL="$PG/$DB" ;;
    *) echo "BACKEND must be postgres or sqlite" >&2; exit 2 ;;
  esac
  # provision gives each patient one to three devices, about 1.6 on average.
  patients=$(( want * 7 / 10 + 50 ))
  # With $2 = tls: certificates from the CA the gateway keeps in its data dir ($WORK/pki).
  $BIN/sentinella-sim provision --database-url "$URL" --patients "$patients" --prefix chaos \
    ${2:+--ca-dir "$WORK/pki"} --out "$WORK/fleet.json" >&2
  local have
  have=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["devices"]))' "$WORK/fleet.json")
  [ "$have" -ge "$want" ] || { echo "provisioned only $have devices, need $want" >&2; exit 1; }
  EDGE=$(free_port); EDGE_TLS=$(free_port); API=$(free_port)
  printf '[gateway]\nper_ip_exempt = ["127.0.0.0/8"]\n' > "$WORK/gateway.toml"
}

drop_store() {
  if [ "$BACKEND" = postgres ] && [ -n "$DB" ]; then
    if [ "$FAILED" = 1 ] || [ "${KEEP_DB:-0}" = 1 ]; then
      log "keeping database $DB for inspection"
    else
      psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" >&2 || true
    fi
  fi
  if [ "$FAILED" = 0 ]; then rm -rf "$WORK"; fi
  DB=""
}

# Starts the gateway on $EDGE/$API (the same ports every time), logging to the run's log.
start_gateway() {
  echo "--- $(date -Is) start" >> "$OUT/$RUN.gateway.log"
  SENTINELLA_EDGE_LISTEN=127.0.0.1:$EDGE SENTINELLA_EDGE_TLS_LISTEN=127.0.0.1:$EDGE_TLS SENTINELLA_API_LISTEN=127.0.0.1:$API \
    $BIN/sentinella --config "$WORK/gateway.toml" --database-url "$URL" --data-dir "$WORK" --log "$GATEWAY_LOG" run \
    >> "$OUT/$RUN.gateway.log" 2>&1 &
  GW=$!
  echo "$GW" > "$WORK/gateway.pid"
}

wait_ready() { # $1: seconds; prints how long it took
  local t0 i
  t0=$(now_ms)
  for i in $(seq 1 $(( $1 * 10 ))); do
    if [ "$(readyz)" = 200 ]; then echo $(( $(now_ms) - t0 )); return 0; fi
    sleep 0.1
  done
  return 1
}

metrics() { curl -s -m 10 "http://127.0.0.1:$API/metrics" > "$OUT/$RUN.metrics.$1.txt" || true; }

start_chaos() {
  $BIN/sentinella-sim chaos --fleet "$WORK/fleet.json" --broker "127.0.0.1:$EDGE" \
    --database-url "$URL" --devices "$DEVICES" --interval "$INTERVAL" --duration "$DURATION" \
    --drain "$DRAIN" --gateway-pid-file "$WORK/gateway.pid" --fault-file "$WORK/fault" \
    --api "127.0.0.1:$API" --out "$OUT/$RUN.json" \
    >> "$OUT/$RUN.txt" 2> "$OUT/$RUN.sim.log" &
  SIM=$!
}

finish_chaos() {
  local rc=0
  wait "$SIM" || rc=$?
  SIM=""
  [ "$rc" = 0 ] || fail "sentinella-sim exited with $rc (see $OUT/$RUN.txt, $OUT/$RUN.sim.log)"
}

stop_gateway() {
  metrics end
  if kill -0 "$GW" 2>/dev/null; then
    local rc=0 t0 took
    t0=$(now_ms)
    kill -TERM "$GW"
    wait "$GW" || rc=$?
    took=$(( $(now_ms) - t0 ))
    echo "final SIGTERM: the gateway exited with status $rc after $took ms" >> "$OUT/$RUN.txt"
    [ "$rc" = 0 ] || fail "the gateway exited with $rc at the end of the run"
    [ "$took" -le $(( TERM_LIMIT * 1000 )) ] ||
      fail "the gateway took $took ms to stop after the final SIGTERM (limit ${TERM_LIMIT}s)"
  fi
  GW=""
}

header() {
  RUN=$1${TAG:+-$TAG}; FAILED=0
  : > "$OUT/$RUN.gateway.log"
  : > "$OUT/$RUN.txt"
  rm -f "$OUT/$RUN.json" "$OUT/$RUN".metrics.*.txt "$OUT/$RUN.readyz.txt"
  log "== $RUN: $2"
}

footer() {
  local t0=$1
  echo "wall time: $(( ($(now_ms) - t0) / 1000 )) s (script), backend $BACKEND" >> "$OUT/$RUN.txt"
  echo "command: $2" >> "$OUT/$RUN.txt"
  drop_store
  echo "== $RUN"; cat "$OUT/$RUN.txt"; echo
  [ "$FAILED" = 0 ] || RESULT=1
}

# kill | term: the gateway dies (SIGKILL) or is stopped (SIGTERM) under load and restarts.
run_crash() {
  local signal=$1 t0 cmd
  t0=$(now_ms)
  cmd="DEVICES=$DEVICES INTERVAL=$INTERVAL DURATION=$DURATION FAULT_AFTER=$FAULT_AFTER DOWNTIME=$DOWNTIME bash scripts/chaos.sh $RUN"
  fresh_store "$DEVICES"
  start_gateway
  wait_ready 60 > /dev/null || { fail "the gateway never became ready"; footer "$t0" "$cmd"; return; }
  start_chaos
  sleep "$FAULT_AFTER"
  metrics before
  local pid=$GW rc=0 t_sig t_exit
  echo "start=$(now_ms)" > "$WORK/fault"
  t_sig=$(now_ms)
  log "$RUN: SIG$signal to the gateway (pid $pid)"
  kill "-$signal" "$pid"
  wait "$pid" || rc=$?
  t_exit=$(now_ms)
  GW=""
  echo "gateway pid $pid: SIG$signal, exit status $rc after $(( t_exit - t_sig )) ms" >> "$OUT/$RUN.txt"
  if [ "$signal" = TERM ]; then
    [ "$rc" = 0 ] || fail "the gateway exited with status $rc after SIGTERM (0 expected)"
    [ $(( t_exit - t_sig )) -le $(( TERM_LIMIT * 1000 )) ] ||
      fail "the gateway took $(( t_exit - t_sig )) ms to stop after SIGTERM (limit ${TERM_LIMIT}s)"
  fi
  sleep "$DOWNTIME"
  start_gateway
  echo "end=$(now_ms)" >> "$WORK/fault"
  local ready
  if ready=$(wait_ready 60); then
    echo "restarted gateway (pid $GW) ready after $ready ms" >> "$OUT/$RUN.txt"
  else
    fail "the restarted gateway never became ready"
  fi
  finish_chaos
  stop_gateway
  footer "$t0" "$cmd"
}

# pg-outage: PostgreSQL stops for $OUTAGE seconds under load.
run_pg_outage() {
  local t0 cmd
  t0=$(now_ms)
  cmd="DEVICES=$DEVICES INTERVAL=$INTERVAL DURATION=$DURATION FAULT_AFTER=$FAULT_AFTER OUTAGE=$OUTAGE bash scripts/chaos.sh pg-outage"
  if [ "$BACKEND" != postgres ]; then echo "pg-outage needs BACKEND=postgres" >&2; exit 2; fi
  fresh_store "$DEVICES"
  start_gateway
  wait_ready 60 > /dev/null || { fail "the gateway never became ready"; footer "$t0" "$cmd"; return; }
  start_chaos
  sleep "$FAULT_AFTER"
  metrics before
  local probes="$OUT/$RUN.readyz.txt" t_stop t_start k code not503=0 ok_during=0
  : > "$probes"
  log "$RUN: stopping PostgreSQL for ${OUTAGE}s"
  echo "start=$(now_ms)" > "$WORK/fault"
  PG_STOPPED=1
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" stop
  t_stop=$(now_ms)
  for k in $(seq 1 "$OUTAGE"); do
    local t
    t=$(now_ms)
    if [ $(( t - t_stop )) -ge $(( OUTAGE * 1000 )) ]; then break; fi
    code=$(readyz)
    echo "$(( t - t_stop )) ms after stop: /readyz $code" >> "$probes"
    # From 5 s into the outage on, /readyz must say not ready.
    if [ $(( t - t_stop )) -ge 5000 ]; then
      if [ "$code" = 200 ]; then ok_during=$((ok_during + 1)); fi
      if [ "$code" != 503 ]; then not503=$((not503 + 1)); fi
    fi
    sleep_until_ms $(( t_stop + k * 1000 ))
  done
  sleep_until_ms $(( t_stop + OUTAGE * 1000 ))
  metrics during
  log "$RUN: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start
  PG_STOPPED=0
  t_start=$(now_ms)
  echo "end=$t_start" >> "$WORK/fault"
  echo "PostgreSQL stopped for $(( t_start - t_stop )) ms" >> "$OUT/$RUN.txt"
  local ready
  if ready=$(wait_ready "$READY_LIMIT"); then
    echo "/readyz: 200 again $ready ms after PostgreSQL started" >> "$OUT/$RUN.txt"
    echo "$(( $(now_ms) - t_stop )) ms after stop: /readyz 200 (ready again)" >> "$probes"
  else
    fail "/readyz not 200 within ${READY_LIMIT}s of PostgreSQL starting"
  fi
  echo "/readyz during the outage (from 5 s in): $ok_during answers 200, $not503 answers other than 503 (see $probes)" >> "$OUT/$RUN.txt"
  [ "$ok_during" = 0 ] || fail "/readyz answered 200 $ok_during times while PostgreSQL was down"
  [ "$not503" = 0 ] || log "note: $not503 /readyz probes during the outage were neither 503 nor 200 (timeouts?)"
  finish_chaos
  stop_gateway
  footer "$t0" "$cmd"
}

# steady: the kill/term load without any fault, as a control.
run_steady() {
  local t0 cmd
  t0=$(now_ms)
  cmd="DEVICES=$DEVICES INTERVAL=$INTERVAL DURATION=$DURATION bash scripts/chaos.sh steady"
  fresh_store "$DEVICES"
  start_gateway
  wait_ready 60 > /dev/null || { fail "the gateway never became ready"; footer "$t0" "$cmd"; return; }
  start_chaos
  finish_chaos
  stop_gateway
  footer "$t0" "$cmd"
}

run_storm() {
  local t0 cmd rc=0
  t0=$(now_ms)
  cmd="STORM_DEVICES=$STORM_DEVICES BACKLOG=$BACKLOG SPREAD=$SPREAD STORM_TIMEOUT=$STORM_TIMEOUT STORM_TLS=$STORM_TLS bash scripts/chaos.sh storm"
  local broker
  if [ "$STORM_TLS" = 1 ]; then
    fresh_store "$STORM_DEVICES" tls
    broker="127.0.0.1:$EDGE_TLS"
  else
    fresh_store "$STORM_DEVICES"
    broker="127.0.0.1:$EDGE"
  fi
  start_gateway
  wait_ready 60 > /dev/null || { fail "the gateway never became ready"; footer "$t0" "$cmd"; return; }
  $BIN/sentinella-sim storm --fleet "$WORK/fleet.json" --broker "$broker" \
    --database-url "$URL" --devices "$STORM_DEVICES" --backlog "$BACKLOG" --spread "$SPREAD" \
    --timeout "$STORM_TIMEOUT" --gateway-pid-file "$WORK/gateway.pid" --api "127.0.0.1:$API" \
    --out "$OUT/$RUN.json" >> "$OUT/$RUN.txt" 2> "$OUT/$RUN.sim.log" || rc=$?
  [ "$rc" = 0 ] || fail "sentinella-sim storm exited with $rc (see $OUT/$RUN.txt, $OUT/$RUN.sim.log)"
  stop_gateway
  footer "$t0" "$cmd"
}

RESULT=0
run() {
  case $1 in
    steady) header steady "the same load, no fault (control)"; run_steady ;;
    kill) header kill "SIGKILL under load"; run_crash KILL ;;
    term) header term "SIGTERM under load"; run_crash TERM ;;
    pg-outage) header pg-outage "PostgreSQL down for ${OUTAGE}s under load"; run_pg_outage ;;
    storm)
      if [ "$STORM_TLS" = 1 ]; then
        header storm-tls "$STORM_DEVICES devices with $BACKLOG readings each reconnect over mutual TLS"
      else
        header storm "$STORM_DEVICES devices with $BACKLOG readings each reconnect"
      fi
      run_storm ;;
  esac
}

case $which in
  all) for r in kill term storm pg-outage; do run "$r"; done ;;
  *) run "$which" ;;
esac
exit "$RESULT"
