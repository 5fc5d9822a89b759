//! What a plan does to each sub-block: kept, skipped, or re-using a kept neighbour's weights
//! (method doc, "The plan"). Every phase from calibration on works on these actions; the plan
//! file (`plan`) is their JSON form.

use std::collections::HashSet;

use anyhow::{bail, Result};

use crate::blocks::Analysis;
use crate::onnx::GraphProto;

/// What happens at one sub-block position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Keep,
    Skip,
    /// Run the weights of kept sub-block `source` (same kind) at this position.
    Reuse(usize),
}

/// One action per sub-block position, the in-memory form every phase works on.
pub type Actions = Vec<Action>;

/// Checks that every re-use points at a kept sub-block of the same kind.
pub fn validate(analysis: &Analysis, actions: &[Action]) -> Result<()> {
    for (p, a) in actions.iter().enumerate() {
        if let Action::Reuse(q) = *a {
            let Some(src) = analysis.sub_blocks.get(q) else {
                bail!("sub-block {p} re-uses {q}, which does not exist");
            };
            if src.kind != analysis.sub_blocks[p].kind {
                bail!(
                    "sub-block {p} ({}) cannot re-use {q} ({})",
                    analysis.sub_blocks[p].kind,
                    src.kind
                );
            }
            if actions[q] != Action::Keep {
                bail!("sub-block {p} re-uses {q}, which is not kept");
            }
        }
    }
    Ok(())
}

/// Parameters no longer reachable under `actions` (method doc, "Sparsity"): elements of every
/// initializer that nothing the graph outputs depend on reads any more, once the plan is
/// applied. Exact also for initializers shared between sub-blocks (exporters merge identical
/// all-ones norms), which a per-block sum would miss, and for stream-independent work that dies
/// with the blocks reading it (T5's position-bias table once every attention is skipped).
/// Backward liveness over the plan's dataflow, without building the rewritten graph; the
/// rewrite's dead-code elimination must agree with it (tests in `rewrite` check that).
pub fn removed_params(analysis: &Analysis, actions: &[Action]) -> u64 {
    let g = &analysis.graph;
    let mut needed: HashSet<&str> = g.output.iter().map(|o| o.name()).collect();
    // Marks the nodes some needed value depends on, in reverse topological order.
    fn sweep<'g>(g: &'g GraphProto, nodes: &[usize], needed: &mut HashSet<&'g str>) {
        for &n in nodes.iter().rev() {
            let node = &g.node[n];
            if node.output.iter().any(|o| needed.contains(o.as_str())) {
                needed.extend(node.input.iter().map(String::as_str));
            }
        }
    }
    sweep(g, &analysis.epilogue, &mut needed);
    for (p, a) in actions.iter().enumerate().rev() {
        let sb = &analysis.sub_blocks[p];
        if !needed.contains(sb.output.as_str()) {
            continue;
        }
        match *a {
            Action::Keep => sweep(g, &sb.nodes, &mut needed),
            Action::Skip => {
                needed.insert(sb.input.as_str());
            }
            Action::Reuse(q) => {
                // A call of q's nodes whose stream and side inputs are p's.
                let src = &analysis.sub_blocks[q];
                let mut local: HashSet<&str> = HashSet::from([src.output.as_str()]);
                sweep(g, &src.nodes, &mut local);
                for v in local {
                    if v == src.input {
                        needed.insert(sb.input.as_str());
                    } else if let Some(k) = src.side_inputs.iter().position(|s| s == v) {
                        needed.insert(sb.side_inputs[k].as_str());
                    } else {
                        needed.insert(v);
                    }
                }
            }
        }
    }
    sweep(g, &analysis.prologue, &mut needed);
    g.initializer
        .iter()
        .filter(|t| !needed.contains(t.name()))
        .map(|t| t.dims.iter().map(|&d| d.max(0) as u64).product::<u64>())
        .sum()
}
