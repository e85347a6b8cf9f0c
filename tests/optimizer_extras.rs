//! Learning-rate schedules, gradient clipping, gradient accumulation and EMA against Keras 3
//! (`tests/fixtures/keras_optimizers.json`, made by `tests/fixtures/make_keras_optimizer_fixtures.py`),
//! plus checkpoint round trips of optimizer state (`state()` / `load_state()`).
//!
//! Run with `--nocapture` to see the largest relative error of each group.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use serde_json::Value;

use ferrokeras::Variable;
use ferrokeras::optimizers::{
    Adam, CosineDecay, ExponentialDecay, InverseTimeDecay, LearningRate, LearningRateSchedule,
    Optimizer, PiecewiseConstantDecay, PolynomialDecay, RmsProp, Sgd,
};

// ------------------------------------------------------------------------------------------------
// fixtures and comparison
// ------------------------------------------------------------------------------------------------

fn fixtures() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("keras_optimizers.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

/// A nested JSON list of numbers as `(shape, row-major values)`.
fn flatten_json(v: &Value) -> (Vec<usize>, Vec<f32>) {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f32>) {
        match v {
            Value::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
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

fn tensor(v: &Value) -> Tensor {
    let (shape, data) = flatten_json(v);
    Tensor::from_vec(data, shape, &ferrokeras::runtime::default_device())
        .expect("tensor from fixture")
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("tensor to vec")
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, found {v}"))
}

/// Collects comparisons (`|a - e| <= atol + rtol |e|`); `finish` panics listing every failure.
struct Group {
    name: &'static str,
    failures: Vec<String>,
    max_rel: f64,
    worst: String,
    checks: usize,
}

impl Group {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            failures: Vec::new(),
            max_rel: 0.0,
            worst: String::new(),
            checks: 0,
        }
    }
    fn close(&mut self, case: &str, actual: &[f32], expected: &[f32], rtol: f64, atol: f64) {
        self.checks += 1;
        if actual.len() != expected.len() {
            self.failures.push(format!(
                "{case}: {} values, expected {}",
                actual.len(),
                expected.len()
            ));
            return;
        }
        let mut max_rel = 0f64;
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            let (a, e) = (f64::from(a), f64::from(e));
            let diff = (a - e).abs();
            let rel = if e == 0.0 { diff } else { diff / e.abs() };
            if !diff.is_finite() || diff > atol + rtol * e.abs() {
                self.failures.push(format!(
                    "{case}: element {i}: actual {a} vs expected {e} (rel err {rel:.3e}, rtol {rtol:e})\n      actual:   {actual:?}\n      expected: {expected:?}"
                ));
                return;
            }
            max_rel = max_rel.max(rel);
        }
        if max_rel >= self.max_rel {
            self.max_rel = max_rel;
            self.worst = case.to_string();
        }
    }
    fn check(&mut self, case: &str, ok: bool, msg: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(format!("{case}: {}", msg()));
        }
    }
    fn finish(self) {
        println!(
            "[{}] {} checks, {} failed, max relative error {:.3e} ({})",
            self.name,
            self.checks,
            self.failures.len(),
            self.max_rel,
            self.worst
        );
        assert!(
            self.failures.is_empty(),
            "{} of {} `{}` checks failed:\n  {}",
            self.failures.len(),
            self.checks,
            self.name,
            self.failures.join("\n  ")
        );
    }
}

// ------------------------------------------------------------------------------------------------
// building schedules and optimizers from the Keras configs
// ------------------------------------------------------------------------------------------------

/// Reads every key of a Keras config exactly once, so a key the Rust side ignores fails the test.
struct Cfg<'a> {
    what: String,
    map: &'a serde_json::Map<String, Value>,
    used: Vec<&'static str>,
}

impl<'a> Cfg<'a> {
    fn new(what: impl Into<String>, v: &'a Value) -> Self {
        Self {
            what: what.into(),
            map: v.as_object().expect("config object"),
            used: Vec::new(),
        }
    }
    fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn f64(&mut self, key: &'static str) -> Option<f64> {
        self.raw(key).map(|v| v.as_f64().expect("number"))
    }
    fn req(&mut self, key: &'static str) -> f64 {
        let what = self.what.clone();
        self.f64(key)
            .unwrap_or_else(|| panic!("{what}: config has no `{key}`"))
    }
    fn u64(&mut self, key: &'static str) -> Option<u64> {
        self.raw(key).map(|v| v.as_u64().expect("integer"))
    }
    fn bool(&mut self, key: &'static str) -> bool {
        self.raw(key).is_some_and(|v| v.as_bool().expect("bool"))
    }
    fn done(self) {
        for k in self.map.keys() {
            assert!(
                self.used.contains(&k.as_str()),
                "{}: config key `{k}` is not handled by the test",
                self.what
            );
        }
    }
}

