//! The operator arity table (`skrr_onnx::ops`) against its source, the operator schemas of the
//! `onnx` Python package: for every operator in the table and every opset the analysis accepts,
//! the same input and output counts (or both undefined before the operator existed).

mod common;

use common::*;
use skrr_onnx::blocks::MAX_OPSET;
use skrr_onnx::ops::{arity, known_ops};

#[test]
fn arity_table_matches_the_onnx_schemas() {
    let code = r#"
import json, sys
from onnx import defs
out = {}
for op in sys.argv[2:]:
    rows = []
    for v in range(1, int(sys.argv[1]) + 1):
        try:
            s = defs.get_schema(op, v, "")
            rows.append([s.min_input, s.max_input, s.min_output, s.max_output])
        except Exception:
            rows.append(None)
    out[op] = rows
print(json.dumps(out))
"#;
    let ops: Vec<&str> = known_ops().collect();
    let max = MAX_OPSET.to_string();
    let args: Vec<&str> = std::iter::once(max.as_str())
        .chain(ops.iter().copied())
        .collect();
    let schemas = run_python_json(code, &args);
    // The schemas' "no bound" is INT_MAX.
    let bound = |n: usize| n.min(i32::MAX as usize) as u64;
    let mut checked = 0;
    for op in &ops {
        for (i, want) in schemas[op].as_array().unwrap().iter().enumerate() {
            let opset = i as i64 + 1;
            let got = arity(op, opset).map(|a| {
                let (i, o) = (a.inputs, a.outputs);
                serde_json::json!([bound(i.0), bound(i.1), bound(o.0), bound(o.1)])
            });
            assert_eq!(
                got.as_ref().unwrap_or(&serde_json::Value::Null),
                want,
                "{op} at opset {opset}"
            );
            checked += 1;
        }
    }
    assert!(ops.len() >= 100, "the table lost operators: {}", ops.len());
    eprintln!(
        "{} operators × {MAX_OPSET} opsets ({checked} pairs) agree",
        ops.len()
    );
}
