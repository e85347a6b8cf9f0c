//! Parity of the convolution, pooling and normalization layers with Keras 3, plus finite-difference
//! checks of their gradients.
//!
//! The reference numbers come from Keras 3 (JAX backend) through
//! `tests/fixtures/make_keras_layer_fixtures.py`; see `tests/fixtures/README.md`. Every case holds a
//! layer config, the input `x`, the weights in Keras layouts, an upstream array `U`, the output `y`
//! and the gradients of `sum(y * U)` with respect to the input and every trainable weight.
//!
//! Each test checks every case of its group and reports all failing cases at once (run with
//! `--nocapture` to see the largest errors of each group).

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use serde_json::Value;

use ferrokeras::layers::{
    AveragePooling2D, BatchNormalization, Conv2D, Conv2DTranspose, DataFormat,
    GlobalAveragePooling2D, GlobalMaxPooling2D, Layer, MaxPooling2D, UpSampling2D,
};
use ferrokeras::{GradientTape, Variable};

/// Forward outputs: `|a - e| <= FWD_ATOL + FWD_RTOL |e|`.
const FWD_RTOL: f64 = 1e-5;
const FWD_ATOL: f64 = 1e-5;
/// Gradients against Keras.
const GRAD_RTOL: f64 = 1e-4;
const GRAD_ATOL: f64 = 1e-5;
/// Finite differences against the tape's gradients.
const FD_RTOL: f64 = 2e-2;
const FD_ATOL: f64 = 2e-3;
/// Central-difference step: a power of two, so `x ± FD_EPS` is exact for the fixtures' inputs
/// (multiples of 1/32 or 1/16) and linear layers give exact differences.
const FD_EPS: f32 = 1.0 / 64.0;

// ------------------------------------------------------------------------------------------------
// fixture loading
// ------------------------------------------------------------------------------------------------

fn fixtures() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join("keras_layers.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON in {}: {e}", path.display()))
}

fn cases<'a>(fx: &'a Value, group: &str) -> &'a [Value] {
    fx[group]
        .as_array()
        .unwrap_or_else(|| panic!("fixture group `{group}` missing"))
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

fn name_of(case: &Value) -> &str {
    case["name"].as_str().expect("case name")
}

fn cfg_usize(cfg: &Value, key: &str) -> usize {
    cfg[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config has no integer `{key}`: {cfg}")) as usize
}

fn cfg_f64(cfg: &Value, key: &str) -> f64 {
    cfg[key]
        .as_f64()
        .unwrap_or_else(|| panic!("config has no number `{key}`: {cfg}"))
}

fn cfg_str<'a>(cfg: &'a Value, key: &str) -> &'a str {
    cfg[key]
        .as_str()
        .unwrap_or_else(|| panic!("config has no string `{key}`: {cfg}"))
}

fn cfg_pair(cfg: &Value, key: &str) -> (usize, usize) {
    let v = cfg[key]
        .as_array()
        .unwrap_or_else(|| panic!("config has no pair `{key}`: {cfg}"));
    assert_eq!(v.len(), 2, "`{key}` is not a pair: {cfg}");
    let n = |i: usize| v[i].as_u64().expect("integer") as usize;
    (n(0), n(1))
}

