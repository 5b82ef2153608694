#!/usr/bin/env bash
# Full Cove test run: deps, lint, a throwaway Garage S3 server, then the workspace tests.
#   COVE_TEST_DIR      Garage state dir (default /tmp/cove-test-garage)
#   COVE_GARAGE_S3_PORT  S3 port (default 3900)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

GARAGE_DIR=${COVE_TEST_DIR:-/tmp/cove-test-garage}
step() { printf '\n==> [test] %s\n' "$*"; }

# Hook for later suites (benchmark smoke, chaos profile). Runs after the
# workspace tests, with Garage up and COVE_TEST_S3_* exported.
run_extra_suites() {
  step "pjdfstest (POSIX suite) on a Cove FUSE mount"
  bash scripts/pjdfstest.sh
  step "chaos, CI profile: 100 kill cycles with store faults (docs/durability.md)"
  bash scripts/chaos.sh --profile ci --out target/chaos
}

step "installing dependencies"
bash scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

garage_was_running=0
if pid=$(cat "$GARAGE_DIR/garage.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
  garage_was_running=1
fi
stop_garage() {
  local rc=$?
  if ((garage_was_running)); then
    step "leaving pre-existing garage in $GARAGE_DIR running"
  else
    step "stopping garage"
    bash scripts/garage-down.sh "$GARAGE_DIR" || true
  fi
  if ((rc == 0)); then step "ALL PASSED"; else step "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap stop_garage EXIT

step "starting garage in $GARAGE_DIR"
bash scripts/garage-up.sh "$GARAGE_DIR"
# shellcheck source=/dev/null
source "$GARAGE_DIR/env"
export COVE_TEST_S3_ENDPOINT COVE_TEST_S3_REGION COVE_TEST_S3_BUCKET \
  COVE_TEST_S3_ACCESS_KEY COVE_TEST_S3_SECRET_KEY
step "S3 for tests: $COVE_TEST_S3_ENDPOINT bucket $COVE_TEST_S3_BUCKET (region $COVE_TEST_S3_REGION)"

step "cargo test --workspace --release -- --test-threads=2"
# A panic message names its file and line; a full backtrace per failure
# only pushes that message out of a truncated CI log.
RUST_BACKTRACE=0 cargo test --workspace --release -- --test-threads=2

# The browser IDE: unit tests, the production build the controller serves,
# then end to end in Debian's Chromium against a real Cove on loopback (it
# uses the release binaries the cargo tests just built).
step "frontend: vitest"
(cd frontend && npm test --silent)
step "frontend: build (tsc + vite)"
(cd frontend && npm run build --silent)
step "frontend: end to end in Chromium (playwright-core)"
(cd frontend && COVE_SCREENSHOTS="$PWD/../target/e2e-screenshots" npm run e2e --silent)

step "extra suites"
run_extra_suites
