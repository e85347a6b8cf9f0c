//! The metrics configured by `compile(metrics=[...])`.

use candle_core::Tensor;

use super::{BinaryAccuracy, CategoricalAccuracy, Metric, SparseCategoricalAccuracy};
use crate::data::Data;
use crate::{Error, Result};

/// A metric as given to `compile`: a Keras shorthand or an object.
pub enum MetricSpec {
    /// `"accuracy"`, `"mae"`, ...
    Name(String),
    /// A metric object.
    Object(Box<dyn Metric>),
}

impl From<&str> for MetricSpec {
    fn from(s: &str) -> Self {
        MetricSpec::Name(s.to_string())
    }
}

impl From<String> for MetricSpec {
    fn from(s: String) -> Self {
        MetricSpec::Name(s)
    }
}

impl<M: Metric + 'static> From<M> for MetricSpec {
    fn from(m: M) -> Self {
        MetricSpec::Object(Box::new(m))
    }
}

/// What `compile(metrics=...)` configures (Keras's `CompileMetrics`).
///
/// Shorthands are resolved on the first update, from the shapes of targets and predictions, as Keras
/// does: `"accuracy"` becomes binary accuracy when predictions have one column, sparse categorical
/// accuracy when targets are labels, categorical accuracy otherwise (the name stays `"accuracy"`).
/// With several outputs, every metric is tracked per output as `{output}_{name}`, after the
/// output layers' names (`output_{i}_{name}` where they are not known); unlike Keras 3, which wants
/// one entry per output, a flat list applies every metric to every output. Metrics given
/// as `metrics` ignore sample weights, as in Keras; `weighted_metrics` use them.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::{Data, metrics::{CompiledMetrics, Metric}};
/// let mut m = CompiledMetrics::new(vec!["accuracy".into()]).unwrap();
/// let y = Tensor::new(&[2f32, 0.0], &Device::Cpu).unwrap();
/// let p = Tensor::new(&[[0.1f32, 0.2, 0.7], [0.2, 0.7, 0.1]], &Device::Cpu).unwrap();
/// m.update_state(&Data::from(y.clone()), &Data::from(p.clone()), None).unwrap();
/// assert_eq!(m.metrics()[0].result(), 0.5);
/// // "ACC" is the same shorthand (any case), under the name given.
/// let mut m = CompiledMetrics::new(vec!["ACC".into()]).unwrap();
/// m.update_state(&Data::from(y), &Data::from(p), None).unwrap();
/// assert_eq!((m.metrics()[0].name(), m.metrics()[0].result()), ("ACC", 0.5));
/// ```
pub struct CompiledMetrics {
    specs: Vec<(MetricSpec, bool)>,
    built: Vec<Entry>,
    is_built: bool,
}

/// A built metric: which output it watches and whether it takes sample weights.
struct Entry {
    output: usize,
    weighted: bool,
    metric: Box<dyn Metric>,
}

impl CompiledMetrics {
    /// Validates the shorthands now (an unknown name is an error at `compile`, as in Keras).
    ///
    /// # Errors
    /// An unknown shorthand.
    pub fn new(specs: Vec<MetricSpec>) -> Result<Self> {
        Self::with_weighted(specs, Vec::new())
    }

    /// `metrics` ignore sample weights, `weighted_metrics` use them (Keras's `compile(metrics=...,
    /// weighted_metrics=...)`). A weighted metric whose name collides gets a `weighted_` prefix.
    ///
    /// # Errors
    /// An unknown shorthand.
    pub fn with_weighted(specs: Vec<MetricSpec>, weighted: Vec<MetricSpec>) -> Result<Self> {
        let specs: Vec<(MetricSpec, bool)> = specs
            .into_iter()
            .map(|s| (s, false))
            .chain(weighted.into_iter().map(|s| (s, true)))
            .collect();
        for (s, _) in &specs {
            if let MetricSpec::Name(n) = s
                && !is_accuracy_shorthand(n)
            {
                super::get(n)?;
            }
        }
        Ok(Self {
            specs,
            built: Vec::new(),
            is_built: false,
        })
    }

    /// No metric.
    pub fn empty() -> Self {
        Self {
            specs: Vec::new(),
            built: Vec::new(),
            is_built: true,
        }
    }

