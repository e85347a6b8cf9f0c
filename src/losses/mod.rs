//! Losses with Keras 3 semantics: per-sample math in [`Loss::call`], reduction
//! `sum_over_batch_size` and sample weights in the provided [`Loss::compute`].
//!
//! `sum_over_batch_size` divides the weighted sum by the number of loss values (not by the sum of
//! the weights), exactly as Keras does.

mod compiled;
mod more;

pub use compiled::CompiledLoss;
pub(crate) use more::Function;
pub use more::{
    CategoricalHinge, CosineSimilarity, Hinge, KLDivergence, LogCosh, MeanAbsolutePercentageError,
    MeanSquaredLogarithmicError, Poisson, SquaredHinge,
};

use candle_core::{D, DType, Tensor};

use crate::ops::{sigmoid_stable_bce, sigmoid_stable_bce_mean};
use crate::{Error, Result};

/// Clipping constant for probabilities (Keras's `backend.epsilon()`).
pub const EPSILON: f64 = 1e-7;

/// A loss function.
///
/// Implement [`Loss::call`] (the per-sample values, one per sample or per element before the batch
/// reduction); [`Loss::compute`] applies sample weights and the reduction.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::losses::{Loss, MeanSquaredError};
/// let y = Tensor::new(&[[0f32], [1.0]], &Device::Cpu).unwrap();
/// let p = Tensor::new(&[[1f32], [1.0]], &Device::Cpu).unwrap();
/// let l = MeanSquaredError::new().compute(&y, &p, None).unwrap();
/// assert_eq!(l.to_scalar::<f32>().unwrap(), 0.5);
/// ```
pub trait Loss: Send {
    /// The name used in logs (`"mean_squared_error"`).
    fn name(&self) -> &str;
    /// Unreduced loss values, shape `(batch, ...)` with the last axis reduced where Keras does.
    ///
    /// # Errors
    /// Incompatible shapes of `y_true` and `y_pred`.
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor>;
    /// The scalar loss: `sum(values * sample_weight)` divided by the number of those products.
    ///
    /// # Errors
    /// Incompatible shapes, including a `sample_weight` that does not match the batch.
    fn compute(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        let values = self.call(y_true, y_pred)?;
        reduce_weighted(&values, sample_weight)
    }
    /// The loss as Keras serializes it in a `.keras` file's `compile_config`
    /// (`{"module": "keras.losses", "class_name": ..., "config": ...}`); `None` (the default) for
    /// a loss Keras does not have.
    ///
    /// ```
    /// use ferrokeras::losses::{BinaryCrossentropy, Loss};
    /// let c = BinaryCrossentropy::new().from_logits(true).keras_config().unwrap();
    /// assert_eq!(c["class_name"], "BinaryCrossentropy");
    /// assert_eq!(c["config"]["from_logits"], true);
    /// ```
    fn keras_config(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Keras's serialized form of a loss of class `class`: its name, the default reduction, and
/// `extra` (the class's own options).
pub(crate) fn keras_loss(class: &str, name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut config = serde_json::json!({"name": name, "reduction": "sum_over_batch_size"});
    if let (Some(c), serde_json::Value::Object(e)) = (config.as_object_mut(), extra) {
        c.extend(e);
    }
    serde_json::json!({
        "module": "keras.losses",
        "class_name": class,
        "config": config,
        "registered_name": null,
    })
}

/// `sum(values * sample_weight) / number of products` (Keras's `reduce_weighted_values` with
/// `sum_over_batch_size`): the count is taken after the weights broadcast, so the scalar loss of
/// rank-1 targets, weighted per sample, is divided by the number of samples.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::losses::reduce_weighted;
/// let t = |v: &[f32]| Tensor::new(v, &Device::Cpu).unwrap();
/// // Per-sample values: the sum of weighted values over the 4 samples.
/// let l = reduce_weighted(&t(&[1., 2., 3., 4.]), Some(&t(&[1., 1., 0., 0.]))).unwrap();
/// assert_eq!(l.to_scalar::<f32>().unwrap(), 0.75);
/// // One value (a rank-1 target's loss) weighted by 4 samples: divided by 4, not 1.
/// let one = Tensor::new(0.5f32, &Device::Cpu).unwrap();
/// let l = reduce_weighted(&one, Some(&t(&[1., 1., 0., 0.]))).unwrap();
/// assert_eq!(l.to_scalar::<f32>().unwrap(), 0.25);
/// ```
///
/// # Errors
/// A `sample_weight` whose shape cannot broadcast to the values.
pub fn reduce_weighted(values: &Tensor, sample_weight: Option<&Tensor>) -> Result<Tensor> {
    let weighted = match sample_weight {
        Some(sw) => {
            let sw = sw.to_dtype(values.dtype())?;
            let (v, w) = squeeze_or_expand_to_same_rank(values, &sw)?;
            v.broadcast_mul(&w).map_err(|_| {
                Error::value(format!(
                    "sample_weight of shape {:?} does not match loss values of shape {:?}; pass one weight per sample (shape ({},)) or one per value",
                    sw.dims(),
                    values.dims(),
                    values.dims().first().copied().unwrap_or(0)
                ))
            })?
        }
        None => values.clone(),
    };
    let n = weighted.elem_count().max(1) as f64;
    Ok((weighted.sum_all()? / n)?)
}

/// Keras's `apply_mask`: the output mask as sample weights, times `sample_weight` (a weight
/// per sample spreads over its steps). For the loss (a mean over all values), the kept values
/// weigh `total / kept`, so that the loss is the mean over the kept values; for the metrics
/// (weighted means) 1.
pub(crate) fn apply_mask(
    mask: &Tensor,
    sample_weight: Option<&Tensor>,
    for_loss: bool,
) -> Result<Tensor> {
    let m = mask.to_dtype(candle_core::DType::F32)?;
    let m = if for_loss {
        // `kept` stays on the device; with nothing kept every weight is 0 whatever the scale.
        let kept = m.sum_all()?.maximum(1f64)?;
        m.broadcast_mul(&(kept.recip()? * m.elem_count() as f64)?)?
    } else {
        m
    };
    match sample_weight {
        None => Ok(m),
        Some(w) => {
            let w = w.to_dtype(candle_core::DType::F32)?;
            let w = if w.rank() + 1 == m.rank() {
                w.unsqueeze(w.rank())?
            } else {
                w
            };
            m.broadcast_mul(&w).map_err(|_| {
                Error::value(format!(
                    "sample_weight of shape {:?} does not match the output mask of shape {:?}; pass one weight per sample or one per step",
                    w.dims(),
                    m.dims()
                ))
            })
        }
    }
}

/// Keras's `squeeze_or_expand_to_same_rank`: when ranks differ by one and the longer one ends in a
/// size-1 axis, squeeze it (or expand a rank-1 partner).
///
/// # Errors
/// A failing reshape.
pub fn squeeze_or_expand_to_same_rank(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra == rb + 1 && a.dims()[ra - 1] == 1 {
        if rb == 1 {
            return Ok((a.clone(), b.unsqueeze(1)?));
        }
        return Ok((a.squeeze(ra - 1)?, b.clone()));
    }
    if rb == ra + 1 && b.dims()[rb - 1] == 1 {
        if ra == 1 {
            return Ok((a.unsqueeze(1)?, b.clone()));
        }
        return Ok((a.clone(), b.squeeze(rb - 1)?));
    }
    Ok((a.clone(), b.clone()))
}

fn prepare(name: &str, y_true: &Tensor, y_pred: &Tensor) -> Result<(Tensor, Tensor)> {
    // Losses compute in float32 (Keras's loss dtype), whatever a mixed-precision model outputs.
    let y_true = y_true.to_dtype(DType::F32)?;
    let y_pred = &y_pred.to_dtype(DType::F32)?;
    let (t, p) = squeeze_or_expand_to_same_rank(&y_true, y_pred)?;
    if t.dims() != p.dims() {
        return Err(Error::value(format!(
            "{name}: `y_true` and `y_pred` must have the same shape. Received: y_true.shape={:?}, y_pred.shape={:?}",
            y_true.dims(),
            y_pred.dims()
        )));
    }
    Ok((t, p))
}

fn mean_last(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 0 {
        return Ok(t.clone());
    }
    Ok(t.mean(D::Minus1)?)
}

macro_rules! simple_loss {
    ($(#[$doc:meta])* $ty:ident, $name:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default)]
        pub struct $ty;
        impl $ty {
            /// The loss.
            pub fn new() -> Self {
                Self
            }
        }
    };
}

simple_loss!(
    /// `mean((y_pred - y_true)^2, axis=-1)`.
    ///
    /// ```
    /// use ferrokeras::losses::{Loss, MeanSquaredError};
    /// assert_eq!(MeanSquaredError::new().name(), "mean_squared_error");
    /// ```
    MeanSquaredError,
    "mean_squared_error"
);
simple_loss!(
    /// `mean(|y_pred - y_true|, axis=-1)`.
    ///
    /// ```
    /// use ferrokeras::losses::{Loss, MeanAbsoluteError};
    /// assert_eq!(MeanAbsoluteError::new().name(), "mean_absolute_error");
    /// ```
    MeanAbsoluteError,
    "mean_absolute_error"
);

impl Loss for MeanSquaredError {
    fn name(&self) -> &str {
        "mean_squared_error"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        Some(keras_loss(
            "MeanSquaredError",
            self.name(),
            serde_json::json!({}),
        ))
    }
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        let (t, p) = prepare(self.name(), y_true, y_pred)?;
        mean_last(&(p - t)?.sqr()?)
    }
}

impl Loss for MeanAbsoluteError {
    fn name(&self) -> &str {
        "mean_absolute_error"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        Some(keras_loss(
            "MeanAbsoluteError",
            self.name(),
            serde_json::json!({}),
        ))
    }
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        let (t, p) = prepare(self.name(), y_true, y_pred)?;
        mean_last(&(p - t)?.abs()?)
    }
}

/// Huber loss: `0.5 x^2` where `|x| <= delta`, else `delta |x| - 0.5 delta^2`; mean over the last axis.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::losses::{Huber, Loss};
/// let y = Tensor::new(&[[0f32, 0.0]], &Device::Cpu).unwrap();
/// let p = Tensor::new(&[[0.5f32, 3.0]], &Device::Cpu).unwrap();
/// let l = Huber::new(1.0).compute(&y, &p, None).unwrap().to_scalar::<f32>().unwrap();
/// assert!((l - (0.125 + 2.5) / 2.0).abs() < 1e-6);
/// ```
#[derive(Clone, Debug)]
pub struct Huber {
    delta: f64,
}

impl Huber {
    /// Huber loss with threshold `delta` (Keras default 1.0).
    pub fn new(delta: f64) -> Self {
        Self { delta }
    }
}

impl Default for Huber {
    fn default() -> Self {
        Self::new(1.0)
    }
}

impl Loss for Huber {
    fn name(&self) -> &str {
        "huber_loss"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        Some(keras_loss(
            "Huber",
            self.name(),
            serde_json::json!({"delta": self.delta}),
        ))
    }
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        let (t, p) = prepare(self.name(), y_true, y_pred)?;
        let err = (p - t)?;
        let abs = err.abs()?;
        let d = self.delta;
        let quad = (err.sqr()? * 0.5)?;
        let lin = ((&abs * d)? - 0.5 * d * d)?;
        let small = abs.le(d)?;
        mean_last(&small.where_cond(&quad, &lin)?)
    }
}

