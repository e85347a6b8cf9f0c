//! Finite-difference gradient checks: `GradientTape::gradient` against central differences.
//!
//! Every function under test is reduced to a scalar as `sum(f(x) * r)` with a fixed, non-constant
//! `r`, so that functions whose plain sum is constant (softmax) are still checked. Differences are
//! taken in float32 with `eps = 1e-3`, dividing by the step actually representable in float32, and
//! accumulated in float64; tensors are kept small so that the function values stay of order one.

use candle_core::{DType, Tensor};
use ferrokeras::prelude::*;

const EPS: f64 = 1e-3;
const RTOL: f64 = 2e-2;
const ATOL: f64 = 1e-3;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Deterministic values in `[lo, hi)` from a seed (independent of the crate's global RNG, which
/// other tests running in parallel may reseed).
fn det(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f64) / ((1u64 << 24) as f64);
            lo + (hi - lo) * u as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &ferrokeras::runtime::default_device()).unwrap()
}

/// Deterministic values with `|v| in [min_abs, min_abs + span)` and mixed signs: away from a
/// kink at 0.
fn det_away_from_zero(shape: &[usize], min_abs: f32, span: f32, seed: u64) -> Tensor {
    let u = det(shape, -1.0, 1.0, seed);
    let v: Vec<f32> = u
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(|x| x.signum() * (min_abs + span * x.abs()))
        .collect();
    Tensor::from_vec(v, shape, &ferrokeras::runtime::default_device()).unwrap()
}

fn t2(rows: &[&[f32]]) -> Tensor {
    let n = rows.len();
    let m = rows[0].len();
    let v: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(v, (n, m), &ferrokeras::runtime::default_device()).unwrap()
}

fn t1(v: &[f32]) -> Tensor {
    Tensor::new(v, &ferrokeras::runtime::default_device()).unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// The scalar a function output stands for: its sum, as `GradientTape::gradient` takes it.
fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `sum(y * r)` for a fixed `r` of `y`'s shape.
fn weighted_sum(y: &Tensor, seed: u64) -> Result<Tensor> {
    let r = det(y.dims(), -1.0, 1.0, seed);
    Ok((y * r)?.sum_all()?)
}

/// Compares element by element with `|a - n| <= ATOL + RTOL * max(|a|, |n|)`, and checks that
/// the check is not vacuous (some numerical gradient is non-zero).
fn assert_grads_close(name: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(
        analytic.len(),
        numeric.len(),
        "{name}: analytic and numerical gradients differ in size"
    );
    assert!(
        numeric.iter().any(|v| v.abs() > 1e-3),
        "{name}: every numerical gradient is ~0, the check proves nothing: {numeric:?}"
    );
    let worst = analytic
        .iter()
        .zip(numeric)
        .map(|(a, n)| (a - n).abs() / (ATOL + RTOL * a.abs().max(n.abs())))
        .fold(0.0f64, f64::max);
    eprintln!("{name}: worst error = {worst:.3} of the tolerance");
    let bad: Vec<String> = analytic
        .iter()
        .zip(numeric)
        .enumerate()
        .filter(|(_, (a, n))| (*a - *n).abs() > ATOL + RTOL * a.abs().max(n.abs()))
        .map(|(i, (a, n))| format!("[{i}] analytic={a:.6} numeric={n:.6}"))
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: gradient mismatch at {} of {} elements:\n{}",
        bad.len(),
        analytic.len(),
        bad.join("\n")
    );
}

/// Central differences of `f` at `x`, one element at a time, on plain (unrecorded) tensors.
fn numeric_grad(x: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Vec<f64> {
    let shape = x.dims().to_vec();
    let base = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            let mut minus = base.clone();
            plus[i] = (base[i] as f64 + EPS) as f32;
            minus[i] = (base[i] as f64 - EPS) as f32;
            let step = plus[i] as f64 - minus[i] as f64;
            let fp = scalar(
                &f(&Tensor::from_vec(
                    plus,
                    shape.as_slice(),
                    &ferrokeras::runtime::default_device(),
                )
                .unwrap())
                .unwrap(),
            );
            let fm = scalar(
                &f(&Tensor::from_vec(
                    minus,
                    shape.as_slice(),
                    &ferrokeras::runtime::default_device(),
                )
                .unwrap())
                .unwrap(),
            );
            (fp - fm) / step
        })
        .collect()
}

