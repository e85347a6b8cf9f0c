//! Compiled Keras models saved mid-training (`tests/fixtures/keras_compiled/*.keras`, made by
//! `make_keras_compiled_fixtures.py`): `Trainer::load_keras` restores the compile options and
//! the optimizer's state, and one more epoch of `fit` gives what the same epoch gives in Keras
//! after `keras.saving.load_model`: the history and every weight.

use candle_core::Tensor;
use ferrokeras::io::LoadedModel;
use ferrokeras::metrics::MetricSpec;
use ferrokeras::prelude::*;

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{path, read, tensor};

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// One more epoch of `fit` (batch 16, no shuffling), checked against Keras's history, step
/// count and weights after the same epoch.
fn continue_as_keras(trainer: &mut Trainer<LoadedModel>, name: &str, case: &serde_json::Value) {
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

#[test]
fn training_continues_as_in_keras() {
    let fx = read("keras_compiled.json");
    let cases = fx["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 7);
    for (name, case) in cases {
        let file = path("keras_compiled").join(format!("{name}.keras"));
        let mut trainer: Trainer<LoadedModel> = Trainer::load_keras(&file).unwrap();
        continue_as_keras(&mut trainer, name, case);
    }
}

/// A `.keras` file's architecture, compile options and weights (not its metadata, which names
/// the version that wrote it).
fn entries(file: &std::path::Path) -> Vec<Vec<u8>> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::fs::File::open(file).unwrap()).unwrap();
    ["config.json", "model.weights.h5"]
        .iter()
        .map(|n| {
            let mut bytes = Vec::new();
            z.by_name(n).unwrap().read_to_end(&mut bytes).unwrap();
            bytes
        })
        .collect()
}

