//! `compile`, and the one `fit` / `evaluate` / `predict` loop.
//!
//! Separation of concerns: the loop (this module) turns inputs into batches with
//! [`crate::data::ArrayAdapter`], calls the model's step for each batch, and calls the callbacks
//! around it. It never looks inside a batch or a step: what a step does is the model's business
//! ([`crate::model::Model::train_step`]), what a batch holds is the data module's. Metrics are reset
//! at the start of every epoch and of every evaluation, as Keras does; at the end of an epoch the
//! logs are re-read from the metric objects when the step reported exactly those metrics, and taken
//! from the step otherwise (custom keys survive).

mod backup;
mod batches;
mod keras_load;
mod keras_save;
pub(crate) use keras_save::compiled_parts;
mod options;

pub use backup::BackupAndRestore;

pub use options::{
    Compile, EvaluateOptions, FitOptions, Inputs, LossSpec, OptimizerSpec, PredictOptions,
};

use std::ops::{Deref, DerefMut};

use batches::Batches;
use options::InputKind;

use crate::callbacks::{Callback, CallbackContext, CallbackList, History, Params, ProgbarLogger};
use crate::data::{ArrayAdapter, Data};
use crate::logs::Logs;
use crate::losses::CompiledLoss;
use crate::metrics::CompiledMetrics;
use crate::model::{Model, StepContext};
use crate::{Error, Result};

/// A model with its compiled state: what Keras's `Model` is after `compile()`.
///
/// `Trainer` dereferences to the model, so its methods stay at hand.
///
/// ```
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let model = Sequential::new().input(&[3]).add(Dense::new(1));
/// let mut model = model.compile(Compile::new().optimizer("sgd").loss("mse"))?;
/// let x = ferrokeras::random::uniform(&[16, 3], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// let y = ferrokeras::random::uniform(&[16, 1], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// let h = model.fit((x.clone(), y.clone()), FitOptions::new().epochs(2).verbose(0))?;
/// assert_eq!(h.epoch, vec![0, 1]);
/// let logs = model.evaluate((x.clone(), y), EvaluateOptions::new().verbose(0))?;
/// assert!(logs.get("loss").is_some());
/// let pred = model.predict(x, PredictOptions::new().verbose(0))?;
/// assert_eq!(pred.tensor()?.dims(), &[16, 1]);
/// # Ok(()) }
/// ```
pub struct Trainer<M: Model> {
    model: M,
    ctx: StepContext,
    /// Where batches go: the device of the model's weights, once it has some.
    device: Option<candle_core::Device>,
}

/// `model.compile(...)` on any model.
pub trait ModelExt: Model + Sized {
    /// Compiles the model: returns it with its optimizer, loss and metrics.
    ///
    /// # Errors
    /// An unknown shorthand, or inconsistent loss weights.
    fn compile(self, c: Compile) -> Result<Trainer<Self>> {
        Trainer::new(self).compile(c)
    }
}

impl<M: Model> ModelExt for M {}

impl<M: Model> Deref for Trainer<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.model
    }
}

impl<M: Model> DerefMut for Trainer<M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.model
    }
}

impl<M: crate::io::SavableModel> Trainer<M> {
    /// Saves the model, architecture and weights (Keras's `model.save`): in Keras 3's own
    /// format for a path ending in `.keras`, else as ferrokeras's model file; both load with
    /// [`crate::io::load_model`].
    ///
    /// A `.keras` file also keeps what Keras keeps of a compiled model: the compile options
    /// (optimizer with its current learning rate or its schedule, losses, loss weights,
    /// metrics) and the optimizer's variables (step count, learning rate, every slot, moving
    /// averages and gradient accumulators), so that Keras's `keras.saving.load_model`, or
    /// [`Trainer::load_keras`] here, returns a compiled model whose training goes on with the
    /// same numbers. A compile with something Keras cannot rebuild (a loss, metric or optimizer
    /// of your own, or the loss-scale wrapper of `mixed_float16`) saves the model alone, as
    /// uncompiled. ferrokeras's own model file keeps no optimizer state
    /// ([`Trainer::save_checkpoint`] does).
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let model = Sequential::new().input(&[3]).add(Dense::new(1));
    /// let trainer = model.compile(Compile::new().optimizer("adam").loss("mse"))?;
    /// let path = std::env::temp_dir().join("ferrokeras-doc-trainer-save.keras");
    /// trainer.save(&path)?;
    /// let loaded = ferrokeras::io::load_model(&path)?;
    /// let values = |ws: Vec<candle_core::Tensor>| -> Vec<Vec<f32>> {
    ///     ws.iter().map(|w| w.flatten_all().unwrap().to_vec1().unwrap()).collect()
    /// };
    /// assert_eq!(values(loaded.get_weights()), values(trainer.get_weights()));
    /// // Compiled: Keras's `load_model`, or `Trainer::load_keras`, gets the optimizer back.
    /// let mut again = Trainer::load_keras(&path)?;
    /// assert_eq!(again.context().optimizer()?.name(), "adam");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A layer that cannot describe itself, or an unwritable path.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        if crate::io::is_keras_path(path) {
            let parts = keras_save::compiled_parts(&self.ctx, &self.model)?;
            return crate::io::keras_file::save_keras_compiled(&self.model, path, parts.as_ref());
        }
        crate::io::save_model(&self.model, path)
    }
}

