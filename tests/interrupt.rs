//! Atomic output under interruption: the real binary is killed (SIGINT, SIGTERM, SIGKILL) while
//! it writes a 256 MB model over a previous output. Afterwards the target is the previous
//! output or the complete new one, never a partial file; after SIGINT/SIGTERM no temporary file
//! remains; after SIGKILL the temporary that cannot be removed is named as such, and the next
//! write to the same target removes it.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use skrr_onnx::model_io::read_model;
use skrr_onnx::onnx::tensor_proto::{data_location, data_type};
use skrr_onnx::onnx::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    ValueInfoProto,
};

const TENSORS: usize = 4;
const TENSOR_BYTES: usize = 64 << 20;

/// A model whose `TENSORS` initializers of `TENSOR_BYTES` each live in `model.onnx.data`,
/// contiguous and page-aligned. Built directly (no Python) so the test stays fast.
fn big_model(dir: &Path) -> PathBuf {
    let mut data =
        std::io::BufWriter::new(std::fs::File::create(dir.join("model.onnx.data")).unwrap());
    let mut chunk = vec![0u8; 8 << 20];
    let mut graph = GraphProto {
        name: Some("big".into()),
        input: vec![ValueInfoProto {
            name: Some("x".into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    for i in 0..TENSORS {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (j as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        for _ in 0..TENSOR_BYTES / chunk.len() {
            data.write_all(&chunk).unwrap();
        }
        let name = format!("w{i}");
        graph.initializer.push(TensorProto {
            name: Some(name.clone()),
            dims: vec![(TENSOR_BYTES / 4) as i64],
            data_type: Some(data_type::FLOAT),
            data_location: Some(data_location::EXTERNAL),
            external_data: vec![
                StringStringEntryProto::new("location", "model.onnx.data"),
                StringStringEntryProto::new("offset", (i * TENSOR_BYTES).to_string()),
                StringStringEntryProto::new("length", TENSOR_BYTES.to_string()),
            ],
            ..Default::default()
        });
        let y = format!("y{i}");
        graph.node.push(NodeProto {
            input: vec!["x".into(), name],
            output: vec![y.clone()],
            op_type: Some("Add".into()),
            ..Default::default()
        });
        graph.output.push(ValueInfoProto {
            name: Some(y),
            ..Default::default()
        });
    }
    data.flush().unwrap();
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(graph),
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    path
}

/// Name → sha256 of every entry of a folder.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                sha256_file(&e.path()),
            )
        })
        .collect()
}

fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Whether `out` is a complete conversion of the big model: it reads back (the reader checks
/// every tensor's size against its storage) and every weight equals the input's.
fn is_complete_big(out: &Path, big: &Path) -> bool {
    let (Ok(a), Ok(b)) = (read_model(out), read_model(big)) else {
        return false;
    };
    let (ga, gb) = (
        a.proto.graph.as_ref().unwrap(),
        b.proto.graph.as_ref().unwrap(),
    );
    ga.initializer.len() == gb.initializer.len()
        && ga
            .initializer
            .iter()
            .zip(&gb.initializer)
            .all(|(x, y)| a.weights.bytes(x).ok().as_deref() == b.weights.bytes(y).ok().as_deref())
}

/// Starts `cmd` (which writes a big model into `dir`), waits until its temporary output holds
/// at least 32 MB, sends `sig` and returns how the process ended.
fn kill_mid_write(mut cmd: Command, dir: &Path, sig: i32) -> std::process::ExitStatus {
    // A file, not a pipe, so the child never blocks on it; read if it ends on its own.
    let stderr = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let growing = std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            is_temporary(&e.file_name().to_string_lossy())
                && e.metadata().map(|m| m.len() >= 32 << 20).unwrap_or(false)
        });
        if growing {
            break;
        }
        if let Some(st) = child.try_wait().unwrap() {
            let mut said = String::new();
            let mut f = &stderr;
            std::io::Seek::rewind(&mut f).unwrap();
            std::io::Read::read_to_string(&mut f, &mut said).unwrap();
            panic!("{cmd:?} finished ({st}) before it could be interrupted mid-write: {said}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary output appeared"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    // SAFETY: plain syscall on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    child.wait().unwrap()
}

#[test]
fn interrupted_writes_leave_previous_or_complete_output() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let big = big_model(&src);
    let small = fixtures().join("t5_gated/model.onnx");

    for (flags, what) in [
        (&["--external-data"][..], "external"),
        // A named data file is staged under the model's name too (`.model.onnx.data.*.tmp`),
        // so the cleanup after SIGKILL finds it whatever the final name.
        (&["--external-data=weights.bin"][..], "named"),
        (&["--inline"][..], "inline"),
    ] {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
            let out_dir = work.path().join(format!("out-{what}-{sig}"));
            std::fs::create_dir(&out_dir).unwrap();
            let out = out_dir.join("model.onnx");
            // The previous output: the small fixture, written the same way.
            let prev_args = [
                &["convert", small.to_str().unwrap(), out.to_str().unwrap()],
                flags,
            ]
            .concat();
            skrr_ok(&prev_args);
            let previous = listing(&out_dir);

            let mut cmd = skrr_cmd(["convert"]);
            cmd.arg(&big).arg(&out).args(flags);
            let status = kill_mid_write(cmd, &out_dir, sig);
            assert_eq!(
                status.signal(),
                Some(sig),
                "{what}, signal {sig}: ended with {status}"
            );

            let now = listing(&out_dir);
            let (temps, kept): (BTreeMap<_, _>, BTreeMap<_, _>) =
                now.into_iter().partition(|(n, _)| is_temporary(n));
            assert!(
                kept == previous || is_complete_big(&out, &big),
                "{what}, signal {sig}: the target is neither the previous nor the complete output: {kept:?}"
            );
            if sig == libc::SIGKILL {
                // The next write to the same target removes the temporaries a killed run left.
                skrr_ok(&prev_args);
                let after = listing(&out_dir);
                assert!(
                    after.keys().all(|n| !is_temporary(n)),
                    "{what}: stale temporaries {temps:?} not removed by the next run: {after:?}"
                );
            } else {
                assert!(temps.is_empty(), "{what}, signal {sig}: left {temps:?}");
            }
        }
    }
}

