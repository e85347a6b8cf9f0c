//! Adam's update in place on the CPU: the moments and the variable are rewritten where they are,
//! with the same float32 arithmetic, in the same order, as the update built from candle ops.
//!
//! Why our own: built from candle ops, one Adam step is about fifteen elementwise passes per
//! variable, each allocating a fresh buffer; here it is one pass over the variable, its gradient and both moments, and no allocation.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

const CHUNK: usize = 1 << 14;

/// Adam's constants for one step (`alpha` already folds in the bias corrections).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamStep {
    pub beta_1: f64,
    pub beta_2: f64,
    pub epsilon: f64,
    pub alpha: f64,
    /// `learning_rate * weight_decay`, or 0.
    pub decay: f64,
}

/// `m += (g - m) * (1 - beta)`, or with `g²` for the second moment.
struct Moment {
    one_minus_beta: f32,
    square: bool,
}

/// `vhat = max(vhat, v)` (AMSGrad).
struct Max;

/// `w = (w - w * decay) - (m * alpha) / (sqrt(v) + eps)`.
struct Apply(AdamStep);

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adam_moment"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let m = super::cpu_f32_mut(dst, dst_l, "adam")?;
        let g = super::cpu_f32(g, gl, "adam")?;
        if m.len() != g.len() {
            candle_core::bail!("adam: {} gradient values for {} slots", g.len(), m.len())
        }
        let (k, square) = (self.one_minus_beta, self.square);
        let run = |m: &mut [f32], g: &[f32]| {
            for (m, &g) in m.iter_mut().zip(g) {
                let g = if square { g * g } else { g };
                *m += (g - *m) * k;
            }
        };
        if m.len() <= CHUNK {
            // Small variables on this thread: the pool's wake-up would cost more.
            run(m, g);
        } else {
            m.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(m, g)| run(m, g));
        }
        Ok(())
    }
}

impl InplaceOp2 for Max {
    fn name(&self) -> &'static str {
        "adam_vhat"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        let vh = super::cpu_f32_mut(dst, dst_l, "adam")?;
        let v = super::cpu_f32(v, vl, "adam")?;
        for (a, &b) in vh.iter_mut().zip(v) {
            *a = a.max(b);
        }
        Ok(())
    }
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "adam_apply"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        let w = super::cpu_f32_mut(dst, dst_l, "adam")?;
        let (m, v) = (
            super::cpu_f32(m, ml, "adam")?,
            super::cpu_f32(v, vl, "adam")?,
        );
        if m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!(
                "adam: slots of {} and {} values for {}",
                m.len(),
                v.len(),
                w.len()
            )
        }
        let (alpha, eps, decay) = (
            self.0.alpha as f32,
            self.0.epsilon as f32,
            self.0.decay as f32,
        );
        let run = |w: &mut [f32], m: &[f32], v: &[f32]| {
            for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                let x = if decay != 0.0 { *w - *w * decay } else { *w };
                *w = x - (m * alpha) / (v.sqrt() + eps);
            }
        };
        if w.len() <= CHUNK {
            run(w, m, v);
        } else {
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
                .for_each(|(w, (m, v))| run(w, m, v));
        }
        Ok(())
    }
}

/// Whether [`adam_in_place`] takes these tensors: float32, on the CPU, contiguous.
pub(crate) fn fits(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| super::takes(t) && t.is_contiguous())
}

