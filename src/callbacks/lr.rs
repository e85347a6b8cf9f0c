//! Learning-rate callbacks: `LearningRateScheduler` and `ReduceLROnPlateau`.
//!
//! Both change the compiled optimizer's learning rate through
//! [`crate::optimizers::Optimizer::set_learning_rate`], so `fit` stops with Keras's error when the
//! optimizer was built with a `LearningRateSchedule` (its rate follows the schedule).
//!
//! As in Keras, both add `learning_rate` to the logs at the end of every epoch
//! ([`CallbackContext::add_log`]), so that `History`, the progress bar and the callbacks after
//! them (`CSVLogger`) show it: the optimizer's rate as a float32 value, as Keras keeps it (for
//! `ReduceLROnPlateau`, the rate of the epoch, before any reduction).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::csv_logger::float_repr;
use super::early_stopping::{
    Direction, Mode, available, lock, parse_mode, resolve_direction, warn_once,
};
use super::{Callback, CallbackContext};
use crate::logs::Logs;
use crate::{Error, Result};

type Schedule = Box<dyn FnMut(usize, f64) -> f64 + Send>;

/// Sets the optimizer's learning rate at the start of every epoch from a function of the 0-based
/// epoch and the current rate (Keras's `keras.callbacks.LearningRateScheduler`).
///
/// The function receives the current rate as Keras's float32 variable holds it (0.1 arrives as
/// 0.10000000149011612). With `verbose(1)` it prints `Epoch N: LearningRateScheduler setting
/// learning rate to LR.` (the function's result as Python prints a float, so Keras's messages).
///
/// ```
/// use ferrokeras::callbacks::LearningRateScheduler;
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// // Keras's example: keep the rate for ten epochs, then decrease it exponentially.
/// let scheduler = LearningRateScheduler::new(|epoch, lr| {
///     if epoch < 10 { lr } else { lr * (-0.1f64).exp() }
/// });
/// let mut model = Sequential::new().input(&[20]).add(Dense::new(10))
///     .compile(Compile::new().optimizer(Sgd::new(0.01)).loss("mse"))?;
/// let x = candle_core::Tensor::arange(0f32, 100., &candle_core::Device::Cpu)?.reshape((5, 20))?;
/// let y = candle_core::Tensor::zeros((5, 10), candle_core::DType::F32, &candle_core::Device::Cpu)?;
/// model.fit((x, y), FitOptions::new().epochs(15).verbose(0).callback(scheduler))?;
/// let lr = model.context().optimizer()?.learning_rate();
/// assert_eq!((lr * 1e5).round() / 1e5, 0.00607);
/// # Ok(()) }
/// ```
pub struct LearningRateScheduler {
    schedule: Schedule,
    verbose: u8,
}

impl LearningRateScheduler {
    /// A scheduler calling `schedule(epoch, current_lr)` at the start of every epoch.
    ///
    /// ```
    /// let s = ferrokeras::callbacks::LearningRateScheduler::new(|epoch, lr| if epoch < 2 { lr } else { lr * 0.5 });
    /// # let _ = s;
    /// ```
    pub fn new(schedule: impl FnMut(usize, f64) -> f64 + Send + 'static) -> Self {
        Self {
            schedule: Box::new(schedule),
            verbose: 0,
        }
    }

    /// 0: quiet; 1: a message for every update.
    ///
    /// ```
    /// let s = ferrokeras::callbacks::LearningRateScheduler::new(|_, lr| lr).verbose(1);
    /// # let _ = s;
    /// ```
    pub fn verbose(mut self, verbose: u8) -> Self {
        self.verbose = verbose;
        self
    }
}

impl Callback for LearningRateScheduler {
    fn on_epoch_begin(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        _logs: &Logs,
    ) -> Result<()> {
        let optimizer = ctx.compiled.optimizer()?;
        // The current rate as Keras reads it from its float32 variable.
        let lr = (self.schedule)(epoch, f64::from(optimizer.learning_rate() as f32));
        optimizer.set_learning_rate(lr)?;
        if self.verbose > 0 {
            println!(
                "\nEpoch {}: LearningRateScheduler setting learning rate to {}.",
                epoch + 1,
                float_repr(lr)
            );
        }
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        _epoch: usize,
        _logs: &Logs,
    ) -> Result<()> {
        log_learning_rate(ctx)
    }
}

/// Adds the optimizer's learning rate to the epoch's logs, as Keras's float32 variable holds it.
fn log_learning_rate(ctx: &mut CallbackContext<'_>) -> Result<()> {
    let lr = ctx.compiled.optimizer()?.learning_rate();
    ctx.add_log("learning_rate", f64::from(lr as f32));
    Ok(())
}

