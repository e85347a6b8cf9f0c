//! A softmax over the last axis (with an optional mask) and its backward, one pass over each row,
//! on the CPU; and the vectorizable `exp` they use.
//!
//! Why our own: from candle's ops a masked softmax is six passes over the scores (the masked
//! fill, the maximum, the subtraction, `exp`, the sum, the division), each with a fresh buffer,
//! and candle's `exp` calls libm's scalar `expf` per value: in a transformer block's step, 8% of
//! the time was `expf` alone. Here a row of scores stays in the cache from its maximum to its
//! normalized values, and `exp` runs eight or sixteen values at a time.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The value masked scores take before the softmax (as Keras's attention uses).
const MASKED: f32 = -1e9;

/// `e^x` for float32, written so that a loop of it vectorizes: Cephes's `expf` (the argument
/// reduced by `ln 2` in two parts, a degree-5 polynomial, the power of two from the exponent's
/// bits), without branches. Relative error within 2e-7 of the exact value across the range;
/// 0 below `ln(f32::MIN_POSITIVE)` (flushing the subnormal results, as `exp` of a masked score
/// must be 0), infinity above `ln(f32::MAX)`, NaN for NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const HI: f32 = 88.722_83;
    const LO: f32 = -87.336_55;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let c = x.clamp(LO, HI);
    let t = c * LOG2E + ROUND;
    let n = t - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r2 + r + 1.0;
    // 2^n through the exponent bits; `n` is within [-126, 128], and 2^128 is split in two. `n`
    // as an integer from `t`'s low bits (a float-to-integer conversion would not vectorize: it
    // saturates lane by lane); wrapping, as a NaN's bits are meaningless (and replaced below).
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let half = ni >> 1;
    let a = f32::from_bits((half.wrapping_add(127) as u32) << 23);
    let b = f32::from_bits((ni.wrapping_sub(half).wrapping_add(127) as u32) << 23);
    let y = p * a * b;
    let y = if x < LO { 0.0 } else { y };
    let y = if x > HI { f32::INFINITY } else { y };
    if x.is_nan() { x } else { y }
}

/// `row[i] = exp(row[i] - m)` for every value, returning their sum. Compiled for AVX-512 and
/// AVX2 too, picked at run time.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn exp_shifted(row: &mut [f32], m: f32) -> f32 {
    for v in row.iter_mut() {
        *v = exp(*v - m);
    }
    super::sum_lanes(row)
}

/// The largest value of a row (vectorized; see [`super::lanes_fold`]).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn row_max(row: &[f32]) -> f32 {
    super::max_lanes(row)
}

/// `Σ p·dp` over a row (vectorized).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn row_dot(p: &[f32], dp: &[f32]) -> f32 {
    super::dot_lanes(p, dp)
}

/// One row: `out = softmax(x)` with `x` replaced by [`MASKED`] where `mask` is 0.
fn softmax_row(x: &[f32], mask: Option<&[u8]>, out: &mut [f32]) {
    match mask {
        Some(m) => {
            for ((o, &v), &k) in out.iter_mut().zip(x).zip(m) {
                *o = if k != 0 { v } else { MASKED };
            }
        }
        None => out.copy_from_slice(x),
    }
    let m = row_max(out);
    let s = exp_shifted(out, m);
    let inv = 1.0 / s;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// One row of the backward pass: `ds = p · (dp - Σ dp·p)`, 0 where `mask` is 0.
fn softmax_grad_row(p: &[f32], dp: &[f32], mask: Option<&[u8]>, out: &mut [f32]) {
    let dot = row_dot(p, dp);
    for ((o, &p), &d) in out.iter_mut().zip(p).zip(dp) {
        *o = p * (d - dot);
    }
    if let Some(m) = mask {
        for (o, &k) in out.iter_mut().zip(m) {
            if k == 0 {
                *o = 0.0;
            }
        }
    }
}

/// Runs `f(row index, out row)` over the rows of `n` values of `out`, in parallel when large.
fn rows(out: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if n == 0 {
        return;
    }
    const PAR_VALUES: usize = 1 << 14;
    if out.len() < PAR_VALUES {
        out.chunks_exact_mut(n)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        let per = (PAR_VALUES / n).max(1);
        out.par_chunks_mut(per * n).enumerate().for_each(|(c, os)| {
            for (j, o) in os.chunks_exact_mut(n).enumerate() {
                f(c * per + j, o);
            }
        });
    }
}

fn mask_u8<'a>(s: &'a CpuStorage, l: &Layout, len: usize) -> candle_core::Result<&'a [u8]> {
    let CpuStorage::U8(d) = s else {
        candle_core::bail!("softmax mask: expected u8 values")
    };
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == len => Ok(&d[a..b]),
        Some((a, b)) => candle_core::bail!("softmax mask: {} values for {len} scores", b - a),
        None => candle_core::bail!("softmax mask: the mask must be contiguous"),
    }
}

/// `softmax(x)` over the last axis: `(x)` or `(x, mask)`.
struct Softmax;

/// `(p, dp)` or `(p, dp, mask)` → the scores' gradient.
struct SoftmaxGrad;

impl Softmax {
    fn run(
        &self,
        s: &CpuStorage,
        l: &Layout,
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s, l, "softmax input")?;
        let n = l.dims().last().copied().unwrap_or(1);
        let mask = mask.map(|(s, l)| mask_u8(s, l, x.len())).transpose()?;
        let mut out = vec![0f32; x.len()];
        rows(&mut out, n, |i, o| {
            let r = i * n..(i + 1) * n;
            softmax_row(&x[r.clone()], mask.map(|m| &m[r]), o)
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax_last"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s, l, None)
    }
}

impl CustomOp2 for Softmax {
    fn name(&self) -> &'static str {
        "masked_softmax_last"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(s1, l1, Some((s2, l2)))
    }
}

