# Sourced by the scripts in this folder: runs a bench contract server in the background
# for the length of the script. The caller sets PORT and OUT (a scratch directory, removed
# on exit) first; wrk, if the caller starts one, goes in WRK so that an early exit stops it.

# start_server NAME READY_SECONDS COMMAND...: starts COMMAND with PORT in its environment
# and returns once it answers GET /hello, or exits with its log.
start_server() {
    local name=$1 ready=$2
    shift 2
    PORT=$PORT "$@" >"$OUT/server.log" 2>&1 &
    PID=$!
    WRK=
    trap stop_server EXIT
    local deadline=$((SECONDS + ready))
    until curl -s -o /dev/null "http://127.0.0.1:$PORT/hello"; do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "$name: the server exited" >&2
            cat "$OUT/server.log" >&2
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$name: no answer on port $PORT within ${ready}s" >&2
            exit 1
        fi
        sleep 0.1
    done
}

stop_server() {
    # wrk stops by itself, but not before its duration when the script fails early.
    [ -z "${WRK:-}" ] || kill "$WRK" 2>/dev/null || true
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$OUT"
}