/// Checks `d f(x) / d x` for a function of one float32 tensor.
fn check(name: &str, x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) {
    let var = Variable::new("x", x, true).unwrap();
    let out = f(var.as_tensor()).unwrap();
    let grads = GradientTape::gradient(&out, std::slice::from_ref(&var)).unwrap();
    assert_eq!(grads[0].dims(), x.dims(), "{name}: gradient shape");
    let analytic = to_f64(&grads[0]);
    let numeric = numeric_grad(x, &f);
    assert_grads_close(name, &analytic, &numeric);
}

/// Checks `d f() / d var` for a variable that `f` reads itself (a layer's kernel): the numerical
/// side assigns perturbed values to the variable and restores it afterwards.
fn check_variable(name: &str, var: &Variable, f: &mut dyn FnMut() -> Result<Tensor>) {
    // `value()` may share storage with the variable: take a real copy before perturbing it.
    let original = var.value().copy().unwrap();
    let out = f().unwrap();
    let grads = GradientTape::gradient(&out, std::slice::from_ref(var)).unwrap();
    let analytic = to_f64(&grads[0]);
    let shape = original.dims().to_vec();
    let base = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut eval = |v: Vec<f32>| -> f64 {
        var.assign(
            &Tensor::from_vec(v, shape.as_slice(), &ferrokeras::runtime::default_device()).unwrap(),
        )
        .unwrap();
        scalar(&f().unwrap())
    };
    let numeric: Vec<f64> = (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            let mut minus = base.clone();
            plus[i] = (base[i] as f64 + EPS) as f32;
            minus[i] = (base[i] as f64 - EPS) as f32;
            let step = plus[i] as f64 - minus[i] as f64;
            (eval(plus) - eval(minus)) / step
        })
        .collect();
    var.assign(&original).unwrap();
    assert_grads_close(name, &analytic, &numeric);
}

// ---------------------------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------------------------

fn check_activation(act: Activation, x: &Tensor, seed: u64) {
    check(&format!("activation {}", act.name()), x, |x| {
        weighted_sum(&act.apply(x)?, seed)
    });
}

#[test]
fn grad_relu_away_from_zero() {
    check_activation(
        Activation::Relu,
        &det_away_from_zero(&[3, 4], 0.1, 2.0, 1),
        11,
    );
}

#[test]
fn grad_leaky_relu_away_from_zero() {
    check_activation(
        Activation::LeakyRelu(0.2),
        &det_away_from_zero(&[3, 4], 0.1, 2.0, 2),
        12,
    );
    check_activation(
        "leaky_relu".parse().unwrap(),
        &det_away_from_zero(&[2, 5], 0.1, 2.0, 3),
        13,
    );
}

#[test]
fn grad_sigmoid() {
    check_activation(Activation::Sigmoid, &det(&[3, 4], -3.0, 3.0, 4), 14);
}

#[test]
fn grad_tanh() {
    check_activation(Activation::Tanh, &det(&[3, 4], -2.0, 2.0, 5), 15);
}

#[test]
fn grad_softmax() {
    check_activation(Activation::Softmax, &det(&[3, 4], -2.0, 2.0, 6), 16);
    // Large logits: the max shift must not break the gradient.
    let big = (det(&[2, 3], -1.0, 1.0, 7) + 50.0).unwrap();
    check_activation(Activation::Softmax, &big, 17);
}

#[test]
fn grad_gelu() {
    check_activation(Activation::Gelu, &det(&[3, 4], -3.0, 3.0, 8), 18);
}

#[test]
fn grad_linear() {
    check_activation(Activation::Linear, &det(&[3, 4], -2.0, 2.0, 9), 19);
}

