"""Oracle for tests/initializer_inputs.rs: models whose initializers are also graph inputs.

Before IR version 4 the ONNX spec required every initializer to be listed in graph.input, and
`torch.onnx.export(..., keep_initializers_as_inputs=True)` still writes models that way: the
model's own inputs first, then one input per initializer, in initializer order, with the
initializer's element type and static shape. ONNX Runtime uses the initializer when such an
input is not fed.

  list SRC DST [IR]   write DST: SRC with every initializer also listed as a graph input, as
                      that exporter option lays them out (for t5_gated, exporting with
                      fixtures/generate.py's settings plus keep_initializers_as_inputs=True
                      gives this graph byte for byte, torch 2.15); with IR, also set the
                      model's ir_version (3: the listing is required, and onnx.checker
                      refuses an initializer that is not listed)
  check A B [A B ...] A and B are the same plan applied to a model and to its listed variant:
                      print a JSON list, one entry per pair: the checker's verdict on B, the
                      inputs of A and of B
                      without an initializer (what callers must feed), how many of B's inputs
                      declare an initializer and how many initializers B has, and
                      max |a - b| / max(1, max |a|) of the two models' outputs in ONNX Runtime
                      over several batch shapes
"""

import json
import sys

import numpy as np
import onnx
import onnx.checker
import onnxruntime as ort
from onnx import helper


def list_initializers(src, dst, ir=None):
    model = onnx.load(src)
    if ir is not None:
        model.ir_version = int(ir)
    listed = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in listed:
            model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    onnx.save(model, dst)


def session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the "initializer appears in graph inputs" warnings are expected
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def fed(model):
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def check_pair(a, b):
    model = onnx.load(b)
    onnx.checker.check_model(b, full_check=True)
    sa, sb = session(a), session(b)
    rng = np.random.default_rng(5)
    err = 0.0
    for batch, seq in [(1, 5), (3, 16), (2, 33)]:
        ids = rng.integers(2, 500, (batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), np.int64)
        mask[0, seq - 2:] = 0
        feeds = {"input_ids": ids, "attention_mask": mask}
        for x, y in zip(sa.run(None, feeds), sb.run(None, feeds)):
            x, y = x.astype(np.float64), y.astype(np.float64)
            err = max(err, float(np.abs(x - y).max() / max(1.0, np.abs(x).max())))
    return {
        "checker": True,
        "fed": [fed(onnx.load(a)), fed(model)],
        "listed": len(model.graph.input) - len(fed(model)),
        "initializers": len(model.graph.initializer),
        "rel_err": err,
    }


def check(*paths):
    print(json.dumps([check_pair(a, b) for a, b in zip(paths[::2], paths[1::2])]))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"list": list_initializers, "check": check}[cmd](*args)
