//! Fused `activation(x + bias)` with its backward, as candle custom ops on the CPU.
//!
//! Why our own: candle builds an activation from several elementwise ops (LeakyReLU alone is five
//! forward and more backward), each a full pass over memory with a fresh buffer, and a broadcast
//! bias add whose gradient is a strided reduction. Here the forward is one pass, the input gradient
//! one pass (computed from the output, so nothing else is kept), and the bias gradient a column sum
//! split over both cores. Other devices and dtypes use candle's ops.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Elements handled by one task of the thread pool.
const CHUNK: usize = 1 << 15;

/// The activations fused here (those whose derivative follows from the output alone).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Act {
    Linear,
    Relu,
    /// Slope must be >= 0 (the derivative is read from the output's sign).
    Leaky(f32),
    Sigmoid,
    Tanh,
}

/// Rows of `f` values per task, so that tasks hold about [`CHUNK`] elements.
fn rows_per_task(f: usize) -> usize {
    (CHUNK / f.max(1)).max(1)
}

/// Calls `body` with the activation as a concrete closure, so that each loop is compiled (and
/// vectorized) for one activation rather than branching on it per element.
macro_rules! with_act {
    ($act:expr, |$f:ident| $body:expr) => {
        match $act {
            Act::Linear => {
                let $f = |x: f32| x;
                $body
            }
            Act::Relu => {
                let $f = |x: f32| x.max(0.0);
                $body
            }
            Act::Leaky(s) => {
                let $f = move |x: f32| if x > 0.0 { x } else { x * s };
                $body
            }
            Act::Sigmoid => {
                let $f = |x: f32| 1.0 / (1.0 + (-x).exp());
                $body
            }
            Act::Tanh => {
                let $f = |x: f32| x.tanh();
                $body
            }
        }
    };
}

/// As [`with_act`], with the derivative as a function of the output.
macro_rules! with_act_grad {
    ($act:expr, |$df:ident| $body:expr) => {
        match $act {
            Act::Linear => {
                let $df = |_: f32| 1.0f32;
                $body
            }
            Act::Relu => {
                let $df = |y: f32| if y > 0.0 { 1.0f32 } else { 0.0 };
                $body
            }
            Act::Leaky(s) => {
                let $df = move |y: f32| if y > 0.0 { 1.0f32 } else { s };
                $body
            }
            Act::Sigmoid => {
                let $df = |y: f32| y * (1.0 - y);
                $body
            }
            Act::Tanh => {
                let $df = |y: f32| 1.0 - y * y;
                $body
            }
        }
    };
}

/// A vector of `n` floats whose chunks of `chunk` are written in parallel by `fill(i, chunk_i)`,
/// without zeroing them first (zeroing a large output costs as much as computing it).
/// `fill` must write every element of the chunk it is given.
fn par_build(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    if n <= chunk {
        // One task: on this thread (handing it to the pool costs a wake-up and a sleep).
        fill(0, &mut v.spare_capacity_mut()[..n]);
    } else {
        v.spare_capacity_mut()[..n]
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, c)| fill(i, c));
    }
    // SAFETY: the first `n` slots were all initialized: the chunks cover them and each `fill`
    // call writes its whole chunk (every caller zips the chunk with an input of the same length).
    unsafe { v.set_len(n) };
    v
}

fn forward(x: &[f32], bias: Option<&[f32]>, act: Act) -> Vec<f32> {
    match bias {
        None => with_act!(act, |f| par_build(x.len(), CHUNK, |i, y| {
            let x = &x[i * CHUNK..i * CHUNK + y.len()];
            for (y, &x) in y.iter_mut().zip(x) {
                y.write(f(x));
            }
        })),
        Some(b) => {
            let step = rows_per_task(b.len()) * b.len();
            with_act!(act, |f| par_build(x.len(), step, |i, y| {
                let x = &x[i * step..i * step + y.len()];
                for (y, x) in y.chunks_exact_mut(b.len()).zip(x.chunks_exact(b.len())) {
                    for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                        y.write(f(x + b));
                    }
                }
            }))
        }
    }
}

