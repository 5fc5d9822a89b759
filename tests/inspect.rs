//! Block detection on the real fixtures (fixtures/manifest.json) and on graphs that must be
//! refused, checked against the PyTorch parameter counts the fixture script recorded and
//! against ONNX Runtime (the analysis graph must compute exactly what the input graph computes).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
use serde_json::Value;
use skrr_onnx::blocks::{self, analyze, Analysis, Kind};
use skrr_onnx::error::{exit, exit_code_of};
use skrr_onnx::onnx::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(common::fixtures().join("manifest.json"))
        .expect("fixtures/manifest.json");
    let m: Value = serde_json::from_str(&text).expect("manifest is JSON");
    m["fixtures"].as_array().expect("fixtures list").clone()
}

fn load(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ModelProto::decode(bytes.as_slice()).expect("valid ONNX protobuf")
}

fn as_u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("count"))
        .collect()
}

/// Independent check of the partition contract: every node in exactly one region; a sub-block
/// reads only its input stream value, initializers, its side inputs, and its own values; side
/// inputs come from the prologue or graph inputs; the prologue reads nothing computed later.
fn check_partition(a: &Analysis) {
    let g = &a.graph;
    let mut region: HashMap<usize, String> = HashMap::new();
    let mut put = |nodes: &[usize], r: String| {
        for &n in nodes {
            assert!(
                region.insert(n, r.clone()).is_none(),
                "node {n} in two regions"
            );
        }
    };
    put(&a.prologue, "prologue".into());
    put(&a.epilogue, "epilogue".into());
    for sb in &a.sub_blocks {
        put(&sb.nodes, format!("sub{}", sb.index));
    }
    assert_eq!(region.len(), g.node.len(), "every node in a region");
    let produced_by: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let inputs: HashSet<&str> = g.input.iter().map(|i| i.name()).collect();
    for &n in &a.prologue {
        for v in g.node[n].input.iter().filter(|v| !v.is_empty()) {
            if let Some(p) = produced_by.get(v.as_str()) {
                assert_eq!(region[p], "prologue", "prologue node {n} reads {v}");
                assert!(*p < n, "prologue not in topological order");
            }
        }
    }
    for sb in &a.sub_blocks {
        let own: HashSet<&str> = sb
            .nodes
            .iter()
            .flat_map(|&n| g.node[n].output.iter().map(String::as_str))
            .collect();
        assert!(
            own.contains(sb.output.as_str()),
            "sub-block {} computes its output",
            sb.index
        );
        for &n in &sb.nodes {
            for v in g.node[n].input.iter().filter(|v| !v.is_empty()) {
                let v = v.as_str();
                let ok = v == sb.input
                    || own.contains(v)
                    || inits.contains(v)
                    || sb.side_inputs.iter().any(|s| s == v);
                assert!(
                    ok,
                    "sub-block {} node {n} reads {v} from elsewhere",
                    sb.index
                );
            }
        }
        for s in &sb.side_inputs {
            let from_prologue = produced_by
                .get(s.as_str())
                .is_some_and(|p| region[p] == "prologue");
            assert!(
                from_prologue || inputs.contains(s.as_str()),
                "side input {s}"
            );
        }
    }
    // Side inputs bind by position across sub-blocks of one kind.
    for kind in [Kind::Attention, Kind::Ffn] {
        let lens: HashSet<usize> = a
            .sub_blocks
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.side_inputs.len())
            .collect();
        assert!(
            lens.len() <= 1,
            "{kind:?} side input counts differ: {lens:?}"
        );
    }
    // Consecutive sub-blocks chain on the stream.
    for w in a.sub_blocks.windows(2) {
        assert_eq!(w[0].output, w[1].input);
    }
}

/// Runs the input model and a model made of the analysis graph on the same random inputs with
/// ONNX Runtime (Python oracle) and returns the largest absolute difference.
fn ort_difference(model_path: &Path, model: &ModelProto, a: &Analysis, dir: &Path) -> f64 {
    let rewritten = ModelProto {
        graph: Some(a.graph.clone()),
        ..model.clone()
    };
    let out = dir.join(model_path.file_name().unwrap_or_default());
    std::fs::write(&out, rewritten.encode_to_vec()).unwrap();
    if let Some(parent) = model_path.parent() {
        for e in std::fs::read_dir(parent).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "data") {
                // A copy: onnx.checker refuses links for external data.
                std::fs::copy(&p, dir.join(e.file_name())).unwrap();
            }
        }
    }
    let code = r#"
