//! The built-in callbacks against Keras 3's documented behaviour (keras/src/callbacks/*.py and
//! their tests): `EarlyStopping`, `CSVLogger`, `LearningRateScheduler`, `ReduceLROnPlateau` and
//! `TerminateOnNaN`. Each is driven by hand with synthetic log sequences, so that the epoch at
//! which it acts is exactly computable, and inside a real `fit`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use ferrokeras::callbacks::{
    CSVLogger, Callback, CallbackContext, EarlyStopping, LearningRateScheduler, Params,
    ReduceLROnPlateau, TerminateOnNaN, float_repr,
};
use ferrokeras::model::default_train_step;
use ferrokeras::prelude::*;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::test_tmp;

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn regression(n: usize, d: usize) -> (Tensor, Tensor) {
    let xs: Vec<f32> = (0..n * d)
        .map(|i| ((i as f32) * 0.731 + 0.2).sin())
        .collect();
    let ys: Vec<f32> = (0..n)
        .map(|r| {
            (0..d)
                .map(|c| xs[r * d + c] * (c as f32 + 1.0) * 0.3)
                .sum::<f32>()
        })
        .collect();
    (
        Tensor::from_vec(xs, (n, d), &ferrokeras::runtime::default_device()).unwrap(),
        Tensor::from_vec(ys, (n, 1), &ferrokeras::runtime::default_device()).unwrap(),
    )
}

fn tiny() -> Sequential {
    Sequential::new().input(&[2]).add(Dense::new(1))
}

fn logs(pairs: &[(&str, f64)]) -> Logs {
    pairs.iter().map(|(k, v)| (*k, *v)).collect()
}

/// One `Logs` per value, each holding `key`.
fn seq(key: &str, values: &[f64]) -> Vec<Logs> {
    values.iter().map(|v| logs(&[(key, *v)])).collect()
}