struct PlateauInner {
    monitor: String,
    factor: f64,
    patience: usize,
    verbose: u8,
    mode: Mode,
    min_delta: f64,
    cooldown: usize,
    min_lr: f64,
    // State.
    direction: Option<Direction>,
    best: Option<f64>,
    wait: usize,
    cooldown_counter: usize,
    warned: HashSet<String>,
}

/// Reduces the learning rate when a monitored quantity has stopped improving (Keras's
/// `keras.callbacks.ReduceLROnPlateau`, same arguments and defaults).
///
/// At every epoch end: during a cooldown the counter goes down and `wait` is reset; a value better
/// than the best by more than `min_delta` becomes the best and resets `wait`; otherwise, outside a
/// cooldown, `wait` grows and once it reaches `patience` the rate becomes
/// `max(lr * factor, min_lr)`, `lr` read as Keras's float32 variable holds it (if it is still
/// above `min_lr` in float32, as Keras compares),
/// a cooldown of `cooldown` epochs starts and `wait` is reset.
///
/// A missing monitored key gives a `UserWarning` line on stderr; an unknown name in `"auto"`
/// mode, or `factor >= 1`, is an error when training starts using it. A clone is a handle on the
/// same callback (to read [`ReduceLROnPlateau::best`] after `fit`).
///
/// ```
/// use ferrokeras::callbacks::{Callback, CallbackContext, Params, ReduceLROnPlateau};
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let mut trainer = Sequential::new().input(&[2]).add(Dense::new(1))
///     .compile(Compile::new().optimizer(Sgd::new(0.1)).loss("mse"))?;
/// let mut other = Sequential::new().input(&[2]).add(Dense::new(1));
/// let mut cb = ReduceLROnPlateau::new().monitor("loss").patience(1).min_delta(0.0);
/// let params = Params { epochs: 3, steps: Some(1), verbose: 0 };
/// let (mut stop, no_logs) = (false, Logs::new());
/// let mut ctx = CallbackContext::new(&mut other, trainer.context(), &params, &no_logs, &mut stop);
/// cb.on_train_begin(&mut ctx, &no_logs)?;
/// for (epoch, loss) in [1.0, 1.0, 0.5].into_iter().enumerate() {
///     cb.on_epoch_end(&mut ctx, epoch, &[("loss", loss)].into_iter().collect())?;
/// }
/// let lr = ctx.compiled.optimizer()?.learning_rate();
/// // Reduced once, at the plateau of epoch 1, from the float32 rate as Keras reads it.
/// assert_eq!(lr, f64::from(0.1f32) * 0.1); // 0.010000000149011612
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReduceLROnPlateau {
    inner: Arc<Mutex<PlateauInner>>,
}

impl Default for ReduceLROnPlateau {
    fn default() -> Self {
        Self::new()
    }
}

