//! Symbolic shapes, just enough to prove that a shape read inside a sub-block can be computed
//! from the first stream value's shape.
//!
//! Why: exporters compute shape-derived tensors from whatever value is at hand. T5's relative
//! position bias, for instance, takes the key length from `Shape(key_states)` inside layer 0's
//! attention and is then read by every layer. To hoist such work into the prologue we must show
//! that each dimension read is a dimension of the stream (or a constant); a dimension is a
//! monomial over the graph inputs' symbolic dimensions, which covers every reshape an encoder
//! does (`[b, s, h*d] -> [b, -1, h, d]`).

use std::collections::{BTreeMap, HashMap};

use crate::graph::Graph;
use crate::onnx::{tensor_proto::data_type, type_proto, AttributeProto, NodeProto, TensorProto};

/// `coef × Π symbol^power`: a dimension known symbolically.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mono {
    coef: i64,
    syms: BTreeMap<u32, u32>,
}

/// A dimension or element: `None` when unknown.
pub type Dim = Option<Mono>;

impl Mono {
    pub fn constant(c: i64) -> Mono {
        Mono {
            coef: c,
            syms: BTreeMap::new(),
        }
    }
    fn symbol(s: u32) -> Mono {
        Mono {
            coef: 1,
            syms: BTreeMap::from([(s, 1)]),
        }
    }
    pub fn as_const(&self) -> Option<i64> {
        self.syms.is_empty().then_some(self.coef)
    }
    fn mul(&self, o: &Mono) -> Option<Mono> {
        let mut syms = self.syms.clone();
        for (s, p) in &o.syms {
            *syms.entry(*s).or_default() += p;
        }
        let coef = self.coef.checked_mul(o.coef)?;
        Some(if coef == 0 {
            Mono::constant(0)
        } else {
            Mono { coef, syms }
        })
    }
    /// Exact division only.
    fn div(&self, o: &Mono) -> Option<Mono> {
        if o.coef == 0 || self.coef % o.coef != 0 {
            return None;
        }
        let mut syms = self.syms.clone();
        for (s, p) in &o.syms {
            let e = syms.get_mut(s)?;
            if *e < *p {
                return None;
            }
            *e -= p;
            if *e == 0 {
                syms.remove(s);
            }
        }
        Some(Mono {
            coef: self.coef / o.coef,
            syms,
        })
    }
    /// Sum when both are like terms (or one is zero).
    fn add(&self, o: &Mono) -> Option<Mono> {
        if o.coef == 0 {
            return Some(self.clone());
        }
        if self.coef == 0 {
            return Some(o.clone());
        }
        if self.syms != o.syms {
            return None;
        }
        let coef = self.coef.checked_add(o.coef)?;
        Some(if coef == 0 {
            Mono::constant(0)
        } else {
            Mono {
                coef,
                syms: self.syms.clone(),
            }
        })
    }
    fn neg(&self) -> Option<Mono> {
        Some(Mono {
            coef: self.coef.checked_neg()?,
            syms: self.syms.clone(),
        })
    }
}

/// What is known about one value: its shape (`None` when even the rank is unknown) and, for
/// small integer tensors of rank ≤ 1 such as shape vectors, its elements.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub shape: Option<Vec<Dim>>,
    pub elems: Option<Vec<Dim>>,
}

/// Symbolic shape inference over a whole graph.
pub struct Shapes {
    info: HashMap<String, Info>,
}

fn known(shape: &Option<Vec<Dim>>) -> bool {
    shape
        .as_ref()
        .is_some_and(|d| d.iter().all(Option::is_some))
}

/// Element lists longer than this are not tracked (they are data, not shapes).
const MAX_ELEMS: usize = 64;

