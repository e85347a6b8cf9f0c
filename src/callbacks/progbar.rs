//! The Keras 3 progress bar: a pure formatter ([`format_bar`], [`format_verbose2`]) and the
//! [`ProgbarLogger`] callback that decides when and where to draw.
//!
//! On a terminal the line is redrawn in place (`\r`), with Keras's colours. Anywhere else (a file, a
//! pipe, CI logs) it prints one plain line per epoch with the metric values and no control
//! characters, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use super::{Callback, CallbackContext};
use crate::Result;
use crate::logs::Logs;

/// Python's `"%.4f"` when `|v| > 1e-3`, else `"%.4e"` (two-digit signed exponent).
///
/// ```
/// use ferrokeras::callbacks::progbar::format_value;
/// assert_eq!(format_value(0.2), "0.2000");
/// assert_eq!(format_value(0.00012345), "1.2345e-04");
/// assert_eq!(format_value(0.0), "0.0000e+00");
/// assert_eq!(format_value(f64::NAN), "nan"); // Python's spelling, as a diverging run shows it
/// assert_eq!(format_value(f64::NEG_INFINITY), "-inf");
/// ```
pub fn format_value(v: f64) -> String {
    if v.abs() > 1e-3 {
        format!("{v:.4}")
    } else {
        python_e(v)
    }
}

fn python_e(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if !v.is_finite() {
        return format!("{v}");
    }
    let s = format!("{v:.4e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let e: i32 = exp.parse().unwrap_or(0);
            let sign = if e < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", e.abs())
        }
        None => s,
    }
}

/// Keras's per-step time: ` 2ms/step`.
///
/// ```
/// use ferrokeras::callbacks::progbar::format_per_step;
/// assert_eq!(format_per_step(0.002), " 2ms/step");
/// assert_eq!(format_per_step(1.5), " 2s/step");
/// assert_eq!(format_per_step(0.0000025), " 2us/step");
/// ```
pub fn format_per_step(t: f64) -> String {
    if t >= 1.0 || t == 0.0 {
        format!(" {t:.0}s/step")
    } else if t >= 1e-3 {
        format!(" {:.0}ms/step", t * 1000.0)
    } else {
        format!(" {:.0}us/step", t * 1e6)
    }
}

fn format_eta(eta: f64) -> String {
    let e = eta.max(0.0) as u64;
    if eta > 3600.0 {
        format!("{}:{:02}:{:02}", e / 3600, (e % 3600) / 60, e % 60)
    } else if eta > 60.0 {
        format!("{}:{:02}", e / 60, e % 60)
    } else {
        format!("{e}s")
    }
}

fn round0(v: f64) -> String {
    format!("{v:.0}")
}

/// One verbose=1 line, as Keras draws it: count, 20-cell bar, time (ETA while running, elapsed
/// when `finalized`), time per step, metrics. `color` adds Keras's ANSI bold/green/white.
///
/// ```
/// use ferrokeras::callbacks::progbar::format_bar;
/// let vals = vec![("loss".to_string(), 0.2), ("mae".to_string(), 0.3)];
/// let line = format_bar(32, Some(32), 0.4, 0.002, true, &vals, false);
/// assert_eq!(line, "32/32 ━━━━━━━━━━━━━━━━━━━━ 0s 2ms/step - loss: 0.2000 - mae: 0.3000");
/// ```
pub fn format_bar(
    current: usize,
    target: Option<usize>,
    seconds: f64,
    per_step: f64,
    finalized: bool,
    values: &[(String, f64)],
    color: bool,
) -> String {
    let (bold, reset, green, white) = if color {
        ("\x1b[1m", "\x1b[0m", "\x1b[32m", "\x1b[37m")
    } else {
        ("", "", "", "")
    };
    let mut line = String::new();
    match target {
        Some(t) if t > 0 => {
            let digits = t.to_string().len();
            line += &format!("{bold}{current:>digits$}/{t}{reset} ");
            let filled = ((20 * current) / t).min(20);
            if filled > 0 {
                line += &format!("{green}{}{reset}", "━".repeat(filled));
            }
            line += &format!("{white}{}{reset}", "━".repeat(20 - filled));
        }
        _ => line += &format!("{current:>7}/Unknown"),
    }
    let time = if target.is_some() && !finalized {
        format_eta(seconds)
    } else {
        format!("{}s", round0(seconds))
    };
    line += &format!(" {bold}{time}{reset}");
    line += &format_per_step(per_step);
    for (k, v) in values {
        line += &format!(" - {k}: {}", format_value(*v));
    }
    line
}

