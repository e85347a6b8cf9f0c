//! Max pooling over channels-last images on the CPU, with its gradient, as candle custom ops.
//!
//! Why our own: built from candle ops, max pooling is a pad, a permuted copy, an argmax and a
//! gather forward, and a scatter-add into zeros backward (about a sixth of the MNIST convnet's
//! step). Here each direction is one pass. The gradient goes to the first largest element of each
//! window in row-major order, as Keras's does when a window holds tied maxima.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Windows of a max pooling: `(n, h, w, c)` input, `(ph, pw)` windows every `(sh, sw)`, starting
/// `(pt, pl)` before the image (positions outside it are ignored), `(oh, ow)` outputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolGeometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub ph: usize,
    pub pw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeometry {
    /// Whether every window covers at least one pixel (then every kept index is a real one).
    pub(crate) fn no_empty_window(&self) -> bool {
        (0..self.oh).all(|o| !Self::span(o, self.ph, self.sh, self.pt, self.h).is_empty())
            && (0..self.ow).all(|o| !Self::span(o, self.pw, self.sw, self.pl, self.w).is_empty())
    }
    /// Image rows (or columns) covered by window `o` of size `k`, stride `s`, padding `p`.
    fn span(o: usize, k: usize, s: usize, p: usize, size: usize) -> std::ops::Range<usize> {
        let start = (o * s).saturating_sub(p);
        let end = (o * s + k).saturating_sub(p).min(size);
        start..end.max(start)
    }
    /// For output `(oy, ox)` of one image, channel by channel, the window's largest value and
    /// the flat index of its first occurrence (`u32::MAX` for an empty window); with `BIAS`, of
    /// the values plus `bias` (one per channel). Branch-free selects over the channels, so that
    /// the loop vectorizes; inlined into the callers compiled for AVX-512 and AVX2.
    ///
    /// `best` and `at` may be uninitialised: every value is written before it is read.
    #[inline(always)]
    fn argmax<const BIAS: bool>(
        &self,
        img: &[f32],
        bias: &[f32],
        oy: usize,
        ox: usize,
        best: &mut [MaybeUninit<f32>],
        at: &mut [MaybeUninit<u32>],
    ) {
        let rows = Self::span(oy, self.ph, self.sh, self.pt, self.h);
        let cols = Self::span(ox, self.pw, self.sw, self.pl, self.w);
        if rows.is_empty() || cols.is_empty() {
            best.fill(MaybeUninit::new(f32::NEG_INFINITY));
            at.fill(MaybeUninit::new(u32::MAX));
            return;
        }
        let first = (rows.start * self.w + cols.start) * self.c;
        if BIAS {
            for ((d, &v), &b) in best.iter_mut().zip(&img[first..first + self.c]).zip(bias) {
                d.write(v + b);
            }
        } else {
            best.write_copy_of_slice(&img[first..first + self.c]);
        }
        for (ch, a) in at.iter_mut().enumerate() {
            a.write((first + ch) as u32);
        }
        // SAFETY: both were written in full just above (`best` has `c` values, as `at`).
        let (best, at) = unsafe {
            (
                &mut *(best as *mut [MaybeUninit<f32>] as *mut [f32]),
                &mut *(at as *mut [MaybeUninit<u32>] as *mut [u32]),
            )
        };
        for y in rows {
            for x in cols.clone() {
                let base = (y * self.w + x) * self.c;
                take_larger::<BIAS>(&img[base..base + self.c], bias, base as u32, best, at);
            }
        }
    }
}

/// Where `vals` (plus `bias` with `BIAS`; at flat indices `base..`) exceed `best`, takes them and
/// their indices (`>` keeps the first of tied maxima).
#[inline(always)]
fn take_larger<const BIAS: bool>(
    vals: &[f32],
    bias: &[f32],
    base: u32,
    best: &mut [f32],
    at: &mut [u32],
) {
    let n = vals.len().min(best.len()).min(at.len());
    let (vals, best, at) = (&vals[..n], &mut best[..n], &mut at[..n]);
    let bias = if BIAS { &bias[..n] } else { &[][..] };
    for ch in 0..n {
        let v = if BIAS { vals[ch] + bias[ch] } else { vals[ch] };
        let take = v > best[ch];
        best[ch] = if take { v } else { best[ch] };
        at[ch] = if take { base + ch as u32 } else { at[ch] };
    }
}

