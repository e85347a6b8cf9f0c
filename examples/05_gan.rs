//! Guide section 5, "Wrapping up: an end-to-end GAN example": a discriminator and a generator, a
//! `GAN` model with its own `compile` (two optimizers and a loss) and its own `train_step`, fitted
//! on all 70,000 MNIST digits with the usual `fit`, progress bar and callbacks. A callback writes a
//! PNG grid of generated digits at the end of each epoch and at the end of training; the trained
//! generator is saved as `generator.keras`, which Keras loads.
//!
//! Run: `cargo run --release --example 05_gan -- [--steps 100] [--epochs 1] [--out gan_output]
//! [--seed 1337] [--mnist-dir DIR] [--device cpu|cuda|auto]`

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use ferrokeras::data::Dataset;
use ferrokeras::prelude::*;

#[path = "shared/device.rs"]
mod device;
#[path = "shared/gan.rs"]
mod gan;

use gan::{Gan, discriminator, generator};

/// Writes a grid of digits generated from fixed latent vectors at the end of each epoch and of
/// training.
struct ImageGrid {
    latent: Tensor,
    out_dir: PathBuf,
    side: usize,
}

impl ImageGrid {
    fn write(&self, model: &mut dyn Model, name: &str) -> Result<()> {
        let images = model
            .call(&self.latent.clone().into(), false)?
            .into_tensor()?;
        let n = self.side;
        let px: Vec<f32> = images.flatten_all()?.to_vec1()?;
        let mut grid = vec![0u8; n * 28 * n * 28];
        for k in 0..n * n {
            let (gy, gx) = (k / n, k % n);
            for y in 0..28 {
                for x in 0..28 {
                    let v = px[k * 784 + y * 28 + x].clamp(0.0, 1.0);
                    grid[(gy * 28 + y) * n * 28 + gx * 28 + x] = (v * 255.0).round() as u8;
                }
            }
        }
        let side = (n * 28) as u32;
        let path = self.out_dir.join(name);
        ferrokeras::io::write_png(&path, side, side, 1, &grid)?;
        println!("wrote {}", path.display());
        Ok(())
    }
}

impl Callback for ImageGrid {
    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext,
        epoch: usize,
        _logs: &Logs,
    ) -> Result<()> {
        self.write(ctx.model, &format!("generated_epoch_{:03}.png", epoch + 1))
    }
    fn on_train_end(&mut self, ctx: &mut CallbackContext, _logs: &Logs) -> Result<()> {
        self.write(ctx.model, "generated_final.png")
    }
}

struct Args {
    steps: Option<usize>,
    epochs: usize,
    out: PathBuf,
    seed: u64,
    mnist_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        steps: Some(100),
        epochs: 1,
        out: PathBuf::from("gan_output"),
        seed: 1337,
        mnist_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| Error::value(format!("{flag} needs a value")))
        };
        let bad = |v: &str| Error::value(format!("invalid value {v:?} for {flag}"));
        match flag.as_str() {
            "--steps" => {
                let v = value()?;
                a.steps = if v == "all" {
                    None
                } else {
                    Some(v.parse().map_err(|_| bad(&v))?)
                };
            }
            "--epochs" => {
                let v = value()?;
                a.epochs = v.parse().map_err(|_| bad(&v))?;
            }
            "--out" => a.out = PathBuf::from(value()?),
            "--seed" => {
                let v = value()?;
                a.seed = v.parse().map_err(|_| bad(&v))?;
            }
            "--mnist-dir" => a.mnist_dir = Some(PathBuf::from(value()?)),
            // Read by `device::from_args`.
            "--device" => {
                value()?;
            }
            other => {
                return Err(Error::value(format!(
                    "unknown option {other}; expected --steps N|all, --epochs N, --out DIR, --seed N, --mnist-dir DIR, --device cpu|cuda|auto"
                )));
            }
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = device::from_args()?;
    ferrokeras::random::set_random_seed(args.seed);
    let latent_dim = 128;

    // Prepare the dataset: all 70,000 MNIST digits (train and test), scaled to [0, 1].
    let bundled = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist");
    let ((x_train, _), (x_test, _)) = match &args.mnist_dir {
        Some(dir) => ferrokeras::datasets::mnist::load_data_from(dir)?,
        None if bundled.exists() => ferrokeras::datasets::mnist::load_data_from(&bundled)?,
        None => ferrokeras::datasets::mnist::load_data()?,
    };
    let all_digits = Tensor::cat(&[x_train, x_test], 0)?.to_dtype(DType::F32)?;
    let all_digits = (all_digits / 255.0)?.reshape(((), 28, 28, 1))?;
    let batch_size = 64;
    let mut dataset = Dataset::from_tensor_slices(all_digits)?
        .shuffle(1024, Some(args.seed))
        .batch(batch_size, false);
    // To limit the execution time, we train on 100 batches by default; `--steps all` trains on
    // the whole dataset (about 20 epochs give nice results).
    if let Some(steps) = args.steps {
        dataset = dataset.take(steps);
    }
    let dataset = dataset.prefetch(2);

    let gan = Gan::new(discriminator()?, generator(latent_dim)?, latent_dim);
    println!("{}", gan.discriminator.summary());
    println!("{}", gan.generator.summary());
    let mut gan = gan.compile(
        Adam::new(0.0003),
        Adam::new(0.0003),
        BinaryCrossentropy::new().from_logits(true),
    );

    let grid = ImageGrid {
        latent: ferrokeras::random::normal(&[16, latent_dim], 0.0, 1.0, &device)?,
        out_dir: args.out.clone(),
        side: 4,
    };
    gan.fit(
        dataset,
        FitOptions::new().epochs(args.epochs).callback(grid),
    )?;
    // The trained generator in Keras's own format: `keras.saving.load_model(...)` in Python
    // reads it, and `ferrokeras::io::load_model` here.
    let saved = args.out.join("generator.keras");
    ferrokeras::io::save_keras(&gan.generator, &saved)?;
    println!("saved the generator to {}", saved.display());
    Ok(())
}