/// One Adam step in place: `slots` are `[m, v]` or `[m, v, vhat]`; `w` shares the variable's
/// storage. Callers check [`fits`] first. Without AMSGrad the update is one pass over the four
/// arrays ([`fused`]); with it, the moments, the running maximum and the variable take a pass each.
pub(crate) fn adam_in_place(
    w: &Tensor,
    g: &Tensor,
    slots: &[Tensor],
    p: AdamStep,
) -> candle_core::Result<()> {
    let [m, v, rest @ ..] = slots else {
        candle_core::bail!("adam: expected the m and v slots")
    };
    if rest.is_empty() {
        return w.inplace_op2(g, &OnW { m, v, p });
    }
    m.inplace_op2(
        g,
        &Moment {
            one_minus_beta: (1.0 - p.beta_1) as f32,
            square: false,
        },
    )?;
    v.inplace_op2(
        g,
        &Moment {
            one_minus_beta: (1.0 - p.beta_2) as f32,
            square: true,
        },
    )?;
    let v = match rest.first() {
        Some(vhat) => {
            vhat.inplace_op2(v, &Max)?;
            vhat
        }
        None => v,
    };
    w.inplace_op3(m, v, &Apply(p))
}

// The one-pass update needs three storages written at once (w, m, v), and a candle in-place op
// writes one. So the ops nest: w's op (holding w's write lock) runs m's op, which runs v's op,
// and the innermost sees all four slices. Each op borrows the slices of the one around it for
// the length of the call; the three storages are distinct tensors (the slots are the
// optimizer's own), so the three write locks never meet.

/// In place on `w`, reading `g`; runs [`OnM`].
struct OnW<'a> {
    m: &'a Tensor,
    v: &'a Tensor,
    p: AdamStep,
}

/// In place on `m`; runs [`OnV`] with `w` and `g` from [`OnW`].
struct OnM<'a, 'b> {
    v: &'a Tensor,
    p: AdamStep,
    wg: RefCell<Option<(&'b mut [f32], &'b [f32])>>,
}

/// The variable, its gradient and the first moment, borrowed from the ops around [`OnV`].
type Borrowed<'b> = (&'b mut [f32], &'b [f32], &'b mut [f32]);

/// In place on `v`: the update itself.
struct OnV<'b> {
    p: AdamStep,
    wgm: RefCell<Option<Borrowed<'b>>>,
}

impl InplaceOp2 for OnW<'_> {
    fn name(&self) -> &'static str {
        "adam"
    }
    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let w = super::cpu_f32_mut(dst, dst_l, "adam")?;
        let g = super::cpu_f32(g, gl, "adam")?;
        self.m.inplace_op1(&OnM {
            v: self.v,
            p: self.p,
            wg: RefCell::new(Some((w, g))),
        })
    }
}

impl InplaceOp1 for OnM<'_, '_> {
    fn name(&self) -> &'static str {
        "adam"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout) -> candle_core::Result<()> {
        let m = super::cpu_f32_mut(dst, dst_l, "adam")?;
        let Some((w, g)) = self.wg.borrow_mut().take() else {
            candle_core::bail!("adam: the update ran twice")
        };
        self.v.inplace_op1(&OnV {
            p: self.p,
            wgm: RefCell::new(Some((w, g, m))),
        })
    }
}

impl InplaceOp1 for OnV<'_> {
    fn name(&self) -> &'static str {
        "adam"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout) -> candle_core::Result<()> {
        let v = super::cpu_f32_mut(dst, dst_l, "adam")?;
        let Some((w, g, m)) = self.wgm.borrow_mut().take() else {
            candle_core::bail!("adam: the update ran twice")
        };
        if g.len() != w.len() || m.len() != w.len() || v.len() != w.len() {
            candle_core::bail!(
                "adam: {} gradient values and slots of {} and {} values for {}",
                g.len(),
                m.len(),
                v.len(),
                w.len()
            )
        }
        let p = self.p;
        let c = Consts {
            k1: (1.0 - p.beta_1) as f32,
            k2: (1.0 - p.beta_2) as f32,
            alpha: p.alpha as f32,
            eps: p.epsilon as f32,
            decay: p.decay as f32,
        };
        if w.len() <= CHUNK {
            fused(w, g, m, v, c);
        } else {
            w.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((w, g), (m, v))| fused(w, g, m, v, c));
        }
        Ok(())
    }
}

/// Adam's constants in float32, as the update uses them.
#[derive(Clone, Copy)]
struct Consts {
    k1: f32,
    k2: f32,
    alpha: f32,
    eps: f32,
    decay: f32,
}

