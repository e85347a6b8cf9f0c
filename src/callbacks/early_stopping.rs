//! `EarlyStopping`: stop training when a monitored quantity has stopped improving.
//!
//! Also home of the monitoring rules shared with [`super::ReduceLROnPlateau`] (Keras's
//! `MonitorCallback`): the `"auto"`/`"min"`/`"max"` modes, the direction inferred from a metric's
//! name, and `min_delta`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::Tensor;

use super::{Callback, CallbackContext};
use crate::logs::Logs;
use crate::{Error, Result};

// ------------------------------------------------------------------------------------------------
// Monitoring rules shared with ReduceLROnPlateau (Keras's MonitorCallback)
// ------------------------------------------------------------------------------------------------

/// A monitoring mode as given by the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Auto,
    Min,
    Max,
}

/// Whether lower or higher values of the monitored quantity are better (Keras's `monitor_op`:
/// `ops.less` or `ops.greater`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    Min,
    Max,
}

impl Direction {
    /// Keras's `_is_improvement`: `monitor_op(value - min_delta, reference)` with `min_delta`
    /// negated in `"min"` mode, and always an improvement over no reference (`None`).
    pub(super) fn is_improvement(self, value: f64, reference: Option<f64>, min_delta: f64) -> bool {
        let Some(reference) = reference else {
            return true;
        };
        match self {
            Direction::Min => value + min_delta < reference,
            Direction::Max => value - min_delta > reference,
        }
    }
}

/// Parses `"auto"`, `"min"` or `"max"`; anything else falls back to `"auto"` with Keras's warning.
pub(super) fn parse_mode(mode: &str, unknown_warning: impl FnOnce(&str) -> String) -> Mode {
    match mode {
        "auto" => Mode::Auto,
        "min" => Mode::Min,
        "max" => Mode::Max,
        other => {
            eprintln!("UserWarning: {}", unknown_warning(other));
            Mode::Auto
        }
    }
}

/// Names (after `val_` and output prefixes) of the metrics Keras marks `direction="up"`.
const UP: &[&str] = &[
    "acc",
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "auc",
    "precision",
    "recall",
    "precision_at_recall",
    "recall_at_precision",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "f1_score",
    "fbeta_score",
    "r2_score",
    "iou",
    "mean_iou",
    "binary_iou",
    "one_hot_iou",
    "one_hot_mean_iou",
    "cosine_similarity",
    "pearson_correlation",
    "concordance_correlation",
];

/// Names of the losses and of the metrics Keras marks `direction="down"`.
const DOWN: &[&str] = &[
    "loss",
    "mse",
    "mae",
    "mape",
    "msle",
    "rmse",
    "mean_squared_error",
    "mean_absolute_error",
    "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error",
    "root_mean_squared_error",
    "logcosh",
    "log_cosh_error",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "kl_divergence",
    "kld",
    "poisson",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
];

/// The direction `"auto"` mode infers from a monitored name, or `None` where Keras would raise.
///
/// Keras 3 strips `val_`, takes `"loss"` as "lower is better", and otherwise looks for a compiled
/// metric of that name and reads its `_direction`. Metrics here carry no direction, so the same
/// answer is read from the names of Keras's built-in metrics, also when they carry an output prefix
/// (`"dense_1_accuracy"`) or a uniquifying suffix (`"auc_1"`).
pub(super) fn auto_direction(monitor: &str) -> Option<Direction> {
    let name = monitor.strip_prefix("val_").unwrap_or(monitor);
    let name = match name.rsplit_once('_') {
        Some((head, tail))
            if !head.is_empty() && !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) =>
        {
            head
        }
        _ => name,
    };
    let matches = |known: &&str| name == *known || name.ends_with(&format!("_{known}"));
    if DOWN.iter().any(matches) {
        Some(Direction::Min)
    } else if UP.iter().any(matches) {
        Some(Direction::Max)
    } else {
        None
    }
}

/// Resolves a mode into a direction, with Keras's error when `"auto"` cannot decide.
pub(super) fn resolve_direction(mode: Mode, monitor: &str, callback: &str) -> Result<Direction> {
    match mode {
        Mode::Min => Ok(Direction::Min),
        Mode::Max => Ok(Direction::Max),
        Mode::Auto => auto_direction(monitor).ok_or_else(|| {
            Error::value(format!(
                "{callback} callback received monitor={monitor}, but Keras isn't able to automatically determine whether that metric should be maximized or minimized. Pass `.mode(\"max\")` in order to monitor based on the highest metric value, or pass `.mode(\"min\")` in order to use the lowest value."
            ))
        }),
    }
}

/// Prints a Python-style `UserWarning` line on stderr, once per distinct message (Python's default
/// warning filter shows a given warning once).
pub(super) fn warn_once(seen: &mut HashSet<String>, message: String) {
    if seen.insert(message.clone()) {
        eprintln!("UserWarning: {message}");
    }
}

