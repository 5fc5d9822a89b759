//! What each operator does to shapes and small integer elements, one rule per family of
//! operators. A rule that cannot follow its inputs says so with `None` (unknown), never with a
//! guess: a wrong dimension would let a shape read be hoisted that is not the stream's.

use super::{
    clamped, constant_info, from_end, index, shape_read_range, Dim, Info, Mono, Shapes, MAX_ELEMS,
};
use crate::onnx::NodeProto;

/// One node as its rule reads it: what is known about its inputs, and its attributes.
struct Op<'a> {
    shapes: &'a Shapes,
    node: &'a NodeProto,
}

impl Op<'_> {
    fn input(&self, i: usize) -> Option<&Info> {
        let v = self.node.input.get(i).filter(|v| !v.is_empty())?;
        self.shapes.info.get(v)
    }

    fn shape(&self, i: usize) -> Option<Vec<Dim>> {
        self.input(i)?.shape.clone()
    }

    fn elems(&self, i: usize) -> Option<Vec<Dim>> {
        self.input(i)?.elems.clone()
    }

    /// Every input's shape, when all are known.
    fn all_shapes(&self) -> Option<Vec<Vec<Dim>>> {
        (0..self.node.input.len()).map(|i| self.shape(i)).collect()
    }

    /// Every input's elements, when all are known.
    fn all_elems(&self) -> Option<Vec<Vec<Dim>>> {
        (0..self.node.input.len()).map(|i| self.elems(i)).collect()
    }

    /// Constant integer elements of input `i`, or of attribute `attr` (older opsets).
    fn ints(&self, i: usize, attr: &str) -> Option<Vec<i64>> {
        if let Some(a) = self.node.attr(attr) {
            return Some(a.ints.clone());
        }
        self.elems(i)?
            .iter()
            .map(|d| d.as_ref()?.as_const())
            .collect()
    }

    /// Integer attribute `name`, `default` when absent.
    fn int(&self, name: &str, default: i64) -> i64 {
        self.node.attr(name).and_then(|a| a.i).unwrap_or(default)
    }

    /// Input `i` as it is: shape and elements.
    fn same(&self, i: usize) -> Info {
        Info {
            shape: self.shape(i),
            elems: self.elems(i),
        }
    }

    /// Input 0's shape, and `f` of each of its elements.
    fn map_elems(&self, f: impl Fn(&Mono) -> Option<Mono>) -> Info {
        let elems = self
            .elems(0)
            .map(|e| e.iter().map(|d| f(d.as_ref()?)).collect());
        Info {
            shape: self.shape(0),
            elems,
        }
    }
}

fn shape_only(shape: Option<Vec<Dim>>) -> Info {
    Info { shape, elems: None }
}

/// What is known about each output of `node`.
pub(super) fn outputs(shapes: &Shapes, node: &NodeProto) -> Vec<Info> {
    let n_out = node.output.len();
    if node.op_domain() != "" {
        return vec![Info::default(); n_out];
    }
    let op = Op { shapes, node };
    let first = match node.op_type() {
        // Ops that keep their input's elements, or compute them.
        "Identity" | "Cast" | "CastLike" => op.same(0),
        "Neg" => op.map_elems(|m| m.neg()),
        // A symbol is a dimension, never negative: a monomial has its coefficient's sign.
        "Abs" => op.map_elems(|m| if m.coef < 0 { m.neg() } else { Some(m.clone()) }),
        "Relu" | "Gelu" | "Sqrt" | "Reciprocal" | "Tanh" | "Sigmoid" | "Erf" | "Exp" | "Log"
        | "Softmax" | "LogSoftmax" | "Dropout" | "Clip" | "IsInf" | "IsNaN" | "Not" | "Sign"
        | "Floor" | "Ceil" | "Round" | "HardSigmoid" | "LeakyRelu" | "Elu" | "Softplus" | "Sin"
        | "Cos" | "LayerNormalization" | "RMSNormalization" | "Trilu" | "CumSum" | "Mish"
        | "HardSwish" => shape_only(op.shape(0)),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Equal" | "Less"
        | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Mod" | "Where"
        | "PRelu" | "BitShift" => elementwise(&op),
        "Constant" => node
            .attribute
            .first()
            .map(constant_info)
            .unwrap_or_default(),
        "ConstantOfShape" => constant_of_shape(&op),
        "Range" => range(&op),
        "Shape" => shape_of(&op),
        "Size" => Info {
            shape: Some(vec![]),
            elems: op.shape(0).map(|d| vec![product(&d)]),
        },
        "Gather" => gather(&op),
        "GatherElements" => shape_only(op.shape(1)),
        "Slice" => slice(&op),
        "Concat" => concat(&op),
        "Unsqueeze" => unsqueeze(&op),
        "Squeeze" => squeeze(&op),
        "Reshape" => reshape(&op),
        "Flatten" => flatten(&op),
        "Transpose" => transpose(&op),
        "Expand" => shape_only(op.elems(1).and_then(|t| broadcast(&[op.shape(0)?, t]))),
        "Tile" => tile(&op),
        // Quantized graphs: integer products and (de)quantization keep the float shapes.
        "MatMul" | "MatMulInteger" => shape_only(matmul(op.shape(0), op.shape(1))),
        "Gemm" => gemm(&op),
        "QuantizeLinear" | "DequantizeLinear" => shape_only(op.shape(0)),
        "DynamicQuantizeLinear" => return dynamic_quantize(&op),
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
        | "ReduceL1" | "ReduceSumSquare" | "ReduceLogSumExp" | "ArgMax" | "ArgMin" => {
            shape_only(reduce(&op))
        }
        "Split" => return split(&op),
        _ => Info::default(),
    };
    let mut out = vec![first];
    out.resize(n_out, Info::default());
    out
}

