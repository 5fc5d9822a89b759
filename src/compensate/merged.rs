//! Merged compensation (issue #13, placement (a); ReplaceMe, arXiv 2505.02819): for every run of
//! skipped sub-blocks, a linear map folded into the output projection of the kept sub-block just
//! before it, so the model gains no parameter.
//!
//! The kept sub-block `p` computes `s = h + B` (the stream `h` plus its branch output
//! `B = u W + b`), then, in a post-norm model, `LN(s)`. A map on `B` folds into `(W, b)`:
//! `B T + c = u (W T) + (b T + c)`. It is fitted so that the stream after `p`, which the skipped
//! run now passes on unchanged, matches the dense model's stream after the run: `h + B T + c ≈
//! L`, by least squares with D's weights, f64 normal equations and a ridge term towards the
//! identity (no change) chosen on held-out calibration chunks, as the output map's. A post-norm
//! sub-block then re-fits its LayerNorm's per-channel scale and shift to the same target (also
//! folded). Runs are fitted in order, each on the stream the earlier folds produce. This is the
//! variant an independent reference measured best on the real MiniLM (docs/benchmarks.md).

use anyhow::Result;
use serde::Serialize;

use super::{stored_as, tensor_proto, Split};
use crate::action::Action;
use crate::blocks::Analysis;
use crate::calibrate::Engine;
use crate::model_io::Model;
use crate::onnx::proto::tensor_proto::data_type;
use crate::onnx::{GraphProto, TensorProto};
use crate::runtime::{activations, Activations};

/// Where a fold goes: the kept sub-block before a skipped run, and what in it the fold changes.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldSite {
    pub at: usize,
    /// The branch output `B`, which the residual `Add` adds to the stream.
    pub branch: String,
    /// The residual sum, when a LayerNormalization of it ends the sub-block (post-norm).
    pub sum: Option<String>,
    /// `W` (`[k, d]`) and `b` (`[d]`) of `B = u W + b`.
    pub weight: String,
    pub bias: Option<String>,
    /// The ending LayerNormalization's scale, shift and epsilon (post-norm).
    pub norm: Option<(String, Option<String>, f64)>,
}

