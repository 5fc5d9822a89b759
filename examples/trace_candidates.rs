//! Trace for docs/benchmarks.md ("Search", how the sub-block work was chosen): runs the skip
//! phase (beam 3) with every candidate scored in full and prints, as JSON lines, the chunks
//! (prompt lengths), the sub-blocks' parameters, then each candidate's skipped set, D and
//! per-prompt squared errors per chunk. `benches/replay_schedules.py` replays scheduling
//! strategies and chunk sizes on it offline.
//!
//! cargo run --release --example trace_candidates -- MODEL [--sparsity 0.2] [calibration options] > trace.jsonl

use anyhow::{anyhow, Result};
use skrr_onnx::action::Action;
use skrr_onnx::blocks;
use skrr_onnx::calibrate::measure::row_sse;
use skrr_onnx::calibrate::{Engine, Outcome, PromptHalf};
use skrr_onnx::commands::args::CalibArgs;
use skrr_onnx::model_io;
use skrr_onnx::runtime::{Activations, Sessions};
use skrr_onnx::search::{self, Limits, Scorer};

#[derive(clap::Parser)]
struct Args {
    model: std::path::PathBuf,
    #[arg(long, default_value_t = 0.2)]
    sparsity: f64,
    #[command(flatten)]
    calib: CalibArgs,
}

/// Scores every candidate in full (so the search ends as it would with bounds) and prints it.
struct Tracing {
    engine: Engine,
    targets: Vec<(Vec<usize>, Activations)>,
}

impl Scorer for Tracing {
    fn stages(&self) -> usize {
        1
    }

    fn advance(&mut self, actions: &[Action], _: usize, _: &mut Vec<f64>) -> Result<f64> {
        let Outcome::Scored(score) = self.engine.score(actions, None)? else {
            return Err(anyhow!(
                "the engine abandoned a plan scored without a bound"
            ));
        };
        let d = score.d();
        let mut sse = Vec::new();
        for (c, (lens, target)) in self.targets.iter().enumerate() {
            sse.push(row_sse(&self.engine.output(c, actions)?, target, lens)?);
        }
        let skipped: Vec<usize> = (0..actions.len())
            .filter(|&i| actions[i] == Action::Skip)
            .collect();
        println!(
            "{}",
            serde_json::json!({"skip": skipped, "d": d, "sse": sse})
        );
        Ok(d)
    }
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let sessions = Sessions::new(Default::default())?;
    let model = model_io::read_model(&args.model)?;
    let analysis = blocks::analyze(&model.proto)?;
    let config = args.calib.config()?;
    let calib = config.calib_set(&model, PromptHalf::Calibration)?;
    let mut engine = Engine::new(
        &model,
        &analysis,
        calib.clone(),
        config.engine_options(sessions),
    )?;
    let keep = vec![Action::Keep; analysis.sub_blocks.len()];
    let mut targets = Vec::new();
    let mut chunks = Vec::new();
    for c in 0..engine.chunks() {
        let (null, rows) = engine.chunk_rows(c);
        let lens: Vec<usize> = if null {
            vec![calib.null.as_ref().map_or(0, Vec::len)]
        } else {
            rows.iter().map(|&i| calib.prompts[i].len()).collect()
        };
        let target = engine.output(c, &keep)?;
        chunks.push(serde_json::json!({"null": null, "lens": lens, "ch": target.channels()}));
        targets.push((lens, target));
    }
    println!(
        "{}",
        serde_json::json!({
            "chunks": chunks,
            "params": analysis.sub_blocks.iter().map(|s| s.params).collect::<Vec<_>>(),
        })
    );
    let mut scorer = Tracing { engine, targets };
    search::skip_search(
        &analysis,
        &mut scorer,
        3,
        &[args.sparsity],
        &Limits::default(),
    )?;
    Ok(())
}
