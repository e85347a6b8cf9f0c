//! Channels-last convolutions on the CPU as candle custom ops with backward: patches (`im2col`)
//! and one matrix product per chunk of images, with the gradients written the same way.
//!
//! Why our own: candle's CPU `conv_transpose2d` is a direct loop without a matrix product, and
//! `conv2d`'s input gradient goes through it (about 80% of the guide's GAN step). Materializing all
//! patches at once instead would take 1.2 GB for the generator's last 7x7 convolution at batch 64,
//! so patches are built per chunk of images (at most [`CHUNK_BYTES`]) and never kept for backward.
//! Keras's kernel layout `(kh, kw, in, out)` is used as a `(kh*kw*in, out)` matrix without copies.
//!
//! Three ops, each the backward of the others:
//! - [`Conv`]: `x (n,h,w,c)`, `w (K, f)` → `y (n*oh*ow, f)` = patches(x) · w
//! - [`ConvData`]: `gy (n*oh*ow, f)`, `w (K, f)` → image `(n,h,w,c)` = scatter(gy · wᵀ)
//! - [`ConvFilter`]: `x (n,h,w,c)`, `gy (n*oh*ow, f)` → `(K, f)` = patches(x)ᵀ · gy
//!
//! A transposed convolution is [`ConvData`] with the roles of its arguments as data.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Upper bound of the patch buffer built at once when a batch is split into a few large chunks
/// (each op parallel inside).
pub(crate) const CHUNK_BYTES: usize = 16 << 20;

/// Upper bound of a block's buffer when a batch is split into many small blocks, one thread each:
/// patches that stay in a core's L2 cache between being written and being multiplied.
const BLOCK_BYTES: usize = 512 << 10;

/// Largest kernel (bytes) for which blocks run one per thread: every block packs the whole kernel
/// for its matrix product, which only pays while the kernel is small next to the block.
const BLOCK_KERNEL_BYTES: usize = 256 << 10;

/// Shapes of one convolution: an `(n, h, w, c)` image (without padding), a `(kh, kw)` kernel with
/// stride and dilation, the zero padding before the first row and column, and the `(oh, ow)`
/// grid of output positions. Output position `o` reads image coordinate
/// `o * stride + tap * dilation - pad` along each axis; coordinates outside the image are zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_t: usize,
    pub pad_l: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn patch_len(&self) -> usize {
        self.taps() * self.c
    }
    fn image_len(&self) -> usize {
        self.h * self.w * self.c
    }
    fn pixels(&self) -> usize {
        self.h * self.w
    }
    fn rows_per_image(&self) -> usize {
        self.oh * self.ow
    }
    /// Image coordinate read by output position `o` at tap `i` along an axis, if inside.
    #[inline(always)]
    fn src(&self, o: usize, i: usize, pad: usize, size: usize) -> Option<usize> {
        let p = (o * self.stride + i * self.dilation).checked_sub(pad)?;
        (p < size).then_some(p)
    }
    /// Output position whose tap `i` reads image coordinate `p` along an axis, if any.
    #[inline(always)]
    fn dst(&self, p: usize, i: usize, pad: usize, out: usize) -> Option<usize> {
        let q = (p + pad).checked_sub(i * self.dilation)?;
        if self.stride == 1 {
            return (q < out).then_some(q);
        }
        (q % self.stride == 0 && q / self.stride < out).then_some(q / self.stride)
    }
    /// Whether to multiply per input pixel and gather the taps afterwards (`kn2row`) rather than
    /// build patches per output position (`im2col`): whichever buffer is smaller. A convolution
    /// to few channels from many (the GAN's last layer: 128 → 1 with a 7x7 kernel) would
    /// otherwise copy every input value 49 times into a matrix product with one column.
    fn kn2row(&self, f: usize) -> bool {
        self.pixels() * f < self.rows_per_image() * self.c
    }
    /// Floats of the intermediate buffer (patches, or per-pixel products) per image.
    fn buffer_per_image(&self, f: usize) -> usize {
        if self.kn2row(f) {
            self.pixels() * self.taps() * f
        } else {
            self.rows_per_image() * self.patch_len()
        }
    }
    /// [`Geometry::plan`] for the kernel gradient, whose product packs no kernel (the kernel is its
    /// output, one sum per thread): blocks of a few images, one per thread, whenever there are
    /// images enough for every thread, whatever the kernel's size.
    fn filter_plan(&self, f: usize) -> (usize, bool) {
        let per_image = self.buffer_per_image(f).max(1) * 4;
        let threads = rayon::current_num_threads();
        if threads > 1 && self.n >= 2 * threads {
            let per = (BLOCK_BYTES / per_image).clamp(1, self.n.div_ceil(2 * threads));
            (per, true)
        } else {
            self.plan(f)
        }
    }
    /// How a batch is split: `(images per part, whether parts run in parallel)`. With enough
    /// images and a small kernel, blocks of a few images run one per thread, each op inside them
    /// sequential, so that a block's patches are multiplied while still in cache and the output
    /// gets its epilogue right after; otherwise large chunks run one after the other, each op
    /// parallel inside (few images, or kernels too large to pack once per block).
    fn plan(&self, f: usize) -> (usize, bool) {
        let per_image = self.buffer_per_image(f).max(1) * 4;
        let threads = rayon::current_num_threads();
        if threads > 1
            && self.n >= 2 * threads
            && self.patch_len() * f * 4 <= BLOCK_KERNEL_BYTES
            && per_image <= BLOCK_BYTES
        {
            let per = (BLOCK_BYTES / per_image).clamp(1, self.n.div_ceil(2 * threads));
            (per, true)
        } else {
            ((CHUNK_BYTES / per_image).clamp(1, self.n.max(1)), false)
        }
    }
}

/// `f(index, chunk)` over the `size`-long chunks of `dst`, on rayon's threads when `par`.
fn chunks_each<T: Send>(
    dst: &mut [T],
    size: usize,
    par: bool,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if size == 0 {
        // Zero-sized parts (no channels): nothing to compute.
        return;
    }
    if par {
        dst.par_chunks_mut(size)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        dst.chunks_mut(size).enumerate().for_each(|(i, c)| f(i, c));
    }
}

thread_local! {
    /// The patch buffer, kept between calls: a fresh zeroed one per call cost a 16 MiB memset.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of at least `len` floats (contents unspecified:
/// every user writes what it reads).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                *buf = vec![0f32; len];
            }
            f(&mut buf[..len])
        }
        // Re-entered (not expected): use a buffer of its own.
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// `dst.copy_from_slice(src)`, inline for short runs (a call to `memcpy` per three floats
/// dominated the patches of one-channel images), as fixed-size moves for the common kernel rows
/// of one-channel images (3, 5 or 7 values; a loop per run cost about 8% of the convnet's step).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        dst[..N].copy_from_slice(&src[..N]);
    }
    match dst.len() {
        3 => fixed::<3>(dst, src),
        5 => fixed::<5>(dst, src),
        7 => fixed::<7>(dst, src),
        0..=16 => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        // Kernel rows of a few dozen channels (3 × 32 in the convnet's second layer): moves of
        // 16 values inline rather than a `memcpy` call per run (longer runs: `memcpy` did as
        // well or better).
        17..=128 => {
            let n = dst.len().min(src.len());
            let (dst, src) = (&mut dst[..n], &src[..n]);
            let mut d = dst.chunks_exact_mut(16);
            let mut s = src.chunks_exact(16);
            for (d, s) in (&mut d).zip(&mut s) {
                fixed::<16>(d, s);
            }
            for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
                *d = *s;
            }
        }
        _ => dst.copy_from_slice(src),
    }
}

/// Patches of `images` (a chunk of whole images) into `dst` (rows × K), zeros outside the image.
fn im2col(g: &Geometry, images: &[f32], dst: &mut [f32], par: bool) {
    chunks_each(dst, g.patch_len() * g.ow, par, |line, out| {
        im2col_line(g, images, line, out)
    });
}

/// [`im2col`] for one output row (`line` = image × output row). Compiled for AVX-512 and AVX2
/// too, picked at run time: the copies of kernel rows become whole-register moves there (the
/// baseline's 16-byte moves made the patches about a tenth of the convnet's step).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn im2col_line(g: &Geometry, images: &[f32], line: usize, out: &mut [f32]) {
    let k = g.patch_len();
    let c = g.c;
    let (n, oy) = (line / g.oh, line % g.oh);
    for (ox, out) in out.chunks_exact_mut(k).enumerate() {
        // Dilation 1 with the whole kernel row inside the image: each kernel row is one
        // contiguous run of kw*c values.
        let x0 = (ox * g.stride).checked_sub(g.pad_l);
        if let Some(x0) = x0
            && g.dilation == 1
            && x0 + g.kw <= g.w
        {
            let run = g.kw * c;
            for i in 0..g.kh {
                let d = i * run;
                match g.src(oy, i, g.pad_t, g.h) {
                    Some(y) => {
                        let s = ((n * g.h + y) * g.w + x0) * c;
                        copy_short(&mut out[d..d + run], &images[s..s + run]);
                    }
                    None => out[d..d + run].fill(0.0),
                }
            }
            continue;
        }
        for i in 0..g.kh {
            let y = g.src(oy, i, g.pad_t, g.h);
            for j in 0..g.kw {
                let d = (i * g.kw + j) * c;
                match (y, g.src(ox, j, g.pad_l, g.w)) {
                    (Some(y), Some(x)) => {
                        let s = ((n * g.h + y) * g.w + x) * c;
                        copy_short(&mut out[d..d + c], &images[s..s + c]);
                    }
                    _ => out[d..d + c].fill(0.0),
                }
            }
        }
    }
}

