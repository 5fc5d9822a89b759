#!/usr/bin/env python3
"""Issue #13, placement (a) "merged" (ReplaceMe, arXiv 2505.02819): an independent PyTorch (f64)
reference on the real all-MiniLM-L6-v2 that measures held-out D and token cosine of Skrr plans
without compensation, with a zero-parameter linear map folded into the output projection of the
last kept sub-block before each run of skipped sub-blocks, with the output map of placement (b)
(`src/compensate.rs`, re-implemented here as a cross-check), and with both.

    .venv/bin/python benches/compensate_merged.py [--levels 0.10,0.23,0.30]
        [--work /tmp/skrr-bench-merged] [--variants naive,lnaffine,lninv,refit,naive+aff] [--iters 3]
        [--select stream|final]
        [--no-product]

Prompts as benches/compensate.py (it is imported): calibration = the first 64 even lines of
src/calibrate/prompts.txt, held out = the first 64 odd lines, tokenizer.json, truncation 77, plus
the null input ids 101,102. D = D_c + D_null exactly as the engine weighs them (every prompt token
by 1 / (prompt tokens x d), every null token by 1 / (null tokens x d)); cosine = mean over the
prompts' tokens (not the null input's). Plans come from `target/release/skrr-onnx plan` (run with
ONNX Runtime set up: `eval "$(bash scripts/setup.sh)"; export SKRR_PYTHON ORT_DYLIB_PATH`): for
each level, the plan searched at the level ("P0") and the plan searched at its achieved sparsity
plus the output map's share ("P1", where the product measured (b)).

MiniLM is post-LayerNorm: a sub-block is h' = LN(h + B), B = u W + b (u = gelu(h W_in + b_in) for
the feed-forward, the attention context for the attention). A map folded into (W, b) acts on B,
before the residual add and the LayerNorm: B' = B T + c, i.e. W' = W T, b' = b T + c (zero added
parameters). For a run of skipped sub-blocks p+1..e after the kept sub-block p the dense target is
L, the dense stream after e. Variants (all fitted in f64, sequentially run after run on the
compensated model's stream, weights as D's, ridge chosen on every 4th calibration prompt held out
by the post-LN stream error vs L, shrinking towards the unchanged sub-block):
  naive    ReplaceMe literally: h + B T + c ~ L (the LN input is fitted to the post-LN target).
  lnaffine only LN_p's affine re-fitted per channel: L ~ a*LN_p(z) + c, folded into gamma/beta.
  lninv    L mapped back through LN_p: t = mu(z) + sigma(z) * (L - beta)/gamma (z = the current
           LN input, so its mean and scale are kept), h + B T + c ~ t with token weights
           1/sigma(z)^2 (the LN's local gain); refitted --iters times (mu, sigma move with T).
  refit    as lninv but regresses on u: W' and b' re-fitted whole (k x d, still zero added).
  lninv+aff / refit+aff: lninv / refit then lnaffine on the same sub-block.
A run preceded by an attention sub-block (here every run that starts at sub-block 1) is folded
into that attention's output projection, the same algebra. A run at the start of the model would
have no sub-block to fold into (none occurs here; it is skipped with a note).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
sys.path.insert(0, str(ROOT / "fixtures"))
import compensate as cb  # noqa: E402  (tokenize, run: the product's own bench helpers)
import minilm_weights  # noqa: E402

torch.set_default_dtype(torch.float64)
RIDGES = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
EPS = 1e-12
LAYERS, HEADS = 6, 12


def ln(z, g, b):
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    return (z - mu) / torch.sqrt(var + EPS) * g + b


class Model:
    """all-MiniLM-L6-v2 (BertModel) in f64, as separate sub-blocks with overridable (W, b, g, beta)."""

    def __init__(self):
        t = minilm_weights.read_safetensors(minilm_weights.package_safetensors())
        T = lambda k: torch.from_numpy(np.array(t[k], dtype=np.float64))  # noqa: E731
        self.word, self.pos, self.typ = T("embeddings.word_embeddings.weight"), T(
            "embeddings.position_embeddings.weight"), T("embeddings.token_type_embeddings.weight")
        self.eg, self.eb = T("embeddings.LayerNorm.weight"), T("embeddings.LayerNorm.bias")
        self.sub = []
        for l in range(LAYERS):
            e = f"encoder.layer.{l}."
            self.sub.append(dict(
                kind="attention",
                q=(T(e + "attention.self.query.weight").T, T(e + "attention.self.query.bias")),
                k=(T(e + "attention.self.key.weight").T, T(e + "attention.self.key.bias")),
                v=(T(e + "attention.self.value.weight").T, T(e + "attention.self.value.bias")),
                W=T(e + "attention.output.dense.weight").T, b=T(e + "attention.output.dense.bias"),
                g=T(e + "attention.output.LayerNorm.weight"), beta=T(e + "attention.output.LayerNorm.bias")))
            self.sub.append(dict(
                kind="ffn", i=(T(e + "intermediate.dense.weight").T, T(e + "intermediate.dense.bias")),
                W=T(e + "output.dense.weight").T, b=T(e + "output.dense.bias"),
                g=T(e + "output.LayerNorm.weight"), beta=T(e + "output.LayerNorm.bias")))

    def params(self, p, ov):
        s = dict(self.sub[p])
        s.update(ov.get(p, {}))
        return s

    def embed(self, ids):
        n = ids.shape[1]
        return ln(self.word[ids] + self.pos[:n][None] + self.typ[0], self.eg, self.eb)

    def branch(self, p, h, addmask, ov):
        """(u, B): the activation the output projection consumes and the branch output."""
        s = self.params(p, ov)
        if s["kind"] == "attention":
            B_, S, d = h.shape
            dh = d // HEADS
            split = lambda w: (h @ w[0] + w[1]).view(B_, S, HEADS, dh).transpose(1, 2)  # noqa: E731
            q, k, v = split(s["q"]), split(s["k"]), split(s["v"])
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + addmask, -1)
            u = (a @ v).transpose(1, 2).reshape(B_, S, d)
        else:
            x = h @ s["i"][0] + s["i"][1]
            u = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
        return u, u @ s["W"] + s["b"]

    def forward(self, batch, skip, ov, stop=2 * LAYERS, states=False):
        """The stream into sub-block `stop` (the output at 12); with states, every sub-block's output."""
        h = self.embed(batch.ids)
        out = []
        for p in range(stop):
            if p not in skip:
                s = self.params(p, ov)
                h = ln(h + self.branch(p, h, batch.addmask, ov)[1], s["g"], s["beta"])
            out.append(h)
        return out if states else h


