//! `Dense`: `activation(x @ kernel + bias)`.

use candle_core::{DType, Device, Tensor};

use super::{Activation, Layer, unique_name};
use crate::initializers::Initializer;
use crate::tape::{NodeValue, Variable};
use crate::{Error, Result};

/// A weight penalty added to the model's losses (Keras's `regularizers.L1/L2/L1L2`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::Regularizer;
/// let w = Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap();
/// let l2 = Regularizer::L2(0.01).penalty(&w).unwrap();
/// assert!((l2.to_scalar::<f32>().unwrap() - 0.05).abs() < 1e-7);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Regularizer {
    /// `l1 * sum(|w|)`.
    L1(f32),
    /// `l2 * sum(w^2)`.
    L2(f32),
    /// Both.
    L1L2 {
        /// L1 factor.
        l1: f32,
        /// L2 factor.
        l2: f32,
    },
}

impl Regularizer {
    /// The penalty for `w`, a scalar tensor that gradients flow through.
    ///
    /// # Errors
    /// A failing tensor operation.
    pub fn penalty(&self, w: &Tensor) -> Result<Tensor> {
        let (l1, l2) = match *self {
            Regularizer::L1(a) => (a, 0.0),
            Regularizer::L2(b) => (0.0, b),
            Regularizer::L1L2 { l1, l2 } => (l1, l2),
        };
        let w = &crate::ops::to_float(w)?;
        let mut total = Tensor::zeros((), w.dtype(), w.device())?;
        if l1 != 0.0 {
            total = (total + (w.abs()?.sum_all()? * l1 as f64)?)?;
        }
        if l2 != 0.0 {
            total = (total + (w.sqr()?.sum_all()? * l2 as f64)?)?;
        }
        Ok(total)
    }
}

/// A densely connected layer, Keras's `layers.Dense`: `glorot_uniform` kernel, zero bias.
///
/// # Shapes
/// Input `(batch, ..., in)`, output `(batch, ..., units)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Dense, Layer, Regularizer};
/// let mut d = Dense::new(2).activation("relu").unwrap().kernel_regularizer(Regularizer::L2(0.01));
/// let y = d.call(&Tensor::ones((5, 3), candle_core::DType::F32, &Device::Cpu).unwrap(), true).unwrap();
/// assert_eq!(y.dims(), &[5, 2]);
/// assert_eq!(d.losses().unwrap().len(), 1);
/// ```
pub struct Dense {
    name: String,
    units: usize,
    activation: Activation,
    use_bias: bool,
    kernel_regularizer: Option<Regularizer>,
    bias_regularizer: Option<Regularizer>,
    kernel_initializer: Initializer,
    bias_initializer: Initializer,
    kernel: Option<Variable>,
    bias: Option<Variable>,
    device: Device,
    policy: crate::mixed_precision::DTypePolicy,
}

