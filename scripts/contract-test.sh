#!/usr/bin/env bash
# The OpenAPI contract of /api/v1 against the real service (part of scripts/test.sh):
#   1. openapi-spec-validator on the committed document (api/openapi/api-v1.json, which
#      api/tests/openapi.rs keeps equal to what the code generates);
#   2. a live `sentinella run` on a fresh SQLite store with a provisioned COT (and a second
#      one), a patient with a device, and one user per role;
#   3. schemathesis (examples, coverage and fuzzing phases, a bounded number of cases per
#      operation) once per role with that role's session token: no 5xx, every status, content
#      type, header and body as the contract says, for every operation but the endless alert
#      stream (an SSE response never completes; api/tests/alert_stream.rs covers it).
# SENTINELLA_CONTRACT_EXAMPLES sets the cases per operation (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n== contract: %s\n' "$*" >&2; }

TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
VENV="$TARGET/contract-venv"
EXAMPLES="${SENTINELLA_CONTRACT_EXAMPLES:-20}"

log "schemathesis and openapi-spec-validator (PyPI, pinned) in $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -r tests/contract/requirements.txt

log "openapi-spec-validator"
"$VENV/bin/openapi-spec-validator" api/openapi/api-v1.json

log "a live sentinella with a COT and a user per role"
# The binary as `cargo test --workspace` builds it (scripts/test.sh has just done so).
# SENTINELLA_NO_BUILD=1 uses the binary already there (a developer's quick rerun).
${SENTINELLA_NO_BUILD:+:} cargo test --workspace --no-run --locked -q >&2
BIN="$TARGET/debug/sentinella"
[ -x "$BIN" ] || { echo "no $BIN" >&2; exit 1; }
WORK=$(mktemp -d)
PID=""
cleanup() {
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
S() { env -u SENTINELLA_DATABASE_URL -u SENTINELLA_CONFIG "$BIN" --log warn --data-dir "$WORK/data" "$@"; }
S cot add --code COT-A --name "COT A" >/dev/null
S cot add --code COT-B --name "COT B" >/dev/null
S patient add --cot COT-A --code PAT-A --name "Maria Rossi" --conditions hypertension,copd >/dev/null
S patient add --cot COT-B --code PAT-B --name "Other COT" --conditions diabetes >/dev/null
S device add --patient PAT-A --kind bp --id bp-0001 --no-cert >/dev/null
PASSWORD="contract test password $RANDOM$RANDOM"
ROLES="nurse physician device_manager admin"
for role in $ROLES; do
  echo "$PASSWORD" | S user add --username "$role" --display-name "$role" --role "$role" \
    --cot COT-A --password-stdin >/dev/null
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
env -u SENTINELLA_DATABASE_URL -u SENTINELLA_CONFIG SENTINELLA_API_LISTEN="127.0.0.1:$PORT" \
  SENTINELLA_EDGE_LISTEN="127.0.0.1:$(free_port)" SENTINELLA_EDGE_TLS_LISTEN="127.0.0.1:$(free_port)" \
  "$BIN" --log warn --data-dir "$WORK/data" run 2>"$WORK/service.log" &
PID=$!
BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 600); do
  curl -fsS "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/service.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$BASE/readyz" >/dev/null

status=0
for role in $ROLES; do
  token=$(curl -fsS -H 'Content-Type: application/json' \
    -d "{\"username\":\"$role\",\"password\":\"$PASSWORD\"}" "$BASE/api/v1/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  log "schemathesis as $role ($EXAMPLES cases per operation)"
  # Logging out and password changes revoke the token the run uses: they run last, in their
  # own pass, so the other operations are exercised with a valid token.
  "$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml run "$BASE/api/v1/openapi.json" \
    --max-examples "$EXAMPLES" --seed 1 --workers 1 \
    --phases examples,coverage,fuzzing --request-timeout 10 \
    --exclude-path /alerts/stream --exclude-path /auth/logout \
    --exclude-path-regex '/users/\{id\}/(password|disable)' \
    -H "Authorization: Bearer $token" --report junit \
    --report-junit-path "$WORK/$role.xml" >"$WORK/$role.txt" 2>&1 || status=1
  tail -n 25 "$WORK/$role.txt" >&2
  if [ "$status" -ne 0 ]; then cat "$WORK/$role.txt" >&2; break; fi
done
if [ "$status" -eq 0 ]; then
  log "schemathesis: logout and the token-revoking operations, as admin"
  token=$(curl -fsS -H 'Content-Type: application/json' \
    -d "{\"username\":\"admin\",\"password\":\"$PASSWORD\"}" "$BASE/api/v1/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  "$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml run "$BASE/api/v1/openapi.json" \
    --max-examples "$EXAMPLES" --seed 1 --workers 1 \
    --phases examples,coverage,fuzzing --request-timeout 10 \
    --include-path /auth/logout --include-path-regex '/users/\{id\}/(password|disable)' \
    -H "Authorization: Bearer $token" >"$WORK/revoking.txt" 2>&1 || status=1
  tail -n 15 "$WORK/revoking.txt" >&2
  [ "$status" -eq 0 ] || cat "$WORK/revoking.txt" >&2
fi
if grep -qE 'panicked|ERROR' "$WORK/service.log"; then
  grep -E 'panicked|ERROR' "$WORK/service.log" | head -20 >&2
  echo "the service logged errors during the contract tests" >&2
  status=1
fi
exit "$status"