/// Binary cross-entropy between targets in `[0, 1]` and probabilities (or logits with
/// `from_logits`); mean over the last axis. The logits form is the stable
/// `max(x, 0) - x z + log(1 + exp(-|x|))`, finite at any logit.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::losses::{BinaryCrossentropy, Loss};
/// let y = Tensor::new(&[[1f32], [0.0]], &Device::Cpu).unwrap();
/// let logits = Tensor::new(&[[40f32], [-40.0]], &Device::Cpu).unwrap();
/// let l = BinaryCrossentropy::new().from_logits(true).compute(&y, &logits, None).unwrap();
/// assert!(l.to_scalar::<f32>().unwrap() < 1e-6);
/// ```
#[derive(Clone, Debug, Default)]
pub struct BinaryCrossentropy {
    from_logits: bool,
    label_smoothing: f64,
}

impl BinaryCrossentropy {
    /// On probabilities, no label smoothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Whether `y_pred` are logits.
    pub fn from_logits(mut self, from_logits: bool) -> Self {
        self.from_logits = from_logits;
        self
    }
    /// Targets become `y (1 - s) + 0.5 s`.
    pub fn label_smoothing(mut self, s: f64) -> Self {
        self.label_smoothing = s;
        self
    }
}

impl Loss for BinaryCrossentropy {
    fn name(&self) -> &str {
        "binary_crossentropy"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        Some(keras_loss(
            "BinaryCrossentropy",
            self.name(),
            serde_json::json!({"from_logits": self.from_logits, "label_smoothing": self.label_smoothing, "axis": -1}),
        ))
    }
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        let (t, p) = self.targets(y_true, y_pred)?;
        let per_elem = if self.from_logits {
            sigmoid_stable_bce(&p, &t)?
        } else {
            let p = p.clamp(EPSILON as f32, (1.0 - EPSILON) as f32)?;
            let pos = (&t * p.log()?)?;
            let neg = (t.affine(-1.0, 1.0)? * p.affine(-1.0, 1.0)?.log()?)?;
            (pos + neg)?.neg()?
        };
        mean_last(&per_elem)
    }
    fn compute(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.from_logits && sample_weight.is_none() {
            // The same value as below, the reduction inside the loss's graph node.
            let (t, p) = self.targets(y_true, y_pred)?;
            return sigmoid_stable_bce_mean(&p, &t);
        }
        reduce_weighted(&self.call(y_true, y_pred)?, sample_weight)
    }
}

