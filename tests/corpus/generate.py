#!/usr/bin/env python3
"""Generates the hostile-input corpus of tests/hostile.rs into a folder.

    python tests/corpus/generate.py OUT_DIR [--fixtures fixtures]

Nothing binary is committed: `tests/hostile.rs` runs this script into a temporary folder at
test time (Python with `onnx` and `numpy` only; the well-formed parts are the committed
fixtures). `OUT_DIR/manifest.json` lists every case:

    {"name", "dir", "what", "args": [...], "exit": code, "needles": [...],
     "env": {VAR: value or null to unset}, "isolate": bool, "inputs": [...]}

`args` is the command line after the binary. Placeholders, filled in by the test:
`{case}` the case's folder `dir` (every file in it must be byte-identical afterwards),
`{root}` the corpus folder, `{out}` a fresh empty folder that must still be empty afterwards
(no output, no temporary file). `needles` are substrings of the one-line error (with the same
placeholders), at least one naming the file or tensor at fault. `inputs` lists more files,
outside the case folder, that must not change. `isolate` runs a copy of the binary from a
folder with nothing around it, with only the variables in `env` set.

Each case exercises one subcommand; a case is listed only once that subcommand exists.
"""

import argparse
import copy
import hashlib
import json
import os
import shutil
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Exit codes (src/error.rs; documented in docs/reliability.md).
USAGE, BAD_MODEL, BAD_INPUT, RUNTIME, OUTPUT = 2, 3, 4, 5, 6

CASES = []
ROOT = ""


def case(name, what, args, exit, needles, env=None, isolate=False, inputs=(), dir=None):
    CASES.append(
        {
            "name": name,
            "dir": dir or name,
            "what": what,
            "args": args,
            "exit": exit,
            "needles": needles,
            "env": env or {},
            "isolate": isolate,
            "inputs": list(inputs),
        }
    )


def case_dir(name):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    return d


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def save(model, path):
    write(path, model.SerializeToString())


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire, payload):
    """One protobuf field: key, then the payload (already encoded for its wire type)."""
    return varint(number << 3 | wire) + payload


