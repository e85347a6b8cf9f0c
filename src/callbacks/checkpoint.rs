//! `ModelCheckpoint`: saves the model (or its weights) during training.

use std::path::PathBuf;

use std::collections::HashSet;

use super::early_stopping::{Direction, Mode, parse_mode, resolve_direction, warn_once};
use super::{Callback, CallbackContext};
use crate::logs::Logs;
use crate::{Error, Result};

/// When to save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFreq {
    /// At the end of every epoch (Keras's `save_freq="epoch"`).
    Epoch,
    /// Every N training batches (counted across epochs).
    Batches(usize),
}

/// Formats a Keras path template: `{epoch:02d}`, `{val_loss:.2f}`, `{batch}`, ...
///
/// Supported specs: `[0][width]d`, `.Nf`, `.Ne` and none (a float prints as Python's `str`).
///
/// ```
/// use ferrokeras::{Logs, callbacks::format_template};
/// let mut logs = Logs::new();
/// logs.insert("val_loss", 0.12345);
/// let s = format_template("ckpt-{epoch:02d}-{val_loss:.2f}.safetensors", 3, None, &logs).unwrap();
/// assert_eq!(s, "ckpt-03-0.12.safetensors");
/// ```
///
/// # Errors
/// A key that is neither `epoch`, `batch` nor in the logs, or an unsupported spec.
pub fn format_template(
    template: &str,
    epoch: usize,
    batch: Option<usize>,
    logs: &Logs,
) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
            Error::value(format!(
                "unclosed `{{` in the checkpoint path template {template:?}"
            ))
        })?;
        let field = &rest[open + 1..close];
        let (key, spec) = field.split_once(':').unwrap_or((field, ""));
        let value: f64 = match key {
            "epoch" => epoch as f64,
            "batch" => batch.map(|b| b as f64).ok_or_else(|| {
                Error::value("`{batch}` in a checkpoint path needs save_freq in batches")
            })?,
            k => logs.get(k).ok_or_else(|| {
                Error::value(format!(
                    "checkpoint path template {template:?} uses `{k}`, which is not in the logs (available: epoch, {})",
                    logs.keys().collect::<Vec<_>>().join(", ")
                ))
            })?,
        };
        out.push_str(&format_spec(value, spec, template)?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The widest field or the most digits a path template may ask for (a file name holds 255 bytes).
const MAX_FIELD: usize = 255;

fn format_spec(v: f64, spec: &str, template: &str) -> Result<String> {
    let bad = || {
        Error::value(format!(
            "unsupported format spec `{spec}` in {template:?}; use d, 0Nd, .Nf or .Ne (N at most {MAX_FIELD})"
        ))
    };
    if spec.is_empty() {
        return Ok(if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            format!("{v}")
        });
    }
    if let Some(w) = spec.strip_suffix('d') {
        let zero = w.starts_with('0');
        let w = w.trim_start_matches('0');
        let width: usize = if w.is_empty() {
            0
        } else {
            w.parse().map_err(|_| bad())?
        };
        if width > MAX_FIELD {
            return Err(bad());
        }
        let n = v.round() as i64;
        return Ok(if zero {
            format!("{n:0width$}")
        } else {
            format!("{n:width$}")
        });
    }
    if let Some(p) = spec.strip_prefix('.') {
        let (digits, kind) = p.split_at(p.char_indices().last().map_or(0, |(i, _)| i));
        let digits: usize = digits.parse().map_err(|_| bad())?;
        if digits > MAX_FIELD {
            return Err(bad());
        }
        return match kind {
            "f" => Ok(format!("{v:.digits$}")),
            "e" => {
                let s = format!("{v:.digits$e}");
                let (m, e) = s.split_once('e').ok_or_else(bad)?;
                let e: i32 = e.parse().map_err(|_| bad())?;
                Ok(format!(
                    "{m}e{}{:02}",
                    if e < 0 { '-' } else { '+' },
                    e.abs()
                ))
            }
            _ => Err(bad()),
        };
    }
    Err(bad())
}

