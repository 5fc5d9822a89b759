//! Closed-form linear compensation of removed sub-blocks (issue #13, beyond the paper).
//!
//! After a plan's skips, the pruned model's output `x` is a distorted copy of the dense one `y`.
//! A linear map `y ≈ x W + b`, fitted by least squares on the calibration prompts, recovers
//! much of what the removed sub-blocks did (ReplaceMe, arXiv 2505.02819, estimates such maps
//! training-free). This module fits one map on the measured output ("output" placement): the
//! objective is D itself, each squared error weighted as D weighs it (the calibration prompts'
//! tokens and the null input's each by their own count), accumulated in f64 into the normal
//! equations, and solved with a ridge term chosen on calibration chunks held out of the fit
//! (never on the prompts a fidelity check uses). Deterministic: the same prompts, plan and
//! model give the same map, bit for bit. `merged` folds such maps into the kept weights instead.

pub mod merged;

use std::time::Instant;

use anyhow::{bail, Result};
use bytes::Bytes;
use half::{bf16, f16};
use serde::Serialize;

use crate::action::Action;
use crate::calibrate::measure::{row_cos_sum, row_sse};
use crate::calibrate::{Engine, EngineOptions};
use crate::error::SkrrError;
use crate::model_io::type_name;
use crate::onnx::proto::tensor_proto::data_type;
use crate::onnx::{GraphProto, TensorProto};
use crate::runtime::Activations;

/// How the sub-blocks a plan removes are compensated (`--compensate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compensate {
    /// The plan alone.
    #[default]
    None,
    /// A linear map on the measured output, fitted in closed form on the calibration prompts;
    /// its d² + d parameters count against the sparsity.
    Linear,
    /// Zero-parameter maps folded into the kept sub-block before each skipped run (`merged`).
    Merged,
}

/// A fitted compensation, as a rewrite writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Compensation {
    Output(OutputMap),
    Merged(Vec<merged::Fold>),
}

impl Compensation {
    /// Parameters it adds to the model `analysis` describes.
    pub fn params_added(&self, analysis: &crate::blocks::Analysis) -> u64 {
        match self {
            Compensation::Output(m) => m.map.params(),
            Compensation::Merged(folds) => merged::copied_params(analysis, folds),
        }
    }

    /// The plan's sidecar bytes: every value, in order, as little-endian f64.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Compensation::Output(m) => m.map.to_le_bytes(),
            Compensation::Merged(folds) => merged::to_le_bytes(folds),
        }
    }
}

/// What fitting a plan's compensation found: for the plan file and the report.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Fitted {
    Output(FitReport),
    Merged(merged::MergedReport),
}

impl Fitted {
    /// D of the plan with the compensation, on the calibration prompts.
    pub fn d_after(&self) -> f64 {
        match self {
            Fitted::Output(f) => f.d_after,
            Fitted::Merged(m) => m.d_after,
        }
    }

    pub fn d_before(&self) -> f64 {
        match self {
            Fitted::Output(f) => f.d_before,
            Fitted::Merged(m) => m.d_before,
        }
    }

    /// The output map's ridge term (folds choose one each, in the report).
    pub fn ridge(&self) -> Option<f64> {
        match self {
            Fitted::Output(f) => Some(f.ridge),
            Fitted::Merged(_) => None,
        }
    }
}

impl std::fmt::Display for Fitted {
    /// What was fitted, its cost, and calibration D without → with it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fitted::Output(r) => write!(
                f,
                "a linear map on the output ({} parameters, ridge {:.0e}, fit {:.2} s)",
                r.params_added, r.ridge, r.seconds
            )?,
            Fitted::Merged(m) => {
                let at: Vec<String> = m.folds.iter().map(|x| x.at.to_string()).collect();
                write!(
                    f,
                    "{} zero-parameter fold(s) into sub-block(s) [{}] (fit {:.2} s)",
                    m.folds.len(),
                    at.join(", "),
                    m.seconds
                )?;
                for u in &m.unfolded {
                    write!(f, "; run {:?} left: {}", u.run, u.reason)?;
                }
            }
        }
        write!(
            f,
            ", calibration D {:.4e} → {:.4e}",
            self.d_before(),
            self.d_after()
        )
    }
}