impl Dense {
    /// A dense layer with `units` outputs and no activation.
    pub fn new(units: usize) -> Self {
        Self {
            name: unique_name("dense"),
            units,
            activation: Activation::Linear,
            use_bias: true,
            kernel_regularizer: None,
            bias_regularizer: None,
            kernel_initializer: Initializer::glorot_uniform(),
            bias_initializer: Initializer::Zeros,
            kernel: None,
            bias: None,
            device: crate::runtime::default_device(),
            policy: crate::mixed_precision::global_policy(),
        }
    }
    /// Sets the dtype policy by name (`"float32"`, `"mixed_bfloat16"`, ...); the default is
    /// the global policy when the layer is created (see [`crate::mixed_precision`]).
    ///
    /// # Errors
    /// An unknown policy name.
    pub fn dtype(mut self, name: &str) -> Result<Self> {
        self.policy = crate::mixed_precision::DTypePolicy::new(name)?;
        Ok(self)
    }
    /// Sets the activation by Keras name (`"relu"`, `"softmax"`, ...).
    ///
    /// # Errors
    /// An unknown name.
    pub fn activation(mut self, name: &str) -> Result<Self> {
        self.activation = name.parse()?;
        Ok(self)
    }
    /// Sets the activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
    /// Whether to add a bias (default true).
    pub fn use_bias(mut self, use_bias: bool) -> Self {
        self.use_bias = use_bias;
        self
    }
    /// How the kernel starts, by Keras name (`"he_normal"`; default `"glorot_uniform"`).
    ///
    /// ```
    /// use ferrokeras::layers::{Dense, Layer};
    /// let mut d = Dense::new(3).kernel_initializer("zeros").unwrap().bias_initializer("ones").unwrap();
    /// d.build(&[2]).unwrap();
    /// assert_eq!(d.variables()[0].value().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    /// assert_eq!(d.variables()[1].value().sum_all().unwrap().to_scalar::<f32>().unwrap(), 3.0);
    /// ```
    ///
    /// # Errors
    /// An unknown name.
    pub fn kernel_initializer(mut self, name: &str) -> Result<Self> {
        self.kernel_initializer = name.parse()?;
        Ok(self)
    }
    /// How the bias starts, by Keras name (default `"zeros"`).
    ///
    /// # Errors
    /// An unknown name.
    pub fn bias_initializer(mut self, name: &str) -> Result<Self> {
        self.bias_initializer = name.parse()?;
        Ok(self)
    }
    /// Sets the kernel's initializer.
    pub fn with_kernel_initializer(mut self, init: Initializer) -> Self {
        self.kernel_initializer = init;
        self
    }
    /// Sets the bias's initializer.
    pub fn with_bias_initializer(mut self, init: Initializer) -> Self {
        self.bias_initializer = init;
        self
    }
    /// Penalty on the kernel, added to the model's losses.
    pub fn kernel_regularizer(mut self, r: Regularizer) -> Self {
        self.kernel_regularizer = Some(r);
        self
    }
    /// Penalty on the bias, added to the model's losses.
    pub fn bias_regularizer(mut self, r: Regularizer) -> Self {
        self.bias_regularizer = Some(r);
        self
    }
    /// Overrides the generated name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    /// Overrides the generated name (the same as [`Dense::name`], under the name the other layers
    /// use). A name given right after `new` leaves the automatic one unused, as in Keras:
    ///
    /// ```
    /// use ferrokeras::layers::{Dense, Layer};
    /// let head = Dense::new(1).named("head");
    /// assert_eq!(Layer::name(&head), "head");
    /// assert_eq!(Layer::name(&Dense::new(1)), "dense");
    /// assert_eq!(Layer::name(&Dense::new(1)), "dense_1");
    /// ```
    pub fn named(self, name: impl Into<String>) -> Self {
        self.name(name)
    }
    /// The device variables are created on (CPU by default).
    pub fn device(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }
    /// The layer's dtype policy.
    pub fn dtype_policy(&self) -> &crate::mixed_precision::DTypePolicy {
        &self.policy
    }
    /// Number of output units.
    pub fn units(&self) -> usize {
        self.units
    }
    /// The kernel, once built.
    pub fn kernel(&self) -> Option<&Variable> {
        self.kernel.as_ref()
    }
    /// The bias, once built (and if `use_bias`).
    pub fn bias(&self) -> Option<&Variable> {
        self.bias.as_ref()
    }

