//! Optimizers with Keras 3 update rules: SGD (momentum, Nesterov), Adam (AMSGrad), AdamW, RMSprop.
//!
//! An optimizer keeps its slots (momentums, velocities) per variable, created on the first update of
//! that variable, and counts `iterations`. A learning rate is fixed or a [`LearningRateSchedule`]
//! evaluated at the current iteration, as Keras does.
//!
//! Every optimizer also takes Keras's `BaseOptimizer` options as builder methods, implemented once
//! for all of them: gradient clipping (`clipnorm`, `clipvalue`, `global_clipnorm`), gradient
//! accumulation (`gradient_accumulation_steps`) and an exponential moving average of the variables
//! (`use_ema`, `ema_momentum`, `ema_overwrite_frequency`, [`Optimizer::finalize_variable_values`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use ferrokeras::Variable;
//! use ferrokeras::optimizers::{Adam, CosineDecay, Optimizer};
//! let schedule = CosineDecay::new(0.0, 100).unwrap().warmup_target(1e-3).warmup_steps(10);
//! let mut opt = Adam::new(schedule).global_clipnorm(1.0).use_ema(true);
//! let w = Variable::new("w", &Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(), true).unwrap();
//! opt.apply(&[Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap()], &[w.clone()]).unwrap();
//! opt.finalize_variable_values(&[w]).unwrap();
//! ```

mod base;
mod loss_scale;
mod schedules;

pub use loss_scale::LossScaleOptimizer;

pub use schedules::{
    CosineDecay, ExponentialDecay, InverseTimeDecay, LearningRateSchedule, PiecewiseConstantDecay,
    PolynomialDecay,
};

use std::sync::Arc;

use candle_core::Tensor;

use crate::tape::Variable;
use crate::{Error, Result};
use base::{Base, FlatSlots, offsets};

