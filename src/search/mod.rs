//! The Skrr search (method doc, "Skip phase" and "Re-use phase"): which sub-blocks to skip, in
//! which order, and which skipped positions re-use a kept neighbour.
//!
//! The search only sees D through [`Scorer`], so it is independent of how D is computed (the
//! calibration engine with prefix caching and early abandoning in the product; a closure in the
//! unit tests). Like an equality-saturation runner it is a driver with limits: it stops for a
//! reason ([`StopReason`]) and leaves a [`Report`] of every step behind, whatever happened.

pub mod methods;
pub mod plot;
pub mod reuse;
pub mod shortgpt;
pub mod skip;

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::action::{removed_params, Action, Actions};
use crate::blocks::Analysis;
use crate::error::SkrrError;
use crate::plan::{Discrepancy, PlanFile};

pub use reuse::{reuse_pass, ReuseReport};
pub use shortgpt::shortgpt_orders;
pub use skip::{skip_search, Entry, Found, SkipOutcome, StepReport};

/// The discrepancy oracle the search runs on. D is a sum of non-negative error terms computed
/// in stages (the engine: one stage per prompt chunk), so the D of the stages run so far is a
/// lower bound that only grows; the skip phase schedules stages across candidates with it.
pub trait Scorer {
    /// Stages in a full evaluation (at least one).
    fn stages(&self) -> usize;

    /// Runs stage `stage` (stages run in order, starting from 0) of `actions`, storing its error
    /// terms in `terms` (the scorer's layout; empty before stage 0). Returns the D of the terms
    /// stored so far: a lower bound on the plan's D, and its D once the last stage has run.
    fn advance(&mut self, actions: &[Action], stage: usize, terms: &mut Vec<f64>) -> Result<f64>;

    /// D of `actions`, or `None` when scoring was abandoned because the partial D already
    /// exceeded `bound` (strictly: an abandoned plan is strictly worse than `bound`). Without a
    /// bound the plan is always scored fully.
    fn score(&mut self, actions: &[Action], bound: Option<f64>) -> Result<Option<f64>> {
        let mut terms = Vec::new();
        let last = self.stages() - 1;
        for stage in 0..=last {
            let partial = self.advance(actions, stage, &mut terms)?;
            if stage == last {
                return Ok(Some(partial));
            }
            if bound.is_some_and(|b| partial > b) {
                return Ok(None);
            }
        }
        unreachable!("the last stage returns")
    }
}

/// Limits on the skip phase; hitting one ends the search with the matching [`StopReason`].
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Wall time for the skip phase (checked between candidates).
    pub time: Option<Duration>,
    /// Number of beam steps (= sub-blocks skipped).
    pub steps: Option<usize>,
}

/// Why the skip phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum StopReason {
    /// A kept entry reached the highest target sparsity at this step.
    Reached {
        step: usize,
    },
    StepLimit {
        steps: usize,
    },
    TimeLimit {
        seconds: f64,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Reached { step } => write!(f, "target reached at step {step}"),
            StopReason::StepLimit { steps } => write!(f, "step limit ({steps}) hit"),
            StopReason::TimeLimit { seconds } => write!(f, "time limit ({seconds:.1} s) hit"),
        }
    }
}

/// One action per position: `Skip` at every listed sub-block, `Keep` elsewhere.
pub fn skip_actions(n: usize, skipped: &[usize]) -> Actions {
    let mut a = vec![Action::Keep; n];
    for &p in skipped {
        a[p] = Action::Skip;
    }
    a
}

/// Achieved sparsity of `actions` (method doc, "Sparsity"): one formula everywhere, so the stop
/// rule, the checks and the plan file can never disagree about whether a target is reached.
pub fn sparsity(analysis: &Analysis, actions: &[Action]) -> f64 {
    removed_params(analysis, actions) as f64 / analysis.total_params.max(1) as f64
}

