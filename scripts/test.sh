#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests over real loopback
# sockets (in-process servers, the built binary, the load generator's smoke
# runs), doc tests, and the async baseline variants' own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
cargo test --doc
cargo test -p corecast-tokio
