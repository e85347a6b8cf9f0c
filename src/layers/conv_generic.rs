//! Convolutions for devices other than the CPU, made of candle's forward `conv2d` alone.
//!
//! candle differentiates `conv2d` with `conv_transpose2d`, which on CUDA is a direct loop without
//! cuBLAS or cuDNN (measured on an H200: the guide's GAN step at 0.13x PyTorch). Here the input
//! gradient is itself a forward convolution (of the dilated, padded output gradient with the
//! flipped kernel), and a transposed convolution is a forward convolution of the dilated, padded
//! input: every convolution, forward or backward, runs as candle's `conv2d` (im2col + cuBLAS, or
//! cuDNN with the `cudnn` feature). Layouts are candle's: NCHW inputs, (out, in, kh, kw) kernels.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::Result;
use crate::layers::Activation;

/// Whether the layers use these ops off the CPU (the default), or candle's conv2d and
/// conv_transpose2d with candle's backward (`FERROKERAS_CONV=candle`, read once: a switch for
/// measuring one against the other on a GPU).
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROKERAS_CONV").map_or(true, |v| v != "candle"))
}

/// Whether strided transposed convolutions run by output phase ([`conv_transpose2d_phases`], the
/// default) or as a convolution of the zero-dilated input (`FERROKERAS_CONV=dilated`, read once:
/// the earlier form, kept for measuring one against the other).
fn by_phase() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROKERAS_CONV").map_or(true, |v| v != "dilated"))
}

/// `x` with `s - 1` zeros between neighbours along both spatial axes (NCHW).
fn dilate(x: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    if s == 1 {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    let x = x
        .unsqueeze(3)?
        .pad_with_zeros(3, 0, s - 1)?
        .reshape((n, c, h * s, w))?
        .narrow(2, 0, (h - 1) * s + 1)?;
    let hh = (h - 1) * s + 1;
    x.unsqueeze(4)?
        .pad_with_zeros(4, 0, s - 1)?
        .reshape((n, c, hh, w * s))?
        .narrow(3, 0, (w - 1) * s + 1)
}

/// The forward kernel of the `s`² output phases of a transposed convolution by `k` (in, out,
/// kh, kw): phase `(p, q)`'s sub-kernel holds the taps `(p + s·j, q + s·l)` (zero past the
/// kernel's end, `J = ceil(kh / s)` taps per phase), flipped, and the phases are stacked as output
/// channels: `(s·s·out, in, J, Jw)`, phase-major. With `s = 1`, the flipped kernel in the forward
/// layout (out, in, kh, kw).
///
/// One gather of `k`'s values (candle's gather gives zero for the index u32::MAX: the taps past
/// the kernel's end when `s` does not divide it), the indices made once per shape and device: a
/// padding, a layout copy and two flips were six kernels or more on a GPU.
fn phase_kernels(k: &Tensor, s: usize) -> candle_core::Result<Tensor> {
    let (cin, cout, kh, kw) = k.dims4()?;
    let (jh, jw) = (kh.div_ceil(s), kw.div_ceil(s));
    let idx = phase_indices([cin, cout, kh, kw, s], k.device())?;
    k.contiguous()?
        .flatten_all()?
        .index_select(&idx, 0)?
        .reshape((s * s * cout, cin, jh, jw))
}

/// [`phase_kernels`]'s source index for each element (u32::MAX for a zero), made once per
/// `[in, out, kh, kw, s]` and device.
fn phase_indices(key: [usize; 5], device: &candle_core::Device) -> candle_core::Result<Tensor> {
    static CACHE: crate::ops::DeviceCache<[usize; 5], Tensor> = crate::ops::DeviceCache::new();
    CACHE.get_or_make(device, key, || {
        let [cin, cout, kh, kw, s] = key;
        let (jh, jw) = (kh.div_ceil(s), kw.div_ceil(s));
        let n = s * s * cout * cin * jh * jw;
        let mut idx = Vec::with_capacity(n);
        for p in 0..s {
            for q in 0..s {
                for o in 0..cout {
                    for i in 0..cin {
                        for a in 0..jh {
                            for b in 0..jw {
                                let (r, c) = (p + s * (jh - 1 - a), q + s * (jw - 1 - b));
                                idx.push(if r < kh && c < kw {
                                    (((i * cout + o) * kh + r) * kw + c) as u32
                                } else {
                                    u32::MAX
                                });
                            }
                        }
                    }
                }
            }
        }
        Tensor::from_vec(idx, n, device)
    })
}

/// `conv2d(x, k)` with `padding` zeros on every side (pad `x` first for other paddings),
/// differentiated by forward convolutions only. The padding is the convolution's own (done in
/// its patch gathering, or by cuDNN), not separate zero and copy kernels.
///
/// # Errors
/// Shapes that do not make a convolution, or a device failure.
pub(crate) fn conv2d(
    x: &Tensor,
    k: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let y =
        x.detach()
            .contiguous()?
            .conv2d(&k.detach().contiguous()?, padding, stride, dilation, 1)?;
    if !x.track_op() && !k.track_op() {
        return Ok(y);
    }
    Ok(x.apply_op3(
        k,
        &y,
        ConvGrad {
            padding,
            stride,
            dilation,
        },
    )?)
}

/// Zero padding of `(top, bottom)` rows and `(left, right)` columns, as the part that every side
/// shares (a convolution's own `padding`) and the rest (padded separately).
type Split = (usize, (usize, usize), (usize, usize));

fn split_padding(ph: (usize, usize), pw: (usize, usize)) -> Split {
    let p = ph.0.min(ph.1).min(pw.0).min(pw.1);
    (p, (ph.0 - p, ph.1 - p), (pw.0 - p, pw.1 - p))
}

/// Keras's full transposed convolution (before its output window is cropped): `x` (N, in, h, w)
/// with `k` in candle's transposed layout (in, out, kh, kw); output (N, out, (h-1)s + (kh-1)d + 1, ...).
///
/// # Errors
/// Shapes that do not make a convolution, or a device failure.
pub(crate) fn conv_transpose2d_full(
    x: &Tensor,
    k: &Tensor,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    if stride > 1 && dilation == 1 && by_phase() {
        return conv_transpose2d_phases(x, k, stride);
    }
    conv_transpose2d_dilated(x, k, stride, dilation)
}

/// [`conv_transpose2d_full`] as a convolution of the zero-dilated, padded input with the flipped
/// kernel.
fn conv_transpose2d_dilated(
    x: &Tensor,
    k: &Tensor,
    stride: usize,
    dilation: usize,
) -> Result<Tensor> {
    let (_, _, kh, kw) = k.dims4()?;
    let (eh, ew) = ((kh - 1) * dilation, (kw - 1) * dilation);
    let (p, ph, pw) = split_padding((eh, eh), (ew, ew));
    let xp = pad_hw(&dilate(x, stride)?, ph, pw)?;
    let kf = phase_kernels(k, 1)?;
    conv2d(&xp, &kf, p, 1, dilation)
}

/// [`conv_transpose2d_full`] for a stride `s` > 1 (no dilation), by output phase: output row
/// `s·i + p` only ever meets the kernel rows `p, p + s, p + 2s, ...`, so each of the `s²` phases
/// is a stride-1 convolution of the undilated input with its sub-kernel, and the phases are
/// interleaved (a pixel shuffle). All phases run as one `conv2d` with `s²·out` output channels.
/// Against the dilated form: `s²` times fewer multiply-adds (no products with inserted zeros) and
/// patch matrices `s²` times smaller, forward and backward.
///
/// Kernel taps are padded with zeros up to a multiple of `s` (`J = ceil(kh / s)` taps per phase),
/// so every phase gives `h + J - 1` rows; the interleaved `s·(h + J - 1)` rows cover the full
/// output's `(h - 1)·s + kh`, and the rows past it (zeros) are cut off.
fn conv_transpose2d_phases(x: &Tensor, k: &Tensor, s: usize) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    let (_, cout, kh, kw) = k.dims4()?;
    let (jh, jw) = (kh.div_ceil(s), kw.div_ceil(s));
    // A phase is a full correlation with its sub-kernel: pad by J - 1, flip the taps.
    let (p, ph, pw) = split_padding((jh - 1, jh - 1), (jw - 1, jw - 1));
    let y = conv2d(&pad_hw(x, ph, pw)?, &phase_kernels(k, s)?, p, 1, 1)?;
    // (N, s·s·out, R, C) -> (N, out, R, s, C, s) -> (N, out, R·s, C·s), then the full size.
    let (r, c) = (h + jh - 1, w + jw - 1);
    let y = y
        .reshape((n, s, s, cout, r, c))?
        .permute((0, 3, 4, 1, 5, 2))?
        .contiguous()?
        .reshape((n, cout, r * s, c * s))?;
    Ok(y.narrow(2, 0, (h - 1) * s + kh)?
        .narrow(3, 0, (w - 1) * s + kw)?)
}

