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

/// Upper bound of the patch buffer built at once.
pub(crate) const CHUNK_BYTES: usize = 16 << 20;

/// Shapes of one patch extraction: an `(n, h, w, c)` image, a `(kh, kw)` kernel with stride and
/// dilation, and the `(oh, ow)` grid of patch positions.
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
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    fn patch_len(&self) -> usize {
        self.kh * self.kw * self.c
    }
    fn image_len(&self) -> usize {
        self.h * self.w * self.c
    }
    fn rows_per_image(&self) -> usize {
        self.oh * self.ow
    }
    /// Images per chunk so that a chunk's patches fit in [`CHUNK_BYTES`].
    fn images_per_chunk(&self) -> usize {
        let per_image = self.rows_per_image() * self.patch_len() * 4;
        (CHUNK_BYTES / per_image.max(1)).clamp(1, self.n.max(1))
    }
}

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: only float32 is supported")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// Patches of `images` (a chunk of whole images) into `dst` (rows × K).
fn im2col(g: &Geometry, images: &[f32], dst: &mut [f32]) {
    let k = g.patch_len();
    dst.par_chunks_mut(k).enumerate().for_each(|(row, out)| {
        let n = row / g.rows_per_image();
        let rem = row % g.rows_per_image();
        let (oy, ox) = (rem / g.ow, rem % g.ow);
        for i in 0..g.kh {
            let y = oy * g.stride + i * g.dilation;
            for j in 0..g.kw {
                let x = ox * g.stride + j * g.dilation;
                let s = ((n * g.h + y) * g.w + x) * g.c;
                let d = (i * g.kw + j) * g.c;
                out[d..d + g.c].copy_from_slice(&images[s..s + g.c]);
            }
        }
    });
}

/// Adds patch values `cols` (rows × K) back onto `images` (a chunk of whole images).
fn col2im(g: &Geometry, cols: &[f32], images: &mut [f32]) {
    let k = g.patch_len();
    images
        .par_chunks_mut(g.image_len())
        .enumerate()
        .for_each(|(n, img)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let row = (n * g.oh + oy) * g.ow + ox;
                    let patch = &cols[row * k..(row + 1) * k];
                    for i in 0..g.kh {
                        let y = oy * g.stride + i * g.dilation;
                        for j in 0..g.kw {
                            let x = ox * g.stride + j * g.dilation;
                            let d = (y * g.w + x) * g.c;
                            let s = (i * g.kw + j) * g.c;
                            for (a, b) in img[d..d + g.c].iter_mut().zip(&patch[s..s + g.c]) {
                                *a += *b;
                            }
                        }
                    }
                }
            }
        });
}

