//! `skrr-onnx plan` against a straightforward reference implementation of the method doc
//! written here: every candidate is built as a whole pruned model (the rewrite module), run by
//! ONNX Runtime prompt by prompt (batch 1, no padding, no caching, no early abandoning), and D
//! is computed from its outputs in this file. The search must give the same plan, and the plan
//! file's D must equal this independent D.
//!
//! `SKRR_MINILM=DIR` (the folder `fixtures/generate.py --minilm DIR` made) enables the MiniLM
//! checks; the `#[ignore]`d
//! benchmarks (docs/benchmarks.md, "Search") need it too.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::sessions;
use common::*;
use ndarray::{Array2, ArrayD};
use prost::Message;
use serde_json::Value;
use skrr_onnx::action::Action;
use skrr_onnx::blocks::{analyze, Analysis};
use skrr_onnx::model_io::{read_model, Model};
use skrr_onnx::plan::PlanFile;
use skrr_onnx::rewrite::{apply_plan, RewriteOptions};
use skrr_onnx::runtime::{self, Input};

/// The reference: D of any plan from a freshly built pruned model, one prompt at a time.
struct Naive {
    model: Model,
    analysis: Analysis,
    inputs: Vec<String>,
    /// Calibration prompts, then the null input (if any) last.
    prompts: Vec<Vec<i64>>,
    null: bool,
    dense: Vec<ArrayD<f32>>,
    total_params: u64,
    evaluations: usize,
    /// Where candidates are written when the model keeps its weights in external data files
    /// (copied here once), so that ONNX Runtime's own external-data reader loads them.
    external: Option<tempfile::TempDir>,
}

impl Naive {
    fn new(model_path: &Path, prompts: &[Vec<i64>], null: Option<&[i64]>) -> Naive {
        let model = read_model(model_path).unwrap();
        let analysis = analyze(&model.proto).unwrap();
        let graph = model.proto.graph.as_ref().unwrap();
        let inputs = graph.input.iter().map(|v| v.name().to_string()).collect();
        let total_params = graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>() as u64)
            .sum();
        let external = graph.initializer.iter().any(|t| t.is_external()).then(|| {
            let dir = tempfile::tempdir().unwrap();
            for e in std::fs::read_dir(model_path.parent().unwrap()).unwrap() {
                let e = e.unwrap();
                if e.path() != model_path {
                    std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
                }
            }
            dir
        });
        let mut all: Vec<Vec<i64>> = prompts.to_vec();
        all.extend(null.map(<[i64]>::to_vec));
        let mut naive = Naive {
            model,
            analysis,
            inputs,
            prompts: all,
            null: null.is_some(),
            dense: vec![],
            total_params,
            evaluations: 0,
            external,
        };
        let mut s = sessions().from_file(model_path).unwrap();
        naive.dense = naive.outputs(&mut s);
        naive
    }

    fn outputs(&self, session: &mut ort::session::Session) -> Vec<ArrayD<f32>> {
        self.prompts
            .iter()
            .map(|ids| {
                let ids = Array2::from_shape_vec((1, ids.len()), ids.clone()).unwrap();
                let ones = ids.mapv(|_| 1i64);
                let zeros = ids.mapv(|_| 0i64);
                let feed: Vec<(&str, Input)> = self
                    .inputs
                    .iter()
                    .map(|n| {
                        let a = match n.as_str() {
                            "input_ids" => ids.view(),
                            "attention_mask" => ones.view(),
                            "token_type_ids" => zeros.view(),
                            other => panic!("unexpected model input {other}"),
                        };
                        (n.as_str(), Input::I64(a.into_dyn()))
                    })
                    .collect();
                let mut out = runtime::run_f32(session, &feed).unwrap();
                out.remove("last_hidden_state").unwrap()
            })
            .collect()
    }

    /// D = D_c + D_null of `actions` and the parameters the pruned model no longer has.
    fn score(&mut self, actions: &[Action]) -> (f64, u64) {
        self.evaluations += 1;
        let (proto, report) = apply_plan(
            &self.model.proto,
            &self.analysis,
            actions,
            &RewriteOptions::default(),
        )
        .unwrap();
        let mut s = match &self.external {
            None => sessions()
                .from_bytes(&proto.encode_to_vec(), "candidate")
                .unwrap(),
            Some(dir) => {
                let path = dir.path().join("candidate.onnx");
                std::fs::write(&path, proto.encode_to_vec()).unwrap();
                sessions().from_file(&path).unwrap()
            }
        };
        let out = self.outputs(&mut s);
        let sse = |a: &ArrayD<f32>, b: &ArrayD<f32>| -> f64 {
            a.iter()
                .zip(b)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum()
        };
        let n = out.len() - usize::from(self.null);
        let (mut num, mut den) = (0.0, 0.0);
        for (o, t) in out.iter().zip(&self.dense).take(n) {
            num += sse(o, t);
            den += t.len() as f64;
        }
        let mut d = num / den;
        if self.null {
            d += sse(&out[n], &self.dense[n]) / self.dense[n].len() as f64;
        }
        (d, report.params_removed)
    }

    fn n(&self) -> usize {
        self.analysis.sub_blocks.len()
    }

    fn skips(&self, list: &[usize]) -> Vec<Action> {
        (0..self.n())
            .map(|p| {
                if list.contains(&p) {
                    Action::Skip
                } else {
                    Action::Keep
                }
            })
            .collect()
    }
}

