//! How many inputs and outputs each standard ONNX operator that skrr-onnx interprets may have,
//! at each opset. Block detection, shape logic and rewriting read a node's inputs by position;
//! checking every node's counts once, when a model is analysed, turns a malformed node into one
//! clear error naming it instead of a surprise deep inside those phases.
//!
//! The rows are the operator schemas of onnx 1.23 (`onnx.defs.get_schema`), one row per opset
//! that changed a count; `tests/ops.rs` checks the table against them at every opset. Operators
//! missing from the table (and `Loop`, whose first inputs are optional) are not checked here.

use crate::graph::describe;
use crate::onnx::GraphProto;

/// No upper bound (variadic inputs or outputs).
const MANY: usize = usize::MAX;

/// (op type, since opset, min inputs, max inputs, min outputs, max outputs), sorted by op type
/// and then opset.
#[rustfmt::skip]
const TABLE: &[(&str, i64, usize, usize, usize, usize)] = &[
    ("Abs", 1, 1, 1, 1, 1),
    ("Add", 1, 2, 2, 1, 1),
    ("And", 1, 2, 2, 1, 1),
    ("ArgMax", 1, 1, 1, 1, 1),
    ("ArgMin", 1, 1, 1, 1, 1),
    ("Attention", 23, 3, 6, 1, 4),
    ("Attention", 24, 3, 7, 1, 4),
    ("BatchNormalization", 1, 5, 5, 1, 5),
    ("BatchNormalization", 14, 5, 5, 1, 3),
    ("BitShift", 11, 2, 2, 1, 1),
    ("Cast", 1, 1, 1, 1, 1),
    ("CastLike", 15, 2, 2, 1, 1),
    ("Ceil", 1, 1, 1, 1, 1),
    ("Celu", 12, 1, 1, 1, 1),
    ("Clip", 1, 1, 1, 1, 1),
    ("Clip", 11, 1, 3, 1, 1),
    ("Concat", 1, 1, MANY, 1, 1),
    ("Constant", 1, 0, 0, 1, 1),
    ("ConstantOfShape", 9, 1, 1, 1, 1),
    ("Conv", 1, 2, 3, 1, 1),
    ("Cos", 7, 1, 1, 1, 1),
    ("CumSum", 11, 2, 2, 1, 1),
    ("DequantizeLinear", 10, 2, 3, 1, 1),
    ("Div", 1, 2, 2, 1, 1),
    ("Dropout", 1, 1, 1, 1, 2),
    ("Dropout", 12, 1, 3, 1, 2),
    ("Einsum", 12, 1, MANY, 1, 1),
    ("Elu", 1, 1, 1, 1, 1),
    ("Equal", 1, 2, 2, 1, 1),
    ("Erf", 9, 1, 1, 1, 1),
    ("Exp", 1, 1, 1, 1, 1),
    ("Expand", 8, 2, 2, 1, 1),
    ("Flatten", 1, 1, 1, 1, 1),
    ("Floor", 1, 1, 1, 1, 1),
    ("Gather", 1, 2, 2, 1, 1),
    ("GatherElements", 11, 2, 2, 1, 1),
    ("GatherND", 11, 2, 2, 1, 1),
    ("Gelu", 20, 1, 1, 1, 1),
    ("Gemm", 1, 3, 3, 1, 1),
    ("Gemm", 11, 2, 3, 1, 1),
    ("Greater", 1, 2, 2, 1, 1),
    ("GreaterOrEqual", 12, 2, 2, 1, 1),
    ("GroupNormalization", 18, 3, 3, 1, 1),
    ("HardSigmoid", 1, 1, 1, 1, 1),
    ("HardSwish", 14, 1, 1, 1, 1),
    ("Identity", 1, 1, 1, 1, 1),
    ("If", 1, 1, 1, 1, MANY),
    ("InstanceNormalization", 1, 3, 3, 1, 1),
    ("IsInf", 10, 1, 1, 1, 1),
    ("IsNaN", 9, 1, 1, 1, 1),
    ("LayerNormalization", 17, 2, 3, 1, 3),
    ("LeakyRelu", 1, 1, 1, 1, 1),
    ("Less", 1, 2, 2, 1, 1),
    ("LessOrEqual", 12, 2, 2, 1, 1),
    ("Log", 1, 1, 1, 1, 1),
    ("LogSoftmax", 1, 1, 1, 1, 1),
    ("MatMul", 1, 2, 2, 1, 1),
    ("MatMulInteger", 10, 2, 4, 1, 1),
    ("Max", 1, 1, MANY, 1, 1),
    ("Mean", 1, 1, MANY, 1, 1),
    ("Min", 1, 1, MANY, 1, 1),
    ("Mish", 18, 1, 1, 1, 1),
    ("Mod", 10, 2, 2, 1, 1),
    ("Mul", 1, 2, 2, 1, 1),
    ("Neg", 1, 1, 1, 1, 1),
    ("NonZero", 9, 1, 1, 1, 1),
    ("Not", 1, 1, 1, 1, 1),
    ("OneHot", 9, 3, 3, 1, 1),
    ("Or", 1, 2, 2, 1, 1),
    ("PRelu", 1, 2, 2, 1, 1),
    ("Pad", 1, 1, 1, 1, 1),
    ("Pad", 11, 2, 3, 1, 1),
    ("Pad", 18, 2, 4, 1, 1),
    ("Pow", 1, 2, 2, 1, 1),
    ("QuantizeLinear", 10, 2, 3, 1, 1),
    ("RMSNormalization", 23, 2, 2, 1, 1),
    ("Range", 11, 3, 3, 1, 1),
    ("Reciprocal", 1, 1, 1, 1, 1),
    ("ReduceL1", 1, 1, 1, 1, 1),
    ("ReduceL1", 18, 1, 2, 1, 1),
    ("ReduceL2", 1, 1, 1, 1, 1),
    ("ReduceL2", 18, 1, 2, 1, 1),
    ("ReduceLogSum", 1, 1, 1, 1, 1),
    ("ReduceLogSum", 18, 1, 2, 1, 1),
    ("ReduceLogSumExp", 1, 1, 1, 1, 1),
    ("ReduceLogSumExp", 18, 1, 2, 1, 1),
    ("ReduceMax", 1, 1, 1, 1, 1),
    ("ReduceMax", 18, 1, 2, 1, 1),
    ("ReduceMean", 1, 1, 1, 1, 1),
    ("ReduceMean", 18, 1, 2, 1, 1),
    ("ReduceMin", 1, 1, 1, 1, 1),
    ("ReduceMin", 18, 1, 2, 1, 1),
    ("ReduceProd", 1, 1, 1, 1, 1),
    ("ReduceProd", 18, 1, 2, 1, 1),
    ("ReduceSum", 1, 1, 1, 1, 1),
    ("ReduceSum", 13, 1, 2, 1, 1),
    ("ReduceSumSquare", 1, 1, 1, 1, 1),
    ("ReduceSumSquare", 18, 1, 2, 1, 1),
    ("Relu", 1, 1, 1, 1, 1),
    ("Reshape", 1, 1, 1, 1, 1),
    ("Reshape", 5, 2, 2, 1, 1),
    ("Round", 11, 1, 1, 1, 1),
    ("ScatterElements", 11, 3, 3, 1, 1),
    ("ScatterND", 11, 3, 3, 1, 1),
    ("Selu", 1, 1, 1, 1, 1),
    ("Shape", 1, 1, 1, 1, 1),
    ("Sigmoid", 1, 1, 1, 1, 1),
    ("Sign", 9, 1, 1, 1, 1),
    ("Sin", 7, 1, 1, 1, 1),
    ("Size", 1, 1, 1, 1, 1),
    ("Slice", 1, 1, 1, 1, 1),
    ("Slice", 10, 3, 5, 1, 1),
    ("Softmax", 1, 1, 1, 1, 1),
    ("Softplus", 1, 1, 1, 1, 1),
    ("Softsign", 1, 1, 1, 1, 1),
    ("Split", 1, 1, 2, 1, MANY),
    ("Split", 2, 1, 1, 1, MANY),
    ("Split", 13, 1, 2, 1, MANY),
    ("Sqrt", 1, 1, 1, 1, 1),
    ("Squeeze", 1, 1, 1, 1, 1),
    ("Squeeze", 13, 1, 2, 1, 1),
    ("Sub", 1, 2, 2, 1, 1),
    ("Sum", 1, 1, MANY, 1, 1),
    ("Tanh", 1, 1, 1, 1, 1),
    ("Tile", 1, 3, 3, 1, 1),
    ("Tile", 6, 2, 2, 1, 1),
    ("TopK", 1, 1, 1, 2, 2),
    ("TopK", 10, 2, 2, 2, 2),
    ("Transpose", 1, 1, 1, 1, 1),
    ("Trilu", 14, 1, 2, 1, 1),
    ("Unsqueeze", 1, 1, 1, 1, 1),
    ("Unsqueeze", 13, 2, 2, 1, 1),
    ("Where", 9, 3, 3, 1, 1),
    ("Xor", 1, 2, 2, 1, 1),
];

