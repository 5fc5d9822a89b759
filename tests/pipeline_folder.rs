//! The main job and `inspect` on a diffusers pipeline folder (issue #15), built at test time in
//! the layout `optimum-cli export onnx` writes for Stable Diffusion 3 from the committed Optimum
//! fixtures: CLIP with projection (`optimum_clip_proj`, with hidden states) as `text_encoder`
//! and `text_encoder_2`, the T5 encoder (`optimum_t5`, its vocabulary grown so that it is the
//! largest encoder, as SD3's T5-XXL is, and its weights in `model.onnx_data`) as
//! `text_encoder_3`, a tokenizer folder for each, and placeholder files for the other
//! components.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use skrr_onnx::model_io::read_model;
use skrr_onnx::onnx::tensor_proto::data_location;
use skrr_onnx::onnx::StringStringEntryProto;

/// Rows of the grown T5 vocabulary (the fixture has 583): 4096 × 64 floats, 1 MiB.
const T5_ROWS: usize = 4096;

const MODEL_INDEX: &str = r#"{
  "_class_name": "StableDiffusion3Pipeline",
  "_diffusers_version": "0.31.0",
  "feature_extractor": [null, null],
  "image_encoder": [null, null],
  "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
  "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
  "text_encoder_3": ["transformers", "T5EncoderModel"],
  "tokenizer": ["transformers", "CLIPTokenizer"],
  "tokenizer_2": ["transformers", "CLIPTokenizer"],
  "tokenizer_3": ["transformers", "T5TokenizerFast"],
  "transformer": ["diffusers", "SD3Transformer2DModel"],
  "vae": ["diffusers", "AutoencoderKL"]
}
"#;

/// optimum_t5 with its token embedding grown to `T5_ROWS` rows (the fixture's rows first, so
/// every id its tokenizer emits reads the same vector) and stored in `model.onnx_data`, the
/// name Optimum gives the data file of a large export.
fn grown_t5(dir: &Path) {
    let small = read_model(&fixtures().join("optimum_t5/model.onnx")).unwrap();
    let graph = small.proto.graph.as_ref().unwrap();
    let at = graph
        .initializer
        .iter()
        .position(|t| t.name() == "shared.weight")
        .expect("the T5 fixture's embedding");
    let table = &graph.initializer[at];
    let hidden = table.dims[1] as usize;
    let mut data = small.weights.bytes(table).unwrap().into_owned();
    data.extend(
        (data.len() / 4..T5_ROWS * hidden)
            .flat_map(|j| (((j % 251) as f32 - 125.0) / 500.0).to_le_bytes()),
    );
    std::fs::write(dir.join("model.onnx_data"), &data).unwrap();
    let mut proto = small.proto.clone();
    let t = &mut proto.graph.as_mut().unwrap().initializer[at];
    t.dims = vec![T5_ROWS as i64, hidden as i64];
    t.raw_data = None;
    t.float_data.clear();
    t.data_location = Some(data_location::EXTERNAL);
    t.external_data = vec![
        StringStringEntryProto::new("location", "model.onnx_data"),
        StringStringEntryProto::new("offset", "0"),
        StringStringEntryProto::new("length", data.len().to_string()),
    ];
    std::fs::write(dir.join("model.onnx"), proto.encode_to_vec()).unwrap();
}

