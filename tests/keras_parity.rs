//! Parity with Keras 3: every number checked here was produced by Keras 3 (JAX backend) with
//! `tests/fixtures/make_keras_fixtures.py`; see `tests/fixtures/README.md` for what each entry means.
//!
//! Each fixture group is one test that checks every case of the group and reports all failing
//! cases at once (run with `--nocapture` to see the largest relative error of each group).

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use serde_json::Value;

use ferrokeras::layers::{Activation, Dense, Layer, Regularizer};
use ferrokeras::losses::{
    BinaryCrossentropy, CategoricalCrossentropy, Huber, Loss, MeanAbsoluteError as MaeLoss,
    MeanSquaredError as MseLoss, SparseCategoricalCrossentropy,
};
use ferrokeras::metrics::{
    Accuracy, BinaryAccuracy, CategoricalAccuracy, Mean, MeanAbsoluteError, MeanSquaredError,
    Metric, RootMeanSquaredError, SparseCategoricalAccuracy, Sum, TopKCategoricalAccuracy,
};
use ferrokeras::model::LayerExt;
use ferrokeras::optimizers::{Adam, AdamW, ExponentialDecay, Optimizer, RmsProp, Sgd};
use ferrokeras::{
    Compile, EvaluateOptions, FitOptions, Functional, GradientTape, Input, Model, ModelExt,
    PredictOptions, Variable,
};

// ------------------------------------------------------------------------------------------------
// fixture loading
// ------------------------------------------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn fixtures() -> Value {
    let path = fixture_dir().join("keras_parity.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

fn npy(name: &str) -> Tensor {
    let path = fixture_dir().join(name);
    ferrokeras::data::read_npy(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A nested JSON list of numbers (or a number) as `(shape, row-major values)`.
fn flatten_json(v: &Value) -> (Vec<usize>, Vec<f32>) {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f32>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                } else {
                    assert_eq!(shape[depth], items.len(), "ragged JSON array");
                }
                for it in items {
                    walk(it, depth + 1, shape, out);
                }
            }
            Value::Number(n) => out.push(n.as_f64().expect("number") as f32),
            other => panic!("expected a number or a list, found {other}"),
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut out);
    (shape, out)
}

fn vals(v: &Value) -> Vec<f32> {
    flatten_json(v).1
}

fn tensor(v: &Value) -> Tensor {
    let (shape, data) = flatten_json(v);
    Tensor::from_vec(data, shape, &ferrokeras::runtime::default_device())
        .expect("tensor from fixture")
}

fn scalar(v: &Value) -> f32 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, found {v}")) as f32
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("tensor to vec")
}

fn cfg_f64(cfg: &Value, key: &str) -> f64 {
    cfg[key]
        .as_f64()
        .unwrap_or_else(|| panic!("config has no number `{key}`: {cfg}"))
}

fn cfg_bool(cfg: &Value, key: &str) -> bool {
    cfg[key]
        .as_bool()
        .unwrap_or_else(|| panic!("config has no bool `{key}`: {cfg}"))
}

// ------------------------------------------------------------------------------------------------
// comparison helpers
// ------------------------------------------------------------------------------------------------

/// Compares elementwise with numpy's `allclose` rule `|a - e| <= atol + rtol |e|`.
/// Returns the largest relative error `|a - e| / |e|` (absolute where `e == 0`), or a message
/// describing the worst offending element.
fn compare(actual: &[f32], expected: &[f32], rtol: f64, atol: f64) -> Result<f64, String> {
    compare_atols(actual, expected, rtol, &vec![atol; expected.len()])
}

