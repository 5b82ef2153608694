#!/usr/bin/env bash
# Install everything the Cove test suite needs on a Debian machine (run as root).
# Idempotent: every step checks first and only acts when something is missing.
set -euo pipefail

GARAGE_VERSION=2.5.0
# git, tar and a font (the chaos report's plot) for the chaos harness;
# chromium (/usr/bin/chromium) for the browser tests
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config rclone s3fs vim-nox bsdutils procps git tar fonts-dejavu-core chromium)
# The UI's minimum Node.js (frontend/package.json "engines")
NODE_MIN=20.19
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
source "$ROOT/scripts/lib/frontend.sh"

step() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (apt-get, /dev/fuse, FUSE mounts)"

# 1. apt packages (apt-get update only when something is missing)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# a C toolchain is needed to link Rust and build garage's bundled sqlite/libsodium
command -v cc >/dev/null || { APT_PACKAGES+=(build-essential); missing+=(build-essential); }
# Node.js builds the UI; a node already on PATH (NodeSource, nvm...) is kept
command -v node >/dev/null || { APT_PACKAGES+=(nodejs npm); missing+=(nodejs npm); }
if ((${#missing[@]})); then
  step "apt: missing ${missing[*]}; running apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  step "apt: installing ${APT_PACKAGES[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}"
else
  step "apt: ${APT_PACKAGES[*]} already installed"
fi

# 2. /dev/fuse
if [[ -c /dev/fuse ]]; then
  step "/dev/fuse present"
else
  step "/dev/fuse missing; loading module / creating node"
  modprobe fuse 2>/dev/null || true
  [[ -c /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229 || die "cannot create /dev/fuse (container without FUSE access?)"
fi

# 3. Rust toolchain (must be preinstalled: rustup's servers are not crates.io)
command -v cargo >/dev/null || die "cargo not found on PATH (install a Rust toolchain >= 1.85 first)"
step "rust: $(cargo --version)"
for c in rustfmt clippy; do
  if cargo "${c#rust}" --version >/dev/null 2>&1; then
    step "rust: component $c installed"
  else
    step "rust: adding component $c"
    rustup component add "$c"
  fi
done

# 4. Node.js (checked, not replaced) and the UI's npm dependencies
node_version=$(node --version 2>/dev/null) || die "node not found on PATH after installing nodejs"
command -v npm >/dev/null || die "npm not found on PATH (node $node_version came without it)"
if printf '%s\n' "$NODE_MIN" "${node_version#v}" | sort -V -C; then
  step "node: $node_version"
else
  step "WARNING: node $node_version is older than $NODE_MIN, which the UI needs (install a newer Node.js)"
fi
if frontend_needs_npm_ci "$ROOT/frontend"; then
  step "npm: installing the UI's dependencies (npm ci in frontend/)"
  (cd "$ROOT/frontend" && npm ci --no-audit --no-fund --loglevel=error)
elif [[ -f $ROOT/frontend/package-lock.json ]]; then
  step "npm: frontend/node_modules up to date"
else
  step "npm: no frontend/package-lock.json yet; nothing to install"
fi

# 5. Garage (S3 server used by the tests), built from crates.io
if garage --version 2>/dev/null | grep -Eq "(^|[^0-9.])${GARAGE_VERSION//./\\.}([^0-9]|$)"; then
  step "garage: $(garage --version | head -n1) already installed"
else
  step "garage: installing $GARAGE_VERSION with cargo install (slow: ~15-30 min on 2 cores)"
  cargo install garage --version "$GARAGE_VERSION" --locked
  step "garage: $(garage --version | head -n1)"
fi
step "done"
