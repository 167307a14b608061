#!/usr/bin/env bash
# Demo: builds ekilibri, starts three local test backends and the balancer on
# 127.0.0.1:8080 (override with EKILIBRI_DEMO_LISTEN), and shows it working:
# rotation across backends, a large body, a backend dying and traffic moving
# to the others, and a graceful shutdown.
#
#   tools/demo.sh           # scripted tour, then stops everything
#   tools/demo.sh --serve   # same, then keeps serving until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN="${EKILIBRI_DEMO_LISTEN:-127.0.0.1:8080}"
SERVE=0
[ "${1:-}" = "--serve" ] && SERVE=1

# Build dependency: the etcd client (cluster mode) compiles etcd's protobuf
# files with protoc. Install it (and curl) from the distribution if missing.
need=()
command -v curl >/dev/null || need+=(curl)
command -v protoc >/dev/null || need+=(protobuf-compiler)
# etcd's .proto files import Google's well-known types (libprotobuf-dev).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ "${#need[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    if command -v apt-get >/dev/null; then
        echo "==> installing ${need[*]}"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "demo: please install ${need[*]} (protoc is needed to build the etcd client)"; exit 1
    fi
fi
echo "==> building (release)"
cargo build --release --bins --quiet
BIN=target/release
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

wait_line() { # file pattern
    for _ in $(seq 1 100); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "demo: timed out waiting for '$2' in $1"; cat "$1"; exit 1
}

PORTS=()
for i in 1 2 3; do
    "$BIN/ekilibri-backend" -p 0 >"$TMP/b$i.out" 2>&1 &
    PIDS+=($!)
    wait_line "$TMP/b$i.out" "listening on"
    PORTS+=("$(grep -o 'listening on [0-9.]*:[0-9]*' "$TMP/b$i.out" | sed 's/.*://')")
done
echo "==> backends on ports ${PORTS[*]}"

cat >"$TMP/ekilibri.toml" <<CFG
listen = "$LISTEN"
servers = ["127.0.0.1:${PORTS[0]}", "127.0.0.1:${PORTS[1]}", "127.0.0.1:${PORTS[2]}"]
strategy = "RoundRobin"
health_check_interval = 200
workers = 1
admin_listen = "127.0.0.1:0"
CFG
RUST_LOG=info "$BIN/ekilibri" -f "$TMP/ekilibri.toml" 2>"$TMP/ekilibri.log" &
EK=$!
PIDS+=($EK)
wait_line "$TMP/ekilibri.log" "listening on"
grep "listening on" "$TMP/ekilibri.log" | sed 's/^.*INFO [a-z:]*: /==> /'

URL="http://$LISTEN"
echo "==> six requests to $URL/ (round robin):"
for _ in 1 2 3 4 5 6; do printf '    %s' "$(curl -s "$URL/")"; echo; done
echo "==> 1 MiB response: $(curl -s "$URL/bytes/1048576" | wc -c) bytes"
echo "==> POST echo: $(curl -s -d 'hello through ekilibri' "$URL/echo")"
echo "==> killing the backend on port ${PORTS[1]}"
kill "${PIDS[1]}"
sleep 0.6
echo "==> six more requests (the dead backend is skipped):"
for _ in 1 2 3 4 5 6; do printf '    %s' "$(curl -s "$URL/")"; echo; done
grep -E "backend is down" "$TMP/ekilibri.log" | sed 's/^.*WARN [a-z:]*: /==> log: /' | head -1
ADMIN=$(grep -o 'at http://[0-9.:]*/' "$TMP/ekilibri.log" | head -1 | sed 's/^at //')
if [ -n "$ADMIN" ]; then
    echo "==> admin API at $ADMIN: backends and request counts"
    { curl -s "${ADMIN}servers" | grep -o '"address":"[^"]*"\|"health":"[a-z]*"' | paste - - | sed 's/^/    /'; } || true
    { curl -s "${ADMIN}metrics" | grep '^lb_requests_total' | sed 's/^/    /'; } || true
fi

if [ "$SERVE" = 1 ]; then
    echo "==> serving on $URL until Ctrl-C (try: curl $URL/)"
    wait "$EK" || true
    exit 0
fi
echo "==> SIGTERM: graceful shutdown"
kill -TERM "$EK"
wait "$EK" && echo "==> ekilibri exited with status 0"
