//! Models derived from the float fixtures by the post-processing tools users run (issue #12):
//! `fixtures/derive.py` writes them under fixtures/derived/ with a manifest saying, per case, the
//! tool and call that made it and the outcome skrr-onnx must give. Each case is one test here.
//!
//! - `works` (int8 by `quantize_dynamic`, QDQ int8 by `quantize_static`, fp16 by
//!   onnxconverter-common where ONNX Runtime loads the result): `inspect --json` finds the source
//!   fixture's layers with attention and feed-forward sub-blocks alternating; the files `apply`
//!   writes pass `onnx.checker` (full check); `apply` of an
//!   all-keep plan writes a model whose outputs are bit-identical to the input's in ONNX Runtime;
//!   `apply` of skip and re-use plans (tests/common/engine_check.rs's) writes models whose ONNX
//!   Runtime outputs equal what the calibration engine (whose D ranks the search's plans) computes for those plans on
//!   the same padded batch.
//! - `refused` (fp16 by onnxconverter-common that ONNX Runtime refuses to load; a whole T5
//!   encoder-decoder): `inspect`, the main job and `apply` exit with code 3 and one line
//!   `error: ...` containing the manifest's phrase, write nothing and leave the input unchanged.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use skrr_onnx::action::Action;
use skrr_onnx::blocks::analyze;
use skrr_onnx::calibrate::{CalibSet, Engine, EngineOptions};
use skrr_onnx::model_io::read_model;
use skrr_onnx::runtime::{Activations, Prepack, RuntimeConfig, Sessions};

use common::engine_check::{plans, Errors};
use common::{assert_error_contract, skrr};
use Action::Keep as K;

fn derived() -> PathBuf {
    common::fixtures().join("derived")
}

fn manifest() -> Value {
    let path = derived().join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run fixtures/derive.py)", path.display()));
    serde_json::from_str(&text).expect("derived manifest is JSON")
}

fn case(name: &str) -> Value {
    manifest()["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("case {name} in fixtures/derived/manifest.json"))
        .clone()
}

/// Every case of the manifest has its test below (a case added to derive.py is not silently
/// untested), its files are there as recorded, and the cases the issue asks for exist.
const CASES: &[&str] = &[
    "bert_int8",
    "t5_gated_int8",
    "clip_int8",
    "bert_qdq",
    "clip_qdq",
    "bert_qoperator",
    "bert_fp16_occ",
    "t5_gated_fp16_occ",
    "umt5_int8",
    "llama_int8",
    "qwen2_int8",
    "gemma_int8",
    "bert_dynamo_sdpa_int8",
    "clip_dynamo_sdpa_int8",
    "t5_gated_qdq",
    "llama_qdq",
    "bert_dynamo_sdpa_qdq",
    "clip_fp16_occ",
    "llama_fp16_occ",
    "umt5_fp16_occ",
    "qwen2_qdq",
    "gemma_qdq",
    "gemma2_qdq",
    "gemma2_int8",
    "umt5_qdq_matmul",
    "qwen2_fp16_occ",
    "gemma_fp16_occ",
    "gemma2_fp16_occ",
    "t5_encdec",
];

#[test]
fn the_manifest_lists_the_cases_tested_here_and_their_files() {
    let m = manifest();
    let names: Vec<&str> = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, CASES, "cases of fixtures/derived/manifest.json");
    for c in m["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let model = derived().join(c["model"].as_str().unwrap());
        assert_eq!(
            common::sha256_file(&model),
            c["sha256"].as_str().unwrap(),
            "{name}: model.onnx differs from the manifest's (run fixtures/derive.py)"
        );
        if let Some(src) = c["source_model"].as_str() {
            assert_eq!(
                common::sha256_file(&common::fixtures().join(src)),
                c["source_sha256"].as_str().unwrap(),
                "{name}: fixtures/{src} changed since the case was derived (run fixtures/derive.py)"
            );
        }
        assert!(c["model_bytes"].as_u64().unwrap() < 1_000_000, "{name}");
        assert!(derived().join(c["tokenizer"].as_str().unwrap()).is_file());
        let outcome = c["expect"]["outcome"].as_str().unwrap();
        assert!(["works", "refused"].contains(&outcome), "{name}: {outcome}");
        // A case expected to work is one ONNX Runtime loads.
        if outcome == "works" {
            assert_eq!(c["ort_load"], "ok", "{name}");
        }
    }
    let fp16 = case("t5_gated_fp16_occ");
    assert!(
        fp16["ort_load"]
            .as_str()
            .unwrap()
            .contains(fp16["expect"]["error_contains"].as_str().unwrap()),
        "the fp16 refusal names what ONNX Runtime names"
    );
}

