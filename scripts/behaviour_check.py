#!/usr/bin/env python3
"""Behaviour unchanged by a refactor: the main job's output file, plan file and `--json` report,
and `inspect --json`, byte-identical between two builds on every fixture (issue #14).

    .venv/bin/python scripts/behaviour_check.py BASE_REV [--fixtures a,b,...] [--keep DIR]
        [--base-bin FILE]

Builds BASE_REV in a temporary git worktree and the working tree as it is (both in release mode,
sharing `target/`'s dependencies), then runs each binary on every fixture under `fixtures/` and
`fixtures/derived/` (MiniLM too once `fixtures/minilm_weights.py --all` rebuilt its weights) with
a few option sets, each run in its own folder with the same relative output paths, so that every
path in a report is the same string. Compared: exit code, stdout with timing fields removed
(`seconds`, `*_seconds`, `elapsed*`, ...), the last stderr line (a refusal's message), and every
file the run wrote. Prints one line per difference and exits 1 if there was any.

Needs SKRR_PYTHON / ORT_DYLIB_PATH as `eval "$(bash scripts/setup.sh)"` sets them.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Option sets for the main job: Skrr (skips and re-uses) and merged compensation, on 16 prompts
# to keep ~70 fixtures within minutes. A loose --min-cos, since most fixtures have random weights
# (the verdict is compared, not judged).
MAIN_JOBS = {
    "skrr": ["--sparsity", "0.3", "--num-prompts", "16", "--min-cos", "0"],
    "merged": [
        "--sparsity", "0.3", "--compensate", "merged", "--num-prompts", "16", "--min-cos", "0",
    ],
}

TIMING_KEY = re.compile(r"(^|_)(seconds|secs|elapsed|ms|millis|time)($|_)")
TIMING_TEXT = re.compile(r"in [0-9]+(\.[0-9]+)? s\b")


def strip_timing(value):
    """The JSON with every timing field removed, recursively."""
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if not TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [strip_timing(v) for v in value]
    if isinstance(value, str):
        # The verdict line ends with the run's wall time ("... in 3.1 s").
        return TIMING_TEXT.sub("in <t> s", value)
    return value


def normalized_stdout(text, run_dir: Path):
    """`text` as JSON without timings, with the run's folder (absolute paths of what the run
    wrote) replaced by a placeholder; plain text as it is."""
    text = text.replace(str(run_dir), "<run>")
    try:
        return json.dumps(strip_timing(json.loads(text)), sort_keys=True)
    except json.JSONDecodeError:
        return text


def build(source: Path, target: Path, keep_as: Path) -> Path:
    """Builds `source` and copies its binary to `keep_as`: both trees build in one target folder
    (dependencies compiled once), where the second build replaces the first one's binary."""
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--quiet"], cwd=source, env=env, check=True
    )
    keep_as.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(target / "release" / "skrr-onnx", keep_as)
    return keep_as


def fixtures(only):
    models = sorted(ROOT.glob("fixtures/*/model.onnx")) + sorted(
        ROOT.glob("fixtures/derived/*/model.onnx")
    )
    out = []
    for m in models:
        name = str(m.parent.relative_to(ROOT / "fixtures"))
        if only and name not in only:
            continue
        # MiniLM's committed graphs read weights rebuilt at test time; skip them when absent.
        if m.parent.name.startswith("minilm") and not (m.parent / "model.onnx.data").exists():
            continue
        out.append((name, m))
    return out


def run(binary: Path, args, cwd: Path):
    (cwd / "out").mkdir(parents=True, exist_ok=True)
    p = subprocess.run([str(binary), *args], cwd=cwd, capture_output=True, text=True)
    files = {}
    for f in sorted(cwd.rglob("*")):
        if f.is_file():
            files[str(f.relative_to(cwd))] = hashlib.sha256(f.read_bytes()).hexdigest()
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    return {
        "code": p.returncode,
        "stdout": normalized_stdout(p.stdout, cwd),
        "error": last if last.startswith("error:") else "",
        "files": files,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the git revision to compare with (e.g. main before a refactor)")
    ap.add_argument("--fixtures", help="comma-separated fixture names (default: all)")
    ap.add_argument("--keep", type=Path, help="keep the runs' folders here")
    ap.add_argument(
        "--base-bin", type=Path, help="BASE_REV's binary, built before (skips building it)"
    )
    a = ap.parse_args()
    only = set(a.fixtures.split(",")) if a.fixtures else None

    work = Path(a.keep or tempfile.mkdtemp(prefix="skrr-behaviour-"))
    work.mkdir(parents=True, exist_ok=True)
    base_src = work / "base-src"
    if not a.base_bin:
        if base_src.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(base_src)], cwd=ROOT)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base_src), a.base],
            cwd=ROOT, check=True, capture_output=True,
        )
    try:
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        binaries = {
            "base": a.base_bin or build(base_src, target, work / "bin" / "base"),
            "head": build(ROOT, target, work / "bin" / "head"),
        }
        differences = 0
        checked = 0
        for name, model in fixtures(only):
            jobs = {"inspect": ["inspect", str(model), "--json"]}
            for job, opts in MAIN_JOBS.items():
                jobs[job] = [
                    str(model), "out/model.onnx", *opts, "--json",
                    "--plan-out", "out/plan.json", "--report", "out/report.json",
                ]
            for job, args in jobs.items():
                results = {}
                for side, binary in binaries.items():
                    d = work / side / name.replace("/", "_") / job
                    shutil.rmtree(d, ignore_errors=True)
                    results[side] = run(binary, args, d)
                base, head = results["base"], results["head"]
                # The --report file holds timings too: compare it without them.
                for side, r in results.items():
                    rep = work / side / name.replace("/", "_") / job / "out/report.json"
                    if rep.exists():
                        r["files"]["out/report.json"] = normalized_stdout(
                            rep.read_text(), rep.parent.parent
                        )
                checked += 1
                for key in ("code", "error", "stdout", "files"):
                    if base[key] != head[key]:
                        differences += 1
                        detail = ""
                        if key == "files":
                            keys = set(base["files"]) | set(head["files"])
                            detail = " " + ", ".join(
                                sorted(k for k in keys if base["files"].get(k) != head["files"].get(k))
                            )
                        print(f"DIFF {name} {job}: {key}{detail}")
                status = "exit %d" % head["code"]
                print(f"ok   {name} {job} ({status})" if base == head else f"     {name} {job} ({status})")
        print(f"{checked} runs compared, {differences} differences (base {a.base}, head = working tree)")
        return 1 if differences else 0
    finally:
        if base_src.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(base_src)], cwd=ROOT)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
