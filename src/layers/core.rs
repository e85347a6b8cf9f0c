//! Layers with several inputs: `Concatenate` and `Add` (used by functional models).

use candle_core::Tensor;

use super::{Layer, unique_name};
use crate::{Error, Result};

/// Concatenates its inputs along an axis (default the last), Keras's `layers.Concatenate`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Concatenate, Layer};
/// let a = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let b = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(Concatenate::new().call_many(&[a, b], false).unwrap().dims(), &[2, 8]);
/// ```
pub struct Concatenate {
    name: String,
    axis: isize,
}

impl Concatenate {
    /// Concatenation along the last axis.
    pub fn new() -> Self {
        Self {
            name: unique_name("concatenate"),
            axis: -1,
        }
    }
    /// Concatenation along `axis` (negative counts from the end, batch axis is 0).
    pub fn axis(mut self, axis: isize) -> Self {
        self.axis = axis;
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    fn resolve_axis(&self, rank: usize) -> Result<usize> {
        let a = if self.axis < 0 {
            rank as isize + self.axis
        } else {
            self.axis
        };
        if a < 1 || a >= rank as isize {
            return Err(Error::value(format!(
                "Concatenate axis {} is out of range for inputs of rank {rank} (the batch axis 0 cannot be used)",
                self.axis
            )));
        }
        Ok(a as usize)
    }
}

impl Default for Concatenate {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer for Concatenate {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Concatenate"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn call_many(&mut self, xs: &[Tensor], _training: bool) -> Result<Tensor> {
        let first = xs
            .first()
            .ok_or_else(|| Error::value("Concatenate needs at least one input"))?;
        let axis = self.resolve_axis(first.rank())?;
        Ok(Tensor::cat(xs, axis)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn compute_output_shape_many(&self, shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
        let first = shapes
            .first()
            .ok_or_else(|| Error::value("Concatenate needs at least one input"))?;
        let axis = self.resolve_axis(first.len() + 1)? - 1;
        let mut out = first.clone();
        for s in &shapes[1..] {
            let same_rest = s.len() == first.len()
                && s.iter()
                    .zip(first)
                    .enumerate()
                    .all(|(i, (a, b))| i == axis || a == b);
            if !same_rest {
                return Err(Error::value(format!(
                    "A `Concatenate` layer requires inputs with matching shapes except for the concatenation axis. Received: input_shape={shapes:?}"
                )));
            }
            out[axis] += s[axis];
        }
        Ok(out)
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name, "axis": self.axis}))
    }
}

/// Adds its inputs elementwise, Keras's `layers.Add`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Add, Layer};
/// let a = Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let s = Add::new().call_many(&[a.clone(), a], false).unwrap();
/// assert_eq!(s.sum_all().unwrap().to_scalar::<f32>().unwrap(), 12.0);
/// ```
pub struct Add {
    name: String,
}

impl Add {
    /// An add layer.
    pub fn new() -> Self {
        Self {
            name: unique_name("add"),
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Default for Add {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer for Add {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Add"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn call_many(&mut self, xs: &[Tensor], _training: bool) -> Result<Tensor> {
        let (first, rest) = xs
            .split_first()
            .ok_or_else(|| Error::value("Add needs at least one input"))?;
        let mut acc = first.clone();
        for x in rest {
            acc = acc.broadcast_add(x)?;
        }
        Ok(acc)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn compute_output_shape_many(&self, shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
        let first = shapes
            .first()
            .ok_or_else(|| Error::value("Add needs at least one input"))?;
        // Keras's element-wise merge: axes of size 1 broadcast, other sizes must agree.
        let mut out = first.clone();
        for s in &shapes[1..] {
            if s.len() != out.len() {
                return Err(Error::value(format!(
                    "Inputs of an `Add` layer must have the same rank. Received: input_shape={shapes:?}"
                )));
            }
            for (o, &d) in out.iter_mut().zip(s) {
                if *o == 1 {
                    *o = d;
                } else if d != 1 && d != *o {
                    return Err(Error::value(format!(
                        "Inputs of an `Add` layer have incompatible shapes (sizes other than 1 must agree). Received: input_shape={shapes:?}"
                    )));
                }
            }
        }
        Ok(out)
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name}))
    }
}