fn flat(weights: &[Tensor]) -> Vec<Vec<f32>> {
    weights
        .iter()
        .map(|w| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// What a hand-driven training did.
struct Run {
    /// Epochs whose `on_epoch_end` ran.
    epochs: usize,
    /// The optimizer's learning rate after each `on_epoch_end`.
    lrs: Vec<f64>,
    /// The model's weights after `on_train_end`.
    final_weights: Vec<Vec<f32>>,
}

/// Drives `cb` as `fit` would over one epoch per entry of `epochs` (stopping when asked), with an
/// SGD optimizer at `lr`; `before_epoch_end` may change the model before each epoch end.
fn drive_with(
    cb: &mut dyn Callback,
    epochs: &[Logs],
    lr: f64,
    mut before_epoch_end: impl FnMut(&mut dyn Model, usize),
) -> Result<Run> {
    let mut trainer = tiny().compile(Compile::new().optimizer(Sgd::new(lr)).loss("mse"))?;
    let mut model = tiny();
    let params = Params {
        epochs: epochs.len(),
        steps: Some(1),
        verbose: 0,
    };
    let (mut stop, no_logs) = (false, Logs::new());
    let mut ctx = CallbackContext::new(&mut model, trainer.context(), &params, &no_logs, &mut stop);
    let mut run = Run {
        epochs: 0,
        lrs: Vec::new(),
        final_weights: Vec::new(),
    };
    cb.on_train_begin(&mut ctx, &no_logs)?;
    let mut last = Logs::new();
    for (epoch, epoch_logs) in epochs.iter().enumerate() {
        cb.on_epoch_begin(&mut ctx, epoch, &no_logs)?;
        before_epoch_end(&mut *ctx.model, epoch);
        cb.on_epoch_end(&mut ctx, epoch, epoch_logs)?;
        run.epochs += 1;
        run.lrs.push(ctx.compiled.optimizer()?.learning_rate());
        last = epoch_logs.clone();
        if ctx.stop_requested() {
            break;
        }
    }
    cb.on_train_end(&mut ctx, &last)?;
    run.final_weights = flat(&ctx.model.get_weights());
    Ok(run)
}

fn drive(cb: &mut dyn Callback, epochs: &[Logs]) -> Result<Run> {
    drive_with(cb, epochs, 0.1, |_, _| {})
}

/// Sets every weight of the model to `value`.
fn fill(model: &mut dyn Model, value: f64) {
    let weights: Vec<Tensor> = model
        .get_weights()
        .iter()
        .map(|w| (w.ones_like().unwrap() * value).unwrap())
        .collect();
    model.set_weights(&weights).unwrap();
}

/// Records, from inside `fit`, the learning rate at every epoch begin and end, the weights at every
/// epoch end, every training batch end and every `on_train_end`.
#[derive(Clone, Default)]
struct Probe {
    lr_at_begin: Arc<Mutex<Vec<f64>>>,
    lr_at_end: Arc<Mutex<Vec<f64>>>,
    weights: Arc<Mutex<Vec<Vec<Vec<f32>>>>>,
    batches: Arc<Mutex<Vec<(usize, usize)>>>,
    epoch: Arc<Mutex<usize>>,
    train_ends: Arc<Mutex<usize>>,
}

impl Callback for Probe {
    fn on_epoch_begin(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        _: &Logs,
    ) -> Result<()> {
        *self.epoch.lock().unwrap() = epoch;
        if ctx.compiled.has_optimizer() {
            let lr = ctx.compiled.optimizer()?.learning_rate();
            self.lr_at_begin.lock().unwrap().push(lr);
        }
        Ok(())
    }
    fn on_epoch_end(&mut self, ctx: &mut CallbackContext<'_>, _: usize, _: &Logs) -> Result<()> {
        if ctx.compiled.has_optimizer() {
            let lr = ctx.compiled.optimizer()?.learning_rate();
            self.lr_at_end.lock().unwrap().push(lr);
        }
        self.weights
            .lock()
            .unwrap()
            .push(flat(&ctx.model.get_weights()));
        Ok(())
    }
    fn on_train_batch_end(
        &mut self,
        _: &mut CallbackContext<'_>,
        batch: usize,
        _: &Logs,
    ) -> Result<()> {
        let epoch = *self.epoch.lock().unwrap();
        self.batches.lock().unwrap().push((epoch, batch));
        Ok(())
    }
    fn on_train_end(&mut self, _: &mut CallbackContext<'_>, _: &Logs) -> Result<()> {
        *self.train_ends.lock().unwrap() += 1;
        Ok(())
    }
}

fn assert_close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!(
            (a - e).abs() <= 1e-12 * e.abs().max(1e-300),
            "{actual:?} vs {expected:?}"
        );
    }
}
/// A float32 value as Keras's learning-rate variable holds it (`float(np.float32(v))`).
fn kf(v: f32) -> f64 {
    f64::from(v)
}
fn temp_file(name: &str) -> PathBuf {
    let dir = test_tmp().join("callbacks-builtin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

// ------------------------------------------------------------------------------------------------
// Python's repr of a float
// ------------------------------------------------------------------------------------------------

#[test]
fn float_repr_matches_python() {
    // Every expected string is Python 3's `repr(float)` of the same value.
    let cases: &[(f64, &str)] = &[
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (0.0001, "0.0001"),
        (0.00012, "0.00012"),
        (1.2e-5, "1.2e-05"),
        (1.5e-7, "1.5e-07"),
        (2.0, "2.0"),
        (100.0, "100.0"),
        (-3.25, "-3.25"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (f64::from(0.1f32), "0.10000000149011612"),
        (f64::from(std::f32::consts::LN_2), "0.6931471824645996"),
        (123456789.123, "123456789.123"),
        (1e15, "1000000000000000.0"),
        (1234567890123456.0, "1234567890123456.0"),
        (1e16, "1e+16"),
        (12345678901234567.0, "1.2345678901234568e+16"),
        (1e100, "1e+100"),
        (-2.5e-300, "-2.5e-300"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
        (f64::NAN, "nan"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
    ];
    for (x, expected) in cases {
        assert_eq!(float_repr(*x), *expected, "repr of {x:e}");
    }
}

// ------------------------------------------------------------------------------------------------
// EarlyStopping
// ------------------------------------------------------------------------------------------------

#[test]
fn early_stopping_patience_as_keras_test() -> Result<()> {
    // keras/src/callbacks/early_stopping_test.py::test_early_stopping_patience.
    let losses = seq("loss", &[10.0, 9.0, 8.0, 9.0, 8.9, 8.8, 8.7, 8.6, 8.5]);
    for patience in 0..4 {
        let es = EarlyStopping::new().monitor("loss").patience(patience);
        let run = drive(&mut es.clone(), &losses)?;
        assert_eq!(
            es.stopped_epoch(),
            patience.max(1) + 2,
            "patience {patience}"
        );
        assert_eq!(run.epochs, es.stopped_epoch() + 1);
        assert_eq!(es.best(), Some(8.0));
        assert_eq!(es.best_epoch(), 2);
    }
    Ok(())
}

#[test]
fn early_stopping_first_monitored_value_is_the_best_even_nan() -> Result<()> {
    let es = EarlyStopping::new().monitor("loss");
    let run = drive(&mut es.clone(), &seq("loss", &[f64::NAN, 1.0, 2.0]))?;
    // NaN is the first value, hence the best (Keras's `best=None`); nothing improves on NaN, so
    // epoch 1 stops with patience 0.
    assert_eq!((run.epochs, es.stopped_epoch()), (2, 1));
    Ok(())
}

#[test]
fn early_stopping_min_delta() -> Result<()> {
    let val = seq("val_loss", &[1.0, 0.95, 0.92, 0.9, 0.89]);
    // Without min_delta every epoch improves: no stop.
    let es = EarlyStopping::new().patience(2);
    assert_eq!(drive(&mut es.clone(), &val)?.epochs, 5);
    assert_eq!(es.stopped_epoch(), 0);
    // With min_delta=0.05 (the sign is ignored): 0.95 and 0.9 (vs 0.92) do not improve enough,
    // 0.92 does (0.92 + 0.05 < 1.0); epochs 3 and 4 wait, and epoch 4 stops.
    let es = EarlyStopping::new().patience(2).min_delta(-0.05);
    assert_eq!(drive(&mut es.clone(), &val)?.epochs, 5);
    assert_eq!(
        (es.stopped_epoch(), es.best(), es.best_epoch()),
        (4, Some(0.92), 2)
    );
    let es = EarlyStopping::new().patience(1).min_delta(0.05);
    assert_eq!(drive(&mut es.clone(), &val)?.epochs, 2);
    assert_eq!(es.stopped_epoch(), 1);
    Ok(())
}

#[test]
fn early_stopping_baseline() -> Result<()> {
    // Keras's test: no epoch beats the baseline, so training runs `patience` epochs and the best
    // of those is restored.
    let val = seq("val_loss", &[0.9, 0.8, 0.7, 0.71, 0.72, 0.73]);
    let es = EarlyStopping::new()
        .patience(5)
        .baseline(0.5)
        .restore_best_weights(true);
    let run = drive_with(&mut es.clone(), &val, 0.1, |m, epoch| fill(m, epoch as f64))?;
    assert_eq!(run.epochs, 5);
    assert_eq!(es.stopped_epoch(), 4);
    assert!(run.final_weights.iter().flatten().all(|w| *w == 2.0));

    // Improvements that miss the baseline do not reset `wait`: with patience 2, epoch 3 stops
    // (without a baseline it would be epoch 4).
    let es = EarlyStopping::new().patience(2).baseline(0.5);
    assert_eq!(drive(&mut es.clone(), &val)?.epochs, 4);
    assert_eq!(es.stopped_epoch(), 3);
    let es = EarlyStopping::new().patience(2);
    drive(&mut es.clone(), &val)?;
    assert_eq!(es.stopped_epoch(), 4);

    // A baseline that is beaten behaves like no baseline from then on.
    let val = seq("val_loss", &[0.9, 0.8, 0.79, 0.81, 0.82, 0.83]);
    let es = EarlyStopping::new().patience(2).baseline(0.85);
    drive(&mut es.clone(), &val)?;
    assert_eq!((es.stopped_epoch(), es.best_epoch()), (4, 2));
    Ok(())
}

#[test]
fn early_stopping_start_from_epoch() -> Result<()> {
    let rising = seq("loss", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    let es = EarlyStopping::new().monitor("loss");
    drive(&mut es.clone(), &rising)?;
    assert_eq!(es.stopped_epoch(), 1);
    // Epochs 0..3 are ignored: epoch 3 is the first best, epoch 4 stops.
    let es = EarlyStopping::new().monitor("loss").start_from_epoch(3);
    assert_eq!(drive(&mut es.clone(), &rising)?.epochs, 5);
    assert_eq!(
        (es.stopped_epoch(), es.best(), es.best_epoch()),
        (4, Some(4.0), 3)
    );
    let es = EarlyStopping::new()
        .monitor("loss")
        .start_from_epoch(2)
        .patience(2);
    drive(&mut es.clone(), &rising)?;
    assert_eq!(es.stopped_epoch(), 4);
    Ok(())
}

#[test]
fn early_stopping_mode_auto_infers_the_direction() -> Result<()> {
    // Accuracy goes up: stops at the first drop (epoch 3), not at epoch 1.
    let acc = seq("val_accuracy", &[0.5, 0.6, 0.7, 0.65, 0.8]);
    let es = EarlyStopping::new().monitor("val_accuracy");
    assert_eq!(drive(&mut es.clone(), &acc)?.epochs, 4);
    assert_eq!((es.stopped_epoch(), es.best()), (3, Some(0.7)));

    // With [1, 2] and patience 0, a "min" quantity stops at epoch 1, a "max" one does not.
    // The names are those of keras's monitor_callback_test plus prefixed and numbered ones.
    let cases = [
        ("val_loss", true),
        ("loss", true),
        ("val_mse", true),
        ("mae", true),
        ("hinge", true),
        ("categorical_crossentropy", true),
        ("dense_1_loss", true),
        ("acc", false),
        ("val_accuracy", false),
        ("binary_accuracy", false),
        ("val_sparse_categorical_accuracy", false),
        ("dense_1_accuracy", false),
        ("auc_1", false),
        ("f1_score", false),
        ("val_precision", false),
    ];
    for (name, lower_is_better) in cases {
        let es = EarlyStopping::new().monitor(name);
        drive(&mut es.clone(), &seq(name, &[1.0, 2.0]))?;
        assert_eq!(es.stopped_epoch() == 1, lower_is_better, "monitor {name}");
    }

    // Explicit modes win over the name; an unknown mode falls back to "auto".
    let es = EarlyStopping::new().monitor("val_loss").mode("max");
    drive(&mut es.clone(), &seq("val_loss", &[1.0, 2.0]))?;
    assert_eq!(es.stopped_epoch(), 0);
    let es = EarlyStopping::new().monitor("accuracy").mode("sideways");
    drive(&mut es.clone(), &seq("accuracy", &[1.0, 2.0]))?;
    assert_eq!(es.stopped_epoch(), 0);

    // Keras 3 refuses to guess for a name it does not know.
    let err = drive(
        &mut EarlyStopping::new().monitor("unknown"),
        &seq("unknown", &[1.0]),
    )
    .err()
    .expect("auto mode on an unknown metric is an error");
    assert!(
        err.to_string()
            .contains("isn't able to automatically determine"),
        "{err}"
    );
    let es = EarlyStopping::new().monitor("unknown").mode("min");
    drive(&mut es.clone(), &seq("unknown", &[1.0, 2.0]))?;
    assert_eq!(es.stopped_epoch(), 1);
    Ok(())
}

#[test]
fn early_stopping_missing_monitor_is_a_warning_not_an_error() -> Result<()> {
    let es = EarlyStopping::new().patience(0); // monitors val_loss
    let run = drive(&mut es.clone(), &seq("loss", &[1.0, 2.0, 3.0, 4.0]))?;
    assert_eq!(run.epochs, 4);
    assert_eq!((es.stopped_epoch(), es.best(), es.wait()), (0, None, 0));
    Ok(())
}

#[test]
fn early_stopping_restores_the_best_epoch() -> Result<()> {
    // Keras's test_early_stopping_final_weights_when_restoring_model_weights: best at epoch 2.
    let val = seq("val_loss", &[0.2, 0.15, 0.1, 0.11, 0.12]);
    let es = EarlyStopping::new().patience(2).restore_best_weights(true);
    let run = drive_with(&mut es.clone(), &val, 0.1, |m, epoch| fill(m, epoch as f64))?;
    assert_eq!((run.epochs, es.stopped_epoch(), es.best_epoch()), (5, 4, 2));
    assert!(run.final_weights.iter().flatten().all(|w| *w == 2.0));

    // Keras 3 restores at the end of training also when it did not stop early.
    let val = seq("val_loss", &[0.3, 0.1, 0.2]);
    let es = EarlyStopping::new().patience(10).restore_best_weights(true);
    let run = drive_with(&mut es.clone(), &val, 0.1, |m, epoch| {
        fill(m, 10.0 + epoch as f64)
    })?;
    assert_eq!((run.epochs, es.stopped_epoch()), (3, 0));
    assert!(run.final_weights.iter().flatten().all(|w| *w == 11.0));

    // Without restore_best_weights the last weights stay.
    let es = EarlyStopping::new().patience(10);
    let run = drive_with(&mut es.clone(), &val, 0.1, |m, epoch| {
        fill(m, 10.0 + epoch as f64)
    })?;
    assert!(run.final_weights.iter().flatten().all(|w| *w == 12.0));

    // The same instance is reusable: `on_train_begin` resets its state.
    let mut cb = EarlyStopping::new().patience(1).restore_best_weights(true);
    drive(&mut cb, &seq("val_loss", &[0.1, 0.2, 0.3]))?;
    assert_eq!((cb.stopped_epoch(), cb.best()), (1, Some(0.1)));
    let run = drive_with(&mut cb, &seq("val_loss", &[5.0, 4.0, 3.0]), 0.1, |m, e| {
        fill(m, e as f64)
    })?;
    assert_eq!(
        (run.epochs, cb.stopped_epoch(), cb.best()),
        (3, 0, Some(3.0))
    );
    assert!(run.final_weights.iter().flatten().all(|w| *w == 2.0));
    Ok(())
}

/// A model whose step trains normally and also reports a scripted `score` per epoch.
struct Scripted {
    inner: Sequential,
    scores: Vec<f64>,
}

impl Model for Scripted {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        let mut logs = default_train_step(self, ctx, data)?;
        logs.insert("score", self.scores[ctx.epoch()]);
        Ok(logs)
    }
}

#[test]
fn early_stopping_in_fit_stops_and_restores_the_best_weights() -> Result<()> {
    let (x, y) = regression(32, 3);
    let model = Scripted {
        inner: Sequential::new()
            .input(&[3])
            .add(Dense::new(4).activation("relu")?)
            .add(Dense::new(1)),
        scores: vec![0.5, 0.4, 0.3, 0.35, 0.32, 0.31, 0.2, 0.1, 0.05, 0.01],
    };
    let mut model = model.compile(Compile::new().optimizer(Adam::new(0.01)).loss("mse"))?;
    let es = EarlyStopping::new()
        .monitor("score")
        .mode("min")
        .patience(3)
        .restore_best_weights(true);
    let probe = Probe::default();
    let history = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(10)
            .batch_size(8)
            .verbose(0)
            .callback(probe.clone())
            .callback(es.clone()),
    )?;
    // Best at epoch 2; epochs 3, 4, 5 do not improve; epoch 5 stops.
    assert_eq!(history.epoch, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        (es.stopped_epoch(), es.best(), es.best_epoch()),
        (5, Some(0.3), 2)
    );
    let snapshots = probe.weights.lock().unwrap().clone();
    assert_ne!(snapshots[2], snapshots[5], "training changed the weights");
    assert_eq!(flat(&model.get_weights()), snapshots[2]);
    assert_eq!(*probe.train_ends.lock().unwrap(), 1);
    Ok(())
}

#[test]
fn early_stopping_in_fit_restores_the_best_val_loss_epoch() -> Result<()> {
    let (x, y) = regression(48, 3);
    let (xv, yv) = regression(16, 3);
    let mut model = Sequential::new()
        .input(&[3])
        .add(Dense::new(8).activation("relu")?)
        .add(Dense::new(1))
        .compile(Compile::new().optimizer(Adam::new(0.2)).loss("mse"))?;
    let es = EarlyStopping::new()
        .patience(100)
        .restore_best_weights(true);
    let probe = Probe::default();
    let history = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(8)
            .batch_size(8)
            .verbose(0)
            .validation_data((xv, yv))
            .callback(es.clone())
            .callback(probe.clone()),
    )?;
    let val = history.get("val_loss");
    let best = (0..val.len())
        .reduce(|b, i| if val[i] < val[b] { i } else { b })
        .unwrap();
    assert_eq!(history.epoch.len(), 8);
    assert_eq!((es.best_epoch(), es.best()), (best, Some(val[best])));
    let snapshots = probe.weights.lock().unwrap().clone();
    assert_eq!(flat(&model.get_weights()), snapshots[best]);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// CSVLogger
// ------------------------------------------------------------------------------------------------

#[test]
fn csv_logger_writes_keras_rows() -> Result<()> {
    let path = temp_file("exact.csv");
    std::fs::write(&path, "old content\n").unwrap();
    let epochs = [
        logs(&[("loss", 0.1), ("val_loss", 1e-05)]),
        logs(&[("loss", 2.0), ("val_loss", 0.1 + 0.2)]),
        logs(&[("loss", 1e16)]),
    ];
    // Each row is on disk as soon as its epoch ends.
    let mut rows_seen = Vec::new();
    let mut cb = CSVLogger::new(&path);
    let mut model = tiny();
    let mut compiled = StepContext::new();
    let params = Params::default();
    let (mut stop, no_logs) = (false, Logs::new());
    let mut ctx = CallbackContext::new(&mut model, &mut compiled, &params, &no_logs, &mut stop);
    cb.on_train_begin(&mut ctx, &no_logs)?;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "",
        "truncated at train begin"
    );
    for (epoch, l) in epochs.iter().enumerate() {
        cb.on_epoch_end(&mut ctx, epoch, l)?;
        rows_seen.push(std::fs::read_to_string(&path).unwrap().lines().count());
    }
    cb.on_train_end(&mut ctx, &no_logs)?;
    assert_eq!(rows_seen, vec![2, 3, 4]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "epoch,loss,val_loss\r\n0,0.1,1e-05\r\n1,2.0,0.30000000000000004\r\n2,1e+16,NA\r\n"
    );
    Ok(())
}

#[test]
fn csv_logger_separator_and_append() -> Result<()> {
    let path = temp_file("append.csv");
    let first = vec![logs(&[("acc", 0.5), ("loss", 0.25)])];
    let second = vec![
        logs(&[("acc", 0.75), ("loss", 0.125)]),
        logs(&[("acc", 1.0), ("loss", 1e-07)]),
    ];
    // Appending to a file that does not exist writes the header.
    drive(
        &mut CSVLogger::new(&path).separator(";").append(true),
        &first,
    )?;
    drive(
        &mut CSVLogger::new(&path).separator(";").append(true),
        &second,
    )?;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "epoch;acc;loss;val_acc;val_loss\r\n0;0.5;0.25;NA;NA\r\n0;0.75;0.125;NA;NA\r\n1;1.0;1e-07;NA;NA\r\n"
    );
    // Appending to an empty file writes the header.
    std::fs::write(&path, "").unwrap();
    drive(&mut CSVLogger::new(&path).append(true), &first)?;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "epoch,acc,loss,val_acc,val_loss\r\n0,0.5,0.25,NA,NA\r\n"
    );
    // Without append, the file is rewritten.
    drive(&mut CSVLogger::new(&path), &second)?;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "epoch,acc,loss,val_acc,val_loss\r\n0,0.75,0.125,NA,NA\r\n1,1.0,1e-07,NA,NA\r\n"
    );
    // A key holding the separator is quoted, as Python's csv module does.
    drive(
        &mut CSVLogger::new(&path).separator(","),
        &[logs(&[("a,b", 1.0)])],
    )?;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "epoch,\"a,b\",\"val_a,b\"\r\n0,1.0,NA\r\n"
    );
    // Python's csv needs a one-character delimiter.
    let err = drive(&mut CSVLogger::new(&path).separator("::"), &first)
        .err()
        .expect("a two-character separator is an error");
    assert!(err.to_string().contains("1-character"), "{err}");
    Ok(())
}