class Batch:
    """Prompts (+ the null input) padded into one batch; per valid token its D weight and prompt."""

    def __init__(self, prompts, null, d):
        seqs = prompts + [null]
        n = max(map(len, seqs))
        self.ids = torch.zeros(len(seqs), n, dtype=torch.long)
        mask = torch.zeros(len(seqs), n, dtype=torch.bool)
        for r, s in enumerate(seqs):
            self.ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = True
        self.mask = mask
        self.addmask = torch.where(mask, 0.0, -1e30)[:, None, None, :]
        ntok = sum(map(len, prompts))
        w, pid = [], []
        for r, s in enumerate(seqs):
            null_row = r == len(prompts)
            w += [1.0 / ((len(null) if null_row else ntok) * d)] * len(s)
            pid += [-1 if null_row else r] * len(s)
        self.w, self.pid = torch.tensor(w), torch.tensor(pid)

    def flat(self, x):
        return x[self.mask]


def wls(X, Y, w, lam, prior):
    """argmin_Θ Σ w |Y − [X,1] Θ|² + lam |Θ_rows − prior_rows|² (the bias row is not shrunk)."""
    Xt = torch.cat([X, torch.ones(len(X), 1)], 1)
    A = (Xt * w[:, None]).T @ Xt
    Bm = (Xt * w[:, None]).T @ Y
    D = torch.ones(Xt.shape[1])
    D[-1] = 0
    A = A + lam * torch.diag(D)
    Bm = Bm + lam * D[:, None] * prior
    return torch.linalg.solve(A, Bm)


def energy(X, w):
    return float(((X ** 2) * w[:, None]).sum(0).mean())


def select(fit_at, err_of, scale, train, held):
    """Ridge relative to `scale`, chosen on the held-out tokens (ties: the larger); then refit on all."""
    best = None
    for r in RIDGES:
        try:
            e = err_of(fit_at(r * scale, train), held)
        except RuntimeError:
            continue
        if best is None or e <= best[1]:
            best = (r, e)
    r = best[0] if best else 1e-3
    return r, fit_at(r * scale, torch.ones_like(train))


