#!/usr/bin/env bash
# Model I/O benchmark: round-trip a >= 4 GiB external-data model with `skrr-onnx convert` and
# compare wall time and peak RSS with `cp` of the same bytes (model + data file).
#
#   benches/roundtrip.sh [GIB]        (default 4; run from the repository root)
#
# The model is a wide T5 encoder from `fixtures/generate.py --big` when the Python has the
# fixture dependencies (torch, transformers: `scripts/setup.sh --dev`), else a plain chain of
# large MatMuls from benches/make_big_model.py (numpy and onnx only).
#
# Env: BENCH_OUT (default bench-out/, gitignored) holds the model and outputs; RUNS (default 3);
# SKRR_PYTHON (default .venv/bin/python, else python3) runs the generator; KEEP=1 keeps the
# generated model afterwards (it is deleted otherwise). Needs GNU time (/usr/bin/time, Debian
# package `time`).
#
# Both sides read from the page cache (the input is read once before timing) and write new
# files. `convert` fsyncs its output before renaming it into place, so the table also shows
# `cp` followed by `sync` of the copies: the same durability.
set -euo pipefail

GIB=${1:-4}
RUNS=${RUNS:-3}
OUT=${BENCH_OUT:-bench-out}
PY=${SKRR_PYTHON:-}
if [[ -z $PY ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
[[ -x /usr/bin/time ]] || { echo "needs GNU time: apt-get install time" >&2; exit 2; }

mkdir -p "$OUT"
need_kib=$(( (GIB * 3 + 2) * 1024 * 1024 ))
free_kib=$(df -Pk "$OUT" | awk 'NR==2 {print $4}')
if (( free_kib < need_kib )); then
  echo "need $((need_kib / 1024 / 1024)) GiB free in $OUT, have $((free_kib / 1024 / 1024)) GiB" >&2
  exit 2
fi

cargo build --release --quiet
BIN=target/release/skrr-onnx

SRC="$OUT/src"
if [[ ! -f $SRC/model.onnx ]]; then
  if "$PY" -c "import torch, transformers" 2> /dev/null; then
    echo "generating a ${GIB} GiB T5 encoder in $SRC (fixtures/generate.py --big) ..." >&2
    "$PY" fixtures/generate.py --big "$SRC" --gb "$GIB" >&2
  else
    echo "generating a ${GIB} GiB MatMul chain in $SRC (benches/make_big_model.py) ..." >&2
    "$PY" benches/make_big_model.py "$SRC" --gib "$GIB" >&2
  fi
fi
cleanup() {
  rm -rf "$OUT/cp" "$OUT/convert"
  [[ ${KEEP:-0} == 1 ]] || rm -rf "$SRC"
}
trap cleanup EXIT

bytes=$(( $(stat -c %s "$SRC/model.onnx") + $(stat -c %s "$SRC/model.onnx.data") ))
cat "$SRC/model.onnx" "$SRC/model.onnx.data" > /dev/null   # warm the page cache for both sides

# measure NAME CMD...: runs CMD under GNU time, prints "seconds max_rss_kib".
measure() {
  local log
  log=$(mktemp)
  /usr/bin/time -f '%e %M' -o "$log" "$@" > /dev/null
  cat "$log"
  rm -f "$log"
}

declare -A T R
for name in cp cp_sync convert; do T[$name]=""; R[$name]=0; done
names=(cp cp_sync convert)
for run in $(seq "$RUNS"); do
  # Rotate the order each run, so no command always follows the same one (the deletion of the
  # previous output and the disk's write-back state differ by predecessor).
  order=("${names[@]:run % 3}" "${names[@]:0:run % 3}")
  for name in "${order[@]}"; do
    rm -rf "$OUT/cp" "$OUT/convert"; mkdir -p "$OUT/cp" "$OUT/convert"
    sync
    case $name in
      cp) m=$(measure cp "$SRC/model.onnx" "$SRC/model.onnx.data" "$OUT/cp/") ;;
      cp_sync) m=$(measure sh -c "cp '$SRC/model.onnx' '$SRC/model.onnx.data' '$OUT/cp/' && sync '$OUT/cp/model.onnx' '$OUT/cp/model.onnx.data'") ;;
      convert) m=$(measure "$BIN" convert "$SRC/model.onnx" "$OUT/convert/model.onnx") ;;
    esac
    read -r secs rss <<< "$m"
    T[$name]+="$secs "
    (( rss > R[$name] )) && R[$name]=$rss
    echo "run $run $name: ${secs}s, peak RSS ${rss} KiB" >&2
  done
done
cmp "$SRC/model.onnx.data" "$OUT/convert/model.onnx.data" > /dev/null \
  && echo "data file identical to the input's" >&2

# stats: "median min" of the times given on stdin.
stats() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)], a[1]}'; }
read -r c cmin <<< "$(echo "${T[cp]}" | stats)"
read -r cs csmin <<< "$(echo "${T[cp_sync]}" | stats)"
read -r v vmin <<< "$(echo "${T[convert]}" | stats)"
awk -v bytes="$bytes" -v runs="$RUNS" -v c="$c" -v cs="$cs" -v v="$v" \
    -v cmin="$cmin" -v csmin="$csmin" -v vmin="$vmin" \
    -v rc="${R[cp]}" -v rcs="${R[cp_sync]}" -v rv="${R[convert]}" 'BEGIN {
  printf "\nmodel + data: %.0f bytes (%.2f GiB), %d runs\n", bytes, bytes / 2^30, runs
  printf "| command | median wall time (s) | best (s) | peak RSS (MiB) |\n|---|---|---|---|\n"
  printf "| cp | %.2f | %.2f | %.1f |\n", c, cmin, rc / 1024
  printf "| cp + sync | %.2f | %.2f | %.1f |\n", cs, csmin, rcs / 1024
  printf "| skrr-onnx convert | %.2f | %.2f | %.1f |\n", v, vmin, rv / 1024
  printf "\nmedian: convert / cp = %.2f, convert / (cp + sync) = %.2f\n", v / c, v / cs
  printf "best:   convert / cp = %.2f, convert / (cp + sync) = %.2f\n", vmin / cmin, vmin / csmin
}'
