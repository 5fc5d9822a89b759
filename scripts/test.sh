#!/usr/bin/env bash
# The whole test suite on a fresh machine: Python oracles + ONNX Runtime (scripts/setup.sh),
# then every Rust test in release mode. `.ci/run` runs exactly this. Extra arguments go to
# `cargo test` (e.g. `bash scripts/test.sh --test cli`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(bash scripts/setup.sh)"
export SKRR_PYTHON ORT_DYLIB_PATH
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --release --locked --no-fail-fast "$@"
