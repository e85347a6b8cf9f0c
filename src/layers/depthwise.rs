//! `DepthwiseConv2D` and `SeparableConv2D`: a convolution per input channel (times a depth
//! multiplier), and that followed by a 1x1 convolution mixing the channels.
//!
//! The depthwise convolution is built from candle's ops, one kernel tap at a time (a slice of
//! the padded input times that tap's weights, summed): every device runs it and candle
//! differentiates it; a 3x3 kernel is nine products and sums.

use candle_core::{Device, Tensor};

use super::conv::{check_rank4, conv_out, same_padding, shape_of, subsample};
use super::{Activation, DataFormat, Layer, Padding, Regularizer, Size2, unique_name};
use crate::initializers::Initializer;
use crate::mixed_precision::DTypePolicy;
use crate::tape::Variable;
use crate::{Error, Result};

/// The options both layers share.
#[derive(Clone, Debug)]
struct Spatial {
    kernel: (usize, usize),
    strides: (usize, usize),
    padding: Padding,
    dilation: (usize, usize),
    depth_multiplier: usize,
    data_format: DataFormat,
    activation: Activation,
    use_bias: bool,
    depthwise_initializer: Initializer,
    bias_initializer: Initializer,
    depthwise_regularizer: Option<Regularizer>,
    bias_regularizer: Option<Regularizer>,
    device: Device,
    policy: DTypePolicy,
}

impl Spatial {
    fn new(kernel: (usize, usize)) -> Self {
        Self {
            kernel,
            strides: (1, 1),
            padding: Padding::Valid,
            dilation: (1, 1),
            depth_multiplier: 1,
            data_format: DataFormat::ChannelsLast,
            activation: Activation::Linear,
            use_bias: true,
            depthwise_initializer: Initializer::glorot_uniform(),
            bias_initializer: Initializer::Zeros,
            depthwise_regularizer: None,
            bias_regularizer: None,
            device: crate::runtime::default_device(),
            policy: crate::mixed_precision::global_policy(),
        }
    }

    /// `(height, width, channels)` of a per-sample shape, checked.
    fn hwc(&self, layer: &str, shape: &[usize]) -> Result<(usize, usize, usize)> {
        let [a, b, c] = shape else {
            return Err(Error::value(format!(
                "Input 0 of layer \"{layer}\" is incompatible with the layer: expected ndim=4 (batch, height, width, channels), found ndim={} (sample shape {shape:?})",
                shape.len() + 1
            )));
        };
        let (h, w, ch) = match self.data_format {
            DataFormat::ChannelsLast => (*a, *b, *c),
            DataFormat::ChannelsFirst => (*b, *c, *a),
        };
        let (kh, kw) = self.kernel;
        if kh == 0 || kw == 0 || self.strides.0 == 0 || self.strides.1 == 0 {
            return Err(Error::value(format!(
                "layer \"{layer}\" needs a kernel and strides of at least 1; received kernel_size={:?}, strides={:?}",
                self.kernel, self.strides
            )));
        }
        if self.depth_multiplier == 0 || ch == 0 {
            return Err(Error::value(format!(
                "layer \"{layer}\" needs depth_multiplier >= 1 and at least one input channel; received depth_multiplier={}, channels={ch}",
                self.depth_multiplier
            )));
        }
        if (self.strides.0 > 1 || self.strides.1 > 1)
            && (self.dilation.0 > 1 || self.dilation.1 > 1)
        {
            return Err(Error::value(format!(
                "layer \"{layer}\": strides > 1 not supported in conjunction with dilation_rate > 1. Received: strides={:?} and dilation_rate={:?}",
                self.strides, self.dilation
            )));
        }
        Ok((h, w, ch))
    }

