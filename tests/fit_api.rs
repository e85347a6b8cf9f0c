//! End-to-end behaviour of `compile` / `fit` / `evaluate` / `predict` that users rely on, checked
//! against the Keras 3 contract (`KERAS-CONTRACT.md`, sections 1-3 and 7): the summary table,
//! multi-input / multi-output functional models, subclassed models with and without `compile`,
//! `History`, metric resets, `predict`, sample weights.
//!
//! The random generator is process-wide and tests run on several threads, so every test takes
//! [`serial`] first: weight initialisation and shuffling then depend only on the test itself.

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Tensor;
use ferrokeras::callbacks::History;
use ferrokeras::model::default_train_step;
use ferrokeras::prelude::*;
use ferrokeras::random::set_random_seed;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of this file (they share the global random generator).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[path = "support/data.rs"]
mod data;
use data::regression;

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Deep copies of the weights (a snapshot that later training cannot change).
fn snapshot<M: Model>(m: &M) -> Vec<Tensor> {
    m.get_weights().iter().map(|t| t.copy().unwrap()).collect()
}

fn mlp(d: usize) -> Sequential {
    Sequential::new()
        .input(&[d])
        .add(Dense::new(8).activation("relu").unwrap())
        .add(Dense::new(1))
}

fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * (1.0 + b.abs()),
        "{what}: {a} vs {b} (tolerance {tol})"
    );
}

fn assert_histories_close(a: &History, b: &History, tol: f64) {
    assert_eq!(
        a.history.keys().collect::<Vec<_>>(),
        b.history.keys().collect::<Vec<_>>()
    );
    for (k, va) in &a.history {
        let vb = &b.history[k];
        assert_eq!(va.len(), vb.len(), "{k}");
        for (i, (x, y)) in va.iter().zip(vb).enumerate() {
            assert_close(*x, *y, tol, &format!("{k}[{i}]"));
        }
    }
}

// ------------------------------------------------------------------------------------------------
// summary()
// ------------------------------------------------------------------------------------------------

/// One row of the Keras 3 table (columns of 33, 24 and 15 characters).
fn row(name: &str, shape: &str, params: &str) -> String {
    format!("│ {name:<31} │ {shape:<22} │ {params:>13} │")
}

/// A functional model prints as Keras 3.15.1 prints it: a shared layer gets the "Connected to"
/// column with each node's input (`shared[1][0]` is its second application), a plain chain
/// the three-column table with its input row.
#[test]
fn functional_summaries_are_the_keras_3_tables() -> Result<()> {
    let x = Input::named(&[4], "x");
    let shared = SharedLayer::new(Dense::new(4).named("shared"));
    let h = shared.apply(&Dense::new(4).named("mid").apply(&shared.apply(&x)?)?)?;
    let y = Dense::new(2).named("out").apply(&h)?;
    let twice = Functional::new(&[x], &[y])?.named("twice");
    assert_eq!(
        Model::summary(&twice),
        "\
Model: \"twice\"
┏━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━┓
┃ Layer (type)        ┃ Output Shape      ┃    Param # ┃ Connected to      ┃
┡━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━┩
│ x (InputLayer)      │ (None, 4)         │          0 │ -                 │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ shared (Dense)      │ (None, 4)         │         20 │ x[0][0],          │
│                     │                   │            │ mid[0][0]         │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ mid (Dense)         │ (None, 4)         │         20 │ shared[0][0]      │
├─────────────────────┼───────────────────┼────────────┼───────────────────┤
│ out (Dense)         │ (None, 2)         │         10 │ shared[1][0]      │
└─────────────────────┴───────────────────┴────────────┴───────────────────┘
 Total params: 50 (200.00 B)
 Trainable params: 50 (200.00 B)
 Non-trainable params: 0 (0.00 B)
"
    );
    let x = Input::named(&[4], "x");
    let y = Dense::new(2)
        .named("out")
        .apply(&Dense::new(3).named("h").apply(&x)?)?;
    let chain = Functional::new(&[x], &[y])?.named("chain");
    assert_eq!(
        Model::summary(&chain),
        "\
Model: \"chain\"
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━┓
┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━┩
│ x (InputLayer)                  │ (None, 4)              │             0 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ h (Dense)                       │ (None, 3)              │            15 │
├─────────────────────────────────┼────────────────────────┼───────────────┤
│ out (Dense)                     │ (None, 2)              │             8 │
└─────────────────────────────────┴────────────────────────┴───────────────┘
 Total params: 23 (92.00 B)
 Trainable params: 23 (92.00 B)
 Non-trainable params: 0 (0.00 B)
"
    );
    Ok(())
}

#[test]
fn sequential_summary_is_the_keras_3_table() -> Result<()> {
    let _g = serial();
    let model = Sequential::new()
        .input(&[784])
        .add(Dense::new(64).activation("relu")?)
        .add(Dense::new(10));
    let names: Vec<String> = model
        .layers()
        .iter()
        .map(|l| l.name().to_string())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("dense")), "{names:?}");
    assert_ne!(names[0], names[1], "layer names are unique");
    let s = model.summary();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], format!("Model: \"{}\"", model.name()));
    assert_eq!(
        lines[1],
        format!("┏{}┳{}┳{}┓", "━".repeat(33), "━".repeat(24), "━".repeat(15))
    );
    assert_eq!(
        lines[2],
        "┃ Layer (type)                    ┃ Output Shape           ┃       Param # ┃"
    );
    assert_eq!(
        lines[4],
        row(&format!("{} (Dense)", names[0]), "(None, 64)", "50,240")
    );
    assert_eq!(
        lines[3],
        format!("┡{}╇{}╇{}┩", "━".repeat(33), "━".repeat(24), "━".repeat(15))
    );
    assert_eq!(
        lines[5],
        format!("├{}┼{}┼{}┤", "─".repeat(33), "─".repeat(24), "─".repeat(15))
    );
    assert_eq!(
        lines[6],
        row(&format!("{} (Dense)", names[1]), "(None, 10)", "650")
    );
    assert_eq!(
        lines[7],
        format!("└{}┴{}┴{}┘", "─".repeat(33), "─".repeat(24), "─".repeat(15))
    );
    // 50890 float32 parameters = 203560 bytes = 198.79 KB (Keras's readable_memory_size).
    assert_eq!(lines[8], " Total params: 50,890 (198.79 KB)");
    assert_eq!(lines[9], " Trainable params: 50,890 (198.79 KB)");
    assert_eq!(lines[10], " Non-trainable params: 0 (0.00 B)");
    assert_eq!(lines.len(), 11);

    let small = Sequential::new().input(&[32]).add(Dense::new(1));
    let s = small.summary();
    let name = small.layers()[0].name().to_string();
    assert!(
        s.contains(&row(&format!("{name} (Dense)"), "(None, 1)", "33")),
        "{s}"
    );
    assert!(s.contains(" Total params: 33 (132.00 B)\n"), "{s}");
    assert!(s.contains(" Trainable params: 33 (132.00 B)\n"), "{s}");
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Functional: two inputs, two outputs, a shared layer
// ------------------------------------------------------------------------------------------------

