#!/usr/bin/env bash
# The main job on a committed fixture, on a fresh machine: sets up ONNX Runtime (scripts/setup.sh),
# builds the release binary and runs it. Output goes to demo-out/ (ignored by git).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(bash scripts/setup.sh)"
export SKRR_PYTHON ORT_DYLIB_PATH
cargo build --release --locked --quiet
skrr="$root/target/release/skrr-onnx"
rm -rf demo-out && mkdir demo-out

set -x
"$skrr" doctor
"$skrr" inspect fixtures/t5_gated/model.onnx
# The main job: calibrate on the built-in prompts, search, rewrite, write, compare on held-out
# prompts, report. The fixture has random weights, so fidelity is judged with a loose --min-cos.
"$skrr" fixtures/t5_gated/model.onnx demo-out/t5_gated-pruned.onnx --sparsity 0.25 \
  --min-cos 0.7 --plan-out demo-out/plan.json --report demo-out/report.json