def fit_run(model, batch, skip, ov, p, L, variant, iters, select_by="stream", target=None):
    """Returns the override of sub-block p that compensates the run ending in L (flattened dense).
    select_by "final": the ridge is chosen by the held-out calibration prompts' error on the model's
    final output (`target`, the dense one) with the candidate in place, instead of on the stream."""
    s = model.params(p, ov)
    h = model.forward(batch, skip, ov, stop=p)
    u, B = (batch.flat(t) for t in model.branch(p, h, batch.addmask, ov))
    x, w, pid = batch.flat(h), batch.w, batch.pid
    held = (pid >= 0) & (pid % 4 == 3)
    train = ~held
    d = x.shape[1]
    W0, b0 = s["W"], s["b"]

    def post_err(g, beta):
        return lambda z, m: float((w[m][:, None] * (ln(z[m], g, beta) - L[m]) ** 2).sum())

    def final_err(o):
        y = batch.flat(model.forward(batch, skip, {**ov, p: {**ov.get(p, {}), **o}}))
        return float((w[held][:, None] * (y[held] - target[held]) ** 2).sum())

    def affine(g, beta, z, base={}):
        hh = ln(z, g, beta)
        n = hh  # per channel: L_j ~ a_j hh_j + c_j, ridge towards a = 1, c = 0

        def fit_at(lam, m):
            ww = w[m][:, None]
            xm, ym = n[m], L[m]
            sx, sy = (ww * xm).sum(0), (ww * ym).sum(0)
            sxx, sxy, s0 = (ww * xm * xm).sum(0) + lam, (ww * xm * ym).sum(0) + lam, ww.sum()
            a = (s0 * sxy - sx * sy) / (s0 * sxx - sx * sx)
            c = (sy - a * sx) / s0
            return a, c

        def err_of(ac, m):
            a, c = ac
            if select_by == "final":
                return final_err(dict(base, g=g * a, beta=beta * a + c))
            return float((w[m][:, None] * (a * n[m] + c - L[m]) ** 2).sum())

        r, (a, c) = select(fit_at, err_of, energy(n, w), train, held)
        return dict(g=g * a, beta=beta * a + c), r

    g, beta = s["g"], s["beta"]
    if variant == "lnaffine":
        o, r = affine(g, beta, x + B)
        return o, [r]
    ridges = []
    W, b = W0, b0
    for it in range(1 if variant.startswith("naive") else iters):
        # the current branch output (for T on B: B' = B T + c with T, c folded into W, b)
        cur = u @ W + b
        z = x + cur
        if variant.startswith("naive"):
            tgt, tw = L, w
        else:
            mu = z.mean(-1, keepdim=True)
            sd = torch.sqrt(((z - mu) ** 2).mean(-1, keepdim=True) + EPS)
            tgt = mu + sd * (L - beta) / g
            tw = w / sd[:, 0] ** 2
        R = tgt - x
        if variant.startswith("refit"):
            X, prior = u, torch.cat([W0, b0[None]], 0)
        else:
            X, prior = B, torch.cat([torch.eye(d), torch.zeros(1, d)], 0)

        def fit_at(lam, m, X=X, R=R, tw=tw, prior=prior):
            return wls(X[m], R[m], tw[m], lam, prior)

        def err_of(th, m, X=X):
            if select_by == "final":
                if variant.startswith("refit"):
                    return final_err(dict(W=th[:-1], b=th[-1]))
                return final_err(dict(W=W0 @ th[:-1], b=b0 @ th[:-1] + th[-1]))
            return post_err(g, beta)(x + X @ th[:-1] + th[-1], m)

        r, th = select(fit_at, err_of, energy(X, w), train, held)
        ridges.append(r)
        if variant.startswith("refit"):
            W, b = th[:-1], th[-1]
        else:
            W, b = W0 @ th[:-1], b0 @ th[:-1] + th[-1]
    o = dict(W=W, b=b)
    if variant.endswith("+aff"):
        a, r = affine(g, beta, x + u @ W + b, dict(W=W, b=b))
        o.update(a)
        ridges.append(r)
    return o, ridges


def runs_of(skip):
    """Maximal runs of consecutive skipped sub-blocks, as (first, last)."""
    out, cur = [], None
    for p in range(2 * LAYERS):
        if p in skip:
            cur = (cur[0], p) if cur and cur[1] == p - 1 else (p, p)
            if not out or out[-1][0] != cur[0]:
                out.append(cur)
            else:
                out[-1] = cur
    return out


