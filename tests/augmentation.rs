//! `RandomFlip`, the affine and colour augmentations, `GaussianNoise` and the spatial dropouts,
//! as Keras's. `RandomFlip`: images pass unchanged at inference; in training each image is
//! flipped (left-right, top-bottom, or both at once) with probability 1/2, one draw per image;
//! a seed repeats the flips; Keras's config reads.

use candle_core::{DType, Device, Tensor};
use ferrokeras::layers::{DataFormat, FlipMode, Layer, RandomFlip};
use ferrokeras::prelude::*;

fn images(n: usize) -> Tensor {
    Tensor::arange(0f32, (n * 3 * 4 * 2) as f32, &Device::Cpu)
        .unwrap()
        .reshape((n, 3, 4, 2))
        .unwrap()
}

fn flipped(x: &Tensor, axes: &[usize]) -> Tensor {
    let mut t = x.clone();
    for &a in axes {
        let len = t.dims()[a];
        let ids: Vec<u32> = (0..len as u32).rev().collect();
        t = t
            .index_select(&Tensor::from_vec(ids, len, t.device()).unwrap(), a)
            .unwrap();
    }
    t
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn random_flip_flips_about_half_of_the_images_in_training_only() {
    ferrokeras::random::set_random_seed(5);
    let n = 400;
    let x = images(n);
    for (mode, axes) in [
        (FlipMode::Horizontal, vec![2]),
        (FlipMode::Vertical, vec![1]),
        (FlipMode::HorizontalAndVertical, vec![2, 1]),
    ] {
        let mut layer = RandomFlip::new(mode);
        assert_eq!(flat(&layer.call(&x, false).unwrap()), flat(&x), "{mode:?}");
        let y = layer.call(&x, true).unwrap();
        let f = flipped(&x, &axes);
        let mut count = 0;
        for i in 0..n {
            let (yi, xi, fi) = (
                flat(&y.get(i).unwrap()),
                flat(&x.get(i).unwrap()),
                flat(&f.get(i).unwrap()),
            );
            assert!(
                yi == xi || yi == fi,
                "{mode:?}: image {i} is neither itself nor flipped"
            );
            count += usize::from(yi == fi);
        }
        // Binomial(400, 1/2): 200 ± 3 standard deviations (10 each).
        assert!(
            (170..=230).contains(&count),
            "{mode:?}: {count} of {n} flipped"
        );
    }
}

#[test]
fn a_seed_repeats_the_flips_and_keras_config_reads() {
    let x = images(32);
    let mut a = RandomFlip::new(FlipMode::Horizontal).seed(7);
    let mut b = RandomFlip::new(FlipMode::Horizontal).seed(7);
    for _ in 0..3 {
        assert_eq!(
            flat(&a.call(&x, true).unwrap()),
            flat(&b.call(&x, true).unwrap())
        );
    }
    // Keras 3.15.1's `RandomFlip("horizontal", seed=3).get_config()`.
    let keras: serde_json::Value = serde_json::from_str(
        r#"{"name": "random_flip_1", "trainable": true, "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": null}, "data_format": "channels_last", "seed": 3, "mode": "horizontal"}"#,
    )
    .unwrap();
    let mut l = ferrokeras::layers::from_config("RandomFlip", &keras).unwrap();
    assert_eq!(l.config().unwrap()["mode"], "horizontal");
    assert_eq!(l.config().unwrap()["seed"], 3);
    assert_eq!(flat(&l.call(&x, false).unwrap()), flat(&x));
    // Channels first flips the last two axes.
    let cf = images(2)
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap();
    let mut v = RandomFlip::new(FlipMode::Vertical)
        .data_format(DataFormat::ChannelsFirst)
        .seed(1);
    let y = v.call(&cf, true).unwrap();
    for i in 0..2 {
        let (yi, xi) = (y.get(i).unwrap(), cf.get(i).unwrap());
        let fi = flipped(&xi.unsqueeze(0).unwrap(), &[2]).squeeze(0).unwrap();
        assert!(flat(&yi) == flat(&xi) || flat(&yi) == flat(&fi));
    }
    let e = ferrokeras::layers::from_config("RandomFlip", &serde_json::json!({"mode": "diagonal"}))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("diagonal"), "{e}");
    let e = RandomFlip::new(FlipMode::Vertical)
        .call(
            &Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
            true,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch of images"), "{e}");
}

/// In a model, `fit` trains with flipped images and `predict` sees them unflipped.
#[test]
fn random_flip_in_a_model_flips_in_fit_only() {
    ferrokeras::random::set_random_seed(2);
    let x = images(16);
    let y = Tensor::zeros((16, 1), DType::F32, &Device::Cpu).unwrap();
    let mut model = Sequential::new()
        .input(&[3, 4, 2])
        .add(RandomFlip::new(FlipMode::HorizontalAndVertical))
        .add(Flatten::new())
        .add(Dense::new(1))
        .compile(Compile::new().optimizer("sgd").loss("mse"))
        .unwrap();
    model
        .fit((x.clone(), y), FitOptions::new().epochs(1).verbose(0))
        .unwrap();
    let a = model
        .predict(x.clone(), PredictOptions::new().verbose(0))
        .unwrap();
    let b = model.predict(x, PredictOptions::new().verbose(0)).unwrap();
    assert_eq!(flat(a.tensor().unwrap()), flat(b.tensor().unwrap()));
}

/// Keras 3.15.1's configs of the noise layers read, and the layers act in training only.
#[test]
fn noise_layers_read_keras_configs_and_act_in_training_only() {
    let x = Tensor::ones((4, 6, 5), DType::F32, &Device::Cpu).unwrap();
    for (class, config) in [
        (
            "SpatialDropout1D",
            r#"{"rate": 0.2, "seed": null, "name": "spatial_dropout1d"}"#,
        ),
        (
            "GaussianNoise",
            r#"{"name": "gaussian_noise", "trainable": true, "stddev": 0.1, "seed": 2}"#,
        ),
    ] {
        let config: serde_json::Value = serde_json::from_str(config).unwrap();
        let mut l = ferrokeras::layers::from_config(class, &config).unwrap();
        assert_eq!(flat(&l.call(&x, false).unwrap()), flat(&x), "{class}");
        assert_ne!(flat(&l.call(&x, true).unwrap()), flat(&x), "{class}");
    }
    let config: serde_json::Value = serde_json::from_str(
        r#"{"rate": 0.3, "seed": null, "name": "spatial_dropout2d", "data_format": "channels_last"}"#,
    )
    .unwrap();
    let mut l = ferrokeras::layers::from_config("SpatialDropout2D", &config).unwrap();
    let images = Tensor::ones((8, 3, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let y = l.call(&images, true).unwrap();
    // One draw per image and channel: each feature map is all kept or all dropped.
    let maps = y.permute((0, 3, 1, 2)).unwrap().flatten_from(2).unwrap();
    for map in maps.flatten_to(1).unwrap().to_vec2::<f32>().unwrap() {
        assert!(map.iter().all(|v| *v == map[0]), "{map:?}");
    }
}

/// `RandomRotation`, `RandomTranslation`, `RandomZoom`, `RandomContrast` and `RandomBrightness`
/// against Keras 3.15.1 on JAX (`fixtures/keras_augment.json`): built from Keras's configs, with
/// factors that leave Keras one value to draw, every fill mode and both interpolations, channels
/// last and first, clipping to the value range. Their training outputs match Keras's to 1e-4 of
/// the image's range; at inference the images pass unchanged.
#[test]
fn affine_augmentations_match_keras() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/keras_augment.json"
    ))
    .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let input = |name: &str| -> Tensor {
        let i = &doc["inputs"][name];
        let shape: Vec<usize> = serde_json::from_value(i["shape"].clone()).unwrap();
        let x: Vec<f32> = serde_json::from_value(i["x"].clone()).unwrap();
        Tensor::from_vec(x, shape, &Device::Cpu).unwrap()
    };
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 48);
    for (i, case) in cases.iter().enumerate() {
        let class = case["class"].as_str().unwrap();
        let x = input(case["input"].as_str().unwrap());
        let mut layer = ferrokeras::layers::from_config(class, &case["config"])
            .unwrap_or_else(|e| panic!("case {i} {class}: {e}"));
        assert_eq!(
            flat(&layer.call(&x, false).unwrap()),
            flat(&x),
            "case {i}: inference"
        );
        let y = flat(&layer.call(&x, true).unwrap());
        let want: Vec<f32> = serde_json::from_value(case["y"].clone()).unwrap();
        let range = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        let worst = y
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4 * range,
            "case {i} {class} {}: off by {worst} (range {range})",
            case["config"]
        );
        // Our config is Keras's (read back, the same layer).
        let ours = layer.config().unwrap();
        for key in ["fill_mode", "interpolation", "data_format", "fill_value"] {
            assert_eq!(ours[key], case["config"][key], "case {i} {key}");
        }
    }
}

