#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test.
# Unit tests, mock-cluster tests, and end-to-end tests against two real tansu brokers.
set -euo pipefail
cd "$(dirname "$0")/.."
export TANSU_BIN="${TANSU_BIN:-$(scripts/install-tansu.sh)}"
echo "tansu: $TANSU_BIN"
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked "$@"