impl<M: Model> Trainer<M> {
    /// A model with nothing compiled (enough for a step that brings its own optimizers).
    pub fn new(model: M) -> Self {
        crate::runtime::init();
        Self {
            model,
            ctx: StepContext::new(),
            device: None,
        }
    }

    /// Configures optimizer, loss and metrics (each optional), replacing any previous compile.
    ///
    /// # Errors
    /// An unknown shorthand, or inconsistent loss weights.
    pub fn compile(mut self, c: Compile) -> Result<Self> {
        let keras = keras_save::compile_parts(&c);
        let mut ctx = StepContext::new();
        ctx.optimizer = match c.optimizer {
            Some(OptimizerSpec::Name(n)) => Some(crate::optimizers::get(&n)?),
            Some(OptimizerSpec::Object(o)) => Some(o),
            None => None,
        };
        // Keras wraps the optimizer for dynamic loss scaling under `mixed_float16`.
        if crate::mixed_precision::global_policy().needs_loss_scaling() {
            ctx.optimizer = ctx
                .optimizer
                .map(|o| -> Box<dyn crate::optimizers::Optimizer> {
                    if o.name() == "loss_scale_optimizer" {
                        o
                    } else {
                        Box::new(crate::optimizers::LossScaleOptimizer::wrap(o))
                    }
                });
        }
        if !c.losses.is_empty() {
            let losses = c
                .losses
                .into_iter()
                .map(|l| match l {
                    LossSpec::Name(n) => crate::losses::get(&n),
                    LossSpec::Object(o) => Ok(o),
                })
                .collect::<Result<Vec<_>>>()?;
            ctx.loss = Some(CompiledLoss::new(losses, c.loss_weights)?);
        }
        ctx.metrics = CompiledMetrics::with_weighted(c.metrics, c.weighted_metrics)?;
        ctx.keras_compile = Some(keras);
        self.ctx = ctx;
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, mutable.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The model's summary as Keras prints it for a compiled model: the table, and, once the
    /// optimizer has applied an update, its variables in the total and on an "Optimizer params"
    /// line.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let mut model = Sequential::new().input(&[4]).add(Dense::new(3))
    ///     .compile(Compile::new().optimizer("adam").loss("mse"))?;
    /// assert!(!model.summary().contains("Optimizer params"));
    /// let (x, y) = (candle_core::Tensor::zeros((2, 4), candle_core::DType::F32, &candle_core::Device::Cpu)?,
    ///     candle_core::Tensor::zeros((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu)?);
    /// model.fit((x, y), FitOptions::new().verbose(0))?;
    /// // Keras 3.15.1 prints these for the same model after `fit`.
    /// assert!(model.summary().contains(" Total params: 47 (188.00 B)\n"));
    /// assert!(model.summary().contains(" Optimizer params: 32 (128.00 B)\n"));
    /// # Ok(()) }
    /// ```
    pub fn summary(&self) -> String {
        crate::model::format_summary_with_optimizer(
            self.model.name(),
            &self.model.summary_rows(),
            &self.model.trainable_variables(),
            &self.model.non_trainable_variables(),
            self.ctx.optimizer_ref().and_then(|o| o.variable_count()),
        )
    }

    /// The compiled state.
    pub fn context(&mut self) -> &mut StepContext {
        &mut self.ctx
    }

    /// Gives the model back.
    pub fn into_inner(self) -> M {
        self.model
    }

    /// Trains for `epochs` epochs (Keras's `fit`); returns the [`History`].
    ///
    /// # Errors
    /// Bad options or data (with what was expected and received), or any error of a step or
    /// callback.
    pub fn fit(&mut self, data: impl Into<Inputs>, options: FitOptions) -> Result<History> {
        let data = data.into();
        if self.on_cpu() && rayon::current_thread_index().is_none() {
            return crate::runtime::run_on_pool(|| self.fit(data, options));
        }
        let FitOptions {
            epochs,
            batch_size,
            verbose,
            callbacks,
            validation_split,
            validation_data,
            validation_freq,
            validation_batch_size,
            validation_steps,
            shuffle,
            class_weight,
            sample_weight,
            initial_epoch,
            steps_per_epoch,
            backup,
            validation_every_steps,
        } = options;
        let verbose = check_verbose(verbose)?;
        if !(0.0..1.0).contains(&validation_split) || validation_split.is_nan() {
            return Err(Error::value(format!(
                "`validation_split` must be in the interval [0, 1). Received: validation_split={validation_split}"
            )));
        }
        if steps_per_epoch == Some(0) {
            return Err(Error::value(
                "`steps_per_epoch` must be >= 1. Received: steps_per_epoch=0",
            ));
        }
        if validation_freq == 0 {
            return Err(Error::value(
                "`validation_freq` must be >= 1 (validate every N epochs). Received: validation_freq=0; leave out `validation_data` to train without validation",
            ));
        }
        if validation_steps == Some(0) {
            return Err(Error::value(
                "`validation_steps` must be >= 1. Received: validation_steps=0; leave it out to validate on all of the validation data",
            ));
        }
        if validation_batch_size == Some(0) {
            return Err(Error::value(
                "`validation_batch_size` must be >= 1. Received: validation_batch_size=0",
            ));
        }
        let val_batch = validation_batch_size.unwrap_or(batch_size);
        let (mut train, split_val) = match data.kind {
            InputKind::Arrays { x, y } => {
                let mut adapter = ArrayAdapter::new(x, y, sample_weight, batch_size)?;
                if let Some(cw) = class_weight {
                    adapter = adapter.with_class_weight(cw)?;
                }
                if validation_split > 0.0 && validation_data.is_none() {
                    let (t, v) = adapter.split(validation_split)?;
                    (
                        Batches::arrays(t, shuffle),
                        Some(v.with_batch_size(val_batch)),
                    )
                } else {
                    (Batches::arrays(adapter, shuffle), None)
                }
            }
            InputKind::Dataset(ds) => {
                let unsupported = [
                    (sample_weight.is_some(), "sample_weight"),
                    (validation_split > 0.0, "validation_split"),
                ];
                if let Some((_, name)) = unsupported.iter().find(|(set, _)| *set) {
                    return Err(Error::value(format!(
                        "`{name}` is only supported for array inputs; with a dataset, make it yield `(x, y, sample_weight)` and pass validation data as `validation_data`"
                    )));
                }
                let ds = match class_weight {
                    Some(cw) => crate::data::class_weight_dataset(ds, cw),
                    None => ds,
                };
                (Batches::dataset(ds)?, None)
            }
        };
        let mut val = match validation_data {
            Some((vd, vsw)) => Some(match vd.kind {
                InputKind::Arrays { x, y } => {
                    Batches::arrays(ArrayAdapter::new(x, y, vsw, val_batch)?, false)
                }
                InputKind::Dataset(ds) => Batches::dataset(ds)?,
            }),
            None => split_val.map(|v| Batches::arrays(v, false)),
        };
        let steps = steps_per_epoch.or(train.steps());
        let params = Params {
            epochs,
            steps,
            verbose,
        };
        let mut list = CallbackList::from(callbacks);
        let mut history = History::new();
        let mut progbar = (verbose > 0).then(|| ProgbarLogger::new(verbose));
        let mut stop = false;
        let no_logs = Logs::new();

        // The context the callbacks of one hook share.
        macro_rules! callback_context {
            ($batch_values:expr) => {
                CallbackContext {
                    model: &mut self.model,
                    compiled: &mut self.ctx,
                    params: &params,
                    batch_values: $batch_values,
                    stop_training: &mut stop,
                    in_fit: true,
                    added: Logs::new(),
                }
            };
        }
        // Dispatches one hook to the user callbacks, then History, then the progress bar (Keras's order).
        macro_rules! hook {
            ($batch_values:expr, $name:ident($($arg:expr),*)) => {{
                let mut cbx = callback_context!($batch_values);
                list.$name(&mut cbx, $($arg),*)?;
                history.$name(&mut cbx, $($arg),*)?;
                if let Some(p) = progbar.as_mut() {
                    p.$name(&mut cbx, $($arg),*)?;
                }
            }};
        }

        // The first batch builds the metrics (once: reading it starts a pass of the data).
        if !self.ctx.built
            && let Some(first) = train.peek_first()?
        {
            let first = self.on_model_device(first)?;
            self.build_metrics(&first)?;
        }
        hook!(&no_logs, on_train_begin(&no_logs));
        // A backup, if there is one, puts every piece of state where the interrupted run was.
        let resume = match &backup {
            Some(b) => b.restore(&mut self.model, &mut self.ctx, &mut history)?,
            None => None,
        };
        let mut global_step = resume.as_ref().map_or(0, |r| r.global_step);
        let start_epoch = resume.as_ref().map_or(initial_epoch, |r| r.epoch);
        if let Some(r) = &resume {
            train.resume(&r.position, r.position.consumed)?;
        }
        let mut epoch_logs = Logs::new();
        let mut ran_out_warned = false;
        for epoch in start_epoch..epochs {
            // Mid-epoch resume: metrics and data position were restored, not started afresh.
            let mid = resume.as_ref().filter(|r| r.epoch == epoch && r.step > 0);
            if mid.is_none() {
                self.model.reset_metrics(&mut self.ctx);
            }
            self.ctx.epoch = epoch;
            hook!(&no_logs, on_epoch_begin(epoch, &no_logs));
            if steps_per_epoch.is_none() && mid.is_none() {
                train.restart();
            }
            let mut logs = mid.map_or_else(Logs::new, |r| r.last_logs.clone());
            let mut step = mid.map_or(0, |r| r.step);
            while steps_per_epoch.is_none_or(|n| step < n) {
                let batch = match train.next_batch() {
                    Some(b) => b,
                    // With `steps_per_epoch` the stream continues across epochs; as in Keras, an
                    // epoch that finds the pass over starts a new one, and an epoch during which
                    // it ends stops there (with a warning).
                    None if steps_per_epoch.is_some() && step == 0 => {
                        train.restart();
                        match train.next_batch() {
                            Some(b) => b,
                            None => break,
                        }
                    }
                    None => {
                        if let Some(n) = steps_per_epoch
                            && !ran_out_warned
                        {
                            ran_out_warned = true;
                            eprintln!(
                                "UserWarning: the training data ran out after {step} of the {n} steps of epoch {}: the epoch ends here, and the next one starts a new pass over the data. Give steps_per_epoch at most the batches in one pass (with a dataset, or use `.repeat()`) to keep every epoch whole.",
                                epoch + 1
                            );
                        }
                        break;
                    }
                };
                let batch = self.on_model_device(batch?)?;
                self.ctx.step = step;
                hook!(&no_logs, on_train_batch_begin(step, &no_logs));
                logs = self.model.train_step(&mut self.ctx, &batch)?;
                let batch_values = self.batch_values(&logs);
                let mut batch_logs = logs.clone();
                if let (Some(n), Some(v)) = (validation_every_steps, val.as_mut())
                    && (global_step + 1).is_multiple_of(n)
                {
                    // Validation resets the metrics; the training ones are put back afterwards.
                    let saved = self.metric_states();
                    let val_logs = self.run_test(
                        v,
                        validation_steps,
                        &mut list,
                        &mut history,
                        &mut progbar,
                        &params,
                        Some(&mut stop),
                    )?;
                    self.set_metric_states(&saved)?;
                    batch_logs.extend_prefixed(&val_logs, "val_");
                }
                hook!(&batch_values, on_train_batch_end(step, &batch_logs));
                step += 1;
                global_step += 1;
                if let Some(b) = &backup
                    && b.every_batches()
                        .is_some_and(|n| global_step.is_multiple_of(n))
                {
                    history.settle();
                    b.save(
                        &mut self.model,
                        &mut self.ctx,
                        &history,
                        epoch,
                        step,
                        global_step,
                        &train.position(),
                        &logs,
                    )?;
                }
                if stop {
                    break;
                }
            }
            if step == 0 {
                return Err(Error::value(
                    "the training data produced no batch in this epoch; check that the dataset is not empty",
                ));
            }
            epoch_logs = self.metrics_or_logs(logs);
            let due = (epoch + 1).is_multiple_of(validation_freq);
            if let (Some(v), true) = (val.as_mut(), due) {
                let val_logs = self.run_test(
                    v,
                    validation_steps,
                    &mut list,
                    &mut history,
                    &mut progbar,
                    &params,
                    Some(&mut stop),
                )?;
                epoch_logs.extend_prefixed(&val_logs, "val_");
            }
            {
                // As `hook!`, with the values callbacks add to the epoch's logs (Keras's
                // learning-rate callbacks write `learning_rate`) reaching the later ones.
                let mut cbx = callback_context!(&no_logs);
                list.on_epoch_end_adding(&mut cbx, epoch, &mut epoch_logs)?;
                history.on_epoch_end(&mut cbx, epoch, &epoch_logs)?;
                if let Some(p) = progbar.as_mut() {
                    p.on_epoch_end(&mut cbx, epoch, &epoch_logs)?;
                }
            }
            if let Some(b) = &backup {
                history.settle();
                b.save(
                    &mut self.model,
                    &mut self.ctx,
                    &history,
                    epoch + 1,
                    0,
                    global_step,
                    &train.position(),
                    &epoch_logs,
                )?;
            }
            if stop {
                break;
            }
        }
        // Keras swaps an optimizer's moving average of the weights in at the end of training.
        if epochs > start_epoch
            && let Some(opt) = self.ctx.optimizer.as_deref_mut()
        {
            opt.finalize_variable_values(&self.model.trainable_variables())?;
        }
        hook!(&no_logs, on_train_end(&epoch_logs));
        if let Some(b) = &backup {
            b.finish()?;
        }
        Ok(history)
    }

    /// Evaluates the model (Keras's `evaluate(..., return_dict=True)`): the value of every metric.
    ///
    /// # Errors
    /// Bad data, or any error of a step or callback.
    pub fn evaluate(&mut self, data: impl Into<Inputs>, options: EvaluateOptions) -> Result<Logs> {
        let data = data.into();
        if self.on_cpu() && rayon::current_thread_index().is_none() {
            return crate::runtime::run_on_pool(|| self.evaluate(data, options));
        }
        let mut batches = match data.kind {
            InputKind::Arrays { x, y } => Batches::arrays(
                ArrayAdapter::new(x, y, options.sample_weight, options.batch_size)?,
                false,
            ),
            InputKind::Dataset(ds) => {
                if options.sample_weight.is_some() {
                    return Err(Error::value(
                        "`sample_weight` is only supported for array inputs; make the dataset yield `(x, y, sample_weight)`",
                    ));
                }
                Batches::dataset(ds)?
            }
        };
        let verbose = check_verbose(options.verbose)?;
        let steps = match (options.steps, batches.steps()) {
            (Some(s), Some(n)) => Some(s.min(n)),
            (s, n) => s.or(n),
        };
        let params = Params {
            epochs: 1,
            steps,
            verbose,
        };
        let mut list = CallbackList::from(options.callbacks);
        let mut history = History::new();
        let mut progbar = (verbose > 0).then(|| ProgbarLogger::new(verbose));
        self.run_test(
            &mut batches,
            steps,
            &mut list,
            &mut history,
            &mut progbar,
            &params,
            None,
        )
    }

    /// [`Trainer::evaluate`] as a list: the model's metrics in `metrics` order, then any other
    /// keys in alphabetical order (Keras's `evaluate()` without `return_dict`).
    ///
    /// # Errors
    /// As [`Trainer::evaluate`].
    pub fn evaluate_values(
        &mut self,
        data: impl Into<Inputs>,
        options: EvaluateOptions,
    ) -> Result<Vec<f64>> {
        let logs = self.evaluate(data, options)?;
        let names: Vec<String> = self
            .model
            .metrics(&mut self.ctx)
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let mut out: Vec<f64> = names.iter().filter_map(|n| logs.get(n)).collect();
        out.extend(
            logs.iter()
                .filter(|(k, _)| !names.iter().any(|n| n == k))
                .map(|(_, v)| v),
        );
        Ok(out)
    }

    /// Runs `predict_step` over the inputs and concatenates the outputs along the batch axis.
    ///
    /// # Errors
    /// Bad data, or any error of a step or callback.
    pub fn predict(&mut self, x: impl Into<Inputs>, options: PredictOptions) -> Result<Data> {
        let x = x.into();
        if self.on_cpu() && rayon::current_thread_index().is_none() {
            return crate::runtime::run_on_pool(|| self.predict(x, options));
        }
        let mut batches = match x.kind {
            InputKind::Arrays { x, .. } => {
                Batches::arrays(ArrayAdapter::new(x, None, None, options.batch_size)?, false)
            }
            InputKind::Dataset(ds) => Batches::dataset(ds)?,
        };
        let verbose = check_verbose(options.verbose)?;
        let steps = match (options.steps, batches.steps()) {
            (Some(s), Some(n)) => Some(s.min(n)),
            (s, n) => s.or(n),
        };
        let params = Params {
            epochs: 1,
            steps,
            verbose,
        };
        let mut list = CallbackList::from(options.callbacks);
        let mut progbar = (verbose > 0).then(|| ProgbarLogger::new(verbose));
        let mut stop = false;
        let no_logs = Logs::new();
        macro_rules! hook {
            ($name:ident($($arg:expr),*)) => {{
                let mut cbx = CallbackContext {
                    model: &mut self.model,
                    compiled: &mut self.ctx,
                    params: &params,
                    batch_values: &no_logs,
                    stop_training: &mut stop,
                    in_fit: false,
                    added: Logs::new(),
                };
                list.$name(&mut cbx, $($arg),*)?;
                if let Some(p) = progbar.as_mut() {
                    p.$name(&mut cbx, $($arg),*)?;
                }
            }};
        }
        hook!(on_predict_begin(&no_logs));
        let mut outputs = Vec::new();
        let mut step = 0;
        while steps.is_none_or(|n| step < n) {
            let Some(batch) = batches.next_batch() else {
                break;
            };
            let batch = self.on_model_device(batch?)?;
            hook!(on_predict_batch_begin(step, &no_logs));
            outputs.push(self.model.predict_step(&mut self.ctx, &batch)?);
            hook!(on_predict_batch_end(step, &no_logs));
            step += 1;
        }
        hook!(on_predict_end(&no_logs));
        if outputs.is_empty() {
            return Err(Error::value(
                "predict ran no batch: `steps` is 0 or the data is empty; pass at least one sample and steps >= 1",
            ));
        }
        Data::concat(&outputs)
    }

    /// Saves every variable (see [`crate::io::save_weights`]): to a safetensors file, or, for
    /// a path ending in `.weights.h5`, to Keras 3's weights file, with the optimizer's
    /// variables of a compiled trainer as Keras's `model.save_weights` writes them.
    ///
    /// # Errors
    /// An unwritable path; for `.weights.h5`, a model of your own.
    pub fn save_weights(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        if crate::io::is_keras_weights(path) {
            let model = crate::io::keras_layout(&self.model, path)?;
            let parts = keras_save::compiled_parts(&self.ctx, &self.model)?;
            return crate::io::keras_file::save_weights_h5(model, path, parts.as_ref());
        }
        crate::io::save_weights(&self.model, path)
    }

    /// Loads weights saved by [`Trainer::save_weights`]. A Keras weights file (`.h5`) of a
    /// compiled model also restores the optimizer's variables, when this trainer's optimizer
    /// is of the same kind (as Keras's `model.load_weights` does).
    ///
    /// # Errors
    /// A missing, corrupt or mismatching file (the first mismatch is named).
    pub fn load_weights(&mut self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "h5") {
            let model = crate::io::keras_layout(&self.model, path)?;
            let h5 = crate::io::keras_file::load_weights_h5(model, path)?;
            return keras_load::load_optimizer_from_h5(self, &h5, path);
        }
        crate::io::load_weights(&mut self.model, path)
    }

