//! Metrics with Keras 3 semantics: stateful `update_state` / `result` / `reset_state`.
//!
//! Every metric here is a weighted mean (or sum) of per-sample values, like Keras's `Mean` and
//! `MeanMetricWrapper`: with `sample_weight`, values are weighted and the count is the sum of weights.
//! State is kept in float64 on the host. Besides the running value, each metric remembers the value
//! of its last update alone ([`Metric::batch_result`]) so that callbacks can see per-batch values.

mod compiled;
mod confusion;
mod functions;

pub(crate) use compiled::rename as renamed;
pub use compiled::{CompiledMetrics, MetricSpec};
pub use confusion::{AUC, Precision, Recall};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Tensor};

use crate::logs::DeferredValue;

use crate::losses::squeeze_or_expand_to_same_rank;
use crate::{Error, Result};

/// A stateful metric.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::metrics::{MeanAbsoluteError, Metric};
/// let mut mae = MeanAbsoluteError::new();
/// let y = Tensor::new(&[[1f32], [2.0]], &Device::Cpu).unwrap();
/// let p = Tensor::new(&[[2f32], [2.0]], &Device::Cpu).unwrap();
/// mae.update_state(&y, &p, None).unwrap();
/// assert_eq!(mae.result(), 0.5);
/// mae.reset_state();
/// assert_eq!(mae.result(), 0.0);
/// ```
pub trait Metric: Send {
    /// The name shown in logs.
    fn name(&self) -> &str;
    /// Accumulates a batch of targets and predictions.
    ///
    /// # Errors
    /// Incompatible shapes; for [`Mean`] and [`Sum`], which track plain values, a pointer to
    /// [`Metric::update_values`].
    fn update_state(
        &mut self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<()>;
    /// Accumulates plain values (a loss), for metrics that track values ([`Mean`], [`Sum`]).
    ///
    /// # Errors
    /// By default: this metric compares targets with predictions and takes `update_state`.
    fn update_values(&mut self, values: &Tensor, sample_weight: Option<&Tensor>) -> Result<()> {
        let _ = (values, sample_weight);
        Err(Error::value(format!(
            "metric `{}` compares targets with predictions: call update_state(y_true, y_pred, sample_weight) instead of update_values",
            self.name()
        )))
    }
    /// The current value (0 before any update).
    fn result(&self) -> f64;
    /// Clears the state (Keras's `reset_state`).
    fn reset_state(&mut self);
    /// The value of the last update alone, if any.
    fn batch_result(&self) -> Option<f64> {
        None
    }
    /// [`Metric::result`] as of now, computed when first read, where reading it now would wait
    /// for a device; `None` when there is nothing to wait for ([`Metric::result`] then). The
    /// default [`crate::Model::get_metrics_result`] puts these in the step's [`crate::Logs`], so
    /// that a step on a GPU reads the device only when someone reads a value.
    fn deferred_result(&self) -> Option<DeferredValue> {
        None
    }
    /// [`Metric::batch_result`], deferred in the same way.
    fn deferred_batch_result(&self) -> Option<DeferredValue> {
        None
    }
    /// The accumulated state, for checkpoints (empty for a metric that keeps none).
    fn state(&self) -> Vec<f64> {
        Vec::new()
    }
    /// Restores a [`Metric::state`].
    ///
    /// # Errors
    /// A state of the wrong length.
    fn set_state(&mut self, state: &[f64]) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(Error::value(format!(
                "metric `{}` keeps no state, but a state of {} values was given",
                self.name(),
                state.len()
            )))
        }
    }
    /// The metric as Keras serializes it in a `.keras` file's `compile_config`
    /// (`{"module": "keras.metrics", "class_name": ..., "config": {"name": ..., ...}}`);
    /// `None` (the default) for a metric Keras does not have.
    ///
    /// ```
    /// use ferrokeras::metrics::{BinaryAccuracy, Metric};
    /// let c = BinaryAccuracy::new().threshold(0.25).keras_config().unwrap();
    /// assert_eq!(c["class_name"], "BinaryAccuracy");
    /// assert_eq!(c["config"]["threshold"], 0.25);
    /// ```
    fn keras_config(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Keras's serialized form of a metric of class `class` named `name`, with `extra` options.
pub(crate) fn keras_metric(class: &str, name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut config = serde_json::json!({"name": name, "dtype": "float32"});
    if let (Some(c), serde_json::Value::Object(e)) = (config.as_object_mut(), extra) {
        c.extend(e);
    }
    serde_json::json!({
        "module": "keras.metrics",
        "class_name": class,
        "config": config,
        "registered_name": null,
    })
}

/// Weighted-mean (or sum) accumulator shared by every metric here.
///
/// On the CPU each update adds its (total, count) to f64 host totals at once. On an accelerator
/// an update only queues its values, which stay on the device (no wait for the step's work);
/// the first read of a result fetches every queued value in one transfer and adds them in order
/// with the same f64 arithmetic, so results (and exact resume) do not depend on where the
/// metric ran or how often it was read. A deferred result ([`Metric::deferred_result`]) is a copy
/// of the state that does the same when read; the queued values it fetches are kept with them,
/// so the metric itself (and every other copy) later adds them without a second transfer.
#[derive(Debug, Default)]
struct Accumulator {
    sum_only: bool,
    state: Mutex<AccState>,
}

#[derive(Clone, Debug, Default)]
struct AccState {
    total: f64,
    count: f64,
    last: Option<(f64, f64)>,
    /// Updates queued on an accelerator, oldest first.
    pending: Vec<Pending>,
}

/// One queued update: its `values` on the device (`kind` says what they are), and `fetched`,
/// the values once read from the device.
#[derive(Clone, Debug)]
struct Pending {
    values: Tensor,
    kind: Queued,
    fetched: Arc<OnceLock<Vec<f32>>>,
}

/// What a [`Pending`] update's values are.
#[derive(Clone, Copy, Debug)]
enum Queued {
    /// (total, count) as a 2-vector (sample-weighted updates).
    Pair,
    /// A one-element total; the count is known on the host (one per value).
    Total(f64),
    /// A one-element value to be multiplied by the host weight, which is also the count (the loss
    /// tracker's `value * batch_size`).
    Weighted(f64),
}

impl Pending {
    fn new(values: Tensor, kind: Queued) -> Self {
        Self {
            values,
            kind,
            fetched: Arc::new(OnceLock::new()),
        }
    }
    /// (total, count) from the fetched values; NaN when they are missing.
    fn pair(&self) -> (f64, f64) {
        match (self.fetched.get(), self.kind) {
            (Some(v), Queued::Pair) if v.len() == 2 => (v[0] as f64, v[1] as f64),
            (Some(v), Queued::Total(n)) if v.len() == 1 => (v[0] as f64, n),
            (Some(v), Queued::Weighted(w)) if v.len() == 1 => (v[0] as f64 * w, w),
            _ => (f64::NAN, f64::NAN),
        }
    }
}

/// Queued updates are fetched in one transfer when this many pile up unread.
const MAX_PENDING: usize = 256;

/// Transfers of queued metric values from a device so far (see [`device_reads`]).
static DEVICE_READS: AtomicUsize = AtomicUsize::new(0);

/// How many times, in this process, metrics have read queued values back from a device (each
/// time one transfer for every value queued since the last). `fit` on a GPU reads when a log
/// value is read: with `verbose=0` (or output to a file) and no callback that reads per-batch
/// logs, about once per epoch plus once per 256 updates of a metric (0 on the CPU, where
/// nothing is queued).
///
/// ```
/// let before = ferrokeras::metrics::device_reads();
/// assert!(ferrokeras::metrics::device_reads() >= before);
/// ```
pub fn device_reads() -> usize {
    DEVICE_READS.load(Ordering::Relaxed)
}

/// Reads the values of every queued update not read yet, in one transfer (one of
/// [`device_reads`]); each update's values land in its `fetched`. A failed transfer leaves them
/// unset (the metric's result is then NaN, never a panic).
fn fetch_queued<'a>(queued: impl IntoIterator<Item = (&'a Tensor, &'a OnceLock<Vec<f32>>)>) {
    let unread: Vec<_> = queued
        .into_iter()
        .filter(|(_, fetched)| fetched.get().is_none())
        .collect();
    if unread.is_empty() {
        return;
    }
    DEVICE_READS.fetch_add(1, Ordering::Relaxed);
    let values = unread
        .iter()
        .map(|(t, _)| t.flatten_all()?.to_dtype(DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()
        .and_then(|f| Tensor::cat(&f, 0))
        .and_then(|t| t.to_vec1::<f32>());
    if let Ok(v) = values {
        let mut at = 0;
        for (t, fetched) in unread {
            let n = t.elem_count();
            if let Some(part) = v.get(at..at + n) {
                let _ = fetched.set(part.to_vec());
            }
            at += n;
        }
    }
}

/// Whether updates on `t`'s device are queued: off the CPU, or on it when the CPU takes the
/// other devices' path (`FERROKERAS_KERNELS=candle`).
fn queues(t: &Tensor) -> bool {
    !t.device().is_cpu() || !crate::kernels::enabled()
}

impl AccState {
    fn add(&mut self, total: f64, count: f64) {
        self.total += total;
        self.count += count;
        self.last = Some((total, count));
    }
    /// Adds the queued updates in order, reading those not yet read in one transfer; a failed
    /// transfer adds NaN (a result, never a panic).
    fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.pending);
        fetch_queued(queued.iter().map(|p| (&p.values, &*p.fetched)));
        for p in &queued {
            let (total, count) = p.pair();
            self.add(total, count);
        }
    }
    fn queue(&mut self, p: Pending) {
        self.pending.push(p);
        if self.pending.len() >= MAX_PENDING {
            self.settle();
        }
    }
    fn mean(&self) -> f64 {
        if self.count == 0.0 {
            0.0
        } else {
            self.total / self.count
        }
    }
    fn last_mean(&self) -> Option<f64> {
        self.last.map(|(t, c)| if c == 0.0 { 0.0 } else { t / c })
    }
}