/// Patches of `images` (a chunk of whole images) as K rows of `n·oh·ow` values into `dst`: the
/// transpose of [`im2col`]'s layout, zeros outside the image.
///
/// Why: with one input channel (the first layer of an image model), [`im2col`] copies runs of
/// `kw` values (3 for a 3x3 kernel) per kernel row and output position; here each kernel tap
/// reads a whole output row's worth of one image row at once (a plain copy at stride 1), and the
/// products read the patches transposed, which the packing of the product takes as readily.
fn im2col_t(g: &Geometry, images: &[f32], dst: &mut [f32], par: bool) {
    let rows = g.n * g.rows_per_image();
    let (c, row_len) = (g.c, g.w * g.c);
    chunks_each(&mut dst[..g.patch_len() * rows], rows, par, |kk, out| {
        let (tap, ch) = (kk / c, kk % c);
        let (i, j) = (tap / g.kw, tap % g.kw);
        // Output columns whose tap `j` falls inside the image: `lo..hi`.
        let lo = (0..g.ow)
            .find(|&ox| g.src(ox, j, g.pad_l, g.w).is_some())
            .unwrap_or(g.ow);
        let hi = (lo..g.ow)
            .rev()
            .find(|&ox| g.src(ox, j, g.pad_l, g.w).is_some())
            .map_or(lo, |ox| ox + 1);
        for (line, d) in out.chunks_exact_mut(g.ow).enumerate() {
            let (n, oy) = (line / g.oh, line % g.oh);
            let Some(y) = g.src(oy, i, g.pad_t, g.h) else {
                d.fill(0.0);
                continue;
            };
            d[..lo].fill(0.0);
            d[hi..].fill(0.0);
            if lo == hi {
                continue;
            }
            let row = &images[(n * g.h + y) * row_len..(n * g.h + y + 1) * row_len];
            let x0 = lo * g.stride + j * g.dilation - g.pad_l;
            if g.stride == 1 && c == 1 {
                d[lo..hi].copy_from_slice(&row[x0..x0 + hi - lo]);
            } else {
                for (t, v) in d[lo..hi].iter_mut().enumerate() {
                    *v = row[(x0 + t * g.stride) * c + ch];
                }
            }
        }
    });
}

/// Whether the patches are built K-major ([`im2col_t`]): single-channel inputs.
fn k_major(g: &Geometry) -> bool {
    g.c == 1
}

/// The patches of a chunk of images into `dst`, in the layout [`k_major`] picks; returns whether
/// they are K-major (then the products read them transposed).
fn patches(g: &Geometry, images: &[f32], dst: &mut [f32], par: bool) -> bool {
    if k_major(g) {
        im2col_t(g, images, dst, par);
        true
    } else {
        im2col(g, images, dst, par);
        false
    }
}

/// A pass over finished output values, in place.
pub(crate) type EpilogueFn<'a> = dyn Fn(&mut [f32]) + Sync + 'a;
/// Work done on a finished part of an op's output while it is still in cache (the fused bias and
/// activation): called on whole images or whole chunks of output rows.
pub(crate) type Epilogue<'a> = Option<&'a EpilogueFn<'a>>;

/// Adds patch values `cols` (rows × K) back onto `images` (a chunk of whole images), then runs
/// `epi` on each finished image.
///
/// `images` may be uninitialised: each image is zeroed just before its sums (while it is in
/// cache), not the whole output up front.
fn col2im(g: &Geometry, cols: &[f32], images: &mut [MaybeUninit<f32>], epi: Epilogue, par: bool) {
    let k = g.patch_len();
    chunks_each(images, g.image_len(), par, |n, img| {
        let patches = &cols[n * g.rows_per_image() * k..(n + 1) * g.rows_per_image() * k];
        let len = img.len();
        // SAFETY: the image's `len` floats are zeroed before the slice over them is made.
        let img = unsafe {
            let p = img.as_mut_ptr().cast::<f32>();
            std::ptr::write_bytes(p, 0, len);
            std::slice::from_raw_parts_mut(p, len)
        };
        col2im_image(g, patches, img);
        if let Some(e) = epi {
            e(img);
        }
    });
}

/// [`col2im`] for one image and its patches. Compiled for AVX-512 and AVX2 too, picked once per
/// image at run time: the adds over channels vectorize there.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn col2im_image(g: &Geometry, patches: &[f32], img: &mut [f32]) {
    let (k, c) = (g.patch_len(), g.c);
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let row = oy * g.ow + ox;
            let patch = &patches[row * k..(row + 1) * k];
            // Dilation 1 with the whole kernel row inside the image: one run of kw·c values (up
            // to 128 of them: one loop of adds rather than kw short ones; for longer runs the
            // loops per tap did as well).
            let x0 = (ox * g.stride).checked_sub(g.pad_l);
            let whole_rows =
                g.dilation == 1 && g.kw * c <= 128 && x0.is_some_and(|x0| x0 + g.kw <= g.w);
            for i in 0..g.kh {
                let Some(y) = g.src(oy, i, g.pad_t, g.h) else {
                    continue;
                };
                if let (true, Some(x0)) = (whole_rows, x0) {
                    let (d, s, run) = ((y * g.w + x0) * c, i * g.kw * c, g.kw * c);
                    for (a, b) in img[d..d + run].iter_mut().zip(&patch[s..s + run]) {
                        *a += *b;
                    }
                    continue;
                }
                for j in 0..g.kw {
                    let Some(x) = g.src(ox, j, g.pad_l, g.w) else {
                        continue;
                    };
                    let d = (y * g.w + x) * c;
                    let s = (i * g.kw + j) * c;
                    for (a, b) in img[d..d + c].iter_mut().zip(&patch[s..s + c]) {
                        *a += *b;
                    }
                }
            }
        }
    }
}

/// `kn2row`'s second half: `y (rows × f)` = for each output position, the sum over taps of the
/// per-pixel products `z (pixels × taps·f)` at the pixel that tap reads.
fn gather_taps(g: &Geometry, f: usize, z: &[f32], y: &mut [f32], par: bool) {
    chunks_each(y, f * g.ow, par, |line, out| {
        gather_line(g, f, z, line, out)
    });
}

/// [`gather_taps`] for one line of outputs. Compiled for AVX-512 and AVX2 too, picked once per
/// line at run time.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn gather_line(g: &Geometry, f: usize, z: &[f32], line: usize, out: &mut [f32]) {
    let tf = g.taps() * f;
    {
        let (n, oy) = (line / g.oh, line % g.oh);
        if f == 1 {
            // One value per output (the GAN's 128 → 1 convolution): a running sum in a register.
            for (ox, out) in out.iter_mut().enumerate() {
                // Stride and dilation 1 with the kernel row inside the image: tap `j` of row `i`
                // is `tf + 1` values after tap `j - 1` (next pixel, next tap), no bounds decision
                // per value (the same sums in the same order).
                let x0 = ox.checked_sub(g.pad_l);
                let whole =
                    g.stride == 1 && g.dilation == 1 && x0.is_some_and(|x0| x0 + g.kw <= g.w);
                let mut sum = 0f32;
                for i in 0..g.kh {
                    let Some(y) = g.src(oy, i, g.pad_t, g.h) else {
                        continue;
                    };
                    if let (true, Some(x0)) = (whole, x0) {
                        let start = ((n * g.h + y) * g.w + x0) * tf + i * g.kw;
                        for v in z[start..].iter().step_by(tf + 1).take(g.kw) {
                            sum += *v;
                        }
                        continue;
                    }
                    for j in 0..g.kw {
                        if let Some(x) = g.src(ox, j, g.pad_l, g.w) {
                            sum += z[((n * g.h + y) * g.w + x) * tf + i * g.kw + j];
                        }
                    }
                }
                *out = sum;
            }
            return;
        }
        out.fill(0.0);
        for (ox, out) in out.chunks_exact_mut(f).enumerate() {
            for i in 0..g.kh {
                let Some(y) = g.src(oy, i, g.pad_t, g.h) else {
                    continue;
                };
                for j in 0..g.kw {
                    let Some(x) = g.src(ox, j, g.pad_l, g.w) else {
                        continue;
                    };
                    let s = ((n * g.h + y) * g.w + x) * tf + (i * g.kw + j) * f;
                    for (a, b) in out.iter_mut().zip(&z[s..s + f]) {
                        *a += *b;
                    }
                }
            }
        }
    }
}

/// For each image pixel and tap, the output gradient `gy (rows × f)` at the output position that
/// tap of that pixel feeds (zeros where none): `dst (pixels × taps·f)`.
fn scatter_taps(g: &Geometry, f: usize, gy: &[f32], dst: &mut [f32], par: bool) {
    chunks_each(dst, g.taps() * f * g.w, par, |line, out| {
        scatter_line(g, f, gy, line, out)
    });
}

