//! The calibration engine against independent references, on every fixture:
//! - the all-keep plan reproduces the full model's ONNX Runtime output;
//! - D of skip and re-use plans (T5 with layer 0's attention skipped included, with and without a
//!   projection) equals tests/oracles/pruned_d.py, which builds the pruned model as one ONNX graph
//!   and runs each prompt alone;
//! - D does not depend on batching, caching or early abandoning.

mod common;

use std::path::{Path, PathBuf};

use common::sessions;
use serde_json::{json, Value};
use skrr_onnx::action::Action;
use skrr_onnx::blocks::{self, Analysis, Kind};
use skrr_onnx::calibrate::{
    CalibConfig, CalibSet, Engine, EngineOptions, Outcome, PromptHalf, Score,
};
use skrr_onnx::commands::args::CalibArgs;
use skrr_onnx::model_io::{self, Model};
use skrr_onnx::runtime::{self, Input, Prepack};

struct Fixture {
    name: String,
    model: PathBuf,
    fp16: bool,
    hidden: usize,
}

fn fixtures() -> Vec<Fixture> {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("manifest.json")).unwrap(),
    )
    .unwrap();
    manifest["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Fixture {
            name: f["name"].as_str().unwrap().to_string(),
            model: common::fixtures().join(f["model"].as_str().unwrap()),
            fp16: f["dtype"] == "float16",
            hidden: f["hidden"].as_u64().unwrap() as usize,
        })
        .collect()
}

/// One fixture per architecture and precision: the dynamo and external-data twins share their
/// legacy twin's graph semantics, so properties that do not depend on the export (batching,
/// caching, projection, Block Influence) are checked on these only, to keep the suite fast.
fn representative() -> Vec<Fixture> {
    fixtures()
        .into_iter()
        .filter(|f| !f.name.ends_with("_dynamo") && !f.name.ends_with("_external"))
        .collect()
}

/// The calibration options as the command line gives them.
fn args(extra: &[&str]) -> CalibConfig {
    use clap::{Args, FromArgMatches};
    let cmd = CalibArgs::augment_args(clap::Command::new("t").no_binary_name(true));
    let m = cmd
        .try_get_matches_from(["--num-prompts", "10"].iter().chain(extra))
        .unwrap();
    CalibArgs::from_arg_matches(&m).unwrap().config().unwrap()
}

fn setup(f: &Fixture, extra: &[&str]) -> (Model, Analysis, CalibSet, EngineOptions) {
    let model = model_io::read_model(&f.model).unwrap();
    let analysis = blocks::analyze(&model.proto).unwrap();
    let a = args(extra);
    let calib = a.calib_set(&model, PromptHalf::Calibration).unwrap();
    let opts = a.engine_options(sessions());
    (model, analysis, calib, opts)
}