/// `dst (m×n) [+]= op(lhs) · op(rhs)`, row-major, where `op` transposes when asked:
/// `lhs` is stored `m×k` (or `k×m` with `lhs_t`), `rhs` `k×n` (or `n×k` with `rhs_t`).
#[allow(clippy::too_many_arguments)]
fn matmul(
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
    if m == 0 || n == 0 {
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
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k > 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserted lengths cover every index the strides reach: rows `0..m` and columns
    // `0..n` of `dst` (row stride n), `0..m`×`0..k` of `lhs` and `0..k`×`0..n` of `rhs` under the
    // chosen strides; the three slices are distinct borrows, so they do not alias.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
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
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let w = contiguous_f32(s2, l2, "conv2d kernel")?;
        let k = g.patch_len();
        check("conv2d input", x.len(), g.n * g.image_len(), &g)?;
        check("conv2d kernel", w.len(), k * f, &g)?;
        let rows = g.n * g.rows_per_image();
        let mut y = vec![0f32; rows * f];
        let per = g.images_per_chunk();
        let mut cols = vec![0f32; per * g.rows_per_image() * k];
        for n0 in (0..g.n).step_by(per) {
            let nb = per.min(g.n - n0);
            let r = nb * g.rows_per_image();
            let chunk = Geometry { n: nb, ..g };
            im2col(
                &chunk,
                &x[n0 * g.image_len()..(n0 + nb) * g.image_len()],
                &mut cols[..r * k],
            );
            let r0 = n0 * g.rows_per_image();
            matmul(
                r,
                f,
                k,
                &mut y[r0 * f..(r0 + r) * f],
                false,
                &cols[..r * k],
                false,
                w,
                false,
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, f))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let gx = gy.apply_op2_no_bwd(
            w,
            &ConvData {
                g: self.g,
                f: self.f,
            },
        )?;
        let gw = x.apply_op2_no_bwd(
            &gy,
            &ConvFilter {
                g: self.g,
                f: self.f,
            },
        )?;
        Ok((Some(gx), Some(gw)))
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
        let gy = contiguous_f32(s1, l1, "conv2d output gradient")?;
        let w = contiguous_f32(s2, l2, "conv2d kernel")?;
        let k = g.patch_len();
        check(
            "conv2d output gradient",
            gy.len(),
            g.n * g.rows_per_image() * f,
            &g,
        )?;
        check("conv2d kernel", w.len(), k * f, &g)?;
        let mut gx = vec![0f32; g.n * g.image_len()];
        let per = g.images_per_chunk();
        let mut cols = vec![0f32; per * g.rows_per_image() * k];
        for n0 in (0..g.n).step_by(per) {
            let nb = per.min(g.n - n0);
            let r = nb * g.rows_per_image();
            let r0 = n0 * g.rows_per_image();
            matmul(
                r,
                k,
                f,
                &mut cols[..r * k],
                false,
                &gy[r0 * f..(r0 + r) * f],
                false,
                w,
                true,
            );
            let chunk = Geometry { n: nb, ..g };
            col2im(
                &chunk,
                &cols[..r * k],
                &mut gx[n0 * g.image_len()..(n0 + nb) * g.image_len()],
            );
        }
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
        let d_gy = grad.apply_op2_no_bwd(
            w,
            &Conv {
                g: self.g,
                f: self.f,
            },
        )?;
        let d_w = grad.apply_op2_no_bwd(
            &gy.contiguous()?,
            &ConvFilter {
                g: self.g,
                f: self.f,
            },
        )?;
        Ok((Some(d_gy), Some(d_w)))
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
        let x = contiguous_f32(s1, l1, "conv2d input")?;
        let gy = contiguous_f32(s2, l2, "conv2d output gradient")?;
        let k = g.patch_len();
        check("conv2d input", x.len(), g.n * g.image_len(), &g)?;
        check(
            "conv2d output gradient",
            gy.len(),
            g.n * g.rows_per_image() * f,
            &g,
        )?;
        let mut gw = vec![0f32; k * f];
        let per = g.images_per_chunk();
        let mut cols = vec![0f32; per * g.rows_per_image() * k];
        for n0 in (0..g.n).step_by(per) {
            let nb = per.min(g.n - n0);
            let r = nb * g.rows_per_image();
            let chunk = Geometry { n: nb, ..g };
            im2col(
                &chunk,
                &x[n0 * g.image_len()..(n0 + nb) * g.image_len()],
                &mut cols[..r * k],
            );
            let r0 = n0 * g.rows_per_image();
            matmul(
                k,
                f,
                r,
                &mut gw,
                n0 > 0,
                &cols[..r * k],
                true,
                &gy[r0 * f..(r0 + r) * f],
                false,
            );
        }
        Ok((CpuStorage::F32(gw), Shape::from((k, f))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::tape::Variable;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn conv_matches_candle_forward_and_gradients() {
        let dev = Device::Cpu;
        let (n, c, f) = (3, 3, 4);
        for (kh, kw, stride, dilation) in [
            (3, 3, 1, 1),
            (3, 3, 2, 1),
            (3, 2, 1, 2),
            (4, 4, 2, 1),
            (1, 1, 1, 1),
        ] {
            let keff_h = (kh - 1) * dilation + 1;
            let keff_w = (kw - 1) * dilation + 1;
            // Sizes that candle's own conv2d backward (the reference) handles.
            let (h, w) = (keff_h + 3 * stride, keff_w + 2 * stride);
            let g = Geometry {
                n,
                h,
                w,
                c,
                kh,
                kw,
                stride,
                dilation,
                oh: (h - keff_h) / stride + 1,
                ow: (w - keff_w) / stride + 1,
            };
            let xv = Variable::new(
                "x",
                &Tensor::randn(0f32, 1.0, (n, h, w, c), &dev).unwrap(),
                true,
            )
            .unwrap();
            let kv = Variable::new(
                "k",
                &Tensor::randn(0f32, 1.0, (kh, kw, c, f), &dev).unwrap(),
                true,
            )
            .unwrap();
            let up = Tensor::randn(0f32, 1.0, (n * g.oh * g.ow, f), &dev).unwrap();
            // ours
            let y = xv
                .as_tensor()
                .apply_op2(
                    &kv.as_tensor().reshape((kh * kw * c, f)).unwrap(),
                    Conv { g, f },
                )
                .unwrap();
            let loss = (&y * &up).unwrap().sum_all().unwrap();
            let ours = GradientTape::gradient(&loss, &[xv.clone(), kv.clone()]).unwrap();
            // candle's
            let yc = xv
                .as_tensor()
                .permute((0, 3, 1, 2))
                .unwrap()
                .conv2d(
                    &kv.as_tensor()
                        .permute((3, 2, 0, 1))
                        .unwrap()
                        .contiguous()
                        .unwrap(),
                    0,
                    stride,
                    dilation,
                    1,
                )
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap()
                .reshape((n * g.oh * g.ow, f))
                .unwrap();
            assert!(
                max_diff(&y, &yc) < 1e-4,
                "forward {kh}x{kw} s{stride} d{dilation}"
            );
            let lc = (&yc * &up).unwrap().sum_all().unwrap();
            let theirs = GradientTape::gradient(&lc, &[xv.clone(), kv.clone()]).unwrap();
            assert!(
                max_diff(&ours[0], &theirs[0]) < 1e-3,
                "input grad {kh}x{kw} s{stride} d{dilation}"
            );
            assert!(
                max_diff(&ours[1], &theirs[1]) < 1e-3,
                "kernel grad {kh}x{kw} s{stride} d{dilation}"
            );
        }
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
            oh: 3,
            ow: 3,
        };
        let f = 5;
        let x = Tensor::randn(0f32, 1.0, (2, 7, 7, 2), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (18, f), &dev).unwrap();
        let gy = Tensor::randn(0f32, 1.0, (18, f), &dev).unwrap();
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
