//! Helpers shared by the integration tests. Use with `mod common;` at the top of a file in tests/.
//!
//! Tests run the real binary and the real ONNX Runtime; Python (`SKRR_PYTHON`, else `python3`)
//! serves only as an oracle (onnx.checker, onnxruntime reference runs). `scripts/test.sh` sets
//! everything up.
#![allow(dead_code)] // each test crate uses a different subset

pub mod engine_check;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ndarray::{ArrayD, IxDyn};
use sha2::{Digest, Sha256};

/// The real all-MiniLM-L6-v2 export, when `SKRR_MINILM` names the folder that
/// `fixtures/generate.py --minilm DIR` made (model.onnx + model.onnx.data, tokenizer.json,
/// manifest.json): `scripts/test.sh` sets it to fixtures/minilm after rebuilding its weights.
/// The tests that need it say they were skipped otherwise.
pub fn minilm(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("SKRR_MINILM").map(PathBuf::from) else {
        eprintln!("{test}: skipped, SKRR_MINILM is not set (see README.md, Tests)");
        return None;
    };
    assert!(
        dir.join("model.onnx").is_file() && dir.join("manifest.json").is_file(),
        "SKRR_MINILM={} must be the folder `fixtures/generate.py --minilm DIR` made",
        dir.display()
    );
    // The committed graph without its weights: they are rebuilt, not committed.
    assert!(
        !dir.join("weights.json").is_file() || dir.join("model.onnx.data").is_file(),
        "{}/model.onnx.data is missing: `python fixtures/minilm_weights.py --dir {0}` rebuilds it",
        dir.display()
    );
    Some(dir)
}

/// The other exports of the real all-MiniLM-L6-v2, in fixtures/ beside `minilm` (the legacy fp32
/// export): committed graphs whose weights `fixtures/minilm_weights.py --all` rebuilds
/// (`fixtures/minilm_variants.py` made them), and int8 quantizations of fixtures/minilm that
/// `fixtures/minilm_quantized.py` builds (not committed). `scripts/test.sh` makes them all.
/// (`minilm_fp16_occ` is onnxconverter-common's fp16 conversion of fixtures/minilm, made by
/// `fixtures/minilm_variants.py` too; `minilm_optimum`, Hugging Face Optimum's export, is made by `fixtures/optimum_export.py
/// --minilm` in a venv of its own; its weights are rebuilt like the others'.)
pub const MINILM_VARIANTS: [&str; 7] = [
    "minilm_dynamo",
    "minilm_dynamo_eager",
    "minilm_fp16",
    "minilm_fp16_occ",
    "minilm_optimum",
    "minilm_int8_dynamic",
    "minilm_int8_qdq",
];

/// fixtures/minilm, the legacy fp32 export that the variants are compared with (and the int8
/// ones quantized from), whatever `SKRR_MINILM` names, or `None`, saying the test was skipped,
/// when its weights were not rebuilt.
pub fn minilm_legacy(test: &str) -> Option<PathBuf> {
    let dir = fixtures().join("minilm");
    if !dir.join("model.onnx.data").is_file() {
        eprintln!(
            "{test}: skipped, fixtures/minilm/model.onnx.data was not rebuilt \
             (`python fixtures/minilm_weights.py`; scripts/test.sh does)"
        );
        return None;
    }
    Some(dir)
}

/// fixtures/`name` (one of [`MINILM_VARIANTS`]) and its manifest.json entry (its `model` path is
/// relative to fixtures/), or `None`, saying the test was skipped, when the folder was not built
/// or its weights were not rebuilt.
pub fn minilm_variant(test: &str, name: &str) -> Option<(PathBuf, serde_json::Value)> {
    let dir = fixtures().join(name);
    let committed = dir.join("weights.json").is_file();
    let how = if committed {
        format!("python fixtures/minilm_weights.py --dir fixtures/{name}")
    } else {
        "python fixtures/minilm_quantized.py".to_string()
    };
    if !dir.join("manifest.json").is_file() || !dir.join("model.onnx").is_file() {
        eprintln!("{test}: skipped, fixtures/{name} was not built (`{how}`; scripts/test.sh does)");
        return None;
    }
    if committed && !dir.join("model.onnx.data").is_file() {
        eprintln!(
            "{test}: skipped, fixtures/{name}/model.onnx.data was not rebuilt (`{how}`; scripts/test.sh does)"
        );
        return None;
    }
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("fixtures/{name}/manifest.json: {e}"));
    assert_eq!(entry["name"], name, "fixtures/{name}/manifest.json");
    Some((dir, entry))
}

