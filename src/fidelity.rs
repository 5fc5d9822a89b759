//! Fidelity of a pruned model against its dense original, measured by running both *whole* files
//! with ONNX Runtime on the same prompts (normally held-out ones): what `compare` prints and the
//! end-to-end command records. Independent of the calibration engine on purpose, so it also
//! judges the rewrite and any model a user pruned some other way.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use ort::session::{Session, SessionInputValue};
use serde::Serialize;

use crate::calibrate::CalibSet;
use crate::error::SkrrError;
use crate::model_io::{element_count, read_model, Model};
use crate::onnx::ValueInfoProto;
use crate::runtime::{activations, feeds, Activations, Prepack, Projection, Sessions};

/// Pass/fail limits, in the spirit of Polygraphy: every check is reported with its value and
/// limit, and the verdict is PASSED only if all pass.
#[derive(Debug, Clone, Serialize)]
pub struct Tolerances {
    /// Lowest acceptable mean per-token cosine similarity.
    pub min_cos: f64,
    /// Largest acceptable factor between the null embedding's norms (pruned/dense or its
    /// inverse); guidance breaks when the null embedding's norm explodes.
    pub max_null_ratio: f64,
    /// Largest acceptable D (D_c + D_null), if set.
    pub max_d: Option<f64>,
    /// Element-wise tolerances: an element fails only if it exceeds both `atol` and
    /// `rtol × |dense|`; the check passes when no element fails. Off unless either is set.
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
}

impl Tolerances {
    /// Whether element-wise limits were asked for.
    fn elementwise(&self) -> bool {
        self.atol.is_some() || self.rtol.is_some()
    }

    /// Every check these tolerances ask for, on the measured values.
    fn checks(
        &self,
        cos_mean: f64,
        null_norm_ratio: Option<f64>,
        d: f64,
        elements_failed: Option<u64>,
    ) -> Vec<Check> {
        let check = |name, value: f64, limit: f64, passed| Check {
            name,
            value,
            limit,
            passed,
        };
        let mut checks = vec![check(
            "cos_mean",
            cos_mean,
            self.min_cos,
            cos_mean >= self.min_cos,
        )];
        if let Some(r) = null_norm_ratio {
            let factor = if r > 0.0 {
                r.max(1.0 / r)
            } else {
                f64::INFINITY
            };
            checks.push(check(
                "null_norm_factor",
                factor,
                self.max_null_ratio,
                factor <= self.max_null_ratio,
            ));
        }
        if let Some(max_d) = self.max_d {
            checks.push(check("d", d, max_d, d <= max_d));
        }
        if let Some(failed) = elements_failed {
            checks.push(check("elements_failed", failed as f64, 0.0, failed == 0));
        }
        checks
    }
}

