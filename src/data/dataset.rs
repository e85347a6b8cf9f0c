//! [`Dataset`]: a `tf.data`-style input pipeline (`from_tensor_slices`, `shuffle`, `batch`,
//! `take`, `skip`, `map`, `repeat`, `prefetch`).
//!
//! A dataset is a recipe: every iteration starts it again (a new shuffle order each time, as
//! `tf.data` does with `reshuffle_each_iteration=True`). Elements are [`Data`] values and reach
//! `train_step` unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use candle_core::Tensor;
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::Data;
use crate::{Error, Result};

/// The most slots a buffer reserves before it holds anything (a shuffle or batch buffer grows
/// past it as elements arrive), so that a huge `buffer_size` costs only what it holds.
const PREALLOC: usize = 4096;

/// The number of elements of a dataset, when it can be known without iterating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cardinality {
    /// Exactly this many elements.
    Finite(usize),
    /// Never ends (`repeat()` without a count).
    Infinite,
    /// Not known (after a filter-like operation).
    Unknown,
}

type ElementIter = Box<dyn Iterator<Item = Result<Data>> + Send>;
/// A recipe: the iteration index in, the elements of that iteration out. Passing the index down
/// (rather than counting inside each shuffle) makes any iteration reproducible on its own, which
/// exact resume needs.
type Source = Arc<dyn Fn(u64) -> ElementIter + Send + Sync>;

/// An input pipeline of [`Data`] elements.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::data::{Cardinality, Dataset};
/// let x = Tensor::arange(0f32, 10.0, &Device::Cpu).unwrap().reshape((10, 1)).unwrap();
/// let ds = Dataset::from_tensor_slices(x).unwrap().shuffle(4, Some(1)).batch(4, false).take(2);
/// assert_eq!(ds.cardinality(), Cardinality::Finite(2));
/// let batches: Vec<_> = ds.iter().collect::<ferrokeras::Result<_>>().unwrap();
/// assert_eq!(batches[0].tensor().unwrap().dims(), &[4, 1]);
/// ```
#[derive(Clone)]
pub struct Dataset {
    source: Source,
    cardinality: Cardinality,
    iterations: Arc<AtomicU64>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dataset(cardinality={:?})", self.cardinality)
    }
}

impl Dataset {
    /// A dataset from a recipe that yields elements (for your own sources).
    pub fn from_fn(
        cardinality: Cardinality,
        f: impl Fn() -> Box<dyn Iterator<Item = Result<Data>> + Send> + Send + Sync + 'static,
    ) -> Self {
        Self::indexed(cardinality, move |_| f())
    }