/// [`scatter_taps`] for one line of image pixels (`line` = image × row). Compiled for AVX-512 and
/// AVX2 too, picked once per line at run time.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma",
    "x86_64+avx2+fma"
))]
fn scatter_line(g: &Geometry, f: usize, gy: &[f32], line: usize, out: &mut [f32]) {
    let tf = g.taps() * f;
    let (n, py) = (line / g.h, line % g.h);
    for (px, out) in out.chunks_exact_mut(tf).enumerate() {
        if f == 1 {
            // One value per tap (the GAN's 128 → 1 convolution). Stride and dilation 1 with every
            // tap of a kernel row landing inside the output row: the row's values are one run of
            // `gy` read backwards (tap `j` feeds output column `px + pad_l - j`), without a bounds
            // decision per value.
            let (last, lo) = (px + g.pad_l, g.kw - 1);
            let whole = g.stride == 1 && g.dilation == 1 && last >= lo && last < g.ow;
            for i in 0..g.kh {
                let oy = g.dst(py, i, g.pad_t, g.oh);
                let row = &mut out[i * g.kw..(i + 1) * g.kw];
                match oy {
                    Some(oy) if whole => {
                        let base = (n * g.oh + oy) * g.ow;
                        let run = &gy[base + last - lo..=base + last];
                        for (o, v) in row.iter_mut().zip(run.iter().rev()) {
                            *o = *v;
                        }
                    }
                    None => row.fill(0.0),
                    Some(oy) => {
                        for (j, o) in row.iter_mut().enumerate() {
                            *o = match g.dst(px, j, g.pad_l, g.ow) {
                                Some(ox) => gy[(n * g.oh + oy) * g.ow + ox],
                                None => 0.0,
                            };
                        }
                    }
                }
            }
            continue;
        }
        for i in 0..g.kh {
            let oy = g.dst(py, i, g.pad_t, g.oh);
            for j in 0..g.kw {
                let d = (i * g.kw + j) * f;
                match (oy, g.dst(px, j, g.pad_l, g.ow)) {
                    (Some(oy), Some(ox)) => {
                        let s = ((n * g.oh + oy) * g.ow + ox) * f;
                        out[d..d + f].copy_from_slice(&gy[s..s + f]);
                    }
                    _ => out[d..d + f].fill(0.0),
                }
            }
        }
    }
}

/// The kernel `(taps, c, f)` rearranged to `(c, taps·f)`, `kn2row`'s right-hand matrix.
fn kernel_by_channel(g: &Geometry, f: usize, w: &[f32]) -> Vec<f32> {
    let (t, c) = (g.taps(), g.c);
    let mut out = vec![0f32; w.len()];
    for tap in 0..t {
        for ch in 0..c {
            let s = (tap * c + ch) * f;
            let d = ch * t * f + tap * f;
            out[d..d + f].copy_from_slice(&w[s..s + f]);
        }
    }
    out
}

/// `op(lhs) · op(rhs)` as a new `m×n` buffer (see [`matmul_with`]), written once: no zero fill
/// first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_new(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
) -> Vec<f32> {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n);
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: `out` has room for the `m·n` values, which `matmul_raw` writes without reading
    // (`accumulate` false); the inputs' lengths are asserted above.
    unsafe {
        matmul_raw(
            true,
            m,
            n,
            k,
            out.as_mut_ptr(),
            false,
            lhs,
            lhs_t,
            rhs,
            rhs_t,
        );
        out.set_len(m * n);
    }
    out
}

/// `batch` independent products `op(lhs_i) · op(rhs_i)` (each as in [`matmul_new`], the
/// operands `batch` matrices one after the other) as a new `batch·m·n` buffer: the batch split
/// over rayon's threads, each product on one thread. Attention's products are many small ones
/// (`(64, 16) · (16, 64)` per head and sequence), for which a product split over threads waits
/// more than it computes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batched_matmul_new(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
) -> Vec<f32> {
    assert!(lhs.len() >= batch * m * k && rhs.len() >= batch * k * n);
    let mut out: Vec<f32> = Vec::with_capacity(batch * m * n);
    if m * n == 0 {
        return out;
    }
    let one = |i: usize, dst: &mut [std::mem::MaybeUninit<f32>]| {
        let (l, r) = (
            &lhs[i * m * k..(i + 1) * m * k],
            &rhs[i * k * n..(i + 1) * k * n],
        );
        // SAFETY: `dst` is this product's `m·n` slots, which `matmul_raw` writes without reading
        // (`accumulate` false); `l` and `r` hold `m·k` and `k·n` values.
        unsafe {
            matmul_raw(
                false,
                m,
                n,
                k,
                dst.as_mut_ptr().cast(),
                false,
                l,
                lhs_t,
                r,
                rhs_t,
            )
        }
    };
    let slots = &mut out.spare_capacity_mut()[..batch * m * n];
    if batch * m * n * k < 1 << 16 {
        slots
            .chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, d)| one(i, d));
    } else {
        slots
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, d)| one(i, d));
    }
    // SAFETY: every product wrote its `m·n` values.
    unsafe { out.set_len(batch * m * n) };
    out
}

/// `dst (m×n) [+]= op(lhs) · op(rhs)`, row-major, where `op` transposes when asked: `lhs` is
/// stored `m×k` (or `k×m` with `lhs_t`), `rhs` `k×n` (or `n×k` with `rhs_t`); on rayon's threads
/// when `par` and the product is large enough, else on this one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    par: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the asserted lengths.
    unsafe {
        matmul_raw(
            par,
            m,
            n,
            k,
            dst.as_mut_ptr(),
            accumulate,
            lhs,
            lhs_t,
            rhs,
            rhs_t,
        )
    }
}

/// [`matmul_with`] into `m·n` values at `dst`.
///
/// # Safety
/// `dst` must be valid for `m·n` writes, and for reads too when `accumulate` (without it, every
/// value is written before any is read, so `dst` may be uninitialised); `lhs` and `rhs` must hold
/// at least `m·k` and `k·n` values; `dst` must not overlap them.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_raw(
    par: bool,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    accumulate: bool,
    lhs: &[f32],
    lhs_t: bool,
    rhs: &[f32],
    rhs_t: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: zeros (or the old values).
        if !accumulate {
            // SAFETY: `dst` is valid for `m·n` writes (caller).
            unsafe { std::ptr::write_bytes(dst, 0, m * n) };
        }
        return;
    }
    let (lhs_rs, lhs_cs) = if lhs_t {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rhs_rs, rhs_cs) = if rhs_t {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let threads = threads_for(par);
    if threads > 1 && m * n <= 64 * 64 && k >= 8192 {
        // A small result over a long sum (a first layer's kernel gradient: 9x32 over 86 528
        // patch rows) is one tile for gemm, so one thread: split the sum instead, into a fixed
        // number of parts added in order (the same bits on every run).
        let parts = threads * PARTS_PER_THREAD;
        let step = k.div_ceil(parts);
        let partials: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let k0 = (p * step).min(k);
                let kk = step.min(k - k0);
                let mut out = vec![0f32; m * n];
                let (l0, r0) = (k0 * lhs_cs as usize, k0 * rhs_rs as usize);
                // SAFETY: as below, for the sub-range `k0..k0 + kk` of the sum: `lhs` and `rhs`
                // are offset to its first element, which the asserted lengths still cover.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        kk,
                        out.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        lhs.as_ptr().add(l0),
                        lhs_cs,
                        lhs_rs,
                        rhs.as_ptr().add(r0),
                        rhs_cs,
                        rhs_rs,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                out
            })
            .collect();
        // Partial sums added into zeros (or the old values).
        if !accumulate {
            // SAFETY: `dst` is valid for `m·n` writes (caller).
            unsafe { std::ptr::write_bytes(dst, 0, m * n) };
        }
        // SAFETY: initialised just above, or by the caller when accumulating.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, m * n) };
        for part in &partials {
            for (d, v) in dst.iter_mut().zip(part) {
                *d += v;
            }
        }
        return;
    }
    let size = m * n * k;
    // Large products: gemm's own threads, which share the packed right-hand side; small ones on
    // this thread.
    let whole = match (threads > 1, size) {
        (true, s) if s > SPLIT_MAX => Some(gemm::Parallelism::Rayon(threads)),
        (true, s) if s > 64 * 64 * 64 => None,
        _ => Some(gemm::Parallelism::None),
    };
    if let Some(par) = whole {
        // SAFETY: the asserted lengths cover every index the strides reach (see `gemm_part`).
        unsafe {
            gemm_part(
                (0, m),
                (0, n),
                k,
                dst,
                n,
                accumulate,
                (lhs.as_ptr(), lhs_rs, lhs_cs),
                (rhs.as_ptr(), rhs_rs, rhs_cs),
                par,
            )
        };
        return;
    }
    // A few parts per thread, each a single-threaded product over its own columns of the output
    // (or rows, when there are more rows than columns): one fork and join per product. gemm's own
    // threading synchronises its threads several times per product, each a sleep and a wake-up
    // when the product is small (about a quarter of the MNIST MLP's step on two cores).
    let by_cols = n >= m;
    let (len, align) = if by_cols { (n, 16) } else { (m, 8) };
    let parts = threads * PARTS_PER_THREAD;
    let step = len.div_ceil(parts).div_ceil(align) * align;
    let out = SendPtr(dst);
    let (l, r) = (SendConst(lhs.as_ptr()), SendConst(rhs.as_ptr()));
    (0..len.div_ceil(step)).into_par_iter().for_each(|p| {
        let span = (p * step, ((p + 1) * step).min(len));
        let (rows, cols) = if by_cols {
            ((0, m), span)
        } else {
            (span, (0, n))
        };
        let (out, l, r) = (&out, &l, &r);
        // SAFETY: as for the whole product; the parts write disjoint rows or columns of `dst`.
        unsafe {
            gemm_part(
                rows,
                cols,
                k,
                out.0,
                n,
                accumulate,
                (l.0, lhs_rs, lhs_cs),
                (r.0, rhs_rs, rhs_cs),
                gemm::Parallelism::None,
            )
        };
    });
}

