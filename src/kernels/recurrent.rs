//! A whole LSTM or GRU sequence, forward and backward through time, as one candle custom op on
//! the CPU (as cuDNN runs a recurrent layer on a GPU).
//!
//! Why our own: step by step from candle's ops, an LSTM step is about a dozen ops (the
//! recurrent product, the additions, four gate slices and activations, the cell's products), each
//! a graph edge whose gradient candle adds into a fresh zero tensor, 50 steps per sequence: a
//! 50-step LSTM(64) trained at a fifth of Keras's rate on JAX. Here the input projections of all
//! steps are one product, each step is one small product and one pass over its gates, and the
//! backward pass is one small product per step, then one product each for the kernel, the
//! recurrent kernel and the input gradients over all steps.
//!
//! Keras's arithmetic: LSTM gates in the order input, forget, candidate, output, with
//! `c = f c + i tanh(z_c)`, `h = o tanh(c)`; GRU (`reset_after`) gates update, reset, candidate,
//! with an input and a recurrent bias, `hh = tanh(x_h + r (h U_h + b_h))`, `h = z h + (1 - z) hh`.
//! Sigmoid gates and tanh activations (other activations take the step-by-step path).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::layers::im2col::{matmul_new, matmul_with};

/// Which recurrence the op runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Cell {
    /// Keras's LSTM: 4 gates, a bias of `4u`.
    Lstm,
    /// Keras's GRU with `reset_after`: 3 gates, a bias of `(2, 3u)`.
    Gru,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }
}

/// `(x (B, T, F), weights (F + u, G u): the kernel over the recurrent kernel, bias)` → every
/// step's state `(B, T, u)`, or the last one `(B, u)`.
pub(crate) struct Sequence {
    cell: Cell,
    units: usize,
    sequences: bool,
    /// Keras's mask, `(B, T)` in the order the steps run: 0 where a step is skipped (the states
    /// carried through it unchanged, its output the carried state, or zeros with
    /// `zero_output`).
    mask: Option<Arc<[u8]>>,
    zero_output: bool,
    /// What the backward pass reads, kept by the forward pass (for as long as the graph lives:
    /// a second gradient of the same result reads it again).
    saved: Mutex<Option<Arc<Saved>>>,
}

struct Saved {
    /// Every step's activated gates, `(B, T, G u)`.
    gates: Vec<f32>,
    /// Every step's state `(B, T, u)` (carried through skipped steps).
    hs: Vec<f32>,
    /// LSTM: every step's cell state; GRU: every step's `h U_h + b_h`; `(B, T, u)`.
    extra: Vec<f32>,
}

/// `e^x` vectorizable (see [`super::softmax::exp`]).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + super::softmax::exp(-x))
}

/// `tanh x`, vectorizable: `(1 - e) / (1 + e)` with `e = exp(-2|x|)`, and its series below 0.1
/// (where that difference would lose digits); within 1e-6 of libm's relative to 1.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let e = super::softmax::exp(-2.0 * a);
    let big = (1.0 - e) / (1.0 + e);
    let x2 = x * x;
    // x - x³/3 + 2x⁵/15 - 17x⁷/315 + 62x⁹/2835
    let small = x
        * (1.0
            + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))));
    if a < 0.1 {
        small
    } else if x.is_sign_negative() {
        -big
    } else {
        big
    }
}

/// LSTM step over one sequence's row: `z` (4u pre-activations) in, gates out (activated), the
/// cell state updated in `c`, the state written to `h`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn lstm_row(z: &mut [f32], c: &mut [f32], h: &mut [f32]) {
    let u = c.len();
    let (zi, rest) = z.split_at_mut(u);
    let (zf, rest) = rest.split_at_mut(u);
    let (zg, zo) = rest.split_at_mut(u);
    // Every slice cut to `u` values, so that the loop has no bounds checks (and vectorizes).
    let (zf, zg, zo, h) = (&mut zf[..u], &mut zg[..u], &mut zo[..u], &mut h[..u]);
    for j in 0..u {
        let i = sigmoid(zi[j]);
        let f = sigmoid(zf[j]);
        let g = tanh(zg[j]);
        let o = sigmoid(zo[j]);
        let cn = f * c[j] + i * g;
        (zi[j], zf[j], zg[j], zo[j]) = (i, f, g, o);
        c[j] = cn;
        h[j] = o * tanh(cn);
    }
}

