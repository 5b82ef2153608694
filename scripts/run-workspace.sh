#!/usr/bin/env bash
# Run one Cove workspace on this machine: a project in a local directory
# store, hydrated and mounted (FUSE) or watched at $COVE_DATA/workspace by
# cove-sync, with cove-pty in front of it (terminals, files, change feed and
# app preview over one WebSocket). Synced until Ctrl+C, which stops cove-pty
# (ending every terminal session) and then flushes everything to the store.
# This is the single-machine entry point until the controller lands.
#
#   scripts/run-workspace.sh [PROJECT] [FROM_DIR]
#
#   PROJECT    project id (default: demo); created empty, or from FROM_DIR
#   COVE_DATA  data dir (default: ./.cove): store/, cache/, workspace/, token-secret
#   COVE_MODE  auto | fuse | watch (default: auto — FUSE when root with /dev/fuse)
#   COVE_API   sidecar control API address (default: 127.0.0.1:7081)
#   COVE_PTY   cove-pty IDE socket address (default: 127.0.0.1:7080; preview on
#              port +2, admin on +3)
#   COVE_ORIGIN  origin allowed to open the socket (default: http://localhost:7070)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

project=${1:-demo}
from=${2:-}
data=$(realpath -m "${COVE_DATA:-.cove}")
mode=${COVE_MODE:-auto}
api=${COVE_API:-127.0.0.1:7081}
pty=${COVE_PTY:-127.0.0.1:7080}
origin=${COVE_ORIGIN:-http://localhost:7070}
host=${pty%:*}
port=${pty##*:}

echo "[run-workspace] building cove-sync and cove-pty (release)"
cargo build --release -q -p cove-sync -p cove-pty
bin=target/release/cove-sync
ptybin=target/release/cove-pty
store="file://$data/store"
mkdir -p "$data"
if [[ ! -s "$data/token-secret" ]]; then
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$data/token-secret")
fi
COVE_TOKEN_SECRET=$(cat "$data/token-secret")
export COVE_TOKEN_SECRET

if ! "$bin" --store "$store" history --project "$project" --limit 1 >/dev/null 2>&1; then
  if [[ -n "$from" ]]; then
    echo "[run-workspace] creating project $project from $from"
    "$bin" --store "$store" create --project "$project" --from-dir "$from"
  else
    echo "[run-workspace] creating empty project $project"
    "$bin" --store "$store" create --project "$project"
  fi
fi

sidecar_pid=
pty_pid=
stop() {
  [[ -n "$pty_pid" ]] && kill -TERM "$pty_pid" 2>/dev/null && wait "$pty_pid" 2>/dev/null || true
  [[ -n "$sidecar_pid" ]] && kill -TERM "$sidecar_pid" 2>/dev/null && wait "$sidecar_pid" 2>/dev/null || true
}
trap stop EXIT INT TERM

echo "[run-workspace] serving $project at $data/workspace (mode $mode); status: curl http://$api/status"
"$bin" --store "$store" serve --project "$project" --mode "$mode" \
  --workspace "$data/workspace" --cache "$data/cache" --api "$api" &
sidecar_pid=$!
for _ in $(seq 1 600); do
  curl -fs "http://$api/readyz" >/dev/null 2>&1 && break
  kill -0 "$sidecar_pid" 2>/dev/null || { echo "[run-workspace] cove-sync exited" >&2; exit 1; }
  sleep 0.1
done

"$ptybin" --project "$project" --root "$data/workspace" --sidecar "http://$api" \
  --listen "$pty" --preview-listen "$host:$((port + 2))" --admin-listen "$host:$((port + 3))" \
  --allowed-origin "$origin" &
pty_pid=$!
token=$("$ptybin" --project "$project" --issue-token 3600)
cat <<MSG
[run-workspace] cove-pty: ws://$pty/ws (origin $origin), protocol in docs/protocol.md
[run-workspace] a token valid for one hour:
  $token
[run-workspace] preview: http://$host:$((port + 2)) with Host: $project.app.localhost (app on \$PORT=3000)
[run-workspace] Ctrl+C ends the terminals, flushes everything to the store and stops
MSG
wait "$pty_pid" || true
