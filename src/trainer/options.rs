//! Builders for `compile`, `fit`, `evaluate` and `predict`, named after Keras's arguments.

use candle_core::Tensor;

use crate::callbacks::Callback;
use crate::data::{ClassWeight, Data, Dataset};
use crate::losses::Loss;
use crate::metrics::MetricSpec;
use crate::optimizers::Optimizer;

/// An optimizer as given to `compile`: a shorthand or an object.
pub enum OptimizerSpec {
    /// `"adam"`, `"sgd"`, `"rmsprop"`, `"adamw"`.
    Name(String),
    /// An optimizer object.
    Object(Box<dyn Optimizer>),
}

impl From<&str> for OptimizerSpec {
    fn from(s: &str) -> Self {
        OptimizerSpec::Name(s.to_string())
    }
}

impl<O: Optimizer + 'static> From<O> for OptimizerSpec {
    fn from(o: O) -> Self {
        OptimizerSpec::Object(Box::new(o))
    }
}

/// A loss as given to `compile`: a shorthand or an object.
pub enum LossSpec {
    /// `"mse"`, `"binary_crossentropy"`, ...
    Name(String),
    /// A loss object.
    Object(Box<dyn Loss>),
}

impl From<&str> for LossSpec {
    fn from(s: &str) -> Self {
        LossSpec::Name(s.to_string())
    }
}

impl<L: Loss + 'static> From<L> for LossSpec {
    fn from(l: L) -> Self {
        LossSpec::Object(Box::new(l))
    }
}

/// The arguments of `compile` (Keras's `model.compile(optimizer, loss, metrics, ...)`). Every part
/// is optional.
///
/// ```
/// use ferrokeras::prelude::*;
/// let c = Compile::new().optimizer("adam").loss("mse").metrics(["mae"]);
/// let c2 = Compile::new().optimizer(Adam::new(3e-4)).loss(BinaryCrossentropy::new().from_logits(true));
/// # let _ = (c, c2);
/// ```
#[derive(Default)]
pub struct Compile {
    pub(crate) optimizer: Option<OptimizerSpec>,
    pub(crate) losses: Vec<LossSpec>,
    pub(crate) loss_weights: Option<Vec<f64>>,
    pub(crate) metrics: Vec<MetricSpec>,
    pub(crate) weighted_metrics: Vec<MetricSpec>,
}