/// Checks every target before any scoring: each must lie in (0, 1) and be reachable, i.e. at
/// most what skipping every sub-block removes (embeddings, final norm and the like stay).
pub fn check_targets(analysis: &Analysis, targets: &[f64]) -> Result<()> {
    let usage = |m: String| -> anyhow::Error { SkrrError::Usage(m).into() };
    if targets.is_empty() {
        return Err(usage("no target sparsity given".into()));
    }
    if analysis.sub_blocks.is_empty() {
        return Err(usage("the model has no sub-blocks to skip".into()));
    }
    let max = sparsity(
        analysis,
        &skip_actions(
            analysis.sub_blocks.len(),
            &(0..analysis.sub_blocks.len()).collect::<Vec<_>>(),
        ),
    );
    for &t in targets {
        if !(t > 0.0 && t < 1.0) {
            return Err(usage(format!(
                "target sparsity {t} must lie strictly between 0 and 1"
            )));
        }
        if t > max {
            return Err(usage(format!(
                "target sparsity {t} is unreachable: skipping all {} sub-blocks removes only {max:.4} \
                 of the parameters (the rest is embeddings, norms and other shared weights)",
                analysis.sub_blocks.len()
            )));
        }
    }
    Ok(())
}

/// Everything the search did, for logs, `--json` and the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub beam: usize,
    pub steps: Vec<StepReport>,
    pub stop: StopReason,
    /// One re-use pass per result (per sweep level), in target order; empty with `--no-reuse`.
    pub reuse: Vec<ReuseReport>,
    pub candidates_scored: usize,
    pub candidates_abandoned: usize,
    pub seconds: f64,
}

/// What to search for.
#[derive(Debug, Clone)]
pub struct Config {
    /// Beam width `k` (1 = the FinerCut greedy search).
    pub beam: usize,
    /// Target sparsities; one search serves them all (a sweep).
    pub targets: Vec<f64>,
    /// Run the re-use phase after the skip phase.
    pub reuse: bool,
    pub limits: Limits,
    /// What Skrr ranks candidates by.
    pub rank: Rank,
}

/// What the Skrr search ranks candidate plans by (`--rank`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    /// D of the plan (the method doc's search).
    #[default]
    Plain,
    /// D of the plan followed by its own fitted output map (`--compensate linear` only).
    Compensated,
}

/// The plan found for one target sparsity.
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub target: f64,
    pub sparsity: f64,
    pub params_removed: u64,
    pub skip_order: Vec<usize>,
    /// D after the skip phase and after the re-use phase (equal without re-use).
    pub d_skip: f64,
    pub d_final: f64,
    #[serde(skip)]
    pub actions: Actions,
}

impl Level {
    /// A level from a skip order alone (no re-use), e.g. a baseline's choice scored by `d`.
    pub fn skipping(analysis: &Analysis, target: f64, skip_order: Vec<usize>, d: f64) -> Level {
        let actions = skip_actions(analysis.sub_blocks.len(), &skip_order);
        Level {
            target,
            sparsity: sparsity(analysis, &actions),
            params_removed: removed_params(analysis, &actions),
            skip_order,
            d_skip: d,
            d_final: d,
            actions,
        }
    }

    /// The plan file of the method doc for this level.
    pub fn plan_file(
        &self,
        analysis: &Analysis,
        method: &str,
        beam: Option<usize>,
        sha256: &str,
    ) -> PlanFile {
        let mut plan = PlanFile::describe(analysis, &self.actions);
        if let Some(m) = plan.model.as_mut() {
            m.sha256 = Some(sha256.to_string());
        }
        plan.target_sparsity = Some(self.target);
        plan.method = Some(method.to_string());
        plan.beam = beam;
        plan.skip_order = Some(self.skip_order.clone());
        plan.discrepancy = Some(Discrepancy {
            skip: self.d_skip,
            final_: self.d_final,
        });
        plan
    }
}

