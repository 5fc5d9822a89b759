//! `skrr-onnx score --compensate linear` (issue #13, the output map measured): the fit is
//! deterministic, its D without the map is the plan's D as `score` measures it (in-sample and on
//! the held-out prompts, scored on their own), and the map lowers D where it was fitted.

mod common;

use serde_json::Value;
use skrr_onnx::plan::Action;

fn score(args: &[&str]) -> Value {
    let mut all = vec!["--json", "score"];
    all.extend_from_slice(args);
    serde_json::from_str(&common::skrr_ok(all)).unwrap()
}

#[test]
fn the_output_map_is_deterministic_and_consistent_with_score() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixtures().join("t5_gated/model.onnx");
    let model = model.to_str().unwrap();
    let plan = dir.path().join("plan.json");
    // Layer 0's attention, a middle FFN and the last FFN skipped.
    let mut actions = vec![Action::Keep; 8];
    for p in [0, 3, 7] {
        actions[p] = Action::Skip;
    }
    common::write_plan(&plan, &actions);
    let plan = plan.to_str().unwrap();
    // 12 calibration prompts and 6 held-out ones, as token ids of the fixture's vocabulary.
    let rows = |n: usize, salt: usize| -> String {
        (0..n)
            .map(|k| {
                let len = 4 + (k * 7 + salt) % 9;
                let ids: Vec<usize> = (0..len)
                    .map(|t| 2 + (k * 131 + t * 37 + salt) % 500)
                    .collect();
                format!("{ids:?}\n")
            })
            .collect()
    };
    let calib = dir.path().join("calib.jsonl");
    let held = dir.path().join("held.jsonl");
    std::fs::write(&calib, rows(12, 1)).unwrap();
    std::fs::write(&held, rows(6, 5)).unwrap();
    let (calib, held) = (calib.to_str().unwrap(), held.to_str().unwrap());
    let args = [
        model,
        "--plan",
        plan,
        "--calib",
        calib,
        "--chunk",
        "2",
        "--compensate",
        "linear",
        "--heldout",
        held,
    ];
    let a = score(&args);
    let b = score(&args);
    let (fa, fb) = (&a["compensation"]["fit"], &b["compensation"]["fit"]);
    assert_eq!(fa["d_after"], fb["d_after"], "the fit is deterministic");
    assert_eq!(a["compensation"]["held_out"], b["compensation"]["held_out"]);
    assert_eq!(fa["params_added"], 64 * 64 + 64);
    // Every 4th of the 6 prompt chunks (plus the null input's) was held out to pick the ridge.
    assert_eq!(fa["validation"].as_array().unwrap().len(), 8);

    let close = |x: &Value, y: &Value, what: &str| {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        assert!((x - y).abs() <= 1e-6 * y.abs(), "{what}: {x} vs {y}");
    };
    // Without the map, the normal equations give back the plan's D as score measures it.
    close(&fa["d_before"], &a["d"], "in-sample D without the map");
    let plain_held = score(&[model, "--plan", plan, "--calib", held, "--chunk", "2"]);
    close(
        &a["compensation"]["held_out"]["d_without"],
        &plain_held["d"],
        "held-out D without the map",
    );
    // Least squares with a ridge chosen on held-out chunks beats the identity in-sample.
    assert!(fa["d_after"].as_f64().unwrap() < 0.9 * fa["d_before"].as_f64().unwrap());
}

#[test]
fn compensation_with_a_projection_is_refused_for_now() {
    let model = common::fixtures().join("t5_gated/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    common::write_skip_plan(&plan, 8, &[3]);
    let projection = common::projection_model(dir.path(), 64, false);
    let out = common::skrr([
        "score".as_ref(),
        model.as_os_str(),
        "--plan".as_ref(),
        plan.as_os_str(),
        "--projection".as_ref(),
        projection.as_os_str(),
        "--compensate".as_ref(),
        "linear".as_ref(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("linear compensation with --projection is not supported yet"),
        "{err}"
    );
}