/// Broadcasting ops; their elements are followed through the arithmetic shape computations do.
fn elementwise(op: &Op) -> Info {
    let shape = op.all_shapes().as_deref().and_then(broadcast);
    let elems = (|| {
        let es = op.all_elems()?;
        let len = es.iter().map(Vec::len).max()?;
        if es.iter().any(|e| e.len() != len && e.len() != 1) {
            return None;
        }
        // An input may be missing (a hostile `Where` with two inputs): unknown, not a panic.
        let at = |k: usize, i: usize| -> Dim {
            let e = es.get(k)?;
            e.get(if e.len() == 1 { 0 } else { i }).cloned().flatten()
        };
        let b = |i| if es.len() > 1 { at(1, i) } else { None };
        let elem = |i| element(op.node.op_type(), at(0, i), b(i), || at(2, i));
        Some((0..len).map(elem).collect())
    })();
    Info { shape, elems }
}

/// One element of an elementwise op from its inputs' elements `a`, `b` (and `c`, `Where`'s
/// third).
fn element(op_type: &str, a: Dim, b: Dim, c: impl FnOnce() -> Dim) -> Dim {
    match op_type {
        "Add" => a.zip(b).and_then(|(a, b)| a.add(&b)),
        "Sub" => a.zip(b).and_then(|(a, b)| a.add(&b.neg()?)),
        "Mul" => a.zip(b).and_then(|(a, b)| a.mul(&b)),
        "Div" => a.zip(b).and_then(|(a, b)| a.div(&b)),
        "Equal" => a.zip(b).and_then(|(a, b)| {
            if a == b {
                return Some(Mono::constant(1));
            }
            match (a.as_const(), b.as_const()) {
                (Some(_), Some(_)) => Some(Mono::constant(0)),
                // A symbolic dimension is never negative.
                (None, Some(c)) | (Some(c), None) if c < 0 => Some(Mono::constant(0)),
                _ => None,
            }
        }),
        "Where" => match a.and_then(|c| c.as_const()) {
            Some(0) => c(),
            Some(_) => b,
            None => None,
        },
        _ => None,
    }
}

fn constant_of_shape(op: &Op) -> Info {
    let shape = op.elems(0);
    let fill = op
        .node
        .attr("value")
        .map(constant_info)
        .and_then(|i| i.elems)
        .and_then(|e| e.first().cloned())
        .unwrap_or(Some(Mono::constant(0)));
    let elems = shape.as_ref().and_then(|s| match s.as_slice() {
        [] => Some(vec![fill.clone()]),
        [Some(n)] => {
            let n = n.as_const()?;
            (n as usize <= MAX_ELEMS).then(|| vec![fill.clone(); n as usize])
        }
        _ => None,
    });
    Info { shape, elems }
}