#[test]
fn grad_activation_layers() {
    let x = det_away_from_zero(&[3, 4], 0.1, 2.0, 10);
    check("ReLU layer", &x, |x| {
        weighted_sum(&ReLU::new().call(x, true)?, 20)
    });
    check("LeakyReLU layer", &x, |x| {
        weighted_sum(&LeakyReLU::new(0.3).call(x, true)?, 21)
    });
    check("Activation(\"tanh\") layer", &x, |x| {
        weighted_sum(&ActivationLayer::new("tanh")?.call(x, true)?, 22)
    });
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// A built `Dense(units)` on `in_features`, with deterministic (non-zero) kernel and bias.
fn dense(in_features: usize, units: usize, activation: Activation, seed: u64) -> Dense {
    let mut d = Dense::new(units).with_activation(activation);
    d.build(&[in_features]).unwrap();
    d.kernel()
        .unwrap()
        .assign(&det(&[in_features, units], -0.8, 0.8, seed))
        .unwrap();
    d.bias()
        .unwrap()
        .assign(&det(&[units], -0.5, 0.5, seed + 1))
        .unwrap();
    d
}

#[test]
fn grad_dense_wrt_input() {
    let x = det(&[3, 5], -1.0, 1.0, 30);
    let mut d = dense(5, 4, Activation::Linear, 31);
    let d = std::cell::RefCell::new(&mut d);
    check("Dense input", &x, |x| {
        weighted_sum(&d.borrow_mut().call(x, true)?, 32)
    });
}

#[test]
fn grad_dense_wrt_input_with_activation_rank3() {
    let x = det(&[2, 3, 5], -1.0, 1.0, 33);
    let mut d = dense(5, 4, Activation::Tanh, 34);
    let d = std::cell::RefCell::new(&mut d);
    check("Dense(tanh) input rank 3", &x, |x| {
        weighted_sum(&d.borrow_mut().call(x, true)?, 35)
    });
}

#[test]
fn grad_dense_wrt_kernel() {
    let x = det(&[3, 5], -1.0, 1.0, 36);
    let mut d = dense(5, 4, Activation::Sigmoid, 37);
    let kernel = d.kernel().unwrap().clone();
    check_variable("Dense kernel", &kernel, &mut || {
        weighted_sum(&d.call(&x, true)?, 38)
    });
}

#[test]
fn grad_dense_wrt_bias() {
    let x = det(&[3, 5], -1.0, 1.0, 39);
    let mut d = dense(5, 4, Activation::Tanh, 40);
    let bias = d.bias().unwrap().clone();
    check_variable("Dense bias", &bias, &mut || {
        weighted_sum(&d.call(&x, true)?, 41)
    });
}

#[test]
fn grad_dense_regularization_losses_wrt_kernel_and_bias() {
    let mut d = Dense::new(3)
        .kernel_regularizer(Regularizer::L1L2 { l1: 0.05, l2: 0.1 })
        .bias_regularizer(Regularizer::L2(0.2));
    d.build(&[4]).unwrap();
    d.kernel()
        .unwrap()
        .assign(&det_away_from_zero(&[4, 3], 0.1, 0.8, 42))
        .unwrap();
    d.bias()
        .unwrap()
        .assign(&det_away_from_zero(&[3], 0.1, 0.8, 43))
        .unwrap();
    let total = |d: &Dense| -> Result<Tensor> {
        let mut acc = Tensor::zeros((), DType::F32, &ferrokeras::runtime::default_device())?;
        for l in d.losses()? {
            acc = (acc + l)?;
        }
        Ok(acc)
    };
    let kernel = d.kernel().unwrap().clone();
    let bias = d.bias().unwrap().clone();
    check_variable("Dense kernel regularizer", &kernel, &mut || total(&d));
    check_variable("Dense bias regularizer", &bias, &mut || total(&d));
}

#[test]
fn grad_flatten() {
    let x = det(&[2, 3, 4], -1.0, 1.0, 50);
    check("Flatten", &x, |x| {
        weighted_sum(&Flatten::new().call(x, true)?, 51)
    });
}

#[test]
fn grad_reshape() {
    let x = det(&[2, 12], -1.0, 1.0, 52);
    check("Reshape(3, -1)", &x, |x| {
        weighted_sum(&Reshape::new(&[3, -1]).call(x, true)?, 53)
    });
    let x = det(&[2, 3, 4], -1.0, 1.0, 54);
    check("Reshape(2, 6)", &x, |x| {
        weighted_sum(&Reshape::new(&[2, 6]).call(x, true)?, 55)
    });
}

#[test]
fn grad_concatenate_wrt_each_input() {
    let a = det(&[2, 3], -1.0, 1.0, 60);
    let b = det(&[2, 4], -1.0, 1.0, 61);
    check("Concatenate input 0", &a, |a| {
        weighted_sum(
            &Concatenate::new().call_many(&[a.clone(), b.clone()], true)?,
            62,
        )
    });
    check("Concatenate input 1", &b, |b| {
        weighted_sum(
            &Concatenate::new().call_many(&[a.clone(), b.clone()], true)?,
            62,
        )
    });
    // Another axis on rank-3 inputs.
    let c = det(&[2, 3, 2], -1.0, 1.0, 63);
    let d = det(&[2, 1, 2], -1.0, 1.0, 64);
    check("Concatenate(axis=1) input 1", &d, |d| {
        weighted_sum(
            &Concatenate::new()
                .axis(1)
                .call_many(&[c.clone(), d.clone()], true)?,
            65,
        )
    });
}

#[test]
fn grad_add_wrt_each_input() {
    let a = det(&[2, 3], -1.0, 1.0, 70);
    let b = det(&[2, 3], -1.0, 1.0, 71);
    let c = det(&[2, 3], -1.0, 1.0, 72);
    check("Add input 0", &a, |a| {
        weighted_sum(
            &Add::new().call_many(&[a.clone(), b.clone(), c.clone()], true)?,
            73,
        )
    });
    check("Add input 2", &c, |c| {
        weighted_sum(
            &Add::new().call_many(&[a.clone(), b.clone(), c.clone()], true)?,
            73,
        )
    });
    // The same tensor twice: the gradient is doubled.
    check("Add(x, x)", &a, |a| {
        weighted_sum(&Add::new().call_many(&[a.clone(), a.clone()], true)?, 74)
    });
}

#[test]
fn grad_dropout_inference_is_identity() {
    let x = det(&[3, 4], -1.0, 1.0, 80);
    check("Dropout(0.5) inference", &x, |x| {
        weighted_sum(&Dropout::new(0.5)?.call(x, false)?, 81)
    });
}

#[test]
fn grad_dropout_training_is_the_mask() {
    // The mask is random per call, so there is no finite difference; the gradient of
    // sum(dropout(x) * r) must be r * mask / (1 - rate) = r * y / x.
    let x = det_away_from_zero(&[4, 8], 0.1, 1.0, 82);
    let var = Variable::new("x", &x, true).unwrap();
    let y = Dropout::new(0.25)
        .unwrap()
        .call(var.as_tensor(), true)
        .unwrap();
    let r = det(&[4, 8], -1.0, 1.0, 83);
    let out = (&y * &r).unwrap().sum_all().unwrap();
    let g = GradientTape::gradient(&out, std::slice::from_ref(&var)).unwrap();
    let expected = ((y.detach() / &x).unwrap() * &r).unwrap();
    let (g, e) = (to_f64(&g[0]), to_f64(&expected));
    assert!(g.contains(&0.0), "no element was dropped");
    for (i, (a, b)) in g.iter().zip(&e).enumerate() {
        assert!((a - b).abs() < 1e-5, "[{i}] grad {a} vs mask {b}");
    }
}

#[test]
fn grad_regularizer_penalties() {
    let w = det_away_from_zero(&[3, 4], 0.1, 1.0, 90);
    check("L1 penalty", &w, |w| Regularizer::L1(0.1).penalty(w));
    check("L2 penalty", &w, |w| Regularizer::L2(0.1).penalty(w));
    check("L1L2 penalty", &w, |w| {
        Regularizer::L1L2 { l1: 0.1, l2: 0.3 }.penalty(w)
    });
}

// ---------------------------------------------------------------------------------------------
// Losses, w.r.t. y_pred, with and without sample weights
// ---------------------------------------------------------------------------------------------

/// One weight per sample, all different.
fn sample_weights(n: usize) -> Tensor {
    let v: Vec<f32> = (0..n).map(|i| 0.5 + 0.75 * i as f32).collect();
    t1(&v)
}

/// Checks `loss.compute(y_true, y_pred, sw)` w.r.t. `y_pred`, without and with sample weights.
fn check_loss(name: &str, loss: &dyn Loss, y_true: &Tensor, y_pred: &Tensor) {
    check(&format!("{name} (no sample_weight)"), y_pred, |p| {
        loss.compute(y_true, p, None)
    });
    let sw = sample_weights(y_pred.dims()[0]);
    check(&format!("{name} (sample_weight)"), y_pred, |p| {
        loss.compute(y_true, p, Some(&sw))
    });
}

#[test]
fn grad_mean_squared_error() {
    let y = det(&[3, 4], -1.0, 1.0, 100);
    let p = det(&[3, 4], -1.0, 1.0, 101);
    check_loss("MeanSquaredError", &MseLoss::new(), &y, &p);
    // (batch, 1) predictions against (batch,) targets.
    check_loss(
        "MeanSquaredError (batch,) targets",
        &MseLoss::new(),
        &det(&[4], -1.0, 1.0, 102),
        &det(&[4, 1], -1.0, 1.0, 103),
    );
}

#[test]
fn grad_mean_absolute_error_away_from_kink() {
    let y = det(&[3, 4], -1.0, 1.0, 104);
    let p = (&y + det_away_from_zero(&[3, 4], 0.05, 1.0, 105)).unwrap();
    check_loss("MeanAbsoluteError", &MaeLoss::new(), &y, &p);
}

#[test]
fn grad_huber_both_regions() {
    // |error| in (0.05, 0.9): quadratic region; |error| in (1.1, 3): linear region (delta = 1).
    let y = det(&[3, 4], -1.0, 1.0, 110);
    let small = det_away_from_zero(&[3, 2], 0.05, 0.85, 111);
    let large = det_away_from_zero(&[3, 2], 1.1, 1.9, 112);
    let err = Tensor::cat(&[&small, &large], 1).unwrap();
    let p = (&y + &err).unwrap();
    check_loss("Huber(1.0)", &Huber::new(1.0), &y, &p);
    // Only the quadratic region, and only the linear region, with another delta.
    let p_quad = (&y + det_away_from_zero(&[3, 4], 0.05, 1.3, 113)).unwrap();
    check_loss("Huber(1.5) quadratic", &Huber::new(1.5), &y, &p_quad);
    let p_lin = (&y + det_away_from_zero(&[3, 4], 0.6, 2.0, 114)).unwrap();
    check_loss("Huber(0.5) linear", &Huber::new(0.5), &y, &p_lin);
}

fn binary_targets() -> Tensor {
    t2(&[&[1.0, 0.0, 1.0], &[0.0, 0.0, 1.0], &[1.0, 1.0, 0.0]])
}

#[test]
fn grad_binary_crossentropy_probabilities() {
    let p = det(&[3, 3], 0.1, 0.9, 120);
    check_loss(
        "BinaryCrossentropy probs",
        &BinaryCrossentropy::new(),
        &binary_targets(),
        &p,
    );
    // Soft targets and label smoothing.
    check_loss(
        "BinaryCrossentropy probs soft targets",
        &BinaryCrossentropy::new(),
        &det(&[3, 3], 0.0, 1.0, 121),
        &p,
    );
    check_loss(
        "BinaryCrossentropy probs label_smoothing",
        &BinaryCrossentropy::new().label_smoothing(0.2),
        &binary_targets(),
        &p,
    );
}

#[test]
fn grad_binary_crossentropy_logits() {
    let p = det_away_from_zero(&[3, 3], 0.05, 3.0, 122);
    check_loss(
        "BinaryCrossentropy logits",
        &BinaryCrossentropy::new().from_logits(true),
        &binary_targets(),
        &p,
    );
    check_loss(
        "BinaryCrossentropy logits label_smoothing",
        &BinaryCrossentropy::new()
            .from_logits(true)
            .label_smoothing(0.1),
        &binary_targets(),
        &p,
    );
    // Large logits stay finite and exact (the stable form).
    let big = t2(&[
        &[12.0, -15.0, 9.0],
        &[-11.0, 14.0, 8.5],
        &[10.0, -9.5, -13.0],
    ]);
    check_loss(
        "BinaryCrossentropy large logits",
        &BinaryCrossentropy::new().from_logits(true),
        &t2(&[&[0.0, 1.0, 1.0], &[1.0, 0.0, 0.0], &[0.0, 0.0, 1.0]]),
        &big,
    );
}

fn one_hot_targets() -> Tensor {
    t2(&[
        &[0.0, 1.0, 0.0, 0.0],
        &[1.0, 0.0, 0.0, 0.0],
        &[0.0, 0.0, 0.0, 1.0],
    ])
}

#[test]
fn grad_categorical_crossentropy_probabilities() {
    // Positive, unnormalized: the loss normalizes them (Keras does), and the gradient goes
    // through the normalization.
    let p = det(&[3, 4], 0.2, 1.0, 130);
    check_loss(
        "CategoricalCrossentropy probs",
        &CategoricalCrossentropy::new(),
        &one_hot_targets(),
        &p,
    );
}

#[test]
fn grad_categorical_crossentropy_logits() {
    let p = det(&[3, 4], -3.0, 3.0, 131);
    check_loss(
        "CategoricalCrossentropy logits",
        &CategoricalCrossentropy::new().from_logits(true),
        &one_hot_targets(),
        &p,
    );
}

#[test]
fn grad_categorical_crossentropy_label_smoothing() {
    let probs = det(&[3, 4], 0.2, 1.0, 132);
    check_loss(
        "CategoricalCrossentropy probs label_smoothing",
        &CategoricalCrossentropy::new().label_smoothing(0.1),
        &one_hot_targets(),
        &probs,
    );
    let logits = det(&[3, 4], -3.0, 3.0, 133);
    check_loss(
        "CategoricalCrossentropy logits label_smoothing",
        &CategoricalCrossentropy::new()
            .from_logits(true)
            .label_smoothing(0.2),
        &one_hot_targets(),
        &logits,
    );
}

#[test]
fn grad_sparse_categorical_crossentropy_probabilities() {
    let labels = t1(&[1.0, 0.0, 3.0]);
    let p = det(&[3, 4], 0.2, 1.0, 140);
    check_loss(
        "SparseCategoricalCrossentropy probs",
        &SparseCategoricalCrossentropy::new(),
        &labels,
        &p,
    );
    // (batch, 1) labels.
    check_loss(
        "SparseCategoricalCrossentropy probs (batch, 1) labels",
        &SparseCategoricalCrossentropy::new(),
        &labels.unsqueeze(1).unwrap(),
        &p,
    );
}

#[test]
fn grad_sparse_categorical_crossentropy_logits() {
    let labels = t1(&[1.0, 0.0, 3.0]);
    let p = det(&[3, 4], -3.0, 3.0, 141);
    check_loss(
        "SparseCategoricalCrossentropy logits",
        &SparseCategoricalCrossentropy::new().from_logits(true),
        &labels,
        &p,
    );
    // Integer labels.
    let int_labels = Tensor::new(&[2u32, 1, 0], &ferrokeras::runtime::default_device()).unwrap();
    check_loss(
        "SparseCategoricalCrossentropy logits u32 labels",
        &SparseCategoricalCrossentropy::new().from_logits(true),
        &int_labels,
        &p,
    );
}

#[test]
fn grad_sparse_matches_categorical_on_one_hot() {
    // Same loss, two encodings of the targets: identical gradients.
    let p = det(&[3, 4], -3.0, 3.0, 142);
    let v = Variable::new("p", &p, true).unwrap();
    let sw = sample_weights(3);
    let sparse = SparseCategoricalCrossentropy::new()
        .from_logits(true)
        .compute(&t1(&[1.0, 0.0, 3.0]), v.as_tensor(), Some(&sw))
        .unwrap();
    let g_sparse = to_f64(&GradientTape::gradient(&sparse, std::slice::from_ref(&v)).unwrap()[0]);
    let dense = CategoricalCrossentropy::new()
        .from_logits(true)
        .compute(&one_hot_targets(), v.as_tensor(), Some(&sw))
        .unwrap();
    let g_dense = to_f64(&GradientTape::gradient(&dense, std::slice::from_ref(&v)).unwrap()[0]);
    for (a, b) in g_sparse.iter().zip(&g_dense) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
#[should_panic(expected = "gradient mismatch")]
fn checker_detects_a_wrong_gradient() {
    // d/dx [stop_gradient(x) * x] is recorded as x, while the true derivative of x^2 is 2x: the
    // checker must reject it, or every check above proves nothing.
    let x = det(&[2, 3], 0.5, 1.5, 200);
    check("deliberately wrong", &x, |x| {
        Ok((stop_gradient(x) * x)?.sum_all()?)
    });
}
