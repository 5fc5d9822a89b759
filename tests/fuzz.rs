//! Fuzzing on stable Rust with `proptest`: mutated models must give `Ok` or a typed error
//! (an exit code other than 70, "internal"), never a panic.
//!
//! - `reader`: bytes of real fixture models (saved with external data, so that mutations hit
//!   the structure rather than the weights; plus a small model with every storage form) under
//!   bit flips, byte edits, truncations, splices and well-formed protobuf field insertions,
//!   deletions, duplications and value changes at any nesting depth. Each mutant is written
//!   beside the seed's data file and run through `read_model`, every tensor's typed view, and,
//!   when it reads, block detection.
//! - `blocks`: fixture graphs under structural mutations (nodes dropped, duplicated, rewired,
//!   renamed, retyped; initializers dropped or reshaped; nodes wrapped into `If` subgraphs;
//!   outputs changed) run through `blocks::analyze`.
//!
//! The budget is small by default (seconds, part of the normal test suite);
//! `scripts/fuzz.sh` runs it long. Environment: `SKRR_FUZZ_CASES` (cases per batch, default 200),
//! `SKRR_FUZZ_SECONDS` (keep running batches with new seeds until this many seconds have
//! passed), `SKRR_FUZZ_SEED` (first seed, default 0), `SKRR_FUZZ_FINDINGS` (folder where each
//! minimal failing model is saved). Prints executions and findings on stderr.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use prost::Message;
use skrr_onnx::error::{exit, exit_code_of};
use skrr_onnx::model_io::{read_model, write_model, ExternalData, WriteOptions};
use skrr_onnx::onnx::tensor_proto::data_type as dt;
use skrr_onnx::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
        .join("model.onnx")
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format, just enough to mutate messages without breaking their framing.

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

struct Field {
    start: usize,
    end: usize,
    number: u64,
    wire: u8,
    /// Payload of a length-delimited field.
    payload: std::ops::Range<usize>,
}

/// The top-level fields of a message, or `None` if it is not well-formed wire format.
fn fields(b: &[u8]) -> Option<Vec<Field>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let start = pos;
        let key = read_varint(b, &mut pos)?;
        let (number, wire) = (key >> 3, (key & 7) as u8);
        let mut payload = pos..pos;
        match wire {
            0 => drop(read_varint(b, &mut pos)?),
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(read_varint(b, &mut pos)?).ok()?;
                payload = pos..pos.checked_add(len)?;
                pos = payload.end;
            }
            _ => return None,
        }
        if pos > b.len() || number == 0 {
            return None;
        }
        out.push(Field {
            start,
            end: pos,
            number,
            wire,
            payload,
        });
    }
    Some(out)
}

/// An edit of one message's field list.
#[derive(Clone, Debug)]
enum FieldEdit {
    Insert {
        at: Index,
        number: u32,
        wire: u8,
        payload: Vec<u8>,
    },
    Delete(Index),
    Duplicate(Index),
    /// Replace a varint field's value (interesting values: 0, -1, 2^31, 2^63, ...).
    SetVarint(Index, u64),
}

fn encode_field(out: &mut Vec<u8>, number: u64, wire: u8, payload: &[u8]) {
    put_varint(out, number << 3 | u64::from(wire));
    match wire {
        0 => {
            let mut p = 0;
            put_varint(out, read_varint(payload, &mut p).unwrap_or(0));
        }
        1 => out.extend(payload.iter().copied().chain([0; 8]).take(8)),
        5 => out.extend(payload.iter().copied().chain([0; 4]).take(4)),
        _ => {
            put_varint(out, payload.len() as u64);
            out.extend_from_slice(payload);
        }
    }
}