fn range(op: &Op) -> Info {
    let e = |i| op.elems(i).and_then(|e| e.first().cloned().flatten());
    let len = match (e(0), e(1), e(2)) {
        (Some(s), Some(l), Some(d)) => match (s.as_const(), d.as_const()) {
            (Some(0), Some(1)) => Some(l),
            _ => match (s.as_const(), l.as_const(), d.as_const()) {
                (Some(s), Some(l), Some(d)) if d != 0 => Some(Mono::constant(
                    ((l - s) as f64 / d as f64).ceil().max(0.0) as i64,
                )),
                _ => None,
            },
        },
        _ => None,
    };
    shape_only(Some(vec![len]))
}

/// `Shape`: its elements are the dimensions read.
fn shape_of(op: &Op) -> Info {
    let Some(d) = op.shape(0) else {
        return shape_only(None);
    };
    let e = d[shape_read_range(op.node, d.len())].to_vec();
    Info {
        shape: Some(vec![Some(Mono::constant(e.len() as i64))]),
        elems: Some(e),
    }
}

fn gather(op: &Op) -> Info {
    let data = op.shape(0);
    let idx = op.shape(1);
    let axis = op.int("axis", 0);
    let shape = data.as_ref().zip(idx.as_ref()).and_then(|(d, ix)| {
        let a = index(axis, d.len())?;
        let mut s = d[..a].to_vec();
        s.extend(ix.iter().cloned());
        s.extend(d[a + 1..].iter().cloned());
        Some(s)
    });
    let elems = (|| {
        let e = op.elems(0)?;
        if data.as_ref()?.len() != 1 {
            return None;
        }
        let ix = op.elems(1)?;
        ix.iter()
            .map(|i| Some(e[index(i.as_ref()?.as_const()?, e.len())?].clone()))
            .collect()
    })();
    Info { shape, elems }
}

fn slice(op: &Op) -> Info {
    let data = op.shape(0);
    let starts = op.ints(1, "starts");
    let ends = op.ints(2, "ends");
    let r = data.as_ref().map_or(0, |d| d.len());
    let axes = if op.node.input.len() > 3 || op.node.attr("axes").is_some() {
        op.ints(3, "axes")
    } else {
        starts.as_ref().map(|s| (0..s.len() as i64).collect())
    };
    let steps = if op.node.input.len() > 4 {
        op.ints(4, "")
    } else {
        starts.as_ref().map(|s| vec![1; s.len()])
    };
    let (Some(starts), Some(ends), Some(axes), Some(steps)) = (starts, ends, axes, steps) else {
        return Info {
            shape: data.map(|d| vec![None; d.len()]),
            elems: None,
        };
    };
    let shape = data.map(|mut d| {
        for (k, &ax) in axes.iter().enumerate() {
            let Some(ax) = index(ax, r) else { continue };
            if let (Some(&s), Some(&e), Some(&st)) = (starts.get(k), ends.get(k), steps.get(k)) {
                d[ax] = sliced_len(&d[ax], s, e, st);
            }
        }
        d
    });
    let elems = (|| {
        let e = op.elems(0)?;
        let (&[start], Some(&end), Some(1)) = (starts.as_slice(), ends.first(), steps.first())
        else {
            return None;
        };
        if r != 1 {
            return None;
        }
        let (s, t) = (clamped(start, e.len()), clamped(end, e.len()));
        Some(e[s..t.max(s)].to_vec())
    })();
    Info { shape, elems }
}

/// The length of `dim` sliced from `s` to `e` by `st`, as the spec clamps the bounds.
fn sliced_len(dim: &Dim, s: i64, e: i64, st: i64) -> Dim {
    if st == 1 && s == 0 && e >= i64::MAX / 2 {
        return dim.clone();
    }
    let n = dim.as_ref()?.as_const()?;
    if n <= 0 {
        // An empty axis slices to nothing; a negative length is a hostile file's.
        return (n == 0).then(|| Mono::constant(0));
    }
    let bound = |v: i64, hi: i64| from_end(v, n).clamp(0, hi);
    let len = if st > 0 {
        let (s, e) = (bound(s, n), bound(e, n));
        (e - s + st - 1).div_euclid(st).max(0)
    } else if st < 0 {
        let (s, e) = (bound(s, n - 1), if e < -n { -1 } else { bound(e, n - 1) });
        (s - e + (-st) - 1).div_euclid(-st).max(0)
    } else {
        return None;
    };
    Some(Mono::constant(len))
}

