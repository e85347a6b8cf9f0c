//! Keras's classic MNIST convnet ("Simple MNIST convnet"): Conv2D 32 → MaxPool → Conv2D 64 →
//! MaxPool → Flatten → Dropout 0.5 → Dense 10 softmax, trained with `validation_split` 0.1, then
//! evaluated on the test set.
//!
//! Run: `cargo run --release --example mnist_convnet -- [--epochs 3] [--mnist-dir DIR] [--device cpu|cuda|auto]`

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use ferrokeras::layers::{Conv2D, MaxPooling2D};
use ferrokeras::prelude::*;

/// The model of Keras's example.
fn convnet() -> Result<Sequential> {
    Ok(Sequential::new()
        .input(&[28, 28, 1])
        .add(Conv2D::new(32, (3, 3)).activation("relu")?)
        .add(MaxPooling2D::new((2, 2)))
        .add(Conv2D::new(64, (3, 3)).activation("relu")?)
        .add(MaxPooling2D::new((2, 2)))
        .add(Flatten::new())
        .add(Dropout::new(0.5)?)
        .add(Dense::new(10).activation("softmax")?))
}

/// Images scaled to [0, 1] with a channel axis, labels one-hot.
fn prepare(x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let n = x.dims()[0];
    let x = (x.to_dtype(DType::F32)? / 255.0)?.reshape((n, 28, 28, 1))?;
    let classes = Tensor::arange(0u32, 10, x.device())?;
    let y = y
        .to_dtype(DType::U32)?
        .reshape((n, 1))?
        .broadcast_eq(&classes.reshape((1, 10))?)?
        .to_dtype(DType::F32)?;
    Ok((x, y))
}

#[path = "shared/device.rs"]
mod device;

fn main() -> Result<()> {
    device::from_args()?;
    let mut epochs = 3;
    let mut mnist_dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--epochs" => {
                let v = args.next().unwrap_or_default();
                epochs = v
                    .parse()
                    .map_err(|_| Error::value(format!("invalid --epochs {v:?}")))?;
            }
            "--mnist-dir" => mnist_dir = args.next().map(PathBuf::from),
            // Read by `device::from_args`.
            "--device" => {
                args.next();
            }
            other => {
                return Err(Error::value(format!(
                    "unknown option {other}; expected --epochs N, --mnist-dir DIR or --device cpu|cuda|auto"
                )));
            }
        }
    }
    ferrokeras::random::set_random_seed(1);
    let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    let ((x_train, y_train), (x_test, y_test)) = match mnist_dir {
        Some(d) => ferrokeras::datasets::mnist::load_data_from(d)?,
        None if bundled.exists() => ferrokeras::datasets::mnist::load_data_from(&bundled)?,
        None => ferrokeras::datasets::mnist::load_data()?,
    };
    let (x_train, y_train) = prepare(&x_train, &y_train)?;
    let (x_test, y_test) = prepare(&x_test, &y_test)?;

    let model = convnet()?;
    println!("{}", model.summary());
    let mut model = model.compile(
        Compile::new()
            .loss("categorical_crossentropy")
            .optimizer("adam")
            .metrics(["accuracy"]),
    )?;
    model.fit(
        (x_train, y_train),
        FitOptions::new()
            .batch_size(128)
            .epochs(epochs)
            .validation_split(0.1),
    )?;
    let score = model.evaluate((x_test, y_test), EvaluateOptions::new().verbose(0))?;
    println!(
        "Test loss: {:.4}\nTest accuracy: {:.4}",
        score.get("loss").unwrap_or(f64::NAN),
        score.get("accuracy").unwrap_or(f64::NAN)
    );
    Ok(())
}
