//! `ZeroPadding2D`, `Cropping2D` and `Rescaling`: layers without variables that reshape or
//! rescale images.

use candle_core::Tensor;

use super::{DataFormat, Layer, unique_name};
use crate::mixed_precision::DTypePolicy;
use crate::{Error, Result};

/// `((top, bottom), (left, right))` from one number for all sides, `(rows, columns)` for both
/// sides of each axis, or the four values, as Keras takes `padding=1`, `padding=(1, 2)` or
/// `padding=((1, 2), (3, 4))`.
///
/// ```
/// use ferrokeras::layers::Sides;
/// assert_eq!(1.sides(), ((1, 1), (1, 1)));
/// assert_eq!((1, 2).sides(), ((1, 1), (2, 2)));
/// assert_eq!(((1, 2), (3, 4)).sides(), ((1, 2), (3, 4)));
/// ```
pub trait Sides {
    /// `((top, bottom), (left, right))`.
    fn sides(self) -> ((usize, usize), (usize, usize));
}

impl Sides for usize {
    fn sides(self) -> ((usize, usize), (usize, usize)) {
        ((self, self), (self, self))
    }
}

impl Sides for (usize, usize) {
    fn sides(self) -> ((usize, usize), (usize, usize)) {
        ((self.0, self.0), (self.1, self.1))
    }
}

impl Sides for ((usize, usize), (usize, usize)) {
    fn sides(self) -> ((usize, usize), (usize, usize)) {
        self
    }
}

/// The height and width axes of a 4-D batch in `format`.
fn hw_axes(layer: &str, x: &Tensor, format: DataFormat) -> Result<(usize, usize)> {
    if x.rank() != 4 {
        return Err(Error::value(format!(
            "Input 0 of layer \"{layer}\" is incompatible with the layer: expected ndim=4, found ndim={}. Full shape received: {:?}",
            x.rank(),
            x.dims()
        )));
    }
    Ok(match format {
        DataFormat::ChannelsLast => (1, 2),
        DataFormat::ChannelsFirst => (2, 3),
    })
}

/// The height and width positions of an input shape (batch excluded) in `format`.
fn hw_of(layer: &str, shape: &[usize], format: DataFormat) -> Result<(usize, usize)> {
    if shape.len() != 3 {
        return Err(Error::value(format!(
            "layer \"{layer}\" needs images (height, width, channels); received (None, {shape:?})"
        )));
    }
    Ok(match format {
        DataFormat::ChannelsLast => (0, 1),
        DataFormat::ChannelsFirst => (1, 2),
    })
}

fn sides_json(s: ((usize, usize), (usize, usize))) -> serde_json::Value {
    serde_json::json!([[s.0.0, s.0.1], [s.1.0, s.1.1]])
}

macro_rules! side_layer {
    ($(#[$doc:meta])* $ty:ident, $prefix:expr, $class:expr, $key:expr, $setter:ident) => {
        $(#[$doc])*
        pub struct $ty {
            name: String,
            sides: ((usize, usize), (usize, usize)),
            data_format: DataFormat,
        }
        impl $ty {
            #[doc = concat!("`", $key, "` rows and columns: one number for every side, `(rows, columns)`, or `((top, bottom), (left, right))`.")]
            pub fn new(sides: impl Sides) -> Self {
                Self {
                    name: unique_name($prefix),
                    sides: sides.sides(),
                    data_format: DataFormat::ChannelsLast,
                }
            }
            /// Channels-last (default) or channels-first images.
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
        impl Layer for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn class_name(&self) -> &str {
                $class
            }
            fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
                let (ah, aw) = hw_axes(&self.name, x, self.data_format)?;
                self.compute_output_shape(&x.dims()[1..])?;
                $setter(x, (ah, aw), self.sides)
            }
            fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
                let (h, w) = hw_of(&self.name, input_shape, self.data_format)?;
                let mut out = input_shape.to_vec();
                let ((t, b), (l, r)) = self.sides;
                if $key == "cropping" {
                    if t + b >= out[h] || l + r >= out[w] {
                        return Err(Error::value(format!(
                            "layer \"{}\": cropping {:?} leaves nothing of images of {}x{}; crop less than the height and width",
                            self.name, self.sides, out[h], out[w]
                        )));
                    }
                    out[h] -= t + b;
                    out[w] -= l + r;
                } else {
                    out[h] += t + b;
                    out[w] += l + r;
                }
                Ok(out)
            }
            fn config(&self) -> Option<serde_json::Value> {
                Some(serde_json::json!({
                    "name": self.name,
                    $key: sides_json(self.sides),
                    "data_format": super::config::data_format_json(self.data_format),
                }))
            }
        }
    };
}

