//! Optimizers with Keras 3 update rules: SGD (momentum, Nesterov), Adam (AMSGrad), AdamW, RMSprop.
//!
//! An optimizer keeps its slots (momentums, velocities) per variable, created on the first update of
//! that variable, and counts `iterations`. A learning rate is fixed or a [`LearningRateSchedule`]
//! evaluated at the current iteration, as Keras does.

mod schedules;

pub use schedules::{ExponentialDecay, LearningRateSchedule};

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Tensor, TensorId};

use crate::tape::Variable;
use crate::{Error, Result};

/// A learning rate: a constant or a schedule of the iteration count.
#[derive(Clone)]
pub enum LearningRate {
    /// A fixed value.
    Constant(f64),
    /// A function of the iteration count.
    Schedule(Arc<dyn LearningRateSchedule>),
}

impl LearningRate {
    /// The value at `step` (the optimizer's `iterations` before the update).
    pub fn at(&self, step: u64) -> f64 {
        match self {
            LearningRate::Constant(v) => *v,
            LearningRate::Schedule(s) => s.at(step),
        }
    }
}

impl From<f64> for LearningRate {
    fn from(v: f64) -> Self {
        LearningRate::Constant(v)
    }
}

impl<S: LearningRateSchedule + 'static> From<S> for LearningRate {
    fn from(s: S) -> Self {
        LearningRate::Schedule(Arc::new(s))
    }
}

/// Updates variables from their gradients.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::{Variable, optimizers::{Optimizer, Sgd}};
/// let v = Variable::new("w", &Tensor::new(&[1f32], &Device::Cpu).unwrap(), true).unwrap();
/// let mut sgd = Sgd::new(0.1);
/// sgd.apply(&[Tensor::new(&[2f32], &Device::Cpu).unwrap()], &[v.clone()]).unwrap();
/// assert!((v.value().to_vec1::<f32>().unwrap()[0] - 0.8).abs() < 1e-6);
/// assert_eq!(sgd.iterations(), 1);
/// ```
pub trait Optimizer: Send {
    /// The Keras name (`"adam"`).
    fn name(&self) -> &str;
    /// Applies one update: `grads[i]` to `vars[i]` (Keras 3's `optimizer.apply(grads, vars)`).
    ///
    /// # Errors
    /// Different numbers of gradients and variables, or a gradient whose shape differs from its
    /// variable's.
    fn apply(&mut self, grads: &[Tensor], vars: &[Variable]) -> Result<()>;
    /// Keras's `apply_gradients(zip(grads, vars))`.
    ///
    /// # Errors
    /// As [`Optimizer::apply`].
    fn apply_gradients(&mut self, grads_and_vars: &[(Tensor, Variable)]) -> Result<()> {
        let (g, v): (Vec<Tensor>, Vec<Variable>) = grads_and_vars.iter().cloned().unzip();
        self.apply(&g, &v)
    }
    /// The learning rate for the next update.
    fn learning_rate(&self) -> f64;
    /// Replaces the learning rate with a constant.
    fn set_learning_rate(&mut self, lr: f64);
    /// Number of updates applied so far.
    fn iterations(&self) -> u64;
}

/// Per-variable state shared by every optimizer.
struct Base {
    lr: LearningRate,
    iterations: u64,
    slots: HashMap<TensorId, Vec<Tensor>>,
}

impl Base {
    fn new(lr: LearningRate) -> Self {
        Self {
            lr,
            iterations: 0,
            slots: HashMap::new(),
        }
    }

    /// Runs `update(grad, value, slots, lr, step)` for every pair, then counts one iteration.
    fn apply(
        &mut self,
        name: &str,
        n_slots: usize,
        grads: &[Tensor],
        vars: &[Variable],
        mut update: impl FnMut(&Tensor, &Tensor, &mut [Tensor], f64, u64) -> Result<Tensor>,
    ) -> Result<()> {
        if grads.len() != vars.len() {
            return Err(Error::value(format!(
                "{name}: received {} gradients for {} variables; pass one gradient per variable, in the same order",
                grads.len(),
                vars.len()
            )));
        }
        let lr = self.lr.at(self.iterations);
        let step = self.iterations + 1;
        for (g, v) in grads.iter().zip(vars) {
            if g.dims() != v.shape().dims() {
                return Err(Error::value(format!(
                    "{name}: the gradient for variable `{}` has shape {:?}, but the variable has shape {:?}",
                    v.name(),
                    g.dims(),
                    v.shape().dims()
                )));
            }
            let value = v.value();
            let g = g.detach().to_dtype(value.dtype())?;
            let slots = match self.slots.get_mut(&v.id()) {
                Some(s) => s,
                None => {
                    let init = (0..n_slots)
                        .map(|_| value.zeros_like())
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    self.slots.entry(v.id()).or_insert(init)
                }
            };
            let new_value = update(&g, &value, slots, lr, step)?;
            v.assign(&new_value)?;
        }
        self.iterations += 1;
        Ok(())
    }
}

