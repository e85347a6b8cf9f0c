//! `Normalization` against Keras 3 (`tests/fixtures/keras_normalization.json`, made by
//! `make_keras_normalization_fixtures.py`): the statistics `adapt` learns over every choice of
//! kept axes, inverted and given statistics, and the outputs; adapting batch by batch equals
//! adapting at once; an adapted layer in front of a model trains and goes through `.keras`.

use candle_core::{DType, Device, Tensor};
use ferrokeras::layers::{Layer, Normalization};
use ferrokeras::prelude::*;

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{read, tensor};

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs Keras {w}"
        );
    }
}

#[test]
fn normalization_matches_keras() {
    let fx = read("keras_normalization.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut layer =
            ferrokeras::layers::from_config("Normalization", &case["keras_config"]).unwrap();
        let x = tensor(&case["x"]);
        if case.get("adapt").is_some() {
            let data = tensor(&case["adapt"]);
            // `from_config` gives a `Box<dyn Layer>`; adapt a layer of the same config.
            let mut n = Normalization::new();
            let axis: Vec<isize> = case["keras_config"]["axis"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_i64().unwrap() as isize)
                .collect();
            n = n
                .axis(&axis)
                .invert(case["keras_config"]["invert"].as_bool().unwrap());
            n.adapt(&data).unwrap();
            let vars = n.variables();
            close(
                &format!("{name} mean"),
                &flat(vars[0].as_tensor()),
                &flat(&tensor(&case["mean"])),
                1e-5,
            );
            close(
                &format!("{name} variance"),
                &flat(vars[1].as_tensor()),
                &flat(&tensor(&case["variance"])),
                1e-5,
            );
            let y = n.call(&x, false).unwrap();
            close(
                &format!("{name} y"),
                &flat(&y),
                &flat(&tensor(&case["y"])),
                1e-5,
            );
            // The same config, given the same statistics as weights.
            layer.build(&x.dims()[1..]).unwrap();
            let lv = layer.variables();
            lv[0].assign(vars[0].as_tensor()).unwrap();
            lv[1].assign(vars[1].as_tensor()).unwrap();
        }
        let y = layer.call(&x, false).unwrap();
        close(
            &format!("{name} y (config)"),
            &flat(&y),
            &flat(&tensor(&case["y"])),
            1e-5,
        );
        assert_eq!(
            layer.config().unwrap()["axis"],
            case["keras_config"]["axis"],
            "{name}"
        );
    }
}

#[test]
fn adapting_by_batches_equals_adapting_at_once() {
    let dev = Device::Cpu;
    let data = (Tensor::rand(-3f32, 5.0, (23, 3, 4), &dev).unwrap() * 7.0).unwrap();
    for axis in [vec![-1isize], vec![], vec![1, 2], vec![1]] {
        let mut whole = Normalization::new().axis(&axis);
        whole.adapt(&data).unwrap();
        let mut parts = Normalization::new().axis(&axis);
        parts
            .adapt_batches([
                data.narrow(0, 0, 5).unwrap(),
                data.narrow(0, 5, 1).unwrap(),
                data.narrow(0, 6, 17).unwrap(),
            ])
            .unwrap();
        for (a, b) in whole.variables().iter().zip(parts.variables()) {
            close(
                &format!("{axis:?}"),
                &flat(b.as_tensor()),
                &flat(a.as_tensor()),
                1e-5,
            );
        }
    }
}

/// Features on scales a thousand times apart: adapted in front of the model, SGD trains; the
/// adapted statistics go through `.keras` with the model.
#[test]
fn an_adapted_layer_trains_and_saves_with_the_model() {
    ferrokeras::random::set_random_seed(3);
    let dev = Device::Cpu;
    let raw = Tensor::rand(0f32, 1.0, (256, 2), &dev).unwrap();
    let scale = Tensor::new(&[[1000f32, 0.001]], &dev).unwrap();
    let x = raw.broadcast_mul(&scale).unwrap();
    let y = (raw.narrow(1, 0, 1).unwrap() - raw.narrow(1, 1, 1).unwrap()).unwrap();
    let mut norm = Normalization::new();
    norm.adapt(&x).unwrap();
    let model = Sequential::new()
        .input(&[2])
        .add(norm)
        .add(Dense::new(8).activation("tanh").unwrap())
        .add(Dense::new(1));
    let mut t = model
        .compile(Compile::new().optimizer(Sgd::new(0.1)).loss("mse"))
        .unwrap();
    let h = t
        .fit(
            (x.clone(), y),
            FitOptions::new().epochs(30).batch_size(16).verbose(0),
        )
        .unwrap();
    let loss = h.get("loss");
    assert!(
        *loss.last().unwrap() < 0.01,
        "loss {:?} -> {:?}",
        loss.first(),
        loss.last()
    );
    let path = std::env::temp_dir().join(format!("ferrokeras-norm-{}.keras", std::process::id()));
    t.save(&path).unwrap();
    let mut loaded = ferrokeras::io::load_keras(&path).unwrap();
    let a = t.call(&Data::from(x.clone()), false).unwrap();
    let b = loaded.call(&Data::from(x), false).unwrap();
    assert_eq!(flat(a.tensor().unwrap()), flat(b.tensor().unwrap()));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn normalization_errors_name_the_problem() {
    let dev = Device::Cpu;
    let x = Tensor::ones((4, 3), DType::F32, &dev).unwrap();
    let e = Normalization::new()
        .axis(&[0])
        .call(&x, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch axis"), "{e}");
    let e = Normalization::new()
        .axis(&[3])
        .call(&x, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[-ndim, ndim)"), "{e}");
    let mut n = Normalization::new();
    n.adapt(&x).unwrap();
    let e = n
        .adapt(&Tensor::ones((4, 5), DType::F32, &dev).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("incompatible shape"), "{e}");
    let e = n
        .call(&Tensor::ones((2, 5), DType::F32, &dev).unwrap(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("statistics of shape [3]"), "{e}");
    assert!(
        Normalization::new()
            .mean_variance(&[1.0], &[1.0, 2.0], &[1])
            .is_err()
    );
    let mut given = Normalization::new()
        .mean_variance(&[0.0], &[1.0], &[])
        .unwrap();
    let e = given.adapt(&x).unwrap_err().to_string();
    assert!(e.contains("given `mean` and `variance`"), "{e}");
    let e = ferrokeras::layers::from_config(
        "Normalization",
        &serde_json::json!({"mean": [1.0, 2.0], "variance": null}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("both be given"), "{e}");
}
