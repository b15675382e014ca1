#!/usr/bin/env bash
# Protocol conformance: runs the Autobahn|Testsuite fuzzingclient against a
# release build serving /echo, and prints its summary (FAILED must be 0).
#
#   scripts/autobahn.sh            # all 517 cases (9.* are slow: about a minute)
#   scripts/autobahn.sh '1.*,2.*'  # chosen cases
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
CORECAST_LISTEN="127.0.0.1:$PORT" CORECAST_LOG=warn target/release/corecast --echo &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
"$TOOLS/run.sh" "ws://127.0.0.1:$PORT/echo" "${1:-*}"