/// An SD3 pipeline folder at `root/name`, as Optimum exports it.
fn sd3_folder(root: &Path, name: &str) -> PathBuf {
    let p = root.join(name);
    let write = |rel: &str, bytes: &[u8]| {
        let path = p.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let copy = |rel: &str, from: &str| {
        write(rel, &std::fs::read(fixtures().join(from)).unwrap());
    };
    write("model_index.json", MODEL_INDEX.as_bytes());
    for (enc, tok) in [
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
    ] {
        copy(&format!("{enc}/model.onnx"), "optimum_clip_proj/model.onnx");
        write(
            &format!("{enc}/config.json"),
            br#"{"architectures": ["CLIPTextModelWithProjection"], "num_hidden_layers": 4}"#,
        );
        copy(
            &format!("{tok}/tokenizer.json"),
            "optimum_clip_proj/tokenizer.json",
        );
        write(&format!("{tok}/vocab.json"), b"{}");
        write(&format!("{tok}/merges.txt"), b"#version: 0.2\n");
        write(
            &format!("{tok}/tokenizer_config.json"),
            br#"{"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}"#,
        );
    }
    std::fs::create_dir_all(p.join("text_encoder_3")).unwrap();
    grown_t5(&p.join("text_encoder_3"));
    write(
        "text_encoder_3/config.json",
        br#"{"architectures": ["T5EncoderModel"], "num_layers": 4}"#,
    );
    copy("tokenizer_3/tokenizer.json", "optimum_t5/tokenizer.json");
    write("tokenizer_3/spiece.model", &[7u8; 3000]);
    write(
        "tokenizer_3/tokenizer_config.json",
        br#"{"tokenizer_class": "T5Tokenizer", "model_max_length": 256}"#,
    );
    // The other components: their files only need to be carried over byte for byte.
    let noise = |n: usize, seed: u8| -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    };
    write("transformer/model.onnx", &noise(20_000, 1));
    write("transformer/model.onnx_data", &noise(300_000, 2));
    write(
        "transformer/config.json",
        br#"{"_class_name": "SD3Transformer2DModel"}"#,
    );
    for (i, vae) in ["vae_decoder", "vae_encoder"].iter().enumerate() {
        write(&format!("{vae}/model.onnx"), &noise(50_000, 3 + i as u8));
        write(
            &format!("{vae}/config.json"),
            br#"{"_class_name": "AutoencoderKL"}"#,
        );
    }
    write(
        "scheduler/scheduler_config.json",
        br#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}"#,
    );
    p
}

/// Every file below `dir`, relative path → (sha256, device, inode, links).
fn tree(dir: &Path) -> BTreeMap<String, (String, u64, u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            out.insert(
                rel,
                (sha256_file(&path), meta.dev(), meta.ino(), meta.nlink()),
            );
        }
    }
    out
}

/// Names in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The main job on `input` writing `output`, asserted successful; its stdout.
fn prune_folder(input: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&std::ffi::OsStr> = vec![input.as_os_str(), output.as_os_str()];
    args.extend(
        [
            "--sparsity",
            "0.25",
            "--num-prompts",
            "16",
            "--min-cos",
            "0",
        ]
        .iter()
        .chain(extra)
        .map(std::ffi::OsStr::new),
    );
    skrr_ok(args)
}

/// Asserts that `output` is `input` with `replaced` (files of the pruned encoders' folders) in
/// place of the input's files there, every other file byte-identical and hard-linked except
/// `copied`; returns the files in the output that are not in the input.
fn assert_carried(input: &Path, output: &Path, replaced: &[&str], copied: &[&str]) -> Vec<String> {
    let (a, b) = (tree(input), tree(output));
    for (rel, (sha, dev, ino, links)) in &a {
        if replaced.contains(&rel.as_str()) {
            continue;
        }
        let (sha2, dev2, ino2, links2) = b
            .get(rel)
            .unwrap_or_else(|| panic!("{rel} was not carried over: {:?}", b.keys()));
        assert_eq!(sha, sha2, "{rel} changed");
        if copied.contains(&rel.as_str()) {
            assert_ne!((dev, ino), (dev2, ino2), "{rel} was linked, not copied");
            assert_eq!((*links, *links2), (1, 1), "{rel}");
        } else {
            assert_eq!((dev, ino), (dev2, ino2), "{rel} is not a hard link");
        }
    }
    b.keys().filter(|k| !a.contains_key(*k)).cloned().collect()
}

