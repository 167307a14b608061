#!/usr/bin/env bash
# Cluster-mode demo: a single-node etcd and two ekilibri instances (A and B)
# on loopback, both with `servers = []`, so their whole pool comes from etcd.
# Shows: a backend registered through A's admin API served by B; a TTL
# registration that disappears when its heartbeats stop; etcd stopped (both
# keep serving, admin writes get 503); etcd back (in sync again).
#
#   tools/cluster-demo.sh
#
# Needs etcd (Debian: etcd-server) and curl; installs them with apt-get
# when missing. Everything runs on 127.0.0.1 and stops at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
command -v protoc >/dev/null || need+=(protobuf-compiler)
# etcd's .proto files import Google's well-known types (libprotobuf-dev).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null || need+=(etcd-server)
if [ "${#need[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    command -v apt-get >/dev/null || { echo "cluster-demo: please install ${need[*]}"; exit 1; }
    echo "==> installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    # The package may start a system etcd on 2379; the demo runs its own.
    $SUDO systemctl stop etcd 2>/dev/null || $SUDO /etc/init.d/etcd stop >/dev/null 2>&1 || true
fi

echo "==> building (release)"
cargo build --release --bins --quiet
BIN=target/release
TMP=$(mktemp -d)
PIDS=()
ETCD_PID=""
cleanup() {
    [ -n "$ETCD_PID" ] && kill "$ETCD_PID" 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_line() { # file pattern
    for _ in $(seq 1 150); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "cluster-demo: timed out waiting for '$2' in $1"; cat "$1"; exit 1
}
port_of() { grep -o "$2[^0-9]*127.0.0.1:[0-9]*" "$1" | head -1 | sed 's/.*://'; }

ETCD_CLIENT=$(free_port)
ETCD_PEER=$(free_port)
start_etcd() {
    etcd --name demo --data-dir "$TMP/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
        --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER" \
        --log-level error >>"$TMP/etcd.log" 2>&1 &
    ETCD_PID=$!
}
start_etcd
echo "==> etcd on 127.0.0.1:$ETCD_CLIENT"

BPORTS=()
for i in 1 2; do
    "$BIN/ekilibri-backend" -p 0 >"$TMP/b$i.out" 2>&1 &
    PIDS+=($!)
    wait_line "$TMP/b$i.out" "listening on"
    BPORTS+=("$(port_of "$TMP/b$i.out" "listening on")")
done
echo "==> backends on ports ${BPORTS[*]} (not in any config file)"

declare -A PROXY ADMIN
for n in A B; do
    cat >"$TMP/$n.toml" <<CFG
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
servers = []
workers = 1
health_check_interval = 200

[cluster]
etcd = ["http://127.0.0.1:$ETCD_CLIENT"]
prefix = "/ekilibri/demo/"
CFG
    RUST_LOG=info "$BIN/ekilibri" -f "$TMP/$n.toml" >"$TMP/$n.log" 2>&1 &
    PIDS+=($!)
    wait_line "$TMP/$n.log" "admin API"
    PROXY[$n]=$(port_of "$TMP/$n.log" "listening on")
    ADMIN[$n]=$(port_of "$TMP/$n.log" "admin API")
    wait_line "$TMP/$n.log" "cluster store connected"
    echo "==> instance $n: proxy 127.0.0.1:${PROXY[$n]}, admin 127.0.0.1:${ADMIN[$n]}, connected to etcd"
done

echo "==> B with an empty pool: $(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:${PROXY[B]}/")"
echo "==> register 127.0.0.1:${BPORTS[0]} through A's admin API"
curl -s -X POST "127.0.0.1:${ADMIN[A]}/servers" -d "{\"address\": \"127.0.0.1:${BPORTS[0]}\"}"; echo
sleep 0.5
echo "==> traffic through B:"
for _ in 1 2 3; do echo "    $(curl -s "127.0.0.1:${PROXY[B]}/")"; done

echo "==> register 127.0.0.1:${BPORTS[1]} through B with a 2 s TTL, renewed 4 times"
for _ in 1 2 3 4; do
    curl -s -o /dev/null -w "    PUT -> %{http_code}\n" -X PUT "127.0.0.1:${ADMIN[B]}/servers/127.0.0.1:${BPORTS[1]}" -d '{"ttl": 2}'
    sleep 0.5
done
echo "==> traffic through A (both backends):"
for _ in 1 2 3 4; do echo "    $(curl -s "127.0.0.1:${PROXY[A]}/")"; done
echo "==> heartbeats stopped; waiting for the lease to expire"
for _ in $(seq 1 40); do
    curl -s "127.0.0.1:${ADMIN[A]}/servers" | grep -q "${BPORTS[1]}" || break
    sleep 0.2
done
echo "==> A's pool now: $(curl -s "127.0.0.1:${ADMIN[A]}/servers" | grep -o '"address":"[^"]*"' | tr '\n' ' ')"

echo "==> stopping etcd"
kill "$ETCD_PID"; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=""
sleep 0.5
echo "==> B keeps serving the last pool: $(curl -s "127.0.0.1:${PROXY[B]}/")"
echo "==> B's lb_cluster_connected: $(curl -s "127.0.0.1:${ADMIN[B]}/metrics" | grep '^lb_cluster_connected')"
echo "==> a registration while etcd is down:"
echo "    $(curl -s -w ' (%{http_code})' -X POST "127.0.0.1:${ADMIN[A]}/servers" -d "{\"address\": \"127.0.0.1:${BPORTS[1]}\"}")"

echo "==> starting etcd again"
start_etcd
for n in A B; do
    for _ in $(seq 1 100); do
        curl -s "127.0.0.1:${ADMIN[$n]}/metrics" | grep -q '^lb_cluster_connected 1' && break
        sleep 0.1
    done
    echo "==> $n: $(curl -s "127.0.0.1:${ADMIN[$n]}/metrics" | grep '^lb_cluster_connected')"
done
echo "==> done (logs were in $TMP; removed on exit)"
