//! `inspect`'s report: what block detection found, as a table or as JSON.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::Render;
use crate::blocks::{Analysis, Kind};

/// A model's analysis as `inspect` shows it.
pub struct InspectReport<'a> {
    pub model: &'a Path,
    pub analysis: &'a Analysis,
    /// "pre" or "post" (`blocks::norm_position`).
    pub norm: &'a str,
}

impl Serialize for InspectReport<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        to_json(self.model, self.analysis, self.norm).serialize(s)
    }
}

impl Render for InspectReport<'_> {
    fn text(&self) -> String {
        to_text(self.model, self.analysis, self.norm)
    }
}

fn share(part: u64, total: u64) -> f64 {
    part as f64 / total.max(1) as f64
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Attention => "attention",
        Kind::Ffn => "ffn",
    }
}

/// Graph inputs the prologue reads (token ids, mask, ...), in the graph's input order.
fn prologue_inputs(a: &Analysis) -> Vec<String> {
    let read: std::collections::HashSet<&str> = a
        .prologue
        .iter()
        .flat_map(|&n| a.graph.node[n].input.iter().map(String::as_str))
        .collect();
    crate::graph::fed_inputs(&a.graph)
        .map(|i| i.name().to_string())
        .filter(|i| read.contains(i.as_str()))
        .collect()
}

/// Rank ≥ 2 initializers the prologue reads: the embedding and position tables.
fn prologue_tables(a: &Analysis) -> Vec<(String, Vec<i64>)> {
    let mut seen = std::collections::BTreeSet::new();
    for &n in &a.prologue {
        seen.extend(a.graph.node[n].input.iter().map(String::as_str));
    }
    a.graph
        .initializer
        .iter()
        .filter(|t| t.dims.len() >= 2 && seen.contains(t.name()))
        .map(|t| (t.name().to_string(), t.dims.clone()))
        .collect()
}

fn to_json(path: &Path, a: &Analysis, norm: &str) -> serde_json::Value {
    let total = a.total_params;
    json!({
        "model": path,
        "family": a.family,
        "norm": norm,
        "layers": a.layers,
        "structure_signature": a.structure_signature,
        "total_params": total,
        "sub_blocks": a.sub_blocks.iter().map(|sb| json!({
            "index": sb.index,
            "layer": sb.layer,
            "kind": sb.kind,
            "params": sb.params,
            "share": share(sb.params, total),
            "nodes": sb.nodes.len(),
            "input": sb.input,
            "output": sb.output,
            "side_inputs": sb.side_inputs,
            "signature": sb.signature,
        })).collect::<Vec<_>>(),
        "prologue": {
            "nodes": a.prologue.len(),
            "params": a.prologue_params,
            "share": share(a.prologue_params, total),
            "inputs": prologue_inputs(a),
            "tables": prologue_tables(a).into_iter()
                .map(|(name, dims)| json!({"name": name, "dims": dims}))
                .collect::<Vec<_>>(),
        },
        "epilogue": {
            "nodes": a.epilogue.len(),
            "params": a.epilogue_params,
            "share": share(a.epilogue_params, total),
            "outputs": a.graph.output.iter().map(|o| o.name()).collect::<Vec<_>>(),
        },
        "shared_params": a.shared_params,
    })
}

/// Thousands separators for parameter counts.
fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn to_text(path: &Path, a: &Analysis, norm: &str) -> String {
    use std::fmt::Write as _;
    let total = a.total_params;
    let mut t = String::new();
    let _ = writeln!(t, "{}", path.display());
    let _ = writeln!(
        t,
        "  family {}, {norm}-norm, {} layers, {} sub-blocks, {} parameters (structure {})",
        a.family.as_deref().unwrap_or("unknown"),
        a.layers,
        a.sub_blocks.len(),
        count(total),
        a.structure_signature
    );
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "  {:>5} {:>5}  {:<9} {:>14} {:>7} {:>6}",
        "index", "layer", "kind", "params", "share", "nodes"
    );
    for sb in &a.sub_blocks {
        let _ = writeln!(
            t,
            "  {:>5} {:>5}  {:<9} {:>14} {:>6.2}% {:>6}",
            sb.index,
            sb.layer,
            kind_name(sb.kind),
            count(sb.params),
            100.0 * share(sb.params, total),
            sb.nodes.len()
        );
    }
    let sub_total: u64 = a.sub_blocks.iter().map(|s| s.params).sum();
    let _ = writeln!(
        t,
        "  {:>5} {:>5}  {:<9} {:>14} {:>6.2}%",
        "",
        "",
        "all",
        count(sub_total),
        100.0 * share(sub_total, total)
    );
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "  prologue: {} nodes, {} parameters ({:.2}%)",
        a.prologue.len(),
        count(a.prologue_params),
        100.0 * share(a.prologue_params, total)
    );
    let _ = writeln!(t, "    reads {}", prologue_inputs(a).join(", "));
    for (name, dims) in prologue_tables(a) {
        let _ = writeln!(t, "    table {name} {dims:?}");
    }
    let _ = writeln!(
        t,
        "  epilogue: {} nodes, {} parameters ({:.2}%), outputs {}",
        a.epilogue.len(),
        count(a.epilogue_params),
        100.0 * share(a.epilogue_params, total),
        a.graph
            .output
            .iter()
            .map(|o| o.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if a.shared_params > 0 {
        let _ = writeln!(
            t,
            "  shared between regions or unused: {} parameters ({:.2}%)",
            count(a.shared_params),
            100.0 * share(a.shared_params, total)
        );
    }
    for kind in [Kind::Attention, Kind::Ffn] {
        if let Some(sb) = a.sub_blocks.iter().find(|s| s.kind == kind) {
            let _ = writeln!(
                t,
                "  side inputs of each {} sub-block: {}{}",
                kind_name(kind),
                sb.side_inputs.len(),
                if sb.side_inputs.is_empty() {
                    String::new()
                } else {
                    format!(" (sub-block {}: {})", sb.index, sb.side_inputs.join(", "))
                }
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(4_762_000_000), "4,762,000,000");
    }
}
