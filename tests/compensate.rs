//! `skrr-onnx score --compensate linear` (issue #13, the output map measured): the fit is
//! deterministic, its D without the map is the plan's D as `score` measures it (in-sample and on
//! the held-out prompts, scored on their own), and the map lowers D where it was fitted.

mod common;

use serde_json::Value;
use skrr_onnx::action::Action;

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

/// The main job with `--compensate linear` on a fixture: the plan, its sidecar and the report.
struct Compensated {
    dir: tempfile::TempDir,
    report: Value,
}

impl Compensated {
    fn run(model: &std::path::Path, sparsity: &str, extra: &[&str]) -> Compensated {
        Compensated::run_with(model, sparsity, "linear", extra)
    }

    fn run_with(
        model: &std::path::Path,
        sparsity: &str,
        compensate: &str,
        extra: &[&str],
    ) -> Compensated {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (out, plan) = (d.join("out.onnx"), d.join("plan.json"));
        let mut args: Vec<std::ffi::OsString> = vec![
            "--json".into(),
            model.into(),
            out.into(),
            "--sparsity".into(),
            sparsity.into(),
            "--compensate".into(),
            compensate.into(),
            "--plan-out".into(),
            plan.into(),
            "--min-cos".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(Into::into));
        let report = serde_json::from_str(&common::skrr_ok(args)).unwrap();
        Compensated { dir, report }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `apply` of the plan (its sidecar found beside it) writes the bytes the job wrote, and a
    /// second run of the job (`again`) writes the same model and sidecar: the fit is
    /// deterministic.
    fn assert_reproduced(&self, model: &std::path::Path, again: Compensated) {
        let dir = tempfile::tempdir().unwrap();
        let applied = dir.path().join("out.onnx");
        common::skrr_ok([
            "apply".as_ref(),
            model.as_os_str(),
            self.path("plan.json").as_os_str(),
            applied.as_os_str(),
        ]);
        let bytes = |p: &std::path::Path| std::fs::read(p).unwrap();
        let out = bytes(&self.path("out.onnx"));
        assert!(bytes(&applied) == out, "apply differs");
        assert!(bytes(&again.path("out.onnx")) == out, "second run differs");
        assert!(bytes(&again.path("plan.map.bin")) == bytes(&self.path("plan.map.bin")));
    }
}

#[test]
fn the_main_job_writes_the_map_and_apply_reproduces_it_byte_for_byte() {
    let model = common::fixtures().join("t5_gated/model.onnx");
    let a = Compensated::run(&model, "0.3", &[]);
    let r = &a.report;
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(a.path("plan.json")).unwrap()).unwrap();
    let comp = &plan["compensation"];
    assert_eq!(comp["kind"], "linear");
    assert_eq!(comp["placement"], "output");
    assert_eq!(comp["output"], "last_hidden_state");
    assert_eq!(comp["params"], 64 * 64 + 64);
    assert_eq!(comp["file"], "plan.map.bin");
    let sidecar = std::fs::read(a.path("plan.map.bin")).unwrap();
    assert_eq!(sidecar.len(), (64 * 64 + 64) * 8);
    assert_eq!(
        comp["sha256"].as_str().unwrap(),
        common::sha256_file(&a.path("plan.map.bin"))
    );
    // The target is met net of the map's parameters.
    let net = plan["net_sparsity"].as_f64().unwrap();
    let gross = plan["achieved_sparsity"].as_f64().unwrap();
    let total = plan["params_total"].as_f64().unwrap();
    assert!(net >= 0.3, "net sparsity {net}");
    assert!((gross - net - (64.0 * 64.0 + 64.0) / total).abs() < 1e-12);
    assert_eq!(plan["target_sparsity"], 0.3);
    assert_eq!(r["rewrite"]["params_added"], 64 * 64 + 64);
    let params_after = r["rewrite"]["params_after"].as_f64().unwrap();
    assert!((1.0 - params_after / total - net).abs() < 1e-12);
    assert_eq!(comp["discrepancy"], r["compensation"]["fit"]["d_after"]);
    // The fidelity check reads the written file's value before the map too: it is the plan
    // alone, as `apply` of the plan without its compensation writes it and `compare` measures
    // it (the same built-in held-out prompts).
    let u = &r["fidelity"]["uncompensated"];
    assert_eq!(u["value"], "last_hidden_state/skrr_uncompensated");
    let mut plain_plan = plan.clone();
    for key in ["compensation", "params_added", "net_sparsity"] {
        plain_plan.as_object_mut().unwrap().remove(key);
    }
    let plain_path = a.path("plain.json");
    std::fs::write(&plain_path, plain_plan.to_string()).unwrap();
    let plain = a.path("plain.onnx");
    common::skrr_ok([
        "apply".as_ref(),
        model.as_os_str(),
        plain_path.as_os_str(),
        plain.as_os_str(),
    ]);
    let compare = |pruned: &std::path::Path| -> Value {
        let out = common::skrr([
            "--json".as_ref(),
            "compare".as_ref(),
            model.as_os_str(),
            pruned.as_os_str(),
        ]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let alone = compare(&plain);
    assert!(alone["uncompensated"].is_null());
    for key in ["d", "d_c", "cos_mean"] {
        let (x, y) = (u[key].as_f64().unwrap(), alone[key].as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-6 * y.abs(),
            "{key}: {x} before the map vs {y} alone"
        );
    }
    let again = compare(&a.path("out.onnx"));
    assert_eq!(again["uncompensated"], *u, "compare shows the same");
    assert_eq!(again["d"], r["fidelity"]["d"]);
    assert_ne!(u["d"], r["fidelity"]["d"]);

    a.assert_reproduced(&model, Compensated::run(&model, "0.3", &[]));
}

#[test]
fn apply_refuses_a_map_that_is_not_the_plans() {
    let model = common::fixtures().join("clip/model.onnx");
    let a = Compensated::run(&model, "0.2", &["--no-compare"]);
    let plan_path = a.path("plan.json");
    let out = a.path("applied.onnx");
    let apply = [
        "apply".as_ref(),
        model.as_os_str(),
        plan_path.as_os_str(),
        out.as_os_str(),
    ];
    // A changed value.
    let sidecar = a.path("plan.map.bin");
    let good = std::fs::read(&sidecar).unwrap();
    let mut bad = good.clone();
    bad[8] ^= 1;
    std::fs::write(&sidecar, &bad).unwrap();
    common::assert_error_contract(&apply, 4, "has SHA-256", Some(&out), &[&model, &plan_path]);
    // Missing.
    std::fs::remove_file(&sidecar).unwrap();
    common::assert_error_contract(&apply, 4, "cannot read its map", Some(&out), &[&model]);
    std::fs::write(&sidecar, &good).unwrap();
    // A file outside the plan's folder.
    let text = std::fs::read_to_string(&plan_path).unwrap();
    let mut plan: Value = serde_json::from_str(&text).unwrap();
    plan["compensation"]["file"] = "../plan.map.bin".into();
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    common::assert_error_contract(
        &apply,
        4,
        "must be a file name in the plan's folder",
        Some(&out),
        &[&model],
    );
    // A plan recorded inside a model names no file.
    plan["compensation"].as_object_mut().unwrap().remove("file");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    common::assert_error_contract(
        &apply,
        4,
        "names no file holding the map",
        Some(&out),
        &[&model],
    );
    // A map for another width.
    plan["compensation"]["file"] = "plan.map.bin".into();
    plan["compensation"]["dim"] = 32.into();
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    common::assert_error_contract(&apply, 4, "is a map on 32 channels", Some(&out), &[&model]);
}

#[test]
fn an_fp16_model_gets_its_map_in_fp16() {
    let model = common::fixtures().join("t5_gated_fp16/model.onnx");
    let a = Compensated::run(&model, "0.2", &[]);
    let f = &a.report["fidelity"];
    assert_ne!(f["uncompensated"]["d"], f["d"]);
    let code = "import onnx, sys\n\
        m = onnx.load(sys.argv[1])\n\
        print(sorted((t.name, t.data_type, list(t.dims)) for t in m.graph.initializer if 'skrr_compensation' in t.name))\n\
        print([n.op_type for n in m.graph.node if 'skrr_compensation' in n.name])\n\
        print([o.name for o in m.graph.output])";
    let out = common::run_python(code, &[a.path("out.onnx").to_str().unwrap()]);
    assert_eq!(
        out.trim(),
        "[('last_hidden_state.bias/skrr_compensation', 10, [64]), \
         ('last_hidden_state.weight/skrr_compensation', 10, [64, 64])]\n\
         ['MatMul', 'Add']\n['last_hidden_state']",
    );
}

/// The target on the real all-MiniLM-L6-v2: the map lowers held-out D by at least 30 %
/// at a net sparsity of at least 0.23 (the built-in prompts; null input ids 101, 102).
#[test]
fn the_output_map_lowers_held_out_d_on_the_real_minilm() {
    let Some(dir) = common::minilm("the_output_map_lowers_held_out_d_on_the_real_minilm") else {
        return;
    };
    let a = Compensated::run(&dir.join("model.onnx"), "0.23", &["--null-ids", "101,102"]);
    let (f, u) = (
        &a.report["fidelity"],
        &a.report["fidelity"]["uncompensated"],
    );
    let get = |v: &Value, k: &str| v[k].as_f64().unwrap();
    eprintln!(
        "MiniLM at 0.23: held-out D {} -> {}, D_c {} -> {}, cosine {} -> {}",
        u["d"], f["d"], u["d_c"], f["d_c"], u["cos_mean"], f["cos_mean"]
    );
    assert!(get(f, "d") < 0.7 * get(u, "d"));
    // On the prompts alone (the null input is fitted on itself) the gain is smaller.
    assert!(get(f, "d_c") < get(u, "d_c"));
    assert!(get(f, "cos_mean") > get(u, "cos_mean"));
    assert!(a.report["plan"]["net_sparsity"].as_f64().unwrap() >= 0.23);
}

/// `--rank compensated`: the search ranks by D after each candidate's own map, so the plan's D
/// is its compensated D; it needs `--compensate linear`.
#[test]
fn ranking_by_compensated_d_scores_with_the_map() {
    let model = common::fixtures().join("t5_gated/model.onnx");
    let a = Compensated::run(&model, "0.2", &["--rank", "compensated", "--no-compare"]);
    let plan = &a.report["plan"];
    assert_eq!(
        plan["discrepancy"]["final"],
        plan["compensation"]["discrepancy"]
    );
    let plain = Compensated::run(&model, "0.2", &["--no-compare"]);
    let plan = &plain.report["plan"];
    assert_ne!(
        plan["discrepancy"]["final"],
        plan["compensation"]["discrepancy"]
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let args: [&std::ffi::OsStr; 6] = [
        model.as_os_str(),
        out.as_os_str(),
        "--sparsity".as_ref(),
        "0.2".as_ref(),
        "--rank".as_ref(),
        "compensated".as_ref(),
    ];
    common::assert_error_contract(
        &args,
        2,
        "give --compensate linear too",
        Some(&out),
        &[&model],
    );
}

/// `--compensate merged`: folds into the kept sub-blocks before the skipped runs, no parameter
/// added; the engine's held-out D with them is the written file's; `apply` reproduces the file.
#[test]
fn merged_folds_are_written_measured_and_reproduced() {
    let model = common::fixtures().join("t5_gated/model.onnx");
    let a = Compensated::run_with(&model, "0.3", "merged", &[]);
    let r = &a.report;
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(a.path("plan.json")).unwrap()).unwrap();
    let comp = &plan["compensation"];
    assert_eq!(comp["placement"], "merged");
    assert_eq!(comp["params"], 0);
    let folds = comp["folds"].as_array().unwrap();
    assert!(!folds.is_empty(), "{comp}");
    for f in folds {
        // The fold sits right before the run it compensates.
        assert_eq!(f["run"][0].as_u64().unwrap(), f["at"].as_u64().unwrap() + 1);
    }
    assert_eq!(plan["net_sparsity"], plan["achieved_sparsity"]);
    assert!(plan["achieved_sparsity"].as_f64().unwrap() >= 0.3);
    assert_eq!(r["rewrite"]["params_added"], 0);
    assert!(r["rewrite"]["params_replaced"].as_u64().unwrap() > 0);
    assert_eq!(
        r["rewrite"]["params_after"],
        r["fidelity"]["pruned"]["params"]
    );
    let held = &r["compensation"]["held_out"];
    let (with, file) = (
        held["d_with"].as_f64().unwrap(),
        r["fidelity"]["d"].as_f64().unwrap(),
    );
    assert!(
        (with - file).abs() <= 1e-5 * file,
        "engine {with} vs file {file}"
    );
    assert_ne!(held["d_without"], held["d_with"]);

    a.assert_reproduced(&model, Compensated::run_with(&model, "0.3", "merged", &[]));
    // `compare` of the written file shows the plan without its folds too (engine on the dense
    // model): the main job's held-out figure.
    let out = common::skrr([
        "--json".as_ref(),
        "compare".as_ref(),
        model.as_os_str(),
        a.path("out.onnx").as_os_str(),
        "--min-cos".as_ref(),
        "0".as_ref(),
    ]);
    let compared: Value = serde_json::from_slice(&out.stdout).unwrap();
    let u = &compared["uncompensated"];
    for (k, e) in [
        ("d", "d_without"),
        ("d_c", "d_c_without"),
        ("cos_mean", "cos_without"),
    ] {
        let (x, y) = (u[k].as_f64().unwrap(), held[e].as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-9 * y.abs(),
            "{k}: compare {x} vs the main job {y}"
        );
    }
    assert_eq!(compared["d"], r["fidelity"]["d"]);
    // A fold the plan cannot hold is refused: at a skipped position, or replacing a weight
    // that is not its site's.
    let plan_path = a.path("plan.json");
    let out = a.path("refused.onnx");
    let apply = [
        "apply".as_ref(),
        model.as_os_str(),
        plan_path.as_os_str(),
        out.as_os_str(),
    ];
    let mut bad = plan.clone();
    bad["compensation"]["folds"][0]["at"] = bad["compensation"]["folds"][0]["run"][0].clone();
    std::fs::write(&plan_path, bad.to_string()).unwrap();
    common::assert_error_contract(
        &apply,
        4,
        "not a run of skips right after it",
        Some(&out),
        &[&model],
    );
    let mut bad = plan.clone();
    bad["compensation"]["folds"][folds.len() - 1]["at"] = u64::MAX.into();
    std::fs::write(&plan_path, bad.to_string()).unwrap();
    common::assert_error_contract(&apply, 4, "the model has 8", Some(&out), &[&model]);
    let mut bad = plan.clone();
    bad["compensation"]["output"] = "last_hidden_state".into();
    bad["compensation"]["dim"] = 64.into();
    std::fs::write(&plan_path, bad.to_string()).unwrap();
    common::assert_error_contract(
        &apply,
        4,
        "nothing of the other placement",
        Some(&out),
        &[&model],
    );
    if folds.len() > 1 {
        let mut bad = plan.clone();
        bad["compensation"]["folds"]
            .as_array_mut()
            .unwrap()
            .swap(0, 1);
        std::fs::write(&plan_path, bad.to_string()).unwrap();
        common::assert_error_contract(
            &apply,
            4,
            "in the order of their sub-blocks",
            Some(&out),
            &[&model],
        );
    }
    let mut bad = plan.clone();
    bad["compensation"]["folds"][0]["tensors"][0]["replaces"] = "shared.weight".into();
    std::fs::write(&plan_path, bad.to_string()).unwrap();
    common::assert_error_contract(&apply, 4, "that fold site's are", Some(&out), &[&model]);
}

/// The merged placement on the real all-MiniLM-L6-v2 at 0.23: held-out D_c (the prompts alone)
/// and token cosine improve markedly with no parameter added (measured −49 % D_c).
#[test]
fn merged_folds_lower_held_out_d_c_on_the_real_minilm() {
    let Some(dir) = common::minilm("merged_folds_lower_held_out_d_c_on_the_real_minilm") else {
        return;
    };
    let a = Compensated::run_with(
        &dir.join("model.onnx"),
        "0.23",
        "merged",
        &["--null-ids", "101,102"],
    );
    let e = &a.report["compensation"]["held_out"];
    let get = |k: &str| e[k].as_f64().unwrap();
    eprintln!("MiniLM merged at 0.23: {e}");
    assert!(get("d_c_with") < 0.7 * get("d_c_without"));
    assert!(get("d_with") < 0.7 * get("d_without"));
    assert!(get("cos_with") > get("cos_without") + 0.05);
    assert_eq!(a.report["rewrite"]["params_added"], 0);
}

/// Folds serve the measured output: with a tap inside the encoder (`--measure`, the layer SDXL
/// reads), runs after it are left alone and the fit never raises D where it is measured.
#[test]
fn merged_folds_respect_a_tapped_output() {
    let dir = tempfile::tempdir().unwrap();
    let tapped = dir.path().join("tapped.onnx");
    let code = "import onnx, sys\n\
        m = onnx.load(sys.argv[1])\n\
        m.graph.output.append(onnx.helper.make_tensor_value_info(sys.argv[3], onnx.TensorProto.FLOAT, None))\n\
        onnx.save(m, sys.argv[2])";
    let model = common::fixtures().join("clip/model.onnx");
    let tap = "/model/encoder/layers.2/Add_1_output_0";
    common::run_python(
        code,
        &[model.to_str().unwrap(), tapped.to_str().unwrap(), tap],
    );
    let tokenizer = common::fixtures().join("clip/tokenizer.json");
    std::fs::copy(tokenizer, dir.path().join("tokenizer.json")).unwrap();
    let out = dir.path().join("out.onnx");
    let report: Value = serde_json::from_str(&common::skrr_ok([
        "--json",
        tapped.to_str().unwrap(),
        out.to_str().unwrap(),
        "--sparsity",
        "0.2",
        "--compensate",
        "merged",
        "--measure",
        tap,
        "--no-compare",
    ]))
    .unwrap();
    let fit = &report["compensation"]["fit"];
    assert!(
        fit["d_after"].as_f64().unwrap() <= fit["d_before"].as_f64().unwrap(),
        "{fit}"
    );
    // Sub-block 5 ends at the tap: no fold compensates a run after it.
    for f in fit["folds"].as_array().unwrap() {
        assert!(f["run"][0].as_u64().unwrap() <= 5, "{f}");
    }
}