/// A learning rate: a constant or a schedule of the iteration count. Optimizers take either
/// (`Adam::new(1e-3)`, `Adam::new(ExponentialDecay::new(1e-3, 1000, 0.9)?)`).
///
/// ```
/// use ferrokeras::optimizers::{InverseTimeDecay, LearningRate};
/// assert_eq!(LearningRate::from(0.01).at(7), 0.01);
/// let lr = LearningRate::from(InverseTimeDecay::new(0.1, 1, 1.0).unwrap());
/// assert!((lr.at(1) - 0.05).abs() < 1e-12);
/// ```
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
    /// Sets the learning rate (Keras's `optimizer.learning_rate = lr`), as `LearningRateScheduler`
    /// and `ReduceLROnPlateau` do.
    ///
    /// ```
    /// use ferrokeras::optimizers::{Adam, ExponentialDecay, Optimizer};
    /// let mut adam = Adam::new(1e-3);
    /// adam.set_learning_rate(1e-4).unwrap();
    /// assert_eq!(adam.learning_rate(), 1e-4);
    /// let mut scheduled = Adam::new(ExponentialDecay::new(1e-3, 100, 0.9).unwrap());
    /// assert!(scheduled.set_learning_rate(1e-4).unwrap_err().to_string().contains("not settable"));
    /// ```
    ///
    /// # Errors
    /// An optimizer built with a schedule, as in Keras: its rate follows the schedule.
    fn set_learning_rate(&mut self, lr: f64) -> Result<()>;
    /// Number of updates applied so far (Keras's `optimizer.iterations`). With
    /// `gradient_accumulation_steps(n)` this is the number of `apply` calls divided by `n`.
    fn iterations(&self) -> u64;
    /// How many values the optimizer's variables hold once it has applied an update, as Keras
    /// counts `optimizer.variables` for the summary's "Optimizer params" line: the iteration
    /// count, the learning rate (unless a schedule), and every slot, accumulator and average.
    /// `None` before the first update, or for an optimizer that does not say (the default).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::Variable;
    /// use ferrokeras::optimizers::{Adam, Optimizer};
    /// let w = Variable::new("w", &Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu)?, true)?;
    /// let mut adam = Adam::new(1e-3);
    /// assert_eq!(adam.variable_count(), None);
    /// adam.apply(&[Tensor::ones((4, 3), candle_core::DType::F32, &Device::Cpu)?], &[w])?;
    /// assert_eq!(adam.variable_count(), Some(2 + 2 * 12)); // iterations, rate, m and v
    /// # Ok::<(), ferrokeras::Error>(())
    /// ```
    fn variable_count(&self) -> Option<usize> {
        None
    }
    /// The optimizer's state for checkpoints, sorted by name: `("iterations", scalar)` (the raw
    /// number of `apply` calls, Keras's `optimizer._iterations`) and one
    /// `("{variable name}/{slot name}", tensor)` per slot (e.g. `"dense/kernel/m"`), including
    /// `"{variable}/accumulator"` with gradient accumulation and `"{variable}/ema"` with `use_ema`.
    ///
    /// # Errors
    /// Only if a scalar cannot be allocated.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    /// Restores a [`Optimizer::state`] for `vars` (matched by variable name). Nothing changes when
    /// it fails.
    ///
    /// # Errors
    /// An entry for a variable not in `vars`, of the wrong shape, an unknown slot, or an
    /// accumulator / moving average for an optimizer that does not keep one.
    fn load_state(&mut self, state: &[(String, Tensor)], vars: &[Variable]) -> Result<()> {
        let _ = vars;
        if state.is_empty() {
            Ok(())
        } else {
            Err(Error::value(format!(
                "optimizer `{}` keeps no state, but a state with {} entries was given",
                self.name(),
                state.len()
            )))
        }
    }
    /// Keras's `finalize_variable_values`: the last step of training. With `use_ema(true)` each of
    /// `vars` takes its moving average (Keras's `fit` calls this after the last epoch); otherwise
    /// nothing happens.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::{Variable, optimizers::{Optimizer, Sgd}};
    /// let w = Variable::new("w", &Tensor::new(&[0f32], &Device::Cpu).unwrap(), true).unwrap();
    /// let mut sgd = Sgd::new(1.0).use_ema(true).ema_momentum(0.5);
    /// for _ in 0..2 {
    ///     sgd.apply(&[Tensor::new(&[-1f32], &Device::Cpu).unwrap()], &[w.clone()]).unwrap();
    /// }
    /// // w went 0 -> 1 -> 2; the average is 1 (first value), then 0.5 * 1 + 0.5 * 2
    /// sgd.finalize_variable_values(&[w.clone()]).unwrap();
    /// assert_eq!(w.value().to_vec1::<f32>().unwrap(), vec![1.5]);
    /// ```
    ///
    /// # Errors
    /// Only if a value cannot be assigned.
    fn finalize_variable_values(&mut self, vars: &[Variable]) -> Result<()> {
        let _ = vars;
        Ok(())
    }
    /// Swaps each of `vars` with its moving average (`use_ema`), as Keras's `SwapEMAWeights`
    /// callback does around evaluation; swapping twice restores both.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::Variable;
    /// use ferrokeras::optimizers::{Optimizer, Sgd};
    /// let w = Variable::new("w", &Tensor::new(&[0f32], &Device::Cpu)?, true)?;
    /// let mut sgd = Sgd::new(1.0).use_ema(true).ema_momentum(0.5);
    /// for _ in 0..2 {
    ///     sgd.apply(&[Tensor::new(&[-1f32], &Device::Cpu)?], &[w.clone()])?;
    /// }
    /// sgd.swap_ema_weights(&[w.clone()])?; // w: 2 -> its average 1.5
    /// assert_eq!(w.value().to_vec1::<f32>()?, vec![1.5]);
    /// sgd.swap_ema_weights(&[w.clone()])?;
    /// assert_eq!(w.value().to_vec1::<f32>()?, vec![2.0]);
    /// # Ok::<(), ferrokeras::Error>(())
    /// ```
    ///
    /// # Errors
    /// An optimizer without `use_ema` (the default here: it keeps no averages).
    fn swap_ema_weights(&mut self, vars: &[Variable]) -> Result<()> {
        let _ = vars;
        Err(Error::value(
            "SwapEMAWeights must be used when `use_ema=True` is set on the optimizer; this optimizer keeps no moving averages.",
        ))
    }
    /// Sets each moving average to its variable's current value.
    ///
    /// # Errors
    /// As [`Optimizer::swap_ema_weights`].
    fn copy_weights_to_ema(&mut self, vars: &[Variable]) -> Result<()> {
        let _ = vars;
        Err(Error::value(
            "SwapEMAWeights must be used when `use_ema=True` is set on the optimizer; this optimizer keeps no moving averages.",
        ))
    }
    /// The optimizer as Keras serializes it in a `.keras` file's `compile_config`
    /// (`{"module": "keras.optimizers", "class_name": "Adam", "config": {...}}`), with its
    /// current learning rate; `None` (the default) for an optimizer Keras does not have, or one
    /// built with a learning-rate schedule Keras does not have.
    ///
    /// ```
    /// use ferrokeras::optimizers::{Adam, Optimizer};
    /// let c = Adam::new(0.01).amsgrad(true).keras_config().unwrap();
    /// assert_eq!(c["class_name"], "Adam");
    /// assert_eq!(c["config"]["learning_rate"], 0.01);
    /// assert_eq!(c["config"]["amsgrad"], true);
    /// ```
    fn keras_config(&self) -> Option<serde_json::Value> {
        None
    }
    /// The loss to differentiate: the loss itself, or the loss times the loss scale for a
    /// [`LossScaleOptimizer`] (Keras's `optimizer.scale_loss`). The default `train_step` calls it;
    /// so should a custom one that may run under `mixed_float16`.
    ///
    /// # Errors
    /// Only if the product fails on the device.
    fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        Ok(loss.clone())
    }
}