impl Clone for Accumulator {
    fn clone(&self) -> Self {
        Accumulator {
            sum_only: self.sum_only,
            state: Mutex::new(self.settled()),
        }
    }
}

impl Accumulator {
    /// The state with every queued update added.
    fn settled(&self) -> AccState {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.settle();
        st.clone()
    }
    fn st(&mut self) -> &mut AccState {
        self.state.get_mut().unwrap_or_else(|e| e.into_inner())
    }
    /// `value(state)` on a copy of the state, computed when first read, if updates are queued.
    fn deferred(
        &self,
        value: impl FnOnce(&AccState) -> f64 + Send + 'static,
    ) -> Option<DeferredValue> {
        let mut st = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.pending.is_empty() {
                return None;
            }
            st.clone()
        };
        Some(Box::new(move || {
            st.settle();
            value(&st)
        }))
    }
    fn update(&mut self, values: &Tensor, sample_weight: Option<&Tensor>) -> Result<()> {
        let mut values = values.to_dtype(DType::F32)?;
        let reduce = |t: &Tensor, from: usize, sum_only: bool| -> Result<Tensor> {
            let mut t = t.clone();
            while t.rank() > from {
                let last = t.rank() - 1;
                t = if sum_only {
                    t.sum(last)?
                } else {
                    t.mean(last)?
                };
            }
            Ok(t)
        };
        let mut weight_sum = None;
        if let Some(sw) = sample_weight {
            let sw = sw.to_dtype(DType::F32)?;
            let (v, mut w) = squeeze_or_expand_to_same_rank(&values, &sw)?;
            let wr = w.rank();
            let mut v = if v.rank() > wr {
                reduce(&v, wr, self.sum_only)?
            } else {
                v
            };
            w = w.broadcast_as(v.shape()).map_err(|_| {
                Error::value(format!(
                    "sample_weight of shape {:?} cannot be broadcast to values of shape {:?}; pass one weight per sample",
                    sw.dims(),
                    values.dims()
                ))
            })?;
            v = (v * &w)?;
            if wr > 1 {
                w = reduce(&w, 1, self.sum_only)?;
            }
            weight_sum = Some(w.sum_all()?);
            values = v;
        }
        let values = if values.rank() > 1 {
            reduce(&values, 1, self.sum_only)?
        } else {
            values
        };
        if queues(&values) {
            // Accelerator: queue the values, so the step's work is not waited for.
            let total = values.sum_all()?;
            let pending = match weight_sum {
                Some(w) => Pending::new(Tensor::stack(&[total, w], 0)?, Queued::Pair),
                // The count is the number of values: only the total waits on the device.
                None => {
                    let n = values.dims().first().copied().unwrap_or(1) as f64;
                    Pending::new(total.reshape(1)?, Queued::Total(n))
                }
            };
            self.st().queue(pending);
            return Ok(());
        }
        let weight_sum = match weight_sum {
            Some(w) => Some(w.to_scalar::<f32>()? as f64),
            None => None,
        };
        let total = values.sum_all()?.to_scalar::<f32>()? as f64;
        let count = match weight_sum {
            Some(w) => w,
            None if values.rank() >= 1 => values.dims()[0] as f64,
            None => 1.0,
        };
        let st = self.st();
        st.settle();
        st.add(total, count);
        Ok(())
    }
    /// Adds `value * weight` with weight `weight` (the loss tracker's update).
    fn update_weighted(&mut self, value: &Tensor, weight: f64) -> Result<()> {
        let v = value.flatten_all()?.to_dtype(DType::F32)?;
        let st = self.st();
        if queues(&v) {
            st.queue(Pending::new(v, Queued::Weighted(weight)));
        } else {
            let x = v.to_vec1::<f32>()?[0] as f64;
            st.settle();
            st.add(x * weight, weight);
        }
        Ok(())
    }
    fn add_host(&mut self, total: f64, count: f64) {
        let st = self.st();
        st.settle();
        st.add(total, count);
    }
    fn total(&self) -> f64 {
        self.settled().total
    }
    fn last(&self) -> Option<(f64, f64)> {
        self.settled().last
    }
    fn mean(&self) -> f64 {
        self.settled().mean()
    }
    fn last_mean(&self) -> Option<f64> {
        self.settled().last_mean()
    }
    fn reset(&mut self) {
        *self.st() = AccState::default();
    }
    fn state(&self) -> Vec<f64> {
        let st = self.settled();
        let (lt, lc, has) = match st.last {
            Some((t, c)) => (t, c, 1.0),
            None => (0.0, 0.0, 0.0),
        };
        vec![st.total, st.count, lt, lc, has]
    }
    fn set_state(&mut self, name: &str, s: &[f64]) -> Result<()> {
        if s.len() != 5 {
            return Err(Error::value(format!(
                "metric `{name}` expects a state of 5 values, received {}",
                s.len()
            )));
        }
        *self.st() = AccState {
            total: s[0],
            count: s[1],
            last: (s[4] != 0.0).then_some((s[2], s[3])),
            pending: Vec::new(),
        };
        Ok(())
    }
}

