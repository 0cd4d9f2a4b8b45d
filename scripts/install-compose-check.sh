#!/usr/bin/env bash
# Makes `docker-compose` available to validate docker-compose.yml without a Docker engine:
# Debian's docker-compose package (v1) parses and checks the file offline.
set -euo pipefail
if command -v docker-compose >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "docker-compose is missing and cannot be installed without root" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker-compose >&2
