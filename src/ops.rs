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

/// `x` if `x > 0` else `slope * x`.
pub(crate) fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    let x = &to_float(x)?;
    Ok((x.relu()? - (x.neg()?.relu()? * slope as f64)?)?)
}

/// Elementwise binary cross-entropy from logits `x` and targets `z`, in the stable form
/// `max(x, 0) - x z + log(1 + exp(-|x|))`.
pub(crate) fn sigmoid_stable_bce(x: &Tensor, z: &Tensor) -> Result<Tensor> {
    let x = &to_float(x)?;
    let softplus = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok(((x.relu()? - (x * z)?)? + softplus)?)
}

/// `0, 1, ..., n - 1` (or reversed) as u32 on `device`, made once per device, length and order:
/// a copy from the host at every step would sit between the step's kernels on a GPU.
pub(crate) fn indices(
    n: usize,
    reversed: bool,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    type Cache = Vec<(candle_core::Device, usize, bool, Tensor)>;
    static CACHE: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, _, t)) = cache
        .iter()
        .find(|(d, m, r, _)| *m == n && *r == reversed && d.same_device(device))
    {
        return Ok(t.clone());
    }
    let v: Vec<u32> = if reversed {
        (0..n as u32).rev().collect()
    } else {
        (0..n as u32).collect()
    };
    let t = Tensor::from_vec(v, n, device)?;
    cache.push((device.clone(), n, reversed, t.clone()));
    Ok(t)
}
