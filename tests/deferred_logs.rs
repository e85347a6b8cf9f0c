//! On a GPU, metrics keep their updates on the device and a training step's logs hold deferred
//! values: `fit` reads the device only when a value is read (the progress bar's redraws, a
//! callback that looks, the end of an epoch), not once per step, and the numbers are the same
//! whether they are read at every step or once per epoch.
//!
//! Without a GPU the check runs in a child process with `FERROKERAS_KERNELS=candle`, where the
//! CPU takes the other devices' path (metrics queue their updates as they do on a GPU).

use std::process::Command;

use ferrokeras::callbacks::{History, LambdaCallback};
use ferrokeras::prelude::*;
use ferrokeras::random::set_random_seed;

#[path = "support/data.rs"]
mod data;
use data::regression;

const EPOCHS: usize = 3;
const STEPS: usize = 20;

/// Three epochs of 20 steps of a regression (`mse`, tracking `mae`), or with `classify` of a
/// binary classification (tracking `accuracy`, `precision` and `auc`); with `read_every_batch`,
/// a callback reads every log value of every step. Returns the history and how many device
/// reads the metrics made.
fn fit(read_every_batch: bool, classify: bool) -> (History, usize) {
    set_random_seed(7);
    let (x, y) = regression(16 * STEPS, 4);
    let model = Sequential::new()
        .input(&[4])
        .add(Dense::new(8).activation("relu").unwrap());
    let (model, y, compile) = if classify {
        let y = y
            .gt(0.1f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let compile = Compile::new()
            .optimizer("adam")
            .loss("binary_crossentropy")
            .metrics(["accuracy", "precision", "auc"]);
        (
            model.add(Dense::new(1).activation("sigmoid").unwrap()),
            y,
            compile,
        )
    } else {
        let compile = Compile::new()
            .optimizer("adam")
            .loss("mse")
            .metrics(["mae"]);
        (model.add(Dense::new(1)), y, compile)
    };
    let mut model = Trainer::new(model).compile(compile).unwrap();
    let mut opts = FitOptions::new().epochs(EPOCHS).batch_size(16).verbose(0);
    if read_every_batch {
        opts = opts.callback(LambdaCallback::new().on_batch_end(|_, logs: &Logs| {
            assert!(logs.iter().all(|(_, v)| v.is_finite()));
            Ok(())
        }));
    }
    let before = ferrokeras::metrics::device_reads();
    let h = model.fit((x, y), opts).unwrap();
    (h, ferrokeras::metrics::device_reads() - before)
}

/// Runs `test` (this file's test of that name) again, alone, in a process where the CPU takes
/// the other devices' path, unless this one already does; returns whether it ran it there.
fn ran_in_a_child(test: &str) -> bool {
    let on_device_path = !ferrokeras::runtime::default_device().is_cpu()
        || !ferrokeras::runtime::cpu_kernels_enabled();
    if on_device_path {
        return false;
    }
    let name = module_path!()
        .split_once("::")
        .map_or(String::new(), |(_, m)| format!("{m}::"))
        + test;
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env("FERROKERAS_KERNELS", "candle")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child run failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    true
}

/// Fits with and without reading every step's logs: at most one read per metric per epoch
/// when no one reads, at least one per step when a callback does, and the same numbers.
fn check(classify: bool, metrics: usize, per_batch_name: &str) -> History {
    // The read counter is the process's: one test counts at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (lazy, lazy_reads) = fit(false, classify);
    let (eager, eager_reads) = fit(true, classify);
    assert!(
        lazy_reads <= metrics * EPOCHS,
        "{lazy_reads} device reads for {EPOCHS} epochs of {STEPS} steps with no one reading the logs"
    );
    assert!(
        eager_reads >= EPOCHS * STEPS,
        "{eager_reads} device reads with every step's logs read"
    );
    // Same numbers either way, to the bit: every epoch value and every per-batch value.
    assert_eq!(lazy.history, eager.history);
    assert_eq!(lazy.batch_history, eager.batch_history);
    assert_eq!(lazy.get("loss").len(), EPOCHS);
    assert_eq!(lazy.batch_history[per_batch_name].len(), EPOCHS * STEPS);
    assert!(lazy.get("loss")[EPOCHS - 1] < lazy.get("loss")[0]);
    lazy
}

#[test]
fn fit_reads_the_device_when_logs_are_read_not_every_step() {
    if !ran_in_a_child("fit_reads_the_device_when_logs_are_read_not_every_step") {
        // Two metrics (the loss tracker and mae): one read each at the end of every epoch.
        check(false, 2, "mae");
    }
}

/// The same with `Precision` and `AUC`, whose counts also stay on the device.
#[test]
fn confusion_metrics_stay_on_the_device_too() {
    if !ran_in_a_child("confusion_metrics_stay_on_the_device_too") {
        // Four metrics: the loss tracker, accuracy, precision and auc.
        let h = check(true, 4, "auc");
        let auc = h.get("auc");
        assert!(
            auc.windows(2).all(|w| w[0] < w[1]) && auc[EPOCHS - 1] <= 1.0,
            "the area should grow as the model learns: {auc:?}"
        );
    }
}
