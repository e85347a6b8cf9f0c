//! `Precision`, `Recall` and `AUC`: metrics from weighted counts of true positives, false
//! positives (and, for `AUC`, true negatives) and false negatives at thresholds on the
//! predictions (Keras's confusion-matrix metrics).
//!
//! The counts of a batch are computed where the batch is, with tensor ops; like the other
//! metrics ([`super::Accumulator`]), on an accelerator they stay there until a result is read,
//! so an update never waits for the device.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Tensor};

use super::{MAX_PENDING, Metric, fetch_queued, queues};
use crate::logs::DeferredValue;
use crate::losses::squeeze_or_expand_to_same_rank;
use crate::{Error, Result};

/// Weighted counts, added up over updates in f64: at once on the CPU; on an accelerator each
/// update's counts are queued on the device and read (all queued updates in one transfer) when
/// a result is read.
#[derive(Debug)]
struct Tally {
    state: Mutex<TallyState>,
}

#[derive(Clone, Debug)]
struct TallyState {
    counts: Vec<f64>,
    /// The counts of the last update alone.
    last: Option<Vec<f64>>,
    /// Updates queued on an accelerator, oldest first: their counts, and the counts once read.
    pending: Vec<(Tensor, Arc<OnceLock<Vec<f32>>>)>,
}

impl TallyState {
    fn add(&mut self, batch: Vec<f64>) {
        for (c, x) in self.counts.iter_mut().zip(&batch) {
            *c += x;
        }
        self.last = Some(batch);
    }
    /// Adds the queued updates in order; counts that could not be read add NaN.
    fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.pending);
        fetch_queued(queued.iter().map(|(t, fetched)| (t, &**fetched)));
        let n = self.counts.len();
        for (_, fetched) in &queued {
            let batch = match fetched.get() {
                Some(v) if v.len() == n => v.iter().map(|x| f64::from(*x)).collect(),
                _ => vec![f64::NAN; n],
            };
            self.add(batch);
        }
    }
}

