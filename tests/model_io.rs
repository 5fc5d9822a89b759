//! Model I/O end to end: `skrr-onnx convert` round trips judged by Python `onnx` and ONNX
//! Runtime (tests/py/model_io_oracle.py), and the refusal cases of the reader and writer.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use skrr_onnx::error::exit;
use skrr_onnx::model_io::{read_model, write_model, ExternalData, WriteOptions};

const ORACLE: &str = include_str!("py/model_io_oracle.py");

fn oracle(args: &[&str]) -> String {
    run_python(ORACLE, args)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A fresh folder holding the oracle's rich model (every storage form, functions, subgraphs,
/// metadata, doc strings, value_info, dim_params); returns (folder guard, model path).
fn rich_model() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    oracle(&["make", s(dir.path())]);
    let model = dir.path().join("rich.onnx");
    (dir, model)
}

fn convert(input: &Path, output: &Path, flags: &[&str]) {
    let mut args = vec!["convert", s(input), s(output)];
    args.extend_from_slice(flags);
    skrr_ok(&args);
}

/// The round-trip contract, for each (original, rewritten, data file) triple: the checker
/// accepts the rewritten model, the models are equal once tensor storage is normalised, ONNX
/// Runtime gives bit-identical outputs, and the storage layout is the one asked for (`data`:
/// the external data file name, or `None` for all inline). One oracle process checks them all.
fn assert_round_trips(cases: &[(&Path, &Path, Option<&str>)]) {
    let args: Vec<&str> = std::iter::once("check")
        .chain(cases.iter().flat_map(|(o, n, _)| [s(o), s(n)]))
        .collect();
    let results: Vec<Value> = serde_json::from_str(&oracle(&args)).unwrap();
    assert_eq!(results.len(), cases.len());
    for ((orig, new, data), res) in cases.iter().zip(&results) {
        check_round_trip(orig, new, *data, res);
    }
}

fn check_round_trip(orig: &Path, new: &Path, data: Option<&str>, res: &Value) {
    let what = format!("{} -> {}", orig.display(), new.display());
    assert_eq!(res["checker"], "ok", "{what}");
    assert_eq!(
        res["equal"],
        true,
        "{what}: models differ:\n{}",
        res["diff"].as_str().unwrap_or("")
    );
    assert_eq!(res["outputs_identical"], true, "{what}");
    let layout = res["layout"].as_array().unwrap();
    let external: Vec<&Value> = layout.iter().filter(|t| t["external"] == true).collect();
    match data {
        None => assert!(
            external.is_empty(),
            "{what}: external tensors left: {external:?}"
        ),
        Some(name) => {
            assert!(!external.is_empty(), "{what}: nothing external");
            assert!(new.with_file_name(name).is_file());
            for t in external {
                assert_eq!(t["location"], name, "{what}: {t}");
                assert_eq!(
                    t["offset"].as_u64().unwrap() % 4096,
                    0,
                    "{what}: unaligned {t}"
                );
                assert!(
                    t["length"].as_u64().unwrap() >= 1024,
                    "{what}: small tensor external {t}"
                );
            }
            // Initializers of 1 KiB or more go out; everything smaller, and attribute values,
            // stay inline.
            for t in layout.iter().filter(|t| t["external"] == false) {
                let big = t["length"].as_u64().unwrap() >= 1024;
                assert!(
                    !(big && t["initializer"] == true),
                    "{what}: big initializer inline {t}"
                );
            }
        }
    }
}

#[test]
fn rich_model_round_trips_inline_external_and_back() {
    let (dir, orig) = rich_model();
    let d = dir.path();
    let (same, ext, named) = (
        d.join("same.onnx"),
        d.join("ext.onnx"),
        d.join("named.onnx"),
    );
    convert(&orig, &same, &[]);
    convert(&orig, &ext, &["--external-data"]);
    convert(&orig, &named, &["--external-data=weights.bin"]);
    // External input: the default keeps external data, --inline brings it back.
    let (kept, inline) = (d.join("kept.onnx"), d.join("inline.onnx"));
    convert(&ext, &kept, &[]);
    convert(&ext, &inline, &["--inline"]);
    // onnx's other layout, one external file per tensor, gathered into one data file.
    let multi = d.join("multi/rich.onnx");
    assert!(
        d.join("multi/W").is_file(),
        "the oracle did not write per-tensor files"
    );
    let (gathered, multi_inline) = (d.join("gathered.onnx"), d.join("multi_inline.onnx"));
    convert(&multi, &gathered, &[]);
    convert(&multi, &multi_inline, &["--inline"]);
    assert_round_trips(&[
        (&orig, &same, None),
        (&orig, &ext, Some("ext.onnx.data")),
        (&orig, &named, Some("weights.bin")),
        (&orig, &kept, Some("kept.onnx.data")),
        (&orig, &inline, None),
        (&orig, &gathered, Some("gathered.onnx.data")),
        (&orig, &multi_inline, None),
    ]);
}

