"""Peak resident memory of an ONNX Runtime CPU session running each model (issue #6, "Memory
that matters to users"), each in a fresh process so that nothing is shared or cached.

usage: rewrite_memory.py MODEL [MODEL ...] [--batch 8] [--seq 64] [--repeat 3] [--json]

For every model: load an InferenceSession (default options, what users get), run one batch,
read the child's peak RSS (VmHWM) once the session is created ("load") and after the run. A
baseline child (numpy + onnxruntime imported, no model) is measured the same way; `model_mb` =
peak − baseline is the memory the model itself costs, the number the target (pruned/dense ≤
1 − sparsity + 0.05) is about. The minimum over --repeat runs is reported (RSS only ever adds
noise upwards). The load peak shows where a peak comes from: ONNX Runtime parses a model with
inline weights into memory and copies them out, so for a while it holds them twice.
"""

import argparse
import json
import os
import subprocess
import sys

# Peak RSS is read from VmHWM (the high-water mark of the child's own address space), not
# ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child would report the parent's
# size whenever the parent had grown (e.g. after loading a model to count its bytes).
CHILD = r"""
import sys
import numpy as np
import onnxruntime as ort
path, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if path != "-":
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for i in s.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = rng.integers(2, 100, size=(batch, seq), dtype=np.int64)
        else:
            feed[i.name] = np.ones((batch, seq), dtype=np.int64)
hwm = lambda: next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
load = hwm()
if path != "-":
    s.run(None, feed)
print(load, hwm())
"""


def peak_kb(path, batch, seq):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(batch), str(seq)],
        check=True,
        capture_output=True,
        text=True,
    )
    load, peak = out.stdout.strip().splitlines()[-1].split()
    return int(load), int(peak)


def files_bytes(path):
    """The model file plus the external data files it references (beside it)."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    locs = {
        e.value
        for t in m.graph.initializer
        for e in t.external_data
        if e.key == "location"
    }
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.getsize(path) + sum(os.path.getsize(os.path.join(folder, l)) for l in locs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    base = min(peak_kb("-", a.batch, a.seq)[1] for _ in range(a.repeat))
    rows = []
    for m in a.models:
        runs = [peak_kb(m, a.batch, a.seq) for _ in range(a.repeat)]
        load, peak = min(r[0] for r in runs), min(r[1] for r in runs)
        rows.append(
            {
                "model": m,
                "file_mb": files_bytes(m) / 2**20,
                "load_peak_mb": load / 1024,
                "peak_mb": peak / 1024,
                "model_mb": (peak - base) / 1024,
            }
        )
    result = {"baseline_mb": base / 1024, "batch": a.batch, "seq": a.seq, "rows": rows}
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print(f"baseline (python + onnxruntime, no model): {base / 1024:.1f} MB; batch {a.batch} x seq {a.seq}")
    print("| model | file MB | peak RSS MB after load | peak RSS MB | model MB (peak - baseline) | vs first |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["model_mb"] / rows[0]["model_mb"] if rows[0]["model_mb"] > 0 else float("nan")
        print(
            f"| {r['model']} | {r['file_mb']:.2f} | {r['load_peak_mb']:.1f} | {r['peak_mb']:.1f} "
            f"| {r['model_mb']:.1f} | {ratio:.3f} |"
        )


if __name__ == "__main__":
    main()
