//! Models: the [`Model`] trait with its overridable steps, [`Sequential`] and [`Functional`].
//!
//! A step receives a [`StepContext`] (what `compile` configured: optimizer, compiled loss, compiled
//! metrics, loss tracker) and the batch as [`Data`]. Every default step is also a public function
//! ([`default_train_step`], ...) so that an override can call "super".

mod context;
mod functional;
mod sequential;
mod summary;

pub use context::StepContext;
pub(crate) use functional::model_json;
pub use functional::{Functional, Input, KerasTensor, LayerExt, SharedLayer};
pub use sequential::Sequential;
pub use summary::format_summary;
pub(crate) use summary::format_summary_with_optimizer;

use candle_core::Tensor;

use crate::data::Data;
use crate::layers::LayerSummary;
use crate::logs::Logs;
use crate::metrics::Metric;
use crate::tape::{GradientTape, Variable};
use crate::{Error, Result};

/// A trainable model: a forward pass, its variables, and the steps that `fit`, `evaluate` and
/// `predict` run for every batch.
///
/// Required: [`Model::call`] and [`Model::variables`]. Override [`Model::train_step`],
/// [`Model::test_step`] or [`Model::predict_step`] to change what happens in `fit()`, `evaluate()`
/// or `predict()`; override [`Model::metrics`] to report and reset your own metric objects.
///
/// ```
/// use ferrokeras::prelude::*;
///
/// struct CustomModel { inner: Functional }
///
/// impl Model for CustomModel {
///     fn call(&mut self, x: &Data, training: bool) -> Result<Data> { self.inner.call(x, training) }
///     fn variables(&self) -> Vec<Variable> { self.inner.variables() }
///     fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
///         let (x, y, sw) = data.unpack_xy()?;
///         let y_pred = self.call(x, true)?;
///         let loss = self.compute_loss(ctx, x, Some(y), &y_pred, sw)?;
///         let vars = self.trainable_variables();
///         let grads = GradientTape::gradient(&loss, &vars)?;
///         ctx.optimizer()?.apply(&grads, &vars)?;
///         for m in self.metrics(ctx) {
///             if m.name() == "loss" { m.update_values(&loss, None)? }
///             else { m.update_state(y.tensor()?, y_pred.tensor()?, sw)? }
///         }
///         Ok(self.get_metrics_result(ctx))
///     }
/// }
/// # fn main() -> ferrokeras::Result<()> {
/// let inputs = Input::new(&[32]);
/// let outputs = Dense::new(1).apply(&inputs)?;
/// let model = CustomModel { inner: Functional::new(&[inputs], &[outputs])? };
/// let mut model = Trainer::new(model).compile(Compile::new().optimizer("adam").loss("mse").metrics(["mae"]))?;
/// let x = ferrokeras::random::uniform(&[64, 32], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// let y = ferrokeras::random::uniform(&[64, 1], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// let history = model.fit((x, y), FitOptions::new().epochs(2).verbose(0))?;
/// assert_eq!(history.history["loss"].len(), 2);
/// # Ok(()) }
/// ```
pub trait Model: Send {
    /// The forward pass (`self(x, training=...)` in Keras).
    ///
    /// # Errors
    /// Inputs of the wrong structure or shape.
    fn call(&mut self, x: &Data, training: bool) -> Result<Data>;

    /// Every variable of the model.
    fn variables(&self) -> Vec<Variable>;

    /// The model's name (shown by `summary`).
    fn name(&self) -> &str {
        "model"
    }

    /// The variables that gradients update.
    fn trainable_variables(&self) -> Vec<Variable> {
        self.variables()
            .into_iter()
            .filter(Variable::trainable)
            .collect()
    }

    /// The variables not updated by gradients.
    fn non_trainable_variables(&self) -> Vec<Variable> {
        self.variables()
            .into_iter()
            .filter(|v| !v.trainable())
            .collect()
    }

