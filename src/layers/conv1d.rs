//! `Conv1D`: a convolution over the steps of a sequence.

use candle_core::{Device, Tensor};

use super::conv::same_padding;
use super::{Activation, DataFormat, Layer, Regularizer, unique_name};
use crate::initializers::Initializer;
use crate::mixed_precision::DTypePolicy;
use crate::tape::Variable;
use crate::{Error, Result};

/// How `Conv1D` pads the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Padding1D {
    Valid,
    Same,
    /// Zeros before the first step only, so that output step `t` sees inputs up to `t`.
    Causal,
}

/// Keras's `layers.Conv1D`: `filters` outputs per step from a window of `kernel_size` steps,
/// over `(batch, steps, channels)` inputs (or `(batch, channels, steps)` channels-first). The
/// kernel has Keras's shape `(kernel_size, in, filters)`. Padding `"valid"`, `"same"` or
/// `"causal"` (zeros before the first step only, for sequence models that must not see ahead).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Conv1D, Layer};
/// let mut conv = Conv1D::new(4, 3).padding("causal").unwrap();
/// let x = Tensor::zeros((2, 10, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(conv.call(&x, false).unwrap().dims(), &[2, 10, 4]);
/// assert_eq!(conv.variables()[0].value().dims(), &[3, 5, 4]);
/// ```
pub struct Conv1D {
    name: String,
    filters: usize,
    kernel_size: usize,
    strides: usize,
    padding: Padding1D,
    dilation: usize,
    activation: Activation,
    use_bias: bool,
    data_format: DataFormat,
    kernel_initializer: Initializer,
    bias_initializer: Initializer,
    kernel_regularizer: Option<Regularizer>,
    bias_regularizer: Option<Regularizer>,
    policy: DTypePolicy,
    device: Device,
    kernel: Option<Variable>,
    bias: Option<Variable>,
}

impl Conv1D {
    /// `filters` outputs, a window of `kernel_size` steps, stride 1, "valid" padding.
    pub fn new(filters: usize, kernel_size: usize) -> Self {
        Self {
            name: unique_name("conv1d"),
            filters,
            kernel_size,
            strides: 1,
            padding: Padding1D::Valid,
            dilation: 1,
            activation: Activation::Linear,
            use_bias: true,
            data_format: DataFormat::ChannelsLast,
            kernel_initializer: Initializer::glorot_uniform(),
            bias_initializer: Initializer::Zeros,
            kernel_regularizer: None,
            bias_regularizer: None,
            policy: crate::mixed_precision::global_policy(),
            device: crate::runtime::default_device(),
            kernel: None,
            bias: None,
        }
    }
    /// The step between windows.
    pub fn strides(mut self, s: usize) -> Self {
        self.strides = s;
        self
    }
    /// `"valid"`, `"same"` or `"causal"`.
    ///
    /// # Errors
    /// Another string.
    pub fn padding(mut self, p: &str) -> Result<Self> {
        self.padding = match p.to_ascii_lowercase().as_str() {
            "valid" => Padding1D::Valid,
            "same" => Padding1D::Same,
            "causal" => Padding1D::Causal,
            other => {
                return Err(Error::value(format!(
                    "The `padding` argument must be one of \"valid\", \"same\", \"causal\". Received: padding={other:?}"
                )));
            }
        };
        Ok(self)
    }
    /// The spacing of the window's taps.
    pub fn dilation_rate(mut self, d: usize) -> Self {
        self.dilation = d;
        self
    }
    /// Activation by Keras name.
    ///
    /// # Errors
    /// An unknown name.
    pub fn activation(mut self, a: &str) -> Result<Self> {
        self.activation = a.parse()?;
        Ok(self)
    }
    /// Sets the activation.
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Whether to add a bias (default true).
    pub fn use_bias(mut self, b: bool) -> Self {
        self.use_bias = b;
        self
    }
    /// Channels-last (default) or channels-first sequences.
    pub fn data_format(mut self, f: DataFormat) -> Self {
        self.data_format = f;
        self
    }
    /// How the kernel starts (default glorot-uniform).
    pub fn with_kernel_initializer(mut self, init: Initializer) -> Self {
        self.kernel_initializer = init;
        self
    }
    /// How the bias starts (default zeros).
    pub fn with_bias_initializer(mut self, init: Initializer) -> Self {
        self.bias_initializer = init;
        self
    }
    /// A penalty on the kernel.
    pub fn kernel_regularizer(mut self, r: Regularizer) -> Self {
        self.kernel_regularizer = Some(r);
        self
    }
    /// A penalty on the bias.
    pub fn bias_regularizer(mut self, r: Regularizer) -> Self {
        self.bias_regularizer = Some(r);
        self
    }
    /// Sets the dtype policy by name.
    ///
    /// # Errors
    /// An unknown policy name.
    pub fn dtype(mut self, name: &str) -> Result<Self> {
        self.policy = DTypePolicy::new(name)?;
        Ok(self)
    }
    /// The device variables are created on.
    pub fn device(mut self, d: &Device) -> Self {
        self.device = d.clone();
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }

    fn check(&self) -> Result<()> {
        let (f, k, s, d) = (self.filters, self.kernel_size, self.strides, self.dilation);
        if f == 0 || k == 0 || s == 0 || d == 0 {
            return Err(Error::value(format!(
                "layer \"{}\": filters, kernel_size, strides and dilation_rate must be >= 1. Received: filters={f}, kernel_size={k}, strides={s}, dilation_rate={d}",
                self.name
            )));
        }
        if s > 1 && d > 1 {
            return Err(Error::value(format!(
                "layer \"{}\": `strides > 1` not supported in conjunction with `dilation_rate > 1`. Received: strides={s} and dilation_rate={d}",
                self.name
            )));
        }
        Ok(())
    }

