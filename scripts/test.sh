#!/usr/bin/env bash
# The whole test suite: unit tests, integration tests over real loopback
# sockets (in-process servers and the built binary), doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --all-targets "$@"
cargo test --doc
