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
    let per_sample = p.len().checked_div(n).unwrap_or(0);
    let w: Option<Vec<f32>> = match sample_weight {
        None => None,
        Some(sw) => {
            let w = sw.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            if w.len() != n && w.len() != p.len() {
                return Err(Error::value(format!(
                    "metric `{name}`: sample_weight of shape {:?} does not fit predictions of shape {:?}; expected one weight per sample or per value",
                    sw.dims(),
                    y_pred.dims()
                )));
            }
            Some(w)
        }
    };
    let mut c = Counts::default();
    for (i, (label, pred)) in t.iter().zip(&p).enumerate() {
        let weight = match &w {
            None => 1.0,
            Some(w) if w.len() == p.len() => f64::from(w[i]),
            Some(w) => f64::from(w[i / per_sample.max(1)]),
        };
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