    /// `(steps, channels)` of an input shape (batch excluded).
    fn steps_channels(&self, shape: &[usize]) -> Result<(usize, usize)> {
        match (shape, self.data_format) {
            ([l, c], DataFormat::ChannelsLast) | ([c, l], DataFormat::ChannelsFirst) => {
                Ok((*l, *c))
            }
            _ => Err(Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected ndim=3 (batch, steps, channels), found shape (None, {})",
                self.name,
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Zeros before and after the steps, and the number of output steps.
    fn geometry(&self, steps: usize) -> Result<((usize, usize), usize)> {
        let (k, s, d) = (self.kernel_size, self.strides, self.dilation);
        let keff = (k - 1) * d + 1;
        let pads = match self.padding {
            Padding1D::Valid => (0, 0),
            Padding1D::Same => same_padding(steps, k, s, d),
            Padding1D::Causal => (keff - 1, 0),
        };
        let padded = steps + pads.0 + pads.1;
        if padded < keff {
            return Err(Error::value(format!(
                "layer \"{}\": the input has {steps} steps, fewer than the window ({keff} steps with dilation {d}) with \"valid\" padding",
                self.name
            )));
        }
        Ok((pads, (padded - keff) / s + 1))
    }
}

impl Layer for Conv1D {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Conv1D"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.kernel.is_some() {
            return Ok(());
        }
        self.check()?;
        let (_, c) = self.steps_channels(input_shape)?;
        let k = self
            .kernel_initializer
            .init(&[self.kernel_size, c, self.filters], &self.device)?;
        self.kernel = Some(Variable::new(format!("{}/kernel", self.name), &k, true)?);
        if self.use_bias {
            let b = self.bias_initializer.init(&[self.filters], &self.device)?;
            self.bias = Some(Variable::new(format!("{}/bias", self.name), &b, true)?);
        }
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.rank() != 3 {
            return Err(Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected ndim=3, found ndim={}. Full shape received: {:?}",
                self.name,
                x.rank(),
                x.dims()
            )));
        }
        self.build(&x.dims()[1..])?;
        let Some(kernel) = &self.kernel else {
            return Err(Error::state("Conv1D not built"));
        };
        let (steps, c) = self.steps_channels(&x.dims()[1..])?;
        let k_in = kernel.shape().dims()[1];
        if c != k_in {
            return Err(Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected the channels axis of input shape to have value {k_in}, but received input with shape {:?}",
                self.name,
                x.dims()
            )));
        }
        let (pads, _) = self.geometry(steps)?;
        let x = x.to_dtype(self.policy.compute_dtype())?;
        // candle's layout: (batch, channels, steps), kernel (filters, in, taps).
        let xc = match self.data_format {
            DataFormat::ChannelsLast => x.transpose(1, 2)?,
            DataFormat::ChannelsFirst => x,
        };
        let xc = xc.pad_with_zeros(2, pads.0, pads.1)?.contiguous()?;
        let k = self
            .policy
            .cast(kernel.as_tensor())?
            .permute((2, 1, 0))?
            .contiguous()?;
        // As a convolution of one-row images: the gradients of candle's 1-D convolution did not
        // match Keras's for batches of more than one sequence (the first sequence's did); those
        // of its 2-D convolution do (`tests/keras_layer_parity.rs`).
        let mut y = xc
            .unsqueeze(2)?
            .conv2d(&k.unsqueeze(2)?, 0, self.strides, self.dilation, 1)?
            .squeeze(2)?;
        if let Some(b) = &self.bias {
            let b = self.policy.cast(b.as_tensor())?;
            y = y.broadcast_add(&b.reshape((1, self.filters, 1))?)?;
        }
        let y = match self.data_format {
            DataFormat::ChannelsLast => y.transpose(1, 2)?.contiguous()?,
            DataFormat::ChannelsFirst => y,
        };
        self.activation.apply(&y)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.check()?;
        let (steps, _) = self.steps_channels(input_shape)?;
        let (_, out) = self.geometry(steps)?;
        Ok(match self.data_format {
            DataFormat::ChannelsLast => vec![out, self.filters],
            DataFormat::ChannelsFirst => vec![self.filters, out],
        })
    }
    fn variables(&self) -> Vec<Variable> {
        self.kernel
            .iter()
            .chain(self.bias.iter())
            .cloned()
            .collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        if let (Some(r), Some(k)) = (&self.kernel_regularizer, &self.kernel) {
            out.push(r.penalty(k.as_tensor())?);
        }
        if let (Some(r), Some(b)) = (&self.bias_regularizer, &self.bias) {
            out.push(r.penalty(b.as_tensor())?);
        }
        Ok(out)
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        let padding = match self.padding {
            Padding1D::Valid => "valid",
            Padding1D::Same => "same",
            Padding1D::Causal => "causal",
        };
        Some(serde_json::json!({
            "name": self.name,
            "filters": self.filters,
            "kernel_size": [self.kernel_size],
            "strides": [self.strides],
            "padding": padding,
            "data_format": super::config::data_format_json(self.data_format),
            "dilation_rate": [self.dilation],
            "activation": super::config::activation_json(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer.to_json(),
            "bias_initializer": self.bias_initializer.to_json(),
            "kernel_regularizer": super::config::regularizer_json(self.kernel_regularizer),
            "bias_regularizer": super::config::regularizer_json(self.bias_regularizer),
        }))
    }
}
