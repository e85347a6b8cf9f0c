//! Process-wide settings applied once, the first time a layer or model is created.
//!
//! glibc's allocator maps every buffer above 128 KiB with `mmap` and unmaps it on free, so each
//! tensor op that allocates a large buffer pays for fresh zeroed pages (measured: about half of a
//! training step's CPU time in the kernel). Raising the mmap and trim thresholds keeps those
//! buffers in the heap for reuse. This is done inside the library so that users need no
//! environment variable. Threads other than the main one allocate from heaps of at most 64 MiB
//! each, and glibc unmaps such a heap as soon as it is entirely free, so the next large buffer
//! faults its pages in again: a top pad of 64 MiB keeps those heaps mapped (measured: the GAN
//! step run after the MLP and the convnet in one process went from 1.3 million page faults and
//! `fit` up to 18% slower than a plain loop, to about 35 thousand and level).
//!
//! candle also runs its large elementwise ops (64 Ki values and up) on a pool of its own threads,
//! which spin for a while after each op before they sleep. This library's kernels run on rayon's
//! threads; two pools on the same cores take turns spinning against each other (measured on two
//! cores: the MLP's step 14% slower, the convnet's 12%). So, unless `CANDLE_NUM_THREADS` is set,
//! it is set to 1 here, before candle builds that pool: candle's remaining elementwise ops (mostly
//! the gradient sums of its backward pass) run on the calling thread.

use std::sync::Once;

/// Applies the allocator settings (glibc only) and candle's thread setting, once; a no-op after
/// the first call.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator tuning parameters; it is called once, before
        // this library allocates tensors, and takes plain integers.
        unsafe {
            const THRESHOLD: libc::c_int = 256 << 20;
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // SAFETY: this runs once, when the first layer or model is created, which is before
            // the library starts threads of its own; the variable is read by candle only when it
            // first builds its thread pool.
            unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
        }
    });
}

use candle_core::Device;
use std::sync::RwLock;

static DEFAULT_DEVICE: RwLock<Option<Device>> = RwLock::new(None);

/// Whether this build can run on CUDA (the `cuda` cargo feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The device named by `name`: `"cpu"`, `"cuda"` (GPU 0), `"cuda:N"`, or `"auto"` (CUDA when
/// this build has it and a GPU answers, else the CPU). A CUDA device opened here allocates without
/// cudarc's per-buffer events (see [`cuda_event_tracking`]).
///
/// ```
/// let cpu = ferrokeras::runtime::device_from_name("cpu")?;
/// assert!(cpu.is_cpu());
/// let auto = ferrokeras::runtime::device_from_name("auto")?; // the CPU without the `cuda` feature
/// # let _ = auto;
/// assert!(ferrokeras::runtime::device_from_name("tpu").is_err());
/// # Ok::<(), ferrokeras::Error>(())
/// ```
///
/// # Errors
/// An unknown name, `cuda` in a build without the `cuda` feature, or a GPU that does not answer.
pub fn device_from_name(name: &str) -> crate::Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let cuda = |ordinal: usize| -> crate::Result<Device> {
        if !CUDA_BUILT {
            return Err(crate::Error::value(format!(
                "device \"{name}\" asked for, but this build has no CUDA support; rebuild with `--features cuda` (or pick \"cpu\")"
            )));
        }
        let device = Device::new_cuda(ordinal).map_err(|e| {
            // candle's message may carry a backtrace after its first line.
            let e = e.to_string();
            let e = e.lines().next().unwrap_or("unknown error");
            crate::Error::value(format!(
                "CUDA device {ordinal} could not be opened ({e}); check the driver with `nvidia-smi`, or pick \"cpu\""
            ))
        })?;
        single_stream_cuda(&device);
        Ok(device)
    };
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(if CUDA_BUILT {
            cuda(0).unwrap_or(Device::Cpu)
        } else {
            Device::Cpu
        }),
        "cuda" | "gpu" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(crate::Error::value(format!(
                "unknown device \"{name}\": expected \"cpu\", \"cuda\", \"cuda:N\" or \"auto\""
            ))),
        },
    }
}

/// Whether the CPU runs this crate's own kernels for float32 work (the default) rather than
/// candle's generic ops. With `FERROKERAS_KERNELS=candle` in the environment (read once, at the
/// first op) the CPU runs the ops that other devices (CUDA) run, and metrics queue their updates
/// as they do on a GPU: to compare results between the two paths, or to check a GPU's code path
/// on a machine without one.
///
/// ```
/// // Unless FERROKERAS_KERNELS=candle is set:
/// # if std::env::var("FERROKERAS_KERNELS").is_err() {
/// assert!(ferrokeras::runtime::cpu_kernels_enabled());
/// # }
/// ```
pub fn cpu_kernels_enabled() -> bool {
    crate::kernels::enabled()
}

/// Lets float32 matrix products on a CUDA device run in TensorFloat-32 (TensorFlow's
/// `tf.config.experimental.enable_tensor_float_32_execution`; PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32`): cuBLAS then rounds the products' inputs to 10
/// mantissa bits and runs them on tensor cores (Ampere and later: several times the float32
/// rate), accumulating in float32. This covers every product and, without cuDNN, every
/// convolution (patches times kernel). Off by default, as in PyTorch and candle, so that a GPU's
/// results match the CPU's within float32 rounding (TensorFlow turns it on by default). With the
/// `cudnn` feature, cuDNN's convolutions use TensorFloat-32 as cuDNN's default math allows,
/// whatever this setting (as PyTorch's convolutions do by default). No effect on the CPU.
///
/// ```
/// ferrokeras::runtime::enable_tensor_float_32_execution(true);
/// assert!(ferrokeras::runtime::tensor_float_32_execution_enabled());
/// ferrokeras::runtime::enable_tensor_float_32_execution(false);
/// assert!(!ferrokeras::runtime::tensor_float_32_execution_enabled());
/// ```
pub fn enable_tensor_float_32_execution(enabled: bool) {
    TF32.store(enabled, std::sync::atomic::Ordering::Relaxed);
    candle_core::cuda::set_gemm_reduced_precision_f32(enabled);
}

