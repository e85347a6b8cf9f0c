//! A small transformer classifier, as in Keras's "Text classification with Transformer": token
//! and position embeddings, a `MultiHeadAttention` block with residual connections and
//! `LayerNormalization`, a feed-forward part, average pooling. The task needs the order of the
//! tokens, which averaging embeddings cannot see: in padded sequences of filler tokens, does
//! token 1 come before token 2? After training, the model is saved as a compiled Keras file
//! (`.keras`), which `Trainer::load_keras` (or Keras's `load_model`) resumes from.
//!
//! Run: `cargo run --release --example transformer_classification [-- --device cpu|cuda]`

use candle_core::{Device, Tensor};
use ferrokeras::layers::{
    Embedding, GlobalAveragePooling1D, LayerNormalization, MultiHeadAttention,
};
use ferrokeras::prelude::*;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 10;
const MAX_LEN: usize = 12;
const DIM: usize = 32;

/// `n` sequences of 4 to 12 filler tokens (3..VOCAB) holding a 1 and a 2, padded at the end
/// with 0, their position ids, and whether the 1 comes first.
fn data(n: usize, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
    let mut g = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ids = vec![0u32; n * MAX_LEN];
    let mut labels = Vec::with_capacity(n);
    for row in ids.chunks_mut(MAX_LEN) {
        let len = g.gen_range(4..=MAX_LEN);
        for id in row.iter_mut().take(len) {
            *id = g.gen_range(3..VOCAB as u32);
        }
        let a = g.gen_range(0..len);
        let b = (a + g.gen_range(1..len)) % len;
        row[a] = 1;
        row[b] = 2;
        labels.push(f32::from(a < b));
    }
    let positions: Vec<u32> = (0..n).flat_map(|_| 0..MAX_LEN as u32).collect();
    Ok((
        Tensor::from_vec(ids, (n, MAX_LEN), &Device::Cpu)?,
        Tensor::from_vec(positions, (n, MAX_LEN), &Device::Cpu)?,
        Tensor::from_vec(labels, (n, 1), &Device::Cpu)?,
    ))
}

#[path = "shared/device.rs"]
mod device;

fn main() -> Result<()> {
    device::from_args()?;
    ferrokeras::random::set_random_seed(1);
    let tokens = Input::named(&[MAX_LEN], "tokens");
    let positions = Input::named(&[MAX_LEN], "positions");
    let x = Add::new().apply_many(&[
        Embedding::new(VOCAB, DIM).apply(&tokens)?,
        Embedding::new(MAX_LEN, DIM).apply(&positions)?,
    ])?;
    // The transformer block.
    let attended = MultiHeadAttention::new(2, DIM / 2)
        .dropout(0.1)?
        .apply_many(&[x.clone(), x.clone()])?;
    let x = LayerNormalization::new().apply(&Add::new().apply_many(&[x, attended])?)?;
    let ff = Dense::new(64).activation("relu")?.apply(&x)?;
    let ff = Dense::new(DIM).apply(&ff)?;
    let x = LayerNormalization::new().apply(&Add::new().apply_many(&[x, ff])?)?;
    let x = GlobalAveragePooling1D::new().apply(&x)?;
    let out = Dense::new(1).activation("sigmoid")?.apply(&x)?;
    let mut model = Functional::new(&[tokens, positions], &[out])?.compile(
        Compile::new()
            .optimizer(Adam::new(0.003))
            .loss("binary_crossentropy")
            .metrics(["accuracy"]),
    )?;
    println!("{}", model.summary());
    let (ids, pos, y) = data(2048, 2)?;
    let history = model.fit(
        Inputs::xy(vec![ids, pos], y),
        FitOptions::new()
            .epochs(10)
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

    // Saved compiled, as Keras saves it, and resumed: the same predictions.
    let path = std::env::temp_dir().join("ferrokeras-transformer.keras");
    model.save(&path)?;
    let mut resumed = Trainer::load_keras(&path)?;
    let (ids, pos, _) = data(4, 3)?;
    let a = model.predict_on_batch(vec![ids.clone(), pos.clone()])?;
    let b = resumed.predict_on_batch(vec![ids, pos])?;
    println!(
        "saved to {}: predictions {:?}, after loading {:?}",
        path.display(),
        a.tensor()?.flatten_all()?.to_vec1::<f32>()?,
        b.tensor()?.flatten_all()?.to_vec1::<f32>()?
    );
    Ok(())
}
