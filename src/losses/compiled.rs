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
        let mut total: Option<Tensor> = None;
        for (i, (t, p)) in ys.iter().zip(ps.iter()).enumerate() {
            let loss = &self.losses[if self.losses.len() == 1 { 0 } else { i }];
            let mut value = loss.compute(t, p, sample_weight)?;
            if let Some(w) = &self.weights {
                value = (value * w[if w.len() == 1 { 0 } else { i }])?;
            }
            total = Some(match total {
                Some(acc) => (acc + value)?,
                None => value,
            });
        }
        total.ok_or_else(|| Error::value("the model produced no output to compute a loss on"))
    }
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