/// Keras's `ModelCheckpoint`: saves at the end of every epoch (or every N batches), optionally only
/// when the monitored value improves. With `save_weights_only` the file holds the weights
/// ([`crate::io::save_weights`]); otherwise a checkpoint with the optimizer's and the model's extra
/// state as well ([`crate::io::save_checkpoint`]). A path in Keras's formats gives Keras's files:
/// `.keras` the whole compiled model (as [`crate::trainer::Trainer::save`]), `.weights.h5`
/// (with `save_weights_only`) the weights and the optimizer's variables. Files are written
/// atomically.
///
/// ```no_run
/// use ferrokeras::callbacks::ModelCheckpoint;
/// let cb = ModelCheckpoint::new("ckpt-{epoch:02d}-{val_loss:.2f}.safetensors")
///     .monitor("val_loss")
///     .save_best_only(true);
/// # let _ = cb;
/// ```
pub struct ModelCheckpoint {
    filepath: String,
    monitor: String,
    mode: Mode,
    /// Resolved from `mode` on the first save that needs it (Keras's lazy `_set_monitor_op`).
    direction: Option<Direction>,
    warned: HashSet<String>,
    save_best_only: bool,
    save_weights_only: bool,
    save_freq: SaveFreq,
    verbose: bool,
    best: Option<f64>,
    batches_seen: usize,
    epoch: usize,
    saved: Vec<PathBuf>,
}

