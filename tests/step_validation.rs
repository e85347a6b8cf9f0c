//! Validation every N steps: callbacks see `val_` values on those batches, History keeps them, and
//! the training metrics are not disturbed.

use std::sync::{Arc, Mutex};

use ferrokeras::prelude::*;

fn run(every: Option<usize>, seen: Arc<Mutex<Vec<(usize, f64)>>>) -> History {
    ferrokeras::random::set_random_seed(4);
    let x =
        ferrokeras::random::uniform(&[200, 6], 0.0, 1.0, &ferrokeras::runtime::default_device())
            .unwrap();
    let y = x.sum_keepdim(1).unwrap().affine(0.5, 0.1).unwrap();
    let mut model = Sequential::new()
        .input(&[6])
        .add(Dense::new(8).activation("tanh").unwrap())
        .add(Dense::new(1))
        .compile(
            Compile::new()
                .optimizer("adam")
                .loss("mse")
                .metrics(["mae"]),
        )
        .unwrap();
    let cb = LambdaCallback::new().on_batch_end(move |batch, logs| {
        if let Some(v) = logs.get("val_loss") {
            seen.lock().unwrap().push((batch, v));
        }
        Ok(())
    });
    let mut opts = FitOptions::new()
        .epochs(2)
        .batch_size(20)
        .validation_split(0.25)
        .shuffle(false)
        .verbose(0)
        .callback(cb);
    if let Some(n) = every {
        opts = opts.validation_every_steps(n);
    }
    model.fit((x, y), opts).unwrap()
}

#[test]
fn validation_every_n_steps_reaches_callbacks_and_leaves_training_metrics_alone() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let with = run(Some(3), seen.clone());
    let without = run(None, Arc::new(Mutex::new(Vec::new())));
    // 150 training samples / 20 = 8 batches per epoch, 16 in all: validation after steps 3, 6, ... 15.
    let seen = seen.lock().unwrap().clone();
    let batches: Vec<usize> = seen.iter().map(|(b, _)| *b).collect();
    assert_eq!(batches, vec![2, 5, 0, 3, 6]);
    let steps: Vec<usize> = with.step_validation["val_loss"]
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(steps, vec![3, 6, 9, 12, 15]);
    assert!(with.step_validation.contains_key("val_mae"));
    // Training metrics and epoch-end validation are exactly those of a run without it.
    for key in ["loss", "mae", "val_loss", "val_mae"] {
        assert_eq!(with.get(key), without.get(key), "{key}");
    }
    assert!(without.step_validation.is_empty());
}
