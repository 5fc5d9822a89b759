//! The hostile-input corpus (tests/corpus/generate.py, generated into a temporary folder at test
//! time): every case must end with the error contract of docs/reliability.md —
//! 1. one `error: ...` line on stderr naming the file or tensor (the case's needles), no panic;
//! 2. the documented exit code;
//! 3. no output left behind: the output folder is still empty (no temporary file either) and
//!    the case's own folder has exactly the entries it had;
//! 4. every input byte-identical (sha256 of each file before and after).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest any case may run: a hang on hostile input is a failure too.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Generates the corpus into a fresh temporary folder and returns it with its manifest.
fn corpus() -> (tempfile::TempDir, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let script = repo_root().join("tests/corpus/generate.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(dir.path())
        .arg("--fixtures")
        .arg(fixtures())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (set SKRR_PYTHON): {e}", python()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "skrr-hostile/1");
    let cases = manifest["cases"].as_array().unwrap().clone();
    (dir, cases)
}

/// Every regular file and symlink under `path` (or `path` itself), with its content hash
/// (symlinks: their target, not followed).
fn snapshot(path: &Path, into: &mut BTreeMap<PathBuf, String>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_symlink() {
        let target = std::fs::read_link(path).unwrap();
        into.insert(path.to_path_buf(), format!("-> {}", target.display()));
    } else if meta.is_dir() {
        into.insert(path.to_path_buf(), "dir".into());
        for e in std::fs::read_dir(path).unwrap() {
            snapshot(&e.unwrap().path(), into);
        }
    } else {
        let bytes = std::fs::read(path).unwrap();
        into.insert(path.to_path_buf(), hex::encode(Sha256::digest(bytes)));
    }
}

/// Runs `cmd` to completion with a timeout; returns (exit code, stderr, elapsed).
fn run_with_timeout(mut cmd: Command) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the binary");
    // Drain the pipes in threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut s).ok();
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > CASE_TIMEOUT {
            child.kill().ok();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    out_t.join().unwrap();
    let err = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    (status.code(), err, start.elapsed())
}

/// The subcommands `--help` lists (the first word of each indented line under "Commands:").
fn subcommands() -> Vec<String> {
    let help = skrr_ok(["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

struct Case<'a> {
    name: &'a str,
    root: &'a Path,
    dir: PathBuf,
    out: PathBuf,
}

impl Case<'_> {
    fn fill(&self, s: &str) -> String {
        s.replace("{case}", &self.dir.to_string_lossy())
            .replace("{root}", &self.root.to_string_lossy())
            .replace("{out}", &self.out.to_string_lossy())
    }
}

/// Runs one case and returns what broke the contract, if anything.
fn check_case(c: &Value, root: &Path, scratch: &Path) -> Result<(), String> {
    let name = c["name"].as_str().unwrap();
    let case = Case {
        name,
        root,
        dir: root.join(c["dir"].as_str().unwrap()),
        out: scratch.join(format!("{name}.out")),
    };
    std::fs::create_dir_all(&case.out).unwrap();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| case.fill(s.as_str().unwrap()))
            .collect()
    };
    let args = strs(&c["args"]);
    let needles = strs(&c["needles"]);
    let code = c["exit"].as_i64().unwrap() as i32;

    let mut before = BTreeMap::new();
    snapshot(&case.dir, &mut before);
    for p in strs(&c["inputs"]) {
        snapshot(Path::new(&p), &mut before);
    }

    let mut cmd = if c["isolate"].as_bool().unwrap_or(false) {
        // A copy of the binary in a folder with nothing around it (no .venv above it), run with
        // only the case's variables.
        let home = scratch.join(format!("{name}.home"));
        std::fs::create_dir_all(&home).unwrap();
        let exe = home.join("skrr-onnx");
        std::fs::copy(bin(), &exe).unwrap();
        let mut cmd = Command::new(exe);
        cmd.env_clear().env("HOME", &home).current_dir(&home);
        cmd
    } else {
        let mut cmd = Command::new(bin());
        cmd.env_remove("RUST_LOG");
        cmd
    };
    cmd.args(&args);
    for (k, v) in c["env"].as_object().unwrap() {
        match v.as_str() {
            Some(v) => cmd.env(k, case.fill(v)),
            None => cmd.env_remove(k),
        };
    }
    let (got, stderr, elapsed) = run_with_timeout(cmd);

    let mut broken = Vec::new();
    if elapsed > CASE_TIMEOUT {
        broken.push(format!("timed out after {elapsed:?}"));
    }
    if got != Some(code) {
        broken.push(format!("exit code {got:?}, expected {code}"));
    }
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        broken.push("panicked".into());
    }
    let last = stderr.lines().last().unwrap_or("");
    if !last.starts_with("error: ") {
        broken.push("the last stderr line is not `error: ...`".into());
    }
    if stderr.lines().filter(|l| l.starts_with("error")).count() != 1 {
        broken.push("not exactly one error line".into());
    }
    for n in &needles {
        if !last.contains(n.as_str()) {
            broken.push(format!("the error does not mention `{n}`"));
        }
    }
    let left: Vec<_> = std::fs::read_dir(&case.out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if !left.is_empty() {
        broken.push(format!("left in the output folder: {left:?}"));
    }
    let mut after = BTreeMap::new();
    snapshot(&case.dir, &mut after);
    for p in strs(&c["inputs"]) {
        snapshot(Path::new(&p), &mut after);
    }
    for (p, h) in &before {
        match after.get(p) {
            None => broken.push(format!("{} disappeared", p.display())),
            Some(h2) if h2 != h => broken.push(format!("{} was modified", p.display())),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        broken.push(format!("{} was left behind", p.display()));
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n    {}\n    stderr: {}",
            case.name,
            c["what"].as_str().unwrap_or(""),
            broken.join("; "),
            stderr.trim_end().replace('\n', "\n            ")
        ))
    }
}