macro_rules! optimizer_common {
    () => {
        fn learning_rate(&self) -> f64 {
            self.base.learning_rate()
        }
        fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
            self.base.set_learning_rate(lr)
        }
        fn iterations(&self) -> u64 {
            self.base.updates()
        }
        fn variable_count(&self) -> Option<usize> {
            self.base.variable_count()
        }
        fn state(&self) -> Result<Vec<(String, Tensor)>> {
            self.base.state()
        }
        fn load_state(&mut self, state: &[(String, Tensor)], vars: &[Variable]) -> Result<()> {
            let name = self.name().to_string();
            self.base.load_state(&name, state, vars)
        }
        fn finalize_variable_values(&mut self, vars: &[Variable]) -> Result<()> {
            self.base.finalize_variable_values(vars)
        }
        fn swap_ema_weights(&mut self, vars: &[Variable]) -> Result<()> {
            self.base.swap_ema(vars)
        }
        fn copy_weights_to_ema(&mut self, vars: &[Variable]) -> Result<()> {
            self.base.copy_to_ema(vars)
        }
    };
}

/// Keras's `BaseOptimizer` options as builder methods of an optimizer type (stored in its `base`).
macro_rules! base_options {
    ($t:ident) => {
        impl $t {
            #[doc = concat!(
                "Clips each gradient to this L2 norm (`g * clipnorm / max(||g||, clipnorm)`) before \
                 the update; `None` or a value <= 0 turns it off. Only one of `clipnorm`, `clipvalue` \
                 and `global_clipnorm` may be set (else `apply` fails).\n\n",
                "```\n",
                "use candle_core::{Device, Tensor};\n",
                "use ferrokeras::{Variable, optimizers::{", stringify!($t), ", Optimizer}};\n",
                "let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();\n",
                "let (a, b) = (Variable::new(\"w\", &t(&[1., 1.]), true).unwrap(), Variable::new(\"w\", &t(&[1., 1.]), true).unwrap());\n",
                "// a gradient of norm 5, clipped to norm 1, updates as the gradient [0.6, 0.8]\n",
                stringify!($t), "::new(0.1).clipnorm(1.0).apply(&[t(&[3., 4.])], &[a.clone()]).unwrap();\n",
                stringify!($t), "::new(0.1).apply(&[t(&[0.6, 0.8])], &[b.clone()]).unwrap();\n",
                "let (a, b) = (a.value().to_vec1::<f32>().unwrap(), b.value().to_vec1::<f32>().unwrap());\n",
                "assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));\n",
                "```"
            )]
            pub fn clipnorm(mut self, clipnorm: impl Into<Option<f64>>) -> Self {
                self.base.opts.clipnorm = clipnorm.into();
                self
            }
            #[doc = concat!(
                "Clips each gradient element to `[-clipvalue, clipvalue]` before the update; `None` \
                 or a value <= 0 turns it off.\n\n",
                "```\n",
                "use candle_core::{Device, Tensor};\n",
                "use ferrokeras::{Variable, optimizers::{", stringify!($t), ", Optimizer}};\n",
                "let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();\n",
                "let (a, b) = (Variable::new(\"w\", &t(&[1., 1.]), true).unwrap(), Variable::new(\"w\", &t(&[1., 1.]), true).unwrap());\n",
                stringify!($t), "::new(0.1).clipvalue(0.5).apply(&[t(&[3., -0.25])], &[a.clone()]).unwrap();\n",
                stringify!($t), "::new(0.1).apply(&[t(&[0.5, -0.25])], &[b.clone()]).unwrap();\n",
                "assert_eq!(a.value().to_vec1::<f32>().unwrap(), b.value().to_vec1::<f32>().unwrap());\n",
                "```"
            )]
            pub fn clipvalue(mut self, clipvalue: impl Into<Option<f64>>) -> Self {
                self.base.opts.clipvalue = clipvalue.into();
                self
            }
            #[doc = concat!(
                "Scales all the gradients of one `apply` by `min(1, global_clipnorm / global_norm)`, \
                 where `global_norm` is the L2 norm of all of them together; `None` or a value <= 0 \
                 turns it off.\n\n",
                "```\n",
                "use candle_core::{Device, Tensor};\n",
                "use ferrokeras::{Variable, optimizers::{", stringify!($t), ", Optimizer}};\n",
                "let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();\n",
                "let v = |x: f32| Variable::new(\"w\", &t(&[x]), true).unwrap();\n",
                "let (a1, a2, b1, b2) = (v(1.), v(1.), v(1.), v(1.));\n",
                "// the global norm of [3] and [4] is 5: both are scaled by 1/5\n",
                stringify!($t), "::new(0.1).global_clipnorm(1.0).apply(&[t(&[3.]), t(&[4.])], &[a1.clone(), a2.clone()]).unwrap();\n",
                stringify!($t), "::new(0.1).apply(&[t(&[0.6]), t(&[0.8])], &[b1.clone(), b2.clone()]).unwrap();\n",
                "for (a, b) in [(a1, b1), (a2, b2)] {\n",
                "    let (a, b) = (a.value().to_vec1::<f32>().unwrap()[0], b.value().to_vec1::<f32>().unwrap()[0]);\n",
                "    assert!((a - b).abs() < 1e-6);\n",
                "}\n",
                "```"
            )]
            pub fn global_clipnorm(mut self, global_clipnorm: impl Into<Option<f64>>) -> Self {
                self.base.opts.global_clipnorm = global_clipnorm.into();
                self
            }
            #[doc = concat!(
                "Gradient accumulation (Keras semantics): the variables are updated on every `n`-th \
                 `apply` only, with the average of the gradients of those `n` calls (clipping \
                 applies to the average); the other calls only add to a per-variable accumulator \
                 (state `\"{variable}/accumulator\"`). [`Optimizer::iterations`] counts updates \
                 (calls / `n`), and a learning-rate schedule sees the raw number of calls, as in \
                 Keras. `n` must be at least 2 (else `apply` fails); `None` or 0 turns it off.\n\n",
                "```\n",
                "use candle_core::{Device, Tensor};\n",
                "use ferrokeras::{Variable, optimizers::{", stringify!($t), ", Optimizer}};\n",
                "let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();\n",
                "let w = Variable::new(\"w\", &t(&[1.]), true).unwrap();\n",
                "let mut opt = ", stringify!($t), "::new(0.1).gradient_accumulation_steps(2);\n",
                "opt.apply(&[t(&[1.])], &[w.clone()]).unwrap();\n",
                "assert_eq!((w.value().to_vec1::<f32>().unwrap()[0], opt.iterations()), (1.0, 0));\n",
                "opt.apply(&[t(&[3.])], &[w.clone()]).unwrap(); // updates with the mean gradient 2\n",
                "assert!(w.value().to_vec1::<f32>().unwrap()[0] < 1.0);\n",
                "assert_eq!(opt.iterations(), 1);\n",
                "```"
            )]
            pub fn gradient_accumulation_steps(mut self, n: impl Into<Option<u64>>) -> Self {
                self.base.opts.gradient_accumulation_steps = n.into().filter(|n| *n > 0);
                self
            }
            #[doc = concat!(
                "Keeps an exponential moving average of every variable it updates (state \
                 `\"{variable}/ema\"`): after each `apply`, `ema = m * ema + (1 - m) * value` with \
                 `m = ema_momentum`, starting from the value after the first update. Swap it into the \
                 variables with [`Optimizer::finalize_variable_values`], or every \
                 `ema_overwrite_frequency` updates.\n\n",
                "```\n",
                "use candle_core::{Device, Tensor};\n",
                "use ferrokeras::{Variable, optimizers::{", stringify!($t), ", Optimizer}};\n",
                "let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();\n",
                "let w = Variable::new(\"w\", &t(&[1.]), true).unwrap();\n",
                "let mut opt = ", stringify!($t), "::new(0.1).use_ema(true);\n",
                "opt.apply(&[t(&[1.])], &[w.clone()]).unwrap();\n",
                "assert!(opt.state().unwrap().iter().any(|(k, _)| k == \"w/ema\"));\n",
                "```"
            )]
            pub fn use_ema(mut self, use_ema: bool) -> Self {
                self.base.opts.use_ema = use_ema;
                self
            }
            #[doc = concat!(
                "The momentum of the moving average of [`", stringify!($t), "::use_ema`], in `[0, 1]` \
                 (Keras default 0.99; outside the range `apply` fails).\n\n",
                "```\n",
                "use ferrokeras::optimizers::", stringify!($t), ";\n",
                "let opt = ", stringify!($t), "::new(0.1).use_ema(true).ema_momentum(0.9);\n",
                "```"
            )]
            pub fn ema_momentum(mut self, ema_momentum: f64) -> Self {
                self.base.opts.ema_momentum = ema_momentum;
                self
            }
            #[doc = concat!(
                "With [`", stringify!($t), "::use_ema`], overwrites the variables with their moving \
                 averages every `n` updates (Keras's `ema_overwrite_frequency`); `None` or 0 \
                 (the default) never does, leaving it to [`Optimizer::finalize_variable_values`].\n\n",
                "```\n",
                "use candle_core::{Device, Tensor};\n",
                "use ferrokeras::{Variable, optimizers::{", stringify!($t), ", Optimizer}};\n",
                "let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();\n",
                "let w = Variable::new(\"w\", &t(&[1.]), true).unwrap();\n",
                "let mut opt = ", stringify!($t), "::new(0.1).use_ema(true).ema_momentum(0.9).ema_overwrite_frequency(1);\n",
                "for _ in 0..3 {\n",
                "    opt.apply(&[t(&[1.])], &[w.clone()]).unwrap();\n",
                "    let ema = opt.state().unwrap().into_iter().find(|(k, _)| k == \"w/ema\").unwrap().1;\n",
                "    assert_eq!(w.value().to_vec1::<f32>().unwrap(), ema.to_vec1::<f32>().unwrap());\n",
                "}\n",
                "```"
            )]
            pub fn ema_overwrite_frequency(mut self, n: impl Into<Option<u64>>) -> Self {
                self.base.opts.ema_overwrite_frequency = n.into().filter(|n| *n > 0);
                self
            }
        }
    };
}

