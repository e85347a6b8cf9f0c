//! Seeded random numbers: weight initialisation, dropout masks, shuffling and the `normal`/`uniform`
//! helpers a custom step uses (the guide's GAN samples latent vectors with them).
//!
//! One process-wide generator, seeded by [`set_random_seed`] (Keras's `keras.utils.set_random_seed`).
//! Without a seed it starts from OS entropy. The same seed and the same sequence of calls give the
//! same numbers on every run.

use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

fn global() -> &'static Mutex<StdRng> {
    static RNG: OnceLock<Mutex<StdRng>> = OnceLock::new();
    RNG.get_or_init(|| Mutex::new(StdRng::from_entropy()))
}

/// Locks the global generator. A poisoned lock (a panic elsewhere while holding it) is recovered:
/// the generator state is still valid.
pub(crate) fn rng() -> MutexGuard<'static, StdRng> {
    global().lock().unwrap_or_else(|e| e.into_inner())
}

/// Seeds the global generator, so that initial weights, dropout, shuffling and sampling repeat.
///
/// ```
/// ferrokeras::random::set_random_seed(42);
/// let a = ferrokeras::random::uniform(&[3], 0.0, 1.0, &candle_core::Device::Cpu).unwrap();
/// ferrokeras::random::set_random_seed(42);
/// let b = ferrokeras::random::uniform(&[3], 0.0, 1.0, &candle_core::Device::Cpu).unwrap();
/// assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
/// ```
pub fn set_random_seed(seed: u64) {
    *rng() = StdRng::seed_from_u64(seed);
}

/// A new generator seeded from the global one (for a data pipeline that shuffles on its own).
pub fn fork() -> StdRng {
    StdRng::seed_from_u64(rng().r#gen())
}

/// A float32 tensor of `shape` with values drawn uniformly from `[low, high)`.
///
/// # Errors
/// Fails only if the tensor cannot be created on `device`.
pub fn uniform(shape: &[usize], low: f32, high: f32, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut g = rng();
    let data: Vec<f32> = (0..n)
        .map(|_| g.gen_range(0.0f32..1.0) * (high - low) + low)
        .collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// A float32 tensor of `shape` with values drawn from a normal distribution.
///
/// ```
/// let z = ferrokeras::random::normal(&[64, 128], 0.0, 1.0, &candle_core::Device::Cpu).unwrap();
/// assert_eq!(z.dims(), &[64, 128]);
/// ```
///
/// # Errors
/// Fails only if the tensor cannot be created on `device`.
pub fn normal(shape: &[usize], mean: f32, stddev: f32, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut g = rng();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(&mut *g);
            z * stddev + mean
        })
        .collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// A random permutation of `0..n` drawn from the global generator.
pub fn permutation(n: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut *rng());
    idx
}
