//! `TensorBoard`: Keras's `keras.callbacks.TensorBoard`, writing scalar summaries to TensorBoard
//! event files, and [`SummaryWriter`], the event-file writer underneath it.
//!
//! An event file is a sequence of TFRecord records (`u64` length, masked CRC32C of the length,
//! payload, masked CRC32C of the payload), each payload an `Event` protocol buffer. The first
//! event carries the file version `"brain.Event:2"`; every other event carries one scalar
//! (`Summary.Value.simple_value`) with its tag and step. The protocol buffers are encoded by hand:
//! only the handful of fields TensorBoard needs for scalars are written.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::{Callback, CallbackContext};
use crate::logs::Logs;
use crate::{Error, Result};

/// How often [`TensorBoard`] writes training values (Keras's `update_freq`).
///
/// ```
/// use ferrokeras::callbacks::UpdateFreq;
/// assert_eq!("epoch".parse::<UpdateFreq>().unwrap(), UpdateFreq::Epoch);
/// assert_eq!("batch".parse::<UpdateFreq>().unwrap(), UpdateFreq::Batches(1));
/// assert_eq!(UpdateFreq::from(100), UpdateFreq::Batches(100));
/// assert!("often".parse::<UpdateFreq>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateFreq {
    /// Only at the end of each epoch (`update_freq="epoch"`, the default).
    #[default]
    Epoch,
    /// Also every `n` training batches (`update_freq=n`; `"batch"` is 1), as `batch_*` scalars
    /// whose step is the number of training batches seen since the start of `fit`.
    Batches(usize),
}

impl From<usize> for UpdateFreq {
    fn from(n: usize) -> Self {
        UpdateFreq::Batches(n)
    }
}

impl FromStr for UpdateFreq {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "epoch" => Ok(UpdateFreq::Epoch),
            "batch" => Ok(UpdateFreq::Batches(1)),
            other => other.parse::<usize>().map(UpdateFreq::Batches).map_err(|_| {
                Error::value(format!(
                    "`update_freq` must be \"epoch\", \"batch\" or a number of batches. Received: update_freq={other:?}"
                ))
            }),
        }
    }
}

/// Keras's `TensorBoard` callback: writes the training and validation scalars of `fit` (and the
/// results of `evaluate`) as TensorBoard event files.
///
/// As in Keras:
/// - training values go to `log_dir/train`, validation values to `log_dir/validation`;
/// - at the end of each epoch, every log `name` becomes the scalar `epoch_{name}` at step `epoch`
///   (0-based): training keys in the `train` run, `val_{name}` keys as `epoch_{name}` in the
///   `validation` run; the optimizer's learning rate is added as `epoch_learning_rate`;
/// - with [`UpdateFreq::Batches`]`(n)`, every `n`-th training batch writes `batch_{name}` (the
///   batch's logs, i.e. Keras's running means over the epoch) at step = number of training
///   batches since the start of `fit` (1-based);
/// - each evaluation (validation inside `fit`, or `evaluate`) writes
///   `evaluation_{name}_vs_iterations` in the `validation` run at step = optimizer iterations;
/// - with [`TensorBoard::write_steps_per_second`], `epoch_steps_per_second` (and
///   `batch_steps_per_second` with batch updates) are added.
///
/// Files are named `events.out.tfevents.{unix_time}.{hostname}.{pid}.{n}.v2` (TensorFlow's
/// pattern, `n` a per-process counter), and are flushed after each epoch and each evaluation so
/// TensorBoard shows the data while training runs. Each `fit` starts new files.
///
/// ```
/// use ferrokeras::callbacks::TensorBoard;
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let log_dir = std::env::temp_dir().join("ferrokeras-doc-tensorboard");
/// # let _ = std::fs::remove_dir_all(&log_dir);
/// let x = ferrokeras::random::uniform(&[32, 3], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// let y = ferrokeras::random::uniform(&[32, 1], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// let mut model = Sequential::new()
///     .input(&[3])
///     .add(Dense::new(1))
///     .compile(Compile::new().optimizer("adam").loss("mse").metrics(["mae"]))?;
/// let tb = TensorBoard::new(&log_dir).update_freq(2); // or "epoch".parse()?, or UpdateFreq::Epoch
/// model.fit(
///     (x, y),
///     FitOptions::new().epochs(2).batch_size(8).validation_split(0.25).verbose(0).callback(tb),
/// )?;
/// assert!(log_dir.join("train").is_dir() && log_dir.join("validation").is_dir());
/// // Then: `tensorboard --logdir <log_dir>`
/// # Ok(()) }
/// ```
pub struct TensorBoard {
    log_dir: PathBuf,
    update_freq: UpdateFreq,
    write_steps_per_second: bool,
    train: Option<SummaryWriter>,
    val: Option<SummaryWriter>,
    global_train_batch: u64,
    epoch_batches: u64,
    epoch_start: Option<Instant>,
    batch_start: Option<Instant>,
}

