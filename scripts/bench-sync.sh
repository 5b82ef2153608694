#!/usr/bin/env bash
# Benchmark cove-sync side by side with a plain directory, rclone mount and s3fs,
# all against one throwaway loopback Garage S3 server that this script starts.
#
#   scripts/bench-sync.sh                      full run (~20,000-file node_modules tree)
#   BENCH_QUICK=1 scripts/bench-sync.sh        small generated tree, to test the script
#   BENCH_ANCHORS=0 scripts/bench-sync.sh      Cove and the plain directory only
#
# It measures:
#   1. small-file workload (tar xf, lstat all, read all) on a plain dir, Cove FUSE with and
#      without kernel passthrough, rclone mount (--vfs-cache-mode full) and s3fs, plus the
#      time from the start of extraction until everything is durable in the store;
#   2. cold hydration: a fresh cove-sync on an empty cache until /readyz, vs the first
#      full read through a fresh rclone mount with an empty VFS cache;
#   3. save-to-durable latency: write+POST /flush and write+fsync, p50/p99/max;
#   4. the sidecar's RSS with the project hydrated.
# and prints a markdown report, also written to $BENCH_OUT.
#
# Environment:
#   BENCH_OUT            report file (default /tmp/cove-bench.md)
#   BENCH_QUICK=1        2,000 generated 2 KB files instead of node_modules
#   BENCH_ANCHORS=0      skip rclone and s3fs
#   BENCH_CACHE          where the reference tree is built once (default /tmp/cove-bench-cache)
#   BENCH_TIMEOUT        seconds each target (and rclone's cold read) may take (default 900)
#   BENCH_SAVES          save iterations for the latency test (default 200)
#   BENCH_KEEP=1         keep the work directory (logs, caches) after the run
#   COVE_SYNC_BIN        cove-sync binary (default target/release/cove-sync; not built here)
#   COVE_GARAGE_S3_PORT  Garage S3 port (default 3920; RPC +1, admin +3)
#   BENCH_PORT_BASE      first port for the control APIs and rclone rc (default 3930; uses +0..+12)
#
# Everything listens on 127.0.0.1 only. On exit (also on error or Ctrl-C) it stops every
# process it started, unmounts every mount it made and stops its Garage.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

BENCH_OUT=${BENCH_OUT:-/tmp/cove-bench.md}
BENCH_QUICK=${BENCH_QUICK:-0}
BENCH_ANCHORS=${BENCH_ANCHORS:-1}
BENCH_CACHE=${BENCH_CACHE:-/tmp/cove-bench-cache}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-900}
BENCH_SAVES=${BENCH_SAVES:-200}
BENCH_KEEP=${BENCH_KEEP:-0}
COVE_SYNC_BIN=${COVE_SYNC_BIN:-$REPO/target/release/cove-sync}
export COVE_GARAGE_S3_PORT=${COVE_GARAGE_S3_PORT:-3920}
PORT_BASE=${BENCH_PORT_BASE:-3930}
NM_SCRIPT=$REPO/../shared/bench/make-node-modules.sh

say() { printf '\n==> [bench] %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\n==> [bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight
[[ -x $COVE_SYNC_BIN ]] || die "$COVE_SYNC_BIN not found: build it first (cargo build --release -p cove-sync)"
for t in python3 curl tar fusermount3 mountpoint timeout; do
  command -v "$t" >/dev/null || die "$t not found"
done
if [[ $BENCH_ANCHORS == 1 ]]; then
  command -v rclone >/dev/null || die "rclone not found (apt-get install rclone, or BENCH_ANCHORS=0)"
  command -v s3fs >/dev/null || die "s3fs not found (apt-get install s3fs, or BENCH_ANCHORS=0)"
fi
[[ -w /dev/fuse ]] || die "/dev/fuse is not usable"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for ((p = PORT_BASE; p <= PORT_BASE + 12; p++)); do
  ! port_open "$p" || die "127.0.0.1:$p is in use; set BENCH_PORT_BASE"
done

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/cove-bench.XXXXXX)
RUN_ID=$(date +%Y%m%d%H%M%S)-$$
GARAGE_DIR=$WORK/garage
PIDS=()   # every background process we started
MOUNTS=() # every mount point we used
GARAGE_STARTED=0

