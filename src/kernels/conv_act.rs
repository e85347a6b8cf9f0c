//! A convolution (or transposed convolution) followed by `activation(· + bias)`, as one candle
//! custom op on the CPU.
//!
//! Why: as two ops, the convolution's output is a graph node of its own. Besides the extra pass
//! over it, candle's backward then creates a zero tensor of its size and adds the gradient to it.
//! One op keeps the gradient of the activation's input internal to the backward pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::elementwise::{Act, activation_grad, activation_seq, bias_activation_seq, bias_grad};
use super::pool::{MaxPoolScatter, PoolGeometry, max_pool_forward};
use crate::layers::im2col::{
    Conv, ConvData, ConvFilter, Geometry, conv_data_run, conv_pooled_grads, conv_run,
    conv_run_pooled, pooled_grads_fit,
};

/// Which convolution the op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `Conv`: `x (n,h,w,c)`, `w (K, f)` → `(n*oh*ow, f)`.
    Forward,
    /// `ConvData` (a transposed convolution): `x (n*oh*ow, f)`, `w (K, f)` → `(n, h, w, c)`.
    Transposed,
}

/// `act(conv(x, w) + b)`: inputs `(x, w, b)`.
pub(crate) struct ConvAct {
    pub dir: Direction,
    pub g: Geometry,
    pub f: usize,
    pub act: Act,
}

impl CustomOp3 for ConvAct {
    fn name(&self) -> &'static str {
        "conv2d_nhwc_bias_activation"
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
        let (g, f) = (self.g, self.f);
        let x = super::cpu_f32(s1, l1, "convolution input")?;
        let w = super::cpu_f32(s2, l2, "convolution kernel")?;
        let b = super::cpu_f32(s3, l3, "convolution bias")?;
        let (x_len, w_len) = match self.dir {
            Direction::Forward => (g.n * g.h * g.w * g.c, g.kh * g.kw * g.c * f),
            Direction::Transposed => (g.n * g.oh * g.ow * f, g.kh * g.kw * g.c * f),
        };
        let channels = match self.dir {
            Direction::Forward => f,
            Direction::Transposed => g.c,
        };
        if x.len() != x_len || w.len() != w_len || b.len() != channels {
            candle_core::bail!(
                "convolution: received input, kernel and bias of {}, {} and {} values, expected {x_len}, {w_len} and {channels} for {g:?}",
                x.len(),
                w.len(),
                b.len()
            )
        }
        // Bias and activation on each finished part of the output while it is in cache.
        let act = self.act;
        let epi = move |y: &mut [f32]| bias_activation_seq(y, b, act);
        let (y, shape) = match self.dir {
            Direction::Forward => (
                conv_run(&g, f, x, w, Some(&epi)),
                Shape::from((g.n, g.oh, g.ow, f)),
            ),
            Direction::Transposed => (
                conv_data_run(&g, f, x, w, Some(&epi)),
                Shape::from((g.n, g.h, g.w, g.c)),
            ),
        };
        Ok((CpuStorage::F32(y), shape))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, f) = (self.g, self.f);
        let gz = activation_grad(y, gy, self.act)?;
        let gb = if crate::tape::wanted(b) {
            Some(bias_grad(&gz, b.elem_count())?.reshape(b.shape())?)
        } else {
            None
        };
        let (gx, gw) = match self.dir {
            Direction::Forward => {
                let gx = if crate::tape::wanted(x) {
                    Some(gz.apply_op2_no_bwd(w, &ConvData { g, f })?)
                } else {
                    None
                };
                let gw = crate::tape::wanted(w)
                    .then(|| x.apply_op2_no_bwd(&gz, &ConvFilter { g, f }))
                    .transpose()?;
                (gx, gw)
            }
            Direction::Transposed => {
                let gx = if crate::tape::wanted(x) {
                    Some(gz.apply_op2_no_bwd(w, &Conv { g, f })?)
                } else {
                    None
                };
                let gw = crate::tape::wanted(w)
                    .then(|| gz.apply_op2_no_bwd(&x.contiguous()?, &ConvFilter { g, f }))
                    .transpose()?;
                (gx, gw)
            }
        };
        Ok((
            crate::tape::route(x, gx)?,
            crate::tape::route(w, gw)?,
            crate::tape::route(b, gb)?,
        ))
    }
}

