//! The pip wheel as a user gets it: built by maturin (pyproject.toml), installed into a fresh
//! venv with its `onnxruntime` dependency from the package index, then run with nothing set (no
//! ORT_DYLIB_PATH, SKRR_PYTHON or VIRTUAL_ENV, a PATH without any venv, an empty HOME): the
//! binary must find the runtime its own install brought, and the `skrr_onnx` Python API must
//! run it (tests/py/wheel_api.py). The API's flags are checked against the binary's own clap
//! definitions, so that a flag added or changed on the command line fails here until the Python
//! API has it too.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use clap::CommandFactory;

/// The wheel installed into a fresh venv, once for all tests of this file.
struct Installed {
    venv: PathBuf,
    /// Working directory of the scrubbed runs, with no `.venv` above it.
    work: PathBuf,
    home: PathBuf,
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(install)
}

/// The cargo target directory this test was built in (`TARGET/release/deps/wheel-HASH`):
/// maturin builds there too, so it reuses every compiled dependency.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn install() -> Installed {
    let python = common::python();
    let maturin = Command::new(&python)
        .args(["-m", "maturin", "--version"])
        .output();
    assert!(
        maturin.is_ok_and(|o| o.status.success()),
        "{python} -m maturin failed: maturin is needed to build the wheel \
         (pip install -r scripts/requirements.txt; scripts/test.sh does)"
    );
    // Rebuilt on every run: a venv left by an earlier run could hide a broken install.
    let root = target_dir().join("wheel-test");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    let (wheels, venv, work, home) = (
        root.join("wheels"),
        root.join("venv"),
        root.join("work"),
        root.join("home"),
    );
    for d in [&work, &home] {
        std::fs::create_dir_all(d).unwrap();
    }
    let started = std::time::Instant::now();
    run(Command::new(&python)
        .args(["-m", "maturin", "build", "--release", "--locked", "--out"])
        .arg(&wheels)
        .current_dir(common::repo_root())
        .env("CARGO_TARGET_DIR", target_dir()));
    eprintln!("wheel built in {:.1} s", started.elapsed().as_secs_f64());
    let built: Vec<PathBuf> = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(built.len(), 1, "one wheel expected: {built:?}");
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv));
    let started = std::time::Instant::now();
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "--only-binary=:all:",
        ])
        .arg(&built[0]));
    eprintln!(
        "wheel and onnxruntime installed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Installed { venv, work, home }
}

/// `program` with an environment holding only a system PATH, an empty HOME (no ~/.local) and
/// the locale, run in a folder with no `.venv` above it.
fn scrubbed(program: &Path, installed: &Installed) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &installed.home)
        .env("LANG", "C.UTF-8")
        .current_dir(&installed.work);
    cmd
}

#[test]
fn installed_binary_finds_its_own_onnxruntime() {
    let installed = installed();
    let out = run(scrubbed(&installed.venv.join("bin/skrr-onnx"), installed).arg("doctor"));
    let text = String::from_utf8_lossy(&out.stdout);
    let venv = installed.venv.canonicalize().unwrap();
    assert!(
        text.contains(&format!(
            "found via: python environment of this executable ({})",
            venv.display()
        )),
        "{text}"
    );
    let library = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("library:"))
        .unwrap_or_else(|| panic!("no library line: {text}"))
        .trim();
    assert!(
        Path::new(library).starts_with(venv.join("lib"))
            && library.contains("/site-packages/onnxruntime/capi/libonnxruntime.so"),
        "{library}"
    );
}

#[test]
fn installed_binary_runs_the_main_job() {
    let installed = installed();
    let output = installed.work.join("cli-pruned.onnx");
    let out = run(scrubbed(&installed.venv.join("bin/skrr-onnx"), installed)
        .arg(common::fixtures().join("t5_gated/model.onnx"))
        .arg(&output)
        .args([
            "--sparsity",
            "0.25",
            "--min-cos",
            "0.7",
            "--num-prompts",
            "16",
        ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().last().unwrap().starts_with("PASSED"), "{text}");
    assert!(output.is_file());
}

#[test]
fn python_api_from_the_wheel() {
    let installed = installed();
    run(scrubbed(&installed.venv.join("bin/python"), installed)
        .arg(common::repo_root().join("tests/py/wheel_api.py"))
        .arg("--venv")
        .arg(&installed.venv)
        .arg("--fixture")
        .arg(common::fixtures().join("t5_gated/model.onnx"))
        .arg("--work")
        .arg(&installed.work));
}

/// How clap reads an argument, in the Python API's words (`skrr_onnx._interface`).
fn form(arg: &clap::Arg) -> &'static str {
    match arg.get_action() {
        clap::ArgAction::SetTrue => "flag",
        clap::ArgAction::Count => "count",
        _ if arg.get_value_delimiter().is_some() => "list",
        clap::ArgAction::Append => "repeated",
        _ if arg.get_num_args().is_some_and(|n| n.min_values() == 0) => "optional",
        _ => "value",
    }
}

/// A command's positional argument ids in order and its long flags with their forms, as the
/// Python API names them (`-` as `_`), without those the API sets itself or has no use for.
fn clap_interface(cmd: &clap::Command) -> (Vec<String>, BTreeMap<String, &'static str>) {
    let positionals = cmd
        .get_positionals()
        .map(|a| a.get_id().to_string())
        .collect();
    let flags = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?, form(a))))
        .filter(|(long, _)| !["help", "version", "json"].contains(long))
        .map(|(long, f)| (long.replace('-', "_"), f))
        .collect();
    (positionals, flags)
}

/// Every command of the binary has a Python function taking exactly its arguments, each
/// written on the command line in the form clap reads it. Runs the package from the source tree.
#[test]
fn python_api_takes_every_flag_of_the_binary() {
    let out = run(Command::new(common::python())
        .args([
            "-c",
            "import json, skrr_onnx; print(json.dumps(skrr_onnx._interface()))",
        ])
        .env("PYTHONPATH", common::repo_root().join("python")));
    let python: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut cli = skrr_onnx::cli::Cli::command();
    cli.build();
    let mut commands: Vec<(Option<String>, &clap::Command)> = vec![(None, &cli)];
    commands.extend(
        cli.get_subcommands()
            .filter(|c| c.get_name() != "help")
            .map(|c| (Some(c.get_name().to_string()), c)),
    );
    assert_eq!(python.len(), commands.len(), "one function per command");
    for (name, cmd) in commands {
        let (function, api) = python
            .iter()
            .find(|(_, f)| f["command"].as_str() == name.as_deref())
            .unwrap_or_else(|| panic!("no Python function runs the command {name:?}"));
        let (positionals, flags) = clap_interface(cmd);
        let api_positionals: Vec<String> =
            serde_json::from_value(api["positionals"].clone()).unwrap();
        assert_eq!(api_positionals, positionals, "{function}(): positionals");
        let mut api_flags: BTreeMap<String, String> =
            serde_json::from_value(api["options"].clone()).unwrap();
        for p in api["flags"].as_array().unwrap() {
            api_flags.insert(p.as_str().unwrap().to_string(), "value".into());
        }
        let flags: BTreeMap<String, String> =
            flags.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        assert_eq!(
            api_flags,
            flags,
            "{function}(): its keywords (left) and the forms skrr_onnx writes them in must be \
             the flags of `skrr-onnx {}` (right); update python/skrr_onnx/__init__.py",
            name.as_deref().unwrap_or("IN OUT")
        );
    }
}
