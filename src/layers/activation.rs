//! Activation functions and the layers that apply them.

use candle_core::Tensor;

use super::{Layer, unique_name};
use crate::tape::{NodeValue, Unary};
use crate::{Error, Result};

/// An activation function, by Keras name.
///
/// ```
/// use ferrokeras::layers::Activation;
/// let a: Activation = "relu".parse().unwrap();
/// assert_eq!(a, Activation::Relu);
/// assert!("swishy".parse::<Activation>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Activation {
    /// Identity (`"linear"`, Keras's default).
    #[default]
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `exp(x) / sum(exp(x))` over the last axis.
    Softmax,
    /// `x` if `x > 0` else `negative_slope * x` (Keras's function default 0.2).
    LeakyRelu(f32),
    /// Exact GELU `0.5 x (1 + erf(x / sqrt 2))` (Keras's default, `approximate=False`).
    Gelu,
    /// `x` if `x > 0` else `exp(x) - 1` (Keras's `alpha` 1).
    Elu,
    /// `scale * elu(x, alpha)` with Keras's constants (`alpha` 1.67326324, `scale` 1.05070098).
    Selu,
    /// `log(1 + exp(x))`.
    Softplus,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `x * sigmoid(x)` (`"silu"`, also named `"swish"`).
    Silu,
    /// `clip(x / 6 + 0.5, 0, 1)`.
    HardSigmoid,
    /// `x * hard_sigmoid(x)` (`"hard_silu"`, also named `"hard_swish"`).
    HardSilu,
    /// `exp(x)`.
    Exponential,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x * tanh(softplus(x))`.
    Mish,
    /// `x - log(sum(exp(x)))` over the last axis.
    LogSoftmax,
    /// `-softplus(-x)`.
    LogSigmoid,
    /// `clip(x, -1, 1)`.
    HardTanh,
    /// `x - tanh(x)`.
    TanhShrink,
    /// `x - 0.5` above 0.5, `x + 0.5` below -0.5, else 0.
    SoftShrink,
    /// `x` where `|x| > 0.5`, else 0.
    HardShrink,
    /// `(x + sqrt(x^2 + 4)) / 2`.
    Squareplus,
    /// 0 up to -1, `(x + 1)^2 / 4` between -1 and 1, `x` from 1.
    SparsePlus,
    /// 0 up to -1, `(x + 1) / 2` between -1 and 1, 1 from 1.
    SparseSigmoid,
    /// `max(0, x) + min(0, exp(x) - 1)` (Keras's `alpha` 1).
    Celu,
}

/// Every activation by its Keras name, aliases last.
const NAMES: [(&str, Activation); 29] = [
    ("linear", Activation::Linear),
    ("relu", Activation::Relu),
    ("sigmoid", Activation::Sigmoid),
    ("tanh", Activation::Tanh),
    ("softmax", Activation::Softmax),
    ("leaky_relu", Activation::LeakyRelu(0.2)),
    ("gelu", Activation::Gelu),
    ("elu", Activation::Elu),
    ("selu", Activation::Selu),
    ("softplus", Activation::Softplus),
    ("softsign", Activation::Softsign),
    ("silu", Activation::Silu),
    ("hard_sigmoid", Activation::HardSigmoid),
    ("hard_silu", Activation::HardSilu),
    ("exponential", Activation::Exponential),
    ("relu6", Activation::Relu6),
    ("mish", Activation::Mish),
    ("log_softmax", Activation::LogSoftmax),
    ("log_sigmoid", Activation::LogSigmoid),
    ("hard_tanh", Activation::HardTanh),
    ("tanh_shrink", Activation::TanhShrink),
    ("soft_shrink", Activation::SoftShrink),
    ("hard_shrink", Activation::HardShrink),
    ("squareplus", Activation::Squareplus),
    ("sparse_plus", Activation::SparsePlus),
    ("sparse_sigmoid", Activation::SparseSigmoid),
    ("celu", Activation::Celu),
    // Aliases.
    ("swish", Activation::Silu),
    ("hard_swish", Activation::HardSilu),
];

/// SELU's constants, as Keras writes them.
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

impl std::str::FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Ok(Activation::Linear);
        }
        if let Some((_, a)) = NAMES.iter().find(|(n, _)| *n == s) {
            return Ok(*a);
        }
        let known: Vec<String> = NAMES.iter().map(|(n, _)| format!("{n:?}")).collect();
        Err(Error::value(format!(
            "Could not interpret activation function identifier: {s:?}. Expected one of {}.",
            known.join(", ")
        )))
    }
}

impl Activation {
    /// Applies the function. Integer inputs are cast to float32 first, as Keras casts layer
    /// inputs to the float compute dtype.
    ///
    /// # Errors
    /// A failing tensor operation.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = &crate::ops::to_float(x)?;
        if let Some(act) = self.fused()
            && let Some(y) = crate::kernels::elementwise::activation(x, act)?
        {
            return Ok(y);
        }
        if *self == Activation::Linear {
            return Ok(x.clone());
        }
        if x.track_op()
            && let Some(y) = self.as_node(x)?
        {
            return Ok(y);
        }
        Ok(match self {
            Activation::Linear => x.clone(),
            Activation::Relu => x.relu()?,
            Activation::Sigmoid => crate::ops::sigmoid(x)?,
            Activation::Tanh => x.tanh()?,
            Activation::Softmax => crate::ops::softmax_last(x)?,
            Activation::LeakyRelu(slope) => crate::ops::leaky_relu(x, *slope)?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::LogSoftmax => crate::ops::log_softmax_last(x)?,
            other => other.eval_elementwise(x)?,
        })
    }

    /// `self(x)` from candle's ops as one node of the graph (see `tape::node`), differentiated
    /// from its output ([`Activation::backward`]); `None` for GELU.
    fn as_node(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some((y, saved)) = self.forward_saving(&x.detach())? else {
            return Ok(None);
        };
        let act = *self;
        let y = crate::tape::node(&[x], y, move |g, y, _| {
            Ok(vec![Some(act.backward(g, y, saved.as_ref())?)])
        })?;
        Ok(Some(y))
    }

    /// `self(x + bias)`, with `bias` over the last axis (one fused pass on the CPU).
    pub(crate) fn apply_with_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let x = &crate::ops::to_float(x)?;
        if let Some(act) = self.fused()
            && let Some(y) = crate::kernels::elementwise::bias_activation(x, bias, act)?
        {
            return Ok(y);
        }
        self.apply(&x.broadcast_add(bias)?)
    }

    /// Off our CPU kernels: `self(z)` of a `z` whose graph is not recorded, from candle's ops, as
    /// a graph node's value (its last op left to the node), with what [`Activation::backward`]
    /// needs besides the output (LeakyReLU's sign mask, for a slope of 0 or less); `None` for
    /// GELU, left to candle's own differentiation.
    pub(crate) fn forward_saving(&self, z: &Tensor) -> Result<Option<(NodeValue, Option<Tensor>)>> {
        use crate::ops;
        let z = &ops::to_float(z)?;
        Ok(Some(match *self {
            Activation::Linear => (NodeValue::from(z), None),
            Activation::Relu => (NodeValue::unary(Unary::Relu, z), None),
            // With a positive slope, `y` has the sign of `z`: one op on `z` and `s z` (the larger
            // of the two up to a slope of 1, the smaller above; NaN only where `z` is), and the
            // gradient's mask read from the output. A slope of 0 or less keeps the sign mask of
            // `z` (`0 * inf` is NaN, and a negative slope flips the sign).
            Activation::LeakyRelu(s) if s > 0.0 => {
                (NodeValue::extremum(s <= 1.0, z, &(z * s as f64)?)?, None)
            }
            Activation::LeakyRelu(s) => {
                let positive = z.gt(&ops::zeros_view(z)?)?;
                let y = NodeValue::select(&positive, z, &(z * s as f64)?)?;
                (y, Some(positive))
            }
            // 1 / (1 + exp(-z)), as `ops::sigmoid`.
            Activation::Sigmoid => (
                NodeValue::unary(Unary::Recip, &(z.neg()?.exp()? + 1.0)?),
                None,
            ),
            Activation::Tanh => (NodeValue::unary(Unary::Tanh, z), None),
            Activation::Softmax => (NodeValue::from(&ops::softmax_last(z)?), None),
            Activation::LogSoftmax => (NodeValue::from(&ops::log_softmax_last(z)?), None),
            Activation::Gelu => return Ok(None),
            // The rest are differentiated from their input.
            other => (
                NodeValue::from(&other.eval_elementwise(z)?),
                Some(z.clone()),
            ),
        }))
    }

    /// The gradient at the input of `self`, from the output's gradient `g`, the output `y` and
    /// what [`Activation::forward_saving`] kept. ReLU's and LeakyReLU's gradients at 0 are
    /// TensorFlow's (0, and the slope), as our CPU kernels give them.
    pub(crate) fn backward(
        &self,
        g: &Tensor,
        y: &Tensor,
        saved: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        use crate::ops::zeros_view;
        match *self {
            Activation::Linear => Ok(g.clone()),
            Activation::Relu => y.gt(&zeros_view(y)?)?.where_cond(g, &zeros_view(g)?),
            Activation::LeakyRelu(s) => match saved {
                Some(positive) => positive.where_cond(g, &(g * s as f64)?),
                // A positive slope: `y > 0` exactly where `z > 0`.
                None if s > 0.0 => y.gt(&zeros_view(y)?)?.where_cond(g, &(g * s as f64)?),
                None => {
                    candle_core::bail!("leaky_relu: the sign mask of the forward pass is missing")
                }
            },
            // g·y·(1 - y)
            Activation::Sigmoid => g * (y.affine(-1.0, 1.0)? * y)?,
            // g·(1 - y²)
            Activation::Tanh => g * y.sqr()?.affine(-1.0, 1.0)?,
            // y·(g - Σ g·y) over the last axis
            Activation::Softmax => {
                let dot = (g * y)?.sum_keepdim(candle_core::D::Minus1)?;
                y * g.broadcast_sub(&dot)?
            }
            // g - softmax·Σ g over the last axis, softmax = exp(y)
            Activation::LogSoftmax => {
                let total = g.sum_keepdim(candle_core::D::Minus1)?;
                g - y.exp()?.broadcast_mul(&total)?
            }
            Activation::Gelu => candle_core::bail!("gelu is differentiated by candle's ops"),
            other => match saved {
                Some(z) => g * other.derivative(z, y)?,
                None => {
                    candle_core::bail!("{}: the input of the forward pass is missing", other.name())
                }
            },
        }
    }

    /// The value of an elementwise activation other than ReLU, LeakyReLU, sigmoid, tanh and
    /// GELU, from candle's ops (not recorded: [`Activation::forward_saving`] makes it a node).
    fn eval_elementwise(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        use crate::ops::zeros_view;
        let z = &z.detach();
        // `max(z, 0) + log(1 + exp(-|z|))`: no overflow for large `z`.
        let softplus = |z: &Tensor| -> candle_core::Result<Tensor> {
            z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
        };
        let sigmoid = |z: &Tensor| (z.neg()?.exp()? + 1.0)?.recip();
        // `exp(min(z, 0)) - 1`, `z` where positive.
        let elu = |z: &Tensor| -> candle_core::Result<Tensor> {
            let negative = (z.minimum(0.0)?.exp()? - 1.0)?;
            z.gt(&zeros_view(z)?)?.where_cond(z, &negative)
        };
        let hard_sigmoid = |z: &Tensor| z.affine(1.0 / 6.0, 0.5)?.clamp(0.0, 1.0);
        match *self {
            Activation::Elu => elu(z),
            Activation::Selu => {
                let negative = (z.minimum(0.0)?.exp()? - 1.0)?.affine(SELU_ALPHA, 0.0)?;
                z.gt(&zeros_view(z)?)?
                    .where_cond(z, &negative)?
                    .affine(SELU_SCALE, 0.0)
            }
            Activation::Softplus => softplus(z),
            Activation::Softsign => z / (z.abs()? + 1.0)?,
            Activation::Silu => z * sigmoid(z)?,
            Activation::HardSigmoid => hard_sigmoid(z),
            Activation::HardSilu => z * hard_sigmoid(z)?,
            Activation::Exponential => z.exp(),
            Activation::Relu6 => z.clamp(0.0, 6.0),
            Activation::Mish => z * softplus(z)?.tanh()?,
            Activation::LogSigmoid => softplus(&z.neg()?)?.neg(),
            Activation::HardTanh => z.clamp(-1.0, 1.0),
            Activation::TanhShrink => z - z.tanh()?,
            Activation::SoftShrink => {
                let kept = z.abs()?.gt(0.5)?;
                let shrunk = (z - z.sign()?.affine(0.5, 0.0)?)?;
                kept.where_cond(&shrunk, &zeros_view(z)?)
            }
            Activation::HardShrink => z.abs()?.gt(0.5)?.where_cond(z, &zeros_view(z)?),
            Activation::Squareplus => (z + (z.sqr()? + 4.0)?.sqrt()?)?.affine(0.5, 0.0),
            Activation::SparsePlus => {
                let middle = (z + 1.0)?.sqr()?.affine(0.25, 0.0)?;
                let above = z.ge(1.0)?.where_cond(z, &middle)?;
                z.le(-1.0)?.where_cond(&zeros_view(z)?, &above)
            }
            Activation::SparseSigmoid => z.affine(0.5, 0.5)?.clamp(0.0, 1.0),
            Activation::Celu => elu(z),
            other => candle_core::bail!("{} is not evaluated elementwise here", other.name()),
        }
    }

    /// `d self(z) / dz` of an activation of [`Activation::eval_elementwise`], from its input `z`
    /// and output `y`. At the corners, JAX's values (the backend of Keras's reference values):
    /// ReLU6 and hard sigmoid have slope 0 there, hard tanh 1, sparse sigmoid 1/4.
    fn derivative(&self, z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        use crate::ops::zeros_view;
        let ones = || z.ones_like();
        let zeros = || zeros_view(z);
        let sigmoid = |z: &Tensor| (z.neg()?.exp()? + 1.0)?.recip();
        // 1 strictly inside (lo, hi), else 0.
        let inside = |lo: f64, hi: f64| -> candle_core::Result<Tensor> {
            (z.gt(lo)? * z.lt(hi)?)?.to_dtype(z.dtype())
        };
        match *self {
            // 1 above 0, else exp(z) (= y + 1).
            Activation::Elu | Activation::Celu => z
                .gt(&zeros()?)?
                .where_cond(&ones()?, &z.minimum(0.0)?.exp()?),
            Activation::Selu => z.gt(&zeros()?)?.where_cond(
                &ones()?.affine(SELU_SCALE, 0.0)?,
                &z.minimum(0.0)?
                    .exp()?
                    .affine(SELU_SCALE * SELU_ALPHA, 0.0)?,
            ),
            Activation::Softplus => sigmoid(z),
            // 1 / (1 + |z|)^2
            Activation::Softsign => (z.abs()? + 1.0)?.sqr()?.recip(),
            // σ (1 + z (1 - σ))
            Activation::Silu => {
                let s = sigmoid(z)?;
                &s * ((z * s.affine(-1.0, 1.0)?)? + 1.0)?
            }
            Activation::HardSigmoid => inside(-3.0, 3.0)?.affine(1.0 / 6.0, 0.0),
            // hard_sigmoid(z) + z·hard_sigmoid'(z)
            Activation::HardSilu => {
                let hs = z.affine(1.0 / 6.0, 0.5)?.clamp(0.0, 1.0)?;
                hs + (z * inside(-3.0, 3.0)?)?.affine(1.0 / 6.0, 0.0)?
            }
            Activation::Exponential => Ok(y.clone()),
            Activation::Relu6 => inside(0.0, 6.0),
            // t + z (1 - t²) σ, t = tanh(softplus(z)) = y / z where z ≠ 0
            Activation::Mish => {
                let sp = (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                let t = sp.tanh()?;
                let slope = ((z * t.sqr()?.affine(-1.0, 1.0)?)? * sigmoid(z)?)?;
                t + slope
            }
            // σ(-z)
            Activation::LogSigmoid => sigmoid(&z.neg()?),
            // 1 on [-1, 1], its ends included (JAX's selection).
            Activation::HardTanh => (z.ge(-1.0)? * z.le(1.0)?)?.to_dtype(z.dtype()),
            // tanh²(z)
            Activation::TanhShrink => z.tanh()?.sqr(),
            Activation::SoftShrink | Activation::HardShrink => {
                z.abs()?.gt(0.5)?.to_dtype(z.dtype())
            }
            // (1 + z / sqrt(z² + 4)) / 2
            Activation::Squareplus => (z / (z.sqr()? + 4.0)?.sqrt()?)?.affine(0.5, 0.5),
            Activation::SparsePlus => {
                let middle = (z + 1.0)?.affine(0.5, 0.0)?;
                let above = z.ge(1.0)?.where_cond(&ones()?, &middle)?;
                z.le(-1.0)?.where_cond(&zeros()?, &above)
            }
            // 1/2 inside, and the mean of the one-sided slopes (1/4) at the ends, as JAX's clip.
            Activation::SparseSigmoid => {
                let ends = (z.eq(-1.0)? + z.eq(1.0)?)?.to_dtype(z.dtype())?;
                inside(-1.0, 1.0)?.affine(0.5, 0.0)? + ends.affine(0.25, 0.0)?
            }
            other => candle_core::bail!("{} has no elementwise derivative here", other.name()),
        }
    }

    /// The fused kernel's form of this activation, if it has one.
    pub(crate) fn fused(&self) -> Option<crate::kernels::elementwise::Act> {
        use crate::kernels::elementwise::Act;
        Some(match *self {
            Activation::Linear => Act::Linear,
            Activation::Relu => Act::Relu,
            Activation::Sigmoid => Act::Sigmoid,
            Activation::Tanh => Act::Tanh,
            Activation::LeakyRelu(s) => Act::Leaky(s),
            _ => return None,
        })
    }

    /// The Keras name.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::LeakyRelu(_) => "leaky_relu",
            other => NAMES
                .iter()
                .find(|(_, a)| a == other)
                .map_or("linear", |(n, _)| n),
        }
    }
}

/// Applies an [`Activation`] as a layer (Keras's `layers.Activation("relu")`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{ActivationLayer, Layer};
/// let mut l = ActivationLayer::new("relu").unwrap();
/// let y = l.call(&Tensor::new(&[[-1f32, 2.0]], &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![0.0, 2.0]]);
/// ```
pub struct ActivationLayer {
    name: String,
    activation: Activation,
    class: &'static str,
    /// A policy of its own (`dtype(...)`), whose compute dtype the input is cast to first.
    policy: Option<crate::mixed_precision::DTypePolicy>,
}

