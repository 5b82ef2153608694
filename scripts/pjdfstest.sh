#!/usr/bin/env bash
# Run pjdfstest (the Rust port of the POSIX file system test suite) against
# a Cove FUSE mount backed by a directory store, and print its summary.
#   scripts/pjdfstest.sh            (needs root, /dev/fuse, a built cove-sync)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
say() { printf '[pjdfstest] %s\n' "$*"; }

if ! command -v pjdfstest >/dev/null; then
  say "installing pjdfstest (cargo install pjdfstest --locked)"
  cargo install pjdfstest --version 0.2.2 --locked -q
fi
if ! id tests >/dev/null 2>&1; then
  say "creating the user 'tests' that pjdfstest switches to"
  echo 'tests:x:::pjdfstest:/:/usr/sbin/nologin' | newusers
fi
bin=target/release/cove-sync
[[ -x $bin ]] || cargo build --release -q -p cove-sync

work=$(mktemp -d /tmp/cove-pjdfstest.XXXXXX)
# The suite switches to unprivileged users: they must reach the mount.
chmod 0755 "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
say "mounting a fresh project at $work/ws"
"$bin" --store "file://$work/store" serve --project pjdfstest --create --mode fuse \
  --workspace "$work/ws" --cache "$work/cache" --api "127.0.0.1:$port" >"$work/sidecar.log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  umount -l "$work/ws" 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.1
done
mountpoint -q "$work/ws" || { say "mount did not come up"; cat "$work/sidecar.log"; exit 1; }
chmod 0777 "$work/ws"

say "running the suite"
set +e
(cd "$work/ws" && pjdfstest -c "$OLDPWD/scripts/pjdfstest.toml" -p "$work/ws") >"$work/result.txt" 2>&1
rc=$?
set -e
grep -E 'FAILED$' "$work/result.txt" || true
summary=$(grep '^Summary' "$work/result.txt" || echo "no summary")
say "$summary"
# The plain closing line our CI reads.
read -r failed passed < <(sed -E 's/Summary: ([0-9]+) failed, [0-9]+ skipped, ([0-9]+) passed.*/\1 \2/' <<<"$summary")
echo "pjdfstest: ${passed:-0} passed, ${failed:-1} failed"
exit "$rc"
