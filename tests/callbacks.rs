//! Callbacks as users rely on them (Keras 3 contract, sections 6 and 7): the order of the hooks in
//! `fit`, `evaluate` and `predict`; stopping; errors; the plain-text progress bar written to any
//! `Write`; and the pure progress-bar formatters.

use std::io::Write;
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use ferrokeras::callbacks::progbar::{format_bar, format_per_step, format_value, format_verbose2};
use ferrokeras::callbacks::{Callback, CallbackContext, History, Params, ProgbarLogger};
use ferrokeras::prelude::*;

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

fn model() -> Trainer<Sequential> {
    Sequential::new()
        .input(&[3])
        .add(Dense::new(4).activation("relu").unwrap())
        .add(Dense::new(1))
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.01))
                .loss("mse")
                .metrics(["mae"]),
        )
        .unwrap()
}

// ------------------------------------------------------------------------------------------------
// A callback that records every hook
// ------------------------------------------------------------------------------------------------

/// One recorded hook: its name with the batch or epoch index, the keys of its logs, and whether
/// it ran inside `fit`.
#[derive(Clone, Debug)]
struct Event {
    name: String,
    keys: Vec<String>,
    in_fit: bool,
}

/// When the recorder asks to stop training or fails.
#[derive(Clone, Copy, Default)]
struct Plan {
    stop_at_epoch_end: Option<usize>,
    stop_at_batch_end: Option<(usize, usize)>,
    stop_at_test_end: bool,
    fail_at_epoch_end: Option<usize>,
}

#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<Event>>>,
    epoch: Arc<Mutex<usize>>,
    plan: Plan,
}

impl Recorder {
    fn with_plan(plan: Plan) -> Self {
        Self {
            plan,
            ..Self::default()
        }
    }
    fn record(&self, ctx: &CallbackContext<'_>, name: String, logs: &Logs) {
        self.events.lock().unwrap().push(Event {
            name,
            keys: logs.keys().map(str::to_string).collect(),
            in_fit: ctx.in_fit(),
        });
    }
    fn names(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }
    fn event(&self, name: &str) -> Event {
        self.events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no event {name}"))
    }
    fn count(&self, prefix: &str) -> usize {
        self.names()
            .iter()
            .filter(|n| n.starts_with(prefix))
            .count()
    }
}

impl Callback for Recorder {
    fn on_train_begin(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.record(ctx, "on_train_begin".into(), logs);
        Ok(())
    }
    fn on_train_end(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.record(ctx, "on_train_end".into(), logs);
        Ok(())
    }
    fn on_epoch_begin(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        *self.epoch.lock().unwrap() = epoch;
        self.record(ctx, format!("on_epoch_begin({epoch})"), logs);
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.record(ctx, format!("on_epoch_end({epoch})"), logs);
        if self.plan.fail_at_epoch_end == Some(epoch) {
            return Err(Error::value(format!("callback failed at epoch {epoch}")));
        }
        if self.plan.stop_at_epoch_end == Some(epoch) {
            ctx.stop_training();
        }
        Ok(())
    }
    fn on_train_batch_begin(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.record(ctx, format!("on_train_batch_begin({batch})"), logs);
        Ok(())
    }
    fn on_train_batch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.record(ctx, format!("on_train_batch_end({batch})"), logs);
        let epoch = *self.epoch.lock().unwrap();
        if self.plan.stop_at_batch_end == Some((epoch, batch)) {
            ctx.stop_training();
        }
        Ok(())
    }
    fn on_test_begin(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.record(ctx, "on_test_begin".into(), logs);
        Ok(())
    }
    fn on_test_end(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.record(ctx, "on_test_end".into(), logs);
        if self.plan.stop_at_test_end && ctx.in_fit() {
            ctx.stop_training();
        }
        Ok(())
    }
    fn on_test_batch_begin(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.record(ctx, format!("on_test_batch_begin({batch})"), logs);
        Ok(())
    }
    fn on_test_batch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.record(ctx, format!("on_test_batch_end({batch})"), logs);
        Ok(())
    }
    fn on_predict_begin(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.record(ctx, "on_predict_begin".into(), logs);
        Ok(())
    }
    fn on_predict_end(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        self.record(ctx, "on_predict_end".into(), logs);
        Ok(())
    }
    fn on_predict_batch_begin(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.record(ctx, format!("on_predict_batch_begin({batch})"), logs);
        Ok(())
    }
    fn on_predict_batch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.record(ctx, format!("on_predict_batch_end({batch})"), logs);
        Ok(())
    }
}