    /// Whether no metric was configured.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty() && self.built.is_empty()
    }

    /// Whether the shorthands were resolved (after [`CompiledMetrics::build`] or a first update).
    pub fn is_built(&self) -> bool {
        self.is_built
    }

    /// Resolves the shorthands from the structure and shapes of targets and predictions. `fit` and
    /// `evaluate` call it before the first step (Keras's symbolic build), so that a custom step sees
    /// every compiled metric in `metrics()` from the start. Calling it again is a no-op.
    ///
    /// # Errors
    /// An unknown shorthand, or a metric object given for a multi-output model.
    pub fn build(&mut self, y: &Data, y_pred: &Data) -> Result<()> {
        let names: Vec<String> = match y_pred {
            Data::Dict(items) => items.iter().map(|(k, _)| k.clone()).collect(),
            _ => Vec::new(),
        };
        self.build_named(y, y_pred, &names)
    }

    /// [`CompiledMetrics::build`] with the outputs' names: with several outputs, a metric is
    /// tracked per output as `{name}_{metric}` (Keras's names, after the output layers), or
    /// `output_{i}_{metric}` when `output_names` does not name every output.
    ///
    /// # Errors
    /// As [`CompiledMetrics::build`].
    pub fn build_named(&mut self, y: &Data, y_pred: &Data, output_names: &[String]) -> Result<()> {
        if self.is_built {
            return Ok(());
        }
        let ys = y.flatten();
        let ps = y_pred.flatten();
        let outputs = ps.len();
        let specs = std::mem::take(&mut self.specs);
        for (spec, weighted) in specs {
            match spec {
                MetricSpec::Object(m) => {
                    if outputs != 1 {
                        return Err(Error::value(format!(
                            "metric object `{}` was given for a model with {outputs} outputs; use string shorthands, which are tracked per output",
                            m.name()
                        )));
                    }
                    self.push(0, weighted, m);
                }
                MetricSpec::Name(name) => {
                    // A weighted metric named as an unweighted one is `weighted_{name}`, after the
                    // output's prefix (Keras's `{output}_weighted_{name}`).
                    let display = |i: usize, base: &str| {
                        if outputs == 1 {
                            base.to_string()
                        } else if output_names.len() == outputs {
                            format!("{}_{base}", output_names[i])
                        } else {
                            format!("output_{i}_{base}")
                        }
                    };
                    let clash = weighted
                        && self
                            .built
                            .iter()
                            .any(|e| !e.weighted && e.metric.name() == display(0, &name));
                    let base = if clash {
                        format!("weighted_{name}")
                    } else {
                        name.clone()
                    };
                    for (i, (t, p)) in ys.iter().zip(ps.iter()).enumerate() {
                        let display = display(i, &base);
                        let m: Box<dyn Metric> = if is_accuracy_shorthand(&name) {
                            resolve_accuracy(t, p, display)
                        } else {
                            rename(super::get(&name)?, display)
                        };
                        self.push(i, weighted, m);
                    }
                }
            }
        }
        self.is_built = true;
        Ok(())
    }

    fn push(&mut self, output: usize, weighted: bool, metric: Box<dyn Metric>) {
        let clash = self.built.iter().any(|e| e.metric.name() == metric.name());
        let metric = if weighted && clash {
            let name = format!("weighted_{}", metric.name());
            rename(metric, name)
        } else {
            metric
        };
        self.built.push(Entry {
            output,
            weighted,
            metric,
        });
    }

    /// Updates every metric with its output's targets and predictions.
    ///
    /// # Errors
    /// Targets and outputs of different structures, or a metric rejecting its inputs.
    pub fn update_state(
        &mut self,
        y: &Data,
        y_pred: &Data,
        sample_weight: Option<&Tensor>,
    ) -> Result<()> {
        self.update_state_masked(y, y_pred, sample_weight, None)
    }

    /// [`CompiledMetrics::update_state`] with the output's mask (`(batch, timesteps)`,
    /// [`crate::Model::output_mask`]): as in Keras, every metric, weighted or not, counts only
    /// the unmasked values.
    ///
    /// # Errors
    /// As [`CompiledMetrics::update_state`]; a `sample_weight` that does not fit the mask.
    pub fn update_state_masked(
        &mut self,
        y: &Data,
        y_pred: &Data,
        sample_weight: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<()> {
        let (mask_only, masked) = match mask {
            Some(m) => (
                Some(crate::losses::apply_mask(m, None, false)?),
                Some(crate::losses::apply_mask(m, sample_weight, false)?),
            ),
            None => (None, None),
        };
        let sample_weight = masked.as_ref().or(sample_weight);
        if !self.is_built {
            self.build(y, y_pred)?;
        }
        let ys = y.flatten();
        let ps = y_pred.flatten();
        if ys.len() != ps.len() {
            return Err(Error::value(format!(
                "metrics need one target per output: received y={}, y_pred={}",
                y.describe(),
                y_pred.describe()
            )));
        }
        let needed = self.built.iter().map(|e| e.output + 1).max().unwrap_or(0);
        if ys.len() < needed {
            return Err(Error::value(format!(
                "the compiled metrics were built for {needed} outputs, but update_state received {} target(s) and {} prediction(s): y={}, y_pred={}; pass every output, in the order of the first update",
                ys.len(),
                ps.len(),
                y.describe(),
                y_pred.describe()
            )));
        }
        for e in self.built.iter_mut() {
            let sw = if e.weighted {
                sample_weight
            } else {
                mask_only.as_ref()
            };
            e.metric.update_state(ys[e.output], ps[e.output], sw)?;
        }
        Ok(())
    }

    /// The built metrics (empty before the first update).
    pub fn metrics(&self) -> Vec<&dyn Metric> {
        self.built.iter().map(|e| e.metric.as_ref()).collect()
    }

    /// The built metrics, mutable.
    pub fn metrics_mut(&mut self) -> Vec<&mut dyn Metric> {
        self.built
            .iter_mut()
            .map(|e| e.metric.as_mut() as &mut dyn Metric)
            .collect()
    }

    /// Resets every built metric.
    pub fn reset_state(&mut self) {
        for e in self.built.iter_mut() {
            e.metric.reset_state();
        }
    }
}

