#!/usr/bin/env bash
# Install everything the Cove test suite needs on a Debian machine (run as root).
# Idempotent: every step checks first and only acts when something is missing.
set -euo pipefail

GARAGE_VERSION=2.5.0
# git, tar and a font (the chaos report's plot) for the chaos harness
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config rclone s3fs vim-nox bsdutils procps git tar fonts-dejavu-core)
export PATH="$HOME/.cargo/bin:$PATH"

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

# 4. Garage (S3 server used by the tests), built from crates.io
if garage --version 2>/dev/null | grep -Eq "(^|[^0-9.])${GARAGE_VERSION//./\\.}([^0-9]|$)"; then
  step "garage: $(garage --version | head -n1) already installed"
else
  step "garage: installing $GARAGE_VERSION with cargo install (slow: ~15-30 min on 2 cores)"
  cargo install garage --version "$GARAGE_VERSION" --locked
  step "garage: $(garage --version | head -n1)"
fi
step "done"
