//! Layers with several inputs: `Concatenate` and `Add` (used by functional models).

use candle_core::{DType, Tensor};

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
    /// Keras's: each input's mask (all ones for an input without one) spread over the
    /// input's shape, concatenated as the inputs are, then kept where any value of the last
    /// axis is kept (concatenating features keeps a step that either input keeps).
    fn compute_mask_many(&self, xs: &[Tensor], masks: &[Option<Tensor>]) -> Result<Option<Tensor>> {
        if masks.iter().all(Option::is_none) || xs.is_empty() {
            return Ok(None);
        }
        let axis = self.resolve_axis(xs[0].rank())?;
        let full = xs
            .iter()
            .zip(masks)
            .map(|(x, m)| {
                Ok(match m {
                    None => Tensor::ones(x.dims(), DType::F32, x.device())?,
                    Some(m) if m.rank() < x.rank() => m
                        .to_dtype(DType::F32)?
                        .unsqueeze(m.rank())?
                        .broadcast_as(x.dims())?
                        .contiguous()?,
                    Some(m) => m.to_dtype(DType::F32)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let cat = Tensor::cat(&full, axis)?;
        Ok(Some(cat.max(cat.rank() - 1)?))
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

/// Keras's merge mask (`Add`, `Subtract`, `Average`): none unless every input has one, then
/// kept where any input keeps.
fn merged_mask(masks: &[Option<Tensor>]) -> Result<Option<Tensor>> {
    let mut out: Option<Tensor> = None;
    for m in masks {
        let Some(m) = m else {
            return Ok(None);
        };
        let m = m.to_dtype(DType::F32)?;
        out = Some(match out {
            None => m,
            Some(o) => o.broadcast_maximum(&m)?,
        });
    }
    Ok(out)
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
    fn compute_mask_many(
        &self,
        _xs: &[Tensor],
        masks: &[Option<Tensor>],
    ) -> Result<Option<Tensor>> {
        merged_mask(masks)
    }
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
        merge_shape("Add", shapes)
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name}))
    }
}

/// The output shape of Keras's element-wise merge layers: axes of size 1 broadcast, other sizes
/// must agree.
fn merge_shape(class: &str, shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
    let first = shapes
        .first()
        .ok_or_else(|| Error::value(format!("{class} needs at least one input")))?;
    let mut out = first.clone();
    for s in &shapes[1..] {
        if s.len() != out.len() {
            return Err(Error::value(format!(
                "Inputs of a `{class}` layer must have the same rank. Received: input_shape={shapes:?}"
            )));
        }
        for (o, &d) in out.iter_mut().zip(s) {
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(Error::value(format!(
                    "Inputs of a `{class}` layer have incompatible shapes (sizes other than 1 must agree). Received: input_shape={shapes:?}"
                )));
            }
        }
    }
    Ok(out)
}

macro_rules! merge_layer {
    ($(#[$doc:meta])* $ty:ident, $prefix:expr, $class:expr, $two_only:expr, |$xs:ident| $merge:expr) => {
        $(#[$doc])*
        pub struct $ty {
            name: String,
        }
        impl $ty {
            #[doc = concat!("A `", $class, "` layer.")]
            pub fn new() -> Self {
                Self { name: unique_name($prefix) }
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
            fn check_count(&self, n: usize) -> Result<()> {
                if $two_only && n != 2 {
                    return Err(Error::value(format!(
                        "A `{}` layer should be called on exactly 2 inputs. Received: {n} inputs (layer \"{}\")",
                        $class, self.name
                    )));
                }
                if n == 0 {
                    return Err(Error::value(format!(
                        "layer \"{}\" ({}) needs at least one input",
                        self.name, $class
                    )));
                }
                Ok(())
            }
        }
        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Layer for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn class_name(&self) -> &str {
                $class
            }
            fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
                self.call_many(std::slice::from_ref(x), training)
            }
            fn call_many(&mut self, xs: &[Tensor], _training: bool) -> Result<Tensor> {
                self.check_count(xs.len())?;
                let $xs = xs;
                Ok($merge)
            }
            fn compute_mask_many(
                &self,
                _xs: &[Tensor],
                masks: &[Option<Tensor>],
            ) -> Result<Option<Tensor>> {
                // Keras's Multiply, Maximum and Minimum also use the masks in their values.
                if matches!($class, "Multiply" | "Maximum" | "Minimum") {
                    super::refuses_mask(self, masks.iter().flatten().next())?;
                }
                merged_mask(masks)
            }
            fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
                self.check_count(1)?;
                Ok(input_shape.to_vec())
            }
            fn compute_output_shape_many(&self, shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
                self.check_count(shapes.len())?;
                merge_shape($class, shapes)
            }
            fn config(&self) -> Option<serde_json::Value> {
                Some(serde_json::json!({"name": self.name}))
            }
        }
    };
}