fn data_format(cfg: &Value) -> DataFormat {
    match cfg_str(cfg, "data_format") {
        "channels_last" => DataFormat::ChannelsLast,
        "channels_first" => DataFormat::ChannelsFirst,
        other => panic!("unknown data_format {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// comparison helpers
// ------------------------------------------------------------------------------------------------

/// Error statistics of one comparison.
#[derive(Clone, Copy, Default)]
struct Errors {
    /// `max |a - e|`.
    abs: f64,
    /// `max |a - e| / |e|` over the elements with `|e| >= 1e-3` (smaller ones are judged by `atol`).
    rel: f64,
    /// `max |a - e| / (atol + rtol |e|)`: at most 1 when the check passes.
    ratio: f64,
}

/// Compares elementwise with numpy's `allclose` rule `|a - e| <= atol + rtol |e|`.
fn compare(actual: &[f32], expected: &[f32], rtol: f64, atol: f64) -> Result<Errors, String> {
    if actual.len() != expected.len() {
        return Err(format!(
            "length mismatch: actual has {} values, expected {}",
            actual.len(),
            expected.len()
        ));
    }
    let mut err = Errors::default();
    let mut worst = 0usize;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (a as f64, e as f64);
        let diff = (a - e).abs();
        if !diff.is_finite() {
            return Err(format!(
                "element {i}: actual {a} vs expected {e} (not finite)"
            ));
        }
        err.abs = err.abs.max(diff);
        if e.abs() >= 1e-3 {
            err.rel = err.rel.max(diff / e.abs());
        }
        let ratio = diff / (atol + rtol * e.abs());
        if ratio > err.ratio {
            err.ratio = ratio;
            worst = i;
        }
    }
    if err.ratio <= 1.0 {
        return Ok(err);
    }
    let (a, e) = (actual[worst], expected[worst]);
    let show = |v: &[f32]| {
        if v.len() <= 24 {
            format!("{v:?}")
        } else {
            format!("{:?} ... ({} values)", &v[..24], v.len())
        }
    };
    Err(format!(
        "element {worst}: actual {a} vs expected {e} (abs err {:.3e}; rtol {rtol:e}, atol {atol:e}); max abs err {:.3e}\n      actual:   {}\n      expected: {}",
        (a as f64 - e as f64).abs(),
        err.abs,
        show(actual),
        show(expected),
    ))
}

/// Collects the comparisons of one group; [`finish`] panics listing every failing case.
struct Group {
    name: String,
    failures: Vec<String>,
    max: Errors,
    worst_case: String,
    checks: usize,
}

impl Group {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            failures: Vec::new(),
            max: Errors::default(),
            worst_case: String::new(),
            checks: 0,
        }
    }
    fn close(&mut self, case: &str, actual: &[f32], expected: &[f32], rtol: f64, atol: f64) {
        self.checks += 1;
        match compare(actual, expected, rtol, atol) {
            Ok(e) => {
                if e.ratio >= self.max.ratio || self.worst_case.is_empty() {
                    self.worst_case = case.to_string();
                }
                self.max.abs = self.max.abs.max(e.abs);
                self.max.rel = self.max.rel.max(e.rel);
                self.max.ratio = self.max.ratio.max(e.ratio);
            }
            Err(msg) => self.failures.push(format!("{case}: {msg}")),
        }
    }
    /// Compares shapes first, then values.
    fn close_t(&mut self, case: &str, actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) {
        if actual.dims() != expected.dims() {
            self.fail(
                case,
                format!("shape {:?}, expected {:?}", actual.dims(), expected.dims()),
            );
        } else {
            self.close(case, &to_vec(actual), &to_vec(expected), rtol, atol);
        }
    }
    fn fail(&mut self, case: &str, msg: impl std::fmt::Display) {
        self.checks += 1;
        self.failures.push(format!("{case}: {msg}"));
    }
    fn report(&self) -> Option<String> {
        println!(
            "[{}] {} checks, {} failed; passing checks: max abs err {:.3e}, max rel err {:.3e} (|expected| >= 1e-3), max err/tolerance {:.3} ({})",
            self.name,
            self.checks,
            self.failures.len(),
            self.max.abs,
            self.max.rel,
            self.max.ratio,
            self.worst_case
        );
        (!self.failures.is_empty()).then(|| {
            format!(
                "{}: {} of {} checks failed:\n  - {}",
                self.name,
                self.failures.len(),
                self.checks,
                self.failures.join("\n  - ")
            )
        })
    }
}

