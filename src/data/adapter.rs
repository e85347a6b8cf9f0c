//! In-memory arrays to batches (Keras's `ArrayDataAdapter`).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use super::Data;
use crate::{Error, Result};

/// Weights per class index, as Keras's `class_weight={0: 1.0, 1: 5.0}`.
pub type ClassWeight = BTreeMap<usize, f32>;

/// Batches of `(x, y, sample_weight)` drawn from arrays held in memory.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::data::ArrayAdapter;
/// let x = Tensor::zeros((10, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let y = Tensor::zeros((10, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let a = ArrayAdapter::new(x.into(), Some(y.into()), None, 4).unwrap();
/// assert_eq!(a.steps(), 3);
/// let batches = a.epoch(false).unwrap();
/// assert_eq!(batches[2].batch_size(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct ArrayAdapter {
    x: Data,
    y: Option<Data>,
    sample_weight: Option<Tensor>,
    class_weight: Option<ClassWeight>,
    batch_size: usize,
    num_samples: usize,
}

impl ArrayAdapter {
    /// Validates the arrays (same number of samples everywhere, at least one sample, `batch_size` ≥ 1).
    ///
    /// # Errors
    /// Inconsistent lengths, empty data or a zero batch size, each with the numbers received.
    pub fn new(
        x: Data,
        y: Option<Data>,
        sample_weight: Option<Tensor>,
        batch_size: usize,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::value(
                "expected `batch_size` >= 1. Received: batch_size=0",
            ));
        }
        // Contiguous, for the row gathers of shuffled batches (a column slice of a larger
        // array is a strided view).
        let x = x.map(&mut |t| Ok(super::to_f32_tensor(t)?.contiguous()?))?;
        let xs = x.flatten();
        if xs.is_empty() {
            return Err(Error::value("`x` holds no array; pass at least one tensor"));
        }
        let mut lengths: Vec<(String, usize)> = Vec::new();
        for (i, t) in xs.iter().enumerate() {
            if t.rank() == 0 {
                return Err(Error::value(format!(
                    "every input array needs a batch axis; x[{i}] is a scalar"
                )));
            }
            lengths.push((format!("x[{i}]"), t.dims()[0]));
        }
        if let Some(y) = &y {
            for (i, t) in y.flatten().iter().enumerate() {
                if t.rank() == 0 {
                    return Err(Error::value(format!(
                        "every target array needs a batch axis; y[{i}] is a scalar"
                    )));
                }
                lengths.push((format!("y[{i}]"), t.dims()[0]));
            }
        }
        if let Some(sw) = &sample_weight {
            if sw.rank() == 0 {
                return Err(Error::value(
                    "`sample_weight` needs one weight per sample; received a scalar",
                ));
            }
            lengths.push(("sample_weight".into(), sw.dims()[0]));
        }
        let n = lengths[0].1;
        if lengths.iter().any(|(_, l)| *l != n) {
            let desc: Vec<String> = lengths.iter().map(|(k, l)| format!("{k}: {l}")).collect();
            return Err(Error::value(format!(
                "Data cardinality is ambiguous: make sure all arrays contain the same number of samples. Received sizes: {}",
                desc.join(", ")
            )));
        }
        if n == 0 {
            return Err(Error::value(
                "expected at least one sample, received empty arrays (0 samples)",
            ));
        }
        let y = match y {
            Some(y) => Some(y.map(&mut |t| Ok(super::to_f32_tensor(t)?.contiguous()?))?),
            None => None,
        };
        let sample_weight = match sample_weight {
            Some(sw) => Some(sw.to_dtype(DType::F32)?.contiguous()?),
            None => None,
        };
        Ok(Self {
            x,
            y,
            sample_weight,
            class_weight: None,
            batch_size,
            num_samples: n,
        })
    }

    /// Turns `class_weight` into per-sample weights from `y` (argmax of one-hot targets, or the
    /// integer label), as Keras does.
    ///
    /// # Errors
    /// `sample_weight` given as well, no `y`, or a class index that the targets cannot hold.
    pub fn with_class_weight(mut self, class_weight: ClassWeight) -> Result<Self> {
        if self.sample_weight.is_some() {
            return Err(Error::value(
                "You cannot use `class_weight` and `sample_weight` at the same time; fold the class weights into `sample_weight` instead.",
            ));
        }
        let y = self.y.as_ref().ok_or_else(|| {
            Error::value("`class_weight` needs targets `y` to look up each sample's class")
        })?;
        let y = y.tensor().map_err(|_| {
            Error::value("`class_weight` is only supported for models with a single output")
        })?;
        class_indices(y)?;
        // One-hot targets say how many classes there are: a key past them is a mistake. Labels
        // do not (the data may lack the last classes), so extra keys are ignored there, as Keras
        // ignores them.
        let one_hot = y.rank() >= 2 && y.dims()[y.rank() - 1] > 1;
        let num_classes = y.dims().last().copied().unwrap_or(0);
        if let Some((&bad, _)) = class_weight
            .iter()
            .find(|(k, _)| one_hot && **k >= num_classes)
        {
            return Err(Error::value(format!(
                "`class_weight` has a weight for class {bad}, but the targets only have classes 0..{} ({} classes). Expected keys in 0..{}. Received: {:?}",
                num_classes - 1,
                num_classes,
                num_classes,
                class_weight
            )));
        }
        self.class_weight = Some(class_weight);
        Ok(self)
    }

    /// Number of samples.
    pub fn num_samples(&self) -> usize {
        self.num_samples
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn steps(&self) -> usize {
        self.num_samples.div_ceil(self.batch_size)
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Splits off the last `fraction` of the samples (before any shuffling), as Keras's
    /// `validation_split`: returns `(train, validation)`. Class weights stay with the training
    /// part: as in Keras, they weigh training only (explicit sample weights are split with the
    /// samples).
    ///
    /// # Errors
    /// `fraction` outside `[0, 1)`, or a split that leaves one side empty.
    pub fn split(&self, fraction: f64) -> Result<(ArrayAdapter, ArrayAdapter)> {
        if !(0.0..1.0).contains(&fraction) || fraction.is_nan() {
            return Err(Error::value(format!(
                "`validation_split` must be in the interval [0, 1). Received: validation_split={fraction}"
            )));
        }
        let split_at = ((self.num_samples as f64) * (1.0 - fraction)).floor() as usize;
        if split_at == 0 || split_at == self.num_samples {
            return Err(Error::value(format!(
                "Training data contains {} samples, which is not sufficient to split it into a validation and training set as specified by `validation_split={fraction}`. Either provide more data, or a different value for the `validation_split` argument.",
                self.num_samples
            )));
        }
        let part = |start: usize, len: usize, training: bool| -> Result<ArrayAdapter> {
            let cut = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(0, start, len)?) };
            Ok(ArrayAdapter {
                x: self.x.map(&mut |t| cut(t))?,
                y: match &self.y {
                    Some(y) => Some(y.map(&mut |t| cut(t))?),
                    None => None,
                },
                sample_weight: match &self.sample_weight {
                    Some(sw) => Some(cut(sw)?),
                    None => None,
                },
                class_weight: if training {
                    self.class_weight.clone()
                } else {
                    None
                },
                batch_size: self.batch_size,
                num_samples: len,
            })
        };
        Ok((
            part(0, split_at, true)?,
            part(split_at, self.num_samples - split_at, false)?,
        ))
    }

    /// A copy that batches by `batch_size` (validation may use its own batch size).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The batches of one epoch, in a new random order when `shuffle` (Keras shuffles the whole
    /// index set every epoch).
    ///
    /// # Errors
    /// Only if slicing fails on the device.
    pub fn epoch(&self, shuffle: bool) -> Result<Vec<Data>> {
        let order = if shuffle {
            Some(crate::random::permutation(self.num_samples))
        } else {
            None
        };
        (0..self.steps())
            .map(|i| self.batch(i, order.as_deref()))
            .collect()
    }

    /// Batch `i` of an epoch whose sample order is `order` (identity when `None`).
    ///
    /// # Errors
    /// `i` past the last batch, or a slicing failure.
    pub fn batch(&self, i: usize, order: Option<&[usize]>) -> Result<Data> {
        let start = i.saturating_mul(self.batch_size);
        if start >= self.num_samples {
            return Err(Error::value(format!(
                "batch {i} is past the end of the data ({} batches)",
                self.steps()
            )));
        }
        let len = self.batch_size.min(self.num_samples - start);
        if let Some(o) = order {
            if o.len() != self.num_samples {
                return Err(Error::value(format!(
                    "the sample order must list each of the {} samples once; received {} entries",
                    self.num_samples,
                    o.len()
                )));
            }
            if let Some(bad) = o[start..start + len]
                .iter()
                .find(|&&j| j >= self.num_samples)
            {
                return Err(Error::value(format!(
                    "the sample order must hold indices below {}; received {bad}",
                    self.num_samples
                )));
            }
        }
        let index = match order {
            Some(o) => {
                let idx: Vec<u32> = o[start..start + len].iter().map(|&i| i as u32).collect();
                let dev = self.x.flatten()[0].device().clone();
                Some(Tensor::from_vec(idx, len, &dev)?)
            }
            None => None,
        };
        let rows = order.map(|o| &o[start..start + len]);
        let take = |t: &Tensor| -> Result<Tensor> {
            Ok(match (&index, rows) {
                (Some(_), Some(rows)) if gathers_in_parallel(t) => {
                    t.apply_op1_no_bwd(&GatherRows(rows.to_vec()))?
                }
                (Some(ix), _) => t.index_select(&ix.to_device(t.device())?, 0)?,
                _ => t.narrow(0, start, len)?,
            })
        };
        let x = self.x.map(&mut |t| take(t))?;
        let y = match &self.y {
            Some(y) => Some(y.map(&mut |t| take(t))?),
            None => None,
        };
        let mut sw = match &self.sample_weight {
            Some(sw) => Some(take(sw)?),
            None => None,
        };
        if let (Some(cw), Some(y)) = (&self.class_weight, &y) {
            sw = Some(class_weights_of(cw, y.tensor()?)?);
        }
        Ok(Data::pack(x, y, sw))
    }
}