import sys, json, numpy as np, onnx, onnxruntime as ort
a, b = sys.argv[1], sys.argv[2]
onnx.checker.check_model(b)
rng = np.random.default_rng(0)
sa = ort.InferenceSession(a, providers=["CPUExecutionProvider"])
sb = ort.InferenceSession(b, providers=["CPUExecutionProvider"])
worst = 0.0
for batch, seq in [(1, 5), (3, 9)]:
    feeds = {}
    for i in sa.get_inputs():
        if "mask" in i.name:
            m = np.ones((batch, seq), dtype=np.int64); m[-1, seq - 2:] = 0
            feeds[i.name] = m
        elif i.name == "token_type_ids":  # BERT as Optimum exports it: one segment
            feeds[i.name] = np.zeros((batch, seq), dtype=np.int64)
        else:
            feeds[i.name] = rng.integers(3, 50, size=(batch, seq), dtype=np.int64)
    for x, y in zip(sa.run(None, feeds), sb.run(None, feeds)):
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
print(json.dumps({"max_abs": worst}))
"#;
    let r = common::run_python_json(code, &[model_path.to_str().unwrap(), out.to_str().unwrap()]);
    r["max_abs"].as_f64().expect("max_abs")
}

#[test]
fn every_fixture_is_analyzed_exactly() {
    let fixtures = manifest();
    assert!(!fixtures.is_empty());
    let tmp = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    let mut structures: Vec<(String, String)> = Vec::new();
    for f in &fixtures {
        let name = f["name"].as_str().unwrap_or("?").to_string();
        match std::panic::catch_unwind(|| check_fixture(f, &common::fixtures(), tmp.path())) {
            Ok(s) => structures.push((name, s)),
            Err(_) => failed.push(name),
        }
    }
    assert!(
        failed.is_empty(),
        "fixtures failing (see above): {failed:?}"
    );
    // Other exports of one model (fp16, dynamo, external data, sdpa attention) and the same
    // architecture with transformers' default init (`_default`: the signature is
    // architecture-level) share its structure signature, so a plan moves between them;
    // different models do not.
    let base = |n: &str| {
        ["_fp16", "_dynamo", "_external", "_sdpa", "_default"]
            .iter()
            .fold(n.to_string(), |n, s| n.replace(s, ""))
    };
    for (a, sa) in &structures {
        for (b, sb) in &structures {
            assert_eq!(base(a) == base(b), sa == sb, "structure of {a} vs {b}");
        }
    }
}

/// The exports Hugging Face Optimum writes (`common::optimum_fixtures`), checked like the others:
/// layers, kinds, family, norm position, parameters per region (the default init's all-ones
/// norms and zero biases, merged by the exporter into initializers every layer reads, count as
/// shared), and the analysis graph computes what the file computes, on every output. The CLIP
/// text encoder with and without projection share their text transformer's structure.
#[test]
fn every_optimum_export_is_analyzed_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    let mut structures = std::collections::BTreeMap::new();
    for f in &common::optimum_fixtures() {
        let name = f["name"].as_str().unwrap_or("?").to_string();
        match std::panic::catch_unwind(|| check_fixture(f, &common::fixtures(), tmp.path())) {
            Ok(s) => {
                structures.insert(name, s);
            }
            Err(_) => failed.push(name),
        }
    }
    assert!(
        failed.is_empty(),
        "fixtures failing (see above): {failed:?}"
    );
    assert_eq!(
        structures["optimum_clip"], structures["optimum_clip_proj"],
        "one CLIP text transformer, with and without projection"
    );
    assert_ne!(structures["optimum_clip"], structures["optimum_t5"]);
}