fn schedule_from(class: &str, cfg: &Value) -> Box<dyn LearningRateSchedule> {
    let mut c = Cfg::new(class, cfg);
    let s: Box<dyn LearningRateSchedule> = match class {
        "PiecewiseConstantDecay" => {
            let b: Vec<u64> = arr(c.raw("boundaries").expect("boundaries"))
                .iter()
                .map(|v| v.as_u64().expect("boundary"))
                .collect();
            let v: Vec<f64> = arr(c.raw("values").expect("values"))
                .iter()
                .map(|v| v.as_f64().expect("value"))
                .collect();
            Box::new(PiecewiseConstantDecay::new(&b, &v).expect("piecewise"))
        }
        "PolynomialDecay" => Box::new(
            PolynomialDecay::new(
                c.req("initial_learning_rate"),
                c.u64("decay_steps").expect("decay_steps"),
                c.req("end_learning_rate"),
            )
            .unwrap()
            .power(c.req("power"))
            .cycle(c.bool("cycle")),
        ),
        "InverseTimeDecay" => Box::new(
            InverseTimeDecay::new(
                c.req("initial_learning_rate"),
                c.u64("decay_steps").expect("decay_steps"),
                c.req("decay_rate"),
            )
            .unwrap()
            .staircase(c.bool("staircase")),
        ),
        "ExponentialDecay" => Box::new(
            ExponentialDecay::new(
                c.req("initial_learning_rate"),
                c.u64("decay_steps").expect("decay_steps"),
                c.req("decay_rate"),
            )
            .unwrap()
            .staircase(c.bool("staircase")),
        ),
        "CosineDecay" => Box::new(
            CosineDecay::new(
                c.req("initial_learning_rate"),
                c.u64("decay_steps").expect("decay_steps"),
            )
            .unwrap()
            .alpha(c.req("alpha"))
            .warmup_target(c.f64("warmup_target"))
            .warmup_steps(c.u64("warmup_steps").unwrap_or(0)),
        ),
        other => panic!("unknown schedule class {other}"),
    };
    c.done();
    s
}

/// A boxed schedule as a [`LearningRateSchedule`] value for the optimizers' constructors.
struct Boxed(Box<dyn LearningRateSchedule>);

impl LearningRateSchedule for Boxed {
    fn at(&self, step: u64) -> f64 {
        self.0.at(step)
    }
}

/// Builds the Keras optimizer `class(**config)` (`learning_rate` from `schedule` when given).
fn optimizer_from(case: &Value) -> Box<dyn Optimizer> {
    let name = case["name"].as_str().expect("name");
    let class = case["class"].as_str().expect("class");
    let mut c = Cfg::new(name, &case["config"]);
    let lr: LearningRate = match case["schedule"].as_object() {
        Some(s) => Boxed(schedule_from(
            s["class"].as_str().expect("schedule class"),
            &s["config"],
        ))
        .into(),
        None => c.req("learning_rate").into(),
    };
    let clipnorm = c.f64("clipnorm");
    let clipvalue = c.f64("clipvalue");
    let global_clipnorm = c.f64("global_clipnorm");
    let accumulation = c.u64("gradient_accumulation_steps");
    let use_ema = c.bool("use_ema");
    let ema_momentum = c.f64("ema_momentum").unwrap_or(0.99);
    let ema_overwrite = c.u64("ema_overwrite_frequency");
    macro_rules! common {
        ($o:expr) => {
            Box::new(
                $o.clipnorm(clipnorm)
                    .clipvalue(clipvalue)
                    .global_clipnorm(global_clipnorm)
                    .gradient_accumulation_steps(accumulation)
                    .use_ema(use_ema)
                    .ema_momentum(ema_momentum)
                    .ema_overwrite_frequency(ema_overwrite),
            )
        };
    }
    let opt: Box<dyn Optimizer> = match class {
        "SGD" => common!(
            Sgd::new(lr)
                .momentum(c.f64("momentum").unwrap_or(0.0))
                .nesterov(c.bool("nesterov"))
        ),
        "Adam" => common!(
            Adam::new(lr)
                .beta_1(c.req("beta_1"))
                .beta_2(c.req("beta_2"))
                .epsilon(c.req("epsilon"))
                .amsgrad(c.bool("amsgrad"))
        ),
        other => panic!("unknown optimizer class {other}"),
    };
    c.done();
    opt
}