#[test]
fn functional_two_inputs_two_outputs() -> Result<()> {
    let _g = serial();
    set_random_seed(1);
    let a = Input::new(&[3]);
    let b = Input::new(&[3]);
    let shared = SharedLayer::new(Dense::new(4).activation("tanh")?);
    let ha = shared.apply(&a)?;
    let hb = shared.apply(&b)?;
    let h = Concatenate::new().apply_many(&[ha, hb])?;
    let out1 = Dense::new(1).named("price").apply(&h)?;
    let out2 = Dense::new(2).named("scores").apply(&h)?;
    let model = Functional::new(&[a, b], &[out1, out2])?;

    // The shared Dense is counted once: 3*4+4, then 8*1+1 and 8*2+2.
    let vars = model.variables();
    assert_eq!(vars.len(), 6, "{vars:?}");
    for (i, v) in vars.iter().enumerate() {
        assert!(
            !vars[..i].iter().any(|w| w.same_as(v)),
            "variable {} listed twice",
            v.name()
        );
    }
    assert_eq!(
        vars.iter().map(Variable::elem_count).sum::<usize>(),
        16 + 9 + 18
    );
    let shared_name = shared.lock().name().to_string();
    let summary = model.summary();
    assert_eq!(
        summary.matches(&format!("{shared_name} (Dense)")).count(),
        1,
        "{summary}"
    );
    assert!(
        summary.contains(" Total params: 43 (172.00 B)"),
        "{summary}"
    );

    let mut model = model.compile(
        Compile::new()
            .optimizer(Adam::new(0.01))
            .loss("mse")
            .metrics(["mae"]),
    )?;
    let n = 40;
    let (xa, y1) = regression(n, 3);
    let xb = xa.affine(-0.5, 0.25)?;
    let y2 = Tensor::cat(&[&y1.affine(2.0, 0.0)?, &y1.affine(-1.0, 0.5)?], 1)?;
    let x = Data::from(vec![xa.clone(), xb.clone()]);
    let y = Data::from(vec![y1.clone(), y2.clone()]);
    let history = model.fit(
        Inputs::xy(x.clone(), y.clone()),
        FitOptions::new()
            .epochs(3)
            .batch_size(8)
            .validation_split(0.25)
            .verbose(0),
    )?;
    // Keras's keys: per-output metrics and losses after the output layers' names.
    let keys: Vec<&str> = history.history.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "loss",
            "price_loss",
            "price_mae",
            "scores_loss",
            "scores_mae",
            "val_loss",
            "val_price_loss",
            "val_price_mae",
            "val_scores_loss",
            "val_scores_mae"
        ]
    );
    // The epoch's loss is the sum of the outputs' losses (the same batches, each weighted by
    // its batch size).
    for e in 0..3 {
        for p in ["", "val_"] {
            let sum = history.get(&format!("{p}price_loss"))[e]
                + history.get(&format!("{p}scores_loss"))[e];
            assert_close(history.get(&format!("{p}loss"))[e], sum, 1e-5, "loss = sum");
        }
    }
    assert!(history.history.values().all(|v| v.len() == 3));

    // predict returns one tensor per output, in output order.
    let pred = model.predict(x.clone(), PredictOptions::new().batch_size(16).verbose(0))?;
    let parts = pred.flatten();
    assert!(matches!(pred, Data::Tuple(ref v) if v.len() == 2));
    assert_eq!(parts[0].dims(), &[n, 1]);
    assert_eq!(parts[1].dims(), &[n, 2]);

    // evaluate reports the loss summed over outputs, each output's loss and one metric per output.
    let logs = model.evaluate(
        Inputs::xy(x, y),
        EvaluateOptions::new().batch_size(n).verbose(0),
    )?;
    let mae0 = (parts[0] - &y1)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    let mae1 = (parts[1] - &y2)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    let mse = (parts[0] - &y1)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64
        + (parts[1] - &y2)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    let mse0 = (parts[0] - &y1)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    assert_close(logs.get("price_mae").unwrap(), mae0, 1e-5, "price_mae");
    assert_close(logs.get("scores_mae").unwrap(), mae1, 1e-5, "scores_mae");
    assert_close(logs.get("price_loss").unwrap(), mse0, 1e-5, "price_loss");
    assert_close(
        logs.get("scores_loss").unwrap(),
        mse - mse0,
        1e-5,
        "scores_loss",
    );
    assert_close(logs.get("loss").unwrap(), mse, 1e-5, "loss");

    // With loss weights the total weighs each output; the per-output losses are logged before
    // their weights (Keras 3.7+).
    let mut weighted = model.compile(
        Compile::new()
            .optimizer(Adam::new(0.01))
            .losses(vec!["mse".into(), "mse".into()])
            .loss_weights(vec![1.0, 0.25]),
    )?;
    let logs = weighted.evaluate(
        Inputs::xy(Data::from(vec![xa, xb]), Data::from(vec![y1, y2])),
        EvaluateOptions::new().batch_size(n).verbose(0),
    )?;
    assert_close(logs.get("price_loss").unwrap(), mse0, 1e-5, "price_loss");
    assert_close(
        logs.get("scores_loss").unwrap(),
        mse - mse0,
        1e-5,
        "scores_loss",
    );
    assert_close(
        logs.get("loss").unwrap(),
        mse0 + 0.25 * (mse - mse0),
        1e-5,
        "weighted loss",
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Subclassed models
// ------------------------------------------------------------------------------------------------

fn functional_regressor(d: usize) -> Result<Functional> {
    let inputs = Input::new(&[d]);
    let h = Dense::new(8).activation("relu")?.apply(&inputs)?;
    let outputs = Dense::new(1).apply(&h)?;
    Functional::new(&[inputs], &[outputs])
}

/// A subclassed model with the default steps.
struct Plain {
    inner: Functional,
}

impl Model for Plain {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
}

/// The same, with a `train_step` that counts its calls and calls "super".
struct Counting {
    inner: Functional,
    calls: Arc<Mutex<usize>>,
}

impl Model for Counting {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        *self.calls.lock().unwrap() += 1;
        default_train_step(self, ctx, data)
    }
}

