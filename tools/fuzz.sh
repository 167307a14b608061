#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60) on the stable
# toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags), installing
# cargo-fuzz first if it is missing.
#
#   tools/fuzz.sh            # 60 s per target
#   tools/fuzz.sh 300        # 5 min per target
#   TARGETS="chunked" tools/fuzz.sh 30
#   SANITIZER=none tools/fuzz.sh 30   # no ASan: builds and runs faster (CI)
#
# Seeds live in fuzz/corpus/<target>/ and are only read; inputs a run
# discovers go to fuzz/target/corpus-work/<target>/ (kept between runs, not
# committed). Crashes land in fuzz/artifacts/<target>/; the script prints
# them, minimizes each with `cargo fuzz tmin`, and exits 1 if any target
# crashed.
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;; esac
targets="${TARGETS:-request_head response_head chunked two_sided proxy_protocol}"
san=()
[ -n "${SANITIZER:-}" ] && san=(-s "$SANITIZER")
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    start=$(date +%s)
    cargo install cargo-fuzz --locked || { echo "cargo install cargo-fuzz failed" >&2; exit 2; }
    echo "cargo-fuzz installed in $(($(date +%s) - start)) s"
fi

cd fuzz
cargo fuzz build "${san[@]}" || exit 2
mkdir -p target/logs
status=0
summary=""
for t in $targets; do
    work="target/corpus-work/$t"
    mkdir -p "$work" "corpus/$t"
    log="target/logs/$t.log"
    echo "=== $t: ${secs} s"
    before=$(ls "artifacts/$t" 2>/dev/null | wc -l)
    cargo fuzz run "${san[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -1)
    [ -z "$runs" ] && runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    after=$(ls "artifacts/$t" 2>/dev/null | wc -l)
    line="$t: rc=$rc execs=${runs:-?} ${cov:-} corpus=$(ls "$work" | wc -l) new_artifacts=$((after - before))"
    echo "$line"
    summary+="$line"$'\n'
    if [ "$rc" -ne 0 ]; then
        status=1
        grep -m1 -A3 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /'
        for a in $(ls -t "artifacts/$t" 2>/dev/null | grep -v '^min-' | head -n $((after - before))); do
            echo "    artifact: fuzz/artifacts/$t/$a"
            min="artifacts/$t/min-$a"
            cargo fuzz tmin "${san[@]}" -r 20000 "$t" "artifacts/$t/$a" -- -exact_artifact_path="$min" \
                >"target/logs/$t.tmin.log" 2>&1
            [ -s "$min" ] && echo "    minimized: fuzz/$min ($(wc -c <"$min") bytes): $(head -c 300 "$min" | od -An -c | tr -s ' ' | tr -d '\n' | head -c 600)"
        done
    fi
done
echo
echo "summary (${secs} s per target):"
printf '%s' "$summary"
exit $status
