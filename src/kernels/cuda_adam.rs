//! Adam's update in place on CUDA, one kernel launch per variable (enabled by
//! `FERROKERAS_CUDA_ADAM=fused`; off by default until checked on a GPU).
//!
//! Why our own: built from candle ops, one Adam step is about fourteen elementwise kernels per
//! variable, each a launch and a fresh buffer; a step of the guide's GAN updates fourteen
//! variables, and launches, not arithmetic, bound such small updates on a GPU (PyTorch's eager
//! Adam fuses them for the same reason). The kernel does the float32 operations of
//! [`super::adam`]'s CPU pass, in the same order, each rounded on its own (compiled without
//! fused multiply-adds), as candle's separate kernels round them.

use std::sync::OnceLock;

use candle_core::cuda::cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use candle_core::cuda::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::{CudaStorage, DType, InplaceOp1, InplaceOp2, Layout, Tensor};

use super::adam::AdamStep;

/// The kernel's CUDA C source, compiled once per process with NVRTC.
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
"#;

const FUNCTION: &str = "ferrokeras_adam_f32";
const MODULE: &str = "ferrokeras_adam";

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
        Err(e) => candle_core::bail!("adam: compiling the CUDA update failed: {e}"),
    }
}

/// Whether the fused update is switched on (`FERROKERAS_CUDA_ADAM=fused`, read once).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERROKERAS_CUDA_ADAM").is_ok_and(|v| v == "fused"))
}

/// Whether [`adam_in_place`] takes these tensors: switched on, float32 on a CUDA device,
/// contiguous, every one of the variable's size.
pub(crate) fn fits(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else {
        return false;
    };
    enabled()
        && ts.iter().all(|t| {
            t.device().is_cuda()
                && t.dtype() == DType::F32
                && t.is_contiguous()
                && t.elem_count() == first.elem_count()
        })
}

/// One Adam step (without AMSGrad) in place on CUDA: `slots` are `[m, v]`. Callers check
/// [`fits`] first. The three in-place ops nest as on the CPU (each holds one storage's write
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
        let Ok(n32) = u32::try_from(n) else {
            candle_core::bail!("adam: {n} values is more than the fused CUDA update takes")
        };
        let func = dev.get_or_load_custom_func(FUNCTION, MODULE, ptx()?)?;
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
        unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }
            .map_err(|e| candle_core::Error::Msg(format!("adam: CUDA launch failed: {e}")))?;
        Ok(())
    }
}
