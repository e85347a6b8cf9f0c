//! Recurrent layers: Keras's `SimpleRNN`, `LSTM` and `GRU`, over `(batch, timesteps, features)`.
//!
//! One generic layer, [`Recurrent`], runs the loop over time; the cell kind ([`SimpleRnnCell`],
//! [`LstmCell`], [`GruCell`]) says what one step computes: its input times the kernel, plus
//! the state times the recurrent kernel, then the gates. The gates are in Keras's order and
//! layout (LSTM: input, forget, cell, output; GRU: update, reset, candidate), so Keras's
//! weights load as they are.

use candle_core::{DType, Device, Tensor};

use super::{Activation, Layer, Regularizer, unique_name};
use crate::initializers::Initializer;
use crate::mixed_precision::DTypePolicy;
use crate::tape::Variable;
use crate::{Error, Result};

mod sealed {
    pub trait Sealed {}
}

/// What one step of a [`Recurrent`] layer computes: [`SimpleRnnCell`], [`LstmCell`] or
/// [`GruCell`]. Implemented by those three only.
///
/// ```
/// use ferrokeras::layers::{CellKind, GruCell, LstmCell};
/// assert_eq!(LstmCell::CLASS, "LSTM");
/// assert_eq!(LstmCell::GATES, 4); // kernels (features, 4 * units): input, forget, cell, output
/// assert_eq!(GruCell::CELL, "gru_cell"); // where Keras's files keep a GRU's weights
/// ```
pub trait CellKind: sealed::Sealed + Clone + Send + 'static {
    /// The Keras class of the layer (`"LSTM"`).
    const CLASS: &'static str;
    /// The name of Keras's cell sublayer, under which Keras's weight files keep the variables
    /// (`"lstm_cell"`).
    const CELL: &'static str;
    /// The prefix of generated layer names (`"lstm"`).
    const PREFIX: &'static str;
    /// The number of gate blocks in the kernels (1, 4 or 3).
    const GATES: usize;
    /// The cell with Keras's defaults.
    fn keras_default() -> Self;
    /// Which computation the step runs.
    #[doc(hidden)]
    fn step_kind(&self) -> StepKind;
}

/// The step a cell runs (used by [`Recurrent`]'s loop).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind {
    /// `h = activation(x W + h U + b)`.
    Simple,
    /// Keras's LSTM; `unit_forget_bias`: the forget gate's bias starts at 1.
    Lstm {
        /// Keras's `unit_forget_bias`.
        unit_forget_bias: bool,
    },
    /// Keras's GRU; `reset_after`: the reset gate multiplies `h U` (true) or `h` (false).
    Gru {
        /// Keras's `reset_after`.
        reset_after: bool,
    },
}

/// The cell of [`SimpleRNN`]: `h_t = activation(x_t W + h_{t-1} U + b)`.
///
/// ```
/// use ferrokeras::layers::{CellKind, SimpleRnnCell};
/// assert_eq!(SimpleRnnCell::GATES, 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SimpleRnnCell;

/// The cell of [`LSTM`], with Keras's `unit_forget_bias` (the forget gate's bias starts at 1).
///
/// ```
/// use ferrokeras::layers::{CellKind, LstmCell};
/// assert_eq!(LstmCell::PREFIX, "lstm"); // LSTM layers are named lstm, lstm_1, ...
/// ```
#[derive(Clone, Debug)]
pub struct LstmCell {
    unit_forget_bias: bool,
}

/// The cell of [`GRU`], with Keras's `reset_after` (the reset gate multiplies the recurrent
/// product, as cuDNN does; Keras's default).
///
/// ```
/// use ferrokeras::layers::{CellKind, GruCell};
/// assert_eq!(GruCell::GATES, 3); // update, reset, candidate
/// ```
#[derive(Clone, Debug)]
pub struct GruCell {
    reset_after: bool,
}

impl sealed::Sealed for SimpleRnnCell {}
impl sealed::Sealed for LstmCell {}
impl sealed::Sealed for GruCell {}

impl CellKind for SimpleRnnCell {
    const CLASS: &'static str = "SimpleRNN";
    const CELL: &'static str = "simple_rnn_cell";
    const PREFIX: &'static str = "simple_rnn";
    const GATES: usize = 1;
    fn keras_default() -> Self {
        SimpleRnnCell
    }
    fn step_kind(&self) -> StepKind {
        StepKind::Simple
    }
}

