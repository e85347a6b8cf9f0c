//! Guide section 3, "Supporting `sample_weight` & `class_weight`": unpack the sample weight from
//! the data and pass it to the loss and the metrics.
//!
//! Run: `cargo run --release --example 03_sample_and_class_weight [-- --device cpu|cuda]`

use candle_core::Device;
use ferrokeras::prelude::*;

struct CustomModel {
    inner: Functional,
}

impl Model for CustomModel {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }

    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }

    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        // Unpack the data: `(x, y)` or `(x, y, sample_weight)`.
        let (x, y, sample_weight) = data.unpack_xy()?;
        let y_pred = self.call(x, true)?;
        // The loss configured in `compile()`, weighted per sample.
        let loss = self.compute_loss(ctx, x, Some(y), &y_pred, sample_weight)?;

        let trainable_vars = self.trainable_variables();
        let gradients = GradientTape::gradient(&loss, &trainable_vars)?;
        ctx.optimizer()?.apply(&gradients, &trainable_vars)?;

        // Update the metrics, weighted per sample.
        for metric in self.metrics(ctx) {
            if metric.name() == "loss" {
                metric.update_values(&loss, None)?;
            } else {
                metric.update_state(y.tensor()?, y_pred.tensor()?, sample_weight)?;
            }
        }
        Ok(self.get_metrics_result(ctx))
    }
}

#[path = "shared/device.rs"]
mod device;

fn main() -> Result<()> {
    device::from_args()?;
    let inputs = Input::new(&[32]);
    let outputs = Dense::new(1).apply(&inputs)?;
    let model = CustomModel {
        inner: Functional::new(&[inputs], &[outputs])?,
    };
    let mut model = model.compile(
        Compile::new()
            .optimizer("adam")
            .loss("mse")
            .metrics(["mae"]),
    )?;

    // You can now use the sample_weight argument.
    let x = ferrokeras::random::uniform(&[1000, 32], 0.0, 1.0, &Device::Cpu)?;
    let y = ferrokeras::random::uniform(&[1000, 1], 0.0, 1.0, &Device::Cpu)?;
    let sw = ferrokeras::random::uniform(&[1000, 1], 0.0, 1.0, &Device::Cpu)?;
    model.fit(
        (x.clone(), y),
        FitOptions::new().sample_weight(sw).epochs(3),
    )?;

    // `class_weight` reaches the same step as a sample weight computed from each sample's class.
    let labels: Vec<f32> = (0..1000).map(|i| (i % 2) as f32).collect();
    let labels = candle_core::Tensor::from_vec(labels, (1000, 1), &Device::Cpu)?;
    model.fit(
        (x, labels),
        FitOptions::new()
            .class_weight([(0, 1.0), (1, 3.0)])
            .epochs(1),
    )?;
    Ok(())
}
