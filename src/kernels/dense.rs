//! A whole `Dense` layer, `act(x · kernel + bias)`, as one candle custom op on the CPU, for
//! inputs of any rank, and for attention's projections with their head layouts.
//!
//! Why our own: as separate ops (a flattening reshape, the product, the bias and activation, the
//! reshape back, and for attention a transpose to `(batch, heads, positions, size)` and its
//! contiguous copy), every op is an edge of candle's graph, and candle's backward pass adds the
//! gradient of each edge into a fresh zero tensor of its argument's size: a zero fill and an
//! addition over the activations per edge, views included. A transformer block's step had
//! about thirty of them (17% of its time in perf, in zero fills and additions). As one op, the
//! layer has one edge per argument, and its variables' gradients go straight to the tape.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::elementwise::{Act, activation_grad, bias_activation_par, bias_grad};
use super::linear::{InputGrad, KernelGrad};
use crate::layers::im2col::matmul_new;

/// `act(x · kernel + bias)`. `x_heads`: `x` is `(batch, heads, positions, size)`, read as the
/// rows `(batch · positions, heads · size)`; `y_heads`: the output is
/// `(batch, heads, positions, units / heads)` instead of `(..., units)` (identity activation
/// only, checked by [`dense`]).
#[derive(Clone, Copy)]
struct DenseOp {
    act: Act,
    x_heads: bool,
    y_heads: Option<usize>,
}

/// `(batch, heads, positions, size)` → rows `(batch · positions, heads · size)` (`merge`), or the
/// other way round, as a new buffer; in parallel over the batch when large.
fn permute_heads(src: &[f32], dims: [usize; 4], merge: bool) -> Vec<f32> {
    let [b, h, t, s] = dims;
    let per = h * t * s;
    let mut out = vec![0f32; src.len()];
    let one = |(out, src): (&mut [f32], &[f32])| {
        for hi in 0..h {
            for ti in 0..t {
                let heads = (hi * t + ti) * s;
                let rows = (ti * h + hi) * s;
                let (from, to) = if merge { (heads, rows) } else { (rows, heads) };
                out[to..to + s].copy_from_slice(&src[from..from + s]);
            }
        }
    };
    if per == 0 {
        return out;
    }
    super::zip_chunks(&mut out, per, src, per, one);
    debug_assert_eq!(b * per, src.len());
    out
}

impl DenseOp {
    /// The kernel as a `(k, n)` matrix: `k` the input's features (the last axis, or heads times
    /// size), which the kernel's leading axes must hold (`(k, units)`, `(k, heads, size)`, or
    /// `(heads, size, units)` for an input by heads).
    fn kernel_matrix(&self, x: &[usize], w: &[usize]) -> candle_core::Result<(usize, usize)> {
        let k = if self.x_heads && x.len() == 4 {
            x[1] * x[3]
        } else {
            x.last().copied().unwrap_or(0)
        };
        let mut lead = 1;
        for (i, &d) in w.iter().enumerate() {
            lead *= d;
            if lead == k && i + 1 < w.len() {
                return Ok((k, w[i + 1..].iter().product()));
            }
        }
        candle_core::bail!(
            "dense op: input {x:?} ({k} features) for a kernel {w:?}: the kernel's leading axes must hold the input's features"
        )
    }

    /// Rows, input features and output shape of `x (dims)` through a kernel of `k` rows and `n`
    /// columns.
    fn geometry(&self, x: &[usize], k: usize, n: usize) -> candle_core::Result<(usize, Shape)> {
        let bad = |why: &str| -> candle_core::Result<(usize, Shape)> {
            candle_core::bail!("dense op: input {x:?} for a kernel of {k} rows: {why}")
        };
        let (rows, lead): (usize, Vec<usize>) = if self.x_heads {
            let &[b, h, t, s] = x else {
                return bad("expected (batch, heads, positions, size)");
            };
            if h * s != k {
                return bad("heads times size must be the kernel's rows");
            }
            (b * t, vec![b, t])
        } else {
            match x.split_last() {
                Some((&f, lead)) if f == k => (lead.iter().product(), lead.to_vec()),
                _ => return bad("the last axis must be the kernel's rows"),
            }
        };
        let shape = match self.y_heads {
            None => [lead, vec![n]].concat(),
            Some(h) => {
                let &[b, t] = lead.as_slice() else {
                    return bad("an output by heads needs (batch, positions, features)");
                };
                if h == 0 || !n.is_multiple_of(h) {
                    return bad("the units must divide into the heads");
                }
                vec![b, h, t, n / h]
            }
        };
        Ok((rows, Shape::from(shape)))
    }