/// Zero padding of an NCHW tensor: `(top, bottom)` rows and `(left, right)` columns.
fn pad_hw(x: &Tensor, ph: (usize, usize), pw: (usize, usize)) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(2, ph.0, ph.1)?
        .pad_with_zeros(3, pw.0, pw.1)
}

/// `t` (N, H, W, C) as a contiguous NCHW tensor with `(top, bottom)` zero rows and `(left,
/// right)` zero columns: one gather (u32::MAX gives a zero) with indices made once per shape and
/// device, where a layout copy and two paddings (a zero fill and two copies each) were seven
/// kernels on a GPU.
fn nchw_padded(t: &Tensor, ph: (usize, usize), pw: (usize, usize)) -> candle_core::Result<Tensor> {
    let (n, h, w, c) = t.dims4()?;
    if ph == (0, 0) && pw == (0, 0) {
        return t.permute((0, 3, 1, 2))?.contiguous();
    }
    if h * w * c >= u32::MAX as usize {
        // Images too large for u32 indices: the layout copy and the paddings.
        return pad_hw(&t.permute((0, 3, 1, 2))?, ph, pw)?.contiguous();
    }
    let (hh, ww) = (h + ph.0 + ph.1, w + pw.0 + pw.1);
    static CACHE: crate::ops::DeviceCache<[usize; 7], Tensor> = crate::ops::DeviceCache::new();
    let key = [h, w, c, ph.0, ph.1, pw.0, pw.1];
    let idx = CACHE.get_or_make(t.device(), key, || {
        let mut idx = Vec::with_capacity(c * hh * ww);
        for ch in 0..c {
            for y in 0..hh {
                for x in 0..ww {
                    let (sy, sx) = (y.wrapping_sub(ph.0), x.wrapping_sub(pw.0));
                    idx.push(if sy < h && sx < w {
                        ((sy * w + sx) * c + ch) as u32
                    } else {
                        u32::MAX
                    });
                }
            }
        }
        let len = idx.len();
        Tensor::from_vec(idx, len, t.device())
    })?;
    t.reshape((n, h * w * c))?
        .index_select(&idx, 1)?
        .reshape((n, c, hh, ww))
}

/// `t` (N, C, H, W) cut or zero-extended to `rows` x `cols`.
fn fit_hw(t: &Tensor, rows: usize, cols: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = t.dims4()?;
    let t = t.pad_with_zeros(2, 0, rows.saturating_sub(h))?;
    let t = t.pad_with_zeros(3, 0, cols.saturating_sub(w))?;
    t.narrow(2, 0, rows)?.narrow(3, 0, cols)
}

/// `t` cast to `dt` (no op when it already is).
fn cast(t: Tensor, dt: candle_core::DType) -> candle_core::Result<Tensor> {
    if t.dtype() == dt {
        Ok(t)
    } else {
        t.to_dtype(dt)
    }
}

