//! Keras's MNIST convnet reaches Keras's own test accuracy within 3 epochs.
//!
//! Keras 3 on TensorFlow, same model and data, seeds 1-5: 98.47-98.59% (mean 98.50%;
//! `tests/python/keras_convnet_accuracy.py`); ferrokeras, seeds 1-5: 98.30-98.63% (mean 98.47%).
//! Most seeds of either fall under 98.5%: the bar is 98.2%, below both spreads, where a
//! broken kernel or optimizer lands far under it.
//!
//! A few minutes of training: `.ci/run` runs it in release mode with
//! `cargo test --release --test convnet_accuracy -- --ignored`.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use ferrokeras::layers::{Conv2D, MaxPooling2D};
use ferrokeras::prelude::*;

fn prepare(x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let n = x.dims()[0];
    let x = (x.to_dtype(DType::F32).unwrap() / 255.0)
        .unwrap()
        .reshape((n, 28, 28, 1))
        .unwrap();
    let classes = Tensor::arange(0u32, 10, x.device())
        .unwrap()
        .reshape((1, 10))
        .unwrap();
    let y = y
        .to_dtype(DType::U32)
        .unwrap()
        .reshape((n, 1))
        .unwrap()
        .broadcast_eq(&classes)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (x, y)
}

#[test]
#[ignore = "trains for minutes; run in release mode by .ci/run with --ignored"]
fn mnist_convnet_reaches_keras_accuracy_in_3_epochs() {
    ferrokeras::random::set_random_seed(1);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    let ((x, y), (xt, yt)) = if dir.exists() {
        ferrokeras::datasets::mnist::load_data_from(&dir).unwrap()
    } else {
        ferrokeras::datasets::mnist::load_data().unwrap()
    };
    let (x, y) = prepare(&x, &y);
    let (xt, yt) = prepare(&xt, &yt);
    let model = Sequential::new()
        .input(&[28, 28, 1])
        .add(Conv2D::new(32, (3, 3)).activation("relu").unwrap())
        .add(MaxPooling2D::new((2, 2)))
        .add(Conv2D::new(64, (3, 3)).activation("relu").unwrap())
        .add(MaxPooling2D::new((2, 2)))
        .add(Flatten::new())
        .add(Dropout::new(0.5).unwrap())
        .add(Dense::new(10).activation("softmax").unwrap());
    let mut model = model
        .compile(
            Compile::new()
                .loss("categorical_crossentropy")
                .optimizer("adam")
                .metrics(["accuracy"]),
        )
        .unwrap();
    let history = model
        .fit(
            (x, y),
            FitOptions::new()
                .batch_size(128)
                .epochs(3)
                .validation_split(0.1)
                .verbose(2),
        )
        .unwrap();
    assert_eq!(history.get("val_accuracy").len(), 3);
    let score = model
        .evaluate((xt, yt), EvaluateOptions::new().verbose(0))
        .unwrap();
    let acc = score.get("accuracy").unwrap();
    println!("test accuracy after 3 epochs: {acc:.4}");
    assert!(
        acc >= 0.982,
        "test accuracy {acc:.4} < 0.982 (Keras: 0.9847-0.9859 over 5 seeds)"
    );
}
