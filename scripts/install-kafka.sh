#!/usr/bin/env bash
# Installs the Apache Kafka broker for the tests and the harness: the jars of scripts/kafka/pom.xml
# (the broker and its runtime dependencies, from Maven Central) into target/tools/kafka/libs.
# Needs Java 17+ and Maven. Prints the libs directory; a second run with the same pom is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/target/tools/kafka"
stamp="$dest/pom.sha256"
want="$(sha256sum scripts/kafka/pom.xml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" || ! -d "$dest/libs" ]]; then
  command -v java >/dev/null || { echo "install-kafka: java (17+) not found" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "install-kafka: mvn not found" >&2; exit 1; }
  rm -rf "$dest/libs"
  mkdir -p "$dest"
  mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dest/libs" >&2
  echo "$want" > "$stamp"
fi
echo "$dest/libs"