/// The keys of `logs` joined by `,`, as Keras lists the available metrics.
pub(super) fn available(logs: &Logs) -> String {
    logs.keys().collect::<Vec<_>>().join(",")
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------------------------------------------
// EarlyStopping
// ------------------------------------------------------------------------------------------------

struct Inner {
    monitor: String,
    min_delta: f64,
    patience: usize,
    verbose: u8,
    mode: Mode,
    baseline: Option<f64>,
    restore_best_weights: bool,
    start_from_epoch: usize,
    // State.
    direction: Option<Direction>,
    wait: usize,
    stopped_epoch: usize,
    best: Option<f64>,
    best_epoch: usize,
    best_weights: Option<Vec<Tensor>>,
    warned: HashSet<String>,
}

/// Stops training when a monitored quantity has stopped improving (Keras's
/// `keras.callbacks.EarlyStopping`, same arguments and defaults).
///
/// At the end of every epoch (from `start_from_epoch` on) the monitored value is compared with
/// the best so far: it improves when it beats the best by more than `min_delta`. `wait` counts the
/// epochs since the last improvement (an improvement resets it only if it also beats `baseline`,
/// when one is given), and training stops once `wait >= patience`, never at the first epoch.
/// With `restore_best_weights`, the weights of the best epoch are put back at the end of training,
/// whether training was stopped early or not (Keras 3; Keras 2 restored only after an early stop).
///
/// A missing monitored key is not an error: a `UserWarning` line goes to stderr (once, as Python
/// shows it) and the epoch is skipped. In `"auto"` mode an unknown metric name is an error, as in
/// Keras 3 (pass `.mode("min")` or `.mode("max")`).
///
/// A clone is a handle on the same callback: keep one to read [`EarlyStopping::stopped_epoch`]
/// or [`EarlyStopping::best`] after `fit` has taken the other.
///
/// ```
/// use ferrokeras::callbacks::{Callback, CallbackContext, EarlyStopping, Params};
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let es = EarlyStopping::new().monitor("loss").patience(2);
/// let mut cb = es.clone();
/// let mut model = Sequential::new().input(&[2]).add(Dense::new(1));
/// let mut compiled = StepContext::new();
/// let params = Params { epochs: 10, steps: Some(1), verbose: 0 };
/// let (mut stop, no_logs) = (false, Logs::new());
/// let mut ctx = CallbackContext::new(&mut model, &mut compiled, &params, &no_logs, &mut stop);
/// cb.on_train_begin(&mut ctx, &no_logs)?;
/// for (epoch, loss) in [1.0, 0.5, 0.6, 0.7, 0.4].into_iter().enumerate() {
///     cb.on_epoch_end(&mut ctx, epoch, &[("loss", loss)].into_iter().collect())?;
///     if ctx.stop_requested() { break; }
/// }
/// cb.on_train_end(&mut ctx, &no_logs)?;
/// assert_eq!(es.stopped_epoch(), 3); // two epochs without improvement after epoch 1
/// assert_eq!((es.best(), es.best_epoch()), (Some(0.5), 1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EarlyStopping {
    inner: Arc<Mutex<Inner>>,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        Self::new()
    }
}