/// Threads a product may use: rayon's when `par`, else this one.
fn threads_for(par: bool) -> usize {
    if par { rayon::current_num_threads() } else { 1 }
}

/// Parts per thread of a product split by [`matmul_with`]. With one part each, the calling thread
/// finishes its half and then waits for a worker that was woken late (it sleeps between a
/// step's parallel ops); with several, whoever is free takes the next part. Measured on the MNIST
/// MLP (two cores): 1 → 2 → 4 → 8 parts per thread gave about +0%, +6%, +9%, −10% (from 8 on,
/// each part's packing of the shared operand costs more than the balance gains).
const PARTS_PER_THREAD: usize = 4;

/// Largest product (`m·n·k`) split into parts by [`matmul_with`]; larger ones use
/// gemm's own threading (the MNIST MLP's products are at most 784·256·128; the GAN's transposed
/// convolutions reach 3136·2048·128).
const SPLIT_MAX: usize = 1 << 26;

/// A raw output pointer shared by the parts of one product (each writes its own elements).
struct SendPtr(*mut f32);
// SAFETY: the parts that share it write disjoint elements, and it outlives them (scoped).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// A raw input pointer shared by the parts of one product (read only).
struct SendConst(*const f32);
// SAFETY: only read while the borrowed slice it came from is alive (scoped).
unsafe impl Sync for SendConst {}
unsafe impl Send for SendConst {}

