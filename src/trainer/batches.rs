//! The batches of one epoch, from arrays or from a dataset (Keras's `EpochIterator`).

use crate::data::{ArrayAdapter, Cardinality, Data, Dataset};
use crate::{Error, Result};

type DataIter = Box<dyn Iterator<Item = Result<Data>> + Send>;

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
        Ok(Batches::Dataset { ds, iter: None })
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

    /// The next batch; when the current pass is over, `wrap` starts a new pass (a new shuffle),
    /// otherwise `None` is returned.
    pub(crate) fn next_batch(&mut self, wrap: bool) -> Option<Result<Data>> {
        match self {
            Batches::Arrays {
                adapter,
                shuffle,
                order,
                cursor,
                fresh,
            } => {
                if *fresh || (wrap && *cursor >= adapter.steps()) {
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
            Batches::Dataset { ds, iter } => {
                let it = iter.get_or_insert_with(|| Box::new(ds.iter()));
                match it.next() {
                    Some(b) => Some(b),
                    None if wrap => {
                        *iter = Some(Box::new(ds.iter()));
                        iter.as_mut().and_then(|i| i.next())
                    }
                    None => None,
                }
            }
        }
    }

    /// The first batch of a fresh pass, without disturbing the iteration (for building metrics).
    pub(crate) fn peek_first(&self) -> Result<Option<Data>> {
        match self {
            Batches::Arrays { adapter, .. } => Ok(Some(adapter.batch(0, None)?)),
            Batches::Dataset { ds, .. } => ds.iter().next().transpose(),
        }
    }
}
