//! `History`: the per-epoch (and per-batch) record that `fit` returns.

use std::collections::BTreeMap;

use super::{Callback, CallbackContext, Params};
use crate::Result;
use crate::logs::Logs;

/// What `fit` returns: every epoch log value (Keras's `history.history`), the epoch indices, the
/// loop parameters, and, beyond Keras, the value of every metric for every training batch alone.
///
/// ```
/// use ferrokeras::callbacks::History;
/// let h = History::new();
/// assert!(h.history.is_empty() && h.epoch.is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct History {
    /// `name -> one value per epoch` (`val_` keys may be shorter with `validation_freq > 1`).
    pub history: BTreeMap<String, Vec<f64>>,
    /// The 0-based index of every recorded epoch.
    pub epoch: Vec<usize>,
    /// The loop parameters.
    pub params: Params,
    /// `name -> one value per training batch`, each the value of that batch alone.
    pub batch_history: BTreeMap<String, Vec<f64>>,
    /// Validation run every N steps (`FitOptions::validation_every_steps`):
    /// `val_ name -> (global step, value)`.
    pub step_validation: BTreeMap<String, Vec<(usize, f64)>>,
    global_step: usize,
    /// Per-batch values not read yet (deferred on a GPU), oldest first: added to
    /// `batch_history` at the end of each epoch, or once this many batches wait.
    pending: Vec<Logs>,
}

/// Batches whose per-batch values may wait before [`History`] reads them.
const MAX_PENDING_BATCHES: usize = 64;

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }
    /// The values of one log key (an empty slice if absent).
    pub fn get(&self, key: &str) -> &[f64] {
        self.history.get(key).map_or(&[], Vec::as_slice)
    }
    /// Adds the per-batch values still waiting to `batch_history`. They are read newest first:
    /// on a GPU the newest batch's read fetches every value queued before it in the same transfer.
    pub(crate) fn settle(&mut self) {
        if let Some(newest) = self.pending.last() {
            newest.iter().for_each(drop);
        }
        for logs in self.pending.drain(..) {
            for (k, v) in logs.iter() {
                self.batch_history.entry(k.to_string()).or_default().push(v);
            }
        }
    }
}

impl Callback for History {
    fn on_train_begin(&mut self, ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.epoch.clear();
        self.params = ctx.params.clone();
        Ok(())
    }
    fn on_train_batch_end(
        &mut self,
        ctx: &mut CallbackContext<'_>,
        _batch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.global_step += 1;
        self.pending.push(ctx.batch_values.clone());
        if self.pending.len() >= MAX_PENDING_BATCHES {
            self.settle();
        }
        // (only the validation values: the training ones are left unread)
        for k in logs.keys().filter(|k| k.starts_with("val_")) {
            if let Some(v) = logs.get(k) {
                self.step_validation
                    .entry(k.to_string())
                    .or_default()
                    .push((self.global_step, v));
            }
        }
        Ok(())
    }
    fn on_train_end(&mut self, _ctx: &mut CallbackContext<'_>, _logs: &Logs) -> Result<()> {
        self.settle();
        Ok(())
    }
    fn on_epoch_end(
        &mut self,
        _ctx: &mut CallbackContext<'_>,
        epoch: usize,
        logs: &Logs,
    ) -> Result<()> {
        self.settle();
        self.epoch.push(epoch);
        for (k, v) in logs.iter() {
            self.history.entry(k.to_string()).or_default().push(v);
        }
        Ok(())
    }
}