/// Rows `rows.0..rows.1` × columns `cols.0..cols.1` of `dst (row stride ld) [+]= lhs · rhs`, with
/// `lhs` and `rhs` given as `(pointer, row stride, column stride)`, with gemm's parallelism `par`.
///
/// # Safety
/// Every element the strides reach must be inside its allocation: rows `0..rows.1` and columns
/// `0..cols.1` of `dst`, `0..rows.1`×`0..k` of `lhs` and `0..k`×`0..cols.1` of `rhs`; `dst` must
/// not alias `lhs` or `rhs`, nor the elements another thread writes at the same time.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_part(
    rows: (usize, usize),
    cols: (usize, usize),
    k: usize,
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    par: gemm::Parallelism,
) {
    let (m, n) = (rows.1 - rows.0, cols.1 - cols.0);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the offsets stay inside the ranges the caller vouches for.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.add(rows.0 * ld + cols.0),
            1,
            ld as isize,
            accumulate,
            lhs.0.offset(rows.0 as isize * lhs.1),
            lhs.2,
            lhs.1,
            rhs.0.offset(cols.0 as isize * rhs.2),
            rhs.2,
            rhs.1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn check(what: &str, got: usize, want: usize, g: &Geometry) -> candle_core::Result<()> {
    if got != want {
        candle_core::bail!("{what}: received {got} values, expected {want} for {g:?}")
    }
    Ok(())
}

/// Convolution: `x (n,h,w,c)`, `w (K, f)` → `(n*oh*ow, f)`.
pub(crate) struct Conv {
    pub g: Geometry,
    pub f: usize,
}

/// Gradient of a convolution with respect to its input (and the transposed convolution):
/// `gy (n*oh*ow, f)`, `w (K, f)` → `(n, h, w, c)`.
pub(crate) struct ConvData {
    pub g: Geometry,
    pub f: usize,
}

/// Gradient of a convolution with respect to its kernel: `x (n,h,w,c)`, `gy (n*oh*ow, f)` → `(K, f)`.
pub(crate) struct ConvFilter {
    pub g: Geometry,
    pub f: usize,
}

/// [`Conv`]'s forward pass on slices, running `epi` on each finished part of the output rows.
pub(crate) fn conv_run(g: &Geometry, f: usize, x: &[f32], w: &[f32], epi: Epilogue) -> Vec<f32> {
    let g = *g;
    let (k, rpi) = (g.patch_len(), g.rows_per_image());
    let total = g.n * rpi * f;
    // Written once, by the product (or the tap sums), never zeroed first: the convnet's first
    // output alone is 11 MB per step.
    let mut y: Vec<f32> = Vec::with_capacity(total);
    if total == 0 {
        return y;
    }
    let (per, parallel) = g.plan(f);
    let wc = g.kn2row(f).then(|| kernel_by_channel(&g, f, w));
    // The images from `n0` whose output rows are `out`, with buffer `buf`.
    let part = |n0: usize, out: &mut [MaybeUninit<f32>], buf: &mut [f32], par: bool| {
        let (len, dst) = (out.len(), out.as_mut_ptr().cast::<f32>());
        let nb = len / (rpi * f);
        let chunk = Geometry { n: nb, ..g };
        let images = &x[n0 * g.image_len()..(n0 + nb) * g.image_len()];
        if let Some(wc) = &wc {
            // Per pixel, every tap's contribution; then each output sums its taps.
            let (p, tf) = (nb * g.pixels(), g.taps() * f);
            let z = &mut buf[..p * tf];
            matmul_with(par, p, tf, g.c, z, false, images, false, wc, false);
            // SAFETY: `dst` holds `len` floats, zeroed here before the slice is made.
            let out = unsafe {
                std::ptr::write_bytes(dst, 0, len);
                std::slice::from_raw_parts_mut(dst, len)
            };
            gather_taps(&chunk, f, z, out, par);
        } else {
            let cols = &mut buf[..nb * rpi * k];
            let t = patches(&chunk, images, cols, par);
            // SAFETY: `dst` holds the `nb·rpi × f` outputs, which the product writes without
            // reading; `cols` and `w` hold `nb·rpi · k` and `k × f` values.
            unsafe { matmul_raw(par, nb * rpi, f, k, dst, false, cols, t, w, false) };
        }
        if let Some(e) = epi {
            // SAFETY: every value of the chunk was written above.
            e(unsafe { std::slice::from_raw_parts_mut(dst, len) });
        }
    };
    let len = per * g.buffer_per_image(f);
    let spare = &mut y.spare_capacity_mut()[..total];
    if parallel {
        spare
            .par_chunks_mut(per * rpi * f)
            .enumerate()
            .for_each(|(b, out)| with_scratch(len, |buf| part(b * per, out, buf, false)));
    } else {
        with_scratch(len, |buf| {
            for (b, out) in spare.chunks_mut(per * rpi * f).enumerate() {
                part(b * per, out, buf, true);
            }
        });
    }
    // SAFETY: the chunks cover the `total` values and `part` wrote each of them.
    unsafe { y.set_len(total) };
    y
}

/// `pool(epi(conv(x, w)))` for a max pooling `p` over the convolution's output, by blocks of a few
/// images: each block's convolution output stays in the core's cache (a per-thread buffer) from
/// the product through the epilogue to the pooling, and only the pooled maxima and their
/// positions reach memory. `None` when the convolution does not run in blocks (few images, a
/// large kernel, or `kn2row`): then [`conv_run`] and a separate pooling.
///
/// With `Pooling::Biased(b, post)`, `epi` is not run: the pooling compares the outputs plus `b`
/// (one value per channel) and `post` runs on the pooled values (for a monotone activation,
/// `act(max(v + b))` is `max(act(v + b))`; see [`crate::kernels::pool::pool_image_biased`]).
/// With `zero_ends` (after ReLU), a pooled value that `post` left at zero or below keeps no
/// argmax (`u32::MAX`): ReLU's derivative is zero there, so the gradient needs no mask of its own.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_run_pooled(
    g: &Geometry,
    f: usize,
    x: &[f32],
    w: &[f32],
    epi: Epilogue,
    biased: Option<(&[f32], &EpilogueFn<'_>, bool)>,
    p: &crate::kernels::pool::PoolGeometry,
) -> Option<(Vec<f32>, Vec<u32>)> {
    let g = *g;
    let (k, rpi) = (g.patch_len(), g.rows_per_image());
    let (_, parallel) = g.plan(f);
    let (out_len, pooled_len) = (rpi * f, p.oh * p.ow * p.c);
    if !parallel
        || g.kn2row(f)
        || (p.n, p.h, p.w, p.c) != (g.n, g.oh, g.ow, f)
        || out_len == 0
        || pooled_len == 0
        || biased.is_some_and(|(b, _, _)| b.len() != f)
    {
        return None;
    }
    // Patches and convolution output of a block within BLOCK_BYTES, at least two blocks per thread.
    let per_image = (rpi * k + out_len) * 4;
    let threads = rayon::current_num_threads();
    let per = (BLOCK_BYTES / per_image).clamp(1, g.n.div_ceil(2 * threads));
    let total = g.n * pooled_len;
    let (mut y, mut at) = (Vec::with_capacity(total), Vec::with_capacity(total));
    y.spare_capacity_mut()[..total]
        .par_chunks_mut(per * pooled_len)
        .zip(at.spare_capacity_mut()[..total].par_chunks_mut(per * pooled_len))
        .enumerate()
        .for_each(|(b, (yb, ab))| {
            let (n0, nb) = (b * per, yb.len() / pooled_len);
            let chunk = Geometry { n: nb, ..g };
            let images = &x[n0 * g.image_len()..(n0 + nb) * g.image_len()];
            with_scratch(nb * (rpi * k + out_len), |buf| {
                let (cols, out) = buf.split_at_mut(nb * rpi * k);
                let out = &mut out[..nb * out_len];
                let t = patches(&chunk, images, cols, false);
                matmul_with(false, nb * rpi, f, k, out, false, cols, t, w, false);
                if let Some((b, post, zero_ends)) = biased {
                    for (i, img) in out.chunks_exact(out_len).enumerate() {
                        let o = i * pooled_len..(i + 1) * pooled_len;
                        let (yi, ai) = (&mut yb[o.clone()], &mut ab[o]);
                        crate::kernels::pool::pool_image_biased(p, img, b, yi, ai);
                        // SAFETY: `pool_image_biased` wrote every value of `yi`.
                        let yi = unsafe { &mut *(yi as *mut [MaybeUninit<f32>] as *mut [f32]) };
                        post(yi);
                        if zero_ends {
                            // SAFETY: `pool_image_biased` wrote every value of `ai`.
                            let ai = unsafe { &mut *(ai as *mut [MaybeUninit<u32>] as *mut [u32]) };
                            // A select, not a branch: whether ReLU zeroed a maximum is a coin flip.
                            for (v, a) in yi.iter().zip(ai.iter_mut()) {
                                *a = if *v > 0.0 { *a } else { u32::MAX };
                            }
                        }
                    }
                    return;
                }
                if let Some(e) = epi {
                    e(out);
                }
                for (i, img) in out.chunks_exact(out_len).enumerate() {
                    let o = i * pooled_len..(i + 1) * pooled_len;
                    crate::kernels::pool::pool_image(p, img, &mut yb[o.clone()], &mut ab[o]);
                }
            });
        });
    // SAFETY: the blocks cover the `total` pooled values, each image's written by `pool_image`.
    unsafe {
        y.set_len(total);
        at.set_len(total);
    }
    Some((y, at))
}

/// Whether [`conv_pooled_grads`] takes a convolution `g` (to `f` channels) whose output went
/// through the max pooling `p`: the convolution runs in blocks of images (see
/// [`Geometry::plan`]), builds patches (not `kn2row`), and the pooling's windows neither overlap
/// nor leave an input window empty.
pub(crate) fn pooled_grads_fit(
    g: &Geometry,
    f: usize,
    p: &crate::kernels::pool::PoolGeometry,
) -> bool {
    g.plan(f).1
        && !g.kn2row(f)
        && (p.n, p.h, p.w, p.c) == (g.n, g.oh, g.ow, f)
        && p.sh >= p.ph
        && p.sw >= p.pw
        && p.no_empty_window()
        && [g.rows_per_image(), f, g.patch_len(), p.oh, p.ow]
            .iter()
            .all(|&d| d > 0)
}

/// The kernel gradient `(K, f)`, with `input_grad` the input gradient `(n, h, w, c)`, and the
/// bias gradient `(f)` of a convolution followed by a max pooling (see [`pooled_grads_fit`]),
/// from the gradient `dy` of the pooled values and the pooling's `argmax` (flat indices within
/// each image; `u32::MAX` where no gradient flows).
///
/// Why one pass: the convolution output's gradient is zero except at each window's maximum.
/// Built for the whole batch, it is written to memory (11 MB for the MNIST convnet's first layer)
/// and read back by both products; here each block of a few images gets its gradient placed in
/// a per-thread buffer, which both products read while it is still in cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_pooled_grads(
    g: &Geometry,
    f: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    argmax: &[u32],
    p: &crate::kernels::pool::PoolGeometry,
    input_grad: bool,
) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
    let g = *g;
    let (k, rpi, img) = (g.patch_len(), g.rows_per_image(), g.image_len());
    let (out_len, pooled_len) = (rpi * f, p.oh * p.ow * p.c);
    // A block's output gradient and patches (the input gradient's columns reuse the patches'
    // room) within BLOCK_BYTES, at least two blocks per thread.
    let threads = rayon::current_num_threads();
    let per = (BLOCK_BYTES / ((out_len + rpi * k) * 4)).clamp(1, g.n.div_ceil(2 * threads));
    let blocks = g.n.div_ceil(per);
    // A fixed split of the blocks into runs, each summing its kernel gradient in order: the same
    // bits on every call with the same number of threads (as `conv_filter_run`).
    let runs = (threads * PARTS_PER_THREAD).min(blocks);
    let total = if input_grad { g.n * img } else { 0 };
    let mut gx: Vec<f32> = Vec::with_capacity(total);
    let mut rest = &mut gx.spare_capacity_mut()[..total];
    let mut jobs = Vec::with_capacity(runs);
    for t in 0..runs {
        let (n0, n1) = (
            (t * blocks / runs) * per,
            ((t + 1) * blocks / runs * per).min(g.n),
        );
        let len = if input_grad { (n1 - n0) * img } else { 0 };
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        jobs.push((n0, n1, mine));
    }
    let partials: Vec<(Vec<f32>, Vec<f32>)> = jobs
        .into_par_iter()
        .map(|(n0, n1, mut gx_run)| {
            let mut gw = vec![0f32; k * f];
            // The bias gradient: the pooled gradients that reach a maximum, per channel (summed
            // while they are placed).
            let mut gb = vec![0f32; f];
            with_scratch(per * (out_len + rpi * k), |buf| {
                let (gz_buf, cols_buf) = buf.split_at_mut(per * out_len);
                for b in (n0..n1).step_by(per) {
                    let nb = per.min(n1 - b);
                    let chunk = Geometry { n: nb, ..g };
                    let gz = &mut gz_buf[..nb * out_len];
                    for (i, gz_img) in gz.chunks_exact_mut(out_len).enumerate() {
                        let o = (b + i) * pooled_len..(b + i + 1) * pooled_len;
                        // SAFETY: the same memory seen as possibly uninitialised floats, which
                        // `scatter_image` only overwrites with initialised ones.
                        let gz_img =
                            unsafe { &mut *(gz_img as *mut [f32] as *mut [MaybeUninit<f32>]) };
                        crate::kernels::pool::scatter_image_summed(
                            p,
                            gz_img,
                            &dy[o.clone()],
                            &argmax[o],
                            &mut gb,
                        );
                    }
                    let cols = &mut cols_buf[..nb * rpi * k];
                    let images = &x[b * img..(b + nb) * img];
                    let acc = b > n0;
                    if patches(&chunk, images, cols, false) {
                        matmul_with(false, k, f, nb * rpi, &mut gw, acc, cols, false, gz, false);
                    } else {
                        matmul_tn_rows(false, k, f, nb * rpi, &mut gw, acc, cols, gz);
                    }
                    if input_grad {
                        matmul_with(false, nb * rpi, k, f, cols, false, gz, false, w, true);
                        let (mine, tail) = std::mem::take(&mut gx_run).split_at_mut(nb * img);
                        gx_run = tail;
                        col2im(&chunk, cols, mine, None, false);
                    }
                }
            });
            (gw, gb)
        })
        .collect();
    let mut partials = partials.into_iter();
    let (mut gw, mut gb) = partials
        .next()
        .unwrap_or_else(|| (vec![0f32; k * f], vec![0f32; f]));
    for (pw, pb) in partials {
        for (a, b) in gw.iter_mut().zip(&pw) {
            *a += b;
        }
        for (a, b) in gb.iter_mut().zip(&pb) {
            *a += b;
        }
    }
    // SAFETY: the runs cover the `total` values (all images when `input_grad`, else none), and
    // `col2im` wrote every value of each block's images.
    unsafe { gx.set_len(total) };
    (gw, input_grad.then_some(gx), gb)
}