impl CellKind for LstmCell {
    const CLASS: &'static str = "LSTM";
    const CELL: &'static str = "lstm_cell";
    const PREFIX: &'static str = "lstm";
    const GATES: usize = 4;
    fn keras_default() -> Self {
        LstmCell {
            unit_forget_bias: true,
        }
    }
    fn step_kind(&self) -> StepKind {
        StepKind::Lstm {
            unit_forget_bias: self.unit_forget_bias,
        }
    }
}

impl CellKind for GruCell {
    const CLASS: &'static str = "GRU";
    const CELL: &'static str = "gru_cell";
    const PREFIX: &'static str = "gru";
    const GATES: usize = 3;
    fn keras_default() -> Self {
        GruCell { reset_after: true }
    }
    fn step_kind(&self) -> StepKind {
        StepKind::Gru {
            reset_after: self.reset_after,
        }
    }
}

/// A recurrent layer over inputs of shape `(batch, timesteps, features)`: the output is the
/// last step's state, `(batch, units)`, or with [`Recurrent::return_sequences`] every step's,
/// `(batch, timesteps, units)`. Use it as [`SimpleRNN`], [`LSTM`] or [`GRU`], Keras's layers
/// of those names, with their defaults (tanh, sigmoid gates, Glorot-uniform kernel,
/// orthogonal recurrent kernel, zero bias) and their weights' shapes and order:
/// `kernel (features, gates * units)`, `recurrent_kernel (units, gates * units)`, `bias`.
///
/// `dropout` and `recurrent_dropout` (training only) draw one mask per sequence, kept for all
/// its steps, as Keras's do; with `recurrent_dropout`, each gate gets masks of its own.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{GRU, LSTM, Layer, SimpleRNN};
/// let x = Tensor::ones((2, 5, 3), DType::F32, &Device::Cpu).unwrap();
/// let mut lstm = LSTM::new(4).return_sequences(true);
/// assert_eq!(lstm.call(&x, false).unwrap().dims(), &[2, 5, 4]);
/// assert_eq!(lstm.count_params(), 4 * (3 * 4 + 4 * 4 + 4));
/// let mut gru = GRU::new(2);
/// assert_eq!(gru.call(&x, false).unwrap().dims(), &[2, 2]);
/// assert_eq!(gru.count_params(), 3 * (3 * 2 + 2 * 2 + 2 * 2)); // reset_after: two biases
/// let mut rnn = SimpleRNN::new(3).activation("relu").unwrap();
/// assert_eq!(rnn.call(&x, false).unwrap().dims(), &[2, 3]);
/// let err = rnn.call(&Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(), false);
/// assert!(err.unwrap_err().to_string().contains("(batch, timesteps, features)"));
/// ```
pub struct Recurrent<C: CellKind> {
    name: String,
    units: usize,
    cell: C,
    activation: Activation,
    recurrent_activation: Activation,
    use_bias: bool,
    kernel_init: Initializer,
    recurrent_init: Initializer,
    bias_init: Initializer,
    kernel_reg: Option<Regularizer>,
    recurrent_reg: Option<Regularizer>,
    bias_reg: Option<Regularizer>,
    return_sequences: bool,
    go_backwards: bool,
    zero_output_for_mask: bool,
    dropout: f32,
    recurrent_dropout: f32,
    /// Keras's `seed`, and the generator it starts (masks of its own, repeated by the seed).
    seed: Option<(u64, rand::rngs::StdRng)>,
    policy: DTypePolicy,
    device: Device,
    weights: Option<Weights>,
}

#[derive(Clone)]
struct Weights {
    features: usize,
    kernel: Variable,
    recurrent: Variable,
    bias: Option<Variable>,
}

/// Keras's `SimpleRNN`: a fully connected recurrence, `h_t = tanh(x_t W + h_{t-1} U + b)`.
pub type SimpleRNN = Recurrent<SimpleRnnCell>;
/// Keras's `LSTM` (Hochreiter and Schmidhuber, 1997).
#[allow(clippy::upper_case_acronyms)]
pub type LSTM = Recurrent<LstmCell>;
/// Keras's `GRU` (Cho et al., 2014), by default in its `reset_after` form.
#[allow(clippy::upper_case_acronyms)]
pub type GRU = Recurrent<GruCell>;