/// `maxpool(act(conv(x, w) + b))`: inputs `(x, w, b)`, a forward convolution only. The
/// activation's output is pooled image by image and dropped; the backward pass needs only where
/// each maximum was (kept here) and the activation's derivative there, which it reads from the
/// pooled value itself (the maximum *is* that activation output).
pub(crate) struct ConvActPool {
    pub g: Geometry,
    pub f: usize,
    pub act: Act,
    pub pool: PoolGeometry,
    /// Where each maximum was, and whether maxima that ReLU zeroed were dropped from it (then the
    /// backward needs no mask of ReLU's derivative: see `conv_run_pooled`).
    argmax: std::sync::Mutex<Option<(std::sync::Arc<Vec<u32>>, bool)>>,
}

impl CustomOp3 for ConvActPool {
    fn name(&self) -> &'static str {
        "conv2d_nhwc_bias_activation_max_pool"
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
        let (g, f, p) = (self.g, self.f, self.pool);
        let x = super::cpu_f32(s1, l1, "convolution input")?;
        let w = super::cpu_f32(s2, l2, "convolution kernel")?;
        let b = super::cpu_f32(s3, l3, "convolution bias")?;
        let (x_len, w_len) = (g.n * g.h * g.w * g.c, g.kh * g.kw * g.c * f);
        if x.len() != x_len
            || w.len() != w_len
            || b.len() != f
            || (p.n, p.h, p.w, p.c) != (g.n, g.oh, g.ow, f)
        {
            candle_core::bail!(
                "convolution + pooling: received input, kernel and bias of {}, {} and {} values, expected {x_len}, {w_len} and {f} for {g:?} and {p:?}",
                x.len(),
                w.len(),
                b.len()
            )
        }
        if p.h * p.w * p.c > u32::MAX as usize {
            candle_core::bail!("convolution + pooling: feature maps of {p:?} are too large")
        }
        let act = self.act;
        let epi = move |y: &mut [f32]| bias_activation_seq(y, b, act);
        // ReLU and the identity: the bias inside the pooling's comparison, the activation on the
        // maxima only (see `pool_image_biased`; other activations can tie where ReLU cannot).
        let post = move |y: &mut [f32]| activation_seq(y, act);
        let zero_ends = act == Act::Relu;
        let biased = matches!(act, Act::Relu | Act::Linear).then_some((b, &post as _, zero_ends));
        let ((y, at), masked) = match conv_run_pooled(&g, f, x, w, Some(&epi), biased, &p) {
            Some(pooled) => (pooled, zero_ends),
            None => (
                max_pool_forward(&p, &conv_run(&g, f, x, w, Some(&epi))),
                false,
            ),
        };
        if let Ok(mut slot) = self.argmax.lock() {
            *slot = Some((std::sync::Arc::new(at), masked));
        }
        Ok((CpuStorage::F32(y), Shape::from((p.n, p.oh, p.ow, p.c))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, f, p) = (self.g, self.f, self.pool);
        let Some((argmax, masked)) = self.argmax.lock().ok().and_then(|s| s.clone()) else {
            candle_core::bail!("convolution + pooling: backward before forward")
        };
        let every_window_kept = p.no_empty_window();
        if every_window_kept && pooled_grads_fit(&g, f, &p) {
            // Both products and the bias gradient straight from the pooled gradient, block by
            // block; the activation's gradient at each maximum from the maximum itself, unless
            // the maxima where ReLU's derivative is zero were dropped in the forward pass.
            let dy = if masked {
                gy.contiguous()?
            } else {
                activation_grad(y, gy, self.act)?.contiguous()?
            };
            let op = PooledConvGrad {
                g,
                f,
                pool: p,
                argmax,
                input_grad: crate::tape::wanted(x),
                kernel_grad: std::sync::Mutex::new(None),
                bias_grad: std::sync::Mutex::new(None),
            };
            let out = x.apply_op3_no_bwd(w, &dy, &op)?;
            let (gx, gw) = if op.input_grad {
                let Some(gw) = op.kernel_grad.lock().ok().and_then(|mut s| s.take()) else {
                    candle_core::bail!("convolution + pooling: kernel gradient missing")
                };
                let gw = Tensor::from_vec(gw, (g.kh * g.kw * g.c, f), x.device())?;
                (Some(out), gw)
            } else {
                (None, out)
            };
            let gb = if crate::tape::wanted(b) {
                let Some(gb) = op.bias_grad.lock().ok().and_then(|mut s| s.take()) else {
                    candle_core::bail!("convolution + pooling: bias gradient missing")
                };
                Some(Tensor::from_vec(gb, b.shape(), b.device())?)
            } else {
                None
            };
            return Ok((
                crate::tape::route(x, gx)?,
                crate::tape::route(w, Some(gw))?,
                crate::tape::route(b, gb)?,
            ));
        }
        // The activation's gradient at each maximum, from the maximum itself.
        let dy = activation_grad(y, gy, self.act)?.contiguous()?;
        // Each pooled gradient lands at exactly one place (unless its window is empty, which
        // "valid" and "same" windows never are): the bias gradient sums the pooled gradients, a
        // quarter of the values for 2x2 windows.
        let pooled_bias_grad = (crate::tape::wanted(b) && every_window_kept)
            .then(|| bias_grad(&dy, f))
            .transpose()?;
        let gz = dy
            .apply_op1_no_bwd(&MaxPoolScatter { g: p, argmax })?
            .reshape((g.n * g.oh * g.ow, f))?;
        let gb = match pooled_bias_grad {
            Some(gb) => Some(gb.reshape(b.shape())?),
            None if crate::tape::wanted(b) => Some(bias_grad(&gz, f)?.reshape(b.shape())?),
            None => None,
        };
        let gx = if crate::tape::wanted(x) {
            Some(gz.apply_op2_no_bwd(w, &ConvData { g, f })?)
        } else {
            None
        };
        let gw = crate::tape::wanted(w)
            .then(|| x.apply_op2_no_bwd(&gz, &ConvFilter { g, f }))
            .transpose()?;
        Ok((
            crate::tape::route(x, gx)?,
            crate::tape::route(w, gw)?,
            crate::tape::route(b, gb)?,
        ))
    }
}

