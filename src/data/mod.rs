//! Data: what a step receives, and how in-memory arrays become batches.
//!
//! Separation of concerns: [`Data`] is the value a step sees (a tensor, a tuple, or named tensors),
//! exactly one element of the batched stream, unchanged. [`ArrayAdapter`] turns in-memory arrays
//! `(x, y, sample_weight)` into such elements: it validates lengths, splits off validation data,
//! shuffles indices per epoch and turns `class_weight` into sample weights. The fit loop in
//! `trainer` only iterates; it never looks inside `Data`.

mod adapter;
mod convert;
mod dataset;

pub(crate) use adapter::class_weight_dataset;
pub use adapter::{ArrayAdapter, ClassWeight};
pub use convert::{NdElement, from_ndarray, read_npy, to_f32_tensor};
pub use dataset::{Cardinality, Dataset};

use candle_core::Tensor;

use crate::{Error, Result};

/// One element of the input stream: what `train_step`, `test_step` and `predict_step` receive.
///
/// For `fit((x, y))` on arrays it is `Tuple([x_batch, y_batch])`, with `sample_weight` (or
/// `class_weight`) a third entry; for a bare dataset of images it is `Tensor(batch)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::Data;
/// let x = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let y = Tensor::zeros((4, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let data = Data::from((x, y));
/// let (x, y, sw) = data.unpack().unwrap();
/// assert_eq!(x.tensor().unwrap().dims(), &[4, 3]);
/// assert!(y.is_some() && sw.is_none());
/// ```
#[derive(Clone, Debug)]
pub enum Data {
    /// A single tensor.
    Tensor(Tensor),
    /// A tuple (Keras tuple or list), e.g. `(x, y)`, or several model inputs.
    Tuple(Vec<Data>),
    /// Named tensors (Keras dict of inputs or outputs), in insertion order.
    Dict(Vec<(String, Data)>),
}

impl Data {
    /// `keras.utils.unpack_x_y_sample_weight`: `x` → `(x, None, None)`; `(x,)` → `(x, None, None)`;
    /// `(x, y)` → `(x, y, None)`; `(x, y, sw)` → `(x, y, sw)`.
    ///
    /// # Errors
    /// A tuple of any other length, or a `sample_weight` that is not a single tensor.
    pub fn unpack(&self) -> Result<(&Data, Option<&Data>, Option<&Tensor>)> {
        match self {
            Data::Tuple(items) => match items.as_slice() {
                [x] => Ok((x, None, None)),
                [x, y] => Ok((x, Some(y), None)),
                [x, y, sw] => Ok((x, Some(y), Some(sw.tensor().map_err(|_| {
                    Error::value("the third element of the data tuple (sample_weight) must be a single tensor")
                })?))),
                other => Err(Error::value(format!(
                    "Data is expected to be in format `x`, `(x,)`, `(x, y)`, or `(x, y, sample_weight)`, found a tuple of {} elements: {}",
                    other.len(),
                    self.describe()
                ))),
            },
            other => Ok((other, None, None)),
        }
    }

    /// Like [`Data::unpack`] but requires `y`, as a supervised step does.
    ///
    /// # Errors
    /// No `y` in the data, or a malformed tuple.
    pub fn unpack_xy(&self) -> Result<(&Data, &Data, Option<&Tensor>)> {
        let (x, y, sw) = self.unpack()?;
        let y = y.ok_or_else(|| {
            Error::value(format!(
                "this step needs targets: expected data `(x, y)` or `(x, y, sample_weight)`, received {}. Pass `y` to fit/evaluate, or make the dataset yield (x, y) pairs.",
                self.describe()
            ))
        })?;
        Ok((x, y, sw))
    }

