//! The end-to-end command `skrr-onnx IN OUT --sparsity S` on real fixtures: the output is a valid
//! ONNX model, its parameters shrink by exactly the plan's count, its held-out D measured on the
//! whole written file equals the engine's D of the same plan, and everything that can be
//! refused is refused before any work, leaving nothing behind.

mod common;

use std::path::Path;

use common::{assert_error_contract, fixtures, run_python, skrr};

/// Held-out ids within every fixture's vocabulary.
const HELD_OUT: &[&[i64]] = &[
    &[2, 70, 71, 72, 73, 3],
    &[2, 300, 301, 302, 3],
    &[2, 9, 8, 7, 6, 5, 4, 10, 11, 3],
];

fn ids_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("held_out.jsonl");
    let lines: Vec<String> = HELD_OUT
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn prunes_checks_and_agrees_with_the_engine() {
    // (fixture, sparsity, write the output with external data); the optimum_* fixtures are
    // Hugging Face Optimum's exports (fixtures/optimum_export.py): BERT with token_type_ids,
    // CLIP text and T5 encoders fed input_ids only, a CLIP with projection whose every layer's
    // output is a graph output too, Qwen2 with position_ids and Gemma 2 (--task feature-extraction).
    for (fixture, sparsity, external) in [
        ("t5_gated", "0.3", false),
        ("bert", "0.25", false),
        ("llama", "0.3", true),
        ("optimum_bert", "0.3", false),
        ("optimum_clip", "0.3", false),
        ("optimum_clip_proj", "0.3", false),
        ("optimum_t5", "0.3", false),
        ("optimum_qwen2", "0.3", false),
        ("optimum_gemma2", "0.3", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let input = fixtures().join(fixture).join("model.onnx");
        let out = dir.path().join("pruned.onnx");
        let plan = dir.path().join("plan.json");
        let report = dir.path().join("report.json");
        let held = ids_file(dir.path());
        let run = skrr(
            [
                "--json",
                input.to_str().unwrap(),
                out.to_str().unwrap(),
                "--sparsity",
                sparsity,
                "--num-prompts",
                "12",
                "--plan-out",
                plan.to_str().unwrap(),
                "--report",
                report.to_str().unwrap(),
                "--min-cos=-1",
                "--max-null-ratio",
                "1e9",
            ]
            .into_iter()
            .chain(external.then_some("--external-data")),
        );
        assert_eq!(
            run.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let r = json_of(&run);
        let data = dir.path().join("pruned.onnx.data");
        assert_eq!(data.exists(), external, "{fixture}: external data file");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr
                .trim()
                .lines()
                .last()
                .unwrap()
                .starts_with("PASSED: "),
            "{stderr}"
        );
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(written["plan"], r["plan"]);
        // The report: every phase timed, the files written with their sizes, the fidelity.
        let phases: Vec<&str> = written["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            phases,
            ["read", "analyze", "search", "rewrite+write", "compare"]
        );
        let on_disk = std::fs::metadata(&out).unwrap().len()
            + std::fs::metadata(&data).map_or(0, |m| m.len());
        let w = &written["written"];
        assert_eq!(
            w["model_bytes"].as_u64().unwrap() + w["data_bytes"].as_u64().unwrap(),
            on_disk
        );
        assert_eq!(
            written["fidelity"]["pruned"]["bytes"].as_u64(),
            Some(on_disk)
        );
        assert!(written["fidelity"]["d"].as_f64().unwrap() > 0.0);
        assert_eq!(written["prompts"]["calibration"], 12);
        assert_eq!(written["version"], env!("CARGO_PKG_VERSION"));
        let achieved = r["plan"]["achieved_sparsity"].as_f64().unwrap();
        assert!(
            achieved >= sparsity.parse::<f64>().unwrap(),
            "{fixture}: {achieved}"
        );
        let removed = r["plan"]["params_removed"].as_u64().unwrap();
        assert_eq!(
            r["rewrite"]["params_removed"].as_u64(),
            Some(removed),
            "{fixture}"
        );

        // The written file: valid, same interface, metadata recording the plan, fewer params.
        let facts = run_python(
            "import onnx, sys, json\n\
             d, p = onnx.load(sys.argv[1]), onnx.load(sys.argv[2])\n\
             onnx.checker.check_model(p, full_check=True)\n\
             n = lambda m: sum(int(__import__('numpy').prod(t.dims)) for t in m.graph.initializer)\n\
             io = lambda m: [str(v) for v in list(m.graph.input) + list(m.graph.output)]\n\
             print(json.dumps({'removed': n(d) - n(p), 'same_io': io(d) == io(p),\n\
               'ir': d.ir_version == p.ir_version, 'opsets': str(d.opset_import) == str(p.opset_import),\n\
               'meta': [e.key for e in p.metadata_props]}))\n",
            &[input.to_str().unwrap(), out.to_str().unwrap()],
        );
        let facts: serde_json::Value = serde_json::from_str(&facts).unwrap();
        assert_eq!(
            facts["removed"].as_u64(),
            Some(removed),
            "{fixture}: {facts}"
        );
        assert_eq!(facts["same_io"], true, "{fixture}");
        assert_eq!(facts["ir"], true);
        assert_eq!(facts["opsets"], true);
        assert!(facts["meta"].to_string().contains("skrr.plan"));

        // D of the written file (whole model, compare) = the engine's D of the plan (score).
        let common_args = [
            "--calib",
            held.to_str().unwrap(),
            "--null-ids",
            "2,3",
            "--json",
        ];
        let cmp = skrr(
            [
                "compare",
                input.to_str().unwrap(),
                out.to_str().unwrap(),
                "--min-cos=-1",
                "--max-null-ratio",
                "1e9",
            ]
            .into_iter()
            .chain(common_args),
        );
        assert_eq!(
            cmp.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&cmp.stderr)
        );
        let score = skrr(
            [
                "score",
                input.to_str().unwrap(),
                "--plan",
                plan.to_str().unwrap(),
            ]
            .into_iter()
            .chain(common_args),
        );
        assert_eq!(
            score.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&score.stderr)
        );
        let (c, s) = (json_of(&cmp), json_of(&score));
        let d_file = c["d"].as_f64().unwrap();
        let d_engine = s["d"]
            .as_f64()
            .or_else(|| s["score"]["d"].as_f64())
            .unwrap_or_else(|| panic!("no d in score output: {s}"));
        assert!(
            (d_file - d_engine).abs() <= 1e-5 * d_engine.abs().max(1e-12),
            "{fixture}: D of the written model {d_file} vs engine {d_engine}"
        );
    }
}