/// The CUDA kernels' code for an activation: (kind, slope).
#[cfg(feature = "cuda")]
fn cuda_kind(act: Act) -> (i32, f32) {
    match act {
        Act::Linear => (0, 0.0),
        Act::Relu => (1, 0.0),
        Act::Leaky(s) => (2, s),
        Act::Sigmoid => (3, 0.0),
        Act::Tanh => (4, 0.0),
    }
}

/// `activation(x)` (CustomOp1) or `activation(x + bias)` over the last axis (CustomOp2).
struct Fused(Act);

/// `gy * activation'(y)`: inputs `(y, gy)`.
struct FusedGrad(Act);

/// Sum over the rows of a `(rows, f)` matrix: the bias gradient.
struct ColSum(usize);

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        "fused_activation"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s, l, "activation input")?;
        Ok((CpuStorage::F32(forward(x, None, self.0)), l.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (kind, slope) = cuda_kind(self.0);
        let y = super::cuda::activation(s, l, None, kind, slope)?;
        Ok((y, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.0 == Act::Linear {
            return Ok(Some(gy.clone()));
        }
        Ok(Some(
            y.apply_op2_no_bwd(&gy.contiguous()?, &FusedGrad(self.0))?,
        ))
    }
}

impl CustomOp2 for Fused {
    fn name(&self) -> &'static str {
        "fused_bias_activation"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s1, l1, "activation input")?;
        let b = super::cpu_f32(s2, l2, "bias")?;
        if b.is_empty() || x.len() % b.len() != 0 {
            candle_core::bail!(
                "bias of {} values does not divide an input of {} values",
                b.len(),
                x.len()
            )
        }
        Ok((
            CpuStorage::F32(forward(x, Some(b), self.0)),
            l1.shape().clone(),
        ))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (kind, slope) = cuda_kind(self.0);
        let y = super::cuda::activation(s1, l1, Some((s2, l2)), kind, slope)?;
        Ok((y, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = if self.0 == Act::Linear {
            gy.contiguous()?
        } else {
            y.apply_op2_no_bwd(&gy.contiguous()?, &FusedGrad(self.0))?
        };
        let gb = if !crate::tape::wanted(b) {
            None
        } else if gx.device().is_cpu() {
            Some(gx.apply_op1_no_bwd(&ColSum(b.elem_count()))?)
        } else {
            let f = b.elem_count();
            Some(gx.reshape((gx.elem_count() / f.max(1), f))?.sum(0)?)
        };
        Ok((
            crate::tape::route(x, Some(gx))?,
            crate::tape::route(b, gb.map(|g| g.reshape(b.shape())).transpose()?)?,
        ))
    }
}

impl CustomOp2 for FusedGrad {
    fn name(&self) -> &'static str {
        "fused_activation_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = super::cpu_f32(s1, l1, "activation output")?;
        let gy = super::cpu_f32(s2, l2, "activation output gradient")?;
        if y.len() != gy.len() {
            candle_core::bail!("gradient of {} values for {} outputs", gy.len(), y.len())
        }
        let gx = with_act_grad!(self.0, |df| par_build(y.len(), CHUNK, |i, gx| {
            let r = i * CHUNK..i * CHUNK + gx.len();
            grad_times(gx, &y[r.clone()], &gy[r], df);
        }));
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (kind, slope) = cuda_kind(self.0);
        let gx = super::cuda::activation_grad(s1, l1, s2, l2, kind, slope)?;
        Ok((gx, l1.shape().clone()))
    }
}

/// `gx = gy · df(y)`, element by element (all three of one length). Compiled for AVX-512 and
/// AVX2 too, picked at run time: as a zip of three iterators it stayed scalar (about 9% of the
/// GAN's step, over the generator's 25 MB activations).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn grad_times<F: Fn(f32) -> f32>(gx: &mut [MaybeUninit<f32>], y: &[f32], gy: &[f32], df: F) {
    let n = gx.len().min(y.len()).min(gy.len());
    let (gx, y, gy) = (&mut gx[..n], &y[..n], &gy[..n]);
    for j in 0..n {
        gx[j] = MaybeUninit::new(gy[j] * df(y[j]));
    }
}