#[test]
fn subclassed_model_with_default_and_overridden_train_step() -> Result<()> {
    let _g = serial();
    set_random_seed(2);
    let (x, y) = regression(48, 4);
    let inner = functional_regressor(4)?;
    let init = snapshot(&inner);
    let compile = || {
        Compile::new()
            .optimizer("adam")
            .loss("mse")
            .metrics(["mae"])
    };
    let options = || {
        FitOptions::new()
            .epochs(4)
            .batch_size(16)
            .shuffle(false)
            .verbose(0)
    };

    let mut plain = Trainer::new(Plain { inner }).compile(compile())?;
    let h_plain = plain.fit((x.clone(), y.clone()), options())?;
    assert_eq!(h_plain.get("loss").len(), 4);
    assert!(
        h_plain.get("loss")[3] < h_plain.get("loss")[0],
        "training lowers the loss: {:?}",
        h_plain.get("loss")
    );
    let trained = snapshot(&*plain);
    assert!(
        init.iter()
            .zip(&trained)
            .any(|(a, b)| to_vec(a) != to_vec(b)),
        "fit must update the variables of a subclassed model"
    );

    // The override that calls the default step gives the same history, one call per batch.
    let calls = Arc::new(Mutex::new(0));
    let mut inner = functional_regressor(4)?;
    inner.set_weights(&init)?;
    let mut counting = Counting {
        inner,
        calls: calls.clone(),
    }
    .compile(compile())?;
    let h_counting = counting.fit((x, y), options())?;
    assert_eq!(*calls.lock().unwrap(), 4 * 3);
    assert_histories_close(&h_plain, &h_counting, 1e-6);
    Ok(())
}

/// A model that brings its own optimizer and reports its own keys: no `compile` needed.
struct OwnOptimizer {
    inner: Functional,
    opt: Sgd,
    d_loss: Mean,
}

impl Model for OwnOptimizer {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
    fn train_step(&mut self, _ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        let (x, y, _) = data.unpack_xy()?;
        let y_pred = self.call(x, true)?.into_tensor()?;
        let loss = MseLoss::new().compute(y.tensor()?, &y_pred, None)?;
        let vars = self.trainable_variables();
        let grads = GradientTape::gradient(&loss, &vars)?;
        self.opt.apply(&grads, &vars)?;
        self.d_loss.update_values(&loss, None)?;
        let mut logs = Logs::new();
        logs.insert("d_loss", self.d_loss.result());
        logs.insert("lr", self.opt.learning_rate());
        Ok(logs)
    }
    fn metrics<'a>(&'a mut self, _ctx: &'a mut StepContext) -> Vec<&'a mut dyn Metric> {
        vec![&mut self.d_loss]
    }
}

#[test]
fn uncompiled_model_with_its_own_optimizer_reports_custom_keys() -> Result<()> {
    let _g = serial();
    set_random_seed(3);
    let (x, y) = regression(30, 4);
    let model = OwnOptimizer {
        inner: functional_regressor(4)?,
        opt: Sgd::new(0.05),
        d_loss: Mean::new("d_loss"),
    };
    let mut trainer = Trainer::new(model);
    let history = trainer.fit(
        (x, y),
        FitOptions::new().epochs(3).batch_size(10).verbose(0),
    )?;
    // The step's keys differ from `metrics()`, so they are kept verbatim (keras PR #19529).
    assert_eq!(
        history
            .history
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec!["d_loss", "lr"]
    );
    assert_eq!(history.get("d_loss").len(), 3);
    assert_eq!(history.get("lr"), &[0.05, 0.05, 0.05]);
    assert!(history.get("d_loss")[2] < history.get("d_loss")[0]);
    assert_eq!(trainer.model().opt.iterations(), 9);
    Ok(())
}

#[test]
fn default_step_without_compile_explains_what_is_missing() -> Result<()> {
    let _g = serial();
    let (x, y) = regression(8, 4);
    let mut trainer = Trainer::new(Plain {
        inner: functional_regressor(4)?,
    });
    let err = match trainer.fit((x, y), FitOptions::new().verbose(0)) {
        Ok(_) => panic!("fit without loss or optimizer must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("compile"), "{err}");
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// History
// ------------------------------------------------------------------------------------------------

fn compiled_mlp(d: usize) -> Result<Trainer<Sequential>> {
    mlp(d).compile(
        Compile::new()
            .optimizer(Adam::new(0.01))
            .loss("mse")
            .metrics(["mae"]),
    )
}

#[test]
fn history_has_one_value_per_epoch_and_val_keys() -> Result<()> {
    let _g = serial();
    set_random_seed(4);
    let (x, y) = regression(50, 4);
    let mut model = compiled_mlp(4)?;
    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new().epochs(3).batch_size(16).verbose(0),
    )?;
    assert_eq!(
        h.history.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["loss", "mae"]
    );
    assert!(h.history.values().all(|v| v.len() == 3));
    assert_eq!(h.epoch, vec![0, 1, 2]);
    assert_eq!(h.params.epochs, 3);
    assert_eq!(h.params.steps, Some(4));

    // validation_split holds out the last 20% (10 samples): 40 train samples, 3 batches.
    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new()
            .epochs(2)
            .batch_size(16)
            .validation_split(0.2)
            .verbose(0),
    )?;
    assert_eq!(
        h.history.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["loss", "mae", "val_loss", "val_mae"]
    );
    assert!(h.history.values().all(|v| v.len() == 2));
    assert_eq!(h.params.steps, Some(3));
    // The last validation equals an evaluation of the held-out samples with the final weights.
    let held_out = model.evaluate(
        (x.narrow(0, 40, 10)?, y.narrow(0, 40, 10)?),
        EvaluateOptions::new().verbose(0),
    )?;
    assert_close(
        h.get("val_loss")[1],
        held_out.get("loss").unwrap(),
        1e-6,
        "val_loss",
    );
    assert_close(
        h.get("val_mae")[1],
        held_out.get("mae").unwrap(),
        1e-6,
        "val_mae",
    );

    // validation_data.
    let (vx, vy) = regression(12, 4);
    let h = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(2)
            .batch_size(16)
            .validation_data((vx.clone(), vy.clone()))
            .verbose(0),
    )?;
    assert_eq!(h.get("val_loss").len(), 2);
    assert_eq!(h.get("val_mae").len(), 2);
    let logs = model.evaluate((vx, vy), EvaluateOptions::new().verbose(0))?;
    assert_close(
        h.get("val_loss")[1],
        logs.get("loss").unwrap(),
        1e-6,
        "val_loss",
    );
    Ok(())
}

