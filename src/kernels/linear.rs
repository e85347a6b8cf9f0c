//! `x · kernel` for `Dense` on the CPU, as a candle custom op whose backward skips the input
//! gradient when nothing upstream needs it.
//!
//! Why our own: candle's matmul backward always computes both gradients; for a network's first
//! layer the input gradient is thrown away (in the MNIST MLP, over a quarter of a step's FLOPs).

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::layers::im2col::matmul_new;

/// `(rows, k) · (k, n)`, both row-major.
struct Linear;

/// `x (rows, k)`, `gy (rows, n)` → `xᵀ · gy (k, n)`.
pub(super) struct KernelGrad;

/// `gy (rows, n)`, `w (k, n)` → `gy · wᵀ (rows, k)`.
pub(super) struct InputGrad;

fn matrix<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (r, c) = l.shape().dims2()?;
    Ok((super::cpu_f32(s, l, what)?, r, c))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, rows, k) = matrix(s1, l1, "dense input")?;
        let (w, k2, n) = matrix(s2, l2, "dense kernel")?;
        if k != k2 {
            candle_core::bail!("dense: input of {k} features for a kernel of {k2} rows")
        }
        let y = matmul_new(rows, n, k, x, false, w, false);
        Ok((CpuStorage::F32(y), Shape::from((rows, n))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let gx = if crate::tape::wanted(x) {
            Some(gy.apply_op2_no_bwd(w, &InputGrad)?)
        } else {
            None
        };
        let gw = if crate::tape::wanted(w) {
            Some(x.apply_op2_no_bwd(&gy, &KernelGrad)?)
        } else {
            None
        };
        Ok((crate::tape::route(x, gx)?, crate::tape::route(w, gw)?))
    }
}

impl CustomOp2 for KernelGrad {
    fn name(&self) -> &'static str {
        "linear_kernel_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, rows, k) = matrix(s1, l1, "dense input")?;
        let (gy, rows2, n) = matrix(s2, l2, "dense output gradient")?;
        if rows != rows2 {
            candle_core::bail!("dense: {rows} input rows for {rows2} gradient rows")
        }
        let gw = matmul_new(k, n, rows, x, true, gy, false);
        Ok((CpuStorage::F32(gw), Shape::from((k, n))))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "linear_input_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (gy, rows, n) = matrix(s1, l1, "dense output gradient")?;
        let (w, k, n2) = matrix(s2, l2, "dense kernel")?;
        if n != n2 {
            candle_core::bail!("dense: gradient of {n} units for a kernel of {n2} columns")
        }
        let gx = matmul_new(rows, k, n, gy, false, w, true);
        Ok((CpuStorage::F32(gx), Shape::from((rows, k))))
    }
}

/// `x (rows, k) · w (k, n)`: our op for float32 on the CPU, candle's matmul elsewhere.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if super::takes(x) && super::takes(w) && x.rank() == 2 && w.rank() == 2 {
        x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
    } else {
        x.matmul(w)
    }
}