impl Compile {
    /// Nothing configured.
    pub fn new() -> Self {
        Self::default()
    }
    /// The optimizer (a shorthand or an object).
    pub fn optimizer(mut self, o: impl Into<OptimizerSpec>) -> Self {
        self.optimizer = Some(o.into());
        self
    }
    /// One loss for every output.
    pub fn loss(mut self, l: impl Into<LossSpec>) -> Self {
        self.losses = vec![l.into()];
        self
    }
    /// One loss per output, in output order.
    pub fn losses(mut self, ls: Vec<LossSpec>) -> Self {
        self.losses = ls;
        self
    }
    /// Weights of the per-output losses.
    pub fn loss_weights(mut self, w: Vec<f64>) -> Self {
        self.loss_weights = Some(w);
        self
    }
    /// Metrics that ignore sample weights.
    pub fn metrics<I, M>(mut self, ms: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<MetricSpec>,
    {
        self.metrics = ms.into_iter().map(Into::into).collect();
        self
    }
    /// Metrics that use sample weights.
    pub fn weighted_metrics<I, M>(mut self, ms: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<MetricSpec>,
    {
        self.weighted_metrics = ms.into_iter().map(Into::into).collect();
        self
    }
}

/// Input data of `fit`/`evaluate`/`predict`: arrays `x` with optional targets `y`, or a
/// [`Dataset`] of batches.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::trainer::Inputs;
/// let x = Tensor::zeros((8, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let y = Tensor::zeros((8, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let both = Inputs::from((x.clone(), y));
/// let only_x = Inputs::from(x);
/// # let _ = (both, only_x);
/// ```
pub struct Inputs {
    pub(crate) kind: InputKind,
}

/// Arrays held in memory, or a dataset that yields whole batches.
pub(crate) enum InputKind {
    Arrays { x: Data, y: Option<Data> },
    Dataset(Dataset),
}

impl Inputs {
    /// `x` and `y`.
    pub fn xy(x: impl Into<Data>, y: impl Into<Data>) -> Self {
        Self {
            kind: InputKind::Arrays {
                x: x.into(),
                y: Some(y.into()),
            },
        }
    }
    /// `x` alone.
    pub fn x(x: impl Into<Data>) -> Self {
        Self {
            kind: InputKind::Arrays {
                x: x.into(),
                y: None,
            },
        }
    }
    /// `x` and optional `y` from ndarray arrays (floats become float32, integers stay integers).
    ///
    /// ```
    /// use ferrokeras::trainer::Inputs;
    /// let x = ndarray::Array2::<f64>::zeros((8, 3));
    /// let y = ndarray::Array1::<i64>::zeros(8);
    /// let inputs = Inputs::from_ndarray(&x, Some(&y)).unwrap();
    /// # let _ = inputs;
    /// ```
    ///
    /// # Errors
    /// Only if a tensor cannot be allocated.
    pub fn from_ndarray<A, SA, DA, B, SB, DB>(
        x: &ndarray::ArrayBase<SA, DA>,
        y: Option<&ndarray::ArrayBase<SB, DB>>,
    ) -> crate::Result<Self>
    where
        A: crate::data::NdElement,
        SA: ndarray::Data<Elem = A>,
        DA: ndarray::Dimension,
        B: crate::data::NdElement,
        SB: ndarray::Data<Elem = B>,
        DB: ndarray::Dimension,
    {
        let x = crate::data::from_ndarray(x)?;
        Ok(match y {
            Some(y) => Inputs::xy(x, crate::data::from_ndarray(y)?),
            None => Inputs::x(x),
        })
    }
    /// A dataset of batches: each element reaches the step unchanged.
    pub fn dataset(ds: Dataset) -> Self {
        Self {
            kind: InputKind::Dataset(ds),
        }
    }
    /// `x` and `y` from `.npy` files written by numpy.
    ///
    /// # Errors
    /// A missing or malformed file.
    pub fn from_npy(
        x: impl AsRef<std::path::Path>,
        y: Option<&std::path::Path>,
    ) -> crate::Result<Self> {
        let x: Data = crate::data::read_npy(x)?.into();
        Ok(match y {
            Some(p) => Inputs::xy(x, crate::data::read_npy(p)?),
            None => Inputs::x(x),
        })
    }
}

impl From<Dataset> for Inputs {
    fn from(ds: Dataset) -> Self {
        Inputs::dataset(ds)
    }
}

impl From<Tensor> for Inputs {
    fn from(x: Tensor) -> Self {
        Inputs::x(x)
    }
}

impl From<&Tensor> for Inputs {
    fn from(x: &Tensor) -> Self {
        Inputs::x(x.clone())
    }
}

impl From<Data> for Inputs {
    fn from(x: Data) -> Self {
        Inputs::x(x)
    }
}

impl<A: Into<Data>, B: Into<Data>> From<(A, B)> for Inputs {
    fn from((x, y): (A, B)) -> Self {
        Inputs::xy(x, y)
    }
}

/// The arguments of `fit`, named as Keras's.
///
/// ```
/// use ferrokeras::prelude::*;
/// let o = FitOptions::new().epochs(3).batch_size(32).validation_split(0.2).shuffle(false).verbose(0);
/// # let _ = o;
/// ```
pub struct FitOptions {
    pub(crate) epochs: usize,
    pub(crate) batch_size: usize,
    pub(crate) verbose: Option<u8>,
    pub(crate) callbacks: Vec<Box<dyn Callback>>,
    pub(crate) validation_split: f64,
    pub(crate) validation_data: Option<(Inputs, Option<Tensor>)>,
    pub(crate) validation_freq: usize,
    pub(crate) validation_batch_size: Option<usize>,
    pub(crate) validation_steps: Option<usize>,
    pub(crate) shuffle: bool,
    pub(crate) class_weight: Option<ClassWeight>,
    pub(crate) sample_weight: Option<Tensor>,
    pub(crate) initial_epoch: usize,
    pub(crate) steps_per_epoch: Option<usize>,
    pub(crate) backup: Option<super::BackupAndRestore>,
    pub(crate) validation_every_steps: Option<usize>,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            batch_size: 32,
            verbose: None,
            callbacks: Vec::new(),
            validation_split: 0.0,
            validation_data: None,
            validation_freq: 1,
            validation_batch_size: None,
            validation_steps: None,
            shuffle: true,
            class_weight: None,
            sample_weight: None,
            initial_epoch: 0,
            steps_per_epoch: None,
            backup: None,
            validation_every_steps: None,
        }
    }
}