/// [`compare`] with one absolute tolerance per element.
fn compare_atols(
    actual: &[f32],
    expected: &[f32],
    rtol: f64,
    atols: &[f64],
) -> Result<f64, String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "length mismatch: actual has {} values, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let mut max_rel = 0f64;
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (a as f64, e as f64);
        let diff = (a - e).abs();
        if !diff.is_finite() {
            return Err(format!(
                "element {i}: actual {a} vs expected {e} (not finite)"
            ));
        }
        let rel = if e == 0.0 { diff } else { diff / e.abs() };
        max_rel = max_rel.max(rel);
        let excess = diff - (atols[i] + rtol * e.abs());
        if excess > 0.0 && worst.is_none_or(|(_, w)| excess > w) {
            worst = Some((i, excess));
        }
    }
    match worst {
        None => Ok(max_rel),
        Some((i, _)) => {
            let (a, e) = (actual[i] as f64, expected[i] as f64);
            Err(format!(
                "element {i}: actual {} vs expected {} (abs err {:.3e}, rel err {:.3e}; rtol {rtol:e}, atol {:e}); max rel err {max_rel:.3e}\n      actual:   {actual:?}\n      expected: {expected:?}",
                actual[i],
                expected[i],
                (a - e).abs(),
                (a - e).abs() / e.abs(),
                atols[i],
            ))
        }
    }
}

/// Panics with a message naming `case` unless `actual` and `expected` are close; returns the largest
/// relative error.
fn assert_close(case: &str, actual: &[f32], expected: &[f32], rtol: f64, atol: f64) -> f64 {
    compare(actual, expected, rtol, atol).unwrap_or_else(|msg| panic!("{case}: {msg}"))
}

/// Collects the comparisons of one fixture group; `finish` panics listing every failing case.
struct Group {
    name: &'static str,
    failures: Vec<String>,
    max_rel: f64,
    worst_case: String,
    checks: usize,
}

impl Group {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            failures: Vec::new(),
            max_rel: 0.0,
            worst_case: String::new(),
            checks: 0,
        }
    }
    fn close(&mut self, case: &str, actual: &[f32], expected: &[f32], rtol: f64, atol: f64) {
        self.checks += 1;
        match compare(actual, expected, rtol, atol) {
            Ok(r) => self.record(case, r),
            Err(msg) => self.failures.push(format!("{case}: {msg}")),
        }
    }
    fn close_atols(
        &mut self,
        case: &str,
        actual: &[f32],
        expected: &[f32],
        rtol: f64,
        atols: &[f64],
    ) {
        self.checks += 1;
        match compare_atols(actual, expected, rtol, atols) {
            Ok(r) => self.record(case, r),
            Err(msg) => self.failures.push(format!("{case}: {msg}")),
        }
    }
    fn record(&mut self, case: &str, rel: f64) {
        if rel > self.max_rel || self.worst_case.is_empty() {
            self.max_rel = rel;
            self.worst_case = case.to_string();
        }
    }
    fn close_scalar(&mut self, case: &str, actual: f64, expected: f32, rtol: f64, atol: f64) {
        self.close(case, &[actual as f32], &[expected], rtol, atol);
    }
    fn fail(&mut self, case: &str, msg: impl std::fmt::Display) {
        self.checks += 1;
        self.failures.push(format!("{case}: {msg}"));
    }
    fn finish(self) {
        println!(
            "[{}] {} checks, {} failed, max relative error of the passing checks {:.3e} ({})",
            self.name,
            self.checks,
            self.failures.len(),
            self.max_rel,
            self.worst_case
        );
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} checks differ from Keras:\n  - {}",
            self.name,
            self.failures.len(),
            self.checks,
            self.failures.join("\n  - ")
        );
    }
}

// ------------------------------------------------------------------------------------------------
// activations
// ------------------------------------------------------------------------------------------------