    fn indexed(
        cardinality: Cardinality,
        f: impl Fn(u64) -> ElementIter + Send + Sync + 'static,
    ) -> Self {
        Self {
            source: Arc::new(f),
            cardinality,
            iterations: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A dataset whose every iteration fails at once with `message` (for settings that can only
    /// be refused when the dataset is read, as the builder methods return no `Result`).
    fn failing(message: String) -> Self {
        Self::indexed(Cardinality::Unknown, move |_| {
            Box::new(std::iter::once(Err(Error::value(message.clone()))))
        })
    }

    /// One element per index along the first axis of every tensor (Keras's
    /// `tf.data.Dataset.from_tensor_slices`): `x`, `(x, y)` or `(x, y, sample_weight)`.
    ///
    /// Tensors on a GPU are finished first (the work this thread queued that computes them), so
    /// that another thread (see [`Dataset::prefetch`]) can read their slices.
    ///
    /// # Errors
    /// Tensors with different first dimensions, a scalar, or a failing device.
    pub fn from_tensor_slices(data: impl Into<Data>) -> Result<Self> {
        let data = data.into();
        let tensors = data.flatten();
        let n = tensors
            .first()
            .and_then(|t| t.dims().first().copied())
            .ok_or_else(|| {
                Error::value("from_tensor_slices needs tensors with a first axis to slice")
            })?;
        if let Some(bad) = tensors.iter().find(|t| t.dims().first() != Some(&n)) {
            return Err(Error::value(format!(
                "from_tensor_slices: all tensors must have the same first dimension; received {n} and {:?} in {}",
                bad.dims(),
                data.describe()
            )));
        }
        // The tensors may come from GPU work this thread just queued; the elements may be read
        // on another thread (`prefetch`), whose stream would not wait for it.
        finish_device_work(&data)?;
        let data = Arc::new(data);
        Ok(Self::indexed(Cardinality::Finite(n), move |_| {
            let data = data.clone();
            Box::new((0..n).map(move |i| data.map(&mut |t| Ok(t.narrow(0, i, 1)?.squeeze(0)?))))
        }))
    }

    /// The number of elements, when known.
    pub fn cardinality(&self) -> Cardinality {
        self.cardinality
    }

    /// A new iteration over the elements (the next in this dataset's sequence of iterations:
    /// a new shuffle order each time).
    pub fn iter(&self) -> impl Iterator<Item = Result<Data>> + Send + use<> {
        let k = self.iterations.fetch_add(1, Ordering::Relaxed);
        (self.source)(k)
    }

    /// The iteration that the next [`Dataset::iter`] reads.
    pub(crate) fn next_iteration(&self) -> u64 {
        self.iterations.load(Ordering::Relaxed)
    }

    /// Records that iteration `k` was read: later iterations (by [`Dataset::iter`], or by the
    /// next `fit` on this dataset) come after it, as a `tf.data` dataset reshuffles for every
    /// new iterator.
    pub(crate) fn mark_read(&self, k: u64) {
        self.iterations
            .fetch_max(k.saturating_add(1), Ordering::Relaxed);
    }

    /// Iteration number `k` of this dataset (0-based), the same every time it is asked for.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::data::Dataset;
    /// let ds = Dataset::from_tensor_slices(Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap())
    ///     .unwrap()
    ///     .shuffle(8, Some(1));
    /// let first: Vec<_> = ds.iter_epoch(3).map(|d| d.unwrap().tensor().unwrap().to_scalar::<f32>().unwrap()).collect();
    /// let again: Vec<_> = ds.iter_epoch(3).map(|d| d.unwrap().tensor().unwrap().to_scalar::<f32>().unwrap()).collect();
    /// assert_eq!(first, again);
    /// ```
    pub fn iter_epoch(&self, k: u64) -> impl Iterator<Item = Result<Data>> + Send + use<> {
        (self.source)(k)
    }

    /// Shuffles with a buffer of `buffer_size` elements, as `tf.data`: each element is drawn at
    /// random from the buffer, which is refilled from the input. Every iteration uses a new order;
    /// with a `seed` the sequence of orders repeats across runs (without one it follows the global
    /// seed of [`crate::random::set_random_seed`]).
    ///
    /// A `buffer_size` of 0 is refused when the dataset is read (as `tf.data` refuses it).
    pub fn shuffle(self, buffer_size: usize, seed: Option<u64>) -> Self {
        if buffer_size == 0 {
            return Self::failing(
                "Dataset::shuffle: `buffer_size` must be >= 1. Received: buffer_size=0; use 1 to keep the order, or the number of elements for a full shuffle".into(),
            );
        }
        let base = seed.unwrap_or_else(|| crate::random::fork().r#gen());
        let src = self.source.clone();
        Self::indexed(self.cardinality, move |k| {
            let mut rng =
                StdRng::seed_from_u64(base.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let mut input = src(k);
            let mut buffer: Vec<Result<Data>> = Vec::with_capacity(buffer_size.min(PREALLOC));
            Box::new(std::iter::from_fn(move || {
                while buffer.len() < buffer_size {
                    match input.next() {
                        Some(e) => buffer.push(e),
                        None => break,
                    }
                }
                if buffer.is_empty() {
                    return None;
                }
                let i = rng.gen_range(0..buffer.len());
                Some(buffer.swap_remove(i))
            }))
        })
    }

    /// Stacks consecutive elements into batches of `batch_size` (the last one smaller unless
    /// `drop_remainder`).
    ///
    /// A `batch_size` of 0 is refused when the dataset is read (as `tf.data` refuses it).
    pub fn batch(self, batch_size: usize, drop_remainder: bool) -> Self {
        if batch_size == 0 {
            return Self::failing(
                "Dataset::batch: `batch_size` must be >= 1. Received: batch_size=0".into(),
            );
        }
        let card = match self.cardinality {
            Cardinality::Finite(n) if drop_remainder => Cardinality::Finite(n / batch_size),
            Cardinality::Finite(n) => Cardinality::Finite(n.div_ceil(batch_size)),
            c => c,
        };
        let src = self.source.clone();
        Self::indexed(card, move |k| {
            let mut input = src(k);
            Box::new(std::iter::from_fn(move || {
                let mut items = Vec::with_capacity(batch_size.min(PREALLOC));
                for _ in 0..batch_size {
                    match input.next() {
                        Some(Ok(e)) => items.push(e),
                        Some(Err(e)) => return Some(Err(e)),
                        None => break,
                    }
                }
                if items.is_empty() || (drop_remainder && items.len() < batch_size) {
                    return None;
                }
                Some(stack(&items))
            }))
        })
    }

    /// The first `n` elements.
    pub fn take(self, n: usize) -> Self {
        let card = match self.cardinality {
            Cardinality::Finite(m) => Cardinality::Finite(m.min(n)),
            Cardinality::Infinite => Cardinality::Finite(n),
            // Fewer than `n` may come (as `tf.data`: still unknown).
            Cardinality::Unknown => Cardinality::Unknown,
        };
        let src = self.source.clone();
        Self::indexed(card, move |k| Box::new(src(k).take(n)))
    }

    /// Everything after the first `n` elements.
    pub fn skip(self, n: usize) -> Self {
        let card = match self.cardinality {
            Cardinality::Finite(m) => Cardinality::Finite(m.saturating_sub(n)),
            c => c,
        };
        let src = self.source.clone();
        Self::indexed(card, move |k| Box::new(src(k).skip(n)))
    }

    /// Applies `f` to every element.
    pub fn map(self, f: impl Fn(Data) -> Result<Data> + Send + Sync + 'static) -> Self {
        let f = Arc::new(f);
        let src = self.source.clone();
        Self::indexed(self.cardinality, move |k| {
            let f = f.clone();
            Box::new(src(k).map(move |e| e.and_then(|d| f(d))))
        })
    }

    /// Repeats the dataset `count` times, or forever with `None`. A round that yields nothing
    /// ends the repetition (as in `tf.data`: an empty dataset repeated forever is empty).
    pub fn repeat(self, count: Option<usize>) -> Self {
        let card = match (self.cardinality, count) {
            (Cardinality::Finite(0), _) | (_, Some(0)) => Cardinality::Finite(0),
            // More elements than a usize counts: as good as endless.
            (Cardinality::Finite(n), Some(c)) => n
                .checked_mul(c)
                .map_or(Cardinality::Infinite, Cardinality::Finite),
            (_, None) => Cardinality::Infinite,
            (c, Some(_)) => c,
        };
        let src = self.source.clone();
        Self::indexed(card, move |k| {
            let src = src.clone();
            // Round r of iteration k is the inner dataset's iteration k * rounds + r.
            let (mut rounds, span): (Box<dyn Iterator<Item = u64> + Send>, u64) = match count {
                Some(c) => (Box::new(0..c as u64), c as u64),
                None => (Box::new(0..), 1 << 32),
            };
            let mut current: Option<ElementIter> = None;
            Box::new(std::iter::from_fn(move || {
                if let Some(item) = current.as_mut().and_then(|it| it.next()) {
                    return Some(item);
                }
                let r = rounds.next()?;
                let mut it = src(k.wrapping_mul(span).wrapping_add(r));
                // An empty round ends the repetition (else an endless one would spin forever).
                let item = it.next()?;
                current = Some(it);
                Some(item)
            }))
        })
    }

    /// Prepares up to `buffer_size` elements ahead on another thread while the consumer works.
    ///
    /// Elements on a GPU are safe to use on the consumer's thread: candle queues a thread's GPU
    /// work on that thread's own stream, and streams do not wait for each other, so the
    /// preparing thread finishes its work on each element's devices before handing it over. The
    /// source's tensors must be finished too: [`Dataset::from_tensor_slices`] finishes its own,
    /// and each new iteration finishes the work that the consumer's thread queued on the default
    /// device ([`crate::runtime::default_device`]).
    ///
    /// `buffer_size` is taken between 1 and 65 536 (a larger buffer is one of 65 536).
    pub fn prefetch(self, buffer_size: usize) -> Self {
        let buffer_size = buffer_size.clamp(1, 1 << 16);
        let src = self.source.clone();
        Self::indexed(self.cardinality, move |k| {
            let (tx, rx) = mpsc::sync_channel::<Result<Data>>(buffer_size);
            let src = src.clone();
            let ready = crate::runtime::default_device()
                .synchronize()
                .map_err(Error::from);
            std::thread::spawn(move || {
                if let Err(e) = ready {
                    let _ = tx.send(Err(e));
                    return;
                }
                for e in src(k) {
                    let e = e.and_then(|d| finish_device_work(&d).map(|()| d));
                    if tx.send(e).is_err() {
                        break; // the consumer stopped early
                    }
                }
            });
            Box::new(rx.into_iter())
        })
    }
}

/// Waits until the work that this thread queued on the devices of `d`'s tensors (its stream on
/// each GPU) is done; nothing to wait for on the CPU.
fn finish_device_work(d: &Data) -> Result<()> {
    let mut seen: Vec<&candle_core::Device> = Vec::new();
    for t in d.flatten() {
        let dev = t.device();
        if !dev.is_cpu() && !seen.iter().any(|s| s.same_device(dev)) {
            dev.synchronize()?;
            seen.push(dev);
        }
    }
    Ok(())
}

/// Stacks same-structured elements along a new first axis.
fn stack(items: &[Data]) -> Result<Data> {
    let unsqueezed: Vec<Data> = items
        .iter()
        .map(|d| d.map(&mut |t: &Tensor| Ok(t.unsqueeze(0)?)))
        .collect::<Result<_>>()?;
    Data::concat(&unsqueezed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn range(n: usize) -> Tensor {
        Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap()
    }

    fn values(ds: &Dataset) -> Vec<f32> {
        ds.iter()
            .flat_map(|d| {
                d.unwrap()
                    .tensor()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn shuffle_is_a_permutation_that_changes_each_iteration() {
        let ds = Dataset::from_tensor_slices(range(100))
            .unwrap()
            .shuffle(10, Some(3));
        let a = values(&ds);
        let b = values(&ds);
        let mut sorted = a.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(
            sorted,
            values(&Dataset::from_tensor_slices(range(100)).unwrap())
        );
        assert_ne!(a, b);
        let again = Dataset::from_tensor_slices(range(100))
            .unwrap()
            .shuffle(10, Some(3));
        assert_eq!(values(&again), a);
    }

    #[test]
    fn batch_take_skip_repeat_cardinalities() {
        let ds = Dataset::from_tensor_slices(range(10)).unwrap();
        assert_eq!(
            ds.clone().batch(4, false).cardinality(),
            Cardinality::Finite(3)
        );
        assert_eq!(
            ds.clone().batch(4, true).cardinality(),
            Cardinality::Finite(2)
        );
        assert_eq!(values(&ds.clone().skip(7)), vec![7.0, 8.0, 9.0]);
        assert_eq!(ds.clone().repeat(Some(2)).iter().count(), 20);
        assert_eq!(ds.clone().repeat(None).cardinality(), Cardinality::Infinite);
        assert_eq!(ds.clone().repeat(None).take(25).iter().count(), 25);
        let last = ds.batch(4, false).iter().last().unwrap().unwrap();
        assert_eq!(last.tensor().unwrap().dims(), &[2]);
    }

    #[test]
    fn map_and_prefetch_keep_order() {
        let ds = Dataset::from_tensor_slices(range(6))
            .unwrap()
            .map(|d| d.map(&mut |t| Ok((t * 2.0)?)))
            .prefetch(2);
        assert_eq!(values(&ds), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    }

    #[test]
    fn tuples_are_sliced_together() {
        let x = range(4).reshape((4, 1)).unwrap();
        let y = range(4);
        let ds = Dataset::from_tensor_slices((x, y)).unwrap().batch(2, false);
        let first = ds.iter().next().unwrap().unwrap();
        let (x, y, _) = first.unpack().unwrap();
        assert_eq!(x.tensor().unwrap().dims(), &[2, 1]);
        assert_eq!(
            y.unwrap().tensor().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 1.0]
        );
        let bad = Dataset::from_tensor_slices((range(3), range(4)))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("same first dimension"), "{bad}");
    }
}
