//! `Normalization`: Keras's preprocessing layer that standardizes features with a mean and a
//! variance learned from data (`adapt`) or given.

use candle_core::{DType, Device, Tensor};

use super::{Layer, unique_name};
use crate::tape::Variable;
use crate::{Error, Result};

/// Keras's `backend.epsilon()`: the smallest standard deviation divided by.
const EPSILON: f64 = 1e-7;

/// Keras's `layers.Normalization`: `(x - mean) / max(sqrt(variance), 1e-7)` (or, with
/// `invert`, `mean + x * max(sqrt(variance), 1e-7)`), with one mean and variance per position
/// of the kept `axis` (default the last; [`Normalization::axis`] with an empty list for one mean
/// and variance for everything).
///
/// The statistics come from [`Normalization::adapt`] (the whole data at once) or
/// [`Normalization::adapt_batches`] (batch by batch, combined as Keras combines them), or are
/// given ([`Normalization::mean_variance`]). Adapted statistics are the layer's non-trainable
/// weights `mean`, `variance` and `count`, saved with the model as Keras saves them.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, Normalization};
/// let x = Tensor::new(&[[1f32, 10.0], [3.0, 30.0]], &Device::Cpu).unwrap();
/// let mut norm = Normalization::new();
/// norm.adapt(&x).unwrap();
/// let y = norm.call(&x, false).unwrap().to_vec2::<f32>().unwrap();
/// assert_eq!(y, vec![vec![-1.0, -1.0], vec![1.0, 1.0]]);
/// ```
pub struct Normalization {
    name: String,
    /// The kept axes as given (batch axis 0; negative from the end).
    axis: Vec<isize>,
    invert: bool,
    /// Given statistics: values and shape.
    given: Option<(Vec<f64>, Vec<f64>, Vec<usize>)>,
    /// Adapted statistics: `mean`, `variance`, `count`.
    weights: Option<[Variable; 3]>,
    /// The kept axes of a built layer, counted with the batch axis, and the input's rank.
    keep: Option<(Vec<usize>, usize)>,
    device: Device,
}

impl Default for Normalization {
    fn default() -> Self {
        Self::new()
    }
}

impl Normalization {
    /// Standardizes each feature of the last axis.
    pub fn new() -> Self {
        Self {
            name: unique_name("normalization"),
            axis: vec![-1],
            invert: false,
            given: None,
            weights: None,
            keep: None,
            device: crate::runtime::default_device(),
        }
    }
    /// The axes that keep a mean and variance per position (Keras's `axis`; the batch axis is
    /// 0). An empty list: one mean and variance for all values (Keras's `axis=None`).
    pub fn axis(mut self, axes: &[isize]) -> Self {
        self.axis = axes.to_vec();
        self
    }
    /// Undoes the normalization instead: `mean + x * std` (Keras's `invert`).
    pub fn invert(mut self, invert: bool) -> Self {
        self.invert = invert;
        self
    }
    /// Given statistics instead of adapted ones: `mean` and `variance` of one shape (a scalar
    /// for all, or the sizes of the kept axes, aligned from the right), as Keras's `mean` and
    /// `variance` arguments.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, Normalization};
    /// let mut n = Normalization::new().mean_variance(&[2.0, 0.0], &[4.0, 1.0], &[2]).unwrap();
    /// let y = n.call(&Tensor::new(&[[4f32, 3.0]], &Device::Cpu).unwrap(), false).unwrap();
    /// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![1.0, 3.0]]);
    /// ```
    ///
    /// # Errors
    /// Lengths that do not match `shape`.
    pub fn mean_variance(
        mut self,
        mean: &[f64],
        variance: &[f64],
        shape: &[usize],
    ) -> Result<Self> {
        let n: usize = shape.iter().product();
        if mean.len() != n || variance.len() != n {
            return Err(Error::value(format!(
                "When setting values directly, `mean` and `variance` must have the same shape. Received: {} mean values and {} variance values for shape {shape:?}",
                mean.len(),
                variance.len()
            )));
        }
        self.given = Some((mean.to_vec(), variance.to_vec(), shape.to_vec()));
        Ok(self)
    }
    /// The device the statistics live on.
    pub fn device(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }

    /// The kept axes (with the batch axis) for inputs of `rank` (batch included).
    fn keep_axes(&self, rank: usize) -> Result<Vec<usize>> {
        let mut keep = Vec::new();
        for &a in &self.axis {
            let r = rank as isize;
            if a < -r || a >= r {
                return Err(Error::value(format!(
                    "All `axis` values must be in the range [-ndim, ndim). Received inputs with ndim={rank}, while axis={:?}",
                    self.axis
                )));
            }
            let a = if a < 0 { (a + r) as usize } else { a as usize };
            if a == 0 {
                return Err(Error::value(format!(
                    "layer \"{}\" (Normalization): `axis` {:?} keeps the batch axis, whose size is not known; keep feature axes only",
                    self.name, self.axis
                )));
            }
            if !keep.contains(&a) {
                keep.push(a);
            }
        }
        keep.sort_unstable();
        Ok(keep)
    }

    /// The statistics' shape, the sizes of the kept axes.
    fn stat_shape(keep: &[usize], dims: &[usize]) -> Vec<usize> {
        keep.iter().map(|&a| dims[a]).collect()
    }

    /// Keras's `adapt` on data held at once: the mean and (population) variance over every
    /// axis but the kept ones.
    ///
    /// # Errors
    /// Data whose kept axes differ from those the layer was built for.
    pub fn adapt(&mut self, data: &Tensor) -> Result<()> {
        self.adapt_batches(std::iter::once(data.clone()))
    }

    /// Keras's `adapt` on batches (a dataset): each batch's mean and variance, combined into
    /// the whole data's as Keras combines them.
    ///
    /// # Errors
    /// No batch, or batches whose kept axes differ.
    pub fn adapt_batches(&mut self, batches: impl IntoIterator<Item = Tensor>) -> Result<()> {
        let mut total: Option<(Tensor, Tensor, usize)> = None;
        for batch in batches {
            let batch = crate::ops::to_float(&batch)?
                .to_dtype(DType::F64)?
                .to_device(&self.device)?;
            let dims = batch.dims().to_vec();
            self.build(&dims[1..])?;
            let (keep, _) = self.keep.clone().ok_or_else(|| Error::state("not built"))?;
            let stat = Self::stat_shape(&keep, &dims);
            if let Some([mean, ..]) = &self.weights
                && mean.shape().dims() != stat.as_slice()
            {
                return Err(Error::value(format!(
                    "The layer was built with statistics of shape {:?}, but adapt() is being called with data with an incompatible shape, data.shape={dims:?}",
                    mean.shape().dims()
                )));
            }
            // Kept axes first, the reduced ones flattened last.
            let reduce: Vec<usize> = (0..dims.len()).filter(|a| !keep.contains(a)).collect();
            let order: Vec<usize> = keep.iter().chain(&reduce).copied().collect();
            let count: usize = reduce.iter().map(|&a| dims[a]).product();
            if count == 0 {
                continue;
            }
            let flat = batch
                .permute(order)?
                .contiguous()?
                .reshape((stat.iter().product::<usize>(), count))?;
            let mean = flat.mean_keepdim(1)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            total = Some(match total {
                None => (mean, var, count),
                Some((tm, tv, tc)) => {
                    let n = tc + count;
                    let bw = count as f64 / n as f64;
                    let ew = 1.0 - bw;
                    let new_mean = ((&tm * ew)? + (&mean * bw)?)?;
                    // Keras's lack-of-fit sum of squares.
                    let old = ((tv + (tm - &new_mean)?.sqr()?)? * ew)?;
                    let new = ((var + (mean - &new_mean)?.sqr()?)? * bw)?;
                    let var = (old + new)?;
                    (new_mean, var, n)
                }
            });
        }
        let Some((mean, var, _)) = total else {
            return Err(Error::value(
                "adapt() received no data (no batches, or empty ones). Pass at least one sample",
            ));
        };
        let [m, v, _] = self.weights.as_ref().ok_or_else(|| {
            Error::value("adapt() needs a layer without given `mean` and `variance`")
        })?;
        m.assign(&mean.reshape(m.shape().dims())?.to_dtype(DType::F32)?)?;
        v.assign(&var.reshape(v.shape().dims())?.to_dtype(DType::F32)?)?;
        Ok(())
    }