/// GRU step over one row: `z` (in: the input projection with its bias, 3u; out: the gates z, r,
/// hh) and `hz` (3u: the recurrent product with its bias); `h U_h + b_h` kept in `inner`, the
/// state updated in `h`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn gru_row(z: &mut [f32], hz: &[f32], inner: &mut [f32], h: &mut [f32]) {
    let u = h.len();
    let (gz, rest) = z.split_at_mut(u);
    let (gr, gh) = rest.split_at_mut(u);
    let (gz, gr, gh, inner) = (&mut gz[..u], &mut gr[..u], &mut gh[..u], &mut inner[..u]);
    let (hz_z, hz_r, hz_h) = (&hz[..u], &hz[u..2 * u], &hz[2 * u..3 * u]);
    for j in 0..u {
        let zg = sigmoid(gz[j] + hz_z[j]);
        let r = sigmoid(gr[j] + hz_r[j]);
        let hu = hz_h[j];
        let hh = tanh(gh[j] + r * hu);
        (gz[j], gr[j], gh[j]) = (zg, r, hh);
        inner[j] = hu;
        h[j] = zg * h[j] + (1.0 - zg) * hh;
    }
}

/// LSTM backward over one row of one step: from `dh` (in: the state's gradient; out: nothing
/// read), `dc` (in: the next step's cell gradient; out: this one's for the previous step), the
/// gates, this step's and the previous cell state: the pre-activation gradients into `dz`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn lstm_grad_row(
    dh: &[f32],
    dc: &mut [f32],
    gates: &[f32],
    c: &[f32],
    c_prev: &[f32],
    dz: &mut [f32],
) {
    let u = dc.len();
    let (gi, gf, gg, go) = (
        &gates[..u],
        &gates[u..2 * u],
        &gates[2 * u..3 * u],
        &gates[3 * u..4 * u],
    );
    let (dh, c, c_prev) = (&dh[..u], &c[..u], &c_prev[..u]);
    let (di, rest) = dz[..4 * u].split_at_mut(u);
    let (df, rest) = rest.split_at_mut(u);
    let (dg, d_o) = rest.split_at_mut(u);
    for j in 0..u {
        let (i, f, g, o) = (gi[j], gf[j], gg[j], go[j]);
        let tc = tanh(c[j]);
        let d = dc[j] + dh[j] * o * (1.0 - tc * tc);
        di[j] = d * g * i * (1.0 - i);
        df[j] = d * c_prev[j] * f * (1.0 - f);
        dg[j] = d * i * (1.0 - g * g);
        d_o[j] = dh[j] * tc * o * (1.0 - o);
        dc[j] = d * f;
    }
}

/// GRU backward over one row of one step: `dh` the state's gradient; the pre-activation
/// gradients of the input side into `dx` (3u) and of the recurrent side into `dr` (3u); `dh`'s
/// direct share for the previous state (`dh z`) into `dprev`.
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn gru_grad_row(
    dh: &[f32],
    gates: &[f32],
    inner: &[f32],
    h_prev: &[f32],
    dx: &mut [f32],
    dr: &mut [f32],
    dprev: &mut [f32],
) {
    let u = dh.len();
    let (gz, gr, gh) = (&gates[..u], &gates[u..2 * u], &gates[2 * u..3 * u]);
    let (inner, h_prev, dprev) = (&inner[..u], &h_prev[..u], &mut dprev[..u]);
    let (dxz, rest) = dx[..3 * u].split_at_mut(u);
    let (dxr, dxh) = rest.split_at_mut(u);
    let (drz, rest) = dr[..3 * u].split_at_mut(u);
    let (drr, drh) = rest.split_at_mut(u);
    for j in 0..u {
        let (z, r, hh) = (gz[j], gr[j], gh[j]);
        let dzh = dh[j] * (1.0 - z) * (1.0 - hh * hh);
        let dzz = dh[j] * (h_prev[j] - hh) * z * (1.0 - z);
        let dzr = dzh * inner[j] * r * (1.0 - r);
        dxz[j] = dzz;
        dxr[j] = dzr;
        dxh[j] = dzh;
        drz[j] = dzz;
        drr[j] = dzr;
        drh[j] = dzh * r;
        dprev[j] = dh[j] * z;
    }
}

