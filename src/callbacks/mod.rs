//! Callbacks: Keras's hooks into `fit`, `evaluate` and `predict`.
//!
//! Every hook receives a [`CallbackContext`] (the model, the compiled state, the loop's parameters,
//! a way to stop training, and the per-batch values of the metrics) and the logs Keras would pass.

mod checkpoint;
mod csv_logger;
mod early_stopping;
mod history;
mod lambda;
mod lr;
pub mod progbar;
mod swap_ema;
pub mod tensorboard;
mod terminate_on_nan;

pub use checkpoint::{ModelCheckpoint, SaveFreq, format_template};
pub use csv_logger::{CSVLogger, float_repr};
pub use early_stopping::EarlyStopping;
pub use history::History;
pub use lambda::LambdaCallback;
pub use lr::{LearningRateScheduler, ReduceLROnPlateau};
pub use progbar::ProgbarLogger;
pub use swap_ema::SwapEMAWeights;
pub use tensorboard::{TensorBoard, UpdateFreq};
pub use terminate_on_nan::TerminateOnNaN;

use crate::Result;
use crate::logs::Logs;
use crate::model::{Model, StepContext};

/// The loop's parameters (Keras's `callback.params`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    /// Number of epochs of `fit` (1 for evaluate and predict).
    pub epochs: usize,
    /// Steps per epoch, when known.
    pub steps: Option<usize>,
    /// Verbosity: 0 silent, 1 progress bar, 2 one line per epoch.
    pub verbose: u8,
}

/// What a hook can reach.
pub struct CallbackContext<'a> {
    /// The model being trained (use `as_any`-style access in your own model type to reach its parts).
    pub model: &'a mut dyn Model,
    /// The compiled state: optimizer (for learning-rate callbacks), loss and metrics.
    pub compiled: &'a mut StepContext,
    /// The loop's parameters.
    pub params: &'a Params,
    /// Per-batch values of the metrics on batch-end hooks (the value of this batch alone, where
    /// the logs hold Keras's running means); empty elsewhere.
    pub batch_values: &'a Logs,
    pub(crate) stop_training: &'a mut bool,
    pub(crate) in_fit: bool,
    /// Values added to the epoch's logs by [`CallbackContext::add_log`].
    pub(crate) added: Logs,
}

impl<'a> CallbackContext<'a> {
    /// A context for driving callbacks by hand from your own loop.
    ///
    /// ```
    /// use ferrokeras::callbacks::{Callback, CallbackContext, History, Params};
    /// use ferrokeras::prelude::*;
    /// let mut model = Sequential::new().input(&[2]).add(Dense::new(1));
    /// let mut compiled = StepContext::new();
    /// let params = Params { epochs: 1, steps: Some(1), verbose: 0 };
    /// let (mut stop, logs) = (false, Logs::new());
    /// let mut ctx = CallbackContext::new(&mut model, &mut compiled, &params, &logs, &mut stop);
    /// let mut history = History::new();
    /// history.on_train_begin(&mut ctx, &logs).unwrap();
    /// history.on_epoch_end(&mut ctx, 0, &logs).unwrap();
    /// assert_eq!(history.epoch, vec![0]);
    /// ```
    pub fn new(
        model: &'a mut dyn Model,
        compiled: &'a mut StepContext,
        params: &'a Params,
        batch_values: &'a Logs,
        stop_training: &'a mut bool,
    ) -> Self {
        Self {
            model,
            compiled,
            params,
            batch_values,
            stop_training,
            in_fit: false,
            added: Logs::new(),
        }
    }
    /// Adds a value to the epoch's logs from `on_epoch_end` (as a Keras callback writes
    /// `logs[key]`, e.g. the learning-rate callbacks' `learning_rate`): inside `fit`, the
    /// callbacks after this one, `History` and the progress bar see it. Elsewhere it is dropped.
    ///
    /// ```
    /// use ferrokeras::callbacks::{Callback, CallbackContext};
    /// use ferrokeras::prelude::*;
    /// struct Tag;
    /// impl Callback for Tag {
    ///     fn on_epoch_end(&mut self, ctx: &mut CallbackContext, epoch: usize, _: &Logs) -> Result<()> {
    ///         ctx.add_log("epoch_twice", 2.0 * epoch as f64);
    ///         Ok(())
    ///     }
    /// }
    /// # fn main() -> Result<()> {
    /// let mut model = Sequential::new().input(&[2]).add(Dense::new(1))
    ///     .compile(Compile::new().optimizer("sgd").loss("mse"))?;
    /// let x = candle_core::Tensor::zeros((4, 2), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// let y = candle_core::Tensor::zeros((4, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// let h = model.fit((x, y), FitOptions::new().epochs(2).verbose(0).callback(Tag))?;
    /// assert_eq!(h.get("epoch_twice"), &[0.0, 2.0]);
    /// # Ok(()) }
    /// ```
    pub fn add_log(&mut self, key: impl Into<String>, value: f64) {
        self.added.insert(key, value);
    }
    /// Asks `fit` to stop after the current batch (Keras's `model.stop_training = True`).
    pub fn stop_training(&mut self) {
        *self.stop_training = true;
    }
    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        *self.stop_training
    }
    /// Whether this evaluation runs inside `fit` (validation).
    pub fn in_fit(&self) -> bool {
        self.in_fit
    }
}