/// Writes a hand-written plan file for `n` sub-blocks at `path` that skips those in `skip` and
/// keeps the others (the minimal form the method doc allows).
pub fn write_skip_plan(path: &Path, n: usize, skip: &[usize]) {
    use skrr_onnx::action::Action;
    let actions: Vec<Action> = (0..n)
        .map(|i| {
            if skip.contains(&i) {
                Action::Skip
            } else {
                Action::Keep
            }
        })
        .collect();
    write_plan(path, &actions);
}

/// Writes a hand-written plan file at `path` with one action per sub-block (`index`, `action`
/// and, for a re-use, `source`: the minimal form the method doc allows).
pub fn write_plan(path: &Path, actions: &[skrr_onnx::action::Action]) {
    use skrr_onnx::action::Action;
    let entries: Vec<serde_json::Value> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| match a {
            Action::Keep => serde_json::json!({"index": i, "action": "keep"}),
            Action::Skip => serde_json::json!({"index": i, "action": "skip"}),
            Action::Reuse(q) => serde_json::json!({"index": i, "action": "reuse", "source": q}),
        })
        .collect();
    let plan = serde_json::json!({"format": "skrr-plan/1", "sub_blocks": entries});
    std::fs::write(path, plan.to_string()).unwrap();
}

/// `input_ids` and `attention_mask` (`[rows, len]`, int64) for token rows right-padded with
/// `pad_id` to `len`, as the tokenizers pad a batch.
pub fn padded_batch(rows: &[&[i64]], len: usize, pad_id: i64) -> [(&'static str, ArrayD<i64>); 2] {
    let mut ids = ArrayD::from_elem(IxDyn(&[rows.len(), len]), pad_id);
    let mut mask = ArrayD::zeros(IxDyn(&[rows.len(), len]));
    for (r, row) in rows.iter().enumerate() {
        assert!(row.len() <= len, "row {r} is longer than {len}");
        for (t, &id) in row.iter().enumerate() {
            ids[[r, t]] = id;
            mask[[r, t]] = 1;
        }
    }
    [("input_ids", ids), ("attention_mask", mask)]
}

/// The `skrr-onnx` binary cargo built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skrr-onnx"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("fixtures")
}

/// Sessions with ONNX Runtime's defaults: the configuration users run.
pub fn sessions() -> skrr_onnx::runtime::Sessions {
    skrr_onnx::runtime::Sessions::new(Default::default())
        .unwrap_or_else(|e| panic!("ONNX Runtime is needed (run scripts/test.sh): {e:#}"))
}

/// The exports made by Hugging Face Optimum's ONNX exporter (fixtures/optimum_manifest.json,
/// written by fixtures/optimum_export.py in a venv of its own): entries of the form of
/// fixtures/manifest.json's, their `model` and `plans` paths relative to fixtures/. They are not
/// in fixtures/manifest.json, which fixtures/generate.py writes from its own list.
pub fn optimum_fixtures() -> Vec<serde_json::Value> {
    let path = fixtures().join("optimum_manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m: serde_json::Value = serde_json::from_str(&text).expect("optimum_manifest.json is JSON");
    let fixtures = m["fixtures"].as_array().expect("fixtures").clone();
    assert_eq!(
        fixtures.len(),
        8,
        "fixtures/optimum_manifest.json: eight Optimum exports"
    );
    fixtures
}

/// The Python interpreter for oracles: `SKRR_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("SKRR_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// A `Command` for the binary with `args`, logging quiet (RUST_LOG removed) so stderr holds only
/// what the tool itself reports.
pub fn skrr_cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("RUST_LOG");
    cmd
}

/// Runs the binary with `args` and returns its output, whatever the exit status.
pub fn skrr<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    skrr_cmd(args)
        .output()
        .expect("cannot start the skrr-onnx binary")
}

/// Runs the binary, asserts success and returns stdout.
pub fn skrr_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = skrr(args);
    assert!(
        out.status.success(),
        "skrr-onnx failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is not UTF-8")
}

/// Runs a Python snippet (`code` on stdin, `args` as `sys.argv[1:]`) and returns its stdout;
/// panics with Python's stderr when it fails.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let mut child = Command::new(python())
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (set SKRR_PYTHON or run scripts/setup.sh): {e}",
                python()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(code.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python snippet failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python stdout is not UTF-8")
}

/// Like [`run_python`], for a snippet that prints one JSON document.
pub fn run_python_json(code: &str, args: &[&str]) -> serde_json::Value {
    let out = run_python(code, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("python printed no JSON ({e}):\n{out}"))
}

/// The reference: Python onnxruntime (CPU) runs `model` on int64 `inputs` (e.g. `input_ids`,
/// `attention_mask`) and returns every output as f32 (fp16 widened), by name.
pub fn ort_reference(
    model: &Path,
    inputs: &[(&str, ArrayD<i64>)],
) -> BTreeMap<String, ArrayD<f32>> {
    ort_reference_with(model, inputs, true)
}