    /// Saves weights, optimizer state and the model's extra state in one file.
    ///
    /// # Errors
    /// An unwritable path.
    pub fn save_checkpoint(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        crate::io::save_checkpoint(&self.model, &self.ctx, path, &Default::default())
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`]; returns its metadata.
    ///
    /// # Errors
    /// A missing, corrupt or mismatching file.
    pub fn load_checkpoint(
        &mut self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        crate::io::load_checkpoint(&mut self.model, &mut self.ctx, path)
    }

    /// Runs one training step on one batch outside `fit` (Keras's `train_on_batch`): `x`,
    /// `(x, y)` or `(x, y, sample_weight)`, moved to the model's device. As in Keras 3 the
    /// metrics are reset first, so the logs are this batch's values (the loss before the
    /// update).
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// use candle_core::{Device, Tensor};
    /// let model = Sequential::new().input(&[2]).add(Dense::new(1));
    /// let mut model = Trainer::new(model)
    ///     .compile(Compile::new().optimizer("sgd").loss("mse").metrics(["mae"]))
    ///     .unwrap();
    /// let x = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
    /// let y = Tensor::new(&[[1f32], [0.0]], &Device::Cpu).unwrap();
    /// let logs = model.train_on_batch((x.clone(), y.clone())).unwrap();
    /// assert_eq!(logs.keys().collect::<Vec<_>>(), ["loss", "mae"]);
    /// let after = model.test_on_batch((x.clone(), y)).unwrap();
    /// assert!(after.get("loss").unwrap() < logs.get("loss").unwrap());
    /// assert_eq!(model.predict_on_batch(x).unwrap().tensor().unwrap().dims(), &[2, 1]);
    /// ```
    ///
    /// # Errors
    /// Any error of the step.
    pub fn train_on_batch(&mut self, batch: impl Into<Data>) -> Result<Logs> {
        let batch = self.on_model_device(batch.into())?;
        self.build_metrics(&batch)?;
        self.model.reset_metrics(&mut self.ctx);
        let logs = self.model.train_step(&mut self.ctx, &batch)?;
        Ok(self.metrics_or_logs(logs))
    }

    /// Runs one evaluation step on one batch (Keras's `test_on_batch`): `(x, y)` or
    /// `(x, y, sample_weight)`; the metrics are reset first, as in Keras 3. See
    /// [`Trainer::train_on_batch`].
    ///
    /// # Errors
    /// Any error of the step.
    pub fn test_on_batch(&mut self, batch: impl Into<Data>) -> Result<Logs> {
        let batch = self.on_model_device(batch.into())?;
        self.build_metrics(&batch)?;
        self.model.reset_metrics(&mut self.ctx);
        let logs = self.model.test_step(&mut self.ctx, &batch)?;
        Ok(self.metrics_or_logs(logs))
    }

    /// The model's predictions for one batch of inputs through its `predict_step` (Keras's
    /// `predict_on_batch`). See [`Trainer::train_on_batch`].
    ///
    /// # Errors
    /// Any error of the step.
    pub fn predict_on_batch(&mut self, x: impl Into<Data>) -> Result<Data> {
        let x = self.on_model_device(Data::pack(x.into(), None, None))?;
        self.model.predict_step(&mut self.ctx, &x)
    }

    /// Resets every metric of the model (Keras's `model.reset_metrics()`).
    pub fn reset_metrics(&mut self) {
        self.model.reset_metrics(&mut self.ctx);
    }

    #[allow(clippy::too_many_arguments)]
    fn run_test(
        &mut self,
        batches: &mut Batches,
        steps: Option<usize>,
        list: &mut CallbackList,
        history: &mut History,
        progbar: &mut Option<ProgbarLogger>,
        params: &Params,
        fit_stop: Option<&mut bool>,
    ) -> Result<Logs> {
        let steps = steps.or(batches.steps());
        let test_params = Params {
            epochs: params.epochs,
            steps,
            verbose: params.verbose,
        };
        // Inside `fit`, a callback asking to stop during validation stops `fit` after the epoch
        // (Keras's `model.stop_training`); `evaluate` has its own flag.
        let in_fit = fit_stop.is_some();
        // Inside `fit` the callbacks keep `fit`'s parameters, as Keras's validation reuses
        // `fit`'s CallbackList.
        let test_params = if in_fit { params.clone() } else { test_params };
        let mut own_stop = false;
        let stop = fit_stop.unwrap_or(&mut own_stop);
        let no_logs = Logs::new();
        macro_rules! hook {
            ($name:ident($($arg:expr),*)) => {{
                let mut cbx = CallbackContext {
                    model: &mut self.model,
                    compiled: &mut self.ctx,
                    params: &test_params,
                    batch_values: &no_logs,
                    stop_training: &mut *stop,
                    in_fit,
                    added: Logs::new(),
                };
                list.$name(&mut cbx, $($arg),*)?;
                history.$name(&mut cbx, $($arg),*)?;
                if let Some(p) = progbar.as_mut() {
                    p.$name(&mut cbx, $($arg),*)?;
                }
            }};
        }
        if !self.ctx.built
            && let Some(first) = batches.peek_first()?
        {
            let first = self.on_model_device(first)?;
            self.build_metrics(&first)?;
        }
        batches.restart();
        self.model.reset_metrics(&mut self.ctx);
        hook!(on_test_begin(&no_logs));
        let mut logs = Logs::new();
        let mut step = 0;
        while steps.is_none_or(|n| step < n) {
            let Some(batch) = batches.next_batch() else {
                break;
            };
            let batch = self.on_model_device(batch?)?;
            hook!(on_test_batch_begin(step, &no_logs));
            logs = self.model.test_step(&mut self.ctx, &batch)?;
            hook!(on_test_batch_end(step, &logs));
            step += 1;
        }
        let logs = self.metrics_or_logs(logs);
        hook!(on_test_end(&logs));
        Ok(logs)
    }

    /// Keras's symbolic build: resolves the compiled metrics from the first batch's targets and a
    /// forward pass in inference mode, so that every compiled metric exists before the first step.
    fn build_metrics(&mut self, batch: &Data) -> Result<()> {
        if self.ctx.built {
            return Ok(());
        }
        let (x, y, _) = batch.unpack()?;
        if let Some(y) = y {
            let y_pred = self.model.call(x, false)?.map(&mut |t| Ok(t.detach()))?;
            let names = self.model.output_names();
            self.ctx.build(y, &y_pred, &names)?;
        }
        Ok(())
    }

    /// The state of every metric in the model's list, by name.
    fn metric_states(&mut self) -> Vec<(String, Vec<f64>)> {
        self.model
            .metrics(&mut self.ctx)
            .iter()
            .map(|m| (m.name().to_string(), m.state()))
            .collect()
    }

    /// Restores [`Trainer::metric_states`].
    fn set_metric_states(&mut self, states: &[(String, Vec<f64>)]) -> Result<()> {
        for m in self.model.metrics(&mut self.ctx) {
            if let Some((_, s)) = states.iter().find(|(n, _)| n == m.name()) {
                m.set_state(s)?;
            }
        }
        Ok(())
    }

    /// Keras's `_get_metrics_result_or_logs`.
    fn metrics_or_logs(&mut self, logs: Logs) -> Logs {
        let result = self.model.get_metrics_result(&mut self.ctx);
        if !result.is_empty() && result.keys().eq(logs.keys()) {
            result
        } else {
            logs
        }
    }

    /// Whether the model runs on the CPU (its weights' device, else the default device): there,
    /// `fit`, `evaluate` and `predict` run their loop on rayon's pool
    /// ([`crate::runtime::run_on_pool`], which says why); elsewhere on the calling thread (one
    /// thread drives a CUDA device).
    fn on_cpu(&self) -> bool {
        match &self.device {
            Some(d) => d.is_cpu(),
            None => self.model.variables().first().map_or_else(
                || crate::runtime::default_device().is_cpu(),
                |v| v.as_tensor().device().is_cpu(),
            ),
        }
    }

    /// The batch on the model's device (the device of its weights; before it has any, the
    /// default device of [`crate::runtime::default_device`]), copied only when elsewhere.
    fn on_model_device(&mut self, batch: Data) -> Result<Data> {
        let device = match &self.device {
            Some(d) => d.clone(),
            None => match self.model.variables().first() {
                Some(v) => {
                    let d = v.as_tensor().device().clone();
                    self.device = Some(d.clone());
                    d
                }
                None => crate::runtime::default_device(),
            },
        };
        batch.to_device(&device)
    }

    /// The per-batch value of every metric that reports one and appears in the step's logs
    /// (deferred where the metric's result is: read when someone reads it).
    fn batch_values(&mut self, logs: &Logs) -> Logs {
        let mut out = Logs::new();
        for m in self.model.metrics(&mut self.ctx) {
            if !logs.contains(m.name()) {
                continue;
            }
            if let Some(value) = m.deferred_batch_result() {
                out.insert_deferred(m.name(), value);
            } else if let Some(v) = m.batch_result() {
                out.insert(m.name(), v);
            }
        }
        out
    }
}

/// `verbose` must be 0, 1 or 2; unset means "auto" (1).
fn check_verbose(verbose: Option<u8>) -> Result<u8> {
    match verbose.unwrap_or(1) {
        v @ 0..=2 => Ok(v),
        v => Err(Error::value(format!(
            "`verbose` must be 0, 1 or 2 (or unset for \"auto\"). Received: verbose={v}"
        ))),
    }
}