impl TensorBoard {
    /// A callback writing under `log_dir` (Keras's default is `"logs"`), once per epoch.
    pub fn new(log_dir: impl AsRef<Path>) -> Self {
        Self {
            log_dir: log_dir.as_ref().to_path_buf(),
            update_freq: UpdateFreq::Epoch,
            write_steps_per_second: false,
            train: None,
            val: None,
            global_train_batch: 0,
            epoch_batches: 0,
            epoch_start: None,
            batch_start: None,
        }
    }
    /// How often to write training values: [`UpdateFreq::Epoch`], or every `n` batches
    /// (a `usize` converts into [`UpdateFreq::Batches`]). `fit` fails on `Batches(0)`.
    pub fn update_freq(mut self, freq: impl Into<UpdateFreq>) -> Self {
        self.update_freq = freq.into();
        self
    }
    /// Also writes the training speed in steps per second (Keras's `write_steps_per_second`).
    pub fn write_steps_per_second(mut self, yes: bool) -> Self {
        self.write_steps_per_second = yes;
        self
    }
    /// The root log directory.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    fn train_writer(&mut self) -> Result<&mut SummaryWriter> {
        if self.train.is_none() {
            self.train = Some(SummaryWriter::new(self.log_dir.join("train"))?);
        }
        Ok(self.train.as_mut().expect("just created"))
    }

    fn val_writer(&mut self) -> Result<&mut SummaryWriter> {
        if self.val.is_none() {
            self.val = Some(SummaryWriter::new(self.log_dir.join("validation"))?);
        }
        Ok(self.val.as_mut().expect("just created"))
    }

    fn batch_freq(&self) -> Option<u64> {
        match self.update_freq {
            UpdateFreq::Epoch => None,
            UpdateFreq::Batches(n) => Some(n as u64),
        }
    }

    fn close_writers(&mut self) -> Result<()> {
        let (train, val) = (self.train.take(), self.val.take());
        for w in [train, val].into_iter().flatten() {
            w.close()?;
        }
        Ok(())
    }
}

impl Callback for TensorBoard {
    fn on_train_begin(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        if self.update_freq == UpdateFreq::Batches(0) {
            return Err(Error::value(
                "TensorBoard: `update_freq` must be \"epoch\" or a number of batches >= 1. Received: update_freq=0",
            ));
        }
        self.global_train_batch = 0;
        self.train_writer()?;
        Ok(())
    }

    fn on_train_end(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.close_writers()
    }

    fn on_epoch_begin(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        _epoch: usize,
        _logs: &Logs,
    ) -> Result<()> {
        self.epoch_batches = 0;
        self.epoch_start = Some(Instant::now());
        Ok(())
    }

    fn on_train_batch_begin(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        _batch: usize,
        _logs: &Logs,
    ) -> Result<()> {
        self.global_train_batch += 1;
        self.epoch_batches += 1;
        self.batch_start = Some(Instant::now());
        Ok(())
    }

    fn on_train_batch_end(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        _batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        let Some(freq) = self.batch_freq() else {
            return Ok(());
        };
        let step = self.global_train_batch as i64;
        if !self.global_train_batch.is_multiple_of(freq) {
            return Ok(());
        }
        let speed = self
            .write_steps_per_second
            .then(|| self.batch_start.map(|t| 1.0 / t.elapsed().as_secs_f64()))
            .flatten();
        let w = self.train_writer()?;
        if let Some(s) = speed {
            w.scalar("batch_steps_per_second", s, step)?;
        }
        for (name, value) in logs.iter() {
            w.scalar(&format!("batch_{name}"), value, step)?;
        }
        w.flush_if_older_than(5.0)
    }

    fn on_epoch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        if logs.is_empty() {
            // Nothing to log (Keras writes nothing either); still make batch values visible.
            if let Some(w) = self.train.as_mut() {
                w.flush()?;
            }
            return Ok(());
        }
        let step = epoch as i64;
        let mut train: Vec<(String, f64)> = logs
            .iter()
            .filter(|(k, _)| !k.starts_with("val_"))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        if ctx.compiled.has_optimizer() {
            let lr = ctx.compiled.optimizer()?.learning_rate();
            train.retain(|(k, _)| k != "learning_rate");
            train.push(("learning_rate".into(), lr));
        }
        if self.write_steps_per_second
            && let Some(t) = self.epoch_start
        {
            let secs = t.elapsed().as_secs_f64();
            train.push(("steps_per_second".into(), self.epoch_batches as f64 / secs));
        }
        if !train.is_empty() {
            let w = self.train_writer()?;
            for (name, value) in &train {
                w.scalar(&format!("epoch_{name}"), *value, step)?;
            }
            w.flush()?;
        }
        let val: Vec<(&str, f64)> = logs
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("val_").map(|k| (k, v)))
            .collect();
        if !val.is_empty() {
            let w = self.val_writer()?;
            for (name, value) in val {
                w.scalar(&format!("epoch_{name}"), value, step)?;
            }
            w.flush()?;
        }
        Ok(())
    }

    fn on_test_begin(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.val_writer()?;
        Ok(())
    }

    fn on_test_end(&mut self, ctx: &mut CallbackContext<'_>, logs: &Logs) -> Result<()> {
        if !ctx.compiled.has_optimizer() {
            return Ok(());
        }
        let step = ctx.compiled.optimizer()?.iterations() as i64;
        let w = self.val_writer()?;
        for (name, value) in logs.iter() {
            w.scalar(&format!("evaluation_{name}_vs_iterations"), value, step)?;
        }
        w.flush()
    }
}

