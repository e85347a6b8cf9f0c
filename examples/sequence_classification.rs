//! Sequences of different lengths, padded with 0: `Embedding::mask_zero` marks the padding,
//! a `Bidirectional` LSTM reads each sequence both ways and skips it, and `fit` trains the
//! classifier as usual. The task: does token 7 occur more often than token 3?
//!
//! Run: `cargo run --release --example sequence_classification [-- --device cpu|cuda]`

use candle_core::{Device, Tensor};
use ferrokeras::layers::{Bidirectional, Embedding, LSTM};
use ferrokeras::prelude::*;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 12;
const MAX_LEN: usize = 16;

/// `n` sequences of 4 to 16 tokens in `1..VOCAB`, padded at the end with 0, and their labels.
fn data(n: usize, seed: u64) -> Result<(Tensor, Tensor)> {
    let mut g = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ids = vec![0u32; n * MAX_LEN];
    let mut labels = Vec::with_capacity(n);
    for row in ids.chunks_mut(MAX_LEN) {
        let len = g.gen_range(4..=MAX_LEN);
        for id in row.iter_mut().take(len) {
            *id = g.gen_range(1..VOCAB as u32);
        }
        let count = |t: u32| row.iter().filter(|&&x| x == t).count();
        labels.push(f32::from(count(7) > count(3)));
    }
    Ok((
        Tensor::from_vec(ids, (n, MAX_LEN), &Device::Cpu)?,
        Tensor::from_vec(labels, (n, 1), &Device::Cpu)?,
    ))
}

#[path = "shared/device.rs"]
mod device;

fn main() -> Result<()> {
    device::from_args()?;
    ferrokeras::random::set_random_seed(1);
    let mut model = Sequential::new()
        .input(&[MAX_LEN])
        .add(Embedding::new(VOCAB, 8).mask_zero(true))
        .add(Bidirectional::new(LSTM::new(16))?)
        .add(Dense::new(1).activation("sigmoid")?)
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.01))
                .loss("binary_crossentropy")
                .metrics(["accuracy"]),
        )?;
    println!("{}", model.summary());
    let (x, y) = data(2048, 2)?;
    let history = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(8)
            .batch_size(64)
            .validation_split(0.2),
    )?;
    let acc = history.get("val_accuracy");
    println!(
        "validation accuracy: {:.3} after epoch 1, {:.3} after epoch {}",
        acc[0],
        acc[acc.len() - 1],
        acc.len()
    );

    // A new sequence of four tokens, padded to the model's length.
    let short = Tensor::new(
        &[[7u32, 7, 3, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
        &Device::Cpu,
    )?;
    let p = model.predict_on_batch(short)?;
    let p = p.tensor()?.flatten_all()?.to_vec1::<f32>()?[0];
    println!("P(more 7s than 3s) for [7, 7, 3, 5]: {p:.3}");
    Ok(())
}