    /// The output's `(height, width)`.
    fn out_hw(&self, layer: &str, h: usize, w: usize) -> Result<(usize, usize)> {
        match (
            conv_out(
                h,
                self.kernel.0,
                self.strides.0,
                self.dilation.0,
                self.padding,
            ),
            conv_out(
                w,
                self.kernel.1,
                self.strides.1,
                self.dilation.1,
                self.padding,
            ),
        ) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(Error::value(format!(
                "layer \"{layer}\": the kernel {:?} (dilation {:?}) is larger than the {h}x{w} input with \"valid\" padding",
                self.kernel, self.dilation
            ))),
        }
    }

    fn shape_of(&self, h: usize, w: usize, c: usize) -> Vec<usize> {
        shape_of(h, w, c, self.data_format)
    }

    /// `x` in the compute dtype, `(batch, height, width, channels)`.
    fn nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let dt = self.policy.compute_dtype();
        let x = if x.dtype() == dt {
            x.clone()
        } else {
            x.to_dtype(dt)?
        };
        Ok(match self.data_format {
            DataFormat::ChannelsLast => x,
            DataFormat::ChannelsFirst => x.permute((0, 2, 3, 1))?.contiguous()?,
        })
    }

    /// `(batch, height, width, channels)` back to the layer's data format.
    fn to_layout(&self, y: Tensor) -> Result<Tensor> {
        Ok(match self.data_format {
            DataFormat::ChannelsLast => y,
            DataFormat::ChannelsFirst => y.permute((0, 3, 1, 2))?.contiguous()?,
        })
    }

    /// The depthwise convolution of `x (n, h, w, c)` with `kernel (kh, kw, c, m)`:
    /// `(n, oh, ow, c * m)`, channel `c * m + j` from input channel `c`, as Keras orders them.
    fn depthwise(&self, layer: &str, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = x.dims4()?;
        let (oh, ow) = self.out_hw(layer, h, w)?;
        let (kh, kw) = self.kernel;
        let (sh, sw) = self.strides;
        let (dh, dw) = self.dilation;
        let m = self.depth_multiplier;
        let x = match self.padding {
            Padding::Valid => x.clone(),
            Padding::Same => {
                let (t, b) = same_padding(h, kh, sh, dh);
                let (l, r) = same_padding(w, kw, sw, dw);
                x.pad_with_zeros(1, t, b)?.pad_with_zeros(2, l, r)?
            }
        };
        let kernel = kernel.to_dtype(x.dtype())?;
        let mut acc: Option<Tensor> = None;
        for i in 0..kh {
            let rows = x.narrow(1, i * dh, (oh - 1) * sh + 1)?;
            let rows = subsample(&rows, 1, sh, oh)?;
            for j in 0..kw {
                let tap = rows.narrow(2, j * dw, (ow - 1) * sw + 1)?;
                let tap = subsample(&tap, 2, sw, ow)?;
                let k = kernel.get(i)?.get(j)?; // (c, m)
                let term = if m == 1 {
                    tap.broadcast_mul(&k.reshape(c)?)?
                } else {
                    tap.unsqueeze(4)?
                        .broadcast_mul(&k)?
                        .reshape((n, oh, ow, c * m))?
                };
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
        }
        acc.ok_or_else(|| Error::state("empty kernel"))
    }

    /// Adds the bias and applies the activation.
    fn finish(&self, y: Tensor, bias: Option<&Variable>) -> Result<Tensor> {
        let y = match bias {
            Some(b) => y.broadcast_add(&self.policy.cast(b.as_tensor())?)?,
            None => y,
        };
        self.activation.apply(&y)
    }
}