/// Whether every window is 2x2, every 2 pixels, inside the image (Keras's default
/// `MaxPooling2D((2, 2))` with "valid" padding, or "same" on even sizes).
fn plain_2x2(g: &PoolGeometry) -> bool {
    (g.ph, g.pw, g.sh, g.sw, g.pt, g.pl) == (2, 2, 2, 2, 0, 0) && 2 * g.oh <= g.h && 2 * g.ow <= g.w
}

/// [`pool_image`] (with `BIAS`, [`pool_image_biased`]) for [`plain_2x2`] windows: the four
/// values of each channel compared in registers and the result stored once, rather than four
/// passes over the running maxima (a third of the time of the general loop).
#[inline(always)]
fn pool_2x2<const BIAS: bool>(
    g: &PoolGeometry,
    img: &[f32],
    bias: &[f32],
    y: &mut [MaybeUninit<f32>],
    at: &mut [MaybeUninit<u32>],
) {
    let (c, row) = (g.c, g.w * g.c);
    let bias = if BIAS { &bias[..c] } else { &[][..] };
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let o = (oy * g.ow + ox) * c;
            let b00 = (2 * oy * g.w + 2 * ox) * c;
            let cell = |b: usize| &img[b..b + c];
            let (v00, v01, v10, v11) = (
                cell(b00),
                cell(b00 + c),
                cell(b00 + row),
                cell(b00 + row + c),
            );
            let (yo, ao) = (&mut y[o..o + c], &mut at[o..o + c]);
            // Indices in u32 lanes (16 per AVX-512 register, not 8 of usize).
            let (i00, i01, i10, i11) = (
                b00 as u32,
                (b00 + c) as u32,
                (b00 + row) as u32,
                (b00 + row + c) as u32,
            );
            for ch in 0..c {
                let add = |v: f32| if BIAS { v + bias[ch] } else { v };
                let chu = ch as u32;
                let (mut best, mut idx) = (add(v00[ch]), i00 + chu);
                for (v, b) in [(v01[ch], i01), (v10[ch], i10), (v11[ch], i11)] {
                    let v = add(v);
                    let take = v > best;
                    best = if take { v } else { best };
                    idx = if take { b + chu } else { idx };
                }
                yo[ch].write(best);
                ao[ch].write(idx);
            }
        }
    }
}

/// Forward max pooling. The forward pass keeps, per output, where its maximum was (a `u32` per
/// output value), so that the backward pass is a scatter rather than a second search.
pub(crate) struct MaxPool {
    g: PoolGeometry,
    argmax: std::sync::Mutex<Option<std::sync::Arc<Vec<u32>>>>,
}

impl MaxPool {
    pub(crate) fn new(g: PoolGeometry) -> Self {
        Self {
            g,
            argmax: std::sync::Mutex::new(None),
        }
    }
}

/// Its gradient: inputs `(x, gy)`, output shaped like `x`; searches the windows again.
struct MaxPoolGrad(PoolGeometry);

/// Its gradient from the kept positions: input `gy`, output `(n, h, w, c)`.
pub(crate) struct MaxPoolScatter {
    pub g: PoolGeometry,
    /// Shared with the forward op that found them (not copied per backward pass).
    pub argmax: std::sync::Arc<Vec<u32>>,
}