macro_rules! accumulator_state {
    () => {
        fn state(&self) -> Vec<f64> {
            self.acc.state()
        }
        fn set_state(&mut self, state: &[f64]) -> Result<()> {
            let name = self.name.clone();
            self.acc.set_state(&name, state)
        }
    };
}

/// The weighted mean of values: Keras's `metrics.Mean` (the loss tracker is one).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::metrics::{Mean, Metric};
/// let mut m = Mean::new("loss");
/// m.update_state(&Tensor::new(&[1f32, 3.0], &Device::Cpu).unwrap(), None).unwrap();
/// m.update_state(&Tensor::new(5f32, &Device::Cpu).unwrap(), None).unwrap();
/// assert_eq!(m.result(), 3.0);
/// ```
#[derive(Clone, Debug)]
pub struct Mean {
    name: String,
    acc: Accumulator,
}

impl Mean {
    /// A mean named `name` (Keras default `"mean"`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            acc: Accumulator::default(),
        }
    }
    /// Accumulates values (Keras's `Mean.update_state(values, sample_weight)`).
    ///
    /// # Errors
    /// A `sample_weight` that does not broadcast to the values.
    pub fn update_state(&mut self, values: &Tensor, sample_weight: Option<&Tensor>) -> Result<()> {
        self.acc.update(values, sample_weight)
    }
    /// Accumulates a value already on the host with a weight (what the fit loop uses for the loss
    /// tracker, weighted by batch size).
    pub fn update_scalar(&mut self, value: f64, weight: f64) {
        self.acc.add_host(value * weight, weight);
    }
    /// Accumulates a one-element tensor with a weight, like [`Mean::update_scalar`]; on an
    /// accelerator the value stays there (no wait for the step's work) until a result is read.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::metrics::Metric;
    /// let mut m = ferrokeras::metrics::Mean::new("loss");
    /// m.update_tensor(&Tensor::new(2f32, &Device::Cpu).unwrap(), 3.0).unwrap();
    /// m.update_tensor(&Tensor::new(4f32, &Device::Cpu).unwrap(), 1.0).unwrap();
    /// assert_eq!(m.result(), 2.5);
    /// ```
    ///
    /// # Errors
    /// A tensor of more than one element.
    pub fn update_tensor(&mut self, value: &Tensor, weight: f64) -> Result<()> {
        if value.elem_count() != 1 {
            return Err(Error::value(format!(
                "a loss must be a scalar; received a tensor of shape {:?}",
                value.dims()
            )));
        }
        self.acc.update_weighted(value, weight)
    }
}

