"""Independent oracle for `skrr-onnx compare`: runs two whole models with ONNX Runtime on each
prompt ALONE (batch 1, no padding) and computes, in float64, the fidelity figures compare
reports: D_c, D_null, max abs error, relative error norm, per-token cosine mean/min and the
null embedding's norm ratio.

usage: fidelity.py dense.onnx pruned.onnx job.json -> prints one JSON object
job: {"prompts": [[ids], ...], "null": [ids] | null}
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def run(sess, ids):
    feeds = {}
    for i in sess.get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = np.array([ids], dtype=np.int64)
        elif i.name == "attention_mask":
            feeds[i.name] = np.ones((1, len(ids)), dtype=np.int64)
        elif i.name == "token_type_ids":
            feeds[i.name] = np.zeros((1, len(ids)), dtype=np.int64)
        else:
            raise SystemExit("unexpected input " + i.name)
    return sess.run(None, feeds)[0][0].astype(np.float64)  # [seq, channels]


def main():
    dense = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    pruned = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
    job = json.load(open(sys.argv[3]))
    sse = dense_sq = 0.0
    max_abs = 0.0
    cos = []
    elems = 0
    for ids in job["prompts"]:
        a, b = run(pruned, ids), run(dense, ids)
        e = a - b
        sse += float((e * e).sum())
        dense_sq += float((b * b).sum())
        max_abs = max(max_abs, float(np.abs(e).max()))
        elems += e.size
        num = (a * b).sum(-1)
        den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
        cos.extend(np.where(den > 0, num / np.where(den > 0, den, 1), 1.0).tolist())
    out = {
        "d_c": sse / elems,
        "max_abs_err": max_abs,
        "rel_err_norm": (sse / dense_sq) ** 0.5,
        "cos_mean": float(np.mean(cos)),
        "cos_min": float(np.min(cos)),
        "tokens": len(cos),
    }
    if job.get("null") is not None:
        a, b = run(pruned, job["null"]), run(dense, job["null"])
        out["d_null"] = float(((a - b) ** 2).sum() / a.size)
        out["null_norm_ratio"] = float(np.sqrt((a * a).sum() / (b * b).sum()))
    print(json.dumps(out))


main()
