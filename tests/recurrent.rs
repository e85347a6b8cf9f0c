//! Recurrent layers inside `fit`: they learn a task that needs memory across steps, train from
//! a `.keras` round trip, and run under a bfloat16 policy.

use candle_core::{DType, Device, Tensor};
use ferrokeras::initializers::Initializer;
use ferrokeras::layers::{GRU, LSTM, SimpleRNN};
use ferrokeras::prelude::*;

/// `n` sequences of 12 steps, one feature in [-1, 1); the label is whether the first three
/// values sum to more than 0, so the last output must remember the start of the sequence.
fn task(n: usize, seed: u64) -> (Tensor, Tensor) {
    use rand::{Rng, SeedableRng};
    let mut g = rand::rngs::StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * 12).map(|_| g.gen_range(-1.0f32..1.0)).collect();
    let y: Vec<f32> = x
        .chunks(12)
        .map(|s| f32::from(s[0] + s[1] + s[2] > 0.0))
        .collect();
    (
        Tensor::from_vec(x, (n, 12, 1), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (n, 1), &Device::Cpu).unwrap(),
    )
}

fn seeded(s: u64) -> Initializer {
    Initializer::RandomUniform {
        minval: -0.3,
        maxval: 0.3,
        seed: Some(s),
    }
}

/// Keras's default initializers, with seeds of their own.
fn keras_init(class: &str, s: u64) -> Initializer {
    Initializer::from_json(&serde_json::json!({"class_name": class, "config": {"seed": s}}))
        .unwrap()
}

fn classifier(recurrent: Box<dyn Layer>) -> Trainer<Sequential> {
    Sequential::new()
        .input(&[12, 1])
        .add(recurrent)
        .add(
            Dense::new(1)
                .activation("sigmoid")
                .unwrap()
                .with_kernel_initializer(seeded(9)),
        )
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.01))
                .loss("binary_crossentropy")
                .metrics(["accuracy"]),
        )
        .unwrap()
}

const EPOCHS: usize = 20;

/// LSTM and GRU learn the task to over 85% validation accuracy (the best of the last five
/// epochs) in 20 epochs (chance: 50%), and the training loss falls by 40% or more.
#[test]
fn lstm_and_gru_learn_a_task_that_needs_memory() {
    let (x, y) = task(1024, 1);
    let layers: Vec<(&str, Box<dyn Layer>)> = vec![
        (
            "LSTM",
            Box::new(
                LSTM::new(8)
                    .kernel_initializer(keras_init("GlorotUniform", 1))
                    .recurrent_initializer(keras_init("Orthogonal", 2)),
            ),
        ),
        (
            "GRU",
            Box::new(
                GRU::new(8)
                    .kernel_initializer(keras_init("GlorotUniform", 3))
                    .recurrent_initializer(keras_init("Orthogonal", 4)),
            ),
        ),
    ];
    for (name, layer) in layers {
        let mut model = classifier(layer);
        let h = model
            .fit(
                (x.clone(), y.clone()),
                FitOptions::new()
                    .epochs(EPOCHS)
                    .batch_size(32)
                    .validation_split(0.25)
                    // Deterministic: no draws from the process-wide generator.
                    .shuffle(false)
                    .verbose(0),
            )
            .unwrap();
        let loss = h.get("loss");
        let acc = h.get("val_accuracy");
        assert!(
            loss[loss.len() - 1] < 0.6 * loss[0],
            "{name}: loss {loss:?}"
        );
        let best_late = acc[acc.len() - 5..].iter().cloned().fold(0.0, f64::max);
        assert!(best_late > 0.85, "{name}: val_accuracy {acc:?}");
    }
}

/// A trained model saved as `.keras` and loaded again predicts the same numbers and goes on
/// training from the same weights.
#[test]
fn a_trained_recurrent_model_round_trips_through_keras_files() {
    let (x, y) = task(256, 2);
    // SimpleRNN's sequences, then an LSTM over them.
    let mut model = Sequential::new()
        .input(&[12, 1])
        .add(
            SimpleRNN::new(6)
                .return_sequences(true)
                .kernel_initializer(seeded(5))
                .recurrent_initializer(seeded(6)),
        )
        .add(
            LSTM::new(4)
                .kernel_initializer(seeded(7))
                .recurrent_initializer(seeded(8)),
        )
        .add(
            Dense::new(1)
                .activation("sigmoid")
                .unwrap()
                .with_kernel_initializer(seeded(9)),
        )
        .compile(Compile::new().optimizer("adam").loss("binary_crossentropy"))
        .unwrap();
    model
        .fit(
            (x.clone(), y.clone()),
            FitOptions::new().epochs(2).verbose(0),
        )
        .unwrap();
    let path = std::env::temp_dir().join(format!("ferrokeras-rnn-{}.keras", std::process::id()));
    model.save(&path).unwrap();
    let mut loaded = ferrokeras::io::load_keras(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let xd = Data::from(x.clone());
    let want = model.model_mut().call(&xd, false).unwrap();
    let got = loaded.call(&xd, false).unwrap();
    assert_eq!(
        got.tensor().unwrap().to_vec2::<f32>().unwrap(),
        want.tensor().unwrap().to_vec2::<f32>().unwrap()
    );
    assert_eq!(loaded.variables().len(), 3 + 3 + 2);
}

/// Under mixed_bfloat16 the layer computes in bfloat16 and keeps float32 weights.
#[test]
fn recurrent_layers_follow_the_dtype_policy() {
    let (x, _) = task(4, 3);
    for mut layer in [
        Box::new(LSTM::new(3).dtype("mixed_bfloat16").unwrap()) as Box<dyn Layer>,
        Box::new(GRU::new(3).dtype("mixed_bfloat16").unwrap()),
        Box::new(SimpleRNN::new(3).dtype("mixed_bfloat16").unwrap()),
    ] {
        let y = layer.call(&x, false).unwrap();
        assert_eq!(y.dtype(), DType::BF16, "{}", layer.class_name());
        assert!(
            layer
                .variables()
                .iter()
                .all(|v| v.as_tensor().dtype() == DType::F32)
        );
    }
}
