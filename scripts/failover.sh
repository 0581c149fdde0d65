#!/usr/bin/env bash
# PostgreSQL primary failover under load, optimised build. Two PostgreSQL clusters of their own
# on free ports (a primary with `synchronous_standby_names = 'standby1'`, `synchronous_commit =
# on`, and its streaming standby), nodes on the multi-host URL
# `…@127.0.0.1:P,127.0.0.1:S/sentinella?target_session_attrs=read-write`; the primary is
# stopped in immediate mode and, 1 s later, the standby promoted.
#
#   bash scripts/failover.sh                (MODE=test, DEVICES=200)
#   MODE=nodes bash scripts/failover.sh     (NODES=2, DEVICES=200, RATE=2000, DURATION=40s)
#
# MODE=test: the CI test tests/tests/failover.rs (one node in the test process, devices
#   publishing every 20 ms) with more devices; prints the time from promotion to the first ack
#   and to /readyz 200 and the readings generated, acked and lost (must be 0: it fails
#   otherwise).
# MODE=nodes: NODES `sentinella run` processes behind HAProxy (TCP mode, /readyz checks), the
#   fleet driven by `sentinella-sim chaos` through HAProxy at RATE readings/s (it checks at the
#   end that every generated reading is stored exactly once and none left unacked; non-zero
#   exit otherwise); prints the time from promotion to each node's /readyz 200.
#
# env: SENTINELLA_PG_BIN (/usr/lib/postgresql/15/bin), OUT (artifacts/failover).
# Results in $OUT/failover-$DEVICES.txt (test) or $OUT/failover-nodes-$NODES-$DEVICES.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-test}
DEVICES=${DEVICES:-200}
OUT=${OUT:-artifacts/failover}
mkdir -p "$OUT"
if [ "$(id -u)" = 0 ]; then ulimit -n 20000 2>/dev/null || true; fi

if [ "$MODE" = test ]; then
  SENTINELLA_FAILOVER_DEVICES=$DEVICES cargo test --release --locked -p e2e --test failover \
    -- --nocapture 2>&1 | tee "$OUT/failover-$DEVICES.log" | grep '^failover:' | tee "$OUT/failover-$DEVICES.txt"
  test "${PIPESTATUS[0]}" = 0
  exit 0
fi
[ "$MODE" = nodes ] || { echo "MODE must be test or nodes" >&2; exit 2; }

NODES=${NODES:-2}
RATE=${RATE:-2000}
DURATION=${DURATION:-40s}
FAIL_AFTER=${FAIL_AFTER:-12}
PG_BIN=${SENTINELLA_PG_BIN:-/usr/lib/postgresql/15/bin}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
cargo build --release --locked -p sentinella -p simulators >&2
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release")
RESULT="$OUT/failover-nodes-$NODES-$DEVICES.txt"

