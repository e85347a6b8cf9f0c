//! `Dropout`: zeroes a fraction of inputs during training, scaling the rest by `1 / (1 - rate)`.

use candle_core::Tensor;

use super::{Layer, unique_name};
use crate::{Error, Result};

/// Keras's `layers.Dropout(rate)`: identity at inference.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Dropout, Layer};
/// let mut d = Dropout::new(0.5).unwrap();
/// let x = Tensor::ones((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(d.call(&x, false).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 32.0);
/// let y = d.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert!(y.iter().all(|v| *v == 0.0 || *v == 2.0));
/// ```
pub struct Dropout {
    name: String,
    rate: f32,
}

impl Dropout {
    /// A dropout layer.
    ///
    /// # Errors
    /// `rate` outside `[0, 1)`.
    pub fn new(rate: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::value(format!(
                "Invalid value received for argument `rate`. Expected a float value between 0 and 1 (1 excluded). Received: rate={rate}"
            )));
        }
        Ok(Self {
            name: unique_name("dropout"),
            rate,
        })
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for Dropout {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Dropout"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if !training || self.rate == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.rate;
        let mask = crate::random::dropout_mask(x.dims(), keep, x.device())?.to_dtype(x.dtype())?;
        if let Some(y) = crate::kernels::elementwise::mask_mul(x, &mask)? {
            return Ok(y);
        }
        Ok(x.mul(&mask)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "rate": super::config::f32_json(self.rate),
        }))
    }
}
