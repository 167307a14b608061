#!/usr/bin/env bash
# Soak test: a long run of steady traffic through ekilibri to 3 local
# backends while everything the control plane does keeps happening: a
# backend killed and restarted, SIGHUP reloads that change weights and add
# or remove a second pool and its route (a quarter of the traffic asks for
# its Host), admin API additions and removals, TTL registrations that
# expire, and metrics scrapes. Samples the balancer's RSS and open descriptors, then stops it
# with SIGTERM, which must exit 0. Loopback only, bounded in time.
#
#   tools/soak.sh            # 1200 s (20 min): long enough to cross the
#                            # 14-minute mark of the old waker overflow
#   tools/soak.sh 1800       # 30 min
#
# Environment: WARMUP (s, default a quarter of the run, at least 60) before
# the samples that are judged: the backend keep-alive pools grow to the
# concurrency peaks of the last `keepalive_timeout` for several minutes
# before they hold steady,
# RATE (req/s, default 2000, open loop with ekilibri-loadgen; 0 runs wrk
# flat out instead), CONNECTIONS (default 32), WORKERS (default: CPUs),
# KILL_EVERY (s, default 60; 0 never kills), RELOAD_EVERY (s, default 60),
# ADMIN_EVERY (s, default 30), INTERVAL (s, default 10) between samples,
# GROWTH_PCT (default 20) allowed growth of RSS and fds from the first
# quarter of the post-warm-up samples to the last quarter (medians, so the
# backend pools refilling after a kill or a removal do not count as a trend).
#
# A killed backend is restarted on the same port 10 s later, round robin
# over the three. Every ADMIN_EVERY s a fourth backend is added with
# POST /servers or removed with DELETE (alternately), and a fifth is
# registered with PUT and a 5 s TTL that is never renewed. Every INTERVAL
# s /metrics is scraped and a row is printed: elapsed, VmRSS (KiB), open
# fds, events. Fails (exit 1) if the balancer dies, an admin call fails,
# a load request fails or gets a non-2xx answer, the median RSS or fds of the last quarter exceed those of the first
# quarter by more than GROWTH_PCT %, or SIGTERM does not end it with
# status 0 within 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-1200}"
warmup="${WARMUP:-$(( ${1:-1200} / 4 > 60 ? ${1:-1200} / 4 : 60 ))}"
conns="${CONNECTIONS:-32}"
growth="${GROWTH_PCT:-20}"
interval="${INTERVAL:-10}"
kill_every="${KILL_EVERY:-60}"
reload_every="${RELOAD_EVERY:-60}"
admin_every="${ADMIN_EVERY:-30}"
rate="${RATE:-2000}"
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
back_pid=("" "" "" "" "")
back_port=("" "" "" "" "")
bal_pid=""
load_pid=""
cleanup() {
    for p in "$load_pid" "${api_load_pid:-}" "$bal_pid" "${back_pid[@]}"; do
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

for i in 0 1 2 3 4; do start_backend "$i"; done
# Backends 0-2 are configured; 3 comes and goes through POST/DELETE; 4 is
# registered with a TTL that expires.
write_config() { # weight of backend 0, 1 to add the "api" pool and its route
    cat >"$tmp/ekilibri.toml" <<EOF
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
servers = [{ address = "127.0.0.1:${back_port[0]}", weight = $1 }, "127.0.0.1:${back_port[1]}", "127.0.0.1:${back_port[2]}"]
strategy = "WeightedRoundRobin"
health_check_interval = 500
connection_timeout = 500
read_timeout = 2000
write_timeout = 2000
trusted_proxies = ["127.0.0.0/8"]
EOF
    [ -n "${WORKERS:-}" ] && echo "workers = $WORKERS" >>"$tmp/ekilibri.toml"
    if [ "${2:-0}" = 1 ]; then
        cat >>"$tmp/ekilibri.toml" <<EOF

[pools.api]
servers = ["127.0.0.1:${back_port[1]}", "127.0.0.1:${back_port[2]}"]
strategy = "LeastConnections"

[[routes]]
host = "api.soak"
pool = "api"
EOF
    fi
    return 0
}
write_config 1
RUST_LOG=info "$bal_bin" -f "$tmp/ekilibri.toml" >"$tmp/balancer.out" 2>"$tmp/balancer.log" &
bal_pid=$!
bal_port="$(wait_port "$tmp/balancer.log" "$bal_pid")"
admin_port=""
for _ in $(seq 1 100); do
    admin_port="$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/balancer.log" | grep -o 'admin API.*http://127\.0\.0\.1:[0-9]*' | head -1 | grep -o '[0-9]*$' || true)"
    [ -n "$admin_port" ] && break
    sleep 0.05