/// Fits `choice` for `actions` on the engine's calibration set (`None` for `Compensate::None`).
pub fn compensate(
    choice: Compensate,
    engine: &mut Engine,
    model: &crate::model_io::Model,
    analysis: &crate::blocks::Analysis,
    actions: &[Action],
) -> Result<Option<(Compensation, Fitted)>> {
    Ok(match choice {
        Compensate::None => None,
        Compensate::Linear => {
            let (map, fit) = fit(engine, &analysis.graph, actions)?;
            Some((Compensation::Output(map), Fitted::Output(fit)))
        }
        Compensate::Merged => {
            let (folds, report) = merged::fit(engine, model, analysis, actions)?;
            Some((Compensation::Merged(folds), Fitted::Merged(report)))
        }
    })
}

/// A fitted map and the graph output it is applied to: what a rewrite writes into the model.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputMap {
    pub output: String,
    pub map: LinearMap,
}

/// The width (last axis) and element type of graph output `output`, which the map's shape and
/// element type follow. The width must be declared: exporters declare the hidden size fixed.
pub fn output_spec(graph: &GraphProto, output: &str) -> Result<(usize, i32)> {
    let bad = |m: String| -> anyhow::Error { SkrrError::BadInput(m).into() };
    let vi = graph
        .output
        .iter()
        .find(|o| o.name() == output)
        .ok_or_else(|| bad(format!("the model has no output {output:?} to compensate")))?;
    let elem = crate::graph::elem_type(vi)
        .ok_or_else(|| bad(format!("output {output:?} declares no element type")))?;
    if !matches!(
        elem,
        data_type::FLOAT | data_type::FLOAT16 | data_type::BFLOAT16 | data_type::DOUBLE
    ) {
        return Err(bad(format!(
            "output {output:?} is {}: linear compensation needs a floating-point output \
             (use --compensate none)",
            type_name(elem)
        )));
    }
    let width = crate::graph::fixed_dims(vi)
        .and_then(|d| d.last().copied().flatten())
        .and_then(|w| usize::try_from(w).ok())
        .filter(|&w| w > 0)
        .ok_or_else(|| {
            bad(format!(
                "output {output:?} does not declare a fixed last dimension, so the size of its \
                 linear compensation is unknown (use --compensate none)"
            ))
        })?;
    Ok((width, elem))
}

/// The parameters `choice` will add to the model (0 for none), known before any search so that
/// the search can remove that much more; refuses what cannot be compensated before the search.
pub fn planned_params(choice: Compensate, graph: &GraphProto, opts: &EngineOptions) -> Result<u64> {
    match choice {
        // A fold replaces weights with as many (exporter-shared ones are copied, and reported).
        Compensate::None | Compensate::Merged => Ok(0),
        Compensate::Linear => {
            if opts.projection.is_some() {
                return Err(SkrrError::Usage(PROJECTION_REFUSED.into()).into());
            }
            let output = crate::graph::measured_output(graph, opts.measure.as_deref())?;
            Ok(map_params(output_spec(graph, &output)?.0))
        }
    }
}

/// Search targets that leave at least `targets` of *net* sparsity once `added` parameters are
/// put back into a model of `total`.
pub fn raised_targets(targets: &[f64], added: u64, total: u64) -> Vec<f64> {
    let share = added as f64 / total.max(1) as f64;
    targets.iter().map(|t| t + share).collect()
}

const PROJECTION_REFUSED: &str = "linear compensation with --projection is not supported yet: \
                                  the map would have to be fitted through the denoiser's projection";

/// Parameters a map on `dim` channels adds: `dim² + dim`.
pub fn map_params(dim: usize) -> u64 {
    (dim * dim + dim) as u64
}

/// `y = x W + b` on the last axis of an output with `dim` channels.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearMap {
    pub dim: usize,
    /// Row-major `dim × dim`: `weight[i * dim + j]` maps input channel `i` to output channel `j`.
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

impl LinearMap {
    /// Applies the map to every position of `out` (computed in f64, stored as f32 like the
    /// outputs the engine compares).
    pub fn apply(&self, out: &Activations) -> Activations {
        let d = self.dim;
        let mut data = Vec::with_capacity(out.data.len());
        let mut acc = vec![0f64; d];
        for x in out.data.chunks_exact(d) {
            acc.copy_from_slice(&self.bias);
            for (i, &xi) in x.iter().enumerate() {
                let xi = f64::from(xi);
                for (a, &w) in acc.iter_mut().zip(&self.weight[i * d..(i + 1) * d]) {
                    *a += xi * w;
                }
            }
            data.extend(acc.iter().map(|&a| a as f32));
        }
        Activations {
            shape: out.shape.clone(),
            data,
        }
    }