fn edit_fields(b: &[u8], fs: &[Field], edit: &FieldEdit) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 16);
    match edit {
        FieldEdit::Insert {
            at,
            number,
            wire,
            payload,
        } => {
            let cut = if fs.is_empty() {
                0
            } else {
                let i = at.index(fs.len() + 1);
                fs.get(i).map_or(b.len(), |f| f.start)
            };
            out.extend_from_slice(&b[..cut]);
            encode_field(&mut out, u64::from(*number), *wire, payload);
            out.extend_from_slice(&b[cut..]);
        }
        _ if fs.is_empty() => out.extend_from_slice(b),
        FieldEdit::Delete(i) => {
            let f = &fs[i.index(fs.len())];
            out.extend_from_slice(&b[..f.start]);
            out.extend_from_slice(&b[f.end..]);
        }
        FieldEdit::Duplicate(i) => {
            let f = &fs[i.index(fs.len())];
            out.extend_from_slice(&b[..f.end]);
            out.extend_from_slice(&b[f.start..]);
        }
        FieldEdit::SetVarint(i, v) => {
            let varints: Vec<&Field> = fs.iter().filter(|f| f.wire == 0).collect();
            match varints.get(i.index(varints.len().max(1))) {
                Some(f) => {
                    out.extend_from_slice(&b[..f.start]);
                    put_varint(&mut out, f.number << 3);
                    put_varint(&mut out, *v);
                    out.extend_from_slice(&b[f.end..]);
                }
                None => out.extend_from_slice(b),
            }
        }
    }
    out
}

/// Descends `path` through length-delimited fields that parse as messages and applies `edit`
/// to the innermost one, re-encoding the lengths on the way out.
fn edit_nested(b: &[u8], path: &[Index], edit: &FieldEdit) -> Option<Vec<u8>> {
    let fs = fields(b)?;
    if let Some((first, rest)) = path.split_first() {
        let nested: Vec<&Field> = fs
            .iter()
            .filter(|f| f.wire == 2 && !f.payload.is_empty())
            .collect();
        if !nested.is_empty() {
            let f = nested[first.index(nested.len())];
            if let Some(inner) = edit_nested(&b[f.payload.clone()], rest, edit) {
                let mut out = b[..f.start].to_vec();
                encode_field(&mut out, f.number, 2, &inner);
                out.extend_from_slice(&b[f.end..]);
                return Some(out);
            }
        }
    }
    Some(edit_fields(b, &fs, edit))
}

#[derive(Clone, Debug)]
enum ByteMut {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, u8),
    Splice { from: Index, to: Index, len: u16 },
    Field { path: Vec<Index>, edit: FieldEdit },
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(1 << 31),
        Just(1 << 32),
        Just(1 << 40),
        Just(1 << 62),
        Just((1 << 62) + 1),
        any::<u64>(),
        0u64..64,
    ]
}

fn field_edit() -> impl Strategy<Value = FieldEdit> {
    prop_oneof![
        (
            any::<Index>(),
            1u32..=26,
            prop_oneof![Just(0u8), Just(1), Just(2), Just(5)],
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..24),
                interesting_u64().prop_map(|v| {
                    let mut b = Vec::new();
                    put_varint(&mut b, v);
                    b
                }),
            ]
        )
            .prop_map(|(at, number, wire, payload)| FieldEdit::Insert {
                at,
                number,
                wire,
                payload
            }),
        any::<Index>().prop_map(FieldEdit::Delete),
        any::<Index>().prop_map(FieldEdit::Duplicate),
        (any::<Index>(), interesting_u64()).prop_map(|(i, v)| FieldEdit::SetVarint(i, v)),
    ]
}

fn byte_mut() -> impl Strategy<Value = ByteMut> {
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| ByteMut::FlipBit(i, b)),
        1 => (any::<Index>(), prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), any::<u8>()])
            .prop_map(|(i, v)| ByteMut::SetByte(i, v)),
        1 => any::<Index>().prop_map(ByteMut::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| ByteMut::Insert(i, b)),
        1 => (any::<Index>(), 1u8..32).prop_map(|(i, n)| ByteMut::Delete(i, n)),
        1 => (any::<Index>(), any::<Index>(), 1u16..512)
            .prop_map(|(from, to, len)| ByteMut::Splice { from, to, len }),
        6 => (proptest::collection::vec(any::<Index>(), 0..6), field_edit())
            .prop_map(|(path, edit)| ByteMut::Field { path, edit }),
    ]
}

