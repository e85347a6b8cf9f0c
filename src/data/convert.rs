//! Conversions from what users hold (ndarray arrays, `.npy` files written by numpy) to tensors.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ndarray::{ArrayBase, Dimension};

use crate::{Error, Result};

/// An ndarray element type that converts to a tensor dtype: floats become float32 (Keras's
/// `floatx`), integers keep an integer dtype (labels).
pub trait NdElement: Copy + 'static {
    /// Builds a tensor from a contiguous vector of elements.
    #[doc(hidden)]
    fn to_tensor(v: Vec<Self>, shape: &[usize], device: &Device) -> Result<Tensor>;
}

impl NdElement for f32 {
    fn to_tensor(v: Vec<Self>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}
impl NdElement for f64 {
    fn to_tensor(v: Vec<Self>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}
impl NdElement for u8 {
    fn to_tensor(v: Vec<Self>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}
impl NdElement for u32 {
    fn to_tensor(v: Vec<Self>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}
impl NdElement for i64 {
    fn to_tensor(v: Vec<Self>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}
impl NdElement for i32 {
    fn to_tensor(v: Vec<Self>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let v: Vec<i64> = v.into_iter().map(i64::from).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }
}

/// A tensor on the CPU from an ndarray array (any layout; float64 becomes float32).
///
/// ```
/// let a = ndarray::Array2::<f64>::ones((4, 3));
/// let t = ferrokeras::data::from_ndarray(&a).unwrap();
/// assert_eq!(t.dims(), &[4, 3]);
/// assert_eq!(t.dtype(), candle_core::DType::F32);
/// ```
///
/// # Errors
/// Only if the tensor cannot be allocated.
pub fn from_ndarray<A, S, D>(array: &ArrayBase<S, D>) -> Result<Tensor>
where
    A: NdElement,
    S: ndarray::Data<Elem = A>,
    D: Dimension,
{
    let shape = array.shape().to_vec();
    let v: Vec<A> = array.iter().copied().collect();
    A::to_tensor(v, &shape, &Device::Cpu)
}

/// Reads a `.npy` file written by numpy; float64 becomes float32.
///
/// # Errors
/// A missing or malformed file, with the path in the message.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such .npy file"),
        ));
    }
    let t = Tensor::read_npy(path).map_err(|e| {
        Error::value(format!(
            "could not read `{}` as a numpy .npy file: {e}",
            path.display()
        ))
    })?;
    to_f32_tensor(&t)
}

/// Floats become float32 (Keras computes in `floatx`); integers are kept as they are.
///
/// # Errors
/// Only if the conversion fails on the device.
pub fn to_f32_tensor(t: &Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::F64 | DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
        _ => t.clone(),
    })
}