/// Max pooling of the `(n, h, w, c)` images `x` (checked by the caller): the maxima and, per
/// output, the flat index within its image of the first largest input.
pub(crate) fn max_pool_forward(g: &PoolGeometry, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let g = *g;
    let (img_len, out_len) = (g.h * g.w * g.c, g.oh * g.ow * g.c);
    let total = g.n * out_len;
    if img_len == 0 || out_len == 0 {
        // No channels (or no pixels): empty outputs.
        return (vec![0f32; total], vec![0u32; total]);
    }
    // Written once by `argmax`, never zeroed first.
    let (mut y, mut at) = (Vec::with_capacity(total), Vec::with_capacity(total));
    y.spare_capacity_mut()[..total]
        .par_chunks_mut(out_len)
        .zip(at.spare_capacity_mut()[..total].par_chunks_mut(out_len))
        .zip(x.par_chunks(img_len))
        .for_each(|((y, at), img)| pool_image(&g, img, y, at));
    // SAFETY: the images' outputs cover all `total` values, and `argmax` wrote each of them.
    unsafe {
        y.set_len(total);
        at.set_len(total);
    }
    (y, at)
}

/// Max pooling of one `(h, w, c)` image: its `(oh, ow, c)` maxima and their flat indices within
/// the image, written into `y` and `at` (which may be uninitialised). Compiled for AVX-512 and
/// AVX2 too, picked once per image at run time (the per-channel selects vectorize there).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn pool_image(
    g: &PoolGeometry,
    img: &[f32],
    y: &mut [MaybeUninit<f32>],
    at: &mut [MaybeUninit<u32>],
) {
    pool_windows::<false>(g, img, &[], y, at);
}

/// [`pool_image`] of `img + bias` (`bias` one value per channel), without writing the sums.
///
/// Why: a convolution followed by a ReLU and a max pooling needs the ReLU only of the maxima
/// (ReLU is monotone: the largest `relu(v + b)` is `relu` of the largest `v + b`, the same bits,
/// and the first of tied maxima is the same one wherever the gradient is not zero), so the bias
/// is added inside the comparison and the activation runs on a quarter of the values (2x2
/// windows), rather than a pass of bias and activation over the whole convolution output first.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn pool_image_biased(
    g: &PoolGeometry,
    img: &[f32],
    bias: &[f32],
    y: &mut [MaybeUninit<f32>],
    at: &mut [MaybeUninit<u32>],
) {
    if bias.len() != g.c {
        // Not for this image's channels: the caller checked; fail safe with empty windows.
        y.fill(MaybeUninit::new(f32::NEG_INFINITY));
        at.fill(MaybeUninit::new(u32::MAX));
        return;
    }
    pool_windows::<true>(g, img, bias, y, at);
}

/// The body of [`pool_image`] and [`pool_image_biased`], inlined into each (and so compiled
/// for each of their targets).
#[inline(always)]
fn pool_windows<const BIAS: bool>(
    g: &PoolGeometry,
    img: &[f32],
    bias: &[f32],
    y: &mut [MaybeUninit<f32>],
    at: &mut [MaybeUninit<u32>],
) {
    if plain_2x2(g) {
        return pool_2x2::<BIAS>(g, img, bias, y, at);
    }
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let o = (oy * g.ow + ox) * g.c;
            g.argmax::<BIAS>(img, bias, oy, ox, &mut y[o..o + g.c], &mut at[o..o + g.c]);
        }
    }
}

/// The input gradient of a max pooling: each output's gradient `gy[i]` added at its kept argmax.
pub(crate) fn max_pool_scatter(g: &PoolGeometry, argmax: &[u32], gy: &[f32]) -> Vec<f32> {
    let (img_len, out_len) = (g.h * g.w * g.c, g.oh * g.ow * g.c);
    if img_len == 0 || out_len == 0 {
        return vec![0f32; g.n * img_len];
    }
    if g.sh >= g.ph && g.sw >= g.pw {
        return scatter_disjoint(g, argmax, gy);
    }
    let mut gx = vec![0f32; g.n * img_len];
    gx.par_chunks_mut(img_len)
        .zip(gy.par_chunks(out_len).zip(argmax.par_chunks(out_len)))
        .for_each(|(gx, (gy, at))| {
            for (&i, &d) in at.iter().zip(gy) {
                if i != u32::MAX {
                    gx[i as usize] += d;
                }
            }
        });
    gx
}