impl BinaryCrossentropy {
    /// The targets (smoothed) and the predictions, in float32 and of one shape.
    fn targets(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mut t, p) = prepare(self.name(), y_true, y_pred)?;
        if self.label_smoothing > 0.0 {
            t = ((t * (1.0 - self.label_smoothing))? + 0.5 * self.label_smoothing)?;
        }
        Ok((t, p))
    }
}

/// Categorical cross-entropy between one-hot (or soft) targets and probabilities (or logits).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::losses::{CategoricalCrossentropy, Loss};
/// let y = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
/// let p = Tensor::new(&[[0.5f32, 0.5]], &Device::Cpu).unwrap();
/// let l = CategoricalCrossentropy::new().compute(&y, &p, None).unwrap();
/// assert!((l.to_scalar::<f32>().unwrap() - 2f32.ln()).abs() < 1e-6);
/// ```
#[derive(Clone, Debug, Default)]
pub struct CategoricalCrossentropy {
    from_logits: bool,
    label_smoothing: f64,
}

impl CategoricalCrossentropy {
    /// On probabilities, no label smoothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Whether `y_pred` are logits.
    pub fn from_logits(mut self, from_logits: bool) -> Self {
        self.from_logits = from_logits;
        self
    }
    /// Targets become `y (1 - s) + s / num_classes`.
    pub fn label_smoothing(mut self, s: f64) -> Self {
        self.label_smoothing = s;
        self
    }
}