/// Random draws: angles, shifts and zooms vary between images and calls, a seed repeats them,
/// and factors outside Keras's bounds are refused by name.
#[test]
fn affine_augmentations_draw_per_image_and_check_their_factors() {
    use ferrokeras::layers::{RandomRotation, RandomTranslation, RandomZoom};
    let x = Tensor::arange(0f32, 2.0 * 8.0 * 8.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 8, 8, 1))
        .unwrap();
    let mut a = RandomRotation::new(0.3).unwrap().seed(4);
    let mut b = RandomRotation::new(0.3).unwrap().seed(4);
    let (ya, yb) = (a.call(&x, true).unwrap(), b.call(&x, true).unwrap());
    assert_eq!(flat(&ya), flat(&yb), "one seed, one draw");
    assert_ne!(
        flat(&ya),
        flat(&a.call(&x, true).unwrap()),
        "a new draw per call"
    );
    // The two images are turned by different angles: image 1 is image 0 plus 64 where both
    // read inside, so their differences are not all 64.
    let d: Vec<f32> = flat(&(ya.get(1).unwrap() - ya.get(0).unwrap()).unwrap());
    assert!(
        d.iter().any(|v| (v - 64.0).abs() > 1e-3),
        "one angle per image"
    );
    let e = RandomRotation::new(1.5).err().unwrap().to_string();
    assert!(e.contains("factor") && e.contains("[-1, 1]"), "{e}");
    let e = RandomTranslation::new(0.1, 2.0).err().unwrap().to_string();
    assert!(e.contains("width_factor"), "{e}");
    let e = RandomZoom::new(0.1)
        .unwrap()
        .height_range(-1.0, 0.0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("height_factor") && e.contains("(-1, 1]"), "{e}");
    let bad = ferrokeras::layers::from_config(
        "RandomZoom",
        &serde_json::json!({"height_factor": 0.2, "fill_mode": "mirror"}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(bad.contains("fill_mode") || bad.contains("mirror"), "{bad}");
    let rank = RandomZoom::new(0.2)
        .unwrap()
        .call(&x.get(0).unwrap(), true)
        .err()
        .unwrap()
        .to_string();
    assert!(rank.contains("(batch, height, width, channels)"), "{rank}");
}