/// What running a model on the prompts needs besides the prompts.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How the two models' sessions are built.
    pub sessions: Sessions,
    /// Count padded positions (every sequence padded to the set's `max_length`).
    pub include_padding: bool,
    /// Prompts per ONNX Runtime batch.
    pub chunk: usize,
    /// Projection applied to both outputs before measuring.
    pub projection: Option<PathBuf>,
    /// The output compared (`graph::measured_output`'s default when `None`).
    pub measure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSize {
    pub path: PathBuf,
    /// Initializer elements.
    pub params: u64,
    /// Model file plus its external data files.
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub value: f64,
    pub limit: f64,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    pub dense: ModelSize,
    pub pruned: ModelSize,
    /// Fraction of the dense model's parameters the pruned one no longer has.
    pub params_reduction: f64,
    pub bytes_reduction: f64,
    /// The output compared (`last_hidden_state` when the model has it, else the first).
    pub output: String,
    pub prompts: usize,
    /// Positions measured (valid tokens of every prompt).
    pub tokens: u64,
    pub d_c: f64,
    pub d_null: Option<f64>,
    pub d: f64,
    /// Mean squared error over measured positions and channels (= D_c).
    pub mse: f64,
    pub max_abs_err: f64,
    /// ‖pruned − dense‖ / ‖dense‖ over the measured positions.
    pub rel_err_norm: f64,
    pub cos_mean: f64,
    pub cos_min: f64,
    /// ‖null embedding of pruned‖ / ‖null embedding of dense‖.
    pub null_norm_ratio: Option<f64>,
    pub elements_failed: Option<u64>,
    /// A pruned model written with a linear map on the output (issue #13): the same figures for
    /// the value before the map, read from the same run.
    pub uncompensated: Option<Uncompensated>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

/// D and cosine of a compensated model without its compensation: the value its output map reads
/// (same run), or its plan without its folds (`compare`, by the calibration engine).
#[derive(Debug, Clone, Serialize)]
pub struct Uncompensated {
    /// What was measured.
    pub value: String,
    pub d_c: f64,
    pub d_null: Option<f64>,
    pub d: f64,
    pub cos_mean: f64,
    pub cos_min: Option<f64>,
}

/// Running sums over measured positions.
#[derive(Default)]
struct Sums {
    tokens: u64,
    sse: f64,
    dense_sq: f64,
    max_abs: f64,
    cos_sum: f64,
    cos_min: f64,
    failed: u64,
    channels: usize,
}

impl Sums {
    fn new() -> Sums {
        Sums {
            cos_min: f64::INFINITY,
            ..Sums::default()
        }
    }

    /// D of the positions added: mean squared error over positions and channels.
    fn d(&self) -> f64 {
        self.sse / (self.tokens.max(1) as f64 * self.channels.max(1) as f64)
    }

    fn cos_mean(&self) -> f64 {
        self.cos_sum / self.tokens.max(1) as f64
    }

    /// Adds the first `counted[r]` positions of every row of `out` against `target`.
    fn add(
        &mut self,
        out: &Activations,
        target: &Activations,
        counted: &[usize],
        tol: &Tolerances,
    ) -> Result<()> {
        if out.shape != target.shape {
            return Err(SkrrError::BadInput(format!(
                "the pruned model's output has shape {:?}, the dense model's {:?}",
                out.shape, target.shape
            ))
            .into());
        }
        let ch = out.channels();
        self.channels = ch;
        let elementwise = tol.atol.is_some() || tol.rtol.is_some();
        let per_row = out.data.len() / counted.len().max(1);
        for (r, &n) in counted.iter().enumerate() {
            let n = n.min(per_row / ch.max(1));
            for t in 0..n {
                let at = r * per_row + t * ch;
                let (x, y) = (&out.data[at..at + ch], &target.data[at..at + ch]);
                let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
                for (&a, &b) in x.iter().zip(y) {
                    let (a, b) = (f64::from(a), f64::from(b));
                    let e = (a - b).abs();
                    self.sse += e * e;
                    self.max_abs = self.max_abs.max(e);
                    if elementwise
                        && e > tol.atol.unwrap_or(0.0)
                        && e > tol.rtol.unwrap_or(0.0) * b.abs()
                    {
                        self.failed += 1;
                    }
                    xy += a * b;
                    xx += a * a;
                    yy += b * b;
                }
                self.dense_sq += yy;
                let cos = if xx * yy > 0.0 {
                    xy / (xx * yy).sqrt()
                } else {
                    1.0
                };
                self.cos_sum += cos;
                self.cos_min = self.cos_min.min(cos);
                self.tokens += 1;
            }
        }
        Ok(())
    }
}

/// A whole model to run: what is needed to feed it. Its session is built only for its pass
/// (`outputs`), so the dense and the pruned model are never loaded together.
struct Runner {
    inputs: Vec<ValueInfoProto>,
    /// Name of the output measured (`graph::measured_output`, as the engine's).
    output: String,
    /// Rows of the token-embedding table, when the graph shows it.
    vocab: Option<usize>,
    /// Why its rows depend on their batch mates (`graph::batch_coupling`): run one at a time.
    coupling: Option<&'static str>,
    /// The value a compensation map reads (`map_input`), fetched too.
    before_map: Option<String>,
    size: ModelSize,
}

/// One ONNX Runtime batch of the comparison: prompt rows, the padded length, and the tokens
/// counted per row.
struct Batch<'a> {
    rows: Vec<&'a [i64]>,
    len: usize,
    counted: Vec<usize>,
}