impl FoldSite {
    /// The fold site of sub-block `p`, or why it has none. The branch must end in a `MatMul`
    /// with a floating-point initializer (plus an optional bias `Add`) that the residual `Add`
    /// adds to the sub-block's input, optionally followed by a LayerNormalization over the last
    /// axis with initializer scale and shift, then by casts. Not foldable, and reported as such:
    /// quantized projections, sandwich norms after the projection (Gemma 2), and norm weights
    /// an exporter shares between layers through `Identity` nodes (Optimum).
    pub fn find(analysis: &Analysis, p: usize) -> Result<FoldSite, String> {
        let g = &analysis.graph;
        let sb = &analysis.sub_blocks[p];
        let producer = |v: &str| {
            sb.nodes
                .iter()
                .map(|&i| &g.node[i])
                .find(|n| n.output.iter().any(|o| o == v))
        };
        let init = |name: &str| g.initializer.iter().find(|t| t.name() == name);
        let float = |t: &TensorProto| {
            matches!(
                t.data_type(),
                data_type::FLOAT | data_type::FLOAT16 | data_type::BFLOAT16 | data_type::DOUBLE
            )
        };
        let mut last = producer(&sb.output).ok_or("its output is not computed inside it")?;
        // Legacy exports of T5, Llama or Qwen2 end a sub-block with the next norm's Cast of the
        // stream; a fold acts before it.
        while matches!(last.op_type(), "Cast" | "Identity") {
            last = last
                .input
                .first()
                .and_then(|v| producer(v))
                .ok_or("its output is a cast of a value not computed inside it")?;
        }
        let (residual, sum, norm) = if last.op_type() == "LayerNormalization" {
            let axis = last.attr("axis").and_then(|a| a.i).unwrap_or(-1);
            if axis != -1 {
                return Err(format!("its LayerNormalization normalizes axis {axis}"));
            }
            let scale = last.input.get(1).filter(|s| init(s).is_some_and(float));
            let shift = last.input.get(2).filter(|s| !s.is_empty());
            if scale.is_none() || shift.is_some_and(|s| !init(s).is_some_and(float)) {
                return Err("its LayerNormalization's scale or shift is not an initializer".into());
            }
            let eps = last.attr("epsilon").and_then(|a| a.f).unwrap_or(1e-5);
            let sum = last.input[0].clone();
            let add = producer(&sum).ok_or("its normalized value is not computed inside it")?;
            let norm = (
                scale.cloned().unwrap_or_default(),
                shift.cloned(),
                f64::from(eps),
            );
            (add, Some(sum), Some(norm))
        } else {
            (last, None, None)
        };
        if residual.op_type() != "Add" || residual.input.len() != 2 {
            return Err(format!(
                "it ends in {}, not a residual Add",
                residual.op_type()
            ));
        }
        let branch = match residual.input.iter().position(|v| *v == sb.input) {
            Some(k) => residual.input[1 - k].clone(),
            None => return Err("its residual Add does not read its input stream".into()),
        };
        let out = producer(&branch).ok_or("its branch output is not computed inside it")?;
        let (matmul, bias) = match out.op_type() {
            "MatMul" => (out, None),
            "Add" => {
                let k = out.input.iter().position(|v| init(v).is_some_and(float));
                let Some(k) = k.filter(|_| out.input.len() == 2) else {
                    return Err("its branch ends in an Add without a bias initializer".into());
                };
                let mm = producer(&out.input[1 - k])
                    .filter(|n| n.op_type() == "MatMul")
                    .ok_or("its branch's bias is not added to a MatMul")?;
                (mm, Some(out.input[k].clone()))
            }
            op => return Err(format!("its branch ends in {op}, not a MatMul")),
        };
        let weight = matmul.input.get(1).cloned().unwrap_or_default();
        let w = init(&weight)
            .filter(|t| float(t) && t.dims.len() == 2)
            .ok_or("its output projection is not a 2-D floating-point initializer (quantized?)")?;
        let d = w.dims[1];
        let sized = |name: &Option<String>| {
            name.as_deref()
                .is_none_or(|n| init(n).is_some_and(|t| t.dims == [d]))
        };
        let norm_names = norm.as_ref().map(|(s, b, _)| (Some(s.clone()), b.clone()));
        let (scale, shift) = norm_names.unwrap_or((None, None));
        if !sized(&bias) || !sized(&scale) || !sized(&shift) {
            return Err("its bias or norm does not have the projection's width".into());
        }
        Ok(FoldSite {
            at: p,
            branch,
            sum,
            weight,
            bias,
            norm,
        })
    }
}

/// The tensors a fold replaces, as the model will hold them (rounded to each one's type).
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub at: usize,
    /// The skipped run it compensates (first and last position).
    pub run: (usize, usize),
    pub tensors: Vec<FoldTensor>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoldTensor {
    /// The initializer it stands in for (in the fold's sub-block only).
    pub replaces: String,
    pub elem_type: i32,
    pub dims: Vec<i64>,
    pub values: Vec<f64>,
}

impl Fold {
    /// The fold's tensors named as the initializers they stand in for (what the engine runs).
    pub fn protos(&self) -> Result<Vec<TensorProto>> {
        self.tensors.iter().map(|t| t.proto(&t.replaces)).collect()
    }
}

impl FoldTensor {
    /// The tensor named `name`, inline, in its element type.
    pub fn proto(&self, name: &str) -> Result<TensorProto> {
        tensor_proto(name, self.elem_type, self.dims.clone(), &self.values)
    }
}

/// Elements the folds add to the model: copies of initializers that nodes outside the fold's
/// sub-block still read (exporters share all-ones norms and zero biases between layers).
pub fn copied_params(analysis: &Analysis, folds: &[Fold]) -> u64 {
    let g = &analysis.graph;
    folds
        .iter()
        .flat_map(|f| f.tensors.iter().map(move |t| (f.at, t)))
        .filter(|(at, t)| {
            let own = &analysis.sub_blocks[*at].nodes;
            g.node
                .iter()
                .enumerate()
                .any(|(i, n)| !own.contains(&i) && n.input.contains(&t.replaces))
        })
        .map(|(_, t)| t.values.len() as u64)
        .sum()
}