/// The builder methods both layers share.
macro_rules! spatial_options {
    ($t:ident) => {
        impl $t {
            /// Steps along height and width (default 1).
            pub fn strides(mut self, s: impl Size2) -> Self {
                self.s.strides = s.pair();
                self
            }
            /// `"valid"` (the default) or `"same"`.
            ///
            /// # Errors
            /// Another string.
            pub fn padding(mut self, p: &str) -> Result<Self> {
                self.s.padding = p.parse()?;
                Ok(self)
            }
            /// Dilation along height and width (default 1).
            pub fn dilation_rate(mut self, d: impl Size2) -> Self {
                self.s.dilation = d.pair();
                self
            }
            /// Output channels per input channel of the depthwise convolution (default 1).
            pub fn depth_multiplier(mut self, m: usize) -> Self {
                self.s.depth_multiplier = m;
                self
            }
            /// Where the channel axis is (default channels last).
            pub fn data_format(mut self, f: DataFormat) -> Self {
                self.s.data_format = f;
                self
            }
            /// The activation by Keras name.
            ///
            /// # Errors
            /// An unknown name.
            pub fn activation(mut self, name: &str) -> Result<Self> {
                self.s.activation = name.parse()?;
                Ok(self)
            }
            /// The activation.
            pub fn with_activation(mut self, a: Activation) -> Self {
                self.s.activation = a;
                self
            }
            /// Whether to add a bias (default true).
            pub fn use_bias(mut self, b: bool) -> Self {
                self.s.use_bias = b;
                self
            }
            /// How the depthwise kernel starts (default Glorot uniform).
            pub fn with_depthwise_initializer(mut self, i: Initializer) -> Self {
                self.s.depthwise_initializer = i;
                self
            }
            /// How the bias starts (default zeros).
            pub fn with_bias_initializer(mut self, i: Initializer) -> Self {
                self.s.bias_initializer = i;
                self
            }
            /// Penalty on the depthwise kernel.
            pub fn depthwise_regularizer(mut self, r: Regularizer) -> Self {
                self.s.depthwise_regularizer = Some(r);
                self
            }
            /// Penalty on the bias.
            pub fn bias_regularizer(mut self, r: Regularizer) -> Self {
                self.s.bias_regularizer = Some(r);
                self
            }
            /// Sets the dtype policy by name.
            ///
            /// # Errors
            /// An unknown policy name.
            pub fn dtype(mut self, name: &str) -> Result<Self> {
                self.s.policy = DTypePolicy::new(name)?;
                Ok(self)
            }
            /// The device variables are created on.
            pub fn device(mut self, device: &Device) -> Self {
                self.s.device = device.clone();
                self
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
        }
    };
}

/// The config keys both layers share, in Keras's form.
fn spatial_config(s: &Spatial, name: &str) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "name": name,
        "depth_multiplier": s.depth_multiplier,
        "kernel_size": [s.kernel.0, s.kernel.1],
        "strides": [s.strides.0, s.strides.1],
        "padding": super::config::padding_json(s.padding),
        "data_format": super::config::data_format_json(s.data_format),
        "dilation_rate": [s.dilation.0, s.dilation.1],
        "activation": super::config::activation_json(s.activation),
        "use_bias": s.use_bias,
        "depthwise_initializer": s.depthwise_initializer.to_json(),
        "bias_initializer": s.bias_initializer.to_json(),
        "depthwise_regularizer": super::config::regularizer_json(s.depthwise_regularizer),
        "bias_regularizer": super::config::regularizer_json(s.bias_regularizer),
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Keras's `layers.DepthwiseConv2D`: each input channel convolved with `depth_multiplier`
/// kernels of its own; kernel `(kh, kw, channels, depth_multiplier)`, output channels
/// `channels * depth_multiplier`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{DepthwiseConv2D, Layer};
/// let mut d = DepthwiseConv2D::new((3, 3)).depth_multiplier(2).padding("same").unwrap();
/// let y = d.call(&Tensor::ones((2, 8, 8, 3), DType::F32, &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.dims(), &[2, 8, 8, 6]);
/// assert_eq!(d.count_params(), 3 * 3 * 3 * 2 + 6);
/// ```
pub struct DepthwiseConv2D {
    name: String,
    s: Spatial,
    kernel: Option<Variable>,
    bias: Option<Variable>,
}

impl DepthwiseConv2D {
    /// A depthwise convolution with a `(height, width)` kernel (or one size for both).
    pub fn new(kernel_size: impl Size2) -> Self {
        Self {
            name: unique_name("depthwise_conv2d"),
            s: Spatial::new(kernel_size.pair()),
            kernel: None,
            bias: None,
        }
    }
}

spatial_options!(DepthwiseConv2D);

impl Layer for DepthwiseConv2D {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "DepthwiseConv2D"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.kernel.is_some() {
            return Ok(());
        }
        let (_, _, c) = self.s.hwc(&self.name, input_shape)?;
        let m = self.s.depth_multiplier;
        let (kh, kw) = self.s.kernel;
        let k = self
            .s
            .depthwise_initializer
            .init(&[kh, kw, c, m], &self.s.device)?;
        self.kernel = Some(Variable::new(format!("{}/kernel", self.name), &k, true)?);
        if self.s.use_bias {
            let b = self.s.bias_initializer.init(&[c * m], &self.s.device)?;
            self.bias = Some(Variable::new(format!("{}/bias", self.name), &b, true)?);
        }
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        check_rank4(&self.name, x)?;
        self.build(&x.dims()[1..])?;
        let kernel = self
            .kernel
            .as_ref()
            .ok_or_else(|| Error::state("DepthwiseConv2D not built"))?;
        let (_, _, c) = self.s.hwc(&self.name, &x.dims()[1..])?;
        check_channels(&self.name, x, c, kernel.shape().dims()[2])?;
        let y = self.s.depthwise(
            &self.name,
            &self.s.nhwc(x)?,
            &self.s.policy.cast(kernel.as_tensor())?,
        )?;
        let y = self.s.finish(y, self.bias.as_ref())?;
        self.s.to_layout(y)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let (h, w, c) = self.s.hwc(&self.name, input_shape)?;
        let (oh, ow) = self.s.out_hw(&self.name, h, w)?;
        Ok(self.s.shape_of(oh, ow, c * self.s.depth_multiplier))
    }
    fn variables(&self) -> Vec<Variable> {
        self.kernel.iter().chain(&self.bias).cloned().collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        if let (Some(r), Some(k)) = (&self.s.depthwise_regularizer, &self.kernel) {
            out.push(r.penalty(k.as_tensor())?);
        }
        if let (Some(r), Some(b)) = (&self.s.bias_regularizer, &self.bias) {
            out.push(r.penalty(b.as_tensor())?);
        }
        Ok(out)
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.s.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::Object(spatial_config(
            &self.s, &self.name,
        )))
    }
}