# ---------------------------------------------------------------- cleanup
alive() { # running (not a zombie)
  local s
  s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $s && $s != Z ]]
}
# stop_pid PID TIMEOUT: SIGTERM, wait, SIGKILL; returns the exit status
stop_pid() {
  local pid=$1 limit=${2:-30} i rc=0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < limit * 10; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      info "pid $pid still running after ${limit}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}
unmount() {
  local m=$1
  mountpoint -q "$m" 2>/dev/null || return 0
  fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid m left=0
  set +e
  trap - EXIT INT TERM
  say "cleaning up"
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    if alive "$pid"; then
      info "stopping pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-60))"
      stop_pid "$pid" 60
    fi
  done
  for m in "${MOUNTS[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      info "unmounting $m"
      unmount "$m"
    fi
  done
  if ((GARAGE_STARTED)); then bash "$REPO/scripts/garage-down.sh" "$GARAGE_DIR"; fi
  for m in "${MOUNTS[@]}"; do mountpoint -q "$m" 2>/dev/null && left=1; done
  if ((left)); then
    info "a mount under $WORK is still there; not deleting $WORK"
  elif [[ $BENCH_KEEP == 1 ]]; then
    info "keeping $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
# Long foreground steps run as a waited-for background child, so that a signal to this
# script is handled at once (bash runs traps only between commands, but it interrupts wait).
FG_PID=
fgrun() {
  local rc=0
  "$@" &
  FG_PID=$!
  wait "$FG_PID" || rc=$?
  FG_PID=
  return "$rc"
}
capture() { # capture VAR CMD...: fgrun CMD, its stdout into VAR
  local __var=$1 rc=0
  shift
  fgrun "$@" >"$WORK/fg.out" || rc=$?
  printf -v "$__var" '%s' "$(<"$WORK/fg.out")"
  return "$rc"
}
on_signal() {
  if [[ -n $FG_PID ]]; then kill -TERM "$FG_PID" 2>/dev/null || true; fi
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# ---------------------------------------------------------------- helpers
now() { echo "$EPOCHREALTIME"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
isnum() { [[ ${1:-} =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
f2() { if isnum "${1:-}"; then awk -v a="$1" 'BEGIN { printf "%.2f", a }'; else printf '%s' "${1:-–}"; fi; }
ratio() { # ratio A B -> A/B as "1.23×", or – if either is missing
  if isnum "${1:-}" && isnum "${2:-}" && awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'
  else printf '–'; fi
}
mb() { if isnum "${1:-}"; then awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; else printf '–'; fi; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo "–"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo "–"; } # peak RSS
cpu_s() { python3 "$PY" cpu "$1" 2>/dev/null || echo "–"; }
wait_mounted() { # wait_mounted DIR PID SECONDS
  local i
  for ((i = 0; i < $3 * 20; i++)); do
    mountpoint -q "$1" && return 0
    alive "$2" || return 1
    sleep 0.05
  done
  return 1
}

declare -A R # results: R[target.field]

# ---------------------------------------------------------------- python helper
PY=$WORK/bench.py
cat >"$PY" <<'PYEOF'
import http.client, json, math, os, sys, time

def walk(top):
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            yield os.path.join(d, n)

def cmd_gen(out, n, size):
    # deterministic small-file tree: n files of `size` bytes in 40 directories
    n, size = int(n), int(size)
    for i in range(n):
        d = os.path.join(out, "pkg%02d" % (i % 40), "lib")
        os.makedirs(d, exist_ok=True)
        line = ("file %d of the quick tree; " % i).encode()
        body = (line * (size // len(line) + 1))[:size]
        with open(os.path.join(d, "f%05d.js" % i), "wb") as f:
            f.write(body)

def cmd_stat(top):
    t0 = time.perf_counter()
    files = dirs = links = 0
    import stat as S
    for p in walk(top):
        m = os.lstat(p).st_mode
        if S.S_ISREG(m): files += 1
        elif S.S_ISDIR(m): dirs += 1
        elif S.S_ISLNK(m): links += 1
    print("%.3f %d %d %d" % (time.perf_counter() - t0, files, dirs, links))

def cmd_read(top):
    t0 = time.perf_counter()
    files = nbytes = 0
    import stat as S
    buf = bytearray(1 << 20)
    for p in walk(top):
        if not S.S_ISREG(os.lstat(p).st_mode):
            continue
        with open(p, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k: break
                nbytes += k
        files += 1
    print("%.3f %d %d" % (time.perf_counter() - t0, files, nbytes))

def rss_kb(pid):
    try:
        for line in open("/proc/%s/status" % pid):
            if line.startswith("VmRSS:"):
                return line.split()[1]
    except OSError:
        pass
    return "-"

def cmd_cpu(pid):
    # utime + stime of a process, seconds
    s = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()
    print("%.2f" % ((int(s[11]) + int(s[12])) / os.sysconf("SC_CLK_TCK")))

def cmd_waitready(port, t0, limit, pid):
    # poll GET /readyz every 10 ms; print "seconds-since-t0 rss_kb" at the first 200
    t0, limit = float(t0), float(limit)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
            c.request("GET", "/readyz")
            r = c.getresponse(); r.read(); c.close()
            if r.status == 200:
                t = time.time() - t0
                print("%.3f %s" % (t, rss_kb(pid)))
                return
        except OSError:
            pass
        if not os.path.exists("/proc/%s" % pid):
            sys.exit("process %s exited" % pid)
        if time.time() - t0 > limit:
            sys.exit("not ready after %.0f s" % limit)
        time.sleep(0.01)

def cmd_rcwait(port, limit):
    # poll rclone's vfs/stats until no upload is queued or in progress (twice in a row);
    # print the time (epoch seconds) of the first of those two polls
    limit = float(limit); t0 = time.time(); zero_at = None
    while time.time() - t0 < limit:
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
        c.request("POST", "/vfs/stats", "{}", {"Content-Type": "application/json"})
        d = json.loads(c.getresponse().read())["diskCache"]; c.close()
        busy = d["uploadsInProgress"] + d["uploadsQueued"]
        if busy == 0:
            if zero_at is not None:
                print("%.6f %d" % (zero_at, d.get("erroredFiles", 0)))
                return
            zero_at = time.time()
        else:
            zero_at = None
        time.sleep(0.25)
    sys.exit("uploads still queued after %.0f s" % limit)

def pct(xs, p):
    return xs[max(0, math.ceil(p * len(xs)) - 1)]

def cmd_saves(mnt, port, n, mode, dump):
    # mode: flush = write+close then POST /flush {"paths":[file]}; fsync = write+fsync+close
    rel = "cove-bench-save.txt"
    path = os.path.join(mnt, rel)
    n = int(n)
    conn = http.client.HTTPConnection("127.0.0.1", int(port)) if mode == "flush" else None
    body = json.dumps({"paths": [rel]})
    lat = []
    for i in range(n + 5):  # 5 warm-up rounds, not counted
        data = ("save %d from the benchmark\n" % i).encode() * 8
        t0 = time.perf_counter()
        if mode == "flush":
            with open(path, "wb") as f:
                f.write(data)
            conn.request("POST", "/flush", body, {"Content-Type": "application/json"})
            r = conn.getresponse(); out = r.read()
            if r.status != 200 or not json.loads(out).get("durable"):
                sys.exit("flush failed: %d %r" % (r.status, out[:200]))
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data); os.fsync(fd); os.close(fd)
        if i >= 5:
            lat.append(time.perf_counter() - t0)
    with open(dump, "w") as f:
        f.writelines("%d %.3f\n" % (i, s * 1000) for i, s in enumerate(lat))
    slow = ["#%d: %.0f ms" % (i, s * 1000) for i, s in enumerate(lat) if s > 0.1]
    lat.sort()
    ms = lambda s: "%.2f" % (s * 1000)
    print(ms(pct(lat, 0.5)), ms(pct(lat, 0.99)), ms(lat[-1]), len(lat), ", ".join(slow[:5]) or "none")

cmds = {"gen": cmd_gen, "stat": cmd_stat, "read": cmd_read, "cpu": cmd_cpu,
        "waitready": cmd_waitready, "rcwait": cmd_rcwait, "saves": cmd_saves}
cmds[sys.argv[1]](*sys.argv[2:])
PYEOF

# ---------------------------------------------------------------- the tree
if [[ $BENCH_QUICK == 1 ]]; then
  TREE_NAME="quick tree (2,000 generated files of 2 KB)"
  TAR=$BENCH_CACHE/quick/tree.tar
  if [[ ! -s $TAR ]]; then
    say "generating the quick tree in $BENCH_CACHE/quick"
    rm -rf "$BENCH_CACHE/quick" && mkdir -p "$BENCH_CACHE/quick/src"
    python3 "$PY" gen "$BENCH_CACHE/quick/src" 2000 2048
    (cd "$BENCH_CACHE/quick/src" && tar cf "$TAR.tmp" pkg*) && mv "$TAR.tmp" "$TAR"
  fi
else
  TREE_NAME="node_modules reference tree (shared/bench/make-node-modules.sh)"
  TAR=$BENCH_CACHE/nm/node-modules.tar
  if [[ ! -s $TAR ]]; then
    [[ -f $NM_SCRIPT ]] || die "$NM_SCRIPT not found"
    say "building the reference tree once with $NM_SCRIPT (npm ci) into $BENCH_CACHE/nm"
    rm -rf "$BENCH_CACHE/nm.tmp"
    mkdir -p "$BENCH_CACHE"
    fgrun bash "$NM_SCRIPT" "$BENCH_CACHE/nm.tmp"
    rm -rf "$BENCH_CACHE/nm" && mv "$BENCH_CACHE/nm.tmp" "$BENCH_CACHE/nm"
  fi
fi
info "tree: $TAR ($(du -h "$TAR" | cut -f1), $(tar tf "$TAR" | wc -l) entries)"

# A private copy of the binary, so a rebuild in the tree during the run changes nothing.
BIN=$WORK/cove-sync
cp "$COVE_SYNC_BIN" "$BIN"
BIN_INFO="$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?'), built $(date -u -r "$COVE_SYNC_BIN" '+%F %T UTC')"

# ---------------------------------------------------------------- garage
say "starting Garage on 127.0.0.1:$COVE_GARAGE_S3_PORT (state in $GARAGE_DIR)"
GARAGE_STARTED=1
bash "$REPO/scripts/garage-up.sh" "$GARAGE_DIR"
# shellcheck source=/dev/null
source "$GARAGE_DIR/env"
GARAGE_PID=$(cat "$GARAGE_DIR/garage.pid")
S3=$COVE_TEST_S3_ENDPOINT
BUCKET=$COVE_TEST_S3_BUCKET
PREFIX=bench-$RUN_ID
# one store per Cove target: chunk blobs are shared by all projects of a store, and the
# second run must upload its own
STORE_PT=s3://$BUCKET/$PREFIX/cove-pt
STORE_NOPT=s3://$BUCKET/$PREFIX/cove-nopt
cove_env=(env NO_COLOR=1 COVE_S3_ENDPOINT="$S3" COVE_S3_REGION="$COVE_TEST_S3_REGION"
  AWS_ACCESS_KEY_ID="$COVE_TEST_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$COVE_TEST_S3_SECRET_KEY")
rclone_remote() { # the bucket path $1 as an on-the-fly rclone remote
  printf ":s3,provider=Other,endpoint='%s',access_key_id=%s,secret_access_key=%s,region=%s,force_path_style=true:%s/%s" \
    "$S3" "$COVE_TEST_S3_ACCESS_KEY" "$COVE_TEST_S3_SECRET_KEY" "$COVE_TEST_S3_REGION" "$BUCKET" "$1"
}
rcl() { env -u AWS_CA_BUNDLE RCLONE_CONFIG=/dev/null rclone "$@"; }
object_count() { # objects under bucket path $1
  rcl size "$(rclone_remote "$1")" --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])' 2>/dev/null || echo 0
}

# ---------------------------------------------------------------- the workload
# extract NAME DIR LIMIT: tar xf into DIR; sets R[NAME.extract] and R[NAME.t0]
extract() {
  local name=$1 dir=$2 limit=$3 t0 t1 rc=0 nerr
  sync -f "$WORK" # write back what the previous target left dirty, so it is not billed to this one
  say "$name: tar xf $(basename "$TAR") into $dir"
  t0=$(now)
  fgrun timeout "$limit" tar xf "$TAR" -C "$dir" 2>"$WORK/$name.tar.err" || rc=$?
  t1=$(now)
  R[$name.t0]=$t0
  if ((rc == 124)); then
    R[$name.extract]="did not finish in ${limit} s"
    info "${R[$name.extract]}"
    return 1
  fi
  R[$name.extract]=$(sub "$t0" "$t1")
  if ((rc != 0)); then
    nerr=$(grep -c . "$WORK/$name.tar.err" || true)
    R[$name.note]+="tar exited $rc with $((nerr - 1)) errors (e.g. \"$(head -1 "$WORK/$name.tar.err" | cut -c1-110)\"). "
    info "tar exited $rc: $(head -1 "$WORK/$name.tar.err")"
  fi
  info "extract: ${R[$name.extract]} s"
}
# scan NAME DIR LIMIT: stat all, then read all; sets R[NAME.stat/read/total/files/bytes]
scan() {
  local name=$1 dir=$2 limit=$3 out secs files dirs links bytes
  say "$name: lstat everything"
  if ! capture out timeout "$limit" python3 "$PY" stat "$dir"; then
    R[$name.stat]="did not finish in ${limit} s"
    info "${R[$name.stat]}"
    return 1
  fi
  read -r secs files dirs links <<<"$out"
  R[$name.stat]=$secs
  info "stat: $secs s ($files files, $dirs dirs, $links symlinks)"
  say "$name: read every file"
  if ! capture out timeout "$limit" python3 "$PY" read "$dir"; then
    R[$name.read]="did not finish in ${limit} s"
    info "${R[$name.read]}"
    return 1
  fi
  read -r secs files bytes <<<"$out"
  R[$name.read]=$secs
  R[$name.files]=$files
  R[$name.bytes]=$bytes
  R[$name.total]=$(awk -v a="${R[$name.extract]}" -v b="${R[$name.stat]}" -v c="$secs" 'BEGIN { printf "%.3f", a + b + c }')
  info "read: $secs s ($files files, $bytes bytes); foreground total ${R[$name.total]} s"
  if [[ $name != raw && -n ${R[raw.files]:-} ]] &&
    [[ $files != "${R[raw.files]}" || $bytes != "${R[raw.bytes]}" ]]; then
    R[$name.note]+="read back $files files / $bytes bytes, expected ${R[raw.files]} / ${R[raw.bytes]}. "
    info "MISMATCH: expected ${R[raw.files]} files, ${R[raw.bytes]} bytes"
  fi
}
remaining() { # seconds left before deadline $1 (at least 1)
  awk -v d="$1" -v n="$(now)" 'BEGIN { r = int(d - n); print (r < 1 ? 1 : r) }'
}

# ---------------------------------------------------------------- cove-sync
# cove_start NAME STORE PROJECT PORT [extra args]: start serve, wait for readyz and the mount
cove_start() {
  local name=$1 store=$2 project=$3 port=$4 t0 out
  shift 4
  mkdir -p "$WORK/$name/mnt" "$WORK/$name/cache"
  MOUNTS+=("$WORK/$name/mnt")
  say "$name: cove-sync --store $store serve --project $project --api 127.0.0.1:$port $*"
  t0=$(now)
  "${cove_env[@]}" "$BIN" --store "$store" serve --project "$project" \
    --workspace "$WORK/$name/mnt" --cache "$WORK/$name/cache" --mode fuse \
    --api "127.0.0.1:$port" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  R[$name.pid]=$pid
  if ! capture out python3 "$PY" waitready "$port" "$t0" "$BENCH_TIMEOUT" "$pid"; then
    tail -20 "$WORK/$name.log" >&2
    die "$name: cove-sync did not become ready"
  fi
  read -r "R[$name.ready]" "R[$name.ready_rss]" <<<"$out"
  wait_mounted "$WORK/$name/mnt" "$pid" 60 || { tail -20 "$WORK/$name.log" >&2; die "$name: no FUSE mount"; }
  R[$name.mounted]=$(sub "$t0" "$(now)")
  R[$name.passthrough]=$(sed -n 's/.*FUSE session initialised.*passthrough=\([a-z]*\).*/\1/p' "$WORK/$name.log" | head -1)
  info "ready after ${R[$name.ready]} s (mount visible after ${R[$name.mounted]} s), RSS $(mb "${R[$name.ready_rss]}") MB, passthrough=${R[$name.passthrough]}"
}
cove_flush() { # cove_flush NAME PORT LIMIT: POST /flush; sets R[NAME.durable] from R[NAME.t0]
  local name=$1 port=$2 limit=$3 out
  say "$name: POST /flush (waits until everything is in the store)"
  if capture out curl -sS --max-time "$limit" -XPOST "http://127.0.0.1:$port/flush" && [[ $out == *'"durable":true'* ]]; then
    R[$name.durable]=$(sub "${R[$name.t0]}" "$(now)")
    info "durable ${R[$name.durable]} s after the extraction started ($out)"
  else
    R[$name.durable]="flush failed"
    R[$name.note]+="POST /flush failed: ${out:-timeout}. "
    info "flush failed: ${out:-timeout}"
  fi
}
metric() { # metric PORT NAME
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="cove_sync_$2" '$1 == n { print $2 }'
}
cove_details() { # cove_details NAME PORT: a line of metrics for the report
  local p=$2
  R[$1.details]="commits $(metric "$p" commits_total), ops $(metric "$p" ops_committed_total), segments $(mb "$(($(metric "$p" segment_bytes_total) / 1024))") MB, blobs $(mb "$(($(metric "$p" blob_bytes_total) / 1024))") MB, checkpoints $(metric "$p" checkpoints_total), commit failures $(metric "$p" commit_failures_total), read errors $(metric "$p" read_errors_total)"
}
cove_stop() { # cove_stop NAME: SIGTERM (final flush + checkpoint), wait for exit
  local name=$1 t0 rc=0
  say "$name: stopping cove-sync (SIGTERM; it flushes and unmounts)"
  t0=$(now)
  stop_pid "${R[$name.pid]}" 120 || rc=$?
  R[$name.stop]=$(sub "$t0" "$(now)")
  info "exited with status $rc after ${R[$name.stop]} s"
  ((rc == 0)) || R[$name.note]+="cove-sync exited with status $rc on SIGTERM. "
  unmount "$WORK/$name/mnt"
}

# ---------------------------------------------------------------- (a) the plain directory
mkdir -p "$WORK/raw"
extract raw "$WORK/raw" "$BENCH_TIMEOUT"
scan raw "$WORK/raw" "$BENCH_TIMEOUT"
R[raw.durable]="–"

# ---------------------------------------------------------------- (b) Cove, passthrough
run_cove() { # run_cove NAME STORE PROJECT PORT [serve args]
  local name=$1 store=$2 project=$3 port=$4 cpu0 gcpu0 deadline
  shift 4
  cove_start "$name" "$store" "$project" "$port" --create "$@"
  deadline=$(awk -v n="$(now)" -v l="$BENCH_TIMEOUT" 'BEGIN { printf "%.3f", n + l }')
  cpu0=$(cpu_s "${R[$name.pid]}")
  gcpu0=$(cpu_s "$GARAGE_PID")
  if extract "$name" "$WORK/$name/mnt" "$(remaining "$deadline")"; then
    cove_flush "$name" "$port" "$(remaining "$deadline")"
    scan "$name" "$WORK/$name/mnt" "$(remaining "$deadline")" || true
  fi
  R[$name.cpu]=$(awk -v a="$cpu0" -v b="$(cpu_s "${R[$name.pid]}")" 'BEGIN { printf "%.1f", b - a }')
  R[$name.gcpu]=$(awk -v a="$gcpu0" -v b="$(cpu_s "$GARAGE_PID")" 'BEGIN { printf "%.1f", b - a }')
  R[$name.rss]=$(rss_kb "${R[$name.pid]}")
  R[$name.hwm]=$(hwm_kb "${R[$name.pid]}")
  cove_details "$name" "$port"
  info "sidecar CPU ${R[$name.cpu]} s, garage CPU ${R[$name.gcpu]} s, RSS $(mb "${R[$name.rss]}") MB; ${R[$name.details]}"
}
run_cove cove "$STORE_PT" "bench-pt" "$PORT_BASE"
R[cove.label]="Cove FUSE, passthrough=${R[cove.passthrough]}"
cove_stop cove

# ---------------------------------------------------------------- (2) cold hydration
cove_start cold "$STORE_PT" "bench-pt" "$((PORT_BASE + 1))"
R[cold.files]=$(curl -s "http://127.0.0.1:$((PORT_BASE + 1))/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["files"])')
say "cold: first full read through the freshly hydrated mount"
capture out timeout "$BENCH_TIMEOUT" python3 "$PY" read "$WORK/cold/mnt"
read -r "R[cold.read]" "R[cold.read_files]" "R[cold.read_bytes]" <<<"$out"
info "read ${R[cold.read_files]} files, ${R[cold.read_bytes]} bytes in ${R[cold.read]} s"
[[ ${R[cold.read_files]} == "${R[raw.files]}" && ${R[cold.read_bytes]} == "${R[raw.bytes]}" ]] ||
  R[cold.note]+="hydrated tree reads back ${R[cold.read_files]} files / ${R[cold.read_bytes]} bytes, expected ${R[raw.files]} / ${R[raw.bytes]}. "
R[cold.rss_after_read]=$(rss_kb "${R[cold.pid]}")

say "checking the store: cove-sync export of bench-pt vs the plain directory"
mkdir -p "$WORK/export"
fgrun "${cove_env[@]}" "$BIN" --store "$STORE_PT" export --project bench-pt --out "$WORK/export" 2>"$WORK/export.log"
if diff -r --no-dereference "$WORK/raw" "$WORK/export" >"$WORK/export.diff" 2>&1; then
  R[export]="identical to the plain directory"
else
  R[export]="DIFFERS from the plain directory ($(wc -l <"$WORK/export.diff") diff lines, see below)"
fi
info "export: ${R[export]}"

# ---------------------------------------------------------------- (3) save latency
save_run() { # save_run KEY DIR PORT MODE
  local out
  say "save latency: $1 ($BENCH_SAVES rounds)"
  if capture out timeout "$BENCH_TIMEOUT" python3 "$PY" saves "$2" "$3" "$BENCH_SAVES" "$4" "$WORK/$1.samples"; then
    read -r "R[$1.p50]" "R[$1.p99]" "R[$1.max]" "R[$1.n]" "R[$1.slow]" <<<"$out"
    info "p50 ${R[$1.p50]} ms, p99 ${R[$1.p99]} ms, max ${R[$1.max]} ms; rounds over 100 ms: ${R[$1.slow]}"
  else
    R[$1.p50]="failed"
    info "failed"
  fi
}
save_run save_flush "$WORK/cold/mnt" "$((PORT_BASE + 1))" flush
save_run save_fsync "$WORK/cold/mnt" "$((PORT_BASE + 1))" fsync
save_run save_raw "$WORK/raw" 0 fsync
R[cold.rss_end]=$(rss_kb "${R[cold.pid]}")
R[cold.hwm]=$(hwm_kb "${R[cold.pid]}")
cove_details cold "$((PORT_BASE + 1))"
cove_stop cold

# ---------------------------------------------------------------- (c) Cove, no passthrough
run_cove nopt "$STORE_NOPT" "bench-nopt" "$((PORT_BASE + 2))" --no-passthrough
R[nopt.label]="Cove FUSE, --no-passthrough"
cove_stop nopt

# ---------------------------------------------------------------- (d) rclone, (e) s3fs
RC_PORT=$((PORT_BASE + 10))
rclone_start() { # rclone_start NAME BUCKETPATH RCPORT
  local name=$1 path=$2 port=$3
  mkdir -p "$WORK/$name/mnt" "$WORK/$name/vfscache"
  MOUNTS+=("$WORK/$name/mnt")
  say "$name: rclone mount :s3:$BUCKET/$path --vfs-cache-mode full (rc on 127.0.0.1:$port)"
  # not through rcl(): a backgrounded function would leave $! pointing at a subshell
  env -u AWS_CA_BUNDLE RCLONE_CONFIG=/dev/null rclone mount "$(rclone_remote "$path")" "$WORK/$name/mnt" --vfs-cache-mode full \
    --cache-dir "$WORK/$name/vfscache" --rc --rc-addr "127.0.0.1:$port" --rc-no-auth \
    --log-file "$WORK/$name.log" --log-level NOTICE &
  R[$name.pid]=$!
  PIDS+=("${R[$name.pid]}")
  wait_mounted "$WORK/$name/mnt" "${R[$name.pid]}" 60 || { tail "$WORK/$name.log" >&2; die "$name: rclone did not mount"; }
}
rclone_stop() {
  say "$1: stopping rclone"
  stop_pid "${R[$1.pid]}" 60 || true
  unmount "$WORK/$1/mnt"
}

if [[ $BENCH_ANCHORS == 1 ]]; then
  # (d) rclone
  name=rclone
  R[$name.label]="rclone mount, vfs-cache-mode full"
  rclone_start $name "$PREFIX/rclone" "$RC_PORT"
  deadline=$(awk -v n="$(now)" -v l="$BENCH_TIMEOUT" 'BEGIN { printf "%.3f", n + l }')
  cpu0=$(cpu_s "${R[$name.pid]}")
  gcpu0=$(cpu_s "$GARAGE_PID")
  if extract $name "$WORK/$name/mnt" "$(remaining "$deadline")"; then
    say "$name: waiting until rclone's upload queue is empty (vfs/stats), then counting objects"
    if capture out python3 "$PY" rcwait "$RC_PORT" "$(remaining "$deadline")"; then
      read -r t_done errored <<<"$out"
      n=$(object_count "$PREFIX/rclone")
      while ((n < ${R[raw.files]})) && [[ $(remaining "$deadline") -gt 1 ]]; do
        sleep 2
        n=$(object_count "$PREFIX/rclone")
        t_done=$(now)
      done
      if ((n >= ${R[raw.files]})); then
        R[$name.durable]=$(sub "${R[$name.t0]}" "$t_done")
        info "durable ${R[$name.durable]} s after the extraction started ($n objects)"
      else
        R[$name.durable]="did not finish in $BENCH_TIMEOUT s"
        R[$name.note]+="only $n objects in the bucket. "
      fi
      ((errored == 0)) || R[$name.note]+="vfs/stats: $errored errored files. "
    else
      R[$name.durable]="did not finish in $BENCH_TIMEOUT s"
    fi
    scan $name "$WORK/$name/mnt" "$(remaining "$deadline")" || true
  fi
  R[$name.cpu]=$(awk -v a="$cpu0" -v b="$(cpu_s "${R[$name.pid]}")" 'BEGIN { printf "%.1f", b - a }')
  R[$name.gcpu]=$(awk -v a="$gcpu0" -v b="$(cpu_s "$GARAGE_PID")" 'BEGIN { printf "%.1f", b - a }')
  R[$name.rss]=$(rss_kb "${R[$name.pid]}")
  rclone_stop $name

  # (2) rclone cold read: a fresh mount with an empty VFS cache on the prefix written above
  if isnum "${R[rclone.durable]:-}"; then
    name=rclcold
    rclone_start $name "$PREFIX/rclone" "$((RC_PORT + 1))"
    say "$name: first full read through a fresh rclone mount (empty VFS cache)"
    t0=$(now)
    if capture out timeout "$BENCH_TIMEOUT" python3 "$PY" read "$WORK/$name/mnt"; then
      read -r secs files bytes <<<"$out"
      R[$name.read]=$(sub "$t0" "$(now)")
      R[$name.files]=$files
      info "read $files files, $bytes bytes in ${R[$name.read]} s"
      ((files == ${R[raw.files]})) || R[$name.note]+="read $files files, expected ${R[raw.files]}. "
    else
      R[$name.read]="did not finish in $BENCH_TIMEOUT s"
    fi
    R[$name.rss]=$(rss_kb "${R[$name.pid]}")
    rclone_stop $name
  else
    R[rclcold.read]="skipped (rclone upload incomplete)"
  fi

  # (e) s3fs
  name=s3fs
  R[$name.label]="s3fs"
  mkdir -p "$WORK/$name/mnt"
  MOUNTS+=("$WORK/$name/mnt")
  (umask 077 && echo "$COVE_TEST_S3_ACCESS_KEY:$COVE_TEST_S3_SECRET_KEY" >"$WORK/s3fs.passwd")
  say "$name: s3fs $BUCKET:/$PREFIX/s3fs (url=$S3, path-style)"
  s3fs "$BUCKET:/$PREFIX/s3fs" "$WORK/$name/mnt" -f \
    -o "url=$S3,use_path_request_style,passwd_file=$WORK/s3fs.passwd,endpoint=$COVE_TEST_S3_REGION" \
    >"$WORK/$name.log" 2>&1 &
  R[$name.pid]=$!
  PIDS+=("${R[$name.pid]}")
  wait_mounted "$WORK/$name/mnt" "${R[$name.pid]}" 60 || { tail "$WORK/$name.log" >&2; die "s3fs did not mount"; }
  deadline=$(awk -v n="$(now)" -v l="$BENCH_TIMEOUT" 'BEGIN { printf "%.3f", n + l }')
  cpu0=$(cpu_s "${R[$name.pid]}")
  gcpu0=$(cpu_s "$GARAGE_PID")
  if extract $name "$WORK/$name/mnt" "$(remaining "$deadline")"; then
    say "$name: counting objects until all ${R[raw.files]} files are in the bucket"
    n=$(object_count "$PREFIX/s3fs")
    while ((n < ${R[raw.files]})) && [[ $(remaining "$deadline") -gt 1 ]]; do
      sleep 1
      n=$(object_count "$PREFIX/s3fs")
    done
    if ((n >= ${R[raw.files]})); then
      R[$name.durable]=$(sub "${R[$name.t0]}" "$(now)")
      info "durable ${R[$name.durable]} s after the extraction started ($n objects incl. symlinks)"
    else
      R[$name.durable]="did not finish in $BENCH_TIMEOUT s"
    fi
    scan $name "$WORK/$name/mnt" "$(remaining "$deadline")" || true
  else
    R[$name.durable]="did not finish in $BENCH_TIMEOUT s"
  fi
  R[$name.cpu]=$(awk -v a="$cpu0" -v b="$(cpu_s "${R[$name.pid]}")" 'BEGIN { printf "%.1f", b - a }')
  R[$name.gcpu]=$(awk -v a="$gcpu0" -v b="$(cpu_s "$GARAGE_PID")" 'BEGIN { printf "%.1f", b - a }')
  R[$name.rss]=$(rss_kb "${R[$name.pid]}")
  say "$name: unmounting"
  unmount "$WORK/$name/mnt"
  stop_pid "${R[$name.pid]}" 30 || true
fi

# ---------------------------------------------------------------- report
say "writing the report to $BENCH_OUT"
targets=(raw cove nopt)
if [[ $BENCH_ANCHORS == 1 ]]; then targets+=(rclone s3fs); fi
R[raw.label]="plain directory (baseline)"
{
  echo "# cove-sync benchmark ($(date -u '+%F %H:%M UTC'))"
  echo
  echo "- tree: $TREE_NAME: ${R[raw.files]} files, $(awk -v b="${R[raw.bytes]}" 'BEGIN { printf "%.1f", b / 1e6 }') MB, $(tar tf "$TAR" | wc -l) tar entries"
  echo "- cove-sync $BIN_INFO; store Garage $(garage --version 2>/dev/null | awk '{print $2}') on loopback (s3://$BUCKET/$PREFIX/...); kernel $(uname -r); $(nproc) cores"
  echo "- $( ((BENCH_ANCHORS == 1)) && echo "rclone $(rclone version 2>/dev/null | awk 'NR==1{print $2}'), s3fs $(s3fs --version 2>/dev/null | head -1 | sed 's/.*V\([0-9.]*\).*/\1/')" || echo "rclone/s3fs skipped (BENCH_ANCHORS=0)")"
  echo "- load average at the start: $LOAD0, at the end: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the machine skews the figures)"
  echo "- warm page cache, nothing dropped; \"durable\" = from the start of tar xf until everything is in the store (Cove: POST /flush returned; rclone: upload queue empty and all objects listed; s3fs: all objects listed); stat/read run after that"
  echo
  echo "## 1. Small-file workload: tar xf, lstat all, read all"
  echo
  echo "| target | extract s | stat s | read s | foreground total s | × plain dir | durable s | durable × Cove | daemon CPU s | Garage CPU s | daemon RSS MB |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for t in "${targets[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
      "${R[$t.label]:-$t}" "$(f2 "${R[$t.extract]:-}")" "$(f2 "${R[$t.stat]:-}")" "$(f2 "${R[$t.read]:-}")" \
      "$(f2 "${R[$t.total]:-}")" "$(ratio "${R[$t.total]:-}" "${R[raw.total]:-}")" \
      "$(f2 "${R[$t.durable]:-}")" "$(ratio "${R[$t.durable]:-}" "${R[cove.durable]:-}")" \
      "${R[$t.cpu]:-–}" "${R[$t.gcpu]:-–}" "$(mb "${R[$t.rss]:-}")"
  done
  echo
  echo "Per-phase ratios to the plain directory:"
  echo
  echo "| target | extract | stat | read |"
  echo "|---|---:|---:|---:|"
  for t in "${targets[@]}"; do
    [[ $t == raw ]] && continue
    printf '| %s | %s | %s | %s |\n' "${R[$t.label]:-$t}" "$(ratio "${R[$t.extract]:-}" "${R[raw.extract]}")" \
      "$(ratio "${R[$t.stat]:-}" "${R[raw.stat]}")" "$(ratio "${R[$t.read]:-}" "${R[raw.read]}")"
  done
  echo
  echo "## 2. Cold start: everything local from an empty cache"
  echo
  echo "| what | seconds | × Cove ready | RSS MB |"
  echo "|---|---:|---:|---:|"
  printf '| Cove: fresh cove-sync serve until /readyz 200 (%s entries) | %s | 1.00× | %s |\n' "${R[cold.files]}" "$(f2 "${R[cold.ready]}")" "$(mb "${R[cold.ready_rss]}")"
  printf '| Cove: until the FUSE mount is visible | %s | %s | |\n' "$(f2 "${R[cold.mounted]}")" "$(ratio "${R[cold.mounted]}" "${R[cold.ready]}")"
  cold_total=$(awk -v a="${R[cold.mounted]}" -v b="${R[cold.read]}" 'BEGIN { printf "%.3f", a + b }')
  printf '| Cove: ready + first full read through the mount (%s s) | %s | %s | %s |\n' "$(f2 "${R[cold.read]}")" "$(f2 "$cold_total")" "$(ratio "$cold_total" "${R[cold.ready]}")" "$(mb "${R[cold.rss_after_read]}")"
  if [[ $BENCH_ANCHORS == 1 ]]; then
    printf '| rclone: first full read through a fresh mount, empty VFS cache | %s | %s | %s |\n' "$(f2 "${R[rclcold.read]:-}")" "$(ratio "${R[rclcold.read]:-}" "${R[cold.ready]}")" "$(mb "${R[rclcold.rss]:-}")"
  fi
  echo
  echo "Store check: \`cove-sync export\` of the Cove project is ${R[export]}."
  echo
  echo "## 3. Save-to-durable latency (one small file, $BENCH_SAVES rounds, Cove mount over the hydrated project)"
  echo
  echo "| method | p50 ms | p99 ms | max ms |"
  echo "|---|---:|---:|---:|"
  printf '| Cove: write+close, then POST /flush {"paths":[file]} | %s | %s | %s |\n' "${R[save_flush.p50]}" "${R[save_flush.p99]:-–}" "${R[save_flush.max]:-–}"
  printf '| Cove: write+fsync+close (fsync waits for the store) | %s | %s | %s |\n' "${R[save_fsync.p50]}" "${R[save_fsync.p99]:-–}" "${R[save_fsync.max]:-–}"
  printf '| plain directory: write+fsync+close (local disk, for reference) | %s | %s | %s |\n' "${R[save_raw.p50]}" "${R[save_raw.p99]:-–}" "${R[save_raw.max]:-–}"
  echo
  for k in save_flush save_fsync; do
    if [[ ${R[$k.slow]:-none} != none ]]; then echo "Rounds over 100 ms ($k, in order): ${R[$k.slow]}."; fi
  done
  echo "The Cove rounds run back to back on one sidecar (the flush rounds first); it writes a checkpoint every 256 commits."
  echo
  echo "## 4. Sidecar memory (VmRSS)"
  echo
  echo "| sidecar state | RSS MB | peak so far (VmHWM) MB |"
  echo "|---|---:|---:|"
  printf '| after tar xf + flush + stat + read of the tree (passthrough run) | %s | %s |\n' "$(mb "${R[cove.rss]}")" "$(mb "${R[cove.hwm]}")"
  printf '| after tar xf + flush + stat + read of the tree (--no-passthrough run) | %s | %s |\n' "$(mb "${R[nopt.rss]:-}")" "$(mb "${R[nopt.hwm]:-}")"
  printf '| cold start, project hydrated (%s entries), at /readyz | %s | |\n' "${R[cold.files]}" "$(mb "${R[cold.ready_rss]}")"
  printf '| same sidecar after a full read | %s | |\n' "$(mb "${R[cold.rss_after_read]}")"
  printf '| same sidecar after %s flush saves + %s fsync saves (incl. a checkpoint) | %s | %s |\n' "$BENCH_SAVES" "$BENCH_SAVES" "$(mb "${R[cold.rss_end]}")" "$(mb "${R[cold.hwm]}")"
  echo
  echo "## Notes"
  echo
  for t in cove cold nopt; do
    printf -- '- %s: ready %s s after start; stop (SIGTERM: final flush, checkpoint, unmount) took %s s; %s\n' \
      "$t" "$(f2 "${R[$t.ready]}")" "$(f2 "${R[$t.stop]:-}")" "${R[$t.details]:-}"
  done
  for t in raw cove cold nopt rclone rclcold s3fs; do
    if [[ -n ${R[$t.note]:-} ]]; then printf -- '- %s: %s\n' "$t" "${R[$t.note]}"; fi
  done
  for t in cove cold nopt; do
    n=$(grep -cE ' (WARN|ERROR) ' "$WORK/$t.log" || true)
    if ((n > 0)); then
      printf -- '- %s: %s WARN/ERROR lines in the cove-sync log (digits shown as N):\n' "$t" "$n"
      grep -E ' (WARN|ERROR) ' "$WORK/$t.log" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//; s/[0-9]+/N/g' |
        sort | uniq -c | sort -rn | head -4 | cut -c1-160 | sed -E 's/^ *([0-9]+) (.*)/    - \1 × `\2`/' 
    fi
  done
  if [[ -s $WORK/export.diff ]]; then
    echo "- export diff (first lines):"
    head -5 "$WORK/export.diff" | sed 's/^/    /'
  fi
} >"$BENCH_OUT"
echo
cat "$BENCH_OUT"
say "done in ${SECONDS}s; report in $BENCH_OUT"