impl<C: CellKind> Recurrent<C> {
    /// A layer with `units` units and Keras's defaults.
    pub fn new(units: usize) -> Self {
        Self {
            name: unique_name(C::PREFIX),
            units,
            cell: C::keras_default(),
            activation: Activation::Tanh,
            recurrent_activation: Activation::Sigmoid,
            use_bias: true,
            kernel_init: Initializer::glorot_uniform(),
            recurrent_init: Initializer::Orthogonal {
                gain: 1.0,
                seed: None,
            },
            bias_init: Initializer::Zeros,
            kernel_reg: None,
            recurrent_reg: None,
            bias_reg: None,
            return_sequences: false,
            go_backwards: false,
            zero_output_for_mask: false,
            dropout: 0.0,
            recurrent_dropout: 0.0,
            seed: None,
            policy: crate::mixed_precision::global_policy(),
            device: crate::runtime::default_device(),
            weights: None,
        }
    }
    /// The number of units (the state's size).
    pub fn units(&self) -> usize {
        self.units
    }
    /// The output activation (Keras's `activation`, default tanh), by Keras name.
    ///
    /// # Errors
    /// An unknown name.
    pub fn activation(mut self, name: &str) -> Result<Self> {
        self.activation = name.parse()?;
        Ok(self)
    }
    /// Sets the output activation.
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// Whether to add a bias (default true).
    pub fn use_bias(mut self, yes: bool) -> Self {
        self.use_bias = yes;
        self
    }
    /// How the kernel starts (default Glorot uniform).
    pub fn kernel_initializer(mut self, i: Initializer) -> Self {
        self.kernel_init = i;
        self
    }
    /// How the recurrent kernel starts (default orthogonal).
    pub fn recurrent_initializer(mut self, i: Initializer) -> Self {
        self.recurrent_init = i;
        self
    }
    /// How the bias starts (default zeros).
    pub fn bias_initializer(mut self, i: Initializer) -> Self {
        self.bias_init = i;
        self
    }
    /// A penalty on the kernel.
    pub fn kernel_regularizer(mut self, r: Regularizer) -> Self {
        self.kernel_reg = Some(r);
        self
    }
    /// A penalty on the recurrent kernel.
    pub fn recurrent_regularizer(mut self, r: Regularizer) -> Self {
        self.recurrent_reg = Some(r);
        self
    }
    /// A penalty on the bias.
    pub fn bias_regularizer(mut self, r: Regularizer) -> Self {
        self.bias_reg = Some(r);
        self
    }
    /// Return every step's output, `(batch, timesteps, units)`, instead of the last one's.
    pub fn return_sequences(mut self, yes: bool) -> Self {
        self.return_sequences = yes;
        self
    }
    /// Run over the steps from the last to the first (the returned sequence is in that
    /// order too, as in Keras).
    pub fn go_backwards(mut self, yes: bool) -> Self {
        self.go_backwards = yes;
        self
    }
    /// Output zeros at masked steps instead of the kept state (Keras's
    /// `zero_output_for_mask`; [`Bidirectional`] sets it to `return_sequences`).
    ///
    /// [`Bidirectional`]: super::Bidirectional
    pub fn zero_output_for_mask(mut self, yes: bool) -> Self {
        self.zero_output_for_mask = yes;
        self
    }
    /// The fraction of the input features to drop while training (one mask per sequence).
    ///
    /// # Errors
    /// A rate outside `[0, 1)`.
    pub fn dropout(mut self, rate: f32) -> Result<Self> {
        self.dropout = check_rate("dropout", rate)?;
        Ok(self)
    }
    /// The fraction of the state to drop from the recurrent products while training (one mask
    /// per sequence and gate).
    ///
    /// # Errors
    /// A rate outside `[0, 1)`.
    pub fn recurrent_dropout(mut self, rate: f32) -> Result<Self> {
        self.recurrent_dropout = check_rate("recurrent_dropout", rate)?;
        Ok(self)
    }
    /// A seed for the dropout masks of this layer alone.
    pub fn seed(mut self, seed: u64) -> Self {
        use rand::SeedableRng;
        self.seed = Some((seed, rand::rngs::StdRng::seed_from_u64(seed)));
        self
    }
    /// Sets the dtype policy by name (`"mixed_bfloat16"`, ...).
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
}

impl<C: CellKind> Recurrent<C> {
    /// The gates' activation (Keras's `recurrent_activation`, default sigmoid), by Keras name.
    /// Not for `SimpleRNN`, which has no gates.
    ///
    /// # Errors
    /// An unknown name, or a `SimpleRNN`.
    pub fn recurrent_activation(mut self, name: &str) -> Result<Self> {
        if C::GATES == 1 {
            return Err(Error::value(format!(
                "layer \"{}\": SimpleRNN has no gates, so no `recurrent_activation`; use `activation`",
                self.name
            )));
        }
        self.recurrent_activation = name.parse()?;
        Ok(self)
    }
}