#[test]
fn csv_logger_in_fit_matches_history() -> Result<()> {
    let path = temp_file("fit.csv");
    let (x, y) = regression(40, 3);
    let (xv, yv) = regression(12, 3);
    let mut model = Sequential::new().input(&[3]).add(Dense::new(1)).compile(
        Compile::new()
            .optimizer(Adam::new(0.01))
            .loss("mse")
            .metrics(["mae"]),
    )?;
    let history = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(3)
            .batch_size(8)
            .verbose(0)
            .validation_data((xv, yv))
            .callback(CSVLogger::new(&path)),
    )?;
    let keys = ["loss", "mae", "val_loss", "val_mae"];
    let mut expected = String::from("epoch,loss,mae,val_loss,val_mae\r\n");
    for epoch in 0..3 {
        let values: Vec<String> = keys
            .iter()
            .map(|k| float_repr(history.get(k)[epoch]))
            .collect();
        expected += &format!("{epoch},{}\r\n", values.join(","));
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// LearningRateScheduler
// ------------------------------------------------------------------------------------------------

#[test]
fn learning_rate_scheduler_sets_the_rate_every_epoch() -> Result<()> {
    let (x, y) = regression(16, 3);
    let mut model = Sequential::new()
        .input(&[3])
        .add(Dense::new(1))
        .compile(Compile::new().optimizer(Sgd::new(0.1)).loss("mse"))?;
    let probe = Probe::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let scheduler = LearningRateScheduler::new(move |epoch, lr| {
        s.lock().unwrap().push((epoch, lr));
        if epoch == 0 { lr } else { lr * 0.5 }
    });
    model.fit(
        (x, y),
        FitOptions::new()
            .epochs(4)
            .batch_size(8)
            .verbose(0)
            .callback(scheduler)
            .callback(probe.clone()),
    )?;
    // Keras reads its float32 variable: 0.1 arrives as 0.10000000149011612.
    let expected = [kf(0.1), kf(0.05), kf(0.025), kf(0.0125)];
    assert_close(&probe.lr_at_begin.lock().unwrap(), &expected);
    assert_close(&probe.lr_at_end.lock().unwrap(), &expected);
    // The schedule receives the 0-based epoch and the current rate.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_close(
        &seen.iter().map(|(_, lr)| *lr).collect::<Vec<_>>(),
        &[kf(0.1), kf(0.1), kf(0.05), kf(0.025)],
    );
    assert_close(
        &[model.context().optimizer()?.learning_rate()],
        &[kf(0.0125)],
    );
    Ok(())
}

