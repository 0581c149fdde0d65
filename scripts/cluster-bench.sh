#!/usr/bin/env bash
# Several `sentinella run` nodes (release build) on one fresh PostgreSQL database behind
# Debian's HAProxy in TCP mode with `send-proxy-v2` (the nodes with `[gateway] proxy_protocol`),
# for 1, 2, 3 nodes:
#
#  - throughput: `sentinella-sim bench` (as scripts/bench.sh: devices publish as fast as the
#    commit acks allow) through HAProxy; aggregate durable readings/s, and the CPU seconds used
#    meanwhile by each node, by HAProxy, by the database's backends for this database and by the
#    load generator, from /proc/<pid>/stat; readings per CPU-second of nodes + backends;
#  - connections: `sentinella-sim idle` (mutual TLS, passed through HAProxy) opens CONNS idle
#    device connections; reports how many were held, and each node's descriptors and RSS.
#    HAProxy holds 2 descriptors per connection (client and server side) and, like every
#    process here, gets at most `ulimit -Hn` descriptors (20,000 on the development VM): that,
#    not the nodes, caps what one HAProxy holds on this machine (~9,900 connections).
#
#   bash scripts/cluster-bench.sh                 env: NODES ("1 2 3"), DEVICES (200),
#        DURATION (30s), BATCH (32), IN_FLIGHT (4), CONNS (9000; 0 skips), PG, OUT (artifacts/cluster)
#
# Results: $OUT/cluster-bench.txt (table) and $OUT/*.json (raw reports).
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-"1 2 3"}
DEVICES=${DEVICES:-200}
DURATION=${DURATION:-30s}
BATCH=${BATCH:-32}
IN_FLIGHT=${IN_FLIGHT:-4}
CONNS=${CONNS:-9000}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-artifacts/cluster}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --locked -p sentinella -p simulators >&2
BIN=${CARGO_TARGET_DIR:-target}/release

log() { echo "[$(date +%T)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat; the
# command name in field 2 may hold spaces, so count from the closing parenthesis).
ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)
HAP_MAXCONN=$(( ($(ulimit -Hn) - 100) / 2 ))