/// The previous step's row of `v` (`(B, T, u)`, the row of step `s` at `at`): zeros before the
/// first step.
fn prev_row<'a>(v: &'a [f32], zeros: &'a [f32], s: usize, at: usize) -> &'a [f32] {
    if s == 0 {
        zeros
    } else {
        &v[at - zeros.len()..at]
    }
}

impl Sequence {
    /// Whether step `i` (`batch · T + step`) runs (no mask, or a nonzero mask value).
    fn keeps(&self, i: usize) -> bool {
        self.mask.as_ref().is_none_or(|m| m[i] != 0)
    }

    /// Checks the shapes: `(B, T, F)` and weights `(F + u, G u)`.
    fn dims(&self, x: &[usize], w: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        let (u, gu) = (self.units, self.cell.gates() * self.units);
        match (x, w) {
            (&[b, t, f], &[rows, cols]) if rows == f + u && cols == gu => Ok((b, t, f)),
            _ => candle_core::bail!(
                "recurrent op: input {x:?} and weights {w:?} for {u} units ({:?})",
                self.cell
            ),
        }
    }
}

impl CustomOp3 for Sequence {
    fn name(&self) -> &'static str {
        "recurrent_sequence"
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
        let (b, t, f) = self.dims(l1.dims(), l2.dims())?;
        let (u, g) = (self.units, self.cell.gates());
        let gu = g * u;
        let x = super::cpu_f32(s1, l1, "recurrent input")?;
        let w = super::cpu_f32(s2, l2, "recurrent weights")?;
        let bias = super::cpu_f32(s3, l3, "recurrent bias")?;
        let bias_len = if self.cell == Cell::Gru { 2 * gu } else { gu };
        if bias.len() != bias_len {
            candle_core::bail!(
                "recurrent op: a bias of {} values, expected {bias_len}",
                bias.len()
            )
        }
        let (kernel, recurrent) = w.split_at(f * gu);
        // Every step's input projection at once, with the (input) bias.
        let mut gates = matmul_new(b * t, gu, f, x, false, kernel, false);
        for row in gates.chunks_exact_mut(gu) {
            for (v, &bv) in row.iter_mut().zip(&bias[..gu]) {
                *v += bv;
            }
        }
        let mut hs = vec![0f32; b * t * u];
        let mut extra = vec![0f32; b * t * u];
        let mut h = vec![0f32; b * u];
        let mut c = vec![0f32; b * u];
        let mut hz = vec![0f32; b * gu];
        // With a mask, the outputs (skipped steps' zeros with `zero_output`) apart from the states.
        let mut outs = match &self.mask {
            Some(_) => vec![0f32; b * t * u],
            None => Vec::new(),
        };
        for s in 0..t {
            matmul_with(false, b, gu, u, &mut hz, false, &h, false, recurrent, false);
            for bi in 0..b {
                let row = (bi * t + s) * gu;
                let hrow = &mut h[bi * u..(bi + 1) * u];
                let z = &mut gates[row..row + gu];
                let at = (bi * t + s) * u;
                let keep = self.keeps(bi * t + s);
                if !keep {
                    // The states carried through unchanged.
                    if self.cell == Cell::Lstm {
                        extra[at..at + u].copy_from_slice(&c[bi * u..(bi + 1) * u]);
                    }
                    hs[at..at + u].copy_from_slice(hrow);
                    if !self.zero_output && !outs.is_empty() {
                        outs[at..at + u].copy_from_slice(hrow);
                    }
                    continue;
                }
                match self.cell {
                    Cell::Lstm => {
                        for (v, &r) in z.iter_mut().zip(&hz[bi * gu..(bi + 1) * gu]) {
                            *v += r;
                        }
                        lstm_row(z, &mut c[bi * u..(bi + 1) * u], hrow);
                        extra[at..at + u].copy_from_slice(&c[bi * u..(bi + 1) * u]);
                    }
                    Cell::Gru => {
                        let hzr = &mut hz[bi * gu..(bi + 1) * gu];
                        for (v, &bv) in hzr.iter_mut().zip(&bias[gu..]) {
                            *v += bv;
                        }
                        gru_row(z, hzr, &mut extra[at..at + u], hrow);
                    }
                }
                hs[at..at + u].copy_from_slice(hrow);
                if !outs.is_empty() {
                    outs[at..at + u].copy_from_slice(hrow);
                }
            }
        }
        let out = match (self.sequences, outs.is_empty()) {
            (true, true) => hs.clone(),
            (true, false) => outs,
            (false, true) => h,
            (false, false) if t == 0 => h,
            // The last step's outputs.
            (false, false) => outs
                .chunks_exact(t * u)
                .flat_map(|seq| seq[(t - 1) * u..].iter().copied())
                .collect(),
        };
        let shape = if self.sequences {
            Shape::from((b, t, u))
        } else {
            Shape::from((b, u))
        };
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new(Saved { gates, hs, extra }));
        Ok((CpuStorage::F32(out), shape))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                candle_core::Error::Msg(
                    "recurrent op: backward pass before the forward pass".into(),
                )
            })?;
        let (b, t, f) = self.dims(x.dims(), w.dims())?;
        let (u, gu) = (self.units, self.cell.gates() * self.units);
        let x = x.contiguous()?;
        let (w, g) = (w.contiguous()?, grad.contiguous()?);
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        let (kernel, recurrent) = wv.split_at(f * gu);
        let Saved { gates, hs, extra } = &*saved;
        // Pre-activation gradients: the input side (and for GRU the recurrent side), `(B, T, G u)`.
        let mut dx_side = vec![0f32; b * t * gu];
        let mut dr_side = if self.cell == Cell::Gru {
            vec![0f32; b * t * gu]
        } else {
            Vec::new()
        };
        let mut dh_next = vec![0f32; b * u];
        let mut dc = vec![0f32; b * u];
        let mut dh = vec![0f32; b * u];
        let mut step_d = vec![0f32; b * gu];
        let zeros = vec![0f32; u];
        for s in (0..t).rev() {
            for bi in 0..b {
                let from = if self.sequences {
                    Some((bi * t + s) * u)
                } else if s + 1 == t {
                    Some(bi * u)
                } else {
                    None
                };
                let at = (bi * t + s) * u;
                if !self.keeps(bi * t + s) {
                    // A skipped step: the states' gradients pass through to the previous step
                    // (with the output's, unless its output was zeros); no gate gradient.
                    if !self.zero_output
                        && let Some(o) = from
                    {
                        for j in 0..u {
                            dh_next[bi * u + j] += gv[o + j];
                        }
                    }
                    step_d[bi * gu..(bi + 1) * gu].fill(0.0);
                    continue;
                }
                for j in 0..u {
                    dh[bi * u + j] = dh_next[bi * u + j] + from.map_or(0.0, |o| gv[o + j]);
                }
                if self.cell == Cell::Lstm {
                    // Consumed; the product below adds the previous state's share.
                    dh_next[bi * u..(bi + 1) * u].fill(0.0);
                }

                let row = (bi * t + s) * gu;
                let d = &mut step_d[bi * gu..(bi + 1) * gu];
                match self.cell {
                    Cell::Lstm => {
                        lstm_grad_row(
                            &dh[bi * u..(bi + 1) * u],
                            &mut dc[bi * u..(bi + 1) * u],
                            &gates[row..row + gu],
                            &extra[at..at + u],
                            prev_row(extra, &zeros, s, at),
                            d,
                        );
                        dx_side[row..row + gu].copy_from_slice(d);
                    }
                    Cell::Gru => {
                        gru_grad_row(
                            &dh[bi * u..(bi + 1) * u],
                            &gates[row..row + gu],
                            &extra[at..at + u],
                            prev_row(hs, &zeros, s, at),
                            &mut dx_side[row..row + gu],
                            d,
                            &mut dh_next[bi * u..(bi + 1) * u],
                        );
                        dr_side[row..row + gu].copy_from_slice(d);
                    }
                }
            }
            // The previous state's gradient through the recurrent kernel, added to what is
            // already there (GRU: its direct share; a skipped step: the carried gradient).
            let accumulate = true;
            matmul_with(
                false,
                b,
                u,
                gu,
                &mut dh_next,
                accumulate,
                &step_d,
                false,
                recurrent,
                true,
            );
        }
        let rec_side = if self.cell == Cell::Gru {
            &dr_side
        } else {
            &dx_side
        };
        // Every step's previous state, `(B, T, u)`, zeros before the first.
        let mut h_prev = vec![0f32; b * t * u];
        for bi in 0..b {
            let base = bi * t * u;
            if t > 1 {
                h_prev[base + u..base + t * u].copy_from_slice(&hs[base..base + (t - 1) * u]);
            }
        }
        let mut dw = vec![0f32; (f + u) * gu];
        let (dk, du) = dw.split_at_mut(f * gu);
        matmul_with(true, f, gu, b * t, dk, false, &xv, true, &dx_side, false);
        matmul_with(
            true,
            u,
            gu,
            b * t,
            du,
            false,
            &h_prev,
            true,
            rec_side,
            false,
        );
        let dxv = matmul_new(b * t, f, gu, &dx_side, false, kernel, true);
        let mut db = super::elementwise::column_sum(&dx_side, gu);
        if self.cell == Cell::Gru {
            db.extend(super::elementwise::column_sum(&dr_side, gu));
        }
        let dev = x.device();
        let gx = Tensor::from_vec(dxv, (b, t, f), dev)?;
        let gw = Tensor::from_vec(dw, (f + u, gu), dev)?;
        let gb = Tensor::from_vec(db, bias.shape(), dev)?;
        Ok((
            crate::tape::route(&x, crate::tape::wanted(&x).then_some(gx))?,
            crate::tape::route(&w, Some(gw))?,
            crate::tape::route(bias, crate::tape::wanted(bias).then_some(gb))?,
        ))
    }
}

