//! The functional API: `Input`, layers applied to symbolic tensors, and a model from inputs to
//! outputs (several of each allowed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Tensor;

use super::Model;
use crate::data::Data;
use crate::layers::{Layer, LayerSummary, check_input, unique_name};
use crate::tape::Variable;
use crate::{Error, Result};

/// A layer that can be applied to several symbolic tensors and share its weights
/// (Keras's shared layers).
///
/// ```
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let shared = SharedLayer::new(Dense::new(4));
/// let a = Input::new(&[3]);
/// let b = Input::new(&[3]);
/// let (ya, yb) = (shared.apply(&a)?, shared.apply(&b)?);
/// let model = Functional::new(&[a, b], &[ya, yb])?;
/// assert_eq!(model.variables().len(), 2); // one kernel, one bias, shared
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedLayer(Arc<Mutex<Box<dyn Layer>>>);

impl SharedLayer {
    /// Wraps a layer for use in a functional graph.
    pub fn new(layer: impl Layer + 'static) -> Self {
        SharedLayer(Arc::new(Mutex::new(Box::new(layer))))
    }

    /// Locks the layer.
    pub fn lock(&self) -> MutexGuard<'_, Box<dyn Layer>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the layer to one symbolic tensor: builds it and infers the output shape.
    ///
    /// # Errors
    /// An input shape the layer cannot take.
    pub fn apply(&self, x: &KerasTensor) -> Result<KerasTensor> {
        self.apply_many(std::slice::from_ref(x))
    }

    /// Applies the layer to several symbolic tensors (`Concatenate`, `Add`).
    ///
    /// # Errors
    /// Inputs the layer cannot take.
    pub fn apply_many(&self, xs: &[KerasTensor]) -> Result<KerasTensor> {
        let shapes: Vec<Vec<usize>> = xs.iter().map(|x| x.shape.clone()).collect();
        let shape = {
            let mut layer = self.lock();
            if let [s] = shapes.as_slice() {
                layer.build(s)?;
            }
            layer.compute_output_shape_many(&shapes)?
        };
        Ok(KerasTensor {
            shape,
            node: Arc::new(Node::Layer {
                layer: self.clone(),
                inputs: xs.to_vec(),
            }),
        })
    }

    fn ptr(&self) -> usize {
        Arc::as_ptr(&self.0) as *const () as usize
    }
}

/// Applying a layer to symbolic tensors, Keras's `layer(x)` on a `KerasTensor`.
pub trait LayerExt: Layer + Sized + 'static {
    /// Applies a new layer to one symbolic tensor.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// let y = Dense::new(1).apply(&Input::new(&[32])).unwrap();
    /// assert_eq!(y.shape(), &[1]);
    /// ```
    ///
    /// # Errors
    /// An input shape the layer cannot take.
    fn apply(self, x: &KerasTensor) -> Result<KerasTensor> {
        SharedLayer::new(self).apply(x)
    }
    /// Applies a new layer to several symbolic tensors.
    ///
    /// # Errors
    /// Inputs the layer cannot take.
    fn apply_many(self, xs: &[KerasTensor]) -> Result<KerasTensor> {
        SharedLayer::new(self).apply_many(xs)
    }
}

impl<L: Layer + Sized + 'static> LayerExt for L {}

enum Node {
    Input {
        name: String,
    },
    Layer {
        layer: SharedLayer,
        inputs: Vec<KerasTensor>,
    },
}

/// A symbolic tensor: a shape (batch axis excluded) and how it is computed.
#[derive(Clone)]
pub struct KerasTensor {
    shape: Vec<usize>,
    node: Arc<Node>,
}

impl std::fmt::Debug for KerasTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KerasTensor(shape={})",
            super::summary::shape_str(&self.shape)
        )
    }
}

impl KerasTensor {
    /// The shape without the batch axis.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn id(&self) -> usize {
        Arc::as_ptr(&self.node) as usize
    }
}

/// Keras's `keras.Input(shape=...)`: the symbolic input of a functional model.
pub struct Input;