fn apply_bytes(mut b: Vec<u8>, m: &ByteMut) -> Vec<u8> {
    let n = b.len();
    match m {
        _ if n == 0 => {}
        ByteMut::FlipBit(i, bit) => b[i.index(n)] ^= 1 << bit,
        ByteMut::SetByte(i, v) => b[i.index(n)] = *v,
        ByteMut::Truncate(i) => b.truncate(i.index(n)),
        ByteMut::Insert(i, bytes) => {
            let at = i.index(n + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        ByteMut::Delete(i, len) => {
            let at = i.index(n);
            b.drain(at..(at + usize::from(*len)).min(n));
        }
        ByteMut::Splice { from, to, len } => {
            let f = from.index(n);
            let chunk: Vec<u8> = b[f..(f + usize::from(*len)).min(n)].to_vec();
            let t = to.index(n + 1);
            b.splice(t..t, chunk);
        }
        ByteMut::Field { path, edit } => {
            if let Some(out) = edit_nested(&b, path, edit) {
                b = out;
            }
        }
    }
    b
}

// ---------------------------------------------------------------------------------------------
// Graph mutations.

#[derive(Clone, Debug)]
enum GraphMut {
    DropNode(Index),
    DuplicateNode(Index),
    /// Make one input of a node read another value (any node output, graph input, initializer
    /// or a name that does not exist): cycles, dangling reads, type confusion.
    Rewire {
        node: Index,
        input: Index,
        to: Index,
        ghost: bool,
    },
    /// Rename a node's output to another existing value name (duplicate definitions).
    RenameOutput {
        node: Index,
        to: Index,
    },
    ClearInputs(Index),
    /// Remove one input of a node (operators then see fewer inputs than they require).
    DropInput(Index, Index),
    ChangeOp(Index, &'static str),
    SetAttrInt(Index, i64),
    DropInitializer(Index),
    SetDims(Index, Vec<i64>),
    /// Wrap a node into `If(true)` whose branches hold a copy of it.
    WrapInIf(Index),
    DropGraphOutput,
    AddGraphOutput(Index),
    SwapNodes(Index, Index),
}

const OPS: &[&str] = &[
    "Add",
    "MatMul",
    "Mul",
    "Softmax",
    "Reshape",
    "Transpose",
    "LayerNormalization",
    "Identity",
    "Gather",
    "Shape",
    "Concat",
    "Loop",
    "If",
    "Scan",
    "Constant",
    "Relu",
    "Unknown",
];

fn graph_mut() -> impl Strategy<Value = GraphMut> {
    let dims = proptest::collection::vec(
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(1),
            Just(64),
            Just(1 << 40),
            Just(i64::MAX),
            any::<i64>()
        ],
        0..4,
    );
    prop_oneof![
        2 => any::<Index>().prop_map(GraphMut::DropNode),
        1 => any::<Index>().prop_map(GraphMut::DuplicateNode),
        3 => (any::<Index>(), any::<Index>(), any::<Index>(), proptest::bool::weighted(0.1))
            .prop_map(|(node, input, to, ghost)| GraphMut::Rewire { node, input, to, ghost }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(node, to)| GraphMut::RenameOutput { node, to }),
        1 => any::<Index>().prop_map(GraphMut::ClearInputs),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(n, i)| GraphMut::DropInput(n, i)),
        1 => (any::<Index>(), proptest::sample::select(OPS)).prop_map(|(i, op)| GraphMut::ChangeOp(i, op)),
        1 => (any::<Index>(), prop_oneof![Just(-1i64), Just(0), Just(1 << 40), any::<i64>()])
            .prop_map(|(i, v)| GraphMut::SetAttrInt(i, v)),
        1 => any::<Index>().prop_map(GraphMut::DropInitializer),
        1 => (any::<Index>(), dims).prop_map(|(i, d)| GraphMut::SetDims(i, d)),
        1 => any::<Index>().prop_map(GraphMut::WrapInIf),
        1 => Just(GraphMut::DropGraphOutput),
        1 => any::<Index>().prop_map(GraphMut::AddGraphOutput),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| GraphMut::SwapNodes(a, b)),
    ]
}

