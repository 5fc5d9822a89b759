//! Every place a tensor can hide in a model: graph initializers, sparse initializers, node
//! attributes (`Constant` values), nested subgraphs (`If`/`Loop`/`Scan` bodies), functions and
//! training graphs. Reading validates them all and writing relocates them all, so both walk the
//! same list.

use anyhow::Result;

use crate::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto,
};

/// What a tensor is, as far as storage decisions go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    /// A graph initializer (main graph or a subgraph): may live in external data.
    Initializer,
    /// Anything else (attribute values, sparse tensor parts): stored inline unless it already
    /// was external.
    Other,
}

pub(crate) fn tensors_mut(
    model: &mut ModelProto,
    f: &mut dyn FnMut(&mut TensorProto, Role) -> Result<()>,
) -> Result<()> {
    if let Some(g) = &mut model.graph {
        graph(g, f)?;
    }
    for func in &mut model.functions {
        for a in &mut func.attribute_proto {
            attribute(a, f)?;
        }
        nodes(&mut func.node, f)?;
    }
    for t in &mut model.training_info {
        for g in [&mut t.initialization, &mut t.algorithm]
            .into_iter()
            .flatten()
        {
            graph(g, f)?;
        }
    }
    Ok(())
}

fn graph(
    g: &mut GraphProto,
    f: &mut dyn FnMut(&mut TensorProto, Role) -> Result<()>,
) -> Result<()> {
    for t in &mut g.initializer {
        f(t, Role::Initializer)?;
    }
    for s in &mut g.sparse_initializer {
        sparse(s, f)?;
    }
    nodes(&mut g.node, f)
}

fn nodes(
    nodes: &mut [NodeProto],
    f: &mut dyn FnMut(&mut TensorProto, Role) -> Result<()>,
) -> Result<()> {
    for n in nodes {
        for a in &mut n.attribute {
            attribute(a, f)?;
        }
    }
    Ok(())
}

fn sparse(
    s: &mut SparseTensorProto,
    f: &mut dyn FnMut(&mut TensorProto, Role) -> Result<()>,
) -> Result<()> {
    for t in [&mut s.values, &mut s.indices].into_iter().flatten() {
        f(t, Role::Other)?;
    }
    Ok(())
}

fn attribute(
    a: &mut AttributeProto,
    f: &mut dyn FnMut(&mut TensorProto, Role) -> Result<()>,
) -> Result<()> {
    for t in a.t.iter_mut().chain(a.tensors.iter_mut()) {
        f(t, Role::Other)?;
    }
    for s in a
        .sparse_tensor
        .iter_mut()
        .chain(a.sparse_tensors.iter_mut())
    {
        sparse(s, f)?;
    }
    if let Some(g) = &mut a.g {
        graph(g, f)?;
    }
    for g in &mut a.graphs {
        graph(g, f)?;
    }
    Ok(())
}
