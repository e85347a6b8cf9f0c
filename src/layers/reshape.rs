//! `Flatten` and `Reshape`.

use candle_core::Tensor;

use super::{DataFormat, Layer, unique_name};
use crate::{Error, Result};

/// Flattens every axis but the batch axis. With channels-first inputs
/// (`data_format(DataFormat::ChannelsFirst)`) the channels axis is moved last first, so that the
/// features come in the order a channels-last model gives them (Keras's `data_format`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Flatten, Layer};
/// let x = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(Flatten::new().call(&x, false).unwrap().dims(), &[2, 12]);
/// ```
pub struct Flatten {
    name: String,
    data_format: DataFormat,
}

impl Flatten {
    /// A flatten layer.
    pub fn new() -> Self {
        Self {
            name: unique_name("flatten"),
            data_format: DataFormat::ChannelsLast,
        }
    }
    /// The layout of the inputs (default channels last).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{DataFormat, Flatten, Layer};
    /// // One sample, 2 channels of 1x2 pixels: [[a, b]], [[c, d]] flattens to a, c, b, d.
    /// let x = Tensor::new(&[[[[1f32, 2.0]], [[3.0, 4.0]]]], &Device::Cpu).unwrap();
    /// let mut f = Flatten::new().data_format(DataFormat::ChannelsFirst);
    /// assert_eq!(f.call(&x, false).unwrap().to_vec2::<f32>().unwrap(), vec![vec![1.0, 3.0, 2.0, 4.0]]);
    /// ```
    pub fn data_format(mut self, f: DataFormat) -> Self {
        self.data_format = f;
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Default for Flatten {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer for Flatten {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Flatten"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.rank() == 0 {
            return Err(Error::value(
                "Flatten needs a batch axis; received a scalar",
            ));
        }
        let n = x.dims()[0];
        let rest: usize = x.dims()[1..].iter().product();
        if self.data_format == DataFormat::ChannelsFirst && x.rank() > 2 {
            let mut axes: Vec<usize> = (0..x.rank()).collect();
            axes[1..].rotate_left(1);
            return Ok(x.permute(axes)?.contiguous()?.reshape((n, rest))?);
        }
        Ok(x.reshape((n, rest))?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let n = input_shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| {
                Error::value(format!(
                    "Flatten: the number of features of input shape {input_shape:?} overflows usize"
                ))
            })?;
        Ok(vec![n])
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "data_format": super::config::data_format_json(self.data_format),
        }))
    }
}

/// Reshapes every sample to `target_shape` (batch axis excluded); one entry may be `-1`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, Reshape};
/// let x = Tensor::zeros((2, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(Reshape::new(&[3, -1]).call(&x, false).unwrap().dims(), &[2, 3, 4]);
/// ```
pub struct Reshape {
    name: String,
    target: Vec<i64>,
}

impl Reshape {
    /// A reshape layer.
    pub fn new(target_shape: &[i64]) -> Self {
        Self {
            name: unique_name("reshape"),
            target: target_shape.to_vec(),
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }

    fn resolve(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let unknown = self.target.iter().filter(|d| **d == -1).count();
        let bad = || {
            Error::value(format!(
                "The total size of the tensor must be unchanged. Received: input_shape={input_shape:?}, target_shape={:?}",
                self.target
            ))
        };
        if unknown > 1 || self.target.iter().any(|d| *d < -1 || *d == 0) {
            return Err(bad());
        }
        // Checked products: an absurd shape is an error, not an overflow panic.
        let total = input_shape
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(bad)?;
        let known = self
            .target
            .iter()
            .filter(|d| **d != -1)
            .try_fold(1usize, |acc, d| acc.checked_mul(*d as usize))
            .ok_or_else(bad)?;
        if unknown == 1 {
            if !total.is_multiple_of(known) {
                return Err(bad());
            }
            let fill = total / known;
            Ok(self
                .target
                .iter()
                .map(|d| if *d == -1 { fill } else { *d as usize })
                .collect())
        } else {
            if known != total {
                return Err(bad());
            }
            Ok(self.target.iter().map(|d| *d as usize).collect())
        }
    }
}

impl Layer for Reshape {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Reshape"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.rank() == 0 {
            return Err(Error::value(
                "Reshape needs a batch axis; received a scalar",
            ));
        }
        let mut shape = vec![x.dims()[0]];
        shape.extend(self.resolve(&x.dims()[1..])?);
        Ok(x.reshape(shape)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.resolve(input_shape)
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name, "target_shape": self.target}))
    }
}

