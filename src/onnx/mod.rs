//! The ONNX format: message definitions and the few helpers every phase needs.
//! (prost derives `name()`, `op_type()`, ... accessors for the proto2 optionals.)

pub mod proto;

pub use proto::*;

/// Metadata key of a model skrr-onnx rewrote, holding the applied plan (compact JSON of the plan
/// file). Here, in the format's leaf module, because reading a model (`blocks`: is it pruned
/// already?) and writing one (`rewrite`) both need it.
pub const META_PLAN: &str = "skrr.plan";
/// Metadata key holding the skrr-onnx version that rewrote the model.
pub const META_VERSION: &str = "skrr.version";

impl NodeProto {
    /// The operator domain with the ONNX default domain's two spellings ("" and "ai.onnx")
    /// normalised to "".
    pub fn op_domain(&self) -> &str {
        match self.domain() {
            "ai.onnx" => "",
            d => d,
        }
    }
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name() == name)
    }
}

impl TensorProto {
    pub fn is_external(&self) -> bool {
        self.data_location == Some(tensor_proto::data_location::EXTERNAL)
    }
}

impl ValueInfoProto {
    /// A tensor of `elem_type` with every axis of fixed size, as an initializer declared as a
    /// graph input is described.
    pub fn fixed_tensor(name: &str, elem_type: i32, dims: &[i64]) -> Self {
        use tensor_shape_proto::dimension::Value;
        Self::tensor(name, elem_type, dims.iter().map(|&d| Value::DimValue(d)))
    }

    /// A tensor of `elem_type` whose axes are `dims` (fixed sizes or symbolic names).
    pub fn tensor(
        name: &str,
        elem_type: i32,
        dims: impl IntoIterator<Item = tensor_shape_proto::dimension::Value>,
    ) -> Self {
        let dim = dims
            .into_iter()
            .map(|d| tensor_shape_proto::Dimension {
                value: Some(d),
                denotation: None,
            })
            .collect();
        ValueInfoProto {
            name: Some(name.to_string()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem_type),
                    shape: Some(TensorShapeProto { dim }),
                })),
                denotation: None,
            }),
            ..Default::default()
        }
    }
}

impl StringStringEntryProto {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
        }
    }
}