/// Prints every group's summary, then panics with all failures.
fn finish(groups: &[&Group]) {
    let failures: Vec<String> = groups.iter().filter_map(|g| g.report()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// running a layer
// ------------------------------------------------------------------------------------------------

/// `sum(y * U)` as a (differentiable) float32 scalar.
fn objective(y: &Tensor, u: &Tensor) -> ferrokeras::Result<Tensor> {
    Ok((y * u)?.sum_all()?)
}

/// `sum(y * U)` accumulated in float64 (for finite differences).
fn objective_f64(y: &Tensor, u: &Tensor) -> f64 {
    let y = y.to_dtype(DType::F64).expect("f64");
    let u = u.to_dtype(DType::F64).expect("f64");
    (&y * &u)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.to_scalar::<f64>())
        .expect("sum(y * U)")
}

/// Forward on a fresh input variable, then the tape's gradients of `sum(y * U)` with respect to
/// `[x, weights...]`.
fn forward_and_grads(
    layer: &mut dyn Layer,
    x: &Tensor,
    u: &Tensor,
    training: bool,
    weights: &[Variable],
) -> ferrokeras::Result<(Tensor, Vec<Tensor>)> {
    let xv = Variable::new("x", x, true)?;
    let y = layer.call(xv.as_tensor(), training)?;
    let loss = objective(&y, u)?;
    let mut sources = vec![xv];
    sources.extend(weights.iter().cloned());
    let grads = GradientTape::gradient(&loss, &sources)?;
    Ok((y, grads))
}

/// Checks a layer's forward output and the gradients `[x, weights...]` against a fixture case.
#[allow(clippy::too_many_arguments)]
fn check_case(
    fwd: &mut Group,
    bwd: &mut Group,
    label: &str,
    layer: &mut dyn Layer,
    case: &Value,
    weights: &[Variable],
    grad_keys: &[&str],
    training: bool,
    y_key: &str,
) {
    let x = tensor(&case["x"]);
    let u = tensor(&case["upstream"]);
    let expected_y = tensor(&case[y_key]);
    match layer.compute_output_shape(&x.dims()[1..]) {
        Ok(s) if s == expected_y.dims()[1..] => {}
        other => fwd.fail(
            &format!("{label} compute_output_shape"),
            format!("{other:?}, expected {:?}", &expected_y.dims()[1..]),
        ),
    }
    match forward_and_grads(layer, &x, &u, training, weights) {
        Ok((y, grads)) => {
            fwd.close_t(
                &format!("{label} {y_key}"),
                &y,
                &expected_y,
                FWD_RTOL,
                FWD_ATOL,
            );
            assert_eq!(grads.len(), grad_keys.len());
            for (g, key) in grads.iter().zip(grad_keys) {
                bwd.close_t(
                    &format!("{label} {key}"),
                    g,
                    &tensor(&case[*key]),
                    GRAD_RTOL,
                    GRAD_ATOL,
                );
            }
        }
        Err(e) => fwd.fail(label, e),
    }
}

/// Central differences of `f` around `base`, one element at a time.
fn numeric_grad(base: &Tensor, mut f: impl FnMut(&Tensor) -> f64) -> Vec<f32> {
    let dims = base.dims().to_vec();
    let values = to_vec(base);
    (0..values.len())
        .map(|i| {
            let (mut plus, mut minus) = (values.clone(), values.clone());
            plus[i] += FD_EPS;
            minus[i] -= FD_EPS;
            let step = plus[i] as f64 - minus[i] as f64;
            let at = |v: Vec<f32>| {
                Tensor::from_vec(v, dims.as_slice(), &ferrokeras::runtime::default_device())
                    .unwrap()
            };
            ((f(&at(plus)) - f(&at(minus))) / step) as f32
        })
        .collect()
}

/// Finite differences of `sum(y * U)` with respect to the input and every weight, against the
/// tape's gradients.
fn fd_check(
    g: &mut Group,
    label: &str,
    layer: &mut dyn Layer,
    x: &Tensor,
    u: &Tensor,
    training: bool,
    weights: &[Variable],
) {
    let analytic = match forward_and_grads(layer, x, u, training, weights) {
        Ok((_, grads)) => grads,
        Err(e) => return g.fail(label, e),
    };
    let eval = |layer: &mut dyn Layer, x: &Tensor| {
        let y = layer.call(x, training).expect("forward");
        objective_f64(&y, u)
    };
    let numeric = numeric_grad(x, |xp| eval(layer, xp));
    g.close(
        &format!("{label} d/dx"),
        &to_vec(&analytic[0]),
        &numeric,
        FD_RTOL,
        FD_ATOL,
    );
    for (w, grad) in weights.iter().zip(&analytic[1..]) {
        let original = w.snapshot().expect("snapshot");
        let numeric = numeric_grad(&original, |wp| {
            w.assign(wp).expect("assign");
            eval(layer, x)
        });
        w.assign(&original).expect("restore");
        g.close(
            &format!("{label} d/d{}", w.name().rsplit('/').next().unwrap_or("w")),
            &to_vec(grad),
            &numeric,
            FD_RTOL,
            FD_ATOL,
        );
    }
}

// ------------------------------------------------------------------------------------------------
// layers from fixture configs
// ------------------------------------------------------------------------------------------------

fn conv2d_from(cfg: &Value) -> Conv2D {
    Conv2D::new(cfg_usize(cfg, "filters"), cfg_pair(cfg, "kernel_size"))
        .strides(cfg_pair(cfg, "strides"))
        .padding(cfg_str(cfg, "padding"))
        .expect("padding")
        .dilation_rate(cfg_pair(cfg, "dilation_rate"))
        .activation(cfg_str(cfg, "activation"))
        .expect("activation")
        .data_format(data_format(cfg))
}

fn conv2d_transpose_from(cfg: &Value) -> Conv2DTranspose {
    let mut layer = Conv2DTranspose::new(cfg_usize(cfg, "filters"), cfg_pair(cfg, "kernel_size"))
        .strides(cfg_pair(cfg, "strides"))
        .padding(cfg_str(cfg, "padding"))
        .expect("padding")
        .dilation_rate(cfg_pair(cfg, "dilation_rate"))
        .activation(cfg_str(cfg, "activation"))
        .expect("activation")
        .data_format(data_format(cfg));
    if let Some(p) = cfg["output_padding"].as_u64() {
        layer = layer.output_padding(p as usize);
    } else if !cfg["output_padding"].is_null() {
        layer = layer.output_padding(cfg_pair(cfg, "output_padding"));
    }
    layer
}

/// Builds the layer with one call, then sets the fixture's kernel and bias.
fn set_conv_weights(
    layer: &mut dyn Layer,
    case: &Value,
) -> ferrokeras::Result<(Variable, Variable)> {
    layer.call(&tensor(&case["x"]), false)?;
    let vars = layer.variables();
    assert_eq!(vars.len(), 2, "kernel and bias");
    vars[0].assign(&tensor(&case["kernel"]))?;
    vars[1].assign(&tensor(&case["bias"]))?;
    Ok((vars[0].clone(), vars[1].clone()))
}

fn pooling_from(case: &Value) -> Box<dyn Layer> {
    let cfg = &case["config"];
    let kind = case["layer"].as_str().expect("layer kind");
    match kind {
        "max" => Box::new(
            MaxPooling2D::new(cfg_pair(cfg, "pool_size"))
                .strides(cfg_pair(cfg, "strides"))
                .padding(cfg_str(cfg, "padding"))
                .expect("padding")
                .data_format(data_format(cfg)),
        ),
        "avg" => Box::new(
            AveragePooling2D::new(cfg_pair(cfg, "pool_size"))
                .strides(cfg_pair(cfg, "strides"))
                .padding(cfg_str(cfg, "padding"))
                .expect("padding")
                .data_format(data_format(cfg)),
        ),
        "global_max" => Box::new(GlobalMaxPooling2D::new().data_format(data_format(cfg))),
        "global_avg" => Box::new(GlobalAveragePooling2D::new().data_format(data_format(cfg))),
        "upsampling" => {
            Box::new(UpSampling2D::new(cfg_pair(cfg, "size")).data_format(data_format(cfg)))
        }
        other => panic!("unknown pooling layer {other:?} in the fixtures"),
    }
}

/// A BatchNormalization built with one call, with the fixture's gamma, beta and moving statistics.
fn batch_norm_from(case: &Value) -> (BatchNormalization, Vec<Variable>) {
    let cfg = &case["config"];
    let mut bn = BatchNormalization::new()
        .momentum(cfg_f64(cfg, "momentum"))
        .epsilon(cfg_f64(cfg, "epsilon"));
    bn.call(&tensor(&case["x"]), false).expect("build");
    let vars = bn.variables();
    assert_eq!(vars.len(), 4, "gamma, beta, moving_mean, moving_variance");
    reset_batch_norm(&vars, case);
    (bn, vars)
}

fn reset_batch_norm(vars: &[Variable], case: &Value) {
    for (v, key) in vars
        .iter()
        .zip(["gamma", "beta", "moving_mean", "moving_variance"])
    {
        v.assign(&tensor(&case[key])).expect("assign");
    }
}

// ------------------------------------------------------------------------------------------------
// parity with Keras
// ------------------------------------------------------------------------------------------------

const CONV_GRADS: [&str; 3] = ["grad_x", "grad_kernel", "grad_bias"];

#[test]
fn conv2d_matches_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "conv2d");
    assert_eq!(cases.len(), 18, "expected 18 Conv2D cases");
    let mut fwd = Group::new("conv2d forward");
    let mut bwd = Group::new("conv2d gradients");
    for case in cases {
        let name = name_of(case);
        let mut layer = conv2d_from(&case["config"]);
        match set_conv_weights(&mut layer, case) {
            Ok((k, b)) => check_case(
                &mut fwd,
                &mut bwd,
                name,
                &mut layer,
                case,
                &[k, b],
                &CONV_GRADS,
                false,
                "y",
            ),
            Err(e) => fwd.fail(name, e),
        }
    }
    finish(&[&fwd, &bwd]);
}