#[test]
fn validation_freq_initial_epoch_and_steps_per_epoch() -> Result<()> {
    let _g = serial();
    set_random_seed(5);
    let (x, y) = regression(40, 4);
    let mut model = compiled_mlp(4)?;

    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new()
            .epochs(4)
            .batch_size(10)
            .validation_split(0.25)
            .validation_freq(2)
            .verbose(0),
    )?;
    assert_eq!(h.get("loss").len(), 4);
    assert_eq!(h.get("val_loss").len(), 2);
    assert_eq!(h.get("val_mae").len(), 2);

    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new().initial_epoch(2).epochs(5).verbose(0),
    )?;
    assert_eq!(h.epoch, vec![2, 3, 4]);
    assert_eq!(h.get("loss").len(), 3);

    // steps_per_epoch counts batches: 3 per epoch although the data holds 8 batches of 5. The
    // stream continues across epochs, and the epoch during which it runs out ends there (Keras's
    // EpochIterator): epochs of 3, 3, 2, then a new pass.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(4)
            .batch_size(5)
            .steps_per_epoch(3)
            .verbose(0)
            .callback(LambdaCallback::new().on_batch_end(move |batch, _| {
                s.lock().unwrap().push(batch);
                Ok(())
            })),
    )?;
    assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 2]);
    assert_eq!(h.params.steps, Some(3));
    assert_eq!(h.get("loss").len(), 4);
    assert_eq!(h.batch_history["loss"].len(), 11);
    Ok(())
}

#[test]
fn batch_history_has_one_value_per_training_batch() -> Result<()> {
    let _g = serial();
    set_random_seed(6);
    let (x, y) = regression(100, 4);
    let mut model = compiled_mlp(4)?;
    let h = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(2)
            .batch_size(32)
            .validation_split(0.0)
            .verbose(0),
    )?;
    // 100 samples in batches of 32: 32, 32, 32, 4.
    assert_eq!(h.batch_history["loss"].len(), 8);
    assert_eq!(h.batch_history["mae"].len(), 8);
    // The epoch value is the running mean of the batch values weighted by batch size.
    let sizes = [32.0, 32.0, 32.0, 4.0];
    for epoch in 0..2 {
        for key in ["loss", "mae"] {
            let batches = &h.batch_history[key][epoch * 4..epoch * 4 + 4];
            let mean = batches.iter().zip(sizes).map(|(v, n)| v * n).sum::<f64>() / 100.0;
            assert_close(
                h.get(key)[epoch],
                mean,
                1e-5,
                &format!("{key} epoch {epoch}"),
            );
        }
    }
    Ok(())
}

#[test]
fn shuffle_false_is_deterministic_and_seeded_shuffle_is_reproducible() -> Result<()> {
    let _g = serial();
    set_random_seed(7);
    let (x, y) = regression(64, 4);
    let first = compiled_mlp(4)?;
    let init = snapshot(&*first);
    let run = |shuffle: bool, seed: Option<u64>| -> Result<History> {
        let mut m = compiled_mlp(4)?;
        m.set_weights(&init)?;
        if let Some(s) = seed {
            set_random_seed(s);
        }
        m.fit(
            (x.clone(), y.clone()),
            FitOptions::new()
                .epochs(3)
                .batch_size(8)
                .shuffle(shuffle)
                .verbose(0),
        )
    };
    // Without shuffling, two runs from the same weights are identical whatever the generator's state.
    let a = run(false, None)?;
    let b = run(false, None)?;
    assert_eq!(a.history, b.history);
    assert_eq!(a.batch_history, b.batch_history);
    // Shuffling with the same seed repeats; another order gives other values.
    let c = run(true, Some(11))?;
    let d = run(true, Some(11))?;
    assert_eq!(c.history, d.history);
    assert_eq!(c.batch_history, d.batch_history);
    assert_ne!(a.batch_history["loss"], c.batch_history["loss"]);
    let e = run(true, Some(12))?;
    assert_ne!(c.batch_history["loss"], e.batch_history["loss"]);
    Ok(())
}

/// Strided views (a transposed array, a column slice of a wider one) shuffle into batches as
/// their contiguous copies do (gathering rows needs contiguous storage: the adapter makes it).
#[test]
fn shuffled_batches_of_strided_arrays_are_those_of_their_copies() -> Result<()> {
    let _g = serial();
    set_random_seed(9);
    let (x, y) = regression(48, 4);
    let x_t = x.t()?.contiguous()?.t()?; // the same values, column-major
    let wide = Tensor::cat(&[&y, &y], 1)?;
    let y_view = wide.narrow(1, 1, 1)?;
    assert!(!x_t.is_contiguous() && !y_view.is_contiguous());
    let first = compiled_mlp(4)?;
    let init = snapshot(&*first);
    let run = |x: Tensor, y: Tensor| -> Result<History> {
        let mut m = compiled_mlp(4)?;
        m.set_weights(&init)?;
        set_random_seed(21);
        m.fit((x, y), FitOptions::new().epochs(2).batch_size(8).verbose(0))
    };
    let a = run(x.clone(), y.clone())?;
    let b = run(x_t, y_view)?;
    assert_eq!(a.batch_history, b.batch_history);
    Ok(())
}