impl Tally {
    fn new(len: usize) -> Self {
        Self {
            state: Mutex::new(TallyState {
                counts: vec![0.0; len],
                last: None,
                pending: Vec::new(),
            }),
        }
    }
    fn st(&mut self) -> &mut TallyState {
        self.state.get_mut().unwrap_or_else(|e| e.into_inner())
    }
    /// The state with every queued update added.
    fn settled(&self) -> TallyState {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.settle();
        st.clone()
    }
    /// Adds one batch's counts (a tensor of the tally's length).
    fn add(&mut self, batch: Tensor) -> Result<()> {
        let st = self.st();
        if queues(&batch) {
            st.pending.push((batch, Arc::new(OnceLock::new())));
            if st.pending.len() >= MAX_PENDING {
                st.settle();
            }
        } else {
            let v = batch
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            st.settle();
            st.add(v.iter().map(|x| f64::from(*x)).collect());
        }
        Ok(())
    }
    /// `value(state)` on a copy of the state, computed when first read, if updates are queued.
    fn deferred(
        &self,
        value: impl FnOnce(&TallyState) -> f64 + Send + 'static,
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
    fn reset(&mut self) {
        let st = self.st();
        st.counts.iter_mut().for_each(|c| *c = 0.0);
        st.last = None;
        st.pending.clear();
    }
    /// Restores counts saved by `state`, of the tally's length (`what` names them).
    fn set(&mut self, metric: &str, counts: &[f64], what: &str) -> Result<()> {
        let st = self.st();
        if counts.len() != st.counts.len() {
            return Err(Error::value(format!(
                "metric `{metric}` keeps {} values ({what}); received {}",
                st.counts.len(),
                counts.len()
            )));
        }
        st.counts = counts.to_vec();
        st.last = None;
        st.pending.clear();
        Ok(())
    }
}

impl Clone for Tally {
    fn clone(&self) -> Self {
        Self {
            state: Mutex::new(self.settled()),
        }
    }
}

/// The [`Metric`] methods of a metric whose state is a [`Tally`] (`self.tally`) and whose value
/// is `Self::value(counts)`; `what` names the counts in the error of a state of the wrong length.
macro_rules! tally_methods {
    ($what:expr) => {
        fn result(&self) -> f64 {
            Self::value(&self.tally.settled().counts)
        }
        fn reset_state(&mut self) {
            self.tally.reset();
        }
        fn batch_result(&self) -> Option<f64> {
            self.tally.settled().last.map(|c| Self::value(&c))
        }
        fn deferred_result(&self) -> Option<DeferredValue> {
            self.tally.deferred(|st| Self::value(&st.counts))
        }
        fn deferred_batch_result(&self) -> Option<DeferredValue> {
            self.tally
                .deferred(|st| st.last.as_deref().map_or(f64::NAN, Self::value))
        }
        fn state(&self) -> Vec<f64> {
            self.tally.settled().counts
        }
        fn set_state(&mut self, state: &[f64]) -> Result<()> {
            self.tally.set(&self.name, state, $what)
        }
    };
}

/// The counts of one batch at `threshold`, `[tp, fp, fn]`: a prediction above `threshold` is
/// positive, a label other than 0 is positive; a sample weight of shape `(batch,)` weighs every
/// value of its sample.
fn count(
    name: &str,
    threshold: f32,
    y_true: &Tensor,
    y_pred: &Tensor,
    sample_weight: Option<&Tensor>,
) -> Result<Tensor> {
    let Flat { pos, neg, pred } = flat_weighted(name, y_true, y_pred, sample_weight)?;
    let above = pred.gt(threshold)?.to_dtype(DType::F32)?;
    let below = (1.0 - &above)?;
    Ok(Tensor::stack(
        &[
            (&pos * &above)?.sum_all()?,
            (&neg * &above)?.sum_all()?,
            (&pos * &below)?.sum_all()?,
        ],
        0,
    )?)
}

/// `a / (a + b)`, 0 when both are 0 (Keras's `divide_no_nan`).
fn ratio(a: f64, b: f64) -> f64 {
    if a + b == 0.0 { 0.0 } else { a / (a + b) }
}

macro_rules! confusion_metric {
    ($(#[$doc:meta])* $ty:ident, $default_name:expr, |$c:ident| $result:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $ty {
            name: String,
            threshold: f32,
            /// `[tp, fp, fn]`.
            tally: Tally,
        }
        impl $ty {
            /// The metric at threshold 0.5, with Keras's default name.
            pub fn new() -> Self {
                Self {
                    name: $default_name.to_string(),
                    threshold: 0.5,
                    tally: Tally::new(3),
                }
            }
            /// A prediction above `threshold` counts as positive (Keras's `thresholds`, one value).
            ///
            /// # Errors
            /// A threshold outside `[0, 1]`.
            pub fn threshold(mut self, threshold: f32) -> Result<Self> {
                if !(0.0..=1.0).contains(&threshold) {
                    return Err(Error::value(format!(
                        "Threshold values must be in [0, 1]. Received: {threshold}"
                    )));
                }
                self.threshold = threshold;
                Ok(self)
            }
            /// The same metric under another name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                self.name = name.into();
                self
            }
            /// The metric's value from `[tp, fp, fn]`.
            fn value($c: &[f64]) -> f64 {
                $result
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
                Some(super::keras_metric(
                    stringify!($ty),
                    &self.name,
                    serde_json::json!({
                        "thresholds": f64::from(self.threshold),
                        "top_k": null,
                        "class_id": null,
                    }),
                ))
            }
            fn update_state(
                &mut self,
                y_true: &Tensor,
                y_pred: &Tensor,
                sample_weight: Option<&Tensor>,
            ) -> Result<()> {
                let batch = count(&self.name, self.threshold, y_true, y_pred, sample_weight)?;
                self.tally.add(batch)
            }
            tally_methods!(
                "true positives, false positives, false negatives"
            );
        }
    };
}