#[test]
fn learning_rate_scheduler_keras_example() -> Result<()> {
    // The docstring example of keras.callbacks.LearningRateScheduler: 0.01 for ten epochs, then
    // multiplied by exp(-0.1) each epoch; after 15 epochs round(lr, 5) == 0.00607.
    let mut model = Sequential::new()
        .input(&[20])
        .add(Dense::new(10))
        .compile(Compile::new().optimizer(Sgd::new(0.01)).loss("mse"))?;
    let x = Tensor::arange(0f32, 100., &ferrokeras::runtime::default_device())?.reshape((5, 20))?;
    let y = Tensor::zeros(
        (5, 10),
        candle_core::DType::F32,
        &ferrokeras::runtime::default_device(),
    )?;
    let scheduler =
        LearningRateScheduler::new(|epoch, lr| if epoch < 10 { lr } else { lr * (-0.1f64).exp() });
    model.fit(
        (x, y),
        FitOptions::new().epochs(15).verbose(0).callback(scheduler),
    )?;
    let lr = model.context().optimizer()?.learning_rate();
    assert!((lr - 0.01 * (-0.5f64).exp()).abs() < 1e-9);
    assert_eq!((lr * 1e5).round() / 1e5, 0.00607);
    Ok(())
}

/// An optimizer built with a schedule keeps it: `fit` stops with Keras's error instead of
/// replacing the schedule by a constant.
#[test]
fn learning_rate_scheduler_refuses_an_optimizer_with_a_schedule() -> Result<()> {
    use ferrokeras::optimizers::ExponentialDecay;
    let (x, y) = regression(16, 3);
    let schedule = ExponentialDecay::new(0.1, 10, 0.5)?;
    let mut model = Sequential::new()
        .input(&[3])
        .add(Dense::new(1))
        .compile(Compile::new().optimizer(Sgd::new(schedule)).loss("mse"))?;
    let err = model
        .fit(
            (x, y),
            FitOptions::new()
                .epochs(2)
                .verbose(0)
                .callback(LearningRateScheduler::new(|_, lr| lr * 0.5)),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hence its learning rate is not settable"),
        "{err}"
    );
    // The schedule still rules.
    let lr = model.context().optimizer()?.learning_rate();
    assert!((lr - 0.1).abs() < 1e-12, "{lr}");
    Ok(())
}

