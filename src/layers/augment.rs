//! Image augmentation layers: random changes of the images in training, none at inference
//! (Keras's preprocessing layers used inside a model).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

use super::conv::flip;
use super::{DataFormat, Layer, unique_name};
use crate::{Error, Result};

/// Which way [`RandomFlip`] flips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlipMode {
    /// Left to right (the width axis).
    Horizontal,
    /// Top to bottom (the height axis).
    Vertical,
    /// Both at once (a half turn), as Keras's `"horizontal_and_vertical"`: one draw decides
    /// both.
    HorizontalAndVertical,
}

impl FlipMode {
    fn name(self) -> &'static str {
        match self {
            FlipMode::Horizontal => "horizontal",
            FlipMode::Vertical => "vertical",
            FlipMode::HorizontalAndVertical => "horizontal_and_vertical",
        }
    }
}

impl std::str::FromStr for FlipMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "horizontal" => Ok(FlipMode::Horizontal),
            "vertical" => Ok(FlipMode::Vertical),
            "horizontal_and_vertical" => Ok(FlipMode::HorizontalAndVertical),
            other => Err(Error::value(format!(
                "RandomFlip layer {other} received an unknown mode argument {other:?}; expected \"horizontal\", \"vertical\" or \"horizontal_and_vertical\""
            ))),
        }
    }
}

/// Keras's `layers.RandomFlip`: in training, each image of the batch is flipped with
/// probability 1/2 (one draw per image); at inference the images pass unchanged.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{FlipMode, Layer, RandomFlip};
/// let mut flip = RandomFlip::new(FlipMode::Horizontal).seed(1);
/// let x = Tensor::new(&[[[[1f32], [2.0], [3.0]]]], &Device::Cpu).unwrap(); // 1 image, 1x3
/// assert_eq!(flip.call(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0]);
/// let y = flip.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert!(y == [1.0, 2.0, 3.0] || y == [3.0, 2.0, 1.0]);
/// ```
pub struct RandomFlip {
    name: String,
    mode: FlipMode,
    data_format: DataFormat,
    /// Keras's `seed`, and the generator it starts; without one, the global generator.
    seed: Option<(u64, rand::rngs::StdRng)>,
}

impl RandomFlip {
    /// Flips in `mode` (Keras's default is [`FlipMode::HorizontalAndVertical`]).
    pub fn new(mode: FlipMode) -> Self {
        Self {
            name: unique_name("random_flip"),
            mode,
            data_format: DataFormat::ChannelsLast,
            seed: None,
        }
    }
    /// A seed of its own: the same seed gives the same flips.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some((seed, rand::rngs::StdRng::seed_from_u64(seed)));
        self
    }
    /// Where the channel axis is (default channels last).
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

impl Layer for RandomFlip {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "RandomFlip"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if x.rank() != 4 {
            return Err(Error::value(format!(
                "layer \"{}\" (RandomFlip) expects a batch of images (batch, height, width, channels); received shape {:?}",
                self.name,
                x.dims()
            )));
        }
        if !training {
            return Ok(x.clone());
        }
        let n = x.dims()[0];
        let flips: Vec<u8> = (0..n)
            .map(|_| {
                let u: f32 = match &mut self.seed {
                    Some((_, g)) => g.r#gen(),
                    None => crate::random::rng().r#gen(),
                };
                u8::from(u <= 0.5)
            })
            .collect();
        let (h_axis, w_axis) = match self.data_format {
            DataFormat::ChannelsLast => (1, 2),
            DataFormat::ChannelsFirst => (2, 3),
        };
        let mut flipped = x.clone();
        if matches!(
            self.mode,
            FlipMode::Horizontal | FlipMode::HorizontalAndVertical
        ) {
            flipped = flip(&flipped, w_axis)?;
        }
        if matches!(
            self.mode,
            FlipMode::Vertical | FlipMode::HorizontalAndVertical
        ) {
            flipped = flip(&flipped, h_axis)?;
        }
        let which = Tensor::from_vec(flips, (n, 1, 1, 1), x.device())?.broadcast_as(x.shape())?;
        Ok(which.where_cond(&flipped, x)?.to_dtype(x.dtype())?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "data_format": super::config::data_format_json(self.data_format),
            "seed": self.seed.as_ref().map(|(s, _)| *s),
            "mode": self.mode.name(),
        }))
    }
}