/// ONNX Runtime's (Python's) outputs of a fixture-shaped text encoder on one fixed sequence.
fn ort_outputs(model: &Path) -> BTreeMap<String, ndarray::ArrayD<f32>> {
    let ids = ndarray::array![[5i64, 6, 7, 8, 9, 1]].into_dyn();
    let mask = ndarray::ArrayD::<i64>::ones(ids.raw_dim());
    ort_reference(model, &[("input_ids", ids), ("attention_mask", mask)])
}

/// `convert SRC OUT --external-data`, killed by SIGKILL at `crash` (the test-only crash points
/// of `model_io::atomic::crash_point`) when given.
fn convert_external(src: &Path, out: &Path, crash: Option<&str>) -> std::process::ExitStatus {
    let mut cmd = skrr_cmd(["convert"]);
    cmd.arg(src).arg(out).arg("--external-data");
    if let Some(point) = crash {
        cmd.env("SKRR_ONNX_TEST_CRASH", format!("sigkill-{point}"));
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// The folder holds exactly one model and its data file, nothing hidden or stale.
fn assert_clean_pair(dir: &Path) {
    let names: Vec<String> = listing(dir).into_keys().collect();
    assert!(
        names.len() == 2 && names[0] == "model.onnx" && names[1].starts_with("model.onnx."),
        "expected the model and its data file only: {names:?}"
    );
}

/// A model with external data is two files, replaced by two renames. SIGKILL between them
/// (after the new data file is in place, before the model's rename) leaves the previous output
/// whole: same bytes, same ONNX Runtime outputs. SIGKILL after the model's rename, before the
/// old data file is deleted, leaves the new output whole and the old data file unreferenced.
/// Either way the next write to the same output removes what the killed run left.
#[test]
fn sigkill_between_the_renames_leaves_a_whole_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let (t5, bert) = (
        fixtures().join("t5_gated/model.onnx"),
        fixtures().join("bert/model.onnx"),
    );
    let (t5_ref, bert_ref) = (ort_outputs(&t5), ort_outputs(&bert));
    assert_ne!(t5_ref, bert_ref);

    assert!(convert_external(&t5, &out, None).success());
    assert_clean_pair(dir.path());
    let previous = listing(dir.path());
    assert_eq!(ort_outputs(&out), t5_ref);

    let st = convert_external(&bert, &out, Some("before-model-rename"));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
    let now = listing(dir.path());
    for (name, hash) in &previous {
        assert_eq!(now.get(name), Some(hash), "{name} changed: {now:?}");
    }
    let placed: Vec<&String> = now
        .keys()
        .filter(|n| !previous.contains_key(*n) && !n.starts_with('.'))
        .collect();
    assert_eq!(
        placed.len(),
        1,
        "the new data file is not in place: {now:?}"
    );
    assert_eq!(
        ort_outputs(&out),
        t5_ref,
        "the previous output does not run"
    );

    assert!(convert_external(&t5, &out, None).success());
    assert_clean_pair(dir.path());
    assert_eq!(ort_outputs(&out), t5_ref);

    let previous = listing(dir.path());
    let st = convert_external(&bert, &out, Some("after-model-rename"));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
    let now = listing(dir.path());
    assert_ne!(now.get("model.onnx"), previous.get("model.onnx"));
    for (name, hash) in previous.iter().filter(|(n, _)| *n != "model.onnx") {
        assert_eq!(now.get(name), Some(hash), "old data {name} gone early");
    }
    assert_eq!(ort_outputs(&out), bert_ref, "the new output does not run");

    assert!(convert_external(&bert, &out, None).success());
    assert_clean_pair(dir.path());
    assert_eq!(ort_outputs(&out), bert_ref);
}

/// The previous output's data file is deleted only when no model in the folder reads it: a
/// copy of the previous model beside it keeps its data, and keeps running; the two files of
/// each later output replace each other.
#[test]
fn replaced_data_still_read_by_another_model_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let copy = dir.path().join("copy.onnx");
    let t5 = fixtures().join("t5_gated/model.onnx");
    let bert = fixtures().join("bert/model.onnx");
    assert!(convert_external(&t5, &out, None).success());
    std::fs::copy(&out, &copy).unwrap();
    let data = dir.path().join("model.onnx.data");
    let data_hash = sha256_file(&data);

    assert!(convert_external(&bert, &out, None).success());
    assert_eq!(sha256_file(&data), data_hash);
    assert_eq!(ort_outputs(&copy), ort_outputs(&t5));
    assert_eq!(ort_outputs(&out), ort_outputs(&bert));
    // The copy's data now belongs to the copy: later replacements leave it alone.
    assert!(convert_external(&t5, &out, None).success());
    assert_eq!(sha256_file(&data), data_hash);
    assert_eq!(listing(dir.path()).len(), 4, "{:?}", listing(dir.path()));
}

