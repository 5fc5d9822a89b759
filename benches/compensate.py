#!/usr/bin/env python3
"""docs/benchmarks.md, "Linear compensation": held-out D, D_c and token cosine of Skrr, FinerCut and
ShortGPT plans without compensation, with the output map (`skrr-onnx plan --compensate linear`,
which searches at the level plus the map's share, so every row meets the level *net* of the
map's d² + d parameters), with zero-parameter folds (`--compensate merged`), and of Skrr ranking
candidates by their compensated D (`--rank compensated`). Held-out figures come from `skrr-onnx
score --compensate linear|merged --heldout`.

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
    # (method, --compensate, --rank): each method alone and with the output map; Skrr also
    # ranking candidates by their compensated D.
    variants = []
    for method in args.methods.split(","):
        variants += [(method, "none", "plain"), (method, "linear", "plain"),
                     (method, "merged", "plain")]
        if method == "skrr":
            variants.append((method, "linear", "compensated"))
    rows = []
    for level in [float(x) for x in args.levels.split(",")]:
        for method, comp, rank in variants:
            plan = args.work / f"{method}_{level}_{comp}_{rank}.json"
            # With the map, the tool itself searches at the level plus the map's share, so
            # every row meets the level net of what the map adds.
            out = run("plan", str(args.model), "-o", str(plan), "--sparsity", f"{level}",
                      "--method", method, "--compensate", comp,
                      *(["--rank", rank] if method == "skrr" else []), *common)
            p = json.loads(plan.read_text())
            s = run("score", str(args.model), "--plan", str(plan), *common,
                    "--compensate", "merged" if comp == "merged" else "linear",
                    "--heldout", str(heldout))
            c = s["compensation"]
            h = c["held_out"]
            mapped = comp != "none"
            if mapped:
                # The compensation score refits is the plan's own (the fit is deterministic).
                assert p["compensation"]["discrepancy"] == c["fit"]["d_after"], plan
            added = p.get("params_added", 0)
            rows.append({
                "level": level, "method": method, "compensate": comp, "rank": rank,
                "achieved": p["achieved_sparsity"],
                "net_sparsity": (p["params_removed"] - added) / total,
                "heldout_d": h["d_with"] if mapped else h["d_without"],
                "heldout_cos": h["cos_with"] if mapped else h["cos_without"],
                "heldout_d_c": h["d_c_with"] if mapped else h["d_c_without"],
                "calib_d": c["fit"]["d_after"] if mapped else c["fit"]["d_before"],
                "search_seconds": (out.get("search") or {}).get("seconds"),
                "fit_seconds": c["fit"]["seconds"] if mapped else None,
                "skip_order": p.get("skip_order"),
            })
            r = rows[-1]
            print(f"{level:.2f} {method:9s} {comp:6s} {rank:11s} net {r['net_sparsity']:.4f} "
                  f"held-out D {r['heldout_d']:.5f} cos {r['heldout_cos']:.4f}", file=sys.stderr, flush=True)
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    print("| level | method | compensation | net sparsity | held-out D | vs skrr | held-out D_c | vs skrr | token cosine | search s | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["level"] == r["level"] and b["method"] == "skrr"
                    and b["compensate"] == "none")
        change = 100 * (r["heldout_d"] / base["heldout_d"] - 1)
        change_c = 100 * (r["heldout_d_c"] / base["heldout_d_c"] - 1)
        label = {"none": "-", "linear": "output map", "merged": "merged folds"}[r["compensate"]]
        if r["rank"] == "compensated":
            label += ", ranked compensated"
        search = f"{r['search_seconds']:.1f}" if r["search_seconds"] is not None else "-"
        fit = f"{r['fit_seconds']:.2f}" if r["fit_seconds"] is not None else "-"
        print(f"| {r['level']:.2f} | {r['method']} | {label} | {r['net_sparsity']:.4f} | {r['heldout_d']:.5f} "
              f"| {change:+.1f}% | {r['heldout_d_c']:.5f} | {change_c:+.1f}% | {r['heldout_cos']:.4f} | {search} | {fit} |")


if __name__ == "__main__":
    main()