impl EarlyStopping {
    /// Keras's defaults: `monitor="val_loss"`, `min_delta=0`, `patience=0`, `verbose=0`,
    /// `mode="auto"`, no baseline, `restore_best_weights=false`, `start_from_epoch=0`.
    ///
    /// ```
    /// use ferrokeras::callbacks::EarlyStopping;
    /// let es = EarlyStopping::new();
    /// assert_eq!((es.stopped_epoch(), es.best()), (0, None));
    /// ```
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                monitor: "val_loss".into(),
                min_delta: 0.0,
                patience: 0,
                verbose: 0,
                mode: Mode::Auto,
                baseline: None,
                restore_best_weights: false,
                start_from_epoch: 0,
                direction: None,
                wait: 0,
                stopped_epoch: 0,
                best: None,
                best_epoch: 0,
                best_weights: None,
                warned: HashSet::new(),
            })),
        }
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> Self {
        f(&mut lock(&self.inner));
        self
    }

    /// The quantity to monitor (a key of the epoch logs, e.g. `"val_loss"`, `"accuracy"`).
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().monitor("val_accuracy");
    /// # let _ = es;
    /// ```
    pub fn monitor(self, monitor: impl Into<String>) -> Self {
        let monitor = monitor.into();
        self.with(|s| {
            s.monitor = monitor;
            s.direction = None;
        })
    }

    /// Minimum change that counts as an improvement (its absolute value is used, as in Keras).
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().min_delta(1e-3);
    /// # let _ = es;
    /// ```
    pub fn min_delta(self, min_delta: f64) -> Self {
        self.with(|s| s.min_delta = min_delta.abs())
    }

    /// Number of epochs without improvement after which training stops.
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().patience(3);
    /// # let _ = es;
    /// ```
    pub fn patience(self, patience: usize) -> Self {
        self.with(|s| s.patience = patience)
    }

    /// 0: silent; 1: prints `Epoch N: early stopping` and the restoring message on stdout.
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().verbose(1);
    /// # let _ = es;
    /// ```
    pub fn verbose(self, verbose: u8) -> Self {
        self.with(|s| s.verbose = verbose)
    }

    /// `"auto"` (the default), `"min"` or `"max"`. `"auto"` infers the direction from the name:
    /// lower is better for `loss` and the error metrics (`mse`, `mae`, crossentropies, ...),
    /// higher for accuracies, `auc`, `precision`, `recall`, `f1_score`, ... Another string falls
    /// back to `"auto"` with a warning, as in Keras.
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().monitor("val_score").mode("max");
    /// # let _ = es;
    /// ```
    pub fn mode(self, mode: &str) -> Self {
        let mode = parse_mode(mode, |m| {
            format!("EarlyStopping mode {m} is unknown, fallback to auto mode.")
        });
        self.with(|s| {
            s.mode = mode;
            s.direction = None;
        })
    }

    /// A value to beat: until an epoch improves on it, improvements do not reset the patience
    /// counter, so training stops after `patience` epochs.
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().baseline(0.5).patience(5);
    /// # let _ = es;
    /// ```
    pub fn baseline(self, baseline: f64) -> Self {
        self.with(|s| s.baseline = Some(baseline))
    }

    /// Whether to put back, at the end of training, the weights of the epoch with the best
    /// monitored value (otherwise the last weights are kept).
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().restore_best_weights(true);
    /// # let _ = es;
    /// ```
    pub fn restore_best_weights(self, restore: bool) -> Self {
        self.with(|s| s.restore_best_weights = restore)
    }

    /// Number of warm-up epochs during which the monitored value is ignored.
    ///
    /// ```
    /// let es = ferrokeras::callbacks::EarlyStopping::new().start_from_epoch(5);
    /// # let _ = es;
    /// ```
    pub fn start_from_epoch(self, epoch: usize) -> Self {
        self.with(|s| s.start_from_epoch = epoch)
    }

    /// The 0-based epoch at which training was stopped, 0 if it was not.
    ///
    /// ```
    /// assert_eq!(ferrokeras::callbacks::EarlyStopping::new().stopped_epoch(), 0);
    /// ```
    pub fn stopped_epoch(&self) -> usize {
        lock(&self.inner).stopped_epoch
    }

    /// The best monitored value so far (`None` before the first monitored epoch).
    ///
    /// ```
    /// assert_eq!(ferrokeras::callbacks::EarlyStopping::new().best(), None);
    /// ```
    pub fn best(&self) -> Option<f64> {
        lock(&self.inner).best
    }

    /// The 0-based epoch of [`EarlyStopping::best`] (the epoch whose weights are restored).
    ///
    /// ```
    /// assert_eq!(ferrokeras::callbacks::EarlyStopping::new().best_epoch(), 0);
    /// ```
    pub fn best_epoch(&self) -> usize {
        lock(&self.inner).best_epoch
    }

    /// Epochs counted since the last improvement.
    ///
    /// ```
    /// assert_eq!(ferrokeras::callbacks::EarlyStopping::new().wait(), 0);
    /// ```
    pub fn wait(&self) -> usize {
        lock(&self.inner).wait
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        // Allow instances to be re-used.
        let mut s = lock(&self.inner);
        s.wait = 0;
        s.stopped_epoch = 0;
        s.best = None;
        s.best_weights = None;
        s.best_epoch = 0;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        let mut guard = lock(&self.inner);
        let s = &mut *guard;
        let direction = match s.direction {
            Some(d) => d,
            None => {
                let d = resolve_direction(s.mode, &s.monitor, "EarlyStopping")?;
                s.direction = Some(d);
                d
            }
        };
        let Some(current) = logs.get(&s.monitor) else {
            let message = format!(
                "Early stopping conditioned on metric `{}` which is not available. Available metrics are: {}",
                s.monitor,
                available(logs)
            );
            warn_once(&mut s.warned, message);
            return Ok(());
        };
        if epoch < s.start_from_epoch {
            return Ok(());
        }
        if s.restore_best_weights && s.best_weights.is_none() {
            // If best weights were never set, then the current weights are the best.
            s.best_weights = Some(ctx.model.get_weights());
            s.best_epoch = epoch;
        }
        s.wait += 1;
        if direction.is_improvement(current, s.best, s.min_delta) {
            s.best = Some(current);
            s.best_epoch = epoch;
            if s.restore_best_weights {
                s.best_weights = Some(ctx.model.get_weights());
            }
            // Only restart wait if we beat both the baseline and our previous best.
            if s.baseline.is_none() || direction.is_improvement(current, s.baseline, s.min_delta) {
                s.wait = 0;
            }
            return Ok(());
        }
        if s.wait >= s.patience && epoch > 0 {
            s.stopped_epoch = epoch;
            ctx.stop_training();
        }
        Ok(())
    }

    fn on_train_end(&mut self, ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        let s = lock(&self.inner);
        if s.stopped_epoch > 0 && s.verbose > 0 {
            println!("Epoch {}: early stopping", s.stopped_epoch + 1);
        }
        if s.restore_best_weights
            && let Some(weights) = &s.best_weights
        {
            if s.verbose > 0 {
                println!(
                    "Restoring model weights from the end of the best epoch: {}.",
                    s.best_epoch + 1
                );
            }
            ctx.model.set_weights(weights)?;
        }
        Ok(())
    }
}
