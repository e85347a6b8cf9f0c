//! `BackupAndRestore`: exact resume of an interrupted `fit`.
//!
//! A backup holds everything the rest of the run depends on: weights, the optimizer's state and
//! the model's extra state (a GAN's optimizers), every metric's accumulated state, the global random
//! generator's exact position, where the data stream stands (the epoch's sample order and how many
//! batches were used, or the dataset iteration), the last step's logs and the `History` so far. A run
//! killed at any moment and started again with the same command continues from the last backup and
//! ends with the same weights, optimizer state and History as a run that was never interrupted (bit
//! for bit on the CPU). Keras restores only the epoch; this restores the batch.
//!
//! Backups are written atomically (temporary file, fsync, rename) with a checksum; a corrupt backup
//! is reported, never used. The callbacks' own state (EarlyStopping's patience counter, ...) is not
//! part of a backup.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::batches::Position;
use crate::callbacks::{History, SaveFreq};
use crate::io::TensorFile;
use crate::logs::Logs;
use crate::model::{Model, StepContext};
use crate::{Error, Result};

/// Backs up training state to `backup_dir` and resumes from it (Keras's `BackupAndRestore`,
/// extended to resume mid-epoch). Pass it with [`crate::FitOptions::backup_and_restore`].
///
/// ```
/// use ferrokeras::trainer::BackupAndRestore;
/// use ferrokeras::callbacks::SaveFreq;
/// let b = BackupAndRestore::new(std::env::temp_dir().join("run-backup")).save_freq(SaveFreq::Batches(50));
/// # let _ = b;
/// ```
#[derive(Clone, Debug)]
pub struct BackupAndRestore {
    dir: PathBuf,
    save_freq: SaveFreq,
    delete_checkpoint: bool,
}

/// Where a restored run continues.
pub(crate) struct Resume {
    pub epoch: usize,
    pub step: usize,
    pub global_step: usize,
    pub position: Position,
    pub last_logs: Logs,
}

