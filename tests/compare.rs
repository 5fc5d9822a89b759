//! `skrr-onnx compare` against an independent oracle (tests/oracles/fidelity.py: whole models in
//! Python ONNX Runtime, one prompt at a time, float64 sums), and its PASSED/FAILED contract.

mod common;

use std::path::Path;

use common::{fixtures, python, skrr};

/// Token ids within every fixture's vocabulary (583 for T5, 1000 otherwise).
const PROMPTS: &[&[i64]] = &[
    &[2, 17, 45, 99, 3],
    &[2, 5, 6, 7, 8, 9, 10, 11, 12, 3],
    &[2, 400, 3],
    &[2, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 3],
];
const NULL: &[i64] = &[2, 3];

fn write_job(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ids = dir.join("ids.jsonl");
    let lines: Vec<String> = PROMPTS
        .iter()
        .map(|p| serde_json::to_string(p).unwrap())
        .collect();
    std::fs::write(&ids, lines.join("\n") + "\n").unwrap();
    let job = dir.join("job.json");
    let j = serde_json::json!({"prompts": PROMPTS, "null": NULL});
    std::fs::write(&job, j.to_string()).unwrap();
    (ids, job)
}

fn oracle(dense: &Path, pruned: &Path, job: &Path) -> serde_json::Value {
    let script = common::repo_root().join("tests/oracles/fidelity.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(dense)
        .arg(pruned)
        .arg(job)
        .output()
        .expect("cannot run the Python oracle");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn compare_json(
    dense: &Path,
    pruned: &Path,
    ids: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value) {
    let mut args: Vec<String> = vec![
        "compare".into(),
        dense.display().to_string(),
        pruned.display().to_string(),
        "--json".into(),
        "--calib".into(),
        ids.display().to_string(),
        "--null-ids".into(),
        "2,3".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = skrr(&args);
    let code = out.status.code().unwrap_or(-1);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "compare printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-12
}

#[test]
fn figures_match_an_independent_oracle_alone_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, job) = write_job(dir.path());
    for (dense, pruned) in [("bert", "bert_fp16"), ("t5_gated", "t5_gated_fp16")] {
        let dense = fixtures().join(dense).join("model.onnx");
        let pruned = fixtures().join(pruned).join("model.onnx");
        let want = oracle(&dense, &pruned, &job);
        // One prompt per batch: the same runs as the oracle's, so figures agree tightly.
        let (code, got) = compare_json(&dense, &pruned, &ids, &["--chunk", "1"]);
        assert_eq!(code, 0, "{got}");
        for key in [
            "d_c",
            "d_null",
            "max_abs_err",
            "rel_err_norm",
            "cos_mean",
            "cos_min",
            "null_norm_ratio",
        ] {
            let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!(
                close(g, w, 1e-6),
                "{}: {key} = {g}, oracle {w}",
                dense.display()
            );
        }
        assert_eq!(got["tokens"], want["tokens"]);
        // Padded batches must not change what is measured on valid tokens.
        let (_, batched) = compare_json(&dense, &pruned, &ids, &["--chunk", "4"]);
        for key in ["d_c", "cos_mean"] {
            let (g, w) = (batched[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!(
                close(g, w, 1e-3),
                "{}: batched {key} = {g}, oracle {w}",
                dense.display()
            );
        }
        assert!(got["pruned"]["bytes"].as_u64() < got["dense"]["bytes"].as_u64());
        assert_eq!(got["dense"]["params"], got["pruned"]["params"]);
    }
}

#[test]
fn identical_models_pass_and_tolerance_failures_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = write_job(dir.path());
    let bert = fixtures().join("bert/model.onnx");
    let (code, same) = compare_json(&bert, &bert, &ids, &["--atol", "0"]);
    assert_eq!(code, 0);
    assert_eq!(same["d"].as_f64(), Some(0.0));
    assert_eq!(same["cos_min"].as_f64(), Some(1.0));
    assert_eq!(same["passed"], true);

    let fp16 = fixtures().join("bert_fp16/model.onnx");
    let out = skrr([
        "compare",
        bert.to_str().unwrap(),
        fp16.to_str().unwrap(),
        "--calib",
        ids.to_str().unwrap(),
        "--no-null",
        "--atol",
        "1e-7",
    ]);
    assert_eq!(out.status.code(), Some(1), "FAILED must exit 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().last() == Some("FAILED"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("elements_failed"), "{stderr}");
}

/// A structurally pruned pair (t5_gated with feed-forward sub-blocks skipped, written with
/// external data): the figures match the oracle, the size reductions are those of the files,
/// and each limit fails the run on its own, naming its check.
#[test]
fn a_pruned_pair_is_measured_and_each_limit_can_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, job) = write_job(dir.path());
    let dense = fixtures().join("t5_gated/model.onnx");
    let plan = dir.path().join("plan.json");
    common::write_skip_plan(&plan, 8, &[3, 5]);
    let pruned = dir.path().join("pruned.onnx");
    common::skrr_ok([
        "apply",
        dense.to_str().unwrap(),
        plan.to_str().unwrap(),
        pruned.to_str().unwrap(),
        "--external-data",
    ]);
    let loose = ["--min-cos=-1", "--max-null-ratio", "1e9"];
    let (code, got) = compare_json(
        &dense,
        &pruned,
        &ids,
        &[&loose[..], &["--chunk", "1"]].concat(),
    );
    assert_eq!(code, 0, "{got}");
    let want = oracle(&dense, &pruned, &job);
    for key in ["d_c", "d_null", "cos_mean", "cos_min", "null_norm_ratio"] {
        let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
        assert!(close(g, w, 1e-6), "{key} = {g}, oracle {w}");
    }
    let sizes: serde_json::Value = serde_json::from_str(&common::run_python(
        "import onnx, os, sys, json, numpy as np\n\
         n = lambda p: int(sum(np.prod(t.dims) for t in onnx.load(p, load_external_data=False).graph.initializer))\n\
         b = lambda p: sum(os.path.getsize(os.path.join(os.path.dirname(p), f)) for f in os.listdir(os.path.dirname(p)) if f.startswith(os.path.basename(p)))\n\
         print(json.dumps({'params': [n(a) for a in sys.argv[1:]], 'bytes': [b(a) for a in sys.argv[1:]]}))\n",
        &[dense.to_str().unwrap(), pruned.to_str().unwrap()],
    ))
    .unwrap();
    let (pd, pp) = (
        sizes["params"][0].as_f64().unwrap(),
        sizes["params"][1].as_f64().unwrap(),
    );
    let (bd, bp) = (
        sizes["bytes"][0].as_f64().unwrap(),
        sizes["bytes"][1].as_f64().unwrap(),
    );
    assert_eq!(got["dense"]["params"].as_f64(), Some(pd));
    assert_eq!(got["pruned"]["params"].as_f64(), Some(pp));
    assert!(
        close(
            got["params_reduction"].as_f64().unwrap(),
            1.0 - pp / pd,
            1e-12
        ),
        "{got}"
    );
    assert!(
        close(
            got["bytes_reduction"].as_f64().unwrap(),
            1.0 - bp / bd,
            1e-12
        ),
        "{got}"
    );

    for (args, check) in [
        (
            &["--max-null-ratio", "1e9", "--min-cos", "0.99999"][..],
            "cos_mean",
        ),
        (
            &["--min-cos=-1", "--max-null-ratio", "1"],
            "null_norm_factor",
        ),
        (&[&loose[..], &["--max-d", "0"]].concat(), "d"),
        (&[&loose[..], &["--rtol", "0"]].concat(), "elements_failed"),
    ] {
        let (code, got) = compare_json(&dense, &pruned, &ids, args);
        assert_eq!(code, 1, "{args:?}: {got}");
        let failed: Vec<&str> = got["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(failed, [check], "{args:?}");
    }
}

/// A model whose first output is not `last_hidden_state` (CLIP with projection lists
/// `text_embeds` first): `compare` measures the output the search measured, so the engine's D
/// of a plan (`score`) equals the D of the file `apply` writes.
#[test]
fn compare_measures_the_output_the_search_measured() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = write_job(dir.path());
    let dense = dir.path().join("two_outputs.onnx");
    common::run_python(
        "import onnx, sys\n\
         from onnx import helper\n\
         m = onnx.load(sys.argv[1])\n\
         m.graph.node.append(helper.make_node('ReduceMean', ['last_hidden_state'], ['text_embeds'], axes=[1], keepdims=0))\n\
         m.graph.output.insert(0, helper.make_tensor_value_info('text_embeds', onnx.TensorProto.FLOAT, ['batch', 64]))\n\
         onnx.checker.check_model(m)\n\
         onnx.save(m, sys.argv[2])\n",
        &[
            fixtures().join("bert/model.onnx").to_str().unwrap(),
            dense.to_str().unwrap(),
        ],
    );
    let plan = dir.path().join("plan.json");
    let analysis: serde_json::Value = serde_json::from_str(&common::skrr_ok([
        "inspect",
        dense.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let n = analysis["sub_blocks"].as_array().unwrap().len();
    common::write_skip_plan(&plan, n, &[3]);
    let pruned = dir.path().join("pruned.onnx");
    let (d, p, pl, i) = (&dense, &pruned, &plan, &ids);
    common::skrr_ok(
        ["apply"]
            .into_iter()
            .chain([d, pl, p].map(|x| x.to_str().unwrap())),
    );
    // By default, and with `--measure` naming the pooled output: the same D both ways.
    for (measure, output) in [
        (None, "last_hidden_state"),
        (Some("text_embeds"), "text_embeds"),
    ] {
        let extra: Vec<&str> = measure.map(|m| vec!["--measure", m]).unwrap_or_default();
        let args = [
            "score",
            d.to_str().unwrap(),
            "--plan",
            pl.to_str().unwrap(),
            "--calib",
            i.to_str().unwrap(),
            "--null-ids",
            "2,3",
            "--json",
        ];
        let score = common::skrr_ok(args.iter().chain(&extra));
        let score: serde_json::Value = serde_json::from_str(&score).unwrap();
        let limits = ["--min-cos=-1", "--max-null-ratio", "1e9"];
        let (code, got) = compare_json(d, p, i, &[&limits[..], &extra].concat());
        assert_eq!(code, 0, "{got}");
        assert_eq!(got["output"], output);
        let (engine, file) = (score["d"].as_f64().unwrap(), got["d"].as_f64().unwrap());
        assert!(
            close(engine, file, 1e-5),
            "{output}: engine D {engine}, file D {file}"
        );
        // One position per prompt for the pooled output.
        let pooled = output == "text_embeds";
        assert_eq!(
            got["tokens"].as_u64() == Some(PROMPTS.len() as u64),
            pooled,
            "{got}"
        );
    }
    // Block Influence is a property of the dense stream: the measured output does not move it.
    let influence = |extra: &[&str]| -> serde_json::Value {
        let out = dir.path().join("sg.json");
        let args = [
            "plan",
            d.to_str().unwrap(),
            "--sparsity",
            "0.3",
            "--method",
            "shortgpt",
        ];
        let job = [
            "--calib",
            i.to_str().unwrap(),
            "--null-ids",
            "2,3",
            "--json",
            "-o",
        ];
        let run = common::skrr_ok(
            args.iter()
                .chain(&job)
                .copied()
                .chain([out.to_str().unwrap()])
                .chain(extra.iter().copied()),
        );
        serde_json::from_str::<serde_json::Value>(&run).unwrap()["block_influence"].clone()
    };
    assert_eq!(influence(&[]), influence(&["--measure", "text_embeds"]));
    // A stream value between layers tapped as an output (`hidden_states.N`, what SD 2 and
    // SDXL condition on): sub-blocks after it cannot change it, and the engine agrees with the
    // file on plans that skip before it.
    let tap = analysis["sub_blocks"][5]["output"].as_str().unwrap();
    let softmax = "/model/encoder/layer.1/attention/self/Softmax_output_0";
    let tapped = dir.path().join("tapped.onnx");
    common::run_python(
        "import onnx, sys\n\
         m = onnx.load(sys.argv[1])\n\
         for name in sys.argv[3:]:\n\
         \x20   m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))\n\
         onnx.save(m, sys.argv[2])\n",
        &[d.to_str().unwrap(), tapped.to_str().unwrap(), tap, softmax],
    );
    let job = [
        "--calib",
        i.to_str().unwrap(),
        "--null-ids",
        "2,3",
        "--measure",
        tap,
    ];
    for (skips, after_only) in [(&[3, 8][..], false), (&[7, 8], true)] {
        common::write_skip_plan(pl, n, skips);
        let out = dir.path().join(format!("tapped-{skips:?}.onnx"));
        let apply = [
            "apply",
            tapped.to_str().unwrap(),
            pl.to_str().unwrap(),
            out.to_str().unwrap(),
        ];
        common::skrr_ok(apply);
        let score = [
            "score",
            tapped.to_str().unwrap(),
            "--plan",
            pl.to_str().unwrap(),
            "--json",
        ];
        let score: serde_json::Value =
            serde_json::from_str(&common::skrr_ok(score.iter().chain(&job))).unwrap();
        let engine = score["d"].as_f64().unwrap();
        let limits = ["--min-cos=-1", "--max-null-ratio", "1e9", "--measure", tap];
        let (code, got) = compare_json(&tapped, &out, i, &limits);
        assert_eq!((code, got["output"].as_str()), (0, Some(tap)), "{got}");
        let file = got["d"].as_f64().unwrap();
        assert!(
            close(engine, file, 1e-5),
            "{skips:?}: engine D {engine}, file D {file}"
        );
        assert_eq!(engine == 0.0, after_only, "{skips:?}: {engine}");
    }
    // An output that is not one of the model's, and a value inside a sub-block.
    for (model, name, needle) in [
        (
            d,
            "nope",
            "the model has no such output (its outputs: text_embeds, last_hidden_state)",
        ),
        (
            &tapped,
            softmax,
            "is neither a stream value between layers nor computed from the encoder's last layer",
        ),
    ] {
        let args = [
            "score",
            model.to_str().unwrap(),
            "--plan",
            pl.to_str().unwrap(),
        ];
        let job = [
            "--calib",
            i.to_str().unwrap(),
            "--no-null",
            "--measure",
            name,
        ];
        let out = skrr(args.iter().chain(&job));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn a_model_with_another_interface_is_an_error_not_a_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = write_job(dir.path());
    let bert = fixtures().join("bert/model.onnx");
    let renamed = dir.path().join("renamed.onnx");
    common::run_python(
        "import onnx, sys\n\
         m = onnx.load(sys.argv[1])\n\
         old = m.graph.output[0].name\n\
         m.graph.output[0].name = 'embeddings'\n\
         for n in m.graph.node:\n\
         \x20   n.output[:] = ['embeddings' if o == old else o for o in n.output]\n\
         onnx.save(m, sys.argv[2])\n",
        &[bert.to_str().unwrap(), renamed.to_str().unwrap()],
    );
    // Another output name; and the same interface on another model, whose vocabulary gives it
    // away. Both are bad input, not a tolerance failure.
    let t5 = fixtures().join("t5_gated/model.onnx");
    for (dense, pruned, needles) in [
        (
            &bert,
            &renamed,
            &["not a drop-in replacement", "embeddings"][..],
        ),
        (
            &t5,
            &bert,
            &["its vocabulary has 1000 tokens, the dense model's 583"],
        ),
    ] {
        let out = skrr([
            "compare",
            dense.to_str().unwrap(),
            pruned.to_str().unwrap(),
            "--calib",
            ids.to_str().unwrap(),
            "--no-null",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{stderr}");
        }
    }
}
