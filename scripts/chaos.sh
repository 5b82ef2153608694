#!/usr/bin/env bash
# Run the chaos harness (docs/durability.md): kill workspaces mid-work and
# check that no acknowledged write is lost.
#
#   scripts/chaos.sh                                   CI profile, 100 cycles
#   scripts/chaos.sh --profile release --out target/chaos-release
#   scripts/chaos.sh --seed N                          reproduce a run
#   scripts/chaos.sh --resume --out DIR                go on with a stopped run
#
# Uses the Garage of the test command when COVE_TEST_S3_* is set; otherwise
# starts one in $COVE_CHAOS_GARAGE (default /tmp/cove-chaos-garage) and
# stops it afterwards. Needs root and /dev/fuse (FUSE mode). Any argument is
# passed to `cove-chaos run`; the default output is target/chaos.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# The same targets as the test command's `cargo test --workspace --release`,
# so after it this builds nothing: a narrower package set unifies features
# differently and would rebuild cove-sync and everything on it.
cargo build --release --workspace --all-targets

if [[ -z "${COVE_TEST_S3_ENDPOINT:-}" ]]; then
  dir=${COVE_CHAOS_GARAGE:-/tmp/cove-chaos-garage}
  bash scripts/garage-up.sh "$dir"
  trap 'bash scripts/garage-down.sh "$dir" || true' EXIT
  # shellcheck source=/dev/null
  source "$dir/env"
  export COVE_TEST_S3_ENDPOINT COVE_TEST_S3_REGION COVE_TEST_S3_BUCKET \
    COVE_TEST_S3_ACCESS_KEY COVE_TEST_S3_SECRET_KEY
fi

args=("$@")
if [[ " $* " != *" --out "* ]]; then
  args+=(--out target/chaos)
fi
target/release/cove-chaos run "${args[@]}"