    /// The map that changes nothing: D without compensation, from the same normal equations.
    fn identity(dim: usize) -> LinearMap {
        let mut weight = vec![0.0; dim * dim];
        for i in 0..dim {
            weight[i * dim + i] = 1.0;
        }
        LinearMap {
            dim,
            weight,
            bias: vec![0.0; dim],
        }
    }

    /// Parameters the map adds to a model: `dim² + dim`.
    pub fn params(&self) -> u64 {
        map_params(self.dim)
    }

    /// The map as a model of `elem_type` holds it: every value rounded to that type, so that
    /// the engine scores, and the plan's sidecar records, exactly what the written file computes.
    pub fn stored_as(&self, elem_type: i32) -> Result<LinearMap> {
        let round: fn(f64) -> f64 = match elem_type {
            data_type::FLOAT => |x| f64::from(x as f32),
            data_type::FLOAT16 => |x| f16::from_f64(x).to_f64(),
            data_type::BFLOAT16 => |x| bf16::from_f64(x).to_f64(),
            data_type::DOUBLE => |x| x,
            other => bail!("a linear map cannot be stored as {}", type_name(other)),
        };
        let stored = LinearMap {
            dim: self.dim,
            weight: self.weight.iter().map(|&x| round(x)).collect(),
            bias: self.bias.iter().map(|&x| round(x)).collect(),
        };
        if let Some(x) = stored
            .weight
            .iter()
            .chain(&stored.bias)
            .find(|x| !x.is_finite())
        {
            bail!(
                "the linear map has a value ({x}) that {} cannot hold; use --compensate none",
                type_name(elem_type)
            );
        }
        Ok(stored)
    }

    /// The plan's sidecar form: little-endian f64, the weight row-major, then the bias.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.weight
            .iter()
            .chain(&self.bias)
            .flat_map(|x| x.to_le_bytes())
            .collect()
    }

    /// The map on `dim` channels whose `dim² + dim` values are `to_le_bytes`'s order.
    pub fn from_values(dim: usize, mut values: Vec<f64>) -> Result<LinearMap> {
        if values.len() as u64 != map_params(dim) {
            bail!("{} values for a map on {dim} channels", values.len());
        }
        let bias = values.split_off(dim * dim);
        Ok(LinearMap {
            dim,
            weight: values,
            bias,
        })
    }

    /// The weight (`[dim, dim]`, so that `MatMul(x, weight)` is `x W`) and the bias (`[dim]`)
    /// as initializers of `elem_type`, inline.
    pub fn tensors(
        &self,
        elem_type: i32,
        weight: &str,
        bias: &str,
    ) -> Result<(TensorProto, TensorProto)> {
        let d = self.dim as i64;
        Ok((
            tensor_proto(weight, elem_type, vec![d, d], &self.weight)?,
            tensor_proto(bias, elem_type, vec![d], &self.bias)?,
        ))
    }
}

/// The `count` finite little-endian f64 values of a plan's sidecar.
pub fn f64_values(bytes: &[u8], count: u64) -> Result<Vec<f64>> {
    if bytes.len() as u64 != count * 8 {
        bail!(
            "holds {} bytes; the plan's compensation takes {}",
            bytes.len(),
            count * 8
        );
    }
    let values: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        bail!("value {i} is {}, not a finite number", values[i]);
    }
    Ok(values)
}

/// `values` rounded to what a tensor of `elem_type` holds, so that the engine scores, and a plan's
/// sidecar records, exactly what the written file computes; a value the type cannot hold (fp16
/// beyond 65504) is an error, never an `inf` in the file.
pub(crate) fn stored_as(values: &[f64], elem_type: i32) -> Result<Vec<f64>> {
    let round: fn(f64) -> f64 = match elem_type {
        data_type::FLOAT => |x| f64::from(x as f32),
        data_type::FLOAT16 => |x| f16::from_f64(x).to_f64(),
        data_type::BFLOAT16 => |x| bf16::from_f64(x).to_f64(),
        data_type::DOUBLE => |x| x,
        other => bail!("a compensation cannot be stored as {}", type_name(other)),
    };
    let stored: Vec<f64> = values.iter().map(|&x| round(x)).collect();
    if let Some(x) = stored.iter().find(|x| !x.is_finite()) {
        bail!(
            "the compensation has a value ({x}) that {} cannot hold; use --compensate none",
            type_name(elem_type)
        );
    }
    Ok(stored)
}