impl ModelCheckpoint {
    /// Saves to `filepath` (a template, see [`format_template`]) every epoch.
    pub fn new(filepath: impl Into<String>) -> Self {
        Self {
            filepath: filepath.into(),
            monitor: "val_loss".into(),
            mode: Mode::Auto,
            direction: None,
            warned: HashSet::new(),
            save_best_only: false,
            save_weights_only: false,
            save_freq: SaveFreq::Epoch,
            verbose: false,
            best: None,
            batches_seen: 0,
            epoch: 0,
            saved: Vec::new(),
        }
    }
    /// The log value that decides "best" (default `val_loss`).
    pub fn monitor(mut self, m: impl Into<String>) -> Self {
        self.monitor = m.into();
        self.direction = None;
        self
    }
    /// `"auto"` (the default), `"min"` or `"max"`: which values are better with
    /// `save_best_only`. `"auto"` decides as [`super::EarlyStopping::mode`] does (lower is better
    /// for `loss` and the error metrics, higher for accuracies, `auc`, `precision`, ...), and is
    /// an error on the first save when the name does not tell; another string falls back to
    /// `"auto"` with a warning, as in Keras.
    ///
    /// ```
    /// use ferrokeras::callbacks::ModelCheckpoint;
    /// let cb = ModelCheckpoint::new("best.safetensors").monitor("val_score").mode("max");
    /// # let _ = cb;
    /// ```
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = parse_mode(mode, |m| {
            format!("ModelCheckpoint mode '{m}' is unknown, fallback to auto mode.")
        });
        self.direction = None;
        self
    }
    /// Save only when the monitored value improves.
    pub fn save_best_only(mut self, b: bool) -> Self {
        self.save_best_only = b;
        self
    }
    /// Save the weights only (no optimizer state).
    pub fn save_weights_only(mut self, b: bool) -> Self {
        self.save_weights_only = b;
        self
    }
    /// Save every epoch (default) or every N batches.
    pub fn save_freq(mut self, f: SaveFreq) -> Self {
        self.save_freq = f;
        self
    }
    /// Only values better than this are saved first (Keras's `initial_value_threshold`).
    pub fn initial_value_threshold(mut self, v: f64) -> Self {
        self.best = Some(v);
        self
    }
    /// Print a line for every save.
    pub fn verbose(mut self, v: bool) -> Self {
        self.verbose = v;
        self
    }
    /// Every file written, in order.
    pub fn saved(&self) -> &[PathBuf] {
        &self.saved
    }

    /// Keras's `ModelCheckpoint._should_save_model`: always without `save_best_only`; with it,
    /// when the monitored value improves on the best so far, or (with a warning) when the logs
    /// do not hold it.
    fn should_save(&mut self, logs: &Logs, path: &std::path::Path) -> Result<bool> {
        let epoch = self.epoch + 1;
        if !self.save_best_only {
            if self.verbose {
                println!("\nEpoch {epoch}: saving model to {}", path.display());
            }
            return Ok(true);
        }
        let Some(current) = logs.get(&self.monitor) else {
            warn_once(
                &mut self.warned,
                format!("Can save best model only with {} available.", self.monitor),
            );
            return Ok(true);
        };
        let direction = match self.direction {
            Some(d) => d,
            None => {
                let d = resolve_direction(self.mode, &self.monitor, "ModelCheckpoint")?;
                self.direction = Some(d);
                d
            }
        };
        // No threshold: the first value is compared with an infinitely bad one (a NaN is no
        // improvement).
        let best = self.best.unwrap_or(match direction {
            Direction::Min => f64::INFINITY,
            Direction::Max => f64::NEG_INFINITY,
        });
        let best_str = self
            .best
            .map_or_else(|| "None".to_string(), |b| format!("{b:.5}"));
        if direction.is_improvement(current, Some(best), 0.0) {
            if self.verbose {
                println!(
                    "\nEpoch {epoch}: {} improved from {best_str} to {current:.5}, saving model to {}",
                    self.monitor,
                    path.display()
                );
            }
            self.best = Some(current);
            Ok(true)
        } else {
            if self.verbose {
                println!(
                    "\nEpoch {epoch}: {} did not improve from {best_str}",
                    self.monitor
                );
            }
            Ok(false)
        }
    }

    fn save(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: Option<usize>,
        logs: &Logs,
    ) -> Result<()> {
        let path = PathBuf::from(format_template(
            &self.filepath,
            self.epoch + 1,
            batch,
            logs,
        )?);
        if !self.should_save(logs, &path)? {
            return Ok(());
        }
        let keras_weights = crate::io::is_keras_weights(&path);
        if self.save_weights_only && keras_weights
            || !self.save_weights_only && crate::io::is_keras_path(&path)
        {
            // Keras's formats, as Keras's callback writes them: the compiled model's optimizer
            // (and, in a `.keras` file, its compile options) included.
            let model = crate::io::keras_layout(ctx.model, &path)?;
            let parts = crate::trainer::compiled_parts(ctx.compiled, ctx.model)?;
            if keras_weights {
                crate::io::keras_file::save_weights_h5(model, &path, parts.as_ref())?;
            } else {
                crate::io::keras_file::save_keras_compiled(model, &path, parts.as_ref())?;
            }
        } else if self.save_weights_only {
            crate::io::save_weights(ctx.model, &path)?;
        } else {
            let mut meta = std::collections::BTreeMap::new();
            meta.insert("epoch".to_string(), (self.epoch + 1).to_string());
            crate::io::save_checkpoint(ctx.model, ctx.compiled, &path, &meta)?;
        }
        if self.verbose {
            println!(
                "\nEpoch {}: finished saving model to {}",
                self.epoch + 1,
                path.display()
            );
        }
        self.saved.push(path);
        Ok(())
    }
}

impl Callback for ModelCheckpoint {
    fn on_epoch_begin(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        epoch: usize,
        _logs: &Logs,
    ) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }
    fn on_train_batch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.batches_seen += 1;
        if let SaveFreq::Batches(n) = self.save_freq
            && n > 0
            && self.batches_seen.is_multiple_of(n)
        {
            self.save(ctx, Some(batch + 1), logs)?;
        }
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.epoch = epoch;
        if self.save_freq == SaveFreq::Epoch {
            self.save(ctx, None, logs)?;
        }
        Ok(())
    }
}