impl Metric for Mean {
    fn name(&self) -> &str {
        &self.name
    }
    fn update_state(
        &mut self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<()> {
        let _ = (y_true, y_pred, sample_weight);
        Err(Error::value(format!(
            "metric `{}` is a Mean of values: call update_values(values, sample_weight) (or Mean::update_state(values, sample_weight)) instead of update_state(y_true, y_pred, ...)",
            self.name
        )))
    }
    fn update_values(&mut self, values: &Tensor, sample_weight: Option<&Tensor>) -> Result<()> {
        self.acc.update(values, sample_weight)
    }
    fn result(&self) -> f64 {
        self.acc.mean()
    }
    fn reset_state(&mut self) {
        self.acc.reset()
    }
    fn batch_result(&self) -> Option<f64> {
        self.acc.last_mean()
    }
    fn deferred_result(&self) -> Option<DeferredValue> {
        self.acc.deferred(AccState::mean)
    }
    fn deferred_batch_result(&self) -> Option<DeferredValue> {
        self.acc.deferred(|st| st.last_mean().unwrap_or(f64::NAN))
    }
    accumulator_state!();
}

/// The weighted sum of values: Keras's `metrics.Sum`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::metrics::{Metric, Sum};
/// let mut s = Sum::new("total");
/// s.update_state(&Tensor::new(&[1f32, 3.0], &Device::Cpu).unwrap(), None).unwrap();
/// assert_eq!(s.result(), 4.0);
/// ```
#[derive(Clone, Debug)]
pub struct Sum {
    name: String,
    acc: Accumulator,
}

impl Sum {
    /// A sum named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            acc: Accumulator {
                sum_only: true,
                ..Accumulator::default()
            },
        }
    }
    /// Accumulates values.
    ///
    /// # Errors
    /// A `sample_weight` that does not broadcast to the values.
    pub fn update_state(&mut self, values: &Tensor, sample_weight: Option<&Tensor>) -> Result<()> {
        self.acc.update(values, sample_weight)
    }
}