    /// The mean and variance, shaped to broadcast over inputs of `dims`.
    fn stats(&self, dims: &[usize]) -> Result<(Tensor, Tensor)> {
        let (keep, _) = self.keep.clone().ok_or_else(|| Error::state("not built"))?;
        let bshape: Vec<usize> = (0..dims.len())
            .map(|a| if keep.contains(&a) { dims[a] } else { 1 })
            .collect();
        let dev = &self.device;
        let (mean, var) = match (&self.weights, &self.given) {
            (Some([m, v, _]), _) => (
                m.as_tensor().reshape(bshape.clone())?,
                v.as_tensor().reshape(bshape)?,
            ),
            (None, Some((m, v, shape))) => {
                let t =
                    |x: &[f64]| -> Result<Tensor> {
                        Ok(Tensor::from_vec(x.to_vec(), shape.as_slice(), dev)?
                            .to_dtype(DType::F32)?)
                    };
                // Aligned to the kept axes from the right.
                let mut expanded = vec![1usize; dims.len()];
                for (i, s) in shape.iter().rev().enumerate() {
                    let Some(&a) = keep.iter().rev().nth(i) else {
                        return Err(Error::value(format!(
                            "The rank of `mean` must be less than or equal to the number of axes ({}). Received: mean shape {shape:?}",
                            keep.len()
                        )));
                    };
                    expanded[a] = *s;
                }
                (t(m)?.reshape(expanded.clone())?, t(v)?.reshape(expanded)?)
            }
            (None, None) => return Err(Error::state("Normalization not built")),
        };
        Ok((
            mean.broadcast_as(dims)?.contiguous()?,
            var.broadcast_as(dims)?.contiguous()?,
        ))
    }
}

impl Layer for Normalization {
    super::passes_mask!();
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Normalization"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.keep.is_some() {
            return Ok(());
        }
        let rank = input_shape.len() + 1;
        let keep = self.keep_axes(rank)?;
        let mut dims = vec![1];
        dims.extend_from_slice(input_shape);
        if self.given.is_none() {
            let stat = Self::stat_shape(&keep, &dims);
            let dev = &self.device;
            let var =
                |name: &str, t: Tensor| Variable::new(format!("{}/{name}", self.name), &t, false);
            self.weights = Some([
                var("mean", Tensor::zeros(stat.as_slice(), DType::F32, dev)?)?,
                var("variance", Tensor::ones(stat.as_slice(), DType::F32, dev)?)?,
                var("count", Tensor::zeros((), DType::F32, dev)?)?,
            ]);
        }
        self.keep = Some((keep, rank));
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.rank() < 2 {
            return Err(Error::value(format!(
                "layer \"{}\" (Normalization) expects inputs of shape (batch, features...); received {:?}",
                self.name,
                x.dims()
            )));
        }
        self.build(&x.dims()[1..])?;
        if let Some((keep, rank)) = &self.keep {
            let built_for = self
                .weights
                .as_ref()
                .map(|[m, ..]| m.shape().dims().to_vec());
            let now: Vec<usize> = keep
                .iter()
                .map(|&a| x.dims()[a.min(x.rank() - 1)])
                .collect();
            if *rank != x.rank() || built_for.as_ref().is_some_and(|b| *b != now) {
                return Err(Error::value(format!(
                    "layer \"{}\" (Normalization) was built for inputs of rank {rank}{}; received input of shape {:?}",
                    self.name,
                    built_for
                        .map(|b| format!(" with statistics of shape {b:?}"))
                        .unwrap_or_default(),
                    x.dims()
                )));
            }
        }
        let x = crate::ops::to_float(x)?;
        let dt = x.dtype();
        let (mean, var) = self.stats(x.dims())?;
        let (mean, var) = (mean.to_dtype(dt)?, var.to_dtype(dt)?);
        let std = var.sqrt()?.maximum(EPSILON)?;
        Ok(if self.invert {
            (mean + (x * std)?)?
        } else {
            ((x - mean)? / std)?
        })
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn variables(&self) -> Vec<Variable> {
        self.weights.iter().flatten().cloned().collect()
    }
    fn config(&self) -> Option<serde_json::Value> {
        let (mean, variance) = match &self.given {
            None => (serde_json::Value::Null, serde_json::Value::Null),
            Some((m, v, shape)) => (nested(m, shape), nested(v, shape)),
        };
        Some(serde_json::json!({
            "name": self.name,
            "axis": self.axis,
            "invert": self.invert,
            "mean": mean,
            "variance": variance,
        }))
    }
}

/// `values` of `shape` as nested JSON lists (a number for a scalar).
fn nested(values: &[f64], shape: &[usize]) -> serde_json::Value {
    match shape.split_first() {
        None => values.first().copied().into(),
        Some((n, rest)) => {
            let step: usize = rest.iter().product();
            serde_json::Value::Array(
                (0..*n)
                    .map(|i| nested(&values[i * step..(i + 1) * step], rest))
                    .collect(),
            )
        }
    }
}