/// [`max_pool_scatter`] for windows that never overlap (stride at least the window, the usual
/// case): every input lies in at most one window, so each gradient value is written exactly once,
/// in memory order (its window's gradient where it is that window's argmax, else zero). No zeroed
/// buffer first, no scattered adds: one streaming pass over the output.
fn scatter_disjoint(g: &PoolGeometry, argmax: &[u32], gy: &[f32]) -> Vec<f32> {
    let g = *g;
    let (img_len, out_len) = (g.h * g.w * g.c, g.oh * g.ow * g.c);
    let total = g.n * img_len;
    let mut gx: Vec<f32> = Vec::with_capacity(total);
    gx.spare_capacity_mut()[..total]
        .par_chunks_mut(img_len)
        .zip(gy.par_chunks(out_len).zip(argmax.par_chunks(out_len)))
        .for_each(|(img, (gy, at))| scatter_image(&g, img, gy, at));
    // SAFETY: `scatter_image` wrote every value of every image (each row's cells, each cell's
    // channels, or a zero fill), so the first `total` values are initialized.
    unsafe { gx.set_len(total) };
    gx
}

/// One image of [`scatter_disjoint`]. Compiled for AVX-512 and AVX2 too, picked once per image at
/// run time (the per-channel selects vectorize there).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn scatter_image(
    g: &PoolGeometry,
    img: &mut [std::mem::MaybeUninit<f32>],
    gy: &[f32],
    at: &[u32],
) {
    scatter_body::<false>(g, img, gy, at, &mut []);
}

/// [`scatter_image`], also adding to `sums[ch]` the gradients placed in channel `ch` (`sums` one
/// value per channel): the bias gradient of a convolution under the pooling, from the values
/// that this pass reads anyway (every kept maximum is placed exactly once, at its argmax; a
/// maximum without one, `u32::MAX`, is placed nowhere).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(crate) fn scatter_image_summed(
    g: &PoolGeometry,
    img: &mut [std::mem::MaybeUninit<f32>],
    gy: &[f32],
    at: &[u32],
    sums: &mut [f32],
) {
    if sums.len() != g.c {
        // Not one sum per channel: the caller checked; place without summing.
        return scatter_body::<false>(g, img, gy, at, &mut []);
    }
    scatter_body::<true>(g, img, gy, at, sums);
}

/// The body of [`scatter_image`] and [`scatter_image_summed`], inlined into each (and so compiled
/// for each of their targets).
#[inline(always)]
fn scatter_body<const SUM: bool>(
    g: &PoolGeometry,
    img: &mut [std::mem::MaybeUninit<f32>],
    gy: &[f32],
    at: &[u32],
    sums: &mut [f32],
) {
    let row_len = g.w * g.c;
    // Window and offset of the first row and column, then counted along (no division per cell).
    let (mut oy, mut ky) = (g.pt / g.sh, g.pt % g.sh);
    let (ox0, kx0) = (g.pl / g.sw, g.pl % g.sw);
    for (y, row) in img.chunks_mut(row_len).enumerate() {
        if oy >= g.oh || ky >= g.ph {
            row.fill(std::mem::MaybeUninit::new(0.0));
        } else {
            let (mut ox, mut kx) = (ox0, kx0);
            for (x, cell) in row.chunks_mut(g.c).enumerate() {
                if ox >= g.ow || kx >= g.pw {
                    cell.fill(std::mem::MaybeUninit::new(0.0));
                } else {
                    let o = (oy * g.ow + ox) * g.c;
                    let base = ((y * g.w + x) * g.c) as u32;
                    place::<SUM>(cell, &gy[o..o + g.c], &at[o..o + g.c], base, sums);
                }
                kx += 1;
                if kx == g.sw {
                    (ox, kx) = (ox + 1, 0);
                }
            }
        }
        ky += 1;
        if ky == g.sh {
            (oy, ky) = (oy + 1, 0);
        }
    }
}