/// `-sum(target * log p)` over the last axis from probabilities or logits.
fn categorical_ce(target: &Tensor, output: &Tensor, from_logits: bool) -> Result<Tensor> {
    let log_p = if from_logits {
        return crate::ops::softmax_ce_from_logits(target, output);
    } else {
        let norm = output.broadcast_div(&output.sum_keepdim(D::Minus1)?)?;
        norm.clamp(EPSILON as f32, (1.0 - EPSILON) as f32)?.log()?
    };
    Ok((target * log_p)?.sum(D::Minus1)?.neg()?)
}

impl Loss for CategoricalCrossentropy {
    fn name(&self) -> &str {
        "categorical_crossentropy"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        Some(keras_loss(
            "CategoricalCrossentropy",
            self.name(),
            serde_json::json!({"from_logits": self.from_logits, "label_smoothing": self.label_smoothing, "axis": -1}),
        ))
    }
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        let (t, p) = self.targets(y_true, y_pred)?;
        categorical_ce(&t, &p, self.from_logits)
    }
    fn compute(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.from_logits && sample_weight.is_none() {
            // The same value as below, the reduction inside the loss's graph node.
            let (t, p) = self.targets(y_true, y_pred)?;
            return crate::ops::softmax_ce_from_logits_mean(&t, &p);
        }
        reduce_weighted(&self.call(y_true, y_pred)?, sample_weight)
    }
}