#[test]
fn conv2d_transpose_matches_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "conv2d_transpose");
    assert_eq!(cases.len(), 16, "expected 16 Conv2DTranspose cases");
    let mut fwd = Group::new("conv2d_transpose forward");
    let mut bwd = Group::new("conv2d_transpose gradients");
    for case in cases {
        let name = name_of(case);
        let mut layer = conv2d_transpose_from(&case["config"]);
        match set_conv_weights(&mut layer, case) {
            Ok((k, b)) => check_case(
                &mut fwd,
                &mut bwd,
                name,
                &mut layer,
                case,
                &[k, b],
                &CONV_GRADS,
                false,
                "y",
            ),
            Err(e) => fwd.fail(name, e),
        }
    }
    finish(&[&fwd, &bwd]);
}

#[test]
fn pooling_and_upsampling_match_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "pooling");
    assert_eq!(cases.len(), 26, "expected 26 pooling/upsampling cases");
    let mut fwd = Group::new("pooling forward");
    let mut bwd = Group::new("pooling gradients");
    for case in cases {
        let mut layer = pooling_from(case);
        check_case(
            &mut fwd,
            &mut bwd,
            name_of(case),
            &mut layer,
            case,
            &[],
            &["grad_x"],
            false,
            "y",
        );
    }
    finish(&[&fwd, &bwd]);
}