/// `dst[ch] = gy[ch]` where channel `ch`'s maximum sits at flat index `base + ch`, else `0`; with
/// `SUM`, also `sums[ch] += dst[ch]`.
#[inline(always)]
fn place<const SUM: bool>(
    dst: &mut [std::mem::MaybeUninit<f32>],
    gy: &[f32],
    at: &[u32],
    base: u32,
    sums: &mut [f32],
) {
    let mut n = dst.len().min(gy.len()).min(at.len());
    if SUM {
        n = n.min(sums.len());
    }
    let (dst, gy, at) = (&mut dst[..n], &gy[..n], &at[..n]);
    for ch in 0..n {
        let hit = at[ch] == base + ch as u32;
        let v = if hit { gy[ch] } else { 0.0 };
        dst[ch] = std::mem::MaybeUninit::new(v);
        if SUM {
            sums[ch] += v;
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max_pool_nhwc"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.g;
        let x = super::cpu_f32(s, l, "max pooling input")?;
        let img_len = g.h * g.w * g.c;
        if x.len() != g.n * img_len {
            candle_core::bail!("max pooling: {} values for {g:?}", x.len())
        }
        if img_len > u32::MAX as usize {
            candle_core::bail!("max pooling: images of {img_len} values are too large")
        }
        let (y, at) = max_pool_forward(&g, x);
        if let Ok(mut slot) = self.argmax.lock() {
            *slot = Some(std::sync::Arc::new(at));
        }
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.oh, g.ow, g.c))))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let gy = gy.contiguous()?;
        let kept = self.argmax.lock().ok().and_then(|s| s.clone());
        Ok(Some(match kept {
            Some(argmax) => gy.apply_op1_no_bwd(&MaxPoolScatter { g: self.g, argmax })?,
            None => x.apply_op2_no_bwd(&gy, &MaxPoolGrad(self.g))?,
        }))
    }
}