#[test]
fn learning_rate_scheduler_needs_an_optimizer() {
    let mut model = tiny();
    let mut compiled = StepContext::new();
    let params = Params::default();
    let (mut stop, no_logs) = (false, Logs::new());
    let mut ctx = CallbackContext::new(&mut model, &mut compiled, &params, &no_logs, &mut stop);
    let mut cb = LearningRateScheduler::new(|_, lr| lr);
    assert!(cb.on_epoch_begin(&mut ctx, 0, &no_logs).is_err());
}

// ------------------------------------------------------------------------------------------------
// ReduceLROnPlateau
// ------------------------------------------------------------------------------------------------

#[test]
fn reduce_lr_on_plateau_sequence_with_cooldown_and_min_lr() -> Result<()> {
    let val = seq(
        "val_loss",
        &[1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8],
    );
    let cb = ReduceLROnPlateau::new()
        .factor(0.5)
        .patience(2)
        .cooldown(1)
        .min_lr(0.02)
        .min_delta(0.0);
    let run = drive(&mut cb.clone(), &val)?;
    // e3: first reduction; e4: cooldown; e5: second; e6: improvement; e8: 0.0125 clipped to
    // min_lr; from then on the rate equals min_lr in float32 and is left alone.
    assert_close(
        &run.lrs,
        &[
            0.1,
            0.1,
            0.1,
            kf(0.05),
            kf(0.05),
            kf(0.025),
            kf(0.025),
            kf(0.025),
            0.02,
            0.02,
            0.02,
            0.02,
        ],
    );
    // No reduction at epochs 10 and 11, so `wait` kept counting (Keras's float32 comparison).
    assert_eq!(
        (cb.wait(), cb.cooldown_counter(), cb.best()),
        (3, 0, Some(0.8))
    );

    // The default min_delta (1e-4) makes a tiny improvement count as none.
    let cb = ReduceLROnPlateau::new().patience(1);
    let run = drive(&mut cb.clone(), &seq("val_loss", &[1.0, 0.99995, 0.9]))?;
    assert_close(&run.lrs, &[0.1, kf(0.1) * 0.1, kf(0.1) * 0.1]);
    assert_eq!(cb.best(), Some(0.9));

    // Reused across trainings, `on_train_begin` forgets the previous best (Keras's
    // test_state_reset_across_fit_calls): 1.0 is the new best, so only epoch 2 reduces.
    let mut cb = ReduceLROnPlateau::new().patience(2).min_delta(0.0);
    drive(&mut cb, &seq("val_loss", &[0.1]))?;
    let run = drive(&mut cb, &seq("val_loss", &[1.0, 1.0, 1.0]))?;
    assert_close(&run.lrs, &[0.1, 0.1, kf(0.1) * 0.1]);
    Ok(())
}