impl Metric for Sum {
    fn name(&self) -> &str {
        &self.name
    }
    fn update_state(
        &mut self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<()> {
        let _ = (y_true, y_pred, sample_weight);
        Err(Error::value(format!(
            "metric `{}` is a Sum of values: call update_values(values, sample_weight)",
            self.name
        )))
    }
    fn update_values(&mut self, values: &Tensor, sample_weight: Option<&Tensor>) -> Result<()> {
        self.acc.update(values, sample_weight)
    }
    fn result(&self) -> f64 {
        self.acc.total()
    }
    fn reset_state(&mut self) {
        self.acc.reset()
    }
    fn batch_result(&self) -> Option<f64> {
        self.acc.last().map(|(t, _)| t)
    }
    fn deferred_result(&self) -> Option<DeferredValue> {
        self.acc.deferred(|st| st.total)
    }
    fn deferred_batch_result(&self) -> Option<DeferredValue> {
        self.acc.deferred(|st| st.last.map_or(f64::NAN, |(t, _)| t))
    }
    accumulator_state!();
}

/// Which per-sample function a [`MeanMetricWrapper`]-style metric averages.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Mae,
    Mse,
    Rmse,
    Accuracy,
    Binary(f32),
    Categorical,
    SparseCategorical,
    TopK(usize),
    SparseTopK(usize),
    /// One of the loss functions of the same name ([`crate::losses`]).
    Loss(crate::losses::Function),
    /// Binary (0), categorical (1) or sparse categorical (2) cross-entropy of probabilities.
    Crossentropy(u8),
}

macro_rules! wrapper_metric {
    ($(#[$doc:meta])* $ty:ident, $default_name:expr, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $ty {
            name: String,
            kind: Kind,
            acc: Accumulator,
        }
        impl $ty {
            /// The metric with its Keras default name.
            pub fn new() -> Self {
                Self { name: $default_name.to_string(), kind: $kind, acc: Accumulator::default() }
            }
            /// The same metric under another name (as in `MeanAbsoluteError(name="mae")`).
            pub fn named(mut self, name: impl Into<String>) -> Self {
                self.name = name.into();
                self
            }
        }
        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Metric for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn keras_config(&self) -> Option<serde_json::Value> {
                let extra = match self.kind {
                    Kind::Binary(t) => serde_json::json!({"threshold": t}),
                    Kind::TopK(k) | Kind::SparseTopK(k) => serde_json::json!({"k": k}),
                    _ => serde_json::json!({}),
                };
                Some(keras_metric(stringify!($ty), &self.name, extra))
            }
            fn update_state(&mut self, y_true: &Tensor, y_pred: &Tensor, sample_weight: Option<&Tensor>) -> Result<()> {
                let values = functions::per_sample(self.kind, y_true, y_pred).map_err(|e| match e {
                    Error::Tensor(t) => Error::value(format!(
                        "metric `{}` could not compare y_true of shape {:?} with y_pred of shape {:?}: {t}",
                        self.name, y_true.dims(), y_pred.dims()
                    )),
                    other => other,
                })?;
                self.acc.update(&values, sample_weight)
            }
            fn result(&self) -> f64 {
                let m = self.acc.mean();
                if self.kind == Kind::Rmse { m.sqrt() } else { m }
            }
            fn reset_state(&mut self) {
                self.acc.reset()
            }
            fn batch_result(&self) -> Option<f64> {
                let m = self.acc.last_mean()?;
                Some(if self.kind == Kind::Rmse { m.sqrt() } else { m })
            }
            fn deferred_result(&self) -> Option<DeferredValue> {
                let rmse = self.kind == Kind::Rmse;
                self.acc.deferred(move |st| if rmse { st.mean().sqrt() } else { st.mean() })
            }
            fn deferred_batch_result(&self) -> Option<DeferredValue> {
                let rmse = self.kind == Kind::Rmse;
                self.acc.deferred(move |st| {
                    let m = st.last_mean().unwrap_or(f64::NAN);
                    if rmse { m.sqrt() } else { m }
                })
            }
            accumulator_state!();
        }
    };
}

