#!/usr/bin/env bash
# Build every fuzz target and run each for a bounded time; fails on the
# first crash and prints how to reproduce it. See fuzz/README.md.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default $MOLT_FUZZ_SECONDS, else 60); all targets
# unless some are named. The committed corpus (fuzz/corpus/<target>/) is
# read, never written: what a run discovers goes to a working corpus
# under the target directory ($MOLT_FUZZ_TARGET_DIR, default
# ~/.cache/molt/target-fuzz), so later runs start from it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

seconds="${1:-${MOLT_FUZZ_SECONDS:-60}}"
shift || true
target_dir="${MOLT_FUZZ_TARGET_DIR:-$HOME/.cache/molt/target-fuzz}"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# No sanitizer: the code under test has no `unsafe` of its own, and
# without ASan a run does about twice the executions. Debug assertions
# and overflow checks stay on (cargo fuzz's default), so an overflow is a
# crash like a panic.
flags=(--sanitizer none --target-dir "$target_dir")

if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

if ((${#targets[@]} == 1)); then
    cargo +nightly fuzz build "${flags[@]}" "${targets[0]}"
else
    cargo +nightly fuzz build "${flags[@]}"
fi

for t in "${targets[@]}"; do
    work="$target_dir/fuzz-corpus/$t"
    mkdir -p "$work" "artifacts/$t"
    echo "== $t: ${seconds}s"
    before=$(ls "artifacts/$t" | wc -l)
    if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$target_dir/fuzz-$t.log" 2>&1; then
        tail -n 60 "$target_dir/fuzz-$t.log"
        crash=$(ls -t "artifacts/$t" | head -n 1)
        echo "FUZZ FAILURE in $t (log: $target_dir/fuzz-$t.log)"
        if (($(ls "artifacts/$t" | wc -l) > before)) && [[ -n "$crash" ]]; then
            echo "reproducer: fuzz/artifacts/$t/$crash"
            echo "replay:     (cd fuzz && cargo +nightly fuzz run ${flags[*]} $t artifacts/$t/$crash)"
        fi
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "$target_dir/fuzz-$t.log" | tail -n 1 || true
done
echo "fuzz: ${#targets[@]} target(s), ${seconds}s each, no crash"
