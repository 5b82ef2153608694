#!/usr/bin/env bash
# Benchmark cove-controller: the real controller binary (watch mode, directory
# store) running real cove-sync and cove-pty workspaces, driven through its API
# and its gateway the way the browser does.
#
#   scripts/bench-controller.sh                        full run (several minutes)
#   BENCH_QUICK=1 scripts/bench-controller.sh          fewer samples, smaller fleet
#   BENCH_OUT=/tmp/controller.md scripts/bench-controller.sh   also write the report there
#
# It measures (controller/examples/controller-bench/):
#   1. create a node project -> shell prompt over the IDE WebSocket, p50/p99/max;
#   2. restart of a stopped ~20,000-file project (a real node_modules, built once
#      with ../shared/bench/make-node-modules.sh into $BENCH_CACHE) -> ready;
#   3. gateway overhead on a preview request (direct vs through <port>--<id>.app);
#   4. controller RSS idle, with 100 stopped projects and 20 running workspaces.
# and prints a Markdown table plus the raw numbers. A missed goal is marked
# MISSED; the exit status is non-zero only if the harness itself fails.
#
# Environment: BENCH_QUICK, BENCH_OUT, BENCH_CACHE (default /tmp/cove-bench-cache),
# BENCH_LOG=1 (controller and workspace logs on stderr).
set -euo pipefail

cd "$(dirname "$0")/.."

cargo build --release -p cove-sync -p cove-pty -p cove-controller --examples
exec target/release/examples/controller-bench
