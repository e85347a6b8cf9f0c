//! `MultiHeadAttention` against Keras 3 (`tests/fixtures/keras_attention.json`, made by
//! `make_keras_attention_fixtures.py`): outputs and gradients for every input and weight, with
//! masks, causal and sliding-window masks, an explicit key, `value_dim` and `output_shape`; a
//! small transformer rebuilt from Keras's JSON gives Keras's predictions and goes through
//! ferrokeras's JSON and `.keras` files; a transformer trains with `fit`.

use candle_core::{DType, Device, Tensor};
use ferrokeras::io::{LoadedModel, model_from_json};
use ferrokeras::layers::{
    Embedding, GlobalAveragePooling1D, Layer, LayerNormalization, MultiHeadAttention,
};
use ferrokeras::prelude::*;
use ferrokeras::{GradientTape, Variable};

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{read, tensor};

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
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
fn multi_head_attention_matches_keras() {
    let fx = read("keras_attention.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut layer =
            ferrokeras::layers::from_config("MultiHeadAttention", &case["keras_config"]).unwrap();
        for (k, v) in case["kwargs"].as_object().unwrap() {
            assert!(layer.set_call_kwarg(k, v).unwrap(), "{name}: kwarg {k}");
        }
        let inputs: Vec<Variable> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, x)| Variable::new(format!("x{i}"), &tensor(x), true).unwrap())
            .collect();
        let xs: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let masks: Vec<Option<Tensor>> = case["masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (!m.is_null()).then(|| tensor(m)))
            .collect();
        // Build, then take Keras's weights.
        layer.call_many(&xs, false).unwrap();
        let vars = layer.variables();
        let weights = case["weights"].as_array().unwrap();
        assert_eq!(vars.len(), weights.len(), "{name}: weights");
        for (v, w) in vars.iter().zip(weights) {
            v.assign(&tensor(w)).unwrap();
        }
        let y = layer.call_many_masked(&xs, &masks, false).unwrap();
        close(
            &format!("{name} y"),
            &flat(&y),
            &flat(&tensor(&case["y"])),
            2e-5,
        );
        let u = tensor(&case["upstream"]);
        let loss = (&y * &u).unwrap().sum_all().unwrap();
        let mut sources = inputs.clone();
        sources.extend(vars.iter().cloned());
        let grads = GradientTape::gradient(&loss, &sources).unwrap();
        let want: Vec<&serde_json::Value> = case["grad_inputs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(case["grad_weights"].as_array().unwrap())
            .collect();
        assert_eq!(grads.len(), want.len(), "{name}: gradients");
        for (i, (g, w)) in grads.iter().zip(want).enumerate() {
            close(
                &format!("{name} gradient {i}"),
                &flat(g),
                &flat(&tensor(w)),
                1e-4,
            );
        }
    }
}