def fit_merged(model, batch, skip, dense_states, variant, iters, select_by="stream"):
    ov, info = {}, []
    for first, last in runs_of(skip):
        p = first - 1
        if p < 0:
            info.append(f"run {first}-{last}: at the start, nothing to fold into (left uncompensated)")
            continue
        L = batch.flat(dense_states[last])
        o, r = fit_run(model, batch, skip, ov, p, L, variant, iters, select_by, batch.flat(dense_states[-1]))
        ov[p] = o
        info.append(f"run {first}-{last} -> sub-block {p} ({model.sub[p]['kind']}), ridge {r}")
    return ov, info


def fit_output(y, t, batch, force_ridge=None):
    """Placement (b), as src/compensate.rs: y ~ x W + b on the final output, D's weights, ridge
    towards 0 relative to the mean channel energy, chosen on every 4th calibration prompt."""
    x, yt, w, pid = batch.flat(y), batch.flat(t), batch.w, batch.pid
    held = (pid >= 0) & (pid % 4 == 3)
    prior = torch.zeros(x.shape[1] + 1, x.shape[1])
    fit_at = lambda lam, m: wls(x[m], yt[m], w[m], lam, prior)  # noqa: E731
    err_of = lambda th, m: float((w[m][:, None] * (x[m] @ th[:-1] + th[-1] - yt[m]) ** 2).sum())  # noqa: E731
    if force_ridge is not None:
        return force_ridge, fit_at(force_ridge * energy(x, w), torch.ones_like(held))
    # src/compensate.rs scales by the train part's energy for the selection and by all for the final fit.
    best = None
    for r in RIDGES:
        e = err_of(fit_at(r * energy(x[~held], w[~held]), ~held), held)
        if best is None or e <= best[1]:
            best = (r, e)
    return best[0], fit_at(best[0] * energy(x, w), torch.ones_like(held))