fn concat(op: &Op) -> Info {
    let axis = op.int("axis", 0);
    let shape = op.all_shapes().and_then(|ss| {
        let mut out = ss.first()?.clone();
        let a = index(axis, out.len())?;
        for s in &ss[1..] {
            if s.len() != out.len() {
                return None;
            }
            out[a] = out[a]
                .as_ref()
                .zip(s[a].as_ref())
                .and_then(|(x, y)| x.add(y));
        }
        Some(out)
    });
    let elems = op
        .all_elems()
        .map(|v| v.concat())
        .filter(|e| e.len() <= MAX_ELEMS);
    Info { shape, elems }
}

fn unsqueeze(op: &Op) -> Info {
    let axes = op.ints(1, "axes");
    let shape = op.shape(0).and_then(|mut d| {
        let axes = axes?;
        let rank = d.len() + axes.len();
        let mut axes: Vec<usize> = axes
            .iter()
            .map(|&a| index(a, rank))
            .collect::<Option<_>>()?;
        axes.sort_unstable();
        for a in axes {
            if a > d.len() {
                return None;
            }
            d.insert(a, Some(Mono::constant(1)));
        }
        Some(d)
    });
    Info {
        shape,
        elems: op.elems(0),
    }
}

fn squeeze(op: &Op) -> Info {
    let axes = op.ints(1, "axes");
    let shape = op.shape(0).and_then(|d| match axes {
        Some(axes) if !axes.is_empty() => {
            let axes: Vec<usize> = axes.iter().filter_map(|&a| index(a, d.len())).collect();
            Some(
                d.iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, x)| x.clone())
                    .collect(),
            )
        }
        // No axes: every dimension of 1 goes, so every dimension must be known.
        _ => d
            .iter()
            .filter_map(|x| match x.as_ref().map(Mono::as_const) {
                Some(Some(1)) => None,
                Some(Some(_)) => Some(Some(x.clone())),
                _ => Some(None),
            })
            .collect(),
    });
    Info {
        shape,
        elems: op.elems(0),
    }
}

fn reshape(op: &Op) -> Info {
    let allow_zero = op.int("allowzero", 0) != 0;
    Info {
        shape: op
            .elems(1)
            .and_then(|t| reshaped(op.shape(0), t, allow_zero)),
        elems: op.elems(0),
    }
}

fn flatten(op: &Op) -> Info {
    shape_only(op.shape(0).map(|d| {
        let a = clamped(op.int("axis", 1), d.len());
        vec![product(&d[..a]), product(&d[a..])]
    }))
}

fn transpose(op: &Op) -> Info {
    shape_only(op.shape(0).and_then(|d| {
        let perm: Vec<usize> = match op.node.attr("perm") {
            Some(p) => p.ints.iter().map(|&x| x as usize).collect(),
            None => (0..d.len()).rev().collect(),
        };
        perm.iter().map(|&p| d.get(p).cloned()).collect()
    }))
}

fn tile(op: &Op) -> Info {
    shape_only((|| {
        let d = op.shape(0)?;
        let reps = op.elems(1)?;
        d.iter()
            .zip(&reps)
            .map(|(a, b)| Some(a.as_ref().zip(b.as_ref()).and_then(|(a, b)| a.mul(b))))
            .collect()
    })())
}

fn gemm(op: &Op) -> Info {
    shape_only((|| {
        let a = op.shape(0)?;
        let b = op.shape(1)?;
        let m = a.get(if op.int("transA", 0) != 0 { 1 } else { 0 })?.clone();
        let n = b.get(if op.int("transB", 0) != 0 { 0 } else { 1 })?.clone();
        Some(vec![m, n])
    })())
}

/// The quantized tensor keeps the float shape; scale and zero point are scalars.
fn dynamic_quantize(op: &Op) -> Vec<Info> {
    let scalar = shape_only(Some(Vec::new()));
    let mut out = vec![shape_only(op.shape(0)), scalar.clone(), scalar];
    out.resize(op.node.output.len(), Info::default());
    out
}

