//! The batches of one epoch, from arrays or from a dataset (Keras's `EpochIterator`).

use crate::data::{ArrayAdapter, Cardinality, Data, Dataset};
use crate::{Error, Result};

type DataIter = Box<dyn Iterator<Item = Result<Data>> + Send>;

/// Where a pass over the data stands (saved in backups for exact resume).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Position {
    /// The sample order of the current pass over arrays (`None`: unshuffled).
    pub order: Option<Vec<usize>>,
    /// The dataset iteration of the current pass.
    pub pass: u64,
    /// Batches of the current pass already used.
    pub consumed: usize,
    /// Whether the next batch starts a new pass.
    pub fresh: bool,
}

/// Where batches come from.
pub(crate) enum Batches {
    Arrays {
        adapter: ArrayAdapter,
        shuffle: bool,
        order: Option<Vec<usize>>,
        cursor: usize,
        fresh: bool,
    },
    Dataset {
        ds: Dataset,
        iter: Option<DataIter>,
        /// The dataset iteration the current pass reads, and the next one to start.
        current: u64,
        next: u64,
        /// Batches taken from the current pass.
        taken: usize,
    },
}

impl Batches {
    pub(crate) fn arrays(adapter: ArrayAdapter, shuffle: bool) -> Self {
        Batches::Arrays {
            adapter,
            shuffle,
            order: None,
            cursor: 0,
            fresh: true,
        }
    }

    pub(crate) fn dataset(ds: Dataset) -> Result<Self> {
        if ds.cardinality() == Cardinality::Finite(0) {
            return Err(Error::value(
                "the dataset is empty (cardinality 0): there is nothing to train or evaluate on",
            ));
        }
        // A dataset read before (an earlier `fit` or `evaluate`) goes on with its next iteration:
        // a new shuffle order, as each new `tf.data` iterator has.
        let next = ds.next_iteration();
        Ok(Batches::Dataset {
            ds,
            iter: None,
            current: next,
            next,
            taken: 0,
        })
    }

    /// Batches in one pass over the data, when known.
    pub(crate) fn steps(&self) -> Option<usize> {
        match self {
            Batches::Arrays { adapter, .. } => Some(adapter.steps()),
            Batches::Dataset { ds, .. } => match ds.cardinality() {
                Cardinality::Finite(n) => Some(n),
                _ => None,
            },
        }
    }

    /// Starts a new pass over the data.
    pub(crate) fn restart(&mut self) {
        match self {
            Batches::Arrays { fresh, .. } => *fresh = true,
            Batches::Dataset { iter, .. } => *iter = None,
        }
    }

    /// The next batch of the current pass (a new pass, with a new shuffle, after
    /// [`Batches::restart`]); `None` when the pass is over.
    pub(crate) fn next_batch(&mut self) -> Option<Result<Data>> {
        match self {
            Batches::Arrays {
                adapter,
                shuffle,
                order,
                cursor,
                fresh,
            } => {
                if *fresh {
                    *order = shuffle.then(|| crate::random::permutation(adapter.num_samples()));
                    *cursor = 0;
                    *fresh = false;
                } else if *cursor >= adapter.steps() {
                    return None;
                }
                let b = adapter.batch(*cursor, order.as_deref());
                *cursor += 1;
                Some(b)
            }
            Batches::Dataset {
                ds,
                iter,
                current,
                next,
                taken,
            } => {
                let mut start = |iter: &mut Option<DataIter>, taken: &mut usize| {
                    *current = *next;
                    *next += 1;
                    *taken = 0;
                    ds.mark_read(*current);
                    *iter = Some(Box::new(ds.iter_epoch(*current)));
                };
                if iter.is_none() {
                    start(iter, taken);
                }
                let item = iter.as_mut().and_then(|i| i.next());
                if item.is_some() {
                    *taken += 1;
                }
                item
            }
        }
    }

    /// Where the current pass is: the sample order of arrays (when shuffled), the dataset
    /// iteration, and how many batches of it were consumed.
    pub(crate) fn position(&self) -> Position {
        match self {
            Batches::Arrays {
                order,
                cursor,
                fresh,
                ..
            } => Position {
                order: order.clone(),
                pass: 0,
                consumed: if *fresh { 0 } else { *cursor },
                fresh: *fresh,
            },
            Batches::Dataset {
                current,
                iter,
                taken,
                ..
            } => Position {
                order: None,
                pass: *current,
                consumed: *taken,
                fresh: iter.is_none(),
            },
        }
    }

    /// Continues a pass from a saved [`Position`]: `consumed` batches of the pass were used.
    pub(crate) fn resume(&mut self, pos: &Position, consumed: usize) -> Result<()> {
        match self {
            Batches::Arrays {
                order,
                cursor,
                fresh,
                adapter,
                ..
            } => {
                if let Some(o) = &pos.order
                    && o.len() != adapter.num_samples()
                {
                    return Err(Error::value(format!(
                        "the backup was made with {} training samples, but the data has {}; resume with the same data",
                        o.len(),
                        adapter.num_samples()
                    )));
                }
                *order = pos.order.clone();
                *cursor = consumed;
                *fresh = pos.fresh;
            }
            Batches::Dataset {
                ds,
                iter,
                current,
                next,
                taken,
            } => {
                if pos.fresh {
                    *next = pos.pass + 1;
                    *iter = None;
                    return Ok(());
                }
                *current = pos.pass;
                *next = pos.pass + 1;
                ds.mark_read(pos.pass);
                let mut it: DataIter = Box::new(ds.iter_epoch(pos.pass));
                for _ in 0..consumed {
                    if let Some(Err(e)) = it.next() {
                        return Err(e);
                    }
                }
                *taken = consumed;
                *iter = Some(it);
            }
        }
        Ok(())
    }

    /// The first batch of a fresh pass, without disturbing the iteration (for building metrics).
    pub(crate) fn peek_first(&self) -> Result<Option<Data>> {
        match self {
            Batches::Arrays { adapter, .. } => Ok(Some(adapter.batch(0, None)?)),
            Batches::Dataset { ds, .. } => ds.iter_epoch(u64::MAX).next().transpose(),
        }
    }
}
