//! The lowest level: no `fit` at all. Our own loop over batches with the tape and the optimizer,
//! driving the same callbacks that `fit` would (History and the progress bar) by hand.
//!
//! Run: `cargo run --release --example custom_training_loop [-- --device cpu|cuda]`

use ferrokeras::callbacks::{Callback, CallbackContext, Params, ProgbarLogger};
use ferrokeras::data::ArrayAdapter;
use ferrokeras::prelude::*;

#[path = "shared/device.rs"]
mod device;

fn main() -> Result<()> {
    let device = device::from_args()?;
    ferrokeras::random::set_random_seed(7);
    let mut model = Sequential::new()
        .input(&[32])
        .add(Dense::new(16).activation("relu")?)
        .add(Dense::new(1));
    let mut optimizer = Adam::new(1e-3);
    let loss_fn = MseLoss::new();
    let mut loss_tracker = Mean::new("loss");
    let mut mae = MeanAbsoluteError::new().named("mae");

    // Without `fit`, the loop puts the data where the model is itself.
    let x = ferrokeras::random::uniform(&[1000, 32], 0.0, 1.0, &device)?;
    let y = x.sum_keepdim(1)?.affine(1.0 / 32.0, 0.0)?;
    let data = ArrayAdapter::new(x.into(), Some(y.into()), None, 32)?;

    let epochs = 3;
    let params = Params {
        epochs,
        steps: Some(data.steps()),
        verbose: 1,
    };
    let mut history = History::new();
    let mut progbar = ProgbarLogger::new(1);
    let mut compiled = StepContext::new();
    let mut stop = false;
    let empty = Logs::new();

    // The callbacks need the model, the compiled state and the loop's parameters at every hook.
    macro_rules! hook {
        ($values:expr, $name:ident($($arg:expr),*)) => {{
            let mut ctx = CallbackContext::new(&mut model, &mut compiled, &params, $values, &mut stop);
            history.$name(&mut ctx, $($arg),*)?;
            progbar.$name(&mut ctx, $($arg),*)?;
        }};
    }

    hook!(&empty, on_train_begin(&empty));
    for epoch in 0..epochs {
        loss_tracker.reset_state();
        mae.reset_state();
        hook!(&empty, on_epoch_begin(epoch, &empty));
        let mut logs = Logs::new();
        for (step, batch) in data.epoch(true)?.iter().enumerate() {
            let (xb, yb, _) = batch.unpack_xy()?;
            let (xb, yb) = (xb.tensor()?, yb.tensor()?);
            // Forward pass and loss; the tape records what touches the variables.
            let y_pred = model.forward(xb, true)?;
            let loss = loss_fn.compute(yb, &y_pred, None)?;
            // Gradients of the loss with respect to the trainable variables, then one update.
            let vars = model.trainable_variables();
            let grads = GradientTape::gradient(&loss, &vars)?;
            optimizer.apply(&grads, &vars)?;

            loss_tracker.update_state(&loss, None)?;
            mae.update_state(yb, &y_pred, None)?;
            logs = [("loss", loss_tracker.result()), ("mae", mae.result())]
                .into_iter()
                .collect();
            let batch_values: Logs = [("loss", loss_tracker.batch_result().unwrap_or(0.0))]
                .into_iter()
                .collect();
            hook!(&batch_values, on_train_batch_end(step, &logs));
        }
        hook!(&empty, on_epoch_end(epoch, &logs));
    }
    hook!(&empty, on_train_end(&empty));
    println!(
        "loss per epoch: {:?}; {} per-batch values recorded",
        history.get("loss"),
        history.batch_history["loss"].len()
    );
    Ok(())
}