/// Every committed fixture (fixtures/manifest.json: legacy and dynamo exports, fp16, external
/// data): re-saved as it is, moved to external data, and brought back inline from there.
#[test]
fn every_fixture_round_trips() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("manifest.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for f in manifest["fixtures"].as_array().unwrap() {
        let orig = fixtures().join(f["model"].as_str().unwrap());
        let out = dir.path().join(f["name"].as_str().unwrap());
        std::fs::create_dir(&out).unwrap();
        let (same, ext, inline) = (
            out.join("same.onnx"),
            out.join("ext.onnx"),
            out.join("inline.onnx"),
        );
        convert(&orig, &same, &[]);
        convert(&orig, &ext, &["--external-data"]);
        convert(&ext, &inline, &["--inline"]);
        let had_external = !f["data"].is_null();
        outputs.push((orig, same, ext, inline, had_external));
    }
    assert!(
        !outputs.is_empty(),
        "no fixtures under {}",
        fixtures().display()
    );
    let cases: Vec<(&Path, &Path, Option<&str>)> = outputs
        .iter()
        .flat_map(|(orig, same, ext, inline, had_external)| {
            [
                (
                    orig.as_path(),
                    same.as_path(),
                    had_external.then_some("same.onnx.data"),
                ),
                (orig, ext, Some("ext.onnx.data")),
                (orig, inline, None),
            ]
        })
        .collect();
    assert_round_trips(&cases);
}

/// `Auto` moves weights out when the inline protobuf would exceed the limit (lowered here
/// from 2 GB so a small model crosses it), and keeps them inline below it.
#[test]
fn auto_switches_to_external_data_above_the_limit() {
    let (dir, orig) = rich_model();
    let model = read_model(&orig).unwrap();
    let size = std::fs::metadata(&orig).unwrap().len();
    let out = dir.path().join("auto.onnx");
    let opts = |limit| WriteOptions {
        external: ExternalData::Auto,
        auto_limit: limit,
        ..WriteOptions::default()
    };
    let report = write_model(&model.proto, &model.weights, &out, &opts(size + 1024)).unwrap();
    assert!(report.data_path.is_none());

    let big = dir.path().join("auto_big.onnx");
    let report = write_model(&model.proto, &model.weights, &big, &opts(size / 2)).unwrap();
    assert_eq!(
        report.data_path,
        Some(dir.path().join("auto_big.onnx.data"))
    );
    assert!(report.external_tensors > 0);
    assert_round_trips(&[
        (&orig, &out, None),
        (&orig, &big, Some("auto_big.onnx.data")),
    ]);
}

/// Typed views agree with what ONNX Runtime-independent numpy reads from the same file,
/// through inline raw data, typed fields and external data.
#[test]
fn typed_views_match_numpy() {
    let (dir, orig) = rich_model();
    let ext = dir.path().join("ext.onnx");
    convert(&orig, &ext, &["--external-data"]);
    let code = r#"
import json, sys, onnx
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
print(json.dumps({t.name: numpy_helper.to_array(t).astype("float64").ravel().tolist()
                  for t in m.graph.initializer}))
"#;
    for path in [&orig, &ext] {
        let expected = run_python_json(code, &[s(path)]);
        let model = read_model(path).unwrap();
        for t in &model.proto.graph.as_ref().unwrap().initializer {
            let got = model.weights.view(t).unwrap().to_f32();
            let want: Vec<f32> = expected[t.name()]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got, want, "{}: tensor {}", path.display(), t.name());
        }
    }
}

// ---- refusals: each fails with a message naming the file or tensor, a documented exit code,
// no output left behind, and the inputs unchanged (common::assert_error_contract).

/// An external-data copy of the rich model in its own folder: (guard, model, data file).
fn external_model() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, orig) = rich_model();
    let model = dir.path().join("model.onnx");
    convert(&orig, &model, &["--external-data"]);
    std::fs::remove_file(&orig).unwrap();
    let data = dir.path().join("model.onnx.data");
    (dir, model, data)
}

fn refuse_convert(model: &Path, inputs: &[&Path], code: i32, needle: &str) -> String {
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("out.onnx");
    assert_error_contract(
        &["convert", s(model), s(&out)],
        code,
        needle,
        Some(&out),
        inputs,
    )
}

