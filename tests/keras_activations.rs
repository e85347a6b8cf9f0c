//! Every built-in activation, by its Keras name: values and gradients against Keras 3
//! (`tests/fixtures/keras_activations.json`, made by `make_keras_activation_fixtures.py`), on
//! their own and inside a Dense layer.

use candle_core::{Device, Tensor};
use serde_json::Value;

use ferrokeras::layers::{Activation, ActivationLayer, Dense, Layer};
use ferrokeras::{GradientTape, Variable};

// Reads its fixture only; the rows helper below builds its tensors.
#[allow(dead_code)]
#[path = "support/fixtures.rs"]
mod support;

fn fixtures() -> Value {
    support::read("keras_activations.json")
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn tensor(v: &[Vec<f32>]) -> Tensor {
    Tensor::new(v.to_vec(), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    for (i, (g, w)) in got.iter().flatten().zip(want.iter().flatten()).enumerate() {
        let ok = (g - w).abs() <= 2e-6 + 1e-5 * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}, value {i}: {g} vs Keras {w}");
    }
}

/// Each name parses, gives Keras's values and, through the tape, Keras's gradient of
/// `sum(w * f(x))`, corners (0, ±0.5, ±1, ±3, 6) included; each serializes under Keras's name
/// (`"swish"` is `"silu"`).
#[test]
fn every_activation_matches_keras() {
    let fx = fixtures();
    let (x, w) = (rows(&fx["x"]), rows(&fx["w"]));
    let acts = fx["activations"].as_object().unwrap();
    assert_eq!(acts.len(), 29);
    for (name, case) in acts {
        let act: Activation = name.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(act.name(), case["serialized"].as_str().unwrap(), "{name}");
        // Untracked input: the plain value.
        let y = act.apply(&tensor(&x)).unwrap();
        assert_close(name, &y.to_vec2::<f32>().unwrap(), &rows(&case["y"]));
        // Tracked input: the value and the gradient, through a layer.
        let v = Variable::new("x", &tensor(&x), true).unwrap();
        let mut layer = ActivationLayer::new(name).unwrap();
        let y = layer.call(v.as_tensor(), true).unwrap();
        assert_close(name, &y.to_vec2::<f32>().unwrap(), &rows(&case["y"]));
        let loss = (&y * &tensor(&w)).unwrap().sum_all().unwrap();
        let g = GradientTape::gradient(&loss, std::slice::from_ref(&v)).unwrap();
        let mut want = rows(&case["grad"]);
        if name == "leaky_relu" {
            // At 0 ferrokeras takes TensorFlow's slope (0.2); JAX, Keras's backend here, takes 1.
            let i = x[0].iter().position(|v| *v == 0.0).unwrap();
            want[0][i] *= 0.2;
        }
        assert_close(
            &format!("{name} gradient"),
            &g[0].to_vec2::<f32>().unwrap(),
            &want,
        );
    }
}

/// A Dense layer with any activation trains: a 1-unit layer with kernel 1 and no bias is the
/// activation, and its kernel's gradient is the activation's derivative times the input.
#[test]
fn dense_layers_apply_every_activation() {
    let fx = fixtures();
    let x = rows(&fx["x"]);
    let column: Vec<Vec<f32>> = x[0].iter().map(|v| vec![*v]).collect();
    for (name, case) in fx["activations"].as_object().unwrap() {
        if name.contains("softmax") {
            continue; // over the last axis: a 1-unit layer is constant
        }
        let mut dense = Dense::new(1).activation(name).unwrap().use_bias(false);
        dense.build(&[1]).unwrap();
        let kernel = &dense.variables()[0];
        kernel
            .assign(&Tensor::new(&[[1f32]], &Device::Cpu).unwrap())
            .unwrap();
        let y = dense.call(&tensor(&column), true).unwrap();
        let want: Vec<Vec<f32>> = rows(&case["y"])[0].iter().map(|v| vec![*v]).collect();
        assert_close(name, &y.to_vec2::<f32>().unwrap(), &want);
        let loss = y.sum_all().unwrap();
        let g = GradientTape::gradient(&loss, std::slice::from_ref(kernel)).unwrap();
        let g = g[0].to_vec2::<f32>().unwrap()[0][0];
        // d/dk Σ f(k x) at k = 1 is Σ f'(x) x, with Keras's f'(x) = grad / w.
        let (grad, w) = (&rows(&case["grad"])[0], &rows(&fx["w"])[0]);
        let want: f64 = (0..x[0].len())
            .map(|i| (grad[i] / w[i]) as f64 * x[0][i] as f64) // (x = 0 adds nothing)
            .sum();
        assert!(
            (g as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{name}: kernel gradient {g} vs Keras {want}"
        );
    }
}

/// An unknown name lists the ones accepted.
#[test]
fn unknown_activation_names_list_the_known_ones() {
    let err = "swishy".parse::<Activation>().unwrap_err().to_string();
    assert!(err.contains("\"swishy\""), "{err}");
    assert!(
        err.contains("\"hard_silu\"") && err.contains("\"mish\""),
        "{err}"
    );
}

/// A convolution applies its activation inside its graph node (channels last and first, and
/// transposed): the same values and gradients as the linear convolution followed by the
/// activation as a layer of its own.
#[test]
fn convolutions_apply_every_activation() {
    use ferrokeras::layers::{Conv2D, Conv2DTranspose, DataFormat};
    let x = ferrokeras::random::uniform(&[2, 5, 5, 3], -2.0, 2.0, &Device::Cpu).unwrap();
    let names = [
        "elu",
        "selu",
        "mish",
        "silu",
        "softplus",
        "relu6",
        "log_softmax",
        "hard_silu",
    ];
    for name in names {
        for (transposed, format) in [
            (false, DataFormat::ChannelsLast),
            (false, DataFormat::ChannelsFirst),
            (true, DataFormat::ChannelsLast),
        ] {
            let case = format!("{name} transposed {transposed} {format:?}");
            let input = match format {
                DataFormat::ChannelsLast => x.clone(),
                DataFormat::ChannelsFirst => x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap(),
            };
            let make = |activation: &str| -> Box<dyn Layer> {
                if transposed {
                    Box::new(
                        Conv2DTranspose::new(4, (3, 3))
                            .activation(activation)
                            .unwrap()
                            .data_format(format),
                    )
                } else {
                    Box::new(
                        Conv2D::new(4, (3, 3))
                            .activation(activation)
                            .unwrap()
                            .data_format(format),
                    )
                }
            };
            let (mut fused, mut plain) = (make(name), make("linear"));
            fused.build(&input.dims()[1..]).unwrap();
            plain.build(&input.dims()[1..]).unwrap();
            for (a, b) in fused.variables().iter().zip(plain.variables()) {
                b.assign(&a.value()).unwrap();
            }
            let v = Variable::new("x", &input, true).unwrap();
            let mut after = ActivationLayer::new(name).unwrap();
            let y_fused = fused.call(v.as_tensor(), true).unwrap();
            // log_softmax goes over the last axis of the output as stored (channels for channels
            // last): compare with the layer on that layout.
            let y_plain = after
                .call(&plain.call(v.as_tensor(), true).unwrap(), true)
                .unwrap();
            let diff = (&y_fused - &y_plain)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{case}: values differ by {diff}");
            let w = ferrokeras::random::uniform(y_fused.dims(), -1.0, 1.0, &Device::Cpu).unwrap();
            let mut vars = vec![v.clone()];
            vars.extend(fused.variables());
            let g1 = GradientTape::gradient(&(&y_fused * &w).unwrap().sum_all().unwrap(), &vars)
                .unwrap();
            let mut vars = vec![v.clone()];
            vars.extend(plain.variables());
            let g2 = GradientTape::gradient(&(&y_plain * &w).unwrap().sum_all().unwrap(), &vars)
                .unwrap();
            for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                let d = d.to_scalar::<f32>().unwrap();
                assert!(d < 1e-3, "{case}: gradient {i} differs by {d}");
            }
        }
    }
}
