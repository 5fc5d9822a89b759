//! Calibration engine benchmark (docs/benchmarks.md, "Calibration engine").
//!
//! Runs the real skip-phase beam search (beam 3) on MODEL with the engine for a number of steps
//! and records every candidate it scores; then scores the same candidates naively, the way a
//! straightforward implementation would: build the pruned model (consumers of a skipped
//! sub-block's output read its input), load it in a fresh ONNX Runtime session, run all prompts
//! through it and compute D against the dense outputs (computed once, as the engine does).
//! Prints both wall times, their ratio, and the largest relative D difference over the candidates
//! the engine scored fully.
//!
//! cargo run --release --example bench_calibrate -- MODEL [--steps 6] [--prompts 64] [--chunk 8]

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use prost::Message;
use skrr_onnx::action::Action;
use skrr_onnx::blocks::{self, Analysis};
use skrr_onnx::calibrate::measure::row_sse;
use skrr_onnx::calibrate::{CalibSet, Engine, PromptHalf};
use skrr_onnx::commands::args::CalibArgs;
use skrr_onnx::model_io;
use skrr_onnx::onnx::{GraphProto, ModelProto};
use skrr_onnx::runtime::{activations, feeds, Activations, Sessions};
use skrr_onnx::search::{self, Limits, Scorer};

#[derive(clap::Parser)]
struct Args {
    model: std::path::PathBuf,
    /// Beam steps to run (MiniLM: 6 steps ≈ 150 candidates).
    #[arg(long, default_value_t = 6)]
    steps: usize,
    #[command(flatten)]
    calib: CalibArgs,
}

struct Candidate {
    actions: Vec<Action>,
    d: Option<f64>,
}

/// The engine, recording every plan the search starts and the D of those it finishes.
struct Recording<'a> {
    engine: &'a mut Engine,
    cands: Vec<Candidate>,
    index: HashMap<Vec<Action>, usize>,
}

impl Scorer for Recording<'_> {
    fn stages(&self) -> usize {
        self.engine.chunks()
    }

    fn advance(&mut self, actions: &[Action], stage: usize, terms: &mut Vec<f64>) -> Result<f64> {
        let d = self.engine.advance(actions, stage, terms)?;
        let cands = &mut self.cands;
        let i = *self.index.entry(actions.to_vec()).or_insert_with(|| {
            cands.push(Candidate {
                actions: actions.to_vec(),
                d: None,
            });
            cands.len() - 1
        });
        if stage + 1 == self.engine.chunks() {
            cands[i].d = Some(d);
        }
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
    let opts = config.engine_options(sessions);
    eprintln!(
        "{}: {} sub-blocks, {} prompts, chunk {}",
        args.model.display(),
        analysis.sub_blocks.len(),
        calib.prompts.len(),
        opts.chunk
    );

    // Engine: setup (partition + dense targets) and the beam steps, timed separately.
    let t = Instant::now();
    let mut engine = Engine::new(&model, &analysis, calib.clone(), opts.clone())?;
    let engine_setup = t.elapsed().as_secs_f64();
    let rss_engine = peak_rss_mib();
    let t = Instant::now();
    let mut scorer = Recording {
        engine: &mut engine,
        cands: Vec::new(),
        index: HashMap::new(),
    };
    let limits = Limits {
        steps: Some(args.steps),
        ..Default::default()
    };
    search::skip_search(
        &analysis,
        &mut scorer,
        3,
        &[0.999_f64.min(max_target(&analysis))],
        &limits,
    )?;
    let engine_search = t.elapsed().as_secs_f64();
    let cands = scorer.cands;
    let stats = engine.stats();
    let rss_search = peak_rss_mib();

    // Naive: a fresh pruned model and session per candidate, every prompt, no bound.
    let t = Instant::now();
    let naive = Naive::new(sessions, &model, &analysis, &calib, opts.chunk, opts.null)?;
    let naive_setup = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut worst = 0.0f64;
    for c in &cands {
        let d = naive.score(&c.actions)?;
        if let Some(e) = c.d {
            worst = worst.max((e - d).abs() / d.abs().max(1e-30));
        }
    }
    let naive_search = t.elapsed().as_secs_f64();
    let full = cands.iter().filter(|c| c.d.is_some()).count();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": args.model,
            "sub_blocks": analysis.sub_blocks.len(),
            "prompts": calib.prompts.len(),
            "chunk": opts.chunk,
            "beam_steps": args.steps,
            "candidates": cands.len(),
            "fully_scored": full,
            "abandoned": cands.len() - full,
            "engine_setup_s": engine_setup,
            "engine_candidates_s": engine_search,
            "naive_setup_s": naive_setup,
            "naive_candidates_s": naive_search,
            "speedup_candidates": naive_search / engine_search,
            "speedup_with_setup": (naive_search + naive_setup) / (engine_search + engine_setup),
            "max_rel_d_diff_fully_scored": worst,
            "engine_stats": stats,
            "peak_rss_mib_after_engine_setup": rss_engine,
            "peak_rss_mib_after_engine_search": rss_search,
        }))?
    );
    Ok(())
}

/// Peak resident memory of this process so far (VmHWM), in MiB.
fn peak_rss_mib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb / 1024)
}

/// A target just below what skipping everything removes, so the step limit ends the search.
fn max_target(analysis: &Analysis) -> f64 {
    let all = vec![Action::Skip; analysis.sub_blocks.len()];
    search::sparsity(analysis, &all) * 0.999
}

