#!/usr/bin/env bash
# The Debian package, installed and started as a host would (part of scripts/test.sh).
#
# 1. Builds `sentinella_*.deb` with cargo-deb (pinned) from the dev-profile binary, so CI does
#    not compile a release build; operators build theirs with `cargo deb -p sentinella`.
# 2. In a private mount namespace, lays copy-on-write overlays over /etc, /usr and /var (the
#    host's own files are never changed; everything written lands in a temporary folder) and
#    installs the package with dpkg: the maintainer scripts create the `sentinella` user, the
#    state directory and the configuration's permissions, and enable the unit.
# 3. Starts the unit's ExecStart as systemd would: as the unit's User, with its LimitNOFILE,
#    WorkingDirectory, StateDirectory, EnvironmentFile and a NOTIFY_SOCKET (Type=notify);
#    waits for READY=1, checks /readyz, the descriptor budget the unit's limit gives, and that
#    `sentinella config check` passes on the installed configuration; stops it with SIGTERM.
# 4. Upgrades to a second build of the package: postinst applies migrations as the service
#    user, the administrator's edit of the configuration survives, the service starts again.
# 5. Purges: the state directory is removed.
# systemd itself is not running here, so the unit's sandboxing directives are checked by
# `systemd-analyze verify` and by listing them, not enforced.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== package: %s\n' "$*" >&2; }
fail() { printf 'package test FAILED: %s\n' "$*" >&2; exit 1; }

if [ "${1:-}" != "--inside" ]; then
  TARGET="${CARGO_TARGET_DIR:-target}"
  case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
  CARGO_DEB_VERSION=3.8.0
  if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    log "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install --locked "cargo-deb@$CARGO_DEB_VERSION" >&2
  fi
  for tool in dpkg unshare setpriv prlimit runuser curl python3; do
    command -v "$tool" >/dev/null || fail "$tool is missing"
  done
  log "building the package"
  # The binary as `cargo test --workspace` builds it (scripts/test.sh has just done so: this
  # compiles nothing there); a build with another feature resolution would recompile most
  # dependencies.
  # SENTINELLA_NO_BUILD=1 packages the binary already there (a developer's quick rerun).
  ${SENTINELLA_NO_BUILD:+:} cargo test --workspace --no-run --locked -q >&2
  OUT="$TARGET/debian"
  rm -rf "$OUT" && mkdir -p "$OUT"
  # The dev profile draws a warning from cargo-deb (it is meant for release builds).
  mkdir -p "$OUT/1" "$OUT/2"
  cargo deb -p sentinella --profile dev --no-build --fast --quiet --locked -o "$OUT/1/" >/dev/null
  cargo deb -p sentinella --profile dev --no-build --fast --quiet --locked --deb-revision 2 \
    -o "$OUT/2/" >/dev/null
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  unshare --mount --propagation private --fork bash "$0" --inside "$OUT" "$WORK"
  exit $?
fi

# Inside the namespace.
OUT="$2"
WORK="$3"
DEB1=$(ls "$OUT"/1/sentinella_*-1_*.deb)
DEB2=$(ls "$OUT"/2/sentinella_*-2_*.deb)
for dir in /etc /usr /var; do
  mkdir -p "$WORK/upper$dir" "$WORK/work$dir"
  mount -t overlay overlay \
    -o "lowerdir=$dir,upperdir=$WORK/upper$dir,workdir=$WORK/work$dir" "$dir"
done
# Nothing of an earlier install may be visible.
if getent passwd sentinella >/dev/null || [ -e /etc/sentinella ] || [ -e /var/lib/sentinella ]; then
  fail "the host already has a sentinella user or files; this test needs a clean host"
fi

log "installing $(basename "$DEB1")"
dpkg -i "$DEB1" >&2
dpkg-query -W -f='${Status}\n' sentinella | grep -qx "install ok installed" || fail "not installed"
getent passwd sentinella >/dev/null || fail "no sentinella user"
[ "$(stat -c '%U:%G %a' /etc/sentinella/sentinella.toml)" = "root:sentinella 640" ] ||
  fail "configuration owner/mode: $(stat -c '%U:%G %a' /etc/sentinella/sentinella.toml)"
[ "$(stat -c '%U:%G %a' /var/lib/sentinella)" = "sentinella:sentinella 700" ] ||
  fail "state directory owner/mode: $(stat -c '%U:%G %a' /var/lib/sentinella)"
dpkg-query -W -f='${Conffiles}\n' sentinella | grep -q /etc/sentinella/sentinella.toml ||
  fail "the configuration is not a conffile"
UNIT=/usr/lib/systemd/system/sentinella.service
[ -f "$UNIT" ] || fail "no unit at $UNIT"
[ -L /etc/systemd/system/multi-user.target.wants/sentinella.service ] ||
  fail "the unit is not enabled"

log "the unit"
unit() { sed -n "s/^$1=//p" "$UNIT" | tail -n1; }
for directive in "Type=notify" "NoNewPrivileges=yes" "ProtectSystem=strict" "PrivateTmp=yes" \
  "StateDirectory=sentinella" "User=sentinella"; do
  grep -qx "$directive" "$UNIT" || fail "the unit lacks $directive"
done
# systemd-analyze checks every directive (an unknown key or a bad value is an error) and that
# ExecStart's binary exists.
verdict=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$UNIT" 2>&1) ||
  fail "systemd-analyze verify: $verdict"
[ -z "$verdict" ] || fail "systemd-analyze verify: $verdict"

