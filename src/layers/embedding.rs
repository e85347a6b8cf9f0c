//! `Embedding`: integer ids to dense vectors.

use candle_core::{DType, Device, Tensor};

use super::{Layer, Regularizer, unique_name};
use crate::initializers::Initializer;
use crate::mixed_precision::DTypePolicy;
use crate::tape::Variable;
use crate::{Error, Result};

/// Keras's `layers.Embedding`: maps each integer id in `[0, input_dim)` to a row of a trainable
/// `(input_dim, output_dim)` matrix, `embeddings`; an input of shape `(batch, ...)` gives
/// `(batch, ..., output_dim)`. Ids may come as any dtype (float ids are truncated, as Keras casts
/// them to int32). The gradient reaches only the rows that were looked up.
///
/// An id outside `[0, input_dim)` is an error on the CPU (the ids are checked there); on another
/// device, where checking would wait for it, it is clamped into range (as Keras on JAX does).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Embedding, Layer};
/// let mut emb = Embedding::new(10, 4);
/// let ids = Tensor::new(&[[1u32, 2, 3], [4, 5, 9]], &Device::Cpu).unwrap();
/// let y = emb.call(&ids, false).unwrap();
/// assert_eq!(y.dims(), &[2, 3, 4]);
/// let table = emb.variables()[0].value();
/// assert_eq!(y.get(1).unwrap().get(2).unwrap().to_vec1::<f32>().unwrap(),
///            table.get(9).unwrap().to_vec1::<f32>().unwrap());
/// let bad = Tensor::new(&[[10u32]], &Device::Cpu).unwrap();
/// assert!(emb.call(&bad, false).unwrap_err().to_string().contains("[0, 10)"));
/// ```
pub struct Embedding {
    name: String,
    input_dim: usize,
    output_dim: usize,
    initializer: Initializer,
    regularizer: Option<Regularizer>,
    policy: DTypePolicy,
    embeddings: Option<Variable>,
    device: Device,
    mask_zero: bool,
}

impl Embedding {
    /// `input_dim` ids (the vocabulary size), vectors of `output_dim`; Keras's default
    /// initializer, uniform on `[-0.05, 0.05)`.
    pub fn new(input_dim: usize, output_dim: usize) -> Self {
        Self {
            name: unique_name("embedding"),
            input_dim,
            output_dim,
            initializer: Initializer::RandomUniform {
                minval: -0.05,
                maxval: 0.05,
                seed: None,
            },
            regularizer: None,
            policy: crate::mixed_precision::global_policy(),
            embeddings: None,
            device: crate::runtime::default_device(),
            mask_zero: false,
        }
    }
    /// Treat id 0 as padding (Keras's `mask_zero`): the output carries a mask, 0 where the id
    /// is 0, that the layers after it use (a recurrent layer skips those steps; see
    /// [`Layer::call_masked`]). Id 0 then stands for no token, so a vocabulary of `n` tokens
    /// takes `input_dim = n + 1`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Embedding, Layer};
    /// let emb = Embedding::new(10, 4).mask_zero(true);
    /// let ids = Tensor::new(&[[3u32, 7, 0, 0]], &Device::Cpu).unwrap();
    /// let mask = emb.compute_mask(&ids, None).unwrap().unwrap();
    /// assert_eq!(mask.to_vec2::<f32>().unwrap(), vec![vec![1.0, 1.0, 0.0, 0.0]]);
    /// ```
    pub fn mask_zero(mut self, yes: bool) -> Self {
        self.mask_zero = yes;
        self
    }
    /// How the table starts (Keras's `embeddings_initializer`).
    pub fn embeddings_initializer(mut self, init: Initializer) -> Self {
        self.initializer = init;
        self
    }
    /// A penalty on the table (Keras's `embeddings_regularizer`).
    pub fn embeddings_regularizer(mut self, r: Regularizer) -> Self {
        self.regularizer = Some(r);
        self
    }
    /// Sets the dtype policy by name (`"float32"`, `"mixed_bfloat16"`, ...): the table is kept
    /// in the variable dtype, the output is in the compute dtype.
    ///
    /// # Errors
    /// An unknown policy name.
    pub fn dtype(mut self, name: &str) -> Result<Self> {
        self.policy = DTypePolicy::new(name)?;
        Ok(self)
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
    /// The ids of `x` as u32, flattened, checked (CPU) or clamped (elsewhere) into range.
    fn ids(&self, x: &Tensor) -> Result<Tensor> {
        let flat = x.flatten_all()?;
        if flat.device().is_cpu() {
            let ids = self.cpu_ids(x)?;
            return Ok(Tensor::from_vec(ids, flat.elem_count(), flat.device())?);
        }
        clamped_ids(&flat, self.input_dim)
    }

    /// The ids of a CPU input, checked to be in `[0, input_dim)`.
    fn cpu_ids(&self, x: &Tensor) -> Result<Vec<u32>> {
        let ids: Vec<i64> = x
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .map(|v| *v as i64)
            .collect();
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= self.input_dim) {
            return Err(Error::value(format!(
                "layer \"{}\": ids must be in [0, {}) (`input_dim`); received id {bad} in an input of shape {:?}. Raise `input_dim` to the vocabulary size, or map the ids into range",
                self.name,
                self.input_dim,
                x.dims()
            )));
        }
        Ok(ids.iter().map(|&i| i as u32).collect())
    }
}