fn pad(
    x: &Tensor,
    (ah, aw): (usize, usize),
    ((t, b), (l, r)): ((usize, usize), (usize, usize)),
) -> Result<Tensor> {
    Ok(x.pad_with_zeros(ah, t, b)?.pad_with_zeros(aw, l, r)?)
}

fn crop(
    x: &Tensor,
    (ah, aw): (usize, usize),
    ((t, b), (l, r)): ((usize, usize), (usize, usize)),
) -> Result<Tensor> {
    let (h, w) = (x.dims()[ah], x.dims()[aw]);
    Ok(x.narrow(ah, t, h - t - b)?.narrow(aw, l, w - l - r)?)
}

side_layer!(
    /// Keras's `layers.ZeroPadding2D`: rows and columns of zeros around each image.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, ZeroPadding2D};
    /// let x = Tensor::ones((1, 2, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    /// let y = ZeroPadding2D::new(((1, 0), (2, 1))).call(&x, false).unwrap();
    /// assert_eq!(y.dims(), &[1, 3, 5, 3]);
    /// assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 12.0);
    /// ```
    ZeroPadding2D, "zero_padding2d", "ZeroPadding2D", "padding", pad
);
side_layer!(
    /// Keras's `layers.Cropping2D`: rows and columns cut off each image's sides.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Cropping2D, Layer};
    /// let x = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((1, 4, 4, 1)).unwrap();
    /// let y = Cropping2D::new(1).call(&x, false).unwrap();
    /// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5.0, 6.0, 9.0, 10.0]);
    /// ```
    Cropping2D, "cropping2d", "Cropping2D", "cropping", crop
);

/// Keras's `layers.Rescaling`: `x * scale + offset`, computed in the layer's compute dtype
/// (float32 by default: integer pixels come out as floats), as images are often fed
/// (`Rescaling::new(1.0 / 255.0, 0.0)`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, Rescaling};
/// let x = Tensor::new(&[[0u8, 2, 255]], &Device::Cpu).unwrap();
/// let y = Rescaling::new(0.5, -1.0).call(&x, false).unwrap();
/// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![-1.0, 0.0, 126.5]]);
/// ```
pub struct Rescaling {
    name: String,
    scale: f64,
    offset: f64,
    policy: DTypePolicy,
}

impl Rescaling {
    /// `x * scale + offset`.
    pub fn new(scale: f64, offset: f64) -> Self {
        Self {
            name: unique_name("rescaling"),
            scale,
            offset,
            policy: crate::mixed_precision::global_policy(),
        }
    }
    /// Sets the dtype policy by name (its compute dtype is the output's).
    ///
    /// # Errors
    /// An unknown policy name.
    pub fn dtype(mut self, name: &str) -> Result<Self> {
        self.policy = DTypePolicy::new(name)?;
        Ok(self)
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for Rescaling {
    super::passes_mask!();
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Rescaling"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let x = x.to_dtype(self.policy.compute_dtype())?;
        Ok(x.affine(self.scale, self.offset)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "scale": self.scale,
            "offset": self.offset,
        }))
    }
}