#[test]
fn external_locations_escaping_the_folder_are_refused() {
    let (dir, model, data) = external_model();
    let outside = tempfile::tempdir().unwrap();
    let stolen = outside.path().join("secret.bin");
    std::fs::copy(&data, &stolen).unwrap();
    std::os::unix::fs::symlink(&stolen, dir.path().join("link.bin")).unwrap();
    let rel_escape = format!(
        "../{}/secret.bin",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    for (location, needle) in [
        (s(&stolen).to_string(), "is absolute"),
        (rel_escape, "contains '..'"),
        ("link.bin".to_string(), "outside the model's folder"),
    ] {
        oracle(&["edit", s(&model), "W", &format!("location={location}")]);
        let line = refuse_convert(&model, &[&model, &data, &stolen], exit::BAD_MODEL, needle);
        assert!(
            line.contains("model.onnx") && line.contains("'W'"),
            "{line}"
        );
    }
}

#[test]
fn shape_mismatch_is_refused_naming_the_tensor() {
    // Inline raw data, typed fields, and external data.
    let (dir, orig) = rich_model();
    for (tensor, dims, needle) in [
        (
            "W",
            "8,255",
            "tensor 'W': dims [8, 255] of FLOAT need 8160 bytes but 8192",
        ),
        (
            "B",
            "255",
            "tensor 'B': dims [255] declare 255 elements but float_data holds 256",
        ),
        ("E", "10,-256", "tensor 'E': negative dimension -256"),
    ] {
        let m = dir.path().join(format!("bad_{tensor}.onnx"));
        std::fs::copy(&orig, &m).unwrap();
        oracle(&["edit", s(&m), tensor, &format!("dims={dims}")]);
        let line = refuse_convert(&m, &[&m], exit::BAD_MODEL, needle);
        assert!(line.contains(&format!("bad_{tensor}.onnx")), "{line}");
    }
    let (_dir, model, data) = external_model();
    oracle(&["edit", s(&model), "E", "dims=10,255"]);
    let line = refuse_convert(&model, &[&model, &data], exit::BAD_MODEL, "tensor 'E'");
    assert!(line.contains("model.onnx.data"), "{line}");
}

#[test]
fn truncated_and_garbage_models_are_refused() {
    let (dir, orig) = rich_model();
    let bytes = std::fs::read(&orig).unwrap();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    refuse_convert(
        &truncated,
        &[&truncated],
        exit::BAD_MODEL,
        "truncated.onnx: not a valid ONNX model",
    );
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(
        &garbage,
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    refuse_convert(
        &garbage,
        &[&garbage],
        exit::BAD_MODEL,
        "garbage.onnx: not a valid ONNX model",
    );
}

#[test]
fn missing_or_short_external_data_is_refused() {
    let (_dir, model, data) = external_model();
    let len = std::fs::metadata(&data).unwrap().len();
    // Shorter than offset + length of the last tensor.
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.set_len(len - 1).unwrap();
    drop(f);
    let line = refuse_convert(
        &model,
        &[&model, &data],
        exit::BAD_MODEL,
        "runs past the end of",
    );
    assert!(
        line.contains("model.onnx.data") && line.contains("tensor '"),
        "{line}"
    );

    // A declared length beyond the file.
    oracle(&["edit", s(&model), "W", &format!("length={}", len * 2)]);
    refuse_convert(
        &model,
        &[&model, &data],
        exit::BAD_MODEL,
        "tensor 'W': external data offset 0",
    );

    std::fs::remove_file(&data).unwrap();
    let line = refuse_convert(&model, &[&model], exit::BAD_MODEL, "model.onnx.data");
    assert!(
        line.contains("cannot be opened") && line.contains("'W'"),
        "{line}"
    );
}

/// Writing over the input model or its data file (directly, through a symlink or a hard
/// link) is refused and changes nothing in the folder. (A data file with a second hard link is
/// already refused when reading, see src/model_io/external.rs.)
#[test]
fn overwriting_the_input_is_refused() {
    let (dir, model, data) = external_model();
    let d = dir.path();
    std::os::unix::fs::symlink(&model, d.join("alias.onnx")).unwrap();
    std::os::unix::fs::symlink(&data, d.join("alias.data")).unwrap();
    std::fs::hard_link(&model, d.join("hard.onnx")).unwrap();
    let new = d.join("new.onnx");
    let (alias, hard) = (d.join("alias.onnx"), d.join("hard.onnx"));
    let cases: [(&[&str], &str); 6] = [
        (
            &[s(&model)],
            "refusing to write the model over the input file",
        ),
        (
            &[s(&alias)],
            "refusing to write the model over the input file",
        ),
        (
            &[s(&hard)],
            "refusing to write the model over the input file",
        ),
        (
            &[s(&data)],
            "refusing to write the model over the input file",
        ),
        (
            &[s(&new), "--external-data=model.onnx.data"],
            "refusing to write the external data over the input file",
        ),
        (
            &[s(&new), "--external-data=alias.data"],
            "refusing to write the external data over the input file",
        ),
    ];
    for (rest, needle) in cases {
        let before = dir_listing(d);
        let mut argv = vec!["convert", s(&model)];
        argv.extend_from_slice(rest);
        assert_error_contract(&argv, exit::OUTPUT, needle, None, &[&model, &data]);
        assert_eq!(dir_listing(d), before, "{argv:?} changed the folder");
    }
}

#[test]
fn output_in_a_missing_folder_is_refused() {
    let (dir, model) = rich_model();
    let out = dir.path().join("no/such/folder/out.onnx");
    let line = assert_error_contract(
        &["convert", s(&model), s(&out)],
        exit::OUTPUT,
        "does not exist",
        Some(&out),
        &[&model],
    );
    assert!(line.contains("no/such/folder"), "{line}");
}

fn dir_listing(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}