    /// The forward pass with activation `act` (its own, or one fused from the next layer).
    fn call_with(&mut self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if x.rank() < 2 {
            return Err(Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected min_ndim=2, found ndim={}. Full shape received: {:?}",
                self.name,
                x.rank(),
                x.dims()
            )));
        }
        self.build(&x.dims()[1..])?;
        let kernel = self
            .kernel
            .as_ref()
            .ok_or_else(|| Error::state("Dense not built"))?;
        let in_features = kernel.shape().dims()[0];
        let last = x.dims()[x.rank() - 1];
        if last != in_features {
            return Err(Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected axis -1 of input shape to have value {in_features}, but received input with shape {:?}",
                self.name,
                x.dims()
            )));
        }
        // Inputs and weights in the policy's compute dtype (float32 unless mixed precision).
        let dt = self.policy.compute_dtype();
        let x = if x.dtype() != dt {
            x.to_dtype(dt)?
        } else {
            x.clone()
        };
        let lead: Vec<usize> = x.dims()[..x.rank() - 1].to_vec();
        let rows: usize = lead.iter().product();
        let mut out_shape = lead.clone();
        out_shape.push(self.units);
        // Our fused kernels where they take `x` (float32 on the CPU; CUDA with our CUDA kernels
        // switched on), else one node of candle's ops.
        if !crate::kernels::elementwise::fusable(&x) {
            let b = self.bias.as_ref().map(|b| b.as_tensor());
            if let Some(y) = dense_node(&x, kernel.as_tensor(), b, act)? {
                // A reshape is a node of the graph too (and a zero-and-add in the backward
                // pass): only where the leading axes were flattened.
                return Ok(if y.dims() == out_shape.as_slice() {
                    y
                } else {
                    y.reshape(out_shape)?
                });
            }
        }
        // On the CPU, the whole layer as one op (any rank of input).
        if let Some(a) = act.fused() {
            let k = self.policy.cast(kernel.as_tensor())?;
            let b = match &self.bias {
                Some(b) => Some(self.policy.cast(b.as_tensor())?),
                None => None,
            };
            if let Some(y) = crate::kernels::dense::dense(&x, &k, b.as_ref(), a, false, None)? {
                return Ok(y);
            }
        }
        let x2 = x.reshape((rows, in_features))?;
        let y = crate::kernels::linear::linear(&x2, &self.policy.cast(kernel.as_tensor())?)?;
        let y = match &self.bias {
            Some(b) => act.apply_with_bias(&y, &self.policy.cast(b.as_tensor())?)?,
            None => act.apply(&y)?,
        };
        Ok(y.reshape(out_shape)?)
    }
}

