#!/usr/bin/env bash
# Run Cove on this machine: the controller on http://localhost:${COVE_PORT:-7070}
# with its API and gateway, projects in a directory store under
# ${COVE_DATA:-.cove-data}, workspaces as local cove-sync + cove-pty processes
# (FUSE when run as root with /dev/fuse, watch mode otherwise). Ctrl+C stops
# every workspace after flushing it.
#
#   scripts/run.sh [extra cove-controller flags, e.g. --store s3://bucket/prefix]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
echo "[run] building cove-sync, cove-pty and cove-controller (release)"
cargo build --release -q -p cove-sync -p cove-pty -p cove-controller
exec target/release/cove-controller --port "${COVE_PORT:-7070}" \
  --data-dir "${COVE_DATA:-.cove-data}" --templates templates "$@"
