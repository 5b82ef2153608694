#!/usr/bin/env bash
# Benchmark cove-pty against a real cove-sync (watch mode, directory store),
# over loopback WebSockets, the way the browser talks to it.
#
#   scripts/bench-pty.sh                   full run (about 1-2 minutes)
#   BENCH_QUICK=1 scripts/bench-pty.sh     smaller flood, fewer samples
#   BENCH_OUT=/tmp/pty.md scripts/bench-pty.sh   also write the report there
#
# It measures (pty-server/examples/pty-bench/):
#   1. keystroke echo latency (INPUT frame -> OUTPUT frame), p50/p90/p99/max;
#   2. output flood throughput through cove-pty vs the raw PTY (script(1));
#   3. cove-pty RSS idle, with one connection, and per terminal;
#   4. 100 concurrent clients each running a command in its own terminal.
# and prints a Markdown table plus the raw numbers. A missed goal is marked
# MISSED; the exit status is non-zero only if the harness itself fails.
#
# Environment: BENCH_QUICK, BENCH_OUT, BENCH_LOG=1 (each server's log on
# stderr when it stops).
set -euo pipefail

cd "$(dirname "$0")/.."

command -v script >/dev/null || {
  echo "bench-pty: script(1) is missing; install util-linux/bsdutils" >&2
  exit 1
}

cargo build --release -p cove-sync -p cove-pty --examples
exec target/release/examples/pty-bench
