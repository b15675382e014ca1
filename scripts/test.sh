#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests over real loopback
# sockets (in-process servers, the built binary, the load generator's smoke
# runs), doc tests, the async baseline variants' own tests, and the
# JavaScript client's (type check, dist/ matching its sources and the size
# budget, unit tests, Node against the built server binary), and a short
# run of every fuzz target (scripts/fuzz.sh; needs cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
# Third-party clients for tests/third_party.rs, in a venv of our own.
if [ ! -x target/py/bin/python ] || ! target/py/bin/python -c 'import websockets, prometheus_client' 2>/dev/null; then
    python3 -m venv target/py
    target/py/bin/pip install --quiet 'websockets>=13,<16' 'prometheus_client>=0.20'
fi
cargo test --all-targets "$@"
cargo test --doc
cargo test -p corecast-tokio
# The JavaScript client (needs Node 20 and npm; fails without them).
command -v node >/dev/null || { echo "scripts/test.sh: node is required (clients/js)" >&2; exit 1; }
(
    cd clients/js
    npm ci --no-audit --no-fund --loglevel=error
    npm run --silent typecheck
    node build.mjs --check
    CORECAST_BIN="$PWD/../../target/debug/corecast" npm test --silent
)
# Every fuzz target for 20 s (fails on a crash); docs/FUZZING.md.
scripts/fuzz.sh 20