/// candle's kernel gradient form: `a` and `b` with their first two axes swapped, convolved
/// (padding `p`, stride `d`, dilation `s`: a kernel gradient samples the input at the kernel's
/// dilation and steps by the stride), and swapped back.
fn swapped_conv(
    a: &Tensor,
    b: &Tensor,
    p: usize,
    s: usize,
    d: usize,
) -> candle_core::Result<Tensor> {
    a.transpose(0, 1)?
        .contiguous()?
        .conv2d(&b.transpose(0, 1)?.contiguous()?, p, d, s, 1)?
        .transpose(0, 1)
}

/// A layer's kernel gradient in Keras's (kh, kw, ., .) layout and dtype `kdt`, from candle's
/// (., ., kh', kw') one (cut to the kernel's size), then the bias's gradient (the sum of `gy`
/// over all but the channel axis) when the layer has a bias (`bias`: its dtype, and whether its
/// gradient is needed): the node's gradients in order.
fn layer_grads(
    gx: Option<Tensor>,
    gk: Option<Tensor>,
    (kh, kw, kdt): (usize, usize, candle_core::DType),
    gy: &Tensor,
    bias: Option<(candle_core::DType, bool)>,
) -> candle_core::Result<Vec<Option<Tensor>>> {
    let gk = match gk {
        Some(g) => {
            let g = g.narrow(2, 0, kh)?.narrow(3, 0, kw)?;
            Some(cast(g.permute((2, 3, 1, 0))?.contiguous()?, kdt)?)
        }
        None => None,
    };
    let mut grads = vec![gx, gk];
    if let Some((bdt, need)) = bias {
        grads.push(need.then(|| cast(gy.sum((0, 1, 2))?, bdt)).transpose()?);
    }
    Ok(grads)
}

/// The part of a convolution layer's activation `act` that its graph node applies, and the part
/// left to apply after it: the node takes the elementwise ones (the activation's ops then also
/// turn the NCHW result into the node's NHWC output, and the activation is no node of its own,
/// with its output copy and, in the backward pass, candle's accumulation of its input's
/// gradient); softmax (over the last axis of the layer's data format) and GELU (differentiated by
/// candle) are applied after.
pub(crate) fn split_activation(act: Activation) -> (Activation, Activation) {
    match act {
        Activation::Softmax | Activation::LogSoftmax | Activation::Gelu => {
            (Activation::Linear, act)
        }
        _ => (act, Activation::Linear),
    }
}

/// The node's value: `act` of the result `y` (channels last), and what `act`'s backward needs
/// besides the output.
fn activated(act: Activation, y: &Tensor) -> Result<(crate::tape::NodeValue, Option<Tensor>)> {
    match act.forward_saving(y)? {
        Some(v) => Ok(v),
        None => Err(crate::Error::value(format!(
            "a convolution's graph node cannot apply the activation {}; apply it after the node",
            act.name()
        ))),
    }
}

/// A `Conv2D` layer (channels last) as one node of the recorded graph ([`crate::tape::node`]):
/// `x` (N, H, W, in) in the compute dtype, `kernel` the (kh, kw, in, out) variable, `bias` the
/// (out) variable, `pads` the ((top, bottom), (left, right)) zero padding, `act` an elementwise
/// activation ([`split_activation`]). The layout changes, the padding, the bias and the
/// activation are done on detached tensors, so the backward pass pays candle's per-argument
/// accumulation once, for `x`, and hands the variables' gradients to the tape. By input pixel
/// ([`conv2d_by_pixel`]) when that makes fewer values than the patches, else by patches.
///
/// # Errors
/// Shapes that do not make a convolution, an activation that is not elementwise, or a device
/// failure.
pub(crate) fn conv2d_layer(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    pads: ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
    act: Activation,
) -> Result<Tensor> {
    if let Some(g) = ByPixel::new(x, kernel, pads, stride, dilation)?
        && by_pixel()
        && g.fewer_values()
    {
        return conv2d_by_pixel(x, kernel, bias, g, act);
    }
    conv2d_by_patches(x, kernel, bias, pads, stride, dilation, act)
}

/// [`conv2d_layer`] as candle's `conv2d` (patches, or cuDNN), differentiated by forward
/// convolutions.
fn conv2d_by_patches(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    pads: ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
    act: Activation,
) -> Result<Tensor> {
    let (s, d) = (stride, dilation);
    let dt = x.dtype();
    let (_, h, w, _) = x.dims4()?;
    let (kh, kw, _, f) = kernel.dims4()?;
    // The padding every side shares is the convolution's own; the rest (Keras's "same" with a
    // stride pads one side more) goes into the NCHW copy.
    let (p, ph, pw) = split_padding(pads.0, pads.1);
    let xn = nchw_padded(&x.detach(), ph, pw)?;
    let k = cast(kernel.detach(), dt)?
        .permute((3, 2, 0, 1))?
        .contiguous()?;
    let mut y = xn.conv2d(&k, p, s, d, 1)?;
    if let Some(b) = bias {
        y = y.broadcast_add(&cast(b.detach(), dt)?.reshape((1, f, 1, 1))?)?;
    }
    let (kdt, bdt) = (kernel.dtype(), bias.map(|b| b.dtype()));
    let mut args = vec![x, kernel];
    args.extend(bias);
    let (value, saved) = activated(act, &y.permute((0, 2, 3, 1))?)?;
    crate::tape::node(&args, value, move |gy, out, needs| {
        let gy = &act.backward(gy, out, saved.as_ref())?;
        let gyn = gy.permute((0, 3, 1, 2))?.contiguous()?;
        let gx = if needs[0] {
            // The transposed convolution of the output gradient by the same kernel, over the
            // padded input (rows no window reaches get zero), without the padding.
            let (_, _, hp, wp) = xn.dims4()?;
            let g = conv_transpose2d_full(&gyn, &k, s, d)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            Some(
                fit_hw(&g, hp + 2 * p, wp + 2 * p)?
                    .narrow(2, p + ph.0, h)?
                    .narrow(3, p + pw.0, w)?
                    .permute((0, 2, 3, 1))?,
            )
        } else {
            None
        };
        // candle's kernel gradient: a convolution of the inputs by the output gradient.
        let gk = if needs[1] {
            Some(swapped_conv(&xn, &gyn, p, s, d)?)
        } else {
            None
        };
        layer_grads(gx, gk, (kh, kw, kdt), gy, bdt.map(|dt| (dt, needs[2])))
    })
}