#[test]
fn batch_normalization_matches_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "batch_norm");
    assert_eq!(cases.len(), 3, "expected 3 BatchNormalization cases");
    let mut fwd = Group::new("batch_norm forward + moving statistics");
    let mut bwd = Group::new("batch_norm gradients");
    for case in cases {
        let name = name_of(case);
        let (mut bn, vars) = batch_norm_from(case);
        let trainable = [vars[0].clone(), vars[1].clone()];

        // training: batch statistics, gradients through them, one moving-average update
        check_case(
            &mut fwd,
            &mut bwd,
            &format!("{name} training"),
            &mut bn,
            case,
            &trainable,
            &["grad_x_train", "grad_gamma_train", "grad_beta_train"],
            true,
            "y_train",
        );
        for (v, key) in vars[2..]
            .iter()
            .zip(["moving_mean_after", "moving_variance_after"])
        {
            fwd.close_t(
                &format!("{name} {key}"),
                &v.value(),
                &tensor(&case[key]),
                FWD_RTOL,
                FWD_ATOL,
            );
        }

        // inference: the given moving statistics, which stay unchanged
        reset_batch_norm(&vars, case);
        check_case(
            &mut fwd,
            &mut bwd,
            &format!("{name} inference"),
            &mut bn,
            case,
            &trainable,
            &["grad_x_infer", "grad_gamma_infer", "grad_beta_infer"],
            false,
            "y_infer",
        );
        for (v, key) in vars[2..].iter().zip(["moving_mean", "moving_variance"]) {
            fwd.close_t(
                &format!("{name} inference leaves {key}"),
                &v.value(),
                &tensor(&case[key]),
                0.0,
                0.0,
            );
        }
    }
    finish(&[&fwd, &bwd]);
}

