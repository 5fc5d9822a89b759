#!/usr/bin/env bash
# docs/benchmarks.md, "Search": `plan --sparsity 0.2` on the real all-MiniLM-L6-v2 (64 prompts,
# beam 3) against the reference search of tests/search.rs in the same run, and the held-out
# comparison of Skrr, FinerCut and ShortGPT. Usage: bash benches/search.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${SKRR_PYTHON:-.venv/bin/python}
OUT=${1:-/tmp/skrr-bench-search}
mkdir -p "$OUT/minilm"
# The committed export with its weights inline, as the exporter wrote them and as the documented
# figures were measured (docs/benchmarks.md, top); no torch needed.
"$PY" fixtures/minilm_weights.py
cargo build --release --quiet
[ -f "$OUT/minilm/model.onnx" ] ||
  target/release/skrr-onnx convert fixtures/minilm/model.onnx "$OUT/minilm/model.onnx" --inline
cp fixtures/minilm/tokenizer.json fixtures/minilm/manifest.json "$OUT/minilm/"
# 64 calibration prompts (even lines of the built-in set) and 64 disjoint held-out ones (odd
# lines), tokenized once here so the tool and the reference see the very same ids.
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from tokenizers import Tokenizer
out = sys.argv[1]
tok = Tokenizer.from_file(f"{out}/minilm/tokenizer.json")
tok.no_padding()
tok.enable_truncation(77)
lines = [l.strip() for l in open("src/calibrate/prompts.txt") if l.strip()]
for name, part in (("calib", lines[0::2][:64]), ("heldout", lines[1::2][:64])):
    assert len(part) == 64, name
    with open(f"{out}/{name}.jsonl", "w") as f:
        for p in part:
            f.write(json.dumps(tok.encode(p).ids) + "\n")
assert tok.encode("").ids == [101, 102], "the null input must be [CLS] [SEP]"
PYEOF
SKRR_MINILM="$OUT/minilm" SKRR_BENCH_CALIB="$OUT/calib.jsonl" \
SKRR_BENCH_HELDOUT="$OUT/heldout.jsonl" \
  cargo test --release --test search -- --ignored --nocapture bench_minilm_search