impl FitOptions {
    /// Keras's defaults: 1 epoch, batch size 32, shuffling, verbose "auto".
    pub fn new() -> Self {
        Self::default()
    }
    /// Index of the last epoch (training runs epochs `initial_epoch..epochs`).
    pub fn epochs(mut self, n: usize) -> Self {
        self.epochs = n;
        self
    }
    /// Samples per batch (arrays only).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// 0 silent, 1 progress bar, 2 one line per epoch; unset is "auto" (1).
    pub fn verbose(mut self, v: u8) -> Self {
        self.verbose = Some(v);
        self
    }
    /// Adds a callback.
    pub fn callback(mut self, cb: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(cb));
        self
    }
    /// Replaces the callbacks.
    pub fn callbacks(mut self, cbs: Vec<Box<dyn Callback>>) -> Self {
        self.callbacks = cbs;
        self
    }
    /// Fraction of the arrays (the last samples, before shuffling) held out for validation.
    pub fn validation_split(mut self, f: f64) -> Self {
        self.validation_split = f;
        self
    }
    /// Validation data `(x, y)`; takes precedence over `validation_split`.
    pub fn validation_data(mut self, data: impl Into<Inputs>) -> Self {
        self.validation_data = Some((data.into(), None));
        self
    }
    /// Validation data with sample weights.
    pub fn validation_data_weighted(
        mut self,
        data: impl Into<Inputs>,
        sample_weight: Tensor,
    ) -> Self {
        self.validation_data = Some((data.into(), Some(sample_weight)));
        self
    }
    /// Validate every N epochs (Keras's `validation_freq`; `fit` refuses 0).
    pub fn validation_freq(mut self, n: usize) -> Self {
        self.validation_freq = n;
        self
    }
    /// Also validate every `n` training steps (counted across epochs), beyond Keras's epoch-only
    /// `validation_freq`. The `val_` values reach the callbacks in that batch's
    /// `on_train_batch_end` logs and are kept in [`crate::callbacks::History::step_validation`];
    /// the training metrics' running means are not disturbed. 0 turns it off (the default).
    pub fn validation_every_steps(mut self, n: usize) -> Self {
        self.validation_every_steps = (n > 0).then_some(n);
        self
    }
    /// Validate on the first `n` batches of the validation data only (Keras's
    /// `validation_steps`; default: all of it). Needed for validation data that repeats forever.
    /// Each validation starts from the beginning of the data (a shuffled dataset draws a new
    /// order), where Keras 3 goes on from where the previous validation stopped. `fit` refuses 0.
    pub fn validation_steps(mut self, n: usize) -> Self {
        self.validation_steps = Some(n);
        self
    }
    /// Batch size of validation (default: `batch_size`; `fit` refuses 0).
    pub fn validation_batch_size(mut self, n: usize) -> Self {
        self.validation_batch_size = Some(n);
        self
    }
    /// Whether to shuffle the training arrays every epoch (default true).
    pub fn shuffle(mut self, s: bool) -> Self {
        self.shuffle = s;
        self
    }
    /// Weights per class, turned into sample weights from `y` (of the arrays, or of each batch of
    /// a dataset; a class without a weight weighs 1). The validation data is not weighted.
    pub fn class_weight(mut self, cw: impl IntoIterator<Item = (usize, f32)>) -> Self {
        self.class_weight = Some(cw.into_iter().collect());
        self
    }
    /// One weight per training sample.
    pub fn sample_weight(mut self, sw: Tensor) -> Self {
        self.sample_weight = Some(sw);
        self
    }
    /// Epoch to start at (resuming a previous run).
    pub fn initial_epoch(mut self, e: usize) -> Self {
        self.initial_epoch = e;
        self
    }
    /// Backs up the training state and resumes from the backup if one exists (exact resume, even
    /// mid-epoch); see [`super::BackupAndRestore`].
    pub fn backup_and_restore(mut self, b: super::BackupAndRestore) -> Self {
        self.backup = Some(b);
        self
    }
    /// Steps per epoch (default: one pass over the data). As in Keras, the data stream continues
    /// across epochs: an epoch begins where the previous one stopped, a new pass (reshuffled)
    /// begins when an epoch finds the data used up, and an epoch during which the data runs out
    /// ends there, with a warning (8 batches of data and `steps_per_epoch(3)` give epochs of 3, 3,
    /// 2, 3, 3, 2, ... steps). A dataset that repeats forever never runs out.
    pub fn steps_per_epoch(mut self, n: usize) -> Self {
        self.steps_per_epoch = Some(n);
        self
    }
}

