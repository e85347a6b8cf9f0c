//! `TerminateOnNaN`: stops training when the loss becomes NaN or infinite.

use super::csv_logger::float_repr;
use super::{Callback, CallbackContext};
use crate::logs::Logs;
use crate::{Error, Result};

/// Stops training at the training batch whose `"loss"` log is NaN or infinite (Keras's
/// `keras.callbacks.TerminateOnNaN`).
///
/// By default it prints `Batch N: Invalid loss, terminating training` and asks `fit` to stop
/// after that batch: the epoch still ends (its logs reach the callbacks and `History`) and every
/// callback's `on_train_end` runs. With `raise_error(true)` it returns an error instead, which
/// ends `fit` at once, without `on_train_end`.
///
/// ```
/// use ferrokeras::callbacks::{Callback, CallbackContext, Params, TerminateOnNaN};
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let mut model = Sequential::new().input(&[2]).add(Dense::new(1));
/// let mut compiled = StepContext::new();
/// let params = Params { epochs: 1, steps: Some(4), verbose: 0 };
/// let (mut stop, no_logs) = (false, Logs::new());
/// let mut ctx = CallbackContext::new(&mut model, &mut compiled, &params, &no_logs, &mut stop);
/// let mut cb = TerminateOnNaN::new();
/// cb.on_train_batch_end(&mut ctx, 0, &[("loss", 0.5)].into_iter().collect())?;
/// assert!(!ctx.stop_requested());
/// cb.on_train_batch_end(&mut ctx, 1, &[("loss", f64::NAN)].into_iter().collect())?;
/// assert!(ctx.stop_requested());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct TerminateOnNaN {
    raise_error: bool,
}

impl TerminateOnNaN {
    /// A callback that stops training gracefully.
    ///
    /// ```
    /// let cb = ferrokeras::callbacks::TerminateOnNaN::new();
    /// # let _ = cb;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// `true`: return an error at the first NaN or infinite loss instead of stopping gracefully.
    ///
    /// ```
    /// let cb = ferrokeras::callbacks::TerminateOnNaN::new().raise_error(true);
    /// # let _ = cb;
    /// ```
    pub fn raise_error(mut self, raise_error: bool) -> Self {
        self.raise_error = raise_error;
        self
    }
}

impl Callback for TerminateOnNaN {
    fn on_train_batch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        if let Some(loss) = logs.get("loss")
            && !loss.is_finite()
        {
            if self.raise_error {
                return Err(Error::state(format!(
                    "NaN or Inf loss encountered at batch {batch}. Loss value: {}. Terminating training immediately.",
                    float_repr(loss)
                )));
            }
            println!("Batch {batch}: Invalid loss, terminating training");
            ctx.stop_training();
        }
        Ok(())
    }
}