#[test]
fn reduce_lr_on_plateau_modes() -> Result<()> {
    // Accuracy goes up in "auto" mode: reduces at epoch 3, after two epochs without a new high.
    let acc = seq("val_accuracy", &[0.5, 0.6, 0.6, 0.6]);
    let run = drive(
        &mut ReduceLROnPlateau::new()
            .monitor("val_accuracy")
            .patience(2)
            .min_delta(0.0),
        &acc,
    )?;
    assert_close(&run.lrs, &[0.1, 0.1, 0.1, kf(0.1) * 0.1]);
    // Forced "min": 0.6 does not improve on 0.5, so epoch 2 reduces.
    let run = drive(
        &mut ReduceLROnPlateau::new()
            .monitor("val_accuracy")
            .mode("min")
            .patience(2)
            .min_delta(0.0),
        &acc,
    )?;
    assert_close(&run.lrs, &[0.1, 0.1, kf(0.1) * 0.1, kf(0.1) * 0.1]);
    // Missing key: a warning, no change.
    let run = drive(
        &mut ReduceLROnPlateau::new().patience(0),
        &seq("loss", &[1.0, 2.0]),
    )?;
    assert_close(&run.lrs, &[0.1, 0.1]);
    // factor >= 1 and unknown names in auto mode are errors.
    let err = drive(
        &mut ReduceLROnPlateau::new().factor(1.0),
        &seq("val_loss", &[1.0]),
    )
    .err()
    .expect("factor 1 is refused");
    assert!(err.to_string().contains("factor >= 1.0"), "{err}");
    assert!(
        drive(
            &mut ReduceLROnPlateau::new().monitor("score"),
            &seq("score", &[1.0])
        )
        .is_err()
    );
    Ok(())
}