/// Checks one manifest entry (`base` is the folder its `model` path is relative to); returns
/// the structure signature.
fn check_fixture(f: &Value, base: &Path, tmp: &Path) -> String {
    {
        let name = f["name"].as_str().unwrap();
        let path = base.join(f["model"].as_str().unwrap());
        let model = load(&path);
        let a = analyze(&model).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let layers = f["layers"].as_u64().unwrap() as usize;
        assert_eq!(a.layers, layers, "{name}: layers");
        assert_eq!(a.sub_blocks.len(), 2 * layers, "{name}: sub-blocks");
        for (i, sb) in a.sub_blocks.iter().enumerate() {
            assert_eq!(sb.index, i);
            assert_eq!(sb.layer, i / 2);
            let want = if i % 2 == 0 {
                Kind::Attention
            } else {
                Kind::Ffn
            };
            assert_eq!(sb.kind, want, "{name}: kind of sub-block {i}");
        }
        let expected = &f["params"]["onnx_expected"];
        let params: Vec<u64> = a.sub_blocks.iter().map(|s| s.params).collect();
        assert_eq!(
            a.total_params,
            f["params"]["onnx_initializer_total"].as_u64().unwrap(),
            "{name}: total"
        );
        assert_eq!(
            params.iter().sum::<u64>() + a.prologue_params + a.epilogue_params + a.shared_params,
            a.total_params,
            "{name}: regions add up"
        );
        // Exact, except for constants an exporter stored as initializers (dynamo: scalars and
        // index tables, often shared by many layers), which hold no parameter.
        let mut got = params.clone();
        got.extend([a.prologue_params, a.epilogue_params, a.shared_params]);
        let mut want = as_u64s(&expected["sub_blocks"]);
        want.extend(["prologue", "epilogue", "shared"].map(|k| expected[k].as_u64().unwrap()));
        let deviation: u64 = got.iter().zip(&want).map(|(g, w)| g.abs_diff(*w)).sum();
        let constants = f["params"]["onnx_constant_elements"].as_u64().unwrap_or(0);
        assert!(
            deviation <= constants,
            "{name}: per-region params {got:?}, expected {want:?} (tolerance {constants})"
        );
        // Where the torch modules own exactly what the export holds, the counts agree too.
        let torch = as_u64s(&f["params"]["torch"]["sub_blocks"]);
        let legacy = f["exporter"] == "legacy";
        if legacy && f["params"]["torch"]["position_bias_params"].is_null() && a.shared_params == 0
        {
            assert_eq!(params, torch, "{name}: torch sub-block params");
        }
        assert_eq!(a.family.as_deref(), f["family"].as_str(), "{name}: family");
        let norm = format!("{}_norm", blocks::norm_position(&a).unwrap());
        assert_eq!(f["norm"].as_str(), Some(norm.as_str()), "{name}: norm");
        check_partition(&a);
        let dir = tmp.join(name);
        std::fs::create_dir(&dir).unwrap();
        let d = ort_difference(&path, &model, &a, &dir);
        // Same graph, but fp16 kernels may round differently after ONNX Runtime's fusions.
        let tol = if f["dtype"] == "float16" { 1e-2 } else { 1e-5 };
        assert!(
            d <= tol,
            "{name}: analysis graph differs from the model by {d}"
        );
        a.structure_signature
    }
}

