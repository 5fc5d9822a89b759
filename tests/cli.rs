//! The command line itself: global flags, `doctor`, the error contract for runtime problems.

mod common;

use common::*;

#[test]
fn help_lists_subcommands_and_global_flags() {
    let help = skrr_ok(["--help"]);
    for word in ["doctor", "--provider", "--threads", "--json", "--verbose"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

#[test]
fn bad_flag_is_a_usage_error() {
    let out = skrr(["--provider", "npu", "doctor"]);
    assert_eq!(out.status.code(), Some(2));
    let out = skrr(["--threads", "0", "doctor"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Main-job arguments before a subcommand's name are refused, not silently dropped (a looser
/// `--min-cos` gate in CI); global flags still go anywhere.
#[test]
fn main_job_arguments_with_a_subcommand_are_refused() {
    for (args, named) in [
        (&["--min-cos", "0.99", "doctor"][..], "--min-cos belongs"),
        (
            &["--reuse-weights", "copy", "doctor"][..],
            "--reuse-weights belongs",
        ),
        (
            &["in.onnx", "out.onnx", "doctor"][..],
            "<INPUT>, <OUTPUT> belong",
        ),
    ] {
        let out = skrr(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(named) && err.contains("'doctor'"),
            "{args:?}: {err}"
        );
    }
    skrr_ok(["-v", "--json", "--threads", "1", "doctor"]);
    // A negative limit is a value, not a flag.
    let out = skrr([
        "compare",
        "missing.onnx",
        "missing.onnx",
        "--min-cos",
        "-0.5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("unexpected argument") && err.contains("missing.onnx"),
        "{err}"
    );
}

/// `doctor` reports the same ONNX Runtime version as the Python package it was found in.
#[test]
fn doctor_finds_onnx_runtime_and_reports_its_version() {
    let report: serde_json::Value = serde_json::from_str(&skrr_ok(["doctor", "--json"])).unwrap();
    let py = run_python_json(
        "import json, onnxruntime as o; print(json.dumps({'v': o.__version__}))",
        &[],
    );
    assert_eq!(report["found"], true);
    assert_eq!(report["version"], py["v"]);
    assert_eq!(report["provider_ok"], true);
    let providers: Vec<&str> = report["available_providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(providers.contains(&"CPUExecutionProvider"), "{providers:?}");
    assert!(std::path::Path::new(report["library"].as_str().unwrap()).is_file());

    let text = skrr_ok(["doctor", "--threads", "1"]);
    assert!(
        text.contains(&format!("ONNX Runtime {}", py["v"].as_str().unwrap())),
        "{text}"
    );
}

/// Asking for CUDA on a CPU-only ONNX Runtime is an error (exit 5), never a CPU fallback.
#[test]
fn cuda_on_cpu_only_runtime_is_a_clear_error() {
    let line = assert_error_contract(
        &["--provider", "cuda", "doctor"],
        5,
        "execution provider cuda is not available",
        None,
        &[],
    );
    assert!(line.contains("onnxruntime-gpu"), "{line}");
    assert_error_contract(
        &["doctor", "--provider", "tensorrt"],
        5,
        "execution provider tensorrt",
        None,
        &[],
    );
}

#[test]
fn ort_dylib_path_must_point_at_a_loadable_library() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libonnxruntime.so.1.32.0");
    let out = skrr_cmd(["doctor"])
        .env("ORT_DYLIB_PATH", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a file") && err.contains("pip install onnxruntime"),
        "{err}"
    );

    std::fs::write(&missing, b"not a shared library").unwrap();
    let out = skrr_cmd(["doctor"])
        .env("ORT_DYLIB_PATH", &missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: cannot load ONNX Runtime from") && err.lines().count() == 1,
        "{err}"
    );
}

/// With no Python, no venv near the binary or the working directory and no ORT_DYLIB_PATH, the
/// error says what to install and where it looked. The binary is linked into a temporary folder
/// outside the repository so that no `.venv` lies above it. (Assumes no system-wide
/// libonnxruntime.)
#[test]
fn missing_onnx_runtime_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!dir.path().starts_with(repo_root()));
    let exe = dir.path().join("skrr-onnx");
    std::fs::hard_link(bin(), &exe)
        .or_else(|_| std::fs::copy(bin(), &exe).map(drop))
        .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(&exe)
            .args(args)
            .env_clear()
            .env("PATH", dir.path())
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["doctor"]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "error: ONNX Runtime library (libonnxruntime.so) not found; pip install onnxruntime"
        ),
        "{err}"
    );
    assert!(
        err.contains("ORT_DYLIB_PATH=") && err.contains("searched: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ONNX Runtime: not found\n"
    );

    let out = run(&["--json", "doctor"]);
    assert_eq!(out.status.code(), Some(5));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["found"], false);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("pip install onnxruntime"),
        "{report}"
    );
}
