#!/usr/bin/env bash
# Installs confluent-kafka (Python, with its bundled librdkafka) for the throughput harness's
# Python relay baseline. Prints the directory to put on PYTHONPATH. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/target/tools/confluent-kafka"
if ! PYTHONPATH="$dest" python3 -c "import confluent_kafka" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dest" "confluent-kafka==2.16.1" >&2
fi
echo "$dest"