/// Whether a convolution to fewer values per input pixel than its patches hold runs by input
/// pixel ([`conv2d_by_pixel`], the default), or always by patches (`FERROKERAS_CONV=im2col`, read
/// once: a switch for measuring one against the other).
fn by_pixel() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROKERAS_CONV").map_or(true, |v| v != "im2col"))
}

/// The shapes of a convolution layer's step by input pixel ([`conv2d_by_pixel`]).
#[derive(Clone, Copy, Debug, PartialEq)]
struct ByPixel {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    f: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    dilation: usize,
    top: usize,
    left: usize,
    oh: usize,
    ow: usize,
}

impl ByPixel {
    /// The geometry of `x` (N, H, W, in) convolved by `kernel` (kh, kw, in, out), or `None` when
    /// the shapes make no convolution (the patches' path then says why) or its indices would not
    /// fit in u32.
    fn new(
        x: &Tensor,
        kernel: &Tensor,
        ((top, bottom), (left, right)): ((usize, usize), (usize, usize)),
        stride: usize,
        dilation: usize,
    ) -> Result<Option<Self>> {
        let (n, h, w, c) = x.dims4()?;
        let (kh, kw, kc, f) = kernel.dims4()?;
        if kc != c || kh == 0 || kw == 0 || stride == 0 || dilation == 0 {
            return Ok(None);
        }
        let (eh, ew) = ((kh - 1) * dilation + 1, (kw - 1) * dilation + 1);
        let (ph, pw) = (h + top + bottom, w + left + right);
        if ph < eh || pw < ew {
            return Ok(None);
        }
        let (oh, ow) = ((ph - eh) / stride + 1, (pw - ew) / stride + 1);
        let taps = kh * kw;
        if (h * w).max(oh * ow).saturating_mul(taps) >= u32::MAX as usize {
            return Ok(None);
        }
        Ok(Some(Self {
            n,
            h,
            w,
            c,
            f,
            kh,
            kw,
            stride,
            dilation,
            top,
            left,
            oh,
            ow,
        }))
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Whether the products per input pixel (`taps · out` each) are fewer values than the patches
    /// (`taps · in` per output position): the GAN's last convolution (128 channels to 1, 7x7)
    /// makes 49 values per pixel instead of 6 272.
    fn fewer_values(&self) -> bool {
        self.h * self.w * self.f < self.oh * self.ow * self.c
    }

    /// For each output position and tap, the index (pixel · taps + tap) of the product that it
    /// sums, and for each input pixel and tap, the output position that the pair feeds (u32::MAX,
    /// candle's index for a zero, where none): made once per geometry and device.
    fn indices(&self, device: &candle_core::Device) -> candle_core::Result<(Tensor, Tensor)> {
        static CACHE: crate::ops::DeviceCache<ByPixel, (Tensor, Tensor)> =
            crate::ops::DeviceCache::new();
        // The indices do not depend on the batch or the channels.
        let key = Self {
            n: 0,
            c: 0,
            f: 0,
            ..*self
        };
        CACHE.get_or_make(device, key, || {
            let Self {
                h,
                w,
                kh,
                kw,
                stride: s,
                dilation: d,
                top,
                left,
                oh,
                ow,
                ..
            } = *self;
            let taps = self.taps();
            // The input row or column that tap `i` of output `o` reads, if inside.
            let src = |o: usize, i: usize, pad: usize, len: usize| {
                (o * s + i * d).checked_sub(pad).filter(|&q| q < len)
            };
            // The output row or column that tap `i` of input `p` feeds, if any.
            let dst = |p: usize, i: usize, pad: usize, len: usize| {
                (p + pad)
                    .checked_sub(i * d)
                    .filter(|q| q % s == 0 && q / s < len)
                    .map(|q| q / s)
            };
            let mut gather = Vec::with_capacity(oh * ow * taps);
            for oy in 0..oh {
                for ox in 0..ow {
                    for i in 0..kh {
                        for j in 0..kw {
                            gather.push(match (src(oy, i, top, h), src(ox, j, left, w)) {
                                (Some(y), Some(x)) => ((y * w + x) * taps + i * kw + j) as u32,
                                _ => u32::MAX,
                            });
                        }
                    }
                }
            }
            let mut scatter = Vec::with_capacity(h * w * taps);
            for py in 0..h {
                for px in 0..w {
                    for i in 0..kh {
                        for j in 0..kw {
                            scatter.push(match (dst(py, i, top, oh), dst(px, j, left, ow)) {
                                (Some(y), Some(x)) => (y * ow + x) as u32,
                                _ => u32::MAX,
                            });
                        }
                    }
                }
            }
            let (lg, ls) = (gather.len(), scatter.len());
            Ok((
                Tensor::from_vec(gather, lg, device)?,
                Tensor::from_vec(scatter, ls, device)?,
            ))
        })
    }
}

/// The sum over axis 2 of `t`, accumulated in float32 when `t` is a half type.
fn sum_taps(t: &Tensor) -> candle_core::Result<Tensor> {
    let dt = t.dtype();
    if dt == candle_core::DType::F32 || dt == candle_core::DType::F64 {
        t.sum(2)
    } else {
        t.to_dtype(candle_core::DType::F32)?.sum(2)?.to_dtype(dt)
    }
}

/// [`conv2d_layer`] by input pixel ("kn2row"): one matrix product of the input's pixels
/// (N·H·W, in) by the kernel as (in, taps·out), then each output the sum of the products that
/// its window's taps give (one gather, one sum). The backward pass gathers, for each input pixel
/// and tap, the output gradient that the pair fed, and both gradients are one product each with
/// it. Buffers of `taps · out` values per input pixel, instead of patches of `taps · in` values
/// per output position: for the GAN's last convolution (128 channels to 1, 7x7, 64 images of
/// 28x28) 9.8 MB instead of 1.26 GB, forward and for the kernel gradient.
fn conv2d_by_pixel(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    g: ByPixel,
    act: Activation,
) -> Result<Tensor> {
    let dt = x.dtype();
    let ByPixel {
        n,
        h,
        w,
        c,
        f,
        kh,
        kw,
        oh,
        ow,
        ..
    } = g;
    let taps = g.taps();
    let (gather, scatter) = g.indices(x.device())?;
    let xm = x.detach().reshape((n * h * w, c))?;
    let wm = cast(kernel.detach(), dt)?
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((c, taps * f))?;
    let z = xm.matmul(&wm)?.reshape((n, h * w * taps, f))?;
    let y = z.index_select(&gather, 1)?.reshape((n, oh * ow, taps, f))?;
    let mut y = sum_taps(&y)?.reshape((n, oh, ow, f))?;
    if let Some(b) = bias {
        y = y.broadcast_add(&cast(b.detach(), dt)?)?;
    }
    let (kdt, bdt) = (kernel.dtype(), bias.map(|b| b.dtype()));
    let mut args = vec![x, kernel];
    args.extend(bias);
    let (value, saved) = activated(act, &y)?;
    crate::tape::node(&args, value, move |gy, out, needs| {
        let gy = &act.backward(gy, out, saved.as_ref())?;
        // For each input pixel and tap, the gradient of the output that the pair fed.
        let gs = if needs[0] || needs[1] {
            Some(
                gy.reshape((n, oh * ow, f))?
                    .index_select(&scatter, 1)?
                    .reshape((n * h * w, taps * f))?,
            )
        } else {
            None
        };
        let (gx, gk) = match &gs {
            Some(gs) => (
                needs[0]
                    .then(|| gs.matmul(&wm.t()?)?.reshape((n, h, w, c)))
                    .transpose()?,
                needs[1]
                    .then(|| {
                        let gk = xm.t()?.matmul(gs)?.reshape((c, kh, kw, f))?;
                        cast(gk.permute((1, 2, 0, 3))?.contiguous()?, kdt)
                    })
                    .transpose()?,
            ),
            None => (None, None),
        };
        let mut grads = vec![gx, gk];
        if let Some(bdt) = bdt {
            grads.push(
                needs[2]
                    .then(|| cast(gy.sum((0, 1, 2))?, bdt))
                    .transpose()?,
            );
        }
        Ok(grads)
    })
}

/// A `Conv2DTranspose` layer (channels last) as one node of the recorded graph, as
/// [`conv2d_layer`]: `x` (N, H, W, in), `kernel` the (kh, kw, out, in) variable, `bias` (out);
/// of the full transposed output, the window of `rows.1` rows from `rows.0` and `cols.1` columns
/// from `cols.0` is kept (zeros past the full output's end); `act` as there.
///
/// # Errors
/// As [`conv2d_layer`].
pub(crate) fn conv_transpose2d_layer(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    (rows, cols): ((usize, usize), (usize, usize)),
    stride: usize,
    dilation: usize,
    act: Activation,
) -> Result<Tensor> {
    let (s, d) = (stride, dilation);
    let dt = x.dtype();
    let (kh, kw, f, _) = kernel.dims4()?;
    let xn = x.detach().permute((0, 3, 1, 2))?.contiguous()?;
    // candle's transposed layout (in, out, kh, kw).
    let k = cast(kernel.detach(), dt)?
        .permute((3, 2, 0, 1))?
        .contiguous()?;
    let full = conv_transpose2d_full(&xn, &k, s, d)?;
    let (_, _, fh, fw) = full.dims4()?;
    let mut y = fit_hw(&full, rows.0 + rows.1, cols.0 + cols.1)?
        .narrow(2, rows.0, rows.1)?
        .narrow(3, cols.0, cols.1)?;
    if let Some(b) = bias {
        y = y.broadcast_add(&cast(b.detach(), dt)?.reshape((1, f, 1, 1))?)?;
    }
    let (kdt, bdt) = (kernel.dtype(), bias.map(|b| b.dtype()));
    let mut args = vec![x, kernel];
    args.extend(bias);
    let (value, saved) = activated(act, &y.permute((0, 2, 3, 1))?)?;
    crate::tape::node(&args, value, move |gy, out, needs| {
        let gy = &act.backward(gy, out, saved.as_ref())?;
        // The gradient of the full output: the kept window's, zeros elsewhere. When the window
        // lies inside the full output, the zeros are padding: what all four sides share is the
        // convolutions' own (Keras's "same" crops as much on each side), the rest padded here.
        let (gfull, p) = if rows.0 + rows.1 <= fh && cols.0 + cols.1 <= fw {
            let (p, ph, pw) = split_padding(
                (rows.0, fh - rows.0 - rows.1),
                (cols.0, fw - cols.0 - cols.1),
            );
            (nchw_padded(gy, ph, pw)?, p)
        } else {
            let g = gy
                .permute((0, 3, 1, 2))?
                .pad_with_zeros(2, rows.0, fh.saturating_sub(rows.0 + rows.1))?
                .pad_with_zeros(3, cols.0, fw.saturating_sub(cols.0 + cols.1))?
                .narrow(2, 0, fh)?
                .narrow(3, 0, fw)?;
            (g.contiguous()?, 0)
        };
        let gx = if needs[0] {
            // The forward convolution that this layer transposes.
            Some(gfull.conv2d(&k, p, s, d, 1)?.permute((0, 2, 3, 1))?)
        } else {
            None
        };
        // candle's kernel gradient of a transposed convolution.
        let gk = if needs[1] {
            Some(swapped_conv(&gfull, &xn, p, s, d)?)
        } else {
            None
        };
        layer_grads(gx, gk, (kh, kw, kdt), gy, bdt.map(|dt| (dt, needs[2])))
    })
}

/// Passes the convolution computed outside through, with gradients from forward convolutions.
struct ConvGrad {
    padding: usize,
    stride: usize,
    dilation: usize,
}

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-forward-only-gradients"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (p, s, d) = (self.padding, self.stride, self.dilation);
        let gx = if crate::tape::wanted(x) {
            // The input gradient is the transposed convolution of the output gradient by the
            // same kernel (by output phase when strided; see `conv_transpose2d_full`), over the
            // padded input, without the padding. Input positions no output window reaches (the
            // last rows when (H - extent) is not a multiple of the stride) get zero.
            let g = conv_transpose2d_full(&gy.detach(), &k.detach(), s, d)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let (_, _, h, w) = x.dims4()?;
            Some(
                fit_hw(&g, h + 2 * p, w + 2 * p)?
                    .narrow(2, p, h)?
                    .narrow(3, p, w)?,
            )
        } else {
            None
        };
        let gk = if crate::tape::wanted(k) {
            // candle's own kernel gradient: a convolution of the inputs by the output gradient.
            let (_, _, kh, kw) = k.dims4()?;
            let g = swapped_conv(x, gy, p, s, d)?;
            Some(g.narrow(2, 0, kh)?.narrow(3, 0, kw)?.contiguous()?)
        } else {
            None
        };
        Ok((crate::tape::route(x, gx)?, crate::tape::route(k, gk)?, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::max_rel;
    use crate::tape::Variable;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        crate::random::uniform_from(seed, shape, -1.0, 1.0, &Device::Cpu).unwrap()
    }

    /// `sum(a * b)`.
    fn dot(a: &Tensor, b: &Tensor) -> f32 {
        (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Strided transposed convolutions by output phase equal the dilated form: values, and both
    /// gradients, for kernels that are and are not multiples of the stride.
    #[test]
    fn phases_equal_the_dilated_form() {
        // (n, in, h, w, out, kh, kw, stride)
        let cases = [
            (2, 3, 7, 7, 4, 4, 4, 2),
            (1, 2, 5, 6, 3, 3, 3, 2),
            (2, 2, 4, 5, 2, 3, 2, 2),
            (1, 3, 4, 4, 2, 2, 3, 3),
            (1, 2, 3, 3, 2, 5, 5, 2),
            (2, 4, 7, 7, 3, 4, 4, 4),
        ];
        for (i, &(n, cin, h, w, cout, kh, kw, s)) in cases.iter().enumerate() {
            let seed = 300 + 10 * i as u64;
            let x = Variable::new("x", &rand(&[n, cin, h, w], seed), true).unwrap();
            let k = Variable::new("k", &rand(&[cin, cout, kh, kw], seed + 1), true).unwrap();
            let a = conv_transpose2d_phases(x.as_tensor(), k.as_tensor(), s).unwrap();
            let b = conv_transpose2d_dilated(x.as_tensor(), k.as_tensor(), s, 1).unwrap();
            assert_eq!(a.dims(), b.dims(), "case {i}");
            assert_eq!(a.dims()[2], (h - 1) * s + kh, "case {i}");
            assert!(
                max_rel(&a, &b) < 1e-5,
                "case {i} values: {}",
                max_rel(&a, &b)
            );
            let r = rand(a.dims(), seed + 2);
            let vars = [x.clone(), k.clone()];
            let ga = GradientTape::gradient(&(&a * &r).unwrap().sum_all().unwrap(), &vars).unwrap();
            let gb = GradientTape::gradient(&(&b * &r).unwrap().sum_all().unwrap(), &vars).unwrap();
            for (j, (ga, gb)) in ga.iter().zip(&gb).enumerate() {
                assert_eq!(ga.dims(), gb.dims(), "case {i} gradient {j}");
                assert!(
                    max_rel(ga, gb) < 1e-5,
                    "case {i} gradient {j}: {}",
                    max_rel(ga, gb)
                );
            }
        }
    }

    /// Values against candle's own conv2d / conv_transpose2d; gradients by the identity that a
    /// function linear in each argument satisfies exactly: for f(x) = sum(conv(x, k) * r),
    /// <df/dx, dx> = sum(conv(dx, k) * r), and the same for k (candle's own backward cannot be the
    /// reference: it gets the input gradient's width wrong when height and width leave different
    /// remainders under the stride).
    #[test]
    fn matches_candle_values_and_gradients() {
        // (n, c, h, w, f, kh, kw, stride, dilation, padding)
        let cases = [
            (2, 3, 7, 6, 4, 3, 3, 1, 1, 0),
            (2, 3, 8, 8, 5, 3, 3, 2, 1, 0),
            (1, 2, 9, 7, 3, 3, 2, 2, 1, 0),
            (2, 4, 7, 7, 2, 4, 4, 2, 1, 0),
            (1, 2, 10, 9, 3, 3, 3, 1, 2, 0),
            (1, 3, 11, 10, 2, 2, 3, 3, 1, 0),
            (2, 3, 7, 6, 4, 3, 3, 1, 1, 1),
            (1, 2, 9, 7, 3, 3, 2, 2, 1, 2),
            (1, 2, 10, 9, 3, 3, 3, 3, 2, 1),
        ];
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
        for (i, &(n, c, h, w, f, kh, kw, s, d, p)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            let k = rand(&[f, c, kh, kw], seed + 1);
            let dk = rand(&[f, c, kh, kw], seed + 2);
            let kv = Variable::new("k", &k, true).unwrap();

            let x = rand(&[n, c, h, w], seed + 3);
            let dx = rand(&[n, c, h, w], seed + 4);
            let xv = Variable::new("x", &x, true).unwrap();
            let ours = conv2d(xv.as_tensor(), kv.as_tensor(), p, s, d).unwrap();
            let theirs = x.conv2d(&k, p, s, d, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_rel(&ours, &theirs) < 1e-5, "case {i} values");
            let r = rand(ours.dims(), seed + 5);
            let vars = [xv.clone(), kv.clone()];
            let g =
                GradientTape::gradient(&(&ours * &r).unwrap().sum_all().unwrap(), &vars).unwrap();
            assert_eq!(g[0].dims(), x.dims(), "case {i}");
            let want_x = dot(&dx.conv2d(&k, p, s, d, 1).unwrap(), &r);
            let want_k = dot(&x.conv2d(&dk, p, s, d, 1).unwrap(), &r);
            assert!(close(dot(&g[0], &dx), want_x), "case {i} input gradient");
            assert!(close(dot(&g[1], &dk), want_k), "case {i} kernel gradient");

            // The transposed direction: input (n, f, ...), kernel (f, c, kh, kw) as candle takes it.
            let xt = rand(&[n, f, h, w], seed + 6);
            let dxt = rand(&[n, f, h, w], seed + 7);
            let xtv = Variable::new("xt", &xt, true).unwrap();
            let ours = conv_transpose2d_full(xtv.as_tensor(), kv.as_tensor(), s, d).unwrap();
            let theirs = xt.conv_transpose2d(&k, 0, 0, s, d).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {i} transposed");
            assert!(max_rel(&ours, &theirs) < 1e-5, "case {i} transposed values");
            let r = rand(ours.dims(), seed + 8);
            let vars = [xtv.clone(), kv.clone()];
            let g =
                GradientTape::gradient(&(&ours * &r).unwrap().sum_all().unwrap(), &vars).unwrap();
            let want_x = dot(&dxt.conv_transpose2d(&k, 0, 0, s, d).unwrap(), &r);
            let want_k = dot(&xt.conv_transpose2d(&dk, 0, 0, s, d).unwrap(), &r);
            assert!(
                close(dot(&g[0], &dxt), want_x),
                "case {i} transposed input gradient"
            );
            assert!(
                close(dot(&g[1], &dk), want_k),
                "case {i} transposed kernel gradient"
            );
        }
    }

    /// The phases' kernel from one gather equals its construction from candle's ops: the kernel
    /// zero padded to a multiple of the stride, split into phases, stacked and flipped (also
    /// stride 1: the flipped kernel in the forward layout).
    #[test]
    fn phase_kernels_are_the_split_flipped_kernel() {
        let flip = |k: &Tensor| {
            let (_, _, kh, kw) = k.dims4().unwrap();
            let dev = k.device();
            k.contiguous()
                .unwrap()
                .index_select(&crate::ops::indices(kh, true, dev).unwrap(), 2)
                .unwrap()
                .index_select(&crate::ops::indices(kw, true, dev).unwrap(), 3)
                .unwrap()
        };
        for (i, &(cin, cout, kh, kw, s)) in [
            (3, 2, 4, 4, 2),
            (2, 3, 3, 5, 2),
            (1, 2, 5, 3, 3),
            (2, 2, 3, 3, 1),
            (2, 1, 1, 2, 2),
        ]
        .iter()
        .enumerate()
        {
            let k = rand(&[cin, cout, kh, kw], 300 + i as u64);
            let (jh, jw) = (kh.div_ceil(s), kw.div_ceil(s));
            let want = flip(
                &k.pad_with_zeros(2, 0, jh * s - kh)
                    .unwrap()
                    .pad_with_zeros(3, 0, jw * s - kw)
                    .unwrap()
                    .reshape((cin, cout, jh, s, jw, s))
                    .unwrap()
                    .permute((3, 5, 1, 0, 2, 4))
                    .unwrap()
                    .reshape((s * s * cout, cin, jh, jw))
                    .unwrap(),
            );
            let got = phase_kernels(&k, s).unwrap();
            assert_eq!(got.dims(), want.dims(), "geometry {i}");
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(&got), flat(&want), "geometry {i}");
            // The second call (cached indices) gives the same.
            assert_eq!(flat(&phase_kernels(&k, s).unwrap()), flat(&want));
        }
    }

    /// The gathered padding equals candle's permute and zero padding, on contiguous and strided
    /// inputs.
    #[test]
    fn gathered_padding_is_the_padded_layout_copy() {
        let pads = [
            ((0, 1), (0, 1)),
            ((2, 0), (1, 3)),
            ((0, 0), (0, 0)),
            ((1, 1), (0, 0)),
        ];
        for (i, &(ph, pw)) in pads.iter().enumerate() {
            let t = rand(&[2, 3, 5, 4], 60 + i as u64);
            // A strided view with the same values: (N, W, H, C) transposed back.
            let strided = t
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(1, 2)
                .unwrap();
            let want = pad_hw(&t.permute((0, 3, 1, 2)).unwrap(), ph, pw).unwrap();
            for input in [&t, &strided] {
                let got = nchw_padded(input, ph, pw).unwrap();
                assert_eq!(got.dims(), want.dims(), "pads {i}");
                assert!(got.is_contiguous());
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(flat(&got), flat(&want), "pads {i}");
            }
        }
    }

    /// A convolution layer by input pixel gives the values and the three gradients (input,
    /// kernel, bias) of the same layer by patches: strides, dilations, Keras's uneven "same"
    /// padding, windows that reach no input pixel, several output channels, an activation, the
    /// gradients asked for one at a time, and float16 (summed in float32).
    #[test]
    fn by_pixel_equals_by_patches() {
        use crate::layers::Activation;
        type Case = (
            [usize; 4],
            [usize; 2],
            usize,
            ((usize, usize), (usize, usize)),
            usize,
            usize,
        );
        // (x shape, kernel size, out channels, pads, stride, dilation)
        let cases: [Case; 7] = [
            ([2, 9, 8, 5], [7, 7], 1, ((3, 3), (3, 3)), 1, 1),
            ([2, 7, 8, 3], [3, 3], 2, ((0, 1), (1, 1)), 2, 1),
            ([1, 8, 7, 4], [3, 2], 3, ((2, 2), (0, 3)), 1, 2),
            ([3, 6, 6, 2], [2, 2], 1, ((0, 0), (0, 0)), 1, 1),
            ([2, 5, 9, 3], [4, 3], 1, ((1, 2), (0, 0)), 3, 1),
            // Padding wider than the kernel: rows of outputs that read only zeros.
            ([1, 4, 4, 3], [2, 2], 2, ((3, 2), (1, 4)), 1, 1),
            ([2, 6, 5, 3], [1, 1], 2, ((0, 0), (0, 0)), 2, 1),
        ];
        let acts = [Activation::Linear, Activation::Relu, Activation::Sigmoid];
        for (i, &(xs, [kh, kw], f, pads, s, d)) in cases.iter().enumerate() {
            let act = acts[i % acts.len()];
            let x = Variable::new("x", &rand(&xs, 10 + i as u64), true).unwrap();
            let k = rand(&[kh, kw, xs[3], f], 20 + i as u64);
            let k = Variable::new("k", &k, true).unwrap();
            let b = Variable::new("b", &rand(&[f], 30 + i as u64), true).unwrap();
            let g = ByPixel::new(x.as_tensor(), k.as_tensor(), pads, s, d)
                .unwrap()
                .unwrap();
            let vars = [x.clone(), k.clone(), b.clone()];
            let run = |by: bool, take: &[usize]| {
                let (xt, kt, bt) = (x.as_tensor(), k.as_tensor(), Some(b.as_tensor()));
                let y = if by {
                    conv2d_by_pixel(xt, kt, bt, g, act).unwrap()
                } else {
                    conv2d_by_patches(xt, kt, bt, pads, s, d, act).unwrap()
                };
                let r = rand(y.dims(), 40 + i as u64);
                let loss = (&y * &r).unwrap().sum_all().unwrap();
                let wanted: Vec<Variable> = take.iter().map(|&j| vars[j].clone()).collect();
                (y, GradientTape::gradient(&loss, &wanted).unwrap())
            };
            let (yp, gp) = run(false, &[0, 1, 2]);
            let (yx, gx) = run(true, &[0, 1, 2]);
            assert_eq!(yp.dims(), yx.dims(), "case {i}");
            assert_eq!(yx.dims()[..3], [xs[0], g.oh, g.ow], "case {i}");
            assert!(
                max_rel(&yx, &yp) < 1e-5,
                "case {i} values: {}",
                max_rel(&yx, &yp)
            );
            for j in 0..3 {
                assert!(max_rel(&gx[j], &gp[j]) < 1e-5, "case {i} gradient {j}");
                let (_, alone) = run(true, &[j]);
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(flat(&alone[0]), flat(&gx[j]), "case {i} gradient {j} alone");
            }
            // Half precision: the same values within float16's rounding.
            let half = |t: &Tensor| t.to_dtype(candle_core::DType::F16).unwrap();
            let yh = conv2d_by_pixel(&half(x.as_tensor()), k.as_tensor(), None, g, act).unwrap();
            let yh32 =
                conv2d_by_patches(x.as_tensor(), k.as_tensor(), None, pads, s, d, act).unwrap();
            assert_eq!(yh.dtype(), candle_core::DType::F16);
            let yh = yh.to_dtype(candle_core::DType::F32).unwrap();
            assert!(
                max_rel(&yh, &yh32) < 1e-2,
                "case {i} f16: {}",
                max_rel(&yh, &yh32)
            );
        }
    }

    /// Conv2D and Conv2DTranspose layers (Keras "same"/"valid" padding, strides, bias,
    /// activation) give the same values and gradients through the other devices' path as through
    /// the CPU kernels.
    #[test]
    fn layers_agree_with_the_cpu_kernels() {
        use crate::layers::{Conv2D, Conv2DTranspose, Layer};
        type Make = fn() -> Box<dyn Layer>;
        let makes: [Make; 10] = [
            || Box::new(Conv2D::new(3, (3, 3)).padding("same").unwrap().strides(2)),
            || Box::new(Conv2D::new(2, (3, 2)).activation("relu").unwrap()),
            || {
                Box::new(
                    Conv2D::new(4, (3, 3))
                        .padding("same")
                        .unwrap()
                        .dilation_rate(2),
                )
            },
            || {
                Box::new(
                    Conv2DTranspose::new(3, (4, 4))
                        .strides(2)
                        .padding("same")
                        .unwrap()
                        .activation("tanh")
                        .unwrap(),
                )
            },
            || Box::new(Conv2DTranspose::new(2, (3, 3)).strides(2)),
            || {
                Box::new(
                    Conv2D::new(3, (3, 3))
                        .padding("same")
                        .unwrap()
                        .strides(2)
                        .activation("leaky_relu")
                        .unwrap(),
                )
            },
            || {
                Box::new(
                    Conv2DTranspose::new(2, (2, 3))
                        .strides(2)
                        .activation("sigmoid")
                        .unwrap(),
                )
            },
            || Box::new(Conv2D::new(3, (2, 2)).activation("softmax").unwrap()),
            // To fewer channels than in: by input pixel (the GAN's last layer).
            || {
                Box::new(
                    Conv2D::new(1, (7, 7))
                        .padding("same")
                        .unwrap()
                        .activation("sigmoid")
                        .unwrap(),
                )
            },
            // A kernel shorter than the stride: Keras's "same" window ends past the full output.
            || {
                Box::new(
                    Conv2DTranspose::new(2, (1, 3))
                        .strides(2)
                        .padding("same")
                        .unwrap(),
                )
            },
        ];
        for (i, make) in makes.iter().enumerate() {
            let x = rand(&[2, 7, 8, 3], 100 + i as u64);
            // One layer (one set of weights) and one cotangent for both paths.
            let mut layer = make();
            let [(yc, gc), (yg, gg)] =
                crate::kernels::both_paths(layer.as_mut(), &x, |s| rand(s, 200 + i as u64));
            assert_eq!(yc.dims(), yg.dims(), "layer {i}");
            assert!(max_rel(&yg, &yc) < 1e-5, "layer {i} values");
            for (j, (a, b)) in gg.iter().zip(&gc).enumerate() {
                assert!(
                    max_rel(a, b) < 1e-4,
                    "layer {i} gradient {j}: {}",
                    max_rel(a, b)
                );
            }
        }
    }
}