impl CustomOp1 for MaxPoolScatter {
    fn name(&self) -> &'static str {
        "max_pool_nhwc_scatter"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.g;
        let gy = super::cpu_f32(s, l, "max pooling output gradient")?;
        let out_len = g.oh * g.ow * g.c;
        if gy.len() != g.n * out_len || self.argmax.len() != gy.len() {
            candle_core::bail!("max pooling gradient: {} gradients for {g:?}", gy.len())
        }
        let gx = max_pool_scatter(&g, &self.argmax, gy);
        Ok((CpuStorage::F32(gx), Shape::from((g.n, g.h, g.w, g.c))))
    }
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max_pool_nhwc_grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = super::cpu_f32(s1, l1, "max pooling input")?;
        let gy = super::cpu_f32(s2, l2, "max pooling output gradient")?;
        let (img_len, out_len) = (g.h * g.w * g.c, g.oh * g.ow * g.c);
        if x.len() != g.n * img_len || gy.len() != g.n * out_len {
            candle_core::bail!(
                "max pooling gradient: {} inputs and {} gradients for {g:?}",
                x.len(),
                gy.len()
            )
        }
        if img_len > u32::MAX as usize {
            candle_core::bail!("max pooling gradient: images of {img_len} values are too large")
        }
        let mut gx = vec![0f32; x.len()];
        if img_len == 0 || out_len == 0 {
            return Ok((CpuStorage::F32(gx), Shape::from((g.n, g.h, g.w, g.c))));
        }
        gx.par_chunks_mut(img_len)
            .zip(x.par_chunks(img_len).zip(gy.par_chunks(out_len)))
            .for_each(|(gx, (img, gy))| {
                let (mut best, mut at) = (
                    vec![MaybeUninit::new(0f32); g.c],
                    vec![MaybeUninit::new(0u32); g.c],
                );
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        g.argmax::<false>(img, &[], oy, ox, &mut best, &mut at);
                        let o = (oy * g.ow + ox) * g.c;
                        for (i, &d) in at.iter().zip(&gy[o..o + g.c]) {
                            // SAFETY: initialised at creation (and rewritten by `argmax`).
                            let i = unsafe { i.assume_init() };
                            if i != u32::MAX {
                                gx[i as usize] += d;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// Global max pooling of `(n, p, c)` values (`p` positions per image, channels last): per image
/// and channel, the largest value over the positions. One pass forward; backward, one pass per
/// image that counts the tied maxima and one that places `gy / count` at each of them (the
/// gradient of TensorFlow's `reduce_max`, which Keras's `GlobalMaxPooling2D` uses). Built from
/// candle ops, the same layer was a max, a broadcast comparison, a sum and a `where`, each a
/// pass over the input and each with its own backward (about 3% of the GAN's step).
pub(crate) struct GlobalMax {
    pub n: usize,
    pub p: usize,
    pub c: usize,
}

/// [`GlobalMax`]'s gradient: inputs `(x, y, gy)`, output shaped like `x`.
struct GlobalMaxGrad {
    n: usize,
    p: usize,
    c: usize,
}

/// `best[ch] = max(best[ch], row[ch])`, a NaN anywhere giving NaN (as PyTorch's `amax`, so that a
/// diverging model shows). Branch-free selects, compiled for AVX-512 and AVX2 too.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn column_max(rows: &[f32], best: &mut [f32]) {
    let c = best.len();
    best.copy_from_slice(&rows[..c]);
    for row in rows[c..].chunks_exact(c) {
        for (b, &v) in best.iter_mut().zip(row) {
            *b = if v > *b || v.is_nan() { v } else { *b };
        }
    }
}

/// One image's gradient: `gx[i][ch] = gy[ch] / count[ch]` where `x[i][ch] == y[ch]` (`count` the
/// number of such positions), zero elsewhere.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn global_max_grad_image(x: &[f32], y: &[f32], gy: &[f32], share: &mut [f32], gx: &mut [f32]) {
    let c = y.len();
    share.fill(0.0);
    for row in x.chunks_exact(c) {
        for ((s, &v), &m) in share.iter_mut().zip(row).zip(y) {
            *s += if v == m { 1.0 } else { 0.0 };
        }
    }
    for (s, &g) in share.iter_mut().zip(gy) {
        // No tied position (a NaN maximum) gives no gradient.
        *s = if *s > 0.0 { g / *s } else { 0.0 };
    }
    for (out, row) in gx.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        for (((o, &v), &m), &s) in out.iter_mut().zip(row).zip(y).zip(share.iter()) {
            *o = if v == m { s } else { 0.0 };
        }
    }
}

impl CustomOp1 for GlobalMax {
    fn name(&self) -> &'static str {
        "global_max_nhwc"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, p, c) = (self.n, self.p, self.c);
        let x = super::cpu_f32(s, l, "global max pooling input")?;
        if x.len() != n * p * c || p == 0 {
            candle_core::bail!(
                "global max pooling: {} values for {n} images of {p} positions × {c} channels",
                x.len()
            )
        }
        let mut y = vec![0f32; n * c];
        if c > 0 {
            y.par_chunks_mut(c)
                .zip(x.par_chunks(p * c))
                .for_each(|(best, img)| column_max(img, best));
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c))))
    }
    fn bwd(&self, x: &Tensor, y: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = GlobalMaxGrad {
            n: self.n,
            p: self.p,
            c: self.c,
        };
        Ok(Some(x.apply_op3_no_bwd(y, &gy.contiguous()?, &grad)?))
    }
}

impl candle_core::CustomOp3 for GlobalMaxGrad {
    fn name(&self) -> &'static str {
        "global_max_nhwc_grad"
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
        let (n, p, c) = (self.n, self.p, self.c);
        let x = super::cpu_f32(s1, l1, "global max pooling input")?;
        let y = super::cpu_f32(s2, l2, "global max pooling output")?;
        let gy = super::cpu_f32(s3, l3, "global max pooling output gradient")?;
        if x.len() != n * p * c || y.len() != n * c || gy.len() != n * c {
            candle_core::bail!(
                "global max pooling gradient: {} inputs, {} outputs and {} gradients for {n} \
                 images of {p} positions × {c} channels",
                x.len(),
                y.len(),
                gy.len()
            )
        }
        let mut gx = vec![0f32; x.len()];
        if c > 0 && p > 0 {
            gx.par_chunks_mut(p * c)
                .zip(x.par_chunks(p * c))
                .zip(y.par_chunks(c).zip(gy.par_chunks(c)))
                .for_each_init(
                    || vec![0f32; c],
                    |share, ((gx, x), (y, gy))| global_max_grad_image(x, y, gy, share, gx),
                );
        }
        Ok((CpuStorage::F32(gx), l1.shape().clone()))
    }
}