WORK=$(mktemp -d); DB="sentinella_cluster_$$"
NODE_PIDS=(); HAP=""; CLI=""
stop_all() {
  local pid
  for pid in $CLI $HAP "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $CLI $HAP "${NODE_PIDS[@]}"; do
    # A node's shutdown waits up to 30 s for open API streams; past 40 s it is stuck.
    for _ in $(seq 1 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still running 40 s after SIGTERM: killed"; kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  NODE_PIDS=(); HAP=""; CLI=""
}
cleanup() { stop_all; psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" >&2 || true; rm -rf "$WORK"; }
trap cleanup EXIT

fresh_db() {
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >&2
  URL="$PG/$DB"
}

# The database's backends serving this database (their command line names it).
backends() { pgrep -f "^postgres: (.*: )?[^ ]+ $DB " || true; }
backend_ticks() { local t=0 p; for p in $(backends); do t=$((t + $(ticks "$p"))); done; echo $t; }

cat > "$WORK/node.toml" <<EOF
[gateway]
# HAProxy (127.0.0.1) puts a PROXY v2 header in front of every device connection.
proxy_protocol = true
proxy_trusted = ["127.0.0.1/32"]
# Every simulated device connects from 127.0.0.1.
per_ip_exempt = ["127.0.0.0/8"]
EOF

# start_cluster N: N nodes (each its own data dir, the device CA of $WORK/pki copied in) and
# HAProxy in front of their plain (EDGE_PLAIN) and TLS device listeners; sets NODE_PIDS,
# NODE_APIS, HAP, LB_PLAIN, LB_TLS.
start_cluster() {
  local n=$1 i plain_servers="" tls_servers=""
  NODE_APIS=()
  for i in $(seq 1 "$n"); do
    local dir="$WORK/node$i" edge tls api
    rm -rf "$dir"; mkdir -p "$dir"
    if [ -d "$WORK/pki" ]; then cp -r "$WORK/pki" "$dir/pki"; fi
    edge=$(free_port); tls=$(free_port); api=$(free_port)
    SENTINELLA_NODE_ID="node-$i" SENTINELLA_EDGE_LISTEN=127.0.0.1:$edge \
      SENTINELLA_EDGE_TLS_LISTEN=127.0.0.1:$tls SENTINELLA_API_LISTEN=127.0.0.1:$api \
      $BIN/sentinella --config "$WORK/node.toml" --database-url "$URL" --data-dir "$dir" \
      --log warn run > "$OUT/node$i.log" 2>&1 &
    NODE_PIDS+=($!); NODE_APIS+=("$api")
    plain_servers+="    server node$i 127.0.0.1:$edge send-proxy-v2 check port $api inter 500ms fall 2 rise 1"$'\n'
    tls_servers+="    server node$i 127.0.0.1:$tls send-proxy-v2 check port $api inter 500ms fall 2 rise 1"$'\n'
  done
  for api in "${NODE_APIS[@]}"; do
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$api/readyz" >/dev/null && break; sleep 0.1; done
  done
  LB_PLAIN=$(free_port); LB_TLS=$(free_port)
  cat > "$WORK/haproxy.cfg" <<EOF
global
    # 2 descriptors per connection within this process's descriptor limit.
    maxconn $HAP_MAXCONN
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout check 2s
frontend devices_plain
    bind 127.0.0.1:$LB_PLAIN
    default_backend plain
frontend devices_tls
    bind 127.0.0.1:$LB_TLS
    default_backend tls
backend plain
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
$plain_servers
backend tls
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
$tls_servers
EOF
  $HAPROXY -c -q -f "$WORK/haproxy.cfg" >&2
  $HAPROXY -db -f "$WORK/haproxy.cfg" > "$OUT/haproxy.log" 2>&1 &
  HAP=$!
  # Every server up (rise 1, checks every 500 ms).
  sleep 1.5
}

node_fds() { ls "/proc/$1/fd" | wc -l; }
node_rss_mib() { awk '/^VmRSS:/ {printf "%d", $2/1024}' "/proc/$1/status"; }

: > "$OUT/cluster-bench.txt"
{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%FT%TZ); $($HAPROXY -v | head -1)"
  echo "throughput: $DEVICES devices through HAProxy (plain MQTT + PROXY v2), batch $BATCH, $IN_FLIGHT in flight, $DURATION"
  printf '%-5s %10s %12s %9s %9s %9s %9s %9s %12s %12s\n' nodes readings/s "per node" "cpu nodes" "cpu pg" "cpu hap" "cpu sim" "wall s" "rd/cpu-s" "p99 ms"
} | tee -a "$OUT/cluster-bench.txt"

# ---- throughput ---------------------------------------------------------------------------
for n in $NODES; do
  fresh_db
  rm -rf "$WORK/pki"
  log "$n node(s): provisioning $DEVICES patients"
  $BIN/sentinella-sim provision --database-url "$URL" --patients "$DEVICES" --prefix bench \
    --out "$WORK/fleet.json" >&2
  start_cluster "$n"
  t0_nodes=0; for p in "${NODE_PIDS[@]}"; do t0_nodes=$((t0_nodes + $(ticks "$p"))); done
  t0_pg=$(backend_ticks); t0_hap=$(ticks "$HAP"); w0=$(date +%s.%N)
  log "$n node(s): bench through HAProxy 127.0.0.1:$LB_PLAIN"
  $BIN/sentinella-sim bench --fleet "$WORK/fleet.json" --broker "127.0.0.1:$LB_PLAIN" --devices "$DEVICES" \
    --duration "$DURATION" --batch "$BATCH" --in-flight "$IN_FLIGHT" --json > "$OUT/bench-$n.json" &
  CLI=$!
  # The load generator's CPU, read just before it exits: sample it while it runs.
  sim_ticks=0
  while kill -0 "$CLI" 2>/dev/null; do
    t=$(ticks "$CLI"); [ "$t" -gt 0 ] && sim_ticks=$t
    # Backends of a pool may be replaced: keep the largest reading per pid.
    for p in $(backends); do echo "$p $(ticks "$p")"; done >> "$WORK/pg-ticks-$n"
    sleep 0.5
  done
  wait "$CLI"; CLI=""
  w1=$(date +%s.%N)
  t1_nodes=0; for p in "${NODE_PIDS[@]}"; do t1_nodes=$((t1_nodes + $(ticks "$p"))); done
  t1_hap=$(ticks "$HAP")
  for p in $(backends); do echo "$p $(ticks "$p")"; done >> "$WORK/pg-ticks-$n"
  stored=$(psql "$URL" -Atc "SELECT count(*) FROM readings")
  for i in $(seq 1 "$n"); do curl -s "http://127.0.0.1:${NODE_APIS[$((i-1))]}/metrics" > "$OUT/bench-$n.node$i.metrics.txt"; done
  stop_all
  line=$(python3 - "$n" "$OUT/bench-$n.json" "$WORK/pg-ticks-$n" "$HZ" "$t0_nodes" "$t1_nodes" "$t0_pg" \
    "$t0_hap" "$t1_hap" "$sim_ticks" "$w0" "$w1" "$stored" <<'PY'
import json, sys
n, bench, pgfile, hz = int(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3], int(sys.argv[4])
t0n, t1n, t0pg, t0h, t1h, sim = map(int, sys.argv[5:11])
w0, w1, stored = float(sys.argv[11]), float(sys.argv[12]), int(sys.argv[13])
last = {}
for l in open(pgfile):
    pid, t = l.split()
    last[pid] = max(last.get(pid, 0), int(t))
# The backends' CPU over the run: their ticks at the end minus their ticks at the start (a
# backend opened during the run started at 0).
pg = (sum(last.values()) - t0pg) / hz
nodes, hap, sim = (t1n - t0n) / hz, (t1h - t0h) / hz, sim / hz
rate = bench["readings_per_sec"]
r = {"nodes": n, "readings_per_sec": rate, "per_node": rate / n, "cpu_nodes_s": nodes,
     "cpu_pg_backends_s": pg, "cpu_haproxy_s": hap, "cpu_sim_s": sim, "wall_s": w1 - w0,
     "stored": stored, "readings_per_cpu_s": stored / (nodes + pg) if nodes + pg else None,
     "p99_ms": bench["latency"].get("p99_ms"), "connected": bench["connected"],
     "pending": bench["pending"]}
json.dump(r, open(pgfile + ".json", "w"))
print("%-5d %10.0f %12.0f %9.1f %9.1f %9.1f %9.1f %9.1f %12.0f %12s" % (n, rate, rate / n, nodes, pg,
      hap, sim, w1 - w0, r["readings_per_cpu_s"] or 0, r["p99_ms"]))
PY
)
  cp "$WORK/pg-ticks-$n.json" "$OUT/throughput-$n.json"
  echo "$line" | tee -a "$OUT/cluster-bench.txt"
done

# ---- connections --------------------------------------------------------------------------
[ "$CONNS" -gt 0 ] || exit 0
fresh_db
rm -rf "$WORK/pki"
log "provisioning devices with certificates for $CONNS connections"
$BIN/sentinella-sim provision --database-url "$URL" --patients $(( CONNS * 7 / 10 + 50 )) --prefix idle \
  --ca-dir "$WORK/pki" --out "$WORK/fleet.json" >&2
{
  echo
  echo "connections: $CONNS idle mutual-TLS devices (sentinella-sim idle) through HAProxy (TLS passed through, PROXY v2)"
  printf '%-5s %8s %10s %11s %22s %22s\n' nodes held "connect s" "haproxy fds" "node fds (each)" "node RSS MiB (each)"
} | tee -a "$OUT/cluster-bench.txt"
for n in $NODES; do
  start_cluster "$n"
  rm -f "$WORK/ready.json"
  $BIN/sentinella-sim idle --fleet "$WORK/fleet.json" --broker "127.0.0.1:$LB_TLS" \
    --connections "$CONNS" --ready-file "$WORK/ready.json" >> "$OUT/idle-client.log" 2>&1 &
  CLI=$!
  while [ ! -s "$WORK/ready.json" ] && kill -0 "$CLI" 2>/dev/null; do sleep 0.5; done
  [ -s "$WORK/ready.json" ] || { log "$n node(s): the idle client ended early (see $OUT/idle-client.log)"; exit 1; }
  sleep 3
  cp "$WORK/ready.json" "$OUT/idle-$n.json"
  held=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["connected"], "%.1f" % r["connect_secs"])' "$WORK/ready.json")
  fds=""; rss=""
  for p in "${NODE_PIDS[@]}"; do fds+="$(node_fds "$p") "; rss+="$(node_rss_mib "$p") "; done
  printf '%-5d %8s %10s %11s %22s %22s\n' "$n" ${held} "$(node_fds "$HAP")" "$fds" "$rss" | tee -a "$OUT/cluster-bench.txt"
  stop_all
done
