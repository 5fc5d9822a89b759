"""Oracle for tests/model_io.rs (Python `onnx` + ONNX Runtime, independent of skrr-onnx).

  make DIR            write DIR/rich.onnx: a small model using every storage form and every
                      piece of model information a round trip must keep; and the same model
                      with one external data file per tensor (onnx's other layout) in
                      DIR/multi/rich.onnx
  edit MODEL TENSOR KEY=VALUE...
                      change a tensor in place for negative tests: dims=2,3 or an external
                      data entry (location=..., offset=..., length=...); the file is rewritten
                      as is, without touching external data
  check ORIG NEW [ORIG NEW ...]
                      print a JSON list, one entry per pair: checker verdict on NEW, whether
                      the two models are equal once tensor storage is normalised, whether
                      ONNX Runtime outputs are bit-identical, and NEW's external data layout
"""

import difflib
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make(out_dir):
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)

    w = numpy_helper.from_array(f32(8, 256), "W")  # raw_data, 8 KiB
    b = helper.make_tensor("B", TensorProto.FLOAT, [256], f32(256).tolist())  # float_data
    h = TensorProto(name="H", data_type=TensorProto.FLOAT16, dims=[256])  # fp16 bits in int32_data
    h.int32_data.extend(f32(256).astype(np.float16).view(np.uint16).tolist())
    emb = numpy_helper.from_array(f32(10, 256), "E")
    shape = numpy_helper.from_array(np.array([0, 0, 16, 16], np.int64), "shape")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    flag = numpy_helper.from_array(np.array(True), "flag")
    small = numpy_helper.from_array(f32(4), "small")  # stays inline
    sub_w = numpy_helper.from_array(f32(256), "sub_w")  # a subgraph initializer, 1 KiB
    for t in (w, b, emb):
        t.doc_string = f"doc of {t.name}"

    then_g = helper.make_graph(
        [helper.make_node("Add", ["y", "sub_w"], ["t_out"])], "then",
        [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
        initializer=[sub_w])
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["e_out"])], "else",
        [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])

    gelu = helper.make_function(
        "custom", "Twice", ["a"], ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)], doc_string="a local function")

    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm", doc_string="projection"),
        helper.make_node("Add", ["xw", "B"], ["y0"], name="bias"),
        helper.make_node("Gather", ["E", "ids"], ["emb"], name="gather"),
        helper.make_node("Add", ["y0", "emb"], ["y1"]),
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(f32(256), "c_value")),
        helper.make_node("Mul", ["y1", "c"], ["y2"]),
        helper.make_node("Twice", ["y2"], ["y"], domain="custom"),
        helper.make_node("If", ["flag"], ["z"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Cast", ["z"], ["z16"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["z16", "H"], ["zh"]),
        helper.make_node("Cast", ["zh"], ["z32"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["z32", "shape"], ["r"]),
        helper.make_node("ReduceSum", ["r", "axes"], ["out"], keepdims=0),
        helper.make_node("Identity", ["small"], ["out2"]),
    ]
    graph = helper.make_graph(
        nodes, "rich",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", 16]),
         helper.make_tensor_value_info("out2", TensorProto.FLOAT, [4])],
        initializer=[w, b, h, emb, shape, axes, flag, small],
        doc_string="graph doc",
        value_info=[helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["batch", "sequence", 256])],
    )
    model = helper.make_model(
        graph, producer_name="model_io_oracle", producer_version="1", model_version=7,
        doc_string="model doc", ir_version=8,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
        functions=[gelu])
    helper.set_model_props(model, {"author": "tests", "purpose": "round trip"})
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(os.path.join(out_dir, "multi"), exist_ok=True)
    onnx.save(model, os.path.join(out_dir, "rich.onnx"))
    onnx.save(model, os.path.join(out_dir, "multi", "rich.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=False, size_threshold=1024)


def all_tensors(model, with_role=False):
    """Every tensor of the model (initializers of all graphs, attribute values, functions)."""
    def graph(g):
        for t in g.initializer:
            yield t, True
        for s in g.sparse_initializer:
            yield s.values, False
            yield s.indices, False
        for n in g.node:
            yield from node(n)

    def attr(a):
        if a.HasField("t"):
            yield a.t, False
        for t in a.tensors:
            yield t, False
        if a.HasField("g"):
            yield from graph(a.g)
        for g in a.graphs:
            yield from graph(g)

    def node(n):
        for a in n.attribute:
            yield from attr(a)

    def every():
        yield from graph(model.graph)
        for f in model.functions:
            for n in f.node:
                yield from node(n)

    for t, init in every():
        yield (t, init) if with_role else t


def normalised(path):
    """The model with every tensor's data as raw bytes and no storage details."""
    model = onnx.load(path)  # loads external data relative to path
    for t in all_tensors(model):
        if t.data_type == TensorProto.STRING:
            continue
        data = numpy_helper.to_array(t).tobytes()
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                      "uint64_data", "external_data", "data_location"):
            t.ClearField(field)
        t.raw_data = data
    return model


def layout(path):
    """Where each tensor of a model is stored: external (location, offset, length) or inline."""
    model = onnx.load(path, load_external_data=False)
    out = []
    for t, init in all_tensors(model, with_role=True):
        entry = {"name": t.name, "initializer": init}
        if t.data_location == TensorProto.EXTERNAL:
            kv = {e.key: e.value for e in t.external_data}
            entry.update(external=True, location=kv.get("location"),
                         offset=int(kv.get("offset", 0)), length=int(kv.get("length", -1)))
        else:
            entry.update(external=False, length=len(numpy_helper.to_array(t).tobytes()))
        out.append(entry)
    return out


def feeds(model_path):
    import onnxruntime as ort
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 3 for d in i.shape]
        if i.type == "tensor(int64)":
            out[i.name] = (np.ones(shape, np.int64) if "mask" in i.name
                           else rng.integers(0, 10, shape).astype(np.int64))
        elif i.type == "tensor(float16)":
            out[i.name] = rng.standard_normal(shape).astype(np.float16)
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def run(model_path, inputs):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    return [np.ascontiguousarray(o).tobytes() for o in sess.run(None, inputs)]


def check(*paths):
    print(json.dumps([check_pair(o, n) for o, n in zip(paths[::2], paths[1::2])]))


def check_pair(orig, new):
    res = {}
    try:
        onnx.checker.check_model(new, full_check=True)
        res["checker"] = "ok"
    except Exception as e:  # noqa: BLE001 - the message is the result
        res["checker"] = f"{type(e).__name__}: {e}"
    a, b = normalised(orig), normalised(new)
    res["equal"] = a == b
    if not res["equal"]:
        diff = difflib.unified_diff(
            str(a).splitlines(), str(b).splitlines(), "orig", "new", lineterm="", n=2)
        res["diff"] = "\n".join(list(diff)[:60])
    ins = feeds(orig)
    res["outputs_identical"] = run(orig, ins) == run(new, ins)
    res["layout"] = layout(new)
    return res


def edit(path, name, *changes):
    model = onnx.load(path, load_external_data=False)
    (t,) = [t for t in all_tensors(model) if t.name == name]
    for change in changes:
        key, value = change.split("=", 1)
        if key == "dims":
            t.ClearField("dims")
            t.dims.extend(int(d) for d in value.split(","))
            continue
        entries = {e.key: e for e in t.external_data}
        if key in entries:
            entries[key].value = value
        else:
            t.external_data.add(key=key, value=value)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"make": make, "check": check, "edit": edit}[cmd](*args)
