#!/usr/bin/env bash
# Run Cove on this machine: the controller on http://localhost:${COVE_PORT:-7070}
# with the browser UI, its API and gateway, projects in a directory store under
# ${COVE_DATA:-.cove-data}, workspaces as local cove-sync + cove-pty processes
# (FUSE when run as root with /dev/fuse, watch mode otherwise). Ctrl+C stops
# every workspace after flushing it.
#
#   scripts/run.sh [extra cove-controller flags, e.g. --store s3://bucket/prefix]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
source scripts/lib/frontend.sh
die() { printf '[run] ERROR: %s\n' "$*" >&2; exit 1; }

{ command -v node && command -v npm; } >/dev/null ||
  die "node and npm are needed to build the UI (frontend/): install Node.js 20.19 or newer"
[[ -f frontend/package-lock.json ]] || die "frontend/package-lock.json is missing: npm ci cannot install the UI's dependencies"
if frontend_needs_npm_ci frontend; then
  echo "[run] installing the UI's dependencies (npm ci in frontend/)"
  (cd frontend && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "[run] building the UI (npm run build in frontend/)"
if ! out=$(cd frontend && npm run build --silent 2>&1); then
  printf '%s\n' "$out" >&2
  die "the UI did not build"
fi

echo "[run] building cove-sync, cove-pty and cove-controller (release)"
cargo build --release -q -p cove-sync -p cove-pty -p cove-controller
exec target/release/cove-controller --port "${COVE_PORT:-7070}" \
  --data-dir "${COVE_DATA:-.cove-data}" --templates templates --ui-dir frontend/dist "$@"