wrapper_metric!(
    /// Mean binary cross-entropy of probabilities ([`crate::losses::BinaryCrossentropy`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{BinaryCrossentropy, Metric};
    /// assert_eq!(BinaryCrossentropy::new().name(), "binary_crossentropy");
    /// ```
    BinaryCrossentropy, "binary_crossentropy", Kind::Crossentropy(0)
);
wrapper_metric!(
    /// Mean categorical cross-entropy of probabilities and one-hot targets.
    ///
    /// ```
    /// use ferrokeras::metrics::{CategoricalCrossentropy, Metric};
    /// assert_eq!(CategoricalCrossentropy::new().name(), "categorical_crossentropy");
    /// ```
    CategoricalCrossentropy, "categorical_crossentropy", Kind::Crossentropy(1)
);
wrapper_metric!(
    /// Mean categorical cross-entropy of probabilities and integer targets.
    ///
    /// ```
    /// use ferrokeras::metrics::{Metric, SparseCategoricalCrossentropy};
    /// assert_eq!(SparseCategoricalCrossentropy::new().name(), "sparse_categorical_crossentropy");
    /// ```
    SparseCategoricalCrossentropy, "sparse_categorical_crossentropy", Kind::Crossentropy(2)
);
wrapper_metric!(
    /// Mean of the squared logarithmic error ([`crate::losses::MeanSquaredLogarithmicError`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{MeanSquaredLogarithmicError, Metric};
    /// assert_eq!(MeanSquaredLogarithmicError::new().name(), "mean_squared_logarithmic_error");
    /// ```
    MeanSquaredLogarithmicError, "mean_squared_logarithmic_error",
    Kind::Loss(crate::losses::Function::MeanSquaredLogarithmicError)
);
wrapper_metric!(
    /// Mean of the absolute percentage error ([`crate::losses::MeanAbsolutePercentageError`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{MeanAbsolutePercentageError, Metric};
    /// assert_eq!(MeanAbsolutePercentageError::new().name(), "mean_absolute_percentage_error");
    /// ```
    MeanAbsolutePercentageError, "mean_absolute_percentage_error",
    Kind::Loss(crate::losses::Function::MeanAbsolutePercentageError)
);
wrapper_metric!(
    /// Mean KL divergence ([`crate::losses::KLDivergence`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{KLDivergence, Metric};
    /// assert_eq!(KLDivergence::new().name(), "kl_divergence");
    /// ```
    KLDivergence, "kl_divergence", Kind::Loss(crate::losses::Function::KlDivergence)
);
wrapper_metric!(
    /// Mean Poisson loss ([`crate::losses::Poisson`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{Metric, Poisson};
    /// assert_eq!(Poisson::new().name(), "poisson");
    /// ```
    Poisson, "poisson", Kind::Loss(crate::losses::Function::Poisson)
);
wrapper_metric!(
    /// Mean log-cosh error ([`crate::losses::LogCosh`]); Keras names it `logcosh`.
    ///
    /// ```
    /// use ferrokeras::metrics::{LogCoshError, Metric};
    /// assert_eq!(LogCoshError::new().name(), "logcosh");
    /// ```
    LogCoshError, "logcosh", Kind::Loss(crate::losses::Function::LogCosh)
);
wrapper_metric!(
    /// Mean cosine similarity of `y_true` and `y_pred` (1 for the same direction; the loss of
    /// the same name is its negative).
    ///
    /// ```
    /// use ferrokeras::metrics::{CosineSimilarity, Metric};
    /// assert_eq!(CosineSimilarity::new().name(), "cosine_similarity");
    /// ```
    CosineSimilarity, "cosine_similarity", Kind::Loss(crate::losses::Function::CosineSimilarity)
);
wrapper_metric!(
    /// Mean hinge loss ([`crate::losses::Hinge`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{Hinge, Metric};
    /// assert_eq!(Hinge::new().name(), "hinge");
    /// ```
    Hinge, "hinge", Kind::Loss(crate::losses::Function::Hinge)
);
wrapper_metric!(
    /// Mean squared hinge loss ([`crate::losses::SquaredHinge`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{Metric, SquaredHinge};
    /// assert_eq!(SquaredHinge::new().name(), "squared_hinge");
    /// ```
    SquaredHinge, "squared_hinge", Kind::Loss(crate::losses::Function::SquaredHinge)
);
wrapper_metric!(
    /// Mean categorical hinge loss ([`crate::losses::CategoricalHinge`]).
    ///
    /// ```
    /// use ferrokeras::metrics::{CategoricalHinge, Metric};
    /// assert_eq!(CategoricalHinge::new().name(), "categorical_hinge");
    /// ```
    CategoricalHinge, "categorical_hinge", Kind::Loss(crate::losses::Function::CategoricalHinge)
);
wrapper_metric!(
    /// Mean of `|y_pred - y_true|` (Keras name `mean_absolute_error`).
    ///
    /// ```
    /// use ferrokeras::metrics::{MeanAbsoluteError, Metric};
    /// assert_eq!(MeanAbsoluteError::new().named("mae").name(), "mae");
    /// ```
    MeanAbsoluteError, "mean_absolute_error", Kind::Mae
);
wrapper_metric!(
    /// Mean of `(y_pred - y_true)^2`.
    ///
    /// ```
    /// use ferrokeras::metrics::{MeanSquaredError, Metric};
    /// assert_eq!(MeanSquaredError::new().name(), "mean_squared_error");
    /// ```
    MeanSquaredError, "mean_squared_error", Kind::Mse
);
wrapper_metric!(
    /// Square root of the mean squared error over everything seen.
    ///
    /// ```
    /// use ferrokeras::metrics::{Metric, RootMeanSquaredError};
    /// assert_eq!(RootMeanSquaredError::new().name(), "root_mean_squared_error");
    /// ```
    RootMeanSquaredError, "root_mean_squared_error", Kind::Rmse
);
wrapper_metric!(
    /// Fraction of predictions exactly equal to targets.
    ///
    /// ```
    /// use ferrokeras::metrics::{Accuracy, Metric};
    /// assert_eq!(Accuracy::new().name(), "accuracy");
    /// ```
    Accuracy, "accuracy", Kind::Accuracy
);
wrapper_metric!(
    /// Fraction of targets matched by `y_pred > 0.5`.
    ///
    /// ```
    /// use ferrokeras::metrics::{BinaryAccuracy, Metric};
    /// assert_eq!(BinaryAccuracy::new().name(), "binary_accuracy");
    /// ```
    BinaryAccuracy, "binary_accuracy", Kind::Binary(0.5)
);
wrapper_metric!(
    /// Fraction of samples whose predicted class (argmax) is the one-hot target's.
    ///
    /// ```
    /// use ferrokeras::metrics::{CategoricalAccuracy, Metric};
    /// assert_eq!(CategoricalAccuracy::new().name(), "categorical_accuracy");
    /// ```
    CategoricalAccuracy, "categorical_accuracy", Kind::Categorical
);
wrapper_metric!(
    /// Fraction of samples whose predicted class (argmax) equals the integer label.
    ///
    /// ```
    /// use ferrokeras::metrics::{Metric, SparseCategoricalAccuracy};
    /// assert_eq!(SparseCategoricalAccuracy::new().name(), "sparse_categorical_accuracy");
    /// ```
    SparseCategoricalAccuracy, "sparse_categorical_accuracy", Kind::SparseCategorical
);
wrapper_metric!(
    /// Fraction of samples whose one-hot target is among the `k` highest scores (default 5).
    ///
    /// ```
    /// use ferrokeras::metrics::{Metric, TopKCategoricalAccuracy};
    /// assert_eq!(TopKCategoricalAccuracy::new().k(2).name(), "top_k_categorical_accuracy");
    /// ```
    TopKCategoricalAccuracy, "top_k_categorical_accuracy", Kind::TopK(5)
);
wrapper_metric!(
    /// Fraction of samples whose integer target is among the `k` highest scores (default 5).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::metrics::{Metric, SparseTopKCategoricalAccuracy};
    /// let mut m = SparseTopKCategoricalAccuracy::new().k(2);
    /// let y = Tensor::new(&[[2f32], [0.0]], &Device::Cpu).unwrap();
    /// let p = Tensor::new(&[[0.1f32, 0.5, 0.4], [0.2, 0.3, 0.5]], &Device::Cpu).unwrap();
    /// m.update_state(&y, &p, None).unwrap();
    /// assert_eq!(m.result(), 0.5); // class 2 is second in the first row, class 0 last in the second
    /// ```
    SparseTopKCategoricalAccuracy, "sparse_top_k_categorical_accuracy", Kind::SparseTopK(5)
);