/// Keras's `layers.SeparableConv2D`: a depthwise convolution (kernel `(kh, kw, channels,
/// depth_multiplier)`) followed by a 1x1 convolution to `filters` channels (kernel
/// `(1, 1, channels * depth_multiplier, filters)`), then the bias and activation. Fewer weights
/// than a `Conv2D` of the same size (Keras's Xception-style image models use it).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{Layer, SeparableConv2D};
/// let mut s = SeparableConv2D::new(16, (3, 3)).padding("same").unwrap().activation("relu").unwrap();
/// let y = s.call(&Tensor::ones((2, 8, 8, 4), DType::F32, &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.dims(), &[2, 8, 8, 16]);
/// assert_eq!(s.count_params(), 3 * 3 * 4 + 4 * 16 + 16);
/// ```
pub struct SeparableConv2D {
    name: String,
    filters: usize,
    s: Spatial,
    pointwise_initializer: Initializer,
    pointwise_regularizer: Option<Regularizer>,
    depthwise: Option<Variable>,
    pointwise: Option<Variable>,
    bias: Option<Variable>,
}

impl SeparableConv2D {
    /// `filters` output channels, a `(height, width)` kernel (or one size for both).
    pub fn new(filters: usize, kernel_size: impl Size2) -> Self {
        Self {
            name: unique_name("separable_conv2d"),
            filters,
            s: Spatial::new(kernel_size.pair()),
            pointwise_initializer: Initializer::glorot_uniform(),
            pointwise_regularizer: None,
            depthwise: None,
            pointwise: None,
            bias: None,
        }
    }
    /// How the pointwise kernel starts (default Glorot uniform).
    pub fn with_pointwise_initializer(mut self, i: Initializer) -> Self {
        self.pointwise_initializer = i;
        self
    }
    /// Penalty on the pointwise kernel.
    pub fn pointwise_regularizer(mut self, r: Regularizer) -> Self {
        self.pointwise_regularizer = Some(r);
        self
    }
}