impl Input {
    /// A symbolic input of `shape` (batch axis excluded), named `input_layer`, `input_layer_1`, ...
    ///
    /// ```
    /// let x = ferrokeras::model::Input::new(&[28, 28, 1]);
    /// assert_eq!(x.shape(), &[28, 28, 1]);
    /// ```
    #[allow(clippy::new_ret_no_self)]
    pub fn new(shape: &[usize]) -> KerasTensor {
        Self::named(shape, unique_name("input_layer"))
    }
    /// A named symbolic input.
    pub fn named(shape: &[usize], name: impl Into<String>) -> KerasTensor {
        KerasTensor {
            shape: shape.to_vec(),
            node: Arc::new(Node::Input { name: name.into() }),
        }
    }
}

/// A model defined by a graph of layers from inputs to outputs (Keras's functional `Model`).
///
/// # Shapes
/// With one input, `call` takes a tensor; with several, a tuple in input order. With one output it
/// returns a tensor; with several, a tuple in output order.
///
/// ```
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let a = Input::new(&[4]);
/// let b = Input::new(&[2]);
/// let h = Concatenate::new().apply_many(&[a.clone(), b.clone()])?;
/// let out1 = Dense::new(1).apply(&h)?;
/// let out2 = Dense::new(3).activation("softmax")?.apply(&h)?;
/// let mut model = Functional::new(&[a, b], &[out1, out2])?;
/// let x = Data::from(vec![
///     candle_core::Tensor::ones((5, 4), candle_core::DType::F32, &candle_core::Device::Cpu)?,
///     candle_core::Tensor::ones((5, 2), candle_core::DType::F32, &candle_core::Device::Cpu)?,
/// ]);
/// let y = model.call(&x, false)?;
/// assert_eq!(y.flatten()[1].dims(), &[5, 3]);
/// # Ok(()) }
/// ```
pub struct Functional {
    name: String,
    inputs: Vec<KerasTensor>,
    outputs: Vec<KerasTensor>,
    /// Layer nodes in execution order.
    order: Vec<KerasTensor>,
    layers: Vec<SharedLayer>,
}

impl Functional {
    /// Builds the model from its symbolic inputs and outputs.
    ///
    /// # Errors
    /// An output that depends on an input not listed ("graph disconnected"), or no input/output.
    pub fn new(inputs: &[KerasTensor], outputs: &[KerasTensor]) -> Result<Self> {
        if inputs.is_empty() || outputs.is_empty() {
            return Err(Error::value(format!(
                "a functional model needs at least one input and one output; received {} inputs and {} outputs",
                inputs.len(),
                outputs.len()
            )));
        }
        for i in inputs {
            if !matches!(*i.node, Node::Input { .. }) {
                return Err(Error::value(
                    "All `inputs` of a functional model must come from `Input::new`; received the output of a layer",
                ));
            }
        }
        let mut order = Vec::new();
        let mut seen = HashMap::new();
        for o in outputs {
            visit(o, inputs, &mut seen, &mut order)?;
        }
        let mut layers: Vec<SharedLayer> = Vec::new();
        for t in &order {
            if let Node::Layer { layer, .. } = &*t.node
                && !layers.iter().any(|l| l.ptr() == layer.ptr())
            {
                layers.push(layer.clone());
            }
        }
        Ok(Self {
            name: unique_name("functional"),
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            order,
            layers,
        })
    }

    /// Sets the name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The layers, in the order they first run.
    pub fn layers(&self) -> &[SharedLayer] {
        &self.layers
    }

    /// The forward pass (same as [`Model::call`]; here so that it resolves with both the `Layer`
    /// and `Model` traits in scope).
    ///
    /// # Errors
    /// Inputs of the wrong structure or shape.
    pub fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        Model::call(self, x, training)
    }

    /// Every variable, trainable first (same as [`Model::variables`]).
    pub fn variables(&self) -> Vec<Variable> {
        Model::variables(self)
    }

    /// The variables that gradients update.
    pub fn trainable_variables(&self) -> Vec<Variable> {
        Model::trainable_variables(self)
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The forward pass on tensors (one per input); returns one tensor per output.
    ///
    /// # Errors
    /// A wrong number of inputs, or inputs of the wrong shape.
    pub fn call_tensors(&mut self, xs: &[Tensor], training: bool) -> Result<Vec<Tensor>> {
        if xs.len() != self.inputs.len() {
            return Err(Error::value(format!(
                "model \"{}\" expects {} input(s), received {}",
                self.name,
                self.inputs.len(),
                xs.len()
            )));
        }
        let mut values: HashMap<usize, Tensor> = HashMap::new();
        for (k, x) in self.inputs.iter().zip(xs) {
            let name = match &*k.node {
                Node::Input { name } => name.as_str(),
                Node::Layer { .. } => "input",
            };
            check_input(name, x, &k.shape)
                .map_err(|e| Error::value(format!("model \"{}\": {e}", self.name)))?;
            values.insert(k.id(), x.clone());
        }
        for t in &self.order {
            if let Node::Layer { layer, inputs } = &*t.node {
                let args: Vec<Tensor> = inputs
                    .iter()
                    .map(|i| {
                        values.get(&i.id()).cloned().ok_or_else(|| {
                            Error::state("internal: functional graph evaluated out of order")
                        })
                    })
                    .collect::<Result<_>>()?;
                let out = layer.lock().call_many(&args, training)?;
                values.insert(t.id(), out);
            }
        }
        self.outputs
            .iter()
            .map(|o| {
                values
                    .get(&o.id())
                    .cloned()
                    .ok_or_else(|| Error::state("internal: functional output not computed"))
            })
            .collect()
    }
}