impl SoftmaxGrad {
    fn run(
        &self,
        p: (&CpuStorage, &Layout),
        dp: (&CpuStorage, &Layout),
        mask: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let ps = super::cpu_f32(p.0, p.1, "softmax output")?;
        let ds = super::cpu_f32(dp.0, dp.1, "softmax output gradient")?;
        if ps.len() != ds.len() {
            candle_core::bail!("softmax: gradient of {} values for {}", ds.len(), ps.len())
        }
        let n = p.1.dims().last().copied().unwrap_or(1);
        let mask = mask.map(|(s, l)| mask_u8(s, l, ps.len())).transpose()?;
        let mut out = vec![0f32; ps.len()];
        rows(&mut out, n, |i, o| {
            let r = i * n..(i + 1) * n;
            softmax_grad_row(&ps[r.clone()], &ds[r.clone()], mask.map(|m| &m[r]), o)
        });
        Ok((CpuStorage::F32(out), p.1.shape().clone()))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax_last_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked_softmax_last_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// Whether these kernels take the float32 `x` and the u8 `mask` of its shape.
fn takes(x: &Tensor, mask: Option<&Tensor>) -> bool {
    super::takes(x)
        && mask
            .is_none_or(|m| m.device().is_cpu() && m.dtype() == DType::U8 && m.dims() == x.dims())
}

/// `softmax(x)` over the last axis, with `x` replaced by `-1e9` where `mask` (u8, `x`'s shape) is
/// 0; not differentiated (an op of a graph node's forward). `None` where the kernels do not take
/// the tensors.
pub(crate) fn masked_softmax(
    x: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !takes(x, mask) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    Ok(Some(match mask {
        Some(m) => x.apply_op2_no_bwd(&m.contiguous()?, &Softmax)?,
        None => x.apply_op1_no_bwd(&Softmax)?,
    }))
}

/// The gradient of [`masked_softmax`]'s input from its output `p` and the output's gradient `dp`:
/// `p (dp - Σ dp p)` over the last axis, 0 where `mask` is 0. `None` where the kernels do not
/// take the tensors.
pub(crate) fn masked_softmax_grad(
    p: &Tensor,
    dp: &Tensor,
    mask: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    if !takes(p, mask) || !super::takes(dp) || dp.dims() != p.dims() {
        return Ok(None);
    }
    let (p, dp) = (p.contiguous()?, dp.contiguous()?);
    Ok(Some(match mask {
        Some(m) => p.apply_op3_no_bwd(&dp, &m.contiguous()?, &SoftmaxGrad)?,
        None => p.apply_op2_no_bwd(&dp, &SoftmaxGrad)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{fixed_randn, max_rel};
    use candle_core::{D, Device};

    #[test]
    fn exp_is_within_float_rounding_of_libm_over_the_whole_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.7 {
            let (ours, exact) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - exact) / exact).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "largest relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // Near the top of the range, where 2^n is built from two halves.
        let top = 88.7f32;
        assert!(((exp(top) as f64 - (top as f64).exp()) / (top as f64).exp()).abs() < 3e-7);
    }

    /// candle's ops for the same arithmetic.
    fn reference(x: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let x = match mask {
            Some(m) => m
                .where_cond(x, &x.ones_like().unwrap().affine(0.0, -1e9).unwrap())
                .unwrap(),
            None => x.clone(),
        };
        let max = x.max_keepdim(D::Minus1).unwrap();
        let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    #[test]
    fn softmax_and_its_gradient_match_candle_ops() {
        let dev = Device::Cpu;
        for dims in [
            vec![3usize, 5],
            vec![2, 4, 64, 64],
            vec![7, 1],
            vec![1, 300],
        ] {
            let x = fixed_randn(3.0, dims.as_slice(), &dev).unwrap();
            let m = fixed_randn(1.0, dims.as_slice(), &dev)
                .unwrap()
                .gt(-0.8)
                .unwrap();
            for mask in [None, Some(&m)] {
                let ours = masked_softmax(&x, mask).unwrap().unwrap();
                let theirs = reference(&x, mask);
                assert!(max_rel(&ours, &theirs) < 1e-6, "{dims:?} values");
                let dp = fixed_randn(1.0, dims.as_slice(), &dev).unwrap();
                let g = masked_softmax_grad(&ours, &dp, mask).unwrap().unwrap();
                let dot = (&dp * &theirs).unwrap().sum_keepdim(D::Minus1).unwrap();
                let mut want = (&theirs * dp.broadcast_sub(&dot).unwrap()).unwrap();
                if let Some(m) = mask {
                    want = m.where_cond(&want, &want.zeros_like().unwrap()).unwrap();
                }
                assert!(max_rel(&g, &want) < 1e-5, "{dims:?} gradient");
            }
        }
        // A row masked throughout is uniform, as candle's ops (and Keras) give it.
        let x = Tensor::new(&[[1f32, 2.0, 3.0]], &dev).unwrap();
        let none = Tensor::zeros((1, 3), DType::U8, &dev).unwrap();
        let p = masked_softmax(&x, Some(&none)).unwrap().unwrap();
        let p = p.to_vec2::<f32>().unwrap();
        assert!(p[0].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6), "{p:?}");
    }

    #[test]
    fn a_mask_of_another_shape_is_left_to_candle_ops() {
        let dev = Device::Cpu;
        let x = fixed_randn(1.0, (2, 3), &dev).unwrap();
        let m = Tensor::ones((2, 4), DType::U8, &dev).unwrap();
        assert!(masked_softmax(&x, Some(&m)).unwrap().is_none());
    }
}