fn plateau_fit(reduce: ReduceLROnPlateau, epochs: usize) -> Result<f64> {
    let (x, y) = regression(10, 3);
    let (xv, yv) = regression(10, 3);
    let mut model = Sequential::new()
        .input(&[3])
        .add(Dense::new(5))
        .add(Dense::new(1))
        .compile(Compile::new().optimizer(Adam::new(0.1)).loss("mse"))?;
    model.fit(
        (x, y),
        FitOptions::new()
            .epochs(epochs)
            .verbose(0)
            .validation_data((xv, yv))
            .callback(reduce),
    )?;
    Ok(model.context().optimizer()?.learning_rate())
}

#[test]
fn reduce_lr_on_plateau_in_fit_as_keras_tests() -> Result<()> {
    // keras/src/callbacks/reduce_lr_on_plateau_test.py, with min_delta so large that only the
    // first epoch counts as an improvement.
    let reduce = |min_delta| {
        ReduceLROnPlateau::new()
            .patience(1)
            .factor(0.1)
            .monitor("val_loss")
            .min_delta(min_delta)
    };
    assert_close(&[plateau_fit(reduce(100.0), 2)?], &[kf(0.1) * 0.1]);
    assert_close(&[plateau_fit(reduce(10.0).min_lr(0.005), 4)?], &[0.005]);
    assert_close(
        &[plateau_fit(reduce(100.0).cooldown(2), 4)?],
        &[kf((kf(0.1) * 0.1) as f32) * 0.1],
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// TerminateOnNaN
// ------------------------------------------------------------------------------------------------

/// A model whose step reports `loss = 1` except at batch 3, where it reports `bad`.
struct BadLoss {
    inner: Sequential,
    bad: f64,
}

impl Model for BadLoss {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
    fn train_step(&mut self, ctx: &mut StepContext, _data: &Data) -> Result<Logs> {
        let loss = if ctx.step() == 3 { self.bad } else { 1.0 };
        Ok(logs(&[("loss", loss)]))
    }
}

fn fit_bad_loss(bad: f64, cb: TerminateOnNaN) -> (Result<History>, Probe) {
    let (x, y) = regression(12, 2);
    let mut model = Trainer::new(BadLoss { inner: tiny(), bad });
    let probe = Probe::default();
    let result = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(3)
            .batch_size(2)
            .shuffle(false)
            .verbose(0)
            .callback(cb)
            .callback(probe.clone()),
    );
    (result, probe)
}

#[test]
fn terminate_on_nan_stops_at_the_bad_batch() -> Result<()> {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let (history, probe) = fit_bad_loss(bad, TerminateOnNaN::new());
        let history = history?;
        // Batches 0..=3 of epoch 0 ran (6 per epoch were available); the epoch still ended.
        assert_eq!(
            *probe.batches.lock().unwrap(),
            vec![(0, 0), (0, 1), (0, 2), (0, 3)],
            "loss {bad}"
        );
        assert_eq!(history.epoch, vec![0]);
        assert_eq!(*probe.train_ends.lock().unwrap(), 1);
    }
    // A finite loss never stops.
    let (history, probe) = fit_bad_loss(2.0, TerminateOnNaN::new());
    assert_eq!(history?.epoch, vec![0, 1, 2]);
    assert_eq!(probe.batches.lock().unwrap().len(), 18);
    Ok(())
}