/// [`ConvData`]'s forward pass on slices, running `epi` on each finished image (or part of them).
pub(crate) fn conv_data_run(
    g: &Geometry,
    f: usize,
    gy: &[f32],
    w: &[f32],
    epi: Epilogue,
) -> Vec<f32> {
    let g = *g;
    let (k, rpi) = (g.patch_len(), g.rows_per_image());
    let total = g.n * g.image_len();
    // Written once (the product, or the per-image zeros and sums of `col2im`): no zero fill of
    // the whole output first (25 MB for the GAN's last transposed convolution).
    let mut gx: Vec<f32> = Vec::with_capacity(total);
    if total == 0 {
        return gx;
    }
    let (per, parallel) = g.plan(f);
    let wc = g.kn2row(f).then(|| kernel_by_channel(&g, f, w));
    // The images from `n0`, `out`, from their output gradients, with buffer `buf`.
    let part = |n0: usize, out: &mut [MaybeUninit<f32>], buf: &mut [f32], par: bool| {
        let nb = out.len() / g.image_len();
        let chunk = Geometry { n: nb, ..g };
        let grads = &gy[n0 * rpi * f..(n0 + nb) * rpi * f];
        if let Some(wc) = &wc {
            // Per pixel, the gradients of the outputs its taps feed, times the kernel.
            let (p, tf) = (nb * g.pixels(), g.taps() * f);
            let z = &mut buf[..p * tf];
            scatter_taps(&chunk, f, grads, z, par);
            let (len, dst) = (out.len(), out.as_mut_ptr().cast::<f32>());
            // SAFETY: `dst` holds the `p × c` values, which the product writes without reading;
            // `z` and `wc` hold `p × tf` and `c × tf` values.
            unsafe { matmul_raw(par, p, g.c, tf, dst, false, z, false, wc, true) };
            if let Some(e) = epi {
                // SAFETY: every value was written by the product.
                e(unsafe { std::slice::from_raw_parts_mut(dst, len) });
            }
        } else {
            let cols = &mut buf[..nb * rpi * k];
            matmul_with(par, nb * rpi, k, f, cols, false, grads, false, w, true);
            col2im(&chunk, cols, out, epi, par);
        }
    };
    let len = per * g.buffer_per_image(f);
    let spare = &mut gx.spare_capacity_mut()[..total];
    if parallel {
        spare
            .par_chunks_mut(per * g.image_len())
            .enumerate()
            .for_each(|(b, out)| with_scratch(len, |buf| part(b * per, out, buf, false)));
    } else {
        with_scratch(len, |buf| {
            for (b, out) in spare.chunks_mut(per * g.image_len()).enumerate() {
                part(b * per, out, buf, true);
            }
        });
    }
    // SAFETY: the chunks cover the `total` values and `part` wrote each of them.
    unsafe { gx.set_len(total) };
    gx
}

/// Longest sum (rows of patches) handed to one matrix product of a kernel gradient. The gemm
/// crate runs a small output over a long sum at about 95 GFLOP/s per core, and the same sum in
/// runs of at most 256 rows (accumulated) at about 150 (the GAN's 4x4 transposed convolution,
/// `2048×128` over 12 544 rows, one core); 320 rows gave 120.
const FILTER_SUM_ROWS: usize = 256;

/// `dst (m×n) [+]= lhsᵀ · rhs`, the sum over `rows`: `lhs` stored `rows × m`, `rhs` `rows × n`,
/// as products over at most [`FILTER_SUM_ROWS`] rows each, accumulated in order.
#[allow(clippy::too_many_arguments)]
fn matmul_tn_rows(
    par: bool,
    m: usize,
    n: usize,
    rows: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    rhs: &[f32],
) {
    if rows == 0 {
        matmul_with(par, m, n, 0, dst, accumulate, lhs, true, rhs, false);
        return;
    }
    let parts = rows.div_ceil(FILTER_SUM_ROWS);
    for p in 0..parts {
        let (r0, r1) = (p * rows / parts, (p + 1) * rows / parts);
        let (l, r) = (&lhs[r0 * m..r1 * m], &rhs[r0 * n..r1 * n]);
        matmul_with(
            par,
            m,
            n,
            r1 - r0,
            dst,
            accumulate || p > 0,
            l,
            true,
            r,
            false,
        );
    }
}

/// [`ConvFilter`]'s forward pass on slices: `(K, f)`, or `(c, taps·f)` under `kn2row`.
fn conv_filter_run(g: &Geometry, f: usize, x: &[f32], gy: &[f32]) -> Vec<f32> {
    let g = *g;
    let (k, rpi) = (g.patch_len(), g.rows_per_image());
    let (per, parallel) = g.filter_plan(f);
    // Adds (or, unless `acc`, writes) the images from `n0` to `n1`'s share into `gw`.
    let part = |n0: usize, n1: usize, gw: &mut [f32], acc: bool, buf: &mut [f32], par: bool| {
        let nb = n1 - n0;
        let chunk = Geometry { n: nb, ..g };
        let images = &x[n0 * g.image_len()..n1 * g.image_len()];
        let grads = &gy[n0 * rpi * f..n1 * rpi * f];
        if g.kn2row(f) {
            let (p, tf) = (nb * g.pixels(), g.taps() * f);
            let z = &mut buf[..p * tf];
            scatter_taps(&chunk, f, grads, z, par);
            matmul_tn_rows(par, g.c, tf, p, gw, acc, images, z);
        } else {
            let cols = &mut buf[..nb * rpi * k];
            if patches(&chunk, images, cols, par) {
                // K-major patches (one input channel): a small kernel, one product.
                matmul_with(par, k, f, nb * rpi, gw, acc, cols, false, grads, false);
            } else {
                matmul_tn_rows(par, k, f, nb * rpi, gw, acc, cols, grads);
            }
        }
    };
    let len = per * g.buffer_per_image(f);
    let parts = g.n.div_ceil(per);
    if parallel {
        // A fixed split of the parts into a few runs per thread, each summed in order, then the
        // runs added in order: the same bits on every call with the same number of threads.
        // (Several runs per thread: a worker woken late takes fewer; see PARTS_PER_THREAD.)
        let runs = (rayon::current_num_threads() * PARTS_PER_THREAD).min(parts);
        let runs: Vec<Vec<f32>> = (0..runs)
            .into_par_iter()
            .map(|t| {
                let (b0, b1) = (t * parts / runs, (t + 1) * parts / runs);
                let mut gw = vec![0f32; k * f];
                with_scratch(len, |buf| {
                    for b in b0..b1 {
                        let (n0, n1) = (b * per, ((b + 1) * per).min(g.n));
                        part(n0, n1, &mut gw, b > b0, buf, false);
                    }
                });
                gw
            })
            .collect();
        let mut runs = runs.into_iter();
        let mut gw = runs.next().unwrap_or_else(|| vec![0f32; k * f]);
        for run in runs {
            for (a, b) in gw.iter_mut().zip(&run) {
                *a += b;
            }
        }
        gw
    } else {
        let mut gw = vec![0f32; k * f];
        with_scratch(len, |buf| {
            for b in 0..parts {
                let (n0, n1) = (b * per, ((b + 1) * per).min(g.n));
                part(n0, n1, &mut gw, b > 0, buf, true);
            }
        });
        gw
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d_nhwc"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, f) = (self.g, self.f);
        let x = crate::kernels::cpu_f32(s1, l1, "conv2d input")?;
        let w = crate::kernels::cpu_f32(s2, l2, "conv2d kernel")?;
        let k = g.patch_len();
        check("conv2d input", x.len(), g.n * g.image_len(), &g)?;
        check("conv2d kernel", w.len(), k * f, &g)?;
        let y = conv_run(&g, f, x, w, None);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.oh, g.ow, f))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        // No input gradient when nothing upstream needs one (the input images).
        let gx = if crate::tape::wanted(x) {
            Some(gy.apply_op2_no_bwd(
                w,
                &ConvData {
                    g: self.g,
                    f: self.f,
                },
            )?)
        } else {
            None
        };
        let gw = crate::tape::wanted(w)
            .then(|| {
                x.apply_op2_no_bwd(
                    &gy,
                    &ConvFilter {
                        g: self.g,
                        f: self.f,
                    },
                )
            })
            .transpose()?;
        Ok((crate::tape::route(x, gx)?, crate::tape::route(w, gw)?))
    }
}

impl CustomOp2 for ConvData {
    fn name(&self) -> &'static str {
        "conv2d_nhwc_data"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, f) = (self.g, self.f);
        let gy = crate::kernels::cpu_f32(s1, l1, "conv2d output gradient")?;
        let w = crate::kernels::cpu_f32(s2, l2, "conv2d kernel")?;
        let k = g.patch_len();
        check(
            "conv2d output gradient",
            gy.len(),
            g.n * g.rows_per_image() * f,
            &g,
        )?;
        check("conv2d kernel", w.len(), k * f, &g)?;
        let gx = conv_data_run(&g, f, gy, w, None);
        Ok((CpuStorage::F32(gx), Shape::from((g.n, g.h, g.w, g.c))))
    }
    fn bwd(
        &self,
        gy: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gy = if crate::tape::wanted(gy) {
            Some(grad.apply_op2_no_bwd(
                w,
                &Conv {
                    g: self.g,
                    f: self.f,
                },
            )?)
        } else {
            None
        };
        let d_w = crate::tape::wanted(w)
            .then(|| {
                grad.apply_op2_no_bwd(
                    &gy.contiguous()?,
                    &ConvFilter {
                        g: self.g,
                        f: self.f,
                    },
                )
            })
            .transpose()?;
        Ok((crate::tape::route(gy, d_gy)?, crate::tape::route(w, d_w)?))
    }
}

