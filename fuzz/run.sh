#!/usr/bin/env bash
# Runs every cargo-fuzz target (or those named as arguments) for FUZZ_SECONDS each (default 60)
# with libFuzzer and AddressSanitizer, then prints executions and exec/s per target.
# Exits non-zero at the first target that crashes, leaks, times out or runs out of memory;
# libFuzzer leaves the input in fuzz/artifacts/<target>/ (keep it as a seed once fixed).
#
# Stable toolchain: cargo-fuzz passes nightly-only flags (-Zsanitizer=address, …), which stable
# rustc accepts under RUSTC_BOOTSTRAP=1; the ASan runtime ships with the x86_64 Linux std.
# New inputs go to a corpus outside the repository; fuzz/seeds/<target>/ is read as a second
# corpus and never written to.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1
# Separate from the main workspace's target dir: sanitizer flags would otherwise force
# rebuilds of everything there and back.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/votes-target-fuzz}"
CORPUS_ROOT="$CARGO_TARGET_DIR/fuzz-corpus"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Largest input per target: a bit beyond each parser's own limit, so the limits are hit.
max_len() {
    case "$1" in
        record_decode | leaf_decode) echo 512 ;;
        snapshot_decode) echo 8192 ;;
        vote_body) echo 1100 ;;
        pow_verify) echo 400 ;;
        token_verify) echo 4200 ;;
        forward_decode) echo 600 ;;
        proxy_header) echo 600 ;;
        ws_frame) echo 8192 ;;
        group_assignment) echo 1024 ;;
        manifest_parse) echo 8192 ;;
        votes_parquet) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build

summary=()
for target in "${targets[@]}"; do
    corpus="$CORPUS_ROOT/$target"
    mkdir -p "$corpus" "artifacts/$target"
    log="$CARGO_TARGET_DIR/fuzz-$target.log"
    echo "fuzz: $target for ${FUZZ_SECONDS}s (log: $log)"
    if ! cargo fuzz run "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$target")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target FAILED; input kept in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 || true)
    summary+=("$target: ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-cov: ?}, no crash")
done
printf 'fuzz: %s\n' "${summary[@]}"