impl SparseTopKCategoricalAccuracy {
    /// How many top scores count (default 5).
    pub fn k(mut self, k: usize) -> Self {
        self.kind = Kind::SparseTopK(k);
        self
    }
}

impl BinaryAccuracy {
    /// The probability above which a prediction counts as 1 (default 0.5); a threshold outside
    /// `(0, 1)` is refused at the first update, as Keras refuses it.
    pub fn threshold(mut self, threshold: f32) -> Self {
        self.kind = Kind::Binary(threshold);
        self
    }
}

impl TopKCategoricalAccuracy {
    /// How many top scores count (default 5).
    pub fn k(mut self, k: usize) -> Self {
        self.kind = Kind::TopK(k);
        self
    }
}

/// Resolves a metric shorthand that does not depend on shapes (`"mae"`, `"mse"`, `"rmse"`, ...),
/// named as given. `"accuracy"` is resolved by [`CompiledMetrics`] from the shapes.
///
/// ```
/// let m = ferrokeras::metrics::get("mae").unwrap();
/// assert_eq!(m.name(), "mae");
/// assert_eq!(ferrokeras::metrics::get("MSE").unwrap().name(), "MSE");
/// // A class name: the class, with its own name.
/// let m = ferrokeras::metrics::get("MeanSquaredError").unwrap();
/// assert_eq!(m.name(), "mean_squared_error");
/// assert_eq!(ferrokeras::metrics::get("BinaryAccuracy").unwrap().name(), "binary_accuracy");
/// assert!(ferrokeras::metrics::get("meansquarederror").is_err());
/// ```
///
/// # Errors
/// An unknown name.
pub fn get(name: &str) -> Result<Box<dyn Metric>> {
    Ok(match name {
        // Function names and their aliases keep the given name, as Keras's wrappers do.
        "mae" | "MAE" | "mean_absolute_error" => Box::new(MeanAbsoluteError::new().named(name)),
        "mse" | "MSE" | "mean_squared_error" => Box::new(MeanSquaredError::new().named(name)),
        "rmse" | "root_mean_squared_error" => Box::new(RootMeanSquaredError::new().named(name)),
        "binary_accuracy" => Box::new(BinaryAccuracy::new()),
        "categorical_accuracy" => Box::new(CategoricalAccuracy::new()),
        "sparse_categorical_accuracy" => Box::new(SparseCategoricalAccuracy::new()),
        "top_k_categorical_accuracy" => Box::new(TopKCategoricalAccuracy::new()),
        "sparse_top_k_categorical_accuracy" => Box::new(SparseTopKCategoricalAccuracy::new()),
        // Class names give the class with its default name.
        "MeanAbsoluteError" => Box::new(MeanAbsoluteError::new()),
        "MeanSquaredError" => Box::new(MeanSquaredError::new()),
        "RootMeanSquaredError" => Box::new(RootMeanSquaredError::new()),
        "Accuracy" => Box::new(Accuracy::new()),
        "BinaryAccuracy" => Box::new(BinaryAccuracy::new()),
        "CategoricalAccuracy" => Box::new(CategoricalAccuracy::new()),
        "SparseCategoricalAccuracy" => Box::new(SparseCategoricalAccuracy::new()),
        "TopKCategoricalAccuracy" => Box::new(TopKCategoricalAccuracy::new()),
        "SparseTopKCategoricalAccuracy" => Box::new(SparseTopKCategoricalAccuracy::new()),
        "msle" | "mean_squared_logarithmic_error" => {
            Box::new(MeanSquaredLogarithmicError::new().named(name))
        }
        "mape" | "mean_absolute_percentage_error" => {
            Box::new(MeanAbsolutePercentageError::new().named(name))
        }
        "kld" | "kl_divergence" => Box::new(KLDivergence::new().named(name)),
        "poisson" => Box::new(Poisson::new()),
        "logcosh" | "log_cosh_error" => Box::new(LogCoshError::new().named(name)),
        "cosine_similarity" => Box::new(CosineSimilarity::new()),
        "hinge" => Box::new(Hinge::new()),
        "squared_hinge" => Box::new(SquaredHinge::new()),
        "categorical_hinge" => Box::new(CategoricalHinge::new()),
        "precision" | "Precision" => Box::new(Precision::new()),
        "recall" | "Recall" => Box::new(Recall::new()),
        "auc" | "AUC" => Box::new(AUC::new()),
        "bce" | "binary_crossentropy" => Box::new(BinaryCrossentropy::new().named(name)),
        "categorical_crossentropy" => Box::new(CategoricalCrossentropy::new()),
        "sparse_categorical_crossentropy" => Box::new(SparseCategoricalCrossentropy::new()),
        "BinaryCrossentropy" => Box::new(BinaryCrossentropy::new()),
        "CategoricalCrossentropy" => Box::new(CategoricalCrossentropy::new()),
        "SparseCategoricalCrossentropy" => Box::new(SparseCategoricalCrossentropy::new()),
        "MeanSquaredLogarithmicError" => Box::new(MeanSquaredLogarithmicError::new()),
        "MeanAbsolutePercentageError" => Box::new(MeanAbsolutePercentageError::new()),
        "KLDivergence" => Box::new(KLDivergence::new()),
        "Poisson" => Box::new(Poisson::new()),
        "LogCoshError" => Box::new(LogCoshError::new()),
        "CosineSimilarity" => Box::new(CosineSimilarity::new()),
        "Hinge" => Box::new(Hinge::new()),
        "SquaredHinge" => Box::new(SquaredHinge::new()),
        "CategoricalHinge" => Box::new(CategoricalHinge::new()),
        other => {
            return Err(Error::value(format!(
                "Could not interpret metric identifier: {other:?}. Expected one of \"accuracy\", \"acc\", \"mae\", \"mse\", \"rmse\", \"binary_accuracy\", \"categorical_accuracy\", \"sparse_categorical_accuracy\", \"top_k_categorical_accuracy\", \"sparse_top_k_categorical_accuracy\", \"msle\", \"mape\", \"kld\", \"poisson\", \"logcosh\", \"cosine_similarity\", \"hinge\", \"squared_hinge\", \"categorical_hinge\", \"precision\", \"recall\", \"auc\", \"binary_crossentropy\", \"categorical_crossentropy\", \"sparse_categorical_crossentropy\", a class name such as \"MeanSquaredError\", or a `Metric` object."
            )));
        }
    })
}
