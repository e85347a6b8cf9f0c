//! Our CUDA kernels (feature `cuda`), CUDA C compiled by NVRTC at first use: Adam's update in
//! place, one launch per variable, and activations (with a bias over the last axis) forward and
//! backward, one launch each. Switched on by `FERROKERAS_CUDA_KERNELS=on`; off by default until
//! checked on a GPU (then candle's ops run, as without them).
//!
//! Why our own: built from candle's ops, one Adam step is about fourteen elementwise kernels per
//! variable, and a LeakyReLU five forward and about twelve backward, each a launch and a fresh
//! buffer; a step of the guide's GAN updates fourteen variables and passes its LeakyReLUs over
//! 25 MB activations several times. PyTorch fuses both for the same reason. The kernels do the
//! float32 operations of the CPU kernels ([`super::adam`], [`super::elementwise`]) in the same
//! order, each rounded on its own (compiled without fused multiply-adds).

use std::sync::OnceLock;

use candle_core::cuda::cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use candle_core::cuda::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::{CudaStorage, DType, InplaceOp1, InplaceOp2, Layout, Tensor};

use super::adam::AdamStep;

/// The kernels' CUDA C source, compiled once per process with NVRTC.
const SOURCE: &str = r#"
extern "C" __global__ void ferrokeras_adam_f32(
    float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
    float* __restrict__ v, unsigned int n, float k1, float k2, float alpha, float eps,
    float decay) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += blockDim.x * gridDim.x) {
    float gi = g[i];
    float mi = m[i] + (gi - m[i]) * k1;
    float vi = v[i] + (gi * gi - v[i]) * k2;
    m[i] = mi;
    v[i] = vi;
    float x = decay != 0.0f ? w[i] - w[i] * decay : w[i];
    w[i] = x - (mi * alpha) / (sqrtf(vi) + eps);
  }
}

// kind: 0 linear, 1 relu, 2 leaky relu (slope), 3 sigmoid, 4 tanh.
__device__ float act(int kind, float x, float slope) {
  switch (kind) {
    case 1: return x > 0.0f ? x : 0.0f;
    case 2: return x > 0.0f ? x : x * slope;
    case 3: return 1.0f / (1.0f + expf(-x));
    case 4: return tanhf(x);
    default: return x;
  }
}

// The derivative from the output y.
__device__ float act_grad(int kind, float y, float slope) {
  switch (kind) {
    case 1: return y > 0.0f ? 1.0f : 0.0f;
    case 2: return y > 0.0f ? 1.0f : slope;
    case 3: return y * (1.0f - y);
    case 4: return 1.0f - y * y;
    default: return 1.0f;
  }
}

// y = act(x + b[i % f]) (f = 0: no bias).
extern "C" __global__ void ferrokeras_act_f32(
    const float* __restrict__ x, const float* __restrict__ b, float* __restrict__ y,
    unsigned int n, unsigned int f, int kind, float slope) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += blockDim.x * gridDim.x) {
    float v = f ? x[i] + b[i % f] : x[i];
    y[i] = act(kind, v, slope);
  }
}

// gx = gy * act'(y).
extern "C" __global__ void ferrokeras_act_grad_f32(
    const float* __restrict__ y, const float* __restrict__ gy, float* __restrict__ gx,
    unsigned int n, int kind, float slope) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += blockDim.x * gridDim.x) {
    gx[i] = gy[i] * act_grad(kind, y[i], slope);
  }
}
"#;

const MODULE: &str = "ferrokeras";

/// The compiled PTX, or why it could not be compiled.
fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    let compiled = PTX.get_or_init(|| {
        let opts = CompileOptions {
            fmad: Some(false),
            prec_sqrt: Some(true),
            prec_div: Some(true),
            ftz: Some(false),
            ..Default::default()
        };
        compile_ptx_with_opts(SOURCE, opts)
            .map(|p| p.to_src())
            .map_err(|e| e.to_string())
    });
    match compiled {
        Ok(p) => Ok(p.as_str()),
        Err(e) => candle_core::bail!("compiling ferrokeras's CUDA kernels failed: {e}"),
    }
}

/// Whether our CUDA kernels are switched on (`FERROKERAS_CUDA_KERNELS=on`, read once).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROKERAS_CUDA_KERNELS").is_ok_and(|v| v == "on"))
}

/// Whether our CUDA kernels take `t`: switched on, float32 on a CUDA device.
pub(crate) fn takes(t: &Tensor) -> bool {
    enabled() && t.device().is_cuda() && t.dtype() == DType::F32
}

