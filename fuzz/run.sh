#!/usr/bin/env bash
# `make fuzz`: every target for FUZZ_SECONDS (default 60) from the committed
# seeds, then one line per target with executions, crashes and timeouts.
# A crash is minimised into tests/fuzz/regressions/TARGET/, which `make test`
# replays (src/fuzzing.rs): commit it with the fix.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-$(sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^erp-')}
export RUSTC_BOOTSTRAP=1
# No sanitizer: the code is safe Rust, and ASan would slow every target.
# The arithmetic target runs without comparison tracing: two RSA public
# operations per input are all loops over limbs, where tracing every
# comparison costs more than it finds.
BUILD=(-O -s none --fuzz-dir fuzz)
ARITH=(--no-trace-compares --target-dir fuzz/target-arith)
cargo fuzz build "${BUILD[@]}" || exit 2
cargo fuzz build "${BUILD[@]}" "${ARITH[@]}" rs256 || exit 2
flags() { [ "$1" = rs256 ] && echo "${ARITH[@]}"; }
mkdir -p fuzz/work fuzz/logs
printf '%-14s %14s %10s %8s %9s\n' target executions exec/s crashes timeouts
failed=0
total=0
for target in $TARGETS; do
  mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
  log="fuzz/logs/$target.log"
  # New inputs go to fuzz/work (ignored by git); the seeds stay as committed.
  cargo fuzz run "${BUILD[@]}" $(flags "$target") "$target" "fuzz/work/$target" "tests/fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1
  status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  crashes=0; timeouts=0
  if [ $status -ne 0 ]; then
    if grep -q 'ERROR: libFuzzer: timeout' "$log"; then timeouts=1; else crashes=1; fi
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ -n "$artifact" ] && [ -f "$artifact" ]; then
      mkdir -p "tests/fuzz/regressions/$target"
      cargo fuzz tmin "${BUILD[@]}" $(flags "$target") "$target" "$artifact" -- -runs=20000 >"fuzz/logs/$target.tmin.log" 2>&1
      minimised=$(sed -n "s/.*CRASH_MIN: minimizing crash input: '\(.*\)'.*/\1/p" "fuzz/logs/$target.tmin.log" | tail -1)
      kept="tests/fuzz/regressions/$target/$(basename "${minimised:-$artifact}")"
      cp "${minimised:-$artifact}" "$kept"
      echo "  $target: crash kept in $kept (log: $log)" >&2
    fi
  fi
  total=$((total + ${runs:-0}))
  printf '%-14s %14s %10s %8s %9s\n' "$target" "${runs:-0}" "${rate:-0}" "$crashes" "$timeouts"
done
echo "all targets: $total executions in ${SECONDS_PER_TARGET} s per target; logs in fuzz/logs/"
[ $failed -eq 0 ] || { echo "fuzzing found a crash or timeout" >&2; exit 1; }
