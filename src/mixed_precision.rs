//! Mixed precision as Keras names it: a dtype policy says in which dtype layers compute and in
//! which they keep their variables (`keras.mixed_precision`).
//!
//! - `"float32"` (default): everything in float32.
//! - `"mixed_bfloat16"`: layers with weights (Dense, Conv2D, Conv2DTranspose) compute in bfloat16
//!   on bfloat16 copies of float32 variables; gradients reach the float32 variables in float32.
//! - `"mixed_float16"`: the same in float16; `compile` then wraps the optimizer in a
//!   [`LossScaleOptimizer`](crate::optimizers::LossScaleOptimizer) (dynamic loss scaling), which
//!   the default `train_step` uses and a custom one can use too
//!   ([`Optimizer::scale_loss`](crate::optimizers::Optimizer::scale_loss)).
//! - `"bfloat16"`, `"float16"`: compute in that dtype, variables in float32 here as well.
//!
//! Losses and metrics compute in float32 whatever the model outputs, as in Keras; as there, give
//! the last layer a float32 policy (e.g. `ActivationLayer::new("softmax")?.dtype("float32")?`)
//! to keep its output in float32.
//!
//! A layer takes the global policy when it is created (Keras's `dtype=None`), or its own.
//!
//! ```
//! use ferrokeras::mixed_precision::{self, DTypePolicy};
//! mixed_precision::set_global_policy("mixed_bfloat16")?;
//! let layer = ferrokeras::layers::Dense::new(4);
//! assert_eq!(layer.dtype_policy().name(), "mixed_bfloat16");
//! mixed_precision::set_global_policy("float32")?;
//! assert_eq!(DTypePolicy::new("mixed_float16")?.compute_dtype(), candle_core::DType::F16);
//! assert!(mixed_precision::set_global_policy("mixed_float8").is_err());
//! # Ok::<(), ferrokeras::Error>(())
//! ```

use std::sync::RwLock;

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Where a layer computes and keeps its variables (Keras's `DTypePolicy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DTypePolicy {
    name: &'static str,
    compute: DType,
}

impl DTypePolicy {
    /// The policy named `name`: `float32`, `mixed_bfloat16`, `mixed_float16`, `bfloat16` or
    /// `float16`.
    ///
    /// # Errors
    /// Any other name.
    pub fn new(name: &str) -> Result<Self> {
        let (name, compute) = match name {
            "float32" => ("float32", DType::F32),
            "mixed_bfloat16" => ("mixed_bfloat16", DType::BF16),
            "mixed_float16" => ("mixed_float16", DType::F16),
            "bfloat16" => ("bfloat16", DType::BF16),
            "float16" => ("float16", DType::F16),
            other => {
                return Err(Error::value(format!(
                    "unknown dtype policy \"{other}\": expected \"float32\", \"mixed_bfloat16\", \"mixed_float16\", \"bfloat16\" or \"float16\""
                )));
            }
        };
        Ok(Self { name, compute })
    }
    /// The float32 policy.
    pub fn float32() -> Self {
        Self {
            name: "float32",
            compute: DType::F32,
        }
    }
    /// The policy's name.
    pub fn name(&self) -> &str {
        self.name
    }
    /// The dtype layers compute in.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }
    /// The dtype variables are kept in (float32 for every policy here).
    pub fn variable_dtype(&self) -> DType {
        DType::F32
    }
    /// Whether the optimizer needs loss scaling (`mixed_float16`).
    pub fn needs_loss_scaling(&self) -> bool {
        self.name == "mixed_float16"
    }
    /// `t` in the compute dtype (no copy when already there; integer tensors are left alone).
    ///
    /// # Errors
    /// Only if the cast fails on the device.
    pub fn cast(&self, t: &Tensor) -> Result<Tensor> {
        if t.dtype() == self.compute || t.dtype().is_int() {
            Ok(t.clone())
        } else {
            Ok(t.to_dtype(self.compute)?)
        }
    }
}

impl Default for DTypePolicy {
    fn default() -> Self {
        global_policy()
    }
}

static GLOBAL: RwLock<Option<DTypePolicy>> = RwLock::new(None);

/// Sets the policy that layers created from now on take (Keras's
/// `keras.mixed_precision.set_global_policy`).
///
/// # Errors
/// An unknown policy name.
pub fn set_global_policy(name: &str) -> Result<()> {
    let p = DTypePolicy::new(name)?;
    if let Ok(mut g) = GLOBAL.write() {
        *g = Some(p);
    }
    Ok(())
}

/// The global policy (float32 unless [`set_global_policy`] said otherwise).
pub fn global_policy() -> DTypePolicy {
    GLOBAL
        .read()
        .ok()
        .and_then(|g| g.clone())
        .unwrap_or_else(DTypePolicy::float32)
}