    /// `keras.utils.pack_x_y_sample_weight`: bare `x` when there is no `y`.
    pub fn pack(x: Data, y: Option<Data>, sample_weight: Option<Tensor>) -> Data {
        match (y, sample_weight) {
            (None, None) => match x {
                Data::Tuple(_) => Data::Tuple(vec![x]),
                x => x,
            },
            (Some(y), None) => Data::Tuple(vec![x, y]),
            (y, Some(sw)) => {
                Data::Tuple(vec![x, y.unwrap_or(Data::Tuple(vec![])), Data::Tensor(sw)])
            }
        }
    }

    /// The single tensor this holds.
    ///
    /// # Errors
    /// The data is a tuple or a dict; the message shows its structure.
    pub fn tensor(&self) -> Result<&Tensor> {
        match self {
            Data::Tensor(t) => Ok(t),
            Data::Tuple(items) if items.len() == 1 => items[0].tensor(),
            other => Err(Error::value(format!(
                "expected a single tensor, received {}",
                other.describe()
            ))),
        }
    }

    /// The single tensor, consuming the structure.
    ///
    /// # Errors
    /// The data is not a single tensor.
    pub fn into_tensor(self) -> Result<Tensor> {
        match self {
            Data::Tensor(t) => Ok(t),
            other => other.tensor().cloned(),
        }
    }

    /// Every tensor, in order (depth first).
    pub fn flatten(&self) -> Vec<&Tensor> {
        let mut out = Vec::new();
        self.flatten_into(&mut out);
        out
    }