#[test]
fn the_largest_encoder_is_pruned_on_its_last_hidden_state_and_the_rest_carried() {
    let work = tempfile::tempdir().unwrap();
    let input = sd3_folder(work.path(), "sd3");
    let unlinked = |t: BTreeMap<String, (String, u64, u64, u64)>| -> BTreeMap<_, _> {
        t.into_iter()
            .map(|(k, (h, d, i, _))| (k, (h, d, i)))
            .collect()
    };
    let before = unlinked(tree(&input));
    let output = work.path().join("sd3-pruned");
    let report = work.path().join("report.json");
    let text = prune_folder(&input, &output, &["--report", report.to_str().unwrap()]);

    // Only text_encoder_3 changed: its model and data file are the pruned model's.
    let new = assert_carried(
        &input,
        &output,
        &[
            "text_encoder_3/model.onnx",
            "text_encoder_3/model.onnx_data",
        ],
        &[],
    );
    assert_eq!(new, ["text_encoder_3/model.onnx.data"], "{text}");
    let (pruned, dense) = (
        output.join("text_encoder_3/model.onnx"),
        input.join("text_encoder_3/model.onnx"),
    );
    assert_ne!(sha256_file(&pruned), sha256_file(&dense));
    assert!(!output.join("text_encoder_3/model.onnx_data").exists());
    assert_eq!(unlinked(tree(&input)), before, "the input folder changed");
    assert_eq!(entries(work.path()), ["report.json", "sd3", "sd3-pruned"]);

    // The report: one block for the T5, then the folder's verdict; paths are the output's.
    assert!(
        text.lines().next().unwrap().ends_with(
            "(StableDiffusion3Pipeline): text encoders text_encoder, text_encoder_2, \
             text_encoder_3; pruning text_encoder_3 (the largest)"
        ),
        "{text}"
    );
    assert!(
        text.contains("encoder text_encoder_3 (T5EncoderModel): tokenizer ")
            && text.contains(
                "measured last_hidden_state (StableDiffusion3Pipeline reads its last hidden state)"
            ),
        "{text}"
    );
    assert!(!text.contains(".sd3-pruned."), "{text}");
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("PASSED: text_encoder_3 ")
            && last.contains(&format!("wrote pipeline {}", output.display())),
        "{last}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["pipeline"], "StableDiffusion3Pipeline");
    assert_eq!(
        r["text_encoders"],
        serde_json::json!(["text_encoder", "text_encoder_2", "text_encoder_3"])
    );
    let e = &r["encoders"].as_array().unwrap()[..];
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["name"], "text_encoder_3");
    assert_eq!(e[0]["measured"]["output"], "last_hidden_state");
    assert_eq!(e[0]["report"]["fidelity"]["output"], "last_hidden_state");
    assert_eq!(e[0]["report"]["output"], pruned.display().to_string());
    assert_eq!(e[0]["verdict"], "PASSED");
    let files = before.len() - 2;
    assert_eq!(r["carried"]["files"], files);
    assert_eq!(r["carried"]["linked"], files);
    assert_eq!(r["verdict"], last);

    // The pruned encoder loads and passes compare against the original.
    let tokenizer = input.join("tokenizer_3/tokenizer.json");
    let cmp = skrr_ok([
        "compare".as_ref(),
        dense.as_os_str(),
        pruned.as_os_str(),
        "--tokenizer".as_ref(),
        tokenizer.as_os_str(),
        "--min-cos".as_ref(),
        "0".as_ref(),
    ]);
    assert!(cmp.lines().last() == Some("PASSED"), "{cmp}");
    let listing = skrr_ok(["inspect".as_ref(), output.as_os_str(), "--json".as_ref()]);
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let params = |l: &serde_json::Value, i: usize| l["encoders"][i]["params"].as_u64().unwrap();
    assert!(params(&listing, 2) < 426_176 && params(&listing, 0) == 202_304);
}