/// An inline initializer `name` of `elem_type` and shape `dims` holding `values`.
pub(crate) fn tensor_proto(
    name: &str,
    elem_type: i32,
    dims: Vec<i64>,
    values: &[f64],
) -> Result<TensorProto> {
    let bytes: Vec<u8> = match elem_type {
        data_type::FLOAT => values
            .iter()
            .flat_map(|&x| (x as f32).to_le_bytes())
            .collect(),
        data_type::FLOAT16 => values
            .iter()
            .flat_map(|&x| f16::from_f64(x).to_le_bytes())
            .collect(),
        data_type::BFLOAT16 => values
            .iter()
            .flat_map(|&x| bf16::from_f64(x).to_le_bytes())
            .collect(),
        data_type::DOUBLE => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => bail!("a compensation cannot be stored as {}", type_name(other)),
    };
    Ok(TensorProto {
        name: Some(name.to_string()),
        data_type: Some(elem_type),
        dims,
        raw_data: Some(Bytes::from(bytes)),
        ..Default::default()
    })
}

/// The normal equations of a fit, split into the chunks it learns from and the chunks held out
/// to choose its ridge: every 4th prompt chunk (the null input's chunk always stays in the fit:
/// it is one prompt D weighs like all the others). Accumulated as chunks come, so memory holds
/// two systems whatever the number of chunks.
pub(crate) struct Split {
    train: Normal,
    valid: Normal,
    prompt_chunks: usize,
}

impl Split {
    pub(crate) fn new(dim: usize, intercept: bool) -> Split {
        Split {
            train: Normal::new(dim, intercept),
            valid: Normal::new(dim, intercept),
            prompt_chunks: 0,
        }
    }

    /// Adds a chunk's `x` against `y` (`null`: the null input's chunk).
    pub(crate) fn add(
        &mut self,
        null: bool,
        x: &Activations,
        y: &Activations,
        counted: &[usize],
        w: f64,
    ) {
        let held = !null && self.prompt_chunks % 4 == 3;
        self.prompt_chunks += usize::from(!null);
        let n = if held {
            &mut self.valid
        } else {
            &mut self.train
        };
        n.add(x, y, counted, w);
    }

    /// The ridge (relative to the mean channel energy, one of `RIDGES`) whose map fitted on the
    /// training chunks errs least on the held-out ones, with the error of each ridge tried
    /// (ties go to the larger ridge, the map nearer to its prior; 1e-3 when no chunk was held
    /// out); then the map fitted on all chunks with it, and their normal equations.
    pub(crate) fn solve(self, towards_identity: bool) -> Result<Solved> {
        let mut validation = Vec::new();
        let mut best: Option<(f64, f64)> = None;
        if self.prompt_chunks > 3 {
            let scale = self.train.scale();
            for r in RIDGES {
                let Some(map) = self.train.solve(r * scale, towards_identity) else {
                    continue;
                };
                let err = self.valid.sse(&map);
                validation.push((r, err));
                if best.is_none_or(|(_, e)| err <= e) {
                    best = Some((r, err));
                }
            }
        }
        let ridge = best.map_or(1e-3, |(r, _)| r);
        let all = self.train.plus(&self.valid);
        let Some(map) = all.solve(ridge * all.scale(), towards_identity) else {
            bail!("a compensation's normal equations are singular even with a ridge term");
        };
        Ok(Solved {
            map,
            ridge,
            validation,
            all,
        })
    }
}

/// A `Split`'s fit: the map, the ridge chosen, each ridge's held-out error, and the normal
/// equations of all chunks (which give the map's error without another pass).
pub(crate) struct Solved {
    pub(crate) map: LinearMap,
    pub(crate) ridge: f64,
    pub(crate) validation: Vec<(f64, f64)>,
    pub(crate) all: Normal,
}

/// Weighted normal equations of `y ≈ x̃ M`: `a = Σ w x̃ᵀx̃`, `b = Σ w x̃ᵀy`, `c = Σ w yᵀy`, with
/// `x̃ = [x, 1]` when the map has an intercept (`M`'s last row is then the bias), else `x̃ = x`.
#[derive(Debug, Clone)]
pub(crate) struct Normal {
    dim: usize,
    intercept: bool,
    a: Vec<f64>,
    b: Vec<f64>,
    c: f64,
}