/// Keras's `layers.RepeatVector`: `(batch, features)` → `(batch, n, features)`, the input
/// repeated `n` times.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, RepeatVector};
/// let x = Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap();
/// let y = RepeatVector::new(3).call(&x, false).unwrap();
/// assert_eq!(y.dims(), &[1, 3, 2]);
/// assert_eq!(y.get(0).unwrap().get(2).unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
/// ```
pub struct RepeatVector {
    name: String,
    n: usize,
}

impl RepeatVector {
    /// Repeats the input `n` times.
    pub fn new(n: usize) -> Self {
        Self {
            name: unique_name("repeat_vector"),
            n,
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for RepeatVector {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "RepeatVector"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let (b, f) = x.dims2().map_err(|_| {
            Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected ndim=2 (batch, features), found shape {:?}",
                self.name,
                x.dims()
            ))
        })?;
        Ok(x.unsqueeze(1)?.broadcast_as((b, self.n, f))?.contiguous()?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        match input_shape {
            [f] => Ok(vec![self.n, *f]),
            _ => Err(Error::value(format!(
                "layer \"{}\" needs inputs of shape (batch, features); received (None, {input_shape:?})",
                self.name
            ))),
        }
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name, "n": self.n}))
    }
}

/// Keras's `layers.Permute`: reorders the axes after the batch axis; `dims` numbers them from 1
/// (`Permute::new(&[2, 1])` swaps steps and features).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, Permute};
/// let x = Tensor::zeros((4, 3, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(Permute::new(&[2, 1]).call(&x, false).unwrap().dims(), &[4, 5, 3]);
/// assert!(Permute::new(&[1, 1]).call(&x, false).is_err());
/// ```
pub struct Permute {
    name: String,
    dims: Vec<usize>,
}

impl Permute {
    /// The new order of the axes after the batch axis, numbered from 1.
    pub fn new(dims: &[usize]) -> Self {
        Self {
            name: unique_name("permute"),
            dims: dims.to_vec(),
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    /// Checks that `dims` is a permutation of `1..=rank`.
    fn check(&self, rank: usize) -> Result<()> {
        let mut sorted = self.dims.clone();
        sorted.sort_unstable();
        if sorted != (1..=rank).collect::<Vec<_>>() {
            return Err(Error::value(format!(
                "layer \"{}\": Invalid permutation argument `dims` for Permute Layer. The set of indices in `dims` must be consecutive and start from 1. Received: dims={:?} for inputs with {rank} axes after the batch axis",
                self.name, self.dims
            )));
        }
        Ok(())
    }
}

impl Layer for Permute {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Permute"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        self.check(x.rank().saturating_sub(1))?;
        let mut order = vec![0];
        order.extend(&self.dims);
        Ok(x.permute(order)?.contiguous()?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.check(input_shape.len())?;
        Ok(self.dims.iter().map(|d| input_shape[d - 1]).collect())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name, "dims": self.dims}))
    }
}

/// Keras's `layers.UpSampling1D`: each step repeated `size` times, `(batch, steps, features)`
/// → `(batch, steps * size, features)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, UpSampling1D};
/// let x = Tensor::new(&[[[1f32], [2.0]]], &Device::Cpu).unwrap();
/// let y = UpSampling1D::new(2).call(&x, false).unwrap();
/// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 1.0, 2.0, 2.0]);
/// ```
pub struct UpSampling1D {
    name: String,
    size: usize,
}

impl UpSampling1D {
    /// Repeats each step `size` times.
    pub fn new(size: usize) -> Self {
        Self {
            name: unique_name("up_sampling1d"),
            size,
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for UpSampling1D {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "UpSampling1D"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let (b, l, f) = x.dims3().map_err(|_| {
            Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected ndim=3 (batch, steps, features), found shape {:?}",
                self.name,
                x.dims()
            ))
        })?;
        Ok(x.unsqueeze(2)?
            .broadcast_as((b, l, self.size, f))?
            .contiguous()?
            .reshape((b, l * self.size, f))?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        match input_shape {
            [l, f] => Ok(vec![l * self.size, *f]),
            _ => Err(Error::value(format!(
                "layer \"{}\" needs inputs of shape (batch, steps, features); received (None, {input_shape:?})",
                self.name
            ))),
        }
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name, "size": self.size}))
    }
}