/// A run the fit left alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unfolded {
    pub run: (usize, usize),
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FoldReport {
    pub at: usize,
    pub run: (usize, usize),
    pub ridge: f64,
    /// Whether the sub-block's LayerNormalization was re-fitted too.
    pub norm: bool,
}

/// What the merged fit did and cost.
#[derive(Debug, Clone, Serialize)]
pub struct MergedReport {
    pub folds: Vec<FoldReport>,
    pub unfolded: Vec<Unfolded>,
    /// D of the plan on the calibration set, without and with the folds.
    pub d_before: f64,
    pub d_after: f64,
    pub seconds: f64,
}

/// Maximal runs of consecutive skips, as (first, last) positions.
pub fn skipped_runs(actions: &[Action]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (p, a) in actions.iter().enumerate() {
        match (a, start) {
            (Action::Skip, None) => start = Some(p),
            (Action::Skip, Some(_)) => {}
            (_, Some(s)) => {
                runs.push((s, p - 1));
                start = None;
            }
            (_, None) => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, actions.len() - 1));
    }
    runs
}

/// Fits a fold for every skipped run of `actions` that has a site, in order, on the engine's
/// calibration set, and leaves the engine as it found it (no fold set).
pub fn fit(
    engine: &mut Engine,
    model: &Model,
    analysis: &Analysis,
    actions: &[Action],
) -> Result<(Vec<Fold>, MergedReport)> {
    let start = std::time::Instant::now();
    let d_before = engine.d(actions)?;
    let mut folds = Vec::new();
    let mut reports = Vec::new();
    let mut unfolded = Vec::new();
    let mut d = d_before;
    for run in skipped_runs(actions) {
        let site = match run.0.checked_sub(1) {
            None => Err("no sub-block runs before it".to_string()),
            Some(_) if run.0 >= engine.measured_after() => {
                Err("it lies after the measured output, which it cannot change".to_string())
            }
            Some(p) if actions[p] != Action::Keep => Err(format!("sub-block {p} is not kept")),
            Some(p) if actions.contains(&Action::Reuse(p)) => Err(format!(
                "sub-block {p} is re-used elsewhere, and its weights must keep serving there"
            )),
            Some(p) => FoldSite::find(analysis, p).map_err(|e| format!("sub-block {p}: {e}")),
        };
        let fitted = match site {
            Ok(site) => {
                let (fold, report) = fit_one(engine, model, &analysis.graph, actions, &site, run)?;
                engine.set_fold(fold.at, Some(fold.protos()?));
                // A fold is fitted to the stream after its run; one that does not lower D where
                // it is measured (the output, through later sub-blocks) is left out.
                let with = engine.d(actions)?;
                if with < d {
                    d = with;
                    Ok((fold, report))
                } else {
                    engine.set_fold(fold.at, None);
                    Err(format!("its fold did not lower D ({d:.4e} → {with:.4e})"))
                }
            }
            Err(reason) => Err(reason),
        };
        match fitted {
            Ok((fold, report)) => {
                folds.push(fold);
                reports.push(report);
            }
            Err(reason) => {
                log::info!("skipped run {run:?} not compensated: {reason}");
                unfolded.push(Unfolded { run, reason });
            }
        }
    }
    let d_after = d;
    for f in &folds {
        engine.set_fold(f.at, None);
    }
    Ok((
        folds,
        MergedReport {
            folds: reports,
            unfolded,
            d_before,
            d_after,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}

/// One chunk's data for a fold: the stream `h` entering the site, its branch output `B`, the
/// dense stream `L` after the run, and how D counts the chunk.
struct Sample {
    h: Activations,
    b: Activations,
    l: Activations,
    counted: Vec<usize>,
    weight: f64,
}

fn fit_one(
    engine: &mut Engine,
    model: &Model,
    graph: &GraphProto,
    actions: &[Action],
    site: &FoldSite,
    run: (usize, usize),
) -> Result<(Fold, FoldReport)> {
    let p = site.at;
    // The target: the dense stream after the run, or at the measured output when that is a
    // tap inside the run (later sub-blocks cannot change it).
    let until = (run.1 + 1).min(engine.measured_after());
    let mut samples = Vec::new();
    let mut split: Option<Split> = None;
    for c in 0..engine.chunks() {
        let h = engine.stream_into(c, actions, p)?;
        let mut outs = engine.probe(c, p, &h, std::slice::from_ref(&site.branch))?;
        let l = activations(&*engine.dense_stream(c, until)?)?;
        let (_, counted, weight) = engine.target(c);
        let sample = Sample {
            h: activations(&h)?,
            b: outs.swap_remove(1),
            l,
            counted: counted.to_vec(),
            weight,
        };
        let split =
            split.get_or_insert_with(|| Split::new(sample.b.channels(), site.bias.is_some()));
        let null = engine.chunk_rows(c).0;
        let y = minus(&sample.l, &sample.h);
        split.add(null, &sample.b, &y, &sample.counted, sample.weight);
        samples.push(sample);
    }
    let split = split.ok_or_else(|| anyhow::anyhow!("no calibration chunks to fit on"))?;
    let dim = samples[0].b.channels();
    let solved = split.solve(true)?;
    let (map, ridge) = (solved.map, solved.ridge);
    let init = |name: &str| -> Result<&TensorProto> {
        graph
            .initializer
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| anyhow::anyhow!("initializer {name} is missing"))
    };
    let values = |t: &TensorProto| -> Result<Vec<f64>> {
        Ok(model
            .weights
            .view(t)?
            .to_f32()
            .into_iter()
            .map(f64::from)
            .collect())
    };
    let fold_tensor = |t: &TensorProto, values: Vec<f64>| -> Result<FoldTensor> {
        Ok(FoldTensor {
            replaces: t.name().to_string(),
            elem_type: t.data_type(),
            dims: t.dims.clone(),
            values: stored_as(&values, t.data_type())?,
        })
    };
    // W' = W T, b' = b T + c.
    let w = init(&site.weight)?;
    let wv = values(w)?;
    let k = wv.len() / dim;
    let mut tensors_out = vec![fold_tensor(w, times(&wv, k, &map.weight, dim))?];
    if let Some(b) = &site.bias {
        let b = init(b)?;
        let mut bv = times(&values(b)?, 1, &map.weight, dim);
        for (x, c) in bv.iter_mut().zip(&map.bias) {
            *x += c;
        }
        tensors_out.push(fold_tensor(b, bv)?);
    }
    if let Some((scale, shift, eps)) = &site.norm {
        let (gamma, beta) = refit_norm(&samples, &map, *eps, dim, shift.is_some());
        let keep = |old: Vec<f64>, new: Vec<Option<f64>>| -> Vec<f64> {
            old.into_iter()
                .zip(new)
                .map(|(o, n)| n.unwrap_or(o))
                .collect()
        };
        let s = init(scale)?;
        tensors_out.push(fold_tensor(s, keep(values(s)?, gamma))?);
        if let Some(shift) = shift {
            let b = init(shift)?;
            tensors_out.push(fold_tensor(b, keep(values(b)?, beta))?);
        }
    }
    Ok((
        Fold {
            at: p,
            run,
            tensors: tensors_out,
        },
        FoldReport {
            at: p,
            run,
            ridge,
            norm: site.norm.is_some(),
        },
    ))
}

/// `a − b`, element by element.
fn minus(a: &Activations, b: &Activations) -> Activations {
    Activations {
        shape: a.shape.clone(),
        data: a.data.iter().zip(&b.data).map(|(x, y)| x - y).collect(),
    }
}

/// `M T` for `M` of `rows × d` and `T` of `d × d`, both row-major.
fn times(m: &[f64], rows: usize, t: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * d];
    for r in 0..rows {
        let o = &mut out[r * d..(r + 1) * d];
        for (i, &x) in m[r * d..(r + 1) * d].iter().enumerate() {
            if x != 0.0 {
                for (a, &w) in o.iter_mut().zip(&t[i * d..(i + 1) * d]) {
                    *a += x * w;
                }
            }
        }
    }
    out
}

/// Per-channel scale and shift of the LayerNorm after the folded sum, fitted (weighted least
/// squares, D's weights) so that `scale · n + shift ≈ L` with `n` the normalized folded sum;
/// `None` for a channel whose fit is degenerate (it keeps its own).
fn refit_norm(
    samples: &[Sample],
    map: &super::LinearMap,
    eps: f64,
    dim: usize,
    with_shift: bool,
) -> (Vec<Option<f64>>, Vec<Option<f64>>) {
    // Per channel: Σw n², Σw n, Σw, Σw n L, Σw L.
    let mut acc = vec![[0f64; 5]; dim];
    let mut z = vec![0f64; dim];
    for s in samples {
        let per_row = s.b.positions() * dim;
        for (r, &count) in s.counted.iter().enumerate() {
            for t in 0..count.min(s.b.positions()) {
                let at = r * per_row + t * dim;
                let (h, b, l) = (&s.h.data[at..], &s.b.data[at..], &s.l.data[at..]);
                for (j, zj) in z.iter_mut().enumerate() {
                    *zj = f64::from(h[j]) + map.bias[j];
                }
                for (i, &bi) in b[..dim].iter().enumerate() {
                    let bi = f64::from(bi);
                    for (zj, &w) in z.iter_mut().zip(&map.weight[i * dim..(i + 1) * dim]) {
                        *zj += bi * w;
                    }
                }
                let mean = z.iter().sum::<f64>() / dim as f64;
                let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (var + eps).sqrt();
                for (j, a) in acc.iter_mut().enumerate() {
                    let (n, y, w) = ((z[j] - mean) * inv, f64::from(l[j]), s.weight);
                    a[0] += w * n * n;
                    a[1] += w * n;
                    a[2] += w;
                    a[3] += w * n * y;
                    a[4] += w * y;
                }
            }
        }
    }
    acc.iter()
        .map(|&[nn, n, one, ny, y]| {
            if with_shift {
                let det = nn * one - n * n;
                if det <= 1e-12 * nn * one {
                    return (None, None);
                }
                (
                    Some((ny * one - n * y) / det),
                    Some((nn * y - n * ny) / det),
                )
            } else if nn > 0.0 {
                (Some(ny / nn), None)
            } else {
                (None, None)
            }
        })
        .unzip()
}

/// D, D_c and token cosine of `actions` on the engine's prompts (e.g. held-out ones the folds
/// were not fitted on) without and with `folds`; the engine is left without them.
pub fn effect(engine: &mut Engine, actions: &[Action], folds: &[Fold]) -> Result<super::Effect> {
    let without = super::side(engine, actions)?;
    if folds.is_empty() {
        return Ok(super::Effect::of(without, without));
    }
    let with = with_folds(engine, folds, |e| super::side(e, actions))?;
    Ok(super::Effect::of(without, with))
}

/// Runs `f` on the engine with `folds` set, and leaves the engine without them, whatever `f`
/// returns.
pub fn with_folds<T>(
    engine: &mut Engine,
    folds: &[Fold],
    f: impl FnOnce(&mut Engine) -> Result<T>,
) -> Result<T> {
    let mut set = Ok(());
    for fold in folds {
        set = fold.protos().map(|t| engine.set_fold(fold.at, Some(t)));
        if set.is_err() {
            break;
        }
    }
    let out = set.and_then(|()| f(engine));
    for fold in folds {
        engine.set_fold(fold.at, None);
    }
    out
}

/// The folds as the plan's sidecar holds them: every tensor's values, in order, as
/// little-endian f64.
pub fn to_le_bytes(folds: &[Fold]) -> Vec<u8> {
    folds
        .iter()
        .flat_map(|f| &f.tensors)
        .flat_map(|t| &t.values)
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Keep as K, Reuse as R, Skip as S};

    #[test]
    fn runs_are_maximal_stretches_of_skips() {
        assert_eq!(skipped_runs(&[K, S, S, K, S, R(0)]), vec![(1, 2), (4, 4)]);
        assert_eq!(skipped_runs(&[S, K, S, S]), vec![(0, 0), (2, 3)]);
        assert!(skipped_runs(&[K, K]).is_empty());
    }

    #[test]
    fn times_multiplies_row_major_matrices() {
        // [1 2; 3 4] · [0 1; 1 0] = [2 1; 4 3]
        assert_eq!(
            times(&[1.0, 2.0, 3.0, 4.0], 2, &[0.0, 1.0, 1.0, 0.0], 2),
            vec![2.0, 1.0, 4.0, 3.0]
        );
    }
}