impl Normal {
    pub(crate) fn new(dim: usize, intercept: bool) -> Normal {
        let n = dim + usize::from(intercept);
        Normal {
            dim,
            intercept,
            a: vec![0.0; n * n],
            b: vec![0.0; n * dim],
            c: 0.0,
        }
    }

    fn n(&self) -> usize {
        self.dim + usize::from(self.intercept)
    }

    /// Adds the counted positions of every row of `x` (pruned) against `y` (dense).
    pub(crate) fn add(&mut self, x: &Activations, y: &Activations, counted: &[usize], weight: f64) {
        let d = self.dim;
        let n = self.n();
        let per_row = x.positions() * d;
        let mut xt = vec![0f64; n];
        for (r, &count) in counted.iter().enumerate() {
            let positions = count.min(x.positions());
            for p in 0..positions {
                let at = r * per_row + p * d;
                for (t, &v) in xt.iter_mut().zip(&x.data[at..at + d]) {
                    *t = f64::from(v);
                }
                if self.intercept {
                    xt[d] = 1.0;
                }
                let yv = &y.data[at..at + d];
                for i in 0..n {
                    let wi = weight * xt[i];
                    if wi == 0.0 {
                        continue;
                    }
                    // Upper triangle only; mirrored in `solve`.
                    for (a, &xj) in self.a[i * n + i..(i + 1) * n].iter_mut().zip(&xt[i..]) {
                        *a += wi * xj;
                    }
                    for (b, &yj) in self.b[i * d..(i + 1) * d].iter_mut().zip(yv) {
                        *b += wi * f64::from(yj);
                    }
                }
                self.c += weight * yv.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
            }
        }
    }

    pub(crate) fn plus(&self, o: &Normal) -> Normal {
        let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + y).collect();
        Normal {
            dim: self.dim,
            intercept: self.intercept,
            a: add(&self.a, &o.a),
            b: add(&self.b, &o.b),
            c: self.c + o.c,
        }
    }

    /// Mean of the channel diagonal of `a`: the scale ridge terms are relative to.
    pub(crate) fn scale(&self) -> f64 {
        let n = self.n();
        (0..self.dim).map(|i| self.a[i * n + i]).sum::<f64>() / self.dim.max(1) as f64
    }

    /// The map minimizing `Σ w |y − x̃M|² + ridge |W − P|²` (the bias is not shrunk), with the
    /// prior `P` the identity when `towards_identity` (a map that changes nothing), else 0; or
    /// `None` when the system is singular even with the ridge term.
    pub(crate) fn solve(&self, ridge: f64, towards_identity: bool) -> Option<LinearMap> {
        let (d, n) = (self.dim, self.n());
        let mut l = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                l[i * n + j] = self.a[j * n + i];
            }
            if i < d {
                l[i * n + i] += ridge;
            }
        }
        cholesky(&mut l, n)?;
        let mut m = self.b.clone();
        if towards_identity {
            for i in 0..d {
                m[i * d + i] += ridge;
            }
        }
        // Solve L Lᵀ M = B, every column of B at once (rows of M are contiguous).
        for i in 0..n {
            for k in 0..i {
                let lik = l[i * n + k];
                if lik != 0.0 {
                    let (done, rest) = m.split_at_mut(i * d);
                    for (x, &y) in rest[..d].iter_mut().zip(&done[k * d..(k + 1) * d]) {
                        *x -= lik * y;
                    }
                }
            }
            let lii = l[i * n + i];
            m[i * d..(i + 1) * d].iter_mut().for_each(|x| *x /= lii);
        }
        for i in (0..n).rev() {
            for k in i + 1..n {
                let lki = l[k * n + i];
                if lki != 0.0 {
                    let (head, tail) = m.split_at_mut(k * d);
                    for (x, &y) in head[i * d..(i + 1) * d].iter_mut().zip(&tail[..d]) {
                        *x -= lki * y;
                    }
                }
            }
            let lii = l[i * n + i];
            m[i * d..(i + 1) * d].iter_mut().for_each(|x| *x /= lii);
        }
        let bias = if self.intercept {
            m.split_off(d * d)
        } else {
            vec![0.0; d]
        };
        Some(LinearMap {
            dim: d,
            weight: m,
            bias,
        })
    }

    /// `Σ w |y − x̃M|²` of `map` on the data these equations hold, without visiting it again
    /// (without an intercept, `map`'s bias is taken as 0).
    pub(crate) fn sse(&self, map: &LinearMap) -> f64 {
        let (d, n) = (self.dim, self.n());
        let row = |i: usize| -> &[f64] {
            if i < d {
                &map.weight[i * d..(i + 1) * d]
            } else {
                &map.bias
            }
        };
        let dot = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f64>();
        // tr(Mᵀ A M) with A symmetric (upper triangle stored), − 2 tr(Mᵀ B), + c.
        let mut quad = 0.0;
        for i in 0..n {
            quad += self.a[i * n + i] * dot(row(i), row(i));
            for j in i + 1..n {
                quad += 2.0 * self.a[i * n + j] * dot(row(i), row(j));
            }
        }
        let cross: f64 = (0..n)
            .map(|i| dot(row(i), &self.b[i * d..(i + 1) * d]))
            .sum();
        (quad - 2.0 * cross + self.c).max(0.0)
    }
}