def measure(y, t, batch, th=None):
    if th is not None:
        y = y @ th[:-1] + th[-1]
    y, t, w = batch.flat(y), batch.flat(t), batch.w
    e = (w[:, None] * (y - t) ** 2).sum(1)
    cos = torch.nn.functional.cosine_similarity(y, t, dim=-1)[batch.pid >= 0].mean()
    measure.d_null = float(e[batch.pid < 0].sum())
    return float(e.sum()), float(cos)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "fixtures/minilm/model.onnx")
    ap.add_argument("--levels", default="0.10,0.23,0.30")
    ap.add_argument("--work", type=Path, default=Path("/tmp/skrr-bench-merged"))
    ap.add_argument("--variants", default="naive,lnaffine,lninv,refit,naive+aff")
    ap.add_argument("--iters", type=int, default=3, help="refits of lninv/refit (mu, sigma of the LN input move)")
    ap.add_argument("--select", choices=["stream", "final"], default="stream",
                    help="(a)'s ridge by the stream error after the run, or by the final output's D")
    ap.add_argument("--no-product", action="store_true", help="skip `skrr-onnx score` (the product's own D)")
    ap.add_argument("--check-ort", action="store_true", help="compare the dense f64 output with ONNX Runtime's")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.work.mkdir(parents=True, exist_ok=True)
    calib, heldout = cb.tokenize(args.model, args.work)
    null = [101, 102]
    common = ["--calib", str(calib), "--null-ids", "101,102"]
    total = cb.run("inspect", str(args.model))["total_params"]
    model = Model()
    d = model.sub[0]["W"].shape[1]
    share = (d * d + d) / total
    load = lambda p: [json.loads(l) for l in p.read_text().splitlines()]  # noqa: E731
    cal, hel = Batch(load(calib), null, d), Batch(load(heldout), null, d)
    t0 = time.perf_counter()
    dense_c = model.forward(cal, set(), {}, states=True)
    dense_h = model.forward(hel, set(), {}, states=True)[-1]
    print(f"dense forward of 65+65 prompts: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    if args.check_ort:
        import onnxruntime as ort
        sess = ort.InferenceSession(str(args.model))
        err = 0.0
        for s in load(heldout)[:16] + [null]:
            o = sess.run(None, {"input_ids": np.array([s], np.int64), "attention_mask": np.ones((1, len(s)), np.int64)})[0]
            ref = model.forward(Batch([s], null, d), set(), {})[0, :len(s)].numpy()
            err = max(err, float(np.abs(o[0] - ref).max()))
        print(f"dense f64 vs ONNX Runtime (16 held-out prompts + null): max |diff| {err:.2e}", file=sys.stderr)

    variants = [v for v in args.variants.split(",") if v]
    rows = []
    for level in [float(x) for x in args.levels.split(",")]:
        plans = []
        for tag in ("P0", "P1"):
            target = level if tag == "P0" else plans[0][1]["achieved_sparsity"] + share
            path = args.work / f"skrr_{level}_{tag}.json"
            cb.run("plan", str(args.model), "-o", str(path), "--sparsity", f"{target:.6f}", "--method", "skrr", *common)
            plans.append((tag, json.loads(path.read_text()), path))
        for tag, plan, path in plans:
            skip = {b["index"] for b in plan["sub_blocks"] if b["action"] == "skip"}
            if any(b["action"] == "reuse" for b in plan["sub_blocks"]):
                print(f"{path}: has re-use, not handled here", file=sys.stderr)
            ach = plan["achieved_sparsity"]
            prod = None
            if not args.no_product:
                s = cb.run("score", str(args.model), "--plan", str(path), *common,
                           "--compensate", "linear", "--heldout", str(heldout))["compensation"]
                ho = s["held_out"]  # the keys were renamed d_before/d_after -> d_without/d_with
                prod = (ho.get("d_without", ho.get("d_before")), ho.get("d_with", ho.get("d_after")), s["fit"]["ridge"])
            base = dict(level=level, plan=tag, skip=sorted(skip), runs=runs_of(skip), achieved=ach)

            def add(name, net, D, cos, fit_s=None, **kw):
                rows.append(dict(base, comp=name, net=net, heldout_d=D, d_null=measure.d_null, cos=cos,
                                 fit_seconds=fit_s, **kw))
                print(f"{level:.2f} {tag} skip {sorted(skip)} {name:14s} net {net:.4f} held-out D {D:.5f} "
                      f"(D_null {measure.d_null:.5f}) cos {cos:.5f}" + (f" fit {fit_s:.2f} s" if fit_s is not None else "")
                      + "".join(f" {k}={v}" for k, v in kw.items()), file=sys.stderr, flush=True)

            yc = model.forward(cal, skip, {})
            yh = model.forward(hel, skip, {})
            D0, c0 = measure(yh, dense_h, hel)
            add("none", ach, D0, c0, product_d=prod[0] if prod else None,
                rel_vs_product=(D0 / prod[0] - 1) if prod else None)
            t = time.perf_counter()
            r, th = fit_output(yc, dense_c[-1], cal)
            ft = time.perf_counter() - t
            D, c = measure(yh, dense_h, hel, th)
            add("(b) output", ach - share, D, c, ft, ridge=r, product_d=prod[1] if prod else None,
                product_ridge=prod[2] if prod else None)
            if prod and prod[2] != r:
                _, th = fit_output(yc, dense_c[-1], cal, force_ridge=prod[2])
                D, c = measure(yh, dense_h, hel, th)
                add("(b) @prod ridge", ach - share, D, c, ridge=prod[2])
            for v in variants:
                t = time.perf_counter()
                ov, info = fit_merged(model, cal, skip, dense_c, v, args.iters, args.select)
                ft = time.perf_counter() - t
                yh_a = model.forward(hel, skip, ov)
                D, c = measure(yh_a, dense_h, hel)
                Dc, _ = measure(model.forward(cal, skip, ov), dense_c[-1], cal)
                add(f"(a) {v}", ach, D, c, ft, calib_d=round(Dc, 5), runs="; ".join(info))
                r, th = fit_output(model.forward(cal, skip, ov), dense_c[-1], cal)
                D, c = measure(yh_a, dense_h, hel, th)
                add(f"(a) {v} + (b)", ach - share, D, c, ridge=r)
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    # D_null is never held out (the same null input is in the fit): D_c shows the held-out prompts alone.
    print("| level | plan | skipped | compensation | net sparsity | held-out D | vs Skrr | D_c | D_null | token cos | fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next(x for x in rows if x["level"] == r["level"] and x["plan"] == r["plan"] and x["comp"] == "none")
        print(f"| {r['level']:.2f} | {r['plan']} | {','.join(map(str, r['skip']))} | {r['comp']} | {r['net']:.4f} "
              f"| {r['heldout_d']:.5f} | {100 * (r['heldout_d'] / ref['heldout_d'] - 1):+.1f}% "
              f"| {r['heldout_d'] - r['d_null']:.5f} | {r['d_null']:.5f} | {r['cos']:.4f} "
              f"| {'' if r['fit_seconds'] is None else format(r['fit_seconds'], '.2f')} |")


if __name__ == "__main__":
    main()