impl ActivationLayer {
    /// A layer applying the named activation.
    ///
    /// # Errors
    /// An unknown activation name.
    pub fn new(activation: &str) -> Result<Self> {
        Ok(Self::from_activation(activation.parse()?))
    }
    /// A layer applying `activation`.
    pub fn from_activation(activation: Activation) -> Self {
        Self {
            name: unique_name("activation"),
            activation,
            class: "Activation",
            policy: None,
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    /// A dtype policy of its own, by name: the input is cast to its compute dtype first. Under
    /// mixed precision, `"float32"` on the last activation keeps the model's output in float32,
    /// as Keras's guide advises (`Activation("softmax", dtype="float32")`).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use ferrokeras::layers::{ActivationLayer, Layer};
    /// let mut l = ActivationLayer::new("softmax")?.dtype("float32")?;
    /// let x = Tensor::zeros((1, 4), DType::BF16, &Device::Cpu)?;
    /// assert_eq!(l.call(&x, false)?.dtype(), DType::F32);
    /// # Ok::<(), ferrokeras::Error>(())
    /// ```
    ///
    /// # Errors
    /// An unknown policy name.
    pub fn dtype(mut self, name: &str) -> Result<Self> {
        self.policy = Some(crate::mixed_precision::DTypePolicy::new(name)?);
        Ok(self)
    }
}

impl Layer for ActivationLayer {
    super::passes_mask!();
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        self.class
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        match &self.policy {
            Some(p) => self.activation.apply(&p.cast(x)?),
            None => self.activation.apply(x),
        }
    }
    fn dtype_policy_name(&self) -> Option<String> {
        self.policy.as_ref().map(|p| p.name().to_string())
    }
    fn as_activation(&self) -> Option<Activation> {
        // With a policy of its own the cast comes first: not fused into the previous layer.
        self.policy.is_none().then_some(self.activation)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(match (self.class, self.activation) {
            ("ReLU", _) => serde_json::json!({"name": self.name}),
            ("LeakyReLU", Activation::LeakyRelu(s)) => serde_json::json!({
                "name": self.name,
                "negative_slope": super::config::f32_json(s),
            }),
            _ => serde_json::json!({
                "name": self.name,
                "activation": super::config::activation_json(self.activation),
            }),
        })
    }
}

/// `layers.ReLU()`.
///
/// ```
/// use ferrokeras::layers::{Layer, ReLU};
/// assert_eq!(ReLU::new().class_name(), "ReLU");
/// ```
pub struct ReLU(ActivationLayer);

impl ReLU {
    /// A ReLU layer.
    pub fn new() -> Self {
        ReLU(ActivationLayer {
            name: unique_name("re_lu"),
            activation: Activation::Relu,
            class: "ReLU",
            policy: None,
        })
    }
    /// Overrides the generated name.
    pub fn named(self, name: impl Into<String>) -> Self {
        ReLU(self.0.named(name))
    }
}

impl Default for ReLU {
    fn default() -> Self {
        Self::new()
    }
}

/// `layers.LeakyReLU(negative_slope)`; Keras's default slope is 0.3 (the guide passes `alpha=0.2`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, LeakyReLU};
/// let mut l = LeakyReLU::new(0.2);
/// let y = l.call(&Tensor::new(&[-1f32, 2.0], &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.to_vec1::<f32>().unwrap(), vec![-0.2, 2.0]);
/// ```
pub struct LeakyReLU(ActivationLayer);

impl LeakyReLU {
    /// A leaky ReLU with the given negative slope (`alpha` in older Keras).
    pub fn new(negative_slope: f32) -> Self {
        LeakyReLU(ActivationLayer {
            name: unique_name("leaky_re_lu"),
            activation: Activation::LeakyRelu(negative_slope),
            class: "LeakyReLU",
            policy: None,
        })
    }
    /// Overrides the generated name.
    pub fn named(self, name: impl Into<String>) -> Self {
        LeakyReLU(self.0.named(name))
    }
}

impl Default for LeakyReLU {
    fn default() -> Self {
        Self::new(0.3)
    }
}

macro_rules! delegate_layer {
    ($t:ty) => {
        impl Layer for $t {
            super::passes_mask!();
            fn name(&self) -> &str {
                self.0.name()
            }
            fn class_name(&self) -> &str {
                self.0.class_name()
            }
            fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
                self.0.call(x, training)
            }
            fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
                self.0.compute_output_shape(input_shape)
            }
            fn config(&self) -> Option<serde_json::Value> {
                self.0.config()
            }
            fn as_activation(&self) -> Option<Activation> {
                self.0.as_activation()
            }
            fn dtype_policy_name(&self) -> Option<String> {
                self.0.dtype_policy_name()
            }
        }
    };
}
delegate_layer!(ReLU);
delegate_layer!(LeakyReLU);

