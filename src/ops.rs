//! Numeric building blocks shared by activations and losses.

use candle_core::{D, DType, Tensor};

use crate::Result;

/// Integer tensors become float32 (Keras casts inputs to the float compute dtype); candle has no
/// `neg`/`exp`/`tanh`/... kernels for integers and panics on them instead of returning an error.
pub(crate) fn to_float(x: &Tensor) -> Result<Tensor> {
    Ok(if x.dtype().is_int() {
        x.to_dtype(DType::F32)?
    } else {
        x.clone()
    })
}

/// `1 / (1 + exp(-x))`.
pub(crate) fn sigmoid(x: &Tensor) -> Result<Tensor> {
    let x = to_float(x)?;
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

/// Softmax over the last axis, shifted by the (constant) maximum for stability.
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let x = &to_float(x)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Log-softmax over the last axis.
pub(crate) fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let x = &to_float(x)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// `x` if `x > 0` else `slope * x`; the gradient is 1 where `x > 0`, else `slope` (TensorFlow's,
/// and our CPU kernel's, at `x = 0` too). A selection rather than `relu(x) - slope·relu(-x)`:
/// four kernels forward instead of five and about half as many backward, and the difference of
/// two ReLUs had the gradient `1 + slope` at `x = 0`.
pub(crate) fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    let x = &to_float(x)?;
    let positive = x.gt(&x.zeros_like()?)?;
    Ok(positive.where_cond(x, &(x * slope as f64)?)?)
}

/// Elementwise binary cross-entropy from logits `x` and targets `z`, in the stable form
/// `max(x, 0) - x z + log(1 + exp(-|x|))`.
///
/// One node of the recorded graph ([`crate::tape::node`]), differentiated as `sigmoid(x) - z`
/// (and `-x` for the targets): nine ops forward, six for the gradient, instead of nine nodes.
pub(crate) fn sigmoid_stable_bce(x: &Tensor, z: &Tensor) -> Result<Tensor> {
    bce_node(x, z, false)
}

/// [`sigmoid_stable_bce`] reduced as a Keras loss reduces it without sample weights: the mean
/// over the last axis, then the sum over the rest divided by its count (`sum_over_batch_size`),
/// with the same ops as that reduction, so the same value. The reduction is inside the node: the
/// backward pass has no gradient to accumulate for the elementwise values, the per-sample means
/// and their sum (off the CPU, two kernels each, and each reduction's own backward op).
pub(crate) fn sigmoid_stable_bce_mean(x: &Tensor, z: &Tensor) -> Result<Tensor> {
    bce_node(x, z, true)
}

