//! Layer normalization over the trailing values of each row, `(x - mean) / sqrt(var + eps) ·
//! gamma + beta`, with its backward, as one candle custom op on the CPU.
//!
//! Why our own: as a graph node of candle's ops, the forward pass is about nine passes over the
//! activations (mean, centering, square, mean, square root, reciprocal, scaling, gamma, beta) and
//! the backward pass about as many more, each with a fresh buffer; with the reshapes around it,
//! layer normalization was a tenth of a transformer block's step. Here a row stays in the cache
//! from its mean to its output, each way, and the op's arguments are the layer's own tensors
//! (no reshape edges, whose gradients candle adds into fresh zeros).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows per task (and per block of the parameters' partial sums, so that those are the same
/// on every run, whatever the threads did).
const BLOCK_VALUES: usize = 1 << 14;

/// `(x, gamma, beta)` → the normalized `x`, each row of `n` trailing values on its own.
struct LayerNorm {
    n: usize,
    eps: f32,
}

/// `(x, gamma, g)` → `(rows + 2, n)`: the input gradient, then `dgamma` and `dbeta`.
struct LayerNormGrad {
    n: usize,
    eps: f32,
}

/// The mean and `1 / sqrt(var + eps)` of a row (the variance as the mean of squared deviations).
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let inv_n = 1.0 / x.len() as f32;
    let mean = x.iter().sum::<f32>() * inv_n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() * inv_n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer_norm"
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
        let n = self.n;
        let x = super::cpu_f32(s1, l1, "layer normalization input")?;
        let gamma = super::cpu_f32(s2, l2, "layer normalization gamma")?;
        let beta = super::cpu_f32(s3, l3, "layer normalization beta")?;
        if n == 0 || x.len() % n != 0 || gamma.len() != n || beta.len() != n {
            candle_core::bail!(
                "layer normalization: {} values in rows of {n}, gamma of {}, beta of {}",
                x.len(),
                gamma.len(),
                beta.len()
            )
        }
        let mut y = vec![0f32; x.len()];
        let eps = self.eps;
        let one = |(out, row): (&mut [f32], &[f32])| {
            let (mean, r) = row_stats(row, eps);
            for (((o, &v), &g), &b) in out.iter_mut().zip(row).zip(gamma).zip(beta) {
                *o = (v - mean) * r * g + b;
            }
        };
        if x.len() < BLOCK_VALUES {
            y.chunks_mut(n).zip(x.chunks(n)).for_each(one);
        } else {
            y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(one);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = self.n;
        let rows = x.elem_count() / n;
        let grad = LayerNormGrad { n, eps: self.eps };
        let all = x
            .detach()
            .apply_op3_no_bwd(&gamma.detach(), &g.contiguous()?, &grad)?;
        let gx = crate::tape::wanted(x)
            .then(|| all.narrow(0, 0, rows)?.reshape(x.shape()))
            .transpose()?;
        let gg = crate::tape::wanted(gamma)
            .then(|| all.get(rows))
            .transpose()?;
        let gb = crate::tape::wanted(beta)
            .then(|| all.get(rows + 1))
            .transpose()?;
        Ok((
            crate::tape::route(x, gx)?,
            crate::tape::route(gamma, gg)?,
            crate::tape::route(beta, gb)?,
        ))
    }
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer_norm_grad"
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
        let n = self.n;
        let x = super::cpu_f32(s1, l1, "layer normalization input")?;
        let gamma = super::cpu_f32(s2, l2, "layer normalization gamma")?;
        let g = super::cpu_f32(s3, l3, "layer normalization output gradient")?;
        if n == 0 || x.len() % n != 0 || gamma.len() != n || g.len() != x.len() {
            candle_core::bail!(
                "layer normalization gradient: {} values in rows of {n}, gamma of {}, gradient of {}",
                x.len(),
                gamma.len(),
                g.len()
            )
        }
        let rows = x.len() / n;
        let mut out = vec![0f32; x.len() + 2 * n];
        let (gx, params) = out.split_at_mut(x.len());
        let eps = self.eps;
        let per = (BLOCK_VALUES / n).max(1);
        // Each block of rows: its rows' input gradients, and its partial sums of `g · x̂` and `g`.
        let block = |(gx, (x, g)): (&mut [f32], (&[f32], &[f32]))| -> Vec<f32> {
            let mut sums = vec![0f32; 2 * n];
            let (dgamma, dbeta) = sums.split_at_mut(n);
            for ((gx, x), g) in gx.chunks_mut(n).zip(x.chunks(n)).zip(g.chunks(n)) {
                let (mean, r) = row_stats(x, eps);
                let inv_n = 1.0 / n as f32;
                // mean(dx̂) and mean(dx̂ · x̂), with dx̂ = g · gamma.
                let (mut m1, mut m2) = (0f32, 0f32);
                for ((&v, &gv), &gm) in x.iter().zip(g).zip(gamma) {
                    let xhat = (v - mean) * r;
                    let d = gv * gm;
                    m1 += d;
                    m2 += d * xhat;
                }
                m1 *= inv_n;
                m2 *= inv_n;
                for (i, ((o, &v), &gv)) in gx.iter_mut().zip(x).zip(g).enumerate() {
                    let xhat = (v - mean) * r;
                    *o = r * (gv * gamma[i] - m1 - xhat * m2);
                    dgamma[i] += gv * xhat;
                    dbeta[i] += gv;
                }
            }
            sums
        };
        let parts: Vec<Vec<f32>> = if rows <= per {
            vec![block((gx, (x, g)))]
        } else {
            gx.par_chunks_mut(per * n)
                .zip(x.par_chunks(per * n).zip(g.par_chunks(per * n)))
                .map(block)
                .collect()
        };
        for p in &parts {
            for (a, b) in params.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, n))))
    }
}