impl CustomOp1 for ColSum {
    fn name(&self) -> &'static str {
        "column_sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s, l, "column sum input")?;
        let f = self.0;
        if f == 0 || x.len() % f != 0 {
            candle_core::bail!("{} values are not rows of {f}", x.len())
        }
        Ok((CpuStorage::F32(column_sum(x, f)), Shape::from(f)))
    }
}

/// Sums the rows of the row-major `(x.len() / f, f)` matrix `x`. Partial sums over fixed blocks
/// of rows, added in order: the same bits on every run (exact resume depends on it), whatever
/// the threads did.
pub(crate) fn column_sum(x: &[f32], f: usize) -> Vec<f32> {
    let step = rows_per_task(f) * f;
    let block = |part: &[f32]| {
        let mut acc = vec![0f32; f];
        for row in part.chunks_exact(f) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        acc
    };
    let partials: Vec<Vec<f32>> = if x.len() <= step {
        vec![block(x)]
    } else {
        x.par_chunks(step).map(block).collect()
    };
    let mut total = vec![0f32; f];
    for p in &partials {
        for (a, b) in total.iter_mut().zip(p) {
            *a += b;
        }
    }
    total
}

/// `y = act(y + b)` in place, `b` over the last axis of the row-major `y`, on the calling thread
/// (an op's epilogue, already running on the thread pool).
pub(crate) fn bias_activation_seq(y: &mut [f32], b: &[f32], act: Act) {
    with_act!(act, |f| {
        for y in y.chunks_exact_mut(b.len()) {
            for (y, &b) in y.iter_mut().zip(b) {
                *y = f(*y + b);
            }
        }
    })
}

/// `y = act(y + b)` in place (`b` over the last axis of the row-major `y`, or no bias), split
/// over rayon's threads when `y` is large.
pub(crate) fn bias_activation_par(y: &mut [f32], b: Option<&[f32]>, act: Act) {
    let f = b.map_or(CHUNK, <[f32]>::len).max(1);
    let step = rows_per_task(f) * f;
    let run = |y: &mut [f32]| match b {
        Some(b) => bias_activation_seq(y, b, act),
        None => activation_seq(y, act),
    };
    if y.len() <= step {
        run(y);
    } else {
        y.par_chunks_mut(step).for_each(run);
    }
}

/// `y = act(y)` in place, on the calling thread (an op's epilogue).
pub(crate) fn activation_seq(y: &mut [f32], act: Act) {
    with_act!(act, |f| {
        for y in y.iter_mut() {
            *y = f(*y);
        }
    })
}

/// `gy * act'(y)` from the activation's output `y` (`gy` itself for the identity).
pub(crate) fn activation_grad(y: &Tensor, gy: &Tensor, act: Act) -> candle_core::Result<Tensor> {
    if act == Act::Linear {
        return gy.contiguous();
    }
    y.apply_op2_no_bwd(&gy.contiguous()?, &FusedGrad(act))
}

/// Sum over every axis but the last (`f` values): a bias's gradient.
pub(crate) fn bias_grad(g: &Tensor, f: usize) -> candle_core::Result<Tensor> {
    g.contiguous()?.apply_op1_no_bwd(&ColSum(f))
}

/// Whether the fused activation kernels take `x`: float32 on the CPU, or on CUDA with our CUDA
/// kernels switched on (`FERROKERAS_CUDA_KERNELS=on`).
pub(crate) fn fusable(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    if super::cuda::takes(x) {
        return true;
    }
    super::takes(x)
}

/// `act(x)`, or `None` when `x` is not for these kernels (caller uses candle's ops).
pub(crate) fn activation(x: &Tensor, act: Act) -> candle_core::Result<Option<Tensor>> {
    if !fusable(x) || matches!(act, Act::Leaky(s) if s < 0.0) {
        return Ok(None);
    }
    if act == Act::Linear {
        return Ok(Some(x.clone()));
    }
    Ok(Some(x.contiguous()?.apply_op1(Fused(act))?))
}