/// [`ConvActPool`]'s kernel gradient and (with `input_grad`) input gradient from the activation's
/// gradient at the pooled maxima: inputs `(x, w, dy)`; the output is the input gradient
/// `(n, h, w, c)`, the kernel gradient `(K, f)` left in `kernel_grad`, or, without
/// `input_grad`, the kernel gradient itself; the bias gradient `(f)` is left in `bias_grad`
/// (see [`conv_pooled_grads`]).
struct PooledConvGrad {
    g: Geometry,
    f: usize,
    pool: PoolGeometry,
    argmax: std::sync::Arc<Vec<u32>>,
    input_grad: bool,
    kernel_grad: std::sync::Mutex<Option<Vec<f32>>>,
    bias_grad: std::sync::Mutex<Option<Vec<f32>>>,
}

impl CustomOp3 for PooledConvGrad {
    fn name(&self) -> &'static str {
        "conv2d_nhwc_max_pool_grads"
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
        let (g, f, p) = (self.g, self.f, self.pool);
        let x = super::cpu_f32(s1, l1, "convolution input")?;
        let w = super::cpu_f32(s2, l2, "convolution kernel")?;
        let dy = super::cpu_f32(s3, l3, "pooled gradient")?;
        let k = g.kh * g.kw * g.c;
        let pooled = p.n * p.oh * p.ow * p.c;
        if x.len() != g.n * g.h * g.w * g.c
            || w.len() != k * f
            || dy.len() != pooled
            || self.argmax.len() != pooled
        {
            candle_core::bail!(
                "convolution + pooling gradients: received input, kernel, gradient and argmax of {}, {}, {} and {} values for {g:?} and {p:?}",
                x.len(),
                w.len(),
                dy.len(),
                self.argmax.len()
            )
        }
        let (gw, gx, gb) = conv_pooled_grads(&g, f, x, w, dy, &self.argmax, &p, self.input_grad);
        if let Ok(mut slot) = self.bias_grad.lock() {
            *slot = Some(gb);
        }
        Ok(match gx {
            Some(gx) => {
                if let Ok(mut slot) = self.kernel_grad.lock() {
                    *slot = Some(gw);
                }
                (CpuStorage::F32(gx), Shape::from((g.n, g.h, g.w, g.c)))
            }
            None => (CpuStorage::F32(gw), Shape::from((k, f))),
        })
    }
}