#[test]
fn activations_match_keras() {
    let fx = fixtures();
    let a = &fx["activations"];
    let x = tensor(&a["x"]);
    let mut g = Group::new("activations");
    let cases: [(&str, Activation); 7] = [
        ("relu", Activation::Relu),
        ("sigmoid", Activation::Sigmoid),
        ("tanh", Activation::Tanh),
        ("softmax", Activation::Softmax),
        ("leaky_relu", Activation::LeakyRelu(0.2)),
        ("gelu", Activation::Gelu),
        ("linear", Activation::Linear),
    ];
    for (name, act) in cases {
        // the Keras name parses to the same activation (leaky_relu's default slope is 0.2)
        match name.parse::<Activation>() {
            Ok(parsed) if parsed == act => {}
            other => g.fail(
                name,
                format!("parsing {name:?} gave {other:?}, expected {act:?}"),
            ),
        }
        match act.apply(&x) {
            Ok(y) => g.close(name, &to_vec(&y), &vals(&a[name]), 1e-5, 1e-7),
            Err(e) => g.fail(name, e),
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------------
// losses
// ------------------------------------------------------------------------------------------------

fn loss_from_case(name: &str, cfg: &Value) -> Box<dyn Loss> {
    match name {
        "mse" => Box::new(MseLoss::new()),
        "mae" => Box::new(MaeLoss::new()),
        "huber" => Box::new(Huber::new(cfg_f64(cfg, "delta"))),
        "bce" | "bce_logits" => Box::new(
            BinaryCrossentropy::new()
                .from_logits(cfg_bool(cfg, "from_logits"))
                .label_smoothing(cfg_f64(cfg, "label_smoothing")),
        ),
        "cce" | "cce_logits" | "cce_logits_ls" => Box::new(
            CategoricalCrossentropy::new()
                .from_logits(cfg_bool(cfg, "from_logits"))
                .label_smoothing(cfg_f64(cfg, "label_smoothing")),
        ),
        "scce" | "scce_logits" => {
            Box::new(SparseCategoricalCrossentropy::new().from_logits(cfg_bool(cfg, "from_logits")))
        }
        other => panic!("unknown loss case {other:?} in the fixtures"),
    }
}

#[test]
fn losses_match_keras() {
    let fx = fixtures();
    let cases = fx["losses"].as_array().expect("losses list");
    assert_eq!(cases.len(), 10, "expected 10 loss cases");
    let mut g = Group::new("losses");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let loss = loss_from_case(name, &case["config"]);
        let y_true = tensor(&case["y_true"]);
        let y_pred = tensor(&case["y_pred"]);
        let sw = tensor(&case["sample_weight"]);

        match loss.compute(&y_true, &y_pred, None) {
            Ok(v) => g.close(
                &format!("{name} value"),
                &to_vec(&v),
                &[scalar(&case["value"])],
                1e-5,
                1e-7,
            ),
            Err(e) => g.fail(&format!("{name} value"), e),
        }
        match loss.compute(&y_true, &y_pred, Some(&sw)) {
            Ok(v) => g.close(
                &format!("{name} value_weighted"),
                &to_vec(&v),
                &[scalar(&case["value_weighted"])],
                1e-5,
                1e-7,
            ),
            Err(e) => g.fail(&format!("{name} value_weighted"), e),
        }

        // d loss / d y_pred of the unweighted loss
        let var = Variable::new("y_pred", &y_pred, true).expect("variable");
        let grad = loss
            .compute(&y_true, var.as_tensor(), None)
            .and_then(|l| GradientTape::gradient(&l, std::slice::from_ref(&var)));
        match grad {
            Ok(gr) => {
                let expected = tensor(&case["grad_y_pred"]);
                if gr[0].dims() != expected.dims() {
                    g.fail(
                        &format!("{name} grad_y_pred"),
                        format!("shape {:?}, expected {:?}", gr[0].dims(), expected.dims()),
                    );
                } else {
                    g.close(
                        &format!("{name} grad_y_pred"),
                        &to_vec(&gr[0]),
                        &to_vec(&expected),
                        1e-5,
                        1e-7,
                    );
                }
            }
            Err(e) => g.fail(&format!("{name} grad_y_pred"), e),
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------------
// metrics
// ------------------------------------------------------------------------------------------------

fn metric_from_case(name: &str, cfg: &Value) -> Box<dyn Metric> {
    match name {
        "mean" => Box::new(Mean::new("mean")),
        "sum" => Box::new(Sum::new("sum")),
        "mae" => Box::new(MeanAbsoluteError::new()),
        "mse" => Box::new(MeanSquaredError::new()),
        "rmse" => Box::new(RootMeanSquaredError::new()),
        "accuracy" => Box::new(Accuracy::new()),
        "binary_accuracy" => {
            Box::new(BinaryAccuracy::new().threshold(cfg_f64(cfg, "threshold") as f32))
        }
        "categorical_accuracy" => Box::new(CategoricalAccuracy::new()),
        "sparse_categorical_accuracy" => Box::new(SparseCategoricalAccuracy::new()),
        "top_k_categorical_accuracy" => {
            Box::new(TopKCategoricalAccuracy::new().k(cfg_f64(cfg, "k") as usize))
        }
        other => panic!("unknown metric case {other:?} in the fixtures"),
    }
}

/// Runs every update of a metric case (weighted or not) and returns `result()`.
fn run_metric(m: &mut dyn Metric, updates: &[Value], weighted: bool) -> ferrokeras::Result<f64> {
    for u in updates {
        let sw = if weighted {
            Some(tensor(&u["sample_weight"]))
        } else {
            None
        };
        if u.get("values").is_some() {
            m.update_values(&tensor(&u["values"]), sw.as_ref())?;
        } else {
            m.update_state(&tensor(&u["y_true"]), &tensor(&u["y_pred"]), sw.as_ref())?;
        }
    }
    Ok(m.result())
}

#[test]
fn metrics_match_keras() {
    let fx = fixtures();
    let cases = fx["metrics"].as_array().expect("metrics list");
    assert_eq!(cases.len(), 10, "expected 10 metric cases");
    let mut g = Group::new("metrics");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let updates = case["updates"].as_array().expect("updates");
        for (weighted, key) in [(false, "result"), (true, "result_weighted")] {
            let label = format!("{name} {key}");
            let mut m = metric_from_case(name, &case["config"]);
            match run_metric(m.as_mut(), updates, weighted) {
                Ok(r) => g.close_scalar(&label, r, scalar(&case[key]), 1e-5, 1e-7),
                Err(e) => g.fail(&label, e),
            }
            m.reset_state();
            if m.result() != 0.0 {
                g.fail(
                    &format!("{label} reset_state"),
                    format!("result() after reset_state is {}, expected 0", m.result()),
                );
            }
            // a reset metric accumulates from scratch
            match run_metric(m.as_mut(), updates, weighted) {
                Ok(r) => g.close_scalar(
                    &format!("{label} after reset"),
                    r,
                    scalar(&case[key]),
                    1e-5,
                    1e-7,
                ),
                Err(e) => g.fail(&format!("{label} after reset"), e),
            }
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------------
// Dense
// ------------------------------------------------------------------------------------------------

#[test]
fn dense_forward_backward_and_penalties_match_keras() {
    let fx = fixtures();
    let d = &fx["dense"];
    let x = tensor(&d["x"]);
    let kernel = tensor(&d["kernel"]);
    let bias = tensor(&d["bias"]);
    let upstream = tensor(&d["upstream"]);
    let act = d["activation"].as_str().expect("activation");
    let mut g = Group::new("dense");

    let mut dense = Dense::new(2).activation(act).expect("activation name");
    dense.call(&x, false).expect("first call builds the layer");
    dense
        .kernel()
        .expect("built kernel")
        .assign(&kernel)
        .expect("assign kernel");
    dense
        .bias()
        .expect("built bias")
        .assign(&bias)
        .expect("assign bias");

    let xv = Variable::new("x", &x, true).expect("x variable");
    let y = dense.call(xv.as_tensor(), false).expect("forward");
    g.close("forward y", &to_vec(&y), &vals(&d["y"]), 1e-5, 1e-6);

    let loss = (&y * &upstream)
        .and_then(|t| t.sum_all())
        .expect("sum(y * U)");
    g.close(
        "sum(y * U)",
        &to_vec(&loss),
        &[scalar(&d["loss"])],
        1e-5,
        1e-6,
    );

    let vars = [
        dense.kernel().unwrap().clone(),
        dense.bias().unwrap().clone(),
        xv.clone(),
    ];
    let grads = GradientTape::gradient(&loss, &vars).expect("gradients");
    for (grad, key) in grads.iter().zip(["grad_kernel", "grad_bias", "grad_x"]) {
        let expected = tensor(&d[key]);
        if grad.dims() != expected.dims() {
            g.fail(
                key,
                format!("shape {:?}, expected {:?}", grad.dims(), expected.dims()),
            );
        } else {
            g.close(key, &to_vec(grad), &to_vec(&expected), 1e-5, 1e-6);
        }
    }

    let k = dense.kernel().unwrap().as_tensor();
    for (reg, key) in [
        (Regularizer::L2(0.01), "l2_penalty"),
        (Regularizer::L1(0.01), "l1_penalty"),
    ] {
        match reg.penalty(k) {
            Ok(p) => g.close(key, &to_vec(&p), &[scalar(&d[key])], 1e-5, 1e-7),
            Err(e) => g.fail(key, e),
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------------
// optimizers
// ------------------------------------------------------------------------------------------------

fn optimizer_from_case(name: &str, cfg: &Value) -> Box<dyn Optimizer> {
    let adam_like = |a: Adam| {
        a.beta_1(cfg_f64(cfg, "beta_1"))
            .beta_2(cfg_f64(cfg, "beta_2"))
            .epsilon(cfg_f64(cfg, "epsilon"))
            .amsgrad(cfg_bool(cfg, "amsgrad"))
    };
    match name {
        "sgd" | "sgd_momentum" | "sgd_nesterov" => Box::new(
            Sgd::new(cfg_f64(cfg, "learning_rate"))
                .momentum(cfg_f64(cfg, "momentum"))
                .nesterov(cfg_bool(cfg, "nesterov")),
        ),
        "adam" | "adam_amsgrad" => Box::new(adam_like(Adam::new(cfg_f64(cfg, "learning_rate")))),
        "adamw" => Box::new(adam_like(AdamW::new(
            cfg_f64(cfg, "learning_rate"),
            cfg_f64(cfg, "weight_decay"),
        ))),
        "rmsprop" | "rmsprop_centered_momentum" => Box::new(
            RmsProp::new(cfg_f64(cfg, "learning_rate"))
                .rho(cfg_f64(cfg, "rho"))
                .momentum(cfg_f64(cfg, "momentum"))
                .epsilon(cfg_f64(cfg, "epsilon"))
                .centered(cfg_bool(cfg, "centered")),
        ),
        "adam_exp_decay" => {
            assert_eq!(cfg["schedule"], "exponential_decay");
            let schedule = ExponentialDecay::new(
                cfg_f64(cfg, "initial_learning_rate"),
                cfg_f64(cfg, "decay_steps") as u64,
                cfg_f64(cfg, "decay_rate"),
            )
            .unwrap()
            .staircase(cfg_bool(cfg, "staircase"));
            Box::new(adam_like(Adam::new(schedule)))
        }
        other => panic!("unknown optimizer case {other:?} in the fixtures"),
    }
}

#[test]
fn optimizers_match_keras() {
    let fx = fixtures();
    let cases = fx["optimizers"].as_array().expect("optimizers list");
    assert_eq!(cases.len(), 9, "expected 9 optimizer cases");
    let mut g = Group::new("optimizers");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let mut opt = optimizer_from_case(name, &case["config"]);
        let var = Variable::new("w", &tensor(&case["init"]), true).expect("variable");
        let grads = case["grads"].as_array().expect("grads");
        let values = case["values"].as_array().expect("values");
        assert_eq!(grads.len(), values.len());
        for (step, (grad, expected)) in grads.iter().zip(values).enumerate() {
            let label = format!("{name} step {}", step + 1);
            if let Err(e) = opt.apply(&[tensor(grad)], std::slice::from_ref(&var)) {
                g.fail(&label, e);
                break;
            }
            let rtol = if step == 0 { 1e-5 } else { 1e-4 };
            g.close(&label, &to_vec(&var.value()), &vals(expected), rtol, 1e-6);
        }
        if opt.iterations() != grads.len() as u64 {
            g.fail(
                name,
                format!(
                    "iterations() = {}, expected {}",
                    opt.iterations(),
                    grads.len()
                ),
            );
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------------
// model.fit
// ------------------------------------------------------------------------------------------------

/// `Input(&[32]) -> Dense(units, activation)` with weights `[kernel0, zeros(units)]`.
fn dense_model(kernel0: &Tensor, units: usize, activation: &str) -> Functional {
    let inputs = Input::new(&[32]);
    let outputs = Dense::new(units)
        .activation(activation)
        .expect("activation")
        .apply(&inputs)
        .expect("apply Dense");
    let mut model = Functional::new(&[inputs], &[outputs]).expect("functional model");
    let bias0 =
        Tensor::zeros(units, DType::F32, &ferrokeras::runtime::default_device()).expect("zeros");
    model
        .set_weights(&[kernel0.clone(), bias0])
        .expect("set_weights");
    model
}

fn check_history(g: &mut Group, history: &ferrokeras::callbacks::History, expected: &Value) {
    let expected = expected.as_object().expect("history object");
    let got_keys: Vec<&String> = history.history.keys().collect();
    let want_keys: Vec<&String> = expected.keys().collect();
    if got_keys != want_keys {
        g.fail(
            "history keys",
            format!("got {got_keys:?}, expected {want_keys:?}"),
        );
    }
    for (key, want) in expected {
        let got: Vec<f32> = history.get(key).iter().map(|&v| v as f32).collect();
        g.close(&format!("history[{key:?}]"), &got, &vals(want), 1e-4, 1e-6);
    }
}

fn check_final_weights(g: &mut Group, weights: &[Tensor], fx: &Value) {
    if weights.len() != 2 {
        g.fail(
            "get_weights",
            format!("{} tensors, expected 2", weights.len()),
        );
        return;
    }
    g.close(
        "final kernel",
        &to_vec(&weights[0]),
        &vals(&fx["final_kernel"]),
        1e-4,
        1e-6,
    );
    g.close(
        "final bias",
        &to_vec(&weights[1]),
        &vals(&fx["final_bias"]),
        1e-4,
        1e-6,
    );
}

#[test]
fn fit_guide1_matches_keras() {
    let fx = fixtures();
    let f = &fx["fit_guide1"];
    let (x, y, kernel0) = (
        npy("guide_x.npy"),
        npy("guide_y.npy"),
        npy("guide_kernel0.npy"),
    );
    let mut g = Group::new("fit_guide1");

    let mut model = dense_model(&kernel0, 1, "linear")
        .compile(
            Compile::new()
                .optimizer("adam")
                .loss("mse")
                .metrics(["mae"]),
        )
        .expect("compile");
    let history = model
        .fit(
            (x.clone(), y.clone()),
            FitOptions::new()
                .epochs(3)
                .batch_size(32)
                .shuffle(false)
                .verbose(0),
        )
        .expect("fit");
    check_history(&mut g, &history, &f["history"]);
    check_final_weights(&mut g, &model.get_weights(), f);

    let logs = model
        .evaluate(
            (x.clone(), y.clone()),
            EvaluateOptions::new().batch_size(32).verbose(0),
        )
        .expect("evaluate");
    for (key, want) in f["evaluate"].as_object().expect("evaluate object") {
        match logs.get(key) {
            Some(v) => g.close_scalar(&format!("evaluate[{key:?}]"), v, scalar(want), 1e-4, 1e-6),
            None => g.fail(
                &format!("evaluate[{key:?}]"),
                "missing from evaluate's logs",
            ),
        }
    }

    let x5 = x.narrow(0, 0, 5).expect("first 5 rows");
    let pred = model
        .predict(x5.clone(), PredictOptions::new().verbose(0))
        .expect("predict")
        .into_tensor()
        .expect("single output");
    let expected = tensor(&f["predict_first5"]);
    if pred.dims() != expected.dims() {
        g.fail(
            "predict first 5",
            format!("shape {:?}, expected {:?}", pred.dims(), expected.dims()),
        );
    } else {
        // predict is exactly `x @ kernel + bias` with the model's own trained weights ...
        let w = model.get_weights();
        let own = x5
            .to_device(w[0].device())
            .and_then(|x| x.matmul(&w[0]))
            .and_then(|t| t.broadcast_add(&w[1]))
            .expect("x @ kernel + bias");
        g.close(
            "predict == x @ kernel + bias",
            &to_vec(&pred),
            &to_vec(&own),
            1e-6,
            1e-7,
        );
        // ... and matches Keras to the accuracy of those weights: a prediction is a sum of 32
        // terms with cancellation, so its absolute tolerance is 1e-4 of sum_j |x_j k_j| + |b|
        // (the weights' own 1e-4 relative tolerance carried through the dot product).
        let xs = to_vec(&x5);
        let k = vals(&f["final_kernel"]);
        let b = vals(&f["final_bias"])[0];
        let atols: Vec<f64> = xs
            .chunks(k.len())
            .map(|row| {
                let terms: f64 = row.iter().zip(&k).map(|(a, b)| (a * b).abs() as f64).sum();
                1e-4 * (terms + b.abs() as f64)
            })
            .collect();
        g.close_atols(
            "predict first 5",
            &to_vec(&pred),
            &to_vec(&expected),
            1e-4,
            &atols,
        );
    }
    g.finish();
}

#[test]
fn fit_weighted_val_matches_keras() {
    let fx = fixtures();
    let f = &fx["fit_weighted_val"];
    let (x, y, kernel0, sw) = (
        npy("guide_x.npy"),
        npy("guide_y.npy"),
        npy("guide_kernel0.npy"),
        npy("guide_sw.npy"),
    );
    let mut g = Group::new("fit_weighted_val");

    let mut model = dense_model(&kernel0, 1, "linear")
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.01))
                .loss("mse")
                .metrics(["mae"]),
        )
        .expect("compile");
    let history = model
        .fit(
            (x, y),
            FitOptions::new()
                .sample_weight(sw)
                .epochs(2)
                .batch_size(50)
                .shuffle(false)
                .validation_split(0.2)
                .verbose(0),
        )
        .expect("fit");
    check_history(&mut g, &history, &f["history"]);
    check_final_weights(&mut g, &model.get_weights(), f);
    g.finish();
}

#[test]
fn fit_class_weight_matches_keras() {
    let fx = fixtures();
    let f = &fx["fit_class_weight"];
    let (x, labels, kernel0) = (
        npy("guide_x.npy"),
        npy("cls_labels.npy"),
        npy("cls_kernel0.npy"),
    );
    let mut g = Group::new("fit_class_weight");

    let mut model = dense_model(&kernel0, 3, "softmax")
        .compile(
            Compile::new()
                .optimizer(Sgd::new(0.1))
                .loss("sparse_categorical_crossentropy")
                .metrics(["accuracy"]),
        )
        .expect("compile");
    let history = model
        .fit(
            (x, labels),
            FitOptions::new()
                .class_weight([(0, 1.0), (1, 2.0), (2, 0.5)])
                .epochs(2)
                .batch_size(100)
                .shuffle(false)
                .verbose(0),
        )
        .expect("fit");
    check_history(&mut g, &history, &f["history"]);
    check_final_weights(&mut g, &model.get_weights(), f);
    g.finish();
}

/// The helper itself: close values pass, and a failing comparison names the case.
#[test]
fn assert_close_accepts_close_values() {
    let rel = assert_close("ok", &[1.0, 0.0, -2.0], &[1.000_001, 0.0, -2.0], 1e-5, 0.0);
    assert!(rel < 1e-5, "{rel}");
    assert!(compare(&[1.0], &[1.0, 2.0], 1e-5, 0.0).is_err());
}

#[test]
#[should_panic(expected = "my case: element 1: actual 2.5 vs expected 2")]
fn assert_close_names_the_failing_case() {
    assert_close("my case", &[1.0, 2.5], &[1.0, 2.0], 1e-5, 1e-7);
}
