//! Symbolic shapes, just enough to prove that a shape read inside a sub-block can be computed
//! from the first stream value's shape.
//!
//! Why: exporters compute shape-derived tensors from whatever value is at hand. T5's relative
//! position bias, for instance, takes the key length from `Shape(key_states)` inside layer 0's
//! attention and is then read by every layer. To hoist such work into the prologue we must show
//! that each dimension read is a dimension of the stream (or a constant); a dimension is a
//! monomial over the graph inputs' symbolic dimensions, which covers every reshape an encoder
//! does (`[b, s, h*d] -> [b, -1, h, d]`).
//!
//! This file is the interpreter: what is known about each value, walked over the graph in
//! order. What each operator does to shapes is in `rules`.

mod rules;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use crate::graph::Graph;
use crate::onnx::{
    tensor_proto::data_type, type_proto, AttributeProto, NodeProto, TensorProto, ValueInfoProto,
};

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
            if let Some(dims) = declared_shape(i, &mut symbols) {
                let info = Info {
                    shape: Some(dims),
                    elems: None,
                };
                s.info.insert(i.name().to_string(), info);
            }
        }
        for t in &g.proto.initializer {
            s.info.insert(t.name().to_string(), tensor_info(t));
        }
        let mut first: Option<Vec<Dim>> = None;
        for &n in order {
            let node = g.node(n);
            let outs = rules::outputs(&s, node);
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
}

/// A graph input's declared dimensions: numbers as constants, names as symbols (an unnamed
/// dimension gets a symbol of its own, equal to no other).
fn declared_shape(i: &ValueInfoProto, symbols: &mut HashMap<String, u32>) -> Option<Vec<Dim>> {
    use crate::onnx::tensor_shape_proto::dimension::Value;
    let Some(type_proto::Value::TensorType(t)) = i.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return None;
    };
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .enumerate()
        .map(|(axis, d)| match &d.value {
            Some(Value::DimValue(v)) => Some(Mono::constant(*v)),
            Some(Value::DimParam(p)) if !p.is_empty() => Some(symbol(symbols, p)),
            _ => Some(symbol(symbols, &format!("{}#{axis}", i.name()))),
        })
        .collect();
    Some(dims)
}

fn symbol(symbols: &mut HashMap<String, u32>, name: &str) -> Mono {
    let next = symbols.len() as u32;
    Mono::symbol(*symbols.entry(name.to_string()).or_insert(next))
}

/// ONNX counts a negative axis (or index, or slice bound) from the end: its offset from the
/// start of a `len`-long shape or list, still unchecked. Every axis goes through here; then
/// `index` refuses one out of range and `clamped` clamps it, as each operator's spec says.
fn from_end(i: i64, len: i64) -> i64 {
    if i < 0 {
        i + len
    } else {
        i
    }
}

/// An axis or index into a `len`-long shape or list; `None` out of range (hostile input then
/// leaves the value unknown, never panics).
fn index(i: i64, len: usize) -> Option<usize> {
    usize::try_from(from_end(i, len as i64))
        .ok()
        .filter(|&i| i < len)
}

/// A bound clamped into `0..=len` (slice bounds, `Flatten`'s axis, `Shape`'s start and end).
fn clamped(i: i64, len: usize) -> usize {
    from_end(i, len as i64).clamp(0, len as i64) as usize
}

/// The dimensions a `Shape` node of an input of rank `rank` reads (its `start` and `end`).
pub fn shape_read_range(node: &NodeProto, rank: usize) -> Range<usize> {
    let bound = |name: &str, default: i64| {
        let i = node.attr(name).and_then(|a| a.i).unwrap_or(default);
        clamped(i, rank)
    };
    let start = bound("start", 0);
    start..bound("end", rank as i64).max(start)
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

/// What a `Constant` node's attribute (or `ConstantOfShape`'s `value`) holds.
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn axes_count_from_the_end_and_are_refused_or_clamped_out_of_range() {
        assert_eq!(index(-1, 3), Some(2));
        assert_eq!(index(2, 3), Some(2));
        assert_eq!((index(3, 3), index(-4, 3)), (None, None));
        assert_eq!((clamped(-1, 3), clamped(-9, 3), clamped(9, 3)), (2, 0, 3));
    }
}
