//! Skip phase: beam search over removal lists (method doc, "Skip phase").
//!
//! Exactness rules that keep the result independent of everything but the method:
//! - a removal *set* reached by several orders is one candidate; the order kept is the one
//!   reached first when the beam is walked best entry first and sub-blocks in index order
//!   (i.e. the order whose prefix had the lowest D), so the skip order is deterministic;
//! - ranking is by D, ties by the list itself (lexicographic), so runs are deterministic;
//! - a candidate is left unfinished only when its partial D (a lower bound) is strictly above the
//!   k-th best *full* D of the step, so it could never be kept; which candidate runs its next
//!   stage when (`select`: lowest lower bound first, best guess on ties) changes the work done,
//!   never the result.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use serde::Serialize;

use super::{check_targets, skip_actions, sparsity, Limits, Scorer, StopReason};
use crate::blocks::Analysis;

/// A removal list (the skip order) and its D.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub list: Vec<usize>,
    pub d: f64,
}

/// What one beam step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    /// Distinct removal sets scored or abandoned at this step.
    pub candidates: usize,
    /// Orders that reached an already generated set and were merged into it.
    pub duplicates: usize,
    pub scored: usize,
    pub abandoned: usize,
    /// Best kept entry after the step.
    pub best: Entry,
    pub best_sparsity: f64,
    pub seconds: f64,
}

/// The result of the skip phase for one target sparsity.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub target: f64,
    /// The step (= number of skipped sub-blocks) at which the target was first reached.
    pub step: usize,
    pub entry: Entry,
    pub sparsity: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkipOutcome {
    /// One per target that was reached, in the order the targets were given.
    pub found: Vec<Found>,
    pub steps: Vec<StepReport>,
    pub stop: StopReason,
}

/// Ranking key of a D: a NaN (a candidate whose output overflowed) ranks after everything.
pub(super) fn rank(d: f64) -> f64 {
    if d.is_nan() {
        f64::INFINITY
    } else {
        d
    }
}

fn by_rank(a: &Entry, b: &Entry) -> Ordering {
    rank(a.d)
        .total_cmp(&rank(b.d))
        .then_with(|| a.list.cmp(&b.list))
}

/// Runs the beam (width `beam`) until every target in `targets` is reached or a limit hits.
/// One search serves a whole sweep: the beam's evolution does not depend on the target, only
/// the stopping step does, so each level gets exactly what a search for it alone would give.
pub fn skip_search(
    analysis: &Analysis,
    scorer: &mut dyn Scorer,
    beam: usize,
    targets: &[f64],
    limits: &Limits,
) -> Result<SkipOutcome> {
    ensure!(beam >= 1, "beam width must be at least 1");
    check_targets(analysis, targets)?;
    let n = analysis.sub_blocks.len();
    let start = Instant::now();
    let mut kept = vec![Entry {
        list: vec![],
        d: 0.0,
    }];
    // D of each single skip (step 1), or the bound it was abandoned against (a lower bound):
    // only used to order candidates so that good bounds come early.
    let mut single = vec![0.0f64; n];
    let mut found: Vec<Option<Found>> = vec![None; targets.len()];
    let mut steps = Vec::new();
    let mut stop = None;

    'steps: for step in 1..=n {
        if let Some(max) = limits.steps.filter(|&max| step > max) {
            stop = Some(StopReason::StepLimit { steps: max });
            break;
        }
        let t_step = Instant::now();
        let (cands, duplicates) = candidates(&kept, n, &single);

        let lists: Vec<&[usize]> = cands.iter().map(|(l, _)| l.as_slice()).collect();
        let Some(results) = select(analysis, scorer, &lists, beam, step, limits, start)? else {
            stop = Some(StopReason::TimeLimit {
                seconds: limits.time.unwrap_or_default().as_secs_f64(),
            });
            break 'steps;
        };
        let (best_first, abandoned) = best_scored(&lists, results, beam, step, &mut single);
        kept = best_first;
        let best = kept[0].clone();
        let best_sparsity = sparsity(analysis, &skip_actions(n, &best.list));
        record_found(analysis, targets, &kept, step, &mut found);
        let report = StepReport {
            step,
            candidates: cands.len(),
            duplicates,
            scored: cands.len() - abandoned,
            abandoned,
            best,
            best_sparsity,
            seconds: t_step.elapsed().as_secs_f64(),
        };
        log::info!(
            "step {step}: {} candidates ({duplicates} duplicate orders merged), {} scored, \
             {abandoned} abandoned early; best D {:.6e} skipping {:?} (sparsity {:.4}); {:.2} s",
            report.candidates,
            report.scored,
            report.best.d,
            report.best.list,
            best_sparsity,
            report.seconds
        );
        steps.push(report);
        if found.iter().all(Option::is_some) {
            stop = Some(StopReason::Reached { step });
            break;
        }
    }
    let Some(stop) = stop else {
        // Skipping everything reaches every checked target, so the last step always stops.
        bail!("internal error: the skip phase ended without reaching its targets");
    };
    Ok(SkipOutcome {
        found: found.into_iter().flatten().collect(),
        steps,
        stop,
    })
}