// ------------------------------------------------------------------------------------------------
// finite differences (independent of Keras: the tape's gradients against central differences)
// ------------------------------------------------------------------------------------------------

#[test]
fn conv2d_gradients_match_finite_differences() {
    let fx = fixtures();
    let mut g = Group::new("conv2d finite differences");
    for case in cases(&fx, "conv2d") {
        let name = name_of(case);
        if case["config"]["activation"] != "linear" {
            continue; // relu's kink lies within the step of some pre-activations
        }
        let mut layer = conv2d_from(&case["config"]);
        let (k, b) = set_conv_weights(&mut layer, case).expect("weights");
        let (x, u) = (tensor(&case["x"]), tensor(&case["upstream"]));
        fd_check(&mut g, name, &mut layer, &x, &u, false, &[k, b]);
    }
    finish(&[&g]);
}

#[test]
fn conv2d_transpose_gradients_match_finite_differences() {
    let fx = fixtures();
    let mut g = Group::new("conv2d_transpose finite differences");
    for case in cases(&fx, "conv2d_transpose") {
        let mut layer = conv2d_transpose_from(&case["config"]);
        let (k, b) = set_conv_weights(&mut layer, case).expect("weights");
        let (x, u) = (tensor(&case["x"]), tensor(&case["upstream"]));
        fd_check(&mut g, name_of(case), &mut layer, &x, &u, false, &[k, b]);
    }
    finish(&[&g]);
}

#[test]
fn pooling_gradients_match_finite_differences() {
    // The pooling inputs (but those of the `ties` cases) are distinct multiples of 1/16, so a step
    // of 1/64 never changes which element of a max-pooling window is the largest.
    let fx = fixtures();
    let mut g = Group::new("pooling finite differences");
    for case in cases(&fx, "pooling") {
        if case["ties"] == true {
            continue; // a tied maximum has no derivative
        }
        let mut layer = pooling_from(case);
        let (x, u) = (tensor(&case["x"]), tensor(&case["upstream"]));
        fd_check(&mut g, name_of(case), &mut layer, &x, &u, false, &[]);
    }
    finish(&[&g]);
}

#[test]
fn batch_normalization_gradients_match_finite_differences() {
    let fx = fixtures();
    let mut g = Group::new("batch_norm finite differences");
    for case in cases(&fx, "batch_norm") {
        let name = name_of(case);
        let (x, u) = (tensor(&case["x"]), tensor(&case["upstream"]));
        for training in [true, false] {
            let (mut bn, vars) = batch_norm_from(case);
            let label = format!("{name} {}", if training { "training" } else { "inference" });
            fd_check(
                &mut g,
                &label,
                &mut bn,
                &x,
                &u,
                training,
                &[vars[0].clone(), vars[1].clone()],
            );
        }
    }
    finish(&[&g]);
}