fn visit(
    t: &KerasTensor,
    inputs: &[KerasTensor],
    seen: &mut HashMap<usize, ()>,
    order: &mut Vec<KerasTensor>,
) -> Result<()> {
    if seen.contains_key(&t.id()) {
        return Ok(());
    }
    match &*t.node {
        Node::Input { name } => {
            if !inputs.iter().any(|i| i.id() == t.id()) {
                return Err(Error::value(format!(
                    "Graph disconnected: cannot find the value of input \"{name}\" (shape {}). It is used by the outputs but was not passed in `inputs`.",
                    super::summary::shape_str(&t.shape)
                )));
            }
        }
        Node::Layer { inputs: args, .. } => {
            for a in args {
                visit(a, inputs, seen, order)?;
            }
        }
    }
    seen.insert(t.id(), ());
    order.push(t.clone());
    Ok(())
}

impl Model for Functional {
    fn named_variables(&self) -> Vec<(String, Variable)> {
        super::structural_names(self.layers.iter().map(|l| {
            let l = l.lock();
            (l.name().to_string(), l.variables())
        }))
    }
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        let xs: Vec<Tensor> = match x {
            Data::Tensor(t) => vec![t.clone()],
            other => other.flatten().into_iter().cloned().collect(),
        };
        let mut ys = self.call_tensors(&xs, training)?;
        Ok(if ys.len() == 1 {
            Data::Tensor(ys.remove(0))
        } else {
            Data::from(ys)
        })
    }
    fn variables(&self) -> Vec<Variable> {
        let all: Vec<Variable> = self
            .layers
            .iter()
            .flat_map(|l| l.lock().variables())
            .collect();
        let (mut t, n): (Vec<_>, Vec<_>) = all.into_iter().partition(Variable::trainable);
        t.extend(n);
        t
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.extend(l.lock().losses()?);
        }
        Ok(out)
    }
    fn summary_rows(&self) -> Vec<LayerSummary> {
        let mut rows: Vec<LayerSummary> = self
            .inputs
            .iter()
            .map(|i| LayerSummary {
                name: match &*i.node {
                    Node::Input { name } => format!("{name} (InputLayer)"),
                    Node::Layer { .. } => String::new(),
                },
                output_shape: i.shape.clone(),
                params: 0,
            })
            .collect();
        let mut done: Vec<usize> = Vec::new();
        for t in &self.order {
            if let Node::Layer { layer, .. } = &*t.node {
                if done.contains(&layer.ptr()) {
                    continue;
                }
                done.push(layer.ptr());
                let l = layer.lock();
                rows.push(LayerSummary {
                    name: format!("{} ({})", l.name(), l.class_name()),
                    output_shape: t.shape.clone(),
                    params: l.count_params(),
                });
            }
        }
        rows
    }
}

impl Layer for Functional {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Functional"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        let mut ys = self.call_tensors(std::slice::from_ref(x), training)?;
        if ys.len() != 1 {
            return Err(Error::value(format!(
                "model \"{}\" has {} outputs; use it as a layer only with one output",
                self.name,
                ys.len()
            )));
        }
        Ok(ys.remove(0))
    }
    fn compute_output_shape(&self, _input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(self.outputs[0].shape.clone())
    }
    fn variables(&self) -> Vec<Variable> {
        Model::variables(self)
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        Model::losses(self)
    }
}
