//! Whether ONNX Runtime accepts a model's graph, checked without reading a weight.
//!
//! Some exports cannot be loaded at all (onnxconverter-common's fp16 conversion of T5 leaves a
//! `Cast(to=float)` whose output is declared float16). Our own analysis does not type-check, so
//! such a model used to pass `inspect`, give a written output that did not load either, and
//! fail only in the search, naming some part model. ONNX Runtime is the judge users deploy
//! with, so we ask it, up front and before a rewritten graph is written. Every initializer is
//! declared as a graph input of its type and shape instead: type and shape inference and kernel
//! resolution run as for the real model, but no weight byte is read or copied, so the check
//! costs the same on a 20 GB model as on a small one.

use std::path::Path;

use anyhow::Result;
use prost::Message;

use crate::error::SkrrError;
use crate::onnx::{ModelProto, ValueInfoProto};
use crate::runtime::{Provider, Runtime, RuntimeConfig, Sessions};

/// `model` without its weights, each declared as a graph input instead; `None` when a nested
/// graph holds external weights (they cannot be declared as inputs there, and a model read
/// from memory has no folder to find them in), so the check cannot be made.
fn weightless(model: &ModelProto) -> Option<ModelProto> {
    let mut m = model.clone();
    let g = m.graph.as_mut()?;
    let nested_external = g.node.iter().any(|n| {
        n.attribute.iter().any(|a| {
            a.g.iter()
                .map(|g| g.as_ref())
                .chain(a.graphs.iter())
                .any(|sub| sub.initializer.iter().any(|t| !t.external_data.is_empty()))
        })
    });
    if nested_external {
        return None;
    }
    let listed: std::collections::HashSet<String> =
        g.input.iter().map(|i| i.name().to_string()).collect();
    let weights = std::mem::take(&mut g.initializer);
    for t in &weights {
        if listed.contains(t.name()) {
            continue;
        }
        g.input.push(ValueInfoProto::fixed_tensor(
            t.name(),
            t.data_type(),
            &t.dims,
        ));
    }
    g.sparse_initializer.clear();
    Some(m)
}

/// ONNX Runtime's reason for refusing `model`'s graph, or `None` when it loads (or when the
/// check cannot be made, see [`weightless`]). Errors only when ONNX Runtime itself is missing.
pub fn refusal(model: &ModelProto) -> Result<Option<String>> {
    let Some(m) = weightless(model) else {
        log::debug!("load check skipped: a nested graph holds external weights");
        return Ok(None);
    };
    // The CPU provider alone: the graph is what is judged, and a TensorRT provider would
    // start building an engine.
    let sessions = Sessions::new(RuntimeConfig {
        provider: Provider::Cpu,
        threads: Some(1),
        optimization: ort::session::builder::GraphOptimizationLevel::Disable,
    })?;
    let bytes = m.encode_to_vec();
    Ok(sessions
        .builder()?
        .commit_from_memory(&bytes)
        .err()
        .map(|e| e.to_string()))
}

/// Refuses an input model ONNX Runtime cannot load, quoting its reason, before any work: its
/// pruned version could not load either. Callers run it after block detection, whose refusals
/// (not an encoder, an encoder-decoder, a malformed graph) say more than ONNX Runtime's. Without ONNX Runtime the check is skipped with a
/// warning (`inspect` and `apply` need no runtime otherwise; the commands that do say so
/// themselves). Invalid quantization scales are refused first (`check_quantization_scales`).
pub fn check_input(model: &crate::model_io::Model, path: &Path) -> Result<()> {
    check_quantization_scales(model)?;
    match refusal(&model.proto) {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(SkrrError::BadModel {
            path: path.to_path_buf(),
            msg: format!(
                "ONNX Runtime {} cannot load this model, so no pruned version of it could load \
                 either; fix the export first (docs/usage.md, 'Support matrix'). ONNX Runtime \
                 says: {}",
                Runtime::get()?.version,
                one_line(&reason)
            ),
        }
        .into()),
        Err(e) => {
            log::warn!(
                "not checked whether ONNX Runtime loads {}: {e:#}",
                path.display()
            );
            Ok(())
        }
    }
}

/// Refuses to let a rewritten graph ONNX Runtime would not load reach the disk. The input
/// loaded (checked before), so this is a bug of the rewrite.
pub fn check_rewritten(model: &ModelProto) -> Result<()> {
    match refusal(model) {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => anyhow::bail!(
            "ONNX Runtime would refuse the rewritten model, so nothing was written (a bug in              skrr-onnx: please report it): {}",
            one_line(&reason)
        ),
        Err(e) => {
            log::warn!("not checked whether ONNX Runtime loads the rewritten model: {e:#}");
            Ok(())
        }
    }
}

/// Refuses a QDQ model whose quantizer wrote a scale that is not a positive finite number:
/// ONNX Runtime loads it, then fails on some inputs only (T5's relative-position buckets take
/// `Log(0) = -inf` during calibration, `quantize_static` writes an infinite scale, and prompts
/// longer than the calibration ones index the bias table at -2^63). Only scales stored in the
/// file are read (a few numbers each).
fn check_quantization_scales(model: &crate::model_io::Model) -> Result<()> {
    let Some(g) = model.proto.graph.as_ref() else {
        return Ok(());
    };
    let initializers: std::collections::HashMap<&str, &crate::onnx::TensorProto> =
        g.initializer.iter().map(|t| (t.name(), t)).collect();
    for n in &g.node {
        if !matches!(n.op_type(), "QuantizeLinear" | "DequantizeLinear") {
            continue;
        }
        let Some(&t) = n.input.get(1).and_then(|s| initializers.get(s.as_str())) else {
            continue;
        };
        let values = model.weights.view(t)?.to_f32();
        if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(SkrrError::BadModel {
                path: model.path.clone(),
                msg: format!(
                    "a quantized model with an invalid scale: {} reads scale {} = {v}, so \
                     ONNX Runtime computes garbage or fails on some inputs; quantize only the \
                     matrix products (quantize_static(..., op_types_to_quantize=[\"MatMul\"])), \
                     or prune the float export, then quantize",
                    n.name(),
                    t.name()
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// ONNX Runtime's messages may span lines; an error is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