    fn flatten_into<'a>(&'a self, out: &mut Vec<&'a Tensor>) {
        match self {
            Data::Tensor(t) => out.push(t),
            Data::Tuple(items) => items.iter().for_each(|d| d.flatten_into(out)),
            Data::Dict(items) => items.iter().for_each(|(_, d)| d.flatten_into(out)),
        }
    }

    /// Applies `f` to every tensor, keeping the structure.
    ///
    /// # Errors
    /// Whatever `f` returns.
    pub fn map(&self, f: &mut impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Data> {
        Ok(match self {
            Data::Tensor(t) => Data::Tensor(f(t)?),
            Data::Tuple(items) => {
                Data::Tuple(items.iter().map(|d| d.map(f)).collect::<Result<_>>()?)
            }
            Data::Dict(items) => Data::Dict(
                items
                    .iter()
                    .map(|(k, d)| Ok((k.clone(), d.map(f)?)))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// The same structure with every tensor on `device` (no copy for tensors already there).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::Data;
    /// let d = Data::from(Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    /// assert!(d.to_device(&Device::Cpu).unwrap().tensor().unwrap().device().is_cpu());
    /// ```
    ///
    /// # Errors
    /// A failed copy (for example, the device is out of memory).
    pub fn to_device(&self, device: &candle_core::Device) -> Result<Data> {
        if self
            .flatten()
            .iter()
            .all(|t| t.device().same_device(device))
        {
            return Ok(self.clone());
        }
        self.map(&mut |t| Ok(t.to_device(device)?))
    }

    /// The batch size: the first dimension of the first tensor (0 for an empty structure).
    pub fn batch_size(&self) -> usize {
        self.flatten()
            .first()
            .and_then(|t| t.dims().first().copied())
            .unwrap_or(0)
    }

    /// A short description of the structure and shapes, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Data::Tensor(t) => format!("Tensor(shape={:?}, dtype={:?})", t.dims(), t.dtype()),
            Data::Tuple(items) => format!(
                "({})",
                items
                    .iter()
                    .map(Data::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Data::Dict(items) => format!(
                "{{{}}}",
                items
                    .iter()
                    .map(|(k, d)| format!("{k:?}: {}", d.describe()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Concatenates a list of same-structured elements along the batch axis (what `predict` returns).
    ///
    /// # Errors
    /// Elements of different structures, or tensors that cannot be concatenated.
    pub fn concat(parts: &[Data]) -> Result<Data> {
        let first = parts
            .first()
            .ok_or_else(|| Error::value("cannot concatenate an empty list of batches"))?;
        match first {
            Data::Tensor(_) => {
                let ts: Vec<&Tensor> = parts.iter().map(|p| p.tensor()).collect::<Result<_>>()?;
                Ok(Data::Tensor(Tensor::cat(&ts, 0)?))
            }
            Data::Tuple(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in 0..items.len() {
                    let column: Vec<Data> = parts
                        .iter()
                        .map(|p| match p {
                            Data::Tuple(v) if v.len() == items.len() => Ok(v[i].clone()),
                            other => Err(Error::value(format!(
                                "batches differ in structure: {} vs {}",
                                first.describe(),
                                other.describe()
                            ))),
                        })
                        .collect::<Result<_>>()?;
                    out.push(Data::concat(&column)?);
                }
                Ok(Data::Tuple(out))
            }
            Data::Dict(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, (k, _)) in items.iter().enumerate() {
                    let column: Vec<Data> = parts
                        .iter()
                        .map(|p| match p {
                            // By key, in whatever order each part holds them.
                            Data::Dict(v) if v.len() == items.len() => v
                                .get(i)
                                .filter(|(name, _)| name == k)
                                .or_else(|| v.iter().find(|(name, _)| name == k))
                                .map(|(_, d)| d.clone())
                                .ok_or_else(|| {
                                    Error::value(format!(
                                        "batches differ in structure: {} has no key {k:?} ({})",
                                        p.describe(),
                                        first.describe()
                                    ))
                                }),
                            other => Err(Error::value(format!(
                                "batches differ in structure: {} vs {}",
                                first.describe(),
                                other.describe()
                            ))),
                        })
                        .collect::<Result<_>>()?;
                    out.push((k.clone(), Data::concat(&column)?));
                }
                Ok(Data::Dict(out))
            }
        }
    }
}

impl From<Tensor> for Data {
    fn from(t: Tensor) -> Self {
        Data::Tensor(t)
    }
}

impl From<&Tensor> for Data {
    fn from(t: &Tensor) -> Self {
        Data::Tensor(t.clone())
    }
}

impl From<Vec<Tensor>> for Data {
    fn from(ts: Vec<Tensor>) -> Self {
        Data::Tuple(ts.into_iter().map(Data::Tensor).collect())
    }
}

impl<A: Into<Data>, B: Into<Data>> From<(A, B)> for Data {
    fn from((a, b): (A, B)) -> Self {
        Data::Tuple(vec![a.into(), b.into()])
    }
}

impl<A: Into<Data>, B: Into<Data>, C: Into<Data>> From<(A, B, C)> for Data {
    fn from((a, b, c): (A, B, C)) -> Self {
        Data::Tuple(vec![a.into(), b.into(), c.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn t(shape: &[usize]) -> Tensor {
        Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn unpack_follows_keras() {
        let d = Data::from(t(&[2, 3]));
        let (x, y, sw) = d.unpack().unwrap();
        assert_eq!(x.tensor().unwrap().dims(), &[2, 3]);
        assert!(y.is_none() && sw.is_none());
        let d = Data::from((t(&[2, 3]), t(&[2, 1]), t(&[2])));
        let (_, y, sw) = d.unpack().unwrap();
        assert_eq!(y.unwrap().tensor().unwrap().dims(), &[2, 1]);
        assert_eq!(sw.unwrap().dims(), &[2]);
        let four = Data::Tuple(vec![
            t(&[1]).into(),
            t(&[1]).into(),
            t(&[1]).into(),
            t(&[1]).into(),
        ]);
        let err = four.unpack().unwrap_err().to_string();
        assert!(
            err.contains("(x, y, sample_weight)") && err.contains("4 elements"),
            "{err}"
        );
    }

    #[test]
    fn pack_returns_bare_x_without_y() {
        assert!(matches!(
            Data::pack(t(&[1]).into(), None, None),
            Data::Tensor(_)
        ));
        assert!(
            matches!(Data::pack(t(&[1]).into(), Some(t(&[1]).into()), None), Data::Tuple(v) if v.len() == 2)
        );
    }
}