def init_named(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def tiny_model(initializers=(), nodes=None, opset=17):
    """y = x + w for each initializer w (a minimal valid graph around hostile tensors)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    outs, ns = [], nodes or []
    for i, t in enumerate(initializers):
        y = f"y{i}"
        ns.append(helper.make_node("Add", ["x", t.name], [y], name=f"add{i}"))
        outs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
    g = helper.make_graph(ns, "tiny", [x], outs, list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def external(name, location, offset, length, dims, dtype=TensorProto.FLOAT):
    t = TensorProto()
    t.name = name
    t.data_type = dtype
    t.dims.extend(dims)
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def reading(name, what, needles, exit=BAD_MODEL, inputs=()):
    """A model in folder `name` that every command reading a model must refuse the same way."""
    case(
        name,
        what,
        ["convert", "{case}/model.onnx", "{out}/out.onnx"],
        exit,
        needles,
        inputs=inputs,
    )
    case(
        name + ".inspect",
        what,
        ["inspect", "{case}/model.onnx"],
        exit,
        needles,
        inputs=inputs,
        dir=name,
    )


def model_cases(t5_path):
    """Broken model files: the reader must refuse them (exit 3), naming the file or tensor."""
    t5 = open(t5_path, "rb").read()
    rng = np.random.default_rng(7)

    def convert(name, what, data, needles):
        d = case_dir(name)
        write(os.path.join(d, "model.onnx"), data)
        reading(name, what, needles)

    convert(
        "truncated_protobuf",
        "the t5 fixture cut in the middle of a weight",
        t5[: len(t5) // 2],
        ["{case}/model.onnx", "not a valid ONNX model"],
    )
    convert(
        "truncated_header",
        "the first 3 bytes of the t5 fixture",
        t5[:3],
        ["{case}/model.onnx", "not a valid ONNX model"],
    )
    convert(
        "empty_file",
        "a zero-byte .onnx file",
        b"",
        ["{case}/model.onnx", "not a valid ONNX model"],
    )
    convert(
        "random_bytes",
        "64 KiB of random bytes",
        rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes(),
        ["{case}/model.onnx", "not a valid ONNX model"],
    )
    # ModelProto.ir_version (field 1) is a varint; here it arrives length-delimited.
    convert(
        "wrong_wire_type",
        "ir_version encoded as a length-delimited field",
        field(1, 2, varint(3) + b"abc") + t5,
        ["{case}/model.onnx", "not a valid ONNX model"],
    )
    # ModelProto.graph (field 7) is a message; here it arrives as a varint.
    convert(
        "message_as_varint",
        "the graph field encoded as a varint",
        t5 + field(7, 0, varint(1)),
        ["{case}/model.onnx", "not a valid ONNX model"],
    )
    # A string field (ModelProto.producer_name, field 2) holding invalid UTF-8.
    convert(
        "invalid_utf8",
        "producer_name that is not UTF-8",
        field(2, 2, varint(2) + b"\xff\xfe") + t5,
        ["{case}/model.onnx", "not a valid ONNX model"],
    )
    # A length prefix far beyond the end of the file (a 'decompression bomb' in 9 bytes).
    convert(
        "huge_length_prefix",
        "a graph field declaring 2^40 bytes in a 9-byte file",
        field(7, 2, varint(1 << 40)) + b"\x00\x00",
        ["{case}/model.onnx", "not a valid ONNX model"],
    )

    m = onnx.load_from_string(t5)
    w = init_named(m, "model.encoder.block.0.layer.0.layer_norm.weight")
    w.raw_data = w.raw_data[:-4]
    convert(
        "initializer_short",
        "a [64] float initializer holding 252 bytes",
        m.SerializeToString(),
        ["model.encoder.block.0.layer.0.layer_norm.weight", "{case}/model.onnx"],
    )
    m = onnx.load_from_string(t5)
    w = init_named(m, "model.encoder.block.1.layer.1.layer_norm.weight")
    w.raw_data = w.raw_data + b"\x00" * 8
    convert(
        "initializer_long",
        "a [64] float initializer holding 264 bytes",
        m.SerializeToString(),
        ["model.encoder.block.1.layer.1.layer_norm.weight"],
    )
    m = onnx.load_from_string(t5)
    w = init_named(m, "model.encoder.block.2.layer.0.layer_norm.weight")
    w.ClearField("raw_data")
    w.float_data.extend([1.0] * 63)
    convert(
        "typed_field_short",
        "a [64] float initializer with 63 float_data values",
        m.SerializeToString(),
        ["model.encoder.block.2.layer.0.layer_norm.weight"],
    )
    m = onnx.load_from_string(t5)
    w = init_named(m, "model.encoder.block.3.layer.0.layer_norm.weight")
    del w.dims[:]
    w.dims.extend([-1, -64])
    convert(
        "negative_dims",
        "an initializer with dims [-1, -64] (product 64, as many bytes as stored)",
        m.SerializeToString(),
        ["model.encoder.block.3.layer.0.layer_norm.weight"],
    )
    m = onnx.load_from_string(t5)
    w = init_named(m, "model.encoder.block.3.layer.1.layer_norm.weight")
    del w.dims[:]
    # (2^62 + 1) * 64 = 2^68 + 64: a wrapping product gives exactly the 64 elements stored.
    w.dims.extend([(1 << 62) + 1, 64])
    convert(
        "overflowing_dims",
        "dims whose product wraps around 2^64 to exactly the stored element count",
        m.SerializeToString(),
        ["model.encoder.block.3.layer.1.layer_norm.weight"],
    )
    m = onnx.load_from_string(t5)
    w = init_named(m, "model.encoder.block.0.layer.1.layer_norm.weight")
    del w.dims[:]
    # 2^62 + 64 elements fit an i64, but times 4 bytes wraps to the 256 bytes stored.
    w.dims.extend([(1 << 62) + 64])
    convert(
        "overflowing_bytes",
        "an element count whose size in bytes wraps around 2^64 to the stored size",
        m.SerializeToString(),
        ["model.encoder.block.0.layer.1.layer_norm.weight"],
    )
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1 << 40])
    huge.raw_data = b"\x00" * 4
    convert(
        "huge_declared_raw",
        "4 bytes declaring a [2^40] float tensor",
        tiny_model([huge]).SerializeToString(),
        ["'huge'"],
    )
    huge = TensorProto(name="huge_typed", data_type=TensorProto.FLOAT, dims=[1 << 40])
    huge.float_data.append(0.0)
    convert(
        "huge_declared_typed",
        "one float_data value declaring a [2^40] float tensor",
        tiny_model([huge]).SerializeToString(),
        ["'huge_typed'"],
    )
    bad = TensorProto(name="no_dtype", dims=[4], raw_data=b"\x00" * 16)
    convert(
        "undefined_dtype",
        "an initializer with data_type UNDEFINED",
        tiny_model([bad]).SerializeToString(),
        ["'no_dtype'"],
    )


def external_cases():
    """External data that is missing, short, or points outside the model's folder."""
    w = np.arange(256, dtype=np.float32)
    write(os.path.join(ROOT, "outside.bin"), w.tobytes())
    outside = os.path.join(ROOT, "outside.bin")

    def ext(name, what, location, needles, length=1024, offset=0, setup=None, inputs=()):
        d = case_dir(name)
        if setup:
            setup(d)
        t = external("w_ext", location, offset, length, [length // 4])
        save(tiny_model([t]), os.path.join(d, "model.onnx"))
        reading(name, what, needles, inputs=inputs)

    ext(
        "external_missing",
        "external data file that does not exist",
        "weights.bin",
        ["weights.bin", "'w_ext'"],
    )
    ext(
        "external_short",
        "external data file shorter than offset + length",
        "weights.bin",
        ["weights.bin", "'w_ext'"],
        offset=512,
        setup=lambda d: write(os.path.join(d, "weights.bin"), w.tobytes()),
    )
    ext(
        "external_offset_overflow",
        "offset + length past 2^64",
        "weights.bin",
        ["'w_ext'"],
        offset=(1 << 64) - 8,
        setup=lambda d: write(os.path.join(d, "weights.bin"), w.tobytes()),
    )
    ext(
        "external_absolute",
        "external data at an absolute path (an existing file)",
        outside,
        [outside, "absolute"],
        inputs=["{root}/outside.bin"],
    )
    ext(
        "external_dotdot",
        "external data at ../outside.bin (an existing file)",
        "../outside.bin",
        ["../outside.bin", ".."],
        inputs=["{root}/outside.bin"],
    )
    ext(
        "external_dotdot_inner",
        "external data at sub/../../outside.bin",
        "sub/../../outside.bin",
        ["sub/../../outside.bin"],
        setup=lambda d: os.makedirs(os.path.join(d, "sub"), exist_ok=True),
        inputs=["{root}/outside.bin"],
    )
    ext(
        "external_symlink_escape",
        "external data through a symlink in the folder that points outside it",
        "link.bin",
        ["link.bin"],
        setup=lambda d: os.symlink("../outside.bin", os.path.join(d, "link.bin")),
        inputs=["{root}/outside.bin"],
    )
    ext(
        "external_dir_symlink_escape",
        "external data inside a symlinked folder that points outside",
        "linkdir/outside.bin",
        ["linkdir/outside.bin"],
        setup=lambda d: os.symlink("..", os.path.join(d, "linkdir")),
        inputs=["{root}/outside.bin"],
    )
    ext(
        "external_hardlink_escape",
        "external data through a hard link to a file outside the folder",
        "hard.bin",
        ["hard.bin"],
        setup=lambda d: os.link(outside, os.path.join(d, "hard.bin")),
        inputs=["{root}/outside.bin"],
    )
    ext(
        "external_is_folder",
        "external data location naming a folder",
        "sub",
        ["sub"],
        setup=lambda d: os.makedirs(os.path.join(d, "sub"), exist_ok=True),
    )


def graph_cases(t5_path):
    """Well-formed files holding graphs block detection must refuse (exit 3)."""
    t5 = onnx.load(t5_path)
    nodes = t5.graph.node

    def inspect(name, what, model, needles):
        d = case_dir(name)
        save(model, os.path.join(d, "model.onnx"))
        case(name, what, ["inspect", "{case}/model.onnx"], BAD_MODEL, needles)

    def producer(m, op, nth):
        return [i for i, n in enumerate(m.graph.node) if n.op_type == op][nth]

    # Layer 1's first MatMul reads the output of layer 3's last Add: a cycle through the stream.
    m = copy.deepcopy(t5)
    early, late = producer(m, "MatMul", 9), producer(m, "Add", -2)
    m.graph.node[early].input[0] = m.graph.node[late].output[0]
    inspect(
        "cyclic_graph",
        "a node in layer 1 reads a value computed in layer 3",
        m,
        ["{case}/model.onnx", "cycle"],
    )
    m = copy.deepcopy(t5)
    m.graph.node[producer(m, "MatMul", 5)].input[0] = "ghost_value"
    inspect(
        "undefined_input",
        "a node reads a value nothing produces",
        m,
        ["{case}/model.onnx", "ghost_value"],
    )
    m = copy.deepcopy(t5)
    a, b = producer(m, "Softmax", 0), producer(m, "Softmax", 1)
    old_name = m.graph.node[b].output[0]
    dup = m.graph.node[a].output[0]
    m.graph.node[b].output[0] = dup
    for n in m.graph.node:
        n.input[:] = [dup if i == old_name else i for i in n.input]
    inspect(
        "duplicate_value",
        "two nodes (layers 0 and 1) define the same value name",
        m,
        ["{case}/model.onnx", dup],
    )
    m = copy.deepcopy(t5)
    m.graph.initializer.append(copy.deepcopy(m.graph.initializer[2]))
    inspect(
        "duplicate_initializer",
        "an initializer defined twice",
        m,
        ["{case}/model.onnx", m.graph.initializer[2].name],
    )
    m = copy.deepcopy(t5)
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("", 99))
    inspect(
        "unsupported_opset",
        "default-domain opset 99 (newer than any ONNX release)",
        m,
        ["{case}/model.onnx", "opset"],
    )
    m = copy.deepcopy(t5)
    m.opset_import.append(helper.make_opsetid("com.example.private", 1))
    m.graph.node[producer(m, "Tanh", 1)].domain = "com.example.private"
    inspect(
        "unknown_domain",
        "a node from an operator domain nobody implements",
        m,
        ["{case}/model.onnx", "com.example.private"],
    )

    # A two-layer MLP: valid, but no transformer blocks.
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128), dtype=np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 64), dtype=np.float32), "w2")
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])],
        [w1, w2],
    )
    mlp = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mlp.ir_version = 8
    inspect("no_repeated_blocks", "a two-layer MLP", mlp, ["{case}/model.onnx", "residual branches"])

    # Layer 2's FFN activation (Tanh of gelu_new) computed inside an If whose branches hold it.
    m = copy.deepcopy(t5)
    k = producer(m, "Tanh", 2)
    tanh = m.graph.node[k]
    x, y = tanh.input[0], tanh.output[0]

    def branch(tag):
        return helper.make_graph(
            [helper.make_node("Tanh", [x], [f"{y}_{tag}"])],
            f"{tag}_branch",
            [],
            [helper.make_tensor_value_info(f"{y}_{tag}", TensorProto.FLOAT, None)],
        )

    cond = helper.make_node(
        "Constant",
        [],
        ["fuzz_cond"],
        value=helper.make_tensor("c", TensorProto.BOOL, [], [True]),
    )
    iff = helper.make_node(
        "If", ["fuzz_cond"], [y], then_branch=branch("then"), else_branch=branch("else")
    )
    m.graph.node.remove(tanh)
    m.graph.node.insert(k, iff)
    m.graph.node.insert(k, cond)
    inspect(
        "nested_subgraph",
        "an If node with subgraphs inside layer 2's feed-forward block",
        m,
        ["{case}/model.onnx", "If"],
    )


