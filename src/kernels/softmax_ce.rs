//! Sparse softmax cross-entropy from logits on the CPU: one op forward, one pass for its gradient.
//!
//! Why our own: from candle ops the loss is about twenty small ops forward (one-hot, log-softmax,
//! product, sums) and as many backward, each allocating, over a `(batch, classes)` matrix of a
//! few thousand values; at the MNIST MLP's step rate their fixed costs were several percent of a
//! step. Same arithmetic as the candle ops it replaces, row by row: `max`, `Σ exp(x - max)`,
//! `loss = log Σ - (x[label] - max)`; the gradient is `g · (softmax - one_hot)`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task: below this many values in all, one thread does everything.
const PAR_VALUES: usize = 1 << 15;

/// Per-row losses of `(rows, classes)` logits against class indices (checked by the caller).
struct SoftmaxCe(Arc<[u32]>);

/// `(logits (rows, classes), g (rows,))` → `g · (softmax - one_hot)`.
struct SoftmaxCeGrad(Arc<[u32]>);

/// `(max, Σ exp(x - max))` of one row.
fn row_stats(x: &[f32]) -> (f32, f32) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = x.iter().map(|&v| (v - m).exp()).sum::<f32>();
    (m, s)
}

/// Runs `f(row, out)` over rows of `k` logits and outputs of `w` values, in parallel when large.
fn each_row(
    x: &[f32],
    k: usize,
    out: &mut [f32],
    w: usize,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) {
    if k == 0 || w == 0 {
        return;
    }
    if x.len() < PAR_VALUES {
        for (i, (r, o)) in x.chunks_exact(k).zip(out.chunks_exact_mut(w)).enumerate() {
            f(i, r, o);
        }
    } else {
        let per = (PAR_VALUES / k).max(1);
        x.par_chunks(per * k)
            .zip(out.par_chunks_mut(per * w))
            .enumerate()
            .for_each(|(c, (xs, os))| {
                for (j, (r, o)) in xs.chunks_exact(k).zip(os.chunks_exact_mut(w)).enumerate() {
                    f(c * per + j, r, o);
                }
            });
    }
}

/// `(rows, classes)` of the logits, checking one label per row, each a class index.
fn rows_of(l: &Layout, labels: &[u32], what: &str) -> candle_core::Result<(usize, usize)> {
    let dims = l.dims();
    let k = dims.last().copied().unwrap_or(0);
    let rows = dims[..dims.len().saturating_sub(1)]
        .iter()
        .product::<usize>();
    if dims.is_empty() || rows != labels.len() {
        candle_core::bail!(
            "{what}: {} labels for logits of shape {dims:?}",
            labels.len()
        )
    }
    if let Some(bad) = labels.iter().find(|&&c| c as usize >= k) {
        candle_core::bail!("{what}: label {bad} for {k} classes")
    }
    Ok((rows, k))
}

impl CustomOp1 for SoftmaxCe {
    fn name(&self) -> &'static str {
        "sparse_softmax_cross_entropy"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s, l, "softmax cross-entropy logits")?;
        let (rows, k) = rows_of(l, &self.0, "softmax cross-entropy")?;
        let mut loss = vec![0f32; rows];
        let labels = &self.0;
        each_row(x, k, &mut loss, 1, |i, r, o| {
            let (m, s) = row_stats(r);
            let shifted = r[labels[i] as usize] - m;
            // -(log_softmax[label]) = -((x - m) - log s)
            o[0] = -(shifted - s.ln());
        });
        let dims = l.dims();
        Ok((CpuStorage::F32(loss), Shape::from(&dims[..dims.len() - 1])))
    }
    fn bwd(&self, x: &Tensor, _loss: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let gx = x.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxCeGrad(self.0.clone()))?;
        crate::tape::route(x, Some(gx))
    }
}

