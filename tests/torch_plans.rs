//! The files `skrr-onnx apply` writes compute what PyTorch computes under the same plan (issue
//! #12), a reference that shares nothing with skrr-onnx: fixtures/<name>/plans.json, written by
//! fixtures/generate.py, holds the `last_hidden_state` of the `transformers` model each fixture
//! was exported from, run with its sub-blocks skipped or re-used as four plans say (keep-all;
//! skip {0, 3, last}; re-use from the left; re-use from the right, layer 0's attention included),
//! on three right-padded token rows. For every fixture this test writes each plan as a
//! skrr-plan/1 file, runs the real binary's `apply`, runs the written file with ONNX Runtime
//! (tests/oracles/run_models.py, one process per fixture) on the stored rows and compares, over
//! every position: relative error norm ‖ort − torch‖ / ‖torch‖ <= 1e-5 in fp32, 2e-3 in fp16 (an
//! fp16 fixture's reference is its fp16 weights computed in float32); the largest element error
//! (max |ort − torch| / max |torch|) is reported. Each output is also compared with another plan's
//! reference, which must be more than 50 tolerances away: the comparison can fail.

mod common;

use std::path::Path;

use serde_json::Value;
use skrr_onnx::action::Action;

/// How far an output is from a reference.
#[derive(Clone, Copy)]
struct Errors {
    /// ‖a − b‖ / ‖b‖.
    norm: f64,
    /// max |a − b| / max |b|.
    max: f64,
}