/// The T5 fixture with its token embedding grown to 2^20 rows (the fixture's 583 rows first),
/// stored in `model.onnx.data` (256 MB), its tokenizer beside it: a real encoder whose blocks
/// `apply` and the main job rewrite, with a data file large enough to be caught mid-write.
fn big_t5(dir: &Path) -> PathBuf {
    const HIDDEN: usize = 64;
    let rows = TENSORS * TENSOR_BYTES / (HIDDEN * 4);
    let fixture = fixtures().join("t5_gated");
    let small = read_model(&fixture.join("model.onnx")).unwrap();
    let name = "model.shared.weight";
    let find = |g: &GraphProto| g.initializer.iter().position(|t| t.name() == name);
    let graph = small.proto.graph.as_ref().unwrap();
    let at = find(graph).expect("the T5 fixture's embedding");
    let head = small.weights.bytes(&graph.initializer[at]).unwrap();
    assert_eq!(graph.initializer[at].dims, [583, HIDDEN as i64]);

    let mut data =
        std::io::BufWriter::new(std::fs::File::create(dir.join("model.onnx.data")).unwrap());
    data.write_all(&head).unwrap();
    let pattern: Vec<u8> = (0..1 << 20)
        .flat_map(|j: u32| (((j % 251) as f32 - 125.0) / 1000.0).to_le_bytes())
        .collect();
    let mut left = rows * HIDDEN * 4 - head.len();
    while left > 0 {
        let n = left.min(pattern.len());
        data.write_all(&pattern[..n]).unwrap();
        left -= n;
    }
    data.flush().unwrap();

    let mut proto = small.proto.clone();
    let t = &mut proto.graph.as_mut().unwrap().initializer[at];
    t.dims = vec![rows as i64, HIDDEN as i64];
    t.raw_data = None;
    t.data_location = Some(data_location::EXTERNAL);
    t.external_data = vec![
        StringStringEntryProto::new("location", "model.onnx.data"),
        StringStringEntryProto::new("offset", "0"),
        StringStringEntryProto::new("length", (rows * HIDDEN * 4).to_string()),
    ];
    let path = dir.join("model.onnx");
    std::fs::write(&path, proto.encode_to_vec()).unwrap();
    std::fs::copy(fixture.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    path
}

/// A plan for the 8 sub-blocks of the T5 fixture skipping the given ones.
fn plan_skipping(path: &Path, skip: &[usize]) -> PathBuf {
    let subs: Vec<_> = (0..8)
        .map(|i| {
            let action = if skip.contains(&i) { "skip" } else { "keep" };
            serde_json::json!({"index": i, "action": action})
        })
        .collect();
    let plan = serde_json::json!({"format": "skrr-plan/1", "sub_blocks": subs});
    std::fs::write(path, plan.to_string()).unwrap();
    path.to_path_buf()
}

/// `apply` and the main job (`skrr-onnx IN OUT --sparsity S`), killed by SIGINT, SIGTERM or
/// SIGKILL while they write a 256 MB pruned model over a previous output with external data:
/// the target is still the previous output, byte for byte, and ONNX Runtime runs it with the
/// same outputs (or, had the kill come after the switch, the complete new output runs); no
/// temporary remains after SIGINT/SIGTERM, the next write removes those SIGKILL left; the input
/// model and its data file are byte-identical throughout.
#[test]
fn interrupted_apply_and_main_job_leave_the_previous_output() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let big = big_t5(&src);
    let input = listing(&src);
    let plan = plan_skipping(&work.path().join("plan.json"), &[1, 3]);
    let keep = plan_skipping(&work.path().join("keep.json"), &[]);
    let small = fixtures().join("t5_gated/model.onnx");
    let mut previous_outputs = None;

    for what in ["apply", "main job"] {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
            let case = format!("{what}, signal {sig}");
            let out_dir = work
                .path()
                .join(format!("out-{}-{sig}", what.replace(' ', "-")));
            std::fs::create_dir(&out_dir).unwrap();
            let out = out_dir.join("model.onnx");
            // The previous output: the T5 fixture through `apply` with nothing removed.
            let mut previous_cmd = skrr_cmd(["apply"]);
            previous_cmd
                .arg(&small)
                .arg(&keep)
                .arg(&out)
                .arg("--external-data");
            let write_previous = |cmd: &mut Command| {
                let st = cmd.stdout(Stdio::null()).status().unwrap();
                assert!(st.success(), "{case}: writing the previous output: {st}");
            };
            write_previous(&mut previous_cmd);
            let previous = listing(&out_dir);
            let reference = previous_outputs.get_or_insert_with(|| ort_outputs(&out));

            let (b, o) = (big.as_os_str(), out.as_os_str());
            let args: Vec<&std::ffi::OsStr> = match what {
                "apply" => vec!["apply".as_ref(), b, plan.as_os_str(), o],
                _ => [b, o]
                    .into_iter()
                    .chain(
                        ["--sparsity", "0.001", "--num-prompts", "8", "--no-compare"]
                            .map(AsRef::as_ref),
                    )
                    .collect(),
            };
            let cmd = skrr_cmd(args);
            let status = kill_mid_write(cmd, &out_dir, sig);
            assert_eq!(status.signal(), Some(sig), "{case}: ended with {status}");

            let (temps, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = listing(&out_dir)
                .into_iter()
                .partition(|(n, _)| is_temporary(n));
            if kept == previous {
                assert_eq!(&ort_outputs(&out), reference, "{case}: previous output");
            } else {
                // Killed after the switch: the new output must be whole.
                read_model(&out).unwrap_or_else(|e| panic!("{case}: {kept:?}: {e:#}"));
                ort_outputs(&out);
            }
            if sig == libc::SIGKILL {
                write_previous(&mut previous_cmd);
                let after = listing(&out_dir);
                assert!(
                    after.keys().all(|n| !n.starts_with('.')),
                    "{case}: stale files {temps:?} not removed by the next run: {after:?}"
                );
            } else {
                assert!(temps.is_empty(), "{case}: left {temps:?}");
            }
            assert_eq!(listing(&src), input, "{case}: the input folder changed");
        }
    }
}
