//! `Conv2D` and `Conv2DTranspose`, channels-last as Keras (with a `data_format` option).
//!
//! Variables keep Keras's layouts (`(kh, kw, in, out)` for `Conv2D`, `(kh, kw, out, in)` for
//! `Conv2DTranspose`), so weights move between Keras and ferrokeras unchanged. "same" padding is
//! applied explicitly, asymmetrically where Keras does (stride 2 on even sizes pads `(0, 1)`).

use crate::mixed_precision::DTypePolicy;
use candle_core::{DType, Device, Tensor};

use super::im2col::{Conv, ConvData, Geometry};
use super::pooling::{PoolFusion, max_pool_geometry};
use super::{Activation, Layer, Regularizer, unique_name};
use crate::kernels::conv_act::{Direction, conv_bias_activation, conv_bias_activation_pool};
use crate::tape::Variable;
use crate::{Error, Result};

/// Where the channel axis is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataFormat {
    /// `(batch, height, width, channels)`, Keras's default.
    #[default]
    ChannelsLast,
    /// `(batch, channels, height, width)`.
    ChannelsFirst,
}

/// Convolution padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding.
    #[default]
    Valid,
    /// Pad so that `output = ceil(input / stride)`.
    Same,
}

impl std::str::FromStr for Padding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "valid" => Ok(Padding::Valid),
            "same" => Ok(Padding::Same),
            other => Err(Error::value(format!(
                "The `padding` argument must be one of \"valid\", \"same\". Received: padding={other:?}"
            ))),
        }
    }
}

/// A size along height and width: one number for both (`2`), or `(height, width)`, as Keras
/// takes `strides=2` or `strides=(2, 1)`.
///
/// ```
/// use ferrokeras::layers::Size2;
/// assert_eq!(2.pair(), (2, 2));
/// assert_eq!((2, 1).pair(), (2, 1));
/// assert_eq!([3, 1].pair(), (3, 1));
/// ```
pub trait Size2 {
    /// `(height, width)`.
    fn pair(self) -> (usize, usize);
}

impl Size2 for usize {
    fn pair(self) -> (usize, usize) {
        (self, self)
    }
}

impl Size2 for (usize, usize) {
    fn pair(self) -> (usize, usize) {
        self
    }
}

impl Size2 for [usize; 2] {
    fn pair(self) -> (usize, usize) {
        (self[0], self[1])
    }
}

/// `(before, after)` padding of one spatial axis for a forward convolution.
pub(crate) fn same_padding(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> (usize, usize) {
    let k = (kernel - 1) * dilation + 1;
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + k).saturating_sub(input);
    (total / 2, total - total / 2)
}

pub(crate) fn conv_out(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
) -> Option<usize> {
    let k = (kernel - 1) * dilation + 1;
    match padding {
        Padding::Same => Some(input.div_ceil(stride)),
        Padding::Valid => (input >= k).then(|| (input - k) / stride + 1),
    }
}

fn transpose_out(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
    output_padding: Option<usize>,
) -> usize {
    let k = kernel + (kernel - 1) * (dilation - 1);
    match output_padding {
        None => match padding {
            Padding::Valid => input * stride + k.saturating_sub(stride),
            Padding::Same => input * stride,
        },
        Some(op) => {
            let pad = if padding == Padding::Same { k / 2 } else { 0 };
            ((input - 1) * stride + k + op).saturating_sub(2 * pad)
        }
    }
}

fn to_nhwc(x: &Tensor, f: DataFormat) -> Result<Tensor> {
    Ok(match f {
        DataFormat::ChannelsLast => x.clone(),
        DataFormat::ChannelsFirst => x.permute((0, 2, 3, 1))?,
    })
}

fn from_nhwc(x: &Tensor, f: DataFormat) -> Result<Tensor> {
    Ok(match f {
        DataFormat::ChannelsLast => x.clone(),
        DataFormat::ChannelsFirst => x.permute((0, 3, 1, 2))?,
    })
}

