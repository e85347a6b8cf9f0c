//! `Precision` and `Recall`: metrics from weighted counts of true positives, false positives and
//! false negatives, at a threshold on the predictions (Keras's confusion-matrix metrics).

use candle_core::{DType, Tensor};

use super::Metric;
use crate::losses::squeeze_or_expand_to_same_rank;
use crate::{Error, Result};

/// The weighted counts: true positives, false positives, false negatives.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counts {
    tp: f64,
    fp: f64,
    fn_: f64,
}

/// Counts of one batch: a prediction above `threshold` is positive, a label other than 0 is
/// positive; a sample weight of shape `(batch,)` weighs every value of its sample.
fn count(
    name: &str,
    threshold: f32,
    y_true: &Tensor,
    y_pred: &Tensor,
    sample_weight: Option<&Tensor>,
) -> Result<Counts> {
    let (t, p, w) = flat_weighted(name, y_true, y_pred, sample_weight)?;
    let mut c = Counts::default();
    for ((label, pred), weight) in t.iter().zip(&p).zip(w) {
        match (*label != 0.0, *pred > threshold) {
            (true, true) => c.tp += weight,
            (false, true) => c.fp += weight,
            (true, false) => c.fn_ += weight,
            (false, false) => {}
        }
    }
    Ok(c)
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
            counts: Counts,
            last: Option<Counts>,
        }
        impl $ty {
            /// The metric at threshold 0.5, with Keras's default name.
            pub fn new() -> Self {
                Self {
                    name: $default_name.to_string(),
                    threshold: 0.5,
                    counts: Counts::default(),
                    last: None,
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
            fn update_state(
                &mut self,
                y_true: &Tensor,
                y_pred: &Tensor,
                sample_weight: Option<&Tensor>,
            ) -> Result<()> {
                let c = count(&self.name, self.threshold, y_true, y_pred, sample_weight)?;
                self.counts.tp += c.tp;
                self.counts.fp += c.fp;
                self.counts.fn_ += c.fn_;
                self.last = Some(c);
                Ok(())
            }
            fn result(&self) -> f64 {
                let $c = self.counts;
                $result
            }
            fn reset_state(&mut self) {
                self.counts = Counts::default();
                self.last = None;
            }
            fn batch_result(&self) -> Option<f64> {
                let $c = self.last?;
                Some($result)
            }
            fn state(&self) -> Vec<f64> {
                vec![self.counts.tp, self.counts.fp, self.counts.fn_]
            }
            fn set_state(&mut self, state: &[f64]) -> Result<()> {
                match state {
                    [tp, fp, fn_] => {
                        self.counts = Counts { tp: *tp, fp: *fp, fn_: *fn_ };
                        Ok(())
                    }
                    _ => Err(Error::value(format!(
                        "metric `{}` keeps 3 values (true positives, false positives, false negatives); received {}",
                        self.name,
                        state.len()
                    ))),
                }
            }
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
    |c| ratio(c.tp, c.fp)
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
    |c| ratio(c.tp, c.fn_)
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
    thresholds: Vec<f32>,
    /// Per threshold: true positives, false positives, true negatives, false negatives.
    counts: Vec<[f64; 4]>,
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
        let n = num_thresholds;
        let mut thresholds = vec![(0.0 - 1e-7) as f32];
        thresholds.extend((0..n - 2).map(|i| ((i + 1) as f64 / (n - 1) as f64) as f32));
        thresholds.push((1.0 + 1e-7) as f32);
        Ok(Self {
            name: "auc".to_string(),
            thresholds,
            counts: vec![[0.0; 4]; n],
        })
    }

    /// The same metric under another name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
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
        let (t, p, w) = flat_weighted(&self.name, y_true, y_pred, sample_weight)?;
        for ((label, pred), weight) in t.iter().zip(&p).zip(&w) {
            let positive = *label != 0.0;
            for (th, c) in self.thresholds.iter().zip(self.counts.iter_mut()) {
                let slot = match (positive, pred > th) {
                    (true, true) => 0,
                    (false, true) => 1,
                    (false, false) => 2,
                    (true, false) => 3,
                };
                c[slot] += weight;
            }
        }
        Ok(())
    }
    fn result(&self) -> f64 {
        let div = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
        let rates: Vec<(f64, f64)> = self
            .counts
            .iter()
            .map(|[tp, fp, tn, fn_]| (div(*fp, fp + tn), div(*tp, tp + fn_)))
            .collect();
        rates
            .windows(2)
            .map(|w| (w[0].0 - w[1].0) * (w[0].1 + w[1].1) / 2.0)
            .sum()
    }
    fn reset_state(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = [0.0; 4]);
    }
    fn state(&self) -> Vec<f64> {
        self.counts.iter().flatten().copied().collect()
    }
    fn set_state(&mut self, state: &[f64]) -> Result<()> {
        if state.len() != 4 * self.counts.len() {
            return Err(Error::value(format!(
                "metric `{}` keeps {} values (4 counts per threshold); received {}",
                self.name,
                4 * self.counts.len(),
                state.len()
            )));
        }
        for (c, s) in self.counts.iter_mut().zip(state.chunks_exact(4)) {
            c.copy_from_slice(s);
        }
        Ok(())
    }
}

/// Labels, predictions and per-value weights, flattened (a weight per sample weighs each of the
/// sample's values).
fn flat_weighted(
    name: &str,
    y_true: &Tensor,
    y_pred: &Tensor,
    sample_weight: Option<&Tensor>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f64>)> {
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
    let t = t.flatten_all()?.to_vec1::<f32>()?;
    let p = p.flatten_all()?.to_vec1::<f32>()?;
    let per_sample = p.len().checked_div(n).unwrap_or(0).max(1);
    let w = match sample_weight {
        None => vec![1.0; p.len()],
        Some(sw) => {
            let w = sw.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            if w.len() == p.len() {
                w.iter().map(|x| f64::from(*x)).collect()
            } else if w.len() == n {
                (0..p.len()).map(|i| f64::from(w[i / per_sample])).collect()
            } else {
                return Err(Error::value(format!(
                    "metric `{name}`: sample_weight of shape {:?} does not fit predictions of shape {:?}; expected one weight per sample or per value",
                    sw.dims(),
                    y_pred.dims()
                )));
            }
        }
    };
    Ok((t, p, w))
}