impl CategoricalCrossentropy {
    /// The targets (smoothed) and the predictions, in float32 and of one shape with a class axis.
    fn targets(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<(Tensor, Tensor)> {
        let (mut t, p) = prepare(self.name(), y_true, y_pred)?;
        if t.rank() == 0 {
            return Err(Error::value(
                "categorical_crossentropy needs a class axis; received scalars",
            ));
        }
        if self.label_smoothing > 0.0 {
            let k = t.dims()[t.rank() - 1] as f64;
            t = ((t * (1.0 - self.label_smoothing))? + self.label_smoothing / k)?;
        }
        Ok((t, p))
    }
}

/// Cross-entropy between integer labels and probabilities (or logits) over classes.
///
/// # Shapes
/// `y_true` `(batch,)` or `(batch, 1)` of class indices; `y_pred` `(batch, classes)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::losses::{Loss, SparseCategoricalCrossentropy};
/// let y = Tensor::new(&[1f32], &Device::Cpu).unwrap();
/// let p = Tensor::new(&[[0.5f32, 0.5]], &Device::Cpu).unwrap();
/// let l = SparseCategoricalCrossentropy::new().compute(&y, &p, None).unwrap();
/// assert!((l.to_scalar::<f32>().unwrap() - 2f32.ln()).abs() < 1e-6);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SparseCategoricalCrossentropy {
    from_logits: bool,
}

impl SparseCategoricalCrossentropy {
    /// On probabilities.
    pub fn new() -> Self {
        Self::default()
    }
    /// Whether `y_pred` are logits.
    pub fn from_logits(mut self, from_logits: bool) -> Self {
        self.from_logits = from_logits;
        self
    }
}

/// One-hot encodes integer labels (any numeric dtype) into `num_classes` float32 columns.
///
/// # Errors
/// Labels outside `0..num_classes`, with the offending value (on the CPU; on other devices such a
/// label's row is NaN instead).
pub(crate) fn one_hot(labels: &Tensor, num_classes: usize) -> Result<Tensor> {
    if num_classes == 0 {
        return Err(Error::value(
            "sparse categorical cross-entropy needs predictions with at least one class: the valid label range [0, 0) is empty because y_pred has a class axis of size 0",
        ));
    }
    let l = labels.to_dtype(DType::F32)?;
    if !l.device().is_cpu() {
        // On an accelerator the labels are not read back (that would wait for the step's work):
        // a label that is not a class index gives NaN for its sample, as TensorFlow does on GPUs.
        return one_hot_nan_invalid(&l, num_classes);
    }
    checked_labels(&l, num_classes)?;
    one_hot_rows(&l, num_classes)
}

