//! Compiled Keras models saved mid-training (`tests/fixtures/keras_compiled/*.keras`, made by
//! `make_keras_compiled_fixtures.py`): `Trainer::load_keras` restores the compile options and
//! the optimizer's state, and one more epoch of `fit` gives what the same epoch gives in Keras
//! after `keras.saving.load_model`: the history and every weight.

use candle_core::Tensor;
use ferrokeras::io::LoadedModel;
use ferrokeras::prelude::*;

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{path, read, tensor};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn training_continues_as_in_keras() {
    let fx = read("keras_compiled.json");
    let cases = fx["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 6);
    for (name, case) in cases {
        let file = path("keras_compiled").join(format!("{name}.keras"));
        let mut trainer: Trainer<LoadedModel> = Trainer::load_keras(&file).unwrap();
        let x = tensor(&case["x"]);
        let y = tensor(&case["y"]);
        let h = trainer
            .fit(
                (x, y),
                FitOptions::new()
                    .epochs(1)
                    .batch_size(16)
                    .shuffle(false)
                    .verbose(0),
            )
            .unwrap();
        for (key, want) in case["history"].as_object().unwrap() {
            let got = h.get(key);
            let want = want[0].as_f64().unwrap();
            assert_eq!(got.len(), 1, "{name}: history {key}");
            assert!(
                (got[0] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{name} {key}: {} vs Keras {want}",
                got[0]
            );
        }
        let iterations = trainer.context().optimizer().unwrap().iterations();
        assert_eq!(
            iterations,
            case["iterations_after"].as_u64().unwrap(),
            "{name}"
        );
        let weights = trainer.get_weights();
        let want = case["weights_after"].as_array().unwrap();
        assert_eq!(weights.len(), want.len(), "{name}: weights");
        for (i, (w, k)) in weights.iter().zip(want).enumerate() {
            for (a, b) in flat(w).iter().zip(flat(&tensor(k))) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{name} weight {i}: {a} vs Keras {b}"
                );
            }
        }
    }
}

/// A file saved uncompiled gives an uncompiled trainer; unreadable compile options are named.
#[test]
fn uncompiled_files_and_unread_options() {
    let dir = std::env::temp_dir().join(format!("ferrokeras-compiled-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("plain.keras");
    let model = Sequential::new().input(&[3]).add(Dense::new(2));
    ferrokeras::io::save_keras(&model, &plain).unwrap();
    let mut t = Trainer::load_keras(&plain).unwrap();
    assert!(!t.context().has_optimizer());

    // Keras's own file with its compile_config edited.
    let edited = |edit: &dyn Fn(&mut serde_json::Value), file: &str| -> String {
        use std::io::{Read, Write};
        let src = path("keras_compiled").join("adam_bn.keras");
        let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
        let out = dir.join(file);
        let mut zout = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
        for i in 0..zin.len() {
            let mut f = zin.by_index(i).unwrap();
            let name = f.name().unwrap().to_string();
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).unwrap();
            if name == "config.json" {
                let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                edit(&mut v["compile_config"]);
                bytes = serde_json::to_vec(&v).unwrap();
            }
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            zout.start_file(name, opts).unwrap();
            zout.write_all(&bytes).unwrap();
        }
        zout.finish().unwrap();
        match Trainer::load_keras(&out) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let e = edited(
        &|c| c["optimizer"]["class_name"] = "Adagrad".into(),
        "adagrad.keras",
    );
    assert!(e.contains("\"Adagrad\"") && e.contains("load_keras"), "{e}");
    let e = edited(
        &|c| {
            c["optimizer"]["config"]["learning_rate"] =
                serde_json::json!({"class_name": "CosineDecayRestarts", "config": {}})
        },
        "schedule.keras",
    );
    assert!(e.contains("CosineDecayRestarts"), "{e}");
    let e = edited(
        &|c| c["metrics"][1]["config"]["name"] = "my_rmse".into(),
        "renamed.keras",
    );
    assert!(e.contains("my_rmse"), "{e}");
    let e = edited(&|c| c["loss"] = "msee".into(), "loss.keras");
    assert!(e.contains("msee"), "{e}");
    // Options it reads change the optimizer: the same file with another learning rate loads.
    let e = edited(
        &|c| c["optimizer"]["config"]["learning_rate"] = 0.5.into(),
        "lr.keras",
    );
    assert_eq!(e, "");
    let _ = std::fs::remove_dir_all(&dir);
}