#[test]
fn a_named_clip_is_pruned_on_its_penultimate_hidden_state() {
    let work = tempfile::tempdir().unwrap();
    let input = sd3_folder(work.path(), "sd3");
    let output = work.path().join("out");
    let json = prune_folder(&input, &output, &["--encoder", "text_encoder", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let e = &r["encoders"][0];
    assert_eq!(e["name"], "text_encoder");
    assert_eq!(e["class"], "CLIPTextModelWithProjection");
    // A 4-layer export lists hidden_states.0 .. hidden_states.4: hidden_states[-2] is .3.
    assert_eq!(e["measured"]["output"], "hidden_states.3");
    assert_eq!(e["report"]["fidelity"]["output"], "hidden_states.3");
    assert_eq!(r["carried"]["copied"], 1);

    // The T5 stays, its data file copied: skrr-onnx reads a data file with one link only, so
    // both folders stay readable (inspect reads every text encoder).
    let new = assert_carried(
        &input,
        &output,
        &["text_encoder/model.onnx"],
        &["text_encoder_3/model.onnx_data"],
    );
    assert!(new.is_empty(), "{new:?}");
    for folder in [&input, &output] {
        skrr_ok(["inspect".as_ref(), folder.as_os_str()]);
    }
    let (dense, pruned) = (
        input.join("text_encoder/model.onnx"),
        output.join("text_encoder/model.onnx"),
    );
    let tokenizer = input.join("tokenizer/tokenizer.json");
    let cmp = skrr_ok([
        "compare".as_ref(),
        dense.as_os_str(),
        pruned.as_os_str(),
        "--tokenizer".as_ref(),
        tokenizer.as_os_str(),
        "--measure".as_ref(),
        "hidden_states.3".as_ref(),
        "--min-cos".as_ref(),
        "0".as_ref(),
    ]);
    assert!(cmp.contains("output hidden_states.3"), "{cmp}");

    // Two encoders in one run, each with its own tokenizer and output.
    let both = work.path().join("both");
    let json = prune_folder(
        &input,
        &both,
        &[
            "--encoder",
            "text_encoder_3",
            "--encoder",
            "text_encoder_2",
            "--json",
        ],
    );
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let got: Vec<(&str, &str, &str)> = r["encoders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                e["measured"]["output"].as_str().unwrap(),
                e["tokenizer"].as_str().unwrap(),
            )
        })
        .collect();
    let tok = |t: &str| input.join(t).join("tokenizer.json").display().to_string();
    assert_eq!(
        got,
        [
            (
                "text_encoder_3",
                "last_hidden_state",
                tok("tokenizer_3").as_str()
            ),
            (
                "text_encoder_2",
                "hidden_states.3",
                tok("tokenizer_2").as_str()
            )
        ]
    );
    assert_carried(
        &input,
        &both,
        &[
            "text_encoder_2/model.onnx",
            "text_encoder_3/model.onnx",
            "text_encoder_3/model.onnx_data",
        ],
        &[],
    );
}

#[test]
fn inspect_lists_the_text_encoders_and_marks_the_default() {
    let work = tempfile::tempdir().unwrap();
    let input = sd3_folder(work.path(), "sd3");
    std::fs::remove_file(input.join("tokenizer_2/tokenizer.json")).unwrap();
    let text = skrr_ok(["inspect".as_ref(), input.as_os_str()]);
    let row = |name: &str| {
        text.lines()
            .find(|l| {
                l.get(2..)
                    .is_some_and(|l| l.starts_with(&format!("{name} ")))
            })
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .to_string()
    };
    let t5 = row("text_encoder_3");
    assert!(
        t5.starts_with('*')
            && t5.contains("T5EncoderModel")
            && t5.contains("426176")
            && t5.contains("tokenizer_3/tokenizer.json")
            && t5.ends_with("last_hidden_state"),
        "{t5}"
    );
    let clip2 = row("text_encoder_2");
    assert!(
        clip2.starts_with(' ')
            && clip2.contains("tokenizer_2/ (no tokenizer.json)")
            && clip2.ends_with("hidden_states.3"),
        "{clip2}"
    );
    assert!(
        text.contains("text_encoder_3/model.onnx + 1 data file"),
        "{text}"
    );

    let json = skrr_ok(["inspect".as_ref(), input.as_os_str(), "--json".as_ref()]);
    let l: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(l["pipeline"], "StableDiffusion3Pipeline");
    assert_eq!(l["default_encoder"], "text_encoder_3");
    let e = l["encoders"].as_array().unwrap();
    assert_eq!(e.len(), 3);
    assert_eq!(e[1]["tokenizer"]["state"], "slow_only");
    assert_eq!(e[2]["param_bytes"], 426_176 * 4);
    assert_eq!(
        e[2]["file_bytes"],
        std::fs::metadata(input.join("text_encoder_3/model.onnx"))
            .unwrap()
            .len()
            + (T5_ROWS * 64 * 4) as u64
    );

    // An encoder that cannot be read is listed as such and refused if named; the others can
    // still be pruned.
    std::fs::write(input.join("text_encoder_2/model.onnx"), b"not a model").unwrap();
    let text = skrr_ok(["inspect".as_ref(), input.as_os_str()]);
    assert!(
        text.contains("text_encoder_2: cannot be read: ")
            && text.contains("not a valid ONNX model"),
        "{text}"
    );
    assert!(row("text_encoder_3").starts_with('*'));
    let out = work.path().join("out");
    let e = assert_error_contract(
        &[
            input.as_os_str(),
            out.as_os_str(),
            "--sparsity".as_ref(),
            "0.25".as_ref(),
            "--encoder".as_ref(),
            "text_encoder_2".as_ref(),
        ],
        3,
        "--encoder text_encoder_2 cannot be read",
        Some(&out),
        &[],
    );
    assert!(e.contains("not a valid ONNX model"), "{e}");
}