/// The reference plan: skip order, final actions, D after skip and after re-use, parameters
/// removed.
#[derive(Debug)]
struct RefPlan {
    skip_order: Vec<usize>,
    actions: Vec<Action>,
    d_skip: f64,
    d_final: f64,
    removed: u64,
}

/// The method doc, step by step, with every candidate scored in full.
fn reference_search(nv: &mut Naive, beam: usize, target: f64, reuse: bool) -> RefPlan {
    let n = nv.n();
    // (list, D, removed)
    let mut kept: Vec<(Vec<usize>, f64, u64)> = vec![(vec![], 0.0, 0)];
    let (order, d_skip, removed) = loop {
        let mut cands: Vec<(Vec<usize>, f64, u64)> = Vec::new();
        let mut sets: Vec<BTreeSet<usize>> = Vec::new();
        for (list, _, _) in &kept {
            for p in (0..n).filter(|p| !list.contains(p)) {
                let mut l = list.clone();
                l.push(p);
                let set: BTreeSet<usize> = l.iter().copied().collect();
                if sets.contains(&set) {
                    continue;
                }
                sets.push(set);
                let (d, r) = nv.score(&nv.skips(&l));
                cands.push((l, d, r));
            }
        }
        cands.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        cands.truncate(beam);
        kept = cands;
        if let Some(e) = kept
            .iter()
            .find(|e| e.2 as f64 / nv.total_params as f64 >= target)
        {
            break e.clone();
        }
    };
    let mut actions = nv.skips(&order);
    let mut d = d_skip;
    if reuse {
        for &i in &order {
            let kind = nv.analysis.sub_blocks[i].kind;
            let kept = |q: &usize, a: &Vec<Action>| {
                nv.analysis.sub_blocks[*q].kind == kind && a[*q] == Action::Keep
            };
            let l = (0..i).rev().find(|q| kept(q, &actions));
            let r = (i + 1..n).find(|q| kept(q, &actions));
            let mut best = (d, None);
            for q in [l, r].into_iter().flatten() {
                let mut t = actions.clone();
                t[i] = Action::Reuse(q);
                let (dq, _) = nv.score(&t);
                if dq < best.0 {
                    best = (dq, Some(q));
                }
            }
            if let (dq, Some(q)) = best {
                actions[i] = Action::Reuse(q);
                d = dq;
            }
        }
    }
    RefPlan {
        skip_order: order,
        actions,
        d_skip,
        d_final: d,
        removed,
    }
}

/// Deterministic pseudo-random token ids: `count` prompts of 3..=12 tokens below `vocab`.
fn prompts(count: usize, vocab: i64, seed: u64) -> Vec<Vec<i64>> {
    let mut x = seed.max(1);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let len = 3 + (next() % 10) as usize;
            (0..len)
                .map(|_| 1 + (next() % (vocab as u64 - 1)) as i64)
                .collect()
        })
        .collect()
}