/// `w - w * weight_decay * lr` (Keras's `_apply_weight_decay`), or `w` without decay.
fn decay(w: &Tensor, weight_decay: f64, lr: f64) -> Result<Tensor> {
    Ok(if weight_decay != 0.0 {
        (w - (w * (weight_decay * lr))?)?
    } else {
        w.clone()
    })
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
    weight_decay: f64,
}

impl Sgd {
    /// SGD with a learning rate (Keras default 0.01) or a schedule.
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            base: Base::new(learning_rate.into(), &["momentum"]),
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
    /// Decoupled weight decay, as Keras's `weight_decay` on every optimizer: `w -= w * weight_decay
    /// * lr` before each update (0, the default, turns it off).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Momentum factor in `[0, 1]` (another value is refused at the first update, as Keras
    /// refuses it).
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

base_options!(Sgd);

impl Optimizer for Sgd {
    fn name(&self) -> &str {
        "SGD"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        self.base.keras_config(
            "SGD",
            "sgd",
            self.weight_decay,
            serde_json::json!({"momentum": self.momentum, "nesterov": self.nesterov}),
        )
    }
    fn apply(&mut self, grads: &[Tensor], vars: &[Variable]) -> Result<()> {
        let (mom, nesterov, wd) = (self.momentum, self.nesterov, self.weight_decay);
        if !(0.0..=1.0).contains(&mom) {
            return Err(Error::value(format!(
                "SGD: `momentum` must be a float between [0, 1]. Received: momentum={mom}"
            )));
        }
        let n_slots = usize::from(mom > 0.0);
        self.base
            .apply("SGD", n_slots, grads, vars, |g, w, slots, lr, _| {
                let w = &decay(w, wd, lr)?;
                if mom > 0.0 {
                    let m = ((&slots[0] * mom)? - (g * lr)?)?;
                    slots[0] = m.clone();
                    if nesterov {
                        Ok(Some(((w + (&m * mom)?)? - (g * lr)?)?))
                    } else {
                        Ok(Some((w + m)?))
                    }
                } else {
                    Ok(Some((w - (g * lr)?)?))
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
    flat: FlatSlots,
}

impl Adam {
    /// Adam with Keras defaults (`beta_1` 0.9, `beta_2` 0.999, `epsilon` 1e-7).
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            base: Base::new(learning_rate.into(), &["m", "v", "vhat"]),
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            amsgrad: false,
            weight_decay: 0.0,
            name: "adam",
            flat: FlatSlots::default(),
        }
    }
    /// Decoupled weight decay `w -= w * weight_decay * lr` before each update (Keras's
    /// `Adam(weight_decay=...)`; the name stays `adam`).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
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

base_options!(Adam);

impl Optimizer for Adam {
    fn name(&self) -> &str {
        self.name
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        let class = if self.name == "adamw" {
            "AdamW"
        } else {
            "Adam"
        };
        self.base.keras_config(
            class,
            self.name,
            self.weight_decay,
            serde_json::json!({
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            }),
        )
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
        let flat = &mut self.flat;
        self.base.apply_all(
            self.name,
            n_slots,
            grads,
            vars,
            |gs, ws, slots, lr, step| {
                let t = step as f64;
                let alpha = lr * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t));
                let p = crate::kernels::adam::AdamStep {
                    beta_1: b1,
                    beta_2: b2,
                    epsilon: eps,
                    alpha,
                    decay: if wd > 0.0 { wd * lr } else { 0.0 },
                };
                // candle's ops: the moments (`s` updated) and the step to subtract.
                let rule = |g: &Tensor, s: &mut [Tensor]| -> Result<Tensor> {
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
                    Ok(((m * alpha)? / (v.sqrt()? + eps)?)?)
                };
                let decayed = |w: &Tensor| -> Result<Tensor> {
                    Ok(if wd > 0.0 {
                        (w - (w * (wd * lr))?)?
                    } else {
                        w.clone()
                    })
                };
                let mut out = vec![None; ws.len()];
                let mut generic = Vec::new();
                for (i, (w, g)) in ws.iter().zip(gs).enumerate() {
                    let g = &g.contiguous()?;
                    let mut all = vec![w, g];
                    all.extend(slots[i].iter());
                    if crate::kernels::adam::fits(&all) {
                        crate::kernels::adam::adam_in_place(w, g, &slots[i], p)?;
                        continue;
                    }
                    #[cfg(feature = "cuda")]
                    if !ams && crate::kernels::cuda::adam_fits(&all) {
                        crate::kernels::cuda::adam_in_place(w, g, &slots[i], p)?;
                        continue;
                    }
                    generic.push(i);
                }
                let alike = generic.windows(2).all(|p| {
                    let (a, b) = (&ws[p[0]], &ws[p[1]]);
                    a.dtype() == b.dtype() && a.device().same_device(b.device())
                });
                if generic.len() < 2 || !alike {
                    for i in generic {
                        let u = rule(&gs[i].contiguous()?, &mut slots[i])?;
                        out[i] = Some((decayed(&ws[i])? - u)?);
                    }
                    return Ok(out);
                }
                // All of them at once: the same ops on the concatenation (the same values, a
                // launch per op instead of one per op and variable off the CPU).
                let mut mine: Vec<Vec<Tensor>> =
                    generic.iter().map(|&i| slots[i].clone()).collect();
                let mut whole = flat.gather(&mine, n_slots)?;
                let g = generic
                    .iter()
                    .map(|&i| gs[i].flatten_all())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let u = rule(&Tensor::cat(&g, 0)?, &mut whole)?;
                let shapes: Vec<_> = generic.iter().map(|&i| ws[i].shape().clone()).collect();
                flat.scatter(whole, &mut mine, &shapes)?;
                for ((&i, s), (offset, shape)) in generic.iter().zip(mine).zip(offsets(&shapes)) {
                    slots[i] = s;
                    let ui = u.narrow(0, offset, shape.elem_count())?.reshape(shape)?;
                    out[i] = Some((decayed(&ws[i])? - ui)?);
                }
                Ok(out)
            },
        )
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
    weight_decay: f64,
}

impl RmsProp {
    /// RMSprop with Keras defaults.
    pub fn new(learning_rate: impl Into<LearningRate>) -> Self {
        Self {
            base: Base::new(
                learning_rate.into(),
                &["velocity", "momentum", "average_gradient"],
            ),
            rho: 0.9,
            momentum: 0.0,
            epsilon: 1e-7,
            centered: false,
            weight_decay: 0.0,
        }
    }
    /// Decoupled weight decay, as Keras's `weight_decay` on every optimizer: `w -= w * weight_decay
    /// * lr` before each update (0, the default, turns it off).
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
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

base_options!(RmsProp);

impl Optimizer for RmsProp {
    fn name(&self) -> &str {
        "rmsprop"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        self.base.keras_config(
            "RMSprop",
            "rmsprop",
            self.weight_decay,
            serde_json::json!({
                "rho": self.rho,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "centered": self.centered,
            }),
        )
    }
    fn apply(&mut self, grads: &[Tensor], vars: &[Variable]) -> Result<()> {
        let (rho, mom, eps, centered) = (self.rho, self.momentum, self.epsilon, self.centered);
        let wd = self.weight_decay;
        // slots: velocity, momentum, average gradient
        self.base
            .apply("rmsprop", 3, grads, vars, |g, w, s, lr, _| {
                let w = &decay(w, wd, lr)?;
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
                    Ok(Some((w - m)?))
                } else {
                    Ok(Some((w - increment)?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vars(seed: f32) -> Vec<Variable> {
        [vec![3, 4], vec![5], vec![2, 2, 3]]
            .iter()
            .enumerate()
            .map(|(k, shape)| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n)
                    .map(|i| ((i as f32 + 7.0 * k as f32 + seed) * 0.61).sin())
                    .collect();
                let t = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                Variable::new(format!("v{k}"), &t, true).unwrap()
            })
            .collect()
    }

    fn grads(vs: &[Variable], step: usize) -> Vec<Tensor> {
        vs.iter()
            .map(|v| {
                let t = v.value();
                ((t.sin().unwrap() * (1.0 + step as f64)).unwrap() - 0.3).unwrap()
            })
            .collect()
    }

    fn values(vs: &[Variable]) -> Vec<Vec<f32>> {
        vs.iter()
            .map(|v| v.value().flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    /// Off the CPU kernels, Adam updates all variables of a step as one concatenation: the
    /// values and the state are those of updating each variable alone, to the bit, for Adam,
    /// AdamW and AMSGrad, across a state reload (slots replaced between steps).
    #[test]
    fn adam_on_all_variables_at_once_equals_one_at_a_time() {
        crate::kernels::FORCE.with(|f| f.set(true));
        let makers: [fn() -> Adam; 3] = [
            || Adam::new(0.05),
            || Adam::adamw(0.05, 0.01),
            || Adam::new(0.05).amsgrad(true),
        ];
        for make in makers {
            let (together, apart) = (vars(1.0), vars(1.0));
            let mut opt = make();
            let mut singles: Vec<Adam> = (0..apart.len()).map(|_| make()).collect();
            for step in 0..4 {
                if step == 2 {
                    // A reload puts fresh slot tensors in place of the flat views.
                    let state = opt.state().unwrap();
                    opt.load_state(&state, &together).unwrap();
                }
                opt.apply(&grads(&together, step), &together).unwrap();
                for (i, single) in singles.iter_mut().enumerate() {
                    let v = &apart[i..i + 1];
                    single.apply(&grads(v, step), v).unwrap();
                }
                assert_eq!(values(&together), values(&apart), "step {step}");
            }
            assert_eq!(opt.flat.kept(), if opt.amsgrad { 3 } else { 2 });
            let mut want: Vec<(String, Tensor)> = singles
                .iter()
                .flat_map(|s| s.state().unwrap())
                .filter(|(k, _)| k != "iterations")
                .collect();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            let got: Vec<_> = opt
                .state()
                .unwrap()
                .into_iter()
                .filter(|(k, _)| k != "iterations")
                .collect();
            assert_eq!(got.len(), want.len());
            for ((gk, gt), (wk, wt)) in got.iter().zip(&want) {
                assert_eq!(gk, wk);
                assert_eq!(gt.dims(), wt.dims());
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(flat(gt), flat(wt), "{gk}");
            }
        }
        crate::kernels::FORCE.with(|f| f.set(false));
    }
}