#[test]
fn get_weights_is_a_snapshot_that_set_weights_restores() -> Result<()> {
    let _g = serial();
    set_random_seed(8);
    let (x, y) = regression(32, 4);
    let mut model = compiled_mlp(4)?;
    let before = model.get_weights();
    let copies = snapshot(&*model);
    model.fit(
        (x.clone(), y.clone()),
        FitOptions::new().epochs(2).verbose(0),
    )?;
    for (b, c) in before.iter().zip(&copies) {
        assert_eq!(
            to_vec(b),
            to_vec(c),
            "get_weights must not change with training"
        );
    }
    let trained = model.evaluate((x.clone(), y.clone()), EvaluateOptions::new().verbose(0))?;
    model.set_weights(&before)?;
    for (v, c) in model.get_weights().iter().zip(&copies) {
        assert_eq!(to_vec(v), to_vec(c));
    }
    let restored = model.evaluate((x, y), EvaluateOptions::new().verbose(0))?;
    assert_ne!(trained.get("loss"), restored.get("loss"));
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// evaluate, metric resets, predict
// ------------------------------------------------------------------------------------------------

#[test]
fn evaluate_returns_loss_and_metrics_in_metrics_order() -> Result<()> {
    let _g = serial();
    set_random_seed(9);
    let (x, y) = regression(25, 4);
    let mut model = mlp(4).compile(
        Compile::new()
            .optimizer("adam")
            .loss("mse")
            .metrics(["mse", "mae"]),
    )?;
    model.fit(
        (x.clone(), y.clone()),
        FitOptions::new().epochs(1).verbose(0),
    )?;
    let logs = model.evaluate(
        (x.clone(), y.clone()),
        EvaluateOptions::new().batch_size(7).verbose(0),
    )?;
    assert_eq!(logs.keys().collect::<Vec<_>>(), vec!["loss", "mae", "mse"]);
    let pred = model
        .predict(x.clone(), PredictOptions::new().verbose(0))?
        .into_tensor()?;
    let mse = (&pred - &y)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    let mae = (&pred - &y)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    assert_close(logs.get("loss").unwrap(), mse, 1e-5, "loss");
    assert_close(logs.get("mse").unwrap(), mse, 1e-5, "mse");
    assert_close(logs.get("mae").unwrap(), mae, 1e-5, "mae");

    // Metrics are reset at the start of evaluate: after evaluating other data, evaluating the same
    // data again gives the same numbers.
    let other = model.evaluate(
        (x.narrow(0, 0, 5)?, y.narrow(0, 0, 5)?.affine(1.0, 3.0)?),
        EvaluateOptions::new().verbose(0),
    )?;
    assert!(other.get("loss").unwrap() > 2.0 * logs.get("loss").unwrap());
    let again = model.evaluate(
        (x.clone(), y.clone()),
        EvaluateOptions::new().batch_size(7).verbose(0),
    )?;
    assert_eq!(logs, again);

    // The list form follows `metrics` order (loss, mse, mae), not the alphabetical one.
    let values = model.evaluate_values((x, y), EvaluateOptions::new().batch_size(7).verbose(0))?;
    assert_eq!(
        values,
        vec![
            logs.get("loss").unwrap(),
            logs.get("mse").unwrap(),
            logs.get("mae").unwrap()
        ]
    );
    Ok(())
}

/// Default steps plus a custom `Mean` of the epoch index, listed in `metrics()`.
struct EpochMean {
    inner: Functional,
    epoch_value: Mean,
}

impl Model for EpochMean {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        let mut logs = default_train_step(self, ctx, data)?;
        self.epoch_value.update_scalar(ctx.epoch() as f64, 1.0);
        logs.insert("epoch_value", self.epoch_value.result());
        Ok(logs)
    }
    fn metrics<'a>(&'a mut self, ctx: &'a mut StepContext) -> Vec<&'a mut dyn Metric> {
        let mut m = ctx.default_metrics();
        m.push(&mut self.epoch_value);
        m
    }
}

#[test]
fn metrics_are_reset_every_epoch_and_at_evaluate() -> Result<()> {
    let _g = serial();
    set_random_seed(10);
    let (x, y) = regression(30, 4);
    let mut model = EpochMean {
        inner: functional_regressor(4)?,
        epoch_value: Mean::new("epoch_value"),
    }
    .compile(Compile::new().optimizer("sgd").loss("mse"))?;
    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new().epochs(3).batch_size(10).verbose(0),
    )?;
    // Per-epoch values (0, 1, 2), not a mean accumulated since the start (0, 0.5, 1).
    assert_eq!(h.get("epoch_value"), &[0.0, 1.0, 2.0]);
    // evaluate resets every metric of `metrics()`, including ours that test_step never updates.
    let logs = model.evaluate((x, y), EvaluateOptions::new().verbose(0))?;
    assert_eq!(logs.get("epoch_value"), Some(0.0));
    assert!(logs.get("loss").unwrap() > 0.0);
    Ok(())
}

