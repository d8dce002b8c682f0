#!/usr/bin/env bash
# Kernel-side cost per request of one workload: CPU time, context switches, page faults
# and the syscalls the hand-off makes, counted by `perf stat` while wrk drives the server.
#
#   benches/tools/per-request.sh BINARY w1|w3|w4|w5|w6 [SECONDS]
#
# BINARY serves the bench contract (../shared/bench/CONTRACT.md) on $PORT: our
# target/release/examples/bench_server, or a peer such as
# ../shared/bench/peers-rs/target/release/hyper_async. The server runs on $SERVER_CPU
# (default 0) and wrk on $LOAD_CPU (default 1), as in compare.sh. Counting starts one
# second into the load and lasts SECONDS (default 4); the per-request figures divide by
# wrk's overall req/s times that window, so they are estimates, good for comparing two
# binaries in alternating runs, not for quoting alone. Traffic goes to 127.0.0.1 only.
# Needs wrk and perf (linux-perf), and perf_event_paranoid <= 1 or root.
set -euo pipefail

BIN=${1:?usage: per-request.sh BINARY w1|w3|w4|w5|w6 [SECONDS]}
WORKLOAD=${2:?usage: per-request.sh BINARY w1|w3|w4|w5|w6 [SECONDS]}
SECS=${3:-4}
PORT=${PORT:-18976}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_DIR=${BENCH_DIR:-$(cd "$HERE/../../../shared/bench" 2>/dev/null && pwd || true)}

for tool in wrk perf curl taskset; do
    command -v "$tool" >/dev/null || { echo "per-request.sh: $tool not found" >&2; exit 2; }
done

BASE="http://127.0.0.1:$PORT"
SCRIPT=()
case $WORKLOAD in
    w1) URL="$BASE/hello"; CONNS=64 ;;
    w6) URL="$BASE/hello"; CONNS=1 ;;
    w3) URL="$BASE/sleep?ms=50"; CONNS=256 ;;
    w5) URL="$BASE/download?bytes=16777216"; CONNS=8 ;;
    w4)
        URL="$BASE/upload"; CONNS=16
        [ -f "$BENCH_DIR/lua/upload.lua" ] || { echo "per-request.sh: set BENCH_DIR to the bench harness (lua/upload.lua)" >&2; exit 2; }
        SCRIPT=(-s "$BENCH_DIR/lua/upload.lua") ;;
    *) echo "per-request.sh: unknown workload $WORKLOAD" >&2; exit 2 ;;
esac

OUT=$(mktemp -d)
# shellcheck source=server.sh
. "$HERE/server.sh"
start_server per-request.sh 10 taskset -c "$SERVER_CPU" "$BIN"

BENCH_DIR=$BENCH_DIR taskset -c "$LOAD_CPU" \
    wrk -t1 -c"$CONNS" -d"$((SECS + 2))s" --latency "${SCRIPT[@]}" "$URL" >"$OUT/wrk.log" 2>&1 &
WRK=$!
sleep 1
perf stat -x, -o "$OUT/perf.csv" -p "$PID" \
    -e task-clock,context-switches,page-faults,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_write,syscalls:sys_enter_writev \
    -- sleep "$SECS"
wait "$WRK"
WRK=

RPS=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.log")
[ -n "$RPS" ] || { echo "per-request.sh: wrk failed" >&2; cat "$OUT/wrk.log" >&2; exit 1; }
awk -F, -v rps="$RPS" -v secs="$SECS" '
    /^#/ || NF < 3 { next }
    { n = rps * secs; name = $3; sub("syscalls:sys_enter_", "", name)
      if (name == "task-clock") printf "cpu_us/req=%.1f ", $1 * 1000 / n
      else printf "%s/req=%.3f ", name, $1 / n }
    END { printf "req/s=%s ", rps }' "$OUT/perf.csv"
awk '/ 50%/ {p50 = $2} / 99%/ {p99 = $2} END {printf "p50=%s p99=%s ", p50, p99}' "$OUT/wrk.log"
awk '/VmHWM/ {printf "peak_rss_kib=%s\n", $2}' "/proc/$PID/status"