/// The weight of every sample of the batch of targets `y`: its class's, 1 for a class without
/// one (Keras's `class_weight_to_sample_weights`).
fn class_weights_of(cw: &ClassWeight, y: &Tensor) -> Result<Tensor> {
    let classes = class_indices(y)?;
    let w: Vec<f32> = classes
        .iter()
        .map(|c| cw.get(c).copied().unwrap_or(1.0))
        .collect();
    Ok(Tensor::from_vec(w, classes.len(), y.device())?)
}

/// `class_weight` over a dataset of batches (Keras maps it over a `tf.data.Dataset`): each
/// `(x, y)` element becomes `(x, y, sample_weight)`.
///
/// # Errors
/// When an element is read: an element without targets, with several outputs, or that already
/// has sample weights (Keras's messages).
pub(crate) fn class_weight_dataset(
    ds: super::Dataset,
    class_weight: ClassWeight,
) -> super::Dataset {
    ds.map(move |element| {
        let (x, y, sw) = element.unpack()?;
        if sw.is_some() {
            return Err(Error::value(
                "You cannot `class_weight` and `sample_weight` at the same time: the dataset yields `(x, y, sample_weight)`. Fold the class weights into its sample weights instead.",
            ));
        }
        let y = y.ok_or_else(|| {
            Error::value(format!(
                "`class_weight` needs targets to look up each sample's class: the dataset yields {}; make it yield (x, y) batches",
                element.describe()
            ))
        })?;
        let Data::Tensor(t) = y else {
            return Err(Error::value(
                "`class_weight` is only supported for Models with a single output.",
            ));
        };
        let sw = class_weights_of(&class_weight, t)?;
        Ok(Data::pack(x.clone(), Some(y.clone()), Some(sw)))
    })
}

