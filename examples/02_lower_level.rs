//! Guide section 2, "Going lower-level": no loss passed to `compile()`, the loss computed by hand,
//! and our own `Mean("loss")` and `MeanAbsoluteError("mae")` listed in `metrics()` so that `fit`
//! resets them at the start of every epoch.
//!
//! Run: `cargo run --release --example 02_lower_level [-- --device cpu|cuda]`

use candle_core::Device;
use ferrokeras::prelude::*;

struct CustomModel {
    inner: Functional,
    loss_tracker: Mean,
    mae_metric: MeanAbsoluteError,
}

impl Model for CustomModel {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }

    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }

    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        let (x, y, _) = data.unpack_xy()?;
        let y = y.tensor()?;
        let y_pred = self.call(x, true)?.into_tensor()?;
        // Compute our own loss: per-sample mean squared error (the tape sums it, as TF does).
        let loss = MseLoss::new().call(y, &y_pred)?;

        // Compute gradients and update weights.
        let trainable_vars = self.trainable_variables();
        let gradients = GradientTape::gradient(&loss, &trainable_vars)?;
        ctx.optimizer()?.apply(&gradients, &trainable_vars)?;

        // Compute our own metrics.
        self.loss_tracker.update_state(&loss, None)?;
        self.mae_metric.update_state(y, &y_pred, None)?;
        // (`result()` reads the value now; `Ok(self.get_metrics_result(ctx))` gives the same
        // logs with each value read from a GPU only when something shows it.)
        let mut logs = Logs::new();
        logs.insert("loss", self.loss_tracker.result());
        logs.insert("mae", self.mae_metric.result());
        Ok(logs)
    }

    // We list our `Metric` objects here so that `reset_state()` can be called automatically at
    // the start of each epoch or at the start of `evaluate()`.
    fn metrics<'a>(&'a mut self, _ctx: &'a mut StepContext) -> Vec<&'a mut dyn Metric> {
        vec![&mut self.loss_tracker, &mut self.mae_metric]
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
        loss_tracker: Mean::new("loss"),
        mae_metric: MeanAbsoluteError::new().named("mae"),
    };
    // We don't pass a loss or metrics here.
    let mut model = model.compile(Compile::new().optimizer("adam"))?;

    // Just use `fit` as usual -- you can use callbacks, etc.
    let x = ferrokeras::random::uniform(&[1000, 32], 0.0, 1.0, &Device::Cpu)?;
    let y = ferrokeras::random::uniform(&[1000, 1], 0.0, 1.0, &Device::Cpu)?;
    model.fit((x, y), FitOptions::new().epochs(5))?;
    Ok(())
}