/// In-place lower Cholesky factor of the symmetric positive definite `n × n` matrix whose lower
/// triangle `l` holds; `None` if it is not positive definite.
fn cholesky(l: &mut [f64], n: usize) -> Option<()> {
    for j in 0..n {
        let (done, rest) = l.split_at_mut(j * n);
        let row_j = &mut rest[..n];
        for k in 0..j {
            let lk = &done[k * n..k * n + k];
            let s: f64 = lk.iter().zip(&row_j[..k]).map(|(a, b)| a * b).sum();
            row_j[k] = (row_j[k] - s) / done[k * n + k];
        }
        let s: f64 = row_j[..j].iter().map(|v| v * v).sum();
        let diag = row_j[j] - s;
        if diag.is_nan() || diag <= 0.0 || diag.is_infinite() {
            return None;
        }
        row_j[j] = diag.sqrt();
    }
    Some(())
}

/// Ridge terms tried, relative to the mean channel energy (`Normal::scale`).
pub(crate) const RIDGES: [f64; 8] = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// What a fit found and cost.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// The ridge term used, relative to the mean channel energy.
    pub ridge: f64,
    /// The weighted squared error on the held-out chunks for each ridge tried, in `RIDGES`
    /// order (empty when there were too few chunks to hold any out).
    pub validation: Vec<(f64, f64)>,
    /// D of the plan on the calibration set, without and with the map (in-sample).
    pub d_before: f64,
    pub d_after: f64,
    pub params_added: u64,
    pub seconds: f64,
}

/// Fits the output map of `actions` on the engine's calibration set, for the measured output
/// of `graph` (the model the engine runs), rounded to that output's element type. Every 4th
/// prompt chunk (the null input's chunk always stays in the fit: it is one prompt D weighs like
/// all the others) is held out to choose the ridge; the final map is fitted on all chunks.
pub fn fit(
    engine: &mut Engine,
    graph: &GraphProto,
    actions: &[Action],
) -> Result<(OutputMap, FitReport)> {
    if engine.projected() {
        return Err(SkrrError::Usage(PROJECTION_REFUSED.into()).into());
    }
    let output = engine.measured_output().to_string();
    let (width, elem) = output_spec(graph, &output)?;
    let start = Instant::now();
    let mut split: Option<Split> = None;
    for c in 0..engine.chunks() {
        let out = engine.output(c, actions)?;
        let (target, counted, weight) = engine.target(c);
        let split = split.get_or_insert_with(|| Split::new(out.channels(), true));
        split.add(engine.chunk_rows(c).0, &out, target, counted, weight);
    }
    let split = split.ok_or_else(|| anyhow::anyhow!("no calibration chunks to fit on"))?;
    let dim = split.train.dim;
    let Solved {
        map,
        ridge,
        validation,
        all,
    } = split.solve(false)?;
    if map.dim != width {
        bail!(
            "output {output:?} declares {width} channels, the model computes {}",
            map.dim
        );
    }
    let map = map.stored_as(elem)?;
    let report = FitReport {
        ridge,
        validation,
        d_before: all.sse(&LinearMap::identity(dim)),
        d_after: all.sse(&map),
        params_added: map.params(),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((OutputMap { output, map }, report))
}

/// D and mean token cosine of a plan without and with its map, on an engine's prompts (e.g. a
/// held-out set the map was not fitted on).
#[derive(Debug, Clone, Serialize)]
pub struct Effect {
    pub d_without: f64,
    pub d_with: f64,
    /// The prompts' part of D (D_c), without and with the map. The null input is one fixed
    /// input, the same in the fit and in any held-out set, so only D_c measures the map on
    /// inputs it was not fitted on.
    pub d_c_without: f64,
    pub d_c_with: f64,
    /// Mean cosine similarity of the prompts' tokens to the dense model's (the null input is in
    /// D, not here).
    pub cos_without: f64,
    pub cos_with: f64,
}

impl std::fmt::Display for Effect {
    /// `D a → b (−x%), D_c c → d (−y%), cosine e → f`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let change = |a: f64, b: f64| if a > 0.0 { 100.0 * (b / a - 1.0) } else { 0.0 };
        write!(
            f,
            "D {:.4e} → {:.4e} ({:+.1}%), D_c {:.4e} → {:.4e} ({:+.1}%), cosine {:.4} → {:.4}",
            self.d_without,
            self.d_with,
            change(self.d_without, self.d_with),
            self.d_c_without,
            self.d_c_with,
            change(self.d_c_without, self.d_c_with),
            self.cos_without,
            self.cos_with
        )
    }
}