/// `(height, width, channels)` of an input shape (batch axis excluded).
fn hwc(shape: &[usize], f: DataFormat, layer: &str) -> Result<(usize, usize, usize)> {
    if shape.len() != 3 {
        return Err(Error::value(format!(
            "Input 0 of layer \"{layer}\" is incompatible with the layer: expected ndim=4 (batch, height, width, channels), found ndim={} (shape (None, {}))",
            shape.len() + 1,
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (h, w, c) = match f {
        DataFormat::ChannelsLast => (shape[0], shape[1], shape[2]),
        DataFormat::ChannelsFirst => (shape[1], shape[2], shape[0]),
    };
    if h == 0 || w == 0 {
        return Err(Error::value(format!(
            "layer \"{layer}\" needs images of at least 1x1; received height {h} and width {w} (input shape (None, {})); an empty batch or zero channels are fine, empty images are not",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok((h, w, c))
}

pub(crate) fn shape_of(h: usize, w: usize, c: usize, f: DataFormat) -> Vec<usize> {
    match f {
        DataFormat::ChannelsLast => vec![h, w, c],
        DataFormat::ChannelsFirst => vec![c, h, w],
    }
}

/// Options shared by both convolution layers.
#[derive(Clone, Debug)]
struct ConvConfig {
    filters: usize,
    kernel: (usize, usize),
    /// Along height and width.
    strides: (usize, usize),
    padding: Padding,
    /// Along height and width.
    dilation: (usize, usize),
    activation: Activation,
    use_bias: bool,
    data_format: DataFormat,
    device: Device,
    policy: DTypePolicy,
    kernel_initializer: crate::initializers::Initializer,
    bias_initializer: crate::initializers::Initializer,
    kernel_regularizer: Option<Regularizer>,
    bias_regularizer: Option<Regularizer>,
}

/// The compute dtype of a half-precision policy for a CPU input (`None` otherwise).
fn cpu_half(x: &Tensor, policy: &DTypePolicy) -> Option<DType> {
    let dt = policy.compute_dtype();
    (x.device().is_cpu() && dt != DType::F32).then_some(dt)
}

/// Checks that a batch is 4-D.
pub(crate) fn check_rank4(layer: &str, x: &Tensor) -> Result<()> {
    if x.rank() != 4 {
        return Err(Error::value(format!(
            "Input 0 of layer \"{layer}\" is incompatible with the layer: expected ndim=4, found ndim={}. Full shape received: {:?}",
            x.rank(),
            x.dims()
        )));
    }
    Ok(())
}

/// `(height, width, channels)` of a 4-D batch, checked against the kernel's input channels.
fn input_hwc(
    layer: &str,
    x: &Tensor,
    f: DataFormat,
    kernel_channels: usize,
) -> Result<(usize, usize, usize)> {
    let (h, w, c) = hwc(&x.dims()[1..], f, layer)?;
    if c != kernel_channels {
        return Err(Error::value(format!(
            "Input 0 of layer \"{layer}\" is incompatible with the layer: expected axis -1 of input shape to have value {kernel_channels}, but received input with shape {:?}",
            x.dims()
        )));
    }
    Ok((h, w, c))
}

impl ConvConfig {
    /// The kernel of `shape` from its initializer (glorot-uniform by default; fans from the
    /// receptive field times the last two axes, as Keras computes them) and, with `use_bias`, the
    /// bias (zeros by default).
    fn variables(&self, layer: &str, shape: [usize; 4]) -> Result<(Variable, Option<Variable>)> {
        let k = self.kernel_initializer.init(&shape, &self.device)?;
        let kernel = Variable::new(format!("{layer}/kernel"), &k, true)?;
        let bias = if self.use_bias {
            let b = self.bias_initializer.init(&[self.filters], &self.device)?;
            Some(Variable::new(format!("{layer}/bias"), &b, true)?)
        } else {
            None
        };
        Ok((kernel, bias))
    }

    fn new(filters: usize, kernel: (usize, usize)) -> Self {
        Self {
            filters,
            kernel,
            strides: (1, 1),
            padding: Padding::Valid,
            dilation: (1, 1),
            activation: Activation::Linear,
            use_bias: true,
            data_format: DataFormat::ChannelsLast,
            device: crate::runtime::default_device(),
            policy: crate::mixed_precision::global_policy(),
            kernel_initializer: crate::initializers::Initializer::glorot_uniform(),
            bias_initializer: crate::initializers::Initializer::Zeros,
            kernel_regularizer: None,
            bias_regularizer: None,
        }
    }
    /// The regularization penalties of the built variables (Keras's `layer.losses`).
    fn penalties(&self, kernel: Option<&Variable>, bias: Option<&Variable>) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        if let (Some(r), Some(k)) = (&self.kernel_regularizer, kernel) {
            out.push(r.penalty(k.as_tensor())?);
        }
        if let (Some(r), Some(b)) = (&self.bias_regularizer, bias) {
            out.push(r.penalty(b.as_tensor())?);
        }
        Ok(out)
    }
    /// The configuration shared by both layers, with Keras's keys.
    fn json(&self, name: &str) -> serde_json::Map<String, serde_json::Value> {
        let serde_json::Value::Object(map) = serde_json::json!({
            "name": name,
            "filters": self.filters,
            "kernel_size": [self.kernel.0, self.kernel.1],
            "strides": [self.strides.0, self.strides.1],
            "padding": super::config::padding_json(self.padding),
            "data_format": super::config::data_format_json(self.data_format),
            "dilation_rate": [self.dilation.0, self.dilation.1],
            "activation": super::config::activation_json(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer.to_json(),
            "bias_initializer": self.bias_initializer.to_json(),
            "kernel_regularizer": super::config::regularizer_json(self.kernel_regularizer),
            "bias_regularizer": super::config::regularizer_json(self.bias_regularizer),
        }) else {
            unreachable!("json! of an object literal is an object")
        };
        map
    }
    fn check(&self, layer: &str) -> Result<()> {
        let (s, d) = (self.strides, self.dilation);
        if self.filters == 0
            || self.kernel.0 == 0
            || self.kernel.1 == 0
            || s.0 == 0
            || s.1 == 0
            || d.0 == 0
            || d.1 == 0
        {
            return Err(Error::value(format!(
                "layer \"{layer}\": filters, kernel_size, strides and dilation_rate must be >= 1. Received: filters={}, kernel_size={:?}, strides={s:?}, dilation_rate={d:?}",
                self.filters, self.kernel
            )));
        }
        if (s.0 > 1 || s.1 > 1) && (d.0 > 1 || d.1 > 1) {
            return Err(Error::value(format!(
                "layer \"{layer}\": `strides > 1` not supported in conjunction with `dilation_rate > 1`. Received: strides={s:?} and dilation_rate={d:?}"
            )));
        }
        Ok(())
    }
    /// Stride and dilation when both are the same along height and width (the fast paths).
    fn square(&self) -> Option<(usize, usize)> {
        let (s, d) = (self.strides, self.dilation);
        (s.0 == s.1 && d.0 == d.1).then_some((s.0, d.0))
    }
}

macro_rules! conv_builders {
    () => {
        /// Strides: one for both axes (`strides(2)`, Keras's `strides=2`) or `(height,
        /// width)` (`strides((2, 1))`).
        pub fn strides(mut self, s: impl Size2) -> Self {
            self.cfg.strides = s.pair();
            self
        }
        /// `"valid"` or `"same"`.
        ///
        /// # Errors
        /// Another string.
        pub fn padding(mut self, p: &str) -> Result<Self> {
            self.cfg.padding = p.parse()?;
            Ok(self)
        }
        /// Dilation rate of the kernel: one for both axes, or `(height, width)`.
        pub fn dilation_rate(mut self, d: impl Size2) -> Self {
            self.cfg.dilation = d.pair();
            self
        }
        /// Activation by Keras name.
        ///
        /// # Errors
        /// An unknown name.
        pub fn activation(mut self, a: &str) -> Result<Self> {
            self.cfg.activation = a.parse()?;
            Ok(self)
        }
        /// Sets the activation.
        pub fn with_activation(mut self, a: Activation) -> Self {
            self.cfg.activation = a;
            self
        }
        /// Whether to add a bias (default true).
        pub fn use_bias(mut self, b: bool) -> Self {
            self.cfg.use_bias = b;
            self
        }
        /// How the kernel starts, by Keras name (`"he_normal"`; default `"glorot_uniform"`).
        ///
        /// # Errors
        /// An unknown name.
        pub fn kernel_initializer(mut self, name: &str) -> Result<Self> {
            self.cfg.kernel_initializer = name.parse()?;
            Ok(self)
        }
        /// How the bias starts, by Keras name (default `"zeros"`).
        ///
        /// # Errors
        /// An unknown name.
        pub fn bias_initializer(mut self, name: &str) -> Result<Self> {
            self.cfg.bias_initializer = name.parse()?;
            Ok(self)
        }
        /// Penalty on the kernel, added to the model's losses.
        ///
        /// ```
        /// use ferrokeras::layers::{Conv2D, Layer, Regularizer};
        /// let mut c = Conv2D::new(2, (3, 3)).kernel_regularizer(Regularizer::L2(0.01));
        /// c.build(&[5, 5, 1]).unwrap();
        /// assert_eq!(c.losses().unwrap().len(), 1);
        /// ```
        pub fn kernel_regularizer(mut self, r: Regularizer) -> Self {
            self.cfg.kernel_regularizer = Some(r);
            self
        }
        /// Penalty on the bias, added to the model's losses.
        pub fn bias_regularizer(mut self, r: Regularizer) -> Self {
            self.cfg.bias_regularizer = Some(r);
            self
        }
        /// Both regularizers where given (reading a config).
        pub(crate) fn maybe_regularizers(
            mut self,
            kernel: Option<Regularizer>,
            bias: Option<Regularizer>,
        ) -> Self {
            self.cfg.kernel_regularizer = kernel;
            self.cfg.bias_regularizer = bias;
            self
        }
        /// Sets the kernel's initializer.
        pub fn with_kernel_initializer(mut self, init: crate::initializers::Initializer) -> Self {
            self.cfg.kernel_initializer = init;
            self
        }
        /// Sets the bias's initializer.
        pub fn with_bias_initializer(mut self, init: crate::initializers::Initializer) -> Self {
            self.cfg.bias_initializer = init;
            self
        }
        /// Channels-last (default) or channels-first inputs.
        pub fn data_format(mut self, f: DataFormat) -> Self {
            self.cfg.data_format = f;
            self
        }
        /// The device variables are created on.
        pub fn device(mut self, d: &Device) -> Self {
            self.cfg.device = d.clone();
            self
        }
        /// Sets the dtype policy by name (`"float32"`, `"mixed_bfloat16"`, ...); the default is
        /// the global policy when the layer is created (see [`crate::mixed_precision`]).
        ///
        /// # Errors
        /// An unknown policy name.
        pub fn dtype(mut self, name: &str) -> Result<Self> {
            self.cfg.policy = DTypePolicy::new(name)?;
            Ok(self)
        }
        /// The layer's dtype policy.
        pub fn dtype_policy(&self) -> &DTypePolicy {
            &self.cfg.policy
        }
        /// Overrides the generated name.
        pub fn named(mut self, name: impl Into<String>) -> Self {
            crate::layers::rename(&mut self.name, name.into());
            self
        }
        /// The kernel, once built.
        pub fn kernel(&self) -> Option<&Variable> {
            self.kernel.as_ref()
        }
        /// The bias, once built.
        pub fn bias(&self) -> Option<&Variable> {
            self.bias.as_ref()
        }
    };
}

/// 2D convolution, Keras's `layers.Conv2D` (`glorot_uniform` kernel, zero bias).
///
/// # Shapes
/// `(batch, h, w, in)` → `(batch, h', w', filters)` (channels-last).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Conv2D, Layer};
/// let mut conv = Conv2D::new(64, (3, 3)).strides(2).padding("same").unwrap();
/// let x = Tensor::zeros((2, 28, 28, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(conv.call(&x, false).unwrap().dims(), &[2, 14, 14, 64]);
/// assert_eq!(conv.count_params(), 3 * 3 * 1 * 64 + 64);
/// ```
pub struct Conv2D {
    name: String,
    cfg: ConvConfig,
    kernel: Option<Variable>,
    bias: Option<Variable>,
}

impl Conv2D {
    /// `filters` output channels, a `(kh, kw)` kernel, stride 1, "valid" padding.
    pub fn new(filters: usize, kernel_size: (usize, usize)) -> Self {
        Self {
            name: unique_name("conv2d"),
            cfg: ConvConfig::new(filters, kernel_size),
            kernel: None,
            bias: None,
        }
    }
    conv_builders!();

    /// The forward pass with activation `act` (its own, or one fused from the next layer).
    /// With `pool`, the max pooling after the activation too, as one op; `None` when that
    /// cannot be fused here (other devices, channels-first, an unfusable activation).
    fn call_with(
        &mut self,
        x: &Tensor,
        act: Activation,
        pool: Option<PoolFusion>,
    ) -> Result<Option<Tensor>> {
        if let Some(dt) = cpu_half(x, &self.cfg.policy) {
            // The CPU has no faster half-precision convolution: float32 math, output rounded.
            let policy = std::mem::replace(&mut self.cfg.policy, DTypePolicy::float32());
            let out = self.call_with(&x.to_dtype(DType::F32)?, act, pool);
            self.cfg.policy = policy;
            return match out? {
                Some(y) => Ok(Some(y.to_dtype(dt)?)),
                None => Ok(None),
            };
        }
        check_rank4(&self.name, x)?;
        self.build(&x.dims()[1..])?;
        let kernel = self
            .kernel
            .as_ref()
            .ok_or_else(|| Error::state("Conv2D not built"))?;
        let (h, w, _) = input_hwc(
            &self.name,
            x,
            self.cfg.data_format,
            kernel.shape().dims()[2],
        )?;
        let (kh, kw) = self.cfg.kernel;
        let ((sh, sw), (dh, dw)) = (self.cfg.strides, self.cfg.dilation);
        let (Some(oh), Some(ow)) = (
            conv_out(h, kh, sh, dh, self.cfg.padding),
            conv_out(w, kw, sw, dw, self.cfg.padding),
        ) else {
            return Err(Error::value(format!(
                "layer \"{}\": the input ({h}x{w}) is smaller than the kernel ({kh}x{kw}, dilation {:?}) with \"valid\" padding",
                self.name, self.cfg.dilation
            )));
        };
        let dt = self.cfg.policy.compute_dtype();
        let xp = to_nhwc(&x.to_dtype(dt)?, self.cfg.data_format)?;
        let (pads_h, pads_w) = match self.cfg.padding {
            Padding::Same => (same_padding(h, kh, sh, dh), same_padding(w, kw, sw, dw)),
            Padding::Valid => ((0, 0), (0, 0)),
        };
        let f = self.cfg.filters;
        let Some((s, d)) = self.cfg.square() else {
            // Strides or dilation that differ between the axes: candle's convolution at stride 1
            // with the kernel dilated by zeros, then every `stride`-th output kept.
            if pool.is_some() {
                return Ok(None);
            }
            let k = self.cfg.policy.cast(kernel.as_tensor())?;
            let k = dilate(&dilate(&k, 0, dh)?, 1, dw)?;
            let xn = xp
                .pad_with_zeros(1, pads_h.0, pads_h.1)?
                .pad_with_zeros(2, pads_w.0, pads_w.1)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            let y = xn.conv2d(&k.permute((3, 2, 0, 1))?.contiguous()?, 0, 1, 1, 1)?;
            let mut y = subsample(&subsample(&y, 2, sh, oh)?, 3, sw, ow)?;
            if let Some(b) = &self.bias {
                let b = self.cfg.policy.cast(b.as_tensor())?;
                y = y.broadcast_add(&b.reshape((1, f, 1, 1))?)?;
            }
            let y = from_nhwc(&y.permute((0, 2, 3, 1))?, self.cfg.data_format)?;
            return act.apply(&y).map(Some);
        };
        if crate::kernels::takes(&xp) {
            // Patches (zeros for the padding), then one matrix product with the (kh*kw*in, out)
            // kernel; bias and activation in one pass over the result.
            let xp = xp.contiguous()?;
            let (n, _, _, c) = xp.dims4()?;
            let g = Geometry {
                n,
                h,
                w,
                c,
                kh,
                kw,
                stride: s,
                dilation: d,
                pad_t: pads_h.0,
                pad_l: pads_w.0,
                oh,
                ow,
            };
            // The kernel itself (its values are the (kh·kw·c, f) matrix the ops read), so that its
            // gradient reaches the tape directly, without a reshape node in between (`contiguous`
            // returns the variable itself when it already is, as variables are).
            let wm = &kernel.as_tensor().contiguous()?;
            if let (Some(a), DataFormat::ChannelsLast) = (act.fused(), self.cfg.data_format) {
                // Convolution, bias and activation (and a max pooling) as one op.
                let b = match &self.bias {
                    Some(b) => b.as_tensor().clone(),
                    None => Tensor::zeros(f, DType::F32, xp.device())?,
                };
                if let Some(spec) = pool {
                    let pg = max_pool_geometry((n, oh, ow, f), spec)?;
                    return Ok(Some(conv_bias_activation_pool(g, f, a, pg, &xp, wm, &b)?));
                }
                // (n, oh, ow, f) already.
                return Ok(Some(conv_bias_activation(
                    Direction::Forward,
                    g,
                    f,
                    a,
                    &xp,
                    wm,
                    &b,
                )?));
            }
            if pool.is_some() {
                return Ok(None);
            }
            // (n, oh, ow, f)
            let y = xp.apply_op2(wm, Conv { g, f })?;
            let y = match (&self.bias, self.cfg.data_format) {
                (Some(b), DataFormat::ChannelsLast) => {
                    return Ok(Some(act.apply_with_bias(&y, b.as_tensor())?));
                }
                (Some(b), DataFormat::ChannelsFirst) => y.broadcast_add(b.as_tensor())?,
                (None, _) => y,
            };
            let y = from_nhwc(&y, self.cfg.data_format)?;
            return act.apply(&y).map(Some);
        }
        if pool.is_some() {
            return Ok(None);
        }
        if super::conv_generic::enabled() {
            let b = self.bias.as_ref().map(|b| b.as_tensor());
            let (inner, after) = super::conv_generic::split_activation(act);
            let y = super::conv_generic::conv2d_layer(
                &xp,
                kernel.as_tensor(),
                b,
                (pads_h, pads_w),
                s,
                d,
                inner,
            )?;
            let y = from_nhwc(&y, self.cfg.data_format)?;
            return after.apply(&y).map(Some);
        }
        let xp = xp
            .pad_with_zeros(1, pads_h.0, pads_h.1)?
            .pad_with_zeros(2, pads_w.0, pads_w.1)?;
        let y = {
            let xn = xp.permute((0, 3, 1, 2))?.contiguous()?;
            let k = self.cfg.policy.cast(kernel.as_tensor())?;
            let k = k.permute((3, 2, 0, 1))?.contiguous()?;
            let mut y = xn.conv2d(&k, 0, s, d, 1)?;
            if let Some(b) = &self.bias {
                let b = self.cfg.policy.cast(b.as_tensor())?;
                y = y.broadcast_add(&b.reshape((1, f, 1, 1))?)?;
            }
            y.permute((0, 2, 3, 1))?
        };
        let y = from_nhwc(&y, self.cfg.data_format)?;
        act.apply(&y).map(Some)
    }
}

impl Layer for Conv2D {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Conv2D"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.kernel.is_some() {
            return Ok(());
        }
        self.cfg.check(&self.name)?;
        let (_, _, c) = hwc(input_shape, self.cfg.data_format, &self.name)?;
        let (kh, kw) = self.cfg.kernel;
        let (kernel, bias) = self
            .cfg
            .variables(&self.name, [kh, kw, c, self.cfg.filters])?;
        self.kernel = Some(kernel);
        self.bias = bias;
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        self.call_with(x, self.cfg.activation, None)?
            .ok_or_else(|| Error::state("Conv2D: no output"))
    }
    fn call_fused(
        &mut self,
        x: &Tensor,
        _training: bool,
        then: Activation,
    ) -> Result<Option<Tensor>> {
        if self.cfg.activation != Activation::Linear || then.fused().is_none() {
            return Ok(None);
        }
        self.call_with(x, then, None)
    }
    fn call_fused_pool(
        &mut self,
        x: &Tensor,
        _training: bool,
        then: Option<Activation>,
        pool: PoolFusion,
    ) -> Result<Option<Tensor>> {
        let act = match then {
            None => self.cfg.activation,
            Some(_) if self.cfg.activation != Activation::Linear => return Ok(None),
            Some(a) => a,
        };
        if act.fused().is_none() {
            return Ok(None);
        }
        self.call_with(x, act, Some(pool))
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.cfg.check(&self.name)?;
        let (h, w, _) = hwc(input_shape, self.cfg.data_format, &self.name)?;
        let (kh, kw) = self.cfg.kernel;
        let ((sh, sw), (dh, dw)) = (self.cfg.strides, self.cfg.dilation);
        match (
            conv_out(h, kh, sh, dh, self.cfg.padding),
            conv_out(w, kw, sw, dw, self.cfg.padding),
        ) {
            (Some(oh), Some(ow)) => Ok(shape_of(oh, ow, self.cfg.filters, self.cfg.data_format)),
            _ => Err(Error::value(format!(
                "layer \"{}\": the input ({h}x{w}) is smaller than the kernel ({kh}x{kw}) with \"valid\" padding",
                self.name
            ))),
        }
    }
    fn variables(&self) -> Vec<Variable> {
        self.kernel
            .iter()
            .chain(self.bias.iter())
            .cloned()
            .collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        self.cfg.penalties(self.kernel.as_ref(), self.bias.as_ref())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::Object(self.cfg.json(&self.name)))
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.cfg.policy.name().to_string())
    }
}

/// Transposed 2D convolution, Keras's `layers.Conv2DTranspose`.
///
/// # Shapes
/// `(batch, h, w, in)` → `(batch, h * s, w * s, filters)` with "same" padding.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Conv2DTranspose, Layer};
/// let mut up = Conv2DTranspose::new(128, (4, 4)).strides(2).padding("same").unwrap();
/// let x = Tensor::zeros((1, 7, 7, 128), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(up.call(&x, false).unwrap().dims(), &[1, 14, 14, 128]);
/// ```
pub struct Conv2DTranspose {
    name: String,
    cfg: ConvConfig,
    /// Along height and width.
    output_padding: Option<(usize, usize)>,
    kernel: Option<Variable>,
    bias: Option<Variable>,
}

impl Conv2DTranspose {
    /// `filters` output channels, a `(kh, kw)` kernel, stride 1, "valid" padding.
    pub fn new(filters: usize, kernel_size: (usize, usize)) -> Self {
        Self {
            name: unique_name("conv2d_transpose"),
            cfg: ConvConfig::new(filters, kernel_size),
            output_padding: None,
            kernel: None,
            bias: None,
        }
    }
    /// Extra rows/columns on the output's far side (must be smaller than the stride): one for
    /// both axes, or `(height, width)`.
    pub fn output_padding(mut self, p: impl Size2) -> Self {
        self.output_padding = Some(p.pair());
        self
    }
    conv_builders!();

    /// Keeps `out` positions of the full transposed output along `axis` (1: height, 2: width,
    /// of an NHWC tensor).
    fn crop(
        &self,
        t: Tensor,
        axis: usize,
        input: usize,
        kernel: usize,
        out: usize,
    ) -> Result<Tensor> {
        let before = self.crop_before(axis - 1, input, kernel, out);
        let avail = t.dims()[axis];
        let t = if before + out > avail {
            t.pad_with_zeros(axis, 0, before + out - avail)?
        } else {
            t
        };
        Ok(t.narrow(axis, before, out)?)
    }

    /// Where the kept window of the full transposed output starts along spatial axis `axis`
    /// (0: height, 1: width).
    fn crop_before(&self, axis: usize, input: usize, kernel: usize, out: usize) -> usize {
        let (s, d, op) = self.along(axis);
        let keff = (kernel - 1) * d + 1;
        match (self.cfg.padding, op) {
            // Keras: the forward convolution's "same" padding `2 * (keff / 2) - op`, split with
            // the smaller half first (so output padding also moves the window, not only its end).
            (Padding::Same, Some(op)) => (2 * (keff / 2)).saturating_sub(op) / 2,
            (Padding::Same, None) => ((input - 1) * s + keff).saturating_sub(out) / 2,
            (Padding::Valid, _) => 0,
        }
    }

    /// Stride, dilation and output padding along spatial axis `axis` (0: height, 1: width).
    fn along(&self, axis: usize) -> (usize, usize, Option<usize>) {
        let pick = |p: (usize, usize)| if axis == 0 { p.0 } else { p.1 };
        (
            pick(self.cfg.strides),
            pick(self.cfg.dilation),
            self.output_padding.map(pick),
        )
    }

    fn out_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        if let Some(op) = self.output_padding
            && (op.0 >= self.cfg.strides.0 || op.1 >= self.cfg.strides.1)
        {
            return Err(Error::value(format!(
                "layer \"{}\": `output_padding` must be smaller than `strides`. Received: output_padding={op:?}, strides={:?}",
                self.name, self.cfg.strides
            )));
        }
        let (kh, kw) = self.cfg.kernel;
        let (sh, dh, oph) = self.along(0);
        let (sw, dw, opw) = self.along(1);
        Ok((
            transpose_out(h, kh, sh, dh, self.cfg.padding, oph),
            transpose_out(w, kw, sw, dw, self.cfg.padding, opw),
        ))
    }

    /// The forward pass with activation `act` (its own, or one fused from the next layer).
    fn call_with(&mut self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if let Some(dt) = cpu_half(x, &self.cfg.policy) {
            // As in Conv2D: float32 math on the CPU, output rounded to the compute dtype.
            let policy = std::mem::replace(&mut self.cfg.policy, DTypePolicy::float32());
            let out = self.call_with(&x.to_dtype(DType::F32)?, act);
            self.cfg.policy = policy;
            return Ok(out?.to_dtype(dt)?);
        }
        check_rank4(&self.name, x)?;
        self.build(&x.dims()[1..])?;
        let kernel = self
            .kernel
            .as_ref()
            .ok_or_else(|| Error::state("Conv2DTranspose not built"))?;
        let (h, w, c) = input_hwc(
            &self.name,
            x,
            self.cfg.data_format,
            kernel.shape().dims()[3],
        )?;
        let (oh, ow) = self.out_hw(h, w)?;
        let (kh, kw) = self.cfg.kernel;
        let dt = self.cfg.policy.compute_dtype();
        let xt = to_nhwc(&x.to_dtype(dt)?, self.cfg.data_format)?.contiguous()?;
        let f = self.cfg.filters;
        let n = xt.dims()[0];
        let Some((s, d)) = self.cfg.square() else {
            // Strides or dilation that differ between the axes: the input spread out by the
            // strides (zeros between its pixels), then candle's stride-1 convolution with the
            // kernel dilated, flipped, and its channels swapped; then Keras's window.
            let ((sh, sw), (dh, dw)) = (self.cfg.strides, self.cfg.dilation);
            let k = self.cfg.policy.cast(kernel.as_tensor())?;
            let k = flip(&flip(&dilate(&dilate(&k, 0, dh)?, 1, dw)?, 0)?, 1)?;
            let (kh_eff, kw_eff) = (k.dims()[0], k.dims()[1]);
            let xn = dilate(&dilate(&xt, 1, sh)?, 2, sw)?
                .pad_with_zeros(1, kh_eff - 1, kh_eff - 1)?
                .pad_with_zeros(2, kw_eff - 1, kw_eff - 1)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            // (kh, kw, filters, in) → (filters, in, kh, kw)
            let full = xn
                .conv2d(&k.permute((2, 3, 0, 1))?.contiguous()?, 0, 1, 1, 1)?
                .permute((0, 2, 3, 1))?;
            let y = self.crop(full, 1, h, kh, oh)?;
            let mut y = self.crop(y, 2, w, kw, ow)?;
            if let Some(b) = &self.bias {
                y = y.broadcast_add(&self.cfg.policy.cast(b.as_tensor())?)?;
            }
            let y = from_nhwc(&y, self.cfg.data_format)?;
            return act.apply(&y);
        };
        if crate::kernels::takes(&xt) {
            // The input gradient of the forward convolution this layer transposes: every input
            // pixel spreads its kernel-sized patch, and the window Keras keeps starts at that
            // convolution's padding (positions outside it are never written).
            // The kernel as the (kh·kw·f, c) matrix and the input as (n·h·w, c) rows, read in
            // place: no reshape nodes, so the kernel's gradient reaches the tape directly.
            let (kmat, x2d) = (&kernel.as_tensor().contiguous()?, &xt);
            let g = Geometry {
                n,
                h: oh,
                w: ow,
                c: f,
                kh,
                kw,
                stride: s,
                dilation: d,
                pad_t: self.crop_before(0, h, kh, oh),
                pad_l: self.crop_before(1, w, kw, ow),
                oh: h,
                ow: w,
            };
            if let (Some(a), DataFormat::ChannelsLast) = (act.fused(), self.cfg.data_format) {
                // Transposed convolution, bias and activation as one op.
                let b = match &self.bias {
                    Some(b) => b.as_tensor().clone(),
                    None => Tensor::zeros(f, DType::F32, xt.device())?,
                };
                return Ok(conv_bias_activation(
                    Direction::Transposed,
                    g,
                    c,
                    a,
                    x2d,
                    kmat,
                    &b,
                )?);
            }
            // (n, oh, ow, f)
            let y = x2d.apply_op2(kmat, ConvData { g, f: c })?;
            let y = match (&self.bias, self.cfg.data_format) {
                (Some(b), DataFormat::ChannelsLast) => {
                    return act.apply_with_bias(&y, b.as_tensor());
                }
                (Some(b), DataFormat::ChannelsFirst) => y.broadcast_add(b.as_tensor())?,
                (None, _) => y,
            };
            let y = from_nhwc(&y, self.cfg.data_format)?;
            return act.apply(&y);
        }
        if super::conv_generic::enabled() {
            let b = self.bias.as_ref().map(|b| b.as_tensor());
            let (inner, after) = super::conv_generic::split_activation(act);
            let y = super::conv_generic::conv_transpose2d_layer(
                &xt,
                kernel.as_tensor(),
                b,
                (
                    (self.crop_before(0, h, kh, oh), oh),
                    (self.crop_before(1, w, kw, ow), ow),
                ),
                s,
                d,
                inner,
            )?;
            let y = from_nhwc(&y, self.cfg.data_format)?;
            return after.apply(&y);
        }
        // The full transposed convolution...
        let full = {
            let xn = xt.permute((0, 3, 1, 2))?.contiguous()?;
            let k = self.cfg.policy.cast(kernel.as_tensor())?;
            let k = k.permute((3, 2, 0, 1))?.contiguous()?;
            let full = xn.conv_transpose2d(&k, 0, 0, s, d)?;
            full.permute((0, 2, 3, 1))?
        };
        // ...then the window Keras keeps.
        let y = self.crop(full, 1, h, kh, oh)?;
        let mut y = self.crop(y, 2, w, kw, ow)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&self.cfg.policy.cast(b.as_tensor())?)?;
        }
        let y = from_nhwc(&y, self.cfg.data_format)?;
        act.apply(&y)
    }
}

impl Layer for Conv2DTranspose {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Conv2DTranspose"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.kernel.is_some() {
            return Ok(());
        }
        self.cfg.check(&self.name)?;
        let (_, _, c) = hwc(input_shape, self.cfg.data_format, &self.name)?;
        let (kh, kw) = self.cfg.kernel;
        // Keras's layout (kh, kw, filters, in): glorot fans from the last two axes, as Keras.
        let (kernel, bias) = self
            .cfg
            .variables(&self.name, [kh, kw, self.cfg.filters, c])?;
        self.kernel = Some(kernel);
        self.bias = bias;
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        self.call_with(x, self.cfg.activation)
    }
    fn call_fused(
        &mut self,
        x: &Tensor,
        _training: bool,
        then: Activation,
    ) -> Result<Option<Tensor>> {
        if self.cfg.activation != Activation::Linear || then.fused().is_none() {
            return Ok(None);
        }
        self.call_with(x, then).map(Some)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.cfg.check(&self.name)?;
        let (h, w, _) = hwc(input_shape, self.cfg.data_format, &self.name)?;
        let (oh, ow) = self.out_hw(h, w)?;
        Ok(shape_of(oh, ow, self.cfg.filters, self.cfg.data_format))
    }
    fn variables(&self) -> Vec<Variable> {
        self.kernel
            .iter()
            .chain(self.bias.iter())
            .cloned()
            .collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        self.cfg.penalties(self.kernel.as_ref(), self.bias.as_ref())
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.cfg.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        let mut map = self.cfg.json(&self.name);
        map.insert(
            "output_padding".into(),
            match self.output_padding {
                Some((a, b)) => serde_json::json!([a, b]),
                None => serde_json::Value::Null,
            },
        );
        Some(serde_json::Value::Object(map))
    }
}