macro_rules! hooks {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*);)*) => {
        /// A set of hooks called by `fit`, `evaluate` and `predict`, as Keras's `Callback`.
        ///
        /// Every hook has an empty default; implement the ones you need. A hook that returns an
        /// error stops the loop and the error is returned by `fit`.
        ///
        /// ```
        /// use ferrokeras::callbacks::{Callback, CallbackContext};
        /// use ferrokeras::{Logs, Result};
        /// struct StopAtLoss(f64);
        /// impl Callback for StopAtLoss {
        ///     fn on_epoch_end(&mut self, ctx: &mut CallbackContext, _epoch: usize, logs: &Logs) -> Result<()> {
        ///         if logs.get("loss").is_some_and(|l| l < self.0) { ctx.stop_training(); }
        ///         Ok(())
        ///     }
        /// }
        /// ```
        pub trait Callback: Send {
            $(
                $(#[$doc])*
                ///
                /// # Errors
                /// An error stops the loop.
                fn $name(&mut self, ctx: &mut CallbackContext<'_>, $($arg: $ty),*) -> Result<()> {
                    let _ = (ctx, $($arg),*);
                    Ok(())
                }
            )*
        }

        /// A list of callbacks called in order; it is a callback itself.
        ///
        /// ```
        /// use ferrokeras::callbacks::{CallbackList, History};
        /// let mut list = CallbackList::new();
        /// list.push(Box::new(History::new()));
        /// assert_eq!(list.len(), 1);
        /// ```
        #[derive(Default)]
        pub struct CallbackList {
            callbacks: Vec<Box<dyn Callback>>,
        }

        impl Callback for CallbackList {
            $(
                fn $name(&mut self, ctx: &mut CallbackContext<'_>, $($arg: $ty),*) -> Result<()> {
                    for cb in self.callbacks.iter_mut() {
                        cb.$name(ctx, $($arg),*)?;
                    }
                    Ok(())
                }
            )*
        }
    };
}

hooks! {
    /// At the start of `fit`.
    on_train_begin(logs: &Logs);
    /// At the end of `fit`, with the last epoch's logs.
    on_train_end(logs: &Logs);
    /// At the start of an epoch (0-based), after the metrics were reset.
    on_epoch_begin(epoch: usize, logs: &Logs);
    /// At the end of an epoch, with training and `val_` logs.
    on_epoch_end(epoch: usize, logs: &Logs);
    /// Before a training batch.
    on_train_batch_begin(batch: usize, logs: &Logs);
    /// After a training batch, with the step's logs (running means).
    on_train_batch_end(batch: usize, logs: &Logs);
    /// At the start of `evaluate` (and of validation inside `fit`).
    on_test_begin(logs: &Logs);
    /// At the end of `evaluate`.
    on_test_end(logs: &Logs);
    /// Before an evaluation batch.
    on_test_batch_begin(batch: usize, logs: &Logs);
    /// After an evaluation batch.
    on_test_batch_end(batch: usize, logs: &Logs);
    /// At the start of `predict`.
    on_predict_begin(logs: &Logs);
    /// At the end of `predict`.
    on_predict_end(logs: &Logs);
    /// Before a prediction batch.
    on_predict_batch_begin(batch: usize, logs: &Logs);
    /// After a prediction batch.
    on_predict_batch_end(batch: usize, logs: &Logs);
}

impl CallbackList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }
    /// `on_epoch_end` of each callback in turn, each seeing the values that the callbacks before
    /// it added with [`CallbackContext::add_log`], which end up in `logs`.
    pub(crate) fn on_epoch_end_adding(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &mut Logs,
    ) -> Result<()> {
        for cb in self.callbacks.iter_mut() {
            cb.on_epoch_end(ctx, epoch, logs)?;
            for (k, v) in std::mem::take(&mut ctx.added).iter() {
                logs.insert(k, v);
            }
        }
        Ok(())
    }
    /// Appends a callback.
    pub fn push(&mut self, cb: Box<dyn Callback>) {
        self.callbacks.push(cb);
    }
    /// Number of callbacks.
    pub fn len(&self) -> usize {
        self.callbacks.len()
    }
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.callbacks.is_empty()
    }
}

impl From<Vec<Box<dyn Callback>>> for CallbackList {
    fn from(callbacks: Vec<Box<dyn Callback>>) -> Self {
        Self { callbacks }
    }
}
