#!/usr/bin/env bash
# Fuzzes the pure core with cargo-fuzz (libFuzzer): user extraction (header, key, JSON pointer)
# and the payload splice. Each target runs FUZZ_SECONDS (default 60) from the committed corpus
# in fuzz/corpus/, which grows with what the run finds; a crash leaves its input in
# fuzz/artifacts/ and fails the script. Needs a nightly toolchain (rustup toolchain install
# nightly); installs cargo-fuzz when missing. Not part of scripts/test.sh: the first build
# compiles the whole dependency tree again with nightly (≈ 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
for target in extract_user stamp_payload; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    log="target/$target.log"
    mkdir -p target
    status=0
    cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    # libFuzzer's progress lines stay in the log; its verdict and figures are shown.
    grep -E -A3 "^(stat::number_of_executed_units|stat::new_units_added|Done|SUMMARY|thread .* panicked)" "$log" || true
    test "$status" -eq 0 || { echo "$target failed (exit $status); input in fuzz/artifacts/$target, log in fuzz/$log"; exit 1; }
done