/// The float labels `l` (on the CPU) as class indices in `0..num_classes`.
///
/// # Errors
/// A label that is not an integer in range, with its value.
fn checked_labels(l: &Tensor, num_classes: usize) -> Result<Vec<u32>> {
    if l.elem_count() == 0 {
        return Ok(Vec::new());
    }
    let v = l.flatten_all()?.to_vec1::<f32>()?;
    if let Some(bad) = v
        .iter()
        .find(|x| !x.is_finite() || x.fract() != 0.0 || **x < 0.0 || **x >= num_classes as f32)
    {
        return Err(Error::value(format!(
            "Received a label value of {bad} which is outside the valid range of [0, {num_classes}). Labels must be integer class indices 0..{}",
            num_classes.saturating_sub(1)
        )));
    }
    Ok(v.into_iter().map(|x| x as u32).collect())
}

/// `1.0` where a float label equals the class index, else `0.0` (no check of the labels).
fn one_hot_rows(l: &Tensor, num_classes: usize) -> Result<Tensor> {
    let classes = crate::ops::indices(num_classes, false, l.device())?.to_dtype(DType::F32)?;
    Ok(l.unsqueeze(l.rank())?
        .broadcast_eq(&classes)?
        .to_dtype(DType::F32)?)
}

/// One-hot rows of float labels; a label that is not an integer in `0..num_classes` (NaN
/// included) gives a row of NaN. Runs entirely on the labels' device.
fn one_hot_nan_invalid(l: &Tensor, num_classes: usize) -> Result<Tensor> {
    let oh = one_hot_rows(l, num_classes)?;
    let invalid = oh
        .sum_keepdim(oh.rank() - 1)?
        .eq(0f32)?
        .broadcast_as(oh.shape())?;
    let nan = Tensor::full(f32::NAN, oh.shape(), oh.device())?;
    Ok(invalid.where_cond(&nan, &oh)?)
}

impl Loss for SparseCategoricalCrossentropy {
    fn name(&self) -> &str {
        "sparse_categorical_crossentropy"
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        Some(keras_loss(
            "SparseCategoricalCrossentropy",
            self.name(),
            serde_json::json!({"from_logits": self.from_logits, "ignore_class": null}),
        ))
    }
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        let (t, p, k) = sparse_targets(y_true, y_pred)?;
        if self.from_logits && k > 0 && crate::kernels::takes(&p) {
            // One op and a one-pass gradient on the CPU (same values as the ops below).
            let labels = checked_labels(&t.to_dtype(DType::F32)?, k)?;
            if let Some(l) = crate::kernels::softmax_ce::sparse_softmax_ce(&p, labels)? {
                return Ok(l);
            }
        }
        let oh = one_hot(&t, k)?;
        categorical_ce(&oh, &p, self.from_logits)
    }
    fn compute(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.from_logits && sample_weight.is_none() {
            let (t, p, k) = sparse_targets(y_true, y_pred)?;
            if !crate::kernels::takes(&p) {
                // The same value as below, the reduction inside the loss's graph node (our CPU
                // kernel, in `call`, is one op already).
                return crate::ops::softmax_ce_from_logits_mean(&one_hot(&t, k)?, &p);
            }
        }
        reduce_weighted(&self.call(y_true, y_pred)?, sample_weight)
    }
}

