//! Models that list their initializers as graph inputs too (required before IR version 4; what
//! `torch.onnx.export(..., keep_initializers_as_inputs=True)` writes). Such an input only
//! declares its weight: calibration must not feed it, and a rewrite that removes the weight
//! must remove its declaration, or ONNX Runtime asks for an input nobody can give.
//! The variant of t5_gated comes from tests/oracles/initializer_inputs.py; every command must
//! behave on it exactly as on t5_gated.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, run_python, run_python_json, skrr_ok};
use serde_json::{json, Value};

const ORACLE: &str = include_str!("oracles/initializer_inputs.py");

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// t5_gated and, in a fresh folder with its tokenizer, its variant with listed initializers
/// (`ir`: the variant's IR version, when not t5_gated's 8).
fn models(ir: Option<&str>) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let dense = fixtures().join("t5_gated").join("model.onnx");
    let listed = dir.path().join("model.onnx");
    let mut args = vec!["list", s(&dense), s(&listed)];
    args.extend(ir);
    run_python(ORACLE, &args);
    std::fs::copy(
        fixtures().join("t5_gated").join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    (dir, dense, listed)
}

/// A hand-written plan over t5_gated's 8 sub-blocks: `(p, None)` skips p, `(p, Some(q))`
/// re-uses q at p, the others are kept.
fn plan(dir: &Path, name: &str, actions: &[(usize, Option<usize>)]) -> PathBuf {
    let sub_blocks: Vec<Value> = (0..8)
        .map(|i| match actions.iter().find(|(p, _)| *p == i) {
            None => json!({"index": i, "action": "keep"}),
            Some((_, None)) => json!({"index": i, "action": "skip"}),
            Some((_, Some(q))) => json!({"index": i, "action": "reuse", "source": q}),
        })
        .collect();
    let path = dir.join(name);
    let plan = json!({"format": "skrr-plan/1", "sub_blocks": sub_blocks});
    std::fs::write(&path, plan.to_string()).unwrap();
    path
}

/// Layer 0's attention (T5's position bias) and a feed-forward skipped; and re-use of an
/// attention and a feed-forward around a skip.
fn plans(dir: &Path) -> Vec<PathBuf> {
    vec![
        plan(dir, "skip.json", &[(0, None), (3, None)]),
        plan(dir, "reuse.json", &[(3, Some(1)), (4, None), (6, Some(2))]),
    ]
}

#[test]
fn apply_writes_a_model_onnx_runtime_runs_and_that_equals_the_plan_on_the_original() {
    // IR 8 as exported with keep_initializers_as_inputs, and IR 3, where onnx.checker also
    // requires the copies of --reuse-weights copy to be listed.
    for ir in [None, Some("3")] {
        let (dir, dense, listed) = models(ir);
        let mut pairs = Vec::new();
        for plan in plans(dir.path()) {
            for reuse in ["share", "copy"] {
                let stem = format!("{}-{reuse}", plan.file_stem().unwrap().to_str().unwrap());
                let want = dir.path().join(format!("{stem}-dense.onnx"));
                let got = dir.path().join(format!("{stem}-listed.onnx"));
                for (input, out) in [(&dense, &want), (&listed, &got)] {
                    let args = [
                        "apply",
                        s(input),
                        s(&plan),
                        s(out),
                        "--reuse-weights",
                        reuse,
                    ];
                    skrr_ok(args);
                }
                pairs.push((stem, want, got));
            }
        }
        let args: Vec<&str> = std::iter::once("check")
            .chain(pairs.iter().flat_map(|(_, a, b)| [s(a), s(b)]))
            .collect();
        let results = run_python_json(ORACLE, &args);
        for ((stem, _, _), r) in pairs.iter().zip(results.as_array().unwrap()) {
            let name = format!("{stem} (IR {})", ir.unwrap_or("8"));
            assert_eq!(r["checker"], true, "{name}: {r}");
            assert_eq!(r["fed"][0], json!(["input_ids", "attention_mask"]), "{r}");
            assert_eq!(r["fed"][1], r["fed"][0], "{name}: {r}");
            // Every kept (or copied) weight is declared, like every weight of the input.
            assert_eq!(r["listed"], r["initializers"], "{name}: {r}");
            let err = r["rel_err"].as_f64().unwrap();
            assert!(err <= 1e-5, "{name}: rel err {err}");
        }
        assert_eq!(results.as_array().unwrap().len(), 4);
    }
}

fn d_of(model: &Path, plan: &Path) -> f64 {
    let out = skrr_ok([
        "score",
        "--json",
        s(model),
        "--plan",
        s(plan),
        "--num-prompts",
        "16",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    r["d"].as_f64().unwrap()
}

#[test]
fn score_gives_the_same_d_as_on_the_original() {
    for ir in [None, Some("3")] {
        let (dir, dense, listed) = models(ir);
        for plan in plans(dir.path()) {
            let (a, b) = (d_of(&dense, &plan), d_of(&listed, &plan));
            assert!(a > 0.0);
            assert!((a - b).abs() <= 1e-9 * a, "{}: {a} vs {b}", plan.display());
        }
    }
}

fn main_command(input: &Path, out: &Path) -> Value {
    let stdout = skrr_ok([
        "--json",
        s(input),
        s(out),
        "--sparsity",
        "0.3",
        "--num-prompts",
        "12",
        "--min-cos=-1",
        "--max-null-ratio",
        "1e9",
    ]);
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn the_main_command_finds_and_writes_the_same_plan_as_on_the_original() {
    let (dir, dense, listed) = models(None);
    let want_path = dir.path().join("dense-pruned.onnx");
    let got_path = dir.path().join("listed-pruned.onnx");
    let mut want = main_command(&dense, &want_path);
    let mut got = main_command(&listed, &got_path);
    // The search runs on the engine's part models, which never declare weights as inputs;
    // only the file's hash differs.
    for r in [&mut want, &mut got] {
        r["plan"]["model"]
            .as_object_mut()
            .unwrap()
            .remove("sha256")
            .unwrap();
    }
    assert_eq!(got["plan"], want["plan"]);
    // Held-out fidelity runs the whole files, where ONNX Runtime may fold differently.
    for key in ["d", "cos_mean"] {
        let a = want["fidelity"][key].as_f64().unwrap();
        let b = got["fidelity"][key].as_f64().unwrap();
        assert!((a - b).abs() <= 1e-6 * a.abs(), "{key}: {a} vs {b}");
    }
    let r = &run_python_json(ORACLE, &["check", s(&want_path), s(&got_path)])[0];
    assert_eq!(r["fed"][1], r["fed"][0], "{r}");
    assert!(r["rel_err"].as_f64().unwrap() <= 1e-5, "{r}");
}