impl ReduceLROnPlateau {
    /// Keras's defaults: `monitor="val_loss"`, `factor=0.1`, `patience=10`, `verbose=0`,
    /// `mode="auto"`, `min_delta=1e-4`, `cooldown=0`, `min_lr=0`.
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new();
    /// assert_eq!((r.wait(), r.best()), (0, None));
    /// ```
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(PlateauInner {
                monitor: "val_loss".into(),
                factor: 0.1,
                patience: 10,
                verbose: 0,
                mode: Mode::Auto,
                min_delta: 1e-4,
                cooldown: 0,
                min_lr: 0.0,
                direction: None,
                best: None,
                wait: 0,
                cooldown_counter: 0,
                warned: HashSet::new(),
            })),
        }
    }

    fn with(self, f: impl FnOnce(&mut PlateauInner)) -> Self {
        f(&mut lock(&self.inner));
        self
    }

    /// The quantity to monitor.
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().monitor("loss");
    /// # let _ = r;
    /// ```
    pub fn monitor(self, monitor: impl Into<String>) -> Self {
        let monitor = monitor.into();
        self.with(|s| {
            s.monitor = monitor;
            s.direction = None;
        })
    }

    /// The factor applied to the rate, `new_lr = lr * factor`; must be below 1.
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().factor(0.2);
    /// # let _ = r;
    /// ```
    pub fn factor(self, factor: f64) -> Self {
        self.with(|s| s.factor = factor)
    }

    /// Epochs without improvement after which the rate is reduced.
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().patience(5);
    /// # let _ = r;
    /// ```
    pub fn patience(self, patience: usize) -> Self {
        self.with(|s| s.patience = patience)
    }

    /// 0: quiet; 1: prints `Epoch N: ReduceLROnPlateau reducing learning rate to LR.`
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().verbose(1);
    /// # let _ = r;
    /// ```
    pub fn verbose(self, verbose: u8) -> Self {
        self.with(|s| s.verbose = verbose)
    }

    /// `"auto"`, `"min"` or `"max"`, as for [`super::EarlyStopping::mode`].
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().monitor("val_accuracy").mode("max");
    /// # let _ = r;
    /// ```
    pub fn mode(self, mode: &str) -> Self {
        let mode = parse_mode(mode, |m| {
            format!("ReduceLROnPlateau mode '{m}' is unknown, fallback to auto mode.")
        });
        self.with(|s| {
            s.mode = mode;
            s.direction = None;
        })
    }

    /// Threshold for a new optimum (its absolute value is used).
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().min_delta(0.0);
    /// # let _ = r;
    /// ```
    pub fn min_delta(self, min_delta: f64) -> Self {
        self.with(|s| s.min_delta = min_delta.abs())
    }

    /// Epochs to wait after a reduction before counting again.
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().cooldown(2);
    /// # let _ = r;
    /// ```
    pub fn cooldown(self, cooldown: usize) -> Self {
        self.with(|s| s.cooldown = cooldown)
    }

    /// Lower bound on the learning rate.
    ///
    /// ```
    /// let r = ferrokeras::callbacks::ReduceLROnPlateau::new().min_lr(1e-5);
    /// # let _ = r;
    /// ```
    pub fn min_lr(self, min_lr: f64) -> Self {
        self.with(|s| s.min_lr = min_lr)
    }

    /// The best monitored value of this training (`None` before the first).
    ///
    /// ```
    /// assert_eq!(ferrokeras::callbacks::ReduceLROnPlateau::new().best(), None);
    /// ```
    pub fn best(&self) -> Option<f64> {
        lock(&self.inner).best
    }

    /// Epochs counted since the last improvement or reduction.
    ///
    /// ```
    /// assert_eq!(ferrokeras::callbacks::ReduceLROnPlateau::new().wait(), 0);
    /// ```
    pub fn wait(&self) -> usize {
        lock(&self.inner).wait
    }

    /// Epochs of cooldown left.
    ///
    /// ```
    /// assert_eq!(ferrokeras::callbacks::ReduceLROnPlateau::new().cooldown_counter(), 0);
    /// ```
    pub fn cooldown_counter(&self) -> usize {
        lock(&self.inner).cooldown_counter
    }
}

impl Callback for ReduceLROnPlateau {
    fn on_train_begin(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        let mut s = lock(&self.inner);
        if s.factor >= 1.0 || s.factor.is_nan() {
            return Err(Error::value(format!(
                "ReduceLROnPlateau does not support a factor >= 1.0. Received factor={}",
                float_repr(s.factor)
            )));
        }
        s.cooldown_counter = 0;
        s.wait = 0;
        s.best = None;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        log_learning_rate(ctx)?;
        let mut guard = lock(&self.inner);
        let s = &mut *guard;
        let direction = match s.direction {
            Some(d) => d,
            None => {
                let d = resolve_direction(s.mode, &s.monitor, "ReduceLROnPlateau")?;
                s.direction = Some(d);
                d
            }
        };
        let Some(current) = logs.get(&s.monitor) else {
            let message = format!(
                "Learning rate reduction is conditioned on metric `{}` which is not available. Available metrics are: {}.",
                s.monitor,
                available(logs)
            );
            warn_once(&mut s.warned, message);
            return Ok(());
        };
        if s.cooldown_counter > 0 {
            s.cooldown_counter -= 1;
            s.wait = 0;
        }
        if direction.is_improvement(current, s.best, s.min_delta) {
            s.best = Some(current);
            s.wait = 0;
        } else if s.cooldown_counter == 0 {
            s.wait += 1;
            if s.wait >= s.patience {
                let optimizer = ctx.compiled.optimizer()?;
                // As Keras reads it from its float32 variable.
                let old_lr = f64::from(optimizer.learning_rate() as f32);
                // Keras keeps the rate in a float32 variable and compares with `np.float32(min_lr)`.
                if (old_lr as f32) > (s.min_lr as f32) {
                    let new_lr = (old_lr * s.factor).max(s.min_lr);
                    optimizer.set_learning_rate(new_lr)?;
                    if s.verbose > 0 {
                        println!(
                            "\nEpoch {}: ReduceLROnPlateau reducing learning rate to {}.",
                            epoch + 1,
                            float_repr(new_lr)
                        );
                    }
                    s.cooldown_counter = s.cooldown;
                    s.wait = 0;
                }
            }
        }
        Ok(())
    }
}