impl<'a> Batch<'a> {
    /// Padded to the longest row, or to `max_length` when padded positions count.
    fn new(rows: Vec<&'a [i64]>, include_padding: bool, max_length: usize) -> Batch<'a> {
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let len = if include_padding {
            max_length.max(longest)
        } else {
            longest
        };
        let counted = rows
            .iter()
            .map(|r| if include_padding { len } else { r.len() })
            .collect();
        Batch { rows, len, counted }
    }
}

impl Runner {
    fn load(path: &Path, measure: Option<&str>, include_padding: bool) -> Result<Runner> {
        // Reading validates the file (and its external data) before ONNX Runtime sees it.
        let model = read_model(path)?;
        // Reported as the user wrote it, like every other path the commands print.
        let size = ModelSize {
            path: path.to_path_buf(),
            ..model_size(&model)?
        };
        let graph = model
            .proto
            .graph
            .as_ref()
            .ok_or_else(|| anyhow!("{}: the model has no graph", path.display()))?;
        let inputs = crate::graph::fed_inputs(graph).cloned().collect();
        let output = crate::graph::measured_output(graph, measure)
            .with_context(|| path.display().to_string())?;
        Ok(Runner {
            inputs,
            before_map: map_input(&model.proto, &output),
            output,
            coupling: crate::graph::batch_coupling(graph, include_padding),
            vocab: crate::graph::model_vocab(graph),
            size,
        })
    }

    /// The model's (projected) output on each batch, and the value before its compensation map
    /// when it has one, from a session that lives for this pass only.
    fn outputs(
        &self,
        batches: &[Batch],
        pad_id: i64,
        projection: &mut Option<Projection>,
        sessions: &Sessions,
        mut each: impl FnMut(usize, Activations, Option<Activations>) -> Result<()>,
    ) -> Result<()> {
        let path = self.size.path.display().to_string();
        let mut session = self.session(sessions)?;
        for (i, batch) in batches.iter().enumerate() {
            crate::interrupt::check()?;
            let values = feeds(&self.inputs, &batch.rows, batch.len, pad_id)?;
            let values = session
                .run(
                    values
                        .into_iter()
                        .map(|(n, v)| (n, SessionInputValue::from(v)))
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| SkrrError::Runtime(format!("ONNX Runtime failed on {path}: {e}")))?;
            let fetch = |name: &str| -> Result<Activations> {
                let v = values
                    .get(name)
                    .ok_or_else(|| anyhow!("{path} produced no output {name}"))?;
                activations(v).with_context(|| format!("output {name} of {path}"))
            };
            let out = fetch(&self.output)?;
            let before = self.before_map.as_deref().map(fetch).transpose()?;
            let mut projected = |d: Activations| -> Result<Activations> {
                match projection.as_mut() {
                    Some(p) => p.apply(&d),
                    None => Ok(d),
                }
            };
            let before = before.map(&mut projected).transpose()?;
            each(i, projected(out)?, before)?;
        }
        Ok(())
    }

    /// A session on the file; with a compensation map, on the file with the map's input as an
    /// extra graph output (built in memory, its external data read from the file's folder).
    /// Pre-packing follows the engine's `auto` rule, so a model too large for packed copies
    /// runs from its memory-mapped data.
    fn session(&self, sessions: &Sessions) -> Result<Session> {
        let path = self.size.path.display().to_string();
        let err = |e: &dyn std::fmt::Display| -> anyhow::Error {
            SkrrError::Runtime(format!("ONNX Runtime cannot load {path}: {e}")).into()
        };
        let mut builder = sessions
            .builder()?
            .with_prepacking(Prepack::Auto.decide(self.size.bytes))
            .map_err(|e| SkrrError::Runtime(format!("ONNX Runtime session options: {e}")))?;
        let Some(value) = &self.before_map else {
            return builder
                .commit_from_file(&self.size.path)
                .map_err(|e| err(&e));
        };
        let mut model = read_model(&self.size.path)?.proto;
        let g = model.graph.as_mut().expect("read_model checks the graph");
        let mut extra = g
            .output
            .iter()
            .find(|o| o.name() == self.output)
            .cloned()
            .unwrap_or_default();
        extra.name = Some(value.clone());
        g.output.push(extra);
        let folder = match self.size.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        builder
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                folder.to_string_lossy(),
            )
            .map_err(|e| err(&e))?
            .commit_from_memory(&prost::Message::encode_to_vec(&model))
            .map_err(|e| err(&e))
    }
}

