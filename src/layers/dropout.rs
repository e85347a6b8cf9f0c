//! `Dropout`: zeroes a fraction of inputs during training, scaling the rest by `1 / (1 - rate)`.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

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
    /// Keras's `noise_shape`: the mask's shape, batch axis included; `None` takes the input's.
    noise_shape: Option<Vec<Option<usize>>>,
    /// Keras's `seed`, and the generator it starts: masks of their own, repeated by the seed.
    seed: Option<(u64, rand::rngs::StdRng)>,
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
            noise_shape: None,
            seed: None,
        })
    }
    /// The shape of the mask, batch axis included, each axis `None` (the input's) or a size
    /// (1 to share one draw along that axis): Keras's `noise_shape`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Dropout, Layer};
    /// // One draw per sample and feature, shared along the time axis.
    /// let mut d = Dropout::new(0.5).unwrap().noise_shape(&[None, Some(1), None]);
    /// let x = Tensor::ones((2, 5, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    /// let y = d.call(&x, true).unwrap().to_vec3::<f32>().unwrap();
    /// for sample in &y {
    ///     assert!(sample.iter().all(|step| step == &sample[0]));
    /// }
    /// ```
    pub fn noise_shape(mut self, shape: &[Option<usize>]) -> Self {
        self.noise_shape = Some(shape.to_vec());
        self
    }
    /// A seed of its own: the same seed gives the same sequence of masks (Keras's `seed`);
    /// without one the masks come from the global generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some((seed, rand::rngs::StdRng::seed_from_u64(seed)));
        self
    }
    /// The mask's shape for input `dims`.
    fn mask_shape(&self, dims: &[usize]) -> Result<Vec<usize>> {
        let Some(noise) = &self.noise_shape else {
            return Ok(dims.to_vec());
        };
        let fits = noise.len() == dims.len()
            && noise
                .iter()
                .zip(dims)
                .all(|(n, d)| n.is_none_or(|n| n == 1 || n == *d));
        if !fits {
            return Err(Error::value(format!(
                "layer \"{}\": `noise_shape` {noise:?} does not fit the input shape {dims:?}: it needs one entry per axis (batch included), each None, 1 or the input's size",
                self.name
            )));
        }
        Ok(noise
            .iter()
            .zip(dims)
            .map(|(n, d)| n.unwrap_or(*d))
            .collect())
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for Dropout {
    super::passes_mask!();
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
        let shape = self.mask_shape(x.dims())?;
        let mask = match &mut self.seed {
            Some((_, g)) => crate::random::dropout_mask_from(&shape, keep, g.r#gen(), x.device())?,
            None => crate::random::dropout_mask(&shape, keep, x.device())?,
        }
        .to_dtype(x.dtype())?;
        if shape != x.dims() {
            return Ok(x.broadcast_mul(&mask)?);
        }
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
            "seed": self.seed.as_ref().map(|(s, _)| *s),
            "noise_shape": self.noise_shape,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two layers of one seed draw the same masks, call after call, whatever the global
    /// generator does between; a noise shape that does not fit the input is an error; the seed
    /// and noise shape survive the config.
    #[test]
    fn seeds_and_noise_shapes() {
        let x = Tensor::ones((4, 6), DType::F32, &Device::Cpu).unwrap();
        let mut a = Dropout::new(0.5).unwrap().seed(7);
        let mut b = Dropout::new(0.5).unwrap().seed(7);
        for _ in 0..3 {
            let ya = a.call(&x, true).unwrap().to_vec2::<f32>().unwrap();
            crate::random::uniform(&[5], 0.0, 1.0, &Device::Cpu).unwrap();
            let yb = b.call(&x, true).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(ya, yb);
        }
        let mut bad = Dropout::new(0.5).unwrap().noise_shape(&[None, Some(3)]);
        let err = bad.call(&x, true).unwrap_err().to_string();
        assert!(err.contains("noise_shape"), "{err}");
        let d = Dropout::new(0.25)
            .unwrap()
            .seed(3)
            .noise_shape(&[None, Some(1)]);
        let c = d.config().unwrap();
        assert_eq!(c["seed"], 3);
        assert_eq!(c["noise_shape"], serde_json::json!([null, 1]));
        let again = crate::layers::from_config("Dropout", &c).unwrap();
        assert_eq!(again.config().unwrap(), c);
    }
}
