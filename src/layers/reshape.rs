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
