//! Skip phase: beam search over removal lists (method doc, "Skip phase").
//!
//! Exactness rules that keep the result independent of everything but the method:
//! - a removal *set* reached by several orders is one candidate; the order kept is the one
//!   reached first when the beam is walked best entry first and sub-blocks in index order
//!   (i.e. the order whose prefix had the lowest D), so the skip order is deterministic;
//! - ranking is by D, ties by the list itself (lexicographic), so runs are deterministic;
//! - the bound handed to the scorer for early abandoning is the k-th best *full* D among this
//!   step's candidates so far, so it exists only once k candidates are fully scored. A candidate
//!   abandoned against it has D strictly above the final k-th best and could never be kept;
//!   the scoring order (best guesses first, for tight bounds early) therefore changes no result.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};
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
        let mut seen = HashSet::new();
        let mut duplicates = 0;
        // (list, estimate of D)
        let mut cands: Vec<(Vec<usize>, f64)> = Vec::new();
        for e in &kept {
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

        let bar = ProgressBar::new(cands.len() as u64).with_style(
            ProgressStyle::with_template("step {msg} [{bar:30}] {pos}/{len} candidates, {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(step.to_string());
        // Ascending full Ds of the best `beam` candidates scored so far.
        let mut top: Vec<f64> = Vec::with_capacity(beam + 1);
        let mut scored = Vec::new();
        let mut abandoned = 0;
        for (list, _) in cands.iter() {
            if let Some(t) = limits.time.filter(|&t| start.elapsed() > t) {
                bar.finish_and_clear();
                stop = Some(StopReason::TimeLimit {
                    seconds: t.as_secs_f64(),
                });
                break 'steps;
            }
            let bound = (top.len() >= beam).then(|| top[beam - 1]);
            let actions = skip_actions(n, list);
            match scorer.score(&actions, bound)? {
                Some(d) => {
                    let at = top.partition_point(|&x| x <= rank(d));
                    top.insert(at, rank(d));
                    top.truncate(beam);
                    if step == 1 {
                        single[list[0]] = rank(d);
                    }
                    scored.push(Entry {
                        list: list.clone(),
                        d,
                    });
                }
                None => {
                    let Some(b) = bound else {
                        bail!("the scorer abandoned a candidate although no bound was given");
                    };
                    abandoned += 1;
                    if step == 1 {
                        single[list[0]] = b;
                    }
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();

        scored.sort_by(by_rank);
        scored.truncate(beam);
        kept = scored;
        let best = kept[0].clone();
        let best_sparsity = sparsity(analysis, &skip_actions(n, &best.list));
        for (t, slot) in targets.iter().zip(found.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            // `kept` is in rank order, so the first entry reaching `t` is the lowest-D one.
            for e in &kept {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Action;
    use crate::search::testutil::{analysis, SyntheticD};
    use std::cell::RefCell;

    fn run(
        a: &Analysis,
        d: &RefCell<SyntheticD>,
        beam: usize,
        targets: &[f64],
        abandon: bool,
    ) -> SkipOutcome {
        let mut scorer = |act: &[Action], bound: Option<f64>| -> Result<Option<f64>> {
            Ok(d.borrow_mut().score(act, bound.filter(|_| abandon)))
        };
        skip_search(a, &mut scorer, beam, targets, &Limits::default()).unwrap()
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
                    let dd = d.score(&skip_actions(n, &list), None).unwrap();
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
    fn equals_reference_and_abandoning_changes_nothing() {
        for seed in 1..=12u64 {
            let n = 6 + (seed as usize % 3) * 2;
            let a = analysis(&params(n, seed), 40);
            for beam in [1, 2, 3, 5] {
                for target in [0.2, 0.45, 0.7] {
                    let with = RefCell::new(SyntheticD::new(n, 4, seed));
                    let without = RefCell::new(SyntheticD::new(n, 4, seed));
                    let o1 = run(&a, &with, beam, &[target], true);
                    let o2 = run(&a, &without, beam, &[target], false);
                    let r = reference(&a, &mut SyntheticD::new(n, 4, seed), beam, target);
                    assert_eq!(o1.found[0].entry, r, "seed {seed} beam {beam} t {target}");
                    assert_eq!(o2.found[0].entry, r);
                    assert!(o1.found[0].sparsity >= target);
                    assert_eq!(without.borrow().abandoned, 0);
                    let w = with.borrow();
                    assert_eq!(
                        w.scored + w.abandoned,
                        o1.steps.iter().map(|s| s.candidates).sum::<usize>()
                    );
                }
            }
        }
    }

    #[test]
    fn abandoning_happens_and_is_reported() {
        let a = analysis(&params(12, 3), 40);
        let d = RefCell::new(SyntheticD::new(12, 8, 3));
        let o = run(&a, &d, 3, &[0.5], true);
        let abandoned: usize = o.steps.iter().map(|s| s.abandoned).sum();
        assert!(abandoned > 0);
        assert_eq!(abandoned, d.borrow().abandoned);
        assert_eq!(
            o.stop,
            StopReason::Reached {
                step: o.found[0].step
            }
        );
    }

    #[test]
    fn wide_beam_is_exhaustive_at_the_stopping_step() {
        // With a beam wider than any step's candidate count every set of each size is kept, so
        // the result must be the best set of the first size that can reach the target.
        let n = 6;
        let p = params(n, 9);
        let a = analysis(&p, 100);
        let mut d = SyntheticD::new(n, 3, 9);
        let target = 0.4;
        let o = run(
            &a,
            &RefCell::new(SyntheticD::new(n, 3, 9)),
            1000,
            &[target],
            true,
        );
        let mut best: Option<(usize, f64)> = None;
        for mask in 1u32..(1 << n) {
            let set: Vec<usize> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
            let act = skip_actions(n, &set);
            if sparsity(&a, &act) < target {
                continue;
            }
            let dd = d.score(&act, None).unwrap();
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
        let d = RefCell::new(SyntheticD::new(n, 2, 5));
        let o = run(&a, &d, 3, &[0.5], true);
        // Step 2: 3 parents × 7 extensions = 21 ordered lists; the pairs among the 3 parents'
        // own sub-blocks are reached twice (3 pairs), so 18 distinct sets.
        assert_eq!(o.steps[1].candidates + o.steps[1].duplicates, 21);
        assert_eq!(o.steps[1].duplicates, 3);
        assert_eq!(o.steps[0].candidates, n);
    }

    #[test]
    fn ties_are_broken_by_the_list() {
        let a = analysis(&[10; 6], 10);
        let mut flat = |act: &[Action], _: Option<f64>| -> Result<Option<f64>> {
            Ok(Some(
                act.iter().filter(|x| **x == Action::Skip).count() as f64
            ))
        };
        let o = skip_search(&a, &mut flat, 2, &[0.4], &Limits::default()).unwrap();
        // 3 skips × 10 params = 30 of 70 ≥ 0.4; lexicographically first list of size 3.
        assert_eq!(o.found[0].entry.list, vec![0, 1, 2]);
    }

    #[test]
    fn sweep_levels_equal_separate_searches() {
        let n = 10;
        let a = analysis(&params(n, 4), 60);
        let targets = [0.5, 0.1, 0.3];
        let sweep = run(
            &a,
            &RefCell::new(SyntheticD::new(n, 3, 4)),
            3,
            &targets,
            true,
        );
        assert_eq!(sweep.found.len(), 3);
        for (t, f) in targets.iter().zip(&sweep.found) {
            let alone = run(&a, &RefCell::new(SyntheticD::new(n, 3, 4)), 3, &[*t], true);
            assert_eq!(f.target, *t);
            assert_eq!(f.entry, alone.found[0].entry);
        }
    }

    #[test]
    fn unreachable_and_invalid_targets_fail_before_scoring() {
        let a = analysis(&[10; 4], 60); // sub-blocks hold 40 of 100
        for t in [0.41, 0.0, 1.0, -0.1, f64::NAN] {
            let mut never = |_: &[Action], _: Option<f64>| -> Result<Option<f64>> {
                panic!("scored before the target was checked")
            };
            let e = skip_search(&a, &mut never, 3, &[t], &Limits::default()).unwrap_err();
            let code = crate::error::exit_code_of(&e);
            assert_eq!(code, crate::error::exit::USAGE, "{e}");
        }
        let d = RefCell::new(SyntheticD::new(4, 2, 1));
        assert_eq!(run(&a, &d, 3, &[0.4], true).found[0].step, 4);
    }

    #[test]
    fn limits_stop_the_search_with_a_reason() {
        let a = analysis(&params(8, 2), 10);
        let d = RefCell::new(SyntheticD::new(8, 2, 2));
        let mut s = |act: &[Action], b: Option<f64>| Ok(d.borrow_mut().score(act, b));
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