/// `maxpool(act(conv(x, w) + b))` for a forward convolution (see [`ConvActPool`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bias_activation_pool(
    g: Geometry,
    f: usize,
    act: Act,
    pool: PoolGeometry,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        ConvActPool {
            g,
            f,
            act,
            pool,
            argmax: std::sync::Mutex::new(None),
        },
    )
}

/// `act(conv(x, w) + b)` (`b` of the output's channels; a plain zero tensor when the layer has no
/// bias).
pub(crate) fn conv_bias_activation(
    dir: Direction,
    g: Geometry,
    f: usize,
    act: Act,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        ConvAct { dir, g, f, act },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::max_rel;
    use crate::layers::{Conv2D, Conv2DTranspose, Layer, LeakyReLU};
    use crate::tape::Variable;
    use candle_core::Device;

    /// The fused op against the convolution op followed by candle's bias add and activation.
    #[test]
    fn fused_conv_matches_separate_ops() {
        let dev = Device::Cpu;
        let g = Geometry {
            n: 2,
            h: 7,
            w: 6,
            c: 3,
            kh: 3,
            kw: 3,
            stride: 2,
            dilation: 1,
            pad_t: 1,
            pad_l: 0,
            oh: 4,
            ow: 2,
        };
        let f = 5;
        for dir in [Direction::Forward, Direction::Transposed] {
            for act in [
                Act::Linear,
                Act::Relu,
                Act::Leaky(0.2),
                Act::Sigmoid,
                Act::Tanh,
            ] {
                let xshape: Vec<usize> = match dir {
                    Direction::Forward => vec![g.n, g.h, g.w, g.c],
                    Direction::Transposed => vec![g.n * g.oh * g.ow, f],
                };
                let x = Variable::new(
                    "x",
                    &crate::kernels::fixed_randn(1.0, xshape, &dev).unwrap(),
                    true,
                )
                .unwrap();
                let w = Variable::new(
                    "w",
                    &crate::kernels::fixed_randn(1.0, (g.kh * g.kw * g.c, f), &dev).unwrap(),
                    true,
                )
                .unwrap();
                let channels = if dir == Direction::Forward { f } else { g.c };
                let b = Variable::new(
                    "b",
                    &crate::kernels::fixed_randn(1.0, channels, &dev).unwrap(),
                    true,
                )
                .unwrap();
                let vars = [x.clone(), w.clone(), b.clone()];
                let ours = conv_bias_activation(
                    dir,
                    g,
                    f,
                    act,
                    x.as_tensor(),
                    w.as_tensor(),
                    b.as_tensor(),
                )
                .unwrap();
                let z = match dir {
                    Direction::Forward => x.as_tensor().apply_op2(w.as_tensor(), Conv { g, f }),
                    Direction::Transposed => {
                        x.as_tensor().apply_op2(w.as_tensor(), ConvData { g, f })
                    }
                }
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
                let theirs = match act {
                    Act::Linear => z,
                    Act::Relu => z.relu().unwrap(),
                    Act::Leaky(s) => {
                        (z.relu().unwrap() - (z.neg().unwrap().relu().unwrap() * s as f64)).unwrap()
                    }
                    Act::Sigmoid => (z.neg().unwrap().exp().unwrap() + 1.0)
                        .unwrap()
                        .recip()
                        .unwrap(),
                    Act::Tanh => z.tanh().unwrap(),
                };
                let case = format!("{dir:?} {act:?}");
                assert_eq!(ours.dims(), theirs.dims(), "{case}");
                assert!(max_rel(&ours, &theirs) < 1e-5, "forward {case}");
                let up = crate::kernels::fixed_randn(1.0, ours.dims(), &dev).unwrap();
                let g1 = GradientTape::gradient(&(&ours * &up).unwrap().sum_all().unwrap(), &vars)
                    .unwrap();
                let g2 =
                    GradientTape::gradient(&(&theirs * &up).unwrap().sum_all().unwrap(), &vars)
                        .unwrap();
                for (i, what) in ["input", "kernel", "bias"].iter().enumerate() {
                    assert!(max_rel(&g1[i], &g2[i]) < 1e-5, "{what} gradient {case}");
                }
            }
        }
    }

    /// A Sequential fuses a convolution with the activation layer after it; the result is the
    /// same as running the two layers one after the other.
    #[test]
    fn sequential_fusion_gives_the_same_values_and_gradients() {
        let dev = Device::Cpu;
        let seq = crate::Sequential::new()
            .input(&[5, 5, 4])
            .add(
                Conv2DTranspose::new(3, (4, 4))
                    .strides(2)
                    .padding("same")
                    .unwrap(),
            )
            .add(LeakyReLU::new(0.2))
            .add(Conv2D::new(2, (3, 3)).padding("same").unwrap())
            .add(LeakyReLU::new(0.3));
        check_fusion(
            seq,
            crate::kernels::fixed_randn(1.0, (2, 5, 5, 4), &dev).unwrap(),
        );
        let seq = crate::Sequential::new()
            .input(&[6])
            .add(crate::layers::Dense::new(4))
            .add(LeakyReLU::new(0.2))
            .add(crate::layers::Dense::new(3))
            .add(crate::layers::ReLU::new());
        check_fusion(seq, crate::kernels::fixed_randn(1.0, (5, 6), &dev).unwrap());
        // Convolution (+ activation) + max pooling, as the MNIST convnet: its own activation,
        // an activation layer, odd sizes with "same" pooling, and overlapping windows.
        let seq = crate::Sequential::new()
            .input(&[12, 12, 2])
            .add(Conv2D::new(4, (3, 3)).activation("relu").unwrap())
            .add(crate::layers::MaxPooling2D::new((2, 2)))
            .add(Conv2D::new(3, (2, 2)))
            .add(LeakyReLU::new(0.1))
            .add(
                crate::layers::MaxPooling2D::new((2, 2))
                    .padding("same")
                    .unwrap(),
            )
            .add(Conv2D::new(2, (1, 1)).activation("tanh").unwrap())
            .add(crate::layers::MaxPooling2D::new((2, 2)).strides((1, 1)));
        // Rounded inputs and weights: windows with tied maxima.
        let x = crate::kernels::fixed_randn(2.0, (3, 12, 12, 2), &dev)
            .unwrap()
            .round()
            .unwrap();
        check_fusion(seq, x);
        // Enough images for blocks (13 in a 3-thread pool: uneven blocks), where the pooling runs
        // on each block's convolution output while it is in cache.
        // ReLU and the identity take the bias inside the pooling's comparison: integer inputs,
        // kernels and biases give many tied maxima (and, with ReLU, windows of zeros).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (act, round) in [
            ("relu", false),
            ("relu", true),
            ("linear", true),
            ("tanh", true),
        ] {
            let mut seq = crate::Sequential::new()
                .input(&[11, 11, 3])
                .add(Conv2D::new(5, (3, 3)).activation(act).unwrap())
                .add(crate::layers::MaxPooling2D::new((2, 2)));
            let x = crate::kernels::fixed_randn(2.0, (13, 11, 11, 3), &dev)
                .unwrap()
                .round()
                .unwrap();
            if round {
                seq.build().unwrap();
                for v in seq.trainable_variables() {
                    let t = v.as_tensor();
                    let r = crate::kernels::fixed_randn(1.5, t.dims(), t.device()).unwrap();
                    v.assign(&r.round().unwrap()).unwrap();
                }
            }
            pool.install(|| check_fusion(seq, x));
        }
    }

    /// The fused model against its layers called one by one: outputs, and the gradients of the
    /// variables and of the input under a random weighting of the outputs (so that outputs which
    /// an activation set to zero still receive gradient from above).
    fn check_fusion(mut seq: crate::Sequential, x: Tensor) {
        // The layers are on the default device (the GPU in a CUDA check run).
        let x = x.to_device(&crate::runtime::default_device()).unwrap();
        let xv = Variable::new("x", &x, true).unwrap();
        let x = xv.as_tensor().clone();
        let fused = seq.forward(&x, true).unwrap();
        let mut vars = seq.trainable_variables();
        vars.push(xv);
        let up = crate::kernels::fixed_randn(1.0, fused.dims(), fused.device()).unwrap();
        let loss = |y: &Tensor| (y * &up).unwrap().sum_all().unwrap();
        let gf = GradientTape::gradient(&loss(&fused), &vars).unwrap();
        let mut h = x.clone();
        for layer in seq.layers_mut() {
            h = layer.call(&h, true).unwrap();
        }
        assert!(max_rel(&fused, &h) < 1e-6);
        let gs = GradientTape::gradient(&loss(&h), &vars).unwrap();
        for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
            let err = max_rel(a, b);
            assert!(err < 1e-5, "gradient {i} of {}: {err}", gs.len());
        }
    }
}