fn vi(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn node(op: &str, domain: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        domain: (!domain.is_empty()).then(|| domain.to_string()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn weight(name: &str, dims: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(1),
        raw_data: Some(vec![0u8; 4 * dims.iter().product::<i64>() as usize].into()),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        graph: Some(GraphProto {
            node: nodes,
            input: vec![vi("x")],
            output: vec![vi("y")],
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn fused_onnx_runtime_ops_are_refused_with_an_explanation() {
    let m = model(
        vec![
            node("EmbedLayerNormalization", "com.microsoft", &["x"], &["h"]),
            node("Attention", "com.microsoft", &["h", "w"], &["a"]),
            node(
                "SkipLayerNormalization",
                "com.microsoft",
                &["a", "h"],
                &["y"],
            ),
        ],
        vec![weight("w", &[4, 12])],
    );
    let e = analyze(&m).unwrap_err();
    assert_eq!(exit_code_of(&e), exit::BAD_MODEL);
    let msg = e.to_string();
    assert!(msg.contains("transformer optimizer"), "{msg}");
    assert!(msg.contains("export the unoptimized model"), "{msg}");
    assert!(msg.contains("SkipLayerNormalization"), "{msg}");
}

#[test]
fn a_plain_mlp_is_refused_with_what_was_found() {
    let m = model(
        vec![
            node("MatMul", "", &["x", "w1"], &["a"]),
            node("Relu", "", &["a"], &["b"]),
            node("MatMul", "", &["b", "w2"], &["y"]),
        ],
        vec![weight("w1", &[4, 8]), weight("w2", &[8, 4])],
    );
    let e = analyze(&m).unwrap_err();
    assert_eq!(exit_code_of(&e), exit::BAD_MODEL);
    let msg = e.to_string();
    assert!(
        msg.contains("found 4 stream values but 0 residual branches"),
        "{msg}"
    );
}

#[test]
fn a_residual_mlp_without_attention_is_refused() {
    // Two residual branches, neither mixes positions: not an (attention, ffn) encoder.
    let mut nodes = vec![node("Identity", "", &["x"], &["e"])];
    let mut prev = "e".to_string();
    for l in 0..2 {
        let (a, b, h) = (format!("a{l}"), format!("b{l}"), format!("h{l}"));
        let w = format!("w{l}");
        nodes.push(node("MatMul", "", &[&prev, &w], &[&a]));
        nodes.push(node("Relu", "", &[&a], &[&b]));
        nodes.push(node("Add", "", &[&prev, &b], &[&h]));
        prev = h;
    }
    nodes.push(node("Identity", "", &[&prev], &["y"]));
    let m = model(nodes, vec![weight("w0", &[4, 4]), weight("w1", &[4, 4])]);
    let msg = analyze(&m).unwrap_err().to_string();
    assert!(msg.contains("FF"), "{msg}");
    assert!(msg.contains("not the repeating"), "{msg}");
}

/// The real all-MiniLM-L6-v2 export (6 layers), when `SKRR_MINILM` points at its folder (as
/// `fixtures/generate.py --minilm DIR` makes it, with its manifest entry).
#[test]
fn real_minilm_has_six_layers() {
    let Some(dir) = common::minilm("real_minilm_has_six_layers") else {
        return;
    };
    let entry: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json in SKRR_MINILM"),
    )
    .expect("manifest is JSON");
    assert_eq!(entry["layers"], 6);
    let tmp = tempfile::tempdir().unwrap();
    let base = dir.parent().expect("SKRR_MINILM has a parent folder");
    check_fixture(&entry, base, tmp.path());
}

fn entry(name: &str) -> Value {
    manifest()
        .into_iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("fixture {name} in the manifest"))
}

#[test]
fn inspect_prints_the_analysis_as_json_and_as_a_table() {
    for name in ["t5_gated", "bert"] {
        let f = entry(name);
        let path = common::fixtures().join(f["model"].as_str().unwrap());
        let out = common::skrr_ok(["inspect".as_ref(), path.as_os_str(), "--json".as_ref()]);
        let j: Value = serde_json::from_str(&out).expect("inspect --json prints JSON");
        assert_eq!(j["layers"], f["layers"], "{name}");
        assert_eq!(j["family"], f["family"], "{name}");
        assert_eq!(
            j["total_params"], f["params"]["onnx_initializer_total"],
            "{name}"
        );
        let sbs = j["sub_blocks"].as_array().unwrap();
        let params: Vec<Value> = sbs.iter().map(|s| s["params"].clone()).collect();
        assert_eq!(
            Value::Array(params),
            f["params"]["onnx_expected"]["sub_blocks"],
            "{name}"
        );
        for (i, s) in sbs.iter().enumerate() {
            assert_eq!(s["index"], i);
            assert_eq!(s["kind"], if i % 2 == 0 { "attention" } else { "ffn" });
        }
        assert_eq!(
            j["prologue"]["params"], f["params"]["onnx_expected"]["prologue"],
            "{name}"
        );

        let text = common::skrr_ok(["inspect".as_ref(), path.as_os_str()]);
        let layers = f["layers"].as_u64().unwrap() as usize;
        let rows = |kind: &str| {
            text.lines()
                .filter(|l| l.split_whitespace().nth(2) == Some(kind))
                .count()
        };
        assert_eq!(rows("attention"), layers, "{text}");
        assert_eq!(rows("ffn"), layers, "{text}");
        assert!(
            text.contains(&format!("family {}", f["family"].as_str().unwrap())),
            "{text}"
        );
        assert!(
            text.contains("prologue:") && text.contains("epilogue:"),
            "{text}"
        );
    }
}

#[test]
fn inspect_refuses_a_model_optimized_by_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixtures().join(entry("bert")["model"].as_str().unwrap());
    let dst = tmp.path().join("bert_optimized.onnx");
    let code = r#"
import sys
from onnxruntime.transformers import optimizer
m = optimizer.optimize_model(sys.argv[1], model_type="bert", num_heads=4, hidden_size=64, opt_level=0)
m.save_model_to_file(sys.argv[2])
"#;
    common::run_python(code, &[src.to_str().unwrap(), dst.to_str().unwrap()]);
    let line = common::assert_error_contract(
        &["inspect".as_ref(), dst.as_os_str()],
        exit::BAD_MODEL,
        "export the unoptimized model",
        None,
        &[&dst],
    );
    assert!(line.contains("SkipLayerNormalization"), "{line}");
}

#[test]
fn inspect_refuses_a_plain_mlp_and_says_what_it_found() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("mlp.onnx");
    let m = model(
        vec![
            node("MatMul", "", &["x", "w1"], &["a"]),
            node("Relu", "", &["a"], &["b"]),
            node("MatMul", "", &["b", "w2"], &["y"]),
        ],
        vec![weight("w1", &[4, 8]), weight("w2", &[8, 4])],
    );
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    common::assert_error_contract(
        &["inspect".as_ref(), path.as_os_str()],
        exit::BAD_MODEL,
        "found 4 stream values but 0 residual branches",
        None,
        &[&path],
    );
}

/// A multi-GB external-data model (`fixtures/generate.py --big DIR`), when `SKRR_BIG` points at
/// its folder: inspect reads dims only, so it must take seconds and little memory.
#[test]
fn inspect_of_a_big_external_data_model_is_quick_and_small() {
    let Some(dir) = std::env::var_os("SKRR_BIG").map(PathBuf::from) else {
        eprintln!("skipped: set SKRR_BIG to the folder `fixtures/generate.py --big` made");
        return;
    };
    let path = dir.join("model.onnx");
    let data_bytes = std::fs::metadata(dir.join("model.onnx.data"))
        .unwrap()
        .len();
    let start = std::time::Instant::now();
    let out = common::skrr_ok(["inspect".as_ref(), path.as_os_str(), "--json".as_ref()]);
    let secs = start.elapsed().as_secs_f64();
    let j: Value = serde_json::from_str(&out).unwrap();
    assert!(j["layers"].as_u64().unwrap() > 0);
    // Peak RSS of the largest finished child of this test process (kilobytes on Linux). An
    // upper bound: it may include what the forked test process held before exec. Run this test
    // alone (it is opt-in) so that no Python oracle is counted.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    let peak = usage.ru_maxrss as u64 * 1024;
    eprintln!(
        "inspect: {secs:.2} s, peak RSS {} MB, data {} MB",
        peak >> 20,
        data_bytes >> 20
    );
    assert!(secs < 10.0, "inspect took {secs:.1} s");
    assert!(
        peak < data_bytes / 8,
        "peak RSS {peak} bytes for {data_bytes} bytes of weights"
    );
}

/// A toy pre-norm encoder of `layers` layers over `input_ids` (no shape ops), whose outputs are
/// the final value plus, with `taps`, every layer's input (as SDXL-style exports list
/// `hidden_states`) and a pooled output reading the final value.
fn toy_encoder(layers: usize, taps: bool) -> ModelProto {
    let mut nodes = vec![node("Gather", "", &["emb", "input_ids"], &["h0"])];
    let mut inits = vec![weight("emb", &[100, 8])];
    let mut outputs = vec![];
    let mut h = "h0".to_string();
    for l in 0..layers {
        let p = |s: &str| format!("l{l}_{s}");
        for w in ["wq", "wk", "wv", "wo", "w1", "w2"] {
            inits.push(weight(&p(w), &[8, 8]));
        }
        let steps: Vec<(&str, Vec<String>, String)> = vec![
            (
                "LayerNormalization",
                vec![h.clone(), "g".into(), "b".into()],
                p("n1"),
            ),
            ("MatMul", vec![p("n1"), p("wq")], p("q")),
            ("MatMul", vec![p("n1"), p("wk")], p("k")),
            ("MatMul", vec![p("n1"), p("wv")], p("v")),
            ("Transpose", vec![p("k")], p("kt")),
            ("MatMul", vec![p("q"), p("kt")], p("s")),
            ("Softmax", vec![p("s")], p("a")),
            ("MatMul", vec![p("a"), p("v")], p("c")),
            ("MatMul", vec![p("c"), p("wo")], p("o")),
            ("Add", vec![h.clone(), p("o")], p("h1")),
            (
                "LayerNormalization",
                vec![p("h1"), "g".into(), "b".into()],
                p("n2"),
            ),
            ("MatMul", vec![p("n2"), p("w1")], p("f")),
            ("Relu", vec![p("f")], p("r")),
            ("MatMul", vec![p("r"), p("w2")], p("m")),
            ("Add", vec![p("h1"), p("m")], p("h2")),
        ];
        for (op, ins, out) in steps {
            let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
            let mut n = node(op, "", &ins, &[&out]);
            if op == "Transpose" {
                n.attribute.push(skrr_onnx::onnx::AttributeProto {
                    name: Some("perm".into()),
                    ints: vec![0, 2, 1],
                    r#type: Some(7),
                    ..Default::default()
                });
            }
            nodes.push(n);
        }
        if taps {
            outputs.push(vi(&h));
        }
        h = format!("l{l}_h2");
    }
    inits.extend([weight("g", &[8]), weight("b", &[8])]);
    nodes.push(node("Identity", "", &[&h], &["last"]));
    outputs.insert(0, vi("last"));
    if taps {
        nodes.push(node("ReduceMean", "", &["last"], &["pooled"]));
        outputs.push(vi("pooled"));
    }
    let mut m = model(nodes, inits);
    let g = m.graph.as_mut().unwrap();
    g.input = vec![vi("input_ids")];
    g.output = outputs;
    m
}

#[test]
fn hidden_state_outputs_do_not_hide_the_stream() {
    for taps in [false, true] {
        let a = analyze(&toy_encoder(3, taps)).unwrap_or_else(|e| panic!("taps {taps}: {e:#}"));
        assert_eq!(a.layers, 3, "taps {taps}");
        assert_eq!(a.sub_blocks[0].input, "h0");
        assert_eq!(a.sub_blocks[5].output, "l2_h2");
        assert_eq!(
            a.sub_blocks.iter().map(|s| s.params).sum::<u64>(),
            3 * 6 * 64
        );
        assert_eq!(a.shared_params, 16, "the norms every layer reads");
        check_partition(&a);
    }
}

#[test]
fn control_flow_inside_a_layer_is_refused() {
    let mut m = toy_encoder(2, false);
    let g = m.graph.as_mut().unwrap();
    let relu = g.node.iter().position(|n| n.output == ["l1_r"]).unwrap();
    let branch = |name: &str| GraphProto {
        name: Some(name.into()),
        node: vec![node("Relu", "", &["l1_f"], &[&format!("{name}_out")])],
        output: vec![vi(&format!("{name}_out"))],
        ..Default::default()
    };
    let mut iff = node("If", "", &["cond"], &["l1_r"]);
    for (attr, b) in [("then_branch", "t"), ("else_branch", "e")] {
        iff.attribute.push(skrr_onnx::onnx::AttributeProto {
            name: Some(attr.into()),
            g: Some(Box::new(branch(b))),
            r#type: Some(5),
            ..Default::default()
        });
    }
    g.node[relu] = iff;
    g.node.insert(0, node("Constant", "", &[], &["cond"]));
    let e = analyze(&m).unwrap_err();
    assert_eq!(exit_code_of(&e), exit::BAD_MODEL);
    let msg = e.to_string();
    assert!(
        msg.contains("sub-block 3") && msg.contains("nested subgraph"),
        "{msg}"
    );
}

#[test]
fn the_fused_standard_attention_op_is_an_attention_sub_block() {
    let mut m = toy_encoder(2, false);
    let g = m.graph.as_mut().unwrap();
    for l in 0..2 {
        let p = |s: &str| format!("l{l}_{s}");
        g.node
            .retain(|n| ![p("kt"), p("s"), p("a")].contains(&n.output[0]));
        let c = g.node.iter().position(|n| n.output[0] == p("c")).unwrap();
        g.node[c] = node("Attention", "", &[&p("q"), &p("k"), &p("v")], &[&p("c")]);
    }
    let a = analyze(&m).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(a.layers, 2);
    assert_eq!(a.sub_blocks[2].kind, Kind::Attention);
    check_partition(&a);
}

/// A toy post-norm encoder (BERT-like `h' = norm(h + f(h))`) whose norms' affine weights are
/// one merged initializer read through per-layer `Identity` copies, as the legacy exporter
/// writes default-initialized models; the norm is decomposed as at opset < 17.
fn toy_post_norm_encoder(layers: usize) -> ModelProto {
    let mut nodes = vec![node("Gather", "", &["emb", "input_ids"], &["h0"])];
    let mut inits = vec![
        weight("emb", &[100, 8]),
        weight("g", &[8]),
        weight("b", &[8]),
    ];
    let mut h = "h0".to_string();
    for l in 0..layers {
        for (branch, mixes) in [("att", true), ("ffn", false)] {
            let p = |s: &str| format!("l{l}{branch}_{s}");
            inits.push(weight(&p("w1"), &[8, 8]));
            inits.push(weight(&p("w2"), &[8, 8]));
            let mut steps: Vec<(&str, Vec<String>, String)> =
                vec![("MatMul", vec![h.clone(), p("w1")], p("x"))];
            if mixes {
                steps.push(("MatMul", vec![p("x"), p("x")], p("s")));
                steps.push(("Softmax", vec![p("s")], p("a")));
            } else {
                steps.push(("Relu", vec![p("x")], p("a")));
            }
            steps.extend([
                ("MatMul", vec![p("a"), p("w2")], p("o")),
                ("Add", vec![p("o"), h.clone()], p("sum")),
                ("ReduceMean", vec![p("sum")], p("mean")),
                ("Sub", vec![p("sum"), p("mean")], p("c")),
                ("Identity", vec!["g".into()], p("g")),
                ("Identity", vec!["b".into()], p("b")),
                ("Mul", vec![p("c"), p("g")], p("scaled")),
                ("Add", vec![p("scaled"), p("b")], p("out")),
            ]);
            for (op, ins, out) in steps {
                let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
                nodes.push(node(op, "", &ins, &[&out]));
            }
            h = p("out");
        }
    }
    nodes.push(node("Identity", "", &[&h], &["last"]));
    let mut m = model(nodes, inits);
    let g = m.graph.as_mut().unwrap();
    g.input = vec![vi("input_ids")];
    g.output = vec![vi("last")];
    m
}

#[test]
fn a_post_norm_encoder_with_merged_norm_weights_is_post_norm() {
    let a = analyze(&toy_post_norm_encoder(3)).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(a.layers, 3);
    assert_eq!(blocks::norm_position(&a).unwrap(), "post");
    // The last feed-forward sub-block keeps its norm, as the others do.
    assert_eq!(a.sub_blocks[5].output, "l2ffn_out");
    assert_eq!(a.shared_params, 16, "the merged norm weights");
    check_partition(&a);
}

#[test]
fn a_model_fed_embeddings_directly_starts_its_stream_at_the_input() {
    let mut m = toy_encoder(3, true);
    let g = m.graph.as_mut().unwrap();
    g.node.retain(|n| n.op_type() != "Gather");
    g.initializer.retain(|t| t.name() != "emb");
    g.input = vec![vi("h0")];
    g.output.retain(|o| o.name() != "h0");
    let a = analyze(&m).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(a.layers, 3);
    assert_eq!(a.sub_blocks[0].input, "h0");
    check_partition(&a);
}

/// `toy_encoder` with UMT5-style position biases: each layer's attention scores get a bias
/// looked up in its *own* table, and, T5-style, one more from a table read by every layer.
fn toy_encoder_with_bias_tables(layers: usize) -> ModelProto {
    let mut m = toy_encoder(layers, false);
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(weight("shared_table", &[16, 8]));
    // Bucket ids, stream-independent (T5 computes them from the sequence length).
    let mut buckets = node("Constant", "", &[], &["positions"]);
    buckets.attribute.push(skrr_onnx::onnx::AttributeProto {
        name: Some("value_ints".into()),
        ints: vec![0, 1, 2, 3],
        r#type: Some(7),
        ..Default::default()
    });
    let mut nodes = vec![
        buckets,
        node(
            "Gather",
            "",
            &["shared_table", "positions"],
            &["shared_bias"],
        ),
    ];
    for n in std::mem::take(&mut g.node) {
        let scores = n.output[0].clone();
        let Some(l) = scores
            .strip_suffix("_s")
            .filter(|_| n.op_type() == "MatMul")
        else {
            nodes.push(n);
            continue;
        };
        let (raw, own, table) = (
            format!("{l}_raw"),
            format!("{l}_bias"),
            format!("{l}_table"),
        );
        g.initializer.push(weight(&table, &[16, 8]));
        let mut n = n;
        n.output[0] = raw.clone();
        nodes.push(n);
        nodes.push(node("Gather", "", &[&table, "positions"], &[&own]));
        nodes.push(node("Add", "", &[&raw, &own], &[&format!("{l}_s1")]));
        nodes.push(node(
            "Add",
            "",
            &[&format!("{l}_s1"), "shared_bias"],
            &[&scores],
        ));
    }
    g.node = nodes;
    m
}

#[test]
fn a_table_read_by_one_layer_is_that_layers_and_one_read_by_all_is_shared_work() {
    let a = analyze(&toy_encoder_with_bias_tables(3)).unwrap();
    assert_eq!(a.layers, 3);
    check_partition(&a);
    let g = &a.graph;
    for sb in &a.sub_blocks {
        let own = format!("l{}_table", sb.layer);
        if sb.kind == Kind::Attention {
            // Its own table's lookup runs inside it: a re-use reads the source's table, a
            // skip removes it with its 128 parameters.
            assert!(sb.initializers.contains(&own), "{:?}", sb.initializers);
            assert!(sb
                .nodes
                .iter()
                .any(|&n| g.node[n].input.first() == Some(&own)));
            assert_eq!(sb.params, 4 * 64 + 128);
            // The bucket ids and the bias every layer reads are side inputs computed once.
            assert_eq!(sb.side_inputs, ["positions", "shared_bias"]);
        } else {
            assert_eq!(sb.params, 2 * 64);
        }
    }
    assert_eq!(
        a.prologue_params,
        100 * 8 + 16 * 8,
        "embedding and the shared table"
    );
}

/// The files of an encoder-decoder are named for what they are, with the way out, whatever
/// the analysis would otherwise have made of their second stream.
#[test]
fn encoder_decoder_files_are_refused_as_such() {
    for (input, phrase) in [
        (
            "decoder_input_ids",
            "an encoder-decoder model (it takes decoder_input_ids",
        ),
        (
            "encoder_hidden_states",
            "the decoder of an encoder-decoder model (it reads the encoder's output as \
             encoder_hidden_states)",
        ),
    ] {
        let mut m = toy_encoder(2, false);
        m.graph.as_mut().unwrap().input.push(vi(input));
        let e = analyze(&m).unwrap_err();
        assert_eq!(exit_code_of(&e), exit::BAD_MODEL);
        let msg = e.to_string();
        assert!(msg.contains(phrase), "{msg}");
        assert!(msg.contains("export it by itself"), "{msg}");
    }
}