    /// Regularization losses of the current weights (Keras's `model.losses`).
    ///
    /// # Errors
    /// A failing tensor operation.
    fn losses(&self) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }

    /// One training step on one batch; returns the logs shown by the progress bar and callbacks.
    ///
    /// # Errors
    /// Whatever the step fails on; `fit` stops and returns it.
    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        default_train_step(self, ctx, data)
    }

    /// One evaluation step on one batch.
    ///
    /// # Errors
    /// Whatever the step fails on.
    fn test_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        default_test_step(self, ctx, data)
    }

    /// One prediction step on one batch; `predict` concatenates the results along the batch axis.
    ///
    /// # Errors
    /// Whatever the step fails on.
    fn predict_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Data> {
        default_predict_step(self, ctx, data)
    }

    /// The compiled loss plus the regularization losses (Keras's `compute_loss`), with sample weights.
    ///
    /// # Errors
    /// No loss at all (nothing compiled and no regularization), or targets missing for a compiled
    /// loss.
    fn compute_loss(
        &mut self,
        ctx: &mut StepContext,
        x: &Data,
        y: Option<&Data>,
        y_pred: &Data,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        default_compute_loss(self, ctx, x, y, y_pred, sample_weight)
    }

    /// Updates the compiled metrics and returns the current value of every metric in
    /// [`Model::metrics`] (Keras's `compute_metrics`).
    ///
    /// # Errors
    /// A metric rejecting its inputs.
    fn compute_metrics(
        &mut self,
        ctx: &mut StepContext,
        x: &Data,
        y: Option<&Data>,
        y_pred: &Data,
        sample_weight: Option<&Tensor>,
    ) -> Result<Logs> {
        let _ = x;
        if let Some(y) = y {
            let mask = self.output_mask()?;
            ctx.compiled_metrics()
                .update_state_masked(y, y_pred, sample_weight, mask.as_ref())?;
        }
        Ok(self.get_metrics_result(ctx))
    }

    /// The metrics that are reported and reset at the start of every epoch and of `evaluate`:
    /// by default the loss tracker and the compiled metrics. Return your own to replace them
    /// (the guide's "going lower-level" section).
    fn metrics<'a>(&'a mut self, ctx: &'a mut StepContext) -> Vec<&'a mut dyn Metric> {
        ctx.default_metrics()
    }

    /// `{m.name(): m.result()}` over [`Model::metrics`]. Where a result would have to wait for
    /// a device (metrics on a GPU), its log value is deferred ([`Metric::deferred_result`]): the
    /// device is read when someone reads the value, not by the step.
    fn get_metrics_result(&mut self, ctx: &mut StepContext) -> Logs {
        let mut logs = Logs::new();
        for m in self.metrics(ctx) {
            match m.deferred_result() {
                Some(value) => logs.insert_deferred(m.name(), value),
                None => logs.insert(m.name(), m.result()),
            }
        }
        logs
    }

    /// Resets every metric in [`Model::metrics`].
    fn reset_metrics(&mut self, ctx: &mut StepContext) {
        for m in self.metrics(ctx) {
            m.reset_state();
        }
    }

    /// The names of the model's outputs, in output order (Keras's `output_names`): a functional
    /// model's output layers. Per-output metrics and losses are named after them
    /// (`{output}_loss`, `{output}_mae`); empty (the default) names them `output_{i}`.
    fn output_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// The mask of the last call's output, `(batch, timesteps)` (Keras's mask on `y_pred`):
    /// set when the model's input passed an `Embedding` with `mask_zero` or a `Masking` layer
    /// and the layers after kept the mask. The default [`Model::compute_loss`] and
    /// [`Model::compute_metrics`] weight the values by it, as Keras does, so padded steps
    /// count for nothing. By default `None`.
    ///
    /// # Errors
    /// A mask the loss cannot use (a mask on one of several outputs).
    fn output_mask(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Rows for `summary()` (empty for a model that does not describe its layers).
    fn summary_rows(&self) -> Vec<LayerSummary> {
        Vec::new()
    }

    /// The Keras-style summary table.
    fn summary(&self) -> String {
        format_summary(
            self.name(),
            &self.summary_rows(),
            &self.trainable_variables(),
            &self.non_trainable_variables(),
        )
    }

    /// The models this model is made of, each with a name: a GAN's `discriminator` and
    /// `generator`. None by default. A model that lists them gets structural names for saving
    /// and loading from its parts ([`Model::named_variables`], and for older files
    /// [`Model::legacy_named_variables`]) without writing either. A part named `""` lends its
    /// names unprefixed: a model that wraps one functional model (the guide's `CustomModel`)
    /// saves the weights under the same names as that model.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// struct Pair { a: Sequential, b: Sequential }
    /// impl Model for Pair {
    ///     fn call(&mut self, x: &Data, training: bool) -> ferrokeras::Result<Data> {
    ///         let h = self.a.call(x, training)?;
    ///         self.b.call(&h, training)
    ///     }
    ///     fn variables(&self) -> Vec<Variable> {
    ///         let mut v = self.a.variables();
    ///         v.extend(self.b.variables());
    ///         v
    ///     }
    ///     fn submodels(&self) -> Vec<(&str, &dyn Model)> {
    ///         vec![("encoder", &self.a), ("decoder", &self.b)]
    ///     }
    /// }
    /// let pair = Pair {
    ///     a: Sequential::new().input(&[3]).add(Dense::new(2)),
    ///     b: Sequential::new().input(&[2]).add(Dense::new(1)),
    /// };
    /// let names: Vec<String> = pair.named_variables().into_iter().map(|(n, _)| n).collect();
    /// assert_eq!(names, ["encoder/dense/kernel", "encoder/dense/bias",
    ///                    "decoder/dense/kernel", "decoder/dense/bias"]);
    /// ```
    fn submodels(&self) -> Vec<(&str, &dyn Model)> {
        Vec::new()
    }

    /// Every variable with its structural name, used by saving and loading: a name that depends on
    /// the model's structure only (`dense_1/kernel` is the second `Dense` of this model), not on how
    /// many layers the process created before. By default: the variables of each of
    /// [`Model::submodels`] as `{part}/{its structural name}`, then any other variable under its
    /// own name.
    fn named_variables(&self) -> Vec<(String, Variable)> {
        compose_named(self, |m| m.named_variables())
    }

    /// The structural names that weights and checkpoint files written before layer lists
    /// followed Keras's order gave the variables, where they differ from
    /// [`Model::named_variables`] (a branched functional model, whose layers were then listed in
    /// the order they first run); `None` (the default) when they are the same. Loading such a
    /// file (it lacks the `weight_names` metadata) uses them, so each weight reaches its layer.
    ///
    /// By default: those of [`Model::submodels`], composed as [`Model::named_variables`] composes
    /// theirs, where one of them has any.
    fn legacy_named_variables(&self) -> Option<Vec<(String, Variable)>> {
        if self
            .submodels()
            .iter()
            .all(|(_, m)| m.legacy_named_variables().is_none())
        {
            return None;
        }
        Some(compose_named(self, |m| {
            m.legacy_named_variables()
                .unwrap_or_else(|| m.named_variables())
        }))
    }

    /// State besides the variables that a checkpoint must keep (e.g. the optimizers a GAN holds in
    /// its own fields): named tensors. Empty by default.
    ///
    /// # Errors
    /// A state that cannot be read.
    fn extra_state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores what [`Model::extra_state`] returned.
    ///
    /// # Errors
    /// A state that does not fit the model.
    fn load_extra_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(Error::value(format!(
                "the checkpoint holds {} extra state entries (e.g. `{}`), but this model does not implement `load_extra_state`",
                state.len(),
                state[0].0
            )))
        }
    }

    /// The model as a [`crate::io::SavableModel`] (its architecture as Keras's JSON and its
    /// layers as Keras's files list them), where it is one: `Sequential`, `Functional` and
    /// `LoadedModel` are; a model of your own is not (the default, `None`). Files in Keras's
    /// formats (`.keras`, `.weights.h5`) need it.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// let model = Sequential::new().input(&[2]).add(Dense::new(1));
    /// assert!(model.as_savable().is_some());
    /// ```
    fn as_savable(&self) -> Option<&dyn crate::io::SavableModel> {
        None
    }

    /// Copies of the current values of every variable, in [`Model::variables`] order (Keras's
    /// `get_weights`, which returns NumPy copies): later training does not change them, so
    /// `set_weights(&w)` restores them.
    fn get_weights(&self) -> Vec<Tensor> {
        self.variables()
            .iter()
            .map(|v| {
                let value = v.value();
                // A copy can only fail when the device is out of memory; the live value is then
                // the best that can be returned without changing the signature.
                value.copy().unwrap_or(value)
            })
            .collect()
    }

    /// Replaces every variable's value, in [`Model::variables`] order (Keras's `set_weights`).
    /// Every shape is checked before anything is assigned, so a failed call changes nothing.
    ///
    /// # Errors
    /// A different number of tensors, or a shape mismatch naming the variable.
    fn set_weights(&mut self, weights: &[Tensor]) -> Result<()> {
        let vars = self.variables();
        if vars.len() != weights.len() {
            return Err(Error::value(format!(
                "set_weights expected {} tensors (one per variable: {}), received {}",
                vars.len(),
                vars.iter()
                    .map(|v| v.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                weights.len()
            )));
        }
        for (v, w) in vars.iter().zip(weights) {
            if w.dims() != v.shape().dims() {
                return Err(Error::value(format!(
                    "cannot assign to variable `{}`: expected a value of shape {:?}, received shape {:?}",
                    v.name(),
                    v.shape().dims(),
                    w.dims()
                )));
            }
        }
        for (v, w) in vars.iter().zip(weights) {
            v.assign(w)?;
        }
        Ok(())
    }
}