/// Distinguishes the files one process creates within the same second (as TensorFlow does).
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes one TensorBoard event file of scalars (the writer of TensorFlow's
/// `tf.summary.create_file_writer`, for scalars only).
///
/// The file `events.out.tfevents.{unix_time}.{hostname}.{pid}.{n}.v2` is created in `dir` (created
/// if needed) and starts with the file-version event. Values are buffered: call
/// [`SummaryWriter::flush`] to make them visible to TensorBoard; dropping the writer flushes too,
/// ignoring errors, while [`SummaryWriter::close`] reports them.
///
/// ```
/// use ferrokeras::callbacks::tensorboard::SummaryWriter;
/// # fn main() -> ferrokeras::Result<()> {
/// let dir = std::env::temp_dir().join("ferrokeras-doc-summary-writer");
/// let mut w = SummaryWriter::new(&dir)?;
/// for step in 0..3 {
///     w.scalar("my_metric", 1.0 / (step as f64 + 1.0), step)?;
/// }
/// let path = w.path().to_path_buf();
/// w.close()?;
/// assert!(path.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
/// # Ok(()) }
/// ```
pub struct SummaryWriter {
    path: PathBuf,
    file: BufWriter<File>,
    last_flush: Instant,
}

impl SummaryWriter {
    /// Creates the directory and a new event file in it, and writes the file-version event.
    ///
    /// # Errors
    /// The directory or the file cannot be created.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "events.out.tfevents.{secs:010}.{}.{}.{n}.v2",
            hostname(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut w = Self {
            path,
            file: BufWriter::new(file),
            last_flush: Instant::now(),
        };
        let event = encode_event(wall_time(), 0, EventWhat::FileVersion("brain.Event:2"));
        w.write_record(&event)?;
        w.flush()?;
        Ok(w)
    }

    /// Appends one scalar: `tag` at `step` (stored as a 32-bit float, as TensorBoard's
    /// `simple_value`).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<()> {
        let event = encode_event(wall_time(), step, EventWhat::Scalar(tag, value as f32));
        self.write_record(&event)
    }

    /// Writes the buffered events to the file.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn flush(&mut self) -> Result<()> {
        self.last_flush = Instant::now();
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes and closes the file.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn close(mut self) -> Result<()> {
        self.flush()
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn flush_if_older_than(&mut self, secs: f64) -> Result<()> {
        if self.last_flush.elapsed().as_secs_f64() >= secs {
            self.flush()?;
        }
        Ok(())
    }

    fn write_record(&mut self, payload: &[u8]) -> Result<()> {
        let len = (payload.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(payload.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(payload);
        rec.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
        self.file
            .write_all(&rec)
            .map_err(|e| Error::io(&self.path, e))
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The host name, reduced to characters that are safe in a file name.
fn hostname() -> String {
    #[cfg(unix)]
    let raw = {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at most that many.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        }
    };
    #[cfg(not(unix))]
    let raw = std::env::var("COMPUTERNAME").unwrap_or_default();
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TFRecord's masked CRC32C: `rotate_right(crc, 15) + 0xa282ead8`.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    CRC32C
        .checksum(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

enum EventWhat<'a> {
    FileVersion(&'a str),
    Scalar(&'a str, f32),
}

/// Encodes an `Event`: `wall_time` (1, double), `step` (2, int64), then `file_version`
/// (3, string) or `summary` (5) holding one `Summary.Value { tag: 1, simple_value: 2 }`.
fn encode_event(wall_time: f64, step: i64, what: EventWhat<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(1 << 3 | 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        out.push(2 << 3);
        put_varint(&mut out, step as u64);
    }
    match what {
        EventWhat::FileVersion(v) => put_bytes(&mut out, 3, v.as_bytes()),
        EventWhat::Scalar(tag, value) => {
            let mut val = Vec::with_capacity(tag.len() + 8);
            put_bytes(&mut val, 1, tag.as_bytes());
            val.push(2 << 3 | 5);
            val.extend_from_slice(&value.to_le_bytes());
            let mut summary = Vec::with_capacity(val.len() + 4);
            put_bytes(&mut summary, 1, &val);
            put_bytes(&mut out, 5, &summary);
        }
    }
    out
}

/// A length-delimited field (wire type 2).
fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn varint_encoding() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }
}
