#!/usr/bin/env bash
# The quick tier (DEVELOPMENT.md): what needs neither root, FUSE nor Garage.
# About a minute once built (2 cores); run it before every commit. The full tier is
# scripts/test.sh (as root, with Garage, Chromium and the chaos harness).
#
#   scripts/check.sh           fmt, clippy, unit tests, the integration tests
#                              below, and the UI's vitest if node_modules exists
#
# Debug builds in target/, like a plain `cargo test`. The integration tests
# that need root and /dev/fuse (sync-sidecar's fuse_mount, the controller's
# FUSE cases, the chaos harness's controller mode and resume) or Garage
# (every S3 case) are left to scripts/test.sh: CI and COVE_TEST_S3_* are
# unset here, so the tests that look for them skip their S3 cases instead
# of using, or under CI demanding, a Garage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
unset CI COVE_TEST_S3_ENDPOINT COVE_TEST_S3_REGION COVE_TEST_S3_BUCKET \
  COVE_TEST_S3_ACCESS_KEY COVE_TEST_S3_SECRET_KEY

step() { printf '\n==> [check] %s\n' "$*"; }
t0=$SECONDS

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Every binary first: cove-pty's tests start cove-sync, the controller's
# start all three, from the same target directory. One package set for
# every command, so features unify the same way and nothing is rebuilt.
step "cargo build --workspace --bins"
cargo build --workspace --bins

step "unit tests: cargo test --workspace --lib --bins"
cargo test --workspace --lib --bins

# Directory stores, watch mode, real processes, PTYs and WebSockets; no
# mount. The controller's FUSE cases are skipped by name (as root they
# would mount).
step "integration tests without root, FUSE or Garage"
cargo test --workspace \
  --test journal --test workspace --test store_conformance \
  --test terminals --test files_auth --test worker
cargo test --workspace --test local_mode -- --skip fuse

if [[ -d frontend/node_modules ]]; then
  step "frontend: vitest"
  (cd frontend && npm test --silent)
else
  step "frontend: no node_modules, vitest skipped (cd frontend && npm ci)"
fi

step "passed in $((SECONDS - t0)) s"