/// A whole recurrent sequence on our CPU kernels: `x (B, T, F)`, `kernel (F, G u)`,
/// `recurrent (u, G u)`, `bias` (`4u` for an LSTM, `(2, 3u)` for a GRU), all float32 on the CPU;
/// every step's state or the last one (`sequences`). `mask` `(B, T)` of zeros and ones: skipped
/// steps carry the states, and output them, or zeros with `zero_output`. `None` where the
/// kernels do not take the tensors (or the mask holds other values).
pub(crate) fn sequence(
    cell: Cell,
    x: &Tensor,
    [kernel, recurrent, bias]: [&Tensor; 3],
    sequences: bool,
    mask: Option<&Tensor>,
    zero_output: bool,
) -> candle_core::Result<Option<Tensor>> {
    if ![x, kernel, recurrent, bias].iter().all(|t| super::takes(t)) || x.rank() != 3 {
        return Ok(None);
    }
    // A mask of zeros and ones, `(B, T)` (other values blend the states: the step loop).
    let mask = match mask {
        Some(m) => {
            let v = m
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            if m.dims() != &x.dims()[..2] || v.iter().any(|&k| k != 0.0 && k != 1.0) {
                return Ok(None);
            }
            Some(v.iter().map(|&k| u8::from(k != 0.0)).collect::<Arc<[u8]>>())
        }
        None => None,
    };
    let units = recurrent.dims()[0];
    // The two kernels as one argument (a concatenation of two small variables; its backward
    // splits the gradient between them).
    let w = Tensor::cat(&[kernel, recurrent], 0)?;
    let op = Sequence {
        cell,
        units,
        sequences,
        mask,
        zero_output,
        saved: Mutex::new(None),
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &w,
        &bias.contiguous()?,
        op,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{both_paths, fixed_randn, max_rel};
    use crate::layers::{GRU, LSTM, Layer};
    use crate::tape::Variable;
    use candle_core::Device;

    /// The fused op against the step-by-step path of candle's ops: outputs, and the gradients of
    /// the input and of every weight, for LSTMs and GRUs, every state or the last, forwards and
    /// backwards in time.
    #[test]
    fn fused_sequences_match_the_step_by_step_path() {
        let dev = Device::Cpu;
        let x = fixed_randn(1.0, (3, 7, 5), &dev).unwrap();
        for (i, seqs, back) in [
            (0, false, false),
            (1, true, false),
            (2, true, true),
            (3, false, true),
        ] {
            let layers: Vec<Box<dyn Layer>> = vec![
                Box::new(LSTM::new(4).return_sequences(seqs).go_backwards(back)),
                Box::new(GRU::new(6).return_sequences(seqs).go_backwards(back)),
            ];
            for mut layer in layers {
                // A bias that is not zero, so that its gradient path is exercised.
                layer.build(&[7, 5]).unwrap();
                for v in layer.variables() {
                    let t = (v.as_tensor() + fixed_randn(0.3, v.shape().dims(), &dev).unwrap())
                        .unwrap();
                    v.assign(&t).unwrap();
                }
                let [(y1, g1), (y2, g2)] = both_paths(layer.as_mut(), &x, |d| {
                    fixed_randn(1.0, d, &Device::Cpu).unwrap()
                });
                assert_eq!(y1.dims(), y2.dims(), "case {i}");
                assert!(
                    max_rel(&y1, &y2) < 2e-5,
                    "case {i} {} values: {}",
                    layer.class_name(),
                    max_rel(&y1, &y2)
                );
                for (j, (a, b)) in g1.iter().zip(&g2).enumerate() {
                    assert_eq!(a.dims(), b.dims());
                    assert!(
                        max_rel(a, b) < 1e-4,
                        "case {i} {} gradient {j}: {}",
                        layer.class_name(),
                        max_rel(a, b)
                    );
                }
            }
        }
    }

    /// With a mask (skipped steps carry the states; their outputs are the carried state or
    /// zeros), the fused op against the step loop: outputs and every gradient.
    #[test]
    fn fused_masked_sequences_match_the_step_by_step_path() {
        use crate::kernels::FORCE;
        let dev = Device::Cpu;
        let x = fixed_randn(1.0, (3, 6, 4), &dev).unwrap();
        // Padding at the end, at the start, in the middle, and a sequence skipped throughout.
        let mask = Tensor::new(
            &[
                [1f32, 1., 1., 1., 0., 0.],
                [0., 0., 1., 1., 1., 1.],
                [1., 0., 1., 0., 0., 1.],
            ],
            &dev,
        )
        .unwrap();
        let all_off = Tensor::zeros((3, 6), candle_core::DType::F32, &dev).unwrap();
        let mut case = 0;
        for m in [&mask, &all_off] {
            for (seqs, back, zero) in [
                (false, false, false),
                (true, false, false),
                (true, true, true),
                (false, true, true),
                (true, false, true),
            ] {
                case += 1;
                let layers: Vec<Box<dyn Layer>> = vec![
                    Box::new(
                        LSTM::new(5)
                            .return_sequences(seqs)
                            .go_backwards(back)
                            .zero_output_for_mask(zero),
                    ),
                    Box::new(
                        GRU::new(3)
                            .return_sequences(seqs)
                            .go_backwards(back)
                            .zero_output_for_mask(zero),
                    ),
                ];
                for mut layer in layers {
                    layer.build(&[6, 4]).unwrap();
                    for v in layer.variables() {
                        let t = (v.as_tensor() + fixed_randn(0.3, v.shape().dims(), &dev).unwrap())
                            .unwrap();
                        v.assign(&t).unwrap();
                    }
                    let mut r: Option<Tensor> = None;
                    let [(y1, g1), (y2, g2)] = [false, true].map(|generic| {
                        FORCE.with(|f| f.set(generic));
                        let xv = Variable::new("x", &x, true).unwrap();
                        let y = layer.call_masked(xv.as_tensor(), Some(m), true).unwrap();
                        let r = r
                            .get_or_insert_with(|| fixed_randn(1.0, y.dims(), &dev).unwrap())
                            .clone();
                        let mut vars = vec![xv];
                        vars.extend(layer.variables());
                        let g = crate::GradientTape::gradient(&(&y * &r).unwrap(), &vars).unwrap();
                        FORCE.with(|f| f.set(false));
                        (y, g)
                    });
                    let name = layer.class_name().to_string();
                    assert_eq!(y1.dims(), y2.dims(), "case {case} {name}");
                    let close = |a: &Tensor, b: &Tensor| {
                        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                        d.to_scalar::<f32>().unwrap()
                    };
                    assert!(close(&y1, &y2) < 2e-6, "case {case} {name} values");
                    for (j, (a, b)) in g1.iter().zip(&g2).enumerate() {
                        assert!(
                            close(a, b) < 2e-5,
                            "case {case} {name} gradient {j}: {}",
                            close(a, b)
                        );
                    }
                }
            }
        }
    }

    /// Input dropout (one mask per sequence, drawn from the layer's seed) through the fused op
    /// and through the step loop: the same outputs and gradients.
    #[test]
    fn fused_sequences_with_input_dropout_match_the_step_by_step_path() {
        use crate::kernels::FORCE;
        let dev = Device::Cpu;
        let x = fixed_randn(1.0, (4, 5, 6), &dev).unwrap();
        let make = |gru: bool| -> Box<dyn Layer> {
            if gru {
                Box::new(
                    GRU::new(3)
                        .return_sequences(true)
                        .dropout(0.4)
                        .unwrap()
                        .seed(7),
                )
            } else {
                Box::new(LSTM::new(3).dropout(0.4).unwrap().seed(7))
            }
        };
        for gru in [false, true] {
            let (mut a, mut b) = (make(gru), make(gru));
            a.build(&[5, 6]).unwrap();
            b.build(&[5, 6]).unwrap();
            for (va, vb) in a.variables().iter().zip(b.variables()) {
                vb.assign(va.as_tensor()).unwrap();
            }
            let run = |layer: &mut Box<dyn Layer>, generic: bool| {
                FORCE.with(|f| f.set(generic));
                let xv = Variable::new("x", &x, true).unwrap();
                let y = layer.call(xv.as_tensor(), true).unwrap();
                let mut vars = vec![xv];
                vars.extend(layer.variables());
                let r = Tensor::ones(y.dims(), candle_core::DType::F32, &dev).unwrap();
                let g = crate::GradientTape::gradient(&(&y * &r).unwrap(), &vars).unwrap();
                FORCE.with(|f| f.set(false));
                (y, g)
            };
            let ((y1, g1), (y2, g2)) = (run(&mut a, false), run(&mut b, true));
            assert!(max_rel(&y1, &y2) < 2e-5, "gru {gru} values");
            for (j, (p, q)) in g1.iter().zip(&g2).enumerate() {
                assert!(max_rel(p, q) < 1e-4, "gru {gru} gradient {j}");
            }
            // Some inputs were dropped: the input gradient has zero columns.
            let gx = g1[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(gx.contains(&0.0), "gru {gru}: nothing dropped");
        }
    }

    /// Two gradients of one result (one backward pass each) read the same saved steps.
    #[test]
    fn a_second_gradient_of_the_same_result_works() {
        let dev = Device::Cpu;
        let x = Variable::new("x", &fixed_randn(1.0, (2, 4, 3), &dev).unwrap(), true).unwrap();
        let mut lstm = LSTM::new(5);
        let y = lstm.call(x.as_tensor(), true).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let vars = lstm.variables();
        let first = crate::GradientTape::gradient(&loss, &vars).unwrap();
        let again = crate::GradientTape::gradient(&loss, &vars).unwrap();
        let gx = crate::GradientTape::gradient(&loss, std::slice::from_ref(&x)).unwrap();
        for (a, b) in first.iter().zip(&again) {
            assert!(max_rel(a, b) == 0.0);
        }
        assert!(
            gx[0]
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    /// Sequences of no steps, with and without a mask: zeros, as the step loop gives.
    #[test]
    fn empty_sequences_give_the_initial_state() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 0, 3), candle_core::DType::F32, &dev).unwrap();
        let m = Tensor::zeros((2, 0), candle_core::DType::F32, &dev).unwrap();
        for seqs in [false, true] {
            let mut lstm = LSTM::new(4).return_sequences(seqs);
            for mask in [None, Some(&m)] {
                let y = lstm.call_masked(&x, mask, false).unwrap();
                let want: &[usize] = if seqs { &[2, 0, 4] } else { &[2, 4] };
                assert_eq!(y.dims(), want);
                let total = y
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(total, 0.0);
            }
        }
    }

    #[test]
    fn tanh_and_sigmoid_are_within_float_rounding_of_libm() {
        let mut x = -20.0f32;
        while x < 20.0 {
            let (t, e) = (tanh(x), x.tanh());
            assert!(
                (t - e).abs() <= 1e-6 * e.abs().max(1e-30) + 2e-7,
                "tanh({x}) {t} vs {e}"
            );
            let (s, e) = (sigmoid(x), 1.0 / (1.0 + (-x as f64).exp()) as f32);
            assert!((s - e).abs() <= 1e-6 * e, "sigmoid({x}) {s} vs {e}");
            x += 0.000_73;
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(-100.0), -1.0);
        assert_eq!(sigmoid(-100.0), 0.0);
        assert_eq!(sigmoid(100.0), 1.0);
        assert!(tanh(f32::NAN).is_nan() && sigmoid(f32::NAN).is_nan());
    }
}