done
[ -n "$admin_port" ] || { echo "no admin API line in the log" >&2; exit 1; }
admin="http://127.0.0.1:$admin_port"
url="http://127.0.0.1:$bal_port/"
echo "soak: ${duration} s, balancer pid $bal_pid on :$bal_port (admin :$admin_port), backends :${back_port[*]}, $conns connections"

if [ "$rate" = 0 ] && command -v wrk >/dev/null; then
    wrk -t1 -c"$conns" -d"${duration}s" --timeout 5s "$url" >"$tmp/load.log" 2>&1 &
    load="wrk"
else
    [ "$rate" = 0 ] && rate=5000
    "$loadgen_bin" --url "$url" --rate "$rate" --connections "$conns" --duration "${duration}s" \
        --timeout 5s >"$tmp/load.log" 2>&1 &
    load="ekilibri-loadgen at $rate req/s"
fi
load_pid=$!
# A quarter more traffic for the "api" pool's Host: routed to that pool
# while it exists, to the default pool while a reload has removed it.
"$loadgen_bin" --url "$url" --rate $(( (rate > 0 ? rate : 2000) / 4 )) --connections 8 \
    --duration "${duration}s" --timeout 5s -H "Host: api.soak" >"$tmp/load-api.log" 2>&1 &
api_load_pid=$!

# One admin call; fails the soak on an unexpected status.
admin_call() { # method path expected-status(es, e.g. 200|201) [json body]
    local code
    code="$(curl -s -o "$tmp/admin.out" -w '%{http_code}' -X "$1" --max-time 20 \
        -H 'Content-Type: application/json' ${4:+--data "$4"} "$admin$2" || echo 000)"
    if ! [[ "$code" =~ ^($3)$ ]]; then
        echo "FAIL: $1 $2 answered $code, expected $3: $(cat "$tmp/admin.out" 2>/dev/null)"
        exit 1
    fi
}
added=""
weight=1
rss_samples=()
fd_samples=()

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
    if [ "$reload_every" -gt 0 ] && [ $((t / reload_every)) -gt $(((t - interval) / reload_every)) ]; then
        weight=$((weight % 3 + 1))
        api_pool=$((1 - ${api_pool:-0}))
        write_config "$weight" "$api_pool"
        kill -HUP "$bal_pid"
        event+="SIGHUP (weight $weight, api pool $api_pool) "
    fi
    if [ "$admin_every" -gt 0 ] && [ $((t / admin_every)) -gt $(((t - interval) / admin_every)) ]; then
        if [ -z "$added" ]; then
            admin_call POST /servers 201 "{\"address\": \"127.0.0.1:${back_port[3]}\"}"
            added=1
            event+="POST /servers "
        else
            admin_call DELETE "/servers/127.0.0.1:${back_port[3]}" 204
            added=""
            event+="DELETE /servers "
        fi
        admin_call PUT "/servers/127.0.0.1:${back_port[4]}" '200|201' '{"ttl": 5}'
        event+="PUT ttl=5 "
    fi
    admin_call GET /metrics 200
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
    if [ "$t" -ge "$warmup" ]; then
        rss_samples+=("$last_rss")
        fd_samples+=("$last_fds")
    fi
    if [ -z "$ref_rss" ] && [ "$t" -ge "$warmup" ]; then
        ref_rss="$last_rss"
        ref_fds="$last_fds"
        event+="(reference sample)"
    fi
    printf '%6s %10s %6s  %s\n' "$t" "$last_rss" "$last_fds" "$event"
