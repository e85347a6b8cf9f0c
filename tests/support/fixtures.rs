//! Reading the JSON fixtures of `tests/fixtures/` (reference values made by Keras).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

/// The path of a fixture file.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A JSON fixture, parsed.
pub fn read(name: &str) -> Value {
    let path = path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// A JSON number or nested list as a float32 tensor on the CPU.
pub fn tensor(v: &Value) -> Tensor {
    fn walk(v: &Value, shape: &mut Vec<usize>, depth: usize, out: &mut Vec<f32>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                }
                for item in items {
                    walk(item, shape, depth + 1, out);
                }
            }
            other => out.push(other.as_f64().unwrap() as f32),
        }
    }
    let (mut shape, mut values) = (Vec::new(), Vec::new());
    walk(v, &mut shape, 0, &mut values);
    Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap()
}
