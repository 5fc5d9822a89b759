#!/usr/bin/env bash
# `skrr-onnx apply` on a large external-data model against `cp` of the same files (issue #6).
#
#   bash benches/rewrite_apply.sh MODEL.onnx [PLAN.json]     # RUNS (default 3), BENCH_OUT optional
#
# Without PLAN, a plan is made from `inspect --json`: skip the feed-forward sub-block of every odd
# layer, and let layer 3's feed-forward re-use layer 2's (so the clone path is timed too).
# Both sides start from a warm page cache; `cp` is followed by `sync` of its copies because
# `apply` fsyncs its output before renaming it into place (same durability). Wall time and peak
# RSS come from GNU time. The release binary is built first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="$(realpath "$1")"
plan="${2:-}"
runs="${RUNS:-3}"
out="${BENCH_OUT:-$root/bench-out/rewrite}"
bin="$root/target/release/skrr-onnx"
py="${SKRR_PYTHON:-python3}"
(cd "$root" && cargo build --release --bin skrr-onnx >&2)
mkdir -p "$out"
if [[ -z "$plan" ]]; then
  plan="$out/plan.json"
  "$bin" --json inspect "$model" | "$py" -c '
import json, sys
a = json.load(sys.stdin)
sb = []
for s in a["sub_blocks"]:
    e = {"index": s["index"], "action": "keep"}
    if s["kind"] == "ffn" and s["layer"] % 2 == 1:
        e["action"] = "skip"
    if s["kind"] == "ffn" and s["layer"] == 3:
        e = {"index": s["index"], "action": "reuse", "source": 5}
    sb.append(e)
json.dump({"sub_blocks": sb}, sys.stdout)' > "$plan"
fi
folder="$(dirname "$model")"
files=("$model")
[[ -f "$model.data" ]] && files+=("$model.data")
for f in "$folder"/*.data; do [[ -e "$f" && "$f" != "$model.data" ]] && files+=("$f"); done
cat "${files[@]}" > /dev/null
echo "model: $model ($(du -cb "${files[@]}" | tail -1 | cut -f1) bytes), plan: $plan, runs: $runs" >&2
t() { /usr/bin/time -f '%e %M' "$@" 2>&1 >/dev/null | tail -1; }
for r in $(seq "$runs"); do
  rm -rf "$out/cp" "$out/apply"; mkdir -p "$out/cp" "$out/apply"
  cp_res=$(t bash -c "cp ${files[*]} '$out/cp/' && sync '$out/cp/'*")
  rm -rf "$out/cp"
  ap_res=$(t "$bin" apply "$model" "$plan" "$out/apply/model.onnx")
  echo "run $r: cp+sync ${cp_res% *} s (${cp_res#* } KiB) | apply ${ap_res% *} s (${ap_res#* } KiB)"
done
"$bin" --json apply "$model" "$plan" "$out/apply/again.onnx" | "$py" -c '
import json, sys
r = json.load(sys.stdin)
w = r["rewrite"]
print("sparsity %.4f: params %d -> %d, bytes %d -> %d, nodes %d -> %d" % (
    r["sparsity"], w["params_before"], w["params_after"], r["input_bytes"], r["output_bytes"],
    w["nodes_before"], w["nodes_after"]))'
