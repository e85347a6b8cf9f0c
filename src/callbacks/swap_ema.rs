//! `SwapEMAWeights`: evaluates (and, optionally, ends epochs) with the optimizer's moving average
//! of the weights.

use super::{Callback, CallbackContext};
use crate::Result;
use crate::logs::Logs;

/// Puts the optimizer's moving averages of the weights (`use_ema(true)`) in the model while it
/// is evaluated or predicts, and the trained weights back afterwards (Keras's
/// `keras.callbacks.SwapEMAWeights`). With `swap_on_epoch(true)` the averages are also in the
/// model at each epoch's end, so that the callbacks after it (a `ModelCheckpoint`) see them.
///
/// ```
/// use ferrokeras::callbacks::SwapEMAWeights;
/// use ferrokeras::optimizers::Adam;
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let (x, y) = (candle_core::Tensor::ones((8, 3), candle_core::DType::F32, &candle_core::Device::Cpu)?,
///     candle_core::Tensor::zeros((8, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?);
/// let mut model = Sequential::new().input(&[3]).add(Dense::new(1))
///     .compile(Compile::new().optimizer(Adam::new(0.01).use_ema(true)).loss("mse"))?;
/// model.fit((x.clone(), y.clone()), FitOptions::new().epochs(2).verbose(0)
///     .validation_data((x, y)).callback(SwapEMAWeights::new()))?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct SwapEMAWeights {
    swap_on_epoch: bool,
    ema_in_model: bool,
}

impl SwapEMAWeights {
    /// Swaps around evaluation and prediction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also keeps the averages in the model from each epoch's end to the next epoch's start.
    pub fn swap_on_epoch(mut self, swap: bool) -> Self {
        self.swap_on_epoch = swap;
        self
    }

    fn swap(&mut self, ctx: &mut CallbackContext<'_>) -> Result<()> {
        let vars = ctx.model.trainable_variables();
        ctx.compiled.optimizer()?.swap_ema_weights(&vars)?;
        self.ema_in_model = !self.ema_in_model;
        Ok(())
    }
}

impl Callback for SwapEMAWeights {
    fn on_epoch_begin(&mut self, ctx: &mut CallbackContext<'_>, _: usize, _: &Logs) -> Result<()> {
        if self.swap_on_epoch && self.ema_in_model {
            self.swap(ctx)?;
        }
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        _: &Logs,
    ) -> Result<()> {
        if self.swap_on_epoch && !self.ema_in_model {
            self.swap(ctx)?;
            // At the end of `fit` the optimizer puts its averages in the model
            // (`finalize_variable_values`): they must be the averages, now in the model.
            if epoch + 1 == ctx.params.epochs {
                let vars = ctx.model.trainable_variables();
                ctx.compiled.optimizer()?.copy_weights_to_ema(&vars)?;
            }
        }
        Ok(())
    }
    fn on_test_begin(&mut self, ctx: &mut CallbackContext<'_>, _: &Logs) -> Result<()> {
        if !self.ema_in_model {
            self.swap(ctx)?;
        }
        Ok(())
    }
    fn on_test_end(&mut self, ctx: &mut CallbackContext<'_>, _: &Logs) -> Result<()> {
        if self.ema_in_model {
            self.swap(ctx)?;
        }
        Ok(())
    }
    fn on_predict_begin(&mut self, ctx: &mut CallbackContext<'_>, _: &Logs) -> Result<()> {
        if !self.ema_in_model {
            self.swap(ctx)?;
        }
        Ok(())
    }
    fn on_predict_end(&mut self, ctx: &mut CallbackContext<'_>, _: &Logs) -> Result<()> {
        if self.ema_in_model {
            self.swap(ctx)?;
        }
        Ok(())
    }
}