impl Shapes {
    /// `stream` lists the residual stream values, first one first. Every stream value has the
    /// first one's shape (a residual `Add` adds a branch to its input, and every layer of an
    /// encoder maps `[batch, sequence, hidden]` to itself), so where the rules lose track of a
    /// stream value's shape (a mask built by ops they do not model, broadcast into the
    /// attention scores) it is taken from the first one. Without this, the shape reads of every
    /// layer after such an op stay unproven while layer 0's are hoisted, and the layers differ.
    pub fn infer(g: &Graph, order: &[usize], stream: &[String]) -> Shapes {
        let mut s = Shapes {
            info: HashMap::new(),
        };
        let mut symbols: HashMap<String, u32> = HashMap::new();
        for i in &g.proto.input {
            if g.initializer(i.name()).is_some() {
                continue;
            }
            let Some(type_proto::Value::TensorType(t)) =
                i.r#type.as_ref().and_then(|t| t.value.as_ref())
            else {
                continue;
            };
            let Some(shape) = &t.shape else { continue };
            let dims = shape
                .dim
                .iter()
                .enumerate()
                .map(|(axis, d)| {
                    use crate::onnx::tensor_shape_proto::dimension::Value;
                    match &d.value {
                        Some(Value::DimValue(v)) => Some(Mono::constant(*v)),
                        Some(Value::DimParam(p)) if !p.is_empty() => Some(symbol(&mut symbols, p)),
                        _ => Some(symbol(&mut symbols, &format!("{}#{axis}", i.name()))),
                    }
                })
                .collect();
            s.info.insert(
                i.name().to_string(),
                Info {
                    shape: Some(dims),
                    elems: None,
                },
            );
        }
        for t in &g.proto.initializer {
            s.info.insert(t.name().to_string(), tensor_info(t));
        }
        let mut first: Option<Vec<Dim>> = None;
        for &n in order {
            let node = g.node(n);
            let outs = s.node(node);
            for (o, mut info) in node.output.iter().zip(outs) {
                if o.is_empty() {
                    continue;
                }
                if stream.first() == Some(o) {
                    first = info.shape.clone();
                } else if stream.contains(o) && !known(&info.shape) && known(&first) {
                    info.shape = first.clone();
                }
                s.info.insert(o.clone(), info);
            }
        }
        s
    }

    pub fn shape(&self, v: &str) -> Option<&[Dim]> {
        self.info.get(v)?.shape.as_deref()
    }

    /// The shape with every dimension known.
    pub fn known_shape(&self, v: &str) -> Option<Vec<Mono>> {
        self.shape(v)?.iter().cloned().collect()
    }

    fn get(&self, v: &str) -> Info {
        self.info.get(v).cloned().unwrap_or_default()
    }