#[test]
fn terminate_on_nan_raise_error() {
    let (result, probe) = fit_bad_loss(f64::NAN, TerminateOnNaN::new().raise_error(true));
    let err = result.expect_err("raise_error makes fit fail");
    assert_eq!(
        err.to_string(),
        "NaN or Inf loss encountered at batch 3. Loss value: nan. Terminating training immediately."
    );
    // The error ends fit at once: the probe after it never saw batch 3, nor the end of training.
    assert_eq!(probe.batches.lock().unwrap().len(), 3);
    assert_eq!(*probe.train_ends.lock().unwrap(), 0);
}

/// The learning-rate callbacks add `learning_rate` to the epoch's logs, as Keras does: History
/// records the rate of each epoch (a float32 value, as Keras's variable holds it; for
/// ReduceLROnPlateau the rate before that epoch's reduction), and a CSVLogger after them writes
/// the column.
#[test]
fn learning_rate_reaches_history_and_later_callbacks() -> Result<()> {
    let (x, y) = regression(8, 2);
    let path = temp_file("lr.csv");
    let mut model = tiny().compile(Compile::new().optimizer(Sgd::new(0.1)).loss("mse"))?;
    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new()
            .epochs(3)
            .verbose(0)
            .callback(LearningRateScheduler::new(|_, lr| lr * 0.5))
            .callback(CSVLogger::new(&path)),
    )?;
    let f32s = |v: &[f64]| v.iter().map(|&x| f64::from(x as f32)).collect::<Vec<_>>();
    assert_eq!(
        h.get("learning_rate"),
        f32s(&[0.05, 0.025, 0.0125]).as_slice()
    );
    let csv = std::fs::read_to_string(&path).unwrap();
    assert!(
        csv.starts_with(
            "epoch,learning_rate,loss,val_learning_rate,val_loss\r\n0,0.05000000074505806,"
        ),
        "{csv}"
    );
    // ReduceLROnPlateau logs the epoch's rate, before it reduces it (patience 0, and a min_delta
    // no change meets: the first epoch sets the best, the second one cuts the rate).
    let mut model = tiny().compile(Compile::new().optimizer(Sgd::new(0.1)).loss("mse"))?;
    let h = model.fit(
        (x, y.zeros_like()?),
        FitOptions::new().epochs(3).verbose(0).callback(
            ReduceLROnPlateau::new()
                .monitor("loss")
                .patience(0)
                .min_delta(1e9)
                .factor(0.5),
        ),
    )?;
    assert_eq!(h.get("learning_rate"), f32s(&[0.1, 0.1, 0.05]).as_slice());
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// SwapEMAWeights
// ------------------------------------------------------------------------------------------------

/// Validation runs on the moving average of the weights: the last `val_loss` is the loss of
/// the weights `fit` leaves (the averages, put in place at the end as Keras does), and training
/// itself is unchanged (the same averages with and without the callback). Without `use_ema`,
/// `fit` stops with Keras's message.
#[test]
fn swap_ema_weights_validates_on_the_averages() -> Result<()> {
    use ferrokeras::callbacks::SwapEMAWeights;
    use ferrokeras::optimizers::Adam;
    let (x, y) = regression(32, 3);
    let (xv, yv) = regression(12, 3);
    let run = |swap: bool| -> Result<(History, Vec<f32>, f64)> {
        // A seed of its own: the same start in both runs, whatever other tests draw from the
        // global generator meanwhile.
        let init = ferrokeras::initializers::Initializer::RandomUniform {
            minval: -0.5,
            maxval: 0.5,
            seed: Some(21),
        };
        let mut model = Sequential::new()
            .input(&[3])
            .add(Dense::new(1).with_kernel_initializer(init))
            .compile(
                Compile::new()
                    .optimizer(Adam::new(0.05).use_ema(true).ema_momentum(0.9))
                    .loss("mse"),
            )?;
        let mut options = FitOptions::new()
            .epochs(3)
            .batch_size(8)
            .shuffle(false)
            .verbose(0)
            .validation_data((xv.clone(), yv.clone()));
        if swap {
            options = options.callback(SwapEMAWeights::new());
        }
        let h = model.fit((x.clone(), y.clone()), options)?;
        let w = model.get_weights()[0].flatten_all()?.to_vec1::<f32>()?;
        let eval = model.evaluate((xv.clone(), yv.clone()), EvaluateOptions::new().verbose(0))?;
        Ok((h, w, eval.get("loss").unwrap()))
    };
    let (with, w_with, eval_with) = run(true)?;
    let (without, w_without, _) = run(false)?;
    assert_eq!(w_with, w_without);
    let last = |h: &History| *h.get("val_loss").last().unwrap();
    assert!(
        (last(&with) - eval_with).abs() < 1e-6,
        "{} vs {eval_with}",
        last(&with)
    );
    assert!((last(&without) - eval_with).abs() > 1e-6);
    assert_eq!(with.get("loss"), without.get("loss"));

    let mut plain = Sequential::new()
        .input(&[3])
        .add(Dense::new(1))
        .compile(Compile::new().optimizer(Adam::new(0.05)).loss("mse"))?;
    let err = plain
        .fit(
            (x, y),
            FitOptions::new()
                .verbose(0)
                .validation_data((xv, yv))
                .callback(SwapEMAWeights::new()),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("use_ema"), "{err}");
    Ok(())
}