/// The next step's candidates: each kept list extended by one sub-block it does not skip, a set
/// reached twice (in another order) taken once, ordered by their estimated D (the list's D plus
/// the added sub-block's single-skip D), best first. Returns them with the number merged.
fn candidates(kept: &[Entry], n: usize, single: &[f64]) -> (Vec<(Vec<usize>, f64)>, usize) {
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    let mut cands: Vec<(Vec<usize>, f64)> = Vec::new();
    for e in kept {
        for p in (0..n).filter(|p| !e.list.contains(p)) {
            let mut set: Vec<usize> = e.list.iter().copied().chain([p]).collect();
            set.sort_unstable();
            if seen.insert(set) {
                let list = e.list.iter().copied().chain([p]).collect();
                cands.push((list, rank(e.d) + single[p]));
            } else {
                duplicates += 1;
            }
        }
    }
    cands.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    (cands, duplicates)
}

/// The `beam` best scored candidates, best first, and how many were abandoned. At step 1 each
/// single skip's D (or the bound it was abandoned at) is kept to order later candidates.
fn best_scored(
    lists: &[&[usize]],
    results: Vec<Decided>,
    beam: usize,
    step: usize,
    single: &mut [f64],
) -> (Vec<Entry>, usize) {
    let mut scored = Vec::new();
    let mut abandoned = 0;
    for (list, r) in lists.iter().zip(results) {
        let d = match r {
            Decided::Scored(d) => {
                scored.push(Entry {
                    list: list.to_vec(),
                    d,
                });
                rank(d)
            }
            Decided::Abandoned(lower) => {
                abandoned += 1;
                rank(lower)
            }
        };
        if step == 1 {
            single[list[0]] = d;
        }
    }
    scored.sort_by(by_rank);
    scored.truncate(beam);
    (scored, abandoned)
}

/// Fills each target not yet reached with the lowest-D entry of `kept` (in rank order) whose
/// sparsity reaches it.
fn record_found(
    analysis: &Analysis,
    targets: &[f64],
    kept: &[Entry],
    step: usize,
    found: &mut [Option<Found>],
) {
    let n = analysis.sub_blocks.len();
    for (t, slot) in targets.iter().zip(found.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        for e in kept {
            let s = sparsity(analysis, &skip_actions(n, &e.list));
            if s >= *t {
                *slot = Some(Found {
                    target: *t,
                    step,
                    entry: e.clone(),
                    sparsity: s,
                });
                break;
            }
        }
    }
}

/// What scheduling left of a candidate: its D, or the lower bound it was abandoned at.
enum Decided {
    Scored(f64),
    Abandoned(f64),
}