/// The verbose=2 epoch line: `32/32 - 0s - 2ms/step - loss: 0.2000`. As in Keras, the threshold
/// for fixed notation is `v > 1e-3` (negative values print in exponent notation).
///
/// ```
/// use ferrokeras::callbacks::progbar::format_verbose2;
/// let vals = vec![("loss".to_string(), 0.2)];
/// assert_eq!(format_verbose2(32, 32, 0.3, 0.002, &vals), "32/32 - 0s - 2ms/step - loss: 0.2000");
/// ```
pub fn format_verbose2(
    current: usize,
    target: usize,
    elapsed: f64,
    per_step: f64,
    values: &[(String, f64)],
) -> String {
    let digits = target.max(1).to_string().len();
    let mut line = format!("{current:>digits$}/{target} - {}s -", round0(elapsed));
    line += &format_per_step(per_step);
    for (k, v) in values {
        let s = if *v > 1e-3 {
            format!("{v:.4}")
        } else {
            python_e(*v)
        };
        line += &format!(" - {k}: {s}");
    }
    line
}

/// Progress state of one bar (an epoch, an evaluation or a prediction).
struct Bar {
    target: Option<usize>,
    start: Instant,
    after_first: Option<Instant>,
    last_draw: Option<Instant>,
    order: Vec<String>,
    /// The latest logs, read only when a line is drawn (values on a GPU are then read once per
    /// redraw, not once per step).
    logs: Logs,
    prev_width: usize,
}

impl Bar {
    fn new(target: Option<usize>) -> Self {
        Self {
            target,
            start: Instant::now(),
            after_first: None,
            last_draw: None,
            order: Vec::new(),
            logs: Logs::new(),
            prev_width: 0,
        }
    }
    fn set_values(&mut self, logs: &Logs) {
        for k in logs.keys() {
            if !self.order.iter().any(|o| o == k) {
                self.order.push(k.to_string());
            }
        }
        self.logs = logs.clone();
    }
    /// The values to show, in first-seen order of their keys.
    fn values(&self) -> Vec<(String, f64)> {
        self.order
            .iter()
            .filter_map(|k| self.logs.get(k).map(|v| (k.clone(), v)))
            .collect()
    }
    fn per_step(&mut self, current: usize, now: Instant) -> f64 {
        if current == 0 {
            return 0.0;
        }
        let t = match self.after_first {
            Some(a) if current > 1 => (now - a).as_secs_f64() / (current - 1) as f64,
            _ => (now - self.start).as_secs_f64() / current as f64,
        };
        if current == 1 {
            self.after_first = Some(now);
        }
        t
    }
}

/// Where the bar goes.
enum Sink {
    Stdout,
    Writer(Box<dyn Write + Send>),
}

/// Keras's `ProgbarLogger`, added by `fit`/`evaluate`/`predict` when `verbose` is not 0.
///
/// ```
/// use ferrokeras::callbacks::ProgbarLogger;
/// let p = ProgbarLogger::new(1).dynamic(false); // plain lines even on a terminal
/// # let _ = p;
/// ```
pub struct ProgbarLogger {
    verbose: u8,
    dynamic: bool,
    sink: Sink,
    bar: Option<Bar>,
    epochs: usize,
    step: usize,
    show_metrics: bool,
    /// The steps of an epoch whose length was not known, learnt when the first epoch ended (Keras's
    /// `_finalize_progbar`): later epochs draw a real bar.
    learnt_steps: Option<usize>,
}

impl ProgbarLogger {
    /// A logger printing to stdout; redraws in place only when stdout is a terminal.
    pub fn new(verbose: u8) -> Self {
        Self {
            verbose,
            dynamic: std::io::stdout().is_terminal(),
            sink: Sink::Stdout,
            bar: None,
            epochs: 1,
            step: 0,
            show_metrics: true,
            learnt_steps: None,
        }
    }
    /// A logger writing plain lines to `w` (tests, log files).
    pub fn to_writer(verbose: u8, w: Box<dyn Write + Send>) -> Self {
        Self {
            sink: Sink::Writer(w),
            dynamic: false,
            ..Self::new(verbose)
        }
    }
    /// Forces in-place redraws on or off.
    pub fn dynamic(mut self, dynamic: bool) -> Self {
        self.dynamic = dynamic;
        self
    }