/// Keras's compiled files, loaded and saved again by ferrokeras: the compile options and the
/// optimizer's variables go through `Trainer::save`, and the epoch after them is still
/// Keras's. The files written are those of `ferrokeras_compiled/`, which Keras loaded and
/// trained one more epoch with the same numbers as from its own files
/// (`make_keras_compiled_fixtures.py`).
#[test]
fn saved_compiled_files_continue_as_in_keras() {
    let fx = read("keras_compiled.json");
    let dir = std::env::temp_dir().join(format!("ferrokeras-resave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = std::env::var_os("FERROKERAS_WRITE_KERAS_FIXTURES").is_some();
    for (name, case) in fx["cases"].as_object().unwrap() {
        let file = path("keras_compiled").join(format!("{name}.keras"));
        let trainer: Trainer<LoadedModel> = Trainer::load_keras(&file).unwrap();
        let saved = dir.join(format!("{name}.keras"));
        trainer.save(&saved).unwrap();
        let committed = path("ferrokeras_compiled").join(format!("{name}.keras"));
        if write {
            std::fs::create_dir_all(committed.parent().unwrap()).unwrap();
            std::fs::copy(&saved, &committed).unwrap();
        }
        assert!(
            entries(&saved) == entries(&committed),
            "{name}: the file written differs from the one Keras checked ({}); rerun with FERROKERAS_WRITE_KERAS_FIXTURES=1 and make_keras_compiled_fixtures.py",
            committed.display()
        );
        let mut again: Trainer<LoadedModel> = Trainer::load_keras(&saved).unwrap();
        continue_as_keras(&mut again, name, case);
        assert_eq!(
            case["keras_from_ferrokeras_file"], "same",
            "{name}: Keras's epoch after loading the file"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
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
    // A metric under its own name is read under it.
    let e = edited(
        &|c| c["metrics"][1]["config"]["name"] = "my_rmse".into(),
        "renamed.keras",
    );
    assert_eq!(e, "");
    let e = edited(
        &|c| c["metrics"][1]["config"]["top_k"] = 2.into(),
        "top_k.keras",
    );
    assert!(e.contains("top_k"), "{e}");
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

/// A model compiled and trained here, saved mid-training as `.keras` and loaded back with
/// `Trainer::load_keras`: the next epoch is the one the original trainer takes (history, step
/// count, weights), for each optimizer, schedule, loss and metric with a Keras form.
#[test]
fn trainers_saved_mid_training_go_on_identically() {
    use ferrokeras::losses::{BinaryCrossentropy as Bce, CategoricalCrossentropy as Cce};
    use ferrokeras::metrics::{Precision, Recall, SparseTopKCategoricalAccuracy};
    use ferrokeras::optimizers::{
        CosineDecay, ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, PolynomialDecay,
    };
    let dir = std::env::temp_dir().join(format!("ferrokeras-midtrain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = candle_core::Device::Cpu;
    let x = Tensor::rand(-1f32, 1.0, (30, 4), &dev).unwrap();
    let sum = x.sum_keepdim(1).unwrap();
    let binary = sum
        .gt(0.0)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let classes = x
        .argmax_keepdim(1)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let one_hot = Tensor::eye(4, candle_core::DType::F32, &dev)
        .unwrap()
        .index_select(&x.argmax(1).unwrap(), 0)
        .unwrap();
    type Case = (&'static str, usize, Tensor, Box<dyn Fn() -> Compile>);
    let cases: Vec<Case> = vec![
        (
            "sparse",
            4,
            classes.clone(),
            Box::new(|| {
                Compile::new()
                    .optimizer(
                        Adam::new(ExponentialDecay::new(0.05, 3, 0.7).unwrap().staircase(true))
                            .amsgrad(true),
                    )
                    .loss(SparseCategoricalCrossentropy::new().from_logits(true))
                    .metrics([
                        MetricSpec::from("accuracy"),
                        SparseTopKCategoricalAccuracy::new().k(2).into(),
                    ])
                    .weighted_metrics([SparseCategoricalAccuracy::new().named("w_acc")])
            }),
        ),
        (
            "one_hot",
            4,
            one_hot.clone(),
            Box::new(|| {
                Compile::new()
                    .optimizer(
                        RmsProp::new(0.01)
                            .momentum(0.5)
                            .centered(true)
                            .use_ema(true)
                            .ema_momentum(0.9)
                            .gradient_accumulation_steps(3),
                    )
                    .loss(Cce::new().from_logits(true).label_smoothing(0.1))
                    .metrics(["categorical_accuracy"])
            }),
        ),
        (
            "binary",
            1,
            binary.clone(),
            Box::new(|| {
                Compile::new()
                    .optimizer(
                        Sgd::new(
                            CosineDecay::new(0.01, 20)
                                .unwrap()
                                .alpha(0.1)
                                .warmup_target(Some(0.1))
                                .warmup_steps(3),
                        )
                        .momentum(0.9)
                        .nesterov(true)
                        .clipnorm(1.0),
                    )
                    .loss(Bce::new().from_logits(true).label_smoothing(0.05))
                    .metrics([
                        MetricSpec::from(Precision::new().threshold(0.4).unwrap()),
                        Recall::new().into(),
                        BinaryAccuracy::new().threshold(0.6).into(),
                    ])
            }),
        ),
        (
            "regression",
            1,
            sum.clone(),
            Box::new(|| {
                Compile::new()
                    .optimizer(AdamW::new(
                        PolynomialDecay::new(0.02, 10, 0.001).unwrap().power(2.0),
                        0.01,
                    ))
                    .loss(Huber::new(0.5))
                    .metrics([MetricSpec::from("mae"), RootMeanSquaredError::new().into()])
            }),
        ),
        (
            "schedules",
            1,
            sum.clone(),
            Box::new(|| {
                Compile::new()
                    .optimizer(
                        Sgd::new(
                            PiecewiseConstantDecay::new(&[4, 8], &[0.05, 0.02, 0.01]).unwrap(),
                        )
                        .momentum(0.5)
                        .weight_decay(0.01),
                    )
                    .losses(vec!["mse".into()])
                    .loss_weights(vec![0.5])
            }),
        ),
        (
            "inverse_time",
            1,
            sum.clone(),
            Box::new(|| {
                Compile::new()
                    .optimizer(
                        Adam::new(InverseTimeDecay::new(0.05, 2, 0.5).unwrap())
                            .global_clipnorm(0.5),
                    )
                    .loss("log_cosh")
                    .metrics(["mse"])
            }),
        ),
    ];
    fn fit<M: Model>(t: &mut Trainer<M>, x: &Tensor, y: &Tensor, epochs: usize) -> History {
        t.fit(
            (x.clone(), y.clone()),
            FitOptions::new()
                .epochs(epochs)
                .batch_size(4)
                .shuffle(false)
                .verbose(0),
        )
        .unwrap()
    }
    for (name, units, y, compile) in cases {
        let model = Sequential::new()
            .input(&[4])
            .add(Dense::new(6).activation("tanh").unwrap())
            .add(Dense::new(units));
        let mut first = model.compile(compile()).unwrap();
        // 8 batches per epoch: the accumulation of 3 stops mid-way.
        fit(&mut first, &x, &y, 2);
        let file = dir.join(format!("{name}.keras"));
        first.save(&file).unwrap();
        let mut second: Trainer<LoadedModel> = Trainer::load_keras(&file).unwrap();
        let a = fit(&mut first, &x, &y, 1);
        let b = fit(&mut second, &x, &y, 1);
        let keys: Vec<&String> = a.history.keys().collect();
        assert_eq!(keys, b.history.keys().collect::<Vec<_>>(), "{name}");
        for k in keys {
            assert!(
                (a.get(k)[0] - b.get(k)[0]).abs() <= 1e-6 * (1.0 + a.get(k)[0].abs()),
                "{name} {k}: {} after loading, {} before",
                b.get(k)[0],
                a.get(k)[0]
            );
        }
        assert_eq!(
            first.context().optimizer().unwrap().iterations(),
            second.context().optimizer().unwrap().iterations(),
            "{name}"
        );
        for (wa, wb) in first.get_weights().iter().zip(second.get_weights()) {
            assert_eq!(flat(wa), flat(&wb), "{name}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A compile Keras could not rebuild (a loss of your own) saves the model alone: it loads
/// uncompiled, with its weights.
#[test]
fn a_loss_of_your_own_saves_the_model_uncompiled() {
    struct Twice;
    impl Loss for Twice {
        fn name(&self) -> &str {
            "twice"
        }
        fn call(&self, t: &Tensor, p: &Tensor) -> ferrokeras::Result<Tensor> {
            Ok(((p - t)?.sqr()? * 2.0)?.mean_keepdim(1)?.squeeze(1)?)
        }
    }
    let model = Sequential::new().input(&[3]).add(Dense::new(2));
    let mut t = model
        .compile(Compile::new().optimizer("adam").loss(Twice))
        .unwrap();
    let dev = candle_core::Device::Cpu;
    let x = Tensor::ones((4, 3), candle_core::DType::F32, &dev).unwrap();
    let y = Tensor::zeros((4, 2), candle_core::DType::F32, &dev).unwrap();
    t.fit((x, y), FitOptions::new().verbose(0)).unwrap();
    let file =
        std::env::temp_dir().join(format!("ferrokeras-own-loss-{}.keras", std::process::id()));
    t.save(&file).unwrap();
    let mut loaded: Trainer<LoadedModel> = Trainer::load_keras(&file).unwrap();
    assert!(!loaded.context().has_optimizer());
    for (a, b) in t.get_weights().iter().zip(loaded.get_weights()) {
        assert_eq!(flat(a), flat(&b));
    }
    let _ = std::fs::remove_file(&file);
}

/// Keras's `save_weights` file of a compiled model (`adam_bn.weights.h5`, written after the
/// epoch of `keras_compiled.json`) gives the weights and the optimizer's step count of that
/// epoch; ferrokeras's `.weights.h5` is the weights part of its `.keras` file, and reads back.
#[test]
fn keras_weights_files_both_ways() {
    let fx = read("keras_compiled.json");
    let case = &fx["cases"]["adam_bn"];
    let mut trainer: Trainer<LoadedModel> =
        Trainer::load_keras(path("keras_compiled").join("adam_bn.keras")).unwrap();
    trainer
        .load_weights(path("keras_compiled").join("adam_bn.weights.h5"))
        .unwrap();
    let want = case["weights_after"].as_array().unwrap();
    for (w, k) in trainer.get_weights().iter().zip(want) {
        assert_eq!(flat(w), flat(&tensor(k)));
    }
    assert_eq!(
        trainer.context().optimizer().unwrap().iterations(),
        case["iterations_after"].as_u64().unwrap()
    );

    let dir = std::env::temp_dir().join(format!("ferrokeras-weights-h5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (weights, whole) = (dir.join("m.weights.h5"), dir.join("m.keras"));
    trainer.save_weights(&weights).unwrap();
    trainer.save(&whole).unwrap();
    assert!(std::fs::read(&weights).unwrap() == entries(&whole)[1]);
    // Into a fresh trainer of the same compile: weights and optimizer state.
    let mut fresh: Trainer<LoadedModel> =
        Trainer::load_keras(path("keras_compiled").join("adam_bn.keras")).unwrap();
    fresh.load_weights(&weights).unwrap();
    for (a, b) in trainer.get_weights().iter().zip(fresh.get_weights()) {
        assert_eq!(flat(a), flat(&b));
    }
    let (a, b) = (
        trainer.context().optimizer().unwrap().state().unwrap(),
        fresh.context().optimizer().unwrap().state().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for ((ka, ta), (kb, tb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        let f = |t: &Tensor| {
            t.to_dtype(candle_core::DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        assert_eq!(f(ta), f(tb), "{ka}");
    }
    // The model alone (io::save_weights / load_weights) goes through the same file.
    let mut model =
        ferrokeras::io::load_keras(path("keras_compiled").join("adam_bn.keras")).unwrap();
    ferrokeras::io::load_weights(&mut model, &weights).unwrap();
    for (a, b) in trainer.get_weights().iter().zip(model.get_weights()) {
        assert_eq!(flat(a), flat(&b));
    }

    // Errors: a weights file of another architecture changes nothing; `.h5` without
    // `.weights`; a model of your own.
    let other = Sequential::new()
        .input(&[3])
        .add(Dense::new(8))
        .add(Dense::new(2));
    let before = other.get_weights();
    let mut other = other;
    let e = ferrokeras::io::load_weights(&mut other, &weights)
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape") || e.contains("no weights"), "{e}");
    for (a, b) in before.iter().zip(other.get_weights()) {
        assert_eq!(flat(a), flat(&b));
    }
    let e = ferrokeras::io::save_weights(&other, dir.join("w.h5"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("must end in `.weights.h5`"), "{e}");
    struct Own(Sequential);
    impl Model for Own {
        fn call(&mut self, x: &Data, training: bool) -> ferrokeras::Result<Data> {
            self.0.call(x, training)
        }
        fn variables(&self) -> Vec<ferrokeras::Variable> {
            self.0.variables()
        }
    }
    let own = Own(Sequential::new().input(&[3]).add(Dense::new(1)));
    let e = ferrokeras::io::save_weights(&own, dir.join("own.weights.h5"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model of your own") && e.contains(".safetensors"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ModelCheckpoint` to a `.keras` path writes Keras's compiled model file, which
/// `Trainer::load_keras` resumes from with the trained weights and optimizer state; to a
/// `.weights.h5` path (weights only), Keras's weights file.
#[test]
fn model_checkpoint_writes_keras_files() {
    use ferrokeras::callbacks::ModelCheckpoint;
    let dir = std::env::temp_dir().join(format!("ferrokeras-ckpt-keras-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dev = candle_core::Device::Cpu;
    let x = Tensor::rand(-1f32, 1.0, (20, 3), &dev).unwrap();
    let y = x.sum_keepdim(1).unwrap();
    let mut t = Sequential::new()
        .input(&[3])
        .add(Dense::new(4).activation("relu").unwrap())
        .add(Dense::new(1))
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.01))
                .loss("mse")
                .metrics(["mae"]),
        )
        .unwrap();
    let whole = dir
        .join("model-{epoch}.keras")
        .to_string_lossy()
        .to_string();
    let weights = dir
        .join("w-{epoch}.weights.h5")
        .to_string_lossy()
        .to_string();
    t.fit(
        (x.clone(), y.clone()),
        FitOptions::new()
            .epochs(2)
            .batch_size(5)
            .verbose(0)
            .callback(ModelCheckpoint::new(whole))
            .callback(ModelCheckpoint::new(weights).save_weights_only(true)),
    )
    .unwrap();
    let mut loaded: Trainer<LoadedModel> = Trainer::load_keras(dir.join("model-2.keras")).unwrap();
    assert_eq!(loaded.context().optimizer().unwrap().iterations(), 8);
    for (a, b) in t.get_weights().iter().zip(loaded.get_weights()) {
        assert_eq!(flat(a), flat(&b));
    }
    // Epoch 1's weights file, into the model of epoch 2: the weights and step count of epoch 1.
    loaded.load_weights(dir.join("w-1.weights.h5")).unwrap();
    assert_eq!(loaded.context().optimizer().unwrap().iterations(), 4);
    let h = loaded
        .evaluate((x, y), EvaluateOptions::new().verbose(0))
        .unwrap();
    assert!(h.contains("mae"), "{h:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model of two outputs with a flat metrics list (every metric on every output here) is saved
/// with one list per output, as Keras 3 wants, and read back to the same metrics.
#[test]
fn two_outputs_save_one_metric_list_per_output() {
    let dev = candle_core::Device::Cpu;
    let x = Tensor::rand(-1f32, 1.0, (16, 3), &dev).unwrap();
    let inp = Input::new(&[3]);
    let h = Dense::new(4)
        .activation("relu")
        .unwrap()
        .apply(&inp)
        .unwrap();
    let a = Dense::new(1).named("a").apply(&h).unwrap();
    let b = Dense::new(2).named("b").apply(&h).unwrap();
    let mut t = Functional::new(&[inp], &[a, b])
        .unwrap()
        .compile(
            Compile::new()
                .optimizer("adam")
                .losses(vec!["mse".into(), "mae".into()])
                .metrics(["mae"]),
        )
        .unwrap();
    let ys = vec![x.narrow(1, 0, 1).unwrap(), x.narrow(1, 1, 2).unwrap()];
    let fit = |t: &mut Trainer<Functional>| {
        t.fit(
            Inputs::xy(x.clone(), ys.clone()),
            FitOptions::new().batch_size(8).shuffle(false).verbose(0),
        )
        .unwrap()
    };
    fit(&mut t);
    let path =
        std::env::temp_dir().join(format!("ferrokeras-two-out-{}.keras", std::process::id()));
    t.save(&path).unwrap();
    let config: serde_json::Value = {
        use std::io::Read;
        let mut z = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let mut s = String::new();
        z.by_name("config.json")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        serde_json::from_str(&s).unwrap()
    };
    assert_eq!(
        config["compile_config"]["metrics"],
        serde_json::json!([["mae"], ["mae"]])
    );
    assert_eq!(
        config["compile_config"]["loss"],
        serde_json::json!(["mse", "mae"])
    );
    let mut loaded: Trainer<LoadedModel> = Trainer::load_keras(&path).unwrap();
    let h1 = fit(&mut t);
    let h2 = loaded
        .fit(
            Inputs::xy(x.clone(), ys.clone()),
            FitOptions::new().batch_size(8).shuffle(false).verbose(0),
        )
        .unwrap();
    assert_eq!(
        h1.history.keys().collect::<Vec<_>>(),
        h2.history.keys().collect::<Vec<_>>()
    );
    for k in h1.history.keys() {
        assert!((h1.get(k)[0] - h2.get(k)[0]).abs() < 1e-6, "{k}");
    }
    let _ = std::fs::remove_file(&path);
}