/// The class index of every sample: argmax of one-hot rows, else the (rounded) label.
fn class_indices(y: &Tensor) -> Result<Vec<usize>> {
    let n = y.dims().first().copied().unwrap_or(0);
    let last = if y.rank() >= 2 {
        y.dims()[y.rank() - 1]
    } else {
        1
    };
    let idx = if y.rank() >= 2 && last > 1 {
        y.argmax(y.rank() - 1)?
            .flatten_all()?
            .to_dtype(DType::F32)?
    } else {
        y.flatten_all()?.to_dtype(DType::F32)?
    };
    let v = idx.to_vec1::<f32>()?;
    if v.len() != n {
        return Err(Error::value(format!(
            "`class_weight` needs one class per sample: targets of shape {:?} give {} values for {n} samples",
            y.dims(),
            v.len()
        )));
    }
    v.into_iter()
        .map(|c| {
            let r = c.round();
            if r < 0.0 || !r.is_finite() {
                Err(Error::value(format!(
                    "class labels must be non-negative integers for `class_weight`; received {c}"
                )))
            } else {
                Ok(r as usize)
            }
        })
        .collect()
}

/// Whether [`GatherRows`] takes `t`: float32 on the CPU, contiguous, rows of at least 64 values.
fn gathers_in_parallel(t: &Tensor) -> bool {
    crate::kernels::takes(t)
        && t.is_contiguous()
        && t.rank() >= 1
        && t.dims()[1..].iter().product::<usize>() >= 64
}