    fn write(&mut self, s: &str) {
        let r = match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(s.as_bytes()).and_then(|_| out.flush())
            }
            Sink::Writer(w) => w.write_all(s.as_bytes()).and_then(|_| w.flush()),
        };
        // A closed stdout must not abort training.
        let _ = r;
    }

    fn start(&mut self, target: Option<usize>, show_metrics: bool) {
        self.bar = Some(Bar::new(target));
        self.step = 0;
        self.show_metrics = show_metrics;
    }

    fn update(&mut self, current: usize, logs: &Logs, finalize: bool) {
        let (verbose, dynamic, show) = (self.verbose, self.dynamic, self.show_metrics);
        let Some(bar) = self.bar.as_mut() else {
            return;
        };
        if show {
            bar.set_values(logs);
        }
        let now = Instant::now();
        // With verbose 2 Keras updates its bar only at the end, so the first step (often the
        // slowest) is part of the average.
        let per_step = if verbose == 2 {
            if current == 0 {
                0.0
            } else {
                (now - bar.start).as_secs_f64() / current as f64
            }
        } else {
            bar.per_step(current, now)
        };
        if finalize && bar.target.is_none() {
            // The pass is over: its length is known now.
            bar.target = Some(current);
        }
        if !finalize {
            if verbose != 1 || !dynamic {
                return;
            }
            if bar
                .last_draw
                .is_some_and(|t| (now - t).as_secs_f64() < 0.05)
            {
                return;
            }
        }
        bar.last_draw = Some(now);
        let elapsed = (now - bar.start).as_secs_f64();
        let values = bar.values();
        let line = if verbose == 2 {
            if !finalize {
                return;
            }
            format_verbose2(
                current,
                bar.target.unwrap_or(current),
                elapsed,
                per_step,
                &values,
            ) + "\n"
        } else {
            let seconds = if finalize {
                elapsed
            } else {
                per_step * bar.target.map_or(0.0, |t| t.saturating_sub(current) as f64)
            };
            let text = format_bar(
                current, bar.target, seconds, per_step, finalize, &values, dynamic,
            );
            if dynamic {
                let width = format_bar(
                    current, bar.target, seconds, per_step, finalize, &values, false,
                )
                .chars()
                .count();
                let pad = " ".repeat(bar.prev_width.saturating_sub(width));
                bar.prev_width = width;
                format!("\r{text}{pad}{}", if finalize { "\n" } else { "" })
            } else {
                text + "\n"
            }
        };
        self.write(&line);
    }
}

impl Callback for ProgbarLogger {
    fn on_train_begin(&mut self, ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.epochs = ctx.params.epochs;
        self.learnt_steps = None;
        Ok(())
    }
    fn on_epoch_begin(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        _logs: &Logs,
    ) -> Result<()> {
        if self.epochs > 1 {
            self.write(&format!("Epoch {}/{}\n", epoch + 1, self.epochs));
        }
        self.start(ctx.params.steps.or(self.learnt_steps), true);
        Ok(())
    }
    fn on_train_batch_end(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.step = batch + 1;
        self.update(batch + 1, logs, false);
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        _epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        let step = self.step;
        self.update(step, logs, true);
        if ctx.params.steps.is_none() && self.learnt_steps.is_none() && step > 0 {
            self.learnt_steps = Some(step);
        }
        self.bar = None;
        Ok(())
    }
    fn on_test_begin(&mut self, ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        if !ctx.in_fit {
            self.start(ctx.params.steps, true);
        }
        Ok(())
    }
    fn on_test_batch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        if !ctx.in_fit {
            self.step = batch + 1;
            self.update(batch + 1, logs, false);
        }
        Ok(())
    }
    fn on_test_end(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        if !ctx.in_fit {
            let step = self.step;
            self.update(step, logs, true);
            self.bar = None;
        }
        Ok(())
    }
    fn on_predict_begin(&mut self, ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.start(ctx.params.steps, false);
        Ok(())
    }
    fn on_predict_batch_end(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.step = batch + 1;
        self.update(batch + 1, logs, false);
        Ok(())
    }
    fn on_predict_end(&mut self, _ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        let step = self.step;
        self.update(step, logs, true);
        self.bar = None;
        Ok(())
    }
}