/// `t` with `rate - 1` zeros between neighbours along `axis` (length `(len - 1) * rate + 1`):
/// a kernel dilated, or an input spread out by a transposed convolution's stride.
fn dilate(t: &Tensor, axis: usize, rate: usize) -> Result<Tensor> {
    let len = t.dims()[axis];
    if rate == 1 || len == 0 {
        return Ok(t.clone());
    }
    let t = t.unsqueeze(axis + 1)?;
    let mut zeros_shape = t.dims().to_vec();
    zeros_shape[axis + 1] = rate - 1;
    let zeros = Tensor::zeros(zeros_shape, t.dtype(), t.device())?;
    let mut shape = t.dims().to_vec();
    shape.remove(axis + 1);
    shape[axis] = len * rate;
    let spread = Tensor::cat(&[&t, &zeros], axis + 1)?.reshape(shape)?;
    Ok(spread.narrow(axis, 0, (len - 1) * rate + 1)?)
}

/// Every `step`-th position along `axis`, `count` of them from the first.
pub(crate) fn subsample(t: &Tensor, axis: usize, step: usize, count: usize) -> Result<Tensor> {
    if step == 1 {
        return Ok(t.narrow(axis, 0, count)?);
    }
    let ids: Vec<u32> = (0..count).map(|i| (i * step) as u32).collect();
    let ids = Tensor::from_vec(ids, count, t.device())?;
    Ok(t.contiguous()?.index_select(&ids, axis)?)
}

/// `t` reversed along `axis`.
pub(crate) fn flip(t: &Tensor, axis: usize) -> Result<Tensor> {
    let len = t.dims()[axis];
    let ids: Vec<u32> = (0..len as u32).rev().collect();
    let ids = Tensor::from_vec(ids, len, t.device())?;
    Ok(t.contiguous()?.index_select(&ids, axis)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_is_asymmetric_like_keras() {
        assert_eq!(same_padding(28, 3, 2, 1), (0, 1));
        assert_eq!(same_padding(28, 3, 1, 1), (1, 1));
        assert_eq!(same_padding(7, 7, 1, 1), (3, 3));
        assert_eq!(transpose_out(7, 4, 2, 1, Padding::Same, None), 14);
        assert_eq!(transpose_out(7, 4, 2, 1, Padding::Valid, None), 16);
    }
}
