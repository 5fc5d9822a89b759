"""Runs ONNX models with ONNX Runtime (CPU) on one set of int64 inputs, in one process.

usage: run_models.py job.json  ->  prints {"outputs": [{"shape": [...], "data": [...]}, ...]}
job: {"models": [path, ...], "inputs": {name: [[...], ...], ...}, "output": "last_hidden_state"}

Each model is fed the inputs it declares (by name; `token_type_ids` and `position_ids`, when the
job has none, as skrr-onnx feeds them: zeros, and 0..len on every row) and its output `output` is
returned widened to float64, row-major. Nothing is compared here: tests/torch_plans.rs compares
with PyTorch's references in fixtures/<name>/plans.json.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    inputs = {k: np.array(v, dtype=np.int64) for k, v in job["inputs"].items()}
    outputs = []
    for path in job["models"]:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in session.get_inputs():
            if i.name == "token_type_ids" and i.name not in inputs:
                feeds[i.name] = np.zeros_like(inputs["input_ids"])
            elif i.name == "position_ids" and i.name not in inputs:  # Optimum's Llama / Qwen2 exports
                ids = inputs["input_ids"]
                feeds[i.name] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
            else:
                feeds[i.name] = inputs[i.name]
        (out,) = session.run([job["output"]], feeds)
        outputs.append({"shape": list(out.shape), "data": out.astype(np.float64).ravel().tolist()})
    json.dump({"outputs": outputs}, sys.stdout)


if __name__ == "__main__":
    main()
