//! Weights and checkpoints: round trips, mismatches, corruption, and optimizer state.

use std::path::PathBuf;

use candle_core::Tensor;
use ferrokeras::prelude::*;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::test_tmp;
fn tmp(name: &str) -> PathBuf {
    let dir = test_tmp().join("saving");
    std::fs::create_dir_all(&dir).unwrap();
    // A path left by an earlier run would leak into this one's assertions.
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    let _ = std::fs::remove_file(&path);
    path
}

fn model(seed: u64) -> Sequential {
    ferrokeras::random::set_random_seed(seed);
    Sequential::new()
        .input(&[4])
        .add(Dense::new(3).activation("relu").unwrap())
        .add(Dense::new(1))
}

fn data() -> (Tensor, Tensor) {
    ferrokeras::random::set_random_seed(99);
    (
        ferrokeras::random::uniform(&[64, 4], 0.0, 1.0, &ferrokeras::runtime::default_device())
            .unwrap(),
        ferrokeras::random::uniform(&[64, 1], 0.0, 1.0, &ferrokeras::runtime::default_device())
            .unwrap(),
    )
}

fn values(m: &dyn Model) -> Vec<Vec<f32>> {
    m.get_weights()
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn weights_round_trip_by_structural_name() {
    let a = model(1);
    let path = tmp("a.safetensors");
    ferrokeras::io::save_weights(&a, &path).unwrap();
    let file = ferrokeras::io::read_tensors(&path).unwrap();
    let names: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
    // Names come from the model's structure, not from how many layers the process made before.
    assert_eq!(
        names,
        vec![
            "dense/bias",
            "dense/kernel",
            "dense_1/bias",
            "dense_1/kernel"
        ]
    );
    let mut b = model(2);
    assert_ne!(values(&a), values(&b));
    ferrokeras::io::load_weights(&mut b, &path).unwrap();
    assert_eq!(values(&a), values(&b));
}

#[test]
fn mismatching_files_name_the_first_mismatch_and_change_nothing() {
    let a = model(1);
    let path = tmp("mismatch.safetensors");
    ferrokeras::io::save_weights(&a, &path).unwrap();
    let mut other = Sequential::new().input(&[4]).add(Dense::new(5));
    let before = values(&other);
    let err = ferrokeras::io::load_weights(&mut other, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the model"), "{err}");
    assert_eq!(values(&other), before);
    // Same names, different shapes.
    let mut f = ferrokeras::io::TensorFile::default();
    for (name, v) in other.named_variables() {
        let dims: Vec<usize> = v.shape().dims().iter().map(|d| d + 1).collect();
        f.tensors.insert(
            name,
            Tensor::zeros(
                dims,
                candle_core::DType::F32,
                &ferrokeras::runtime::default_device(),
            )
            .unwrap(),
        );
    }
    let p2 = tmp("shape.safetensors");
    ferrokeras::io::write_tensors(&p2, &f).unwrap();
    let err = ferrokeras::io::load_weights(&mut other, &p2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has shape [5, 6] in the file but [4, 5] in the model"),
        "{err}"
    );
    assert_eq!(values(&other), before);
}

#[test]
fn corrupt_or_truncated_files_are_detected() {
    let a = model(1);
    let path = tmp("corrupt.safetensors");
    ferrokeras::io::save_weights(&a, &path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // flip a bit in the tensor data
    std::fs::write(&path, &bytes).unwrap();
    let mut b = model(1);
    let err = ferrokeras::io::load_weights(&mut b, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum") && err.contains("corrupt"), "{err}");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = ferrokeras::io::load_weights(&mut b, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
    let err = ferrokeras::io::load_weights(&mut b, tmp("missing.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
}

#[test]
fn checkpoint_restores_optimizer_state_so_training_continues_identically() {
    let (x, y) = data();
    let opts = || {
        FitOptions::new()
            .epochs(2)
            .batch_size(16)
            .shuffle(false)
            .verbose(0)
    };
    let compile = || {
        Compile::new()
            .optimizer(Adam::new(0.01).amsgrad(true))
            .loss("mse")
    };
    // Uninterrupted: 4 epochs.
    let mut a = model(5).compile(compile()).unwrap();
    a.fit((x.clone(), y.clone()), opts()).unwrap();
    let path = tmp("ckpt.safetensors");
    a.save_checkpoint(&path).unwrap();
    a.fit((x.clone(), y.clone()), opts()).unwrap();
    // Resumed: a fresh model and optimizer, restored from the checkpoint after 2 epochs.
    let mut b = model(5).compile(compile()).unwrap();
    b.load_checkpoint(&path).unwrap();
    assert_eq!(b.context().optimizer().unwrap().iterations(), 8);
    b.fit((x, y), opts()).unwrap();
    assert_eq!(values(&*a), values(&*b));
}

/// Writes a weights file for `tests/python/check_safetensors.py` (run by `.ci/run`).
#[test]
fn weights_file_for_the_python_reader() {
    let m = Sequential::new().input(&[2]).add(Dense::new(3));
    m.variables()[0]
        .assign(
            &Tensor::new(
                &[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]],
                &ferrokeras::runtime::default_device(),
            )
            .unwrap(),
        )
        .unwrap();
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/python-check");
    std::fs::create_dir_all(&out).unwrap();
    ferrokeras::io::save_weights(&m, out.join("weights.safetensors")).unwrap();
    let names: Vec<String> = m.named_variables().into_iter().map(|(n, _)| n).collect();
    std::fs::write(out.join("names.txt"), names.join("\n")).unwrap();
}

#[test]
fn model_checkpoint_save_best_only_writes_only_improvements() {
    use ferrokeras::callbacks::{CallbackContext, ModelCheckpoint, Params};
    let dir = tmp("best");
    std::fs::create_dir_all(&dir).unwrap();
    let template = format!(
        "{}/ckpt-{{epoch:02d}}-{{val_loss:.2f}}.safetensors",
        dir.display()
    );
    let mut cb = ModelCheckpoint::new(template)
        .save_best_only(true)
        .save_weights_only(true);
    let mut m = model(1);
    let mut compiled = StepContext::new();
    let params = Params {
        epochs: 4,
        steps: Some(1),
        verbose: 0,
    };
    let (mut stop, empty) = (false, Logs::new());
    for (epoch, v) in [0.5, 0.4, 0.45, 0.3].into_iter().enumerate() {
        let logs: Logs = [("loss", 1.0), ("val_loss", v)].into_iter().collect();
        let mut ctx = CallbackContext::new(&mut m, &mut compiled, &params, &empty, &mut stop);
        cb.on_epoch_begin(&mut ctx, epoch, &empty).unwrap();
        cb.on_epoch_end(&mut ctx, epoch, &logs).unwrap();
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            "ckpt-01-0.50.safetensors",
            "ckpt-02-0.40.safetensors",
            "ckpt-04-0.30.safetensors"
        ]
    );
    // max mode for accuracy-like monitors, chosen automatically.
    let mut acc = ModelCheckpoint::new(format!("{}/acc-{{epoch}}.safetensors", dir.display()))
        .monitor("val_accuracy")
        .save_best_only(true)
        .save_weights_only(true);
    for (epoch, v) in [0.5, 0.7, 0.6].into_iter().enumerate() {
        let logs: Logs = [("val_accuracy", v)].into_iter().collect();
        let mut ctx = CallbackContext::new(&mut m, &mut compiled, &params, &empty, &mut stop);
        acc.on_epoch_begin(&mut ctx, epoch, &empty).unwrap();
        acc.on_epoch_end(&mut ctx, epoch, &logs).unwrap();
    }
    let names: Vec<String> = acc
        .saved()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["acc-1.safetensors", "acc-2.safetensors"]);
}

/// `save_best_only` decides as Keras 3's `MonitorCallback`: `"auto"` maximizes `val_auc` (not
/// only accuracy-like names), refuses a name it cannot place, and an unknown mode falls back to
/// `"auto"`; a monitored value missing from the logs saves anyway (with a warning), as Keras does.
#[test]
fn model_checkpoint_directions_and_missing_values() {
    use ferrokeras::callbacks::{CallbackContext, ModelCheckpoint, Params};
    let dir = tmp("directions");
    std::fs::create_dir_all(&dir).unwrap();
    let mut m = model(1);
    let mut compiled = StepContext::new();
    let params = Params {
        epochs: 3,
        steps: Some(1),
        verbose: 0,
    };
    let (mut stop, empty) = (false, Logs::new());
    let mut run = |cb: &mut ModelCheckpoint, key: &str, values: &[f64]| -> Result<Vec<String>> {
        for (epoch, v) in values.iter().enumerate() {
            let logs: Logs = [("loss", 1.0), (key, *v)].into_iter().collect();
            let mut ctx = CallbackContext::new(&mut m, &mut compiled, &params, &empty, &mut stop);
            cb.on_epoch_begin(&mut ctx, epoch, &empty)?;
            cb.on_epoch_end(&mut ctx, epoch, &logs)?;
        }
        Ok(cb
            .saved()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect())
    };
    let best = |name: &str, monitor: &str, mode: &str| {
        ModelCheckpoint::new(format!("{}/{name}-{{epoch}}.safetensors", dir.display()))
            .monitor(monitor)
            .mode(mode)
            .save_best_only(true)
            .save_weights_only(true)
    };
    let saved = run(
        &mut best("auc", "val_auc", "auto"),
        "val_auc",
        &[0.6, 0.8, 0.7],
    )
    .unwrap();
    assert_eq!(saved, vec!["auc-1.safetensors", "auc-2.safetensors"]);
    let saved = run(
        &mut best("side", "val_auc", "sideways"),
        "val_auc",
        &[0.6, 0.5, 0.9],
    )
    .unwrap();
    assert_eq!(saved, vec!["side-1.safetensors", "side-3.safetensors"]);
    let err = run(&mut best("score", "val_score", "auto"), "val_score", &[1.0])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("monitor=val_score") && err.contains("mode"),
        "{err}"
    );
    let saved = run(
        &mut best("score", "val_score", "min"),
        "val_score",
        &[1.0, 2.0],
    )
    .unwrap();
    assert_eq!(saved, vec!["score-1.safetensors"]);
    // The default monitor, val_loss, without validation data: every epoch is saved.
    let mut no_val = ModelCheckpoint::new(format!("{}/noval-{{epoch}}.safetensors", dir.display()))
        .save_best_only(true)
        .save_weights_only(true);
    let saved = run(&mut no_val, "loss", &[1.0, 0.5, 2.0]).unwrap();
    assert_eq!(
        saved,
        vec![
            "noval-1.safetensors",
            "noval-2.safetensors",
            "noval-3.safetensors"
        ]
    );
}

#[test]
fn model_checkpoint_in_fit_writes_loadable_checkpoints() {
    use ferrokeras::callbacks::{ModelCheckpoint, SaveFreq};
    let (x, y) = data();
    let dir = tmp("fit-ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    let mut a = model(7)
        .compile(Compile::new().optimizer("adam").loss("mse"))
        .unwrap();
    let cb = ModelCheckpoint::new(format!("{}/e{{epoch}}.safetensors", dir.display()));
    let every = ModelCheckpoint::new(format!(
        "{}/b{{batch}}-e{{epoch}}.safetensors",
        dir.display()
    ))
    .save_freq(SaveFreq::Batches(3))
    .save_weights_only(true);
    a.fit(
        (x, y),
        FitOptions::new()
            .epochs(2)
            .batch_size(16)
            .verbose(0)
            .callback(cb)
            .callback(every),
    )
    .unwrap();
    for f in [
        "e1.safetensors",
        "e2.safetensors",
        "b3-e1.safetensors",
        "b2-e2.safetensors",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let mut b = model(8)
        .compile(Compile::new().optimizer("adam").loss("mse"))
        .unwrap();
    let meta = b.load_checkpoint(dir.join("e2.safetensors")).unwrap();
    assert_eq!(meta.get("epoch").map(String::as_str), Some("2"));
    assert_eq!(values(&*a), values(&*b));
    assert_eq!(b.context().optimizer().unwrap().iterations(), 8);
}
