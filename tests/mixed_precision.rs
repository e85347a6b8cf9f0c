//! Mixed precision as Keras 3 defines it: dtype policies (`mixed_bfloat16`, `mixed_float16`),
//! float32 variables under a lower-precision compute dtype, float32 losses, and dynamic loss
//! scaling (`LossScaleOptimizer`) wrapped in by `compile` under `mixed_float16` and usable from
//! a custom `train_step`.
//!
//! The global policy and the random generator are process-wide: every test takes [`serial`].

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Tensor};
use ferrokeras::mixed_precision::{self, DTypePolicy};
use ferrokeras::optimizers::{LossScaleOptimizer, Optimizer, Sgd};
use ferrokeras::prelude::*;
use ferrokeras::random::set_random_seed;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn dev() -> candle_core::Device {
    ferrokeras::runtime::default_device()
}

/// A linear regression target over `d` features.
fn data(n: usize, d: usize) -> (Tensor, Tensor) {
    let xs: Vec<f32> = (0..n * d).map(|i| ((i as f32) * 0.37).sin()).collect();
    let ys: Vec<f32> = (0..n)
        .map(|r| (0..d).map(|c| xs[r * d + c] * (c as f32 - 1.5) * 0.5).sum())
        .collect();
    (
        Tensor::from_vec(xs, (n, d), &dev()).unwrap(),
        Tensor::from_vec(ys, (n, 1), &dev()).unwrap(),
    )
}

fn mlp(policy: &str) -> Sequential {
    Sequential::new()
        .input(&[4])
        .add(
            Dense::new(16)
                .activation("relu")
                .unwrap()
                .dtype(policy)
                .unwrap(),
        )
        .add(Dense::new(1).dtype(policy).unwrap())
}

fn final_loss(policy: &str) -> (f64, f64) {
    set_random_seed(3);
    let (x, y) = data(256, 4);
    let mut m = mlp(policy)
        .compile(Compile::new().optimizer(Adam::new(0.01)).loss("mse"))
        .unwrap();
    let h = m
        .fit(
            (x, y),
            FitOptions::new().epochs(8).batch_size(32).verbose(0),
        )
        .unwrap();
    let losses = h.get("loss");
    (losses[0], *losses.last().unwrap())
}

#[test]
fn policies_have_keras_names_and_dtypes() {
    let p = DTypePolicy::new("mixed_bfloat16").unwrap();
    assert_eq!(
        (p.compute_dtype(), p.variable_dtype()),
        (DType::BF16, DType::F32)
    );
    let p = DTypePolicy::new("mixed_float16").unwrap();
    assert_eq!(p.compute_dtype(), DType::F16);
    assert!(p.needs_loss_scaling());
    assert!(
        !DTypePolicy::new("mixed_bfloat16")
            .unwrap()
            .needs_loss_scaling()
    );
    let err = DTypePolicy::new("float64x").unwrap_err().to_string();
    assert!(
        err.contains("unknown dtype policy \"float64x\"") && err.contains("mixed_bfloat16"),
        "{err}"
    );
    assert!(Dense::new(2).dtype("half").is_err());
}

#[test]
fn mixed_bfloat16_computes_in_bf16_and_keeps_float32_variables() {
    let _g = serial();
    set_random_seed(1);
    let mut layer = Dense::new(3).dtype("mixed_bfloat16").unwrap();
    let x = Tensor::ones((2, 5), DType::F32, &dev()).unwrap();
    let y = layer.call(&x, true).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let vars = layer.variables();
    assert!(vars.iter().all(|v| v.value().dtype() == DType::F32));
    // Gradients reach the float32 variables in float32.
    let loss = y.to_dtype(DType::F32).unwrap().sum_all().unwrap();
    let grads = GradientTape::gradient(&loss, &vars).unwrap();
    assert_eq!(grads[0].dtype(), DType::F32);
    // d(sum)/d(kernel) is the column sums of x: 2 for every entry.
    let g: Vec<f32> = grads[0].flatten_all().unwrap().to_vec1().unwrap();
    assert!(g.iter().all(|&v| v == 2.0), "{g:?}");

    // Convolutions too; a float32 activation at the end gives a float32 output.
    let mut conv = ferrokeras::layers::Conv2D::new(2, (3, 3))
        .padding("same")
        .unwrap()
        .dtype("mixed_bfloat16")
        .unwrap();
    let img = Tensor::ones((1, 5, 5, 1), DType::F32, &dev()).unwrap();
    let out = conv.call(&img, false).unwrap();
    assert_eq!((out.dtype(), out.dims()), (DType::BF16, &[1, 5, 5, 2][..]));
    let mut last = ActivationLayer::new("softmax")
        .unwrap()
        .dtype("float32")
        .unwrap();
    assert_eq!(last.call(&out, false).unwrap().dtype(), DType::F32);
}

