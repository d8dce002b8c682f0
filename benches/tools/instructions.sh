#!/usr/bin/env bash
# User-space instructions per `/hello` request, counted by callgrind. Unlike req/s, this
# repeats to within a percent on a noisy machine, so it shows what a change to the
# request path costs or saves.
#
#   benches/tools/instructions.sh BINARY [REQUESTS] [CALLGRIND_OUT]
#
# BINARY serves the bench contract on $PORT (default 18991). It runs under
# `valgrind --tool=callgrind`, gets REQUESTS (default 20000) keep-alive GETs from
# `ab -k -c 32`, and is stopped with SIGTERM; the total, start-up included, is divided by
# REQUESTS. Keep CALLGRIND_OUT to look at it with `callgrind_annotate`. Traffic goes to
# 127.0.0.1 only. Needs valgrind and ab (apache2-utils).
set -euo pipefail

BIN=${1:?usage: instructions.sh BINARY [REQUESTS] [CALLGRIND_OUT]}
N=${2:-20000}
PORT=${PORT:-18991}
KEEP=${3:-}

for tool in valgrind ab curl; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool not found" >&2; exit 2; }
done

OUT=$(mktemp -d)
CG=${KEEP:-$OUT/callgrind.out}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=server.sh
. "$HERE/server.sh"
# Start-up under valgrind is slow.
start_server instructions.sh 30 valgrind --tool=callgrind --callgrind-out-file="$CG" "$BIN"

ab -k -n "$N" -c 32 "http://127.0.0.1:$PORT/hello" >"$OUT/ab.log" 2>&1
FAILED=$(awk '/^Failed requests/ {print $3}' "$OUT/ab.log")
[ "$FAILED" = 0 ] || { echo "instructions.sh: ab reported failures" >&2; cat "$OUT/ab.log" >&2; exit 1; }

kill -TERM "$PID"
wait "$PID" 2>/dev/null || true
TOTAL=$(awk '/^(summary|totals):/ {print $2; exit}' "$CG")
echo "instructions=$TOTAL requests=$N per_request=$((TOTAL / N))"