fn bce_node(x: &Tensor, z: &Tensor, mean: bool) -> Result<Tensor> {
    let x = &to_float(x)?;
    let (xd, zd) = (x.detach(), z.detach());
    let softplus = (xd.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let linear = (xd.relu()? - (&xd * &zd)?)?;
    // The value, and the factors by which the gradient of the output becomes each element's.
    let (value, scale) = if mean {
        let per = (linear + softplus)?;
        let (per, last) = match per.rank() {
            0 => (per, 1.0),
            r => {
                let last = per.dims()[r - 1] as f64;
                (per.mean(D::Minus1)?, last)
            }
        };
        let n = per.elem_count().max(1) as f64;
        let value = crate::tape::NodeValue::from(&(per.sum_all()? / n)?);
        (value, Some((n, last)))
    } else {
        // The sum is the node's own op.
        (crate::tape::NodeValue::add(&linear, &softplus)?, None)
    };
    crate::tape::node(&[x, z], value, move |g, _, needs| {
        let g = match scale {
            // As the reduction's ops differentiate: the division by the count, then the mean's.
            Some((n, last)) => {
                let g = g.affine(1.0 / n, 0.0)?;
                if last == 1.0 {
                    g
                } else {
                    g.affine(1.0 / last, 0.0)?
                }
            }
            None => g.clone(),
        };
        let gx = if needs[0] {
            let d = (sigmoid(&xd).map_err(candle_core::Error::wrap)? - &zd)?;
            Some(d.broadcast_mul(&g)?)
        } else {
            None
        };
        let gz = if needs[1] {
            Some(xd.neg()?.broadcast_mul(&g)?)
        } else {
            None
        };
        Ok(vec![gx, gz])
    })
}

/// `-sum(target * log_softmax(x))` over the last axis, as one node of the recorded graph,
/// differentiated as `softmax(x) · sum(target) - target` (and `-log_softmax(x)` for the
/// targets), the softmax from the forward pass's log-probabilities.
pub(crate) fn softmax_ce_from_logits(target: &Tensor, x: &Tensor) -> Result<Tensor> {
    ce_node(target, x, false)
}

/// [`softmax_ce_from_logits`] reduced as a Keras loss reduces it without sample weights: the
/// sum over the samples divided by their count, inside the node (as
/// [`sigmoid_stable_bce_mean`]).
pub(crate) fn softmax_ce_from_logits_mean(target: &Tensor, x: &Tensor) -> Result<Tensor> {
    ce_node(target, x, true)
}

fn ce_node(target: &Tensor, x: &Tensor, mean: bool) -> Result<Tensor> {
    let x = &to_float(x)?;
    let (xd, td) = (x.detach(), target.detach());
    let log_p = log_softmax_last(&xd)?;
    let sum = (&td * &log_p)?.sum(D::Minus1)?;
    let (value, count) = if mean {
        let n = sum.elem_count().max(1) as f64;
        let value = crate::tape::NodeValue::from(&(sum.neg()?.sum_all()? / n)?);
        (value, Some(n))
    } else {
        // The negation is the node's own op.
        (
            crate::tape::NodeValue::unary(crate::tape::Unary::Neg, &sum),
            None,
        )
    };
    crate::tape::node(&[x, target], value, move |g, _, needs| {
        let g = match count {
            Some(n) => g.affine(1.0 / n, 0.0)?,
            None => g.unsqueeze(D::Minus1)?,
        };
        let gx = if needs[0] {
            let p = log_p.exp()?;
            let p = p.broadcast_mul(&td.sum_keepdim(D::Minus1)?)?;
            Some((p - &td)?.broadcast_mul(&g)?)
        } else {
            None
        };
        let gt = if needs[1] {
            Some(log_p.neg()?.broadcast_mul(&g)?)
        } else {
            None
        };
        Ok(vec![gx, gt])
    })
}

/// Values made once per device and key (index tensors, constants) and kept for the process: a
/// copy from the host at every step would sit between the step's kernels on a GPU.
pub(crate) struct DeviceCache<K, V>(std::sync::Mutex<Vec<(candle_core::Device, K, V)>>);

impl<K: PartialEq, V: Clone> DeviceCache<K, V> {
    pub(crate) const fn new() -> Self {
        Self(std::sync::Mutex::new(Vec::new()))
    }

    /// The value kept for `device` and `key`, made by `make` the first time.
    pub(crate) fn get_or_make(
        &self,
        device: &candle_core::Device,
        key: K,
        make: impl FnOnce() -> candle_core::Result<V>,
    ) -> candle_core::Result<V> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, v)) = cache
            .iter()
            .find(|(d, k, _)| *k == key && d.same_device(device))
        {
            return Ok(v.clone());
        }
        let v = make()?;
        cache.push((device.clone(), key, v.clone()));
        Ok(v)
    }
}

/// `0, 1, ..., n - 1` (or reversed) as u32 on `device`, made once per device, length and order
/// ([`DeviceCache`]).
pub(crate) fn indices(
    n: usize,
    reversed: bool,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    static CACHE: DeviceCache<(usize, bool), Tensor> = DeviceCache::new();
    CACHE.get_or_make(device, (n, reversed), || {
        let v: Vec<u32> = if reversed {
            (0..n as u32).rev().collect()
        } else {
            (0..n as u32).collect()
        };
        Tensor::from_vec(v, n, device)
    })
}

/// A zero of `like`'s dtype broadcast to its shape: a view of one value made once per device and
/// dtype, for comparisons and selections against zero without a zero-filled buffer.
pub(crate) fn zeros_view(like: &Tensor) -> candle_core::Result<Tensor> {
    static CACHE: DeviceCache<DType, Tensor> = DeviceCache::new();
    let (device, dtype) = (like.device(), like.dtype());
    let zero = CACHE.get_or_make(device, dtype, || Tensor::zeros((), dtype, device))?;
    zero.broadcast_as(like.shape())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::tape::Variable;
    use candle_core::Device;

    /// Values and gradients of the generic LeakyReLU, zero included (Keras: the slope there).
    #[test]
    fn leaky_relu_values_and_gradients() {
        let x = Tensor::new(&[-2f32, -0.5, 0.0, 0.5, 3.0], &Device::Cpu).unwrap();
        let v = Variable::new("x", &x, true).unwrap();
        let y = leaky_relu(v.as_tensor(), 0.2).unwrap();
        assert_eq!(
            y.to_vec1::<f32>().unwrap(),
            vec![-2.0 * 0.2, -0.5 * 0.2, 0.0, 0.5, 3.0]
        );
        let g = GradientTape::gradient(&y.sum_all().unwrap(), &[v]).unwrap();
        assert_eq!(
            g[0].to_vec1::<f32>().unwrap(),
            vec![0.2, 0.2, 0.2, 1.0, 1.0]
        );
    }
}
