//! Dynamic loss scaling for float16 training (Keras's `LossScaleOptimizer`).

use candle_core::{DType, Tensor};

use super::Optimizer;
use crate::tape::Variable;
use crate::{Error, Result};

const SCALE_KEY: &str = "loss_scale_optimizer/dynamic_scale";
const COUNTER_KEY: &str = "loss_scale_optimizer/step_counter";

/// Wraps an optimizer with dynamic loss scaling (Keras's `LossScaleOptimizer`): the loss is
/// multiplied by a scale before differentiation, so that small float16 gradients do not flush to
/// zero; `apply` divides the gradients by the scale, and updates only when every gradient is
/// finite. After `dynamic_growth_steps` finite steps in a row the scale doubles; a non-finite
/// gradient skips the update and halves it. `compile` wraps the optimizer in one under the
/// `mixed_float16` policy; a custom `train_step` calls [`Optimizer::scale_loss`] before taking
/// gradients, as Keras's own steps do.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::optimizers::{LossScaleOptimizer, Optimizer, Sgd};
/// use ferrokeras::Variable;
/// let w = Variable::new("w", &Tensor::new(&[1f32], &Device::Cpu)?, true)?;
/// let mut opt = LossScaleOptimizer::new(Sgd::new(0.1));
/// assert_eq!(opt.dynamic_scale(), 32768.0);
/// // A gradient of a scaled loss: the update sees 32768 / 32768 = 1.
/// opt.apply(&[Tensor::new(&[32768f32], &Device::Cpu)?], &[w.clone()])?;
/// assert!((w.value().to_vec1::<f32>()?[0] - 0.9).abs() < 1e-6);
/// // An infinite gradient: no update, the scale halves.
/// opt.apply(&[Tensor::new(&[f32::INFINITY], &Device::Cpu)?], &[w.clone()])?;
/// assert!((w.value().to_vec1::<f32>()?[0] - 0.9).abs() < 1e-6);
/// assert_eq!(opt.dynamic_scale(), 16384.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LossScaleOptimizer {
    inner: Box<dyn Optimizer>,
    scale: f64,
    step_counter: u64,
    growth_steps: u64,
}

impl LossScaleOptimizer {
    /// Wraps `inner`, with Keras's defaults: initial scale 2^15, doubled every 2000 finite steps.
    pub fn new(inner: impl Optimizer + 'static) -> Self {
        Self::wrap(Box::new(inner))
    }
    /// Wraps an optimizer already boxed (what `compile` holds).
    pub fn wrap(inner: Box<dyn Optimizer>) -> Self {
        Self {
            inner,
            scale: 32768.0,
            step_counter: 0,
            growth_steps: 2000,
        }
    }
    /// The starting scale (Keras's `initial_scale`, default 32768).
    pub fn initial_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }
    /// Finite steps in a row after which the scale doubles (Keras's `dynamic_growth_steps`,
    /// default 2000; at least 1).
    pub fn dynamic_growth_steps(mut self, steps: u64) -> Self {
        self.growth_steps = steps.max(1);
        self
    }
    /// The current loss scale.
    pub fn dynamic_scale(&self) -> f64 {
        self.scale
    }
    /// The wrapped optimizer.
    pub fn inner_optimizer(&mut self) -> &mut dyn Optimizer {
        self.inner.as_mut()
    }
}

/// Whether every value of every tensor is finite: one value read from the device.
fn all_finite(grads: &[Tensor]) -> Result<bool> {
    let Some(first) = grads.first() else {
        return Ok(true);
    };
    let dev = first.device().clone();
    // 0 * x is 0 for a finite x and NaN for an infinite or NaN one.
    let probes = grads
        .iter()
        .map(|g| {
            g.to_dtype(DType::F32)?
                .affine(0.0, 0.0)?
                .sum_all()?
                .to_device(&dev)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let total = Tensor::stack(&probes, 0)?.sum_all()?.to_scalar::<f32>()?;
    Ok(total == 0.0)
}

impl Optimizer for LossScaleOptimizer {
    fn name(&self) -> &str {
        "loss_scale_optimizer"
    }
    fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        Ok(loss.affine(self.scale, 0.0)?)
    }
    fn apply(&mut self, grads: &[Tensor], vars: &[Variable]) -> Result<()> {
        if grads.len() != vars.len() {
            return Err(Error::value(format!(
                "loss_scale_optimizer: {} gradients for {} variables; pass one gradient per variable",
                grads.len(),
                vars.len()
            )));
        }
        if !all_finite(grads)? {
            self.step_counter = 0;
            self.scale *= 0.5;
            return Ok(());
        }
        let inv = 1.0 / self.scale;
        let unscaled = grads
            .iter()
            .map(|g| g.affine(inv, 0.0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.inner.apply(&unscaled, vars)?;
        if self.step_counter + 1 >= self.growth_steps {
            self.step_counter = 0;
            self.scale *= 2.0;
        } else {
            self.step_counter += 1;
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }
    fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        self.inner.set_learning_rate(lr)
    }
    fn iterations(&self) -> u64 {
        self.inner.iterations()
    }
    fn variable_count(&self) -> Option<usize> {
        // Keras's LossScaleOptimizer adds its own iteration count, learning rate, step counter
        // and scale to the inner optimizer's.
        self.inner.variable_count().map(|n| n + 4)
    }
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut s = self.inner.state()?;
        let dev = candle_core::Device::Cpu;
        s.push((SCALE_KEY.into(), Tensor::new(self.scale, &dev)?));
        s.push((
            COUNTER_KEY.into(),
            Tensor::new(self.step_counter as f64, &dev)?,
        ));
        s.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(s)
    }
    fn load_state(&mut self, state: &[(String, Tensor)], vars: &[Variable]) -> Result<()> {
        let read = |key: &str| -> Result<Option<f64>> {
            match state.iter().find(|(k, _)| k == key) {
                Some((_, t)) if t.elem_count() == 1 => Ok(Some(
                    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0],
                )),
                Some((_, t)) => Err(Error::value(format!(
                    "loss_scale_optimizer: state entry `{key}` must be a scalar, found shape {:?}",
                    t.dims()
                ))),
                None => Ok(None),
            }
        };
        let scale = read(SCALE_KEY)?;
        let counter = read(COUNTER_KEY)?;
        if let Some(s) = scale
            && !(s.is_finite() && s > 0.0)
        {
            return Err(Error::value(format!(
                "loss_scale_optimizer: the saved loss scale must be a positive number, found {s}"
            )));
        }
        let inner: Vec<(String, Tensor)> = state
            .iter()
            .filter(|(k, _)| k != SCALE_KEY && k != COUNTER_KEY)
            .cloned()
            .collect();
        self.inner.load_state(&inner, vars)?;
        if let Some(s) = scale {
            self.scale = s;
        }
        if let Some(c) = counter {
            self.step_counter = c.max(0.0) as u64;
        }
        Ok(())
    }
    fn finalize_variable_values(&mut self, vars: &[Variable]) -> Result<()> {
        self.inner.finalize_variable_values(vars)
    }
    fn swap_ema_weights(&mut self, vars: &[Variable]) -> Result<()> {
        self.inner.swap_ema_weights(vars)
    }
    fn copy_weights_to_ema(&mut self, vars: &[Variable]) -> Result<()> {
        self.inner.copy_weights_to_ema(vars)
    }
}