fn state_entry(opt: &dyn Optimizer, key: &str) -> Option<Tensor> {
    opt.state()
        .expect("state")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, t)| t)
}

// ------------------------------------------------------------------------------------------------
// Keras parity
// ------------------------------------------------------------------------------------------------

#[test]
fn schedules_match_keras() {
    let fx = fixtures();
    let mut g = Group::new("schedules");
    for case in arr(&fx["schedules"]) {
        let name = case["name"].as_str().expect("name");
        let s = schedule_from(case["class"].as_str().expect("class"), &case["config"]);
        for (step, expected) in arr(&case["steps"]).iter().zip(arr(&case["values"])) {
            let step = step.as_u64().expect("step");
            let expected = expected.as_f64().expect("value") as f32;
            g.close(
                &format!("{name} step {step}"),
                &[s.at(step) as f32],
                &[expected],
                1e-5,
                1e-8,
            );
        }
    }
    g.finish();
}

#[test]
fn clipping_accumulation_ema_match_keras() {
    let fx = fixtures();
    let cases = arr(&fx["optimizers"]);
    assert!(cases.len() >= 10, "expected the optimizer cases");
    let mut g = Group::new("optimizer options");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let mut opt = optimizer_from(case);
        let names: Vec<&str> = arr(&case["names"])
            .iter()
            .map(|v| v.as_str().expect("name"))
            .collect();
        let vars: Vec<Variable> = names
            .iter()
            .zip(arr(&case["init"]))
            .map(|(n, init)| Variable::new(*n, &tensor(init), true).expect("variable"))
            .collect();
        for (step, grads) in arr(&case["grads"]).iter().enumerate() {
            let label = format!("{name} step {}", step + 1);
            let grads: Vec<Tensor> = arr(grads).iter().map(tensor).collect();
            if let Err(e) = opt.apply(&grads, &vars) {
                g.check(&label, false, || e.to_string());
                break;
            }
            let rtol = if step == 0 { 1e-5 } else { 1e-4 };
            for (i, v) in vars.iter().enumerate() {
                let expected = flatten_json(&case["values"][step][i]).1;
                g.close(
                    &format!("{label} {}", v.name()),
                    &to_vec(&v.value()),
                    &expected,
                    rtol,
                    1e-6,
                );
                if let Some(ema) = case.get("ema") {
                    let expected = flatten_json(&ema[step][i]).1;
                    match state_entry(&*opt, &format!("{}/ema", v.name())) {
                        Some(t) => g.close(
                            &format!("{label} {}/ema", v.name()),
                            &to_vec(&t),
                            &expected,
                            rtol,
                            1e-6,
                        ),
                        None => g.check(&label, false, || "no `/ema` in the state".into()),
                    }
                }
            }
            let it = case["iterations"][step].as_u64().expect("iterations");
            g.check(&label, opt.iterations() == it, || {
                format!("iterations() = {}, Keras {it}", opt.iterations())
            });
            let raw = case["raw_iterations"][step].as_u64().expect("raw");
            let state_raw = state_entry(&*opt, "iterations")
                .and_then(|t| t.to_dtype(DType::F64).ok())
                .and_then(|t| t.to_scalar::<f64>().ok());
            g.check(&label, state_raw == Some(raw as f64), || {
                format!("state iterations = {state_raw:?}, Keras `_iterations` {raw}")
            });
        }
    }
    g.finish();
}

// ------------------------------------------------------------------------------------------------
// behaviour beyond the fixtures
// ------------------------------------------------------------------------------------------------

fn grad_seq(seed: u64, shape: &[usize], n: usize) -> Vec<Tensor> {
    // A small deterministic sequence without a random-number dependency.
    let len: usize = shape.iter().product();
    (0..n)
        .map(|k| {
            let data: Vec<f32> = (0..len)
                .map(|i| {
                    let x = (seed as f32 + 1.0) * 0.37 + k as f32 * 1.13 + i as f32 * 0.71;
                    x.sin() * 1.5 + 0.1
                })
                .collect();
            Tensor::from_vec(data, shape, &ferrokeras::runtime::default_device()).expect("grad")
        })
        .collect()
}

