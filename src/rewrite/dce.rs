//! Dead-code elimination: after the edits, keep only what the graph outputs depend on.
//!
//! This is what actually frees the weights of skipped sub-blocks, and also prologue work no
//! remaining sub-block reads (e.g. the attention mask once every attention is skipped). Graph
//! inputs are the model's interface and always stay, even when nothing reads them any more;
//! except a graph input that only declares an initializer (IR version < 4, or an export with
//! `keep_initializers_as_inputs`): it goes with its initializer, else the output would ask
//! callers to feed a weight it no longer has.

use std::collections::HashSet;

use crate::onnx::GraphProto;

use crate::graph::implicit_inputs;

/// Removes nodes no graph output depends on, then initializers (with the graph inputs declaring
/// them), value_info entries and quantization annotations of values that no longer exist. `graph.node` must be topologically
/// sorted (as `apply_edits` leaves it).
pub fn dce(graph: &mut GraphProto) {
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let mut live = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node
            .output
            .iter()
            .any(|o| !o.is_empty() && needed.contains(o))
        {
            live[i] = true;
            needed.extend(node.input.iter().filter(|v| !v.is_empty()).cloned());
            needed.extend(implicit_inputs(node).into_iter().map(str::to_string));
        }
    }
    let mut keep = live.into_iter();
    graph.node.retain(|_| keep.next().unwrap_or(false));
    let removed: HashSet<String> = graph
        .initializer
        .iter()
        .map(|t| t.name())
        .filter(|name| !needed.contains(*name))
        .map(str::to_string)
        .collect();
    graph.initializer.retain(|t| !removed.contains(t.name()));
    graph.input.retain(|i| !removed.contains(i.name()));
    graph
        .sparse_initializer
        .retain(|s| s.values.as_ref().is_some_and(|v| needed.contains(v.name())));
    let exists: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.input.iter().map(|v| v.name()))
        .chain(graph.initializer.iter().map(|t| t.name()))
        .collect();
    let exists: HashSet<String> = exists.into_iter().map(str::to_string).collect();
    graph.value_info.retain(|v| exists.contains(v.name()));
    graph
        .quantization_annotation
        .retain(|a| exists.contains(a.tensor_name()));
}