/// D, D_c and mean token cosine of one side of an `Effect`.
#[derive(Debug, Clone, Copy, Default)]
struct Side {
    d: f64,
    d_c: f64,
    cos_sum: f64,
    tokens: usize,
}

impl Side {
    /// Adds chunk `c`'s output `out` against the engine's dense target.
    fn add(&mut self, engine: &Engine, c: usize, out: &Activations) -> Result<()> {
        let (target, counted, weight) = engine.target(c);
        let sse = weight * row_sse(out, target, counted)?.iter().sum::<f64>();
        self.d += sse;
        if !engine.chunk_rows(c).0 {
            self.d_c += sse;
            self.cos_sum += row_cos_sum(out, target, counted)?;
            self.tokens += counted
                .iter()
                .map(|&n| n.min(out.positions()))
                .sum::<usize>();
        }
        Ok(())
    }
}

impl Effect {
    fn of(without: Side, with: Side) -> Effect {
        let cos = |s: Side| s.cos_sum / s.tokens.max(1) as f64;
        Effect {
            d_without: without.d,
            d_with: with.d,
            d_c_without: without.d_c,
            d_c_with: with.d_c,
            cos_without: cos(without),
            cos_with: cos(with),
        }
    }
}

/// Runs every chunk of `engine` once under `actions` and measures the output with and without
/// `map`.
pub fn effect(engine: &mut Engine, actions: &[Action], map: &LinearMap) -> Result<Effect> {
    let (mut without, mut with) = (Side::default(), Side::default());
    for c in 0..engine.chunks() {
        let plain = engine.output(c, actions)?;
        without.add(engine, c, &plain)?;
        with.add(engine, c, &map.apply(&plain))?;
    }
    Ok(Effect::of(without, with))
}