confusion_metric!(
    /// The fraction of positive predictions that are right: `tp / (tp + fp)` (Keras's
    /// `metrics.Precision`, one threshold).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::metrics::{Metric, Precision};
    /// let mut m = Precision::new();
    /// let t = Tensor::new(&[1f32, 0.0, 1.0, 1.0], &Device::Cpu).unwrap();
    /// let p = Tensor::new(&[0.7f32, 0.6, 0.2, 0.9], &Device::Cpu).unwrap();
    /// m.update_state(&t, &p, None).unwrap();
    /// assert!((m.result() - 2.0 / 3.0).abs() < 1e-12);
    /// ```
    Precision,
    "precision",
    |c| ratio(c[0], c[1])
);
confusion_metric!(
    /// The fraction of positive labels that are found: `tp / (tp + fn)` (Keras's
    /// `metrics.Recall`, one threshold).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::metrics::{Metric, Recall};
    /// let mut m = Recall::new();
    /// let t = Tensor::new(&[1f32, 0.0, 1.0, 1.0], &Device::Cpu).unwrap();
    /// let p = Tensor::new(&[0.7f32, 0.6, 0.2, 0.9], &Device::Cpu).unwrap();
    /// m.update_state(&t, &p, None).unwrap();
    /// assert!((m.result() - 2.0 / 3.0).abs() < 1e-12);
    /// ```
    Recall,
    "recall",
    |c| ratio(c[0], c[2])
);

/// The area under the ROC curve (Keras's `metrics.AUC()` with its defaults: 200 thresholds
/// spread evenly over `[0, 1]`, interpolated trapezoids, labels flattened): true and false
/// positive rates from weighted counts at each threshold.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::metrics::{AUC, Metric};
/// let mut m = AUC::new();
/// let t = Tensor::new(&[0f32, 0.0, 1.0, 1.0], &Device::Cpu).unwrap();
/// let p = Tensor::new(&[0.1f32, 0.4, 0.35, 0.8], &Device::Cpu).unwrap();
/// m.update_state(&t, &p, None).unwrap();
/// assert!((m.result() - 0.75).abs() < 1e-6);
/// ```
#[derive(Clone, Debug)]
pub struct AUC {
    name: String,
    num_thresholds: usize,
    /// Per threshold: true positives, false positives, true negatives, false negatives.
    tally: Tally,
}

impl AUC {
    /// The ROC AUC with 200 thresholds, named `auc`.
    pub fn new() -> Self {
        Self::with_thresholds(200).expect("200 thresholds are valid")
    }

    /// With `num_thresholds` thresholds (Keras's `num_thresholds`): 0 - eps, the evenly spaced
    /// `i / (num_thresholds - 1)`, and 1 + eps.
    ///
    /// # Errors
    /// Fewer than 2 thresholds.
    pub fn with_thresholds(num_thresholds: usize) -> Result<Self> {
        if num_thresholds < 2 {
            return Err(Error::value(format!(
                "Argument `num_thresholds` must be an integer > 1. Received: num_thresholds={num_thresholds}"
            )));
        }
        Ok(Self {
            name: "auc".to_string(),
            num_thresholds,
            tally: Tally::new(4 * num_thresholds),
        })
    }

