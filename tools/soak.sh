#!/usr/bin/env bash
# Soak test: a few minutes of steady load through ekilibri to 3 local
# backends while one backend at a time is killed and restarted, sampling the
# balancer's RSS and open descriptors. Loopback only, bounded in time.
#
#   tools/soak.sh            # 180 s
#   tools/soak.sh 120        # 2 min
#
# Environment: WARMUP (s, default 60) before the reference sample,
# KILL_EVERY (s, default 20; 0 never kills),
# CONNECTIONS (default 32) client connections, WORKERS (default: CPUs),
# GROWTH_PCT (default 20) allowed growth of RSS and fds from the first
# post-warm-up sample to the end.
#
# Every 20 s a backend is killed (SIGKILL) and restarted on the same port
# 10 s later, round robin over the three. Every 5 s a row is printed:
# elapsed, VmRSS (KiB), open fds, and the event of that period. Fails (exit 1)
# if the balancer dies, or if RSS or fds at the end exceed the first
# post-warm-up sample by more than GROWTH_PCT %.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-180}"
warmup="${WARMUP:-60}"
conns="${CONNECTIONS:-32}"
growth="${GROWTH_PCT:-20}"
interval=5
kill_every="${KILL_EVERY:-20}"
down_for=10
case "$duration" in '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;; esac
if [ "$duration" -le $((warmup + 2 * interval)) ]; then
    echo "duration must exceed WARMUP + 10 s" >&2
    exit 2
fi

cargo build --release --bins -q
bal_bin=target/release/ekilibri
back_bin=target/release/ekilibri-backend
loadgen_bin=target/release/ekilibri-loadgen

tmp="$(mktemp -d /tmp/ekilibri-soak.XXXXXX)"
back_pid=("" "" "")
back_port=("" "" "")
bal_pid=""
load_pid=""
cleanup() {
    for p in "$load_pid" "$bal_pid" "${back_pid[@]}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Waits for "listening on 127.0.0.1:PORT" in a log and prints PORT.
wait_port() {
    local log="$1" pid="$2"
    for _ in $(seq 1 200); do
        local port
        port="$(sed 's/\x1b\[[0-9;]*m//g' "$log" 2>/dev/null \
            | grep -o 'listening on [^ ]*127\.0\.0\.1:[0-9]*' | head -1 | grep -o '[0-9]*$' || true)"
        if [ -n "$port" ] && [ "$port" != 0 ]; then
            echo "$port"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "process $pid exited; log:" >&2; cat "$log" >&2; return 1; }
        sleep 0.05
    done
    echo "no 'listening on' line in $log" >&2
    return 1
}

start_backend() { # index [port]
    local i="$1" port="${2:-0}"
    "$back_bin" -p "$port" >"$tmp/backend$i.log" 2>&1 &
    back_pid[i]=$!
    back_port[i]="$(wait_port "$tmp/backend$i.log" "${back_pid[i]}")"
}

for i in 0 1 2; do start_backend "$i"; done
cat >"$tmp/ekilibri.toml" <<EOF
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
servers = ["127.0.0.1:${back_port[0]}", "127.0.0.1:${back_port[1]}", "127.0.0.1:${back_port[2]}"]
strategy = "RoundRobin"
health_check_interval = 500
connection_timeout = 500
read_timeout = 2000
write_timeout = 2000
EOF
[ -n "${WORKERS:-}" ] && echo "workers = $WORKERS" >>"$tmp/ekilibri.toml"
RUST_LOG=info "$bal_bin" -f "$tmp/ekilibri.toml" >"$tmp/balancer.out" 2>"$tmp/balancer.log" &
bal_pid=$!
bal_port="$(wait_port "$tmp/balancer.log" "$bal_pid")"
url="http://127.0.0.1:$bal_port/"
echo "soak: ${duration} s, balancer pid $bal_pid on :$bal_port, backends :${back_port[*]}, $conns connections"

if command -v wrk >/dev/null; then
    wrk -t1 -c"$conns" -d"${duration}s" --timeout 5s "$url" >"$tmp/load.log" 2>&1 &
    load="wrk"
else
    "$loadgen_bin" --url "$url" --rate 5000 --connections "$conns" --duration "${duration}s" \
        --timeout 5s >"$tmp/load.log" 2>&1 &
    load="ekilibri-loadgen"
fi
load_pid=$!

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$bal_pid/status"; }
fds() { ls "/proc/$bal_pid/fd" | wc -l; }

printf '%6s %10s %6s  %s\n' "t(s)" "rss(KiB)" "fds" "event"
start=$(date +%s)
ref_rss=""
ref_fds=""
last_rss=""
last_fds=""
victim=0
down=""
down_since=0
t=0
while [ "$t" -lt "$duration" ]; do
    sleep "$interval"
    t=$(($(date +%s) - start))
    event=""
    if ! kill -0 "$bal_pid" 2>/dev/null; then
        echo "FAIL: the balancer died at t=${t}s; log tail:"
        tail -20 "$tmp/balancer.log"
        exit 1
    fi
    if [ -n "$down" ] && [ $((t - down_since)) -ge "$down_for" ]; then
        start_backend "$down" "${back_port[down]}"
        event+="restarted backend $down (:${back_port[down]}) "
        down=""
    fi
    if [ -z "$down" ] && [ "$kill_every" -gt 0 ] \
        && [ $((t / kill_every)) -gt $(((t - interval) / kill_every)) ] \
        && [ $((t + down_for)) -lt "$duration" ]; then
        kill -9 "${back_pid[victim]}" 2>/dev/null || true
        wait "${back_pid[victim]}" 2>/dev/null || true
        event+="killed backend $victim (:${back_port[victim]})"
        down=$victim
        down_since=$t
        victim=$(((victim + 1) % 3))
    fi
    last_rss="$(rss)"
    last_fds="$(fds)"
    if [ -z "$ref_rss" ] && [ "$t" -ge "$warmup" ]; then
        ref_rss="$last_rss"
        ref_fds="$last_fds"
        event+="(reference sample)"
    fi
    printf '%6s %10s %6s  %s\n' "$t" "$last_rss" "$last_fds" "$event"
done
wait "$load_pid" || true
load_pid=""
sleep 1
idle_rss="$(rss)"
idle_fds="$(fds)"
printf '%6s %10s %6s  %s\n' "end" "$idle_rss" "$idle_fds" "load stopped"
echo
echo "$load:"
sed 's/^/  /' "$tmp/load.log"
echo

fail=0
limit_rss=$((ref_rss * (100 + growth) / 100))
limit_fds=$((ref_fds * (100 + growth) / 100))
echo "RSS: reference ${ref_rss} KiB, end ${last_rss} KiB (limit ${limit_rss} KiB); after load ${idle_rss} KiB"
echo "fds: reference ${ref_fds}, end ${last_fds} (limit ${limit_fds}); after load ${idle_fds}"
if [ "$last_rss" -gt "$limit_rss" ]; then
    echo "FAIL: RSS grew more than ${growth}%"
    fail=1
fi
if [ "$last_fds" -gt "$limit_fds" ]; then
    echo "FAIL: open descriptors grew more than ${growth}%"
    fail=1
fi
if ! kill -0 "$bal_pid" 2>/dev/null; then
    echo "FAIL: the balancer died"
    fail=1
fi
[ "$fail" = 0 ] && echo "soak: PASS"
exit "$fail"
