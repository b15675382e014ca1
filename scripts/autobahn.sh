#!/usr/bin/env bash
# Protocol conformance: runs the Autobahn|Testsuite fuzzingclient against a
# release build serving /echo, and prints its summary (FAILED must be 0).
#
#   scripts/autobahn.sh            # all 517 cases (9.* are slow: about a minute)
#   scripts/autobahn.sh '1.*,2.*'  # chosen cases
#   AUTOBAHN_TLS=1 scripts/autobahn.sh   # over wss:// ([tls] with a
#                                        # self-signed certificate made here)
#
# Needs the suite from the workplace tools: AUTOBAHN_TOOLS (default
# ../shared/tools/autobahn relative to the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${AUTOBAHN_TOOLS:-../shared/tools/autobahn}"
PORT="${AUTOBAHN_PORT:-19001}"
[ -x "$TOOLS/run.sh" ] || { echo "Autobahn tools not found at $TOOLS (set AUTOBAHN_TOOLS)" >&2; exit 2; }
"$TOOLS/setup.sh" >/dev/null
cargo build --release
SCHEME=ws
CURL=(curl -sf)
if [ "${AUTOBAHN_TLS:-0}" = 1 ]; then
    CERTS="$(mktemp -d)"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$CERTS/key.pem" -out "$CERTS/cert.pem" -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
    export CORECAST_TLS__CERT="$CERTS/cert.pem" CORECAST_TLS__KEY="$CERTS/key.pem"
    SCHEME=wss
    CURL=(curl -sf --cacert "$CERTS/cert.pem")
    HTTP=https
fi
CORECAST_LISTEN="127.0.0.1:$PORT" CORECAST_LOG=warn CORECAST_HISTORY__DURABILITY=memory target/release/corecast --echo &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "${CERTS:-/nonexistent}"' EXIT
for _ in $(seq 50); do "${CURL[@]}" "${HTTP:-http}://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
"$TOOLS/run.sh" "$SCHEME://127.0.0.1:$PORT/echo" "${1:-*}"