    /// The same metric under another name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The counts of one batch, `(num_thresholds, 4)`, as Keras counts at evenly spaced
    /// thresholds: predictions are clipped to `[0, 1]` and fall in the bucket
    /// `max(ceil(p * (n - 1)) - 1, 0)` (above thresholds `0..=bucket`); the true and false
    /// positives at each threshold are the weights in its bucket and those above, the negatives
    /// the rest. A NaN prediction is above no threshold. O(values + thresholds).
    fn count(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = self.num_thresholds;
        let Flat { pos, neg, pred } = flat_weighted(&self.name, y_true, y_pred, sample_weight)?;
        let bucket = (pred.clamp(0f32, 1f32)? * (n - 1) as f64)?
            .ceil()?
            .affine(1.0, -1.0)?
            .relu()?;
        // NaN goes to an extra bucket `n`, dropped below (counted as negative predictions).
        let bucket = pred
            .ne(&pred)?
            .where_cond(&bucket.ones_like()?.affine(n as f64, 0.0)?, &bucket)?
            .to_dtype(DType::U32)?;
        let zeros = Tensor::zeros(n + 1, DType::F32, pred.device())?;
        let per_bucket = Tensor::stack(
            &[
                zeros.index_add(&bucket, &pos, 0)?.narrow(0, 0, n)?,
                zeros.index_add(&bucket, &neg, 0)?.narrow(0, 0, n)?,
            ],
            0,
        )?;
        // Sums over each bucket and those above it: [tp; fp], (2, n).
        let above = per_bucket.matmul(&Tensor::tril2(n, DType::F32, pred.device())?)?;
        let tp = above.get(0)?;
        let fp = above.get(1)?;
        let tn = fp.neg()?.broadcast_add(&neg.sum_all()?)?;
        let fn_ = tp.neg()?.broadcast_add(&pos.sum_all()?)?;
        Ok(Tensor::stack(&[tp, fp, tn, fn_], 1)?)
    }

    /// The area from counts laid out as `[tp, fp, tn, fn]` per threshold.
    fn value(counts: &[f64]) -> f64 {
        let div = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
        let rates: Vec<(f64, f64)> = counts
            .chunks_exact(4)
            .map(|c| (div(c[1], c[1] + c[2]), div(c[0], c[0] + c[3])))
            .collect();
        rates
            .windows(2)
            .map(|w| (w[0].0 - w[1].0) * (w[0].1 + w[1].1) / 2.0)
            .sum()
    }
}