/// A pruned model must be a drop-in replacement: same input names and types, same first
/// output. Anything else is a different model, not a less faithful one.
fn same_interface(a: &Runner, b: &Runner) -> Result<()> {
    let sig = |r: &Runner| -> Vec<(String, Option<i32>)> {
        r.inputs
            .iter()
            .map(|v| (v.name().to_string(), crate::graph::elem_type(v)))
            .collect()
    };
    let names = |r: &Runner| -> Vec<String> { sig(r).into_iter().map(|(n, _)| n).collect() };
    let (sa, sb) = (sig(a), sig(b));
    let same_inputs = sa.len() == sb.len()
        && sa
            .iter()
            .zip(&sb)
            .all(|((na, ta), (nb, tb))| na == nb && ta == tb);
    if !same_inputs || a.output != b.output {
        return Err(SkrrError::BadInput(format!(
            "{} is not a drop-in replacement for {}: inputs {:?} → {:?}, first output {:?} → {:?}",
            b.size.path.display(),
            a.size.path.display(),
            names(a),
            names(b),
            a.output,
            b.output
        ))
        .into());
    }
    // Pruning keeps the embedding table; another vocabulary means another model.
    if let (Some(va), Some(vb)) = (a.vocab, b.vocab) {
        if va != vb {
            return Err(SkrrError::BadInput(format!(
                "{} is not a pruned {}: its vocabulary has {vb} tokens, the dense model's {va}",
                b.size.path.display(),
                a.size.path.display()
            ))
            .into());
        }
    }
    if b.size.params > a.size.params {
        log::warn!(
            "{} has more parameters than {} ({} > {}): is it the pruned one?",
            b.size.path.display(),
            a.size.path.display(),
            b.size.params,
            a.size.params
        );
    }
    Ok(())
}

/// In a model written with an output map on `output` (its `skrr.plan` metadata records one), the
/// value the map reads: the plan's output before compensation, so that `compare` can show both.
fn map_input(model: &crate::onnx::ModelProto, output: &str) -> Option<String> {
    let plan = crate::plan::PlanFile::recorded_in(model)?;
    if plan.compensation?.output.as_deref() != Some(output) {
        return None;
    }
    let g = model.graph.as_ref()?;
    let producer = |v: &str| g.node.iter().find(|n| n.output.iter().any(|o| o == v));
    let add = producer(output).filter(|n| n.op_type() == "Add")?;
    let matmul = producer(add.input.first()?).filter(|n| n.op_type() == "MatMul")?;
    matmul.input.first().cloned()
}

/// Parameters and on-disk bytes of a model (model file plus external data files).
pub fn model_size(model: &Model) -> Result<ModelSize> {
    let graph = model.proto.graph.as_ref();
    let params = graph
        .map(|g| g.initializer.iter().map(element_count).sum::<Result<u64>>())
        .transpose()?
        .unwrap_or(0);
    Ok(ModelSize {
        path: model.path.clone(),
        params,
        bytes: model.file_bytes()?,
    })
}

impl Fidelity {
    /// `Ok` when every check passed, else the typed error (exit status 1) naming the failed
    /// checks.
    pub fn verdict(&self) -> Result<()> {
        if self.passed {
            return Ok(());
        }
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{} {:.6} (limit {})", c.name, c.value, c.limit))
            .collect();
        Err(SkrrError::CheckFailed(format!("fidelity check FAILED: {}", failed.join(", "))).into())
    }
}

/// Runs `dense` and `pruned` on `calib` and measures how far apart they are.
pub fn measure(
    dense_path: &Path,
    pruned_path: &Path,
    calib: &CalibSet,
    opts: &RunOptions,
    tol: &Tolerances,
) -> Result<Fidelity> {
    if calib.prompts.is_empty() {
        return Err(SkrrError::BadInput("no prompts to compare on".into()).into());
    }
    let a = Runner::load(dense_path, opts.measure.as_deref(), opts.include_padding)?;
    let b = Runner::load(pruned_path, opts.measure.as_deref(), opts.include_padding)?;
    same_interface(&a, &b)?;
    let chunk = crate::graph::batch_size(a.coupling.or(b.coupling), opts.chunk.max(1));
    let batches = Batches::new(calib, chunk, opts.include_padding);
    let tally = Tally::of(&a, &b, &batches, calib.pad_id, opts, tol)?;

    let d_c = tally.prompts.d();
    let (d_null, null_norm_ratio) = match calib.null {
        Some(_) => (Some(tally.null.d()), Some(tally.null_norm_ratio())),
        None => (None, None),
    };
    let d = d_c + d_null.unwrap_or(0.0);
    let cos_mean = tally.prompts.cos_mean();
    let elements_failed = tol.elementwise().then_some(tally.prompts.failed);
    let checks = tol.checks(cos_mean, null_norm_ratio, d, elements_failed);
    let passed = checks.iter().all(|c| c.passed);
    let uncompensated = tally.uncompensated(b.before_map.clone(), calib.null.is_some());
    let sums = &tally.prompts;
    let reduction = |x: u64, y: u64| 1.0 - y as f64 / (x.max(1) as f64);
    Ok(Fidelity {
        params_reduction: reduction(a.size.params, b.size.params),
        bytes_reduction: reduction(a.size.bytes, b.size.bytes),
        output: a.output.clone(),
        dense: a.size,
        pruned: b.size,
        prompts: calib.prompts.len(),
        tokens: sums.tokens,
        d_c,
        d_null,
        d,
        mse: d_c,
        max_abs_err: sums.max_abs,
        rel_err_norm: (sums.sse / sums.dense_sq.max(f64::MIN_POSITIVE)).sqrt(),
        cos_mean,
        cos_min: sums.cos_min,
        null_norm_ratio,
        elements_failed,
        uncompensated,
        checks,
        passed,
    })
}