/// Reductions and `ArgMax` / `ArgMin`: the reduced axes are dropped or kept as 1.
fn reduce(op: &Op) -> Option<Vec<Dim>> {
    let d = op.shape(0)?;
    let node = op.node;
    let keep = op.int("keepdims", 1) != 0;
    let axes: Vec<i64> = if matches!(node.op_type(), "ArgMax" | "ArgMin") {
        vec![op.int("axis", 0)]
    } else {
        match op.ints(1, "axes") {
            Some(a) if !a.is_empty() => a,
            Some(_) | None if node.input.len() < 2 && node.attr("axes").is_none() => {
                if op.int("noop_with_empty_axes", 0) != 0 {
                    return Some(d);
                }
                (0..d.len() as i64).collect()
            }
            _ => return None,
        }
    };
    let axes: Vec<usize> = axes.iter().filter_map(|&a| index(a, d.len())).collect();
    Some(
        d.iter()
            .enumerate()
            .filter_map(|(i, x)| match (axes.contains(&i), keep) {
                (false, _) => Some(x.clone()),
                (true, true) => Some(Some(Mono::constant(1))),
                (true, false) => None,
            })
            .collect(),
    )
}

fn split(op: &Op) -> Vec<Info> {
    let n_out = op.node.output.len();
    let data = op.shape(0);
    let axis = op.int("axis", 0);
    let sizes = if op.node.input.len() > 1 && !op.node.input[1].is_empty() {
        op.ints(1, "")
    } else {
        op.node.attr("split").map(|a| a.ints.clone())
    };
    (0..n_out)
        .map(|k| Info {
            shape: data.as_ref().map(|d| {
                let mut d = d.clone();
                if let Some(a) = index(axis, d.len()) {
                    d[a] = match &sizes {
                        Some(s) => s.get(k).map(|&x| Mono::constant(x)),
                        None => d[a]
                            .as_ref()
                            .and_then(|x| x.div(&Mono::constant(n_out as i64))),
                    };
                }
                d
            }),
            elems: None,
        })
        .collect()
}

fn product(d: &[Dim]) -> Dim {
    d.iter()
        .try_fold(Mono::constant(1), |acc, x| acc.mul(x.as_ref()?))
}

/// Numpy broadcasting. In a valid model two broadcast dimensions are equal or one is 1, so a
/// known dimension other than 1 wins over an unknown one; two different known ones (symbols
/// that must be equal at run time) stay unknown.
fn broadcast(shapes: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    let r = shapes.iter().map(Vec::len).max()?;
    let one = Some(Mono::constant(1));
    let mut out = vec![one.clone(); r];
    for s in shapes {
        let off = r - s.len();
        for (i, d) in s.iter().enumerate() {
            let cur = &out[off + i];
            out[off + i] = if *d == one || cur == d {
                cur.clone()
            } else if *cur == one {
                d.clone()
            } else if d.is_none() {
                cur.clone()
            } else if cur.is_none() {
                d.clone()
            } else {
                None
            };
        }
    }
    Some(out)
}

/// `MatMul`'s numpy semantics: a 1-D operand is a row (left) or a column (right) whose axis
/// the result drops; batch axes broadcast.
fn matmul(a: Option<Vec<Dim>>, b: Option<Vec<Dim>>) -> Option<Vec<Dim>> {
    let (a, b) = (a?, b?);
    let (a1, b1) = (a.len() == 1, b.len() == 1);
    let a = if a1 {
        vec![Some(Mono::constant(1)), a[0].clone()]
    } else {
        a
    };
    let b = if b1 {
        vec![b[0].clone(), Some(Mono::constant(1))]
    } else {
        b
    };
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let mut out = broadcast(&[a[..a.len() - 2].to_vec(), b[..b.len() - 2].to_vec()])?;
    if !a1 {
        out.push(a[a.len() - 2].clone());
    }
    if !b1 {
        out.push(b[b.len() - 1].clone());
    }
    Some(out)
}