impl Default for AUC {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for AUC {
    fn name(&self) -> &str {
        &self.name
    }
    fn update_state(
        &mut self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<()> {
        let batch = self.count(y_true, y_pred, sample_weight)?;
        self.tally.add(batch)
    }
    tally_methods!("4 counts per threshold");
}

/// One batch, flattened, on its device in float32: the weight of each value where its label is
/// positive (`pos`, 0 elsewhere) and where it is negative (`neg`), and the predictions.
struct Flat {
    pos: Tensor,
    neg: Tensor,
    pred: Tensor,
}

/// Labels, predictions and per-value weights, flattened (a weight per sample weighs each of the
/// sample's values); a label other than 0 is positive.
fn flat_weighted(
    name: &str,
    y_true: &Tensor,
    y_pred: &Tensor,
    sample_weight: Option<&Tensor>,
) -> Result<Flat> {
    let (t, p) = squeeze_or_expand_to_same_rank(
        &y_true.detach().to_dtype(DType::F32)?,
        &y_pred.detach().to_dtype(DType::F32)?,
    )?;
    if t.dims() != p.dims() {
        return Err(Error::value(format!(
            "metric `{name}`: y_true and y_pred must have the same shape. Received: y_true.shape={:?}, y_pred.shape={:?}",
            y_true.dims(),
            y_pred.dims()
        )));
    }
    let n = p.dims().first().copied().unwrap_or(1);
    let len = p.elem_count();
    let pred = p.flatten_all()?;
    let label = t.flatten_all()?.ne(0f32)?.to_dtype(DType::F32)?;
    let weight = match sample_weight {
        None => pred.ones_like()?,
        Some(sw) => {
            let w = sw.detach().flatten_all()?.to_dtype(DType::F32)?;
            let w = w.to_device(pred.device())?;
            if w.elem_count() == len {
                w
            } else if w.elem_count() == n {
                w.reshape((n, 1))?
                    .broadcast_as((n, len / n.max(1)))?
                    .flatten_all()?
            } else {
                return Err(Error::value(format!(
                    "metric `{name}`: sample_weight of shape {:?} does not fit predictions of shape {:?}; expected one weight per sample or per value",
                    sw.dims(),
                    y_pred.dims()
                )));
            }
        }
    };
    let pos = (&label * &weight)?;
    let neg = (&weight - &pos)?;
    Ok(Flat { pos, neg, pred })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three weighted batches of binary labels and scores.
    fn batches() -> Vec<(Tensor, Tensor, Tensor)> {
        let d = &Device::Cpu;
        (0..3)
            .map(|b| {
                let t: Vec<f32> = (0..8)
                    .map(|i| ((i * 7 + b) % 3 == 0) as u8 as f32)
                    .collect();
                let p: Vec<f32> = (0..8)
                    .map(|i| ((i * 37 + b * 11) % 100) as f32 / 99.0)
                    .collect();
                let w: Vec<f32> = (0..4).map(|i| 0.5 + (i + b) as f32 * 0.25).collect();
                (
                    Tensor::from_vec(t, (4, 2), d).unwrap(),
                    Tensor::from_vec(p, (4, 2), d).unwrap(),
                    Tensor::from_vec(w, 4, d).unwrap(),
                )
            })
            .collect()
    }

    fn pending(t: &Tally) -> usize {
        t.state.lock().unwrap().pending.len()
    }

    /// On the other devices' path the counts stay queued until a result is read, and the
    /// numbers (the running and the last batch's, deferred or not, and the state) are the
    /// same as those added at once.
    #[test]
    fn queued_counts_give_the_same_numbers() {
        let run = |queued: bool| {
            crate::kernels::FORCE.with(|f| f.set(queued));
            let mut p = Precision::new().threshold(0.4).unwrap();
            let mut r = Recall::new();
            let mut a = AUC::with_thresholds(7).unwrap();
            for (t, y, w) in batches() {
                p.update_state(&t, &y, Some(&w)).unwrap();
                r.update_state(&t, &y, None).unwrap();
                a.update_state(&t, &y, Some(&w)).unwrap();
            }
            let queued_now = [pending(&p.tally), pending(&r.tally), pending(&a.tally)];
            let deferred = p.deferred_result().map(|d| d());
            let deferred_batch = a.deferred_batch_result().map(|d| d());
            let out = (
                queued_now,
                [p.result(), r.result(), a.result()],
                [p.batch_result(), r.batch_result(), a.batch_result()],
                (deferred, deferred_batch),
                a.state(),
            );
            crate::kernels::FORCE.with(|f| f.set(false));
            out
        };
        let at_once = run(false);
        let queued = run(true);
        assert_eq!(at_once.0, [0, 0, 0]);
        assert_eq!(queued.0, [3, 3, 3]);
        assert_eq!(at_once.1, queued.1);
        assert_eq!(at_once.2, queued.2);
        assert_eq!(at_once.4, queued.4);
        assert_eq!(at_once.3, (None, None));
        assert_eq!(queued.3, (Some(queued.1[0]), queued.2[2]));
        assert!(
            queued.1.iter().all(|v| *v > 0.0 && *v < 1.0),
            "{:?}",
            queued.1
        );
    }

    /// A NaN prediction is a negative prediction at every threshold, as `pred > threshold` is
    /// false: it counts as a false negative (or true negative), never as out-of-range memory.
    #[test]
    fn nan_predictions_count_as_negative() {
        let d = &Device::Cpu;
        let t = Tensor::new(&[1f32, 0.0, 1.0], d).unwrap();
        let y = Tensor::new(&[f32::NAN, f32::NAN, 0.8], d).unwrap();
        let mut a = AUC::with_thresholds(3).unwrap();
        a.update_state(&t, &y, None).unwrap();
        // Per threshold (-eps, 0.5, 1 + eps): tp, fp, tn, fn.
        assert_eq!(a.state(), [1., 0., 1., 1., 1., 0., 1., 1., 0., 0., 1., 2.]);
        let mut p = Precision::new();
        p.update_state(&t, &y, None).unwrap();
        assert_eq!(p.state(), [1.0, 0.0, 1.0]);
    }
}