// ---------------------------------------------------------------------------------------------
// Cases that must work
// ---------------------------------------------------------------------------------------------

/// The recorded evaluation prompts' token rows, without padding.
fn eval_rows(c: &Value) -> Vec<Vec<i64>> {
    let ids = c["eval"]["input_ids"].as_array().unwrap();
    let mask = c["eval"]["attention_mask"].as_array().unwrap();
    ids.iter()
        .zip(mask)
        .map(|(row, m)| {
            row.as_array()
                .unwrap()
                .iter()
                .zip(m.as_array().unwrap())
                .filter(|(_, m)| m.as_i64() == Some(1))
                .map(|(id, _)| id.as_i64().unwrap())
                .collect()
        })
        .collect()
}

/// ONNX Runtime's (Python) `last_hidden_state` of `model` on `rows` right-padded to `len`.
fn file_output(
    model: &Path,
    rows: &[&[i64]],
    len: usize,
    pad_id: i64,
    optimized: bool,
) -> Activations {
    let feeds = common::padded_batch(rows, len, pad_id);
    let out = common::ort_reference_with(model, &feeds, optimized)
        .remove("last_hidden_state")
        .expect("output last_hidden_state");
    Activations {
        shape: out.shape().to_vec(),
        data: out.iter().copied().collect(),
    }
}

