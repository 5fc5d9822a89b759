//! Executes any skip/re-use plan on the calibration set and measures its discrepancy D against
//! the dense model (method doc, "Discrepancy D").
//!
//! A plan runs as a chain of part sessions on the residual stream: skip passes the stream
//! through, `Reuse(q)` at `p` runs `q`'s session with `p`'s side inputs. Savings that change no
//! result: dense targets computed once; streams cached per (chunk, plan prefix) so a candidate
//! resumes at its first changed sub-block; prompt chunks run one at a time (`advance`), so a
//! caller can stop a candidate once its partial D (a lower bound, since D only grows) exceeds a
//! bound, and choose which candidate runs next.
//! Per-prompt error sums are added in prompt order, so D does not depend on chunking, caching or
//! the order of evaluation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, ValueType};
use serde::Serialize;

use super::cache::StreamCache;
use super::inputs::CalibSet;
use super::measure::{row_cos_sum, row_sse};
use super::parts::{onnx_data_type, InputType, SessionParts};
use crate::action::Action;
use crate::blocks::{Analysis, Kind};
use crate::error::SkrrError;
use crate::model_io::Model;
use crate::onnx::TensorProto;
use crate::runtime::{activations, feeds, value_bytes, Activations, Prepack, Projection, Sessions};

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How the engine's sessions are built.
    pub sessions: Sessions,
    /// Include D_null (the null input's discrepancy).
    pub null: bool,
    /// Count padded positions in D (every sequence is then padded to the set's `max_length`).
    pub include_padding: bool,
    /// Prompts per chunk (one ONNX Runtime batch).
    pub chunk: usize,
    /// Bound on the stream cache, in bytes.
    pub cache_mem: u64,
    /// Projection model applied to the final output of dense and candidate alike.
    pub projection: Option<PathBuf>,
    /// Whether ONNX Runtime may keep packed copies of the weights.
    pub prepack: Prepack,
    /// The graph output D is measured on (`graph::measured_output`'s default when `None`).
    pub measure: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    pub d_c: f64,
    pub d_null: f64,
}

