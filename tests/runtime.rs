//! The library's ONNX Runtime helpers against the real ONNX Runtime: sessions from a file and
//! from memory reproduce Python onnxruntime's outputs on a committed fixture, and fp16 outputs
//! come back widened to f32.

mod common;

use common::*;
use half::f16;
use ndarray::Array2;
use skrr_onnx::runtime::{self, Input};

/// Token ids and mask for 2 prompts of 7 tokens (the second padded after 4).
fn inputs() -> (Array2<i64>, Array2<i64>) {
    let ids = Array2::from_shape_vec(
        (2, 7),
        vec![5, 17, 42, 99, 3, 250, 1, 8, 64, 11, 1, 0, 0, 0],
    )
    .unwrap();
    let mask = ids.mapv(|t| i64::from(t != 0));
    (ids, mask)
}

#[test]
fn session_from_file_and_from_memory_match_python_onnxruntime() {
    let model = fixtures().join("t5_gated/model.onnx");
    let (ids, mask) = inputs();
    let feed = [
        ("input_ids", Input::I64(ids.view().into_dyn())),
        ("attention_mask", Input::I64(mask.view().into_dyn())),
    ];

    let mut from_file = sessions().from_file(&model).unwrap();
    let out_file = runtime::run_f32(&mut from_file, &feed).unwrap();
    let bytes = std::fs::read(&model).unwrap();
    let mut from_mem = sessions().from_bytes(&bytes, "t5_gated").unwrap();
    let out_mem = runtime::run_f32(&mut from_mem, &feed).unwrap();

    let hidden = &out_file["last_hidden_state"];
    assert_eq!(hidden.shape(), &[2, 7, 64]);
    assert_eq!(
        hidden, &out_mem["last_hidden_state"],
        "file and memory sessions differ"
    );
    let reference = ort_reference(
        &model,
        &[
            ("input_ids", ids.into_dyn()),
            ("attention_mask", mask.into_dyn()),
        ],
    );
    let err = max_rel_err(hidden, &reference["last_hidden_state"]);
    assert!(
        err <= 1e-6,
        "max relative error vs Python onnxruntime: {err}"
    );
}

#[test]
fn missing_model_file_is_a_runtime_error_naming_the_file() {
    let err = sessions()
        .from_file(std::path::Path::new("/nonexistent/model.onnx"))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("/nonexistent/model.onnx"), "{msg}");
    assert_eq!(
        skrr_onnx::error::exit_code_of(&err),
        skrr_onnx::error::exit::RUNTIME
    );
}

#[test]
fn wrong_input_name_is_an_error_not_a_panic() {
    let model = fixtures().join("bert/model.onnx");
    let mut session = sessions().from_file(&model).unwrap();
    let (ids, _) = inputs();
    let err = runtime::run_f32(
        &mut session,
        &[("tokens", Input::I64(ids.view().into_dyn()))],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("ONNX Runtime run failed"),
        "{err:#}"
    );
}

/// A model built in the test with the Python `onnx` helper: y = Cast<fp16>(x * 2), z = x + 1.
/// Checks fp16 inputs, fp16 outputs widened exactly, and that several outputs come back by name.
#[test]
fn fp16_outputs_are_widened_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.onnx");
    run_python(
        r#"
import sys, onnx
from onnx import helper as h, TensorProto as T
g = h.make_graph(
    [h.make_node("Constant", [], ["two"], value=h.make_tensor("two", T.FLOAT16, [], [2.0])),
     h.make_node("Cast", ["x"], ["xh"], to=T.FLOAT16),
     h.make_node("Mul", ["xh", "two"], ["y"]),
     h.make_node("Cast", ["w"], ["z"], to=T.FLOAT)],
    "g",
    [h.make_tensor_value_info("x", T.FLOAT, ["n"]), h.make_tensor_value_info("w", T.FLOAT16, ["n"])],
    [h.make_tensor_value_info("y", T.FLOAT16, ["n"]), h.make_tensor_value_info("z", T.FLOAT, ["n"])])
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
onnx.checker.check_model(m, full_check=True)
onnx.save(m, sys.argv[1])
"#,
        &[path.to_str().unwrap()],
    );
    let x = ndarray::arr1(&[1.5f32, -0.1, 65504.0 / 4.0]).into_dyn();
    let w = x.mapv(f16::from_f32);
    let mut session = sessions().from_file(&path).unwrap();
    let out = runtime::run_f32(
        &mut session,
        &[("x", Input::F32(x.view())), ("w", Input::F16(w.view()))],
    )
    .unwrap();
    let expect_y: Vec<f32> = x
        .iter()
        .map(|v| f32::from(f16::from_f32(*v) * f16::from_f32(2.0)))
        .collect();
    assert_eq!(out["y"].iter().copied().collect::<Vec<_>>(), expect_y);
    assert_eq!(out["z"], w.mapv(f32::from));
}
