//! The three methods `plan --method` offers, on the calibration engine.
//!
//! Skrr is the search of this module with the full D (D_c + D_null, through the projection if
//! given). The baselines choose their plan by their own criterion (FinerCut: beam 1, D_c only,
//! no projection; ShortGPT: Block Influence of whole layers) and the chosen plans are then
//! re-scored with the full Skrr D, so every method's plan file reports D on the same scale and
//! the numbers compare directly. Baselines have no re-use phase (it is part of Skrr).

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{search, shortgpt_orders, Config, Level, Limits, Rank, Report, Scorer};
use crate::action::Action;
use crate::blocks::Analysis;
use crate::calibrate::{CalibSet, Engine, EngineOptions, EngineStats};
use crate::compensate::Compensate;
use crate::error::SkrrError;
use crate::model_io::Model;
use crate::onnx::GraphProto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Beam search over skips with the full D, then the re-use pass.
    Skrr,
    /// Greedy (beam 1) skips by D_c alone, no null term, no projection.
    Finercut,
    /// Whole layers with the lowest Block Influence.
    Shortgpt,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Skrr => "skrr",
            Method::Finercut => "finercut",
            Method::Shortgpt => "shortgpt",
        }
    }
}

/// One stage per prompt chunk.
impl Scorer for Engine {
    fn stages(&self) -> usize {
        self.chunks()
    }

    fn advance(&mut self, actions: &[Action], stage: usize, terms: &mut Vec<f64>) -> Result<f64> {
        Engine::advance(self, actions, stage, terms)
    }
}

/// Ranks plans by their D once their own output map is fitted (`--rank compensated`): a plan
/// whose removed work a linear map recovers well ranks above one that merely removed less
/// harmful work. One stage (the fit needs every chunk), so candidates are never abandoned early.
pub struct CompensatedScorer<'a> {
    pub engine: &'a mut Engine,
    pub graph: &'a GraphProto,
}

impl Scorer for CompensatedScorer<'_> {
    fn stages(&self) -> usize {
        1
    }

    fn advance(&mut self, actions: &[Action], _stage: usize, terms: &mut Vec<f64>) -> Result<f64> {
        let (_, fit) = crate::compensate::fit(self.engine, self.graph, actions)?;
        terms.push(fit.d_after);
        Ok(fit.d_after)
    }
}

/// What a method produced.
#[derive(Debug, Serialize)]
pub struct MethodRun {
    pub method: Method,
    /// Beam width actually used (`None` for ShortGPT).
    pub beam: Option<usize>,
    /// One per target, in target order; D is the full Skrr D.
    pub levels: Vec<Level>,
    /// D of each level by the method's own criterion (equal to the full D for Skrr; FinerCut's
    /// D_c without projection; ShortGPT has none).
    pub criterion: Vec<Option<f64>>,
    /// The search report (Skrr and FinerCut).
    pub search: Option<Report>,
    /// Block Influence per layer (ShortGPT).
    pub block_influence: Option<Vec<f64>>,
    /// Statistics of the engine that scored with the full D.
    pub engine: EngineStats,
}

/// How to search, for the main job and `plan`: the method and its knobs.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    pub method: Method,
    /// Beam width of Skrr's skip phase, at least 1.
    pub beam: usize,
    /// Run Skrr's re-use pass after the skip phase.
    pub reuse: bool,
    /// Wall time for the skip phase.
    pub time_limit: Option<Duration>,
    pub rank: Rank,
}

impl SearchConfig {
    /// The search configuration for `targets`; `compensate` is the compensation the plans get,
    /// which ranking by compensated D needs to be the output map.
    pub fn config(&self, targets: Vec<f64>, compensate: Compensate) -> Result<Config> {
        if self.rank == Rank::Compensated && compensate != Compensate::Linear {
            return Err(SkrrError::Usage(
                "--rank compensated ranks plans by D after their linear map: give --compensate \
                 linear too"
                    .into(),
            )
            .into());
        }
        Ok(Config {
            beam: self.beam,
            targets,
            reuse: self.reuse,
            limits: Limits {
                time: self.time_limit,
                steps: None,
            },
            rank: self.rank,
        })
    }
}

/// Runs `method` for `cfg.targets` (the caller has checked them with `check_targets`), and
/// hands back the engine that scored with the full D (a compensation is fitted on it).
pub fn run_method(
    model: &Model,
    analysis: &Analysis,
    calib: CalibSet,
    opts: EngineOptions,
    method: Method,
    cfg: &Config,
) -> Result<(MethodRun, Engine)> {
    match method {
        Method::Skrr => {
            let mut engine = Engine::new(model, analysis, calib, opts)?;
            let (levels, report) = match cfg.rank {
                Rank::Plain => search(analysis, &mut engine, cfg)?,
                Rank::Compensated => {
                    let mut scorer = CompensatedScorer {
                        engine: &mut engine,
                        graph: &analysis.graph,
                    };
                    search(analysis, &mut scorer, cfg)?
                }
            };
            let run = MethodRun {
                method,
                beam: Some(cfg.beam),
                criterion: levels.iter().map(|l| Some(l.d_final)).collect(),
                levels,
                search: Some(report),
                block_influence: None,
                engine: engine.stats(),
            };
            Ok((run, engine))
        }
        Method::Finercut => {
            let fc_opts = EngineOptions {
                null: false,
                projection: None,
                ..opts.clone()
            };
            let same = !opts.null && opts.projection.is_none();
            let fc_cfg = Config {
                beam: 1,
                reuse: false,
                ..cfg.clone()
            };
            let mut fc = Engine::new(model, analysis, calib.clone(), fc_opts)?;
            let (mut levels, report) = search(analysis, &mut fc, &fc_cfg)?;
            let criterion = levels.iter().map(|l| Some(l.d_skip)).collect();
            let mut full = if same {
                fc
            } else {
                drop(fc);
                Engine::new(model, analysis, calib, opts)?
            };
            for l in &mut levels {
                l.d_skip = full.d(&l.actions)?;
                l.d_final = l.d_skip;
            }
            let run = MethodRun {
                method,
                beam: Some(1),
                levels,
                criterion,
                search: Some(report),
                block_influence: None,
                engine: full.stats(),
            };
            Ok((run, full))
        }
        Method::Shortgpt => {
            let mut engine = Engine::new(model, analysis, calib, opts)?;
            let bi = engine.block_influence()?;
            log::info!("Block Influence per layer: {bi:?}");
            let orders = shortgpt_orders(analysis, &bi, &cfg.targets)?;
            let mut levels = Vec::new();
            for (t, order) in cfg.targets.iter().zip(orders) {
                let actions = super::skip_actions(analysis.sub_blocks.len(), &order);
                let d = engine.d(&actions)?;
                levels.push(Level::skipping(analysis, *t, order, d));
            }
            let run = MethodRun {
                method,
                beam: None,
                criterion: vec![None; levels.len()],
                levels,
                search: None,
                block_influence: Some(bi),
                engine: engine.stats(),
            };
            Ok((run, engine))
        }
    }
}