/// Keras's small transformer (masked ids, causal self-attention, residual, layer norm) from its
/// JSON: Keras's predictions; then through ferrokeras's JSON (the attention's node keeps its two
/// positional inputs and `use_causal_mask`, as Keras writes it) and `.keras` file.
#[test]
fn keras_transformer_json_predicts_as_keras() {
    let fx = read("keras_attention.json");
    let case = &fx["model"];
    let mut model = model_from_json(&case["json"].to_string()).unwrap();
    let weights: Vec<Tensor> = case["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(tensor)
        .collect();
    model.set_weights(&weights).unwrap();
    let ids = tensor(&case["ids"]);
    let want = flat(&tensor(&case["y"]));
    let y = model.call(&Data::from(ids.clone()), false).unwrap();
    close("transformer", &flat(y.tensor().unwrap()), &want, 2e-5);

    let ours = ferrokeras::io::SavableModel::model_config(&model).unwrap();
    let node = |v: &serde_json::Value| -> serde_json::Value {
        let layers = v["config"]["layers"].as_array().unwrap();
        let l = layers
            .iter()
            .find(|l| l["class_name"] == "MultiHeadAttention")
            .unwrap();
        let n = &l["inbound_nodes"][0];
        serde_json::json!({
            "history": n["args"].as_array().unwrap().iter().map(|a| a["config"]["keras_history"].clone()).collect::<Vec<_>>(),
            "kwargs": n["kwargs"],
        })
    };
    assert_eq!(node(&ours), node(&case["json"]));
    let mut again = model_from_json(&ours.to_string()).unwrap();
    again.set_weights(&weights).unwrap();
    let y = again.call(&Data::from(ids.clone()), false).unwrap();
    close("transformer again", &flat(y.tensor().unwrap()), &want, 2e-5);

    let path = std::env::temp_dir().join(format!("ferrokeras-mha-{}.keras", std::process::id()));
    ferrokeras::io::save_keras(&model, &path).unwrap();
    let mut loaded: LoadedModel = ferrokeras::io::load_keras(&path).unwrap();
    let y = loaded.call(&Data::from(ids), false).unwrap();
    close(
        "transformer .keras",
        &flat(y.tensor().unwrap()),
        &want,
        2e-5,
    );
    let _ = std::fs::remove_file(&path);
}

/// A transformer classifier of padded id sequences learns which of two tokens comes first, a
/// question of order that averaging the embeddings cannot answer.
#[test]
fn a_transformer_trains_with_fit() {
    ferrokeras::random::set_random_seed(11);
    let dev = Device::Cpu;
    let (n, len) = (512usize, 8usize);
    let mut ids = vec![0f32; n * len];
    let mut labels = vec![0f32; n];
    let mut state = 12345u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    for s in 0..n {
        let used = 4 + next(5) as usize; // 4..=8 tokens, then padding (0)
        for t in 0..used {
            ids[s * len + t] = (3 + next(7)) as f32; // filler tokens 3..=9
        }
        let (a, b) = (next(used as u64) as usize, next(used as u64) as usize);
        let (a, b) = if a == b { (a, (a + 1) % used) } else { (a, b) };
        ids[s * len + a] = 1.0;
        ids[s * len + b] = 2.0;
        labels[s] = f32::from(u8::from(a < b));
    }
    let x = Tensor::from_vec(ids, (n, len), &dev).unwrap();
    let pos = Tensor::arange(0f32, len as f32, &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .repeat((n, 1))
        .unwrap();
    let y = Tensor::from_vec(labels, (n, 1), &dev).unwrap();
    // Token and position embeddings, as in Keras's text-classification transformer.
    let (inp, positions) = (Input::new(&[len]), Input::new(&[len]));
    let e = Embedding::new(10, 16).mask_zero(true).apply(&inp).unwrap();
    let p = Embedding::new(len, 16).apply(&positions).unwrap();
    let h = Add::new().apply_many(&[e, p]).unwrap();
    let a = MultiHeadAttention::new(2, 8)
        .apply_many(&[h.clone(), h.clone()])
        .unwrap();
    let h = Add::new().apply_many(&[h, a]).unwrap();
    let h = LayerNormalization::new().apply(&h).unwrap();
    let h = GlobalAveragePooling1D::new().apply(&h).unwrap();
    let out = Dense::new(1)
        .activation("sigmoid")
        .unwrap()
        .apply(&h)
        .unwrap();
    let model = Functional::new(&[inp, positions], &[out]).unwrap();
    let mut t = model
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.01))
                .loss("binary_crossentropy")
                .metrics(["accuracy"]),
        )
        .unwrap();
    let h = t
        .fit(
            Inputs::xy(vec![x, pos], y),
            FitOptions::new()
                .epochs(30)
                .batch_size(32)
                .validation_split(0.25)
                .verbose(0),
        )
        .unwrap();
    let acc = h.get("val_accuracy");
    let best = acc.iter().cloned().fold(0.0, f64::max);
    assert!(best > 0.9, "validation accuracy {acc:?}");
}

#[test]
fn attention_errors_name_the_problem() {
    let dev = Device::Cpu;
    let x = Tensor::ones((2, 3, 4), DType::F32, &dev).unwrap();
    let mut mha = MultiHeadAttention::new(2, 3).named("att");
    let e = mha.call(&x, false).unwrap_err().to_string();
    assert!(e.contains("[query, value]") && e.contains("1 input"), "{e}");
    let flat_in = Tensor::ones((2, 4), DType::F32, &dev).unwrap();
    let e = mha
        .call_many(&[flat_in.clone(), flat_in], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("(batch, positions, features)"), "{e}");
    mha.call_many(&[x.clone(), x.clone()], false).unwrap();
    let wide = Tensor::ones((2, 3, 5), DType::F32, &dev).unwrap();
    let e = mha
        .call_many(&[wide, x.clone()], false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("query has 5 features") && e.contains("built for 4"),
        "{e}"
    );
    let short_key = Tensor::ones((2, 2, 4), DType::F32, &dev).unwrap();
    let e = MultiHeadAttention::new(1, 2)
        .call_many(&[x.clone(), x.clone(), short_key], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("same number of positions"), "{e}");
    let e = ferrokeras::layers::from_config(
        "MultiHeadAttention",
        &serde_json::json!({"num_heads": 2, "key_dim": 2, "attention_axes": [1, 2]}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("attention_axes"), "{e}");
    let e = ferrokeras::layers::from_config(
        "MultiHeadAttention",
        &serde_json::json!({"num_heads": 2, "key_dim": 2, "use_gate": true}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("use_gate"), "{e}");
    assert!(MultiHeadAttention::new(2, 2).dropout(1.5).is_err());
    let mut m = MultiHeadAttention::new(2, 2);
    let e = m
        .set_call_kwarg("return_attention_scores", &serde_json::json!(true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("return_attention_scores"), "{e}");
}
