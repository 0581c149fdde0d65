#!/usr/bin/env bash
# What an idle mutual-TLS device connection costs: RSS and descriptors per connection,
# Sentinella's edge side by side with Debian's Mosquitto, in one run, with the same client
# program (`sentinella-sim idle`), the same device CA and the same device certificates.
#
#   bash scripts/idle-rss.sh                     env: COUNTS ("1000 5000 15000"), SETTLE (5),
#                                                PG, OUT (artifacts/idle), SERVERS ("sentinella mosquitto")
#
# For every server and every count N the server is started fresh, its RSS (VmRSS) and open
# descriptors are read, N connections are opened and held (every CONNACK received), after
# SETTLE seconds RSS and descriptors are read again; the deltas divided by N are reported. The
# Mosquitto instance is a separate process on a free port (TLS listener, require_certificate,
# the device CA; the system's Mosquitto on 1883 is left alone). Results: $OUT/idle-rss.txt and
# .json.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${COUNTS:-"1000 5000 15000"}
SERVERS=${SERVERS:-"sentinella mosquitto"}
SETTLE=${SETTLE:-5}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-artifacts/idle}
mkdir -p "$OUT"
command -v mosquitto >/dev/null || { echo "mosquitto is not installed (apt-get install mosquitto)" >&2; exit 2; }
command -v openssl >/dev/null || { echo "openssl is needed to issue Mosquitto's server certificate" >&2; exit 2; }

cargo build --release --locked -p sentinella -p simulators >&2
BIN=${CARGO_TARGET_DIR:-target}/release

max=0; for n in $COUNTS; do [ "$n" -gt "$max" ] && max=$n; done
log() { echo "[$(date +%T)] $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

WORK=$(mktemp -d); DB="sentinella_idle_$$"; SRV=""; CLI=""
cleanup() {
  for pid in $CLI $SRV; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in $CLI $SRV; do kill -KILL "$pid" 2>/dev/null || true; done
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" >&2 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# One store and one fleet with certificates from the device CA in $WORK/pki (which the gateway
# uses, as its data dir's pki/), enough devices for the largest count.
psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >&2
URL="$PG/$DB"
log "provisioning $max devices with certificates"
$BIN/sentinella-sim provision --database-url "$URL" --patients $(( max * 7 / 10 + 50 )) --prefix idle \
  --ca-dir "$WORK/pki" --out "$WORK/fleet.json" >&2
# Mosquitto's server certificate, issued by the same CA for localhost / 127.0.0.1.
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$WORK/mosq.key" -out "$WORK/mosq.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$WORK/mosq.ext"
openssl x509 -req -in "$WORK/mosq.csr" -CA "$WORK/pki/ca.pem" -CAkey "$WORK/pki/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/mosq.ext" -out "$WORK/mosq.pem" 2>/dev/null
cat > "$WORK/sentinella.toml" <<EOF
[gateway]
# The client program connects from 127.0.0.1 only.
per_ip_exempt = ["127.0.0.0/8"]
EOF

start_server() { # $1: sentinella|mosquitto; sets SRV and PORT
  PORT=$(free_port)
  case $1 in
    sentinella)
      SENTINELLA_EDGE_LISTEN=127.0.0.1:0 SENTINELLA_EDGE_TLS_LISTEN=127.0.0.1:$PORT \
        SENTINELLA_API_LISTEN=127.0.0.1:$(free_port) \
        $BIN/sentinella --config "$WORK/sentinella.toml" --database-url "$URL" --data-dir "$WORK" \
        --log warn run > "$OUT/sentinella.log" 2>&1 &
      SRV=$! ;;
    mosquitto)
      cat > "$WORK/mosquitto.conf" <<EOF
per_listener_settings false
persistence false
log_dest stderr
log_type error
log_type warning
user root
max_connections -1
allow_anonymous true
listener $PORT 127.0.0.1
cafile $WORK/pki/ca.pem
certfile $WORK/mosq.pem
keyfile $WORK/mosq.key
require_certificate true
use_identity_as_username true
EOF
      mosquitto -c "$WORK/mosquitto.conf" > "$OUT/mosquitto.log" 2>&1 &
      SRV=$! ;;
  esac
  for _ in $(seq 1 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1)' "$PORT" 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
}

stop() { # $1: pid
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

: > "$OUT/idle-rss.txt"
echo "[" > "$OUT/idle-rss.json"; first=1
{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%FT%TZ); mosquitto $(mosquitto -h 2>/dev/null | awk 'NR==1 {print $3}')"
  printf '%-10s %7s %12s %12s %14s %10s %10s %8s\n' server conns "rss before" "rss held" "KiB per conn" "fds before" "fds held" "fd/conn"
} | tee -a "$OUT/idle-rss.txt"
for server in $SERVERS; do
  for n in $COUNTS; do
    start_server "$server"
    rss0=$(rss_kib "$SRV"); fd0=$(fds "$SRV")
    rm -f "$WORK/ready.json"
    $BIN/sentinella-sim idle --fleet "$WORK/fleet.json" --broker "127.0.0.1:$PORT" \
      --connections "$n" --ready-file "$WORK/ready.json" >> "$OUT/client.log" 2>&1 &
    CLI=$!
    while [ ! -s "$WORK/ready.json" ] && kill -0 "$CLI" 2>/dev/null; do sleep 0.5; done
    [ -s "$WORK/ready.json" ] || { log "$server $n: the client ended early (see $OUT/client.log)"; exit 1; }
    held=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connected"])' "$WORK/ready.json")
    sleep "$SETTLE"
    rss1=$(rss_kib "$SRV"); fd1=$(fds "$SRV")
    line=$(python3 - "$server" "$n" "$held" "$rss0" "$rss1" "$fd0" "$fd1" <<'PY'
import json, sys
server, n, held, rss0, rss1, fd0, fd1 = sys.argv[1], *map(int, sys.argv[2:])
per = (rss1 - rss0) / held if held else float("nan")
fdper = (fd1 - fd0) / held if held else float("nan")
print(json.dumps({"server": server, "connections": n, "held": held, "rss_before_kib": rss0,
  "rss_held_kib": rss1, "kib_per_connection": round(per, 2), "fds_before": fd0, "fds_held": fd1,
  "fds_per_connection": round(fdper, 3)}))
PY
)
    [ $first = 1 ] || echo "," >> "$OUT/idle-rss.json"; first=0
    echo "$line" >> "$OUT/idle-rss.json"
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%-10s %7d %9d KiB %9d KiB %14.2f %10d %10d %8.3f" % (r["server"], r["held"], r["rss_before_kib"], r["rss_held_kib"], r["kib_per_connection"], r["fds_before"], r["fds_held"], r["fds_per_connection"]))' "$line" | tee -a "$OUT/idle-rss.txt"
    [ "$held" = "$n" ] || log "$server: only $held of $n connections held"
    stop "$CLI"; CLI=""
    stop "$SRV"; SRV=""
  done
done
echo "]" >> "$OUT/idle-rss.json"
echo "command: COUNTS=\"$COUNTS\" SETTLE=$SETTLE bash scripts/idle-rss.sh" | tee -a "$OUT/idle-rss.txt"
