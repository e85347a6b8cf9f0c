//! Variables and gradients: the `tf.Variable` / `tf.GradientTape` of ferrokeras.
//!
//! A [`Variable`] is a named, mutable tensor (`"dense/kernel"`). Every operation on a variable is
//! recorded, so [`GradientTape::gradient`] can return the gradient of a scalar loss with respect to any
//! list of variables, as `tape.gradient(loss, vars)` does in Keras. [`stop_gradient`] cuts the record.
//! This module is the only one that touches candle's backpropagation internals.

use std::sync::Arc;

use candle_core::{DType, Shape, Tensor, Var};

use crate::{Error, Result};

/// A named, mutable tensor that gradients are taken with respect to.
///
/// Cloning a `Variable` gives a second handle on the same storage (like a Python reference):
/// `assign` through one is seen through the other.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::Variable;
/// let v = Variable::new("w", &Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(), true).unwrap();
/// v.assign(&Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap()).unwrap();
/// assert_eq!(v.value().to_vec1::<f32>().unwrap(), vec![3.0, 4.0]);
/// ```
#[derive(Clone)]
pub struct Variable {
    var: Var,
    name: Arc<str>,
    trainable: bool,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Variable({}, shape={:?}, trainable={})",
            self.name,
            self.var.dims(),
            self.trainable
        )
    }
}

impl Variable {
    /// A variable holding a copy of `init`.
    ///
    /// # Errors
    /// Fails if the tensor cannot be copied.
    pub fn new(name: impl Into<String>, init: &Tensor, trainable: bool) -> Result<Self> {
        let name: String = name.into();
        Ok(Self {
            var: Var::from_tensor(&init.detach().contiguous()?)?,
            name: name.into(),
            trainable,
        })
    }
    /// The structural name, e.g. `"dense_1/kernel"`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether optimizers update it (`False` for BatchNormalization's moving statistics).
    pub fn trainable(&self) -> bool {
        self.trainable
    }
    /// The tensor to compute with: operations on it are recorded for gradients.
    pub fn as_tensor(&self) -> &Tensor {
        self.var.as_tensor()
    }
    /// The value, detached from gradient recording. It shares storage with the variable: a later
    /// `assign` (an optimizer update) is seen through it. Use [`Variable::snapshot`] for a copy.
    pub fn value(&self) -> Tensor {
        self.var.as_detached_tensor()
    }
    /// A copy of the current value that later updates do not change.
    ///
    /// # Errors
    /// Only if the copy cannot be allocated.
    pub fn snapshot(&self) -> Result<Tensor> {
        Ok(self.var.as_detached_tensor().copy()?)
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.var.shape()
    }
    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.var.dtype()
    }
    /// Number of scalars.
    pub fn elem_count(&self) -> usize {
        self.var.elem_count()
    }
    /// Replaces the value in place. The new value must have the same shape.
    ///
    /// # Errors
    /// A shape mismatch, with both shapes in the message.
    pub fn assign(&self, value: &Tensor) -> Result<()> {
        if value.dims() != self.var.dims() {
            return Err(Error::value(format!(
                "cannot assign to variable `{}`: expected a value of shape {:?}, received shape {:?}",
                self.name,
                self.var.dims(),
                value.dims()
            )));
        }
        let value = if value.dtype() != self.var.dtype() {
            value.to_dtype(self.var.dtype())?
        } else {
            value.clone()
        };
        // Values from the host (loaded weights, numpy arrays) go to the variable's device.
        let value = value.to_device(self.var.device())?;
        self.var.set(&value.detach())?;
        Ok(())
    }
    /// Whether two handles refer to the same variable.
    pub fn same_as(&self, other: &Variable) -> bool {
        self.var.as_tensor().id() == other.var.as_tensor().id()
    }
    /// A stable identity for maps keyed by variable (optimizer slots).
    pub fn id(&self) -> candle_core::TensorId {
        self.var.as_tensor().id()
    }
}

/// Gradients of a scalar with respect to variables, with `tf.GradientTape` semantics.
///
/// Operations are recorded on the tensors themselves, so there is no object to open: compute the
/// loss from variables, then ask for the gradients you want.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::{GradientTape, Variable};
/// let w = Variable::new("w", &Tensor::new(&[3f32], &Device::Cpu).unwrap(), true).unwrap();
/// let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap(); // w^2
/// let grads = GradientTape::gradient(&loss, &[w.clone()]).unwrap();
/// assert_eq!(grads[0].to_vec1::<f32>().unwrap(), vec![6.0]);     // 2w
/// ```
pub struct GradientTape;

impl GradientTape {
    /// `d target / d v` for every `v` in `sources`, in order. A non-scalar `target` is summed
    /// first, as `tf.GradientTape.gradient` does (so a per-sample loss vector works). A variable that
    /// `target` does not depend on gets a zero gradient (Keras returns `None`; zeros keep
    /// `apply` simple and give the same update for SGD without momentum).
    ///
    /// # Errors
    /// A failing backward operation.
    pub fn gradient(target: &Tensor, sources: &[Variable]) -> Result<Vec<Tensor>> {
        let target = if target.rank() > 0 {
            target.sum_all()?
        } else {
            target.clone()
        };
        let store = target.backward()?;
        sources
            .iter()
            .map(|v| match store.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect()
    }
}

/// The same values with gradient recording cut (`tf.stop_gradient`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::{GradientTape, Variable, tape::stop_gradient};
/// let w = Variable::new("w", &Tensor::new(&[3f32], &Device::Cpu).unwrap(), true).unwrap();
/// let loss = (stop_gradient(w.as_tensor()) * w.as_tensor()).unwrap().sum_all().unwrap();
/// let g = GradientTape::gradient(&loss, &[w]).unwrap();
/// assert_eq!(g[0].to_vec1::<f32>().unwrap(), vec![3.0]); // only one factor is differentiated
/// ```
pub fn stop_gradient(t: &Tensor) -> Tensor {
    t.detach()
}