impl<M: Model + ?Sized> Model for Box<M> {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        (**self).call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        (**self).variables()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        (**self).losses()
    }
    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        (**self).train_step(ctx, data)
    }
    fn test_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        (**self).test_step(ctx, data)
    }
    fn predict_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Data> {
        (**self).predict_step(ctx, data)
    }
    fn compute_loss(
        &mut self,
        ctx: &mut StepContext,
        x: &Data,
        y: Option<&Data>,
        y_pred: &Data,
        sw: Option<&Tensor>,
    ) -> Result<Tensor> {
        (**self).compute_loss(ctx, x, y, y_pred, sw)
    }
    fn compute_metrics(
        &mut self,
        ctx: &mut StepContext,
        x: &Data,
        y: Option<&Data>,
        y_pred: &Data,
        sw: Option<&Tensor>,
    ) -> Result<Logs> {
        (**self).compute_metrics(ctx, x, y, y_pred, sw)
    }
    fn metrics<'a>(&'a mut self, ctx: &'a mut StepContext) -> Vec<&'a mut dyn Metric> {
        (**self).metrics(ctx)
    }
    fn output_names(&self) -> Vec<String> {
        (**self).output_names()
    }
    fn output_mask(&self) -> Result<Option<Tensor>> {
        (**self).output_mask()
    }
    fn summary_rows(&self) -> Vec<LayerSummary> {
        (**self).summary_rows()
    }
    fn extra_state(&self) -> Result<Vec<(String, Tensor)>> {
        (**self).extra_state()
    }
    fn named_variables(&self) -> Vec<(String, Variable)> {
        (**self).named_variables()
    }
    fn legacy_named_variables(&self) -> Option<Vec<(String, Variable)>> {
        (**self).legacy_named_variables()
    }
    fn submodels(&self) -> Vec<(&str, &dyn Model)> {
        (**self).submodels()
    }
    fn load_extra_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        (**self).load_extra_state(state)
    }
    fn as_savable(&self) -> Option<&dyn crate::io::SavableModel> {
        (**self).as_savable()
    }
}