/// The input and output counts an operator accepts (inclusive ranges; `usize::MAX`: no bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arity {
    pub inputs: (usize, usize),
    pub outputs: (usize, usize),
}

/// The arity of default-domain operator `op` at `opset`, if the table knows `op` at that opset.
pub fn arity(op: &str, opset: i64) -> Option<Arity> {
    TABLE
        .iter()
        .filter(|r| r.0 == op && r.1 <= opset)
        .max_by_key(|r| r.1)
        .map(|&(_, _, a, b, c, d)| Arity {
            inputs: (a, b),
            outputs: (c, d),
        })
}

/// Every operator type the table knows.
pub fn known_ops() -> impl Iterator<Item = &'static str> {
    let mut ops: Vec<&str> = TABLE.iter().map(|r| r.0).collect();
    ops.dedup();
    ops.into_iter()
}

/// Checks every default-domain node of `g` (not of its subgraphs) against the table at `opset`:
/// the number of inputs and outputs (trailing empty names, which stand for absent optional
/// ones, count like any other), and a name for every required input and output (those before
/// the minimum count). The error is one line naming the node.
pub fn check_graph(g: &GraphProto, opset: i64) -> Result<(), String> {
    for (i, node) in g.node.iter().enumerate() {
        if !node.op_domain().is_empty() {
            continue;
        }
        let Some(a) = arity(node.op_type(), opset) else {
            continue;
        };
        for (what, names, (min, max)) in [
            ("input", &node.input, a.inputs),
            ("output", &node.output, a.outputs),
        ] {
            let n = names.len();
            if n < min || n > max {
                return Err(format!(
                    "node {} has {n} {what}{}; {} takes {} at opset {opset}",
                    describe(node, i),
                    if n == 1 { "" } else { "s" },
                    node.op_type(),
                    count(min, max, what),
                ));
            }
            if let Some(k) = names.iter().take(min).position(String::is_empty) {
                return Err(format!(
                    "node {}: required {what} {k} has no name",
                    describe(node, i)
                ));
            }
        }
    }
    Ok(())
}

