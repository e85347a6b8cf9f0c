//! Guide section 5, "Wrapping up: an end-to-end GAN example": a discriminator and a generator, a
//! `GAN` model with its own `compile` (two optimizers and a loss) and its own `train_step`, fitted
//! on all 70,000 MNIST digits with the usual `fit`, progress bar and callbacks. A callback writes a
//! PNG grid of generated digits at the end of each epoch and at the end of training.
//!
//! Run: `cargo run --release --example 05_gan -- [--steps 100] [--epochs 1] [--out gan_output]
//! [--seed 1337] [--mnist-dir DIR]`

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ferrokeras::data::Dataset;
use ferrokeras::layers::{Conv2D, Conv2DTranspose, GlobalMaxPooling2D};
use ferrokeras::prelude::*;

/// The guide's discriminator: 28x28x1 images to one logit.
fn discriminator() -> Result<Sequential> {
    Ok(Sequential::new()
        .named("discriminator")
        .input(&[28, 28, 1])
        .add(Conv2D::new(64, (3, 3)).strides(2).padding("same")?)
        .add(LeakyReLU::new(0.2))
        .add(Conv2D::new(128, (3, 3)).strides(2).padding("same")?)
        .add(LeakyReLU::new(0.2))
        .add(GlobalMaxPooling2D::new())
        .add(Dense::new(1)))
}

/// The guide's generator: a latent vector to a 28x28x1 image.
fn generator(latent_dim: usize) -> Result<Sequential> {
    Ok(Sequential::new()
        .named("generator")
        .input(&[latent_dim])
        // We want to generate 128 coefficients to reshape into a 7x7x128 map.
        .add(Dense::new(7 * 7 * 128))
        .add(LeakyReLU::new(0.2))
        .add(Reshape::new(&[7, 7, 128]))
        .add(
            Conv2DTranspose::new(128, (4, 4))
                .strides(2)
                .padding("same")?,
        )
        .add(LeakyReLU::new(0.2))
        .add(
            Conv2DTranspose::new(128, (4, 4))
                .strides(2)
                .padding("same")?,
        )
        .add(LeakyReLU::new(0.2))
        .add(
            Conv2D::new(1, (7, 7))
                .padding("same")?
                .activation("sigmoid")?,
        ))
}

/// A GAN with its own `compile` and `train_step`; calling it generates images from latent vectors.
struct Gan {
    discriminator: Sequential,
    generator: Sequential,
    latent_dim: usize,
    d_optimizer: Option<Adam>,
    g_optimizer: Option<Adam>,
    loss_fn: Option<BinaryCrossentropy>,
    d_loss_tracker: Mean,
    g_loss_tracker: Mean,
}

impl Gan {
    fn new(discriminator: Sequential, generator: Sequential, latent_dim: usize) -> Self {
        Self {
            discriminator,
            generator,
            latent_dim,
            d_optimizer: None,
            g_optimizer: None,
            loss_fn: None,
            d_loss_tracker: Mean::new("d_loss"),
            g_loss_tracker: Mean::new("g_loss"),
        }
    }

    /// The GAN's own compile: two optimizers and a loss.
    fn compile(
        mut self,
        d_optimizer: Adam,
        g_optimizer: Adam,
        loss_fn: BinaryCrossentropy,
    ) -> Trainer<Self> {
        self.d_optimizer = Some(d_optimizer);
        self.g_optimizer = Some(g_optimizer);
        self.loss_fn = Some(loss_fn);
        Trainer::new(self)
    }
}

impl Model for Gan {
    fn call(&mut self, z: &Data, training: bool) -> Result<Data> {
        Ok(self.generator.forward(z.tensor()?, training)?.into())
    }

    fn variables(&self) -> Vec<Variable> {
        let mut v = self.discriminator.variables();
        v.extend(self.generator.variables());
        v
    }

    fn name(&self) -> &str {
        "gan"
    }

    fn train_step(&mut self, _ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        let not_compiled =
            || Error::state("call Gan::compile(d_optimizer, g_optimizer, loss_fn) before fit");
        let (d_opt, g_opt, loss_fn) =
            match (&mut self.d_optimizer, &mut self.g_optimizer, &self.loss_fn) {
                (Some(d), Some(g), Some(l)) => (d, g, l),
                _ => return Err(not_compiled()),
            };
        // The dataset yields bare image batches; a tuple would carry them first.
        let (real_images, _, _) = data.unpack()?;
        let real_images = real_images.tensor()?;
        let batch_size = real_images.dims()[0];
        let dev = real_images.device().clone();

        // Sample random points in the latent space and decode them to fake images.
        let random_latent_vectors =
            ferrokeras::random::normal(&[batch_size, self.latent_dim], 0.0, 1.0, &dev)?;
        let generated_images = self.generator.forward(&random_latent_vectors, true)?;

        // Combine them with real images; labels say 1 for fake and 0 for real, plus noise
        // (an important trick).
        let combined_images = Tensor::cat(&[&generated_images, real_images], 0)?;
        let labels = Tensor::cat(
            &[
                Tensor::ones((batch_size, 1), DType::F32, &dev)?,
                Tensor::zeros((batch_size, 1), DType::F32, &dev)?,
            ],
            0,
        )?;
        let labels = (labels
            + (ferrokeras::random::uniform(&[2 * batch_size, 1], 0.0, 1.0, &dev)? * 0.05)?)?;

        // Train the discriminator.
        let predictions = self.discriminator.forward(&combined_images, true)?;
        let d_loss = loss_fn.compute(&labels, &predictions, None)?;
        let d_vars = self.discriminator.trainable_variables();
        let grads = GradientTape::gradient(&d_loss, &d_vars)?;
        d_opt.apply(&grads, &d_vars)?;

        // Sample random points in the latent space; labels that say "all real images".
        let random_latent_vectors =
            ferrokeras::random::normal(&[batch_size, self.latent_dim], 0.0, 1.0, &dev)?;
        let misleading_labels = Tensor::zeros((batch_size, 1), DType::F32, &dev)?;

        // Train the generator (only its weights are updated).
        let fake = self.generator.forward(&random_latent_vectors, true)?;
        let predictions = self.discriminator.forward(&fake, true)?;
        let g_loss = loss_fn.compute(&misleading_labels, &predictions, None)?;
        let g_vars = self.generator.trainable_variables();
        let grads = GradientTape::gradient(&g_loss, &g_vars)?;
        g_opt.apply(&grads, &g_vars)?;

        // Monitor the losses (reset every epoch, since they are listed in `metrics`).
        self.d_loss_tracker.update_state(&d_loss, None)?;
        self.g_loss_tracker.update_state(&g_loss, None)?;
        Ok(self.get_metrics_result(_ctx))
    }

    fn metrics<'a>(&'a mut self, _ctx: &'a mut StepContext) -> Vec<&'a mut dyn Metric> {
        vec![&mut self.d_loss_tracker, &mut self.g_loss_tracker]
    }
}

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
            other => {
                return Err(Error::value(format!(
                    "unknown option {other}; expected --steps N|all, --epochs N, --out DIR, --seed N, --mnist-dir DIR"
                )));
            }
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
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
        latent: ferrokeras::random::normal(&[16, latent_dim], 0.0, 1.0, &Device::Cpu)?,
        out_dir: args.out.clone(),
        side: 4,
    };
    gan.fit(
        dataset,
        FitOptions::new().epochs(args.epochs).callback(grid),
    )?;
    Ok(())
}
