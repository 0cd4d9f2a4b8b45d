#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test.
# Unit tests, mock-cluster tests, end-to-end tests against two real tansu brokers, and a
# validation of docker-compose.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
export TANSU_BIN="${TANSU_BIN:-$(scripts/install-tansu.sh)}"
echo "tansu: $TANSU_BIN"
# docker-compose.yml cannot run here (no Docker engine), but it must stay valid.
scripts/install-compose-check.sh
docker-compose config -q
echo "docker-compose.yml: valid"
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked "$@"