impl CustomOp2 for ConvFilter {
    fn name(&self) -> &'static str {
        "conv2d_nhwc_filter"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, f) = (self.g, self.f);
        let x = crate::kernels::cpu_f32(s1, l1, "conv2d input")?;
        let gy = crate::kernels::cpu_f32(s2, l2, "conv2d output gradient")?;
        let k = g.patch_len();
        check("conv2d input", x.len(), g.n * g.image_len(), &g)?;
        check(
            "conv2d output gradient",
            gy.len(),
            g.n * g.rows_per_image() * f,
            &g,
        )?;
        let kn2row = g.kn2row(f);
        // kn2row accumulates the kernel gradient as (c, taps·f) and rearranges it at the end.
        let mut gw = conv_filter_run(&g, f, x, gy);
        if kn2row {
            let (t, c) = (g.taps(), g.c);
            let by_channel = std::mem::take(&mut gw);
            gw = vec![0f32; k * f];
            for tap in 0..t {
                for ch in 0..c {
                    let d = (tap * c + ch) * f;
                    let s = ch * t * f + tap * f;
                    gw[d..d + f].copy_from_slice(&by_channel[s..s + f]);
                }
            }
        }
        Ok((CpuStorage::F32(gw), Shape::from((k, f))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::max_rel;
    use crate::tape::Variable;
    use candle_core::Device;

    #[test]
    fn conv_matches_candle_forward_and_gradients() {
        conv_against_candle(3);
    }

    /// With enough images, blocks of a few images run one per thread (here 3 threads, 13 images:
    /// blocks of 3 and a last one of 1); the same values and gradients.
    #[test]
    fn blocked_conv_matches_candle_forward_and_gradients() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let blocked = pool.install(|| conv_against_candle(13));
        assert!(blocked >= 10, "only {blocked} geometries ran in blocks");
    }

    /// candle's own convolution of a channels-last image `x (n,h,w,c)` with a Keras kernel
    /// `k (kh,kw,c,f)`, zero padding `(top, bottom)` and `(left, right)`: the reference.
    fn candle_conv(
        x: &Tensor,
        k: &Tensor,
        (pt, pb): (usize, usize),
        (pl, pr): (usize, usize),
        stride: usize,
        dilation: usize,
    ) -> Tensor {
        let k = k.permute((3, 2, 0, 1)).unwrap().contiguous().unwrap();
        x.pad_with_zeros(1, pt, pb)
            .unwrap()
            .pad_with_zeros(2, pl, pr)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap()
            .conv2d(&k, 0, stride, dilation, 1)
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap()
    }

    /// Checks [`Conv`], [`ConvData`] and [`ConvFilter`] against candle over a set of geometries
    /// with `n` images; returns how many ran in blocks, one per thread.
    fn conv_against_candle(n: usize) -> usize {
        let dev = Device::Cpu;
        let mut blocked = 0;
        // (kh, kw, stride, dilation, (top, bottom), (left, right), in, out): im2col and kn2row
        // (few output channels from many), with and without zero padding.
        for (kh, kw, stride, dilation, (pt, pb), (pl, pr), c, f) in [
            (3, 3, 1, 1, (0, 0), (0, 0), 3, 4),
            (3, 3, 2, 1, (0, 0), (0, 0), 3, 4),
            (3, 2, 1, 2, (0, 0), (0, 0), 3, 4),
            (4, 4, 2, 1, (0, 0), (0, 0), 3, 4),
            (1, 1, 1, 1, (0, 0), (0, 0), 3, 4),
            (3, 3, 1, 1, (1, 1), (1, 1), 3, 4),
            (3, 3, 2, 1, (0, 2), (1, 1), 2, 5),
            (4, 3, 2, 1, (1, 1), (0, 2), 3, 2),
            (3, 3, 1, 1, (1, 1), (1, 1), 6, 1),
            (7, 7, 1, 1, (3, 3), (3, 3), 5, 1),
            (5, 4, 1, 1, (1, 3), (3, 0), 6, 1),
            (3, 3, 2, 1, (1, 1), (0, 2), 7, 2),
            (3, 2, 1, 2, (2, 0), (1, 1), 8, 3),
            (5, 5, 1, 1, (2, 2), (2, 2), 1, 1),
            // One input channel: patches built K-major (`im2col_t`).
            (3, 3, 1, 1, (0, 0), (0, 0), 1, 8),
            (3, 3, 2, 1, (1, 1), (0, 2), 1, 4),
            (3, 2, 1, 2, (2, 0), (1, 1), 1, 3),
            (4, 4, 2, 1, (1, 2), (2, 1), 1, 6),
        ] {
            let keff_h = (kh - 1) * dilation + 1;
            let keff_w = (kw - 1) * dilation + 1;
            // Sizes that candle's own conv2d backward (the reference) handles.
            let (h, w) = (keff_h + 3 * stride, keff_w + 2 * stride);
            let (hp, wp) = (h + pt + pb, w + pl + pr);
            let g = Geometry {
                n,
                h,
                w,
                c,
                kh,
                kw,
                stride,
                dilation,
                pad_t: pt,
                pad_l: pl,
                oh: (hp - keff_h) / stride + 1,
                ow: (wp - keff_w) / stride + 1,
            };
            let case = format!("{g:?} f={f} kn2row={} plan={:?}", g.kn2row(f), g.plan(f));
            blocked += usize::from(g.plan(f).1);
            let xv = Variable::new(
                "x",
                &crate::kernels::fixed_randn(1.0, (n, h, w, c), &dev).unwrap(),
                true,
            )
            .unwrap();
            let kv = Variable::new(
                "k",
                &crate::kernels::fixed_randn(1.0, (kh, kw, c, f), &dev).unwrap(),
                true,
            )
            .unwrap();
            let up = crate::kernels::fixed_randn(1.0, (n, g.oh, g.ow, f), &dev).unwrap();
            // ours (the kernel variable itself, read as its (kh·kw·c, f) matrix)
            let y = xv
                .as_tensor()
                .apply_op2(kv.as_tensor(), Conv { g, f })
                .unwrap();
            let loss = (&y * &up).unwrap().sum_all().unwrap();
            let ours = GradientTape::gradient(&loss, &[xv.clone(), kv.clone()]).unwrap();
            // candle's, on the explicitly padded image
            let yc = candle_conv(
                xv.as_tensor(),
                kv.as_tensor(),
                (pt, pb),
                (pl, pr),
                stride,
                dilation,
            );
            assert!(max_rel(&y, &yc) < 1e-5, "forward {case}");
            let lc = (&yc * &up).unwrap().sum_all().unwrap();
            let theirs = GradientTape::gradient(&lc, &[xv.clone(), kv.clone()]).unwrap();
            assert!(max_rel(&ours[0], &theirs[0]) < 1e-5, "input grad {case}");
            assert!(max_rel(&ours[1], &theirs[1]) < 1e-5, "kernel grad {case}");
            // The transposed direction (ConvData forward, as Conv2DTranspose uses it) and its own
            // gradients, against the same ops through candle.
            let gyv = Variable::new("gy", &up, true).unwrap();
            let kmat = kv.as_tensor().reshape((kh * kw * c, f)).unwrap();
            let t_ours = gyv.as_tensor().apply_op2(&kmat, ConvData { g, f }).unwrap();
            // Through the (n·oh·ow, f) matrix view of the same variable: gradients in its shape.
            let t_rows = gyv
                .as_tensor()
                .reshape((n * g.oh * g.ow, f))
                .unwrap()
                .apply_op2(kv.as_tensor(), ConvData { g, f })
                .unwrap();
            assert!(max_rel(&t_rows, &t_ours) < 1e-6, "data op on rows {case}");
            let t_theirs = GradientTape::gradient(&loss, std::slice::from_ref(&xv)).unwrap();
            assert!(max_rel(&t_ours, &t_theirs[0]) < 1e-5, "data op {case}");
            let up2 = crate::kernels::fixed_randn(1.0, (n, h, w, c), &dev).unwrap();
            let l2 = (&t_ours * &up2).unwrap().sum_all().unwrap();
            let g2 = GradientTape::gradient(&l2, &[gyv.clone(), kv.clone()]).unwrap();
            // d/d(gy) <ConvData(gy), up2> = Conv(up2); d/dk = ConvFilter(up2, gy).
            let conv_up2 = candle_conv(&up2, kv.as_tensor(), (pt, pb), (pl, pr), stride, dilation);
            assert!(max_rel(&g2[0], &conv_up2) < 1e-5, "data op, gy grad {case}");
            let kflat = GradientTape::gradient(
                &(&conv_up2 * gyv.as_tensor()).unwrap().sum_all().unwrap(),
                std::slice::from_ref(&kv),
            )
            .unwrap();
            assert!(
                max_rel(&g2[1].reshape((kh, kw, c, f)).unwrap(), &kflat[0]) < 1e-5,
                "data op, kernel grad {case}"
            );
        }
        blocked
    }

    /// The matrix product, including the long sums split across threads, against candle's.
    #[test]
    fn matmul_matches_candle_including_split_sums() {
        let dev = Device::Cpu;
        for (m, n, k) in [
            (9, 32, 20_000),
            (3, 5, 7),
            (64, 64, 9000),
            (70, 40, 300),
            (33, 200, 100),
            (129, 257, 65),
        ] {
            for (lhs_t, rhs_t, accumulate) in [
                (false, false, false),
                (true, false, false),
                (false, true, true),
                (true, true, true),
            ] {
                let a = crate::kernels::fixed_randn(1.0, (m, k), &dev).unwrap();
                let b = crate::kernels::fixed_randn(1.0, (k, n), &dev).unwrap();
                let c0 = crate::kernels::fixed_randn(1.0, (m, n), &dev).unwrap();
                let stored = |t: &Tensor, tr: bool| -> Vec<f32> {
                    let t = if tr {
                        t.t().unwrap().contiguous().unwrap()
                    } else {
                        t.clone()
                    };
                    t.flatten_all().unwrap().to_vec1().unwrap()
                };
                let mut dst = c0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let (sa, sb) = (stored(&a, lhs_t), stored(&b, rhs_t));
                matmul_with(true, m, n, k, &mut dst, accumulate, &sa, lhs_t, &sb, rhs_t);
                if !accumulate {
                    // Into a new buffer, never zeroed: the same values.
                    assert_eq!(matmul_new(m, n, k, &sa, lhs_t, &sb, rhs_t), dst);
                }
                let mut want = a.matmul(&b).unwrap();
                if accumulate {
                    want = (want + &c0).unwrap();
                }
                let got = Tensor::from_vec(dst, (m, n), &dev).unwrap();
                assert!(
                    max_rel(&got, &want) < 1e-5,
                    "{m}x{n}x{k} lhs_t={lhs_t} rhs_t={rhs_t} accumulate={accumulate}"
                );
            }
        }
    }

    /// An empty sum is zeros, into a new buffer or over old values.
    /// The kernel gradient of a kernel too large to pack once per block (64 → 128 channels, 295 KB)
    /// still runs in blocks of images, one per thread, each block's long sum (324 patch rows) in
    /// runs of at most [`FILTER_SUM_ROWS`]; the same gradient as candle's, in every thread count.
    #[test]
    fn large_kernel_gradient_in_blocks_and_runs_matches_candle() {
        let dev = Device::Cpu;
        let (n, h, c, f) = (6, 18, 64, 128);
        let g = Geometry {
            n,
            h,
            w: h,
            c,
            kh: 3,
            kw: 3,
            stride: 1,
            dilation: 1,
            pad_t: 1,
            pad_l: 1,
            oh: h,
            ow: h,
        };
        assert!(g.patch_len() * f * 4 > BLOCK_KERNEL_BYTES);
        assert!(g.rows_per_image() > FILTER_SUM_ROWS);
        let x = crate::kernels::fixed_randn(1.0, (n, h, h, c), &dev).unwrap();
        let gy = crate::kernels::fixed_randn(1.0, (n, h, h, f), &dev).unwrap();
        let kv = Variable::new(
            "k",
            &Tensor::zeros((3, 3, c, f), candle_core::DType::F32, &dev).unwrap(),
            true,
        )
        .unwrap();
        let yc = candle_conv(&x, kv.as_tensor(), (1, 1), (1, 1), 1, 1);
        let loss = (&yc * &gy).unwrap().sum_all().unwrap();
        let theirs = GradientTape::gradient(&loss, std::slice::from_ref(&kv)).unwrap();
        let theirs = theirs[0].reshape((g.patch_len(), f)).unwrap();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (per, parallel) = pool.install(|| g.filter_plan(f));
            assert_eq!(parallel, threads > 1, "{threads} threads");
            assert!(
                per * g.rows_per_image() > FILTER_SUM_ROWS,
                "per block {per}"
            );
            let ours = pool
                .install(|| x.apply_op2_no_bwd(&gy, &ConvFilter { g, f }))
                .unwrap();
            let err = max_rel(&ours, &theirs);
            assert!(err < 1e-5, "{threads} threads: max relative error {err}");
        }
    }

    /// The one-pass gradients of a convolution followed by max pooling against the separate
    /// passes (the pooling's gradient for the whole batch, then both products), in a 3-thread
    /// pool with 13 images (uneven blocks): one input channel (K-major patches), several, a
    /// strided convolution, "same" pooling over an odd size, a kernel of 2 KB and of 74 KB, and
    /// images large enough for one per block (then some runs sum two blocks).
    #[test]
    fn pooled_gradients_in_one_pass_match_the_separate_passes() {
        use crate::kernels::pool::{PoolGeometry, max_pool_forward, max_pool_scatter};
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let n = 13;
        // (h, c, k, stride, pad, f, pooling pad)
        for (h, c, k, stride, pad, f, pp) in [
            (12, 1, 3, 1, 0, 8, 0),
            (11, 3, 3, 1, 0, 5, 0),
            (12, 4, 3, 2, 1, 6, 0),
            (10, 2, 2, 1, 0, 3, 1),
            (9, 32, 3, 1, 1, 64, 0),
            // One image per block (large images), more blocks than runs: sums over blocks.
            (30, 8, 3, 1, 0, 16, 0),
        ] {
            let o = (h + 2 * pad - k) / stride + 1;
            let g = Geometry {
                n,
                h,
                w: h,
                c,
                kh: k,
                kw: k,
                stride,
                dilation: 1,
                pad_t: pad,
                pad_l: pad,
                oh: o,
                ow: o,
            };
            let po = (o + pp) / 2;
            let p = PoolGeometry {
                n,
                h: o,
                w: o,
                c: f,
                ph: 2,
                pw: 2,
                sh: 2,
                sw: 2,
                pt: pp,
                pl: pp,
                oh: po,
                ow: po,
            };
            let case = format!("{g:?} f={f} {p:?}");
            let val = |len: usize, seed: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| (((i + seed) * 2_654_435_761) % 1999) as f32 / 999.5 - 1.0)
                    .collect()
            };
            let x = val(n * g.image_len(), 1);
            let w = val(g.patch_len() * f, 2);
            let z = val(n * o * o * f, 3);
            let dy = val(n * po * po * f, 4);
            pool.install(|| {
                assert!(pooled_grads_fit(&g, f, &p), "{case}");
                let (_, mut at) = max_pool_forward(&p, &z);
                // Some maxima without an argmax (zeroed by a ReLU): no gradient flows there.
                for a in at.iter_mut().step_by(5) {
                    *a = u32::MAX;
                }
                let gz = max_pool_scatter(&p, &at, &dy);
                let gx_ref = conv_data_run(&g, f, &gz, &w, None);
                let gw_ref = conv_filter_run(&g, f, &x, &gz);
                for input_grad in [false, true] {
                    let (gw, gx, gb) = conv_pooled_grads(&g, f, &x, &w, &dy, &at, &p, input_grad);
                    let mut gb_ref = vec![0f32; f];
                    for (i, v) in gz.iter().enumerate() {
                        gb_ref[i % f] += v;
                    }
                    let rel = |a: &[f32], b: &[f32]| {
                        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                        a.iter()
                            .zip(b)
                            .fold(0f32, |m, (a, b)| m.max((a - b).abs() / scale))
                    };
                    assert_eq!(gw.len(), gw_ref.len(), "{case}");
                    assert!(rel(&gw, &gw_ref) < 1e-5, "kernel gradient {case}");
                    assert!(rel(&gb, &gb_ref) < 1e-5, "bias gradient {case}");
                    match gx {
                        Some(gx) => {
                            assert!(input_grad, "{case}");
                            assert_eq!(gx.len(), gx_ref.len(), "{case}");
                            assert!(rel(&gx, &gx_ref) < 1e-5, "input gradient {case}");
                        }
                        None => assert!(!input_grad, "{case}"),
                    }
                }
            });
        }
    }

    /// Sums split into runs of rows give the product of the whole sum, accumulated or not.
    #[test]
    fn sums_in_runs_of_rows_match_one_product() {
        let (m, n, rows) = (37, 19, 3 * FILTER_SUM_ROWS + 5);
        let lhs: Vec<f32> = (0..rows * m)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let rhs: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let mut whole = vec![0f32; m * n];
        matmul_with(
            false, m, n, rows, &mut whole, false, &lhs, true, &rhs, false,
        );
        for par in [false, true] {
            let mut runs = vec![f32::NAN; m * n];
            matmul_tn_rows(par, m, n, rows, &mut runs, false, &lhs, &rhs);
            let mut acc = vec![1f32; m * n];
            matmul_tn_rows(par, m, n, rows, &mut acc, true, &lhs, &rhs);
            for ((a, b), c) in whole.iter().zip(&runs).zip(&acc) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
                assert!(
                    (a + 1.0 - c).abs() <= 1e-4 * a.abs().max(1.0),
                    "{a} + 1 vs {c}"
                );
            }
        }
    }

    #[test]
    fn empty_sums_are_zero() {
        assert_eq!(matmul_new(3, 4, 0, &[], false, &[], false), vec![0.0; 12]);
        let mut dst = vec![7f32; 12];
        matmul_with(true, 3, 4, 0, &mut dst, false, &[], false, &[], false);
        assert_eq!(dst, vec![0.0; 12]);
        let mut dst = vec![7f32; 12];
        matmul_with(true, 3, 4, 0, &mut dst, true, &[], false, &[], false);
        assert_eq!(dst, vec![7.0; 12]);
    }

    #[test]
    fn conv_data_is_the_adjoint_of_conv() {
        let dev = Device::Cpu;
        let g = Geometry {
            n: 2,
            h: 7,
            w: 7,
            c: 2,
            kh: 3,
            kw: 3,
            stride: 2,
            dilation: 1,
            pad_t: 0,
            pad_l: 0,
            oh: 3,
            ow: 3,
        };
        let f = 5;
        let x = crate::kernels::fixed_randn(1.0, (2, 7, 7, 2), &dev).unwrap();
        let w = crate::kernels::fixed_randn(1.0, (18, f), &dev).unwrap();
        let gy = crate::kernels::fixed_randn(1.0, (2, 3, 3, f), &dev).unwrap();
        let y = x.apply_op2_no_bwd(&w, &Conv { g, f }).unwrap();
        let gx = gy.apply_op2_no_bwd(&w, &ConvData { g, f }).unwrap();
        let lhs = (&y * &gy)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let rhs = (&x * &gx)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }
}