fn fresh_vars() -> Vec<Variable> {
    let w = Tensor::new(
        &[[0.5f32, -0.25, 1.0], [0.125, -1.5, 0.75]],
        &ferrokeras::runtime::default_device(),
    )
    .expect("w");
    let b = Tensor::new(&[0.1f32, -0.2, 0.3], &ferrokeras::runtime::default_device()).expect("b");
    vec![
        Variable::new("dense/kernel", &w, true).expect("var"),
        Variable::new("dense/bias", &b, true).expect("var"),
    ]
}

fn bits(t: &Tensor) -> Vec<u32> {
    to_vec(t).iter().map(|x| x.to_bits()).collect()
}

/// Trains `make()` for `before` steps, copies its state and the variables into a fresh optimizer
/// and fresh variables (same names), then checks both continue bit-identically for `after` steps.
fn check_round_trip(
    label: &str,
    make: &dyn Fn() -> Box<dyn Optimizer>,
    before: usize,
    after: usize,
) {
    let vars = fresh_vars();
    let gw = grad_seq(1, &[2, 3], before + after);
    let gb = grad_seq(2, &[3], before + after);
    let mut a = make();
    for k in 0..before {
        a.apply(&[gw[k].clone(), gb[k].clone()], &vars)
            .expect("apply");
    }
    let state = a.state().expect("state");
    let restored: Vec<Variable> = vars
        .iter()
        .map(|v| Variable::new(v.name(), &v.snapshot().expect("copy"), true).expect("var"))
        .collect();
    let mut b = make();
    b.load_state(&state, &restored).expect("load_state");
    assert_eq!(a.iterations(), b.iterations(), "{label}: iterations");
    assert_eq!(
        a.learning_rate(),
        b.learning_rate(),
        "{label}: learning rate"
    );
    for k in before..before + after {
        a.apply(&[gw[k].clone(), gb[k].clone()], &vars)
            .expect("apply");
        b.apply(&[gw[k].clone(), gb[k].clone()], &restored)
            .expect("apply");
        for (va, vb) in vars.iter().zip(&restored) {
            assert_eq!(
                bits(&va.value()),
                bits(&vb.value()),
                "{label}: `{}` differs after step {}",
                va.name(),
                k + 1
            );
        }
    }
    let (sa, sb) = (a.state().expect("state"), b.state().expect("state"));
    let keys = |s: &[(String, Tensor)]| s.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&sa), keys(&sb), "{label}: state keys");
    for ((k, ta), (_, tb)) in sa.iter().zip(&sb) {
        assert_eq!(
            to_vec(ta).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            bits(tb),
            "{label}: state `{k}` differs"
        );
    }
    let mut fa = a;
    let mut fb = b;
    fa.finalize_variable_values(&vars).expect("finalize");
    fb.finalize_variable_values(&restored).expect("finalize");
    for (va, vb) in vars.iter().zip(&restored) {
        assert_eq!(bits(&va.value()), bits(&vb.value()), "{label}: finalized");
    }
}

#[test]
fn state_round_trip_is_bit_identical() {
    check_round_trip(
        "sgd momentum",
        &|| Box::new(Sgd::new(0.05).momentum(0.9).nesterov(true)),
        3,
        4,
    );
    check_round_trip(
        "adam amsgrad",
        &|| Box::new(Adam::new(0.01).amsgrad(true)),
        3,
        4,
    );
    check_round_trip(
        "adamw schedule",
        &|| {
            Box::new(Adam::adamw(
                CosineDecay::new(0.0, 5)
                    .unwrap()
                    .warmup_target(0.01)
                    .warmup_steps(2),
                0.1,
            ))
        },
        3,
        4,
    );
    check_round_trip(
        "rmsprop centered",
        &|| Box::new(RmsProp::new(0.01).centered(true).momentum(0.5)),
        3,
        4,
    );
    // 3 calls with accumulation 2: the accumulator holds one gradient at the checkpoint.
    check_round_trip(
        "sgd accumulation + ema",
        &|| {
            Box::new(
                Sgd::new(0.1)
                    .momentum(0.9)
                    .clipnorm(1.0)
                    .gradient_accumulation_steps(2)
                    .use_ema(true)
                    .ema_momentum(0.9),
            )
        },
        3,
        5,
    );
    check_round_trip(
        "adam accumulation + ema overwrite",
        &|| {
            Box::new(
                Adam::new(PolynomialDecay::new(0.01, 6, 0.001).unwrap().power(2.0))
                    .global_clipnorm(1.0)
                    .gradient_accumulation_steps(3)
                    .use_ema(true)
                    .ema_momentum(0.8)
                    .ema_overwrite_frequency(2),
            )
        },
        4,
        8,
    );
    check_round_trip(
        "rmsprop ema",
        &|| Box::new(RmsProp::new(0.01).clipvalue(0.5).use_ema(true)),
        2,
        3,
    );
}

