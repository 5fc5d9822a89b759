"""Replays the skip phase's scheduling on a trace of every candidate's per-prompt errors
(`cargo run --release --example trace_candidates -- MODEL ... > trace.jsonl`) and prints the
sub-block work each strategy and chunk size needs, relative to the naive reference (every
candidate run in full, prompt by prompt, no padding). Work = parameters of each sub-block run x
padded tokens of its chunk; the prefix cache is modelled (unbounded), as in the engine.
Strategies: `guess` (one candidate after another in the search's guess order, abandoned once
its partial D passes the k-th best full D so far: the first session's engine), `bestfirst`
(`search::skip::select`) and `oracle` (the final k-th best D known from the start).

usage: python benches/replay_schedules.py trace.jsonl   (docs/benchmarks.md, "Search")
"""
import json
import sys

L = [json.loads(l) for l in open(sys.argv[1])]
meta, cands = L[0], L[1:]
params = meta['params']; n = len(params)
chunks = meta['chunks']; ch = chunks[0]['ch']
# rows: (is_null, len, sse) in engine chunk order
rows = []
for ci, c in enumerate(chunks):
    for ri, ln in enumerate(c['lens']):
        rows.append((c['null'], ln, ci, ri))
denom_c = sum(ln for nul, ln, _, _ in rows if not nul) * ch
denom_n = sum(ln for nul, ln, _, _ in rows if nul) * ch
def row_contrib(cand):
    out = []
    for nul, ln, ci, ri in rows:
        s = cand['sse'][ci][ri]
        out.append(s / (denom_n if nul else denom_c))
    return out
steps = {}
for c in cands:
    steps.setdefault(len(c['skip']), []).append(c)

def simulate(groups, strategy, beam=3):
    """groups: list of lists of row indices (evaluation chunks, in order)."""
    cache = set()
    total = 0.0; full = 0; chunk_runs = 0
    def run(skipset, g):
        nonlocal total, chunk_runs
        chunk_runs += 1
        acts = tuple('S' if i in skipset else 'K' for i in range(n))
        start = 0
        for p in range(n, 0, -1):
            if acts[p-1] == 'S': continue
            if (gi_key(g), acts[:p]) in cache: start = p; break
        toks = len(g) * max(rows[r][1] for r in g)
        for p in range(start, n):
            if acts[p] == 'S': continue
            total += params[p] * toks
            cache.add((gi_key(g), acts[:p+1]))
    def gi_key(g): return id(g)
    for st in sorted(steps):
        cs = steps[st]
        contrib = {tuple(c['skip']): row_contrib(c) for c in cs}
        D = {k: sum(v) for k, v in contrib.items()}
        order = [tuple(c['skip']) for c in cs]
        B = sorted(D.values())[beam-1] if len(D) >= beam else float('inf')
        if strategy in ('guess', 'oracle'):
            top = []
            for k in order:
                bound = B if strategy == 'oracle' else (top[beam-1] if len(top) >= beam else None)
                part = 0.0; ab = False
                for gi, g in enumerate(groups):
                    run(set(k), g)
                    part += sum(contrib[k][r] for r in g)
                    if gi < len(groups)-1 and bound is not None and part > bound:
                        ab = True; break
                if not ab:
                    full += 1; top = sorted(top + [D[k]])[:beam]
        elif strategy == 'bestfirst':
            state = {k: [0.0, 0] for k in order}  # partial, next group
            top = []
            while True:
                kth = top[beam-1] if len(top) >= beam else None
                live = [k for k in order if state[k][1] < len(groups) and (kth is None or state[k][0] <= kth)]
                if not live: break
                k = min(live, key=lambda k: (state[k][0], order.index(k)))
                gi = state[k][1]
                run(set(k), groups[gi])
                state[k][0] += sum(contrib[k][r] for r in groups[gi]); state[k][1] += 1
                if state[k][1] == len(groups):
                    full += 1; top = sorted(top + [D[k]])[:beam]
    return total, full, chunk_runs

def naive_cost():
    return len(cands) * sum(params) * sum(r[1] for r in rows)

def groups_from(sizes):
    null = [i for i, r in enumerate(rows) if r[0]]
    prompt = [i for i, r in enumerate(rows) if not r[0]]
    prompt.sort(key=lambda i: -rows[i][1])
    gs = [null] if null else []
    at = 0
    for s in sizes:
        if at >= len(prompt): break
        gs.append(prompt[at:at+s]); at += s
    if at < len(prompt): gs.append(prompt[at:])
    return gs
nv = naive_cost()
for name, sizes in [('16x4', [16]*4), ('8x8', [8]*8), ('4x16', [4]*16), ('geo 4,4,8,16,32', [4,4,8,16,32]), ('geo 2,2,4,8,16,32',[2,2,4,8,16,32]), ('geo 8,8,16,32',[8,8,16,32])]:
    g = groups_from(sizes)
    for strat in ['guess', 'bestfirst', 'oracle']:
        t, f, cr = simulate(g, strat)
        print(f"{name:22s} {strat:10s} work/naive {t/nv:.4f} (naive/work {nv/t:5.1f}x) full {f} chunk_runs {cr}")