USER_=$(unit User)
NOFILE=$(unit LimitNOFILE)
WORKDIR=$(unit WorkingDirectory)
STATE=/var/lib/$(unit StateDirectory)
EXEC=$(unit ExecStart)
ENVFILE=$(unit EnvironmentFile); ENVFILE=${ENVFILE#-}
[ "$WORKDIR" = "$STATE" ] || fail "WorkingDirectory is not the state directory"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
# The operator's environment file: the test's own ports, so nothing of the host's is in the way.
cat >"$ENVFILE" <<EOF
SENTINELLA_API_LISTEN=127.0.0.1:$API_PORT
SENTINELLA_EDGE_LISTEN=127.0.0.1:$(free_port)
SENTINELLA_EDGE_TLS_LISTEN=127.0.0.1:$(free_port)
EOF
chown root:"$USER_" "$ENVFILE"
chmod 0640 "$ENVFILE"

log "config check as the service user"
runuser -u "$USER_" -- /usr/bin/sentinella --config /etc/sentinella/sentinella.toml \
  config check >/dev/null 2>"$WORK/check.txt" || { cat "$WORK/check.txt" >&2; fail "config check"; }

# Starts ExecStart as systemd would and waits (at most 2 minutes) for READY=1 on the notify
# socket; sets PID.
start_unit() {
  local sock="$WORK/notify.sock" ready="$WORK/ready.txt"
  rm -f "$sock" "$ready"
  python3 - "$sock" "$ready" >/dev/null <<'PY' &
import os, socket, sys
sock, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sock)
os.chmod(sock, 0o666)
s.settimeout(120)
with open(out, "w") as f:
    while True:
        msg = s.recv(4096).decode()
        f.write(msg + "\n"); f.flush()
        if "READY=1" in msg:
            break
PY
  local listener=$!
  for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.05; done
  chmod 0711 "$WORK"
  # The unit's environment: only what systemd sets, plus its EnvironmentFile.
  # shellcheck disable=SC2046,SC2086
  (cd "$WORKDIR" && exec prlimit --nofile="$LIMIT:$LIMIT" -- \
      setpriv --reuid="$USER_" --regid="$USER_" --init-groups --no-new-privs -- \
      env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 NOTIFY_SOCKET="$sock" \
      $(grep -v '^#' "$ENVFILE") $EXEC) >/dev/null 2>>"$WORK/service.log" &
  PID=$!
  for _ in $(seq 1 1200); do
    grep -qs "READY=1" "$ready" && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/service.log" >&2; fail "the service exited"; }
    sleep 0.1
  done
  kill "$listener" 2>/dev/null || true
  grep -qs "READY=1" "$ready" || { cat "$WORK/service.log" >&2; fail "no READY=1"; }
}

stop_unit() {
  local pid=$1
  kill -TERM "$pid"
  local status=0
  wait "$pid" || status=$?
  [ "$status" -eq 0 ] || { cat "$WORK/service.log" >&2; fail "exit status $status after SIGTERM"; }
}

# LimitNOFILE as the unit sets it, when this host lets root raise the hard limit that far
# (a container without CAP_SYS_RESOURCE may not): else the hard limit there is.
if prlimit --nofile="$NOFILE:$NOFILE" true 2>/dev/null; then
  LIMIT=$NOFILE
else
  LIMIT=$(ulimit -Hn)
  echo "this host cannot raise the open-files limit to LimitNOFILE=$NOFILE; using $LIMIT" >&2
fi

log "starting ExecStart as the unit: $EXEC"
start_unit
curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null || fail "/readyz"
metrics=$(curl -fsS "http://127.0.0.1:$API_PORT/metrics")
grep -qx "sentinella_process_open_files_limit $LIMIT" <<<"$metrics" ||
  fail "open-files limit: $(grep open_files <<<"$metrics")"
devices=$(sed -n 's/^sentinella_edge_max_connections //p' <<<"$metrics")
expected=$(( (LIMIT - 1024 - 24 - 256) / 3 ))
[ "$devices" = "$expected" ] || fail "max device connections $devices, expected $expected"
echo "an open-files limit of $LIMIT gives $devices device connections (SQLite)" >&2
[ -f "$STATE/sentinella.sqlite" ] || fail "the store is not in $STATE"
[ "$(stat -c '%U %a' "$STATE/pki/ca.key")" = "$USER_ 600" ] || fail "device CA key owner/mode"
stop_unit "$PID"

log "upgrading to $(basename "$DEB2")"
echo "# edited by the administrator" >>/etc/sentinella/sentinella.toml
dpkg -i "$DEB2" 2>"$WORK/upgrade.txt" >&2 || { cat "$WORK/upgrade.txt" >&2; fail "upgrade"; }
cat "$WORK/upgrade.txt" >&2
grep -q "applying migrations" "$WORK/upgrade.txt" || fail "postinst did not migrate"
grep -q "store ready" "$WORK/upgrade.txt" || fail "the migration did not reach the store"
grep -q "edited by the administrator" /etc/sentinella/sentinella.toml ||
  fail "the administrator's configuration was replaced"
start_unit
curl -fsS "http://127.0.0.1:$API_PORT/readyz" >/dev/null || fail "/readyz after the upgrade"
stop_unit "$PID"

log "purging"
dpkg --purge sentinella >&2
[ ! -e "$STATE" ] || fail "purge left $STATE"
[ ! -e /usr/bin/sentinella ] || fail "purge left the binary"
echo "package test passed: installed, started as the unit, upgraded, purged" >&2