/// Off our CPU kernels, a Dense layer as one node of the recorded graph ([`crate::tape::node`]):
/// `act(x · kernel + bias)` from candle's ops on detached tensors (`x` flattened to rows, in the
/// compute dtype; the variables cast to it), differentiated from the node's output: two matrix
/// products, the bias's sum and the activation's gradient, with the variables' gradients handed
/// to the tape. The output has `x`'s rows (the caller restores the leading axes). `None` for an
/// activation that is left to candle's differentiation (GELU).
fn dense_node(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Option<Tensor>> {
    let dt = x.dtype();
    let cast = |t: &Tensor, dt: DType| -> candle_core::Result<Tensor> {
        if t.dtype() == dt {
            Ok(t.clone())
        } else {
            t.to_dtype(dt)
        }
    };
    let units = kernel.dims()[1];
    let x2 = x.detach().reshape(((), kernel.dims()[0]))?;
    let k = cast(&kernel.detach(), dt)?;
    let mut z = x2.matmul(&k)?;
    let (y, saved) = match (bias, act) {
        // The bias's addition is the node's own op.
        (Some(b), Activation::Linear) => (NodeValue::add(&z, &cast(&b.detach(), dt)?)?, None),
        _ => {
            if let Some(b) = bias {
                z = z.broadcast_add(&cast(&b.detach(), dt)?)?;
            }
            match act.forward_saving(&z)? {
                Some(v) => v,
                None => return Ok(None),
            }
        }
    };
    let (kdt, bdt) = (kernel.dtype(), bias.map(|b| b.dtype()));
    let mut args = vec![x, kernel];
    args.extend(bias);
    let y = crate::tape::node(&args, y, move |g, y, needs| {
        let gz = act.backward(&g.reshape(((), units))?, y, saved.as_ref())?;
        let gx = if needs[0] {
            Some(gz.matmul(&k.t()?)?)
        } else {
            None
        };
        let gk = if needs[1] {
            Some(cast(&x2.t()?.matmul(&gz)?, kdt)?)
        } else {
            None
        };
        let mut grads = vec![gx, gk];
        if let Some(bdt) = bdt {
            grads.push(needs[2].then(|| cast(&gz.sum(0)?, bdt)).transpose()?);
        }
        Ok(grads)
    })?;
    Ok(Some(y))
}

impl Layer for Dense {
    super::passes_mask!();
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Dense"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.kernel.is_some() {
            return Ok(());
        }
        let fan_in = *input_shape.last().ok_or_else(|| {
            Error::value(format!(
                "layer \"{}\" (Dense) needs inputs with at least one feature axis; received input shape (None,)",
                self.name
            ))
        })?;
        if self.units == 0 || fan_in == 0 {
            return Err(Error::value(format!(
                "layer \"{}\" (Dense) needs units >= 1 and a non-empty feature axis; received units={}, input features={fan_in}",
                self.name, self.units
            )));
        }
        let k = self
            .kernel_initializer
            .init(&[fan_in, self.units], &self.device)?;
        self.kernel = Some(Variable::new(format!("{}/kernel", self.name), &k, true)?);
        if self.use_bias {
            let b = self.bias_initializer.init(&[self.units], &self.device)?;
            self.bias = Some(Variable::new(format!("{}/bias", self.name), &b, true)?);
        }
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        self.call_with(x, self.activation)
    }
    fn call_fused(
        &mut self,
        x: &Tensor,
        _training: bool,
        then: Activation,
    ) -> Result<Option<Tensor>> {
        if self.activation != Activation::Linear || then.fused().is_none() {
            return Ok(None);
        }
        self.call_with(x, then).map(Some)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        if input_shape.is_empty() {
            return Err(Error::value(format!(
                "layer \"{}\" (Dense) needs inputs with a feature axis",
                self.name
            )));
        }
        let mut s = input_shape.to_vec();
        *s.last_mut().unwrap_or(&mut 0) = self.units;
        Ok(s)
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
        Some(serde_json::json!({
            "name": self.name,
            "units": self.units,
            "activation": super::config::activation_json(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer.to_json(),
            "bias_initializer": self.bias_initializer.to_json(),
            "kernel_regularizer": super::config::regularizer_json(self.kernel_regularizer),
            "bias_regularizer": super::config::regularizer_json(self.bias_regularizer),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_rel;
    use candle_core::Device;

    /// Off our CPU kernels a Dense layer (and its activation) is one graph node of candle's ops:
    /// the same outputs and gradients (input, kernel, bias) as our kernels give, for every
    /// activation, with and without a bias, on rank-2 and rank-3 inputs.
    #[test]
    fn the_graph_node_agrees_with_the_cpu_kernels() {
        let acts = [
            Activation::Linear,
            Activation::Relu,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Softmax,
            Activation::LeakyRelu(0.2),
            Activation::Gelu,
            Activation::Elu,
            Activation::Silu,
            Activation::Mish,
            Activation::Relu6,
            Activation::LogSoftmax,
            Activation::HardSilu,
        ];
        for (i, act) in acts.into_iter().enumerate() {
            for (shape, bias) in [(vec![6, 5], true), (vec![2, 3, 5], false)] {
                let case = format!("{act:?} {shape:?} bias {bias}");
                // Generators of their own: other tests draw from the global one meanwhile.
                let seed = 40 + i as u64;
                let x = crate::random::uniform_from(seed, &shape, -2.0, 2.0, &Device::Cpu).unwrap();
                // ("leaky_relu" is the slope 0.2.)
                let mut layer = Dense::new(4).activation(act.name()).unwrap().use_bias(bias);
                let draws = std::cell::Cell::new(0u64);
                let [(yk, gk), (yn, gn)] = crate::kernels::both_paths(&mut layer, &x, |s| {
                    draws.set(draws.get() + 1);
                    crate::random::uniform_from(
                        seed * 100 + draws.get(),
                        s,
                        -1.0,
                        1.0,
                        &Device::Cpu,
                    )
                    .unwrap()
                });
                assert_eq!(yk.dims(), yn.dims(), "{case}");
                assert!(max_rel(&yn, &yk) < 1e-5, "{case}: values");
                assert_eq!(gk.len(), gn.len());
                for (j, (a, b)) in gn.iter().zip(&gk).enumerate() {
                    assert!(max_rel(a, b) < 1e-5, "{case}: gradient {j}");
                }
            }
        }
    }
}
