//! Guide section 1, "A first simple example": a subclassed model that overrides only `train_step`,
//! compiled with a loss and metrics, fitted with `fit` as usual.
//!
//! Run: `cargo run --release --example 01_custom_train_step [-- --device cpu|cuda]`

use candle_core::Device;
use ferrokeras::prelude::*;

/// A functional model (Input(32) -> Dense(1)) with its own training step.
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
        // Unpack the data. Its structure depends on your model and on what you pass to `fit()`.
        let (x, y, _) = data.unpack_xy()?;
        // Forward pass, then the loss configured in `compile()` (plus regularization losses).
        let y_pred = self.call(x, true)?;
        let loss = self.compute_loss(ctx, x, Some(y), &y_pred, None)?;
        // Compute gradients and update weights.
        let trainable_vars = self.trainable_variables();
        let gradients = GradientTape::gradient(&loss, &trainable_vars)?;
        ctx.optimizer()?.apply(&gradients, &trainable_vars)?;
        // Update metrics (includes the metric that tracks the loss).
        for metric in self.metrics(ctx) {
            if metric.name() == "loss" {
                metric.update_values(&loss, None)?;
            } else {
                metric.update_state(y.tensor()?, y_pred.tensor()?, None)?;
            }
        }
        // Return a map of metric names to current value.
        Ok(self.get_metrics_result(ctx))
    }
}

#[path = "shared/device.rs"]
mod device;

fn main() -> Result<()> {
    device::from_args()?;
    // Construct and compile an instance of CustomModel.
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

    // Just use `fit` as usual.
    let x = ferrokeras::random::uniform(&[1000, 32], 0.0, 1.0, &Device::Cpu)?;
    let y = ferrokeras::random::uniform(&[1000, 1], 0.0, 1.0, &Device::Cpu)?;
    model.fit((x, y), FitOptions::new().epochs(3))?;
    Ok(())
}