def arity_cases(fixtures):
    """Nodes of standard operators with too few or too many inputs or outputs, or a required one
    without a name: refused by the arity check (src/ops.rs) before block detection, shape logic
    or rewriting index into them (exit 3), naming the node and its operator."""
    models = {
        "t5": onnx.load(os.path.join(fixtures, "t5_gated", "model.onnx")),
        "bert": onnx.load(os.path.join(fixtures, "bert", "model.onnx")),
    }

    def arity(name, what, base, op, nth, edit, needle, op_after=None):
        m = copy.deepcopy(models[base])
        n = [n for n in m.graph.node if n.op_type == op][nth]
        edit(n)
        d = case_dir(name)
        save(m, os.path.join(d, "model.onnx"))
        needles = ["{case}/model.onnx", f'"{n.name}" ({op_after or op})', needle]
        case(name, what, ["inspect", "{case}/model.onnx"], BAD_MODEL, needles)
        return needles

    def keep(k):
        def edit(n):
            del n.input[k:]
        return edit

    def no_outputs(n):
        del n.output[:]

    def unnamed_first_input(n):
        n.input[0] = ""

    first = arity("arity_matmul_one_input", "a MatMul (layer 0's query) without its weight", "t5",
                  "MatMul", 0, keep(1), "has 1 input; MatMul takes 2 inputs at opset 17")
    write(os.path.join(ROOT, "arity_matmul_one_input", "plan.json"), plan_json(8))
    case("arity_matmul_one_input.apply", "apply on a model with a one-input MatMul",
         ["apply", "{case}/model.onnx", "{case}/plan.json", "{out}/p.onnx"], BAD_MODEL, first,
         dir="arity_matmul_one_input")
    case("arity_matmul_one_input.main", "the main job on a model with a one-input MatMul",
         ["{case}/model.onnx", "{out}/p.onnx", "--sparsity=0.2"], BAD_MODEL, first,
         dir="arity_matmul_one_input")
    arity("arity_add_three_inputs", "an Add with a third input", "t5", "Add", 5,
          lambda n: n.input.append(n.input[0]), "has 3 inputs; Add takes 2 inputs")
    arity("arity_mul_no_output", "a Mul with no output", "t5", "Mul", 4,
          no_outputs, "has 0 outputs; Mul takes 1 output")
    arity("arity_softmax_two_outputs", "a Softmax with a second output", "t5", "Softmax", 1,
          lambda n: n.output.append("softmax_extra"), "has 2 outputs; Softmax takes 1 output")
    arity("arity_layernorm_one_input", "a LayerNormalization without its scale", "bert",
          "LayerNormalization", 2, keep(1), "LayerNormalization takes 2 to 3 inputs")
    arity("arity_layernorm_four_outputs", "a LayerNormalization with four outputs", "bert",
          "LayerNormalization", 3, lambda n: n.output.extend(["m", "s", "x"]),
          "has 4 outputs; LayerNormalization takes 1 to 3 outputs")
    arity("arity_gather_unnamed_data", "the embedding Gather's table input named ''", "t5",
          "Gather", 0, unnamed_first_input, "required input 0 has no name")
    arity("arity_reshape_one_input", "a Reshape without its shape input (opset 17)", "t5",
          "Reshape", 2, keep(1), "has 1 input; Reshape takes 2 inputs at opset 17")
    arity("arity_transpose_two_inputs", "a Transpose with a second input", "bert", "Transpose", 0,
          lambda n: n.input.append(n.input[0]), "Transpose takes 1 input")
    arity("arity_where_two_inputs", "a Where without its third input (fuzz finding 4)", "t5",
          "Where", 0, keep(2), "has 2 inputs; Where takes 3 inputs")
    arity("arity_constant_with_input", "a Constant reading a value", "t5", "Constant", 3,
          lambda n: n.input.append("input_ids"), "has 1 input; Constant takes 0 inputs")
    arity("arity_concat_no_inputs", "a Concat with no inputs", "t5", "Concat", 0, keep(0),
          "has 0 inputs; Concat takes at least 1 input")

    def to_gemm(n):
        n.op_type = "Gemm"
        n.input.extend([n.input[1], n.input[0]])

    arity("arity_gemm_four_inputs", "a Gemm (was a MatMul) with four inputs", "bert", "MatMul", 2,
          to_gemm, "has 4 inputs; Gemm takes 2 to 3 inputs", op_after="Gemm")