/// Whether float32 products on CUDA may run in TensorFloat-32
/// ([`enable_tensor_float_32_execution`]; off by default).
pub fn tensor_float_32_execution_enabled() -> bool {
    TF32.load(std::sync::atomic::Ordering::Relaxed)
}

/// The setting of [`enable_tensor_float_32_execution`] (candle's own flag reads back only in a
/// `cuda` build).
static TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether cudarc creates two CUDA events with each new buffer of `device`: its default, kept for
/// a device that neither [`device_from_name`] nor [`set_default_device`] has seen, for one whose
/// context runs several streams, and with `FERROKERAS_CUDA_EVENTS=on`. The events order a buffer's
/// uses between streams; candle's device runs one, where cudarc never reads them, so this library
/// turns them off (four driver calls fewer per op). Always `false` off CUDA.
///
/// ```
/// assert!(!ferrokeras::runtime::cuda_event_tracking(&candle_core::Device::Cpu));
/// ```
pub fn cuda_event_tracking(device: &Device) -> bool {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d.is_event_tracking(),
        _ => false,
    }
}

/// On a CUDA device whose context runs one stream (candle's `Device::new_cuda`: every op on the
/// calling thread's default stream), turns off cudarc's event tracking, for the buffers allocated
/// from then on.
///
/// cudarc creates two CUDA events with every buffer it allocates and destroys them with the
/// buffer: four driver calls on the host per op, and an op is one kernel and one buffer on
/// candle's CUDA backend. The events order the buffer's uses between streams, and cudarc reads
/// them only when the context has more than one stream (`is_in_multi_stream_mode`); candle's
/// device uses one, so they are never read. A program that starts more streams on the device's
/// context itself orders the uses of buffers between them (cudarc's contract for buffers made
/// without events); this is skipped when the context already runs several. The environment
/// variable `FERROKERAS_CUDA_EVENTS=on` keeps the tracking (to compare).
fn single_stream_cuda(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let keep = std::env::var("FERROKERAS_CUDA_EVENTS").is_ok_and(|v| v == "on");
        let stream = d.cuda_stream();
        if !keep && d.is_event_tracking() && !stream.context().is_in_multi_stream_mode() {
            // SAFETY: the context runs one stream, on which cudarc does not read a buffer's
            // events (`is_managing_stream_synchronization` needs several streams); buffers made
            // from now on have none. Ordering across streams, if the program starts more, is
            // then the program's, as cudarc documents for buffers without events.
            unsafe { d.disable_event_tracking() };
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// Sets the device that layers put their weights on and that `fit`, `evaluate` and `predict`
/// move batches to when a model has no weights yet (Keras places everything on the first GPU;
/// here the choice is explicit). A CUDA device given here allocates from then on without cudarc's
/// per-buffer events (see [`cuda_event_tracking`]).
///
/// ```
/// ferrokeras::runtime::set_default_device(&candle_core::Device::Cpu);
/// assert!(ferrokeras::runtime::default_device().is_cpu());
/// ```
pub fn set_default_device(device: &Device) {
    single_stream_cuda(device);
    if let Ok(mut d) = DEFAULT_DEVICE.write() {
        *d = Some(device.clone());
    }
}

/// The device set by [`set_default_device`]; before any call, the one named by the environment
/// variable `FERROKERAS_DEVICE` (see [`device_from_name`]), else the CPU.
///
/// ```
/// let d = ferrokeras::runtime::default_device();
/// # let _ = d;
/// ```
pub fn default_device() -> Device {
    if let Ok(d) = DEFAULT_DEVICE.read()
        && let Some(d) = d.as_ref()
    {
        return d.clone();
    }
    let from_env = std::env::var("FERROKERAS_DEVICE")
        .ok()
        .map(|n| {
            device_from_name(&n).unwrap_or_else(|e| {
                eprintln!("ferrokeras: FERROKERAS_DEVICE ignored, using the CPU: {e}");
                Device::Cpu
            })
        })
        .unwrap_or(Device::Cpu);
    if let Ok(mut d) = DEFAULT_DEVICE.write() {
        d.get_or_insert(from_env).clone()
    } else {
        from_env
    }
}

/// Runs `f` on one of rayon's threads while the calling thread waits (or directly, when called
/// from one of them), and returns its result.
///
/// On the CPU, `fit`, `evaluate` and `predict` run their loops this way: the kernels' parallel
/// parts then fork from a pool thread, so between them only the pool's own threads are awake.
/// Called from outside the pool, every parallel part injects its work and wakes the pool, and the
/// calling thread is one more thread taking turns on the cores (measured on two cores: the MNIST
/// MLP's step about 20% faster this way, the convnet's about 10%). A hand-written training loop
/// gains the same by running inside this function. Keep a CUDA device on one thread instead.
///
/// ```
/// let total = ferrokeras::runtime::run_on_pool(|| (1..=4).sum::<i32>());
/// assert_eq!(total, 10);
/// ```
pub fn run_on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}