#[test]
fn predict_concatenates_batches_and_equals_call() -> Result<()> {
    let _g = serial();
    set_random_seed(11);
    let (x, _) = regression(10, 4);
    let mut model = compiled_mlp(4)?;
    let pred = model
        .predict(x.clone(), PredictOptions::new().batch_size(3).verbose(0))?
        .into_tensor()?;
    assert_eq!(pred.dims(), &[10, 1]);
    let direct = model.call(&Data::from(x.clone()), false)?.into_tensor()?;
    for (p, d) in to_vec(&pred).iter().zip(to_vec(&direct)) {
        assert!((p - d).abs() <= 1e-6, "{p} vs {d}");
    }
    // `steps` limits the number of batches.
    let part = model
        .predict(x, PredictOptions::new().batch_size(3).steps(2).verbose(0))?
        .into_tensor()?;
    assert_eq!(part.dims(), &[6, 1]);
    assert_eq!(to_vec(&part), to_vec(&pred)[..6].to_vec());
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Sample weights
// ------------------------------------------------------------------------------------------------

#[test]
fn unit_sample_weights_change_nothing() -> Result<()> {
    let _g = serial();
    set_random_seed(12);
    let (x, y) = regression(40, 4);
    let init = snapshot(&mlp(4));
    let run = |sw: Option<Tensor>| -> Result<History> {
        let mut m = compiled_mlp(4)?;
        m.set_weights(&init)?;
        let mut o = FitOptions::new()
            .epochs(3)
            .batch_size(16)
            .shuffle(false)
            .validation_split(0.25)
            .verbose(0);
        if let Some(sw) = sw {
            o = o.sample_weight(sw);
        }
        m.fit((x.clone(), y.clone()), o)
    };
    let plain = run(None)?;
    let ones = run(Some(Tensor::ones(
        40,
        candle_core::DType::F32,
        &ferrokeras::runtime::default_device(),
    )?))?;
    assert_histories_close(&plain, &ones, 1e-6);
    Ok(())
}

#[test]
fn weighted_metrics_use_sample_weights_and_metrics_ignore_them() -> Result<()> {
    let _g = serial();
    set_random_seed(13);
    let n = 20;
    let (x, y) = regression(n, 4);
    let w: Vec<f32> = (0..n)
        .map(|i| {
            if i % 4 == 0 {
                0.0
            } else {
                1.0 + i as f32 / 10.0
            }
        })
        .collect();
    let sw = Tensor::from_vec(w.clone(), n, &ferrokeras::runtime::default_device())?;
    let mut model = mlp(4).compile(
        Compile::new()
            .optimizer("sgd")
            .loss("mse")
            .metrics(["mae"])
            .weighted_metrics(["mse"]),
    )?;
    let logs = model.evaluate(
        (x.clone(), y.clone()),
        EvaluateOptions::new()
            .batch_size(n)
            .sample_weight(sw.clone())
            .verbose(0),
    )?;
    let pred = model
        .predict(x.clone(), PredictOptions::new().verbose(0))?
        .into_tensor()?;
    let err = to_vec(&(&pred - &y)?);
    let mae = err.iter().map(|e| e.abs() as f64).sum::<f64>() / n as f64;
    let wsum: f64 = w.iter().map(|&v| v as f64).sum();
    let wsq: f64 = err.iter().zip(&w).map(|(e, &v)| (e * e * v) as f64).sum();
    assert_close(
        logs.get("mae").unwrap(),
        mae,
        1e-5,
        "mae ignores sample weights",
    );
    assert_close(logs.get("mse").unwrap(), wsq / wsum, 1e-5, "weighted mse");
    // The loss: sum(loss * sw) / batch size (Keras's sum_over_batch_size).
    assert_close(
        logs.get("loss").unwrap(),
        wsq / n as f64,
        1e-5,
        "weighted loss",
    );

    // The same metric in both lists: the weighted one is renamed `weighted_<name>`.
    let mut model2 = mlp(4).compile(
        Compile::new()
            .optimizer("sgd")
            .loss("mse")
            .metrics(["mae"])
            .weighted_metrics(["mae"]),
    )?;
    model2.set_weights(&snapshot(&*model))?;
    let logs = model2.evaluate(
        (x, y),
        EvaluateOptions::new()
            .batch_size(n)
            .sample_weight(sw)
            .verbose(0),
    )?;
    let wmae = err
        .iter()
        .zip(&w)
        .map(|(e, &v)| (e.abs() * v) as f64)
        .sum::<f64>()
        / wsum;
    assert_close(logs.get("mae").unwrap(), mae, 1e-5, "mae");
    assert_close(
        logs.get("weighted_mae").unwrap(),
        wmae,
        1e-5,
        "weighted_mae",
    );
    Ok(())
}

/// The epoch of a training step and its inputs.
type EpochAndInputs = (usize, Vec<f32>);

/// A model that records the epoch and the inputs of every training step, then takes the
/// default step.
struct InputRecorder {
    inner: Sequential,
    steps: Arc<Mutex<Vec<EpochAndInputs>>>,
}

impl InputRecorder {
    /// The model, and the steps it records.
    fn new(inner: Sequential) -> (Self, Arc<Mutex<Vec<EpochAndInputs>>>) {
        let steps = Arc::new(Mutex::new(Vec::new()));
        (
            Self {
                inner,
                steps: steps.clone(),
            },
            steps,
        )
    }
}

impl Model for InputRecorder {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        let (x, _, _) = data.unpack_xy()?;
        self.steps
            .lock()
            .unwrap()
            .push((ctx.epoch(), to_vec(x.tensor()?)));
        default_train_step(self, ctx, data)
    }
}

/// A finite dataset with `steps_per_epoch`: the stream continues across epochs, the epoch during
/// which it runs out ends there, the next starts a new pass, and every pass reads each element
/// once (Keras's EpochIterator).
#[test]
fn steps_per_epoch_on_a_dataset_that_runs_out() -> Result<()> {
    let _g = serial();
    set_random_seed(8);
    // 7 samples, the sample's index as its only feature, batches of 2: 4 batches per pass.
    let x = Tensor::arange(0f32, 7.0, &candle_core::Device::Cpu)?.reshape((7, 1))?;
    let y = x.zeros_like()?;
    let ds = ferrokeras::data::Dataset::from_tensor_slices(Data::from(vec![x, y]))?.batch(2, false);
    let (model, firsts) = InputRecorder::new(mlp(1));
    let mut model = model.compile(Compile::new().optimizer("sgd").loss("mse"))?;
    let h = model.fit(
        ds,
        FitOptions::new().epochs(4).steps_per_epoch(3).verbose(0),
    )?;
    let seen = firsts.lock().unwrap().clone();
    let epochs: Vec<usize> = seen.iter().map(|(e, _)| *e).collect();
    // Epochs of 3 and 1 steps (the pass of 4 batches ends), then 3 of a new pass, then its last
    // one alone.
    assert_eq!(epochs, vec![0, 0, 0, 1, 2, 2, 2, 3]);
    let pass: Vec<f32> = vec![0., 1., 2., 3., 4., 5., 6.];
    let flat: Vec<f32> = seen.iter().flat_map(|(_, v)| v.clone()).collect();
    assert_eq!(flat[..7], pass[..], "the first pass, across epochs 1 and 2");
    assert_eq!(flat[7..14], pass[..], "a new pass in epoch 3");
    assert_eq!(h.get("loss").len(), 4);
    Ok(())
}

/// Class weights weigh training only: with `validation_split`, `val_loss` is the plain
/// evaluation of the held-out samples (Keras evaluates them without sample weights).
#[test]
fn class_weight_does_not_weigh_the_validation_split() -> Result<()> {
    let _g = serial();
    set_random_seed(9);
    let (x, _) = regression(40, 4);
    let labels: Vec<f32> = (0..40).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let y = Tensor::from_vec(labels, (40, 1), &candle_core::Device::Cpu)?;
    let mut model = Sequential::new()
        .input(&[4])
        .add(Dense::new(1).activation("sigmoid")?)
        .compile(
            Compile::new()
                .optimizer("adam")
                .loss("binary_crossentropy")
                .metrics(["accuracy"]),
        )?;
    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new()
            .batch_size(8)
            .validation_split(0.25)
            .class_weight([(0, 0.2), (1, 5.0)])
            .verbose(0),
    )?;
    let held_out = model.evaluate(
        (x.narrow(0, 30, 10)?, y.narrow(0, 30, 10)?),
        EvaluateOptions::new().verbose(0),
    )?;
    assert_close(
        h.get("val_loss")[0],
        held_out.get("loss").unwrap(),
        1e-6,
        "val_loss",
    );
    Ok(())
}

