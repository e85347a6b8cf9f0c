//! Keras's other built-in losses: logarithmic and percentage errors, KL divergence, Poisson,
//! log-cosh, cosine similarity and the hinge family. Each is a per-sample function reduced over
//! the last axis, as Keras's functions are; [`super::Loss::compute`] weighs and reduces them.
//! The same functions back the metrics of the same names ([`crate::metrics`]).

use candle_core::{D, DType, Tensor};

use super::{Loss, prepare};
use crate::Result;

/// Keras's `backend.epsilon()`.
const EPSILON: f64 = 1e-7;

/// The per-sample functions, by Keras name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Function {
    MeanSquaredLogarithmicError,
    MeanAbsolutePercentageError,
    KlDivergence,
    Poisson,
    LogCosh,
    /// `sum(l2_normalize(y_true) * l2_normalize(y_pred))`; the loss negates it.
    CosineSimilarity,
    Hinge,
    SquaredHinge,
    CategoricalHinge,
}

impl Function {
    /// The values per sample (the last axis reduced).
    pub(crate) fn per_sample(self, name: &str, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        let y_true = &to_f32(y_true)?;
        let y_pred = &to_f32(y_pred)?;
        let (t, p) = prepare(name, y_true, y_pred)?;
        let mean = |x: Tensor| -> Result<Tensor> { Ok(x.mean(D::Minus1)?) };
        Ok(match self {
            Function::MeanSquaredLogarithmicError => {
                let log1p = |x: &Tensor| -> candle_core::Result<Tensor> {
                    (x.maximum(EPSILON)? + 1.0)?.log()
                };
                mean((log1p(&p)? - log1p(&t)?)?.sqr()?)?
            }
            Function::MeanAbsolutePercentageError => {
                let scale = t.abs()?.maximum(EPSILON)?;
                (mean(((&t - &p)? / scale)?.abs()?)? * 100.0)?
            }
            Function::KlDivergence => {
                let t = t.clamp(EPSILON, 1.0)?;
                let p = p.clamp(EPSILON, 1.0)?;
                (&t * (&t / &p)?.log()?)?.sum(D::Minus1)?
            }
            Function::Poisson => mean((&p - (&t * (&p + EPSILON)?.log()?)?)?)?,
            Function::LogCosh => {
                // x + softplus(-2x) - log 2, stable for large |x|.
                let x = (&p - &t)?;
                let m2x = (&x * -2.0)?;
                let softplus = (m2x.relu()? + (m2x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
                mean(((x + softplus)? - std::f64::consts::LN_2)?)?
            }
            Function::CosineSimilarity => {
                let normalize = |x: &Tensor| -> candle_core::Result<Tensor> {
                    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.maximum(1e-12)?.sqrt()?;
                    x.broadcast_div(&norm)
                };
                (normalize(&t)? * normalize(&p)?)?.sum(D::Minus1)?
            }
            Function::Hinge | Function::SquaredHinge => {
                let t = hinge_labels(&t)?;
                let margin = (&t * &p)?.affine(-1.0, 1.0)?.relu()?;
                if self == Function::Hinge {
                    mean(margin)?
                } else {
                    mean(margin.sqr()?)?
                }
            }
            Function::CategoricalHinge => {
                let pos = (&t * &p)?.sum(D::Minus1)?;
                let neg = (t.affine(-1.0, 1.0)? * &p)?.max(D::Minus1)?;
                ((neg - pos)? + 1.0)?.relu()?
            }
        })
    }
}

fn to_f32(t: &Tensor) -> Result<Tensor> {
    Ok(if t.dtype() == DType::F32 {
        t.clone()
    } else {
        t.to_dtype(DType::F32)?
    })
}

/// Keras's `convert_binary_labels_to_hinge`: labels all in {0, 1} become -1 and 1. Decided on
/// the labels' device (no read back to the host in a training step).
fn hinge_labels(t: &Tensor) -> Result<Tensor> {
    if t.elem_count() == 0 {
        return Ok(t.clone());
    }
    let binary = t.eq(0.0)?.maximum(&t.eq(1.0)?)?.flatten_all()?.min(0)?;
    let binary = binary.broadcast_as(t.shape())?;
    Ok(binary.where_cond(&t.affine(2.0, -1.0)?, t)?)
}

macro_rules! more_loss {
    ($(#[$doc:meta])* $ty:ident, $name:expr, $f:expr, $sign:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default)]
        pub struct $ty;
        impl $ty {
            /// The loss.
            pub fn new() -> Self {
                Self
            }
        }
        impl Loss for $ty {
            fn name(&self) -> &str {
                $name
            }
            fn keras_config(&self) -> Option<serde_json::Value> {
                Some(super::keras_loss(stringify!($ty), $name, serde_json::json!({})))
            }
            fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
                let v = $f.per_sample($name, y_true, y_pred)?;
                Ok(if $sign < 0.0 { v.neg()? } else { v })
            }
        }
    };
}

more_loss!(
    /// `mean((log(max(y_pred, eps) + 1) - log(max(y_true, eps) + 1))^2)` over the last axis.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::losses::{Loss, MeanSquaredLogarithmicError};
    /// let t = Tensor::new(&[[0f32, 1.0]], &Device::Cpu).unwrap();
    /// let l = MeanSquaredLogarithmicError::new().compute(&t, &t, None).unwrap();
    /// assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0);
    /// ```
    MeanSquaredLogarithmicError,
    "mean_squared_logarithmic_error",
    Function::MeanSquaredLogarithmicError,
    1.0
);
more_loss!(
    /// `100 · mean(|(y_true - y_pred) / max(|y_true|, eps)|)` over the last axis.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::losses::{Loss, MeanAbsolutePercentageError};
    /// let t = Tensor::new(&[[2f32, 4.0]], &Device::Cpu).unwrap();
    /// let p = Tensor::new(&[[1f32, 5.0]], &Device::Cpu).unwrap();
    /// let l = MeanAbsolutePercentageError::new().compute(&t, &p, None).unwrap();
    /// assert!((l.to_scalar::<f32>().unwrap() - 37.5).abs() < 1e-4);
    /// ```
    MeanAbsolutePercentageError,
    "mean_absolute_percentage_error",
    Function::MeanAbsolutePercentageError,
    1.0
);
more_loss!(
    /// `sum(y_true · log(y_true / y_pred))` over the last axis, both clipped to `[eps, 1]`.
    ///
    /// ```
    /// use ferrokeras::losses::{KLDivergence, Loss};
    /// assert_eq!(KLDivergence::new().name(), "kl_divergence");
    /// ```
    KLDivergence,
    "kl_divergence",
    Function::KlDivergence,
    1.0
);
more_loss!(
    /// `mean(y_pred - y_true · log(y_pred + eps))` over the last axis.
    ///
    /// ```
    /// use ferrokeras::losses::{Loss, Poisson};
    /// assert_eq!(Poisson::new().name(), "poisson");
    /// ```
    Poisson,
    "poisson",
    Function::Poisson,
    1.0
);
more_loss!(
    /// `mean(log(cosh(y_pred - y_true)))` over the last axis.
    ///
    /// ```
    /// use ferrokeras::losses::{LogCosh, Loss};
    /// assert_eq!(LogCosh::new().name(), "log_cosh");
    /// ```
    LogCosh,
    "log_cosh",
    Function::LogCosh,
    1.0
);
more_loss!(
    /// `-sum(l2_normalize(y_true) · l2_normalize(y_pred))` over the last axis: -1 for the same
    /// direction, 0 for orthogonal vectors.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::losses::{CosineSimilarity, Loss};
    /// let t = Tensor::new(&[[1f32, 0.0]], &Device::Cpu).unwrap();
    /// let p = Tensor::new(&[[3f32, 0.0]], &Device::Cpu).unwrap();
    /// let l = CosineSimilarity::new().compute(&t, &p, None).unwrap();
    /// assert!((l.to_scalar::<f32>().unwrap() + 1.0).abs() < 1e-6);
    /// ```
    CosineSimilarity,
    "cosine_similarity",
    Function::CosineSimilarity,
    -1.0
);
more_loss!(
    /// `mean(max(1 - y_true · y_pred, 0))` over the last axis; labels in {0, 1} are taken as -1
    /// and 1.
    ///
    /// ```
    /// use ferrokeras::losses::{Hinge, Loss};
    /// assert_eq!(Hinge::new().name(), "hinge");
    /// ```
    Hinge,
    "hinge",
    Function::Hinge,
    1.0
);
more_loss!(
    /// `mean(max(1 - y_true · y_pred, 0)^2)` over the last axis; labels in {0, 1} are taken as
    /// -1 and 1.
    ///
    /// ```
    /// use ferrokeras::losses::{Loss, SquaredHinge};
    /// assert_eq!(SquaredHinge::new().name(), "squared_hinge");
    /// ```
    SquaredHinge,
    "squared_hinge",
    Function::SquaredHinge,
    1.0
);
more_loss!(
    /// `max(max((1 - y_true) · y_pred) - sum(y_true · y_pred) + 1, 0)` over the last axis
    /// (one-hot targets).
    ///
    /// ```
    /// use ferrokeras::losses::{CategoricalHinge, Loss};
    /// assert_eq!(CategoricalHinge::new().name(), "categorical_hinge");
    /// ```
    CategoricalHinge,
    "categorical_hinge",
    Function::CategoricalHinge,
    1.0
);