/// Scores one step's candidates (given best guess first) just far enough to know the `keep`
/// best: always the candidate with the lowest partial D (a lower bound on its D) runs its next
/// stage, ties going to the better guess. The `keep` best are therefore finished before any
/// candidate is run past the final keep-th best D, and every candidate left unfinished has a
/// lower bound strictly above it, so it could never be kept (a tie is finished: lists break
/// ties). Returns `None` when the time limit hits.
fn select(
    analysis: &Analysis,
    scorer: &mut dyn Scorer,
    lists: &[&[usize]],
    keep: usize,
    step: usize,
    limits: &Limits,
    start: Instant,
) -> Result<Option<Vec<Decided>>> {
    let n = analysis.sub_blocks.len();
    let stages = scorer.stages();
    ensure!(stages >= 1, "the scorer has no stages");
    let bar = crate::progress::bar(
        (lists.len() * stages) as u64,
        &format!("step {step}"),
        "candidate chunks",
    );
    let mut terms = vec![Vec::new(); lists.len()];
    let mut done = vec![0usize; lists.len()];
    let mut lower = vec![0.0f64; lists.len()];
    // Min-heap of (rank of the lower bound, guess order) over unfinished candidates.
    let mut queue: BinaryHeap<Reverse<(Key, usize)>> =
        (0..lists.len()).map(|i| Reverse((Key(0.0), i))).collect();
    // Ascending full Ds of the best `keep` candidates finished so far.
    let mut top: Vec<f64> = Vec::with_capacity(keep + 1);
    while let Some(Reverse((Key(bound), i))) = queue.pop() {
        if top.len() >= keep && bound > top[keep - 1] {
            break;
        }
        if limits.time.is_some_and(|t| start.elapsed() > t) {
            bar.finish_and_clear();
            return Ok(None);
        }
        let actions = skip_actions(n, lists[i]);
        lower[i] = scorer.advance(&actions, done[i], &mut terms[i])?;
        done[i] += 1;
        bar.inc(1);
        if done[i] == stages {
            let at = top.partition_point(|&x| x <= rank(lower[i]));
            top.insert(at, rank(lower[i]));
            top.truncate(keep);
            terms[i] = Vec::new();
        } else {
            queue.push(Reverse((Key(rank(lower[i])), i)));
        }
    }
    bar.finish_and_clear();
    Ok(Some(
        (0..lists.len())
            .map(|i| {
                if done[i] == stages {
                    Decided::Scored(lower[i])
                } else {
                    Decided::Abandoned(lower[i])
                }
            })
            .collect(),
    ))
}

