#!/usr/bin/env bash
# Start (or reuse) a single-node Garage 2.x S3 server on loopback, with all state in DIR.
# Creates bucket cove-test and key cove-test-key, verifies them with a real S3 round trip,
# and writes DIR/env (COVE_TEST_S3_* exports) and DIR/garage.pid.
#   usage: scripts/garage-up.sh DIR
#   ports: COVE_GARAGE_S3_PORT (3900), COVE_GARAGE_RPC_PORT (S3+1), COVE_GARAGE_ADMIN_PORT (S3+3)
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(realpath -m "$1")
S3_PORT=${COVE_GARAGE_S3_PORT:-3900}
RPC_PORT=${COVE_GARAGE_RPC_PORT:-$((S3_PORT + 1))}
ADMIN_PORT=${COVE_GARAGE_ADMIN_PORT:-$((S3_PORT + 3))}
TIMEOUT=${COVE_GARAGE_START_TIMEOUT:-60}
BUCKET=cove-test
KEY_NAME=cove-test-key
REGION=garage
ENDPOINT="http://127.0.0.1:$S3_PORT"
CFG="$DIR/garage.toml"
PIDFILE="$DIR/garage.pid"
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '[garage-up] %s\n' "$*"; }
die() { printf '[garage-up] ERROR: %s\n' "$*" >&2; exit 1; }
G() { garage -c "$CFG" "$@"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
hex32() { openssl rand -hex 32 2>/dev/null || od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
our_pid() { # prints the pid of the garage serving from $DIR, if any
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$CFG" && echo "$pid"
}

command -v garage >/dev/null || die "garage not on PATH (run scripts/install-deps.sh)"
mkdir -p "$DIR/meta" "$DIR/data"
chmod 700 "$DIR"

if pid=$(our_pid); then
  port_open "$S3_PORT" || die "garage (pid $pid) from $DIR is running but not on port $S3_PORT; run scripts/garage-down.sh $DIR"
  step "reusing garage pid $pid from $DIR on $ENDPOINT"
else
  for p in "$S3_PORT" "$RPC_PORT" "$ADMIN_PORT"; do
    ! port_open "$p" || die "127.0.0.1:$p already in use by another process"
  done
  [[ -s $DIR/rpc_secret ]] || (umask 077 && hex32 >"$DIR/rpc_secret")
  [[ -s $DIR/admin_token ]] || (umask 077 && hex32 >"$DIR/admin_token")
  step "writing $CFG (s3 :$S3_PORT, rpc :$RPC_PORT, admin :$ADMIN_PORT, sqlite, replication 1)"
  (umask 077 && cat >"$CFG" <<TOML)
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(cat "$DIR/rpc_secret")"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$S3_PORT"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
admin_token = "$(cat "$DIR/admin_token")"
TOML
  step "starting garage server (log: $DIR/garage.log)"
  setsid garage -c "$CFG" server >>"$DIR/garage.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PIDFILE"
  step "waiting up to ${TIMEOUT}s for garage pid $pid to answer"
  for ((i = 0; ; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$DIR/garage.log" >&2; die "garage exited during startup"; }
    port_open "$S3_PORT" && G status >/dev/null 2>&1 && break
    ((i < TIMEOUT * 4)) || { tail -n 20 "$DIR/garage.log" >&2; die "garage did not answer within ${TIMEOUT}s"; }
    sleep 0.25
  done
fi

version=$(G layout show | sed -n 's/^Current cluster layout version: *//p')
if [[ $version == 0 ]]; then
  node_id=$(G node id -q 2>/dev/null | cut -d@ -f1)
  step "assigning layout: node ${node_id:0:16} zone dc1 capacity 1G, applying version 1"
  G layout assign -z dc1 -c 1G "$node_id" >/dev/null
  G layout apply --version 1 >/dev/null
else
  step "layout already applied (version $version)"
fi

if G bucket info "$BUCKET" >/dev/null 2>&1; then
  step "bucket $BUCKET exists"
else
  step "creating bucket $BUCKET"
  G bucket create "$BUCKET" >/dev/null
fi
if G key info "$KEY_NAME" >/dev/null 2>&1; then
  step "key $KEY_NAME exists"
else
  step "creating key $KEY_NAME"
  G key create "$KEY_NAME" >/dev/null
fi
step "granting $KEY_NAME read/write/owner on $BUCKET"
G bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null
access_key=$(G key info --key-id "$KEY_NAME")
secret_key=$(G key info --secret-key "$KEY_NAME")

step "writing $DIR/env"
(umask 077 && cat >"$DIR/env.tmp" <<ENV && mv "$DIR/env.tmp" "$DIR/env")
export COVE_TEST_S3_ENDPOINT=$ENDPOINT
export COVE_TEST_S3_REGION=$REGION
export COVE_TEST_S3_BUCKET=$BUCKET
export COVE_TEST_S3_ACCESS_KEY=$access_key
export COVE_TEST_S3_SECRET_KEY=$secret_key
ENV

step "checking the key with a real S3 put/get/delete (rclone)"
rc() {
  env -u AWS_CA_BUNDLE RCLONE_S3_PROVIDER=Other RCLONE_S3_ENDPOINT="$ENDPOINT" \
    RCLONE_S3_ACCESS_KEY_ID="$access_key" RCLONE_S3_SECRET_ACCESS_KEY="$secret_key" \
    RCLONE_S3_REGION="$REGION" RCLONE_S3_FORCE_PATH_STYLE=true RCLONE_CONFIG=/dev/null \
    rclone -q --retries 1 --low-level-retries 2 "$@"
}
probe=":s3:$BUCKET/.garage-up-probe"
echo "probe $$" | rc rcat "$probe" || die "S3 PutObject failed"
[[ $(rc cat "$probe") == "probe $$" ]] || die "S3 GetObject returned wrong data"
rc deletefile "$probe" || die "S3 DeleteObject failed"

step "garage ready on $ENDPOINT (pid $(cat "$PIDFILE"), ${SECONDS}s); source $DIR/env"