fn write_jsonl(path: &Path, prompts: &[Vec<i64>]) {
    let text: String = prompts
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

fn ids_arg(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// Runs `plan` and returns the plan file.
fn plan(model: &Path, out: &Path, calib: &Path, null: &[i64], extra: &[&str]) -> PlanFile {
    let mut args: Vec<String> = vec![
        "plan".into(),
        model.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--calib".into(),
        calib.display().to_string(),
        "--null-ids".into(),
        ids_arg(null),
    ];
    if !extra.contains(&"--chunk") {
        args.extend(["--chunk".into(), "3".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    skrr_ok(&args);
    PlanFile::read(out).unwrap()
}

fn actions_of(plan: &PlanFile) -> Vec<Action> {
    plan.sub_blocks
        .iter()
        .map(|e| match (e.action.as_str(), e.source) {
            ("keep", _) => Action::Keep,
            ("skip", _) => Action::Skip,
            (_, Some(q)) => Action::Reuse(q),
            (a, s) => panic!("bad action {a} {s:?}"),
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name).join("model.onnx")
}

fn vocab(name: &str) -> i64 {
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json")).unwrap())
            .unwrap();
    m["fixtures"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .and_then(|f| f["vocab"].as_i64())
        .unwrap_or_else(|| panic!("{name}: no vocab in fixtures/manifest.json"))
}

/// The search on a fixture equals the reference search; the plan's D equals the reference D.
fn check_fixture(name: &str, target: f64, beam: usize, tol: f64, same_plan: bool) {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture(name);
    let calib = prompts(7, vocab(name).min(500), 7 + name.len() as u64);
    let null = [1i64, 2];
    let calib_path = dir.path().join("calib.jsonl");
    write_jsonl(&calib_path, &calib);
    let out = dir.path().join("plan.json");
    let beam_s = beam.to_string();
    let p = plan(
        &model,
        &out,
        &calib_path,
        &null,
        &["--sparsity", &target.to_string(), "--beam", &beam_s],
    );
    let mut nv = Naive::new(&model, &calib, Some(&null));
    let actions = actions_of(&p);
    let d = p.discrepancy.clone().unwrap();
    // The plan's own D against the independent D of the same plan.
    let skips = nv.skips(p.skip_order.as_ref().unwrap());
    let (d_skip, removed_skip) = nv.score(&skips);
    let (d_final, removed) = nv.score(&actions);
    assert!(
        rel(d.skip, d_skip) <= tol,
        "{name}: D skip {} vs {d_skip}",
        d.skip
    );
    assert!(
        rel(d.final_, d_final) <= tol,
        "{name}: D final {} vs {d_final}",
        d.final_
    );
    assert_eq!(
        p.params_removed,
        Some(removed),
        "{name}: parameters removed"
    );
    assert_eq!(
        removed, removed_skip,
        "{name}: re-use must not change the count"
    );
    assert!(p.achieved_sparsity.unwrap() >= target);
    if same_plan {
        let r = reference_search(&mut nv, beam, target, true);
        assert_eq!(
            p.skip_order.as_ref(),
            Some(&r.skip_order),
            "{name}: skip order"
        );
        assert_eq!(actions, r.actions, "{name}: final plan");
        assert!(rel(d.skip, r.d_skip) <= tol && rel(d.final_, r.d_final) <= tol);
        assert_eq!(p.params_removed, Some(r.removed));
    }
}

#[test]
fn t5_gated_equals_reference() {
    check_fixture("t5_gated", 0.3, 3, 1e-5, true);
}

#[test]
fn t5_relu_equals_reference() {
    check_fixture("t5_relu", 0.35, 2, 1e-5, true);
}

#[test]
fn bert_equals_reference() {
    check_fixture("bert", 0.3, 3, 1e-5, true);
}

#[test]
fn clip_equals_reference() {
    check_fixture("clip", 0.3, 3, 1e-5, true);
}

#[test]
fn llama_equals_reference() {
    check_fixture("llama", 0.3, 1, 1e-5, true);
}

#[test]
fn gemma_equals_reference() {
    check_fixture("gemma", 0.3, 3, 1e-5, true);
}

/// Weights in an external data file: the engine's part models read them in place at their
/// offsets, the reference loads each whole candidate beside a copy of the data file.
#[test]
fn t5_external_data_equals_reference() {
    check_fixture("t5_gated_external", 0.3, 2, 1e-5, true);
}

#[test]
fn dynamo_exports_equal_reference() {
    for name in [
        "t5_gated_dynamo",
        "bert_dynamo",
        "clip_dynamo",
        "llama_dynamo",
    ] {
        check_fixture(name, 0.25, 1, 1e-5, true);
    }
}

/// fp16: the engine's partitioned sessions and the whole pruned model may round differently,
/// so the plan's D is compared at fp16 precision, and plans are not required to be identical.
#[test]
fn fp16_plan_d_matches_reference() {
    for name in ["t5_gated_fp16", "bert_fp16"] {
        check_fixture(name, 0.25, 2, 2e-3, false);
    }
}

#[test]
fn runs_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.jsonl");
    write_jsonl(&calib, &prompts(6, 500, 3));
    let model = fixture("t5_gated");
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    plan(&model, &a, &calib, &[1], &["--sparsity", "0.4"]);
    plan(&model, &b, &calib, &[1], &["--sparsity", "0.4"]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn sweep_writes_a_plan_per_level_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.jsonl");
    write_jsonl(&calib, &prompts(6, 500, 5));
    let model = fixture("t5_gated");
    let out = dir.path().join("p.json");
    let mut args: Vec<String> = [
        "plan",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--null-ids",
        "1",
        "--sweep",
        "0.1,0.3,0.2",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let report: Value = serde_json::from_str(&skrr_ok(&args)).unwrap();
    assert_eq!(report["plans"].as_array().unwrap().len(), 3);
    let png = std::fs::read(dir.path().join("p-sweep.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    for level in ["0.1", "0.2", "0.3"] {
        let swept = PlanFile::read(&dir.path().join(format!("p-{level}.json"))).unwrap();
        // Each level equals a search for that level alone.
        let alone = dir.path().join(format!("alone-{level}.json"));
        args[3] = alone.display().to_string();
        let i = args.iter().position(|a| a == "--sweep").unwrap();
        args[i] = "--sparsity".into();
        args[i + 1] = level.into();
        skrr_ok(&args);
        args[i] = "--sweep".into();
        args[i + 1] = "0.1,0.3,0.2".into();
        assert_eq!(PlanFile::read(&alone).unwrap(), swept, "level {level}");
    }
}

#[test]
fn baselines_produce_valid_plans_rescored_with_full_d() {
    let dir = tempfile::tempdir().unwrap();
    let calib_ids = prompts(6, 500, 11);
    let calib = dir.path().join("calib.jsonl");
    write_jsonl(&calib, &calib_ids);
    let model = fixture("bert");
    let mut nv = Naive::new(&model, &calib_ids, Some(&[1]));
    for method in ["finercut", "shortgpt"] {
        let out = dir.path().join(format!("{method}.json"));
        let p = plan(
            &model,
            &out,
            &calib,
            &[1],
            &["--sparsity", "0.3", "--method", method],
        );
        assert_eq!(p.method.as_deref(), Some(method));
        let actions = actions_of(&p);
        assert!(!actions.iter().any(|a| matches!(a, Action::Reuse(_))));
        let (d, _) = nv.score(&actions);
        let pd = p.discrepancy.unwrap();
        assert!(rel(pd.final_, d) <= 1e-5, "{method}: {} vs {d}", pd.final_);
        if method == "shortgpt" {
            // whole layers: both sub-blocks of a layer go together
            for l in 0..nv.analysis.layers {
                let s: Vec<_> = nv
                    .analysis
                    .sub_blocks
                    .iter()
                    .filter(|b| b.layer == l)
                    .map(|b| actions[b.index])
                    .collect();
                assert!(s.iter().all(|a| *a == s[0]), "layer {l}: {s:?}");
            }
        } else {
            // FinerCut = beam 1 on D_c without the null term, re-scored with the full D
            let mut nv_c = Naive::new(&model, &calib_ids, None);
            let r = reference_search(&mut nv_c, 1, 0.3, false);
            assert_eq!(actions, r.actions);
        }
    }
}

#[test]
fn unreachable_and_invalid_sparsity_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.jsonl");
    write_jsonl(&calib, &prompts(3, 500, 2));
    let model = fixture("t5_gated");
    let out = dir.path().join("plan.json");
    for (s, needle) in [
        ("0.99", "unreachable"),
        ("0", "between 0 and 1"),
        ("1.5", "between 0 and 1"),
    ] {
        assert_error_contract(
            &[
                "plan",
                model.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--calib",
                calib.to_str().unwrap(),
                "--null-ids",
                "1",
                "--sparsity",
                s,
            ],
            skrr_onnx::error::exit::USAGE,
            needle,
            Some(&out),
            &[&model],
        );
    }
}

/// CPU seconds (user + system, all threads) of this process or of its finished children: the
/// benchmark's second clock, steadier than wall time on a machine shared with other work.
fn cpu_seconds(who: i32) -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    assert_eq!(unsafe { libc::getrusage(who, &mut ru) }, 0);
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn minilm(test: &str) -> Option<PathBuf> {
    common::minilm(test).map(|dir| dir.join("model.onnx"))
}

#[test]
fn minilm_plan_d_equals_reference_when_available() {
    let Some(model) = minilm("minilm_plan_d_equals_reference_when_available") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let calib_ids = prompts(8, 30000, 21);
    let calib = dir.path().join("calib.jsonl");
    write_jsonl(&calib, &calib_ids);
    let out = dir.path().join("plan.json");
    let p = plan(&model, &out, &calib, &[101, 102], &["--sparsity", "0.1"]);
    let mut nv = Naive::new(&model, &calib_ids, Some(&[101, 102]));
    let (d, removed) = nv.score(&actions_of(&p));
    assert!(rel(p.discrepancy.unwrap().final_, d) <= 1e-5);
    assert_eq!(p.params_removed, Some(removed));
}

/// docs/benchmarks.md, "Search": `plan --sparsity 0.2` on MiniLM (64 prompts, beam 3) against
/// the reference search in the same run, and the held-out comparison of the three methods.
/// Run by `bash benches/search.sh`, which makes the model and the prompt files.
#[test]
#[ignore]
fn bench_minilm_search() {
    let model = minilm("bench_minilm_search").expect("set SKRR_MINILM");
    let read = |var: &str| -> (PathBuf, Vec<Vec<i64>>) {
        let p = PathBuf::from(std::env::var(var).unwrap_or_else(|_| panic!("set {var}")));
        let ids = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (p, ids)
    };
    let (calib, calib_ids) = read("SKRR_BENCH_CALIB");
    let (_, held_ids) = read("SKRR_BENCH_HELDOUT");
    // Prompts per engine batch, also the granularity of early abandoning.
    let chunk = std::env::var("SKRR_BENCH_CHUNK").unwrap_or_else(|_| "8".into());
    let null = [101i64, 102];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("skrr.json");

    let t = Instant::now();
    let c = cpu_seconds(libc::RUSAGE_CHILDREN);
    let json: Value = serde_json::from_str(&skrr_ok([
        "plan",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--null-ids",
        "101,102",
        "--sparsity",
        "0.2",
        "--beam",
        "3",
        "--chunk",
        chunk.as_str(),
        "--json",
    ]))
    .unwrap();
    let t_plan = t.elapsed().as_secs_f64();
    let c_plan = cpu_seconds(libc::RUSAGE_CHILDREN) - c;
    let p = PlanFile::read(&out).unwrap();
    let search = &json["search"];
    println!(
        "MiniLM, {} calibration prompts, chunk {chunk}",
        calib_ids.len()
    );
    println!(
        "plan: {t_plan:.2} s wall, {c_plan:.2} s CPU; {} candidates scored, {} abandoned early; \
         engine {}",
        search["candidates_scored"], search["candidates_abandoned"], json["engine"]
    );

    let t = Instant::now();
    let c = cpu_seconds(libc::RUSAGE_SELF);
    let mut nv = Naive::new(&model, &calib_ids, Some(&null));
    let r = reference_search(&mut nv, 3, 0.2, true);
    let t_naive = t.elapsed().as_secs_f64();
    let c_naive = cpu_seconds(libc::RUSAGE_SELF) - c;
    println!(
        "reference: {t_naive:.2} s wall, {c_naive:.2} s CPU, {} full-model evaluations; \
         speed-up {:.1}x wall, {:.1}x CPU",
        nv.evaluations,
        t_naive / t_plan,
        c_naive / c_plan
    );
    assert_eq!(p.skip_order.as_ref(), Some(&r.skip_order));
    assert_eq!(actions_of(&p), r.actions);
    println!("identical plan: skip order {:?}", r.skip_order);

    // Quality on held-out prompts at ShortGPT's achieved sparsities (whole layers), so that
    // every method is compared at (at least) the same sparsity.
    let mut held = Naive::new(&model, &held_ids, Some(&null));
    println!("| target | method | achieved sparsity | D calibration | D held-out |");
    for layers in 1..=3 {
        let sub_per_layer: u64 = nv
            .analysis
            .sub_blocks
            .iter()
            .filter(|b| b.layer == 0)
            .map(|b| b.params)
            .sum();
        let target =
            (layers as f64 * sub_per_layer as f64 / nv.total_params as f64 * 1e4).floor() / 1e4;
        for method in ["skrr", "finercut", "shortgpt"] {
            let out = dir.path().join(format!("{method}-{layers}.json"));
            let p = plan(
                &model,
                &out,
                &calib,
                &null,
                &[
                    "--sparsity",
                    &target.to_string(),
                    "--method",
                    method,
                    "--chunk",
                    chunk.as_str(),
                ],
            );
            let (dh, _) = held.score(&actions_of(&p));
            println!(
                "| {target} | {method} | {:.4} | {:.5e} | {dh:.5e} |",
                p.achieved_sparsity.unwrap(),
                p.discrepancy.unwrap().final_
            );
        }
    }
}