/// The plan's output on every chunk, measured: one side of an `Effect`.
fn side(engine: &mut Engine, actions: &[Action]) -> Result<Side> {
    let mut side = Side::default();
    for c in 0..engine.chunks() {
        let out = engine.output(c, actions)?;
        side.add(engine, c, &out)?;
    }
    Ok(side)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activations(
        rows: usize,
        positions: usize,
        d: usize,
        f: impl Fn(usize) -> f32,
    ) -> Activations {
        Activations {
            shape: vec![rows, positions, d],
            data: (0..rows * positions * d).map(f).collect(),
        }
    }

    /// Pseudo-random but fixed values.
    fn noise(i: usize) -> f32 {
        // splitmix64
        let mut z = (i as u64).wrapping_add(1).wrapping_mul(0x9e3779b97f4a7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn an_exact_affine_relation_is_recovered() {
        let d = 5;
        let x = activations(3, 7, d, noise);
        // y = x W + b with a known W, b.
        let w: Vec<f64> = (0..d * d).map(|i| f64::from(noise(1000 + i))).collect();
        let b: Vec<f64> = (0..d).map(|i| f64::from(noise(2000 + i))).collect();
        let truth = LinearMap {
            dim: d,
            weight: w,
            bias: b,
        };
        let y = truth.apply(&x);
        let mut n = Normal::new(d, true);
        n.add(&x, &y, &[7, 7, 7], 0.25);
        let got = n.solve(1e-12, false).unwrap();
        for (g, t) in got.weight.iter().zip(&truth.weight) {
            assert!((g - t).abs() < 1e-4, "{g} vs {t}");
        }
        for (g, t) in got.bias.iter().zip(&truth.bias) {
            assert!((g - t).abs() < 1e-4, "{g} vs {t}");
        }
        assert!(n.sse(&got) < 1e-8);
    }

    #[test]
    fn sse_from_the_normal_equations_equals_the_direct_sum() {
        let d = 4;
        let x = activations(2, 6, d, noise);
        let y = activations(2, 6, d, |i| noise(i + 77));
        let counted = [6, 3];
        let mut n = Normal::new(d, true);
        n.add(&x, &y, &counted, 0.5);
        let map = n.solve(0.1, false).unwrap();
        let direct: f64 = row_sse(&map.apply(&x), &y, &counted)
            .unwrap()
            .iter()
            .sum::<f64>()
            * 0.5;
        let from_normal = n.sse(&map);
        assert!(
            (direct - from_normal).abs() <= 1e-5 * direct.max(1e-9),
            "{direct} vs {from_normal}"
        );
        // Padded positions (row 1 past 3) are not part of the fit.
        let mut other = activations(2, 6, d, |i| noise(i + 77));
        other.data[(6 + 4) * d] += 100.0;
        let mut m = Normal::new(d, true);
        m.add(&x, &other, &counted, 0.5);
        assert_eq!(m.solve(0.1, false).unwrap(), map);
    }

    #[test]
    fn a_larger_ridge_shrinks_the_map() {
        let d = 3;
        let x = activations(1, 20, d, noise);
        let y = activations(1, 20, d, |i| noise(i + 5));
        let mut n = Normal::new(d, true);
        n.add(&x, &y, &[20], 1.0);
        let norm = |m: &LinearMap| m.weight.iter().map(|w| w * w).sum::<f64>();
        let small = n.solve(1e-9, false).unwrap();
        let big = n.solve(1e3, false).unwrap();
        assert!(norm(&big) < 0.01 * norm(&small));
        // The least-squares fit is no worse in-sample than the shrunk one.
        assert!(n.sse(&small) <= n.sse(&big));
    }

    #[test]
    fn stored_maps_round_to_the_models_type_and_survive_the_sidecar() {
        let map = LinearMap {
            dim: 2,
            weight: vec![0.1, -1.0 / 3.0, 1e-9, 60000.5],
            bias: vec![std::f64::consts::PI, -0.0],
        };
        let f32_map = map.stored_as(data_type::FLOAT).unwrap();
        assert_eq!(f32_map.weight[0], f64::from(0.1f32));
        let f16_map = map.stored_as(data_type::FLOAT16).unwrap();
        assert_eq!(f16_map.bias[0], 3.140625);
        // Rounding is idempotent: what the sidecar holds is what the file holds.
        assert_eq!(f16_map.stored_as(data_type::FLOAT16).unwrap(), f16_map);
        let bytes = f16_map.to_le_bytes();
        assert_eq!(bytes.len(), 6 * 8);
        let values = f64_values(&bytes, 6).unwrap();
        assert_eq!(LinearMap::from_values(2, values).unwrap(), f16_map);
        assert!(LinearMap::from_values(3, vec![0.0; 6]).is_err());
        assert!(f64_values(&bytes, 12).is_err());
        let mut nan = bytes.clone();
        nan[..8].copy_from_slice(&f64::NAN.to_le_bytes());
        let err = f64_values(&nan, 6).unwrap_err().to_string();
        assert!(err.contains("not a finite number"), "{err}");
        assert!(map.stored_as(data_type::INT8).is_err());
        let mut big = map.clone();
        big.weight[3] = 70000.0;
        let err = big.stored_as(data_type::FLOAT16).unwrap_err().to_string();
        assert!(err.contains("cannot hold"), "{err}");
        let (w, b) = f16_map.tensors(data_type::FLOAT16, "w", "b").unwrap();
        assert_eq!(
            (w.dims.as_slice(), b.dims.as_slice()),
            (&[2i64, 2][..], &[2i64][..])
        );
        let halves: Vec<f16> = w
            .raw_data
            .unwrap()
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect();
        let back: Vec<f64> = halves.iter().map(|h| h.to_f64()).collect();
        assert_eq!(back, f16_map.weight);
    }
}
