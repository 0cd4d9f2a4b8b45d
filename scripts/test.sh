#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test.
# Unit tests, mock-cluster tests, functional tests on two tansu brokers, the delivery suites on
# two Apache Kafka brokers, and a validation of docker-compose.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-build-deps.sh
export TANSU_BIN="${TANSU_BIN:-$(scripts/install-tansu.sh)}"
echo "tansu: $TANSU_BIN"
export KAFKA_LIBS="${KAFKA_LIBS:-$(scripts/install-kafka.sh)}"
echo "apache kafka: $KAFKA_LIBS"
# docker-compose.yml cannot run here (no Docker engine), but it must stay valid.
docker-compose config -q
echo "docker-compose.yml: valid"
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings

# What proves a delivery guarantee runs on Apache Kafka, the broker users run; the rest runs
# where it is fastest (tansu, librdkafka's mock cluster, no broker). Every file in tests/ is in
# exactly one list.
delivery=(environment_moves exactly_once decided_once migrate prod_outage rush_outage scale_out shutdown zombies)
functional=(broker_behaviour cleanup cli config_mapper demo e2e_tansu environments layers lookup_scale observability
  relay_mock return_path scenarios topic_settings tracing whitelist_e2e)
for f in tests/*.rs; do
  name="$(basename "$f" .rs)"
  if [[ " ${delivery[*]} ${functional[*]} " != *" $name "* ]]; then
    echo "scripts/test.sh: tests/$name.rs is in neither list" >&2
    exit 1
  fi
done
args() { for t in "$@"; do printf -- '--test %s ' "$t"; done; }
# shellcheck disable=SC2046
cargo test --release --locked --lib --bins $(args "${functional[@]}") "$@"
# shellcheck disable=SC2046
TEST_BROKER=kafka cargo test --release --locked $(args "${delivery[@]}") "$@"