macro_rules! optimizer_common {
    () => {
        fn learning_rate(&self) -> f64 {
            self.base.lr.at(self.base.iterations)
        }
        fn set_learning_rate(&mut self, lr: f64) {
            self.base.lr = LearningRate::Constant(lr);
        }
        fn iterations(&self) -> u64 {
            self.base.iterations
        }
    };
}

/// Stochastic gradient descent with optional momentum and Nesterov momentum (Keras's `SGD`).
///
/// `m = momentum m - lr g`; `w += m` (or `w += momentum m - lr g` with Nesterov); plain `w -= lr g`
/// without momentum.
///
/// ```
/// use ferrokeras::optimizers::{Optimizer, Sgd};
/// let sgd = Sgd::new(0.01).momentum(0.9).nesterov(true);
/// assert_eq!(sgd.learning_rate(), 0.01);
/// ```
pub struct Sgd {
    base: Base,
    momentum: f64,
    nesterov: bool,
}

impl Sgd {
    /// SGD with a learning rate (Keras default 0.01) or a schedule.
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            base: Base::new(learning_rate.into()),
            momentum: 0.0,
            nesterov: false,
        }
    }
    /// Momentum factor in `[0, 1]`.
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }
    /// Whether to use Nesterov momentum.
    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &str {
        "SGD"
    }
    fn apply(&mut self, grads: &[Tensor], vars: &[Variable]) -> Result<()> {
        let (mom, nesterov) = (self.momentum, self.nesterov);
        let n_slots = usize::from(mom > 0.0);
        self.base
            .apply("SGD", n_slots, grads, vars, |g, w, slots, lr, _| {
                if mom > 0.0 {
                    let m = ((&slots[0] * mom)? - (g * lr)?)?;
                    slots[0] = m.clone();
                    if nesterov {
                        Ok(((w + (&m * mom)?)? - (g * lr)?)?)
                    } else {
                        Ok((w + m)?)
                    }
                } else {
                    Ok((w - (g * lr)?)?)
                }
            })
    }
    optimizer_common!();
}

/// Adam (Keras's `Adam`, with `amsgrad`), and with `weight_decay` AdamW.
///
/// ```
/// use ferrokeras::optimizers::{Adam, Optimizer};
/// assert_eq!(Adam::new(1e-3).name(), "adam");
/// assert_eq!(Adam::adamw(1e-3, 0.004).name(), "adamw");
/// ```
pub struct Adam {
    base: Base,
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    amsgrad: bool,
    weight_decay: f64,
    name: &'static str,
}

impl Adam {
    /// Adam with Keras defaults (`beta_1` 0.9, `beta_2` 0.999, `epsilon` 1e-7).
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            base: Base::new(learning_rate.into()),
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            amsgrad: false,
            weight_decay: 0.0,
            name: "adam",
        }
    }
    /// AdamW: Adam with decoupled weight decay `w -= w * weight_decay * lr` before each update
    /// (Keras default `weight_decay` 0.004).
    pub fn adamw(learning_rate: impl Into<LearningRate>, weight_decay: f64) -> Self {
        let mut a = Self::new(learning_rate);
        a.weight_decay = weight_decay;
        a.name = "adamw";
        a
    }
    /// First-moment decay.
    pub fn beta_1(mut self, v: f64) -> Self {
        self.beta_1 = v;
        self
    }
    /// Second-moment decay.
    pub fn beta_2(mut self, v: f64) -> Self {
        self.beta_2 = v;
        self
    }
    /// Denominator constant.
    pub fn epsilon(mut self, v: f64) -> Self {
        self.epsilon = v;
        self
    }
    /// Whether to use the AMSGrad variant.
    pub fn amsgrad(mut self, v: bool) -> Self {
        self.amsgrad = v;
        self
    }
}

/// AdamW under its own name (Keras's `AdamW`).
///
/// ```
/// use ferrokeras::optimizers::{AdamW, Optimizer};
/// assert_eq!(AdamW::new(1e-3, 0.004).name(), "adamw");
/// ```
pub struct AdamW;

impl AdamW {
    /// An [`Adam`] with decoupled weight decay.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(learning_rate: impl Into<LearningRate>, weight_decay: f64) -> Adam {
        Adam::adamw(learning_rate, weight_decay)
    }
}

