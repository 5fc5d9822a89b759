#!/usr/bin/env bash
# Fuzzes the model reader and block detection (tests/fuzz.rs) for a fixed time budget and prints
# executions and findings. Usage: scripts/fuzz.sh [SECONDS per target, default 600] [FIRST SEED,
# default 1]. Each minimal failing model is saved under target/fuzz-findings/. The address space
# is capped (8 GB) so that an input making the tool allocate without bound shows up as a crash
# instead of swapping the machine. Exit status 0 when nothing was found.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${1:-600}"
seed="${2:-1}"
findings="$root/target/fuzz-findings"
# The dev profile (dependencies optimised, see Cargo.toml) keeps overflow checks and debug
# assertions: a release build wraps integer overflow silently, which hides real findings. The
# test binary is run directly, so no cargo lock is held during the run.
exe="$(cargo test --locked --test fuzz --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
[ -x "$exe" ] || { echo "cannot build the fuzz test binary" >&2; exit 2; }
ulimit -v $((8 << 20))
echo "fuzzing for ${seconds}s per target from seed ${seed} (findings: ${findings})"
log="$root/target/fuzz.log"
set +e
RUST_BACKTRACE=0 SKRR_FUZZ_SECONDS="$seconds" SKRR_FUZZ_SEED="$seed" SKRR_FUZZ_FINDINGS="$findings" \
    "$exe" --nocapture --test-threads 2 >"$log" 2>&1
status=$?
set -e
grep -E '^(fuzz |FINDING|    (minimal|saved)|test result|error)' "$log" || true
echo "full log: $log (exit status $status)"
exit "$status"
