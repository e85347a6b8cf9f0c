//! Our own CPU kernels, plugged into candle as custom ops (with backward where they take part in
//! gradients). Each is used on the CPU for float32 tensors only; other devices and dtypes keep
//! candle's ops, so results agree everywhere (the tests compare each kernel with candle's op).

pub(crate) mod adam;
pub(crate) mod conv_act;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod dense;
pub(crate) mod elementwise;
pub(crate) mod gather;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod pool;
pub(crate) mod recurrent;
pub(crate) mod softmax;
pub(crate) mod softmax_ce;

use candle_core::{CpuStorage, DType, Layout, Tensor};

/// Whether our CPU kernels are in use (the default). With `FERROKERAS_KERNELS=candle` in the
/// environment (read once per process) every op runs as candle's generic ops instead, on the CPU
/// too: the code path that other devices (CUDA) take, so that it can be checked, and its results
/// compared, on a machine without one (`cargo test --tests` with the variable set runs the
/// integration tests that way). The library's own unit tests ignore the variable: they test the
/// kernels themselves, and take the other path through `FORCE` where they compare the two.
pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = cfg!(test)
        || *ON.get_or_init(|| std::env::var("FERROKERAS_KERNELS").map_or(true, |v| v != "candle"));
    on && !forced()
}

#[cfg(test)]
thread_local! {
    /// Tests: how many [`fixed_randn`] tensors this thread has drawn.
    static FIXED_DRAWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Tests: normal values (mean 0, `std`) of `shape`, the same at every run. The n-th draw of a
/// test's thread comes from a generator seeded with `n` and the shape, so a test's inputs never
/// change between runs, and no two draws of one test are alike.
#[cfg(test)]
pub(crate) fn fixed_randn(
    std: f32,
    shape: impl Into<candle_core::Shape>,
    dev: &candle_core::Device,
) -> candle_core::Result<candle_core::Tensor> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let shape = shape.into();
    let n = FIXED_DRAWS.with(|c| {
        let n = c.get();
        c.set(n + 1);
        n
    });
    let seed = shape
        .dims()
        .iter()
        .fold(n.wrapping_mul(0x9E37_79B9_7F4A_7C15), |h, d| {
            (h ^ *d as u64).wrapping_mul(0x0100_0000_01B3)
        });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0f32, std).map_err(candle_core::Error::wrap)?;
    let values: Vec<f32> = (0..shape.elem_count())
        .map(|_| normal.sample(&mut rng))
        .collect();
    candle_core::Tensor::from_vec(values, shape, dev)
}

#[cfg(test)]
thread_local! {
    /// Tests: this thread's ops take the other devices' path on the CPU too.
    pub(crate) static FORCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Tests: `layer` on `x` through our CPU kernels, then through the other devices' path (one set of
/// weights, one cotangent `r(output shape)` for both): the output and the gradients of
/// `sum(y * r)` (input first, then the layer's variables) of each.
#[cfg(test)]
pub(crate) fn both_paths(
    layer: &mut dyn crate::layers::Layer,
    x: &Tensor,
    r: impl Fn(&[usize]) -> Tensor,
) -> [(Tensor, Vec<Tensor>); 2] {
    let mut cotangent: Option<Tensor> = None;
    [false, true].map(|generic| {
        FORCE.with(|f| f.set(generic));
        let xv = crate::tape::Variable::new("x", x, true).unwrap();
        let y = layer.call(xv.as_tensor(), true).unwrap();
        let r = cotangent.get_or_insert_with(|| r(y.dims())).clone();
        let mut vars = vec![xv];
        vars.extend(layer.variables());
        let loss = (&y * &r).unwrap().sum_all().unwrap();
        let g = crate::GradientTape::gradient(&loss, &vars).unwrap();
        FORCE.with(|f| f.set(false));
        (y, g)
    })
}

/// Whether this thread's ops must take the other devices' path on the CPU (tests only).
fn forced() -> bool {
    #[cfg(test)]
    {
        FORCE.with(|f| f.get())
    }
    #[cfg(not(test))]
    {
        false
    }
}

/// Runs `f` over matching chunks of `out` (`a` values each) and `src` (`b` values each, as many
/// chunks): on this thread below `1 << 15` values in all (handing work to the pool costs a
/// wake-up), else on rayon's threads.
pub(crate) fn zip_chunks(
    out: &mut [f32],
    a: usize,
    src: &[f32],
    b: usize,
    f: impl Fn((&mut [f32], &[f32])) + Sync + Send,
) {
    use rayon::prelude::*;
    if a == 0 || b == 0 {
        return;
    }
    if out.len().max(src.len()) < 1 << 15 {
        out.chunks_exact_mut(a).zip(src.chunks_exact(b)).for_each(f);
    } else {
        out.par_chunks_exact_mut(a)
            .zip(src.par_chunks_exact(b))
            .for_each(f);
    }
}

/// Sixteen running values combined lane by lane over `x` (and `y`), then folded: reductions
/// that vectorize (one running value would keep a loop scalar, float additions not being
/// reorderable). Inlined into their callers, so that they take the callers' target features.
#[inline(always)]
pub(crate) fn lanes_fold(
    x: &[f32],
    y: Option<&[f32]>,
    init: f32,
    f: impl Fn(f32, f32, f32) -> f32,
    fold: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 16];
    let n = x.len();
    let y = y.unwrap_or(x);
    let (x, y) = (&x[..n], &y[..n]);
    let whole = n / 16 * 16;
    for (xc, yc) in x[..whole].chunks_exact(16).zip(y[..whole].chunks_exact(16)) {
        for i in 0..16 {
            acc[i] = f(acc[i], xc[i], yc[i]);
        }
    }
    let mut total = init;
    for (&a, &b) in x[whole..].iter().zip(&y[whole..]) {
        total = f(total, a, b);
    }
    acc.iter().fold(total, |t, &a| fold(t, a))
}

/// `Σ x` (see [`lanes_fold`]).
#[inline(always)]
pub(crate) fn sum_lanes(x: &[f32]) -> f32 {
    lanes_fold(x, None, 0.0, |a, v, _| a + v, |a, b| a + b)
}

/// `Σ x·y` over the shorter of the two (see [`lanes_fold`]).
#[inline(always)]
pub(crate) fn dot_lanes(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    lanes_fold(
        &x[..n],
        Some(&y[..n]),
        0.0,
        |a, u, v| a + u * v,
        |a, b| a + b,
    )
}

/// The largest value of `x` (NaNs ignored, as `f32::max` does; `-inf` when empty).
#[inline(always)]
pub(crate) fn max_lanes(x: &[f32]) -> f32 {
    lanes_fold(x, None, f32::NEG_INFINITY, |a, v, _| a.max(v), f32::max)
}

/// Whether our kernels take `t`: float32 on the CPU, with the kernels [`enabled`].
pub(crate) fn takes(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && enabled()
}

/// The float32 values a contiguous CPU storage holds under `l`; an error naming `what` otherwise.
pub(crate) fn cpu_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{what}: only float32 is supported")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// [`cpu_f32`], mutable (for in-place ops).
pub(crate) fn cpu_f32_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{what}: only float32 is supported")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut d[a..b]),
        None => candle_core::bail!("{what}: the input must be contiguous"),
    }
}

/// Largest difference relative to the largest magnitude of `b` (the kernels' tests).
#[cfg(test)]
pub(crate) fn max_rel(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-6)
}
