//! Exports without an `attention_mask` input (Hugging Face Optimum's diffusers text encoders:
//! `t5-encoder` for SD3 / FLUX, `clip-text` for SD 1.x; fixtures/optimum_export.py) see the
//! padding of a batch as tokens. The method doc wants each prompt's D to be the same alone or in
//! a padded batch. CLIP is causal: right padding never reaches a token, so D does not depend on
//! batching. T5 attends both ways: padded to the batch's longest prompt, each prompt's output
//! changes with its batch mates, unless every prompt is padded to one length
//! (`--include-padding --max-length N`, as SD3 and FLUX feed T5).

mod common;

use common::{fixtures, skrr};

/// `score`'s D of `plan` on `fixture` with `--chunk chunk` and further arguments.
fn d(fixture: &str, plan: &std::path::Path, chunk: &str, extra: &[&str]) -> f64 {
    let model = fixtures().join(fixture).join("model.onnx");
    let out = skrr(
        [
            "score",
            model.to_str().unwrap(),
            "--plan",
            plan.to_str().unwrap(),
            "--num-prompts",
            "32",
            "--chunk",
            chunk,
            "--json",
        ]
        .iter()
        .chain(extra),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["d"]
        .as_f64()
        .or_else(|| v["score"]["d"].as_f64())
        .unwrap_or_else(|| panic!("no d in {v}"))
}

fn skip_plan(dir: &std::path::Path) -> std::path::PathBuf {
    let plan = dir.join("plan.json");
    common::write_skip_plan(&plan, 8, &[3, 5, 7]);
    plan
}

/// D of the skip plan on `fixture` alone and in batches of 8 agree within 1e-5.
fn assert_independent_of_batching(fixture: &str, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let plan = skip_plan(dir.path());
    let (a, b) = (d(fixture, &plan, "1", extra), d(fixture, &plan, "8", extra));
    assert!(
        (a - b).abs() <= 1e-5 * b.abs(),
        "{fixture} {extra:?}: D {a} alone vs {b} in batches of 8"
    );
}

#[test]
fn maskless_clip_and_padded_t5_give_d_independent_of_batching() {
    assert_independent_of_batching("optimum_clip", &[]);
    assert_independent_of_batching("optimum_t5", &["--include-padding", "--max-length", "32"]);
}

/// A maskless bidirectional encoder runs one prompt at a time (`graph::batch_coupling`), so its
/// D does not depend on `--chunk` (before: optimum_t5, skip {3, 5, 7}, 32 prompts: D 0.8042
/// alone, 0.7976 in batches of 8).
#[test]
fn maskless_t5_gives_d_independent_of_batching() {
    assert_independent_of_batching("optimum_t5", &[]);
}

/// Optimum's decoders (`--task feature-extraction`) have an attention_mask, and Qwen2 a
/// position_ids input (skrr-onnx feeds 0..len): right padding in a batch of 8 changes no
/// prompt's D (Gemma 2: its sliding-window layers too).
#[test]
fn optimum_decoders_give_d_independent_of_batching() {
    assert_independent_of_batching("optimum_qwen2", &[]);
    assert_independent_of_batching("optimum_gemma2", &[]);
}
