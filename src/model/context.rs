//! [`StepContext`]: what `compile` configured, handed to every step.

use crate::losses::CompiledLoss;
use crate::metrics::{CompiledMetrics, Mean, Metric};
use crate::optimizers::Optimizer;
use crate::{Error, Result};

/// What a step may use besides the model: the optimizer, the compiled loss and metrics, and the
/// loss tracker (Keras's `self.optimizer`, `self.compiled_loss`, `self.compiled_metrics`,
/// `self._loss_tracker`). It never holds the model, so `&mut self` and `&mut ctx` borrow apart.
///
/// ```
/// use ferrokeras::model::StepContext;
/// let mut ctx = StepContext::new();
/// assert!(ctx.optimizer().is_err()); // nothing compiled
/// ```
pub struct StepContext {
    pub(crate) optimizer: Option<Box<dyn Optimizer>>,
    pub(crate) loss: Option<CompiledLoss>,
    pub(crate) metrics: CompiledMetrics,
    pub(crate) loss_tracker: Mean,
    /// Whether a step has reached for the loss tracker (a model without a compiled loss whose
    /// regularization losses the default steps track).
    pub(crate) loss_tracker_used: bool,
    /// One `Mean("{output}_loss")` per output of a multi-output model with a compiled loss.
    pub(crate) output_loss_trackers: Vec<Mean>,
    /// Whether [`StepContext::build`] ran.
    pub(crate) built: bool,
    pub(crate) epoch: usize,
    pub(crate) step: usize,
    /// The losses and metrics of the `compile` in Keras's `compile_config` form, or why Keras
    /// could not rebuild them (`None` when nothing was compiled).
    pub(crate) keras_compile: Option<std::result::Result<serde_json::Value, String>>,
}

impl Default for StepContext {
    fn default() -> Self {
        Self::new()
    }
}

impl StepContext {
    /// A context with nothing compiled.
    pub fn new() -> Self {
        Self {
            optimizer: None,
            loss: None,
            metrics: CompiledMetrics::empty(),
            loss_tracker: Mean::new("loss"),
            loss_tracker_used: false,
            output_loss_trackers: Vec::new(),
            built: false,
            epoch: 0,
            step: 0,
            keras_compile: None,
        }
    }

    /// The compiled optimizer.
    ///
    /// # Errors
    /// No optimizer was given to `compile`.
    pub fn optimizer(&mut self) -> Result<&mut (dyn Optimizer + 'static)> {
        self.optimizer.as_deref_mut().ok_or_else(|| {
            Error::state(
                "This model has no optimizer: call `compile` with an optimizer (e.g. Compile::new().optimizer(\"adam\")) before `fit`, or use your own optimizer in `train_step`.",
            )
        })
    }

    /// The compiled optimizer, if any, to read.
    pub fn optimizer_ref(&self) -> Option<&(dyn Optimizer + 'static)> {
        self.optimizer.as_deref()
    }

    /// Whether an optimizer was compiled.
    pub fn has_optimizer(&self) -> bool {
        self.optimizer.is_some()
    }

    /// The compiled loss, if any.
    pub fn compiled_loss(&self) -> Option<&CompiledLoss> {
        self.loss.as_ref()
    }

    /// The compiled metrics (built on their first update).
    pub fn compiled_metrics(&mut self) -> &mut CompiledMetrics {
        &mut self.metrics
    }

    /// The `Mean(name="loss")` that default steps update. Once asked for, it is part of
    /// [`StepContext::default_metrics`] even without a compiled loss (the default steps track a
    /// model's regularization losses in it).
    pub fn loss_tracker(&mut self) -> &mut Mean {
        self.loss_tracker_used = true;
        &mut self.loss_tracker
    }

    /// The default metrics list, in Keras's order: the loss tracker (when a loss is compiled, or
    /// once a step updated it),
    /// the compiled metrics, then, for a model of several outputs, each output's loss
    /// (`{output}_loss`, updated by [`crate::model::default_compute_loss`]).
    pub fn default_metrics(&mut self) -> Vec<&mut dyn Metric> {
        let mut out: Vec<&mut dyn Metric> = Vec::new();
        if self.loss.is_some() || self.loss_tracker_used {
            out.push(&mut self.loss_tracker);
        }
        out.extend(self.metrics.metrics_mut());
        out.extend(
            self.output_loss_trackers
                .iter_mut()
                .map(|m| m as &mut dyn Metric),
        );
        out
    }

    /// The per-output loss trackers of a multi-output model (empty until `fit` or `evaluate`
    /// builds them from the first batch, or with one output).
    pub fn output_loss_trackers(&mut self) -> &mut [Mean] {
        &mut self.output_loss_trackers
    }

    /// Builds the compiled metrics and the per-output loss trackers from the first targets and
    /// predictions, naming per-output values after `output_names` (or `output_{i}` when they do
    /// not match the outputs). `fit` and `evaluate` call it before the first step; calling it
    /// again is a no-op.
    ///
    /// # Errors
    /// As [`CompiledMetrics::build`].
    pub fn build(
        &mut self,
        y: &crate::Data,
        y_pred: &crate::Data,
        output_names: &[String],
    ) -> Result<()> {
        let outputs = y_pred.flatten().len();
        let names: Vec<String> = match y_pred {
            crate::Data::Dict(items) if items.len() == outputs => {
                items.iter().map(|(k, _)| k.clone()).collect()
            }
            _ if output_names.len() == outputs => output_names.to_vec(),
            _ => (0..outputs).map(|i| format!("output_{i}")).collect(),
        };
        self.metrics.build_named(y, y_pred, &names)?;
        if self.built {
            return Ok(());
        }
        if self.loss.is_some() && outputs > 1 {
            self.output_loss_trackers = names
                .iter()
                .map(|n| Mean::new(format!("{n}_loss")))
                .collect();
        }
        self.built = true;
        Ok(())
    }

    /// The current epoch (0-based) inside `fit`.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// The current step (0-based) within the epoch.
    pub fn step(&self) -> usize {
        self.step
    }
}