/// `class_weight` with a dataset weighs each batch by its labels, as Keras maps it over a
/// `tf.data.Dataset`: the same history and weights as the same batches from arrays (sparse and
/// one-hot labels); a dataset that already yields sample weights is refused.
#[test]
fn class_weight_over_a_dataset_weighs_each_batch() -> Result<()> {
    let _g = serial();
    let (x, _) = regression(24, 4);
    let sparse: Vec<f32> = (0..24).map(|i| (i % 3) as f32).collect();
    let sparse = Tensor::from_vec(sparse, (24, 1), &candle_core::Device::Cpu)?;
    let one_hot = {
        let rows: Vec<Vec<f32>> = (0..24)
            .map(|i| (0..3).map(|c| (i % 3 == c) as u8 as f32).collect())
            .collect();
        Tensor::new(rows, &candle_core::Device::Cpu)?
    };
    let cw = [(0, 0.5), (1, 2.0), (2, 3.0)];
    for (y, loss) in [
        (sparse, "sparse_categorical_crossentropy"),
        (one_hot, "categorical_crossentropy"),
    ] {
        let run = |data: ferrokeras::trainer::Inputs| -> Result<(Vec<f64>, Vec<Vec<f32>>)> {
            set_random_seed(11);
            let mut model = Sequential::new()
                .input(&[4])
                .add(Dense::new(3).activation("softmax")?)
                .compile(Compile::new().optimizer("sgd").loss(loss))?;
            let h = model.fit(
                data,
                FitOptions::new()
                    .epochs(2)
                    .batch_size(8)
                    .shuffle(false)
                    .class_weight(cw)
                    .verbose(0),
            )?;
            let w = model.variables()[0]
                .value()
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok((h.get("loss").to_vec(), vec![w]))
        };
        let from_arrays = run((x.clone(), y.clone()).into())?;
        let ds = ferrokeras::data::Dataset::from_tensor_slices(Data::from(vec![x.clone(), y]))?
            .batch(8, false);
        let from_dataset = run(ds.into())?;
        assert_eq!(from_arrays.0.len(), 2);
        for (a, b) in from_arrays.0.iter().zip(&from_dataset.0) {
            assert_close(*b, *a, 1e-6, loss);
        }
        for (a, b) in from_arrays.1[0].iter().zip(&from_dataset.1[0]) {
            assert!((a - b).abs() < 1e-6, "{loss}: weights {a} vs {b}");
        }
    }
    // A dataset with sample weights and class weights.
    let sw = Tensor::ones(24, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let y = Tensor::zeros((24, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let ds =
        ferrokeras::data::Dataset::from_tensor_slices(Data::from(vec![x, y, sw]))?.batch(8, false);
    let mut model = Sequential::new()
        .input(&[4])
        .add(Dense::new(1))
        .compile(Compile::new().optimizer("sgd").loss("mse"))?;
    let err = model
        .fit(ds, FitOptions::new().class_weight([(0, 2.0)]).verbose(0))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("You cannot `class_weight` and `sample_weight`"),
        "{err}"
    );
    Ok(())
}

/// `validation_steps` bounds validation, which makes a validation dataset that repeats forever
/// usable; every validation reads the same first batches (an unshuffled dataset), so `val_loss`
/// equals `evaluate` with as many steps.
#[test]
fn validation_steps_bound_an_endless_validation_dataset() -> Result<()> {
    let _g = serial();
    set_random_seed(10);
    let (x, y) = regression(24, 4);
    let (vx, vy) = regression(12, 4);
    let val = ferrokeras::data::Dataset::from_tensor_slices(Data::from(vec![vx, vy]))?
        .batch(4, false)
        .repeat(None);
    let mut model = compiled_mlp(4)?;
    let h = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(2)
            .batch_size(8)
            .validation_data(val.clone())
            .validation_steps(2)
            .verbose(0),
    )?;
    assert_eq!(h.get("val_loss").len(), 2);
    let logs = model.evaluate(val, EvaluateOptions::new().steps(2).verbose(0))?;
    assert_close(
        h.get("val_loss")[1],
        logs.get("loss").unwrap(),
        1e-6,
        "val_loss",
    );
    let msg = model
        .fit(
            regression(8, 4),
            FitOptions::new()
                .validation_data(regression(4, 4))
                .validation_steps(0)
                .verbose(0),
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("validation_steps=0"), "{msg}");
    Ok(())
}

/// Compiled without a loss, a model whose only loss is a regularizer trains on it through the
/// default step, and its logs report it as `loss` (Keras's loss tracker): the L2 penalty of the
/// kernel as it was before each update, averaged over the epoch's batches.
#[test]
fn regularization_alone_is_reported_as_the_loss() -> Result<()> {
    let _g = serial();
    set_random_seed(11);
    let mut model = Sequential::new()
        .input(&[3])
        .add(Dense::new(2).kernel_regularizer(ferrokeras::layers::Regularizer::L2(0.1)))
        .compile(Compile::new().optimizer(Sgd::new(0.0)))?;
    let k = model.get_weights()[0]
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()? as f64
        * 0.1;
    let (x, y) = regression(8, 3);
    let h = model.fit(
        (x.clone(), y.clone()),
        FitOptions::new().batch_size(4).verbose(0),
    )?;
    assert_eq!(h.history.keys().collect::<Vec<_>>(), vec!["loss"]);
    assert_close(h.get("loss")[0], k, 1e-5, "loss");
    let logs = model.evaluate((x, y), EvaluateOptions::new().verbose(0))?;
    assert_close(logs.get("loss").unwrap(), k, 1e-5, "evaluate loss");
    Ok(())
}

/// Each `fit` on the same shuffled dataset goes on with its next iteration (a new order, as a new
/// `tf.data` iterator reshuffles), and a dataset built again with the same seed replays them.
#[test]
fn fits_on_one_dataset_go_on_with_new_orders() -> Result<()> {
    let _g = serial();
    let dataset = || -> Result<ferrokeras::data::Dataset> {
        let x = Tensor::arange(0f32, 16.0, &candle_core::Device::Cpu)?.reshape((16, 1))?;
        let y = x.zeros_like()?;
        Ok(
            ferrokeras::data::Dataset::from_tensor_slices(Data::from(vec![x, y]))?
                .shuffle(16, Some(3))
                .batch(16, false),
        )
    };
    let orders = |ds: &ferrokeras::data::Dataset, fits: usize| -> Result<Vec<Vec<f32>>> {
        let (model, seen) = InputRecorder::new(mlp(1));
        let mut model = model.compile(Compile::new().optimizer("sgd").loss("mse"))?;
        let mut out = Vec::new();
        for _ in 0..fits {
            model.fit(ds.clone(), FitOptions::new().verbose(0))?;
            let steps = std::mem::take(&mut *seen.lock().unwrap());
            out.push(steps.into_iter().flat_map(|(_, v)| v).collect());
        }
        Ok(out)
    };
    let first = orders(&dataset()?, 2)?;
    assert_ne!(first[0], first[1], "the second fit reads a new order");
    let mut sorted = first[1].clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, (0..16).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(
        orders(&dataset()?, 2)?,
        first,
        "the same seed, the same orders"
    );
    Ok(())
}

/// A frozen layer (Keras's `layer.trainable = False`) keeps its weights through `fit`, counts as
/// non-trainable in `summary`, and a frozen BatchNormalization runs in inference mode: its moving
/// statistics stay, and training-mode output equals inference-mode output.
#[test]
fn frozen_layers_keep_their_weights() -> Result<()> {
    let _g = serial();
    set_random_seed(12);
    use ferrokeras::layers::{BatchNormalization, Layer};
    let (x, y) = regression(32, 4);
    let mut model = Sequential::new()
        .input(&[4])
        .add(Dense::new(6).activation("relu")?)
        .add(BatchNormalization::new())
        .add(Dense::new(1))
        .compile(Compile::new().optimizer(Adam::new(0.05)).loss("mse"))?;
    model.layers()[0].set_trainable(false);
    model.layers()[1].set_trainable(false);
    assert_eq!(model.trainable_variables().len(), 2);
    assert!(
        model.summary().contains(" Trainable params: 7 "),
        "{}",
        model.summary()
    );
    let before = snapshot(&*model);
    model.fit(
        (x.clone(), y),
        FitOptions::new().epochs(2).batch_size(8).verbose(0),
    )?;
    let after = snapshot(&*model);
    // Dense 0 (kernel, bias) and BN (gamma, beta, moving mean, moving variance) unchanged; the
    // last Dense trained.
    for i in 0..6 {
        assert_eq!(to_vec(&before[i]), to_vec(&after[i]), "weight {i}");
    }
    assert_ne!(to_vec(&before[6]), to_vec(&after[6]));
    let bn = &mut model.layers_mut()[1];
    let h = ferrokeras::random::uniform(&[5, 6], 0.0, 2.0, &candle_core::Device::Cpu)?;
    let trained = bn.call(&h, true)?;
    let inferred = bn.call(&h, false)?;
    assert_eq!(to_vec(&trained), to_vec(&inferred));
    // Unfrozen, it trains again.
    model.layers()[0].set_trainable(true);
    assert_eq!(model.trainable_variables().len(), 4);
    Ok(())
}

/// A convolution's kernel regularizer adds `l2 · Σ k²` to the loss `evaluate` reports (as a
/// Dense layer's does), and survives the model's JSON.
#[test]
fn convolution_regularizers_add_to_the_loss() -> Result<()> {
    use ferrokeras::layers::{Conv2D, Flatten, Regularizer};
    let _g = serial();
    set_random_seed(12);
    let x = ferrokeras::random::uniform(&[4, 5, 5, 1], -1.0, 1.0, &candle_core::Device::Cpu)?;
    let y = ferrokeras::random::uniform(&[4, 18], -1.0, 1.0, &candle_core::Device::Cpu)?;
    let make = |l2: Option<f32>| -> Result<Sequential> {
        let mut conv = Conv2D::new(2, (3, 3)).named("conv");
        if let Some(l2) = l2 {
            conv = conv.kernel_regularizer(Regularizer::L2(l2));
        }
        Ok(Sequential::new()
            .input(&[5, 5, 1])
            .add(conv)
            .add(Flatten::new()))
    };
    let plain = make(None)?;
    let mut regularized = make(Some(0.01))?;
    regularized.set_weights(&plain.get_weights())?;
    let kernel = plain.get_weights()[0]
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()? as f64;
    let mut losses = Vec::new();
    for m in [plain, regularized] {
        let json = m.to_json()?;
        let mut m = m.compile(Compile::new().optimizer("sgd").loss("mse"))?;
        let logs = m.evaluate((x.clone(), y.clone()), EvaluateOptions::new().verbose(0))?;
        losses.push(logs.get("loss").unwrap());
        assert_eq!(Sequential::from_json(&json)?.to_json()?, json);
    }
    assert_close(
        losses[1],
        losses[0] + 0.01 * kernel,
        1e-5,
        "regularized loss",
    );
    Ok(())
}

/// `train_on_batch`, `test_on_batch` and `predict_on_batch` as Keras 3 gives them (checked with
/// Keras 3.15.1, JAX backend, on this model: kernel of ones, no bias, SGD at rate 0): each call
/// resets the metrics, so its logs are its batch's values; a sample weight weighs the loss over
/// the batch size and the metric over the weights.
#[test]
fn on_batch_methods_report_their_batch_as_keras_does() {
    let _g = serial();
    let dev = ferrokeras::runtime::default_device();
    let t = |v: &[f32], shape: (usize, usize)| Tensor::from_vec(v.to_vec(), shape, &dev).unwrap();
    let model = Sequential::new().input(&[2]).add(
        Dense::new(1)
            .kernel_initializer("ones")
            .unwrap()
            .bias_initializer("zeros")
            .unwrap(),
    );
    let mut model = Trainer::new(model)
        .compile(
            Compile::new()
                .optimizer(Sgd::new(0.0))
                .loss("mse")
                .metrics(["mae"]),
        )
        .unwrap();
    let (x1, x2) = (t(&[1., 0., 0., 1.], (2, 2)), t(&[2., 0., 0., 2.], (2, 2)));
    let y = t(&[0., 0.], (2, 1));
    let pairs = |l: &Logs| {
        l.iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Vec<_>>()
    };
    let want = |loss: f64, mae: f64| vec![("loss".to_string(), loss), ("mae".to_string(), mae)];
    let logs = model.train_on_batch((x1.clone(), y.clone())).unwrap();
    assert_eq!(pairs(&logs), want(1.0, 1.0));
    let logs = model.train_on_batch((x2.clone(), y.clone())).unwrap();
    assert_eq!(pairs(&logs), want(4.0, 2.0));
    let logs = model.test_on_batch((x1.clone(), y.clone())).unwrap();
    assert_eq!(pairs(&logs), want(1.0, 1.0));
    let logs = model.test_on_batch((x2.clone(), y.clone())).unwrap();
    assert_eq!(pairs(&logs), want(4.0, 2.0));
    let sw = Tensor::from_vec(vec![1f32, 0.0], 2, &dev).unwrap();
    let logs = model.train_on_batch((x1.clone(), y.clone(), sw)).unwrap();
    assert_eq!(pairs(&logs), want(0.5, 1.0));
    let pred = model.predict_on_batch(x2).unwrap();
    assert_eq!(to_vec(pred.tensor().unwrap()), [2.0, 2.0]);
    // Without targets, a compiled loss has nothing to compare with.
    let err = model.test_on_batch(x1).unwrap_err().to_string();
    assert!(err.contains("targets"), "{err}");
}