/// `act(x + bias)` with `bias` over the last axis of `x`, or `None` when not for these kernels.
pub(crate) fn bias_activation(
    x: &Tensor,
    bias: &Tensor,
    act: Act,
) -> candle_core::Result<Option<Tensor>> {
    let last = x.dims().last().copied().unwrap_or(0);
    if !fusable(x)
        || !fusable(bias)
        || bias.elem_count() != last
        || last == 0
        || matches!(act, Act::Leaky(s) if s < 0.0)
    {
        return Ok(None);
    }
    Ok(Some(
        x.contiguous()?.apply_op2(&bias.contiguous()?, Fused(act))?,
    ))
}

/// `x · mask`, elementwise (a dropout's kept values, scaled): inputs `(x, mask)` of one shape.
/// Its backward pass is the same product with the output gradient and hands nothing to the mask.
/// candle's own `mul` backward also multiplies the gradient by `x` for the mask, which no one
/// reads, and adds both into fresh zero tensors (about 2% of the MNIST convnet's step).
struct MaskMul;

impl CustomOp2 for MaskMul {
    fn name(&self) -> &'static str {
        "mask_mul"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s1, l1, "masked input")?;
        let m = super::cpu_f32(s2, l2, "mask")?;
        if x.len() != m.len() {
            candle_core::bail!("mask of {} values for {} inputs", m.len(), x.len())
        }
        let y = par_build(x.len(), CHUNK, |i, y| {
            let (x, m) = (&x[i * CHUNK..], &m[i * CHUNK..]);
            for ((y, &x), &m) in y.iter_mut().zip(x).zip(m) {
                y.write(x * m);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        mask: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = gy.contiguous()?.apply_op2_no_bwd(mask, &MaskMul)?;
        Ok((crate::tape::route(x, Some(gx))?, None))
    }
}

/// `x · mask` with a gradient for `x` only (the mask is a constant, as a dropout's is), or `None`
/// when `x` is not for these kernels (caller uses candle's `mul`).
pub(crate) fn mask_mul(x: &Tensor, mask: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !super::takes(x) || !super::takes(mask) || x.dims() != mask.dims() {
        return Ok(None);
    }
    Ok(Some(
        x.contiguous()?.apply_op2(&mask.contiguous()?, MaskMul)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::max_rel;
    use crate::tape::Variable;
    use candle_core::Device;

    #[test]
    fn mask_mul_matches_candle_values_and_gradient() {
        let dev = Device::Cpu;
        // One chunk, and several with a short last one.
        for n in [7, 3 * CHUNK + 5] {
            let x = Variable::new(
                "x",
                &crate::kernels::fixed_randn(1.0, n, &dev).unwrap(),
                true,
            )
            .unwrap();
            let mask = crate::random::dropout_mask(&[n], 0.6, &dev).unwrap();
            let ours = mask_mul(x.as_tensor(), &mask).unwrap().unwrap();
            let theirs = x.as_tensor().mul(&mask).unwrap();
            assert_eq!(
                ours.to_vec1::<f32>().unwrap(),
                theirs.to_vec1::<f32>().unwrap()
            );
            let up = crate::kernels::fixed_randn(1.0, n, &dev).unwrap();
            let grad = |y: &Tensor| {
                let loss = (y * &up).unwrap().sum_all().unwrap();
                GradientTape::gradient(&loss, std::slice::from_ref(&x))
                    .unwrap()
                    .remove(0)
            };
            assert_eq!(
                grad(&ours).to_vec1::<f32>().unwrap(),
                grad(&theirs).to_vec1::<f32>().unwrap()
            );
        }
        // Shapes that differ are left to candle (which reports them).
        let x = Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
        let m = Tensor::zeros(5, candle_core::DType::F32, &dev).unwrap();
        assert!(mask_mul(&x, &m).unwrap().is_none());
    }

    fn reference(x: &Tensor, b: Option<&Tensor>, act: Act) -> Tensor {
        let x = match b {
            Some(b) => x.broadcast_add(b).unwrap(),
            None => x.clone(),
        };
        match act {
            Act::Linear => x,
            Act::Relu => x.relu().unwrap(),
            Act::Leaky(s) => {
                (x.relu().unwrap() - (x.neg().unwrap().relu().unwrap() * s as f64)).unwrap()
            }
            Act::Sigmoid => (x.neg().unwrap().exp().unwrap() + 1.0)
                .unwrap()
                .recip()
                .unwrap(),
            Act::Tanh => x.tanh().unwrap(),
        }
    }

    /// Within 1e-5 of the largest gradient, plus 1e-6: the derivative read from the output (as
    /// Keras does: `y (1 - y)` for the sigmoid) loses the last bits of `1 - y` where the sigmoid
    /// saturates, which a lone value (the 1x1 case) would otherwise show as a relative error of
    /// about 1e-4 of a gradient near 1e-3.
    fn grad_close(a: &Tensor, b: &Tensor) -> bool {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let s = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() <= 1e-5 * s.to_scalar::<f32>().unwrap() + 1e-6
    }

    #[test]
    fn fused_matches_candle_values_and_gradients() {
        let dev = Device::Cpu;
        for act in [
            Act::Linear,
            Act::Relu,
            Act::Leaky(0.2),
            Act::Leaky(0.0),
            Act::Sigmoid,
            Act::Tanh,
        ] {
            // odd sizes and one larger than a task, so chunk edges are crossed
            for (rows, f) in [(1, 1), (7, 3), (129, 33), (3000, 17)] {
                let x = Variable::new(
                    "x",
                    &crate::kernels::fixed_randn(2.0, (rows, f), &dev).unwrap(),
                    true,
                )
                .unwrap();
                let b = Variable::new(
                    "b",
                    &crate::kernels::fixed_randn(1.0, f, &dev).unwrap(),
                    true,
                )
                .unwrap();
                let up = crate::kernels::fixed_randn(1.0, (rows, f), &dev).unwrap();
                let vars = [x.clone(), b.clone()];
                let ours = bias_activation(x.as_tensor(), b.as_tensor(), act)
                    .unwrap()
                    .unwrap();
                let theirs = reference(x.as_tensor(), Some(b.as_tensor()), act);
                assert!(max_rel(&ours, &theirs) < 1e-5, "{act:?} {rows}x{f} forward");
                let g1 = GradientTape::gradient(&(&ours * &up).unwrap().sum_all().unwrap(), &vars)
                    .unwrap();
                let g2 =
                    GradientTape::gradient(&(&theirs * &up).unwrap().sum_all().unwrap(), &vars)
                        .unwrap();
                assert!(grad_close(&g1[0], &g2[0]), "{act:?} {rows}x{f} input grad");
                assert!(grad_close(&g1[1], &g2[1]), "{act:?} {rows}x{f} bias grad");
                let ours = activation(x.as_tensor(), act).unwrap().unwrap();
                let theirs = reference(x.as_tensor(), None, act);
                assert!(max_rel(&ours, &theirs) < 1e-5, "{act:?} {rows}x{f} no bias");
                let g1 =
                    GradientTape::gradient(&(&ours * &up).unwrap().sum_all().unwrap(), &vars[..1])
                        .unwrap();
                let g2 = GradientTape::gradient(
                    &(&theirs * &up).unwrap().sum_all().unwrap(),
                    &vars[..1],
                )
                .unwrap();
                assert!(
                    grad_close(&g1[0], &g2[0]),
                    "{act:?} {rows}x{f} no-bias grad"
                );
            }
        }
    }

    #[test]
    fn non_contiguous_inputs_and_other_dtypes() {
        let dev = Device::Cpu;
        let x = crate::kernels::fixed_randn(1.0, (5, 4), &dev)
            .unwrap()
            .t()
            .unwrap();
        let b = crate::kernels::fixed_randn(1.0, 5, &dev).unwrap();
        let ours = bias_activation(&x, &b, Act::Relu).unwrap().unwrap();
        assert!(max_rel(&ours, &reference(&x, Some(&b), Act::Relu)) < 1e-6);
        let xd = x.to_dtype(candle_core::DType::F64).unwrap();
        assert!(activation(&xd, Act::Relu).unwrap().is_none());
        assert!(activation(&x, Act::Leaky(-0.5)).unwrap().is_none());
        assert!(
            bias_activation(&x, &b.narrow(0, 0, 3).unwrap(), Act::Relu)
                .unwrap()
                .is_none()
        );
    }
}