/// The variables of `model`'s submodels named `{part}/{name}` (`names` gives a part's names), then
/// the model's other variables under their own names.
fn compose_named<M: Model + ?Sized>(
    model: &M,
    names: impl Fn(&dyn Model) -> Vec<(String, Variable)>,
) -> Vec<(String, Variable)> {
    let mut out: Vec<(String, Variable)> = Vec::new();
    for (part, m) in model.submodels() {
        out.extend(names(m).into_iter().map(|(n, v)| match part {
            "" => (n, v),
            _ => (format!("{part}/{n}"), v),
        }));
    }
    let named: std::collections::HashSet<_> = out.iter().map(|(_, v)| v.id()).collect();
    for v in model.variables() {
        if !named.contains(&v.id()) {
            out.push((v.name().to_string(), v));
        }
    }
    out
}

/// Structural names for the variables of `layers` (in order): each layer gets a name unique within
/// this list, from its own name without the process-wide counter suffix (`dense_7` → `dense`, then
/// `dense_1`, ...), and each variable keeps its last path component (`kernel`).
pub fn structural_names(
    layers: impl IntoIterator<Item = (String, Vec<Variable>)>,
) -> Vec<(String, Variable)> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (layer_name, vars) in layers {
        let base = match layer_name.rsplit_once('_') {
            Some((head, tail)) if !head.is_empty() && tail.chars().all(|c| c.is_ascii_digit()) => {
                head.to_string()
            }
            _ => layer_name.clone(),
        };
        let n = seen.entry(base.clone()).or_insert(0);
        let local = if *n == 0 { base } else { format!("{base}_{n}") };
        *n += 1;
        for v in vars {
            let leaf = v.name().rsplit('/').next().unwrap_or("var").to_string();
            out.push((format!("{local}/{leaf}"), v));
        }
    }
    out
}