def output_cases(t5_path):
    """Outputs the writer must refuse, leaving the input alone (exit 6)."""
    d = case_dir("output_is_input")
    shutil.copy(t5_path, os.path.join(d, "model.onnx"))
    case(
        "output_is_input",
        "convert a model onto itself",
        ["convert", "{case}/model.onnx", "{case}/model.onnx"],
        OUTPUT,
        ["{case}/model.onnx", "input"],
    )
    d = case_dir("output_is_input_hardlink")
    shutil.copy(t5_path, os.path.join(d, "model.onnx"))
    os.link(os.path.join(d, "model.onnx"), os.path.join(d, "alias.onnx"))
    case(
        "output_is_input_hardlink",
        "convert a model onto a hard link of itself",
        ["convert", "{case}/model.onnx", "{case}/alias.onnx"],
        OUTPUT,
        ["{case}/alias.onnx", "input"],
    )
    d = case_dir("output_is_input_data")
    t5 = onnx.load(t5_path)
    onnx.save_model(
        t5,
        os.path.join(d, "model.onnx"),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    case(
        "output_is_input_data",
        "convert with the output's data file named as the input's data file",
        ["convert", "{case}/model.onnx", "{case}/new.onnx", "--external-data=model.onnx.data"],
        OUTPUT,
        ["{case}/model.onnx.data", "input"],
    )
    case(
        "output_folder_missing",
        "output inside a folder that does not exist",
        ["convert", "{root}/valid/t5.onnx", "{out}/missing/out.onnx"],
        OUTPUT,
        ["{out}/missing", "does not exist"],
        inputs=["{root}/valid/t5.onnx"],
    )
    case(
        "output_is_folder",
        "output path naming an existing folder",
        ["convert", "{root}/valid/t5.onnx", "{out}"],
        OUTPUT,
        ["{out}", "folder"],
        inputs=["{root}/valid/t5.onnx"],
    )


def plan_json(n, **extra):
    """An all-keep plan for n sub-blocks (the minimal hand-written form)."""
    plan = {"format": "skrr-plan/1", "sub_blocks": [{"index": i, "action": "keep"} for i in range(n)]}
    plan.update(extra)
    return json.dumps(plan).encode()


def calib_cases(fixtures):
    """Calibration inputs and plans that do not fit the model (exit 4), through `score`."""
    bert = os.path.join(fixtures, "bert", "model.onnx")
    valid = ["{root}/valid"]

    def score(name, what, files, extra, needles, exit=BAD_INPUT):
        d = case_dir(name)
        for fname, data in files.items():
            write(os.path.join(d, fname), data)
        if "plan.json" not in files:
            write(os.path.join(d, "plan.json"), plan_json(8))
        args = ["score", "{root}/valid/t5.onnx", "--plan", "{case}/plan.json"]
        case(name, what, args + extra, exit, needles, inputs=valid)

    ids = "{case}/ids.jsonl"
    score("calib_bad_json", "line 2 is cut off", {"ids.jsonl": b"[5, 6, 7]\n[5, 6,\n"},
          ["--calib", ids], [ids + ":2", "invalid JSON"])
    score("calib_empty_line", "an empty line between sequences",
          {"ids.jsonl": b"[5, 6, 7]\n\n[8, 9]\n"}, ["--calib", ids], [ids + ":2", "empty line"])
    score("calib_only_empty_lines", "a file of empty lines", {"ids.jsonl": b"\n\n\n"},
          ["--calib", ids], [ids + ":1", "empty line"])
    score("calib_empty_file", "an empty file", {"ids.jsonl": b""}, ["--calib", ids],
          [ids, "no sequences"])
    score("calib_out_of_vocab", "token id 999999 with a vocabulary of 583",
          {"ids.jsonl": b"[5, 999999, 1]\n"}, ["--calib", ids], [ids + ":1", "999999", "vocabulary"])
    score("calib_negative_id", "a negative token id", {"ids.jsonl": b"[5, -3, 1]\n"},
          ["--calib", ids], [ids + ":1", "-3"])
    score("calib_float_ids", "token ids as floats", {"ids.jsonl": b"[5.5, 6, 1]\n"},
          ["--calib", ids], [ids + ":1", "not an integer"])
    score("calib_string_ids", "input_ids as a string", {"ids.jsonl": b'{"input_ids": "5 6 1"}\n'},
          ["--calib", ids], [ids + ":1", "input_ids"])
    score("calib_missing", "a calibration file that does not exist", {}, ["--calib", ids], [ids])
    score("prompts_empty", "a prompt file of blank lines", {"prompts.txt": b"\n  \n\n"},
          ["--prompts", "{case}/prompts.txt"], ["{case}/prompts.txt", "no prompts"])
    score("tokenizer_garbage", "a tokenizer.json that is not a tokenizer",
          {"prompts.txt": b"a red fox\n", "tokenizer.json": b'{"not": "a tokenizer"}'},
          ["--prompts", "{case}/prompts.txt", "--tokenizer", "{case}/tokenizer.json"],
          ["{case}/tokenizer.json"])
    score("null_ids_out_of_vocab", "--null-ids beyond the vocabulary",
          {"ids.jsonl": b"[5, 6, 1]\n"}, ["--calib", ids, "--null-ids", "1,70000"],
          ["--null-ids", "70000"])

    # Plans.
    score("plan_bad_json", "a plan file that is not JSON", {"plan.json": b"{\"sub_blocks\": [",
          "ids.jsonl": b"[5, 6, 1]\n"}, ["--calib", ids], ["{case}/plan.json"])
    score("plan_other_model", "the plan of the 5-layer BERT fixture on the 4-layer T5",
          {"plan.json": plan_json(10, model={"sha256": hashlib.sha256(open(bert, "rb").read()).hexdigest(), "layers": 5}),
           "ids.jsonl": b"[5, 6, 1]\n"}, ["--calib", ids], ["{case}/plan.json", "5 layers"])
    bad_reuse = json.loads(plan_json(8))
    bad_reuse["sub_blocks"][2] = {"index": 2, "action": "reuse", "source": 1}
    score("plan_reuse_other_kind", "attention sub-block 2 re-uses feed-forward sub-block 1",
          {"plan.json": json.dumps(bad_reuse).encode(), "ids.jsonl": b"[5, 6, 1]\n"},
          ["--calib", ids], ["{case}/plan.json", "re-use"])

    # compare: the pruned model must be readable and a drop-in replacement.
    case_dir("compare_pruned_broken")
    case("compare_pruned_broken", "compare against a truncated pruned model",
         ["compare", "{root}/valid/t5.onnx", "{root}/truncated_protobuf/model.onnx", "--calib",
          "{root}/valid/ids.jsonl"], BAD_MODEL,
         ["{root}/truncated_protobuf/model.onnx", "not a valid ONNX model"],
         inputs=valid + ["{root}/truncated_protobuf"])
    case_dir("compare_not_drop_in")
    case("compare_not_drop_in", "compare against a model with other inputs and outputs",
         ["compare", "{root}/valid/t5.onnx", "{root}/no_repeated_blocks/model.onnx", "--calib",
          "{root}/valid/ids.jsonl"], BAD_INPUT,
         ["{root}/no_repeated_blocks/model.onnx", "drop-in"],
         inputs=valid + ["{root}/no_repeated_blocks"])

    # ONNX Runtime missing when a command needs it.
    score("score_ort_missing", "score with ORT_DYLIB_PATH naming a missing file",
          {"ids.jsonl": b"[5, 6, 1]\n"}, ["--calib", ids],
          ["{case}/libonnxruntime.so", "pip install onnxruntime"], exit=RUNTIME)
    CASES[-1]["env"] = {"ORT_DYLIB_PATH": "{case}/libonnxruntime.so"}


def plan_cases():
    """Targets `plan` must refuse before searching (exit 2), and outputs it must not write."""
    valid = ["{root}/valid"]

    def plan(name, what, sparsity, needles, out="{out}/plan.json", exit=USAGE):
        case_dir(name)
        args = ["plan", "{root}/valid/t5.onnx", "-o", out, f"--sparsity={sparsity}"]
        case(name, what, args, exit, needles, inputs=valid)

    plan("sparsity_zero", "--sparsity 0", "0", ["sparsity", "0"])
    plan("sparsity_one", "--sparsity 1", "1", ["sparsity", "1"])
    plan("sparsity_negative", "--sparsity -0.5", "-0.5", ["sparsity", "-0.5"])
    plan("sparsity_above_one", "--sparsity 1.5", "1.5", ["sparsity", "1.5"])
    plan("sparsity_nan", "--sparsity NaN", "NaN", ["sparsity", "NaN"])
    plan("sparsity_unreachable", "--sparsity 0.95: more than all sub-blocks hold", "0.95",
         ["0.95", "unreachable"])
    plan("plan_output_is_input", "plan written over the model", "0.2",
         ["{root}/valid/t5.onnx", "input"], out="{root}/valid/t5.onnx", exit=OUTPUT)
    plan("plan_output_folder_missing", "plan written into a folder that does not exist", "0.2",
         ["{out}/missing"], out="{out}/missing/plan.json", exit=OUTPUT)


def main_job_cases():
    """The end-to-end command and `apply`: refused before any work, nothing written."""
    valid = ["{root}/valid"]
    t5 = "{root}/valid/t5.onnx"

    def run(name, what, args, exit, needles, plan=None):
        d = case_dir(name)
        if plan is not None:
            write(os.path.join(d, "plan.json"), plan)
        case(name, what, args, exit, needles, inputs=valid + (["{case}"] if plan else []))

    def job(out, sparsity):
        return [t5, out, f"--sparsity={sparsity}"]

    run("main_sparsity_zero", "main job with --sparsity 0", job("{out}/p.onnx", "0"), USAGE,
        ["sparsity", "0"])
    run("main_sparsity_unreachable", "main job with --sparsity 0.95: more than all sub-blocks hold",
        job("{out}/p.onnx", "0.95"), USAGE, ["0.95", "unreachable"])
    run("main_output_is_input", "main job writing over its input", job(t5, "0.2"), OUTPUT,
        [t5, "over the input"])
    run("main_output_folder_missing", "main job writing into a folder that does not exist",
        job("{out}/missing/p.onnx", "0.2"), OUTPUT, ["{out}/missing"])
    run("apply_output_folder_missing", "apply into a folder that does not exist",
        ["apply", t5, "{case}/plan.json", "{out}/missing/p.onnx"], OUTPUT, ["{out}/missing"],
        plan=plan_json(8))
    run("apply_output_is_input", "apply writing over its input",
        ["apply", t5, "{case}/plan.json", t5], OUTPUT, [t5], plan=plan_json(8))
    run("apply_plan_other_model", "apply a 10-sub-block plan to the 8-sub-block T5",
        ["apply", t5, "{case}/plan.json", "{out}/p.onnx"], BAD_INPUT, ["{case}/plan.json"],
        plan=plan_json(10))


def runtime_cases():
    """ONNX Runtime missing (exit 5): a broken ORT_DYLIB_PATH, and no Python at all."""
    d = case_dir("ort_dylib_missing")
    case(
        "ort_dylib_missing",
        "ORT_DYLIB_PATH names a file that does not exist",
        ["doctor"],
        RUNTIME,
        ["{case}/libonnxruntime.so.1.32.0", "pip install onnxruntime"],
        env={"ORT_DYLIB_PATH": "{case}/libonnxruntime.so.1.32.0"},
    )
    d = case_dir("ort_dylib_garbage")
    write(os.path.join(d, "libonnxruntime.so"), b"\x7fELF but not really a shared library")
    case(
        "ort_dylib_garbage",
        "ORT_DYLIB_PATH names a file that is not a shared library",
        ["doctor"],
        RUNTIME,
        ["{case}/libonnxruntime.so"],
        env={"ORT_DYLIB_PATH": "{case}/libonnxruntime.so"},
    )
    case_dir("ort_no_python")
    case(
        "ort_no_python",
        "no ORT_DYLIB_PATH, no python on PATH, no .venv near the binary",
        ["doctor"],
        RUNTIME,
        ["libonnxruntime.so", "pip install onnxruntime"],
        env={"PATH": "{case}"},
        isolate=True,
    )


def main():
    global ROOT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to write the corpus into (created; must be empty)")
    ap.add_argument(
        "--fixtures",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures"),
    )
    args = ap.parse_args()
    ROOT = os.path.abspath(args.out)
    os.makedirs(ROOT, exist_ok=True)
    if os.listdir(ROOT):
        sys.exit(f"{ROOT} is not empty")
    t5_path = os.path.join(args.fixtures, "t5_gated", "model.onnx")

    valid = case_dir("valid")
    shutil.copy(t5_path, os.path.join(valid, "t5.onnx"))
    shutil.copy(os.path.join(args.fixtures, "t5_gated", "tokenizer.json"), valid)
    write(os.path.join(valid, "ids.jsonl"), b"[5, 6, 1]\n[7, 8, 9, 1]\n")

    model_cases(t5_path)
    external_cases()
    graph_cases(t5_path)
    arity_cases(args.fixtures)
    output_cases(t5_path)
    runtime_cases()
    calib_cases(args.fixtures)
    plan_cases()
    main_job_cases()

    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    with open(os.path.join(ROOT, "manifest.json"), "w") as f:
        json.dump({"format": "skrr-hostile/1", "cases": CASES}, f, indent=1)
    print(f"{len(CASES)} cases in {ROOT}")


if __name__ == "__main__":
    main()