impl BackupAndRestore {
    /// Backs up into `backup_dir` at the end of every epoch (and restores from it).
    pub fn new(backup_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: backup_dir.into(),
            save_freq: SaveFreq::Epoch,
            delete_checkpoint: true,
        }
    }
    /// Back up every epoch (default) or also every N training batches.
    pub fn save_freq(mut self, f: SaveFreq) -> Self {
        self.save_freq = f;
        self
    }
    /// Whether to delete the backup when training ends normally (default true, as Keras).
    pub fn delete_checkpoint(mut self, d: bool) -> Self {
        self.delete_checkpoint = d;
        self
    }
    /// The backup file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("backup.safetensors")
    }

    pub(crate) fn every_batches(&self) -> Option<usize> {
        match self.save_freq {
            SaveFreq::Batches(n) if n > 0 => Some(n),
            _ => None,
        }
    }

    pub(crate) fn finish(&self) -> Result<()> {
        let p = self.path();
        if self.delete_checkpoint && p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn save(
        &self,
        model: &mut dyn Model,
        compiled: &mut StepContext,
        history: &History,
        epoch: usize,
        step: usize,
        global_step: usize,
        position: &Position,
        last_logs: &Logs,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let mut file: TensorFile = crate::io::checkpoint_file(model, compiled)?;
        file.metadata
            .insert("format".into(), "ferrokeras.backup".into());
        for m in model.metrics(compiled) {
            let s = m.state();
            if !s.is_empty() {
                file.tensors.insert(
                    format!("metrics/{}", m.name()),
                    Tensor::new(s.as_slice(), &dev)?,
                );
            }
        }
        file.tensors.insert(
            "rng".into(),
            Tensor::new(crate::random::state().as_slice(), &dev)?,
        );
        if let Some(order) = &position.order {
            let o: Vec<u32> = order.iter().map(|&i| i as u32).collect();
            file.tensors
                .insert("position/order".into(), Tensor::new(o.as_slice(), &dev)?);
        }
        for (k, v) in &history.history {
            file.tensors
                .insert(format!("history/{k}"), Tensor::new(v.as_slice(), &dev)?);
        }
        for (k, v) in &history.batch_history {
            file.tensors.insert(
                format!("batch_history/{k}"),
                Tensor::new(v.as_slice(), &dev)?,
            );
        }
        let epochs: Vec<i64> = history.epoch.iter().map(|&e| e as i64).collect();
        file.tensors.insert(
            "history_epoch".into(),
            Tensor::new(epochs.as_slice(), &dev)?,
        );
        for (k, v) in last_logs.iter() {
            file.tensors
                .insert(format!("last_logs/{k}"), Tensor::new(&[v], &dev)?);
        }
        let meta = [
            ("epoch", epoch.to_string()),
            ("step", step.to_string()),
            ("global_step", global_step.to_string()),
            ("pass", position.pass.to_string()),
            ("consumed", position.consumed.to_string()),
            ("fresh", position.fresh.to_string()),
        ];
        for (k, v) in meta {
            file.metadata.insert(k.into(), v);
        }
        crate::io::write_tensors(&self.path(), &file)
    }

    /// Restores the backup if there is one; `None` when starting afresh.
    pub(crate) fn restore(
        &self,
        model: &mut dyn Model,
        compiled: &mut StepContext,
        history: &mut History,
    ) -> Result<Option<Resume>> {
        let path = self.path();
        if !path.exists() {
            return Ok(None);
        }
        let file = crate::io::read_tensors(&path)?;
        if file.metadata.get("format").map(String::as_str) != Some("ferrokeras.backup") {
            return Err(Error::value(format!(
                "`{}` is not a training backup (format {:?}); remove it or point BackupAndRestore at another directory",
                path.display(),
                file.metadata.get("format")
            )));
        }
        let meta = |k: &str| -> Result<String> {
            file.metadata.get(k).cloned().ok_or_else(|| {
                Error::value(format!(
                    "backup `{}` misses its `{k}` entry",
                    path.display()
                ))
            })
        };
        let num = |k: &str| -> Result<u64> {
            meta(k)?.parse().map_err(|_| {
                Error::value(format!(
                    "backup `{}` has an invalid `{k}` entry",
                    path.display()
                ))
            })
        };
        crate::io::restore_checkpoint_file(model, compiled, &file, &path)?;
        for m in model.metrics(compiled) {
            if let Some(t) = file.tensors.get(&format!("metrics/{}", m.name())) {
                m.set_state(&t.to_vec1::<f64>()?)?;
            }
        }
        let rng = file.tensors.get("rng").ok_or_else(|| {
            Error::value(format!(
                "backup `{}` misses the random generator state",
                path.display()
            ))
        })?;
        crate::random::set_state(&rng.to_vec1::<u8>()?)?;
        let vec_f64 = |prefix: &str| -> Result<BTreeMap<String, Vec<f64>>> {
            file.tensors
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(prefix).map(|n| (n.to_string(), t)))
                .map(|(k, t)| Ok((k, t.to_dtype(DType::F64)?.to_vec1::<f64>()?)))
                .collect()
        };
        history.history = vec_f64("history/")?;
        history.batch_history = vec_f64("batch_history/")?;
        history.epoch = match file.tensors.get("history_epoch") {
            Some(t) => t
                .to_vec1::<i64>()?
                .into_iter()
                .map(|e| e as usize)
                .collect(),
            None => Vec::new(),
        };
        let last_logs: Logs = vec_f64("last_logs/")?
            .into_iter()
            .filter_map(|(k, v)| v.first().map(|x| (k, *x)))
            .collect();
        let order = match file.tensors.get("position/order") {
            Some(t) => Some(
                t.to_vec1::<u32>()?
                    .into_iter()
                    .map(|i| i as usize)
                    .collect(),
            ),
            None => None,
        };
        Ok(Some(Resume {
            epoch: num("epoch")? as usize,
            step: num("step")? as usize,
            global_step: num("global_step")? as usize,
            position: Position {
                order,
                pass: num("pass")?,
                consumed: num("consumed")? as usize,
                fresh: meta("fresh")? == "true",
            },
            last_logs,
        }))
    }
}
