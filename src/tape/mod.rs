//! Variables and gradients: the `tf.Variable` / `tf.GradientTape` of ferrokeras.
//!
//! A [`Variable`] is a named, mutable tensor (`"dense/kernel"`). Every operation on a variable is
//! recorded, so [`GradientTape::gradient`] can return the gradient of a scalar loss with respect to any
//! list of variables, as `tape.gradient(loss, vars)` does in Keras. [`stop_gradient`] cuts the record.
//! This module is the only one that touches candle's backpropagation internals.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::{DType, Shape, Tensor, TensorId, Var};

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
    /// Set by [`Variable::set_trainable`] (Keras's `layer.trainable = False`), shared by every
    /// clone of the variable.
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Variable({}, shape={:?}, trainable={})",
            self.name,
            self.var.dims(),
            self.trainable()
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
            frozen: Arc::default(),
        })
    }
    /// The structural name, e.g. `"dense_1/kernel"`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Whether optimizers update it: `false` for BatchNormalization's moving statistics, and for
    /// a variable frozen with [`Variable::set_trainable`].
    pub fn trainable(&self) -> bool {
        self.trainable && !self.frozen.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Freezes (`false`) or unfreezes (`true`) the variable, for every clone of it (the layer's,
    /// the model's): a frozen variable is left out of `trainable_variables`, so `fit` does not
    /// update it, and counts as non-trainable in `summary`. A variable created non-trainable
    /// (moving statistics) stays so. See [`crate::layers::Layer::set_trainable`].
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::Variable;
    /// let v = Variable::new("w", &Tensor::new(&[1f32], &Device::Cpu).unwrap(), true).unwrap();
    /// let same = v.clone();
    /// v.set_trainable(false);
    /// assert!(!same.trainable());
    /// v.set_trainable(true);
    /// assert!(same.trainable());
    /// ```
    pub fn set_trainable(&self, trainable: bool) {
        self.frozen
            .store(!trainable, std::sync::atomic::Ordering::Relaxed);
    }
    /// Whether [`Variable::set_trainable`] froze it (a variable created non-trainable, such as a
    /// moving statistic, is frozen only when its layer is).
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(std::sync::atomic::Ordering::Relaxed)
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
    /// `apply` simple and give the same update for SGD without momentum). A variable listed twice
    /// gets its gradient twice. As in TensorFlow, only the gradients asked for are computed: this
    /// crate's layers skip the kernel and bias gradients of variables not in `sources`.
    ///
    /// # Errors
    /// A failing backward operation.
    pub fn gradient(target: &Tensor, sources: &[Variable]) -> Result<Vec<Tensor>> {
        let target = if target.rank() > 0 {
            target.sum_all()?
        } else {
            target.clone()
        };
        let wanted = sources.iter().map(|v| v.as_tensor().id()).collect();
        let (store, direct) = {
            let _collect = Collecting::start(wanted);
            let store = target.backward();
            (store, DIRECT.with(|d| d.borrow_mut().take()))
        };
        let store = store?;
        let direct = direct.map(|p| p.grads).unwrap_or_default();
        sources
            .iter()
            .map(|v| {
                let t = v.as_tensor();
                // A variable used by both kinds of op (a kernel in a Dense layer and in an L2
                // penalty) has a part in each place.
                match (store.get(t), direct.get(&t.id()).cloned()) {
                    (Some(a), Some(b)) => Ok((a + b)?),
                    (Some(g), None) => Ok(g.clone()),
                    (None, Some(g)) => Ok(g),
                    (None, None) => Ok(t.zeros_like()?),
                }
            })
            .collect()
    }
}

/// The backward pass of one [`GradientTape::gradient`] call.
struct Pass {
    /// Variables' gradients that this crate's ops handed over directly.
    grads: HashMap<TensorId, Tensor>,
    /// The variables whose gradients were asked for.
    wanted: HashSet<TensorId>,
}

thread_local! {
    /// The backward pass now running on this thread (`None` when no
    /// [`GradientTape::gradient`] is running).
    static DIRECT: RefCell<Option<Pass>> = const { RefCell::new(None) };
}

/// Opens the direct gradient store for one backward pass and restores the previous one (a
/// backward pass inside an op's backward) when dropped, on error too.
struct Collecting(Option<Pass>);

impl Collecting {
    fn start(wanted: HashSet<TensorId>) -> Self {
        let pass = Pass {
            grads: HashMap::new(),
            wanted,
        };
        Collecting(DIRECT.with(|d| d.borrow_mut().replace(pass)))
    }
}

/// Whether the backward pass now running needs the gradient of the op argument `arg`: `arg` is
/// recorded, and it is not a variable left out of the [`GradientTape::gradient`] call's sources.
///
/// A variable is a leaf, so a gradient that was not asked for is read by nothing: as
/// `tf.GradientTape`, which differentiates only along paths to its sources, this crate's ops
/// skip it (a GAN's generator step asks for the generator's variables, and the
/// discriminator's kernel gradients would cost as much as its input gradients). Outside the tape
/// (candle's own `backward`) every recorded argument gets its gradient.
pub(crate) fn wanted(arg: &Tensor) -> bool {
    if !arg.track_op() {
        return false;
    }
    if !arg.is_variable() {
        return true;
    }
    DIRECT.with(|d| {
        d.borrow()
            .as_ref()
            .is_none_or(|p| p.wanted.contains(&arg.id()))
    })
}

impl Drop for Collecting {
    fn drop(&mut self) {
        let previous = self.0.take();
        DIRECT.with(|d| *d.borrow_mut() = previous);
    }
}

/// What this crate's ops return to candle for the gradient `g` of their argument `arg`, in
/// `arg`'s shape.
///
/// candle's backward pass adds every gradient into a zero tensor of the argument's shape, even
/// the first: for a Dense kernel that is a fresh zeroed buffer and a second pass over the
/// gradient, every step. A variable is a leaf (nothing upstream reads its gradient), so while
/// [`GradientTape::gradient`] runs, an op hands a variable's gradient straight to the tape
/// (summed with any earlier one) and returns `None` to candle. Anything else, and every call
/// outside the tape (a user calling candle's `backward` directly), goes through candle as usual.
pub(crate) fn route(arg: &Tensor, g: Option<Tensor>) -> candle_core::Result<Option<Tensor>> {
    let Some(g) = g else { return Ok(None) };
    // The ops read arguments as flat rows (a kernel as its matrix); candle adds gradients of
    // the argument's own shape.
    let g = if g.dims() == arg.dims() {
        g
    } else {
        g.reshape(arg.shape())?
    };
    if !arg.is_variable() {
        return Ok(Some(g));
    }
    DIRECT.with(|d| {
        let mut d = d.borrow_mut();
        let Some(pass) = d.as_mut() else {
            return Ok(Some(g));
        };
        if !pass.wanted.contains(&arg.id()) {
            return Ok(None);
        }
        match pass.grads.entry(arg.id()) {
            Entry::Occupied(mut e) => {
                let sum = (e.get() + &g)?;
                e.insert(sum);
            }
            Entry::Vacant(e) => {
                e.insert(g);
            }
        }
        Ok(None)
    })
}

/// The gradients of a [`node`]'s arguments, from the gradient of its output, the output, and
/// which arguments need one ([`wanted`]; the others' places are read as `None`).
pub(crate) type NodeBackward =
    dyn Fn(&Tensor, &Tensor, &[bool]) -> candle_core::Result<Vec<Option<Tensor>>> + Send + Sync;

/// One node of the recorded graph for a computation done outside it: `value` was computed from
/// `args` (one to three) on detached tensors, and `backward` gives, from the gradient of the
/// output, the output itself and which arguments need a gradient ([`wanted`], read when the
/// backward pass runs), one gradient (or `None`) per argument. The node runs the value's last
/// op itself ([`NodeValue`]: an activation's selection, a bias's addition, ..., or a contiguous
/// copy, which turns a strided view such as an NCHW to NHWC permutation into the output at no
/// extra cost), and lets go of the value's tensors once it has run.
///
/// What this saves off the CPU: candle's backward pass adds every gradient into a fresh zero
/// tensor of its argument's shape (two kernels per edge of the graph), so a layer built from
/// candle ops (layout changes, pads, reshapes, a broadcast bias) pays for each of them in the
/// backward pass, views included. As one node it pays once, for its input; its variables'
/// gradients reach the tape directly ([`route`]).
pub(crate) fn node(
    args: &[&Tensor],
    value: impl Into<NodeValue>,
    backward: impl Fn(&Tensor, &Tensor, &[bool]) -> candle_core::Result<Vec<Option<Tensor>>>
    + Send
    + Sync
    + 'static,
) -> Result<Tensor> {
    let value = value.into();
    if !args.iter().any(|a| a.track_op()) {
        return value.materialize();
    }
    let op = Node {
        value: std::sync::Mutex::new(Some(value)),
        arity: args.len(),
        backward: Arc::new(backward),
    };
    Ok(match *args {
        [a] => a.apply_op1(op)?,
        [a, b] => a.apply_op2(b, op)?,
        [a, b, c] => a.apply_op3(b, c, op)?,
        _ => {
            return Err(Error::value(format!(
                "a graph node takes one to three arguments, received {}",
                args.len()
            )));
        }
    })
}

/// A [`node`]'s output, from tensors computed on detached tensors: the last op of the
/// computation, which the node runs itself, so that its output is that op's result rather than
/// a copy of it (one kernel and one buffer fewer per node off the CPU).
pub(crate) enum NodeValue {
    /// A contiguous copy of the tensor (a strided view, such as a permutation, becomes that copy).
    Copy(Tensor),
    /// `mask ? on_true : on_false` (`mask` u8), all of one shape.
    Where(Tensor, Tensor, Tensor),
    /// `a + b`, of one shape and dtype (either may be a broadcast view).
    Add(Tensor, Tensor),
    /// The elementwise maximum of `a` and `b`, of one shape and dtype.
    Max(Tensor, Tensor),
    /// The elementwise minimum of `a` and `b`, of one shape and dtype.
    Min(Tensor, Tensor),
    /// An elementwise op of one tensor.
    Unary(Unary, Tensor),
}

/// The elementwise ops that [`NodeValue::Unary`] runs.
#[derive(Clone, Copy)]
pub(crate) enum Unary {
    Relu,
    Tanh,
    Recip,
    Neg,
}

impl From<&Tensor> for NodeValue {
    fn from(t: &Tensor) -> Self {
        NodeValue::Copy(t.detach())
    }
}

impl NodeValue {
    /// `mask ? on_true : on_false`.
    ///
    /// # Errors
    /// Tensors of different shapes, or values of different dtypes.
    pub(crate) fn select(mask: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Self> {
        same_shape("select", &[mask, on_true, on_false])?;
        same_dtype("select", on_true, on_false)?;
        Ok(NodeValue::Where(
            mask.detach(),
            on_true.detach(),
            on_false.detach(),
        ))
    }

    /// `a + b`; `b` broadcast to `a`'s shape.
    ///
    /// # Errors
    /// A `b` that does not broadcast to `a`, or of another dtype.
    pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Self> {
        same_dtype("add", a, b)?;
        Ok(NodeValue::Add(
            a.detach(),
            b.broadcast_as(a.shape())?.detach(),
        ))
    }

    /// The elementwise maximum (`max`) or minimum of `a` and `b`.
    ///
    /// # Errors
    /// Tensors of different shapes or dtypes.
    pub(crate) fn extremum(max: bool, a: &Tensor, b: &Tensor) -> Result<Self> {
        same_shape(if max { "maximum" } else { "minimum" }, &[a, b])?;
        same_dtype(if max { "maximum" } else { "minimum" }, a, b)?;
        let (a, b) = (a.detach(), b.detach());
        Ok(if max {
            NodeValue::Max(a, b)
        } else {
            NodeValue::Min(a, b)
        })
    }

    /// The elementwise `op` of `t`.
    pub(crate) fn unary(op: Unary, t: &Tensor) -> Self {
        NodeValue::Unary(op, t.detach())
    }

    /// The output with candle's tensor ops (nothing recorded).
    fn materialize(&self) -> Result<Tensor> {
        Ok(match self {
            NodeValue::Copy(t) => t.contiguous()?,
            NodeValue::Where(m, a, b) => m.where_cond(a, b)?,
            NodeValue::Add(a, b) => (a + b)?,
            NodeValue::Max(a, b) => a.maximum(b)?,
            NodeValue::Min(a, b) => a.minimum(b)?,
            NodeValue::Unary(Unary::Relu, t) => t.relu()?,
            NodeValue::Unary(Unary::Tanh, t) => t.tanh()?,
            NodeValue::Unary(Unary::Recip, t) => t.recip()?,
            NodeValue::Unary(Unary::Neg, t) => t.neg()?,
        })
    }

    /// The output on the storage of the device the op runs on: candle's own storage ops, as
    /// its tensor ops call them.
    fn run<S>(
        &self,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)>
    where
        S: candle_core::backend::BackendStorage,
        S::Device: candle_core::backend::BackendDevice<Storage = S>,
    {
        use candle_core::backend::BackendDevice;
        use candle_core::op;
        match self {
            NodeValue::Copy(t) => {
                let (st, l) = t.storage_and_layout();
                let src = pick(&st).ok_or_else(other_device)?;
                // SAFETY: `copy_strided_src` writes every element of the new buffer.
                let mut dst = unsafe { src.device().alloc_uninit(l.shape(), src.dtype())? };
                src.copy_strided_src(&mut dst, 0, l)?;
                Ok((dst, l.shape().clone()))
            }
            NodeValue::Where(m, a, b) => {
                let ((sm, lm), (sa, la), (sb, lb)) = (
                    m.storage_and_layout(),
                    a.storage_and_layout(),
                    b.storage_and_layout(),
                );
                let (pm, pa, pb) = (pick(&sm), pick(&sa), pick(&sb));
                let (Some(pm), Some(pa), Some(pb)) = (pm, pa, pb) else {
                    return Err(other_device());
                };
                Ok((pm.where_cond(lm, pa, la, pb, lb)?, lm.shape().clone()))
            }
            NodeValue::Add(a, b) | NodeValue::Max(a, b) | NodeValue::Min(a, b) => {
                let ((sa, la), (sb, lb)) = (a.storage_and_layout(), b.storage_and_layout());
                let (Some(pa), Some(pb)) = (pick(&sa), pick(&sb)) else {
                    return Err(other_device());
                };
                let out = match self {
                    NodeValue::Max(..) => pa.binary_impl::<op::Maximum>(pb, la, lb)?,
                    NodeValue::Min(..) => pa.binary_impl::<op::Minimum>(pb, la, lb)?,
                    _ => pa.binary_impl::<op::Add>(pb, la, lb)?,
                };
                Ok((out, la.shape().clone()))
            }
            NodeValue::Unary(u, t) => {
                let (st, l) = t.storage_and_layout();
                let src = pick(&st).ok_or_else(other_device)?;
                let out = match u {
                    Unary::Relu => src.unary_impl::<op::Relu>(l)?,
                    Unary::Tanh => src.unary_impl::<op::Tanh>(l)?,
                    Unary::Recip => src.unary_impl::<op::Recip>(l)?,
                    Unary::Neg => src.unary_impl::<op::Neg>(l)?,
                };
                Ok((out, l.shape().clone()))
            }
        }
    }
}

fn other_device() -> candle_core::Error {
    candle_core::Error::Msg("a graph node's value is on another device".into())
}

fn same_shape(op: &str, ts: &[&Tensor]) -> Result<()> {
    if ts.windows(2).any(|w| w[0].dims() != w[1].dims()) {
        let shapes: Vec<_> = ts.iter().map(|t| format!("{:?}", t.dims())).collect();
        return Err(Error::value(format!(
            "a graph node's {op} needs tensors of one shape, received {}",
            shapes.join(", ")
        )));
    }
    Ok(())
}

fn same_dtype(op: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::value(format!(
            "a graph node's {op} needs values of one dtype, received {:?} and {:?}",
            a.dtype(),
            b.dtype()
        )));
    }
    Ok(())
}

