//! The loss configured by `compile`: one loss per model output, optional loss weights.

use candle_core::Tensor;

use super::Loss;
use crate::data::Data;
use crate::{Error, Result};

/// What `compile(loss=...)` configures (Keras's `CompileLoss`).
///
/// One loss is applied to every output; a list gives one loss per output, in output order.
/// The total is `sum(weight_i * loss_i)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::{Data, losses::CompiledLoss};
/// let loss = CompiledLoss::new(vec![ferrokeras::losses::get("mse").unwrap()], None).unwrap();
/// let y = Data::from(Tensor::new(&[[1f32]], &Device::Cpu).unwrap());
/// let p = Data::from(Tensor::new(&[[3f32]], &Device::Cpu).unwrap());
/// assert_eq!(loss.compute(&y, &p, None).unwrap().to_scalar::<f32>().unwrap(), 4.0);
/// ```
pub struct CompiledLoss {
    losses: Vec<Box<dyn Loss>>,
    weights: Option<Vec<f64>>,
}

impl CompiledLoss {
    /// One loss (for every output) or one per output, with optional per-output weights.
    ///
    /// # Errors
    /// No loss, or a number of weights that differs from the number of losses.
    pub fn new(losses: Vec<Box<dyn Loss>>, loss_weights: Option<Vec<f64>>) -> Result<Self> {
        if losses.is_empty() {
            return Err(Error::value("CompiledLoss needs at least one loss"));
        }
        if let Some(w) = &loss_weights
            && w.len() != losses.len()
        {
            return Err(Error::value(format!(
                "`loss_weights` must have one weight per loss: received {} weights for {} losses",
                w.len(),
                losses.len()
            )));
        }
        Ok(Self {
            losses,
            weights: loss_weights,
        })
    }

    /// The losses, in output order.
    pub fn losses(&self) -> &[Box<dyn Loss>] {
        &self.losses
    }

    /// The weighted total over all outputs.
    ///
    /// # Errors
    /// Targets and outputs of different structures, or a loss failing on its output.
    pub fn compute(
        &self,
        y: &Data,
        y_pred: &Data,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.weighted_sum(self.compute_each(y, y_pred, sample_weight)?)
    }

    /// `sum(weight_i * values[i])` over the outputs' losses from [`CompiledLoss::compute_each`].
    ///
    /// # Errors
    /// No value, or a weight list that does not match the values.
    pub fn weighted_sum(&self, values: Vec<Tensor>) -> Result<Tensor> {
        let values = match &self.weights {
            None => values,
            Some(w) => values
                .into_iter()
                .enumerate()
                .map(|(i, v)| Ok((v * w[if w.len() == 1 { 0 } else { i }])?))
                .collect::<Result<Vec<_>>>()?,
        };
        sum(values)
    }

    /// Each output's loss, without its loss weight, in output order (Keras logs these as
    /// `{output}_loss`; [`CompiledLoss::weighted_sum`] of them is [`CompiledLoss::compute`]).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::{Data, losses::{CompiledLoss, get}};
    /// let loss = CompiledLoss::new(vec![get("mse").unwrap(), get("mae").unwrap()], Some(vec![1.0, 0.5])).unwrap();
    /// // mse 4 and mae 2; the total weighs the second by 0.5.
    /// let t = |v: f32| Data::from(Tensor::new(&[[v]], &Device::Cpu).unwrap());
    /// let y = Data::Tuple(vec![t(1.0), t(1.0)]);
    /// let p = Data::Tuple(vec![t(3.0), t(3.0)]);
    /// let each: Vec<f32> = loss.compute_each(&y, &p, None).unwrap().iter()
    ///     .map(|v| v.to_scalar::<f32>().unwrap()).collect();
    /// assert_eq!(each, vec![4.0, 2.0]);
    /// let total = loss.weighted_sum(loss.compute_each(&y, &p, None).unwrap()).unwrap();
    /// assert_eq!(total.to_scalar::<f32>().unwrap(), 5.0);
    /// ```
    ///
    /// # Errors
    /// As [`CompiledLoss::compute`].
    pub fn compute_each(
        &self,
        y: &Data,
        y_pred: &Data,
        sample_weight: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        let ys = y.flatten();
        let ps = y_pred.flatten();
        if ys.len() != ps.len() {
            return Err(Error::value(format!(
                "the model has {} output(s) but {} target(s) were given: y={}, y_pred={}",
                ps.len(),
                ys.len(),
                y.describe(),
                y_pred.describe()
            )));
        }
        if self.losses.len() != 1 && self.losses.len() != ps.len() {
            return Err(Error::value(format!(
                "compile() received {} losses for a model with {} outputs; pass one loss, or one per output",
                self.losses.len(),
                ps.len()
            )));
        }
        let mut values = Vec::with_capacity(ps.len());
        for (i, (t, p)) in ys.iter().zip(ps.iter()).enumerate() {
            let loss = &self.losses[if self.losses.len() == 1 { 0 } else { i }];
            values.push(loss.compute(t, p, sample_weight)?);
        }
        Ok(values)
    }
}

/// The sum of per-output losses.
pub(crate) fn sum(values: Vec<Tensor>) -> Result<Tensor> {
    let mut values = values.into_iter();
    let first = values
        .next()
        .ok_or_else(|| Error::value("the model produced no output to compute a loss on"))?;
    values.try_fold(first, |acc, v| Ok((acc + v)?))
}

impl Loss for CompiledLoss {
    fn name(&self) -> &str {
        "loss"
    }
    fn call(&self, y_true: &Tensor, y_pred: &Tensor) -> Result<Tensor> {
        self.losses[0].call(y_true, y_pred)
    }
    fn compute(
        &self,
        y_true: &Tensor,
        y_pred: &Tensor,
        sample_weight: Option<&Tensor>,
    ) -> Result<Tensor> {
        CompiledLoss::compute(self, &y_true.into(), &y_pred.into(), sample_weight)
    }
}
