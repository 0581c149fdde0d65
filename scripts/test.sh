#!/usr/bin/env bash
# Runs every test of Sentinella, bringing up what they need on this machine:
#   - PostgreSQL on 127.0.0.1:5432 (started, or installed from Debian's packages, if absent),
#     and its server programs for the failover test's own clusters (SENTINELLA_PG_BIN);
#   - mosquitto-clients (mosquitto_pub/mosquitto_sub), the independent MQTT peer of the
#     interoperability tests;
#   - haproxy (Debian), the load balancer of the multi-node tests;
#   - TimescaleDB 2.23 on PGlite (scripts/tsdb, from the npm registry), for the hypertable path;
#   - Debian's chromium and playwright-core (npm ci in tests/browser), for the console's
#     browser tests; poppler-utils (pdftoppm, pdftotext) for the report the worklist test downloads;
#   - Python 3 venv with the pinned FHIR validator (tests/fhir/requirements.txt, from PyPI);
#   - cargo-deb (crates.io, pinned) for the Debian package's install test;
#   - schemathesis and openapi-spec-validator (tests/contract/requirements.txt, from PyPI) in a
#     virtualenv, for the OpenAPI contract tests.
# Then: formatting, cargo deny (bans, licences, sources) and the check that the production
# binary links no MQTT client, clippy with warnings as errors (also with the demo feature), the protocol and firmware core crates built without std, and
# `cargo test` over the whole workspace. No test is skipped: a missing service fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"

apt_install() {
  $SUDO apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >&2
}

log "PostgreSQL"
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql; fi
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
pg_isready -h 127.0.0.1 -p 5432
export SENTINELLA_TEST_PG="${SENTINELLA_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}"
# The failover test (tests/tests/failover.rs) makes two clusters of its own with these
# (initdb, pg_ctl, pg_basebackup, psql; as the postgres user when run as root).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
export SENTINELLA_PG_BIN="${SENTINELLA_PG_BIN:-$pg_bin}"
for tool in initdb pg_ctl pg_basebackup psql; do test -x "$SENTINELLA_PG_BIN/$tool"; done
if [ "$(id -u)" -eq 0 ]; then command -v runuser >/dev/null && id postgres >/dev/null; fi

log "mosquitto clients"
if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  apt_install mosquitto-clients
fi
mosquitto_pub --help 2>&1 | head -n1 || true

log "HAProxy"
# The load balancer in front of several nodes (tests/tests/haproxy.rs, sentinella/tests/
# cluster.rs): Debian's haproxy, run by the tests with generated configurations (the packaged
# service is not used).
if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then apt_install haproxy; fi
/usr/sbin/haproxy -v 2>/dev/null | head -n1 || haproxy -v | head -n1

log "browser tests: Chromium and playwright-core"
# The console's browser test (tests/tests/console.rs) drives Debian's Chromium with
# playwright-core from the npm registry (pinned in tests/browser/package-lock.json; no browser
# download). The test fails, never skips, when either is missing.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi
if [ ! -x /usr/bin/chromium ]; then apt_install chromium; fi
# pdftoppm/pdftotext: the worklist browser test reads the telemonitoring report's PDF.
if ! command -v pdftoppm >/dev/null; then apt_install poppler-utils; fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >&2)
/usr/bin/chromium --version 2>/dev/null || true

log "TimescaleDB on PGlite"
# A free port from 55433 up, so a server left running (a developer's) is not in the way.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TSDB_PORT=${TSDB_PORT:-55433}
while port_busy "$TSDB_PORT"; do TSDB_PORT=$((TSDB_PORT + 1)); done
export TSDB_PORT
tsdb_env=$(bash scripts/tsdb/start-tsdb.sh) || { echo "TimescaleDB on PGlite did not start" >&2; exit 1; }
eval "$tsdb_env"
trap 'kill "$TSDB_PID" 2>/dev/null || true' EXIT
export TSDB_DATABASE_URL

log "FHIR validator"
# The independent FHIR R4 validator of api/tests/fhir.rs (tests/fhir/validate.py, pinned
# fhir.resources from PyPI), in a virtualenv under target/.
FHIR_VENV="${CARGO_TARGET_DIR:-target}/fhir-venv"
if ! command -v python3 >/dev/null || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  apt_install python3 python3-venv
fi
python3 -m venv "$FHIR_VENV"
"$FHIR_VENV/bin/python" -m pip install -q -r tests/fhir/requirements.txt
"$FHIR_VENV/bin/python" tests/fhir/validate.py --self-test >/dev/null
export SENTINELLA_FHIR_PYTHON="$PWD/$FHIR_VENV/bin/python"
case "$FHIR_VENV" in /*) export SENTINELLA_FHIR_PYTHON="$FHIR_VENV/bin/python" ;; esac

log "format"
cargo fmt --all -- --check

log "supply chain: cargo deny (bans, licences, sources) and the production graph"
# deny.toml says what is allowed. Advisories are not checked: the RustSec database is a git
# repository these machines cannot reach (crates.io only); see deny.toml.
if ! command -v cargo-deny >/dev/null; then cargo install --locked cargo-deny@0.20.2; fi
cargo deny --log-level error check bans licenses sources
# The `sentinella` binary without the `demo` feature links no MQTT client (rumqttc and its
# rustls-webpki 0.102 / rustls-pemfile) and no simulator.
prod_graph=$(cargo tree -p sentinella -e normal --locked --prefix none)
if grep -E '^(rumqttc|simulators|rustls-webpki v0\.102|rustls-pemfile) ' <<<"$prod_graph"; then
  echo "the production graph of sentinella holds the crates above; they belong behind the demo feature" >&2
  exit 1
fi

log "architecture: crate boundaries, one composition root, no import circles"
python3 scripts/check-layout.py

log "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p sentinella --features demo --all-targets --locked -- -D warnings

log "without std (what the firmware builds on)"
cargo build -p protocol --no-default-features --locked
cargo build -p firmware-core --no-default-features --locked
cargo build -p max30102 -p meter-uart --no-default-features --locked
cargo build -p max30102 -p meter-uart --no-default-features --features protocol --locked

log "tests"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${SENTINELLA_TEST_THREADS:-4}"

log "Debian package: installed with dpkg in a namespace, started as the unit, upgraded, purged"
bash scripts/package-test.sh

log "OpenAPI contract: openapi-spec-validator, schemathesis against a live sentinella per role"
bash scripts/contract-test.sh
log "all tests passed"