/// `op(a) · op(b)` over the leading (batch) axes of two contiguous float32 CPU tensors of
/// `(..., rows, cols)`, `op` transposing the last two axes where asked (`a_t`, `b_t`: a
/// transposed operand is read in place, not copied); `None` where our kernels do not take the
/// tensors (candle's `matmul` then, on `.t()` views). Not differentiated: for a graph node's
/// own arithmetic.
pub(crate) fn batched(
    a: &Tensor,
    a_t: bool,
    b: &Tensor,
    b_t: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !super::takes(a) || !super::takes(b) || a.rank() < 2 || a.rank() != b.rank() {
        return Ok(None);
    }
    let (ad, bd) = (a.dims(), b.dims());
    let r = ad.len();
    if ad[..r - 2] != bd[..r - 2] {
        return Ok(None);
    }
    let batch: usize = ad[..r - 2].iter().product();
    let (m, k) = if a_t {
        (ad[r - 1], ad[r - 2])
    } else {
        (ad[r - 2], ad[r - 1])
    };
    let (k2, n) = if b_t {
        (bd[r - 1], bd[r - 2])
    } else {
        (bd[r - 2], bd[r - 1])
    };
    if k != k2 {
        candle_core::bail!(
            "batched product: {ad:?} (transposed: {a_t}) by {bd:?} (transposed: {b_t})"
        )
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (candle_core::Storage::Cpu(sa), candle_core::Storage::Cpu(sb)) = (&*sa, &*sb) else {
        return Ok(None);
    };
    let (x, y) = (
        super::cpu_f32(sa, la, "batched product operand")?,
        super::cpu_f32(sb, lb, "batched product operand")?,
    );
    let out = crate::layers::im2col::batched_matmul_new(batch, m, n, k, x, a_t, y, b_t);
    let mut dims = ad[..r - 2].to_vec();
    dims.extend([m, n]);
    Ok(Some(Tensor::from_vec(out, dims, a.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::max_rel;
    use crate::tape::Variable;
    use candle_core::Device;

    #[test]
    fn linear_matches_candle_matmul_and_gradients() {
        let dev = Device::Cpu;
        for (rows, k, n) in [(1, 1, 1), (3, 5, 2), (128, 784, 256), (33, 17, 65)] {
            let x = Variable::new(
                "x",
                &crate::kernels::fixed_randn(1.0, (rows, k), &dev).unwrap(),
                true,
            )
            .unwrap();
            let w = Variable::new(
                "w",
                &crate::kernels::fixed_randn(1.0, (k, n), &dev).unwrap(),
                true,
            )
            .unwrap();
            let up = crate::kernels::fixed_randn(1.0, (rows, n), &dev).unwrap();
            let ours = linear(x.as_tensor(), w.as_tensor()).unwrap();
            let theirs = x.as_tensor().matmul(w.as_tensor()).unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-5, "{rows}x{k}x{n}");
            let vars = [x.clone(), w.clone()];
            let g1 =
                GradientTape::gradient(&(&ours * &up).unwrap().sum_all().unwrap(), &vars).unwrap();
            let g2 = GradientTape::gradient(&(&theirs * &up).unwrap().sum_all().unwrap(), &vars)
                .unwrap();
            assert!(max_rel(&g1[0], &g2[0]) < 1e-5, "input grad {rows}x{k}x{n}");
            assert!(max_rel(&g1[1], &g2[1]) < 1e-5, "kernel grad {rows}x{k}x{n}");
            // A plain input: only the kernel's gradient is computed, and it is the same.
            let plain = x.as_tensor().detach();
            let y = linear(&plain, w.as_tensor()).unwrap();
            let g3 = GradientTape::gradient(&(&y * &up).unwrap().sum_all().unwrap(), &vars[1..])
                .unwrap();
            assert!(max_rel(&g3[0], &g2[1]) < 1e-5, "kernel grad, plain input");
        }
    }

    #[test]
    fn batched_products_match_candle_matmul_with_and_without_transposes() {
        let dev = Device::Cpu;
        for (lead, m, k, n) in [
            (vec![2usize], 3usize, 4usize, 5usize),
            (vec![4, 3], 64, 16, 64),
            (vec![1], 1, 1, 1),
            (vec![3, 2], 7, 33, 9),
        ] {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let shape = |r: usize, c: usize| [lead.clone(), vec![r, c]].concat();
                let a = crate::kernels::fixed_randn(
                    1.0,
                    shape(if a_t { k } else { m }, if a_t { m } else { k }).as_slice(),
                    &dev,
                )
                .unwrap();
                let b = crate::kernels::fixed_randn(
                    1.0,
                    shape(if b_t { n } else { k }, if b_t { k } else { n }).as_slice(),
                    &dev,
                )
                .unwrap();
                let ours = batched(&a, a_t, &b, b_t).unwrap().unwrap();
                let (ta, tb) = (
                    if a_t { a.t().unwrap() } else { a.clone() },
                    if b_t { b.t().unwrap() } else { b.clone() },
                );
                let theirs = ta.matmul(&tb).unwrap();
                assert_eq!(ours.dims(), theirs.dims());
                assert!(
                    max_rel(&ours, &theirs) < 1e-5,
                    "{lead:?} {m}x{k}x{n} {a_t} {b_t}"
                );
            }
        }
        let a = crate::kernels::fixed_randn(1.0, (2, 3, 4), &dev).unwrap();
        let e = batched(&a, false, &a, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("[2, 3, 4]"), "{e}");
    }
}
