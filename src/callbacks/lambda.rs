//! `LambdaCallback`: a callback from closures.

use super::{Callback, CallbackContext};
use crate::Result;
use crate::logs::Logs;

type EpochFn = Box<dyn FnMut(usize, &Logs) -> Result<()> + Send>;
type PlainFn = Box<dyn FnMut(&Logs) -> Result<()> + Send>;

/// A callback built from closures, Keras's `LambdaCallback`.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use ferrokeras::callbacks::LambdaCallback;
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let cb = LambdaCallback::new().on_epoch_end(move |epoch, logs| {
///     s.lock().unwrap().push((epoch, logs.get("loss")));
///     Ok(())
/// });
/// # let _ = cb;
/// ```
#[derive(Default)]
pub struct LambdaCallback {
    epoch_begin: Option<EpochFn>,
    epoch_end: Option<EpochFn>,
    batch_begin: Option<EpochFn>,
    batch_end: Option<EpochFn>,
    train_begin: Option<PlainFn>,
    train_end: Option<PlainFn>,
}

impl LambdaCallback {
    /// A callback that does nothing yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Called with `(epoch, logs)` at the start of each epoch.
    pub fn on_epoch_begin(
        mut self,
        f: impl FnMut(usize, &Logs) -> Result<()> + Send + 'static,
    ) -> Self {
        self.epoch_begin = Some(Box::new(f));
        self
    }
    /// Called with `(epoch, logs)` at the end of each epoch.
    pub fn on_epoch_end(
        mut self,
        f: impl FnMut(usize, &Logs) -> Result<()> + Send + 'static,
    ) -> Self {
        self.epoch_end = Some(Box::new(f));
        self
    }
    /// Called with `(batch, logs)` before each training batch.
    pub fn on_batch_begin(
        mut self,
        f: impl FnMut(usize, &Logs) -> Result<()> + Send + 'static,
    ) -> Self {
        self.batch_begin = Some(Box::new(f));
        self
    }
    /// Called with `(batch, logs)` after each training batch.
    pub fn on_batch_end(
        mut self,
        f: impl FnMut(usize, &Logs) -> Result<()> + Send + 'static,
    ) -> Self {
        self.batch_end = Some(Box::new(f));
        self
    }
    /// Keras 3's name for [`LambdaCallback::on_batch_begin`].
    pub fn on_train_batch_begin(
        self,
        f: impl FnMut(usize, &Logs) -> Result<()> + Send + 'static,
    ) -> Self {
        self.on_batch_begin(f)
    }
    /// Keras 3's name for [`LambdaCallback::on_batch_end`].
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use ferrokeras::callbacks::LambdaCallback;
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let batches = Arc::new(Mutex::new(0));
    /// let b = batches.clone();
    /// let mut model = Sequential::new().input(&[2]).add(Dense::new(1))
    ///     .compile(Compile::new().optimizer("sgd").loss("mse"))?;
    /// let x = candle_core::Tensor::zeros((10, 2), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// let y = candle_core::Tensor::zeros((10, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// let cb = LambdaCallback::new().on_train_batch_end(move |_, _| {
    ///     *b.lock().unwrap() += 1;
    ///     Ok(())
    /// });
    /// model.fit((x, y), FitOptions::new().batch_size(4).verbose(0).callback(cb))?;
    /// assert_eq!(*batches.lock().unwrap(), 3);
    /// # Ok(()) }
    /// ```
    pub fn on_train_batch_end(
        self,
        f: impl FnMut(usize, &Logs) -> Result<()> + Send + 'static,
    ) -> Self {
        self.on_batch_end(f)
    }
    /// Called at the start of training.
    pub fn on_train_begin(mut self, f: impl FnMut(&Logs) -> Result<()> + Send + 'static) -> Self {
        self.train_begin = Some(Box::new(f));
        self
    }
    /// Called at the end of training.
    pub fn on_train_end(mut self, f: impl FnMut(&Logs) -> Result<()> + Send + 'static) -> Self {
        self.train_end = Some(Box::new(f));
        self
    }
}

impl Callback for LambdaCallback {
    fn on_epoch_begin(
        &mut self,
        _: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.epoch_begin.as_mut().map_or(Ok(()), |f| f(epoch, logs))
    }
    fn on_epoch_end(
        &mut self,
        _: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.epoch_end.as_mut().map_or(Ok(()), |f| f(epoch, logs))
    }
    fn on_train_batch_begin(
        &mut self,
        _: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.batch_begin.as_mut().map_or(Ok(()), |f| f(batch, logs))
    }
    fn on_train_batch_end(
        &mut self,
        _: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.batch_end.as_mut().map_or(Ok(()), |f| f(batch, logs))
    }
    fn on_train_begin(&mut self, _: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.train_begin.as_mut().map_or(Ok(()), |f| f(logs))
    }
    fn on_train_end(&mut self, _: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.train_end.as_mut().map_or(Ok(()), |f| f(logs))
    }
}
