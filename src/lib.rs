//! # ferrokeras: the Keras training experience in Rust
//!
//! `compile` + `fit` with every convenience (progress bar, callbacks, metrics, `History`,
//! validation, sample and class weights), and the freedom to replace only the training step, the
//! evaluation step or the prediction step with your own code, down to gradients and
//! `optimizer.apply`, without losing any of them. This is Keras's *progressive disclosure of
//! complexity*, on the [candle](https://docs.rs/candle-core) tensor library.
//!
//! ## 1. `compile` and `fit`
//! ```
//! use ferrokeras::prelude::*;
//! # fn main() -> ferrokeras::Result<()> {
//! ferrokeras::random::set_random_seed(0);
//! let inputs = Input::new(&[32]);
//! let outputs = Dense::new(1).apply(&inputs)?;
//! let mut model = Functional::new(&[inputs], &[outputs])?
//!     .compile(Compile::new().optimizer("adam").loss("mse").metrics(["mae"]))?;
//! let x = ferrokeras::random::uniform(&[256, 32], 0.0, 1.0, &candle_core::Device::Cpu)?;
//! let y = ferrokeras::random::uniform(&[256, 1], 0.0, 1.0, &candle_core::Device::Cpu)?;
//! let history = model.fit((x, y), FitOptions::new().epochs(3).verbose(0))?;
//! assert!(history.get("loss")[2] < history.get("loss")[0]);
//! # Ok(()) }
//! ```
//!
//! ## 2. A custom `train_step`
//! Implement [`Model`] for your own type and override [`Model::train_step`]: `fit` keeps calling
//! callbacks, drawing the progress bar and recording `History`. See the trait's documentation and
//! `examples/01_custom_train_step.rs` .. `examples/04_custom_test_step.rs`, which follow the guide
//! "Customizing what happens in `fit()`" section by section.
//!
//! ## 3. Lower: your own loop
//! [`GradientTape::gradient`] and [`optimizers::Optimizer::apply`] are all a loop needs;
//! `examples/custom_training_loop.rs` drives the callbacks by hand.

#![warn(missing_docs)]

pub mod callbacks;
pub mod data;
pub mod datasets;
mod error;
pub mod initializers;
pub mod io;
mod kernels;
pub mod layers;
mod logs;
pub mod losses;
pub mod metrics;
pub mod mixed_precision;
pub mod model;
mod ops;
pub mod optimizers;
pub mod plot;
pub mod random;
pub mod runtime;
pub mod tape;
pub mod trainer;

pub use data::Data;
pub use error::{Error, Result};
pub use logs::{DeferredValue, Logs};
pub use model::{Functional, Input, Model, Sequential, StepContext};
pub use tape::{GradientTape, Variable};
pub use trainer::{Compile, EvaluateOptions, FitOptions, ModelExt, PredictOptions, Trainer};

/// Everything a training script usually needs, in one import.
pub mod prelude {
    pub use crate::callbacks::{
        CSVLogger, Callback, CallbackContext, EarlyStopping, History, LambdaCallback,
        LearningRateScheduler, ReduceLROnPlateau, TerminateOnNaN,
    };
    pub use crate::data::Data;
    pub use crate::layers::{
        Activation, ActivationLayer, Add, Concatenate, Dense, Dropout, Flatten, Layer, LeakyReLU,
        ReLU, Regularizer, Reshape,
    };
    pub use crate::losses::{
        BinaryCrossentropy, CategoricalCrossentropy, Huber, Loss, MeanAbsoluteError as MaeLoss,
        MeanSquaredError as MseLoss, SparseCategoricalCrossentropy,
    };
    pub use crate::metrics::{
        Accuracy, BinaryAccuracy, CategoricalAccuracy, Mean, MeanAbsoluteError, MeanSquaredError,
        Metric, RootMeanSquaredError, SparseCategoricalAccuracy, Sum, TopKCategoricalAccuracy,
    };
    pub use crate::model::{
        Functional, Input, KerasTensor, LayerExt, Model, Sequential, SharedLayer, StepContext,
    };
    pub use crate::optimizers::{Adam, AdamW, Optimizer, RmsProp, Sgd};
    pub use crate::tape::{GradientTape, Variable, stop_gradient};
    pub use crate::trainer::{
        Compile, EvaluateOptions, FitOptions, Inputs, ModelExt, PredictOptions, Trainer,
    };
    pub use crate::{Error, Logs, Result};
}