/// Large enough batches that the CPU convolutions split their patch buffer into several chunks
/// (`im2col::CHUNK_BYTES`, 16 MiB): the batch result equals the per-image results (outputs and input
/// gradients image by image, kernel and bias gradients summed over the images).
#[test]
fn chunked_convolutions_match_per_image_results() {
    let dev = ferrokeras::runtime::default_device();
    // deterministic pseudo-random multiples of 1/32 in [-1, 1)
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut fill = |dims: &[usize]| {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) % 64) as f32 / 32.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, dims, &dev).unwrap()
    };
    let mut g = Group::new("chunked convolutions vs per image");
    // Conv2D: 56*56 patches of 3*3*64 values = 7.2 MB per image -> 2 images per chunk.
    // Conv2DTranspose: 32*32 positions x 4*4*128 values = 8.4 MB per image -> 1 per chunk.
    let specs: Vec<(&str, Box<dyn Layer>, Vec<usize>)> = vec![
        (
            "Conv2D(8, (3,3))",
            Box::new(Conv2D::new(8, (3, 3))),
            vec![3, 58, 58, 64],
        ),
        (
            "Conv2DTranspose(128, (4,4), strides 2, same)",
            Box::new(
                Conv2DTranspose::new(128, (4, 4))
                    .strides(2)
                    .padding("same")
                    .unwrap(),
            ),
            vec![3, 32, 32, 2],
        ),
    ];
    for (label, mut layer, x_dims) in specs {
        let x = fill(&x_dims);
        let y0 = layer.call(&x, false).expect("build");
        let vars = layer.variables();
        for v in &vars {
            v.assign(&(fill(v.shape().dims()) * 0.125).unwrap())
                .unwrap();
        }
        let u = fill(y0.dims());
        let (y, grads) = forward_and_grads(layer.as_mut(), &x, &u, false, &vars).expect("batch");
        let mut kernel_sum: Option<Tensor> = None;
        let mut bias_sum: Option<Tensor> = None;
        for i in 0..x_dims[0] {
            let xi = x.narrow(0, i, 1).unwrap();
            let ui = u.narrow(0, i, 1).unwrap();
            let (yi, gi) =
                forward_and_grads(layer.as_mut(), &xi, &ui, false, &vars).expect("one image");
            g.close_t(
                &format!("{label} y[{i}]"),
                &y.narrow(0, i, 1).unwrap(),
                &yi,
                FWD_RTOL,
                FWD_ATOL,
            );
            g.close_t(
                &format!("{label} grad_x[{i}]"),
                &grads[0].narrow(0, i, 1).unwrap(),
                &gi[0],
                GRAD_RTOL,
                GRAD_ATOL,
            );
            let add = |acc: Option<Tensor>, t: &Tensor| match acc {
                None => t.clone(),
                Some(a) => (a + t).unwrap(),
            };
            kernel_sum = Some(add(kernel_sum, &gi[1]));
            bias_sum = Some(add(bias_sum, &gi[2]));
        }
        g.close_t(
            &format!("{label} grad_kernel"),
            &grads[1],
            &kernel_sum.unwrap(),
            GRAD_RTOL,
            1e-3,
        );
        g.close_t(
            &format!("{label} grad_bias"),
            &grads[2],
            &bias_sum.unwrap(),
            GRAD_RTOL,
            1e-3,
        );
    }
    finish(&[&g]);
}

/// A layer built from the Keras config stored with a fixture case (what `model_from_json`
/// reads), built for the case's input.
fn layer_from_keras_config(class: &str, case: &Value, input_shape: &[usize]) -> Box<dyn Layer> {
    let mut layer = ferrokeras::layers::from_config(class, &case["keras_config"])
        .unwrap_or_else(|e| panic!("{class} from Keras's config: {e}"));
    layer.build(input_shape).expect("build");
    layer
}

#[test]
fn layer_normalization_matches_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "layer_norm");
    assert_eq!(cases.len(), 3, "expected 3 LayerNormalization cases");
    let mut fwd = Group::new("layer_norm forward");
    let mut bwd = Group::new("layer_norm gradients");
    for case in cases {
        let x = tensor(&case["x"]);
        let mut layer = layer_from_keras_config("LayerNormalization", case, &x.dims()[1..]);
        let vars = layer.variables();
        assert_eq!(vars.len(), 2, "gamma, beta");
        for (v, key) in vars.iter().zip(["gamma", "beta"]) {
            v.assign(&tensor(&case[key])).expect("assign");
        }
        check_case(
            &mut fwd,
            &mut bwd,
            name_of(case),
            layer.as_mut(),
            case,
            &vars,
            &["grad_x", "grad_gamma", "grad_beta"],
            true,
            "y",
        );
    }
    finish(&[&fwd, &bwd]);
}

