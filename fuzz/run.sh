#!/usr/bin/env bash
# Runs the fuzz targets (cargo fuzz, libFuzzer, stable Rust: `--sanitizer none`).
#
#   fuzz/run.sh SECONDS [TARGET...]         each target for SECONDS; new inputs go to a
#                                           scratch directory (what CI runs)
#   fuzz/run.sh --keep SECONDS [TARGET...]  the same, adding new inputs to fuzz/corpus/
#                                           (long runs; then minimise, see fuzz/README.md)
#
# Each target starts from its corpus (fuzz/corpus/TARGET) and the crash inputs kept in
# fuzz/crashes/TARGET, so a crash once fixed stays a regression check. Exits non-zero on
# the first crash, hang (10 s per input) or out-of-memory (2 GiB), after printing the
# input. Needs cargo-fuzz and a C++ compiler (libFuzzer is built from source).
set -euo pipefail
cd "$(dirname "$0")"

keep=0
if [ "${1:-}" = "--keep" ]; then
  keep=1
  shift
fi
seconds=${1:?usage: fuzz/run.sh [--keep] SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build --sanitizer none
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "crashes/$target" "$scratch/$target"
  # libFuzzer adds new inputs to the first directory.
  if [ "$keep" = 1 ]; then
    dirs=("corpus/$target" "crashes/$target")
  else
    dirs=("$scratch/$target" "corpus/$target" "crashes/$target")
  fi
  echo "== fuzz $target for ${seconds}s"
  start=$(date +%s)
  if ! cargo fuzz run --sanitizer none "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log"
    for crash in artifacts/"$target"/*; do
      [ -f "$crash" ] || continue
      echo "input $crash (base64): $(base64 -w0 "$crash")"
    done
    echo "fuzz $target: FAILED (keep the input in fuzz/crashes/$target/, see fuzz/README.md)"
    exit 1
  fi
  # The closing status line and libFuzzer's totals.
  grep -E '^#[0-9]+.*DONE' "$scratch/$target.log" | tail -n 1 || true
  grep -E 'stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' \
    "$scratch/$target.log" || true
  echo "fuzz $target: ok in $(($(date +%s) - start))s"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