impl Score {
    pub fn d(&self) -> f64 {
        self.d_c + self.d_null
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Scored(Score),
    /// Stopped early: the partial D already exceeded the bound.
    Abandoned {
        partial: f64,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineStats {
    /// Plans run to their last chunk (abandoning is the caller's: see the search report).
    pub plans_scored: u64,
    /// Chunks run through a plan (dense targets included).
    pub chunk_runs: u64,
    /// Sub-block session runs.
    pub block_runs: u64,
    /// Sub-block runs avoided by resuming from a cached stream.
    pub block_runs_saved: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_evictions: u64,
    pub cache_entries: usize,
    pub cache_bytes: u64,
    /// Bytes of large weights the part sessions read from the input's files (each counted
    /// once; never copied by this process).
    pub shared_weight_bytes: u64,
    /// Whether the sessions keep packed copies of the weights (`EngineOptions::prepack`).
    pub prepacked: bool,
}

/// One batch of prompts (or the null input) with everything that does not depend on the plan.
struct Chunk {
    null: bool,
    /// Prompt index of each row.
    prompts: Vec<usize>,
    /// Positions of each row that count in D (valid tokens, or all when padding counts).
    counted: Vec<usize>,
    /// Graph inputs fed and prologue outputs: the side values every sub-block may read.
    env: HashMap<String, DynValue>,
    /// The stream entering sub-block 0.
    stream0: Arc<DynValue>,
    /// The dense model's (projected) output.
    target: Activations,
}

pub struct Engine {
    parts: SessionParts,
    /// Layer of each sub-block.
    layers: Vec<usize>,
    kinds: Vec<Kind>,
    prologue: Option<Session>,
    blocks: Vec<Option<Session>>,
    epilogue: Option<Session>,
    projection: Option<Projection>,
    chunks: Vec<Chunk>,
    prompts: usize,
    denom_c: f64,
    denom_null: f64,
    cache: StreamCache,
    stats: EngineStats,
    /// Weights sub-blocks run with instead of their own (a merged compensation's folds, issue
    /// #13): tensors named as the initializers they stand in for, and the session once built.
    folds: HashMap<usize, (Vec<TensorProto>, Option<Session>)>,
    /// Sessions of sub-blocks that also return inner values (`probe`), with those values.
    probes: HashMap<usize, (Vec<String>, Session)>,
}

impl Engine {
    /// Builds the part sessions, runs the dense model on every chunk and keeps its outputs as
    /// targets.
    pub fn new(
        model: &Model,
        analysis: &Analysis,
        calib: CalibSet,
        opts: EngineOptions,
    ) -> Result<Engine> {
        if opts.chunk == 0 {
            return Err(SkrrError::Usage("--chunk must be at least 1".into()).into());
        }
        if calib.prompts.is_empty() {
            return Err(SkrrError::BadInput("no calibration prompts".into()).into());
        }
        let parts = SessionParts::build(
            opts.sessions,
            &model.proto,
            analysis,
            &model.weights,
            opts.measure.as_deref(),
        )?;
        let prepack = opts.prepack.decide(parts.shared_bytes);
        log::info!(
            "{} MiB of weights read from the model's files ({} KiB of them by several parts), \
             pre-packing {}",
            parts.shared_bytes >> 20,
            parts.repeated_bytes >> 10,
            if prepack { "on" } else { "off" }
        );
        let projection = match &opts.projection {
            None => None,
            Some(path) => Some(Projection::load(&opts.sessions, path)?),
        };

        let fixed = fixed_length(&calib, opts.include_padding);
        let groups = chunk_groups(&calib, &opts, analysis);
        let mut engine = Engine {
            layers: analysis.sub_blocks.iter().map(|s| s.layer).collect(),
            kinds: analysis.sub_blocks.iter().map(|s| s.kind).collect(),
            prologue: None,
            blocks: (0..analysis.sub_blocks.len()).map(|_| None).collect(),
            epilogue: None,
            projection,
            chunks: Vec::new(),
            prompts: calib.prompts.len(),
            denom_c: 0.0,
            denom_null: 0.0,
            cache: StreamCache::new(opts.cache_mem),
            stats: EngineStats {
                shared_weight_bytes: parts.shared_bytes,
                prepacked: prepack,
                ..Default::default()
            },
            parts,
            folds: HashMap::new(),
            probes: HashMap::new(),
        };
        let dense = vec![Action::Keep; engine.blocks.len()];
        let bar = crate::progress::bar(groups.len() as u64, "dense targets", "chunks");
        for (null, prompts) in groups {
            engine.add_chunk(&calib, fixed, null, prompts, &dense)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(engine)
    }

    /// Adds a chunk of `prompts` (or the null input) padded to `fixed` or to its longest row:
    /// runs the prologue once, then the dense model, whose output is the chunk's target.
    fn add_chunk(
        &mut self,
        calib: &CalibSet,
        fixed: Option<usize>,
        null: bool,
        prompts: Vec<usize>,
        dense: &[Action],
    ) -> Result<()> {
        let rows: Vec<&[i64]> = if null {
            vec![calib.null.as_deref().unwrap_or_default()]
        } else {
            prompts
                .iter()
                .map(|&i| calib.prompts[i].as_slice())
                .collect()
        };
        let len = fixed.unwrap_or_else(|| rows.iter().map(|r| r.len()).max().unwrap_or(0));
        let counted = rows
            .iter()
            .map(|r| if fixed.is_some() { len } else { r.len() })
            .collect::<Vec<_>>();
        let feeds = feeds(&self.parts.graph_inputs, &rows, len, calib.pad_id)?;
        let (env, stream0) = self.run_prologue(feeds)?;
        self.chunks.push(Chunk {
            null,
            prompts,
            counted,
            env,
            stream0: Arc::new(stream0),
            target: Activations::default(),
        });
        let c = self.chunks.len() - 1;
        let out = self.forward(c, dense)?;
        let chunk = &mut self.chunks[c];
        // A pooled output (one position per row) counts one position per prompt in D
        // (`row_sse` clamps alike); `counted` keeps the token counts Block Influence uses.
        let tokens: usize = chunk.counted.iter().map(|&n| n.min(out.positions())).sum();
        let channels = out.channels() as f64;
        if chunk.null {
            self.denom_null += tokens as f64 * channels;
        } else {
            self.denom_c += tokens as f64 * channels;
        }
        chunk.target = out;
        Ok(())
    }

    /// D of a plan, every chunk run.
    pub fn d(&mut self, actions: &[Action]) -> Result<f64> {
        match self.score(actions, None)? {
            Outcome::Scored(s) => Ok(s.d()),
            Outcome::Abandoned { .. } => {
                Err(anyhow!("a plan scored without a bound was abandoned"))
            }
        }
    }

    /// D of a plan; with `bound`, may stop early once the partial D exceeds it (D only grows as
    /// prompts are added).
    pub fn score(&mut self, actions: &[Action], bound: Option<f64>) -> Result<Outcome> {
        let mut terms = Vec::new();
        let last = self.chunks.len() - 1;
        for c in 0..last {
            let partial = self.advance(actions, c, &mut terms)?;
            if bound.is_some_and(|b| partial > b) {
                return Ok(Outcome::Abandoned { partial });
            }
        }
        self.advance(actions, last, &mut terms)?;
        Ok(Outcome::Scored(self.split(&terms)))
    }

    /// Runs chunk `c` of `actions` and stores its error terms in `terms` (a squared error per
    /// prompt, then the null input's; zero until its chunk has run). Returns the D of the terms
    /// so far: a lower bound on the plan's D that only grows, and its D once every chunk has
    /// run, in any order. Terms are summed in prompt order, so D does not depend on chunking or
    /// on the order chunks ran in.
    pub fn advance(&mut self, actions: &[Action], c: usize, terms: &mut Vec<f64>) -> Result<f64> {
        if actions.len() != self.blocks.len() {
            return Err(anyhow!(
                "plan has {} actions, the model has {} sub-blocks",
                actions.len(),
                self.blocks.len()
            ));
        }
        if c >= self.chunks.len() {
            return Err(anyhow!("chunk {c} of {}", self.chunks.len()));
        }
        self.validate(actions)?;
        terms.resize(self.prompts + 1, 0.0);
        let out = self.forward(c, actions)?;
        let chunk = &self.chunks[c];
        let sse = row_sse(&out, &chunk.target, &chunk.counted)?;
        if chunk.null {
            terms[self.prompts] = sse[0];
        } else {
            for (&i, s) in chunk.prompts.iter().zip(&sse) {
                terms[i] = *s;
            }
        }
        if c + 1 == self.chunks.len() {
            self.stats.plans_scored += 1;
        }
        Ok(self.split(terms).d())
    }

    fn split(&self, terms: &[f64]) -> Score {
        let null = self.chunks.first().is_some_and(|c| c.null);
        Score {
            d_c: terms[..self.prompts].iter().sum::<f64>() / self.denom_c,
            d_null: if null {
                terms[self.prompts] / self.denom_null
            } else {
                0.0
            },
        }
    }

    /// ShortGPT Block Influence per layer on the dense model: 1 − mean over valid tokens of
    /// cos(layer input, layer output).
    pub fn block_influence(&mut self) -> Result<Vec<f64>> {
        let layers = self.layers.iter().max().map_or(0, |l| l + 1);
        let mut sum = vec![0.0f64; layers];
        let mut count = 0usize;
        for c in 0..self.chunks.len() {
            if self.chunks[c].null {
                continue;
            }
            let mut stream = self.chunks[c].stream0.clone();
            let mut layer_in = activations(&stream)?;
            for p in 0..self.blocks.len() {
                stream = Arc::new(self.run_block(p, p, c, &stream)?);
                let ends_layer = self.layers.get(p + 1) != Some(&self.layers[p]);
                if ends_layer {
                    let out = activations(&stream)?;
                    let cos = row_cos_sum(&layer_in, &out, &self.chunks[c].counted)?;
                    sum[self.layers[p]] += cos;
                    layer_in = out;
                }
            }
            count += self.chunks[c].counted.iter().sum::<usize>();
        }
        Ok(sum.into_iter().map(|s| 1.0 - s / count as f64).collect())
    }

    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.clone();
        s.cache_hits = self.cache.hits;
        s.cache_misses = self.cache.misses;
        s.cache_evictions = self.cache.evictions;
        s.cache_entries = self.cache.len();
        s.cache_bytes = self.cache.bytes();
        s
    }

    /// Number of sub-blocks.
    pub fn sub_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Number of chunks (the null input, when measured, is chunk 0).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Which inputs chunk `c` holds: whether it is the null input, and the prompt index of
    /// each row otherwise.
    pub fn chunk_rows(&self, c: usize) -> (bool, &[usize]) {
        (self.chunks[c].null, &self.chunks[c].prompts)
    }

    /// The dense model's (projected) output on chunk `c`, the positions of each row that count
    /// in D, and the weight D gives each of their squared errors (1 / (tokens × channels) of
    /// the calibration prompts, or of the null input): D of a plan is the weighted sum of its
    /// squared errors against these targets.
    pub fn target(&self, c: usize) -> (&Activations, &[usize], f64) {
        let chunk = &self.chunks[c];
        let denom = if chunk.null {
            self.denom_null
        } else {
            self.denom_c
        };
        (&chunk.target, &chunk.counted, 1.0 / denom)
    }

    /// Sub-blocks that run before the measured output (all, unless it is a tap inside).
    pub fn measured_after(&self) -> usize {
        self.parts.measured_after
    }

    /// The graph output D is measured on.
    pub fn measured_output(&self) -> &str {
        &self.parts.output
    }

    /// Whether the outputs pass through a denoiser projection before D is measured.
    pub fn projected(&self) -> bool {
        self.projection.is_some()
    }

    /// The (projected) output of the plan on chunk `c` of the calibration set (with the folds
    /// set), for fits and for tests that compare against the full model.
    pub fn output(&mut self, c: usize, actions: &[Action]) -> Result<Activations> {
        self.forward(c, actions)
    }

    /// A re-use must run a kept sub-block of the same kind (as `action::validate` checks).
    fn validate(&self, actions: &[Action]) -> Result<()> {
        for (p, a) in actions.iter().enumerate() {
            if let Action::Reuse(q) = *a {
                if q >= actions.len()
                    || self.kinds[q] != self.kinds[p]
                    || actions[q] != Action::Keep
                {
                    return Err(SkrrError::BadInput(format!(
                        "sub-block {p} cannot re-use {q}: the source must be a kept sub-block of the same kind"
                    ))
                    .into());
                }
            }
        }
        Ok(())
    }

    fn run_prologue(
        &mut self,
        feeds: Vec<(String, DynValue)>,
    ) -> Result<(HashMap<String, DynValue>, DynValue)> {
        let part = &self.parts.prologue;
        let mut env: HashMap<String, DynValue> = feeds.into_iter().collect();
        if self.prologue.is_none() {
            let types = part
                .inputs
                .iter()
                .map(|n| {
                    env.get(n)
                        .ok_or_else(|| anyhow!("the prologue reads {n}, which is not fed"))
                        .and_then(input_type)
                })
                .collect::<Result<Vec<_>>>()?;
            self.prologue = Some(
                self.parts
                    .session(part, &types, self.stats.prepacked, &[])?,
            );
        }
        let inputs = part
            .inputs
            .iter()
            .map(|n| {
                env.get(n)
                    .map(|v| (n.as_str(), SessionInputValue::from(v)))
                    .ok_or_else(|| anyhow!("the prologue reads {n}, which is not fed"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = self
            .prologue
            .as_mut()
            .expect("built above")
            .run(inputs)
            .map_err(|e| SkrrError::Runtime(format!("ONNX Runtime failed in the prologue: {e}")))?;
        let mut stream0 = None;
        for (i, name) in part.outputs.iter().enumerate() {
            let v = out
                .remove(name.as_str())
                .ok_or_else(|| anyhow!("the prologue did not produce {name}"))?;
            if i == 0 {
                stream0 = Some(v);
            } else {
                env.insert(name.clone(), v);
            }
        }
        drop(out);
        Ok((
            env,
            stream0.ok_or_else(|| anyhow!("prologue without outputs"))?,
        ))
    }

    /// Runs `q`'s session at position `p` of chunk `c` on `stream` (with `q`'s fold, if any).
    fn run_block(&mut self, q: usize, p: usize, c: usize, stream: &DynValue) -> Result<DynValue> {
        let mut out = self.run_part(q, p, c, stream, &[])?;
        Ok(out.swap_remove(0))
    }

    /// `run_block`, returning the stream after `q`, then the inner values `extra` of `q`.
    fn run_part(
        &mut self,
        q: usize,
        p: usize,
        c: usize,
        stream: &DynValue,
        extra: &[String],
    ) -> Result<Vec<DynValue>> {
        let env = &self.chunks[c].env;
        let slot_p = &self.parts.blocks[p];
        let part_q = &self.parts.blocks[q];
        if slot_p.inputs.len() != part_q.inputs.len() {
            return Err(anyhow!(
                "sub-block {p} has {} side inputs, {q} has {}: they cannot share weights",
                slot_p.inputs.len() - 1,
                part_q.inputs.len() - 1
            ));
        }
        let mut values: Vec<&DynValue> = vec![stream];
        for name in &slot_p.inputs[1..] {
            values.push(
                env.get(name).ok_or_else(|| {
                    anyhow!("side input {name} of sub-block {p} is not available")
                })?,
            );
        }
        let types = || {
            values
                .iter()
                .map(|v| input_type(v))
                .collect::<Result<Vec<_>>>()
        };
        let replaced: &[TensorProto] = self.folds.get(&q).map_or(&[], |(t, _)| t);
        let prepack = self.stats.prepacked;
        let session = if !extra.is_empty() {
            if self.probes.get(&q).is_none_or(|(names, _)| names != extra) {
                let mut part = part_q.clone();
                part.outputs.extend(extra.iter().cloned());
                let session = self.parts.session(&part, &types()?, prepack, replaced)?;
                self.probes.insert(q, (extra.to_vec(), session));
            }
            &mut self.probes.get_mut(&q).expect("built above").1
        } else if let Some((tensors, session)) = self.folds.get_mut(&q) {
            if session.is_none() {
                *session = Some(self.parts.session(part_q, &types()?, prepack, tensors)?);
            }
            session.as_mut().expect("built above")
        } else {
            if self.blocks[q].is_none() {
                self.blocks[q] = Some(self.parts.session(part_q, &types()?, prepack, &[])?);
            }
            self.blocks[q].as_mut().expect("built above")
        };
        let inputs: Vec<(&str, SessionInputValue)> = part_q
            .inputs
            .iter()
            .zip(values)
            .map(|(n, v)| (n.as_str(), SessionInputValue::from(v)))
            .collect();
        let mut out = session.run(inputs).map_err(|e| {
            SkrrError::Runtime(format!(
                "ONNX Runtime failed running sub-block {q} at position {p}: {e}"
            ))
        })?;
        self.stats.block_runs += 1;
        std::iter::once(&part_q.outputs[0])
            .chain(extra)
            .map(|name| {
                out.remove(name.as_str())
                    .ok_or_else(|| anyhow!("sub-block {q} produced no {name}"))
            })
            .collect()
    }

    /// The dense model's stream entering position `until` of chunk `c`, whatever folds are set.
    pub fn dense_stream(&mut self, c: usize, until: usize) -> Result<Arc<DynValue>> {
        let folds = std::mem::take(&mut self.folds);
        let dense = vec![Action::Keep; self.blocks.len()];
        let stream = self.stream_into(c, &dense, until);
        self.folds = folds;
        stream
    }

    /// Makes sub-block `at` run with `tensors` standing in for the initializers they are named
    /// after (a merged compensation's fold); `None` restores its own weights. Streams after
    /// `at` are no longer taken from the cache.
    pub fn set_fold(&mut self, at: usize, tensors: Option<Vec<TensorProto>>) {
        self.probes.remove(&at);
        match tensors {
            Some(t) => self.folds.insert(at, (t, None)),
            None => self.folds.remove(&at),
        };
    }

    /// Runs sub-block `p` (its own weights, or its fold) on `stream` of chunk `c`, returning
    /// its output stream and the inner values `extra`, as float arrays.
    pub fn probe(
        &mut self,
        c: usize,
        p: usize,
        stream: &DynValue,
        extra: &[String],
    ) -> Result<Vec<Activations>> {
        self.run_part(p, p, c, stream, extra)?
            .iter()
            .map(activations)
            .collect()
    }

    /// The stream entering position `until` of chunk `c` under `actions` (with the folds set),
    /// resuming from the longest cached prefix. Streams computed through a fold are neither
    /// taken from nor put in the cache.
    pub fn stream_into(
        &mut self,
        c: usize,
        actions: &[Action],
        until: usize,
    ) -> Result<Arc<DynValue>> {
        let first_fold = self.folds.keys().copied().min().unwrap_or(usize::MAX);
        let cacheable = until.min(first_fold);
        let (start, mut stream) = match self.cache.longest_prefix(c, &actions[..cacheable]) {
            Some(hit) => hit,
            None => (0, self.chunks[c].stream0.clone()),
        };
        self.stats.block_runs_saved += actions[..start]
            .iter()
            .filter(|a| **a != Action::Skip)
            .count() as u64;
        for p in start..until {
            let q = match actions[p] {
                Action::Skip => continue,
                Action::Keep => p,
                Action::Reuse(q) => q,
            };
            let out = Arc::new(self.run_block(q, p, c, &stream)?);
            if p < first_fold {
                let bytes = value_bytes(&out);
                self.cache.insert(c, &actions[..=p], out.clone(), bytes);
            }
            stream = out;
        }
        Ok(stream)
    }

    /// The plan's (projected) output on chunk `c`, resuming from the longest cached prefix.
    fn forward(&mut self, c: usize, actions: &[Action]) -> Result<Activations> {
        // A pipeline folder's run holds its staged folder through the search: a signal then
        // ends the search here, and the folder is removed (crate::interrupt).
        crate::interrupt::check()?;
        self.stats.chunk_runs += 1;
        let stream = self.stream_into(c, actions, self.parts.measured_after)?;
        let output = match self.parts.epilogue.clone() {
            None => activations(&stream)?,
            Some(part) => {
                if self.epilogue.is_none() {
                    let mut types = vec![input_type(&stream)?];
                    for name in &part.inputs[1..] {
                        types.push(input_type(self.chunks[c].env.get(name).ok_or_else(
                            || anyhow!("the epilogue reads {name}, which is not available"),
                        )?)?);
                    }
                    self.epilogue =
                        Some(
                            self.parts
                                .session(&part, &types, self.stats.prepacked, &[])?,
                        );
                }
                let env = &self.chunks[c].env;
                let mut inputs: Vec<(&str, SessionInputValue)> =
                    vec![(part.inputs[0].as_str(), SessionInputValue::from(&*stream))];
                for name in &part.inputs[1..] {
                    inputs.push((name.as_str(), SessionInputValue::from(&env[name])));
                }
                let session = self.epilogue.as_mut().expect("built above");
                let out = session.run(inputs).map_err(|e| {
                    SkrrError::Runtime(format!("ONNX Runtime failed in the epilogue: {e}"))
                })?;
                activations(
                    out.get(part.outputs[0].as_str())
                        .ok_or_else(|| anyhow!("the epilogue produced no output"))?,
                )?
            }
        };
        match &mut self.projection {
            None => Ok(output),
            Some(projection) => projection.apply(&output),
        }
    }
}

/// The length every row is padded to when padded positions count in D (`include_padding`):
/// the set's `max_length`, or its longest row if longer.
fn fixed_length(calib: &CalibSet, include_padding: bool) -> Option<usize> {
    include_padding.then(|| {
        calib
            .prompts
            .iter()
            .chain(calib.null.iter())
            .map(Vec::len)
            .max()
            .unwrap_or(0)
            .max(calib.max_length)
    })
}

/// The chunks the prompts run in, as (is the null input, prompt indices): the null input first
/// when D_null is measured, then the prompts longest first, so that rows of a chunk have
/// similar lengths (less padding) and the first chunks hold the most tokens (a partial D then
/// approaches the full one sooner and bad candidates are abandoned earlier). Prompts keep their
/// identity (indices into the set).
fn chunk_groups(
    calib: &CalibSet,
    opts: &EngineOptions,
    analysis: &Analysis,
) -> Vec<(bool, Vec<usize>)> {
    let mut order: Vec<usize> = (0..calib.prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(calib.prompts[i].len()));
    let mut groups: Vec<(bool, Vec<usize>)> = Vec::new();
    if opts.null && calib.null.is_some() {
        groups.push((true, Vec::new()));
    }
    let chunk = crate::graph::batch_size(
        crate::graph::batch_coupling(&analysis.graph, opts.include_padding),
        opts.chunk,
    );
    groups.extend(order.chunks(chunk).map(|c| (false, c.to_vec())));
    groups
}

fn input_type(v: &DynValue) -> Result<InputType> {
    match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => Ok(InputType {
            elem_type: onnx_data_type(*ty)
                .ok_or_else(|| anyhow!("unsupported stream element type {ty}"))?,
            dims: shape.iter().copied().collect(),
        }),
        other => Err(anyhow!("expected a tensor between sub-blocks, got {other}")),
    }
}