log() { echo "[$(date +%T)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
# PostgreSQL's tools refuse to run as root: run them as postgres then.
pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$PG_BIN/$1" "${@:2}"; else "$PG_BIN/$1" "${@:2}"; fi; }

WORK=$(mktemp -d); chmod 755 "$WORK"
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PIDS=(); HAP=""; SIM=""
cleanup() {
  for pid in $SIM $HAP "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $SIM $HAP "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for c in primary standby; do [ -d "$WORK/$c" ] && pg pg_ctl -D "$WORK/$c" -m immediate -w stop >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

P=$(free_port); S=$(free_port)
log "PostgreSQL: primary on $P, synchronous standby on $S"
pg initdb -D "$WORK/primary" -U postgres --auth=trust --no-sync -E UTF8 >/dev/null
cat >> "$WORK/primary/postgresql.conf" <<CONF
port = $P
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 5
max_connections = 100
synchronous_standby_names = 'standby1'
synchronous_commit = on
CONF
pg pg_ctl -D "$WORK/primary" -l "$WORK/primary.log" -w -t 60 start >/dev/null
pg pg_basebackup -h 127.0.0.1 -p "$P" -U postgres -D "$WORK/standby" -R -X stream --no-sync
# Promoted, it has no standby of its own: it must not wait for one.
printf "\nport = %s\ncluster_name = 'standby1'\nsynchronous_standby_names = ''\n" "$S" >> "$WORK/standby/postgresql.auto.conf"
pg pg_ctl -D "$WORK/standby" -l "$WORK/standby.log" -w -t 60 start >/dev/null
psql "postgres://postgres@127.0.0.1:$P/postgres" -qc "CREATE DATABASE sentinella"
URL="postgres://postgres@127.0.0.1:$P,127.0.0.1:$S/sentinella?target_session_attrs=read-write"

log "provisioning $DEVICES patients"
$BIN/sentinella-sim provision --database-url "$URL" --patients "$DEVICES" --prefix failover \
  --out "$WORK/fleet.json" >&2

APIS=(); servers=""
for i in $(seq 1 "$NODES"); do
  edge=$(free_port); api=$(free_port); mkdir -p "$WORK/node$i"
  SENTINELLA_NODE_ID="node-$i" SENTINELLA_EDGE_LISTEN=127.0.0.1:$edge SENTINELLA_EDGE_TLS_LISTEN=127.0.0.1:0 \
    SENTINELLA_API_LISTEN=127.0.0.1:$api $BIN/sentinella --database-url "$URL" --data-dir "$WORK/node$i" \
    --log warn run > "$OUT/failover-node$i.log" 2>&1 &
  PIDS+=($!); APIS+=("$api")
  servers+="    server node$i 127.0.0.1:$edge check port $api inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions"$'\n'
done
for api in "${APIS[@]}"; do
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$api/readyz" >/dev/null && break; sleep 0.1; done
done
LB=$(free_port)
cat > "$WORK/haproxy.cfg" <<CONF
global
    maxconn 5000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 2s
frontend devices
    bind 127.0.0.1:$LB
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
$servers
CONF
$HAPROXY -db -f "$WORK/haproxy.cfg" > "$OUT/failover-haproxy.log" 2>&1 &
HAP=$!
sleep 1.5

log "$NODES nodes, $DEVICES devices at $RATE readings/s through HAProxy for $DURATION"
$BIN/sentinella-sim chaos --fleet "$WORK/fleet.json" --broker "127.0.0.1:$LB" --database-url "$URL" \
  --devices "$DEVICES" --rate "$RATE" --duration "$DURATION" --drain 90s --seed 3 \
  --out "$OUT/failover-nodes-chaos.json" > "$OUT/failover-nodes-chaos.txt" 2>&1 &
SIM=$!
sleep "$FAIL_AFTER"
log "stopping the primary (immediate)"
pg pg_ctl -D "$WORK/primary" -m immediate -w stop >/dev/null
sleep 1
log "promoting the standby"
pg pg_ctl -D "$WORK/standby" -w promote >/dev/null
promoted=$(now)
{
  echo "failover with $NODES sentinella processes: $DEVICES devices, $RATE readings/s through HAProxy; $(date -u +%FT%TZ)"
  # Every node polled each 50 ms: /readyz answers 503 while its store is down.
  python3 - "$promoted" "${APIS[@]}" <<'PY'
import sys, time, urllib.request
promoted, apis = float(sys.argv[1]), sys.argv[2:]
ready = {}
while len(ready) < len(apis) and time.time() - promoted < 60:
    for i, api in enumerate(apis, 1):
        if i in ready:
            continue
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{api}/readyz", timeout=1).status == 200:
                ready[i] = time.time() - promoted
        except Exception:
            pass
    time.sleep(0.05)
for i in range(1, len(apis) + 1):
    print(f"node{i}: promote -> /readyz 200 " + (f"{ready[i]:.2f} s" if i in ready else "not within 60 s"))
PY
} | tee "$RESULT"
rc=0; wait "$SIM" || rc=$?; SIM=""
tail -n 25 "$OUT/failover-nodes-chaos.txt" | tee -a "$RESULT"
echo "chaos exit status: $rc (0: every generated reading stored once, none pending)" | tee -a "$RESULT"
exit "$rc"