/// Skip phase, then (if asked) one re-use pass per target. Fails with the stop reason when a
/// limit ends the search before every target is reached.
pub fn search(
    analysis: &Analysis,
    scorer: &mut dyn Scorer,
    cfg: &Config,
) -> Result<(Vec<Level>, Report)> {
    let start = Instant::now();
    let skip = skip_search(analysis, scorer, cfg.beam, &cfg.targets, &cfg.limits)?;
    let mut report = Report {
        beam: cfg.beam,
        candidates_scored: skip.steps.iter().map(|s| s.scored).sum(),
        candidates_abandoned: skip.steps.iter().map(|s| s.abandoned).sum(),
        steps: skip.steps,
        stop: skip.stop,
        reuse: Vec::new(),
        seconds: 0.0,
    };
    if skip.found.len() < cfg.targets.len() {
        let best = report.steps.last().map(|s| s.best_sparsity).unwrap_or(0.0);
        return Err(SkrrError::Usage(format!(
            "search stopped ({}) after {} steps, before reaching target sparsity {}; \
             best sparsity so far {best:.4}",
            report.stop,
            report.steps.len(),
            cfg.targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    let mut levels = Vec::new();
    for f in skip.found {
        let mut level = Level::skipping(analysis, f.target, f.entry.list, f.entry.d);
        if cfg.reuse {
            let (actions, r) = reuse_pass(analysis, scorer, &level.skip_order, level.d_skip)?;
            level.d_final = r.d_after;
            // Re-use reads only weights that stay anyway; recounting keeps the file exact.
            level.params_removed = removed_params(analysis, &actions);
            level.sparsity = sparsity(analysis, &actions);
            level.actions = actions;
            report.candidates_scored += r.tried - r.abandoned;
            report.candidates_abandoned += r.abandoned;
            report.reuse.push(r);
        }
        levels.push(level);
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok((levels, report))
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A synthetic model and a synthetic D for the search logic's unit tests.

    use anyhow::Result;

    use super::Scorer;
    use crate::action::Action;
    use crate::blocks::{Analysis, Kind, SubBlock};
    use crate::onnx::{GraphProto, NodeProto, TensorProto, ValueInfoProto};

    /// `params[p]` parameters in sub-block `p` (alternating attention / ffn) plus `embed` in the
    /// prologue; one node per region reading one initializer.
    pub fn analysis(params: &[u64], embed: u64) -> Analysis {
        let init = |name: &str, n: u64| TensorProto {
            name: Some(name.into()),
            dims: vec![n as i64],
            ..Default::default()
        };
        // A connected chain (ids → s0 → ... → sN = graph output): parameter counts come from
        // liveness, so the stream must really flow from the prologue to the output.
        let node = |i: &str, w: &str, o: &str| NodeProto {
            input: vec![i.into(), w.into()],
            output: vec![o.into()],
            op_type: Some("MatMul".into()),
            ..Default::default()
        };
        let mut graph = GraphProto {
            node: vec![node("ids", "emb", "s0")],
            initializer: vec![init("emb", embed)],
            output: vec![ValueInfoProto {
                name: Some(format!("s{}", params.len())),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut sub_blocks = Vec::new();
        for (p, &n) in params.iter().enumerate() {
            let w = format!("w{p}");
            graph
                .node
                .push(node(&format!("s{p}"), &w, &format!("s{}", p + 1)));
            graph.initializer.push(init(&w, n));
            sub_blocks.push(SubBlock {
                index: p,
                layer: p / 2,
                kind: if p % 2 == 0 {
                    Kind::Attention
                } else {
                    Kind::Ffn
                },
                nodes: vec![p + 1],
                input: format!("s{p}"),
                output: format!("s{}", p + 1),
                side_inputs: vec![],
                initializers: vec![w],
                params: n,
                signature: String::new(),
            });
        }
        Analysis {
            graph,
            sub_blocks,
            prologue: vec![0],
            epilogue: vec![],
            prologue_params: embed,
            epilogue_params: 0,
            shared_params: 0,
            total_params: embed + params.iter().sum::<u64>(),
            layers: params.len() / 2,
            family: None,
            structure_signature: "synthetic".into(),
        }
    }

    /// A deterministic pseudo-random generator (xorshift) so the tests need no seed crate.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A synthetic D over `prompts` prompts: per prompt, a cost per skipped sub-block, a cost per
    /// pair of skipped sub-blocks (so the order of greedy removal matters) and a cost per
    /// re-use (source, position).
    pub struct SyntheticD {
        pub skip: Vec<Vec<f64>>,
        pub pair: Vec<Vec<Vec<f64>>>,
        pub reuse: Vec<Vec<Vec<f64>>>,
        /// Plans scored to the last stage, and stages run in all.
        pub scored: usize,
        pub stages_run: usize,
    }

    impl SyntheticD {
        pub fn new(n: usize, prompts: usize, seed: u64) -> Self {
            let mut rng = Rng(seed.max(1));
            let mut mat = |scale: f64| -> Vec<Vec<f64>> {
                (0..n)
                    .map(|_| (0..n).map(|_| scale * rng.next()).collect())
                    .collect()
            };
            let pair = (0..prompts).map(|_| mat(0.3)).collect();
            let reuse = (0..prompts).map(|_| mat(1.0)).collect();
            let mut rng = Rng(seed.wrapping_mul(7919).max(1));
            let skip = (0..prompts)
                .map(|_| (0..n).map(|_| rng.next()).collect())
                .collect();
            SyntheticD {
                skip,
                pair,
                reuse,
                scored: 0,
                stages_run: 0,
            }
        }

        /// Prompt `j`'s term of D.
        pub fn prompt(&self, j: usize, actions: &[Action]) -> f64 {
            let mut d = 0.0;
            for (p, a) in actions.iter().enumerate() {
                match *a {
                    Action::Keep => {}
                    Action::Skip => {
                        d += self.skip[j][p];
                        for (q, b) in actions[..p].iter().enumerate() {
                            if *b == Action::Skip {
                                d += self.pair[j][q][p];
                            }
                        }
                    }
                    Action::Reuse(q) => d += self.reuse[j][p][q] * self.skip[j][p],
                }
            }
            d
        }

        /// Full D, computed without the scorer interface (for reference implementations).
        pub fn d(&self, actions: &[Action]) -> f64 {
            (0..self.skip.len()).map(|j| self.prompt(j, actions)).sum()
        }
    }

    /// One stage per prompt, summed in prompt order like the engine's terms.
    impl Scorer for SyntheticD {
        fn stages(&self) -> usize {
            self.skip.len()
        }

        fn advance(
            &mut self,
            actions: &[Action],
            stage: usize,
            terms: &mut Vec<f64>,
        ) -> Result<f64> {
            terms.resize(self.skip.len(), 0.0);
            terms[stage] = self.prompt(stage, actions);
            self.stages_run += 1;
            if stage + 1 == self.skip.len() {
                self.scored += 1;
            }
            Ok(terms.iter().sum())
        }
    }

    /// A scorer from a closure giving the full D in one stage (bounds are then never used).
    pub struct Whole<F>(pub F);

    impl<F: FnMut(&[Action]) -> f64> Scorer for Whole<F> {
        fn stages(&self) -> usize {
            1
        }

        fn advance(&mut self, actions: &[Action], _: usize, _: &mut Vec<f64>) -> Result<f64> {
            Ok((self.0)(actions))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{analysis, SyntheticD};
    use super::*;

    #[test]
    fn search_runs_both_phases_and_fills_the_plan_file() {
        let a = analysis(&[10, 20, 10, 20, 10, 20, 10, 20], 20);
        let mut d = SyntheticD::new(8, 3, 11);
        let cfg = Config {
            beam: 3,
            targets: vec![0.3, 0.1],
            reuse: true,
            limits: Limits::default(),
            rank: Rank::Plain,
        };
        let (levels, report) = search(&a, &mut d, &cfg).unwrap();
        assert_eq!(levels.len(), 2);
        assert_eq!(report.reuse.len(), 2);
        for l in &levels {
            assert!(l.sparsity >= l.target);
            assert!(l.d_final <= l.d_skip);
            assert_eq!(d.d(&l.actions), l.d_final);
            let plan = l.plan_file(&a, "skrr", Some(3), "abc");
            assert_eq!(plan.to_actions(&a).unwrap(), l.actions);
            assert_eq!(plan.achieved_sparsity, Some(l.sparsity));
            assert_eq!(plan.skip_order.as_ref(), Some(&l.skip_order));
            assert_eq!(plan.model.as_ref().unwrap().sha256.as_deref(), Some("abc"));
        }
        let cfg = Config {
            limits: Limits {
                steps: Some(1),
                time: None,
            },
            ..cfg
        };
        let e = search(&a, &mut d, &cfg).unwrap_err();
        assert!(e.to_string().contains("step limit"), "{e}");
    }
}