/// Layer normalization of the trailing `n` values of each row of `x` (float32 on the CPU), with
/// `gamma` and `beta` of `n` values each (any shape), as one op; `None` where the kernels do not
/// take the tensors (the caller uses its own path).
pub(crate) fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    n: usize,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !super::takes(x)
        || !super::takes(gamma)
        || !super::takes(beta)
        || n == 0
        || !x.elem_count().is_multiple_of(n)
        || gamma.elem_count() != n
        || beta.elem_count() != n
    {
        return Ok(None);
    }
    let op = LayerNorm { n, eps: eps as f32 };
    Ok(Some(x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::{fixed_randn, max_rel};
    use crate::tape::Variable;
    use candle_core::Device;

    /// candle's ops for the same arithmetic.
    fn reference(x: &Tensor, g: &Tensor, b: &Tensor, n: usize, eps: f64) -> Tensor {
        let rows = x.elem_count() / n;
        let x2 = x.reshape((rows, n)).unwrap();
        let mean = x2.mean_keepdim(1).unwrap();
        let c = x2.broadcast_sub(&mean).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(1).unwrap();
        let r = (var + eps).unwrap().sqrt().unwrap().recip().unwrap();
        c.broadcast_mul(&r)
            .unwrap()
            .broadcast_mul(&g.reshape((1, n)).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape((1, n)).unwrap())
            .unwrap()
            .reshape(x.shape())
            .unwrap()
    }

    #[test]
    fn layer_norm_matches_candle_ops_and_gradients() {
        let dev = Device::Cpu;
        for (dims, n) in [
            (vec![3usize, 5], 5usize),
            (vec![32, 64, 64], 64),
            (vec![2, 3, 4, 6], 24),
            (vec![600, 40], 40),
        ] {
            let x = Variable::new("x", &fixed_randn(2.0, dims.as_slice(), &dev).unwrap(), true)
                .unwrap();
            let gamma = Variable::new("g", &fixed_randn(1.0, n, &dev).unwrap(), true).unwrap();
            let beta = Variable::new("b", &fixed_randn(1.0, n, &dev).unwrap(), true).unwrap();
            let (xt, gt, bt) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
            let ours = layer_norm(xt, gt, bt, n, 1e-3).unwrap().unwrap();
            let theirs = reference(xt, gt, bt, n, 1e-3);
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_rel(&ours, &theirs) < 1e-5, "{dims:?} values");
            let r = fixed_randn(1.0, dims.as_slice(), &dev).unwrap();
            let vars = [x.clone(), gamma.clone(), beta.clone()];
            let g1 = GradientTape::gradient(&(&ours * &r).unwrap(), &vars).unwrap();
            let g2 = GradientTape::gradient(&(&theirs * &r).unwrap(), &vars).unwrap();
            for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                assert_eq!(a.dims(), b.dims(), "{dims:?} gradient {i}");
                assert!(
                    max_rel(a, b) < 1e-4,
                    "{dims:?} gradient {i}: {}",
                    max_rel(a, b)
                );
            }
        }
    }
}