impl Errors {
    fn of(a: &[f64], b: &[f64]) -> Errors {
        assert_eq!(a.len(), b.len(), "output sizes differ");
        let (mut sq, mut b_sq, mut max, mut scale) = (0f64, 0f64, 0f64, 0f64);
        for (&x, &y) in a.iter().zip(b) {
            sq += (x - y) * (x - y);
            b_sq += y * y;
            max = max.max((x - y).abs());
            scale = scale.max(y.abs());
        }
        Errors {
            norm: (sq / b_sq).sqrt(),
            max: max / scale,
        }
    }
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// A plan's `sub_blocks` list (skrr-plan/1 form) as actions, position by position.
fn actions(sub_blocks: &Value) -> Vec<Action> {
    sub_blocks
        .as_array()
        .expect("sub_blocks")
        .iter()
        .enumerate()
        .map(|(i, s)| {
            assert_eq!(s["index"].as_u64(), Some(i as u64), "sub_blocks in order");
            match s["action"].as_str().expect("action") {
                "keep" => Action::Keep,
                "skip" => Action::Skip,
                "reuse" => Action::Reuse(s["source"].as_u64().expect("source") as usize),
                other => panic!("unknown action {other}"),
            }
        })
        .collect()
}

/// One plan's result on one fixture.
struct Row {
    plan: String,
    own: Errors,
    /// Relative error norm against the next plan's reference.
    other: f64,
}

/// Applies every plan of the fixture's plans.json with the binary and runs the written files;
/// returns one row per plan (tolerances are checked by the caller, after every figure is out).
fn check_fixture(f: &Value, dir: &Path) -> Vec<Row> {
    let name = f["name"].as_str().unwrap();
    let plans_path = common::fixtures().join(
        f["plans"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no `plans` in the manifest entry")),
    );
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(&plans_path)
            .unwrap_or_else(|e| panic!("{}: {e}", plans_path.display())),
    )
    .expect("plans.json is JSON");
    assert_eq!(refs["format"], "skrr-torch-plans/1");
    assert_eq!(refs["fixture"], name);
    let plans = refs["plans"].as_array().expect("plans");
    assert_eq!(plans.len(), 4, "{name}: four plans");
    let outs = apply_plans(f, &refs, dir);
    let ran = run_outputs(&outs, &refs, "last_hidden_state", dir);
    let want: Vec<Vec<f64>> = plans
        .iter()
        .map(|p| numbers(&p["last_hidden_state"]))
        .collect();
    plans
        .iter()
        .zip(ran)
        .enumerate()
        .map(|(i, (p, o))| {
            assert_eq!(
                o["shape"], refs["shape"],
                "{name} {}: output shape",
                p["name"]
            );
            let got = numbers(&o["data"]);
            let own = Errors::of(&got, &want[i]);
            let other = Errors::of(&got, &want[(i + 1) % want.len()]);
            Row {
                plan: p["name"].as_str().unwrap().to_string(),
                own,
                other: other.norm,
            }
        })
        .collect()
}

/// Writes each plan of `refs` (the fixture's plans.json) as a plan file and applies it with the
/// binary; returns the written files, in the order of the plans.
fn apply_plans(f: &Value, refs: &Value, dir: &Path) -> Vec<String> {
    let name = f["name"].as_str().unwrap();
    let n = 2 * f["layers"].as_u64().unwrap() as usize;
    let model = common::fixtures().join(f["model"].as_str().unwrap());
    let mut outs = Vec::new();
    for (i, p) in refs["plans"].as_array().expect("plans").iter().enumerate() {
        let actions = actions(&p["sub_blocks"]);
        assert_eq!(actions.len(), n, "{name}: one action per sub-block");
        let plan = dir.join(format!("plan{i}.json"));
        common::write_plan(&plan, &actions);
        let out = dir.join(format!("plan{i}.onnx"));
        common::skrr_ok([
            "apply".as_ref(),
            model.as_os_str(),
            plan.as_os_str(),
            out.as_os_str(),
        ]);
        outs.push(out.to_str().unwrap().to_string());
    }
    outs
}

/// ONNX Runtime's `output` of each model on the token rows of `refs` (tests/oracles/run_models.py).
fn run_outputs(models: &[String], refs: &Value, output: &str, dir: &Path) -> Vec<Value> {
    let job = serde_json::json!({
        "models": models,
        "inputs": {"input_ids": refs["input_ids"], "attention_mask": refs["attention_mask"]},
        "output": output,
    });
    let job_path = dir.join("job.json");
    std::fs::write(&job_path, job.to_string()).unwrap();
    let script = common::repo_root().join("tests/oracles/run_models.py");
    let ran = common::run_python_json(
        &std::fs::read_to_string(script).unwrap(),
        &[job_path.to_str().unwrap()],
    );
    ran["outputs"].as_array().expect("outputs").clone()
}

#[test]
fn every_pruned_fixture_equals_pytorch_under_the_plan() {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let fixtures = manifest["fixtures"].as_array().unwrap();
    assert!(fixtures.len() >= 13);
    check_all(fixtures);
}

/// The exports Hugging Face Optimum writes (`common::optimum_fixtures`): BERT with
/// token_type_ids, CLIP text and T5 encoders with input_ids only (their plans.json rows have an
/// all-ones mask: the export sees the padding as tokens, and so did PyTorch), a CLIP with
/// projection whose every layer's output is also a graph output.
#[test]
fn every_optimum_export_equals_pytorch_under_the_plan() {
    check_all(&common::optimum_fixtures());
}

/// Optimum's CLIP with projection, exported as for SDXL's text_encoder_2, also outputs every
/// layer's output (`hidden_states.0` .. `hidden_states.L`: the pipelines read the penultimate
/// one). Each stays an output of the file `apply` writes and equals PyTorch's hidden states under
/// the plan (fixtures/<name>/hidden_states.json): after a skipped layer, the stream it passes on
/// unchanged; after a re-used one, the source's weights run at that layer.
#[test]
fn optimum_hidden_state_outputs_equal_pytorch_under_the_plan() {
    let fixtures: Vec<Value> = common::optimum_fixtures()
        .into_iter()
        .filter(|f| f["hidden_states_plans"].is_string())
        .collect();
    assert_eq!(fixtures.len(), 1, "optimum_clip_proj");
    let tmp = tempfile::tempdir().unwrap();
    let mut out_of_tolerance = Vec::new();
    for f in &fixtures {
        let name = f["name"].as_str().unwrap();
        let read = |key: &str| -> Value {
            let path = common::fixtures().join(f[key].as_str().unwrap());
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
        };
        let (refs, hidden) = (read("plans"), read("hidden_states_plans"));
        assert_eq!(hidden["format"], "skrr-torch-plans-hidden-states/1");
        let layers = f["layers"].as_u64().unwrap() as usize;
        let outs = apply_plans(f, &refs, tmp.path());
        let plans = hidden["plans"].as_array().unwrap();
        assert_eq!(plans.len(), outs.len());
        for l in 0..=layers {
            let output = format!("hidden_states.{l}");
            let ran = run_outputs(&outs, &refs, &output, tmp.path());
            for (p, o) in plans.iter().zip(&ran) {
                assert_eq!(o["shape"], hidden["shape"], "{name} {output}");
                let e = Errors::of(&numbers(&o["data"]), &numbers(&p["outputs"][&output]));
                let plan = p["name"].as_str().unwrap();
                eprintln!(
                    "{name} {plan} {output}: rel err norm {:.2e}, max rel err {:.2e}",
                    e.norm, e.max
                );
                if e.norm > 1e-5 || !e.norm.is_finite() {
                    out_of_tolerance.push(format!("{name} {plan} {output}: {:.2e}", e.norm));
                }
            }
        }
    }
    assert!(
        out_of_tolerance.is_empty(),
        "hidden-state outputs of the written file vs PyTorch under the plan:\n{}",
        out_of_tolerance.join("\n")
    );
}

/// Applies and checks every plan of every fixture; fails after all are reported.
fn check_all(fixtures: &[Value]) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut failed, mut out_of_tolerance) = (Vec::new(), Vec::new());
    for f in fixtures {
        let name = f["name"].as_str().unwrap().to_string();
        let fp16 = f["dtype"] == "float16";
        let tol = if fp16 { 2e-3 } else { 1e-5 };
        let dir = tmp.path().join(&name);
        std::fs::create_dir(&dir).unwrap();
        let rows = match std::panic::catch_unwind(|| check_fixture(f, &dir)) {
            Ok(rows) => rows,
            Err(_) => {
                failed.push(name);
                continue;
            }
        };
        for r in rows {
            eprintln!(
                "{name} ({}) {}: rel err norm {:.2e}, max rel err {:.2e}; vs another plan's reference {:.2e}",
                f["dtype"].as_str().unwrap(),
                r.plan,
                r.own.norm,
                r.own.max,
                r.other,
            );
            if r.own.norm > tol || r.other <= 50.0 * tol || !r.own.norm.is_finite() {
                out_of_tolerance.push(format!(
                    "{name} {}: {:.2e} (tolerance {tol:e}), another plan's reference {:.2e}",
                    r.plan, r.own.norm, r.other
                ));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "fixtures failing (see above): {failed:?}"
    );
    assert!(
        out_of_tolerance.is_empty(),
        "ONNX Runtime on the written file vs PyTorch under the plan:\n{}",
        out_of_tolerance.join("\n")
    );
}
