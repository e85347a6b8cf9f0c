//! Seeded random numbers: weight initialisation, dropout masks, shuffling and the `normal`/`uniform`
//! helpers a custom step uses (the guide's GAN samples latent vectors with them).
//!
//! One process-wide generator, seeded by [`set_random_seed`] (Keras's `keras.utils.set_random_seed`).
//! Without a seed it starts from OS entropy. The same seed and the same sequence of calls give the
//! same numbers on every run.

use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Result;

/// The generator: ChaCha12, the algorithm of `rand`'s `StdRng`, used directly so that its exact
/// position can be saved and restored (exact resume of an interrupted training).
type Generator = ChaCha12Rng;

fn global() -> &'static Mutex<Generator> {
    static RNG: OnceLock<Mutex<Generator>> = OnceLock::new();
    RNG.get_or_init(|| Mutex::new(Generator::from_entropy()))
}

/// Locks the global generator. A poisoned lock (a panic elsewhere while holding it) is recovered:
/// the generator state is still valid.
pub(crate) fn rng() -> MutexGuard<'static, Generator> {
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
    *rng() = Generator::seed_from_u64(seed);
}

/// A new generator seeded from the global one (for a data pipeline that shuffles on its own).
pub fn fork() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(rng().r#gen())
}

/// The exact position of the global generator: 32 bytes of seed, 8 of stream, 16 of word
/// position (56 bytes). [`set_state`] continues from it.
///
/// ```
/// ferrokeras::random::set_random_seed(5);
/// let saved = ferrokeras::random::state();
/// let a = ferrokeras::random::permutation(10);
/// ferrokeras::random::set_state(&saved).unwrap();
/// assert_eq!(ferrokeras::random::permutation(10), a);
/// ```
pub fn state() -> Vec<u8> {
    let g = rng();
    let mut out = g.get_seed().to_vec();
    out.extend(g.get_stream().to_le_bytes());
    out.extend(g.get_word_pos().to_le_bytes());
    out
}

/// Restores a [`state`].
///
/// # Errors
/// A state that is not 56 bytes long.
pub fn set_state(state: &[u8]) -> crate::Result<()> {
    if state.len() != 56 {
        return Err(crate::Error::value(format!(
            "a random generator state is 56 bytes; received {}",
            state.len()
        )));
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&state[..32]);
    let mut stream = [0u8; 8];
    stream.copy_from_slice(&state[32..40]);
    let mut pos = [0u8; 16];
    pos.copy_from_slice(&state[40..]);
    let mut g = Generator::from_seed(seed);
    g.set_stream(u64::from_le_bytes(stream));
    g.set_word_pos(u128::from_le_bytes(pos));
    *rng() = g;
    Ok(())
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