/// Whether [`adam_in_place`] takes these tensors: switched on, float32 on a CUDA device,
/// contiguous, every one of the variable's size.
pub(crate) fn adam_fits(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else {
        return false;
    };
    ts.iter()
        .all(|t| takes(t) && t.is_contiguous() && t.elem_count() == first.elem_count())
}

/// The launch configuration for `n` elements, as a 32-bit count.
fn config(n: usize, what: &str) -> candle_core::Result<(u32, LaunchConfig)> {
    match u32::try_from(n) {
        Ok(n) => Ok((n, LaunchConfig::for_num_elems(n))),
        Err(_) => candle_core::bail!("{what}: {n} values is more than our CUDA kernels take"),
    }
}

/// `act(x + bias)` (`bias` over the last axis, `None`: no bias) as a new storage.
pub(crate) fn activation(
    x: &CudaStorage,
    xl: &Layout,
    bias: Option<(&CudaStorage, &Layout)>,
    kind: i32,
    slope: f32,
) -> candle_core::Result<CudaStorage> {
    let dev = x.device.clone();
    let (x_at, n) = span(xl, "activation input")?;
    let (n32, cfg) = config(n, "activation")?;
    let func = dev.get_or_load_custom_func("ferrokeras_act_f32", MODULE, ptx()?)?;
    let stream = dev.cuda_stream();
    // SAFETY: every element is written by the kernel before the storage is read.
    let y = unsafe { dev.alloc::<f32>(n.max(1))? };
    let (xp, _x_guard) = x.as_cuda_slice::<f32>()?.device_ptr(&stream);
    let xp = xp + x_at;
    let (bp, f, _b_guard) = match bias {
        Some((b, bl)) => {
            let (b_at, f) = span(bl, "bias")?;
            if f == 0 || n % f != 0 {
                candle_core::bail!("bias of {f} values does not divide an input of {n} values")
            }
            let (bp, guard) = b.as_cuda_slice::<f32>()?.device_ptr(&stream);
            (bp + b_at, f as u32, Some(guard))
        }
        None => (xp, 0u32, None),
    };
    if n > 0 {
        let mut b = func.builder();
        b.arg(&xp)
            .arg(&bp)
            .arg(&y)
            .arg(&n32)
            .arg(&f)
            .arg(&kind)
            .arg(&slope);
        // SAFETY: the kernel reads `n` values at `xp` (and `f` at `bp`) and writes `n` into `y`.
        unsafe { b.launch(cfg) }
            .map_err(|e| candle_core::Error::Msg(format!("activation: CUDA launch failed: {e}")))?;
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// `gy * act'(y)` from the activation's output `y`, as a new storage.
pub(crate) fn activation_grad(
    y: &CudaStorage,
    yl: &Layout,
    gy: &CudaStorage,
    gyl: &Layout,
    kind: i32,
    slope: f32,
) -> candle_core::Result<CudaStorage> {
    let dev = y.device.clone();
    let (y_at, n) = span(yl, "activation output")?;
    let (gy_at, gn) = span(gyl, "activation output gradient")?;
    if gn != n {
        candle_core::bail!("gradient of {gn} values for {n} outputs")
    }
    let (n32, cfg) = config(n, "activation gradient")?;
    let func = dev.get_or_load_custom_func("ferrokeras_act_grad_f32", MODULE, ptx()?)?;
    let stream = dev.cuda_stream();
    // SAFETY: every element is written by the kernel before the storage is read.
    let gx = unsafe { dev.alloc::<f32>(n.max(1))? };
    let (yp, _y_guard) = y.as_cuda_slice::<f32>()?.device_ptr(&stream);
    let (gp, _g_guard) = gy.as_cuda_slice::<f32>()?.device_ptr(&stream);
    let (yp, gp) = (yp + y_at, gp + gy_at);
    if n > 0 {
        let mut b = func.builder();
        b.arg(&yp)
            .arg(&gp)
            .arg(&gx)
            .arg(&n32)
            .arg(&kind)
            .arg(&slope);
        // SAFETY: the kernel reads `n` values at `yp` and `gp` and writes `n` into `gx`.
        unsafe { b.launch(cfg) }.map_err(|e| {
            candle_core::Error::Msg(format!("activation gradient: CUDA launch failed: {e}"))
        })?;
    }
    Ok(CudaStorage::wrap_cuda_slice(gx, dev))
}

/// One Adam step (without AMSGrad) in place on CUDA: `slots` are `[m, v]`. Callers check
/// [`adam_fits`] first. The three in-place ops nest as on the CPU (each holds one storage's write
/// lock), and the innermost launches the kernel with all four device pointers.
pub(crate) fn adam_in_place(
    w: &Tensor,
    g: &Tensor,
    slots: &[Tensor],
    p: AdamStep,
) -> candle_core::Result<()> {
    let [m, v] = slots else {
        candle_core::bail!("adam: the fused CUDA update takes the m and v slots only")
    };
    w.inplace_op2(g, &OnW { m, v, p })
}

/// The start and length of a contiguous storage's values under `l`.
fn span(l: &Layout, what: &str) -> candle_core::Result<(u64, usize)> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok((4 * start as u64, end - start)),
        None => candle_core::bail!("adam: the {what} must be contiguous"),
    }
}

