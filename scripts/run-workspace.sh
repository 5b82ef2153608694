#!/usr/bin/env bash
# Run one Cove workspace on this machine: a project in a local directory
# store, hydrated and mounted (FUSE) or watched at ./workspace, synced until
# Ctrl+C. This is the single-machine entry point until the controller lands.
#
#   scripts/run-workspace.sh [PROJECT] [FROM_DIR]
#
#   PROJECT    project id (default: demo); created empty, or from FROM_DIR
#   COVE_DATA  data dir (default: ./.cove): store/, cache/, workspace/
#   COVE_MODE  auto | fuse | watch (default: auto — FUSE when root with /dev/fuse)
#   COVE_API   control API address (default: 127.0.0.1:7081)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

project=${1:-demo}
from=${2:-}
data=$(realpath -m "${COVE_DATA:-.cove}")
mode=${COVE_MODE:-auto}
api=${COVE_API:-127.0.0.1:7081}

echo "[run-workspace] building cove-sync (release)"
cargo build --release -q -p cove-sync
bin=target/release/cove-sync
store="file://$data/store"
mkdir -p "$data"

if ! "$bin" --store "$store" history --project "$project" --limit 1 >/dev/null 2>&1; then
  if [[ -n "$from" ]]; then
    echo "[run-workspace] creating project $project from $from"
    "$bin" --store "$store" create --project "$project" --from-dir "$from"
  else
    echo "[run-workspace] creating empty project $project"
    "$bin" --store "$store" create --project "$project"
  fi
fi

echo "[run-workspace] serving $project at $data/workspace (mode $mode); status: curl http://$api/status"
echo "[run-workspace] Ctrl+C flushes everything to the store and stops"
exec "$bin" --store "$store" serve --project "$project" --mode "$mode" \
  --workspace "$data/workspace" --cache "$data/cache" --api "$api"