/// Rows of a float32 CPU tensor along axis 0, copied in parallel.
///
/// Why our own: a shuffled batch of a large array is a gather of rows scattered over memory, bound
/// by memory latency; candle's `index_select` copies them one after another on one thread (about
/// 6% of the MNIST MLP's `fit` step). Copying blocks of rows on rayon's threads keeps more of them
/// in flight.
struct GatherRows(Vec<usize>);

impl candle_core::CustomOp1 for GatherRows {
    fn name(&self) -> &'static str {
        "gather_rows"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        const ROWS_PER_TASK: usize = 16;
        let x = crate::kernels::cpu_f32(s, l, "batch rows")?;
        let dims = l.dims();
        let n = dims.first().copied().unwrap_or(0);
        let row = dims[1..].iter().product::<usize>();
        if let Some(&bad) = self.0.iter().find(|&&r| r >= n) {
            candle_core::bail!("batch rows: row {bad} of an array of {n} rows")
        }
        let total = self.0.len() * row;
        // Written once, straight from the rows (no zero fill first).
        let mut out: Vec<f32> = Vec::with_capacity(total);
        if row > 0 {
            out.spare_capacity_mut()[..total]
                .par_chunks_mut(row * ROWS_PER_TASK)
                .zip(self.0.par_chunks(ROWS_PER_TASK))
                .for_each(|(dst, rows)| {
                    for (d, &r) in dst.chunks_exact_mut(row).zip(rows) {
                        d.write_copy_of_slice(&x[r * row..(r + 1) * row]);
                    }
                });
        }
        // SAFETY: the chunks cover the first `total` slots, `self.0.len()` rows of `row` values,
        // and each row of each chunk was written above (every row index was checked in range).
        unsafe { out.set_len(total) };
        let mut shape = dims.to_vec();
        if let Some(first) = shape.first_mut() {
            *first = self.0.len();
        }
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from(shape),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Shuffled batches gathered in parallel hold the same rows as candle's `index_select`, for
    /// inputs of several shapes (rows of 64 values and more take the parallel gather).
    #[test]
    fn shuffled_batches_hold_the_ordered_rows() {
        let dev = Device::Cpu;
        for dims in [vec![50usize, 70], vec![50, 4, 4, 5], vec![50, 3]] {
            let n: usize = dims.iter().product();
            let x = Tensor::arange(0f32, n as f32, &dev)
                .unwrap()
                .reshape(dims.as_slice())
                .unwrap();
            let y = Tensor::arange(0f32, 50.0, &dev).unwrap();
            let a =
                ArrayAdapter::new(Data::from(x.clone()), Some(Data::from(y)), None, 16).unwrap();
            let order: Vec<usize> = (0..50).map(|i| (i * 17 + 3) % 50).collect();
            for b in 0..a.steps() {
                let batch = a.batch(b, Some(&order)).unwrap();
                let (bx, by, _) = batch.unpack_xy().unwrap();
                let rows = &order[b * 16..(b * 16 + 16).min(50)];
                let ix = Tensor::from_vec(
                    rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    rows.len(),
                    &dev,
                )
                .unwrap();
                let want = x.index_select(&ix, 0).unwrap();
                let got = bx.tensor().unwrap();
                assert_eq!(got.dims(), want.dims(), "{dims:?}");
                let diff = (got - &want).unwrap().abs().unwrap().sum_all().unwrap();
                assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{dims:?} batch {b}");
                let labels: Vec<f32> = by.tensor().unwrap().to_vec1().unwrap();
                let expected: Vec<f32> = rows.iter().map(|&r| r as f32).collect();
                assert_eq!(labels, expected);
            }
        }
    }
}