struct Node {
    value: std::sync::Mutex<Option<NodeValue>>,
    arity: usize,
    backward: Arc<NodeBackward>,
}

impl Node {
    /// The output, on the storage of the device the op runs on ([`NodeValue::run`]); the node lets
    /// go of the value's tensors once it has run.
    fn fwd<S>(
        &self,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)>
    where
        S: candle_core::backend::BackendStorage,
        S::Device: candle_core::backend::BackendDevice<Storage = S>,
    {
        let value = self
            .value
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("a graph node runs once".into()))?;
        value.run(pick)
    }

    fn grads(
        &self,
        args: &[&Tensor],
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let needs: Vec<bool> = args.iter().map(|a| wanted(a)).collect();
        // The output as a value: a backward formula that reads it (an activation's derivative)
        // must not record a graph of its own (a convolution of a recorded gradient would record
        // its op and copy its result, and every recorded result keeps its inputs alive).
        let gs = (self.backward)(grad, &res.detach(), &needs)?;
        if gs.len() != self.arity {
            return Err(candle_core::Error::Msg(format!(
                "a graph node's backward gave {} gradients for {} arguments",
                gs.len(),
                self.arity
            )));
        }
        args.iter()
            .zip(gs)
            .zip(needs)
            .map(|((a, g), need)| route(a, g.filter(|_| need)))
            .collect()
    }
}