fn scored(o: Outcome) -> Score {
    match o {
        Outcome::Scored(s) => s,
        Outcome::Abandoned { partial } => panic!("abandoned at {partial}"),
    }
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// Plans every fixture is checked on: single skips of both kinds (attention of layer 0 among
/// them), a multi-skip, and re-use of a kept same-kind neighbour.
fn plans(analysis: &Analysis) -> Vec<(String, Vec<Action>)> {
    let n = analysis.sub_blocks.len();
    let keep = vec![Action::Keep; n];
    let with = |changes: &[(usize, Action)]| {
        let mut a = keep.clone();
        for &(p, act) in changes {
            a[p] = act;
        }
        a
    };
    let attn: Vec<usize> = (0..n)
        .filter(|&p| analysis.sub_blocks[p].kind == Kind::Attention)
        .collect();
    let ffn: Vec<usize> = (0..n)
        .filter(|&p| analysis.sub_blocks[p].kind == Kind::Ffn)
        .collect();
    vec![
        ("skip attention 0".into(), with(&[(attn[0], Action::Skip)])),
        ("skip ffn 1".into(), with(&[(ffn[1], Action::Skip)])),
        (
            "skip three".into(),
            with(&[
                (attn[1], Action::Skip),
                (ffn[0], Action::Skip),
                (n - 1, Action::Skip),
            ]),
        ),
        (
            "re-use".into(),
            with(&[
                (attn[2], Action::Reuse(attn[1])),
                (ffn[1], Action::Skip),
                (ffn[2], Action::Reuse(ffn[3])),
            ]),
        ),
        (
            "re-use into skipped attention 0's slot".into(),
            with(&[(attn[0], Action::Reuse(attn[1]))]),
        ),
    ]
}

fn oracle(
    f: &Fixture,
    analysis: &Analysis,
    calib: &CalibSet,
    opts: &EngineOptions,
    plans: &[Vec<Action>],
) -> Vec<Score> {
    let g = &analysis.graph;
    let job = json!({
        "model": f.model,
        "projection": opts.projection,
        "output": g.output.iter().find(|o| o.name() == "last_hidden_state").unwrap_or(&g.output[0]).name(),
        "sub_blocks": analysis.sub_blocks.iter().map(|sb| json!({
            "input": sb.input, "output": sb.output, "side_inputs": sb.side_inputs,
            "node_outputs": sb.nodes.iter().map(|&n| g.node[n].output[0].clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "plans": plans.iter().map(|actions| actions.iter().map(|a| match a {
            Action::Keep => json!({"action": "keep"}),
            Action::Skip => json!({"action": "skip"}),
            Action::Reuse(q) => json!({"action": "reuse", "source": q}),
        }).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "prompts": calib.prompts,
        "null": if opts.null { calib.null.clone() } else { None },
        "pad_id": calib.pad_id,
        "include_padding": opts.include_padding,
        "max_length": calib.max_length,
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let script = common::repo_root().join("tests/oracles/pruned_d.py");
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.iter()
        .map(|s| Score {
            d_c: s["d_c"].as_f64().unwrap(),
            d_null: s["d_null"].as_f64().unwrap(),
        })
        .collect()
}

/// Relative tolerance of D against the oracle: fp32 per the issue; fp16 rounds every stream
/// value, so batch shape and kernel choice move D by far more.
fn tol(f: &Fixture) -> f64 {
    if f.fp16 {
        2e-2
    } else {
        1e-5
    }
}

#[test]
fn all_keep_reproduces_the_full_model() {
    for f in fixtures() {
        let (model, analysis, calib, opts) = setup(&f, &[]);
        let n = analysis.sub_blocks.len();
        let mut engine = Engine::new(&model, &analysis, calib.clone(), opts).unwrap();
        let keep = vec![Action::Keep; n];
        let d = scored(engine.score(&keep, None).unwrap());
        assert_eq!(d.d(), 0.0, "{}: dense D", f.name);
        // Weights are held once: shared values never exceed the model's initializer bytes, and
        // in fp32 models they are most of them (fp16 weights are inlined, see partition.rs).
        let total: u64 = model
            .proto
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .map(|t| model.weights.bytes(t).unwrap().len() as u64)
            .sum();
        let shared = engine.stats().shared_weight_bytes;
        assert!(
            shared <= total && (f.fp16 || 2 * shared > total),
            "{}: {shared} shared bytes of {total}",
            f.name
        );
        let mut full = sessions().from_file(&f.model).unwrap();
        let mut worst = 0.0f64;
        for c in 0..engine.chunks() {
            let (null, prompts) = engine.chunk_rows(c);
            let rows: Vec<&[i64]> = if null {
                vec![calib.null.as_deref().unwrap()]
            } else {
                prompts
                    .iter()
                    .map(|&i| calib.prompts[i].as_slice())
                    .collect()
            };
            let len = rows.iter().map(|r| r.len()).max().unwrap();
            let ids = ndarray::Array2::from_shape_fn((rows.len(), len), |(r, t)| {
                rows[r].get(t).copied().unwrap_or(calib.pad_id)
            })
            .into_dyn();
            let mask = ndarray::Array2::from_shape_fn((rows.len(), len), |(r, t)| {
                i64::from(t < rows[r].len())
            })
            .into_dyn();
            let reference = runtime::run_f32(
                &mut full,
                &[
                    ("input_ids", Input::I64(ids.view())),
                    ("attention_mask", Input::I64(mask.view())),
                ],
            )
            .unwrap();
            let reference = &reference["last_hidden_state"];
            let got = engine.output(c, &keep).unwrap();
            assert_eq!(got.shape, reference.shape(), "{}", f.name);
            let scale = reference.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            let h = f.hidden;
            for (r, row) in rows.iter().enumerate() {
                for t in 0..row.len() {
                    for k in 0..h {
                        let a = got.data[(r * len + t) * h + k] as f64;
                        let b = reference[[r, t, k]] as f64;
                        worst = worst.max((a - b).abs() / scale);
                    }
                }
            }
        }
        // fp16: ONNX Runtime keeps the full model's stream in fp32 between fused fp16 nodes where a
        // partition boundary rounds it to fp16, so a couple of fp16 ulps (2^-10 relative) differ.
        let limit = if f.fp16 { 4e-3 } else { 1e-6 };
        assert!(
            worst <= limit,
            "{}: max rel err {worst:e} > {limit:e}",
            f.name
        );
        eprintln!("{}: all-keep max rel err {worst:e}", f.name);
    }
}

#[test]
fn d_of_skip_and_reuse_plans_matches_the_oracle() {
    for f in fixtures() {
        let (model, analysis, calib, opts) = setup(&f, &["--chunk", "4"]);
        let mut engine = Engine::new(&model, &analysis, calib.clone(), opts.clone()).unwrap();
        let plans = plans(&analysis);
        let actions: Vec<Vec<Action>> = plans.iter().map(|p| p.1.clone()).collect();
        let wanted = oracle(&f, &analysis, &calib, &opts, &actions);
        for ((what, actions), want) in plans.iter().zip(wanted) {
            let got = scored(engine.score(actions, None).unwrap());
            eprintln!("{} {what}: engine {got:?} oracle {want:?}", f.name);
            assert!(got.d() > 0.0, "{} {what}: D is 0", f.name);
            assert!(
                rel(got.d_c, want.d_c) <= tol(&f) && rel(got.d_null, want.d_null) <= tol(&f),
                "{} {what}: engine {got:?} oracle {want:?}",
                f.name
            );
        }
    }
}

#[test]
fn projection_applies_to_dense_and_candidate() {
    let dir = tempfile::tempdir().unwrap();
    for f in representative()
        .into_iter()
        .filter(|f| f.name.starts_with("t5_gated") || f.name.starts_with("clip"))
    {
        let proj = common::projection_model(dir.path(), f.hidden, f.fp16);
        let (model, analysis, calib, opts) = setup(
            &f,
            &["--projection", proj.to_str().unwrap(), "--chunk", "3"],
        );
        let mut engine = Engine::new(&model, &analysis, calib.clone(), opts.clone()).unwrap();
        let (what, actions) = &plans(&analysis)[2];
        let got = scored(engine.score(actions, None).unwrap());
        let want = oracle(&f, &analysis, &calib, &opts, std::slice::from_ref(actions))[0];
        eprintln!(
            "{} {what} projected: engine {got:?} oracle {want:?}",
            f.name
        );
        assert!(
            rel(got.d(), want.d()) <= tol(&f),
            "{}: engine {got:?} oracle {want:?}",
            f.name
        );
    }
}

/// Pre-packing only changes the GEMM kernels' rounding, and the engine reports its choice.
#[test]
fn prepacking_changes_d_only_by_rounding() {
    for f in representative() {
        let (model, analysis, calib, mut opts) = setup(&f, &[]);
        let mut d = Vec::new();
        for prepack in [Prepack::On, Prepack::Off] {
            opts.prepack = prepack;
            let mut engine = Engine::new(&model, &analysis, calib.clone(), opts.clone()).unwrap();
            assert_eq!(engine.stats().prepacked, prepack == Prepack::On);
            d.push(
                plans(&analysis)
                    .iter()
                    .map(|(_, a)| scored(engine.score(a, None).unwrap()).d())
                    .collect::<Vec<_>>(),
            );
        }
        let limit = if f.fp16 { 1e-2 } else { 1e-5 };
        for (on, off) in d[0].iter().zip(&d[1]) {
            assert!(rel(*on, *off) <= limit, "{}: {on} vs {off}", f.name);
        }
    }
}

#[test]
fn batching_caching_and_abandoning_do_not_change_d() {
    for f in representative() {
        for padding in [false, true] {
            let extra: &[&str] = if padding {
                &["--include-padding", "--max-length", "24"]
            } else {
                &[]
            };
            let (model, analysis, calib, mut opts) = setup(&f, extra);
            let plans = plans(&analysis);
            opts.chunk = 1;
            let mut single = Engine::new(&model, &analysis, calib.clone(), opts.clone()).unwrap();
            opts.chunk = 4;
            let mut batched = Engine::new(&model, &analysis, calib.clone(), opts.clone()).unwrap();
            opts.cache_mem = 0;
            let mut uncached = (!padding)
                .then(|| Engine::new(&model, &analysis, calib.clone(), opts.clone()).unwrap());
            let limit = if f.fp16 { 1e-2 } else { 1e-6 };
            for (what, actions) in &plans {
                let a = scored(single.score(actions, None).unwrap());
                let b = scored(batched.score(actions, None).unwrap());

                assert!(
                    rel(a.d_c, b.d_c) <= limit && rel(a.d_null, b.d_null) <= limit,
                    "{} {what} padding={padding}: single {a:?} batched {b:?}",
                    f.name
                );
                // Same batches, so the cache must be exact to the bit.
                if let Some(u) = uncached.as_mut() {
                    let c = scored(u.score(actions, None).unwrap());
                    assert_eq!(b, c, "{} {what}: cached vs uncached", f.name);
                }
                // Scoring again hits the cache and gives the same bits.
                assert_eq!(scored(batched.score(actions, None).unwrap()), b);
                // A bound above D never abandons; one below it abandons with a partial > bound.
                assert_eq!(
                    batched.score(actions, Some(b.d() * 1.5)).unwrap(),
                    Outcome::Scored(b)
                );
                match batched.score(actions, Some(b.d() * 0.01)).unwrap() {
                    Outcome::Abandoned { partial } => {
                        assert!(partial > b.d() * 0.01 && partial <= b.d() * (1.0 + 1e-12))
                    }
                    Outcome::Scored(s) => panic!("{} {what}: not abandoned ({s:?})", f.name),
                }
            }
            let stats = batched.stats();
            assert!(
                stats.block_runs_saved > 0 && stats.cache_hits > 0,
                "{stats:?}"
            );
            if let Some(u) = uncached {
                assert_eq!(u.stats().cache_entries, 0);
            }
        }
    }
}

#[test]
fn block_influence_is_in_range_per_layer() {
    for f in representative() {
        let (model, analysis, calib, opts) = setup(&f, &[]);
        let mut engine = Engine::new(&model, &analysis, calib, opts).unwrap();
        let bi = engine.block_influence().unwrap();
        assert_eq!(bi.len(), analysis.layers, "{}", f.name);
        assert!(
            bi.iter().all(|b| (0.0..=2.0).contains(b) && *b > 0.0),
            "{bi:?}"
        );
    }
}

#[test]
fn score_command_prints_d() {
    let f = &fixtures()[0];
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    common::write_skip_plan(&plan, 64, &[1]);
    // More entries than sub-blocks: refused with exit code 4 and a message naming the problem.
    let out = common::skrr([
        "score",
        f.model.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("the model has"));

    let (_, analysis, _, _) = setup(f, &[]);
    let n = analysis.sub_blocks.len();
    common::write_skip_plan(&plan, n, &[1]);
    let out = common::skrr_ok([
        "score",
        f.model.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
        "--num-prompts",
        "6",
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let d = v["d"].as_f64().unwrap();
    assert!(
        d > 0.0
            && (d - v["d_c"].as_f64().unwrap() - v["d_null"].as_f64().unwrap()).abs() < 1e-12 * d
    );
    assert_eq!(v["prompts"], 6);
    // Bad calibration input: exit code 4, file:line in the message.
    let ids = dir.path().join("ids.jsonl");
    std::fs::write(&ids, "[1, 2]\n[1, 99999999]\n").unwrap();
    let out = common::skrr([
        "score",
        f.model.to_str().unwrap(),
        "--plan",
        plan.to_str().unwrap(),
        "--calib",
        ids.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("ids.jsonl:2: token 1: token id 99999999 is outside"),
        "{err}"
    );
    // Options the run cannot honour: one clean line each, before any session runs.
    let not_onnx = dir.path().join("projection.onnx");
    std::fs::write(&not_onnx, "not a model").unwrap();
    for (extra, code, needle) in [
        (
            &["--pad-id", "99999999"][..],
            2,
            "--pad-id: token id 99999999 is outside",
        ),
        (
            &["--projection", not_onnx.to_str().unwrap()][..],
            4,
            "cannot load it as a model",
        ),
    ] {
        let base = [
            "score",
            f.model.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
        ];
        let out = common::skrr(base.iter().chain(extra));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{extra:?}: {err}"
        );
    }
    // A length below BERT's two special tokens ([CLS] ... [SEP]) would not truncate at all.
    let bert = common::fixtures().join("bert/model.onnx");
    let n = blocks::analyze(&model_io::read_model(&bert).unwrap().proto)
        .unwrap()
        .sub_blocks
        .len();
    let keep = dir.path().join("keep.json");
    common::write_skip_plan(&keep, n, &[]);
    let score = |len: &str| {
        let args = [
            "score",
            bert.to_str().unwrap(),
            "--plan",
            keep.to_str().unwrap(),
        ];
        common::skrr(
            args.iter()
                .chain(&["--max-length", len, "--num-prompts", "2"]),
        )
    };
    let out = score("1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--max-length 1 is too short"), "{err}");
    assert_eq!(score("2").status.code(), Some(0));
}

/// The part models name their weights' files by real path, so a model reached through a
/// symlinked file (inline weights), a symlinked folder (external data) or the Hugging Face hub
/// cache (every file a link to a blob with another name) scores exactly as the file itself:
/// ONNX Runtime refuses a location that resolves outside the folder it is given.
#[test]
fn symlinked_models_score_as_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let fx = common::fixtures();
    let file = dir.path().join("file");
    std::fs::create_dir(&file).unwrap();
    for name in ["model.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(fx.join("t5_gated").join(name), file.join(name)).unwrap();
    }
    let folder = dir.path().join("folder");
    std::os::unix::fs::symlink(fx.join("t5_gated_external"), &folder).unwrap();
    let hub = dir.path().join("models--org--t5");
    let snapshot = hub.join("snapshots").join("4f2c");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir(hub.join("blobs")).unwrap();
    for (i, name) in ["model.onnx", "model.onnx.data", "tokenizer.json"]
        .iter()
        .enumerate()
    {
        let blob = hub.join("blobs").join(format!("b10b{i}"));
        std::fs::copy(fx.join("t5_gated_external").join(name), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/b10b{i}"), snapshot.join(name)).unwrap();
    }
    let plan = dir.path().join("plan.json");
    common::write_skip_plan(&plan, 8, &[3]);
    let d = |model: &Path| -> f64 {
        let out = common::skrr_ok([
            "score",
            model.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            "--num-prompts",
            "4",
            "--json",
        ]);
        serde_json::from_str::<Value>(&out).unwrap()["d"]
            .as_f64()
            .unwrap()
    };
    for (link, real) in [
        (file.join("model.onnx"), fx.join("t5_gated/model.onnx")),
        (
            folder.join("model.onnx"),
            fx.join("t5_gated_external/model.onnx"),
        ),
        (
            snapshot.join("model.onnx"),
            fx.join("t5_gated_external/model.onnx"),
        ),
    ] {
        let want = d(&real);
        assert!(want > 0.0);
        assert_eq!(d(&link), want, "{}", link.display());
    }
}