#[test]
fn mixed_bfloat16_trains_like_float32() {
    let _g = serial();
    let (f32_first, f32_last) = final_loss("float32");
    let (bf_first, bf_last) = final_loss("mixed_bfloat16");
    // Same initial weights (same seed), so the first epochs agree to bf16 precision...
    assert!(
        (bf_first - f32_first).abs() < 0.02 * f32_first,
        "{bf_first} vs {f32_first}"
    );
    // ...and both learn the target (the loss falls by far more than bf16 noise).
    assert!(bf_last < 0.2 * bf_first, "{bf_first} -> {bf_last}");
    assert!(
        (bf_last - f32_last).abs() < 0.05 * f32_first,
        "{bf_last} vs {f32_last}"
    );
}

#[test]
fn loss_scale_optimizer_scales_unscales_skips_and_grows() {
    let w = Variable::new("w", &Tensor::new(&[1f32, 2.0], &dev()).unwrap(), true).unwrap();
    let mut opt = LossScaleOptimizer::new(Sgd::new(0.5)).dynamic_growth_steps(2);
    assert_eq!(opt.dynamic_scale(), 32768.0);
    let loss = Tensor::new(0.25f32, &dev()).unwrap();
    let scaled = opt.scale_loss(&loss).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(scaled, 0.25 * 32768.0);
    let g = |a: f32, b: f32| Tensor::new(&[a, b], &dev()).unwrap();
    // Finite: w -= 0.5 * g / scale.
    opt.apply(&[g(32768.0, -65536.0)], std::slice::from_ref(&w))
        .unwrap();
    assert_eq!(w.value().to_vec1::<f32>().unwrap(), vec![0.5, 3.0]);
    assert_eq!((opt.iterations(), opt.dynamic_scale()), (1, 32768.0));
    // Second finite step in a row: the scale doubles (growth every 2 steps here).
    opt.apply(&[g(0.0, 0.0)], std::slice::from_ref(&w)).unwrap();
    assert_eq!(opt.dynamic_scale(), 65536.0);
    // A NaN anywhere: no update, no iteration, the scale halves.
    opt.apply(&[g(f32::NAN, 1.0)], std::slice::from_ref(&w))
        .unwrap();
    assert_eq!(w.value().to_vec1::<f32>().unwrap(), vec![0.5, 3.0]);
    assert_eq!((opt.iterations(), opt.dynamic_scale()), (2, 32768.0));
    opt.apply(&[g(f32::INFINITY, 1.0)], std::slice::from_ref(&w))
        .unwrap();
    assert_eq!(opt.dynamic_scale(), 16384.0);

    // The scale and the step counter travel with the optimizer's state.
    let state = opt.state().unwrap();
    assert!(
        state
            .iter()
            .any(|(k, _)| k == "loss_scale_optimizer/dynamic_scale")
    );
    let mut other = LossScaleOptimizer::new(Sgd::new(0.5));
    other.load_state(&state, std::slice::from_ref(&w)).unwrap();
    assert_eq!(other.dynamic_scale(), 16384.0);
    assert_eq!(other.iterations(), 2);
    let mut bad = state.clone();
    for (k, t) in bad.iter_mut() {
        if k == "loss_scale_optimizer/dynamic_scale" {
            *t = Tensor::new(-1f64, &dev()).unwrap();
        }
    }
    let err = other
        .load_state(&bad, std::slice::from_ref(&w))
        .unwrap_err()
        .to_string();
    assert!(err.contains("positive"), "{err}");
}