#[test]
fn state_names_accumulator_and_ema() {
    let vars = fresh_vars();
    let mut opt = Adam::new(0.01).gradient_accumulation_steps(2).use_ema(true);
    let g = [
        grad_seq(1, &[2, 3], 1).remove(0),
        grad_seq(2, &[3], 1).remove(0),
    ];
    opt.apply(&g, &vars).expect("apply");
    let keys: Vec<String> = opt
        .state()
        .expect("state")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    // No update yet: no Adam slots, but an accumulator holding the gradient and an EMA.
    assert_eq!(
        keys,
        [
            "dense/bias/accumulator",
            "dense/bias/ema",
            "dense/kernel/accumulator",
            "dense/kernel/ema",
            "iterations"
        ]
    );
    let acc = state_entry(&opt, "dense/kernel/accumulator").expect("accumulator");
    assert_eq!(bits(&acc), bits(&g[0]));
    opt.apply(&g, &vars).expect("apply");
    let keys: Vec<String> = opt
        .state()
        .expect("state")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&"dense/kernel/m".to_string()), "{keys:?}");
    let acc = state_entry(&opt, "dense/kernel/accumulator").expect("accumulator");
    assert!(
        to_vec(&acc).iter().all(|x| *x == 0.0),
        "reset after the update"
    );
}

#[test]
fn finalize_swaps_in_the_moving_average() {
    let vars = fresh_vars();
    let mut opt = Sgd::new(0.1).use_ema(true).ema_momentum(0.5);
    let gw = grad_seq(3, &[2, 3], 3);
    let gb = grad_seq(4, &[3], 3);
    for k in 0..3 {
        opt.apply(&[gw[k].clone(), gb[k].clone()], &vars)
            .expect("apply");
    }
    let ema = state_entry(&opt, "dense/kernel/ema").expect("ema");
    assert_ne!(bits(&vars[0].value()), bits(&ema));
    opt.finalize_variable_values(&vars).expect("finalize");
    assert_eq!(bits(&vars[0].value()), bits(&ema));
    // Without EMA, finalize changes nothing.
    let mut plain = Sgd::new(0.1);
    plain
        .apply(&[gw[0].clone(), gb[0].clone()], &vars)
        .expect("apply");
    let before = bits(&vars[1].value());
    plain.finalize_variable_values(&vars).expect("finalize");
    assert_eq!(before, bits(&vars[1].value()));
}