/// `ids` (flat, any dtype) truncated toward zero, as a cast to int32 is, clamped into
/// `[0, input_dim)`, as u32, without leaving the device.
fn clamped_ids(ids: &Tensor, input_dim: usize) -> Result<Tensor> {
    let top = input_dim.saturating_sub(1) as f64;
    let f = match ids.dtype() {
        DType::F32 | DType::F64 => ids.clone(),
        _ => ids.to_dtype(DType::F32)?,
    };
    let truncated = (f.abs()?.floor()? * f.sign()?)?;
    Ok(truncated.clamp(0f64, top)?.to_dtype(DType::U32)?)
}

impl Layer for Embedding {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Embedding"
    }
    fn build(&mut self, _input_shape: &[usize]) -> Result<()> {
        if self.embeddings.is_some() {
            return Ok(());
        }
        if self.input_dim == 0 || self.output_dim == 0 {
            return Err(Error::value(format!(
                "layer \"{}\": `input_dim` and `output_dim` must be >= 1. Received: input_dim={}, output_dim={}",
                self.name, self.input_dim, self.output_dim
            )));
        }
        let table = self
            .initializer
            .init(&[self.input_dim, self.output_dim], &self.device)?
            .to_dtype(self.policy.variable_dtype())?;
        self.embeddings = Some(Variable::new(
            format!("{}/embeddings", self.name),
            &table,
            true,
        )?);
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        self.build(&x.dims()[x.rank().min(1)..])?;
        let Some(table) = &self.embeddings else {
            return Err(Error::state("Embedding not built"));
        };
        // Our CPU kernel where it takes the table: the rows in the output's shape, one op.
        if x.device().is_cpu()
            && crate::kernels::takes(table.as_tensor())
            && let Some(rows) =
                crate::kernels::gather::gather(table.as_tensor(), self.cpu_ids(x)?, x.dims())?
        {
            return self.policy.cast(&rows);
        }
        let ids = self.ids(x)?;
        let rows = table.as_tensor().index_select(&ids, 0)?;
        let mut shape = x.dims().to_vec();
        shape.push(self.output_dim);
        self.policy.cast(&rows.reshape(shape)?)
    }
    fn compute_mask(&self, x: &Tensor, _mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        if !self.mask_zero {
            return Ok(None);
        }
        Ok(Some(x.ne(0f64)?.to_dtype(DType::F32)?))
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let mut shape = input_shape.to_vec();
        shape.push(self.output_dim);
        Ok(shape)
    }
    fn variables(&self) -> Vec<Variable> {
        self.embeddings.iter().cloned().collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        match (&self.regularizer, &self.embeddings) {
            (Some(r), Some(v)) => Ok(vec![r.penalty(v.as_tensor())?]),
            _ => Ok(Vec::new()),
        }
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": self.initializer.to_json(),
            "embeddings_regularizer": super::config::regularizer_json(self.regularizer),
            "mask_zero": self.mask_zero,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off the CPU ids are clamped on the device: truncated toward zero, then into range.
    #[test]
    fn ids_off_the_cpu_are_truncated_and_clamped() {
        let d = &Device::Cpu;
        let ids = Tensor::new(&[-3.7f32, -0.5, 0.9, 2.0, 4.99, 5.0, 1e9], d).unwrap();
        let got = clamped_ids(&ids, 5).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(got, [0, 0, 0, 2, 4, 4, 4]);
        let ints = Tensor::new(&[-2i64, 3, 7], d).unwrap();
        assert_eq!(
            clamped_ids(&ints, 5).unwrap().to_vec1::<u32>().unwrap(),
            [0, 3, 4]
        );
    }
}