fn value_names(g: &GraphProto) -> Vec<String> {
    g.input
        .iter()
        .filter_map(|v| v.name.clone())
        .chain(g.initializer.iter().filter_map(|t| t.name.clone()))
        .chain(g.node.iter().flat_map(|n| n.output.iter().cloned()))
        .collect()
}

fn apply_graph(g: &mut GraphProto, m: &GraphMut) {
    let n = g.node.len();
    let names = value_names(g);
    match m {
        _ if n == 0 || names.is_empty() => {}
        GraphMut::DropNode(i) => drop(g.node.remove(i.index(n))),
        GraphMut::DuplicateNode(i) => {
            let node = g.node[i.index(n)].clone();
            g.node.push(node);
        }
        GraphMut::Rewire {
            node,
            input,
            to,
            ghost,
        } => {
            let node = &mut g.node[node.index(n)];
            if !node.input.is_empty() {
                let k = input.index(node.input.len());
                node.input[k] = if *ghost {
                    "ghost_value".into()
                } else {
                    names[to.index(names.len())].clone()
                };
            }
        }
        GraphMut::RenameOutput { node, to } => {
            let node = &mut g.node[node.index(n)];
            if let Some(o) = node.output.first_mut() {
                *o = names[to.index(names.len())].clone();
            }
        }
        GraphMut::ClearInputs(i) => g.node[i.index(n)].input.clear(),
        GraphMut::DropInput(node, input) => {
            let node = &mut g.node[node.index(n)];
            if !node.input.is_empty() {
                let k = input.index(node.input.len());
                node.input.remove(k);
            }
        }
        GraphMut::ChangeOp(i, op) => g.node[i.index(n)].op_type = Some(op.to_string()),
        GraphMut::SetAttrInt(i, v) => {
            let node = &mut g.node[i.index(n)];
            match node.attribute.first_mut() {
                Some(a) => {
                    a.i = Some(*v);
                    a.ints = vec![*v; 2];
                }
                None => node.attribute.push(AttributeProto {
                    name: Some("axis".into()),
                    i: Some(*v),
                    r#type: Some(2),
                    ..Default::default()
                }),
            }
        }
        GraphMut::DropInitializer(i) if !g.initializer.is_empty() => {
            let k = i.index(g.initializer.len());
            g.initializer.remove(k);
        }
        GraphMut::SetDims(i, dims) if !g.initializer.is_empty() => {
            let k = i.index(g.initializer.len());
            g.initializer[k].dims = dims.clone();
        }
        GraphMut::DropInitializer(_) | GraphMut::SetDims(..) => {}
        GraphMut::WrapInIf(i) => {
            let k = i.index(n);
            let inner = g.node[k].clone();
            let branch = |tag: &str| GraphProto {
                name: Some(format!("{tag}_branch")),
                node: vec![NodeProto {
                    output: inner.output.iter().map(|o| format!("{o}_{tag}")).collect(),
                    ..inner.clone()
                }],
                output: inner
                    .output
                    .iter()
                    .map(|o| ValueInfoProto {
                        name: Some(format!("{o}_{tag}")),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            let cond = format!("fuzz_cond_{k}");
            g.node.insert(
                k,
                NodeProto {
                    output: vec![cond.clone()],
                    op_type: Some("Constant".into()),
                    attribute: vec![AttributeProto {
                        name: Some("value".into()),
                        r#type: Some(4),
                        t: Some(TensorProto {
                            data_type: Some(dt::BOOL),
                            int32_data: vec![1],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            );
            g.node[k + 1] = NodeProto {
                input: vec![cond],
                output: inner.output.clone(),
                op_type: Some("If".into()),
                attribute: ["then", "else"]
                    .iter()
                    .map(|tag| AttributeProto {
                        name: Some(format!("{tag}_branch")),
                        r#type: Some(5),
                        g: Some(Box::new(branch(tag))),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
        }
        GraphMut::DropGraphOutput => drop(g.output.pop()),
        GraphMut::AddGraphOutput(i) => g.output.push(ValueInfoProto {
            name: Some(names[i.index(names.len())].clone()),
            ..Default::default()
        }),
        GraphMut::SwapNodes(a, b) => g.node.swap(a.index(n), b.index(n)),
    }
}

// ---------------------------------------------------------------------------------------------
// Oracles.

fn typed(err: anyhow::Error, what: &str) -> Result<(), TestCaseError> {
    if exit_code_of(&err) == exit::INTERNAL {
        return Err(TestCaseError::fail(format!(
            "{what} returned an untyped (internal) error: {err:#}"
        )));
    }
    Ok(())
}

/// Every tensor's bytes and typed view, then block detection: all must be Ok or typed errors.
fn exercise(model: &skrr_onnx::model_io::Model) -> Result<(), TestCaseError> {
    if let Some(g) = &model.proto.graph {
        for t in g.initializer.iter().filter(|t| has_view(t.data_type())) {
            if let Err(e) = model.weights.view(t) {
                return Err(TestCaseError::fail(format!(
                    "a validated tensor cannot be read: {e:#}"
                )));
            }
        }
    }
    analyze(&model.proto)
}

/// Element types with a typed view: reading a tensor of these that `read_model` validated
/// must succeed (strings, float8, complex and packed 4-bit types have none).
fn has_view(data_type: i32) -> bool {
    matches!(
        data_type,
        dt::FLOAT
            | dt::DOUBLE
            | dt::FLOAT16
            | dt::BFLOAT16
            | dt::INT8
            | dt::UINT8
            | dt::INT16
            | dt::UINT16
            | dt::INT32
            | dt::UINT32
            | dt::INT64
            | dt::UINT64
            | dt::BOOL
    )
}

fn analyze(proto: &ModelProto) -> Result<(), TestCaseError> {
    match skrr_onnx::blocks::analyze(proto) {
        Ok(a) => {
            let n = a.graph.node.len();
            let all = a
                .prologue
                .iter()
                .chain(&a.epilogue)
                .chain(a.sub_blocks.iter().flat_map(|s| &s.nodes));
            for &i in all {
                if i >= n {
                    return Err(TestCaseError::fail(format!(
                        "analysis refers to node {i} of {n}"
                    )));
                }
            }
            Ok(())
        }
        Err(e) => typed(e, "blocks::analyze"),
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds and the driver.

/// A small model holding every storage form the reader supports: raw and typed fields for
/// fp32, fp16, bf16, int8, int64, bool, double and strings.
fn storage_seed() -> ModelProto {
    let t = |name: &str, dtype: i32, dims: Vec<i64>| TensorProto {
        name: Some(name.into()),
        data_type: Some(dtype),
        dims,
        ..Default::default()
    };
    let inits = vec![
        TensorProto {
            raw_data: Some(vec![0u8; 16].into()),
            ..t("raw_f32", dt::FLOAT, vec![2, 2])
        },
        TensorProto {
            float_data: vec![1.0, 2.0, 3.0],
            ..t("typed_f32", dt::FLOAT, vec![3])
        },
        TensorProto {
            int32_data: vec![0x3c00, 0x4000],
            ..t("typed_f16", dt::FLOAT16, vec![2])
        },
        TensorProto {
            int32_data: vec![0x3f80],
            ..t("typed_bf16", dt::BFLOAT16, vec![1])
        },
        TensorProto {
            int32_data: vec![-1, 2, 127],
            ..t("typed_i8", dt::INT8, vec![3])
        },
        TensorProto {
            int64_data: vec![i64::MIN, 0, i64::MAX],
            ..t("typed_i64", dt::INT64, vec![3])
        },
        TensorProto {
            int32_data: vec![1, 0],
            ..t("typed_bool", dt::BOOL, vec![2])
        },
        TensorProto {
            double_data: vec![0.5],
            ..t("typed_f64", dt::DOUBLE, vec![])
        },
        TensorProto {
            string_data: vec![b"a".to_vec(), b"bc".to_vec()],
            ..t("strings", dt::STRING, vec![2])
        },
    ];
    let node = NodeProto {
        input: vec!["x".into(), "raw_f32".into()],
        output: vec!["y".into()],
        op_type: Some("Add".into()),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            node: vec![node],
            initializer: inits,
            input: vec![ValueInfoProto {
                name: Some("x".into()),
                ..Default::default()
            }],
            output: vec![ValueInfoProto {
                name: Some("y".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Budget {
    cases: u32,
    until: Option<Instant>,
    seed: u64,
    findings: Option<PathBuf>,
}

impl Budget {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Budget {
            cases: var("SKRR_FUZZ_CASES").map_or(200, |v| v.parse().expect("SKRR_FUZZ_CASES")),
            until: var("SKRR_FUZZ_SECONDS").map(|v| {
                Instant::now() + Duration::from_secs_f64(v.parse().expect("SKRR_FUZZ_SECONDS"))
            }),
            seed: var("SKRR_FUZZ_SEED").map_or(0, |v| v.parse().expect("SKRR_FUZZ_SEED")),
            findings: var("SKRR_FUZZ_FINDINGS").map(PathBuf::from),
        }
    }
}

/// Runs batches of `budget.cases` cases (new seed each batch) until the time budget is spent
/// (one batch without one). Returns the failure descriptions.
fn drive<S: Strategy>(
    target: &str,
    strategy: S,
    execs: &AtomicU64,
    oks: &AtomicU64,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
    save: impl Fn(&S::Value, &Path),
) -> Vec<String>
where
    S::Value: std::fmt::Debug,
{
    let budget = Budget::from_env();
    let start = Instant::now();
    let mut findings = Vec::new();
    let mut seed = budget.seed;
    loop {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..8 + target.len().min(24)]
            .copy_from_slice(&target.as_bytes()[..target.len().min(24)]);
        let config = Config {
            cases: budget.cases,
            failure_persistence: None,
            max_shrink_iters: 2048,
            ..Config::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Fail(reason, value)) => {
                let mut text =
                    format!("{target} seed {seed}: {reason}\n    minimal input: {value:?}");
                if let Some(dir) = &budget.findings {
                    std::fs::create_dir_all(dir).unwrap();
                    let path = dir.join(format!("{target}-seed{seed}.onnx"));
                    save(&value, &path);
                    text.push_str(&format!("\n    saved as {}", path.display()));
                }
                eprintln!("FINDING {text}");
                findings.push(text);
            }
            Err(TestError::Abort(reason)) => panic!("{target}: proptest aborted: {reason}"),
        }
        seed += 1;
        if budget.until.is_none_or(|t| Instant::now() >= t) {
            break;
        }
    }
    eprintln!(
        "fuzz {target}: {} executions ({} accepted, the rest refused with typed errors) in \
         {:.1} s ({} batches from seed {}), {} findings",
        execs.load(Ordering::Relaxed),
        oks.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        seed - budget.seed,
        budget.seed,
        findings.len()
    );
    findings
}

#[test]
fn fuzz_reader() {
    let dir = tempfile::tempdir().unwrap();
    // Seeds saved with external data: the .onnx holds the structure, mutations hit it.
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for name in ["t5_gated", "bert"] {
        let m = read_model(&fixture(name)).unwrap();
        let out = dir.path().join(format!("{name}.onnx"));
        let opts = WriteOptions {
            external: ExternalData::Always { file: None },
            ..WriteOptions::default()
        };
        write_model(&m.proto, &m.weights, &out, &opts).unwrap();
        seeds.push(std::fs::read(&out).unwrap());
    }
    seeds.push(storage_seed().encode_to_vec());

    let target = dir.path().join("fuzz.onnx");
    let (execs, oks) = (AtomicU64::new(0), AtomicU64::new(0));
    let strategy = (0..seeds.len(), proptest::collection::vec(byte_mut(), 1..5));
    let mutate = |(seed, muts): &(usize, Vec<ByteMut>)| -> Vec<u8> {
        muts.iter().fold(seeds[*seed].clone(), apply_bytes)
    };
    let findings = drive(
        "reader",
        strategy,
        &execs,
        &oks,
        |input| {
            execs.fetch_add(1, Ordering::Relaxed);
            std::fs::write(&target, mutate(&input)).unwrap();
            match read_model(&target) {
                Ok(model) => {
                    oks.fetch_add(1, Ordering::Relaxed);
                    exercise(&model)
                }
                Err(e) => typed(e, "read_model"),
            }
        },
        |input, path| std::fs::write(path, mutate(input)).unwrap(),
    );
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

#[test]
fn fuzz_blocks() {
    let seeds: Vec<ModelProto> = ["t5_gated", "bert"]
        .iter()
        .map(|n| read_model(&fixture(n)).unwrap().proto)
        .collect();
    let (execs, oks) = (AtomicU64::new(0), AtomicU64::new(0));
    let strategy = (0..seeds.len(), proptest::collection::vec(graph_mut(), 1..6));
    let mutate = |(seed, muts): &(usize, Vec<GraphMut>)| -> ModelProto {
        let mut m = seeds[*seed].clone();
        if let Some(g) = m.graph.as_mut() {
            for mu in muts {
                apply_graph(g, mu);
            }
        }
        m
    };
    let findings = drive(
        "blocks",
        strategy,
        &execs,
        &oks,
        |input| {
            execs.fetch_add(1, Ordering::Relaxed);
            let m = mutate(&input);
            if skrr_onnx::blocks::analyze(&m).is_ok() {
                oks.fetch_add(1, Ordering::Relaxed);
            }
            analyze(&m)
        },
        |input, path| std::fs::write(path, mutate(input).encode_to_vec()).unwrap(),
    );
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Regressions: each finding of scripts/fuzz.sh (docs/reliability.md), replayed. They panicked
// with "attempt to multiply/add with overflow" before the fix (and wrapped silently in release).

fn t5_with(edit: impl FnOnce(&mut GraphProto)) -> ModelProto {
    let mut m = read_model(&fixture("t5_gated")).unwrap().proto;
    edit(m.graph.as_mut().unwrap());
    m
}

fn assert_refused(m: &ModelProto, needle: &str) {
    let err = skrr_onnx::blocks::analyze(m).expect_err("analysis accepted a hostile graph");
    assert_eq!(exit_code_of(&err), exit::BAD_MODEL, "{err:#}");
    assert!(format!("{err:#}").contains(needle), "{err:#}");
}

/// Finding 2 (blocks, seed 1): an initializer with dims [64, i64::MAX] overflowed the
/// structure signature's element count.
#[test]
fn regression_initializer_dims_past_i64() {
    let m = t5_with(|g| g.initializer[1].dims = vec![64, i64::MAX]);
    assert_refused(&m, "overflow");
}

/// Finding 3: initializers whose sizes each fit but add up past 2^63 overflowed the parameter
/// accounting.
#[test]
fn regression_initializer_sizes_sum_past_i64() {
    let m = t5_with(|g| {
        g.initializer[1].dims = vec![1 << 62];
        g.initializer[2].dims = vec![1 << 62];
    });
    assert_refused(&m, "2^63");
}

/// Finding 1 (blocks, test-suite seed 0): a Constant whose tensor declares dims multiplying past
/// i64 overflowed shape inference. Constants are not weights: the analysis goes on (or refuses
/// the graph), without panicking.
#[test]
fn regression_constant_dims_past_i64() {
    let m = t5_with(|g| {
        let c = g
            .node
            .iter_mut()
            .find(|n| n.op_type() == "Constant")
            .unwrap();
        let t = c.attribute[0].t.as_mut().unwrap();
        t.dims = vec![1 << 62, 8];
    });
    if let Err(e) = skrr_onnx::blocks::analyze(&m) {
        assert_ne!(exit_code_of(&e), exit::INTERNAL, "{e:#}");
    }
}

/// Finding 4 (reader, seed 1105; reachable from `inspect`): a `Where` node left with two
/// inputs by a deleted protobuf field made shape inference index its missing third input. Shape
/// inference now treats a missing input as unknown, and the arity check (`skrr_onnx::ops`)
/// refuses the node first.
#[test]
fn regression_where_with_two_inputs() {
    let m = t5_with(|g| {
        let w = g.node.iter_mut().find(|n| n.op_type() == "Where").unwrap();
        w.input.truncate(2);
    });
    assert_refused(&m, "has 2 inputs; Where takes 3 inputs");
}