fn resolve_accuracy(y_true: &Tensor, y_pred: &Tensor, name: String) -> Box<dyn Metric> {
    let t_rank = y_true.rank();
    let p_rank = y_pred.rank();
    let t_last = y_true.dims().last().copied().unwrap_or(1);
    let p_last = y_pred.dims().last().copied().unwrap_or(1);
    let is_binary = p_last == 1;
    let is_sparse = t_rank < p_rank || (t_last == 1 && p_last > 1);
    if is_binary {
        Box::new(BinaryAccuracy::new().named(name))
    } else if is_sparse {
        Box::new(SparseCategoricalAccuracy::new().named(name))
    } else {
        Box::new(CategoricalAccuracy::new().named(name))
    }
}

/// `m` shown under `name` (itself when that is already its name).
pub(crate) fn rename(m: Box<dyn Metric>, name: String) -> Box<dyn Metric> {
    if m.name() == name {
        m
    } else {
        Box::new(Renamed { inner: m, name })
    }
}

/// A metric shown under another name (per-output metrics).
struct Renamed {
    inner: Box<dyn Metric>,
    name: String,
}

impl Metric for Renamed {
    fn name(&self) -> &str {
        &self.name
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        let mut c = self.inner.keras_config()?;
        c["config"]["name"] = serde_json::json!(self.name);
        Some(c)
    }
    fn update_state(&mut self, t: &Tensor, p: &Tensor, sw: Option<&Tensor>) -> Result<()> {
        self.inner.update_state(t, p, sw)
    }
    fn result(&self) -> f64 {
        self.inner.result()
    }
    fn reset_state(&mut self) {
        self.inner.reset_state()
    }
    fn batch_result(&self) -> Option<f64> {
        self.inner.batch_result()
    }
    fn deferred_result(&self) -> Option<crate::DeferredValue> {
        self.inner.deferred_result()
    }
    fn deferred_batch_result(&self) -> Option<crate::DeferredValue> {
        self.inner.deferred_batch_result()
    }
    fn state(&self) -> Vec<f64> {
        self.inner.state()
    }
    fn set_state(&mut self, state: &[f64]) -> Result<()> {
        self.inner.set_state(state)
    }
}

/// `"accuracy"` or `"acc"`, in any case (Keras compares `str(identifier).lower()`).
fn is_accuracy_shorthand(name: &str) -> bool {
    name.eq_ignore_ascii_case("accuracy") || name.eq_ignore_ascii_case("acc")
}