impl LSTM {
    /// Whether the forget gate's bias starts at 1 (Keras's `unit_forget_bias`, default true).
    pub fn unit_forget_bias(mut self, yes: bool) -> Self {
        self.cell.unit_forget_bias = yes;
        self
    }
}

impl GRU {
    /// Keras's `reset_after` (default true): the reset gate multiplies `h U + b_rec` (two bias
    /// rows, shape `(2, 3 * units)`); false: it multiplies `h` before the product (one bias).
    pub fn reset_after(mut self, yes: bool) -> Self {
        self.cell.reset_after = yes;
        self
    }
}

fn check_rate(what: &str, rate: f32) -> Result<f32> {
    if (0.0..1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(Error::value(format!(
            "`{what}` must be a fraction in [0, 1); received {what}={rate}"
        )))
    }
}

/// One mask per gate (or one shared), each `(batch, n)`, from the layer's generator or the
/// global one; `None` when the rate is 0.
fn masks(
    seed: &mut Option<(u64, rand::rngs::StdRng)>,
    rate: f32,
    count: usize,
    shape: [usize; 2],
    dtype: DType,
    device: &Device,
) -> Result<Option<Vec<Tensor>>> {
    use rand::Rng;
    if rate == 0.0 {
        return Ok(None);
    }
    let keep = 1.0 - rate;
    (0..count)
        .map(|_| {
            let m = match seed {
                Some((_, g)) => crate::random::dropout_mask_from(&shape, keep, g.r#gen(), device)?,
                None => crate::random::dropout_mask(&shape, keep, device)?,
            };
            Ok(m.to_dtype(dtype)?)
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `x` (rows, n) times `w` (n, gates * units): in one product, or with `masks` (one per gate,
/// or one for all), gate by gate on the masked rows.
fn project(x: &Tensor, w: &Tensor, masks: Option<&[Tensor]>, units: usize) -> Result<Tensor> {
    match masks {
        None => Ok(x.matmul(w)?),
        Some([m]) => Ok(x.broadcast_mul(m)?.matmul(w)?),
        Some(ms) => {
            let parts = ms
                .iter()
                .enumerate()
                .map(|(g, m)| {
                    Ok(x.broadcast_mul(m)?
                        .matmul(&w.narrow(1, g * units, units)?)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 1)?)
        }
    }
}

impl<C: CellKind> Recurrent<C> {
    fn bias_shape(&self) -> Vec<usize> {
        match self.cell.step_kind() {
            StepKind::Gru { reset_after: true } => vec![2, 3 * self.units],
            _ => vec![C::GATES * self.units],
        }
    }

    fn initial_bias(&self) -> Result<Tensor> {
        let u = self.units;
        if let StepKind::Lstm {
            unit_forget_bias: true,
        } = self.cell.step_kind()
        {
            // Keras: bias_initializer on (units,), ones for the forget gate, then (2 * units,).
            let dev = &self.device;
            return Ok(Tensor::cat(
                &[
                    self.bias_init.init(&[u], dev)?,
                    Tensor::ones(u, DType::F32, dev)?,
                    self.bias_init.init(&[2 * u], dev)?,
                ],
                0,
            )?);
        }
        self.bias_init.init(&self.bias_shape(), &self.device)
    }

    fn shape_error(&self, dims: &[usize]) -> Error {
        Error::value(format!(
            "layer \"{}\" ({}) expects inputs of shape (batch, timesteps, features){}; received {dims:?}. Reshape a sequence of vectors to rank 3",
            self.name,
            C::CLASS,
            match &self.weights {
                Some(w) => format!(" with {} features", w.features),
                None => String::new(),
            }
        ))
    }

    /// The loop over time. `x`: (batch, timesteps, features), in the compute dtype; `mask`:
    /// (batch, timesteps), 0 for the steps to skip (the state is kept through them, and their
    /// output is the kept state, or zeros with `zero_output_for_mask`).
    fn run(&mut self, x: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
        let Some(w) = self.weights.clone() else {
            return Err(Error::state(format!("{} not built", C::CLASS)));
        };
        let (b, t, f) = x.dims3()?;
        let (u, gates, kind) = (self.units, C::GATES, self.cell.step_kind());
        let dt = x.dtype();
        let dev = x.device().clone();
        let kernel = self.policy.cast(w.kernel.as_tensor())?;
        let recurrent = self.policy.cast(w.recurrent.as_tensor())?;
        let bias = match &w.bias {
            Some(v) => Some(self.policy.cast(v.as_tensor())?),
            None => None,
        };
        let (in_bias, rec_bias) = match (&bias, kind) {
            (Some(b), StepKind::Gru { reset_after: true }) => (Some(b.get(0)?), Some(b.get(1)?)),
            (b, _) => (b.clone(), None),
        };
        // Per-gate masks where Keras's cells draw them (with recurrent dropout), else one.
        let per_gate = if self.recurrent_dropout > 0.0 {
            gates
        } else {
            1
        };
        let (in_masks, rec_masks) = if training {
            (
                masks(&mut self.seed, self.dropout, per_gate, [b, f], dt, &dev)?,
                masks(
                    &mut self.seed,
                    self.recurrent_dropout,
                    per_gate,
                    [b, u],
                    dt,
                    &dev,
                )?,
            )
        } else {
            (None, None)
        };
        let rev = |v: &Tensor| -> Result<Tensor> {
            let order: Vec<u32> = (0..t as u32).rev().collect();
            Ok(v.index_select(&Tensor::new(order.as_slice(), &dev)?, 1)?)
        };
        let x = if self.go_backwards {
            rev(x)?
        } else {
            x.clone()
        };
        let mask = match mask {
            Some(m) if m.dims() != [b, t] => {
                return Err(Error::value(format!(
                    "layer \"{}\" ({}): the mask must be (batch, timesteps) = {:?}; received {:?}",
                    self.name,
                    C::CLASS,
                    [b, t],
                    m.dims()
                )));
            }
            Some(m) if self.go_backwards => Some(rev(&m.to_dtype(dt)?)?),
            Some(m) => Some(m.to_dtype(dt)?),
            None => None,
        };
        // On the CPU, the whole sequence as one op (cuDNN's way) where it applies: Keras's
        // default activations, a bias, and no recurrent dropout.
        let fused = match kind {
            StepKind::Lstm { .. } => Some(crate::kernels::recurrent::Cell::Lstm),
            StepKind::Gru { reset_after: true } => Some(crate::kernels::recurrent::Cell::Gru),
            _ => None,
        };
        // Input dropout without recurrent dropout is one mask per sequence, shared by the
        // gates: applied to the whole sequence before the op, as the loop applies it per step.
        let fused_x = match (&in_masks, &rec_masks) {
            (None, None) => Some(x.clone()),
            (Some(ms), None) if ms.len() == 1 => Some(x.broadcast_mul(&ms[0].unsqueeze(1)?)?),
            _ => None,
        };
        if let (Some(cell), Some(bias), Some(fx)) = (fused, &bias, &fused_x)
            && self.activation == Activation::Tanh
            && self.recurrent_activation == Activation::Sigmoid
            && let Some(y) = crate::kernels::recurrent::sequence(
                cell,
                fx,
                [&kernel, &recurrent, bias],
                self.return_sequences,
                mask.as_ref(),
                self.zero_output_for_mask,
            )?
        {
            return Ok(y);
        }
        // Each step's input projection (batch, gates * units) is its own product: slicing one
        // product of all steps instead would give each step's slice a gradient as large as the
        // whole sequence's (candle pads a slice's gradient to its source's shape), T times.
        let in_masks = in_masks.as_deref();
        let step_input = |s: usize| -> Result<Tensor> {
            let xs = x.narrow(1, s, 1)?.squeeze(1)?;
            let p = project(&xs, &kernel, in_masks, u)?;
            Ok(match &in_bias {
                Some(bias) => p.broadcast_add(bias)?,
                None => p,
            })
        };
        let act = self.activation;
        let ract = self.recurrent_activation;
        let rec_masks = rec_masks.as_deref();
        let mut h = Tensor::zeros((b, u), dt, &dev)?;
        let mut c = Tensor::zeros((b, u), dt, &dev)?;
        let mut outputs = Vec::with_capacity(if self.return_sequences { t } else { 0 });
        let mut last = h.clone();
        for s in 0..t {
            let xs = step_input(s)?;
            let (h_prev, c_prev) = (h.clone(), c.clone());
            h = match kind {
                StepKind::Simple => {
                    let z = (xs + project(&h, &recurrent, rec_masks, u)?)?;
                    act.apply(&z)?
                }
                StepKind::Lstm { .. } => {
                    let z = (xs + project(&h, &recurrent, rec_masks, u)?)?;
                    let gate = |g: usize| z.narrow(1, g * u, u);
                    let i = ract.apply(&gate(0)?)?;
                    let fg = ract.apply(&gate(1)?)?;
                    let cand = act.apply(&gate(2)?)?;
                    let o = ract.apply(&gate(3)?)?;
                    c = ((fg * &c)? + (i * cand)?)?;
                    (o * act.apply(&c)?)?
                }
                StepKind::Gru { reset_after } => {
                    let x_at = |g: usize| xs.narrow(1, g * u, u);
                    // The recurrent products of the update and reset gates (and with
                    // reset_after, the candidate's), with their masks.
                    let inner = if reset_after {
                        let p = project(&h, &recurrent, rec_masks, u)?;
                        match &rec_bias {
                            Some(rb) => p.broadcast_add(rb)?,
                            None => p,
                        }
                    } else {
                        project(
                            &h,
                            &recurrent.narrow(1, 0, 2 * u)?,
                            rec_masks.map(|m| &m[..m.len().min(2)]),
                            u,
                        )?
                    };
                    let z = ract.apply(&(x_at(0)? + inner.narrow(1, 0, u)?)?)?;
                    let r = ract.apply(&(x_at(1)? + inner.narrow(1, u, u)?)?)?;
                    let rec_h = if reset_after {
                        (&r * inner.narrow(1, 2 * u, u)?)?
                    } else {
                        let hm = match rec_masks {
                            Some(ms) => h.broadcast_mul(&ms[ms.len() - 1])?,
                            None => h.clone(),
                        };
                        (&r * hm)?.matmul(&recurrent.narrow(1, 2 * u, u)?)?
                    };
                    let hh = act.apply(&(x_at(2)? + rec_h)?)?;
                    // h = z * h + (1 - z) * hh
                    ((&z * &h)? + (z.affine(-1.0, 1.0)? * hh)?)?
                }
            };
            last = match &mask {
                None => h.clone(),
                Some(m) => {
                    // Keras's masked step: the states (and the output) stay as they were.
                    let keep = m.narrow(1, s, 1)?;
                    let skip = keep.affine(-1.0, 1.0)?;
                    let blend = |new: &Tensor, old: &Tensor| -> Result<Tensor> {
                        Ok((new.broadcast_mul(&keep)? + old.broadcast_mul(&skip)?)?)
                    };
                    let out = if self.zero_output_for_mask {
                        h.broadcast_mul(&keep)?
                    } else {
                        blend(&h, &h_prev)?
                    };
                    h = blend(&h, &h_prev)?;
                    if matches!(kind, StepKind::Lstm { .. }) {
                        c = blend(&c, &c_prev)?;
                    }
                    out
                }
            };
            if self.return_sequences {
                outputs.push(last.clone());
            }
        }
        if self.return_sequences {
            if outputs.is_empty() {
                return Ok(Tensor::zeros((b, 0, u), dt, &dev)?);
            }
            Ok(Tensor::stack(&outputs, 1)?)
        } else {
            Ok(last)
        }
    }
}

impl<C: CellKind> Layer for Recurrent<C> {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        C::CLASS
    }
    fn keras_vars(&self) -> Vec<super::KerasVars> {
        vec![
            super::KerasVars {
                path: "vars".into(),
                name: self.name.clone(),
                variables: Vec::new(),
            },
            super::KerasVars {
                path: "cell/vars".into(),
                name: C::CELL.into(),
                variables: self.variables(),
            },
        ]
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.weights.is_some() {
            return Ok(());
        }
        let &[_, features] = input_shape else {
            let mut dims = vec![0];
            dims.extend_from_slice(input_shape);
            return Err(self.shape_error(&dims));
        };
        if self.units == 0 {
            return Err(Error::value(format!(
                "layer \"{}\": `units` must be >= 1; received units=0",
                self.name
            )));
        }
        let g = C::GATES * self.units;
        let vdt = self.policy.variable_dtype();
        let var = |what: &str, t: Tensor| -> Result<Variable> {
            Variable::new(format!("{}/{what}", self.name), &t.to_dtype(vdt)?, true)
        };
        let kernel = var(
            "kernel",
            self.kernel_init.init(&[features, g], &self.device)?,
        )?;
        let recurrent = var(
            "recurrent_kernel",
            self.recurrent_init.init(&[self.units, g], &self.device)?,
        )?;
        let bias = if self.use_bias {
            Some(var("bias", self.initial_bias()?)?)
        } else {
            None
        };
        self.weights = Some(Weights {
            features,
            kernel,
            recurrent,
            bias,
        });
        Ok(())
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.call_masked(x, None, training)
    }
    fn call_masked(&mut self, x: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
        if x.rank() != 3 {
            return Err(self.shape_error(x.dims()));
        }
        self.build(&x.dims()[1..])?;
        if let Some(w) = &self.weights
            && x.dim(2)? != w.features
        {
            return Err(self.shape_error(x.dims()));
        }
        let x = self.policy.cast(&crate::ops::to_float(x)?)?;
        self.run(&x, mask, training)
    }
    /// Keras's: the input's mask with `return_sequences` (in time order, even going
    /// backwards), else none.
    fn compute_mask(&self, _x: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        Ok(if self.return_sequences {
            mask.cloned()
        } else {
            None
        })
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        match input_shape {
            [t, _] if self.return_sequences => Ok(vec![*t, self.units]),
            [_, _] => Ok(vec![self.units]),
            _ => {
                let mut dims = vec![0];
                dims.extend_from_slice(input_shape);
                Err(self.shape_error(&dims))
            }
        }
    }
    fn variables(&self) -> Vec<Variable> {
        match &self.weights {
            Some(w) => [Some(&w.kernel), Some(&w.recurrent), w.bias.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let Some(w) = &self.weights else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (r, v) in [
            (self.kernel_reg, Some(&w.kernel)),
            (self.recurrent_reg, Some(&w.recurrent)),
            (self.bias_reg, w.bias.as_ref()),
        ] {
            if let (Some(r), Some(v)) = (r, v) {
                out.push(r.penalty(v.as_tensor())?);
            }
        }
        Ok(out)
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        use super::config::{activation_json, f32_json, regularizer_json};
        let mut c = serde_json::json!({
            "name": self.name,
            "return_sequences": self.return_sequences,
            "return_state": false,
            "go_backwards": self.go_backwards,
            "stateful": false,
            "unroll": false,
            "zero_output_for_mask": self.zero_output_for_mask,
            "units": self.units,
            "activation": activation_json(self.activation),
        });
        let m = c.as_object_mut()?;
        if C::GATES > 1 {
            m.insert(
                "recurrent_activation".into(),
                activation_json(self.recurrent_activation),
            );
        }
        m.insert("use_bias".into(), self.use_bias.into());
        m.insert("kernel_initializer".into(), self.kernel_init.to_json());
        m.insert(
            "recurrent_initializer".into(),
            self.recurrent_init.to_json(),
        );
        m.insert("bias_initializer".into(), self.bias_init.to_json());
        if let StepKind::Lstm { unit_forget_bias } = self.cell.step_kind() {
            m.insert("unit_forget_bias".into(), unit_forget_bias.into());
        }
        m.insert(
            "kernel_regularizer".into(),
            regularizer_json(self.kernel_reg),
        );
        m.insert(
            "recurrent_regularizer".into(),
            regularizer_json(self.recurrent_reg),
        );
        m.insert("bias_regularizer".into(), regularizer_json(self.bias_reg));
        for key in [
            "activity_regularizer",
            "kernel_constraint",
            "recurrent_constraint",
            "bias_constraint",
        ] {
            m.insert(key.into(), serde_json::Value::Null);
        }
        m.insert("dropout".into(), f32_json(self.dropout));
        m.insert("recurrent_dropout".into(), f32_json(self.recurrent_dropout));
        if let StepKind::Gru { reset_after } = self.cell.step_kind() {
            m.insert("reset_after".into(), reset_after.into());
        }
        if C::GATES > 1 {
            m.insert("seed".into(), self.seed.as_ref().map(|(s, _)| *s).into());
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ones(shape: &[usize]) -> Tensor {
        Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
    }

    /// A SimpleRNN that copies its input (identity kernel, no recurrence, linear): its outputs
    /// are the dropped-out inputs themselves.
    fn copier(features: usize) -> SimpleRNN {
        let eye = Tensor::eye(features, DType::F32, &Device::Cpu).unwrap();
        let mut l = SimpleRNN::new(features)
            .with_activation(Activation::Linear)
            .use_bias(false)
            .recurrent_initializer(Initializer::Zeros)
            .dropout(0.5)
            .unwrap()
            .seed(3);
        l.build(&[6, features]).unwrap();
        l.variables()[0].assign(&eye).unwrap();
        l
    }

    /// Input dropout: one mask per sequence, the same at every step, scaled by 1/keep; none
    /// outside training; a seeded layer draws the same masks again.
    #[test]
    fn dropout_masks_are_per_sequence_and_training_only() {
        let x = ones(&[4, 6, 8]);
        let mut l = copier(8).return_sequences(true);
        let inference = l.call(&x, false).unwrap().to_vec3::<f32>().unwrap();
        assert!(inference.iter().flatten().flatten().all(|v| *v == 1.0));
        let y = l.call(&x, true).unwrap().to_vec3::<f32>().unwrap();
        let mut dropped = 0;
        for seq in &y {
            for step in seq {
                assert_eq!(step, &seq[0], "the mask changed between steps");
            }
            assert!(seq[0].iter().all(|v| *v == 0.0 || *v == 2.0));
            dropped += seq[0].iter().filter(|v| **v == 0.0).count();
        }
        assert!(
            (4..=28).contains(&dropped),
            "{dropped} of 32 dropped at rate 0.5"
        );
        let mut again = copier(8).return_sequences(true);
        assert_eq!(again.call(&x, true).unwrap().to_vec3::<f32>().unwrap(), y);
    }

    /// Recurrent dropout changes a GRU's and an LSTM's training output only, and a seed repeats it.
    #[test]
    fn recurrent_dropout_applies_in_training_only() {
        let x = crate::kernels::fixed_randn(1.0, &[3, 5, 2], &Device::Cpu).unwrap();
        // The same weights for every layer made below.
        let weights: Vec<Vec<Tensor>> = [[2, 16], [4, 16], [16, 1], [2, 12], [4, 12], [2, 12]]
            .chunks(3)
            .map(|shapes| {
                shapes
                    .iter()
                    .map(|s| crate::kernels::fixed_randn(0.5, s, &Device::Cpu).unwrap())
                    .collect()
            })
            .collect();
        let run = |training: bool, lstm: bool| -> Vec<Vec<f32>> {
            let mut l: Box<dyn Layer> = if lstm {
                Box::new(LSTM::new(4).recurrent_dropout(0.5).unwrap().seed(9))
            } else {
                Box::new(GRU::new(4).recurrent_dropout(0.5).unwrap().seed(9))
            };
            l.build(&[5, 2]).unwrap();
            for (v, w) in l.variables().iter().zip(&weights[usize::from(!lstm)]) {
                v.assign(&w.reshape(v.shape()).unwrap()).unwrap();
            }
            l.call(&x, training).unwrap().to_vec2::<f32>().unwrap()
        };
        for lstm in [false, true] {
            let plain = run(false, lstm);
            let dropped = run(true, lstm);
            assert_ne!(plain, dropped);
            assert_eq!(dropped, run(true, lstm));
        }
    }

    /// Inputs of the wrong rank or width are refused with the expected shape.
    #[test]
    fn bad_inputs_are_errors() {
        let mut l = LSTM::new(2);
        let e = l.call(&ones(&[2, 3]), false).unwrap_err().to_string();
        assert!(
            e.contains("(batch, timesteps, features)") && e.contains("[2, 3]"),
            "{e}"
        );
        l.call(&ones(&[2, 4, 3]), false).unwrap();
        let e = l.call(&ones(&[2, 4, 5]), false).unwrap_err().to_string();
        assert!(
            e.contains("with 3 features") && e.contains("[2, 4, 5]"),
            "{e}"
        );
        assert!(LSTM::new(2).dropout(1.0).is_err());
        assert!(SimpleRNN::new(2).recurrent_activation("sigmoid").is_err());
        assert_eq!(
            l.compute_output_shape(&[7, 3]).unwrap(),
            vec![2],
            "the last output"
        );
    }

    /// LSTM's `unit_forget_bias`: the forget block of the bias starts at 1.
    #[test]
    fn lstm_forget_bias_starts_at_one() {
        let mut l = LSTM::new(2);
        l.build(&[3, 1]).unwrap();
        let b = l.variables()[2].value().to_vec1::<f32>().unwrap();
        assert_eq!(b, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let mut g = GRU::new(2);
        g.build(&[3, 1]).unwrap();
        assert_eq!(g.variables()[2].shape().dims(), &[2, 6]);
    }
}