    fn in_shape(&self, node: &NodeProto, i: usize) -> Option<Vec<Dim>> {
        node.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|v| self.get(v).shape)
    }

    fn in_elems(&self, node: &NodeProto, i: usize) -> Option<Vec<Dim>> {
        node.input
            .get(i)
            .filter(|s| !s.is_empty())
            .and_then(|v| self.get(v).elems)
    }

    /// Constant integer elements of input `i`, or of attribute `attr` (older opsets).
    fn const_ints(&self, node: &NodeProto, i: usize, attr: &str) -> Option<Vec<i64>> {
        if let Some(a) = node.attr(attr) {
            return Some(a.ints.clone());
        }
        self.in_elems(node, i)?
            .iter()
            .map(|d| d.as_ref()?.as_const())
            .collect()
    }

    fn node(&self, node: &NodeProto) -> Vec<Info> {
        let n_out = node.output.len();
        let unknown = || vec![Info::default(); n_out];
        if node.op_domain() != "" {
            return unknown();
        }
        let same = |i: usize| Info {
            shape: self.in_shape(node, i),
            elems: self.in_elems(node, i),
        };
        let shape_only = |shape: Option<Vec<Dim>>| Info { shape, elems: None };
        let first = match node.op_type() {
            "Identity" | "Cast" | "CastLike" | "Relu" | "Gelu" | "Sqrt" | "Reciprocal" | "Neg"
            | "Tanh" | "Sigmoid" | "Erf" | "Exp" | "Log" | "Abs" | "Softmax" | "LogSoftmax"
            | "Dropout" | "Clip" | "IsInf" | "IsNaN" | "Not" | "Sign" | "Floor" | "Ceil"
            | "Round" | "HardSigmoid" | "LeakyRelu" | "Elu" | "Softplus" | "Sin" | "Cos"
            | "LayerNormalization" | "RMSNormalization" | "Trilu" | "CumSum" | "Mish"
            | "HardSwish" => {
                let mut i = same(0);
                if !matches!(
                    node.op_type(),
                    "Identity" | "Cast" | "CastLike" | "Neg" | "Abs"
                ) {
                    i.elems = None;
                }
                i
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Equal" | "Less"
            | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" | "Mod"
            | "Where" | "PRelu" | "BitShift" => self.elementwise(node),
            "Constant" => node
                .attribute
                .first()
                .map(constant_info)
                .unwrap_or_default(),
            "Shape" => {
                let dims = self.in_shape(node, 0);
                match dims {
                    Some(d) => {
                        let r = d.len() as i64;
                        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                        let start = clamp(node.attr("start").and_then(|a| a.i).unwrap_or(0));
                        let end = clamp(node.attr("end").and_then(|a| a.i).unwrap_or(r));
                        let e: Vec<Dim> = d[start..end.max(start)].to_vec();
                        Info {
                            shape: Some(vec![Some(Mono::constant(e.len() as i64))]),
                            elems: Some(e),
                        }
                    }
                    None => shape_only(None),
                }
            }
            "Size" => Info {
                shape: Some(vec![]),
                elems: self.in_shape(node, 0).map(|d| vec![product(&d)]),
            },
            "Gather" => self.gather(node),
            "Unsqueeze" => {
                let axes = self.const_ints(node, 1, "axes");
                let shape = self.in_shape(node, 0).and_then(|mut d| {
                    let r = (d.len() + axes.as_ref()?.len()) as i64;
                    let mut axes = axis_indices(&axes?, r);
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
                    elems: self.in_elems(node, 0),
                }
            }
            "Squeeze" => {
                let axes = self.const_ints(node, 1, "axes");
                let shape = self.in_shape(node, 0).and_then(|d| {
                    let r = d.len() as i64;
                    match axes {
                        Some(axes) if !axes.is_empty() => {
                            let axes = axis_indices(&axes, r);
                            Some(
                                d.iter()
                                    .enumerate()
                                    .filter(|(i, _)| !axes.contains(i))
                                    .map(|(_, x)| x.clone())
                                    .collect(),
                            )
                        }
                        _ => d
                            .iter()
                            .filter_map(|x| match x.as_ref().map(Mono::as_const) {
                                Some(Some(1)) => None,
                                Some(Some(_)) => Some(Some(x.clone())),
                                _ => Some(None),
                            })
                            .collect(),
                    }
                });
                Info {
                    shape,
                    elems: self.in_elems(node, 0),
                }
            }
            "Concat" => self.concat(node),
            "Reshape" => {
                let target = self.in_elems(node, 1);
                let allow_zero = node.attr("allowzero").and_then(|a| a.i).unwrap_or(0) != 0;
                Info {
                    shape: target.and_then(|t| reshape(self.in_shape(node, 0), t, allow_zero)),
                    elems: self.in_elems(node, 0),
                }
            }
            "Flatten" => shape_only(self.in_shape(node, 0).map(|d| {
                let r = d.len() as i64;
                let a = node.attr("axis").and_then(|a| a.i).unwrap_or(1);
                let a = (if a < 0 { a + r } else { a }).clamp(0, r) as usize;
                vec![product(&d[..a]), product(&d[a..])]
            })),
            "Transpose" => shape_only(self.in_shape(node, 0).and_then(|d| {
                let perm: Vec<usize> = match node.attr("perm") {
                    Some(p) => p.ints.iter().map(|&x| x as usize).collect(),
                    None => (0..d.len()).rev().collect(),
                };
                perm.iter().map(|&p| d.get(p).cloned()).collect()
            })),
            // Quantized graphs: integer products and (de)quantization keep the float shapes.
            "MatMul" | "MatMulInteger" => {
                shape_only(matmul(self.in_shape(node, 0), self.in_shape(node, 1)))
            }
            "QuantizeLinear" | "DequantizeLinear" => shape_only(self.in_shape(node, 0)),
            "DynamicQuantizeLinear" => {
                let scalar = shape_only(Some(Vec::new()));
                let mut out = vec![shape_only(self.in_shape(node, 0)), scalar.clone(), scalar];
                out.resize(n_out, Info::default());
                return out;
            }
            "Gemm" => shape_only((|| {
                let a = self.in_shape(node, 0)?;
                let b = self.in_shape(node, 1)?;
                let ta = node.attr("transA").and_then(|a| a.i).unwrap_or(0) != 0;
                let tb = node.attr("transB").and_then(|a| a.i).unwrap_or(0) != 0;
                let m = a.get(if ta { 1 } else { 0 })?.clone();
                let n = b.get(if tb { 0 } else { 1 })?.clone();
                Some(vec![m, n])
            })()),
            "Expand" => shape_only(
                self.in_elems(node, 1)
                    .and_then(|t| broadcast(&[self.in_shape(node, 0)?, t])),
            ),
            "ConstantOfShape" => {
                let shape = self.in_elems(node, 0);
                let fill = node
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
            "Range" => {
                let e = |i| {
                    self.in_elems(node, i)
                        .and_then(|e| e.first().cloned().flatten())
                };
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
            "Slice" => self.slice(node),
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL2"
            | "ReduceL1" | "ReduceSumSquare" | "ReduceLogSumExp" | "ArgMax" | "ArgMin" => {
                shape_only(self.in_shape(node, 0).and_then(|d| {
                    let keep = node.attr("keepdims").and_then(|a| a.i).unwrap_or(1) != 0;
                    let r = d.len() as i64;
                    let axes: Vec<i64> = if matches!(node.op_type(), "ArgMax" | "ArgMin") {
                        vec![node.attr("axis").and_then(|a| a.i).unwrap_or(0)]
                    } else {
                        match self.const_ints(node, 1, "axes") {
                            Some(a) if !a.is_empty() => a,
                            Some(_) | None
                                if node.input.len() < 2 && node.attr("axes").is_none() =>
                            {
                                if node
                                    .attr("noop_with_empty_axes")
                                    .and_then(|a| a.i)
                                    .unwrap_or(0)
                                    != 0
                                {
                                    return Some(d);
                                }
                                (0..r).collect()
                            }
                            _ => return None,
                        }
                    };
                    let axes = axis_indices(&axes, r);
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
                }))
            }
            "GatherElements" => shape_only(self.in_shape(node, 1)),
            "Tile" => shape_only((|| {
                let d = self.in_shape(node, 0)?;
                let reps = self.in_elems(node, 1)?;
                d.iter()
                    .zip(&reps)
                    .map(|(a, b)| Some(a.as_ref().zip(b.as_ref()).and_then(|(a, b)| a.mul(b))))
                    .collect()
            })()),
            "Split" => return self.split(node),
            _ => Info::default(),
        };
        let mut out = vec![first];
        out.resize(n_out, Info::default());
        out
    }

    fn elementwise(&self, node: &NodeProto) -> Info {
        let shapes: Option<Vec<Vec<Dim>>> = (0..node.input.len())
            .map(|i| self.in_shape(node, i))
            .collect();
        let shape = shapes.as_deref().and_then(broadcast);
        let elems = (|| {
            let es: Vec<Vec<Dim>> = (0..node.input.len())
                .map(|i| self.in_elems(node, i))
                .collect::<Option<_>>()?;
            let len = es.iter().map(Vec::len).max()?;
            if es.iter().any(|e| e.len() != len && e.len() != 1) {
                return None;
            }
            // An input may be missing (a hostile `Where` with two inputs): unknown, not a panic.
            let at = |k: usize, i: usize| -> Dim {
                let e = es.get(k)?;
                e.get(if e.len() == 1 { 0 } else { i }).cloned().flatten()
            };
            (0..len)
                .map(|i| -> Option<Dim> {
                    let a = at(0, i);
                    let b = if es.len() > 1 { at(1, i) } else { None };
                    Some(match node.op_type() {
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
                                (None, Some(c)) | (Some(c), None) if c < 0 => {
                                    Some(Mono::constant(0))
                                }
                                _ => None,
                            }
                        }),
                        "Where" => match a.and_then(|c| c.as_const()) {
                            Some(0) => at(2, i),
                            Some(_) => b,
                            None => None,
                        },
                        _ => None,
                    })
                })
                .collect::<Option<Vec<Dim>>>()
        })();
        Info { shape, elems }
    }

    fn gather(&self, node: &NodeProto) -> Info {
        let data = self.in_shape(node, 0);
        let idx = self.in_shape(node, 1);
        let axis = node.attr("axis").and_then(|a| a.i).unwrap_or(0);
        let shape = data.as_ref().zip(idx.as_ref()).and_then(|(d, ix)| {
            let r = d.len() as i64;
            let a = if axis < 0 { axis + r } else { axis };
            if a < 0 || a >= r {
                return None;
            }
            let a = a as usize;
            let mut s = d[..a].to_vec();
            s.extend(ix.iter().cloned());
            s.extend(d[a + 1..].iter().cloned());
            Some(s)
        });
        let elems = (|| {
            let e = self.in_elems(node, 0)?;
            if data.as_ref()?.len() != 1 {
                return None;
            }
            let ix = self.in_elems(node, 1)?;
            ix.iter()
                .map(|i| {
                    let i = i.as_ref()?.as_const()?;
                    let i = if i < 0 { i + e.len() as i64 } else { i };
                    Some(e.get(usize::try_from(i).ok()?)?.clone())
                })
                .collect()
        })();
        Info { shape, elems }
    }

    fn concat(&self, node: &NodeProto) -> Info {
        let axis = node.attr("axis").and_then(|a| a.i).unwrap_or(0);
        let shapes: Option<Vec<Vec<Dim>>> = (0..node.input.len())
            .map(|i| self.in_shape(node, i))
            .collect();
        let shape = shapes.and_then(|ss| {
            let first = ss.first()?.clone();
            let r = first.len() as i64;
            let a = if axis < 0 { axis + r } else { axis };
            if a < 0 || a >= r {
                return None;
            }
            let a = a as usize;
            let mut out = first;
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
        let elems = (0..node.input.len())
            .map(|i| self.in_elems(node, i))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat())
            .filter(|e| e.len() <= MAX_ELEMS);
        Info { shape, elems }
    }

    fn slice(&self, node: &NodeProto) -> Info {
        let data = self.in_shape(node, 0);
        let starts = self.const_ints(node, 1, "starts");
        let ends = self.const_ints(node, 2, "ends");
        let r = data.as_ref().map_or(0, |d| d.len());
        let axes = if node.input.len() > 3 || node.attr("axes").is_some() {
            self.const_ints(node, 3, "axes")
        } else {
            starts.as_ref().map(|s| (0..s.len() as i64).collect())
        };
        let steps = if node.input.len() > 4 {
            self.const_ints(node, 4, "")
        } else {
            starts.as_ref().map(|s| vec![1; s.len()])
        };
        let plan = (|| {
            let (s, e, a, st) = (starts?, ends?, axes?, steps?);
            Some((s, e, a, st))
        })();
        let Some((starts, ends, axes, steps)) = plan else {
            return Info {
                shape: data.map(|d| vec![None; d.len()]),
                elems: None,
            };
        };
        let sliced_len = |dim: &Dim, s: i64, e: i64, st: i64| -> Dim {
            if st == 1 && s == 0 && e >= i64::MAX / 2 {
                return dim.clone();
            }
            let n = dim.as_ref()?.as_const()?;
            let norm = |v: i64, hi: i64| {
                let v = if v < 0 { v + n } else { v };
                v.clamp(0, hi)
            };
            let len = if st > 0 {
                let (s, e) = (norm(s, n), norm(e, n));
                (e - s + st - 1).div_euclid(st).max(0)
            } else if st < 0 {
                let (s, e) = (norm(s, n - 1), if e < -n { -1 } else { norm(e, n - 1) });
                (s - e + (-st) - 1).div_euclid(-st).max(0)
            } else {
                return None;
            };
            Some(Mono::constant(len))
        };
        let shape = data.map(|mut d| {
            for (k, &ax) in axes.iter().enumerate() {
                let ax = if ax < 0 { ax + r as i64 } else { ax };
                if let (Some(dim), Some(&s), Some(&e), Some(&st)) =
                    (d.get(ax as usize), starts.get(k), ends.get(k), steps.get(k))
                {
                    let l = sliced_len(dim, s, e, st);
                    d[ax as usize] = l;
                }
            }
            d
        });
        let elems = (|| {
            let e = self.in_elems(node, 0)?;
            if r != 1 || starts.len() != 1 || steps[0] != 1 {
                return None;
            }
            let n = e.len() as i64;
            let norm = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n) as usize;
            let (s, t) = (norm(starts[0]), norm(ends[0]));
            Some(e[s..t.max(s)].to_vec())
        })();
        Info { shape, elems }
    }

    fn split(&self, node: &NodeProto) -> Vec<Info> {
        let n_out = node.output.len();
        let data = self.in_shape(node, 0);
        let axis = node.attr("axis").and_then(|a| a.i).unwrap_or(0);
        let sizes = if node.input.len() > 1 && !node.input[1].is_empty() {
            self.const_ints(node, 1, "")
        } else {
            node.attr("split").map(|a| a.ints.clone())
        };
        (0..n_out)
            .map(|k| Info {
                shape: data.as_ref().map(|d| {
                    let mut d = d.clone();
                    let r = d.len() as i64;
                    let a = (if axis < 0 { axis + r } else { axis }) as usize;
                    if a < d.len() {
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
}

fn symbol(symbols: &mut HashMap<String, u32>, name: &str) -> Mono {
    let next = symbols.len() as u32;
    Mono::symbol(*symbols.entry(name.to_string()).or_insert(next))
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

fn reshape(input: Option<Vec<Dim>>, target: Vec<Dim>, allow_zero: bool) -> Option<Vec<Dim>> {
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

/// Shape (and small integer elements) of a tensor literal. Reads bytes only of tensors stored
/// inline and at most `MAX_ELEMS` long; weights are never touched.
fn tensor_info(t: &TensorProto) -> Info {
    let shape = Some(t.dims.iter().map(|&d| Some(Mono::constant(d))).collect());
    // Checked: dims come from the file and may multiply past i64.
    let numel = t.dims.iter().try_fold(1i64, |a, &d| a.checked_mul(d));
    let small = numel.filter(|n| (0..=MAX_ELEMS as i64).contains(n));
    let elems = (t.dims.len() <= 1 && small.is_some() && !t.is_external())
        .then(|| int_elems(t))
        .flatten()
        .filter(|e| Some(e.len() as i64) == small)
        .map(|e| e.into_iter().map(|v| Some(Mono::constant(v))).collect());
    Info { shape, elems }
}

fn int_elems(t: &TensorProto) -> Option<Vec<i64>> {
    let raw = t.raw_data.as_deref();
    match t.data_type() {
        data_type::INT64 => match raw {
            Some(r) => Some(
                r.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
            ),
            None => Some(t.int64_data.clone()),
        },
        data_type::INT32 => match raw {
            Some(r) => Some(
                r.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
                    .collect(),
            ),
            None => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        },
        _ => None,
    }
}

fn constant_info(a: &AttributeProto) -> Info {
    match a.name() {
        "value" => a.t.as_ref().map(tensor_info).unwrap_or_default(),
        "value_int" => Info {
            shape: Some(vec![]),
            elems: a.i.map(|i| vec![Some(Mono::constant(i))]),
        },
        "value_ints" => Info {
            shape: Some(vec![Some(Mono::constant(a.ints.len() as i64))]),
            elems: Some(a.ints.iter().map(|&i| Some(Mono::constant(i))).collect()),
        },
        "value_float" => Info {
            shape: Some(vec![]),
            elems: None,
        },
        "value_floats" => Info {
            shape: Some(vec![Some(Mono::constant(a.floats.len() as i64))]),
            elems: None,
        },
        _ => Info::default(),
    }
}

/// ONNX axes (negative counts from the end) as indices into a shape of rank `rank`. An axis out
/// of range maps to an index no shape has, so it matches nothing (hostile input never panics).
fn axis_indices(axes: &[i64], rank: i64) -> Vec<usize> {
    axes.iter()
        .map(|&a| (if a < 0 { a + rank } else { a }) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: i64) -> Dim {
        Some(Mono::constant(v))
    }

    #[test]
    fn monomials_divide_exactly() {
        let b = Mono::symbol(0);
        let s = Mono::symbol(1);
        let total = b.mul(&s).unwrap().mul(&Mono::constant(64)).unwrap();
        let rest = b.mul(&Mono::constant(4 * 16)).unwrap();
        assert_eq!(total.div(&rest), Some(s.clone()));
        assert_eq!(s.div(&b), None);
        assert_eq!(Mono::constant(7).div(&Mono::constant(2)), None);
        assert_eq!(s.add(&s.neg().unwrap()), Some(Mono::constant(0)));
        assert_eq!(s.add(&b), None);
    }

    #[test]
    fn reshape_infers_minus_one() {
        let b = Some(Mono::symbol(0));
        let s = Some(Mono::symbol(1));
        let out = reshape(
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
