"""Independent oracle for `skrr-onnx apply`: executes a plan on the *dense* model and compares
the rewritten model's ONNX Runtime output with it, and checks the rewritten file itself.

The plan is executed without the Rust rewrite: each needed sub-block is cut out of the dense
model with `onnx.utils.Extractor` (stream value + side inputs + graph inputs in, stream value
out), the stream and side inputs at every position come from one dense run with those values
exposed as outputs, and the plan is recomposed session by session (skip = pass the stream
through; re-use of q at p = q's sub-model fed p's stream and p's side inputs, bound by position).

usage: rewrite_oracle.py DENSE.onnx SPEC.json  -> prints {"cases": [report, ...]} as JSON

SPEC: {"sub_blocks": [{"input", "output", "side_inputs"}...] (from the block analysis),
       "cases": [{"rewritten": path, "actions": ["keep" | "skip" | ["reuse", q], ...],
                  "stream_values": [value carrying the stream after each position]}, ...],
       "shapes": [[batch, seq], ...], "vocab": int, "seed": int}
"""

import json
import sys

import numpy as np
import onnx
import onnx.checker
import onnx.numpy_helper
import onnx.shape_inference
import onnx.utils
import onnxruntime as ort


def session(model, optimize=True):
    """A CPU session on a ModelProto or a file path (external data is found beside the file).
    Without `optimize`, ONNX Runtime runs the graph's own ops (no fusions), so the rewritten
    model and the recomposed plan execute the same arithmetic and must agree exactly; with it,
    fusions that differ between a whole model and its cut-out pieces round differently (visible
    in fp16)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def rel_err(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def check_file(dense, dense_inits, rewritten_path):
    """The rewritten file: checker, strict shape inference, interface and header preserved,
    weights stored once and unchanged."""
    report = {}
    rewritten = onnx.load(rewritten_path)
    onnx.checker.check_model(rewritten_path, full_check=True)
    report["checker"] = True
    onnx.shape_inference.infer_shapes(rewritten, strict_mode=True, check_type=True)
    report["shape_inference"] = True
    report["ir_version"] = [dense.ir_version, rewritten.ir_version]
    report["opsets_equal"] = sorted((o.domain, o.version) for o in dense.opset_import) == sorted(
        (o.domain, o.version) for o in rewritten.opset_import
    )
    report["io_equal"] = list(dense.graph.input) == list(rewritten.graph.input) and list(
        dense.graph.output
    ) == list(rewritten.graph.output)
    report["op_types_added"] = sorted(
        {n.op_type for n in rewritten.graph.node} - {n.op_type for n in dense.graph.node}
    )
    report["domains"] = sorted({n.domain for n in rewritten.graph.node})
    report["metadata"] = {p.key: p.value for p in rewritten.metadata_props}
    out_inits = {t.name: onnx.numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    report["initializers"] = [len(dense_inits), len(out_inits)]
    report["params"] = [
        int(sum(a.size for a in dense_inits.values())),
        int(sum(a.size for a in out_inits.values())),
    ]
    # Re-used weights stored once: with shared weights every rewritten initializer is a dense
    # one, unchanged (new ones appear only with --reuse-weights copy).
    report["new_initializers"] = sorted(set(out_inits) - set(dense_inits))
    report["changed_initializers"] = sorted(
        n for n in out_inits if n in dense_inits and not np.array_equal(out_inits[n], dense_inits[n])
    )
    return report


def main(dense_path, spec_path):
    spec = json.load(open(spec_path))
    blocks = spec["sub_blocks"]
    dense = onnx.load(dense_path)
    dense_inits = {t.name: onnx.numpy_helper.to_array(t) for t in dense.graph.initializer}

    # Dense run with every stream and side value exposed.
    inferred = onnx.shape_inference.infer_shapes(dense)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    exposed = []
    for b in blocks:
        for name in [b["input"], b["output"], *b["side_inputs"]]:
            if name not in exposed and name not in {o.name for o in dense.graph.output}:
                exposed.append(name)
    graph_inputs = [i.name for i in dense.graph.input]
    exposed = [n for n in exposed if n not in graph_inputs]
    probe = onnx.ModelProto()
    probe.CopyFrom(dense)
    for name in exposed:
        probe.graph.output.append(known[name])
    dense_sess = {opt: session(probe, opt) for opt in (True, False)}

    extractor = onnx.utils.Extractor(inferred)
    subs = {}

    def sub_model(q, optimize):
        if (q, optimize) not in subs:
            b = blocks[q]
            ins = list(dict.fromkeys([b["input"], *b["side_inputs"], *graph_inputs]))
            subs[q, optimize] = (session(extractor.extract_model(ins, [b["output"]]), optimize), ins)
        return subs[q, optimize]

    last = blocks[-1]["output"]
    out_names = [o.name for o in dense.graph.output]
    # Without an epilogue the last stream value is the output itself.
    epilogue = {True: None, False: None}
    if out_names != [last]:
        epi = extractor.extract_model(list(dict.fromkeys([last, *graph_inputs])), out_names)
        epilogue = {opt: session(epi, opt) for opt in (True, False)}
    fp16 = dense.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    rng = np.random.default_rng(spec.get("seed", 0))
    feeds = []
    for batch, seq in spec["shapes"]:
        ids = rng.integers(2, spec["vocab"], size=(batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), dtype=np.int64)
        for r in range(1, batch):  # padded rows, as in a real batch
            mask[r, seq - (r * seq) // (batch + 1) :] = 0
            ids[r, mask[r] == 0] = 0
        feed = {n: v for n, v in {"input_ids": ids, "attention_mask": mask}.items() if n in graph_inputs}
        values = {}
        for opt, sess in dense_sess.items():
            values[opt] = dict(zip([o.name for o in probe.graph.output], sess.run(None, feed)))
            values[opt].update(feed)
        feeds.append((batch, seq, feed, values))
    cases = []
    for case in spec["cases"]:
        report = check_file(dense, dense_inits, case["rewritten"])
        report["fp16"] = bool(fp16)
        report["runs"] = run_plan(case, blocks, feeds, sub_model, epilogue, last, optimize=False)
        for run, opt in zip(report["runs"], run_plan(case, blocks, feeds, sub_model, epilogue, last, optimize=True)):
            run["rel_err_optimized"] = opt["rel_err"]
        cases.append(report)
    print(json.dumps({"cases": cases}))


def tapped(path, names):
    """The model at `path` with `names` (those it has that are not outputs already) exposed as
    extra graph outputs, after its own outputs.

    Why: ONNX Runtime's CPU provider wraps fp16 ops without fp16 kernels in Casts and removes
    the Cast pairs between them, so a value that is not a graph output may stay fp32 across ops.
    The recomposed plan materialises every stream and side value in the model's dtype at the
    sub-model boundaries; tapping the rewritten model at the same values makes both execute the
    same arithmetic, so a correct rewrite matches exactly even in fp16 (untapped, they differ by
    a few fp16 ulps on the dense model itself)."""
    model = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in inferred.graph.value_info}
    have = {o.name for o in model.graph.output}
    for n in dict.fromkeys(names):
        if n in known and n not in have:
            model.graph.output.append(known[n])
    return model


def run_plan(case, blocks, feeds, sub_model, epilogue, last, optimize):
    """The plan recomposed from dense sub-models vs ONNX Runtime on the rewritten model."""
    actions = case["actions"]
    sides = [s for b in blocks for s in b["side_inputs"]]
    new_sess = session(tapped(case["rewritten"], [*case["stream_values"], *sides]), optimize)
    epilogue = epilogue[optimize]
    runs = []
    for batch, seq, feed, values in feeds:
        values = values[optimize]
        h = values[blocks[0]["input"]]
        for p, a in enumerate(actions):
            if a == "skip":
                continue
            q = p if a == "keep" else a[1]
            sess, ins = sub_model(q, optimize)
            bind = {blocks[q]["input"]: h}
            for k, name in enumerate(blocks[q]["side_inputs"]):
                bind[name] = values[blocks[p]["side_inputs"][k]]
            sub_feed = {n: bind[n] if n in bind else values[n] for n in ins}
            sub_feed = {i.name: sub_feed[i.name] for i in sess.get_inputs()}
            (h,) = sess.run(None, sub_feed)
        if epilogue is None:
            want = [h]
        else:
            epi_feed = {last: h, **feed}
            want = epilogue.run(None, {i.name: epi_feed[i.name] for i in epilogue.get_inputs()})
        got = new_sess.run(None, feed)[: len(want)]
        runs.append({"batch": batch, "seq": seq, "rel_err": max(rel_err(g, w) for g, w in zip(got, want))})
    return runs


if __name__ == "__main__":
    main(*sys.argv[1:])