/// [`ort_reference`], with ONNX Runtime's graph optimizations on (its default) or off.
pub fn ort_reference_with(
    model: &Path,
    inputs: &[(&str, ArrayD<i64>)],
    optimized: bool,
) -> BTreeMap<String, ArrayD<f32>> {
    let code = r#"
import json, sys, numpy as np, onnxruntime as ort
feeds = {k: np.array(v["data"], dtype=np.int64).reshape(v["shape"]) for k, v in json.loads(sys.argv[2]).items()}
so = ort.SessionOptions()
if sys.argv[3] == "off":
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
outs = s.run(None, feeds)
print(json.dumps({o.name: {"shape": list(v.shape), "data": v.astype(np.float64).ravel().tolist()}
                  for o, v in zip(s.get_outputs(), outs)}))
"#;
    let feeds: serde_json::Map<String, serde_json::Value> = inputs
        .iter()
        .map(|(k, a)| {
            (
                (*k).to_string(),
                serde_json::json!({"shape": a.shape(), "data": a.iter().collect::<Vec<_>>()}),
            )
        })
        .collect();
    let feeds = serde_json::Value::Object(feeds).to_string();
    let v = run_python_json(
        code,
        &[
            model.to_str().expect("model path is not UTF-8"),
            &feeds,
            if optimized { "on" } else { "off" },
        ],
    );
    let outputs = v.as_object().expect("reference outputs");
    outputs
        .iter()
        .map(|(name, o)| {
            let shape: Vec<usize> = o["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let data: Vec<f32> = o["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (
                name.clone(),
                ArrayD::from_shape_vec(IxDyn(&shape), data).unwrap(),
            )
        })
        .collect()
}

/// max |a − b| / max(1, max |b|): the relative error measure of the issues' tolerances.
pub fn max_rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let scale = b.iter().fold(1f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn sha256_file(path: &Path) -> String {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

fn dir_entries(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Runs the binary with `args` and checks the error contract (docs/reliability.md):
/// - exit code `code`;
/// - the last stderr line is `error: ...` containing `needle`, and no other line starts with
///   `error` (one message, not a backtrace or a panic);
/// - `output` (if given) does not exist afterwards and its folder has no new entries (no
///   leftover temporary file);
/// - every file in `inputs` has the same sha256 before and after.
///
/// Returns the error line for further checks.
pub fn assert_error_contract<S: AsRef<OsStr>>(
    args: &[S],
    code: i32,
    needle: &str,
    output: Option<&Path>,
    inputs: &[&Path],
) -> String {
    let before: Vec<String> = inputs.iter().map(|p| sha256_file(p)).collect();
    let out_dir = output.and_then(Path::parent).map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    });
    let entries_before = out_dir.map(dir_entries);
    let out = skrr(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {}, stderr:\n{stderr}",
        out.status
    );
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "expected `error: ...{needle}...`, got:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "several errors:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
    if let Some(o) = output {
        assert!(!o.exists(), "{} was left behind", o.display());
    }
    if let (Some(d), Some(b)) = (out_dir, entries_before) {
        let new: Vec<_> = dir_entries(d).difference(&b).cloned().collect();
        assert!(
            new.is_empty(),
            "files left behind in {}: {new:?}",
            d.display()
        );
    }
    for (p, h) in inputs.iter().zip(before) {
        assert_eq!(sha256_file(p), h, "{} was modified", p.display());
    }
    last.to_string()
}

/// A tiny Linear projection (hidden → 8) as an ONNX model, like a denoiser's caption projection.
pub fn projection_model(dir: &Path, hidden: usize, fp16: bool) -> PathBuf {
    let elem = if fp16 {
        skrr_onnx::onnx::proto::tensor_proto::data_type::FLOAT16
    } else {
        skrr_onnx::onnx::proto::tensor_proto::data_type::FLOAT
    };
    let weights: Vec<f32> = (0..hidden * 8)
        .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * 0.3)
        .collect();
    let raw: Vec<u8> = if fp16 {
        weights
            .iter()
            .flat_map(|&w| half::f16::from_f32(w).to_le_bytes())
            .collect()
    } else {
        weights.iter().flat_map(|w| w.to_le_bytes()).collect()
    };
    use prost::Message;
    use skrr_onnx::onnx::proto::type_proto;
    use skrr_onnx::onnx::{
        GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TypeProto,
        ValueInfoProto,
    };
    let vi = |name: &str| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: None,
            })),
            denotation: None,
        }),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("projection".into()),
            node: vec![NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                op_type: Some("MatMul".into()),
                ..Default::default()
            }],
            initializer: vec![TensorProto {
                name: Some("w".into()),
                dims: vec![hidden as i64, 8],
                data_type: Some(elem),
                raw_data: Some(raw.into()),
                ..Default::default()
            }],
            input: vec![vi("x")],
            output: vec![vi("y")],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join("projection.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}
