"""Writes a large external-data ONNX model for the model I/O benchmark (benches/roundtrip.sh).

A chain of fp32 MatMul layers (x @ W_0 @ W_1 ...), with random normal weights written straight
into one data file with numpy, so a multi-GB model takes seconds and little memory. It is a
valid ONNX model (onnx.checker accepts it) but not a transformer: the benchmark measures
reading and writing bytes, not what they compute.

    python benches/make_big_model.py OUT_DIR [--gib 4.0] [--hidden 4096]
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--gib", type=float, default=4.0, help="total weight size in GiB (default 4)")
    ap.add_argument("--hidden", type=int, default=4096, help="width of each square layer")
    args = ap.parse_args()

    h = args.hidden
    layer_bytes = h * h * 4
    layers = max(1, int(np.ceil(args.gib * (1 << 30) / layer_bytes)))
    os.makedirs(args.out_dir, exist_ok=True)
    model_path = os.path.join(args.out_dir, "model.onnx")
    data_name = "model.onnx.data"

    rng = np.random.default_rng(0)
    inits, nodes = [], []
    offset = 0
    with open(os.path.join(args.out_dir, data_name), "wb") as data:
        for i in range(layers):
            w = rng.standard_normal((h, h), dtype=np.float32) * (1.0 / np.sqrt(h))
            w.astype(np.float32).tofile(data)
            t = TensorProto(name=f"layer{i}.weight", data_type=TensorProto.FLOAT, dims=[h, h])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(layer_bytes))):
                t.external_data.add(key=k, value=v)
            inits.append(t)
            src = "x" if i == 0 else f"h{i}"
            dst = "y" if i == layers - 1 else f"h{i + 1}"
            nodes.append(helper.make_node("MatMul", [src, t.name], [dst], name=f"layer{i}"))
            offset += layer_bytes
            pad = -offset % ALIGN
            data.write(b"\0" * pad)
            offset += pad
    graph = helper.make_graph(
        nodes, "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", h])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="skrr-onnx benches", ir_version=8,
                              opset_imports=[helper.make_opsetid("", 17)])
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString())
    onnx.checker.check_model(model_path)
    print(f"{model_path}: {layers} layers of {h}x{h} fp32, {offset} bytes of external data")


if __name__ == "__main__":
    main()
