//! `Masking`: marks the steps whose features all equal a padding value.

use candle_core::{DType, Tensor};

use super::{Layer, unique_name};
use crate::{Error, Result};

/// Keras's `layers.Masking`: over inputs `(batch, timesteps, features)`, a step whose
/// features all equal `mask_value` is padding. Such steps are zeroed, and the output carries a
/// mask, `(batch, timesteps)`, 0 there, that the layers after it use (a recurrent layer
/// skips those steps; see [`Layer::call_masked`]).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, Masking};
/// let mut m = Masking::new(-1.0);
/// let x = Tensor::new(&[[[1f32, 2.0], [-1.0, -1.0], [-1.0, 3.0]]], &Device::Cpu).unwrap();
/// assert_eq!(m.compute_mask(&x, None).unwrap().unwrap().to_vec2::<f32>().unwrap(),
///            vec![vec![1.0, 0.0, 1.0]]);
/// assert_eq!(m.call(&x, false).unwrap().to_vec3::<f32>().unwrap(),
///            vec![vec![vec![1.0, 2.0], vec![0.0, 0.0], vec![-1.0, 3.0]]]);
/// ```
pub struct Masking {
    name: String,
    mask_value: f64,
}

impl Masking {
    /// Masks the steps whose features all equal `mask_value` (Keras's default: 0).
    pub fn new(mask_value: f64) -> Self {
        Self {
            name: unique_name("masking"),
            mask_value,
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    /// 1 for the steps kept, 0 for padding, `(batch, timesteps, 1)`, in `x`'s dtype.
    fn kept(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() < 2 {
            return Err(Error::value(format!(
                "layer \"{}\" (Masking) expects inputs of shape (batch, timesteps, features); received {:?}",
                self.name,
                x.dims()
            )));
        }
        let x = crate::ops::to_float(x)?;
        let differs = x.ne(self.mask_value)?.to_dtype(DType::F32)?;
        Ok(differs.max_keepdim(x.rank() - 1)?.to_dtype(x.dtype())?)
    }
}

impl Layer for Masking {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Masking"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let kept = self.kept(x)?;
        Ok(crate::ops::to_float(x)?.broadcast_mul(&kept)?)
    }
    fn compute_mask(&self, x: &Tensor, _mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        let kept = self.kept(x)?;
        Ok(Some(kept.squeeze(kept.rank() - 1)?.to_dtype(DType::F32)?))
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "mask_value": self.mask_value,
        }))
    }
}
