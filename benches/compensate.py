#!/usr/bin/env python3
"""docs/benchmarks.md, "Linear compensation": held-out D of Skrr, FinerCut and ShortGPT plans
without and with the output map of `skrr-onnx score --compensate linear`, at equal or higher
*net* sparsity (parameters removed minus the map's d² + d): each compensated plan is searched at
the uncompensated plan's achieved sparsity plus the map's share, so its net sparsity is at least
that plan's.

    .venv/bin/python benches/compensate.py [--model fixtures/minilm/model.onnx]
        [--levels 0.10,0.23,0.30] [--work /tmp/skrr-bench-compensate] [--null-ids 101,102]

Calibration: the first 64 even lines of the built-in prompt set; held out: the first 64 odd
lines (disjoint), tokenized with the model's tokenizer.json, as benches/search.sh does. Prints a Markdown table and writes it as JSON beside.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "skrr-onnx"


def tokenize(model: Path, work: Path) -> tuple[Path, Path]:
    tok = Tokenizer.from_file(str(model.parent / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(77)
    lines = [l.strip() for l in (ROOT / "src/calibrate/prompts.txt").read_text().splitlines() if l.strip()]
    paths = []
    for name, part in (("calib", lines[0::2][:64]), ("heldout", lines[1::2][:64])):
        path = work / f"{name}.jsonl"
        path.write_text("".join(json.dumps(tok.encode(p).ids) + "\n" for p in part))
        paths.append(path)
    return paths[0], paths[1]


def run(*args: str) -> dict:
    out = subprocess.run([str(BIN), "--json", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "fixtures/minilm/model.onnx")
    ap.add_argument("--levels", default="0.10,0.23,0.30")
    ap.add_argument("--work", type=Path, default=Path("/tmp/skrr-bench-compensate"))
    ap.add_argument("--null-ids", default="101,102", help="'' for the tokenizer's empty prompt")
    ap.add_argument("--methods", default="skrr,finercut,shortgpt")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    calib, heldout = tokenize(args.model, args.work)
    # An empty --null-ids leaves the null input to the tool (the empty prompt, tokenized).
    common = ["--calib", str(calib)] + (["--null-ids", args.null_ids] if args.null_ids else [])
    total = run("inspect", str(args.model))["total_params"]
    rows = []
    for level in [float(x) for x in args.levels.split(",")]:
        for method in args.methods.split(","):
            for comp in (False, True):
                plan = args.work / f"{method}_{level}_{int(comp)}.json"
                # With the map, at least the net sparsity the same method reached without it:
                # its achieved sparsity plus the map's d² + d (known from that row's fit).
                target = rows[-1]["achieved"] + rows[-1]["params_added"] / total if comp else level
                run("plan", str(args.model), "-o", str(plan), "--sparsity", f"{target:.6f}",
                    "--method", method, *common)
                p = json.loads(plan.read_text())
                score = ["score", str(args.model), "--plan", str(plan), *common,
                         "--compensate", "linear", "--heldout", str(heldout)]
                s = run(*score)
                c = s["compensation"]
                added = c["fit"]["params_added"] if comp else 0
                rows.append({
                    "level": level, "method": method, "compensated": comp,
                    "achieved": p["achieved_sparsity"],
                    "net_sparsity": (p["params_removed"] - added) / total,
                    "params_added": c["fit"]["params_added"],
                    "heldout_d": c["held_out"]["d_with"] if comp else c["held_out"]["d_without"],
                    "calib_d": c["fit"]["d_after"] if comp else c["fit"]["d_before"],
                    "ridge": c["fit"]["ridge"], "fit_seconds": c["fit"]["seconds"],
                    "skip_order": p.get("skip_order"),
                })
                r = rows[-1]
                print(f"{level:.2f} {method:9s} comp={int(comp)} net {r['net_sparsity']:.4f} "
                      f"held-out D {r['heldout_d']:.5f} (fit {r['fit_seconds']:.2f} s)", file=sys.stderr, flush=True)
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    print("| level | method | net sparsity | held-out D | + output map: net sparsity | held-out D | change |")
    print("|---|---|---|---|---|---|---|")
    for plain, comp in zip(rows[0::2], rows[1::2]):
        change = 100 * (comp["heldout_d"] / plain["heldout_d"] - 1)
        print(f"| {plain['level']:.2f} | {plain['method']} | {plain['net_sparsity']:.4f} | {plain['heldout_d']:.5f} "
              f"| {comp['net_sparsity']:.4f} | **{comp['heldout_d']:.5f}** | {change:+.1f}% |")


if __name__ == "__main__":
    main()