/// The prompt batches, then the null input's (last, if measured).
struct Batches<'a> {
    all: Vec<Batch<'a>>,
    /// How many of `all` hold prompts.
    prompts: usize,
}

impl<'a> Batches<'a> {
    fn new(calib: &'a CalibSet, chunk: usize, include_padding: bool) -> Batches<'a> {
        let batch = |rows| Batch::new(rows, include_padding, calib.max_length);
        let mut all: Vec<Batch> = calib
            .prompts
            .chunks(chunk)
            .map(|rows| batch(rows.iter().map(Vec::as_slice).collect()))
            .collect();
        let prompts = all.len();
        if let Some(ids) = &calib.null {
            all.push(batch(vec![ids.as_slice()]));
        }
        Batches { all, prompts }
    }
}

/// The pruned model's outputs summed against the dense model's.
struct Tally {
    prompts: Sums,
    null: Sums,
    /// ‖pruned null output‖², as the "dense" side of a comparison of that output with itself.
    pruned_null_sq: Sums,
    /// The compensated model's value before its map: (prompts, null input).
    before: Option<(Sums, Sums)>,
}

impl Tally {
    /// One model at a time: every dense output first (kept: prompts × tokens × channels), then
    /// the pruned model's, each compared as it comes.
    fn of(
        a: &Runner,
        b: &Runner,
        batches: &Batches,
        pad_id: i64,
        opts: &RunOptions,
        tol: &Tolerances,
    ) -> Result<Tally> {
        let mut projection = opts
            .projection
            .as_deref()
            .map(|p| Projection::load(&opts.sessions, p))
            .transpose()?;
        let all = &batches.all;
        let bar = crate::progress::bar(2 * all.len() as u64, "comparing", "batches");
        let mut targets = Vec::with_capacity(all.len());
        a.outputs(all, pad_id, &mut projection, &opts.sessions, |_, out, _| {
            targets.push(out);
            bar.inc(1);
            Ok(())
        })?;
        let mut tally = Tally {
            prompts: Sums::new(),
            null: Sums::new(),
            pruned_null_sq: Sums::new(),
            before: b.before_map.as_ref().map(|_| (Sums::new(), Sums::new())),
        };
        b.outputs(
            all,
            pad_id,
            &mut projection,
            &opts.sessions,
            |i, out, pre| {
                let counted = &all[i].counted;
                let is_prompt = i < batches.prompts;
                if let (Some((prompts, null)), Some(pre)) = (tally.before.as_mut(), pre) {
                    let sums = if is_prompt { prompts } else { null };
                    sums.add(&pre, &targets[i], counted, tol)?;
                }
                if is_prompt {
                    tally.prompts.add(&out, &targets[i], counted, tol)?;
                } else {
                    tally.null.add(&out, &targets[i], counted, tol)?;
                    tally.pruned_null_sq.add(&out, &out, counted, tol)?;
                }
                bar.inc(1);
                Ok(())
            },
        )?;
        bar.finish_and_clear();
        Ok(tally)
    }

    /// ‖pruned null embedding‖ / ‖dense null embedding‖.
    fn null_norm_ratio(&self) -> f64 {
        (self.pruned_null_sq.dense_sq / self.null.dense_sq.max(f64::MIN_POSITIVE)).sqrt()
    }

    /// The measures of the value before the compensation map, `value` naming it.
    fn uncompensated(&self, value: Option<String>, null: bool) -> Option<Uncompensated> {
        let (prompts, null_sums) = self.before.as_ref()?;
        let d_null = null.then(|| null_sums.d());
        Some(Uncompensated {
            value: value.unwrap_or_default(),
            d_c: prompts.d(),
            d_null,
            d: prompts.d() + d_null.unwrap_or(0.0),
            cos_mean: prompts.cos_mean(),
            cos_min: Some(prompts.cos_min),
        })
    }
}
