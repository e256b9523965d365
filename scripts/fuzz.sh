#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz with libFuzzer) for SECONDS each,
# from the committed seed corpus, and prints each target's executions.
#
#   ./scripts/fuzz.sh          # 30 s per target
#   ./scripts/fuzz.sh 3600     # a long local run (docs/reliability.md)
#
# Needs Rust nightly and cargo-fuzz; installs both if missing. A crash, a
# hang (-timeout) or an allocation over -rss_limit_mb fails the run and
# leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-30}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked

# The targets write temporary stores and logs: on a RAM disk where there is
# one, so that fsyncs do not set the pace.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi

# No sanitizer: the code under test is safe Rust; libFuzzer still finds
# panics, hangs and runaway allocations, and builds and runs much faster.
cargo +nightly fuzz build -s none
for target in $(cargo +nightly fuzz list); do
  # New inputs the run finds go to a scratch corpus; the committed seeds
  # stay as they are.
  scratch="target/corpus/$target"
  mkdir -p "$scratch"
  echo "== $target (${seconds}s)"
  log="target/$target.log"
  status=0
  cargo +nightly fuzz run -s none "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