/// Keras's default `compute_loss`: compiled loss (if any) plus the sum of [`Model::losses`];
/// the values are weighted by the model's [`Model::output_mask`], as Keras does.
///
/// # Errors
/// See [`Model::compute_loss`].
pub fn default_compute_loss<M: Model + ?Sized>(
    model: &mut M,
    ctx: &mut StepContext,
    _x: &Data,
    y: Option<&Data>,
    y_pred: &Data,
    sample_weight: Option<&Tensor>,
) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let masked = match model.output_mask()? {
        Some(m) => Some(crate::losses::apply_mask(&m, sample_weight, true)?),
        None => None,
    };
    let sample_weight = masked.as_ref().or(sample_weight);
    if let Some(loss) = ctx.loss.as_ref() {
        let y = y.ok_or_else(|| {
            Error::value(
                "the compiled loss needs targets, but the data has no `y`: pass `(x, y)` to fit/evaluate, or compile without a loss",
            )
        })?;
        let values = loss.compute_each(y, y_pred, sample_weight)?;
        // Keras's per-output loss trackers (`{output}_loss`, before the loss weights), weighted
        // by batch size.
        let trackers = &mut ctx.output_loss_trackers;
        if trackers.len() == values.len() && values.len() > 1 {
            let batch = y_pred.flatten()[0].dims().first().copied().unwrap_or(1);
            for (m, v) in trackers.iter_mut().zip(&values) {
                m.update_tensor(&v.detach(), batch as f64)?;
            }
        }
        total = Some(loss.weighted_sum(values)?);
    }
    for reg in model.losses()? {
        total = Some(match total {
            Some(t) => (t + reg)?,
            None => reg,
        });
    }
    total.ok_or_else(|| {
        Error::state(
            "No loss to compute. Provide a `loss` argument in `compile()`, or compute the loss yourself in `train_step`.",
        )
    })
}

/// Keras's default `train_step`: forward, `compute_loss`, loss tracker, gradients of the trainable
/// variables, optimizer update, `compute_metrics`.
///
/// # Errors
/// Anything the forward pass, loss, or optimizer fails on (including no optimizer compiled).
pub fn default_train_step<M: Model + ?Sized>(
    model: &mut M,
    ctx: &mut StepContext,
    data: &Data,
) -> Result<Logs> {
    let (x, y, sw) = data.unpack()?;
    let y_pred = model.call(x, true)?;
    let loss = model.compute_loss(ctx, x, y, &y_pred, sw)?;
    ctx.loss_tracker()
        .update_tensor(&loss, x.batch_size() as f64)?;
    let vars = model.trainable_variables();
    // Under `mixed_float16` the optimizer scales the loss (and unscales the gradients).
    let loss = ctx.optimizer()?.scale_loss(&loss)?;
    let grads = GradientTape::gradient(&loss, &vars)?;
    ctx.optimizer()?.apply(&grads, &vars)?;
    // Metrics are not differentiated (Keras updates them after the tape): detached, their ops
    // record no graph.
    let y_pred = y_pred.map(&mut |t| Ok(t.detach()))?;
    model.compute_metrics(ctx, x, y, &y_pred, sw)
}

/// Keras's default `test_step`: forward in inference mode, loss tracker, metrics.
///
/// # Errors
/// Anything the forward pass or loss fails on.
pub fn default_test_step<M: Model + ?Sized>(
    model: &mut M,
    ctx: &mut StepContext,
    data: &Data,
) -> Result<Logs> {
    let (x, y, sw) = data.unpack()?;
    let y_pred = model.call(x, false)?.map(&mut |t| Ok(t.detach()))?;
    if ctx.compiled_loss().is_some() || !model.losses()?.is_empty() {
        let loss = model.compute_loss(ctx, x, y, &y_pred, sw)?;
        ctx.loss_tracker()
            .update_tensor(&loss, x.batch_size() as f64)?;
    }
    model.compute_metrics(ctx, x, y, &y_pred, sw)
}

/// Keras's default `predict_step`: the forward pass on `x` in inference mode.
///
/// # Errors
/// Anything the forward pass fails on.
pub fn default_predict_step<M: Model + ?Sized>(
    model: &mut M,
    _ctx: &mut StepContext,
    data: &Data,
) -> Result<Data> {
    let (x, _, _) = data.unpack()?;
    model.call(x, false)?.map(&mut |t| Ok(t.detach()))
}