impl CustomOp2 for SoftmaxCeGrad {
    fn name(&self) -> &'static str {
        "sparse_softmax_cross_entropy_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_f32(s1, l1, "softmax cross-entropy logits")?;
        let g = super::cpu_f32(s2, l2, "softmax cross-entropy gradient")?;
        let (rows, k) = rows_of(l1, &self.0, "softmax cross-entropy gradient")?;
        if g.len() != rows {
            candle_core::bail!(
                "softmax cross-entropy: {} gradients for {rows} rows",
                g.len()
            )
        }
        let mut gx = vec![0f32; rows * k];
        let labels = &self.0;
        each_row(x, k, &mut gx, k, |i, r, o| {
            let (m, s) = row_stats(r);
            for (o, &v) in o.iter_mut().zip(r) {
                *o = g[i] * ((v - m).exp() / s);
            }
            o[labels[i] as usize] -= g[i];
        });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// Per-sample `-log softmax(logits)[label]` over the last axis, or `None` when these kernels do
/// not take `logits` (not float32 on the CPU). `labels` are checked class indices, one per row.
pub(crate) fn sparse_softmax_ce(
    logits: &Tensor,
    labels: Vec<u32>,
) -> candle_core::Result<Option<Tensor>> {
    if !super::takes(logits) || logits.rank() == 0 {
        return Ok(None);
    }
    Ok(Some(
        logits
            .contiguous()?
            .apply_op1(SoftmaxCe(Arc::from(labels)))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::max_rel;
    use crate::{GradientTape, Variable};
    use candle_core::{D, Device};

    /// The same loss from candle ops: one-hot labels times log-softmax, summed and negated.
    fn reference(logits: &Tensor, labels: &[u32]) -> Tensor {
        let k = logits.dims()[logits.rank() - 1];
        let oh: Vec<f32> = labels
            .iter()
            .flat_map(|&l| (0..k).map(move |j| if j == l as usize { 1.0 } else { 0.0 }))
            .collect();
        let oh = Tensor::from_vec(oh, logits.shape(), logits.device()).unwrap();
        let log_p = crate::ops::log_softmax_last(logits).unwrap();
        (oh * log_p).unwrap().sum(D::Minus1).unwrap().neg().unwrap()
    }

    #[test]
    fn fused_loss_matches_candle_values_and_gradients() {
        let dev = Device::Cpu;
        // one row, odd sizes, a (batch, time, classes) shape, and one past the parallel limit
        for shape in [
            vec![1, 1],
            vec![1, 3],
            vec![7, 10],
            vec![3, 5, 4],
            vec![4000, 10],
        ] {
            let rows: usize = shape[..shape.len() - 1].iter().product();
            let k = shape[shape.len() - 1];
            let labels: Vec<u32> = (0..rows).map(|i| ((i * 7 + 3) % k) as u32).collect();
            // Fixed pseudo-random logits (the same at every run).
            let n: usize = shape.iter().product();
            let logits: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.731 + 0.2).sin() * 6.0)
                .collect();
            let x = Variable::new(
                "x",
                &Tensor::from_vec(logits, shape.as_slice(), &dev).unwrap(),
                true,
            )
            .unwrap();
            let ours = sparse_softmax_ce(x.as_tensor(), labels.clone())
                .unwrap()
                .unwrap();
            let theirs = reference(x.as_tensor(), &labels);
            assert_eq!(ours.dims(), theirs.dims(), "{shape:?}");
            assert!(max_rel(&ours, &theirs) < 1e-5, "{shape:?} values");
            let ups: Vec<f32> = (0..ours.elem_count())
                .map(|i| (i as f32 * 1.37 + 0.5).cos())
                .collect();
            let up = Tensor::from_vec(ups, ours.shape(), &dev).unwrap();
            let g1 =
                GradientTape::gradient(&(&ours * &up).unwrap(), std::slice::from_ref(&x)).unwrap();
            let g2 = GradientTape::gradient(&(&theirs * &up).unwrap(), std::slice::from_ref(&x))
                .unwrap();
            assert!(max_rel(&g1[0], &g2[0]) < 1e-5, "{shape:?} gradients");
        }
    }

    #[test]
    fn labels_must_be_class_indices_of_each_row() {
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = sparse_softmax_ce(&x, vec![0, 3]).unwrap_err().to_string();
        assert!(e.contains("label 3 for 3 classes"), "{e}");
        let e = sparse_softmax_ce(&x, vec![0]).unwrap_err().to_string();
        assert!(e.contains("1 labels for logits of shape [2, 3]"), "{e}");
    }
}