/// `f(acc, x)` over the inputs, from the first.
fn fold(
    xs: &[Tensor],
    f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    let mut acc = xs[0].clone();
    for x in &xs[1..] {
        acc = f(&acc, x)?;
    }
    Ok(acc)
}

merge_layer!(
    /// Keras's `layers.Subtract`: the first of two inputs minus the second.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, Subtract};
    /// let a = Tensor::new(&[[5f32, 1.0]], &Device::Cpu).unwrap();
    /// let b = Tensor::new(&[[2f32, 3.0]], &Device::Cpu).unwrap();
    /// let d = Subtract::new().call_many(&[a.clone(), b], false).unwrap();
    /// assert_eq!(d.to_vec2::<f32>().unwrap(), vec![vec![3.0, -2.0]]);
    /// assert!(Subtract::new().call_many(&[a], false).is_err());
    /// ```
    Subtract, "subtract", "Subtract", true, |xs| xs[0].broadcast_sub(&xs[1])?
);
merge_layer!(
    /// Keras's `layers.Multiply`: the element-wise product of the inputs.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, Multiply};
    /// let a = Tensor::new(&[[5f32, 1.0]], &Device::Cpu).unwrap();
    /// let b = Tensor::new(&[[2f32, 3.0]], &Device::Cpu).unwrap();
    /// let p = Multiply::new().call_many(&[a, b], false).unwrap();
    /// assert_eq!(p.to_vec2::<f32>().unwrap(), vec![vec![10.0, 3.0]]);
    /// ```
    Multiply, "multiply", "Multiply", false, |xs| fold(xs, |a, b| a.broadcast_mul(b))?
);
merge_layer!(
    /// Keras's `layers.Average`: the element-wise mean of the inputs.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Average, Layer};
    /// let a = Tensor::new(&[[5f32, 1.0]], &Device::Cpu).unwrap();
    /// let b = Tensor::new(&[[2f32, 3.0]], &Device::Cpu).unwrap();
    /// let m = Average::new().call_many(&[a, b], false).unwrap();
    /// assert_eq!(m.to_vec2::<f32>().unwrap(), vec![vec![3.5, 2.0]]);
    /// ```
    Average, "average", "Average", false,
    |xs| (fold(xs, |a, b| a.broadcast_add(b))? / xs.len() as f64)?
);
merge_layer!(
    /// Keras's `layers.Maximum`: the element-wise maximum of the inputs (a gradient split
    /// evenly between tied inputs).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, Maximum};
    /// let a = Tensor::new(&[[5f32, 1.0]], &Device::Cpu).unwrap();
    /// let b = Tensor::new(&[[2f32, 3.0]], &Device::Cpu).unwrap();
    /// let m = Maximum::new().call_many(&[a, b], false).unwrap();
    /// assert_eq!(m.to_vec2::<f32>().unwrap(), vec![vec![5.0, 3.0]]);
    /// ```
    Maximum, "maximum", "Maximum", false, |xs| fold(xs, |a, b| a.broadcast_maximum(b))?
);
merge_layer!(
    /// Keras's `layers.Minimum`: the element-wise minimum of the inputs.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, Minimum};
    /// let a = Tensor::new(&[[5f32, 1.0]], &Device::Cpu).unwrap();
    /// let b = Tensor::new(&[[2f32, 3.0]], &Device::Cpu).unwrap();
    /// let m = Minimum::new().call_many(&[a, b], false).unwrap();
    /// assert_eq!(m.to_vec2::<f32>().unwrap(), vec![vec![2.0, 1.0]]);
    /// ```
    Minimum, "minimum", "Minimum", false, |xs| fold(xs, |a, b| a.broadcast_minimum(b))?
);
