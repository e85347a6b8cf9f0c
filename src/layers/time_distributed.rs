//! `TimeDistributed`: one layer applied to every step of a sequence.

use candle_core::Tensor;
use serde_json::{Value, json};

use super::{KerasVars, Layer, unique_name};
use crate::tape::Variable;
use crate::{Error, Result};

/// Keras's `layers.TimeDistributed`: applies a layer to each step of inputs
/// `(batch, timesteps, ...)`, with the same weights at every step, and stacks the results:
/// `(batch, timesteps, ...)`. As in Keras, the layer is called once per step (a
/// `BatchNormalization` inside computes its statistics step by step). A mask passes through.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{Conv2D, Dense, Layer, TimeDistributed};
/// let mut td = TimeDistributed::new(Dense::new(4));
/// let x = Tensor::ones((2, 5, 3), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(td.call(&x, false).unwrap().dims(), &[2, 5, 4]);
/// assert_eq!(td.count_params(), 3 * 4 + 4);
/// // A convolution over every frame of a clip.
/// let mut frames = TimeDistributed::new(Conv2D::new(2, (3, 3)));
/// let clip = Tensor::ones((1, 4, 8, 8, 1), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(frames.call(&clip, false).unwrap().dims(), &[1, 4, 6, 6, 2]);
/// ```
pub struct TimeDistributed {
    name: String,
    layer: Box<dyn Layer>,
}

impl TimeDistributed {
    /// Wraps `layer`.
    pub fn new(layer: impl Layer + 'static) -> Self {
        Self::from_box(Box::new(layer))
    }
    /// Wraps a boxed layer.
    pub fn from_box(layer: Box<dyn Layer>) -> Self {
        Self {
            name: unique_name("time_distributed"),
            layer,
        }
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    /// The wrapped layer.
    pub fn layer(&self) -> &dyn Layer {
        self.layer.as_ref()
    }
    fn shape_error(&self, dims: &[usize]) -> Error {
        Error::value(format!(
            "`TimeDistributed` layer \"{}\" expects inputs of at least rank 3, (batch, timesteps, ...); received {dims:?}",
            self.name
        ))
    }
}

impl Layer for TimeDistributed {
    super::passes_mask!();
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "TimeDistributed"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        match input_shape {
            [_, rest @ ..] if !rest.is_empty() => self.layer.build(rest),
            _ => {
                let mut dims = vec![0];
                dims.extend_from_slice(input_shape);
                Err(self.shape_error(&dims))
            }
        }
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if x.rank() < 3 {
            return Err(self.shape_error(x.dims()));
        }
        self.layer.build(&x.dims()[2..])?;
        let steps = (0..x.dim(1)?)
            .map(|t| self.layer.call(&x.narrow(1, t, 1)?.squeeze(1)?, training))
            .collect::<Result<Vec<_>>>()?;
        if steps.is_empty() {
            return Err(self.shape_error(x.dims()));
        }
        Ok(Tensor::stack(&steps, 1)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        match input_shape {
            [t, rest @ ..] if !rest.is_empty() => {
                let mut out = vec![*t];
                out.extend(self.layer.compute_output_shape(rest)?);
                Ok(out)
            }
            _ => {
                let mut dims = vec![0];
                dims.extend_from_slice(input_shape);
                Err(self.shape_error(&dims))
            }
        }
    }
    fn variables(&self) -> Vec<Variable> {
        self.layer.variables()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        self.layer.losses()
    }
    fn keras_vars(&self) -> Vec<KerasVars> {
        let mut groups = vec![KerasVars {
            path: "vars".into(),
            name: self.name.clone(),
            variables: Vec::new(),
        }];
        groups.extend(self.layer.keras_vars().into_iter().map(|mut g| {
            g.path = format!("layer/{}", g.path);
            g
        }));
        groups
    }
    fn dtype_policy_name(&self) -> Option<String> {
        self.layer.dtype_policy_name()
    }
    fn config(&self) -> Option<Value> {
        Some(json!({
            "name": self.name,
            "layer": super::serialize(self.layer.as_ref()).ok()?,
        }))
    }
}