fn batch_pairs(kind: &str, steps: usize) -> Vec<String> {
    (0..steps)
        .flat_map(|b| {
            [
                format!("on_{kind}_batch_begin({b})"),
                format!("on_{kind}_batch_end({b})"),
            ]
        })
        .collect()
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------------------------------------
// Hook order
// ------------------------------------------------------------------------------------------------

#[test]
fn fit_with_validation_calls_hooks_in_keras_order() -> Result<()> {
    let (x, y) = regression(8, 3);
    let (vx, vy) = regression(6, 3);
    let rec = Recorder::default();
    let mut m = model();
    let history = m.fit(
        (x, y),
        FitOptions::new()
            .epochs(2)
            .batch_size(4)
            .validation_data((vx, vy))
            .validation_batch_size(4)
            .verbose(0)
            .callback(rec.clone()),
    )?;
    let mut expected = vec!["on_train_begin".to_string()];
    for epoch in 0..2 {
        expected.push(format!("on_epoch_begin({epoch})"));
        expected.extend(batch_pairs("train", 2));
        expected.push("on_test_begin".into());
        expected.extend(batch_pairs("test", 2));
        expected.push("on_test_end".into());
        expected.push(format!("on_epoch_end({epoch})"));
    }
    expected.push("on_train_end".into());
    assert_eq!(rec.names(), expected);

    // Every hook of fit, validation included, knows it runs inside fit.
    assert!(rec.events.lock().unwrap().iter().all(|e| e.in_fit));
    // Logs: empty at begin hooks, running values at batch ends, val_ keys at epoch end.
    assert!(rec.event("on_epoch_begin(1)").keys.is_empty());
    assert!(rec.event("on_train_batch_begin(1)").keys.is_empty());
    assert_eq!(
        rec.event("on_train_batch_end(1)").keys,
        keys(&["loss", "mae"])
    );
    assert_eq!(
        rec.event("on_test_batch_end(1)").keys,
        keys(&["loss", "mae"])
    );
    assert_eq!(rec.event("on_test_end").keys, keys(&["loss", "mae"]));
    let epoch_keys = keys(&["loss", "mae", "val_loss", "val_mae"]);
    assert_eq!(rec.event("on_epoch_end(1)").keys, epoch_keys);
    // on_train_end receives the last epoch's logs (Keras's `training_logs`).
    assert_eq!(rec.event("on_train_end").keys, epoch_keys);
    assert_eq!(history.epoch, vec![0, 1]);
    Ok(())
}

#[test]
fn evaluate_and_predict_call_their_hooks() -> Result<()> {
    let (x, y) = regression(10, 3);
    let mut m = model();
    let rec = Recorder::default();
    let logs = m.evaluate(
        (x.clone(), y),
        EvaluateOptions::new()
            .batch_size(4)
            .verbose(0)
            .callback(rec.clone()),
    )?;
    let mut expected = vec!["on_test_begin".to_string()];
    expected.extend(batch_pairs("test", 3));
    expected.push("on_test_end".into());
    assert_eq!(rec.names(), expected);
    assert!(rec.events.lock().unwrap().iter().all(|e| !e.in_fit));
    assert_eq!(rec.event("on_test_end").keys, keys(&["loss", "mae"]));
    assert_eq!(logs.keys().collect::<Vec<_>>(), vec!["loss", "mae"]);

    let rec = Recorder::default();
    let pred = m.predict(
        x,
        PredictOptions::new()
            .batch_size(4)
            .verbose(0)
            .callback(rec.clone()),
    )?;
    let mut expected = vec!["on_predict_begin".to_string()];
    expected.extend(batch_pairs("predict", 3));
    expected.push("on_predict_end".into());
    assert_eq!(rec.names(), expected);
    assert_eq!(pred.tensor()?.dims(), &[10, 1]);
    Ok(())
}

/// A callback that checks what the context offers at the start of training, and during
/// validation.
#[derive(Clone, Default)]
struct ParamsProbe(Arc<Mutex<Option<Params>>>, Arc<Mutex<Vec<Params>>>);

impl Callback for ParamsProbe {
    fn on_train_begin(&mut self, ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        *self.0.lock().unwrap() = Some(ctx.params.clone());
        Ok(())
    }
    fn on_test_begin(&mut self, ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.1.lock().unwrap().push(ctx.params.clone());
        Ok(())
    }
}

/// Validation inside `fit` keeps `fit`'s params (Keras runs it with `fit`'s CallbackList);
/// `evaluate` has its own.
#[test]
fn validation_in_fit_keeps_the_fit_params() -> Result<()> {
    let (x, y) = regression(10, 3);
    let (xv, yv) = regression(7, 3);
    let probe = ParamsProbe::default();
    let mut m = model();
    m.fit(
        (x, y),
        FitOptions::new()
            .epochs(2)
            .batch_size(4)
            .verbose(0)
            .validation_data((xv.clone(), yv.clone()))
            .callback(probe.clone()),
    )?;
    let fit_params = Params {
        epochs: 2,
        steps: Some(3),
        verbose: 0,
    };
    assert_eq!(
        *probe.1.lock().unwrap(),
        vec![fit_params.clone(), fit_params]
    );
    let probe = ParamsProbe::default();
    m.evaluate(
        (xv, yv),
        EvaluateOptions::new()
            .batch_size(4)
            .verbose(0)
            .callback(probe.clone()),
    )?;
    assert_eq!(probe.1.lock().unwrap()[0].steps, Some(2));
    Ok(())
}

#[test]
fn callbacks_see_the_loop_params() -> Result<()> {
    let (x, y) = regression(10, 3);
    let seen = Arc::new(Mutex::new(None));
    model().fit(
        (x, y),
        FitOptions::new()
            .epochs(3)
            .batch_size(4)
            .verbose(0)
            .callback(ParamsProbe(seen.clone(), Default::default())),
    )?;
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Params {
            epochs: 3,
            steps: Some(3),
            verbose: 0
        })
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Stopping and errors
// ------------------------------------------------------------------------------------------------

#[test]
fn stop_training_at_epoch_end_stops_after_that_epoch() -> Result<()> {
    let (x, y) = regression(12, 3);
    let rec = Recorder::with_plan(Plan {
        stop_at_epoch_end: Some(1),
        ..Plan::default()
    });
    let history = model().fit(
        (x, y),
        FitOptions::new()
            .epochs(10)
            .batch_size(4)
            .verbose(0)
            .callback(rec.clone()),
    )?;
    assert_eq!(history.epoch, vec![0, 1]);
    assert_eq!(history.get("loss").len(), 2);
    assert_eq!(rec.count("on_epoch_begin"), 2);
    assert_eq!(rec.count("on_train_batch_end"), 6);
    assert_eq!(rec.names().last().map(String::as_str), Some("on_train_end"));
    Ok(())
}

#[test]
fn stop_training_on_batch_end_stops_immediately() -> Result<()> {
    let (x, y) = regression(20, 3);
    let rec = Recorder::with_plan(Plan {
        stop_at_batch_end: Some((1, 2)),
        ..Plan::default()
    });
    let history = model().fit(
        (x, y),
        FitOptions::new()
            .epochs(5)
            .batch_size(4)
            .verbose(0)
            .callback(rec.clone()),
    )?;
    // Epoch 0 runs its 5 batches; epoch 1 stops after batch 2; its epoch end still runs (Keras).
    let names = rec.names();
    let tail: Vec<&str> = names[names.len() - 4..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        vec![
            "on_train_batch_begin(2)",
            "on_train_batch_end(2)",
            "on_epoch_end(1)",
            "on_train_end"
        ]
    );
    assert_eq!(rec.count("on_train_batch_end"), 5 + 3);
    assert_eq!(history.epoch, vec![0, 1]);
    Ok(())
}

#[test]
fn stop_training_during_validation_stops_fit_after_the_epoch() -> Result<()> {
    let (x, y) = regression(12, 3);
    let rec = Recorder::with_plan(Plan {
        stop_at_test_end: true,
        ..Plan::default()
    });
    let history = model().fit(
        (x, y),
        FitOptions::new()
            .epochs(4)
            .batch_size(4)
            .validation_split(0.25)
            .verbose(0)
            .callback(rec.clone()),
    )?;
    assert_eq!(history.epoch, vec![0]);
    assert_eq!(history.get("val_loss").len(), 1);
    assert_eq!(rec.count("on_epoch_begin"), 1);
    Ok(())
}

#[test]
fn callback_error_aborts_fit_with_that_error() {
    let (x, y) = regression(12, 3);
    let rec = Recorder::with_plan(Plan {
        fail_at_epoch_end: Some(1),
        ..Plan::default()
    });
    let result = model().fit(
        (x, y),
        FitOptions::new()
            .epochs(5)
            .batch_size(4)
            .verbose(0)
            .callback(rec.clone()),
    );
    match result {
        Err(Error::Value(msg)) => assert_eq!(msg, "callback failed at epoch 1"),
        Err(other) => panic!("unexpected error kind: {other:?}"),
        Ok(_) => panic!("fit must return the callback's error"),
    }
    assert_eq!(rec.count("on_epoch_begin"), 2);
    assert_eq!(rec.count("on_train_end"), 0);
}

#[test]
fn batch_callback_error_stops_at_once() {
    let (x, y) = regression(20, 3);
    let batches = Arc::new(Mutex::new(0usize));
    let b = batches.clone();
    let failing = LambdaCallback::new().on_batch_end(move |batch, _| {
        *b.lock().unwrap() += 1;
        if batch == 1 {
            Err(Error::state("stop here"))
        } else {
            Ok(())
        }
    });
    let err = model()
        .fit(
            (x, y),
            FitOptions::new()
                .epochs(3)
                .batch_size(4)
                .verbose(0)
                .callback(failing),
        )
        .expect_err("fit must fail");
    assert_eq!(err.to_string(), "stop here");
    assert_eq!(*batches.lock().unwrap(), 2);
}

// ------------------------------------------------------------------------------------------------
// ProgbarLogger writing to any `Write`
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn assert_plain(text: &str) {
    assert!(
        !text.contains('\r') && !text.contains('\x1b') && !text.contains('\u{8}'),
        "control characters in {text:?}"
    );
    assert!(text.ends_with('\n'), "{text:?}");
}

/// `12` from `12s`, `3` from `3ms/step` (with unit `ms`).
fn number_with_unit<'a>(s: &'a str, units: &[&'a str]) -> (u64, &'a str) {
    for unit in units {
        if let Some(n) = s.strip_suffix(unit)
            && let Ok(v) = n.parse::<u64>()
        {
            return (v, unit);
        }
    }
    panic!("{s:?} is not a number followed by one of {units:?}");
}

/// `loss: 0.1234` pairs, each value in Keras's `%.4f` / `%.4e` format.
fn metric_pairs(parts: &[&str]) -> Vec<(String, String)> {
    parts
        .iter()
        .map(|p| {
            let (k, v) = p.split_once(": ").unwrap_or_else(|| panic!("{p:?}"));
            let fixed = v
                .split_once('.')
                .is_some_and(|(_, d)| d.len() == 4 && d.chars().all(|c| c.is_ascii_digit()));
            let exp = v.len() >= 10 && v.contains('e');
            assert!(fixed || exp, "value {v:?} of {k} is not %.4f or %.4e");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// A verbose=1 final line: `N/N ━━━━━━━━━━━━━━━━━━━━ Xs Yms/step - k: v - ...`.
fn parse_bar_line(line: &str, steps: usize) -> Vec<(String, String)> {
    let parts: Vec<&str> = line.split(" - ").collect();
    let head: Vec<&str> = parts[0].split(' ').collect();
    assert_eq!(head.len(), 4, "{line:?}");
    assert_eq!(head[0], format!("{steps}/{steps}"), "{line:?}");
    assert_eq!(head[1], "━".repeat(20), "{line:?}");
    number_with_unit(head[2], &["s"]);
    let per_step = head[3]
        .strip_suffix("/step")
        .unwrap_or_else(|| panic!("{line:?}"));
    number_with_unit(per_step, &["us", "ms", "s"]);
    metric_pairs(&parts[1..])
}

/// A verbose=2 line: `N/N - Xs - Yms/step - k: v - ...`.
fn parse_verbose2_line(line: &str, steps: usize) -> Vec<(String, String)> {
    let parts: Vec<&str> = line.split(" - ").collect();
    assert!(parts.len() >= 3, "{line:?}");
    assert_eq!(parts[0], format!("{steps}/{steps}"), "{line:?}");
    number_with_unit(parts[1], &["s"]);
    let per_step = parts[2]
        .strip_suffix("/step")
        .unwrap_or_else(|| panic!("{line:?}"));
    number_with_unit(per_step, &["us", "ms", "s"]);
    metric_pairs(&parts[3..])
}

fn expected_pairs(history: &History, epoch: usize) -> Vec<(String, String)> {
    let mut keys: Vec<&String> = history.history.keys().collect();
    // Train keys first (alphabetical), then the val_ keys that appear at epoch end.
    keys.sort_by_key(|k| (k.starts_with("val_"), k.to_string()));
    keys.into_iter()
        .filter_map(|k| {
            history.history[k]
                .get(epoch)
                .map(|v| (k.clone(), format_value(*v)))
        })
        .collect()
}

#[test]
fn progbar_to_writer_prints_plain_keras_lines() -> Result<()> {
    let (x, y) = regression(10, 3);
    let buf = SharedBuf::default();
    let history = model().fit(
        (x.clone(), y.clone()),
        FitOptions::new()
            .epochs(2)
            .batch_size(4)
            .verbose(0)
            .callback(ProgbarLogger::to_writer(1, Box::new(buf.clone()))),
    )?;
    let text = buf.text();
    assert_plain(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "Epoch 1/2");
    assert_eq!(lines[2], "Epoch 2/2");
    for epoch in 0..2 {
        let pairs = parse_bar_line(lines[2 * epoch + 1], 3);
        assert_eq!(pairs, expected_pairs(&history, epoch), "{text}");
    }

    // One epoch: no header. Validation values come last on the epoch's line, and validation
    // draws no bar of its own.
    let buf = SharedBuf::default();
    let history = model().fit(
        (x, y),
        FitOptions::new()
            .epochs(1)
            .batch_size(4)
            .validation_split(0.2)
            .verbose(0)
            .callback(ProgbarLogger::to_writer(1, Box::new(buf.clone()))),
    )?;
    let text = buf.text();
    assert_plain(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let pairs = parse_bar_line(lines[0], 2);
    let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, vec!["loss", "mae", "val_loss", "val_mae"]);
    assert_eq!(pairs, expected_pairs(&history, 0));
    Ok(())
}

#[test]
fn progbar_verbose_2_prints_one_line_per_epoch() -> Result<()> {
    let (x, y) = regression(10, 3);
    let buf = SharedBuf::default();
    let history = model().fit(
        (x, y),
        FitOptions::new()
            .epochs(3)
            .batch_size(4)
            .verbose(0)
            .callback(ProgbarLogger::to_writer(2, Box::new(buf.clone()))),
    )?;
    let text = buf.text();
    assert_plain(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for epoch in 0..3 {
        assert_eq!(lines[2 * epoch], format!("Epoch {}/3", epoch + 1));
        let pairs = parse_verbose2_line(lines[2 * epoch + 1], 3);
        assert_eq!(pairs, expected_pairs(&history, epoch), "{text}");
    }
    Ok(())
}

#[test]
fn progbar_to_writer_in_evaluate_and_predict() -> Result<()> {
    let (x, y) = regression(10, 3);
    let mut m = model();
    let buf = SharedBuf::default();
    let logs = m.evaluate(
        (x.clone(), y),
        EvaluateOptions::new()
            .batch_size(4)
            .verbose(0)
            .callback(ProgbarLogger::to_writer(1, Box::new(buf.clone()))),
    )?;
    let text = buf.text();
    assert_plain(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let pairs = parse_bar_line(lines[0], 3);
    let expected: Vec<(String, String)> = logs
        .iter()
        .map(|(k, v)| (k.to_string(), format_value(v)))
        .collect();
    assert_eq!(pairs, expected);

    // predict: the bar without metrics.
    let buf = SharedBuf::default();
    m.predict(
        x,
        PredictOptions::new()
            .batch_size(4)
            .verbose(0)
            .callback(ProgbarLogger::to_writer(1, Box::new(buf.clone()))),
    )?;
    let text = buf.text();
    assert_plain(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(parse_bar_line(lines[0], 3).is_empty(), "{text}");
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Pure formatters
// ------------------------------------------------------------------------------------------------

fn bar20() -> String {
    "━".repeat(20)
}

#[test]
fn eta_formats_as_keras() {
    let eta = |seconds: f64| format_bar(3, Some(10), seconds, 0.002, false, &[], false);
    assert_eq!(eta(3700.0), format!(" 3/10 {} 1:01:40 2ms/step", bar20()));
    assert_eq!(eta(75.0), format!(" 3/10 {} 1:15 2ms/step", bar20()));
    assert_eq!(eta(61.0), format!(" 3/10 {} 1:01 2ms/step", bar20()));
    // `eta > 60` / `eta > 3600` are strict, and "%d" truncates.
    assert_eq!(eta(60.0), format!(" 3/10 {} 60s 2ms/step", bar20()));
    assert_eq!(eta(3600.0), format!(" 3/10 {} 60:00 2ms/step", bar20()));
    assert_eq!(eta(5.9), format!(" 3/10 {} 5s 2ms/step", bar20()));
    // Finalized: the elapsed time, rounded.
    let done = format_bar(10, Some(10), 1.6, 0.002, true, &[], false);
    assert_eq!(done, format!("10/10 {} 2s 2ms/step", bar20()));
}

#[test]
fn unknown_target_shows_the_count_alone() {
    let line = format_bar(5, None, 3.2, 0.5, false, &[], false);
    assert_eq!(line, "      5/Unknown 3s 500ms/step");
    let vals = vec![("loss".to_string(), 0.25)];
    let line = format_bar(1234, None, 10.0, 0.008, true, &vals, false);
    assert_eq!(line, "   1234/Unknown 10s 8ms/step - loss: 0.2500");
}

#[test]
fn bar_cells_and_colours() {
    let green = |n: usize| format!("\x1b[32m{}\x1b[0m", "━".repeat(n));
    let white = |n: usize| format!("\x1b[37m{}\x1b[0m", "━".repeat(n));
    let half = format_bar(16, Some(32), 1.0, 0.01, false, &[], true);
    assert_eq!(
        half,
        format!(
            "\x1b[1m16/32\x1b[0m {}{} \x1b[1m1s\x1b[0m 10ms/step",
            green(10),
            white(10)
        )
    );
    // int(20 * 31 / 32) = 19 cells; none before the first step; all at the end.
    assert!(
        format_bar(31, Some(32), 0.0, 0.01, false, &[], true).contains(&(green(19) + &white(1)))
    );
    let start = format_bar(0, Some(32), 0.0, 0.0, false, &[], true);
    assert!(
        !start.contains("\x1b[32m") && start.contains(&white(20)),
        "{start:?}"
    );
    assert!(
        format_bar(32, Some(32), 0.0, 0.01, true, &[], true).contains(&(green(20) + &white(0)))
    );
    // The count is right-aligned to the digits of the target.
    assert!(format_bar(7, Some(100), 0.0, 0.01, false, &[], false).starts_with("  7/100 "));
}

#[test]
fn values_use_keras_fixed_or_exponent_notation() {
    assert_eq!(format_value(0.1234), "0.1234");
    assert_eq!(format_value(1e-4), "1.0000e-04");
    assert_eq!(format_value(1e-3), "1.0000e-03");
    assert_eq!(format_value(0.0011), "0.0011");
    assert_eq!(format_value(0.0), "0.0000e+00");
    assert_eq!(format_value(-0.5), "-0.5000");
    assert_eq!(format_value(-2e-5), "-2.0000e-05");
    assert_eq!(format_value(12345.6789), "12345.6789");
    assert_eq!(format_value(1.5e12), "1500000000000.0000");
}

#[test]
fn verbose_2_line_and_its_negative_value_quirk() {
    let vals = vec![
        ("loss".to_string(), 0.2),
        ("mae".to_string(), 0.3),
        ("val_loss".to_string(), -0.5),
    ];
    assert_eq!(
        format_verbose2(32, 32, 0.3, 0.002, &vals),
        "32/32 - 0s - 2ms/step - loss: 0.2000 - mae: 0.3000 - val_loss: -5.0000e-01"
    );
    // verbose 1 uses |v| and keeps negatives in fixed notation.
    let line = format_bar(32, Some(32), 0.3, 0.002, true, &vals, false);
    assert!(line.ends_with(" - val_loss: -0.5000"), "{line}");
    assert_eq!(
        format_verbose2(5, 10, 12.6, 1.5, &[]),
        " 5/10 - 13s - 2s/step"
    );
}

#[test]
fn per_step_units() {
    assert_eq!(format_per_step(0.0), " 0s/step");
    assert_eq!(format_per_step(1.0), " 1s/step");
    assert_eq!(format_per_step(3.4), " 3s/step");
    assert_eq!(format_per_step(0.0123), " 12ms/step");
    assert_eq!(format_per_step(0.001), " 1ms/step");
    assert_eq!(format_per_step(0.000456), " 456us/step");
}

/// A dataset of unknown length: the first epoch counts steps as `N/Unknown` while it runs, and
/// its final line, like every later epoch's, shows the full bar of the steps it learnt (Keras's
/// `_finalize_progbar`).
#[test]
fn progbar_learns_the_length_of_an_unknown_epoch() -> Result<()> {
    use ferrokeras::data::{Cardinality, Dataset};
    let (x, y) = regression(10, 3);
    let ds = Dataset::from_tensor_slices(Data::from(vec![x, y]))?.batch(4, false);
    let unknown = Dataset::from_fn(Cardinality::Unknown, move || Box::new(ds.iter()));
    let buf = SharedBuf::default();
    let history = model().fit(
        unknown,
        FitOptions::new()
            .epochs(2)
            .verbose(0)
            .callback(ProgbarLogger::to_writer(1, Box::new(buf.clone()))),
    )?;
    assert_eq!(history.params.steps, None);
    let text = buf.text();
    assert_plain(&text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for epoch in 0..2 {
        let pairs = parse_bar_line(lines[2 * epoch + 1], 3);
        assert_eq!(pairs, expected_pairs(&history, epoch), "{text}");
    }
    Ok(())
}

/// A diverging run prints `nan`, as Python formats it.
#[test]
fn nan_values_print_as_python_does() {
    assert_eq!(format_value(f64::NAN), "nan");
    let line = format_verbose2(2, 2, 1.0, 0.5, &[("loss".to_string(), f64::NAN)]);
    assert!(line.ends_with(" - loss: nan"), "{line}");
}