/// Integer labels `(batch,)` (a trailing axis of one squeezed), the predictions in float32, and
/// the number of classes.
///
/// # Errors
/// Shapes that are not labels `(batch,)` or `(batch, 1)` for predictions `(batch, classes)`.
fn sparse_targets(y_true: &Tensor, y_pred: &Tensor) -> Result<(Tensor, Tensor, usize)> {
    let mut t = y_true.clone();
    if t.rank() == y_pred.rank() && t.rank() > 0 && t.dims()[t.rank() - 1] == 1 {
        t = t.squeeze(t.rank() - 1)?;
    }
    if y_pred.rank() == 0 || t.rank() + 1 != y_pred.rank() || t.dims() != &y_pred.dims()[..t.rank()]
    {
        return Err(Error::value(format!(
            "sparse_categorical_crossentropy expects integer labels of shape (batch,) or (batch, 1) and predictions of shape (batch, classes). Received: y_true.shape={:?}, y_pred.shape={:?}",
            y_true.dims(),
            y_pred.dims()
        )));
    }
    let k = y_pred.dims()[y_pred.rank() - 1];
    Ok((t, y_pred.to_dtype(DType::F32)?, k))
}

/// Resolves a Keras loss shorthand (`"mse"`, `"binary_crossentropy"`, ...).
///
/// ```
/// let l = ferrokeras::losses::get("mse").unwrap();
/// assert_eq!(l.name(), "mean_squared_error");
/// assert!(ferrokeras::losses::get("msee").err().unwrap().to_string().contains("msee"));
/// ```
///
/// # Errors
/// An unknown name, listing the known ones.
pub fn get(name: &str) -> Result<Box<dyn Loss>> {
    Ok(match name {
        "mse" | "mean_squared_error" | "MeanSquaredError" => Box::new(MeanSquaredError),
        "mae" | "mean_absolute_error" | "MeanAbsoluteError" => Box::new(MeanAbsoluteError),
        "huber" | "huber_loss" | "Huber" => Box::new(Huber::default()),
        "binary_crossentropy" | "BinaryCrossentropy" => Box::new(BinaryCrossentropy::new()),
        "categorical_crossentropy" | "CategoricalCrossentropy" => {
            Box::new(CategoricalCrossentropy::new())
        }
        "sparse_categorical_crossentropy" | "SparseCategoricalCrossentropy" => {
            Box::new(SparseCategoricalCrossentropy::new())
        }
        "msle" | "mean_squared_logarithmic_error" | "MeanSquaredLogarithmicError" => {
            Box::new(MeanSquaredLogarithmicError)
        }
        "mape" | "mean_absolute_percentage_error" | "MeanAbsolutePercentageError" => {
            Box::new(MeanAbsolutePercentageError)
        }
        "kld" | "kl_divergence" | "KLDivergence" => Box::new(KLDivergence),
        "poisson" | "Poisson" => Box::new(Poisson),
        "log_cosh" | "LogCosh" => Box::new(LogCosh),
        "cosine_similarity" | "CosineSimilarity" => Box::new(CosineSimilarity),
        "hinge" | "Hinge" => Box::new(Hinge),
        "squared_hinge" | "SquaredHinge" => Box::new(SquaredHinge),
        "categorical_hinge" | "CategoricalHinge" => Box::new(CategoricalHinge),
        other => {
            return Err(Error::value(format!(
                "Could not interpret loss identifier: {other:?}. Expected one of \"mse\", \"mae\", \"huber\", \"binary_crossentropy\", \"categorical_crossentropy\", \"sparse_categorical_crossentropy\", \"msle\", \"mape\", \"kld\", \"poisson\", \"log_cosh\", \"cosine_similarity\", \"hinge\", \"squared_hinge\", \"categorical_hinge\" (or their class names), or a `Loss` object."
            )));
        }
    })
}

#[cfg(test)]
mod device_label_tests {
    use super::*;