fn count(min: usize, max: usize, what: &str) -> String {
    let s = |n: usize| if n == 1 { "" } else { "s" };
    match (min, max) {
        (a, b) if a == b => format!("{a} {what}{}", s(a)),
        (a, MANY) => format!("at least {a} {what}{}", s(a)),
        (a, b) => format!("{a} to {b} {what}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::node;

    fn graph(nodes: Vec<crate::onnx::NodeProto>) -> GraphProto {
        GraphProto {
            node: nodes,
            ..Default::default()
        }
    }

    #[test]
    fn versions_pick_the_row_in_force() {
        assert_eq!(arity("Reshape", 4).unwrap().inputs, (1, 1));
        assert_eq!(arity("Reshape", 17).unwrap().inputs, (2, 2));
        assert_eq!(arity("Gemm", 17).unwrap().inputs, (2, 3));
        assert_eq!(arity("Concat", 17).unwrap().inputs, (1, MANY));
        assert!(arity("Gelu", 17).is_none() && arity("Gelu", 20).is_some());
        assert!(arity("NoSuchOp", 17).is_none());
        let ops: Vec<_> = known_ops().collect();
        assert!(ops.windows(2).all(|w| w[0] < w[1]), "table not sorted");
    }

    #[test]
    fn malformed_nodes_are_named() {
        let ok = graph(vec![
            node("MatMul", &["x", "w"], &["y"]),
            node("LayerNormalization", &["y", "s", ""], &["z", "", ""]),
            node("Concat", &["a", "b", "c", "d"], &["e"]),
            node("Custom", &[], &[]),
        ]);
        check_graph(&ok, 17).unwrap();
        for (n, needle) in [
            (
                node("MatMul", &["x"], &["y"]),
                "has 1 input; MatMul takes 2 inputs at opset 17",
            ),
            (
                node("Softmax", &["x", "y"], &["z"]),
                "has 2 inputs; Softmax takes 1 input",
            ),
            (
                node("Gemm", &["a", "b", "c", "d"], &["y"]),
                "Gemm takes 2 to 3 inputs",
            ),
            (node("Concat", &[], &["y"]), "takes at least 1 input"),
            (
                node("Add", &["a", "b"], &[]),
                "has 0 outputs; Add takes 1 output",
            ),
            (
                node("Gather", &["", "i"], &["y"]),
                "required input 0 has no name",
            ),
            (
                node("Transpose", &["x"], &[""]),
                "required output 0 has no name",
            ),
        ] {
            let e = check_graph(&graph(vec![n]), 17).unwrap_err();
            assert!(e.contains(needle) && e.contains("#0"), "{e}");
        }
    }
}