/// Keras's `layers.Softmax`: the softmax over `axis` (the last by default; counted with the
/// batch axis, negative from the end).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, Softmax};
/// let x = Tensor::new(&[[[0f32, 0.0], [2.0, 0.0]]], &Device::Cpu).unwrap();
/// let y = Softmax::new().axis(1).call(&x, false).unwrap();
/// let sums = y.sum(1).unwrap().to_vec2::<f32>().unwrap();
/// assert!(sums[0].iter().all(|s| (s - 1.0).abs() < 1e-6)); // each column sums to 1
/// ```
pub struct Softmax {
    name: String,
    axis: isize,
}

impl Softmax {
    /// The softmax over the last axis.
    pub fn new() -> Self {
        Self {
            name: unique_name("softmax"),
            axis: -1,
        }
    }
    /// The axis to normalize over.
    pub fn axis(mut self, axis: isize) -> Self {
        self.axis = axis;
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Default for Softmax {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer for Softmax {
    fn call_masked(&mut self, x: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
        super::refuses_mask(self, mask)?;
        self.call(x, training)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Softmax"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        let rank = x.rank();
        let a = if self.axis < 0 {
            rank as isize + self.axis
        } else {
            self.axis
        };
        if a < 0 || a >= rank as isize {
            return Err(Error::value(format!(
                "layer \"{}\": axis {} is out of range for inputs of rank {rank} (batch included); expected 0..{rank} or a negative index",
                self.name, self.axis
            )));
        }
        let a = a as usize;
        if a + 1 == rank {
            return crate::ops::softmax_last(x);
        }
        let y = crate::ops::softmax_last(&x.transpose(a, rank - 1)?.contiguous()?)?;
        Ok(y.transpose(a, rank - 1)?.contiguous()?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({"name": self.name, "axis": self.axis}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GradientTape, Variable};
    use candle_core::Device;

    /// A node's backward pass reads the node's output as a value: the gradients of activations
    /// differentiated from their output record no graph (a recorded gradient would make the
    /// next convolution's gradient record its op, and copy its result, off the CPU kernels).
    #[test]
    fn node_gradients_record_no_graph() {
        let z = Tensor::new(&[[-1.5f32, 0.5, 2.0], [0.0, -0.25, 1.0]], &Device::Cpu).unwrap();
        let acts = NAMES
            .iter()
            .map(|(_, a)| *a)
            .chain([Activation::LeakyRelu(-0.2)])
            .filter(|a| *a != Activation::Gelu);
        for act in acts {
            let x = Variable::new("z", &z, true).unwrap();
            let y = act.as_node(x.as_tensor()).unwrap().unwrap();
            let loss = y.sqr().unwrap().sum_all().unwrap();
            let g = GradientTape::gradient(&loss, std::slice::from_ref(&x)).unwrap();
            assert!(
                !g[0].track_op(),
                "{}: the gradient records a graph",
                act.name()
            );
        }
    }

    /// Every activation runs in bfloat16 and float16 (mixed precision) and keeps the dtype, with
    /// its gradient.
    #[test]
    fn activations_run_in_half_precision() {
        let z = Tensor::new(&[[-1.5f32, 0.5, 2.0], [0.0, -0.25, 1.0]], &Device::Cpu).unwrap();
        for dt in [candle_core::DType::BF16, candle_core::DType::F16] {
            for (name, act) in NAMES {
                let x = Variable::new("z", &z.to_dtype(dt).unwrap(), true).unwrap();
                let y = act.apply(x.as_tensor()).unwrap();
                assert_eq!(y.dtype(), dt, "{name}");
                let want = act.apply(&z).unwrap().to_vec2::<f32>().unwrap();
                let got = y.to_dtype(candle_core::DType::F32).unwrap();
                for (g, w) in got
                    .to_vec2::<f32>()
                    .unwrap()
                    .iter()
                    .flatten()
                    .zip(want.iter().flatten())
                {
                    assert!(
                        (g - w).abs() <= 0.02 * (1.0 + w.abs()),
                        "{name} {dt:?}: {g} vs {w}"
                    );
                }
                let loss = y.sum_all().unwrap();
                let g = GradientTape::gradient(&loss, std::slice::from_ref(&x)).unwrap();
                assert_eq!(g[0].dtype(), dt, "{name}");
            }
        }
    }

    /// LeakyReLU from candle's ops (the path off our CPU kernels) is one node: for a positive
    /// slope the larger (slope up to 1) or the smaller (above 1) of `z` and `s z`, differentiated
    /// from the output's sign; for a slope of 0 or less a selection by the sign of `z`. Every slope
    /// gives TensorFlow's `z > 0 ? z : s z` and, for the gradient, `z > 0 ? g : s g` (the slope at
    /// 0), infinities and NaN included.
    #[test]
    fn leaky_relu_node_is_the_selection_for_every_slope() {
        let z = [
            -3.0f32,
            -1e-30,
            -f32::MIN_POSITIVE,
            -0.0,
            0.0,
            1e-30,
            0.7,
            5.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let w: Vec<f32> = (0..z.len()).map(|i| 0.5 + i as f32 * 0.37).collect();
        let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
        for s in [-0.5f32, 0.0, 1e-3, 0.2, 0.3, 1.0, 2.5] {
            let act = Activation::LeakyRelu(s);
            let x = Variable::new("z", &Tensor::new(&z, &Device::Cpu).unwrap(), true).unwrap();
            let y = act.as_node(x.as_tensor()).unwrap().unwrap();
            let w_t = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
            let loss = (&y * &w_t).unwrap().sum_all().unwrap();
            let g = GradientTape::gradient(&loss, std::slice::from_ref(&x)).unwrap();
            let (y, g) = (y.to_vec1::<f32>().unwrap(), g[0].to_vec1::<f32>().unwrap());
            for i in 0..z.len() {
                let positive = z[i] > 0.0;
                let want_y = if positive { z[i] } else { z[i] * s };
                let want_g = if positive { w[i] } else { w[i] * s };
                assert!(
                    same(y[i], want_y),
                    "slope {s}, z {}: y {} against {want_y}",
                    z[i],
                    y[i]
                );
                assert!(
                    same(g[i], want_g),
                    "slope {s}, z {}: g {} against {want_g}",
                    z[i],
                    g[i]
                );
            }
        }
    }
}