#[test]
fn load_state_errors_are_clear() {
    let vars = fresh_vars();
    let mut trained = Adam::new(0.01).use_ema(true);
    let g = [
        grad_seq(1, &[2, 3], 1).remove(0),
        grad_seq(2, &[3], 1).remove(0),
    ];
    trained.apply(&g, &vars).expect("apply");
    let state = trained.state().expect("state");

    // A slot of the wrong shape.
    let mut bad = state.clone();
    let i = bad
        .iter()
        .position(|(k, _)| k == "dense/kernel/m")
        .expect("m");
    bad[i].1 =
        Tensor::zeros((3, 2), DType::F32, &ferrokeras::runtime::default_device()).expect("zeros");
    let err = Adam::new(0.01)
        .use_ema(true)
        .load_state(&bad, &vars)
        .expect_err("wrong shape")
        .to_string();
    assert!(
        err.contains("dense/kernel/m") && err.contains("[3, 2]") && err.contains("[2, 3]"),
        "{err}"
    );

    // An EMA of the wrong shape.
    let mut bad = state.clone();
    let i = bad
        .iter()
        .position(|(k, _)| k == "dense/bias/ema")
        .expect("ema");
    bad[i].1 = Tensor::zeros(4, DType::F32, &ferrokeras::runtime::default_device()).expect("zeros");
    let err = Adam::new(0.01)
        .use_ema(true)
        .load_state(&bad, &vars)
        .expect_err("wrong shape")
        .to_string();
    assert!(
        err.contains("dense/bias/ema") && err.contains("shape"),
        "{err}"
    );

    // A variable the model does not have.
    let mut bad = state.clone();
    bad.push((
        "dense_9/kernel/v".to_string(),
        Tensor::zeros((2, 3), DType::F32, &ferrokeras::runtime::default_device()).expect("zeros"),
    ));
    let mut fresh = Adam::new(0.01).use_ema(true);
    let err = fresh
        .load_state(&bad, &vars)
        .expect_err("unknown variable")
        .to_string();
    assert!(
        err.contains("`dense_9/kernel`") && err.contains("does not have"),
        "{err}"
    );
    // Nothing was loaded by the failed call.
    assert_eq!(fresh.iterations(), 0);
    assert!(fresh.state().expect("state").len() == 1);

    // An unknown slot.
    let mut bad = state.clone();
    bad.push((
        "dense/kernel/nu".to_string(),
        Tensor::zeros((2, 3), DType::F32, &ferrokeras::runtime::default_device()).expect("zeros"),
    ));
    let err = Adam::new(0.01)
        .use_ema(true)
        .load_state(&bad, &vars)
        .expect_err("unknown slot")
        .to_string();
    assert!(err.contains("unknown slot `nu`"), "{err}");

    // An EMA for an optimizer without `use_ema`, an accumulator without accumulation.
    let err = Adam::new(0.01)
        .load_state(&state, &vars)
        .expect_err("ema without use_ema")
        .to_string();
    assert!(err.contains("use_ema"), "{err}");
    let acc = vec![(
        "dense/bias/accumulator".to_string(),
        Tensor::zeros(3, DType::F32, &ferrokeras::runtime::default_device()).expect("zeros"),
    )];
    let err = Sgd::new(0.1)
        .load_state(&acc, &vars)
        .expect_err("accumulator without accumulation")
        .to_string();
    assert!(err.contains("gradient_accumulation_steps"), "{err}");
}

#[test]
fn invalid_options_fail_with_keras_messages() {
    let vars = fresh_vars();
    let g = [
        grad_seq(1, &[2, 3], 1).remove(0),
        grad_seq(2, &[3], 1).remove(0),
    ];
    let err = Sgd::new(0.1)
        .clipnorm(1.0)
        .clipvalue(0.5)
        .apply(&g, &vars)
        .expect_err("two clip options")
        .to_string();
    assert!(
        err.contains("Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"),
        "{err}"
    );
    let err = Adam::new(0.1)
        .gradient_accumulation_steps(1)
        .apply(&g, &vars)
        .expect_err("one accumulation step")
        .to_string();
    assert!(err.contains("must be an integer >= 2"), "{err}");
    let err = RmsProp::new(0.1)
        .use_ema(true)
        .ema_momentum(1.5)
        .apply(&g, &vars)
        .expect_err("bad momentum")
        .to_string();
    assert!(
        err.contains("`ema_momentum` must be in the range [0, 1]"),
        "{err}"
    );
    // Nothing moved.
    assert_eq!(bits(&vars[1].value()), bits(&fresh_vars()[1].value()));
    assert!(PiecewiseConstantDecay::new(&[5, 5], &[0.1, 0.2, 0.3]).is_err());
}

#[test]
fn clipping_keeps_small_gradients_and_zeros() {
    // Under the threshold, clipnorm and global_clipnorm leave gradients alone; zero gradients stay
    // zero (no division by a zero norm).
    for make in [
        (|| Box::new(Sgd::new(1.0).clipnorm(10.0)) as Box<dyn Optimizer>)
            as fn() -> Box<dyn Optimizer>,
        || Box::new(Sgd::new(1.0).global_clipnorm(10.0)),
    ] {
        let w = Variable::new(
            "w",
            &Tensor::new(&[1f32, 1.0], &ferrokeras::runtime::default_device()).unwrap(),
            true,
        )
        .unwrap();
        let mut opt = make();
        opt.apply(
            &[Tensor::new(&[0.5f32, -0.25], &ferrokeras::runtime::default_device()).unwrap()],
            std::slice::from_ref(&w),
        )
        .unwrap();
        assert_eq!(w.value().to_vec1::<f32>().unwrap(), vec![0.5, 1.25]);
        opt.apply(
            &[Tensor::new(&[0f32, 0.0], &ferrokeras::runtime::default_device()).unwrap()],
            std::slice::from_ref(&w),
        )
        .unwrap();
        assert_eq!(w.value().to_vec1::<f32>().unwrap(), vec![0.5, 1.25]);
    }
}
