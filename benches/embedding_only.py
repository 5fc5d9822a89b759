"""The floor under an inline model's session memory: a model made only of its largest
embedding table, which Skrr never removes (docs/benchmarks.md, "Rewrite").

usage: embedding_only.py MODEL.onnx OUT.onnx

Writes OUT with the same opsets: `input_ids` -> Gather(table) -> output, the table inline with
the model's real values. Run it through benches/rewrite_memory.py next to the dense and pruned
models: ONNX Runtime holds a large inline tensor twice while it loads it, so every inline model
that keeps the table costs at least this model's figure plus its other weights.
"""

import sys

import onnx
from onnx import helper


def main():
    src, dst = sys.argv[1], sys.argv[2]
    m = onnx.load(src)
    inits = {t.name: t for t in m.graph.initializer}
    tables = [n.input[0] for n in m.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    if not tables:
        sys.exit(f"{src}: no Gather reads an initializer")
    table = max(tables, key=lambda name: len(inits[name].raw_data))
    t = inits[table]
    width = t.dims[1]
    graph = helper.make_graph(
        [helper.make_node("Gather", [table, "input_ids"], ["rows"])],
        "embedding_only",
        [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("rows", t.data_type, ["batch", "seq", width])],
        [t],
    )
    out = helper.make_model(graph, opset_imports=m.opset_import, ir_version=m.ir_version)
    onnx.checker.check_model(out)
    onnx.save(out, dst)
    print(f"{dst}: Gather from '{table}' {list(t.dims)}, {len(t.raw_data) / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