/// `input` reshaped to `target`: 0 copies the input's dimension (unless `allow_zero`), -1 is
/// what the other dimensions leave.
fn reshaped(input: Option<Vec<Dim>>, target: Vec<Dim>, allow_zero: bool) -> Option<Vec<Dim>> {
    let mut out: Vec<Dim> = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, t) in target.iter().enumerate() {
        match t.as_ref().and_then(Mono::as_const) {
            Some(0) if !allow_zero => out.push(input.as_ref()?.get(i)?.clone()),
            Some(-1) => {
                infer_at = Some(i);
                out.push(None);
            }
            _ => out.push(t.clone()),
        }
    }
    if let Some(i) = infer_at {
        let total = product(input.as_ref()?);
        let rest = product(
            &out.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, d)| d.clone())
                .collect::<Vec<_>>(),
        );
        out[i] = total.zip(rest).and_then(|(t, r)| t.div(&r));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::node;

    fn c(v: i64) -> Dim {
        Some(Mono::constant(v))
    }

    /// The first output of `node` given what is known about its inputs.
    fn first(node: &NodeProto, known: &[(&str, Info)]) -> Info {
        let info = known
            .iter()
            .map(|(v, i)| (v.to_string(), i.clone()))
            .collect();
        outputs(&Shapes { info }, node).swap_remove(0)
    }

    /// A rank-1 value with these elements.
    fn list(elems: Vec<Dim>) -> Info {
        Info {
            shape: Some(vec![c(elems.len() as i64)]),
            elems: Some(elems),
        }
    }

    fn ints(v: &[i64]) -> Info {
        list(v.iter().map(|&v| c(v)).collect())
    }

    #[test]
    fn neg_and_abs_compute_their_elements() {
        let b = Mono::symbol(0);
        let known = [
            ("m", ints(&[-3, 4])),
            ("s", list(vec![Some(b.clone()), c(8)])),
        ];
        let elems = |op, v| first(&node(op, &[v], &["y"]), &known).elems;
        assert_eq!(elems("Neg", "m"), Some(vec![c(3), c(-4)]));
        assert_eq!(elems("Abs", "m"), Some(vec![c(3), c(4)]));
        assert_eq!(elems("Neg", "s"), Some(vec![b.neg(), c(-8)]));
        assert_eq!(elems("Abs", "s"), Some(vec![Some(b), c(8)]));
    }

    /// Hostile slices (empty ends or steps, a negative step over an empty axis, a negative
    /// dimension) leave the result unknown instead of panicking.
    #[test]
    fn hostile_slices_are_unknown_not_panics() {
        let b = Some(Mono::symbol(0));
        let known = [
            ("s", list(vec![b.clone(), c(8)])),
            ("one", ints(&[1])),
            ("zero", ints(&[0])),
            ("empty", ints(&[])),
        ];
        let slice = |inputs: &[&str]| first(&node("Slice", inputs, &["y"]), &known);
        assert_eq!(slice(&["s", "zero", "one"]).elems, Some(vec![b]));
        assert_eq!(slice(&["s", "zero", "empty"]).elems, None);
        assert_eq!(slice(&["s", "zero", "one", "zero", "empty"]).elems, None);
        // `[0, -2]` sliced backwards along either axis.
        let x = Info {
            shape: Some(vec![c(0), c(-2)]),
            elems: None,
        };
        let known = [("x", x), ("back", ints(&[-1])), ("first", ints(&[0]))];
        let reversed = |axis| {
            let slice = node("Slice", &["x", "back", "back", axis, "back"], &["y"]);
            first(&slice, &known).shape
        };
        assert_eq!(reversed("first"), Some(vec![c(0), c(-2)]));
        assert_eq!(reversed("back"), Some(vec![c(0), None]));
    }

    #[test]
    fn reshape_infers_minus_one() {
        let b = Some(Mono::symbol(0));
        let s = Some(Mono::symbol(1));
        let out = reshaped(
            Some(vec![b.clone(), s.clone(), c(64)]),
            vec![c(0), c(-1), c(4), c(16)],
            false,
        );
        assert_eq!(out, Some(vec![b, s, c(4), c(16)]));
    }

    #[test]
    fn broadcast_and_matmul() {
        let b = Some(Mono::symbol(0));
        let s = Some(Mono::symbol(1));
        assert_eq!(
            broadcast(&[
                vec![b.clone(), c(4), s.clone(), s.clone()],
                vec![b.clone(), c(1), c(1), s.clone()]
            ]),
            Some(vec![b.clone(), c(4), s.clone(), s.clone()])
        );
        assert_eq!(
            matmul(
                Some(vec![b.clone(), s.clone(), c(64)]),
                Some(vec![c(64), c(128)])
            ),
            Some(vec![b, s, c(128)])
        );
    }
}
