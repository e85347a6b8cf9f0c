//! Guide section 4, "Providing your own evaluation step": override `test_step` and call
//! `evaluate` as usual.
//!
//! Run: `cargo run --release --example 04_custom_test_step [-- --device cpu|cuda]`

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

    fn test_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        // Unpack the data and compute predictions.
        let (x, y, _) = data.unpack_xy()?;
        let y_pred = self.call(x, false)?;
        // Update the metrics tracking the loss, then the other metrics.
        let loss = self.compute_loss(ctx, x, Some(y), &y_pred, None)?;
        for metric in self.metrics(ctx) {
            if metric.name() == "loss" {
                metric.update_values(&loss, None)?;
            } else {
                metric.update_state(y.tensor()?, y_pred.tensor()?, None)?;
            }
        }
        // Return a map of metric names to current value (the loss tracker included).
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
    let mut model = model.compile(Compile::new().loss("mse").metrics(["mae"]))?;

    // Evaluate with our custom test_step.
    let x = ferrokeras::random::uniform(&[1000, 32], 0.0, 1.0, &Device::Cpu)?;
    let y = ferrokeras::random::uniform(&[1000, 1], 0.0, 1.0, &Device::Cpu)?;
    let logs = model.evaluate((x, y), EvaluateOptions::new())?;
    println!("{logs}");
    Ok(())
}