/// The arguments of `evaluate`.
///
/// ```
/// use ferrokeras::prelude::*;
/// let o = EvaluateOptions::new().batch_size(64).verbose(0);
/// # let _ = o;
/// ```
pub struct EvaluateOptions {
    pub(crate) batch_size: usize,
    pub(crate) verbose: Option<u8>,
    pub(crate) sample_weight: Option<Tensor>,
    pub(crate) steps: Option<usize>,
    pub(crate) callbacks: Vec<Box<dyn Callback>>,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            verbose: None,
            sample_weight: None,
            steps: None,
            callbacks: Vec::new(),
        }
    }
}

impl EvaluateOptions {
    /// Keras's defaults: batch size 32, verbose "auto".
    pub fn new() -> Self {
        Self::default()
    }
    /// Samples per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// 0 silent, 1 progress bar, 2 one line.
    pub fn verbose(mut self, v: u8) -> Self {
        self.verbose = Some(v);
        self
    }
    /// One weight per sample.
    pub fn sample_weight(mut self, sw: Tensor) -> Self {
        self.sample_weight = Some(sw);
        self
    }
    /// Evaluate only the first `n` batches.
    pub fn steps(mut self, n: usize) -> Self {
        self.steps = Some(n);
        self
    }
    /// Adds a callback.
    pub fn callback(mut self, cb: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(cb));
        self
    }
}

/// The arguments of `predict`.
///
/// ```
/// use ferrokeras::prelude::*;
/// let o = PredictOptions::new().batch_size(256).verbose(0);
/// # let _ = o;
/// ```
pub struct PredictOptions {
    pub(crate) batch_size: usize,
    pub(crate) verbose: Option<u8>,
    pub(crate) steps: Option<usize>,
    pub(crate) callbacks: Vec<Box<dyn Callback>>,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self {
            batch_size: 32,
            verbose: None,
            steps: None,
            callbacks: Vec::new(),
        }
    }
}

impl PredictOptions {
    /// Keras's defaults: batch size 32, verbose "auto".
    pub fn new() -> Self {
        Self::default()
    }
    /// Samples per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// 0 silent, 1 progress bar.
    pub fn verbose(mut self, v: u8) -> Self {
        self.verbose = Some(v);
        self
    }
    /// Predict only the first `n` batches.
    pub fn steps(mut self, n: usize) -> Self {
        self.steps = Some(n);
        self
    }
    /// Adds a callback.
    pub fn callback(mut self, cb: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(cb));
        self
    }
}
