//! `CSVLogger`: streams the epoch logs to a CSV file, and Python's `repr` of a float.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Callback, CallbackContext};
use crate::logs::Logs;
use crate::{Error, Result};

/// Formats a float as Python's `str(float)` / `repr(float)` does: the shortest digits that read
/// back to the same value, positional notation from `1e-4` up to `1e16`, and otherwise an exponent
/// with a sign and at least two digits (`1e-05`, `1.5e+16`); `nan`, `inf`, `-inf`, `-0.0`; a
/// whole number keeps its `.0`.
///
/// This is how Keras's `CSVLogger` and its messages print values.
///
/// ```
/// use ferrokeras::callbacks::float_repr;
/// assert_eq!(float_repr(0.1), "0.1");
/// assert_eq!(float_repr(1e-5), "1e-05");
/// assert_eq!(float_repr(2.0), "2.0");
/// assert_eq!(float_repr(1e16), "1e+16");
/// assert_eq!(float_repr(f64::NAN), "nan");
/// ```
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len() as i32;
    // Position of the decimal point relative to the digits: value = 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// Python's `csv` quoting (`QUOTE_MINIMAL`, `doublequote`): quotes a field that contains the
/// separator, a quote or a line break.
fn quote(field: &str, sep: &str) -> String {
    if field.contains(sep) || field.contains(['"', '\r', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// Streams the epoch results to a CSV file (Keras's `keras.callbacks.CSVLogger`).
///
/// The first epoch writes the header, `epoch` followed by the sorted log keys (and, when that
/// epoch has no validation values, a `val_` column for each key, as Keras adds them); every epoch then
/// writes one row: the 0-based epoch and each value as Python prints a float (`0.1`, `1e-05`),
/// `NA` for a key missing from that epoch. As with Python's `csv` module, rows end with `\r\n`
/// and a field holding the separator is quoted. The file is flushed after every row, so a crash
/// keeps the finished epochs. The file is truncated at the start of training unless `append` is
/// set; appending to a non-empty file writes no second header.
///
/// ```
/// use ferrokeras::callbacks::CSVLogger;
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let path = std::env::temp_dir().join(format!("ferrokeras_doc_csv_{}.csv", std::process::id()));
/// let mut model = Sequential::new().input(&[2]).add(Dense::new(1))
///     .compile(Compile::new().optimizer("sgd").loss("mse"))?;
/// let x = candle_core::Tensor::zeros((4, 2), candle_core::DType::F32, &candle_core::Device::Cpu)?;
/// let y = candle_core::Tensor::zeros((4, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?;
/// model.fit((x, y), FitOptions::new().epochs(2).verbose(0).callback(CSVLogger::new(&path)))?;
/// let text = std::fs::read_to_string(&path).unwrap();
/// assert!(text.starts_with("epoch,loss,val_loss\r\n0,"));
/// assert!(text.lines().nth(1).unwrap().ends_with(",NA"));
/// assert_eq!(text.lines().count(), 3);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok(()) }
/// ```
pub struct CSVLogger {
    filename: PathBuf,
    separator: String,
    append: bool,
    append_header: bool,
    keys: Option<Vec<String>>,
    file: Option<File>,
}

impl CSVLogger {
    /// A logger writing to `filename`, with `separator=","` and `append=false`.
    ///
    /// ```
    /// let csv = ferrokeras::callbacks::CSVLogger::new("training.log");
    /// # let _ = csv;
    /// ```
    pub fn new(filename: impl AsRef<Path>) -> Self {
        Self {
            filename: filename.as_ref().to_path_buf(),
            separator: ",".into(),
            append: false,
            append_header: true,
            keys: None,
            file: None,
        }
    }

    /// The field separator: one character, as Python's `csv` requires (checked when training
    /// starts).
    ///
    /// ```
    /// let csv = ferrokeras::callbacks::CSVLogger::new("training.log").separator(";");
    /// # let _ = csv;
    /// ```
    pub fn separator(mut self, separator: impl Into<String>) -> Self {
        self.separator = separator.into();
        self
    }

    /// `true`: append to the file if it exists (to continue a training); `false`: overwrite it.
    ///
    /// ```
    /// let csv = ferrokeras::callbacks::CSVLogger::new("training.log").append(true);
    /// # let _ = csv;
    /// ```
    pub fn append(mut self, append: bool) -> Self {
        self.append = append;
        self
    }

    fn write_line(&mut self, fields: &[String]) -> Result<()> {
        let quoted: Vec<String> = fields.iter().map(|f| quote(f, &self.separator)).collect();
        let line = format!("{}\r\n", quoted.join(&self.separator));
        let path = &self.filename;
        let file = self.file.as_mut().ok_or_else(|| {
            Error::state(format!(
                "CSVLogger for `{}` received an epoch end before `on_train_begin` opened the file",
                path.display()
            ))
        })?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| Error::io(path, e))
    }
}

impl Callback for CSVLogger {
    fn on_train_begin(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        if self.separator.chars().count() != 1 {
            return Err(Error::value(format!(
                "CSVLogger's `separator` must be a 1-character string. Received: separator={:?}",
                self.separator
            )));
        }
        let path = &self.filename;
        let file = if self.append {
            if let Ok(meta) = fs::metadata(path) {
                self.append_header = meta.len() == 0;
            }
            OpenOptions::new().append(true).create(true).open(path)
        } else {
            File::create(path)
        }
        .map_err(|e| Error::io(path, e))?;
        self.file = Some(file);
        self.keys = None;
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        let keys = match &self.keys {
            Some(k) => k.clone(),
            None => {
                let mut keys: Vec<String> = logs.keys().map(str::to_string).collect();
                keys.sort();
                // As Keras: without validation values in the first epoch (none, or
                // `validation_freq > 1`), the `val_` columns are added anyway, so that later
                // validation values have a column (`NA` until then).
                if !keys.iter().any(|k| k.starts_with("val_")) {
                    let val: Vec<String> = keys.iter().map(|k| format!("val_{k}")).collect();
                    keys.extend(val);
                }
                self.keys = Some(keys.clone());
                if self.append_header {
                    let mut header = vec!["epoch".to_string()];
                    header.extend(keys.iter().cloned());
                    self.write_line(&header)?;
                }
                keys
            }
        };
        let mut row = vec![epoch.to_string()];
        row.extend(
            keys.iter()
                .map(|k| logs.get(k).map_or_else(|| "NA".to_string(), float_repr)),
        );
        self.write_line(&row)
    }

    fn on_train_end(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.file = None;
        Ok(())
    }
}
