//! Regularization by noise in training: `SpatialDropout1D` / `SpatialDropout2D` (whole
//! feature maps dropped) and `GaussianNoise`.

use candle_core::Tensor;
use rand::SeedableRng;
use rand_distr::{Distribution as _, StandardNormal};

use super::{DataFormat, Dropout, Layer, unique_name};
use crate::{Error, Result};

/// Keras's `layers.SpatialDropout1D`: in training, drops whole channels of `(batch, steps,
/// channels)` inputs (one draw per sample and channel, shared by all steps), scaling the rest
/// by `1 / (1 - rate)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{Layer, SpatialDropout1D};
/// let mut d = SpatialDropout1D::new(0.5).unwrap().seed(3);
/// let y = d.call(&Tensor::ones((2, 5, 4), DType::F32, &Device::Cpu).unwrap(), true).unwrap();
/// for sample in y.to_vec3::<f32>().unwrap() {
///     assert!(sample.iter().all(|step| step == &sample[0])); // a channel is dropped at every step
/// }
/// ```
pub struct SpatialDropout1D {
    inner: Dropout,
    rate: f32,
    seed: Option<u64>,
}

impl SpatialDropout1D {
    /// Drops a fraction `rate` of the channels.
    ///
    /// # Errors
    /// `rate` outside `[0, 1)`.
    pub fn new(rate: f32) -> Result<Self> {
        Ok(Self {
            inner: Dropout::new(rate)?
                .noise_shape(&[None, Some(1), None])
                .named(unique_name("spatial_dropout1d")),
            rate,
            seed: None,
        })
    }
    /// A seed of its own.
    pub fn seed(mut self, seed: u64) -> Self {
        self.inner = self.inner.seed(seed);
        self.seed = Some(seed);
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.inner = self.inner.named(name);
        self
    }
}

impl Layer for SpatialDropout1D {
    super::passes_mask!();
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn class_name(&self) -> &str {
        "SpatialDropout1D"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if x.rank() != 3 {
            return Err(Error::value(format!(
                "layer \"{}\" (SpatialDropout1D) expects inputs of shape (batch, steps, channels); received {:?}",
                self.name(),
                x.dims()
            )));
        }
        self.inner.call(x, training)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name(),
            "rate": super::config::f32_json(self.rate),
            "seed": self.seed,
        }))
    }
}

/// Keras's `layers.SpatialDropout2D`: in training, drops whole feature maps of a batch of
/// images (one draw per image and channel), scaling the rest by `1 / (1 - rate)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{Layer, SpatialDropout2D};
/// let mut d = SpatialDropout2D::new(0.5).unwrap();
/// let y = d.call(&Tensor::ones((2, 3, 3, 4), DType::F32, &Device::Cpu).unwrap(), true).unwrap();
/// let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert!(v.iter().all(|x| *x == 0.0 || *x == 2.0));
/// ```
pub struct SpatialDropout2D {
    inner: Dropout,
    rate: f32,
    seed: Option<u64>,
    data_format: DataFormat,
}

impl SpatialDropout2D {
    /// Drops a fraction `rate` of the feature maps.
    ///
    /// # Errors
    /// `rate` outside `[0, 1)`.
    pub fn new(rate: f32) -> Result<Self> {
        Ok(Self {
            inner: Dropout::new(rate)?
                .noise_shape(&[None, Some(1), Some(1), None])
                .named(unique_name("spatial_dropout2d")),
            rate,
            seed: None,
            data_format: DataFormat::ChannelsLast,
        })
    }
    /// A seed of its own.
    pub fn seed(mut self, seed: u64) -> Self {
        self.inner = self.inner.seed(seed);
        self.seed = Some(seed);
        self
    }
    /// Where the channel axis is (default channels last).
    pub fn data_format(mut self, f: DataFormat) -> Self {
        self.data_format = f;
        self.inner = match f {
            DataFormat::ChannelsLast => self.inner.noise_shape(&[None, Some(1), Some(1), None]),
            DataFormat::ChannelsFirst => self.inner.noise_shape(&[None, None, Some(1), Some(1)]),
        };
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.inner = self.inner.named(name);
        self
    }
}

impl Layer for SpatialDropout2D {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn class_name(&self) -> &str {
        "SpatialDropout2D"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if x.rank() != 4 {
            return Err(Error::value(format!(
                "layer \"{}\" (SpatialDropout2D) expects a batch of images (batch, height, width, channels); received {:?}",
                self.name(),
                x.dims()
            )));
        }
        self.inner.call(x, training)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name(),
            "rate": super::config::f32_json(self.rate),
            "seed": self.seed,
            "data_format": super::config::data_format_json(self.data_format),
        }))
    }
}

/// Keras's `layers.GaussianNoise`: in training, adds zero-mean normal noise of `stddev` to
/// every value; at inference the inputs pass unchanged.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{GaussianNoise, Layer};
/// let mut g = GaussianNoise::new(0.1).seed(1);
/// let x = Tensor::zeros((1000,), DType::F32, &Device::Cpu).unwrap().reshape((10, 100)).unwrap();
/// assert_eq!(g.call(&x, false).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
/// let y = g.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// let sd = (y.iter().map(|v| v * v).sum::<f32>() / 1000.0).sqrt();
/// assert!((sd - 0.1).abs() < 0.01);
/// ```
pub struct GaussianNoise {
    name: String,
    stddev: f64,
    seed: Option<(u64, rand::rngs::StdRng)>,
}

impl GaussianNoise {
    /// Noise of standard deviation `stddev`.
    pub fn new(stddev: f64) -> Self {
        Self {
            name: unique_name("gaussian_noise"),
            stddev,
            seed: None,
        }
    }
    /// A seed of its own.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some((seed, rand::rngs::StdRng::seed_from_u64(seed)));
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for GaussianNoise {
    super::passes_mask!();
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "GaussianNoise"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if !training || self.stddev <= 0.0 {
            return Ok(x.clone());
        }
        let x = crate::ops::to_float(x)?;
        let noise = match &mut self.seed {
            Some((_, g)) => {
                let sd = self.stddev as f32;
                let data: Vec<f32> = (0..x.elem_count())
                    .map(|_| {
                        let z: f32 = StandardNormal.sample(g);
                        z * sd
                    })
                    .collect();
                Tensor::from_vec(data, x.dims(), x.device())?
            }
            None => crate::random::normal(x.dims(), 0.0, self.stddev as f32, x.device())?,
        };
        Ok((&x + noise.to_dtype(x.dtype())?)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "stddev": self.stddev,
            "seed": self.seed.as_ref().map(|(s, _)| *s),
        }))
    }
}
