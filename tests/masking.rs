//! Masks, as Keras makes and uses them (`tests/fixtures/keras_masking.json`, made by
//! `make_keras_mask_fixtures.py`): `Embedding(mask_zero=true)` and `Masking` mark padded steps;
//! recurrent layers (and `Bidirectional`) skip them, `GlobalAveragePooling1D` averages the
//! others, `Dense` passes the mask on, and a mask that reaches the output weights the loss and
//! the metrics. Predictions, `evaluate` and one SGD step all give Keras's numbers.

use candle_core::{DType, Device, Tensor};
use ferrokeras::io::model_from_json;
use ferrokeras::layers::{BatchNormalization, Embedding, GRU, LSTM, Masking};
use ferrokeras::prelude::*;

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{read, tensor};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// A case's input: one tensor, or a tuple for a model of several inputs.
fn input(case: &serde_json::Value) -> Data {
    if case["x_list"].as_bool() == Some(true) {
        Data::from(
            case["x"]
                .as_array()
                .unwrap()
                .iter()
                .map(tensor)
                .collect::<Vec<_>>(),
        )
    } else {
        Data::from(tensor(&case["x"]))
    }
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs Keras {w}"
        );
    }
}

#[test]
fn masked_models_give_keras_predictions_losses_and_updates() {
    let fx = read("keras_masking.json");
    let models = fx["models"].as_object().unwrap();
    assert_eq!(models.len(), 5);
    for (name, case) in models {
        let mut model = model_from_json(case["json"].as_str().unwrap()).unwrap();
        let weights: Vec<Tensor> = case["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(tensor)
            .collect();
        model.set_weights(&weights).unwrap();
        let x = input(case);
        let y = tensor(&case["y"]);
        let n = y.dim(0).unwrap();
        let pred = model.call(&x, false).unwrap();
        close(
            &format!("{name} predict"),
            &flat(pred.tensor().unwrap()),
            &flat(&tensor(&case["predict"])),
            1e-5,
        );
        let mut trainer = model
            .compile(
                Compile::new()
                    .optimizer(Sgd::new(0.1))
                    .loss("mse")
                    .metrics(["mae"]),
            )
            .unwrap();
        let ev = trainer
            .evaluate(
                (x.clone(), y.clone()),
                EvaluateOptions::new().batch_size(n).verbose(0),
            )
            .unwrap();
        for key in ["loss", "mae"] {
            let want = case["evaluate"][key].as_f64().unwrap() as f32;
            close(
                &format!("{name} evaluate {key}"),
                &[ev.get(key).unwrap() as f32],
                &[want],
                1e-5,
            );
        }
        let step = trainer.train_on_batch((x, y)).unwrap();
        let want = case["train_on_batch"]["loss"].as_f64().unwrap() as f32;
        close(
            &format!("{name} train_on_batch loss"),
            &[step.get("loss").unwrap() as f32],
            &[want],
            1e-5,
        );
        let after = trainer.get_weights();
        let want: Vec<Tensor> = case["weights_after"]
            .as_array()
            .unwrap()
            .iter()
            .map(tensor)
            .collect();
        assert_eq!(after.len(), want.len(), "{name}: weights");
        for (i, (a, w)) in after.iter().zip(&want).enumerate() {
            close(
                &format!("{name} weight {i} after one step"),
                &flat(a),
                &flat(w),
                1e-5,
            );
        }
    }
}

/// Without its mask a padded batch gives other numbers: the fixture's padding matters.
#[test]
fn the_mask_changes_the_numbers() {
    let fx = read("keras_masking.json");
    let case = &fx["models"]["embedding_lstm"];
    let json = case["json"]
        .as_str()
        .unwrap()
        .replace("\"mask_zero\": true", "\"mask_zero\": false");
    assert!(!json.contains("\"mask_zero\": true"));
    let mut model = model_from_json(&json).unwrap();
    let weights: Vec<Tensor> = case["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(tensor)
        .collect();
    model.set_weights(&weights).unwrap();
    let pred = model.call(&Data::from(tensor(&case["x"])), false).unwrap();
    let got = flat(pred.tensor().unwrap());
    let want = flat(&tensor(&case["predict"]));
    assert!(got.iter().zip(&want).any(|(g, w)| (g - w).abs() > 1e-3));
}

/// Layers that Keras computes differently with a mask, and that do not take one here, say so.
#[test]
fn unsupported_masked_inputs_are_errors() {
    let ids = Tensor::new(&[[1u32, 2, 0], [3, 0, 0]], &Device::Cpu).unwrap();
    let mut model = Sequential::new()
        .input(&[3])
        .add(Embedding::new(5, 2).mask_zero(true))
        .add(BatchNormalization::new());
    let err = model.call(&Data::from(ids), false).unwrap_err().to_string();
    assert!(
        err.contains("masked input") && err.contains("BatchNormalization"),
        "{err}"
    );
}

/// Merged masks, as Keras's: `Add` and `Concatenate` (features) keep a step either input
/// keeps; a model of several outputs with a mask on one is refused by the loss.
#[test]
fn merge_layers_combine_masks() {
    let a_ids = Tensor::new(&[[1u32, 2, 0], [3, 0, 0]], &Device::Cpu).unwrap();
    let b_ids = Tensor::new(&[[1u32, 0, 0], [3, 4, 0]], &Device::Cpu).unwrap();
    let a = Input::new(&[3]);
    let b = Input::new(&[3]);
    let ea = Embedding::new(5, 2).mask_zero(true).apply(&a).unwrap();
    let eb = Embedding::new(5, 2).mask_zero(true).apply(&b).unwrap();
    let sum = ferrokeras::layers::Add::new()
        .apply_many(&[ea.clone(), eb.clone()])
        .unwrap();
    let cat = Concatenate::new().apply_many(&[ea, eb]).unwrap();
    let x = Data::from(vec![a_ids, b_ids]);
    for (out, want) in [
        (sum, vec![vec![1.0f32, 1.0, 0.0], vec![1.0, 1.0, 0.0]]),
        (cat, vec![vec![1.0, 1.0, 0.0], vec![1.0, 1.0, 0.0]]),
    ] {
        let mut f = Functional::new(&[a.clone(), b.clone()], &[out]).unwrap();
        f.call(&x, false).unwrap();
        let mask = Model::output_mask(&f).unwrap().unwrap();
        assert_eq!(mask.to_vec2::<f32>().unwrap(), want);
    }
    // Keras's Multiply also changes its values under masks: refused here.
    let ea = Embedding::new(5, 2).mask_zero(true).apply(&a).unwrap();
    let eb = Embedding::new(5, 2).mask_zero(true).apply(&b).unwrap();
    let prod = ferrokeras::layers::Multiply::new()
        .apply_many(&[ea, eb])
        .unwrap();
    let mut f = Functional::new(&[a.clone(), b.clone()], &[prod]).unwrap();
    let err = f.call(&x, false).unwrap_err().to_string();
    assert!(
        err.contains("Multiply") && err.contains("masked input"),
        "{err}"
    );

    let ea = Embedding::new(5, 2).mask_zero(true).apply(&a).unwrap();
    let last = LSTM::new(2).apply(&ea).unwrap();
    let mut two = Functional::new(std::slice::from_ref(&a), &[ea, last]).unwrap();
    let ids = Tensor::new(&[[1u32, 0, 0]], &Device::Cpu).unwrap();
    two.call(&Data::from(ids), false).unwrap();
    let err = Model::output_mask(&two).unwrap_err().to_string();
    assert!(
        err.contains("2 outputs") && err.contains("carries a mask"),
        "{err}"
    );
}

/// A fully padded sequence keeps the initial state (zeros), and `Masking` zeroes the padded
/// steps it marks.
#[test]
fn fully_padded_sequences_keep_the_initial_state() {
    let mut model = Sequential::new()
        .input(&[4, 2])
        .add(Masking::new(0.0))
        .add(LSTM::new(3));
    let x = Tensor::new(
        &[
            [[0f32, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
            [[1.0, 2.0], [0.5, -1.0], [0.0, 0.0], [0.0, 0.0]],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let y = model.call(&Data::from(x.clone()), false).unwrap();
    let y = y.tensor().unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(y[0], vec![0.0; 3]);
    assert!(y[1].iter().any(|v| *v != 0.0));
    // The second sequence's result is that of its two real steps alone.
    let short = x.narrow(0, 1, 1).unwrap().narrow(1, 0, 2).unwrap();
    let mut alone = Sequential::new().input(&[2, 2]);
    alone = alone.add(LSTM::new(3));
    alone.build().unwrap();
    alone.set_weights(&model.get_weights()).unwrap();
    let want = alone.call(&Data::from(short), false).unwrap();
    // (To float rounding: without a mask, the CPU runs the whole sequence as one op.)
    let want = want.tensor().unwrap().to_vec2::<f32>().unwrap();
    for (a, b) in want[0].iter().zip(&y[1]) {
        assert!((a - b).abs() < 1e-6, "{:?} vs {:?}", want[0], y[1]);
    }
    // The LSTM returns its last output only: no mask reaches the model's output.
    assert!(model.output_mask().unwrap().is_none());
}

/// The mask of a sequence output weights the loss: padded steps count for nothing, whatever
/// the targets there.
#[test]
fn padded_targets_do_not_change_a_masked_loss() {
    let x = Tensor::new(&[[1u32, 2, 0, 0], [3, 1, 2, 0]], &Device::Cpu).unwrap();
    let make = || {
        let init = ferrokeras::initializers::Initializer::RandomUniform {
            minval: -0.5,
            maxval: 0.5,
            seed: Some(4),
        };
        Sequential::new()
            .input(&[4])
            .add(
                Embedding::new(4, 2)
                    .mask_zero(true)
                    .embeddings_initializer(init.clone()),
            )
            .add(
                GRU::new(2)
                    .return_sequences(true)
                    .kernel_initializer(init.clone())
                    .recurrent_initializer(init.clone()),
            )
            .compile(Compile::new().optimizer("sgd").loss("mse"))
            .unwrap()
    };
    let y1 = Tensor::zeros((2, 4, 2), DType::F32, &Device::Cpu).unwrap();
    // The same targets except at the padded steps.
    let mut v = vec![0f32; 16];
    for i in [4usize, 5, 6, 7, 14, 15] {
        v[i] = 100.0;
    }
    let y2 = Tensor::from_vec(v, (2, 4, 2), &Device::Cpu).unwrap();
    let opts = || EvaluateOptions::new().verbose(0);
    let l1 = make()
        .evaluate((x.clone(), y1), opts())
        .unwrap()
        .get("loss")
        .unwrap();
    let l2 = make()
        .evaluate((x, y2), opts())
        .unwrap()
        .get("loss")
        .unwrap();
    assert_eq!(l1, l2);
}