/// The mean over the positions of each image of `(n, p, c)` channels-last values: global
/// average pooling, one pass each way. candle's `mean(1)` over the middle axis is a strided
/// reduction (5% of a transformer block's step, with its backward's broadcast and zero-and-add).
pub(crate) struct GlobalMean {
    pub n: usize,
    pub p: usize,
    pub c: usize,
}

/// [`GlobalMean`]'s gradient: `gy (n, c)` → `(n, p, c)`, `gy / p` at every position.
struct GlobalMeanGrad {
    n: usize,
    p: usize,
    c: usize,
}

impl CustomOp1 for GlobalMean {
    fn name(&self) -> &'static str {
        "global_mean_nhwc"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, p, c) = (self.n, self.p, self.c);
        let x = super::cpu_f32(s, l, "global average pooling input")?;
        if x.len() != n * p * c || p == 0 {
            candle_core::bail!(
                "global average pooling: {} values for {n} images of {p} positions × {c} channels",
                x.len()
            )
        }
        // As candle's mean: the sum times the reciprocal of the count.
        let inv = (1.0 / p as f64) as f32;
        let mut y = vec![0f32; n * c];
        if c > 0 {
            let one = |(out, img): (&mut [f32], &[f32])| {
                for row in img.chunks_exact(c) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o += v;
                    }
                }
                for o in out.iter_mut() {
                    *o *= inv;
                }
            };
            super::zip_chunks(&mut y, c, x, p * c, one);
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c))))
    }
    fn bwd(&self, x: &Tensor, _y: &Tensor, gy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = GlobalMeanGrad {
            n: self.n,
            p: self.p,
            c: self.c,
        };
        let gx = gy.contiguous()?.apply_op1_no_bwd(&grad)?;
        crate::tape::route(x, Some(gx))
    }
}

impl CustomOp1 for GlobalMeanGrad {
    fn name(&self) -> &'static str {
        "global_mean_nhwc_grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, p, c) = (self.n, self.p, self.c);
        let gy = super::cpu_f32(s, l, "global average pooling output gradient")?;
        if gy.len() != n * c {
            candle_core::bail!(
                "global average pooling gradient: {} values for {n} images of {c} channels",
                gy.len()
            )
        }
        let inv = (1.0 / p as f64) as f32;
        let mut gx = vec![0f32; n * p * c];
        if c > 0 && p > 0 {
            let one = |(out, g): (&mut [f32], &[f32])| {
                for row in out.chunks_exact_mut(c) {
                    for (o, &v) in row.iter_mut().zip(g) {
                        *o = v * inv;
                    }
                }
            };
            super::zip_chunks(&mut gx, p * c, gy, c, one);
        }
        Ok((CpuStorage::F32(gx), Shape::from((n, p, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::{fixed_randn, max_rel};
    use crate::tape::Variable;
    use candle_core::Device;

    #[test]
    fn global_mean_matches_candle_mean_and_its_gradient() {
        let dev = Device::Cpu;
        for (n, p, c) in [(1, 1, 1), (3, 5, 2), (32, 64, 64), (2, 300, 70)] {
            let x = Variable::new("x", &fixed_randn(1.0, (n, p, c), &dev).unwrap(), true).unwrap();
            let ours = x.as_tensor().apply_op1(GlobalMean { n, p, c }).unwrap();
            let theirs = x.as_tensor().mean(1).unwrap();
            assert!(max_rel(&ours, &theirs) < 1e-6, "{n}x{p}x{c}");
            let r = fixed_randn(1.0, (n, c), &dev).unwrap();
            let g1 =
                GradientTape::gradient(&(&ours * &r).unwrap(), std::slice::from_ref(&x)).unwrap();
            let g2 =
                GradientTape::gradient(&(&theirs * &r).unwrap(), std::slice::from_ref(&x)).unwrap();
            assert!(max_rel(&g1[0], &g2[0]) < 1e-6, "{n}x{p}x{c} gradient");
        }
    }
}
