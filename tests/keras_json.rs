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

/// A case's input batch: one tensor, or a tuple for a model of several inputs.
fn input(case: &Value) -> Data {
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

fn outputs(model: &mut LoadedModel, x: &Data) -> Vec<Tensor> {
    match model.call(x, false).unwrap() {
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

/// Keras's JSON of twelve models (channels-first layers, bfloat16 policies, an embedding, 1-D convolutions and recurrent layers among them) reads
/// here; with Keras's weights the predictions are Keras's, and
/// a layer Keras froze is frozen.
#[test]
fn keras_model_json_reads_with_keras_predictions() {
    let fx = read("keras_json.json");
    let models = fx["models"].as_object().unwrap();
    assert_eq!(models.len(), 15);
    for (name, case) in models {
        let mut model = load(case);
        let ys = outputs(&mut model, &input(case));
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

/// The model in Keras's own `.keras` file of a case (`keras_files/`), read by `load_keras`.
fn load_keras_file(name: &str) -> LoadedModel {
    ferrokeras::io::load_keras(fixtures::path(&format!("keras_files/{name}.keras")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn close_outputs(name: &str, got: &[Tensor], want: &Value, tol: f32) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{name}: outputs");
    for (got, want) in got.iter().zip(want) {
        let want = tensor(want);
        assert_eq!(got.dims(), want.dims(), "{name}: shape");
        for (g, w) in flat(got).iter().zip(flat(&want)) {
            assert!(
                (g - w).abs() <= tol / 10.0 + tol * w.abs(),
                "{name}: {g} vs Keras {w}"
            );
        }
    }
}

/// Keras's `.keras` files of the eight models (`model.save(...)`) load here with their
/// weights: Keras's predictions, and Keras's frozen layers frozen.
#[test]
fn keras_files_load_with_keras_predictions() {
    let fx = read("keras_json.json");
    for (name, case) in fx["models"].as_object().unwrap() {
        let mut model = load_keras_file(name);
        let tol = if name == "mixed" { 2e-2 } else { 1e-4 };
        close_outputs(name, &outputs(&mut model, &input(case)), &case["y"], tol);
        let keras_flags = case["trainable"].as_object().unwrap();
        for (layer, trainable) in trainable_flags(&model) {
            assert_eq!(
                Some(trainable),
                keras_flags[&layer].as_bool(),
                "{name}: layer {layer} trainable"
            );
        }
    }
}

/// The `.keras` files ferrokeras writes for the same models (`save_keras`) are, byte for byte,
/// the files Keras's `keras.saving.load_model` read, with Keras's predictions (checked by the
/// fixture script, which records each file's SHA-256); writing is deterministic. Rewrite them
/// with `FERROKERAS_WRITE_JSON_FIXTURES=1` (see `ferrokeras_model_json_is_what_keras_read`).
#[test]
fn ferrokeras_keras_files_are_what_keras_read() {
    use sha2::Digest;
    let fx = read("keras_json.json");
    let reads = read("keras_reads_ferrokeras.json");
    let dir = std::env::temp_dir().join(format!("ferrokeras-keras-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in fx["models"].as_object().unwrap().keys() {
        let model = load_keras_file(name);
        let path = dir.join(format!("{name}.keras"));
        ferrokeras::io::save_keras(&model, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        ferrokeras::io::save_keras(&model, &path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{name}: not deterministic"
        );
        let committed = fixtures::path(&format!("ferrokeras_files/{name}.keras"));
        if std::env::var_os("FERROKERAS_WRITE_JSON_FIXTURES").is_some() {
            std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
            std::fs::write(&committed, &bytes).unwrap();
            continue;
        }
        assert!(
            std::fs::read(&committed).unwrap() == bytes,
            "{name}: the .keras file differs from the one Keras read; rewrite the fixtures (see the test's doc)"
        );
        let sha: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keras = &reads[name]["keras_file"];
        assert_eq!(
            keras["sha256"],
            sha.as_str(),
            "{name}: Keras read other bytes"
        );
        // Keras listed the same layers, with the same trainable flags.
        let flags = trainable_flags(&model);
        for (layer, trainable) in &flags {
            assert_eq!(
                Some(*trainable),
                keras["trainable"][layer].as_bool(),
                "{name}: {layer}"
            );
        }
        // And ferrokeras reads its own file back to the same predictions.
        let mut again = ferrokeras::io::load_keras(&path).unwrap();
        let mut original = load_keras_file(name);
        let x = input(&fx["models"][name]);
        for (a, b) in outputs(&mut again, &x)
            .iter()
            .zip(outputs(&mut original, &x))
        {
            assert_eq!(flat(a), flat(&b), "{name}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `save_model` and `load_model` take Keras's format for a `.keras` path; a file that is not
/// a Keras archive, or whose weights do not fit its architecture, is an error that says so.
#[test]
fn keras_files_through_save_model_and_bad_archives() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("ferrokeras-keras-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = load_keras_file("mlp");
    let path = dir.join("mlp.keras");
    ferrokeras::io::save_model(&model, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[..4], *b"PK\x03\x04");
    // A .keras file under another name is still recognized by its contents.
    let renamed = dir.join("mlp.bin");
    std::fs::copy(&path, &renamed).unwrap();
    let mut loaded = ferrokeras::io::load_model(&renamed).unwrap();
    let x = input(&read("keras_json.json")["models"]["mlp"]);
    let mut original = load_keras_file("mlp");
    assert_eq!(
        flat(&outputs(&mut loaded, &x)[0]),
        flat(&outputs(&mut original, &x)[0])
    );

    let err = |p: &std::path::Path| ferrokeras::io::load_keras(p).unwrap_err().to_string();
    let not_zip = dir.join("not.keras");
    std::fs::write(&not_zip, b"hello").unwrap();
    let e = err(&not_zip);
    assert!(
        e.contains("is not a Keras model file") && e.contains("not a zip archive"),
        "{e}"
    );
    assert!(err(&dir.join("missing.keras")).contains("missing.keras"));

    // mlp's architecture with the text model's weights.
    let entry = |name: &str, file: &str| {
        let f = std::fs::File::open(fixtures::path(&format!("keras_files/{name}.keras"))).unwrap();
        let mut z = zip::ZipArchive::new(f).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut z.by_name(file).unwrap(), &mut out).unwrap();
        out
    };
    let mixed = dir.join("mixed-up.keras");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&mixed).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    for (file, bytes) in [
        ("config.json", entry("mlp", "config.json")),
        ("model.weights.h5", entry("text", "model.weights.h5")),
    ] {
        z.start_file(file, opts).unwrap();
        z.write_all(&bytes).unwrap();
    }
    z.finish().unwrap();
    let e = err(&mixed);
    assert!(
        e.contains("do not match its architecture")
            && e.contains("`layers/dense/vars/0` (layer \"hidden\"")
            && e.contains("shape [20, 2], the layer expects [8, 16]"),
        "{e}"
    );
    // The text model's architecture with mlp's weights: its embedding has none.
    let swapped = dir.join("swapped.keras");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&swapped).unwrap());
    for (file, bytes) in [
        ("config.json", entry("text", "config.json")),
        ("model.weights.h5", entry("mlp", "model.weights.h5")),
    ] {
        z.start_file(file, opts).unwrap();
        z.write_all(&bytes).unwrap();
    }
    z.finish().unwrap();
    let e = err(&swapped);
    assert!(
        e.contains("holds no weights for layer \"tokens\" (Embedding)")
            && e.contains("`layers/embedding/vars`"),
        "{e}"
    );
    // Without its weights.
    let bare = dir.join("bare.keras");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&bare).unwrap());
    z.start_file("config.json", opts).unwrap();
    z.write_all(&entry("mlp", "config.json")).unwrap();
    z.finish().unwrap();
    let e = err(&bare);
    assert!(e.contains("no `model.weights.h5`"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