spatial_options!(SeparableConv2D);

impl Layer for SeparableConv2D {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "SeparableConv2D"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.depthwise.is_some() {
            return Ok(());
        }
        let (_, _, c) = self.s.hwc(&self.name, input_shape)?;
        if self.filters == 0 {
            return Err(Error::value(format!(
                "layer \"{}\" (SeparableConv2D) needs filters >= 1; received 0",
                self.name
            )));
        }
        let m = self.s.depth_multiplier;
        let (kh, kw) = self.s.kernel;
        let dev = &self.s.device;
        let d = self.s.depthwise_initializer.init(&[kh, kw, c, m], dev)?;
        self.depthwise = Some(Variable::new(
            format!("{}/depthwise_kernel", self.name),
            &d,
            true,
        )?);
        let p = self
            .pointwise_initializer
            .init(&[1, 1, c * m, self.filters], dev)?;
        self.pointwise = Some(Variable::new(
            format!("{}/pointwise_kernel", self.name),
            &p,
            true,
        )?);
        if self.s.use_bias {
            let b = self.s.bias_initializer.init(&[self.filters], dev)?;
            self.bias = Some(Variable::new(format!("{}/bias", self.name), &b, true)?);
        }
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        check_rank4(&self.name, x)?;
        self.build(&x.dims()[1..])?;
        let (Some(dk), Some(pk)) = (&self.depthwise, &self.pointwise) else {
            return Err(Error::state("SeparableConv2D not built"));
        };
        let (_, _, c) = self.s.hwc(&self.name, &x.dims()[1..])?;
        check_channels(&self.name, x, c, dk.shape().dims()[2])?;
        let d = self.s.depthwise(
            &self.name,
            &self.s.nhwc(x)?,
            &self.s.policy.cast(dk.as_tensor())?,
        )?;
        let (n, oh, ow, cm) = d.dims4()?;
        let pk = self
            .s
            .policy
            .cast(pk.as_tensor())?
            .reshape((cm, self.filters))?
            .to_dtype(d.dtype())?;
        let y = d
            .reshape((n * oh * ow, cm))?
            .matmul(&pk)?
            .reshape((n, oh, ow, self.filters))?;
        let y = self.s.finish(y, self.bias.as_ref())?;
        self.s.to_layout(y)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let (h, w, _) = self.s.hwc(&self.name, input_shape)?;
        let (oh, ow) = self.s.out_hw(&self.name, h, w)?;
        Ok(self.s.shape_of(oh, ow, self.filters))
    }
    fn variables(&self) -> Vec<Variable> {
        self.depthwise
            .iter()
            .chain(&self.pointwise)
            .chain(&self.bias)
            .cloned()
            .collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        if let (Some(r), Some(k)) = (&self.s.depthwise_regularizer, &self.depthwise) {
            out.push(r.penalty(k.as_tensor())?);
        }
        if let (Some(r), Some(k)) = (&self.pointwise_regularizer, &self.pointwise) {
            out.push(r.penalty(k.as_tensor())?);
        }
        if let (Some(r), Some(b)) = (&self.s.bias_regularizer, &self.bias) {
            out.push(r.penalty(b.as_tensor())?);
        }
        Ok(out)
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.s.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        let mut m = spatial_config(&self.s, &self.name);
        m.insert("filters".into(), self.filters.into());
        m.insert(
            "pointwise_initializer".into(),
            self.pointwise_initializer.to_json(),
        );
        m.insert(
            "pointwise_regularizer".into(),
            super::config::regularizer_json(self.pointwise_regularizer),
        );
        Some(serde_json::Value::Object(m))
    }
}

/// The input's channels must be the kernel's.
fn check_channels(layer: &str, x: &Tensor, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::value(format!(
            "Input 0 of layer \"{layer}\" is incompatible with the layer: expected {want} channels, but received input with shape {:?}",
            x.dims()
        )));
    }
    Ok(())
}
