//! Model JSON between Keras 3 and ferrokeras, both ways (`tests/fixtures/keras_json.json` and
//! `keras_reads_ferrokeras.json`, made by `make_keras_json_fixtures.py`): Keras's `to_json()`
//! read here gives Keras's predictions with Keras's weights and keeps frozen layers frozen; the
//! JSON ferrokeras writes for the same models (`ferrokeras_json.json`) was read by Keras's
//! `model_from_json`, which gave the same predictions.

use candle_core::Tensor;
use serde_json::Value;

use ferrokeras::io::{LoadedModel, SavableModel, model_from_json};
use ferrokeras::{Data, Model};

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{read, tensor};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The model read from Keras's JSON, with Keras's weights.
fn load(case: &Value) -> LoadedModel {
    let mut model = model_from_json(case["json"].as_str().unwrap()).unwrap();
    let weights: Vec<Tensor> = case["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(tensor)
        .collect();
    model.set_weights(&weights).unwrap();
    model
}

fn outputs(model: &mut LoadedModel, x: &Tensor) -> Vec<Tensor> {
    match model.call(&Data::from(x.clone()), false).unwrap() {
        Data::Tensor(t) => vec![t],
        other => other.flatten().into_iter().cloned().collect(),
    }
}

/// Layer names and whether each is trainable (`false` once every variable it has is frozen).
fn trainable_flags(model: &LoadedModel) -> Vec<(String, bool)> {
    let flag =
        |vars: Vec<ferrokeras::Variable>| vars.is_empty() || vars.iter().any(|v| !v.is_frozen());
    match model {
        LoadedModel::Sequential(m) => m
            .layers()
            .iter()
            .map(|l| (l.name().to_string(), flag(l.variables())))
            .collect(),
        LoadedModel::Functional(m) => m
            .layers()
            .iter()
            .map(|l| {
                let l = l.lock();
                (l.name().to_string(), flag(l.variables()))
            })
            .collect(),
    }
}

/// Keras's JSON of eight models (channels-first layers, bfloat16 policies, an embedding among them) reads
/// here; with Keras's weights the predictions are Keras's, and
/// a layer Keras froze is frozen.
#[test]
fn keras_model_json_reads_with_keras_predictions() {
    let fx = read("keras_json.json");
    let models = fx["models"].as_object().unwrap();
    assert_eq!(models.len(), 8);
    for (name, case) in models {
        let mut model = load(case);
        let ys = outputs(&mut model, &tensor(&case["x"]));
        let want = case["y"].as_array().unwrap();
        assert_eq!(ys.len(), want.len(), "{name}: outputs");
        // bfloat16 layers round differently from JAX's: a looser tolerance there.
        let tol = if name == "mixed" { 2e-2 } else { 1e-4 };
        for (got, want) in ys.iter().zip(want) {
            let want = tensor(want);
            assert_eq!(got.dims(), want.dims(), "{name}: shape");
            assert_eq!(got.dtype(), candle_core::DType::F32, "{name}: output dtype");
            for (g, w) in flat(got).iter().zip(flat(&want)) {
                assert!(
                    (g - w).abs() <= tol / 10.0 + tol * w.abs(),
                    "{name}: {g} vs Keras {w}"
                );
            }
        }
        let keras_flags = case["trainable"].as_object().unwrap();
        for (layer, trainable) in trainable_flags(&model) {
            assert_eq!(
                Some(trainable),
                keras_flags[&layer].as_bool(),
                "{name}: layer {layer} trainable"
            );
        }
    }
    // The frozen layer's variables are left out of training.
    let mlp = load(&models["mlp"]);
    assert_eq!(mlp.trainable_variables().len(), 4); // norm gamma/beta, probs kernel/bias
}

/// The JSON ferrokeras writes for the same models is what Keras read back, with Keras's own
/// predictions (checked by the fixture script); rewrite it with
/// `FERROKERAS_WRITE_JSON_FIXTURES=1` after a change to the format, then rerun the script.
#[test]
fn ferrokeras_model_json_is_what_keras_read() {
    let fx = read("keras_json.json");
    let mut written = serde_json::Map::new();
    for (name, case) in fx["models"].as_object().unwrap() {
        let model = load(case);
        written.insert(
            name.clone(),
            Value::String(model.model_config().unwrap().to_string()),
        );
    }
    if std::env::var_os("FERROKERAS_WRITE_JSON_FIXTURES").is_some() {
        let path = fixtures::path("ferrokeras_json.json");
        let text = serde_json::to_string_pretty(&Value::Object(written)).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    let committed = read("ferrokeras_json.json");
    let reads = read("keras_reads_ferrokeras.json");
    for (name, text) in &written {
        assert_eq!(
            &committed[name], text,
            "{name}: the JSON differs from the one Keras read; rewrite the fixtures (see the test's doc)"
        );
        // Keras read every layer under its name, with its trainable flag, and predicted Keras's
        // numbers.
        let model = model_from_json(text.as_str().unwrap()).unwrap();
        let keras = &reads[name];
        let flags = trainable_flags(&model);
        for (layer, trainable) in &flags {
            assert_eq!(
                Some(*trainable),
                keras["trainable"][layer].as_bool(),
                "{name}: {layer}"
            );
        }
        // The same layers in the same order (Keras lists the inputs too).
        let keras_layers: Vec<&str> = keras["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .filter(|l| flags.iter().any(|(n, _)| n == l))
            .collect();
        let ours: Vec<&str> = flags.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(ours, keras_layers, "{name}: layer order");
        let want = &fx["models"][name]["y"];
        for (got, want) in keras["y"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want.as_array().unwrap())
        {
            for (g, w) in flat(&tensor(got)).iter().zip(flat(&tensor(want))) {
                let tol = if name == "mixed" { 2e-2 } else { 1e-5 };
                assert!(
                    (g - w).abs() <= tol / 10.0 + tol * w.abs(),
                    "{name}: {g} vs {w}"
                );
            }
        }
    }
}

/// A Keras option ferrokeras supports at its default only is an error that names the layer, the
/// key and the supported value, not silently dropped.
#[test]
fn unsupported_keras_options_are_errors() {
    let fx = read("keras_json.json");
    let mlp = fx["models"]["mlp"]["json"].as_str().unwrap();
    assert!(mlp.contains("\"renorm\": false"), "{mlp}");
    let err = model_from_json(&mlp.replace("\"renorm\": false", "\"renorm\": true"))
        .map(|_| ())
        .expect_err("renorm accepted")
        .to_string();
    assert!(
        err.contains("BatchNormalization") && err.contains("`renorm`") && err.contains("false"),
        "{err}"
    );
    let conv = fx["models"]["convnet"]["json"].as_str().unwrap();
    let err = model_from_json(&conv.replacen("\"groups\": 1", "\"groups\": 2", 1))
        .map(|_| ())
        .expect_err("groups 2 accepted")
        .to_string();
    assert!(err.contains("`groups`"), "{err}");
    let err = model_from_json(&conv.replacen(
        "\"kernel_constraint\": null",
        "\"kernel_constraint\": {\"class_name\": \"NonNeg\", \"config\": {}}",
        1,
    ))
    .map(|_| ())
    .expect_err("a constraint accepted")
    .to_string();
    assert!(
        err.contains("`kernel_constraint`") && err.contains("NonNeg"),
        "{err}"
    );
}
