//! Generates the ONNX IR messages from the vendored `proto/onnx-ml.proto` (see proto/README.md)
//! into `$OUT_DIR/onnx.rs`, which `src/onnx/proto.rs` includes.
//!
//! `protox` parses the `.proto` in Rust, so building needs no `protoc`. prost-build's defaults
//! already keep proto2 `optional` fields as `Option`, so presence survives a round trip.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx-ml.proto");
    let files = protox::compile(["onnx-ml.proto"], ["proto"])?;
    prost_build::Config::new()
        // Decoding from the memory-mapped file then slices the map instead of copying the
        // weights (model_io/read.rs).
        .bytes([".onnx.TensorProto.raw_data"])
        // Keeps every attribute small: most carry a scalar, few a graph or a type.
        .boxed(".onnx.AttributeProto.g")
        .boxed(".onnx.AttributeProto.tp")
        .compile_fds(files)?;
    Ok(())
}