    fn cpu(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = super::cpu_f32(x.0, x.1, "dense input")?;
        let ws = super::cpu_f32(w.0, w.1, "dense kernel")?;
        let (k, n) = self.kernel_matrix(x.1.dims(), w.1.dims())?;
        let (rows, shape) = self.geometry(x.1.dims(), k, n)?;
        let merged;
        let xr = if self.x_heads {
            let d = x.1.dims();
            merged = permute_heads(xs, [d[0], d[1], d[2], d[3]], true);
            &merged[..]
        } else {
            xs
        };
        let mut y = matmul_new(rows, n, k, xr, false, ws, false);
        let bias = match b {
            Some((s, l)) => {
                let bs = super::cpu_f32(s, l, "dense bias")?;
                if bs.len() != n {
                    candle_core::bail!("dense op: a bias of {} values for {n} units", bs.len())
                }
                Some(bs)
            }
            None => None,
        };
        if bias.is_some() || self.act != Act::Linear {
            bias_activation_par(&mut y, bias, self.act);
        }
        if let Some(h) = self.y_heads {
            let d = shape.dims();
            y = permute_heads(&y, [d[0], h, d[2], d[3]], false);
        }
        Ok((CpuStorage::F32(y), shape))
    }

    /// The gradients of `x`, the kernel and the bias (`None` where not wanted), handed to the tape
    /// where they are variables'.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<[Option<Tensor>; 3]> {
        let (k, n) = self.kernel_matrix(x.dims(), w.dims())?;
        let rows_of = |t: &Tensor, heads: bool| -> candle_core::Result<Tensor> {
            if heads {
                let (bt, h, t_, s) = t.dims4()?;
                t.transpose(1, 2)?.contiguous()?.reshape((bt * t_, h * s))
            } else {
                t.contiguous()?
                    .reshape(((), t.dims().last().copied().unwrap_or(1)))
            }
        };
        let gz = if self.y_heads.is_some() {
            rows_of(gy, true)?
        } else {
            activation_grad(y, gy, self.act)?.reshape(((), n))?
        };
        let w2 = w.detach().reshape((k, n))?;
        let gx = if crate::tape::wanted(x) {
            let g = gz.apply_op2_no_bwd(&w2, &InputGrad)?;
            Some(if self.x_heads {
                let (bt, h, t, s) = x.dims4()?;
                g.reshape((bt, t, h, s))?.transpose(1, 2)?.contiguous()?
            } else {
                g
            })
        } else {
            None
        };
        let gw = if crate::tape::wanted(w) {
            let xr = rows_of(&x.detach(), self.x_heads)?;
            Some(xr.apply_op2_no_bwd(&gz, &KernelGrad)?)
        } else {
            None
        };
        let gb = match b {
            Some(b) if crate::tape::wanted(b) => Some(bias_grad(&gz, n)?),
            _ => None,
        };
        Ok([
            crate::tape::route(x, gx)?,
            crate::tape::route(w, gw)?,
            match b {
                Some(b) => crate::tape::route(b, gb)?,
                None => None,
            },
        ])
    }
}

impl CustomOp2 for DenseOp {
    fn name(&self) -> &'static str {
        "dense"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.cpu((s1, l1), (s2, l2), None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let [gx, gw, _] = self.grads(x, w, None, y, gy)?;
        Ok((gx, gw))
    }
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense_bias"
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
        self.cpu((s1, l1), (s2, l2), Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [gx, gw, gb] = self.grads(x, w, Some(b), y, gy)?;
        Ok((gx, gw, gb))
    }
}