fn apply(input: &Path, actions: &[Action], dir: &Path, label: &str) -> PathBuf {
    let plan = dir.join(format!("{label}.json"));
    let out = dir.join(format!("{label}.onnx"));
    common::write_plan(&plan, actions);
    let run = skrr([
        "apply".as_ref(),
        input.as_os_str(),
        plan.as_os_str(),
        out.as_os_str(),
    ]);
    assert!(
        run.status.success(),
        "apply of the {label} plan failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn check_works(name: &str) {
    let c = case(name);
    assert_eq!(c["expect"]["outcome"], "works", "{name}");
    let input = derived().join(c["model"].as_str().unwrap());
    let layers = c["expect"]["layers"].as_u64().unwrap() as usize;
    let n = 2 * layers;
    let pad_id = c["pad_id"].as_i64().unwrap();
    let fp16 = c["compute"] == "float16";

    // Block detection: the source fixture's layers, attention and feed-forward alternating.
    let out = skrr(["inspect".as_ref(), input.as_os_str(), "--json".as_ref()]);
    assert!(
        out.status.success(),
        "{name}: inspect failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON");
    assert_eq!(j["layers"].as_u64(), Some(layers as u64), "{name}: layers");
    // Quantization ops do not hide the family (QDQ dequantizes the embedding tables and
    // quantizes the stream after each residual Add, which is not a post-norm).
    assert_eq!(j["family"], c["family"], "{name}: family");
    let sbs = j["sub_blocks"].as_array().unwrap();
    assert_eq!(sbs.len(), n, "{name}: sub-blocks");
    for (i, s) in sbs.iter().enumerate() {
        assert_eq!(s["index"], i, "{name}");
        assert_eq!(s["layer"], i / 2, "{name}: layer of sub-block {i}");
        let kind = if i % 2 == 0 { "attention" } else { "ffn" };
        assert_eq!(s["kind"], kind, "{name}: kind of sub-block {i}");
        assert!(s["params"].as_u64().unwrap() > 0, "{name}: sub-block {i}");
    }

    let dir = tempfile::tempdir().unwrap();
    let rows = eval_rows(&c);
    let longest = rows.iter().map(Vec::len).max().unwrap();

    // The all-keep rewrite computes exactly what the input computes: bit for bit in fp32 and
    // int8. In fp16, ONNX Runtime's CPU kernels round differently when a graph change that
    // computes the same values changes its buffer plan (seen on bert_fp16 and bert_fp16_occ: the
    // rewrite's Shape nodes read the first stream value instead of their layer's, and about two
    // thirds of the output elements move by one fp16 step, also with every graph optimization
    // off; with every intermediate exposed as an output the two graphs agree bit for bit), so
    // there the relative error norm is held to fp16's tolerance.
    let keep = apply(&input, &vec![K; n], dir.path(), "keep");
    let refs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let want = file_output(&input, &refs, longest, pad_id, true);
    let got = file_output(&keep, &refs, longest, pad_id, true);
    assert_eq!(got.shape, want.shape, "{name}");
    let differing = got
        .data
        .iter()
        .zip(&want.data)
        .filter(|(a, b)| a != b)
        .count();
    if fp16 {
        let norm = Errors::of(&got, &want).norm;
        eprintln!("{name} keep: {differing} elements differ, relative error norm {norm:.2e}");
        assert!(
            norm <= 2e-3,
            "{name}: the all-keep rewrite differs by {norm:e}"
        );
    } else {
        assert_eq!(
            differing,
            0,
            "{name}: the all-keep rewrite differs from the input in {differing} of {} elements",
            want.data.len()
        );
    }

    // Skip and re-use plans (layer 0's attention skipped, and re-used into; as
    // tests/engine_vs_rewrite.rs): the written file computes what the engine computes, on the
    // same padded batch in the engine's row order (dynamic quantization takes one scale per
    // tensor over the whole batch, so rows and padding matter).
    let plans = plans(n);
    let model = read_model(&input).unwrap();
    let analysis = analyze(&model.proto).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let calib = CalibSet {
        prompts: rows.clone(),
        null: None,
        pad_id,
        max_length: longest,
    };
    // The engine and the written files run with ONNX Runtime's graph optimizations off: they
    // then compute the same thing op for op. With them on, the whole file and the engine's part
    // models are fused differently (DivMulFusion on T5's norm, integer-product fusions of a
    // re-used int8 weight read twice), and a dynamically quantized model's next
    // DynamicQuantizeLinear turns those 1-ulp differences into a whole quantization step
    // (5.9e-3 on umt5_int8's re-use plan; docs/usage.md, "Quantized models").
    let sessions = Sessions::new(RuntimeConfig {
        optimization: ort::session::builder::GraphOptimizationLevel::Disable,
        ..Default::default()
    })
    .unwrap();
    let opts = EngineOptions {
        sessions,
        null: false,
        include_padding: false,
        chunk: rows.len(),
        cache_mem: 1 << 28,
        projection: None,
        prepack: Prepack::Auto,
        measure: None,
    };
    let mut engine = Engine::new(&model, &analysis, calib, opts).unwrap();
    // Dynamically quantized models run one prompt at a time (their rows depend on their batch
    // mates: graph::batch_coupling); the others as one batch.
    let coupled =
        skrr_onnx::graph::batch_coupling(model.proto.graph.as_ref().unwrap(), false).is_some();
    assert_eq!(engine.chunks(), if coupled { rows.len() } else { 1 });
    let written: Vec<PathBuf> = plans
        .iter()
        .map(|(label, actions)| apply(&input, actions, dir.path(), label))
        .collect();
    let paths: Vec<&str> = std::iter::once(&keep)
        .chain(&written)
        .map(|p| p.to_str().unwrap())
        .collect();
    common::run_python(
        "import sys, onnx\nfor p in sys.argv[1:]:\n    onnx.checker.check_model(p, full_check=True)\n",
        &paths,
    );
    // fp32 and int8: element by element (1e-5 relative); fp16: the relative error norm (2e-3),
    // as tests/engine_vs_rewrite.rs holds the float fixtures.
    let tol = if fp16 { 2e-3 } else { 1e-5 };
    for chunk in 0..engine.chunks() {
        let (_, order) = engine.chunk_rows(chunk);
        let batch: Vec<&[i64]> = order.iter().map(|&i| rows[i].as_slice()).collect();
        let len = batch.iter().map(|r| r.len()).max().unwrap();
        let files: Vec<Activations> = written
            .iter()
            .map(|file| file_output(file, &batch, len, pad_id, false))
            .collect();
        for (i, (label, actions)) in plans.iter().enumerate() {
            let engine_out = engine.output(chunk, actions).unwrap();
            let err = Errors::of(&engine_out, &files[i]).held(fp16);
            eprintln!("{name} {label} chunk {chunk}: engine vs the file apply wrote: {err:.2e}");
            assert!(
                err <= tol,
                "{name} {label} chunk {chunk}: the file apply wrote differs from the engine by \
                 {err:e} > {tol:e}"
            );
            // The comparison can fail: another plan's file is far from this plan's output.
            let other = Errors::of(&engine_out, &files[(i + 1) % files.len()]).held(fp16);
            assert!(
                other > 50.0 * tol,
                "{name} {label}: another plan's file is within {other:e}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases that must be refused
// ---------------------------------------------------------------------------------------------

fn check_refused(name: &str) {
    let c = case(name);
    let expect = &c["expect"];
    assert_eq!(expect["outcome"], "refused", "{name}");
    let code = expect["exit_code"].as_i64().unwrap() as i32;
    assert_eq!(code, skrr_onnx::error::exit::BAD_MODEL);
    let needle = expect["error_contains"].as_str().unwrap();
    // A copy, so that a tool that wrote beside or over its input could not touch the fixture.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    let tokenizer = dir.path().join("tokenizer.json");
    std::fs::copy(derived().join(c["model"].as_str().unwrap()), &model).unwrap();
    std::fs::copy(derived().join(c["tokenizer"].as_str().unwrap()), &tokenizer).unwrap();
    let plan = dir.path().join("plan.json");
    let n = expect["sub_blocks"].as_u64().unwrap() as usize;
    common::write_plan(&plan, &vec![K; n]);
    let out = dir.path().join("pruned.onnx");
    let (m, o, p) = (
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        plan.to_str().unwrap(),
    );

    let inspect = assert_error_contract(&["inspect", m], code, needle, None, &[&model]);
    let main = assert_error_contract(
        &[m, o, "--sparsity", "0.3"],
        code,
        needle,
        Some(&out),
        &[&model, &tokenizer],
    );
    let apply = assert_error_contract(
        &["apply", m, p, o],
        code,
        needle,
        Some(&out),
        &[&model, &plan],
    );
    for line in [inspect, main, apply] {
        assert!(
            line.contains("model.onnx"),
            "{name}: names the file: {line}"
        );
    }
}

macro_rules! cases {
    ($($check:ident: $($name:ident),+;)+) => {
        $($(
            #[test]
            fn $name() {
                $check(stringify!($name));
            }
        )+)+
    };
}

cases! {
    check_works: bert_int8, t5_gated_int8, clip_int8, bert_qdq, clip_qdq, bert_fp16_occ;
    check_refused: t5_gated_fp16_occ, t5_encdec;
    // Issue #12's remaining post-processing cells of the support matrix.
    check_works: umt5_int8, llama_int8, qwen2_int8, gemma_int8, bert_dynamo_sdpa_int8,
        clip_dynamo_sdpa_int8, llama_qdq, bert_dynamo_sdpa_qdq;
    check_refused: clip_fp16_occ, llama_fp16_occ, umt5_fp16_occ;
    // QDQ of Qwen2, Gemma and Gemma 2, dynamic int8 of Gemma 2, UMT5's QDQ of its MatMuls only (the way out t5_gated_qdq's
    // refusal names), onnxconverter-common fp16 of the RMSNorm families ONNX Runtime refuses.
    check_works: qwen2_qdq, gemma_qdq, gemma2_qdq, gemma2_int8, umt5_qdq_matmul;
    check_refused: qwen2_fp16_occ, gemma_fp16_occ, gemma2_fp16_occ;
}

#[test]
fn bert_qoperator() {
    check_refused("bert_qoperator");
}

#[test]
fn t5_gated_qdq() {
    check_refused("t5_gated_qdq");
}
