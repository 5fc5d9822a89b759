//! Re-use phase: one greedy pass over the skipped sub-blocks (method doc, "Re-use phase").
//!
//! Re-use removes nothing more and costs nothing in parameters, so it can only lower D; the
//! pass adopts a re-use only when it is strictly better, which keeps it deterministic and makes
//! the current D a valid bound for early abandoning.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::skip::rank;
use super::{skip_actions, Scorer};
use crate::action::{Action, Actions};
use crate::blocks::Analysis;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Adopted {
    pub position: usize,
    pub source: usize,
    /// D of the plan right after this adoption.
    pub d: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReuseReport {
    pub d_before: f64,
    pub d_after: f64,
    /// Re-use candidates tried (at most two per skipped sub-block).
    pub tried: usize,
    pub abandoned: usize,
    pub adopted: Vec<Adopted>,
    pub seconds: f64,
}

/// Runs the pass on the plan that skips `skip_order` (whose D is `d_skip`) and returns the
/// final actions. For each skipped `i`, in skip order, the candidates are the nearest kept
/// sub-blocks of the same kind below and above `i` ("kept": neither skipped nor re-using);
/// the lower D wins, the one below on a tie, and only if strictly lower than the current D.
pub fn reuse_pass(
    analysis: &Analysis,
    scorer: &mut dyn Scorer,
    skip_order: &[usize],
    d_skip: f64,
) -> Result<(Actions, ReuseReport)> {
    let start = Instant::now();
    let sbs = &analysis.sub_blocks;
    let n = sbs.len();
    let mut actions = skip_actions(n, skip_order);
    let mut current = d_skip;
    let (mut tried, mut abandoned, mut adopted) = (0, 0, Vec::new());
    for &i in skip_order {
        let same_kept = |q: &usize| sbs[*q].kind == sbs[i].kind && actions[*q] == Action::Keep;
        let below = (0..i).rev().find(same_kept);
        let above = (i + 1..n).find(same_kept);
        let mut best: Option<(usize, f64)> = None;
        for q in [below, above].into_iter().flatten() {
            let bound = best.map_or(rank(current), |(_, d)| d);
            let mut trial = actions.clone();
            trial[i] = Action::Reuse(q);
            tried += 1;
            match scorer.score(&trial, Some(bound))? {
                Some(d) if rank(d) < bound => best = Some((q, rank(d))),
                Some(_) => {}
                None => abandoned += 1,
            }
        }
        if let Some((q, d)) = best {
            log::info!("re-use: sub-block {i} runs {q}'s weights, D {current:.6e} -> {d:.6e}");
            actions[i] = Action::Reuse(q);
            current = d;
            adopted.push(Adopted {
                position: i,
                source: q,
                d,
            });
        }
    }
    let report = ReuseReport {
        d_before: d_skip,
        d_after: current,
        tried,
        abandoned,
        adopted,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((actions, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::testutil::{analysis, SyntheticD, Whole};

    /// The pass as the method doc states it, with every plan scored fully.
    fn reference(a: &Analysis, d: &mut SyntheticD, order: &[usize]) -> (Actions, f64) {
        let n = a.sub_blocks.len();
        let mut act = skip_actions(n, order);
        let mut cur = d.d(&act);
        for &i in order {
            let kind = a.sub_blocks[i].kind;
            let kept =
                |q: usize, act: &Actions| a.sub_blocks[q].kind == kind && act[q] == Action::Keep;
            let l = (0..i).rev().find(|&q| kept(q, &act));
            let r = (i + 1..n).find(|&q| kept(q, &act));
            let mut opts = vec![(cur, None)];
            for q in [l, r].into_iter().flatten() {
                let mut t = act.clone();
                t[i] = Action::Reuse(q);
                opts.push((d.d(&t), Some(q)));
            }
            // lowest D; on ties the earlier option (current, then below, then above)
            let (bd, bq) = opts
                .iter()
                .copied()
                .fold(opts[0], |b, o| if o.0 < b.0 { o } else { b });
            if let Some(q) = bq {
                act[i] = Action::Reuse(q);
                cur = bd;
            }
        }
        (act, cur)
    }

    #[test]
    fn equals_reference_and_is_valid() {
        for seed in 1..=20u64 {
            let n = 10;
            let a = analysis(&[10; 10], 10);
            let order: Vec<usize> = {
                let mut r = crate::search::testutil::Rng(seed);
                let mut v: Vec<usize> = (0..n).collect();
                for k in (1..n).rev() {
                    v.swap(k, (r.next() * (k + 1) as f64) as usize);
                }
                v.truncate(2 + seed as usize % 5);
                v
            };
            let mut d = SyntheticD::new(n, 3, seed);
            let d0 = d.d(&skip_actions(n, &order));
            let (act, rep) = reuse_pass(&a, &mut d, &order, d0).unwrap();
            let (ract, rd) = reference(&a, &mut SyntheticD::new(n, 3, seed), &order);
            assert_eq!(act, ract, "seed {seed}");
            assert_eq!(rep.d_after, rd);
            assert!(rep.d_after <= rep.d_before);
            crate::action::validate(&a, &act).unwrap();
            assert_eq!(
                crate::action::removed_params(&a, &act),
                crate::action::removed_params(&a, &skip_actions(n, &order)),
                "re-use removes nothing more and adds nothing back"
            );
            // the final D is the scorer's D of the final plan
            assert_eq!(d.d(&act), rep.d_after);
        }
    }

    #[test]
    fn only_strict_improvements_are_adopted() {
        let a = analysis(&[10; 6], 10);
        // re-use never helps: D counts non-kept positions only
        let mut s =
            Whole(|act: &[Action]| act.iter().filter(|x| **x != Action::Keep).count() as f64);
        let (act, rep) = reuse_pass(&a, &mut s, &[2, 3], 2.0).unwrap();
        assert_eq!(act, skip_actions(6, &[2, 3]));
        assert!(rep.adopted.is_empty());
        assert_eq!(rep.tried, 4);
    }

    #[test]
    fn a_reuse_target_is_not_a_source_and_ties_prefer_below() {
        let a = analysis(&[10; 8], 10);
        // attention positions 0 2 4 6; skip 2 and 4; any re-use halves the cost of its position
        let mut s = Whole(|act: &[Action]| {
            act.iter()
                .map(|x| match x {
                    Action::Keep => 0.0,
                    Action::Skip => 1.0,
                    Action::Reuse(_) => 0.5,
                })
                .sum()
        });
        let (act, rep) = reuse_pass(&a, &mut s, &[4, 2], 2.0).unwrap();
        // 4: below 2 is skipped, so 0 is the nearest kept below; above is 6; tie → below (0).
        // 2: below 0, above 4 is now a re-use target (not kept) → 6; tie → 0.
        assert_eq!(act[4], Action::Reuse(0));
        assert_eq!(act[2], Action::Reuse(0));
        assert_eq!(rep.d_after, 1.0);
    }
}
