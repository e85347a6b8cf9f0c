//! The guide's GAN: discriminator, generator and the `Gan` model with its own `compile` and
//! `train_step`. Shared by the `05_gan` example and the benchmarks.

use candle_core::{DType, Tensor};
use ferrokeras::layers::{Conv2D, Conv2DTranspose, GlobalMaxPooling2D};
use ferrokeras::prelude::*;

/// The guide's discriminator: 28x28x1 images to one logit.
pub fn discriminator() -> Result<Sequential> {
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
pub fn generator(latent_dim: usize) -> Result<Sequential> {
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
pub struct Gan {
    pub discriminator: Sequential,
    pub generator: Sequential,
    pub latent_dim: usize,
    d_optimizer: Option<Adam>,
    g_optimizer: Option<Adam>,
    loss_fn: Option<BinaryCrossentropy>,
    d_loss_tracker: Mean,
    g_loss_tracker: Mean,
}

impl Gan {
    pub fn new(discriminator: Sequential, generator: Sequential, latent_dim: usize) -> Self {
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
    pub fn compile(
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

    // Checkpoints name the two networks' variables by structure (`discriminator/...`,
    // `generator/...`), and keep both optimizers.
    fn submodels(&self) -> Vec<(&str, &dyn Model)> {
        vec![
            ("discriminator", &self.discriminator),
            ("generator", &self.generator),
        ]
    }

    fn extra_state(&self) -> Result<Vec<(String, Tensor)>> {
        let named = self.named_variables();
        let mut out = Vec::new();
        for (prefix, opt) in [
            ("d_optimizer", &self.d_optimizer),
            ("g_optimizer", &self.g_optimizer),
        ] {
            if let Some(o) = opt {
                for (k, t) in ferrokeras::io::optimizer_state(o, &named)? {
                    out.push((format!("{prefix}/{k}"), t));
                }
            }
        }
        Ok(out)
    }

    fn load_extra_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let named = self.named_variables();
        for (prefix, opt) in [
            ("d_optimizer/", &mut self.d_optimizer),
            ("g_optimizer/", &mut self.g_optimizer),
        ] {
            let part: Vec<(String, Tensor)> = state
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(prefix).map(|s| (s.to_string(), t.clone())))
                .collect();
            if let Some(o) = opt {
                ferrokeras::io::load_optimizer_state(o, &part, &named)?;
            }
        }
        Ok(())
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
        // Keras calls the generator before opening the discriminator's tape, so no gradient
        // flows into it from this step: `stop_gradient` says the same here (the tape records
        // every operation, and would otherwise differentiate the generator too, for nothing).
        let generated_images =
            ferrokeras::tape::stop_gradient(&self.generator.forward(&random_latent_vectors, true)?);

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
