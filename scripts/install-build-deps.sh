#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need when they are missing: a C toolchain
# and the headers librdkafka builds against (rdkafka's `ssl` and `zstd` features), Java 17+ and
# Maven for the Apache Kafka broker, and Debian's docker-compose (v1), which checks
# docker-compose.yml offline without a Docker engine. Idempotent; asks apt only when something
# is missing.
set -euo pipefail
need=()
for pkg in gcc g++ make pkg-config libssl-dev zlib1g-dev python3-pip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ "${#need[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "missing packages (${need[*]}) cannot be installed without root" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "installing: ${need[*]}" >&2
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