impl Optimizer for Adam {
    fn name(&self) -> &str {
        self.name
    }
    fn apply(&mut self, grads: &[Tensor], vars: &[Variable]) -> Result<()> {
        let (b1, b2, eps, ams, wd) = (
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self.amsgrad,
            self.weight_decay,
        );
        let n_slots = if ams { 3 } else { 2 };
        self.base
            .apply(self.name, n_slots, grads, vars, |g, w, s, lr, step| {
                let w = if wd > 0.0 {
                    (w - (w * (wd * lr))?)?
                } else {
                    w.clone()
                };
                let t = step as f64;
                let alpha = lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t));
                let m = (&s[0] + ((g - &s[0])? * (1.0 - b1))?)?;
                let v = (&s[1] + ((g.sqr()? - &s[1])? * (1.0 - b2))?)?;
                s[0] = m.clone();
                s[1] = v.clone();
                let v = if ams {
                    let vh = s[2].maximum(&v)?;
                    s[2] = vh.clone();
                    vh
                } else {
                    v
                };
                Ok((&w - ((m * alpha)? / (v.sqrt()? + eps)?)?)?)
            })
    }
    optimizer_common!();
}

/// RMSprop (Keras's `RMSprop`: `rho` 0.9, `epsilon` 1e-7 inside the square root, optional momentum
/// and centering).
///
/// ```
/// use ferrokeras::optimizers::{Optimizer, RmsProp};
/// assert_eq!(RmsProp::new(1e-3).rho(0.9).centered(true).name(), "rmsprop");
/// ```
pub struct RmsProp {
    base: Base,
    rho: f64,
    momentum: f64,
    epsilon: f64,
    centered: bool,
}

impl RmsProp {
    /// RMSprop with Keras defaults.
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            base: Base::new(learning_rate.into()),
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            centered: false,
        }
    }
    /// Discount of the squared-gradient average.
    pub fn rho(mut self, v: f64) -> Self {
        self.rho = v;
        self
    }
    /// Momentum factor.
    pub fn momentum(mut self, v: f64) -> Self {
        self.momentum = v;
        self
    }
    /// Denominator constant.
    pub fn epsilon(mut self, v: f64) -> Self {
        self.epsilon = v;
        self
    }
    /// Normalize by the variance estimate instead of the second moment.
    pub fn centered(mut self, v: bool) -> Self {
        self.centered = v;
        self
    }
}

impl Optimizer for RmsProp {
    fn name(&self) -> &str {
        "rmsprop"
    }
    fn apply(&mut self, grads: &[Tensor], vars: &[Variable]) -> Result<()> {
        let (rho, mom, eps, centered) = (self.rho, self.momentum, self.epsilon, self.centered);
        // slots: velocity, momentum, average gradient
        self.base
            .apply("rmsprop", 3, grads, vars, |g, w, s, lr, _| {
                let vel = ((&s[0] * rho)? + (g.sqr()? * (1.0 - rho))?)?;
                s[0] = vel.clone();
                let denom = if centered {
                    let avg = ((&s[2] * rho)? + (g * (1.0 - rho))?)?;
                    s[2] = avg.clone();
                    ((vel - avg.sqr()?)? + eps)?
                } else {
                    (vel + eps)?
                };
                let increment = ((g * lr)? / denom.sqrt()?)?;
                if mom > 0.0 {
                    let m = ((&s[1] * mom)? + increment)?;
                    s[1] = m.clone();
                    Ok((w - m)?)
                } else {
                    Ok((w - increment)?)
                }
            })
    }
    optimizer_common!();
}

/// Resolves an optimizer shorthand with Keras's default settings (`"adam"`: learning rate 0.001,
/// `"sgd"`: 0.01, `"rmsprop"`: 0.001, `"adamw"`: 0.001 with weight decay 0.004).
///
/// ```
/// let o = ferrokeras::optimizers::get("adam").unwrap();
/// assert_eq!(o.learning_rate(), 0.001);
/// assert!(ferrokeras::optimizers::get("adamm").is_err());
/// ```
///
/// # Errors
/// An unknown name.
pub fn get(name: &str) -> Result<Box<dyn Optimizer>> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "adam" => Box::new(Adam::new(0.001)),
        "adamw" => Box::new(Adam::adamw(0.001, 0.004)),
        "sgd" => Box::new(Sgd::new(0.01)),
        "rmsprop" => Box::new(RmsProp::new(0.001)),
        _ => {
            return Err(Error::value(format!(
                "Could not interpret optimizer identifier: {name:?}. Expected one of \"adam\", \"adamw\", \"sgd\", \"rmsprop\", or an `Optimizer` object."
            )));
        }
    })
}