/// `act(x · kernel + bias)` as one op on our CPU kernels: `x (..., k)` (or, with `x_heads`,
/// `(batch, heads, positions, size)` with `heads · size = k`), a kernel of `k` rows in any shape
/// (`(k, heads, size)` for attention: its trailing axes are the units), a bias of the units'
/// count in any shape. With `y_heads`, the output is `(batch, heads, positions, units / heads)`
/// (identity activation only). `None` where the kernels do not take the tensors (another device
/// or dtype) or the activation: the caller uses its own path.
pub(crate) fn dense(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    act: Act,
    x_heads: bool,
    y_heads: Option<usize>,
) -> candle_core::Result<Option<Tensor>> {
    let all = super::takes(x) && super::takes(kernel) && bias.is_none_or(super::takes);
    if !all
        || matches!(act, Act::Leaky(s) if s < 0.0)
        || (y_heads.is_some() && act != Act::Linear)
        || kernel.rank() == 0
    {
        return Ok(None);
    }
    let op = DenseOp {
        act,
        x_heads,
        y_heads,
    };
    let (x, w) = (x.contiguous()?, kernel.contiguous()?);
    Ok(Some(match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op)?,
        None => x.apply_op2(&w, op)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::{fixed_randn, max_rel};
    use crate::tape::Variable;
    use candle_core::Device;

    fn var(t: Tensor) -> Variable {
        Variable::new("v", &t, true).unwrap()
    }

    /// The op against candle's ops for the same arithmetic: values, and the gradients of
    /// `sum(y · r)` for the input, kernel and bias.
    #[test]
    fn dense_op_matches_candle_ops_and_gradients() {
        let dev = Device::Cpu;
        // (x dims, kernel dims, bias, act, x_heads, y_heads)
        type Case = (Vec<usize>, Vec<usize>, bool, Act, bool, Option<usize>);
        let cases: Vec<Case> = vec![
            (vec![5, 3], vec![3, 4], true, Act::Relu, false, None),
            (vec![2, 7, 6], vec![6, 5], true, Act::Tanh, false, None),
            (
                vec![2, 3, 4, 6],
                vec![6, 3],
                false,
                Act::Sigmoid,
                false,
                None,
            ),
            (
                vec![64, 130],
                vec![130, 300],
                true,
                Act::Leaky(0.2),
                false,
                None,
            ),
            (
                vec![3, 5, 8],
                vec![8, 2, 3],
                true,
                Act::Linear,
                false,
                Some(2),
            ),
            (
                vec![3, 5, 8],
                vec![8, 6],
                false,
                Act::Linear,
                false,
                Some(3),
            ),
            (
                vec![3, 2, 5, 4],
                vec![2, 4, 7],
                true,
                Act::Linear,
                true,
                None,
            ),
            (vec![2, 4, 9, 3], vec![12, 5], true, Act::Relu, true, None),
            (
                vec![40, 64, 64],
                vec![64, 4, 16],
                true,
                Act::Linear,
                false,
                Some(4),
            ),
        ];
        for (i, (xd, kd, with_bias, act, xh, yh)) in cases.into_iter().enumerate() {
            let x = var(fixed_randn(1.0, xd.as_slice(), &dev).unwrap());
            let w = var(fixed_randn(0.5, kd.as_slice(), &dev).unwrap());
            let k = if xh { xd[1] * xd[3] } else { xd[xd.len() - 1] };
            let units = kd.iter().product::<usize>() / k;
            let b = with_bias.then(|| var(fixed_randn(0.5, units, &dev).unwrap()));
            let ours = dense(
                x.as_tensor(),
                w.as_tensor(),
                b.as_ref().map(|b| b.as_tensor()),
                act,
                xh,
                yh,
            )
            .unwrap()
            .unwrap();
            // candle's ops: the rows, the product, the bias, the activation, the layout.
            let xt = x.as_tensor();
            let rows = if xh {
                let (bt, h, t, s) = xt.dims4().unwrap();
                xt.transpose(1, 2)
                    .unwrap()
                    .reshape((bt * t, h * s))
                    .unwrap()
            } else {
                xt.reshape(((), xd[xd.len() - 1])).unwrap()
            };
            let mut z = rows
                .matmul(&w.as_tensor().reshape((k, units)).unwrap())
                .unwrap();
            if let Some(b) = &b {
                z = z.broadcast_add(b.as_tensor()).unwrap();
            }
            let z = match act {
                Act::Linear => z,
                Act::Relu => z.relu().unwrap(),
                Act::Leaky(s) => crate::ops::leaky_relu(&z, s).unwrap(),
                Act::Sigmoid => crate::ops::sigmoid(&z).unwrap(),
                Act::Tanh => z.tanh().unwrap(),
            };
            let theirs = match yh {
                Some(h) => {
                    let (bt, t) = (xd[0], xd[1]);
                    z.reshape((bt, t, h, units / h))
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                }
                None => {
                    let mut s = if xh {
                        vec![xd[0], xd[2]]
                    } else {
                        xd[..xd.len() - 1].to_vec()
                    };
                    s.push(units);
                    z.reshape(s).unwrap()
                }
            };
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_rel(&ours, &theirs) < 1e-5, "case {i} values");
            let r = fixed_randn(1.0, ours.dims(), &dev).unwrap();
            let mut vars = vec![x.clone(), w.clone()];
            vars.extend(b.clone());
            let g1 = GradientTape::gradient(&(&ours * &r).unwrap(), &vars).unwrap();
            let g2 = GradientTape::gradient(&(&theirs * &r).unwrap(), &vars).unwrap();
            for (j, (a, c)) in g1.iter().zip(&g2).enumerate() {
                assert_eq!(a.dims(), c.dims(), "case {i} gradient {j}");
                assert!(max_rel(a, c) < 1e-5, "case {i} gradient {j}");
            }
        }
    }

    /// Only the gradients asked for are computed: a plain input gets none, and the kernel's is
    /// the same without it.
    #[test]
    fn dense_op_skips_unwanted_gradients() {
        let dev = Device::Cpu;
        let x = fixed_randn(1.0, (4, 6, 3), &dev).unwrap();
        let w = var(fixed_randn(1.0, (3, 2), &dev).unwrap());
        let b = var(fixed_randn(1.0, 2, &dev).unwrap());
        let y = dense(
            &x,
            w.as_tensor(),
            Some(b.as_tensor()),
            Act::Relu,
            false,
            None,
        )
        .unwrap()
        .unwrap();
        let g = GradientTape::gradient(&y, &[w.clone(), b.clone()]).unwrap();
        let z = x
            .reshape((24, 3))
            .unwrap()
            .matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap()
            .relu()
            .unwrap();
        let h = GradientTape::gradient(&z, &[w, b]).unwrap();
        assert!(max_rel(&g[0], &h[0]) < 1e-5);
        assert!(max_rel(&g[1], &h[1]) < 1e-5);
    }

    #[test]
    fn dense_op_refuses_what_it_does_not_take() {
        let dev = Device::Cpu;
        let x = fixed_randn(1.0, (2, 3), &dev).unwrap();
        let w = fixed_randn(1.0, (3, 4), &dev).unwrap();
        // Heads with an activation, and a negative slope: left to the caller's path.
        assert!(
            dense(&x, &w, None, Act::Relu, false, Some(2))
                .unwrap()
                .is_none()
        );
        assert!(
            dense(&x, &w, None, Act::Leaky(-0.5), false, None)
                .unwrap()
                .is_none()
        );
        // A kernel of other rows is an error naming both shapes.
        let bad = fixed_randn(1.0, (5, 4), &dev).unwrap();
        let e = dense(&x, &bad, None, Act::Linear, false, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("[2, 3]") && e.contains("[5, 4]"), "{e}");
    }
}