/// Total order on ranked (never NaN) lower bounds, for the scheduling heap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::search::testutil::{analysis, SyntheticD, Whole};

    fn run(a: &Analysis, d: &mut SyntheticD, beam: usize, targets: &[f64]) -> SkipOutcome {
        skip_search(a, d, beam, targets, &Limits::default()).unwrap()
    }

    /// The method doc written as plainly as possible: no bounds, candidates from every ordered
    /// extension, sets merged by keeping the order reached from the better-ranked parent.
    fn reference(a: &Analysis, d: &mut SyntheticD, beam: usize, target: f64) -> Entry {
        let n = a.sub_blocks.len();
        let mut kept = vec![Entry {
            list: vec![],
            d: 0.0,
        }];
        loop {
            let mut all: Vec<Entry> = Vec::new();
            for e in &kept {
                for p in 0..n {
                    if e.list.contains(&p) {
                        continue;
                    }
                    let mut list = e.list.clone();
                    list.push(p);
                    let mut s = list.clone();
                    s.sort();
                    if all.iter().any(|x| {
                        let mut t = x.list.clone();
                        t.sort();
                        t == s
                    }) {
                        continue;
                    }
                    let dd = d.d(&skip_actions(n, &list));
                    all.push(Entry { list, d: dd });
                }
            }
            all.sort_by(by_rank);
            all.truncate(beam);
            kept = all;
            if let Some(e) = kept
                .iter()
                .find(|e| sparsity(a, &skip_actions(n, &e.list)) >= target)
            {
                return e.clone();
            }
        }
    }

    fn params(n: usize, seed: u64) -> Vec<u64> {
        let mut r = crate::search::testutil::Rng(seed);
        (0..n).map(|_| 50 + (r.next() * 100.0) as u64).collect()
    }

    #[test]
    fn equals_reference() {
        for seed in 1..=12u64 {
            let n = 6 + (seed as usize % 3) * 2;
            let a = analysis(&params(n, seed), 40);
            for beam in [1, 2, 3, 5] {
                for target in [0.2, 0.45, 0.7] {
                    let mut d = SyntheticD::new(n, 4, seed);
                    let o = run(&a, &mut d, beam, &[target]);
                    let r = reference(&a, &mut SyntheticD::new(n, 4, seed), beam, target);
                    assert_eq!(o.found[0].entry, r, "seed {seed} beam {beam} t {target}");
                    assert!(o.found[0].sparsity >= target);
                    assert_eq!(d.scored, o.steps.iter().map(|s| s.scored).sum::<usize>());
                }
            }
        }
    }

    #[test]
    fn abandoning_happens_and_is_reported() {
        let a = analysis(&params(12, 3), 40);
        let mut d = SyntheticD::new(12, 8, 3);
        let o = run(&a, &mut d, 3, &[0.5]);
        let abandoned: usize = o.steps.iter().map(|s| s.abandoned).sum();
        let candidates: usize = o.steps.iter().map(|s| s.candidates).sum();
        assert!(abandoned > 0);
        assert_eq!(d.scored, candidates - abandoned);
        assert!(d.stages_run < candidates * 8);
        assert_eq!(
            o.stop,
            StopReason::Reached {
                step: o.found[0].step
            }
        );
    }

    /// `select` runs exactly the stages an oracle knowing the final k-th best D would: the kept
    /// candidates to the end, every other one until its partial D exceeds that k-th best.
    #[test]
    fn select_does_the_least_work_and_keeps_the_best() {
        for seed in 1..=20u64 {
            let n = 10;
            let a = analysis(&[10; 10], 10);
            let mut r = crate::search::testutil::Rng(seed);
            let lists: Vec<Vec<usize>> = (0..25)
                .map(|_| {
                    let mut l: Vec<usize> = (0..n).filter(|_| r.next() < 0.3).collect();
                    l.push(((r.next() * n as f64) as usize).min(n - 1));
                    l.sort();
                    l.dedup();
                    l
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let refs: Vec<&[usize]> = lists.iter().map(|l| l.as_slice()).collect();
            for keep in [1, 3] {
                let stages = 6;
                let mut d = SyntheticD::new(n, stages, seed);
                let got = select(
                    &a,
                    &mut d,
                    &refs,
                    keep,
                    1,
                    &Limits::default(),
                    Instant::now(),
                )
                .unwrap()
                .unwrap();
                let full: Vec<f64> = lists.iter().map(|l| d.d(&skip_actions(n, l))).collect();
                let mut sorted = full.clone();
                sorted.sort_by(f64::total_cmp);
                let kth = sorted[keep - 1];
                let mut oracle = 0;
                for l in &lists {
                    let act = skip_actions(n, l);
                    let mut partial = 0.0;
                    for j in 0..stages {
                        oracle += 1;
                        partial += d.prompt(j, &act);
                        if j + 1 < stages && partial > kth {
                            break;
                        }
                    }
                }
                assert_eq!(d.stages_run, oracle, "seed {seed} keep {keep}");
                for (g, dd) in got.iter().zip(&full) {
                    match g {
                        Decided::Scored(x) => assert_eq!(x, dd),
                        Decided::Abandoned(lb) => {
                            assert!(*lb > kth && *lb <= *dd, "seed {seed}: {lb} {kth} {dd}")
                        }
                    }
                }
                let kept = got
                    .iter()
                    .filter(|g| matches!(g, Decided::Scored(x) if *x <= kth))
                    .count();
                assert_eq!(kept, keep);
            }
        }
    }

    #[test]
    fn wide_beam_is_exhaustive_at_the_stopping_step() {
        // With a beam wider than any step's candidate count every set of each size is kept, so
        // the result must be the best set of the first size that can reach the target.
        let n = 6;
        let p = params(n, 9);
        let a = analysis(&p, 100);
        let d = SyntheticD::new(n, 3, 9);
        let target = 0.4;
        let o = run(&a, &mut SyntheticD::new(n, 3, 9), 1000, &[target]);
        let mut best: Option<(usize, f64)> = None;
        for mask in 1u32..(1 << n) {
            let set: Vec<usize> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
            let act = skip_actions(n, &set);
            if sparsity(&a, &act) < target {
                continue;
            }
            let dd = d.d(&act);
            let cand = (set.len(), dd);
            if best.is_none_or(|b| cand.0 < b.0 || (cand.0 == b.0 && cand.1 < b.1)) {
                best = Some(cand);
            }
        }
        let (size, dd) = best.unwrap();
        assert_eq!(o.found[0].step, size);
        assert_eq!(o.found[0].entry.d, dd);
    }

    #[test]
    fn duplicates_are_merged_and_counted() {
        let n = 8;
        let a = analysis(&[10; 8], 10);
        let o = run(&a, &mut SyntheticD::new(n, 2, 5), 3, &[0.5]);
        // Step 2: 3 parents × 7 extensions = 21 ordered lists; the pairs among the 3 parents'
        // own sub-blocks are reached twice (3 pairs), so 18 distinct sets.
        assert_eq!(o.steps[1].candidates + o.steps[1].duplicates, 21);
        assert_eq!(o.steps[1].duplicates, 3);
        assert_eq!(o.steps[0].candidates, n);
    }

    #[test]
    fn ties_are_broken_by_the_list() {
        let a = analysis(&[10; 6], 10);
        let mut flat =
            Whole(|act: &[Action]| act.iter().filter(|x| **x == Action::Skip).count() as f64);
        let o = skip_search(&a, &mut flat, 2, &[0.4], &Limits::default()).unwrap();
        // 3 skips × 10 params = 30 of 70 ≥ 0.4; lexicographically first list of size 3.
        assert_eq!(o.found[0].entry.list, vec![0, 1, 2]);
    }

    #[test]
    fn sweep_levels_equal_separate_searches() {
        let n = 10;
        let a = analysis(&params(n, 4), 60);
        let targets = [0.5, 0.1, 0.3];
        let sweep = run(&a, &mut SyntheticD::new(n, 3, 4), 3, &targets);
        assert_eq!(sweep.found.len(), 3);
        for (t, f) in targets.iter().zip(&sweep.found) {
            let alone = run(&a, &mut SyntheticD::new(n, 3, 4), 3, &[*t]);
            assert_eq!(f.target, *t);
            assert_eq!(f.entry, alone.found[0].entry);
        }
    }

    #[test]
    fn unreachable_and_invalid_targets_fail_before_scoring() {
        let a = analysis(&[10; 4], 60); // sub-blocks hold 40 of 100
        for t in [0.41, 0.0, 1.0, -0.1, f64::NAN] {
            let mut never =
                Whole(|_: &[Action]| -> f64 { panic!("scored before the target was checked") });
            let e = skip_search(&a, &mut never, 3, &[t], &Limits::default()).unwrap_err();
            let code = crate::error::exit_code_of(&e);
            assert_eq!(code, crate::error::exit::USAGE, "{e}");
        }
        assert_eq!(
            run(&a, &mut SyntheticD::new(4, 2, 1), 3, &[0.4]).found[0].step,
            4
        );
    }

    #[test]
    fn limits_stop_the_search_with_a_reason() {
        let a = analysis(&params(8, 2), 10);
        let mut s = SyntheticD::new(8, 2, 2);
        let lim = Limits {
            steps: Some(2),
            time: None,
        };
        let o = skip_search(&a, &mut s, 3, &[0.9], &lim).unwrap();
        assert_eq!(o.stop, StopReason::StepLimit { steps: 2 });
        assert!(o.found.is_empty());
        assert_eq!(o.steps.len(), 2);
        let lim = Limits {
            steps: None,
            time: Some(std::time::Duration::ZERO),
        };
        let o = skip_search(&a, &mut s, 3, &[0.9], &lim).unwrap();
        assert!(matches!(o.stop, StopReason::TimeLimit { .. }));
    }
}
