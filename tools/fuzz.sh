#!/usr/bin/env bash
# Runs replaymig's cargo-fuzz targets (fuzz/) for a bounded time each and
# prints a Markdown table: target, executions, seconds, crashes.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Environment:
#   FUZZ_TARGETS="a b"  run only these targets (default: all four)
#   FUZZ_MERGE=1        afterwards, merge the inputs that add coverage back
#                       into the committed corpus fuzz/corpus/<target>/
#                       (libFuzzer -merge=1; review the count before committing)
#   FUZZ_KEEP_GOING=1   do not stop at the first crash (libFuzzer -fork=1
#                       -ignore_crashes=1): fuzz the whole time, count crashes
#   FUZZ_JOBS_ARGS=...  extra libFuzzer arguments for every target
#
# What it does:
# - installs cargo-fuzz into target/cargo-fuzz if it is missing there (no
#   global change: `cargo install --locked --root target/cargo-fuzz`);
# - builds with the stable toolchain and RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
#   nightly-only flags: -Zsanitizer=address, -Cpasses=sancov-module, ...);
#   release + debug assertions + overflow checks, AddressSanitizer on;
# - runs each target on its committed seeds (fuzz/corpus/<target>, read only)
#   plus a local working corpus target/fuzz/corpus/<target>, which is where
#   new inputs go, so the committed corpus stays small;
# - crash inputs land in target/fuzz/artifacts/<target>/<run>/; a crash is
#   reported with its file, and the script exits 1. To keep one as a
#   regression test, copy it (minimized: `cargo fuzz tmin`) to
#   fuzz/regressions/<target>/crash-<name>; tests/fuzz_regressions.rs
#   replays fuzz/corpus and fuzz/regressions without cargo-fuzz.
# Logs: target/fuzz/logs/<target>.log.
set -euo pipefail

secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]] || [[ $secs -lt 1 ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

targets=(${FUZZ_TARGETS:-journal_record journal_segment peer_frame snapshot_manifest})
tdir=target/fuzz
export RUSTC_BOOTSTRAP=1
export PATH="$root/target/cargo-fuzz/bin:$PATH"

if ! [[ -x target/cargo-fuzz/bin/cargo-fuzz ]]; then
    echo "fuzz: installing cargo-fuzz into target/cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --root target/cargo-fuzz >&2
fi

fuzz=(cargo fuzz)
common=(--fuzz-dir fuzz --target-dir "$tdir")

mkdir -p "$tdir/logs"
echo "fuzz: building ${targets[*]} ($(cargo fuzz --version))" >&2
for t in "${targets[@]}"; do
    if ! "${fuzz[@]}" build "${common[@]}" "$t" >"$tdir/logs/build.log" 2>&1; then
        tail -50 "$tdir/logs/build.log" >&2
        exit 1
    fi
done

mkdir -p "$tdir/logs"
run_id=$(date -u +%Y%m%dT%H%M%SZ)
rows=()
failed=0
for t in "${targets[@]}"; do
    work="$tdir/corpus/$t"
    art="$tdir/artifacts/$t/$run_id"
    log="$tdir/logs/$t.log"
    mkdir -p "$work" "$art"
    echo "fuzz: $t for ${secs}s (log $log)" >&2
    start=$(date +%s.%N)
    set +e
    # The outer timeout only guards against libFuzzer itself hanging.
    timeout --kill-after=30 $((secs + 300)) \
        "${fuzz[@]}" run "${common[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$art/" ${FUZZ_KEEP_GOING:+-fork=1 -ignore_crashes=1} ${FUZZ_JOBS_ARGS:-} \
        >"$log" 2>&1
    rc=$?
    set -e
    end=$(date +%s.%N)
    elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", b - a }')
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
    if [[ -z $execs ]]; then
        execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    fi
    if [[ -z $execs ]]; then
        execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' "$log" | tail -1)
    fi
    crashes=$(find "$art" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' -o -name 'slow-unit-*' \) | wc -l)
    found=""
    if [[ $rc -ne 0 && $crashes -eq 0 ]]; then
        crashes=1
        found=" (exit $rc, no artifact: see $log)"
    elif [[ $crashes -gt 0 ]]; then
        found=" ($(find "$art" -type f | sort | head -3 | tr '\n' ' ' | sed 's/ $//'))"
        where=$(grep -m1 "panicked at" "$log" | sed 's/.*panicked at /panicked at /; s/:$//' ||
            grep -m1 "ERROR: " "$log" || true)
        [[ -n $where ]] && found+=" — ${where//|/\\|}"
    fi
    [[ $crashes -gt 0 ]] && failed=1
    corpus=$(find "$work" -type f | wc -l)
    rows+=("| $t | ${execs:-?} | $elapsed | $crashes$found | $corpus |")

    if [[ ${FUZZ_MERGE:-0} == 1 && $crashes -eq 0 ]]; then
        before=$(find "fuzz/corpus/$t" -type f | wc -l)
        "$tdir"/*/release/"$t" -merge=1 "fuzz/corpus/$t" "$work" >>"$log" 2>&1
        after=$(find "fuzz/corpus/$t" -type f | wc -l)
        echo "fuzz: $t: merged $((after - before)) new inputs into fuzz/corpus/$t" >&2
    fi
done

echo
echo "| target | executions | seconds | crashes | local corpus |"
echo "| --- | ---: | ---: | --- | ---: |"
printf '%s\n' "${rows[@]}"
exit $failed
