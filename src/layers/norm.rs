//! `BatchNormalization`.

use candle_core::{DType, Device, Tensor};

use super::{Layer, unique_name};
use crate::tape::Variable;
use crate::{Error, Result};

/// Keras's `layers.BatchNormalization` over the last axis: in training, normalizes with the batch
/// statistics and updates the moving statistics (`moving = moving * momentum + batch * (1 -
/// momentum)`); in inference, uses the moving statistics. The moving statistics are non-trainable
/// variables.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{BatchNormalization, Layer};
/// let mut bn = BatchNormalization::new();
/// let x = Tensor::new(&[[1f32, 2.0], [3.0, 6.0]], &Device::Cpu).unwrap();
/// let y = bn.call(&x, true).unwrap();
/// let col0 = y.to_vec2::<f32>().unwrap().iter().map(|r| r[0]).collect::<Vec<_>>();
/// assert!((col0[0] + col0[1]).abs() < 1e-5); // zero mean per feature
/// assert_eq!(bn.non_trainable_variables().len(), 2);
/// ```
pub struct BatchNormalization {
    name: String,
    momentum: f64,
    epsilon: f64,
    gamma: Option<Variable>,
    beta: Option<Variable>,
    moving_mean: Option<Variable>,
    moving_var: Option<Variable>,
    device: Device,
}

impl Default for BatchNormalization {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchNormalization {
    /// Keras defaults: momentum 0.99, epsilon 1e-3.
    pub fn new() -> Self {
        Self {
            name: unique_name("batch_normalization"),
            momentum: 0.99,
            epsilon: 1e-3,
            gamma: None,
            beta: None,
            moving_mean: None,
            moving_var: None,
            device: crate::runtime::default_device(),
        }
    }
    /// Momentum of the moving statistics.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Variance epsilon.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }
    /// The device variables are created on.
    pub fn device(mut self, d: &Device) -> Self {
        self.device = d.clone();
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for BatchNormalization {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "BatchNormalization"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.gamma.is_some() {
            return Ok(());
        }
        let c = *input_shape.last().ok_or_else(|| {
            Error::value(format!(
                "layer \"{}\" needs inputs with a feature axis",
                self.name
            ))
        })?;
        let ones = Tensor::ones(c, DType::F32, &self.device)?;
        let zeros = Tensor::zeros(c, DType::F32, &self.device)?;
        self.gamma = Some(Variable::new(format!("{}/gamma", self.name), &ones, true)?);
        self.beta = Some(Variable::new(format!("{}/beta", self.name), &zeros, true)?);
        self.moving_mean = Some(Variable::new(
            format!("{}/moving_mean", self.name),
            &zeros,
            false,
        )?);
        self.moving_var = Some(Variable::new(
            format!("{}/moving_variance", self.name),
            &ones,
            false,
        )?);
        Ok(())
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if x.rank() < 2 {
            return Err(Error::value(format!(
                "layer \"{}\" needs a batch axis and a feature axis; received shape {:?}",
                self.name,
                x.dims()
            )));
        }
        self.build(&x.dims()[1..])?;
        let (Some(gamma), Some(beta), Some(mm), Some(mv)) =
            (&self.gamma, &self.beta, &self.moving_mean, &self.moving_var)
        else {
            return Err(Error::state("BatchNormalization not built"));
        };
        let c = x.dims()[x.rank() - 1];
        if c != gamma.elem_count() {
            return Err(Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected axis -1 of input shape to have value {}, but received input with shape {:?}",
                self.name,
                gamma.elem_count(),
                x.dims()
            )));
        }
        if x.elem_count() == 0 {
            // An empty batch, or no features: nothing to normalize, and no statistics to fold into
            // the moving averages (a mean over no rows would write NaN into them).
            return Ok(x.clone());
        }
        let rows = x.elem_count() / c;
        let flat = x.reshape((rows, c))?;
        // A frozen layer normalizes with its moving statistics, and leaves them alone, even in
        // training (Keras's `BatchNormalization` with `trainable=False`).
        let training = training && gamma.trainable();
        let (mean, var) = if training {
            let mean = flat.mean_keepdim(0)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
            let m = self.momentum;
            mm.assign(&((mm.value() * m)? + (mean.detach().squeeze(0)? * (1.0 - m))?)?)?;
            mv.assign(&((mv.value() * m)? + (var.detach().squeeze(0)? * (1.0 - m))?)?)?;
            (mean, var)
        } else {
            (mm.value().unsqueeze(0)?, mv.value().unsqueeze(0)?)
        };
        let inv = (var + self.epsilon)?.sqrt()?.recip()?;
        let y = flat
            .broadcast_sub(&mean)?
            .broadcast_mul(&inv)?
            .broadcast_mul(&gamma.as_tensor().unsqueeze(0)?)?
            .broadcast_add(&beta.as_tensor().unsqueeze(0)?)?;
        Ok(y.reshape(x.dims())?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn variables(&self) -> Vec<Variable> {
        [&self.gamma, &self.beta, &self.moving_mean, &self.moving_var]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "axis": -1,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
        }))
    }
}