/// `m += (g - m)(1 - β1)`, `v += (g² - v)(1 - β2)`, `w = (w - w·decay) - m·α / (√v + ε)`, in one
/// pass: the same float32 operations in the same order as the three passes (and as the update
/// built from candle ops), so the same bits. Compiled for AVX-512 and AVX2 too (square roots and
/// divisions sixteen or eight at a time), picked at run time.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn fused(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Consts) {
    let n = w.len().min(g.len()).min(m.len()).min(v.len());
    let (w, g, m, v) = (&mut w[..n], &g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i];
        let mi = m[i] + (gi - m[i]) * c.k1;
        let vi = v[i] + (gi * gi - v[i]) * c.k2;
        m[i] = mi;
        v[i] = vi;
        let x = if c.decay != 0.0 {
            w[i] - w[i] * c.decay
        } else {
            w[i]
        };
        w[i] = x - (mi * c.alpha) / (vi.sqrt() + c.eps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The update from candle ops, as the optimizer builds it off the CPU fast path.
    fn reference(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, p: AdamStep) -> [Tensor; 3] {
        let x = if p.decay != 0.0 {
            (w - (w * p.decay).unwrap()).unwrap()
        } else {
            w.clone()
        };
        let m = (m + ((g - m).unwrap() * (1.0 - p.beta_1)).unwrap()).unwrap();
        let v = (v + ((g.sqr().unwrap() - v).unwrap() * (1.0 - p.beta_2)).unwrap()).unwrap();
        let step = ((&m * p.alpha).unwrap() / (v.sqrt().unwrap() + p.epsilon).unwrap()).unwrap();
        [(x - step).unwrap(), m, v]
    }

    #[test]
    fn one_pass_update_matches_the_candle_ops_bit_for_bit() {
        let dev = Device::Cpu;
        // Below and above the parallel chunk, and an uneven last chunk.
        for (n, decay) in [(1usize, 0.0), (37, 0.0), (CHUNK * 3 + 5, 0.0), (1000, 4e-4)] {
            let rand = |lo: f32, hi: f32| Tensor::rand(lo, hi, n, &dev).unwrap();
            let (w, g) = (rand(-1.0, 1.0), rand(-2.0, 2.0));
            let (m, v) = (rand(-0.1, 0.1), rand(0.0, 0.3));
            let p = AdamStep {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
                alpha: 1e-3 * (1.0f64 - 0.999f64.powi(3)).sqrt() / (1.0 - 0.9f64.powi(3)),
                decay,
            };
            let expected = reference(&w, &g, &m, &v, p);
            // In place on copies (the originals feed the reference).
            let (w2, m2, v2) = (w.copy().unwrap(), m.copy().unwrap(), v.copy().unwrap());
            adam_in_place(&w2, &g, &[m2.clone(), v2.clone()], p).unwrap();
            for (got, want, what) in [(&w2, &expected[0], "w"), (&m2, &expected[1], "m")]
                .into_iter()
                .chain([(&v2, &expected[2], "v")])
            {
                assert_eq!(
                    got.to_vec1::<f32>().unwrap(),
                    want.to_vec1::<f32>().unwrap(),
                    "{what}, {n} values"
                );
            }
        }
    }

    #[test]
    fn mismatched_slots_are_an_error() {
        let dev = Device::Cpu;
        let w = Tensor::zeros(8, DType::F32, &dev).unwrap();
        let g = Tensor::zeros(8, DType::F32, &dev).unwrap();
        let short = Tensor::zeros(7, DType::F32, &dev).unwrap();
        let p = AdamStep {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            alpha: 1e-3,
            decay: 0.0,
        };
        let err = adam_in_place(&w, &g, &[short, w.copy().unwrap()], p).unwrap_err();
        assert!(
            err.to_string().contains("slots of 7 and 8 values for 8"),
            "{err}"
        );
    }
}
