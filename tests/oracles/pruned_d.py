"""Independent oracle for the calibration engine's D.

Builds the pruned model of a plan as ONE ONNX graph with the `onnx` package (skip = consumers of
a sub-block's output read its input; re-use = a renamed copy of the source sub-block's nodes
reading the target's stream and side inputs), then runs the dense and the pruned model with
ONNX Runtime on each prompt ALONE (batch 1, no padding unless padded positions count) and
computes D_c and D_null in float64 as the method doc defines them. Nothing is shared with the
engine (no partition, no batching, no cache); only the sub-block boundaries come from the
block analysis, passed in the job file.

usage: pruned_d.py job.json  ->  prints [{"d_c": ..., "d_null": ...}, ...], one per plan
job: {"model", "projection"|null, "output", "sub_blocks": [{"input","output","side_inputs",
      "node_outputs"}], "plans": [[{"action": "keep"|"skip"|"reuse", "source": q}, ...], ...],
      "prompts": [[ids]], "null": [ids]|null, "pad_id", "include_padding", "max_length"}
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def toposort(nodes, graph_inputs, inits):
    have = set(graph_inputs) | set(inits) | {""}
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise SystemExit("pruned graph has unresolved inputs: %s" % [list(n.input) for n in rest[:3]])
        pending = rest
    return out


def prune(model, job, actions):
    g = model.graph
    by_output = {o: n for n in g.node for o in n.output}
    alias = {}

    def resolve(v):
        while v in alias:
            v = alias[v]
        return v

    new_nodes = []
    for p, (sb, act) in enumerate(zip(job["sub_blocks"], actions)):
        if act["action"] == "keep":
            continue
        if act["action"] == "skip":
            alias[sb["output"]] = resolve(sb["input"])
            continue
        q = act["source"]
        src = job["sub_blocks"][q]
        nodes = [by_output[o] for o in src["node_outputs"]]
        made = {o for n in nodes for o in n.output}
        suffix = "__oracle_reuse_%d" % p
        mapping = {src["input"]: resolve(sb["input"])}
        mapping.update(zip(src["side_inputs"], sb["side_inputs"]))
        for n in nodes:
            c = onnx.NodeProto()
            c.CopyFrom(n)
            c.name = (n.name or n.op_type) + suffix
            c.ClearField("input")
            c.input.extend(
                [v + suffix if v in made else mapping.get(v, v) for v in n.input]
            )
            c.ClearField("output")
            c.output.extend([v + suffix for v in n.output])
            new_nodes.append(c)
        alias[sb["output"]] = src["output"] + suffix

    nodes = list(g.node) + new_nodes
    for n in nodes:
        ins = [resolve(v) for v in n.input]
        n.ClearField("input")
        n.input.extend(ins)
    outputs = {resolve(o.name) for o in g.output}
    # dead-code elimination from the outputs
    need, keep = set(outputs), []
    for n in reversed(toposort(nodes, [i.name for i in g.input], [t.name for t in g.initializer])):
        if any(o in need for o in n.output):
            keep.append(n)
            need.update(n.input)
    keep.reverse()
    for o in g.output:
        r = resolve(o.name)
        if r != o.name:
            keep.append(onnx.helper.make_node("Identity", [r], [o.name]))
    g.ClearField("node")
    g.node.extend(keep)
    used = {i for n in keep for i in n.input}
    live = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(live)
    return model


def feeds(session, ids, length, pad_id):
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids = list(ids) + [pad_id] * (length - len(ids))
    f = {}
    for i in session.get_inputs():
        n = i.name
        if n == "input_ids":
            a = np.array([ids], dtype=np.int64)
        elif n == "attention_mask":
            a = np.array([mask], dtype=np.int64)
        elif n == "token_type_ids":
            a = np.zeros((1, length), dtype=np.int64)
        elif n == "position_ids":
            a = np.arange(length, dtype=np.int64)[None]
        else:
            raise SystemExit("unknown input " + n)
        if i.type == "tensor(int32)":
            a = a.astype(np.int32)
        f[n] = a
    return f


def main():
    job = json.load(open(sys.argv[1]))
    so = ort.SessionOptions()
    so.log_severity_level = 3

    def session(model):
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    proj = None
    if job.get("projection"):
        proj = ort.InferenceSession(job["projection"], so, providers=["CPUExecutionProvider"])
    out_name = job["output"]
    fixed = None
    seqs = job["prompts"] + ([job["null"]] if job.get("null") else [])
    if job["include_padding"]:
        fixed = max([len(s) for s in seqs] + [job["max_length"]])

    def run(sess, ids):
        length = fixed or len(ids)
        y = sess.run([out_name], feeds(sess, ids, length, job["pad_id"]))[0].astype(np.float32)
        if proj is not None:
            x = y.astype(np.float16) if proj.get_inputs()[0].type == "tensor(float16)" else y
            y = proj.run(None, {proj.get_inputs()[0].name: x})[0].astype(np.float32)
        return y[0][: length if fixed else len(ids)].astype(np.float64)

    dense = session(onnx.load(job["model"]))
    targets = [run(dense, ids) for ids in seqs]
    results = []
    for actions in job["plans"]:
        pruned = session(prune(onnx.load(job["model"]), job, actions))
        sse = [float(((run(pruned, ids) - t) ** 2).sum()) for ids, t in zip(seqs, targets)]
        count = [t.size for t in targets]
        k = len(job["prompts"])
        d_null = sse[k] / count[k] if job.get("null") else 0.0
        results.append({"d_c": sum(sse[:k]) / sum(count[:k]), "d_null": d_null})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