/// Rows looked up as Keras looks them up, the table's gradient (rows of a repeated id add
/// up, rows never looked up get zero), and ids out of range refused with the range.
#[test]
fn embedding_matches_keras() {
    let fx = fixtures();
    let case = &cases(&fx, "embedding")[0];
    let ids = tensor(&case["ids"]);
    let mut layer = layer_from_keras_config("Embedding", case, &ids.dims()[1..]);
    let table = layer.variables();
    assert_eq!(table.len(), 1);
    table[0].assign(&tensor(&case["embeddings"])).unwrap();
    let mut fwd = Group::new("embedding forward");
    let mut bwd = Group::new("embedding gradient");
    for dtype in [DType::F32, DType::U32, DType::I64] {
        let y = layer.call(&ids.to_dtype(dtype).unwrap(), true).unwrap();
        fwd.close_t(
            &format!("ids as {dtype:?}"),
            &y,
            &tensor(&case["y"]),
            FWD_RTOL,
            FWD_ATOL,
        );
        let loss = objective(&y, &tensor(&case["upstream"])).unwrap();
        let g = GradientTape::gradient(&loss, &table).unwrap();
        bwd.close_t(
            &format!("ids as {dtype:?}"),
            &g[0],
            &tensor(&case["grad_embeddings"]),
            GRAD_RTOL,
            GRAD_ATOL,
        );
    }
    finish(&[&fwd, &bwd]);
    let dev = ferrokeras::runtime::default_device();
    if dev.is_cpu() {
        for bad in [10f32, -1.0] {
            let err = layer
                .call(&Tensor::new(&[[1f32, bad]], &dev).unwrap(), false)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("ids must be in [0, 10)") && err.contains(&format!("id {bad}")),
                "{err}"
            );
        }
    }
}

/// Conv1D (valid, same with stride 2, causal with dilation 2, channels-first), ZeroPadding2D,
/// Cropping2D, Rescaling, the 1-D poolings, Softmax over a middle axis, RepeatVector, Permute
/// and UpSampling1D, each built from Keras's own config: outputs and gradients (input and
/// weights) against Keras.
#[test]
fn more_layers_match_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "more_layers");
    assert_eq!(cases.len(), 18, "expected 18 cases");
    config_built_cases_match(cases, "more layers");
}

/// SimpleRNN, LSTM, GRU, Bidirectional and TimeDistributed, built from Keras's configs, against Keras's outputs and gradients.
#[test]
fn recurrent_layers_match_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "recurrent");
    assert_eq!(cases.len(), 15, "expected 15 cases");
    config_built_cases_match(cases, "recurrent");
}

/// Cases with `keras_config`, `weights`, `y`, `grad_x` and `grad_weights`: the layer is built
/// from Keras's config and given Keras's weights.
fn config_built_cases_match(cases: &[Value], group: &str) {
    let mut fwd = Group::new(format!("{group} forward"));
    let mut bwd = Group::new(format!("{group} gradients"));
    for case in cases {
        let x = tensor(&case["x"]);
        let class = case["class"].as_str().unwrap();
        let mut layer = layer_from_keras_config(class, case, &x.dims()[1..]);
        let vars = layer.variables();
        let weights = case["weights"].as_array().unwrap();
        assert_eq!(vars.len(), weights.len(), "{}", name_of(case));
        for (v, w) in vars.iter().zip(weights) {
            v.assign(&tensor(w)).expect("assign");
        }
        // The gradient keys: the input's, then one per weight (stored as a list).
        let mut case = case.clone();
        let mut keys = vec!["grad_x".to_string()];
        for (i, g) in case["grad_weights"]
            .as_array()
            .unwrap()
            .clone()
            .iter()
            .enumerate()
        {
            let key = format!("grad_w{i}");
            case[&key] = g.clone();
            keys.push(key);
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        check_case(
            &mut fwd,
            &mut bwd,
            name_of(&case),
            layer.as_mut(),
            &case,
            &vars,
            &keys,
            true,
            "y",
        );
    }
    finish(&[&fwd, &bwd]);
}

/// DepthwiseConv2D and SeparableConv2D, built from Keras's configs, against Keras's outputs and
/// gradients (input, depthwise and pointwise kernels, bias).
#[test]
fn depthwise_and_separable_convolutions_match_keras() {
    let fx = fixtures();
    let cases = cases(&fx, "depthwise");
    assert_eq!(cases.len(), 7, "expected 7 cases");
    config_built_cases_match(cases, "depthwise");
}