fn cpu_of(s: &candle_core::Storage) -> Option<&candle_core::CpuStorage> {
    match s {
        candle_core::Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

#[cfg(feature = "cuda")]
fn cuda_of(s: &candle_core::Storage) -> Option<&candle_core::CudaStorage> {
    match s {
        candle_core::Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

/// The forward passes of [`Node`] for one, two and three arguments: the arguments' storages are
/// not read (the value holds the result).
macro_rules! node_op {
    ($trait:ident, ($($arg:ident),+), ($($store:ident, $lay:ident),+)) => {
        impl candle_core::$trait for Node {
            fn name(&self) -> &'static str {
                "ferrokeras-node"
            }
            fn cpu_fwd(
                &self,
                $($store: &candle_core::CpuStorage, $lay: &candle_core::Layout),+
            ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
                $(let _ = ($store, $lay);)+
                self.fwd(cpu_of)
            }
            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                $($store: &candle_core::CudaStorage, $lay: &candle_core::Layout),+
            ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
                $(let _ = ($store, $lay);)+
                self.fwd(cuda_of)
            }
            node_op!(@bwd $($arg),+);
        }
    };
    (@bwd $a:ident) => {
        fn bwd(&self, $a: &Tensor, r: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
            Ok(self.grads(&[$a], r, g)?.pop().flatten())
        }
    };
    (@bwd $a:ident, $b:ident) => {
        fn bwd(
            &self,
            $a: &Tensor,
            $b: &Tensor,
            r: &Tensor,
            g: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
            let mut gs = self.grads(&[$a, $b], r, g)?.into_iter();
            Ok((gs.next().flatten(), gs.next().flatten()))
        }
    };
    (@bwd $a:ident, $b:ident, $c:ident) => {
        fn bwd(
            &self,
            $a: &Tensor,
            $b: &Tensor,
            $c: &Tensor,
            r: &Tensor,
            g: &Tensor,
        ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let mut gs = self.grads(&[$a, $b, $c], r, g)?.into_iter();
            Ok((gs.next().flatten(), gs.next().flatten(), gs.next().flatten()))
        }
    };
}
node_op!(CustomOp1, (a), (s1, l1));
node_op!(CustomOp2, (a, b), (s1, l1, s2, l2));
node_op!(CustomOp3, (a, b, c), (s1, l1, s2, l2, s3, l3));

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::elementwise::Act;
    use candle_core::Device;

    fn var(name: &str, shape: &[usize], seed: f32) -> Variable {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
        let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
        Variable::new(name, &t, true).unwrap()
    }

    /// A node's output is the contiguous copy of its value (here a transposed view), and its
    /// backward's gradients reach a tracked input (through candle) and a variable (through the
    /// tape, or candle's store when candle's own backward runs): the gradients of the same
    /// computation written with candle's ops.
    #[test]
    fn a_node_gives_the_gradients_of_the_same_ops() {
        let (v, w) = (var("v", &[3, 4], 1.0), var("w", &[3, 4], 2.0));
        let u = var("u", &[4, 3], 3.0).value();
        let via_node = || {
            let x = (v.as_tensor() * 2.0).unwrap();
            let value = (x.detach() * w.as_tensor().detach()).unwrap().t().unwrap();
            let (xd, wd) = (x.detach(), w.as_tensor().detach());
            let y = node(&[&x, w.as_tensor()], &value, move |g, _, _| {
                let g = g.t()?;
                Ok(vec![Some((&g * &wd)?), Some((&g * &xd)?)])
            })
            .unwrap();
            assert!(y.is_contiguous());
            (y * &u).unwrap().sum_all().unwrap()
        };
        let via_ops = || {
            let x = (v.as_tensor() * 2.0).unwrap();
            let y = (x * w.as_tensor()).unwrap().t().unwrap();
            (y * &u).unwrap().sum_all().unwrap()
        };
        let vars = [v.clone(), w.clone()];
        let ours = GradientTape::gradient(&via_node(), &vars).unwrap();
        let want = GradientTape::gradient(&via_ops(), &vars).unwrap();
        for (g, e) in ours.iter().zip(&want) {
            assert_eq!(g.to_vec2::<f32>().unwrap(), e.to_vec2::<f32>().unwrap());
        }
        let store = via_node().backward().unwrap();
        let g = store.get(w.as_tensor()).expect("the variable's gradient");
        assert_eq!(
            g.to_vec2::<f32>().unwrap(),
            want[1].to_vec2::<f32>().unwrap()
        );
        // Nothing tracked: the value itself, contiguous.
        let c = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        let y = node(&[&c], &c.t().unwrap(), |_, _, _| Ok(vec![None])).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 3.0], vec![2.0, 4.0]]
        );
    }

    /// A kernel used twice by the crate's Dense op (its gradients handed to the tape directly)
    /// and once by candle's ops (an L2 penalty, through candle's store), a bias used by the fused
    /// bias op, and a variable nothing uses: the same gradients as candle's own ops give.
    #[test]
    fn directly_handed_gradients_add_up_with_candle_ones() {
        let x = Tensor::from_vec(
            (0..24).map(|i| (i as f32 * 0.11).cos()).collect(),
            (4, 6),
            &Device::Cpu,
        )
        .unwrap();
        let (w, b, unused) = (
            var("w", &[6, 6], 1.0),
            var("b", &[6], 2.0),
            var("u", &[3], 3.0),
        );
        let loss_ours = || {
            let h = crate::kernels::linear::linear(&x, w.as_tensor()).unwrap();
            let h = crate::kernels::elementwise::bias_activation(&h, b.as_tensor(), Act::Relu)
                .unwrap()
                .unwrap();
            let h = crate::kernels::linear::linear(&h, w.as_tensor()).unwrap();
            (h.sqr().unwrap().sum_all().unwrap()
                + (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap())
            .unwrap()
        };
        let loss_candle = || {
            let h = x.matmul(w.as_tensor()).unwrap();
            let h = h.broadcast_add(b.as_tensor()).unwrap().relu().unwrap();
            let h = h.matmul(w.as_tensor()).unwrap();
            (h.sqr().unwrap().sum_all().unwrap()
                + (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap())
            .unwrap()
        };
        let vars = [w.clone(), b.clone(), unused.clone()];
        let ours = GradientTape::gradient(&loss_ours(), &vars).unwrap();
        let want = GradientTape::gradient(&loss_candle(), &vars).unwrap();
        for (g, e) in ours.iter().zip(&want) {
            let d = crate::kernels::max_rel(g, e);
            assert!(d < 1e-5, "relative difference {d}");
        }
        assert_eq!(ours[2].to_vec1::<f32>().unwrap(), vec![0.0; 3]);
        // Nothing is left behind for the next pass, and candle's own backward (no tape running)
        // still finds the variables' gradients in its store.
        assert!(DIRECT.with(|d| d.borrow().is_none()));
        let store = loss_ours().backward().unwrap();
        let g = store.get(w.as_tensor()).expect("the kernel's gradient");
        assert!(crate::kernels::max_rel(g, &want[0]) < 1e-5);
    }

    /// A graph node is told which arguments need a gradient when the backward pass runs: not a
    /// variable that the tape was not asked for (a GAN's generator step skips the
    /// discriminator's kernel gradients), always a recorded intermediate; every argument under
    /// candle's own `backward`.
    #[test]
    fn a_node_computes_only_the_gradients_asked_for() {
        let (v, w) = (var("v", &[2, 3], 1.0), var("w", &[2, 3], 2.0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let loss = || {
            let x = (v.as_tensor() * 2.0).unwrap();
            let (xd, wd) = (x.detach(), w.as_tensor().detach());
            let value = (&xd * &wd).unwrap();
            let seen = seen.clone();
            node(&[&x, w.as_tensor()], &value, move |g, _, needs| {
                seen.lock().unwrap().push(needs.to_vec());
                Ok(vec![
                    needs[0].then(|| g * &wd).transpose()?,
                    needs[1].then(|| g * &xd).transpose()?,
                ])
            })
            .unwrap()
            .sum_all()
            .unwrap()
        };
        let both = GradientTape::gradient(&loss(), &[v.clone(), w.clone()]).unwrap();
        let only_v = GradientTape::gradient(&loss(), std::slice::from_ref(&v)).unwrap();
        let only_w = GradientTape::gradient(&loss(), std::slice::from_ref(&w)).unwrap();
        loss().backward().unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                vec![true, true],
                vec![true, false],
                vec![true, true],
                vec![true, true]
            ]
        );
        assert_eq!(
            only_v[0].to_vec2::<f32>().unwrap(),
            both[0].to_vec2::<f32>().unwrap()
        );
        assert_eq!(
            only_w[0].to_vec2::<f32>().unwrap(),
            both[1].to_vec2::<f32>().unwrap()
        );
        // A gradient that a node gives for a variable not asked for is dropped, not summed into
        // the one that was asked for.
        let g = GradientTape::gradient(&loss(), std::slice::from_ref(&v)).unwrap();
        assert_eq!(
            g[0].to_vec2::<f32>().unwrap(),
            both[0].to_vec2::<f32>().unwrap()
        );
    }

    /// Through a stack of Conv2DTranspose, Conv2D and Dense layers, on our CPU kernels and on
    /// the other devices' path: the gradients of any subset of the variables (each one alone, each
    /// layer's together) are those of the same variables when all are asked for, to the bit.
    #[test]
    fn a_subset_of_the_variables_gets_the_same_gradients() {
        use crate::layers::{Conv2D, Conv2DTranspose, Dense, Layer};
        let rand = |shape: &[usize], seed: u64| {
            crate::random::uniform_from(seed, shape, -1.0, 1.0, &Device::Cpu).unwrap()
        };
        for generic in [false, true] {
            crate::kernels::FORCE.with(|f| f.set(generic));
            let mut layers: Vec<Box<dyn Layer>> = vec![
                Box::new(
                    Conv2DTranspose::new(3, (4, 4))
                        .strides(2)
                        .padding("same")
                        .unwrap()
                        .activation("leaky_relu")
                        .unwrap(),
                ),
                Box::new(
                    Conv2D::new(4, (3, 3))
                        .strides(2)
                        .padding("same")
                        .unwrap()
                        .activation("relu")
                        .unwrap(),
                ),
                Box::new(Dense::new(2).activation("sigmoid").unwrap()),
            ];
            let x = Variable::new("x", &rand(&[2, 5, 6, 2], 7), true).unwrap();
            let mut h = x.as_tensor().clone();
            for l in layers.iter_mut() {
                h = l.call(&h, true).unwrap();
            }
            let loss = (&h * &rand(h.dims(), 8)).unwrap().sum_all().unwrap();
            // Each variable alone, then each layer's together.
            let groups: Vec<Vec<Variable>> = std::iter::once(x.clone())
                .chain(layers.iter().flat_map(|l| l.variables()))
                .map(|v| vec![v])
                .chain(layers.iter().map(|l| l.variables()))
                .collect();
            // Every variable twice: a source listed twice gets its gradient twice.
            let all: Vec<Variable> = groups.concat();
            let full = GradientTape::gradient(&loss, &all).unwrap();
            let mut at = 0;
            for group in &groups {
                let part = GradientTape::gradient(&loss, group).unwrap();
                for (i, g) in part.iter().enumerate() {
                    let (a, b) = (
                        g.flatten_all().unwrap(),
                        full[at + i].flatten_all().unwrap(),
                    );
                    assert_eq!(
                        a.to_vec1::<f32>().unwrap(),
                        b.to_vec1::<f32>().unwrap(),
                        "path generic={generic}: {}",
                        group[i].name()
                    );
                }
                at += group.len();
            }
            crate::kernels::FORCE.with(|f| f.set(false));
        }
    }

    /// Each kind of node value gives, as the node's output, what candle's tensor ops give for it
    /// (strided and broadcast views included), and the same without anything recorded.
    #[test]
    fn node_values_run_as_candle_ops() {
        let v = var("v", &[3, 4], 1.0);
        let a = v.value().t().unwrap(); // a (4, 3) view
        let b = (var("b", &[4, 3], 2.0).value() * 3.0).unwrap();
        let row = var("r", &[3], 3.0).value();
        let mask = a.gt(&crate::ops::zeros_view(&a).unwrap()).unwrap();
        let plus_one = (b.abs().unwrap() + 1.0).unwrap();
        let cases: Vec<(NodeValue, Tensor)> = vec![
            (NodeValue::from(&a), a.contiguous().unwrap()),
            (
                NodeValue::select(&mask, &a, &b).unwrap(),
                mask.where_cond(&a, &b).unwrap(),
            ),
            (
                NodeValue::add(&a, &row).unwrap(),
                a.broadcast_add(&row).unwrap(),
            ),
            (NodeValue::unary(Unary::Relu, &a), a.relu().unwrap()),
            (NodeValue::unary(Unary::Tanh, &a), a.tanh().unwrap()),
            (
                NodeValue::unary(Unary::Recip, &plus_one),
                plus_one.recip().unwrap(),
            ),
            (NodeValue::unary(Unary::Neg, &a), a.neg().unwrap()),
        ];
        for (i, (value, want)) in cases.into_iter().enumerate() {
            let plain = value.materialize().unwrap();
            let x = (v.as_tensor() * 1.0).unwrap();
            let y = node(&[&x], value, |g, _, _| Ok(vec![Some(g.t()?)])).unwrap();
            assert!(y.is_contiguous(), "case {i}");
            for got in [&y, &plain] {
                assert_eq!(
                    got.to_vec2::<f32>().unwrap(),
                    want.to_vec2::<f32>().unwrap(),
                    "case {i}"
                );
            }
            // The node is differentiated by its backward.
            let g = GradientTape::gradient(&y, std::slice::from_ref(&v)).unwrap();
            assert_eq!(g[0].dims(), &[3, 4]);
        }
        // Shapes or dtypes that do not go together are refused, with what was received.
        let e = NodeValue::select(&mask, &a, &row)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("[4, 3]") && e.contains("[3]"), "{e}");
        let e = NodeValue::add(&a, &a.to_dtype(DType::F64).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("F32") && e.contains("F64"), "{e}");
    }
}
