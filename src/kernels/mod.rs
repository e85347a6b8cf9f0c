//! Our own CPU kernels, plugged into candle as custom ops (with backward where they take part in
//! gradients). Each is used on the CPU for float32 tensors only; other devices and dtypes keep
//! candle's ops, so results agree everywhere (the tests compare each kernel with candle's op).

pub(crate) mod adam;
pub(crate) mod conv_act;
pub(crate) mod elementwise;
pub(crate) mod linear;
pub(crate) mod pool;
pub(crate) mod softmax_ce;

use candle_core::{CpuStorage, Layout};

/// The float32 values a contiguous CPU storage holds under `l`; an error naming `what` otherwise.
pub(crate) fn cpu_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{what}: only float32 is supported")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// [`cpu_f32`], mutable (for in-place ops).
pub(crate) fn cpu_f32_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{what}: only float32 is supported")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut d[a..b]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// Largest difference relative to the largest magnitude of `b` (the kernels' tests).
#[cfg(test)]
pub(crate) fn max_rel(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-6)
}
