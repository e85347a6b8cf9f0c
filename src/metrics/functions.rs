//! Per-sample metric functions (Keras's `mean_absolute_error`, `accuracy`, ...).

use candle_core::{D, DType, Tensor};

use super::Kind;
use crate::losses::squeeze_or_expand_to_same_rank;
use crate::{Error, Result};

fn same_shape(t: &Tensor, p: &Tensor) -> Result<()> {
    if t.dims() != p.dims() {
        return Err(Error::value(format!(
            "y_true and y_pred must have the same shape. Received: y_true.shape={:?}, y_pred.shape={:?}",
            t.dims(),
            p.dims()
        )));
    }
    Ok(())
}

fn last_mean(t: &Tensor) -> Result<Tensor> {
    Ok(if t.rank() == 0 {
        t.clone()
    } else {
        t.mean(D::Minus1)?
    })
}

pub(super) fn per_sample(kind: Kind, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
    let y_pred = y_pred.detach().to_dtype(DType::F32)?;
    let y_true = y_true.detach().to_dtype(DType::F32)?;
    match kind {
        Kind::Mae | Kind::Mse => {
            let (t, p) = squeeze_or_expand_to_same_rank(&y_true, &y_pred)?;
            same_shape(&t, &p)?;
            let d = (p - t)?;
            last_mean(&if kind == Kind::Mae {
                d.abs()?
            } else {
                d.sqr()?
            })
        }
        Kind::Rmse => {
            let (t, p) = squeeze_or_expand_to_same_rank(&y_true, &y_pred)?;
            same_shape(&t, &p)?;
            Ok((p - t)?.sqr()?)
        }
        Kind::Accuracy => {
            let (t, p) = squeeze_or_expand_to_same_rank(&y_true, &y_pred)?;
            same_shape(&t, &p)?;
            Ok(t.eq(&p)?.to_dtype(DType::F32)?)
        }
        Kind::Binary(th) => {
            if !(th > 0.0 && th < 1.0) {
                return Err(Error::value(format!(
                    "BinaryAccuracy: invalid value for argument `threshold`. Expected a value in interval (0, 1). Received: threshold={th}"
                )));
            }
            let (t, p) = squeeze_or_expand_to_same_rank(&y_true, &y_pred)?;
            same_shape(&t, &p)?;
            let p = p.gt(th as f64)?.to_dtype(DType::F32)?;
            Ok(t.eq(&p)?.to_dtype(DType::F32)?)
        }
        Kind::Categorical => {
            same_shape(&y_true, &y_pred)?;
            let t = y_true.argmax(D::Minus1)?;
            let p = y_pred.argmax(D::Minus1)?;
            Ok(t.eq(&p)?.to_dtype(DType::F32)?)
        }
        Kind::SparseCategorical => {
            let mut t = y_true.clone();
            let org_shape = t.dims().to_vec();
            let mut reshape = false;
            if t.rank() == y_pred.rank() && t.rank() > 0 && t.dims()[t.rank() - 1] == 1 {
                t = t.squeeze(t.rank() - 1)?;
                reshape = true;
            }
            if y_pred.rank() == 0 || t.dims() != &y_pred.dims()[..y_pred.rank() - 1] {
                return Err(Error::value(format!(
                    "sparse categorical accuracy expects labels of shape (batch,) or (batch, 1) and predictions (batch, classes). Received: y_true.shape={:?}, y_pred.shape={:?}",
                    org_shape,
                    y_pred.dims()
                )));
            }
            let p = y_pred.argmax(D::Minus1)?.to_dtype(DType::F32)?;
            let m = t.eq(&p)?.to_dtype(DType::F32)?;
            Ok(if reshape { m.reshape(org_shape)? } else { m })
        }
        Kind::SparseTopK(k) => {
            // Labels of shape (batch,) or (batch, 1); a prediction's rank is 1 + the number of
            // scores above the label's (Keras's `in_top_k`).
            let classes = y_pred.dims().last().copied().unwrap_or(0);
            let p = y_pred.reshape(((), classes))?;
            let t = y_true.flatten_all()?;
            if t.dims()[0] != p.dims()[0] {
                return Err(Error::value(format!(
                    "sparse top-k accuracy expects one label per row of predictions. Received: y_true.shape={:?}, y_pred.shape={:?}",
                    y_true.dims(),
                    y_pred.dims()
                )));
            }
            let labels = t.to_vec1::<f32>()?;
            if let Some(bad) = labels
                .iter()
                .find(|c| !(**c >= 0.0 && (**c as usize) < classes))
            {
                return Err(Error::value(format!(
                    "sparse top-k accuracy: label {bad} is not a class index in 0..{classes}"
                )));
            }
            let index = t.to_dtype(DType::U32)?.unsqueeze(1)?;
            let at_label = p.gather(&index, 1)?;
            let greater = p
                .broadcast_gt(&at_label)?
                .to_dtype(DType::F32)?
                .sum(D::Minus1)?;
            let hit = greater.lt(k as f64)?.to_dtype(DType::F32)?;
            Ok(if y_true.rank() > 1 {
                hit.reshape(y_true.dims())?
            } else {
                hit
            })
        }
        Kind::Loss(f) => f.per_sample("metric", &y_true, &y_pred),
        Kind::Crossentropy(which) => {
            use crate::losses::Loss;
            match which {
                0 => crate::losses::BinaryCrossentropy::new().call(&y_true, &y_pred),
                1 => crate::losses::CategoricalCrossentropy::new().call(&y_true, &y_pred),
                _ => crate::losses::SparseCategoricalCrossentropy::new().call(&y_true, &y_pred),
            }
        }
        Kind::TopK(k) => {
            same_shape(&y_true, &y_pred)?;
            let label = y_true.argmax_keepdim(D::Minus1)?;
            let target_score = y_pred.gather(&label, D::Minus1)?;
            let greater = y_pred
                .broadcast_gt(&target_score)?
                .to_dtype(DType::F32)?
                .sum(D::Minus1)?;
            Ok(greater.lt(k as f64)?.to_dtype(DType::F32)?)
        }
    }
}
