//! `fit` on what users hold: candle tensors, ndarray arrays and `.npy` files written by numpy.

use ferrokeras::prelude::*;
use ferrokeras::trainer::Inputs;

fn model() -> Trainer<Sequential> {
    ferrokeras::random::set_random_seed(3);
    Sequential::new()
        .input(&[32])
        .add(Dense::new(1))
        .compile(Compile::new().optimizer("sgd").loss("mse").metrics(["mae"]))
        .unwrap()
}

#[test]
fn ndarray_npy_and_tensor_inputs_train_identically() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (xp, yp) = (dir.join("guide_x.npy"), dir.join("guide_y.npy"));
    let x = ferrokeras::data::read_npy(&xp).unwrap();
    let y = ferrokeras::data::read_npy(&yp).unwrap();
    let opts = || FitOptions::new().epochs(2).shuffle(false).verbose(0);

    let mut a = model();
    let ha = a.fit((x.clone(), y.clone()), opts()).unwrap();

    let mut b = model();
    let hb = b
        .fit(Inputs::from_npy(&xp, Some(&yp)).unwrap(), opts())
        .unwrap();

    let xa: Vec<Vec<f32>> = x.to_vec2().unwrap();
    let ya: Vec<Vec<f32>> = y.to_vec2().unwrap();
    let xnd = ndarray::Array2::from_shape_fn((1000, 32), |(i, j)| xa[i][j] as f64);
    let ynd = ndarray::Array2::from_shape_fn((1000, 1), |(i, j)| ya[i][j] as f64);
    let mut c = model();
    let hc = c
        .fit(Inputs::from_ndarray(&xnd, Some(&ynd)).unwrap(), opts())
        .unwrap();

    assert_eq!(ha.get("loss").len(), 2);
    for (h, name) in [(&hb, "npy"), (&hc, "ndarray")] {
        for key in ["loss", "mae"] {
            for (u, v) in ha.get(key).iter().zip(h.get(key)) {
                assert!(
                    (u - v).abs() <= 1e-6 * u.abs().max(1.0),
                    "{name} {key}: {u} vs {v}"
                );
            }
        }
    }
    let missing = Inputs::from_npy(dir.join("nope.npy"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("nope.npy"), "{missing}");
}