struct OnW<'a> {
    m: &'a Tensor,
    v: &'a Tensor,
    p: AdamStep,
}

struct OnM<'a> {
    v: &'a Tensor,
    p: AdamStep,
    w: u64,
    g: u64,
    n: usize,
}

struct OnV {
    p: AdamStep,
    w: u64,
    g: u64,
    m: u64,
    n: usize,
}

impl InplaceOp2 for OnW<'_> {
    fn name(&self) -> &'static str {
        "adam-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("adam: the fused CUDA update got CPU tensors")
    }
    fn cuda_fwd(
        &self,
        w: &mut CudaStorage,
        wl: &Layout,
        g: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (w_at, n) = span(wl, "variable")?;
        let (g_at, gn) = span(gl, "gradient")?;
        if gn != n {
            candle_core::bail!("adam: {gn} gradient values for {n} variable values")
        }
        let stream = w.device.cuda_stream();
        // The guards record the accesses on the stream when dropped, after the nested launch.
        let (wp, _w_guard) = w.as_cuda_slice_mut::<f32>()?.device_ptr_mut(&stream);
        let (gp, _g_guard) = g.as_cuda_slice::<f32>()?.device_ptr(&stream);
        self.m.inplace_op1(&OnM {
            v: self.v,
            p: self.p,
            w: wp + w_at,
            g: gp + g_at,
            n,
        })
    }
}

impl InplaceOp1 for OnM<'_> {
    fn name(&self) -> &'static str {
        "adam-cuda"
    }
    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("adam: the fused CUDA update got a CPU slot")
    }
    fn cuda_fwd(&self, m: &mut CudaStorage, ml: &Layout) -> candle_core::Result<()> {
        let (m_at, n) = span(ml, "first moment")?;
        if n != self.n {
            candle_core::bail!("adam: a slot of {n} values for {} variable values", self.n)
        }
        let stream = m.device.cuda_stream();
        let (mp, _m_guard) = m.as_cuda_slice_mut::<f32>()?.device_ptr_mut(&stream);
        self.v.inplace_op1(&OnV {
            p: self.p,
            w: self.w,
            g: self.g,
            m: mp + m_at,
            n,
        })
    }
}

impl InplaceOp1 for OnV {
    fn name(&self) -> &'static str {
        "adam-cuda"
    }
    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("adam: the fused CUDA update got a CPU slot")
    }
    fn cuda_fwd(&self, v: &mut CudaStorage, vl: &Layout) -> candle_core::Result<()> {
        let dev = v.device.clone();
        let (v_at, n) = span(vl, "second moment")?;
        if n != self.n {
            candle_core::bail!("adam: a slot of {n} values for {} variable values", self.n)
        }
        if n == 0 {
            return Ok(());
        }
        let (n32, cfg) = config(n, "adam")?;
        let func = dev.get_or_load_custom_func("ferrokeras_adam_f32", MODULE, ptx()?)?;
        let stream = dev.cuda_stream();
        let (vp, _v_guard) = v.as_cuda_slice_mut::<f32>()?.device_ptr_mut(&stream);
        let vp = vp + v_at;
        let p = self.p;
        let (k1, k2) = ((1.0 - p.beta_1) as f32, (1.0 - p.beta_2) as f32);
        let (alpha, eps, decay) = (p.alpha as f32, p.epsilon as f32, p.decay as f32);
        let mut b = func.builder();
        b.arg(&self.w)
            .arg(&self.g)
            .arg(&self.m)
            .arg(&vp)
            .arg(&n32)
            .arg(&k1)
            .arg(&k2)
            .arg(&alpha)
            .arg(&eps)
            .arg(&decay);
        // SAFETY: the kernel reads and writes `n` float32 values at each of the four pointers,
        // which point into four distinct storages of at least that many values (checked above;
        // the write locks of w, m and v are held by the enclosing ops).
        unsafe { b.launch(cfg) }
            .map_err(|e| candle_core::Error::Msg(format!("adam: CUDA launch failed: {e}")))?;
        Ok(())
    }
}