    #[test]
    fn labels_that_are_not_class_indices_give_nan_rows() {
        let l = Tensor::new(
            &[0f32, 2.0, 3.0, 1.5, -1.0, f32::NAN],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let oh = one_hot_nan_invalid(&l, 3)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(oh[0], vec![1.0, 0.0, 0.0]);
        assert_eq!(oh[1], vec![0.0, 0.0, 1.0]);
        for row in &oh[2..] {
            assert!(row.iter().all(|v| v.is_nan()), "{oh:?}");
        }
    }
}

#[cfg(test)]
mod reduced_node_tests {
    use super::*;
    use crate::GradientTape;
    use crate::tape::Variable;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::random::uniform_from(seed, shape, -3.0, 3.0, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// `compute` without sample weights (the reduction inside the loss's graph node) gives the
    /// bits of `call` reduced by `reduce_weighted`: value, and the gradients for the predictions
    /// and for the targets.
    fn same_as_reduced(loss: &dyn Loss, y: &Tensor, p: &Tensor, what: &str) {
        let (pv, yv) = (
            Variable::new("p", p, true).unwrap(),
            Variable::new("y", y, true).unwrap(),
        );
        let vars = [pv.clone(), yv.clone()];
        let fused = loss.compute(yv.as_tensor(), pv.as_tensor(), None).unwrap();
        let plain =
            reduce_weighted(&loss.call(yv.as_tensor(), pv.as_tensor()).unwrap(), None).unwrap();
        assert_eq!(fused.dims(), &[] as &[usize], "{what}");
        assert_eq!(bits(&fused), bits(&plain), "{what} value");
        let gf = GradientTape::gradient(&fused, &vars).unwrap();
        let gp = GradientTape::gradient(&plain, &vars).unwrap();
        assert_eq!(bits(&gf[0]), bits(&gp[0]), "{what} prediction gradient");
        assert_eq!(bits(&gf[1]), bits(&gp[1]), "{what} target gradient");
    }

    #[test]
    fn reductions_inside_the_node_give_the_same_bits() {
        let targets = |s: &[usize], seed| rand(s, seed).affine(1.0 / 6.0, 0.5).unwrap();
        for (i, shape) in [[64, 1], [5, 3], [7, 4]].iter().enumerate() {
            let (y, p) = (targets(shape, 1 + i as u64), rand(shape, 11 + i as u64));
            let bce = BinaryCrossentropy::new().from_logits(true);
            same_as_reduced(&bce, &y, &p, &format!("bce {shape:?}"));
            let smooth = BinaryCrossentropy::new()
                .from_logits(true)
                .label_smoothing(0.1);
            same_as_reduced(&smooth, &y, &p, &format!("bce smoothed {shape:?}"));
            let cce = CategoricalCrossentropy::new()
                .from_logits(true)
                .label_smoothing(0.2);
            same_as_reduced(&cce, &y, &p, &format!("cce {shape:?}"));
        }
        // Sparse labels on the other devices' path (on the CPU our kernel is one op already).
        crate::kernels::FORCE.with(|f| f.set(true));
        let labels = Tensor::new(&[2f32, 0.0, 1.0, 3.0, 3.0], &Device::Cpu).unwrap();
        let p = rand(&[5, 4], 21);
        let scce = SparseCategoricalCrossentropy::new().from_logits(true);
        let pv = Variable::new("p", &p, true).unwrap();
        let fused = scce.compute(&labels, pv.as_tensor(), None).unwrap();
        let plain = reduce_weighted(&scce.call(&labels, pv.as_tensor()).unwrap(), None).unwrap();
        assert_eq!(bits(&fused), bits(&plain));
        let gf = GradientTape::gradient(&fused, std::slice::from_ref(&pv)).unwrap();
        let gp = GradientTape::gradient(&plain, std::slice::from_ref(&pv)).unwrap();
        assert_eq!(bits(&gf[0]), bits(&gp[0]));
        // The labels' errors are those of `call`.
        let bad = Tensor::new(&[[2f32], [0.0]], &Device::Cpu).unwrap();
        let e = scce.compute(&bad, &p, None).unwrap_err().to_string();
        assert!(e.contains("labels of shape (batch,) or (batch, 1)"), "{e}");
        crate::kernels::FORCE.with(|f| f.set(false));
    }
}