#[test]
fn every_hostile_case_fails_cleanly() {
    let (root, cases) = corpus();
    let scratch = tempfile::tempdir().unwrap();
    let commands = subcommands();
    let mut failures = Vec::new();
    for c in &cases {
        let sub = c["args"][0].as_str().unwrap();
        if !sub.starts_with('{') && !sub.starts_with('-') {
            assert!(
                commands.iter().any(|s| s == sub),
                "case {} needs subcommand `{sub}`, which --help does not list",
                c["name"]
            );
        }
        if let Err(e) = check_case(c, root.path(), scratch.path()) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases broke the error contract:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} hostile cases passed", cases.len());
}

/// Declared sizes are checked against the file before anything is allocated: tiny files that
/// declare tensors of 2^40 elements (or a 2^40-byte protobuf field) fail at once under a
/// 256 MB address-space limit, a limit under which the real fixture converts fine.
#[test]
fn huge_declarations_fail_fast_in_small_memory() {
    let (root, cases) = corpus();
    let scratch = tempfile::tempdir().unwrap();
    let limited = |args: &[String]| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("ulimit -v 262144 && exec \"$0\" \"$@\"")
            .arg(bin())
            .args(args)
            .env_remove("RUST_LOG");
        run_with_timeout(cmd)
    };
    let out = scratch.path().join("out.onnx");
    let control = [
        "convert".to_string(),
        fixtures().join("t5_gated/model.onnx").display().to_string(),
        out.display().to_string(),
    ];
    let (code, stderr, _) = limited(&control);
    assert_eq!(
        code,
        Some(0),
        "the control conversion needs more than 256 MB: {stderr}"
    );
    std::fs::remove_file(&out).unwrap();

    let huge: Vec<&Value> = cases
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("huge_") && c["args"][0] == "convert")
        .collect();
    assert!(
        huge.len() >= 3,
        "the corpus lost its huge-declaration cases"
    );
    for c in huge {
        let dir = root.path().join(c["dir"].as_str().unwrap());
        let input = dir.join("model.onnx");
        assert!(std::fs::metadata(&input).unwrap().len() < 1024);
        let args = [
            "convert".to_string(),
            input.display().to_string(),
            out.display().to_string(),
        ];
        let (code, stderr, elapsed) = limited(&args);
        assert_eq!(code, Some(3), "{}: {stderr}", c["name"]);
        assert!(stderr.starts_with("error: "), "{}: {stderr}", c["name"]);
        assert!(
            elapsed < Duration::from_secs(5),
            "{}: took {elapsed:?}",
            c["name"]
        );
        assert!(!out.exists());
    }
}