#[test]
fn refusals_say_what_to_do_and_leave_nothing() {
    let work = tempfile::tempdir().unwrap();
    let input = sd3_folder(work.path(), "sd3");
    let out = work.path().join("out");
    let index = input.join("model_index.json");
    let run = |extra: &[&str], code: i32, needle: &str| -> String {
        let mut args: Vec<String> = vec![
            input.display().to_string(),
            out.display().to_string(),
            "--sparsity".into(),
            "0.25".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        assert_error_contract(&args, code, needle, Some(&out), &[&index])
    };

    let e = run(
        &["--encoder", "text_encoder_9"],
        2,
        "--encoder text_encoder_9",
    );
    assert!(
        e.contains("its text encoders are text_encoder, text_encoder_2, text_encoder_3"),
        "{e}"
    );
    let e = run(
        &[
            "--encoder",
            "text_encoder",
            "--encoder",
            "text_encoder_3",
            "--tokenizer",
            "t.json",
        ],
        2,
        "--tokenizer applies to one encoder",
    );
    assert!(e.contains("choose one with --encoder"), "{e}");

    // A slow CLIPTokenizer's files only, as diffusers saves SD3's CLIP tokenizers.
    std::fs::remove_file(input.join("tokenizer/tokenizer.json")).unwrap();
    let e = run(&["--encoder", "text_encoder"], 4, "has no tokenizer.json");
    assert!(
        e.contains("save_pretrained") && e.contains("--tokenizer FILE") && e.contains("--calib"),
        "{e}"
    );
    // The way out: a tokenizer.json given for the one encoder.
    let tokenizer = fixtures().join("optimum_clip_proj/tokenizer.json");
    let tok = tokenizer.to_str().unwrap();
    prune_folder(
        &input,
        &out,
        &["--encoder", "text_encoder", "--tokenizer", tok],
    );

    // The output folder exists now: never replaced.
    let listing = tree(&out);
    let mut args: Vec<String> = vec![
        input.display().to_string(),
        out.display().to_string(),
        "--sparsity".into(),
        "0.25".into(),
    ];
    let e = assert_error_contract(&args, 6, "already exists", None, &[&index]);
    assert!(e.contains("remove it or choose another"), "{e}");
    assert_eq!(tree(&out), listing);

    // Inside the input folder: the new pipeline, or a report that could replace its files.
    args[1] = input.join("pruned").display().to_string();
    assert_error_contract(
        &args,
        6,
        "is inside the input pipeline folder",
        None,
        &[&index],
    );
    assert!(!input.join("pruned").exists());
    args[1] = work.path().join("out2").display().to_string();
    let report = input.join("model_index.json").display().to_string();
    let with_report = [&args[..], &["--report".into(), report]].concat();
    let e = assert_error_contract(
        &with_report,
        6,
        "is inside the input pipeline folder",
        None,
        &[&index],
    );
    assert!(e.contains("write it elsewhere"), "{e}");

    // A fidelity check that fails: the folder is written whole, the exit status is 1.
    let failed = work.path().join("failed");
    let out = skrr([
        input.as_os_str(),
        failed.as_os_str(),
        "--sparsity".as_ref(),
        "0.25".as_ref(),
        "--encoder".as_ref(),
        "text_encoder".as_ref(),
        "--tokenizer".as_ref(),
        tokenizer.as_os_str(),
        "--min-cos".as_ref(),
        "0.999".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("FAILED: text_encoder ") && last.contains("(FAILED)"),
        "{stdout}"
    );
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .starts_with("error: text_encoder: fidelity check FAILED: cos_mean"),
        "{stderr}"
    );
    assert!(failed.join("text_encoder/model.onnx").is_file());
    std::fs::remove_dir_all(&failed).unwrap();

    // A folder that is no pipeline.
    let plain = work.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::copy(
        fixtures().join("optimum_t5/model.onnx"),
        plain.join("model.onnx"),
    )
    .unwrap();
    args[0] = plain.display().to_string();
    args[1] = work.path().join("out2").display().to_string();
    let e = assert_error_contract(
        &args,
        3,
        "not a model file or a diffusers pipeline folder",
        None,
        &[],
    );
    assert!(e.contains("model_index.json"), "{e}");
    let e = assert_error_contract(
        &["inspect", plain.to_str().unwrap()],
        3,
        "not a model file or a diffusers pipeline folder",
        None,
        &[],
    );
    assert!(e.contains("model_index.json"), "{e}");

    // --encoder with a model file.
    args[0] = plain.join("model.onnx").display().to_string();
    args.extend(["--encoder".into(), "text_encoder".into()]);
    assert_error_contract(
        &args,
        2,
        "--encoder chooses among the text encoders",
        None,
        &[],
    );
    assert_eq!(entries(work.path()), ["out", "plain", "sd3"]);
}

/// Prompts enough that a run on the T5 (fed no mask, so one prompt per ONNX Runtime call) lasts
/// long enough to be interrupted in its search.
fn many_prompts(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..4000 {
        writeln!(
            f,
            "a photograph of {} red boats number {i} on a lake at dawn, detailed",
            i % 97
        )
        .unwrap();
    }
}

/// SIGINT or SIGTERM while the search runs: the process ends by the signal, and neither the
/// output folder nor the temporary one it was built in remains. SIGKILL cannot be caught: the
/// temporary folder it leaves is named as such, and the next run to the same output removes it.
#[test]
fn an_interrupted_run_leaves_no_folder() {
    let work = tempfile::tempdir().unwrap();
    let input = sd3_folder(work.path(), "sd3");
    let prompts = work.path().join("prompts.txt");
    many_prompts(&prompts);
    let out = work.path().join("out");
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        let mut child = skrr_cmd([
            "-v".as_ref(),
            input.as_os_str(),
            out.as_os_str(),
            "--sparsity".as_ref(),
            "0.3".as_ref(),
            "--prompts".as_ref(),
            prompts.as_os_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let start = Instant::now();
        let mut said = Vec::new();
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("ended before its search: {said:#?}"))
                .unwrap();
            if line.contains("phase search") {
                break;
            }
            said.push(line);
            assert!(start.elapsed() < Duration::from_secs(120), "{said:#?}");
        }
        // Well inside the dense targets of 3000 calibration prompts.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain syscall on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{status}: {rest:#?}");
        let left = entries(work.path());
        if sig == libc::SIGKILL {
            let stale: Vec<&String> = left.iter().filter(|n| n.starts_with(".out.")).collect();
            assert!(stale.len() == 1 && stale[0].ends_with(".tmp"), "{left:?}");
            // The next run to the same output removes it.
            prune_folder(&input, &out, &[]);
            assert_eq!(entries(work.path()), ["out", "prompts.txt", "sd3"]);
        } else {
            assert_eq!(left, ["prompts.txt", "sd3"], "signal {sig}: {rest:#?}");
            assert!(
                rest.iter()
                    .any(|l| l.contains("no partial output was left")),
                "{rest:#?}"
            );
        }
    }
}