done
wait "$load_pid" || true
load_pid=""
wait "$api_load_pid" || true
sleep 1
idle_rss="$(rss)"
idle_fds="$(fds)"
printf '%6s %10s %6s  %s\n' "end" "$idle_rss" "$idle_fds" "load stopped"
echo
echo "$load:"
sed 's/^/  /' "$tmp/load.log"
echo "load for the api pool's Host:"
sed 's/^/  /' "$tmp/load-api.log"
echo

# Median of the first or last quarter of a list of numbers.
quarter_median() { # first|last values...
    local which="$1"
    shift
    local n=$# q
    q=$(((n + 3) / 4))
    if [ "$which" = first ]; then
        printf '%s\n' "${@:1:q}"
    else
        printf '%s\n' "${@:n-q+1:q}"
    fi | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
range() { printf '%s\n' "$@" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }

fail=0
# Every request must succeed: backends killed, reloads, pools appearing and
# vanishing under it (retries and health checks absorb the kills).
if [ "$rate" != 0 ] || ! command -v wrk >/dev/null; then
    for f in "$tmp/load.log" "$tmp/load-api.log"; do
        if ! grep -q 'errors 0 .* non-2xx 0 ' "$f"; then
            echo "FAIL: failed requests in $(basename "$f"): $(grep -o 'errors .*non-2xx [0-9]*' "$f")"
            fail=1
        fi
    done
fi
early_rss="$(quarter_median first "${rss_samples[@]}")"
late_rss="$(quarter_median last "${rss_samples[@]}")"
early_fds="$(quarter_median first "${fd_samples[@]}")"
late_fds="$(quarter_median last "${fd_samples[@]}")"
limit_rss=$((early_rss * (100 + growth) / 100))
limit_fds=$((early_fds * (100 + growth) / 100))
echo "RSS (KiB): first-quarter median ${early_rss}, last-quarter median ${late_rss} (limit ${limit_rss}); range $(range "${rss_samples[@]}"); reference ${ref_rss}, end ${last_rss}, after load ${idle_rss}"
echo "fds: first-quarter median ${early_fds}, last-quarter median ${late_fds} (limit ${limit_fds}); range $(range "${fd_samples[@]}"); reference ${ref_fds}, end ${last_fds}, after load ${idle_fds}"
if [ "$late_rss" -gt "$limit_rss" ]; then
    echo "FAIL: RSS grew more than ${growth}%"
    fail=1
fi
if [ "$late_fds" -gt "$limit_fds" ]; then
    echo "FAIL: open descriptors grew more than ${growth}%"
    fail=1
fi
if ! kill -0 "$bal_pid" 2>/dev/null; then
    echo "FAIL: the balancer died"
    fail=1
else
    kill -TERM "$bal_pid"
    status=""
    for _ in $(seq 1 200); do
        if ! kill -0 "$bal_pid" 2>/dev/null; then
            wait "$bal_pid" && status=0 || status=$?
            break
        fi
        sleep 0.1
    done
    bal_pid=""
    if [ "$status" = 0 ]; then
        echo "SIGTERM: exited 0"
    else
        echo "FAIL: SIGTERM: exit status '${status:-still running after 20 s}'"
        fail=1
    fi
fi
panics="$(grep -c 'panic' "$tmp/balancer.log" || true)"
echo "log: $(grep -c 'configuration reloaded:' "$tmp/balancer.log" || true) reloads applied, $(grep -c 'registration expired' "$tmp/balancer.log" || true) TTL expiries, $panics panic lines"
if [ "$panics" != 0 ]; then
    grep 'panic' "$tmp/balancer.log" | head -5
    fail=1
fi
[ "$fail" = 0 ] && echo "soak: PASS"
exit "$fail"