/// One batch: model inputs, valid length of each row, whether it is the null input.
type Batch = (Vec<(String, ort::value::DynValue)>, Vec<usize>, bool);

struct Naive<'a> {
    sessions: Sessions,
    analysis: &'a Analysis,
    meta: ModelProto,
    batches: Vec<Batch>,
    targets: Vec<Activations>,
    denom_c: f64,
    denom_null: f64,
}

impl<'a> Naive<'a> {
    fn new(
        sessions: Sessions,
        model: &model_io::Model,
        analysis: &'a Analysis,
        calib: &CalibSet,
        chunk: usize,
        null: bool,
    ) -> Result<Naive<'a>> {
        // Weights inline, so each candidate is a self-contained model a fresh session loads.
        let mut graph = analysis.graph.clone();
        for t in &mut graph.initializer {
            if t.is_external() {
                let bytes = model.weights.bytes(t)?.into_owned();
                t.raw_data = Some(bytes.into());
                t.external_data.clear();
                t.data_location = None;
            }
        }
        let meta = ModelProto {
            graph: Some(graph),
            ..model.proto.clone()
        };
        let mut rows: Vec<(Vec<&[i64]>, bool)> = calib
            .prompts
            .chunks(chunk)
            .map(|c| (c.iter().map(Vec::as_slice).collect(), false))
            .collect();
        if let (true, Some(n)) = (null, &calib.null) {
            rows.push((vec![n.as_slice()], true));
        }
        let inputs = &analysis.graph.input;
        let batches = rows
            .into_iter()
            .map(|(r, is_null)| {
                let len = r.iter().map(|x| x.len()).max().unwrap_or(0);
                let lens = r.iter().map(|x| x.len()).collect();
                Ok((feeds(inputs, &r, len, calib.pad_id)?, lens, is_null))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut naive = Naive {
            sessions,
            analysis,
            meta,
            batches,
            targets: Vec::new(),
            denom_c: 0.0,
            denom_null: 0.0,
        };
        let keep = vec![Action::Keep; analysis.sub_blocks.len()];
        naive.targets = naive.outputs(&keep)?;
        for ((_, lens, is_null), t) in naive.batches.iter().zip(&naive.targets) {
            let n = lens.iter().sum::<usize>() as f64 * t.channels() as f64;
            if *is_null {
                naive.denom_null += n;
            } else {
                naive.denom_c += n;
            }
        }
        Ok(naive)
    }

    fn outputs(&self, actions: &[Action]) -> Result<Vec<Activations>> {
        let pruned = ModelProto {
            graph: Some(skip_graph(
                self.meta.graph.as_ref().unwrap(),
                self.analysis,
                actions,
            )?),
            ..self.meta.clone()
        };
        let mut session = self
            .sessions
            .from_bytes(&pruned.encode_to_vec(), "pruned model")?;
        let out_name = self.analysis.graph.output[0].name().to_string();
        self.batches
            .iter()
            .map(|(feeds, _, _)| {
                let inputs: Vec<(&str, ort::session::SessionInputValue)> =
                    feeds.iter().map(|(n, v)| (n.as_str(), v.into())).collect();
                let out = session.run(inputs)?;
                activations(out.get(out_name.as_str()).context("no output")?)
            })
            .collect()
    }

    fn score(&self, actions: &[Action]) -> Result<f64> {
        let outs = self.outputs(actions)?;
        let (mut c, mut n) = (0.0, 0.0);
        for ((_, lens, is_null), (o, t)) in self.batches.iter().zip(outs.iter().zip(&self.targets))
        {
            let s: f64 = row_sse(o, t, lens)?.iter().sum();
            if *is_null {
                n += s / self.denom_null;
            } else {
                c += s;
            }
        }
        Ok(c / self.denom_c + n)
    }
}

/// The dense graph with skipped sub-blocks bypassed and dead nodes removed.
fn skip_graph(graph: &GraphProto, analysis: &Analysis, actions: &[Action]) -> Result<GraphProto> {
    let mut alias: HashMap<&str, &str> = HashMap::new();
    for (sb, a) in analysis.sub_blocks.iter().zip(actions) {
        match a {
            Action::Keep => {}
            Action::Skip => {
                let mut src = sb.input.as_str();
                while let Some(s) = alias.get(src) {
                    src = s;
                }
                alias.insert(&sb.output, src);
            }
            Action::Reuse(_) => return Err(anyhow!("the naive baseline only skips")),
        }
    }
    let resolve = |v: &str| -> String {
        let mut v = v;
        while let Some(s) = alias.get(v) {
            v = s;
        }
        v.to_string()
    };
    let mut g = graph.clone();
    for n in &mut g.node {
        for i in &mut n.input {
            *i = resolve(i);
        }
    }
    let mut need: HashSet<String> = g.output.iter().map(|o| resolve(o.name())).collect();
    let mut keep = vec![false; g.node.len()];
    for (k, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| need.contains(o)) {
            keep[k] = true;
            need.extend(n.input.iter().cloned());
        }
    }
    let mut k = 0;
    g.node.retain(|_| {
        k += 1;
        keep[k - 1]
    });
    for o in &g.output {
        let r = resolve(o.name());
        if r != o.name() {
            g.node.push(skrr_onnx::onnx::NodeProto {
                input: vec![r],
                output: vec![o.name().to_string()],
                op_type: Some("Identity".into()),
                ..Default::default()
            });
        }
    }
    Ok(g)
}