#[test]
fn mixed_float16_compile_wraps_the_optimizer_and_fit_trains() {
    let _g = serial();
    mixed_precision::set_global_policy("mixed_float16").unwrap();
    set_random_seed(5);
    let (x, y) = data(128, 4);
    let model = Sequential::new()
        .input(&[4])
        .add(Dense::new(8).activation("tanh").unwrap())
        .add(Dense::new(1));
    let compiled = model.compile(Compile::new().optimizer(Sgd::new(0.05)).loss("mse"));
    // Back to float32 before anything can fail, so that a failure does not leak the policy.
    mixed_precision::set_global_policy("float32").unwrap();
    let mut m = compiled.unwrap();
    let h = m
        .fit(
            (x, y),
            FitOptions::new().epochs(5).batch_size(16).verbose(0),
        )
        .unwrap();
    let opt = m.context().optimizer().unwrap();
    assert_eq!(opt.name(), "loss_scale_optimizer");
    // 40 finite steps: every one updated the weights.
    assert_eq!(opt.iterations(), 40);
    let losses = h.get("loss");
    // The loss tracker sees the unscaled loss (a scaled one would be ~32768 times larger).
    assert!(losses[0] < 10.0, "{losses:?}");
    assert!(losses[4] < 0.5 * losses[0], "{losses:?}");
}

/// TensorFloat-32 (`runtime::enable_tensor_float_32_execution`): off by default; on a CUDA device
/// it rounds float32 products' inputs to TF32 (results within 1e-2 of float32's, and visibly not
/// float32's), and on the CPU it changes nothing.
#[test]
fn tensor_float_32_changes_only_cuda_products() {
    let _g = serial();
    assert!(!ferrokeras::runtime::tensor_float_32_execution_enabled());
    let (m, k, n) = (128, 512, 96);
    let a: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.731).sin()).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i as f32) * 0.377).cos()).collect();
    let cpu = candle_core::Device::Cpu;
    let product = |d: &candle_core::Device| {
        let a = Tensor::from_slice(&a, (m, k), d).unwrap();
        let b = Tensor::from_slice(&b, (k, n), d).unwrap();
        a.matmul(&b).unwrap().to_device(&cpu).unwrap()
    };
    let rel = |x: &Tensor, y: &Tensor| {
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        let s = y.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap()
    };
    let reference = product(&cpu);
    let full = product(&dev());
    ferrokeras::runtime::enable_tensor_float_32_execution(true);
    let tf32 = product(&dev());
    ferrokeras::runtime::enable_tensor_float_32_execution(false);
    assert!(
        rel(&full, &reference) < 1e-5,
        "float32: {}",
        rel(&full, &reference)
    );
    if dev().is_cpu() {
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(&tf32), bits(&reference));
    } else {
        let e = rel(&tf32, &reference);
        assert!(e > 1e-5 && e < 1e-2, "TF32 against float32: {e}");
    }
}

/// A CUDA device opened by name allocates its buffers without cudarc's two events each (four
/// driver calls per op, read only when a context runs several streams), unless
/// `FERROKERAS_CUDA_EVENTS=on`; a device made with candle's own constructor keeps cudarc's
/// default until it is given to `set_default_device`, and a device without events computes.
#[test]
fn cuda_devices_opened_by_name_allocate_without_events() {
    use ferrokeras::runtime::{cuda_event_tracking, default_device, device_from_name};
    let keep = std::env::var("FERROKERAS_CUDA_EVENTS").is_ok_and(|v| v == "on");
    let d = default_device();
    assert_eq!(cuda_event_tracking(&d), d.is_cuda() && keep);
    assert!(!cuda_event_tracking(&device_from_name("cpu").unwrap()));
    if d.is_cuda() {
        let raw = candle_core::Device::new_cuda(0).unwrap();
        assert!(cuda_event_tracking(&raw), "cudarc tracks events by default");
        let named = device_from_name("cuda").unwrap();
        assert_eq!(cuda_event_tracking(&named), keep);
        let t = Tensor::new(&[1f32, 2.0, 3.0], &named).unwrap();
        let t = ((&t * 2.0).unwrap() + &t).unwrap().sum_all().unwrap();
        assert_eq!(t.to_scalar::<f32>().unwrap(), 18.0);
    }
}