/// `dir/model.onnx`: the bert fixture edited by the Python lines `edit` (which change the loaded
/// `m`), with its tokenizer beside it.
fn bert_variant(dir: &Path, edit: &str) -> std::path::PathBuf {
    let input = dir.join("model.onnx");
    std::fs::copy(
        fixtures().join("bert/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    run_python(
        &format!("import onnx, sys\nm = onnx.load(sys.argv[1])\n{edit}onnx.save(m, sys.argv[2])\n"),
        &[
            fixtures().join("bert/model.onnx").to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    input
}

/// What the input says about itself survives: metadata entries, doc strings, model version,
/// producer, domain; the run adds its plan and version beside them.
#[test]
fn the_output_keeps_the_inputs_header() {
    let dir = tempfile::tempdir().unwrap();
    let header = "import onnx, sys, json\n\
        fields = lambda m: {'meta': {e.key: e.value for e in m.metadata_props}, 'doc': m.doc_string,\n\
          'graph_doc': m.graph.doc_string, 'graph_name': m.graph.name, 'version': m.model_version,\n\
          'producer': [m.producer_name, m.producer_version], 'domain': m.domain}\n";
    let input = bert_variant(
        dir.path(),
        &format!(
            "{header}m.metadata_props.add(key='author', value='skrr tests')\n\
             m.metadata_props.add(key='license', value='apache-2.0')\n\
             m.doc_string, m.graph.doc_string, m.model_version = 'an encoder', 'its graph', 7\n\
             m.domain = 'ai.skrr.test'\n"
        ),
    );
    let out = dir.path().join("pruned.onnx");
    let run = skrr([
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--sparsity",
        "0.25",
        "--num-prompts",
        "8",
        "--no-compare",
    ]);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let facts: serde_json::Value = serde_json::from_str(&run_python(
        &format!("{header}print(json.dumps([fields(onnx.load(p)) for p in sys.argv[1:]]))\n"),
        &[input.to_str().unwrap(), out.to_str().unwrap()],
    ))
    .unwrap();
    let (before, mut after) = (facts[0].clone(), facts[1].clone());
    let meta = after["meta"].as_object_mut().unwrap();
    assert!(meta.remove("skrr.plan").is_some() && meta.remove("skrr.version").is_some());
    assert_eq!(before, after);
    assert_eq!(before["meta"]["author"], "skrr tests");
}

#[test]
fn refusals_come_before_any_work_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::copy(fixtures().join("bert/model.onnx"), &model).unwrap();
    std::fs::copy(
        fixtures().join("bert/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let m = model.to_str().unwrap();
    // Output over the input (the input must survive untouched).
    assert_error_contract(
        &[m, m, "--sparsity", "0.3"],
        6,
        "over the input",
        None,
        &[&model],
    );
    // Output in a missing folder.
    let missing = dir.path().join("no/such/dir/out.onnx");
    let ms = missing.to_str().unwrap();
    assert_error_contract(
        &[m, ms, "--sparsity", "0.3"],
        6,
        "does not exist",
        Some(&missing),
        &[&model],
    );
    // Sparsity outside (0, 1), and one no plan can reach.
    let out = dir.path().join("out.onnx");
    let o = out.to_str().unwrap();
    for (s, needle) in [
        ("1.5", "sparsity"),
        ("0", "sparsity"),
        ("-0.1", "sparsity"),
        ("0.99", "unreachable"),
    ] {
        assert_error_contract(&[m, o, "--sparsity", s], 2, needle, Some(&out), &[&model]);
    }
    // Limits no result can meet as meant.
    for (flag, value) in [("--min-cos", "2"), ("--min-cos", "NaN"), ("--atol", "-1")] {
        let arg = format!("{flag}={value}");
        let args = [m, o, "--sparsity", "0.3", &arg];
        assert_error_contract(&args, 2, flag, Some(&out), &[&model]);
    }
    // Outputs over one another or over what the run reads, and a folder nothing can be
    // created in (root may write anywhere else).
    let tokenizer = dir.path().join("tokenizer.json");
    let plan = dir.path().join("plan.json");
    let (t, p) = (tokenizer.to_str().unwrap(), plan.to_str().unwrap());
    for (extra, needle) in [
        (
            &["--plan-out", o][..],
            "the plan and the pruned model would be the same file",
        ),
        (&["--report", t][..], "which this run reads"),
        (
            &["--plan-out", p, "--report", p][..],
            "the report and the plan",
        ),
        (
            &["--external-data=plan.json", "--report", p][..],
            "the report and the pruned model's external data",
        ),
        (
            &["--external-data=sub/x.data"][..],
            "must be a plain file name",
        ),
    ] {
        let base = [m, o, "--sparsity", "0.3"];
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        assert_error_contract(&args, 6, needle, Some(&out), &[&model, &tokenizer]);
    }
    if Path::new("/sys/kernel").is_dir() {
        assert_error_contract(
            &[m, "/sys/kernel/pruned.onnx", "--sparsity", "0.3"],
            6,
            "cannot create files in /sys/kernel",
            None,
            &[&model],
        );
    }
    // None of these got as far as the search.
    for args in [
        &[m, o, "--sparsity", "0.3", "--min-cos", "2"][..],
        &[m, o, "--sparsity", "0.3", "--report", t],
        &[m, "/sys/kernel/pruned.onnx", "--sparsity", "0.3"],
    ] {
        let run = skrr(["-v"].iter().chain(args));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.code() != Some(0) && !stderr.contains("phase search"),
            "{args:?}: {stderr}"
        );
    }
}

/// A folder too small for the output: a warning before the search, then a clean write error
/// (exit 6) that leaves nothing. Needs a private mount namespace for a tiny tmpfs (root, as in
/// CI); skipped where `unshare -m` is not allowed.
#[test]
fn a_full_disk_is_announced_before_the_search_and_leaves_nothing() {
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    let probe = std::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            &format!("mount -t tmpfs -o size=300k tmpfs {m}"),
        ])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs in a private namespace here");
        return;
    }
    let input = fixtures().join("t5_gated/model.onnx");
    let skrr_cmd = format!(
        "{} -v {} {m}/out.onnx --sparsity 0.3 --num-prompts 4 --min-cos=-1",
        common::bin().display(),
        input.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=300k tmpfs {m} && {skrr_cmd}; code=$?; ls -A {m}; exit $code"
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    let warned = stderr
        .find("its folder has 300.00 KiB free")
        .expect(&stderr);
    let searched = stderr.find("phase search").expect(&stderr);
    assert!(warned < searched, "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("No space left on device (os error 28)"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "files left behind"
    );
}

/// A static-shape export (`input_ids [1, 16]`, as exported for TensorRT) asks for the options
/// that feed it, then prunes with them.
#[test]
fn a_static_shape_export_asks_for_padding_and_batch_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = bert_variant(
        dir.path(),
        "for i in m.graph.input:\n\
         \x20   d = i.type.tensor_type.shape.dim\n\
         \x20   d[0].dim_value, d[1].dim_value = 1, 16\n",
    );
    let out = dir.path().join("pruned.onnx");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let base = [i, o, "--sparsity", "0.25", "--num-prompts", "6"];
    let long = vec!["7"; 20].join(",");
    let padded = ["--include-padding", "--max-length", "16", "--chunk", "1"];
    let null = [&padded[..], &["--null-ids", &long]].concat();
    for (extra, needle) in [
        (&[][..], "fixed length of 16"),
        (&padded[..3], "--chunk 1"),
        (
            &null[..],
            "a row of 20 token ids is longer than the model's fixed length 16",
        ),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        assert_error_contract(&args, 2, needle, Some(&out), &[&input]);
    }
    let ok = [
        "--include-padding",
        "--max-length",
        "16",
        "--chunk",
        "1",
        "--min-cos=-1",
    ];
    let run = skrr(base.iter().chain(&ok));
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// A fixed null input, limits any pruned fixture meets, and JSON output.
const LOOSE: &[&str] = &[
    "--null-ids",
    "2,3",
    "--min-cos=-1",
    "--max-null-ratio",
    "1e9",
    "--json",
];

/// With the user's own prompts, the fidelity check runs on prompts the search never saw: every
/// 4th line, or a `--heldout` file. Its D is that of `compare` on exactly those prompts.
#[test]
fn the_fidelity_check_is_held_out_from_the_users_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("bert/model.onnx");
    let rows: Vec<Vec<i64>> = (0..10)
        .map(|i| (0..5 + i).map(|j| 2 + (37 * i + 11 * j) % 300).collect())
        .collect();
    let write = |name: &str, rows: &[&Vec<i64>]| {
        let p = dir.path().join(name);
        let lines: Vec<String> = rows
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        std::fs::write(&p, lines.join("\n")).unwrap();
        p
    };
    let all = write("all.jsonl", &rows.iter().collect::<Vec<_>>());
    let every_4th = write("held.jsonl", &[&rows[3], &rows[7]]);
    let run_on = |calib: &Path, extra: &[&str]| -> serde_json::Value {
        let out = dir.path().join("pruned.onnx");
        let args = [
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--sparsity",
            "0.25",
            "--calib",
            calib.to_str().unwrap(),
        ];
        let run = skrr(args.iter().chain(LOOSE).chain(extra));
        assert_eq!(
            run.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        json_of(&run)
    };
    let compare_on = |held: &Path| -> f64 {
        let out = dir.path().join("pruned.onnx");
        let args = [
            "compare",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--calib",
            held.to_str().unwrap(),
        ];
        let cmp = skrr(args.iter().chain(LOOSE));
        json_of(&cmp)["d"].as_f64().unwrap()
    };

    let run = |extra: &[&str]| run_on(&all, extra);
    // Two or three prompts: the last one is held out.
    let three = write("three.jsonl", &[&rows[0], &rows[1], &rows[2]]);
    let few = run_on(&three, &[]);
    assert_eq!(few["prompts"]["calibration"], 2, "{}", few["prompts"]);
    assert_eq!(few["prompts"]["held_out"], 1);
    // The calibration file as its own held-out set is refused.
    let same = skrr([
        input.to_str().unwrap(),
        dir.path().join("x.onnx").to_str().unwrap(),
        "--sparsity",
        "0.25",
        "--calib",
        all.to_str().unwrap(),
        "--heldout",
        all.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&same.stderr);
    assert_eq!(same.status.code(), Some(2), "{err}");
    assert!(err.contains("is the calibration file itself"), "{err}");

    let split = run(&[]);
    assert_eq!(split["prompts"]["calibration"], 8, "{}", split["prompts"]);
    assert_eq!(split["prompts"]["held_out"], 2);
    assert!(split["prompts"]["held_out_source"]
        .as_str()
        .unwrap()
        .starts_with("every 4th"));
    let d = split["fidelity"]["d"].as_f64().unwrap();
    assert!((d - compare_on(&every_4th)).abs() <= 1e-6 * d, "{d}");
    // The whole file as calibration D is not what was reported (the check would be in-sample).
    assert!((d - compare_on(&all)).abs() > 1e-6 * d, "{d}");

    let explicit = run(&["--heldout", every_4th.to_str().unwrap()]);
    assert_eq!(explicit["prompts"]["calibration"], 10);
    assert_eq!(explicit["prompts"]["held_out"], 2);
    let d = explicit["fidelity"]["d"].as_f64().unwrap();
    assert!((d - compare_on(&every_4th)).abs() <= 1e-6 * d, "{d}");
}
