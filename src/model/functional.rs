//! The functional API: `Input`, layers applied to symbolic tensors, and a model from inputs to
//! outputs (several of each allowed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::Tensor;
use serde_json::{Value, json};

use super::Model;
use crate::data::Data;
use crate::layers::config::{ConfigReader, short};
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

    /// Wraps a boxed layer (e.g. from [`crate::layers::from_config`]) without boxing it again.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// let layer: Box<dyn Layer> = Box::new(Dense::new(2));
    /// let y = SharedLayer::from_box(layer).apply(&Input::new(&[3])).unwrap();
    /// assert_eq!(y.shape(), &[2]);
    /// ```
    pub fn from_box(layer: Box<dyn Layer>) -> Self {
        SharedLayer(Arc::new(Mutex::new(layer)))
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
            layer.build_many(&shapes)?;
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
    /// Every node (inputs and layer applications) in execution order.
    order: Box<[KerasTensor]>,
    /// The inputs and layers in Keras's order ([`keras_order`]), each by its first node.
    listed: Box<[KerasTensor]>,
    layers: Box<[SharedLayer]>,
    /// The masks of the last call's outputs ([`Model::output_mask`]).
    output_masks: Vec<Option<Tensor>>,
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
        let mut first_visit = HashMap::new();
        for o in outputs {
            visit(o, inputs, &mut seen, &mut first_visit, &mut order)?;
        }
        let listed = keras_order(&order, inputs, &first_visit);
        let layers: Vec<SharedLayer> = listed
            .iter()
            .filter_map(|t| match &*t.node {
                Node::Layer { layer, .. } => Some(layer.clone()),
                Node::Input { .. } => None,
            })
            .collect();
        // Saving, loading and per-output logs go by name: two layers may not share one.
        let mut names: Vec<String> = inputs
            .iter()
            .filter_map(|t| match &*t.node {
                Node::Input { name } => Some(name.clone()),
                Node::Layer { .. } => None,
            })
            .collect();
        names.extend(layers.iter().map(|l| l.lock().name().to_string()));
        for (i, n) in names.iter().enumerate() {
            let count = names.iter().filter(|m| *m == n).count();
            if count > 1 && !names[..i].contains(n) {
                return Err(Error::value(format!(
                    "The name \"{n}\" is used {count} times in the model. All layer names should be unique; rename one with `.named(...)`."
                )));
            }
        }
        Ok(Self {
            name: unique_name("functional"),
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            order: order.into(),
            listed: listed.into(),
            layers: layers.into(),
            output_masks: Vec::new(),
        })
    }

    /// Sets the name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }

    /// The layers (inputs left out), in Keras's order: by depth, the ones farthest from the
    /// outputs first; at equal depth, in the order a walk from the outputs first meets them.
    /// `variables`, `get_weights` and `summary` follow it, so weight lists pass between Keras
    /// and ferrokeras for branched graphs too.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let x = Input::new(&[4]);
    /// let short = Dense::new(2).named("short").apply(&x)?;
    /// let deep = Dense::new(2).named("deep_2").apply(&Dense::new(2).named("deep_1").apply(&x)?)?;
    /// let y = Concatenate::new().apply_many(&[short, deep])?;
    /// let model = Functional::new(&[x], &[y])?;
    /// let names: Vec<String> = model.layers().iter().map(|l| l.lock().name().to_string()).collect();
    /// assert_eq!(names[..3], ["deep_1", "short", "deep_2"]);
    /// # Ok(()) }
    /// ```
    pub fn layers(&self) -> &[SharedLayer] {
        &self.layers
    }

    /// Keras's `model.layers`: the inputs (class `InputLayer`) and the layers in Keras's order,
    /// each as (class name, layer name, variables).
    pub(crate) fn keras_layer_list(&self) -> Vec<crate::io::KerasLayer> {
        self.listed
            .iter()
            .map(|t| match &*t.node {
                Node::Input { name } => crate::io::KerasLayer {
                    class: "InputLayer".to_string(),
                    name: name.clone(),
                    groups: vec![crate::layers::KerasVars {
                        path: "vars".to_string(),
                        name: name.clone(),
                        variables: Vec::new(),
                    }],
                },
                Node::Layer { layer, .. } => crate::io::KerasLayer::of(&*layer.lock()),
            })
            .collect()
    }

    /// The forward pass (same as [`Model::call`]; here so that it resolves with both the `Layer`
    /// and `Model` traits in scope).
    ///
    /// # Errors
    /// Inputs of the wrong structure or shape.
    pub fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        Model::call(self, x, training)
    }

    /// Every variable, layer by layer (same as [`Model::variables`]; Keras's `weights` order).
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
        // Masks (from `Embedding::mask_zero` or `Masking`) travel with the tensors they belong to.
        let mut masks: HashMap<usize, Tensor> = HashMap::new();
        self.output_masks.clear();
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
                let mut l = layer.lock();
                let (out, mask) = match (&args[..], inputs.as_slice()) {
                    ([x], [i]) => {
                        let mask = masks.get(&i.id());
                        let made = match mask {
                            None => l.compute_mask(x, None)?,
                            Some(_) => None,
                        };
                        if mask.is_none() && made.is_none() {
                            (l.call_many(&args, training)?, None)
                        } else {
                            let out = l.call_masked(x, mask, training)?;
                            let next = match made {
                                Some(m) => Some(m),
                                None => l.compute_mask(x, mask)?,
                            };
                            (out, next)
                        }
                    }
                    _ => {
                        let in_masks: Vec<Option<Tensor>> =
                            inputs.iter().map(|i| masks.get(&i.id()).cloned()).collect();
                        let (out, mask) = if in_masks.iter().all(Option::is_none) {
                            (l.call_many(&args, training)?, None)
                        } else {
                            (
                                l.call_many_masked(&args, &in_masks, training)?,
                                l.compute_mask_many(&args, &in_masks)?,
                            )
                        };
                        (out, mask)
                    }
                };
                drop(l);
                values.insert(t.id(), out);
                if let Some(m) = mask {
                    masks.insert(t.id(), m);
                }
            }
        }
        self.output_masks = self
            .outputs
            .iter()
            .map(|o| masks.get(&o.id()).cloned())
            .collect();
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

/// The key of the operation that computes `t`: its layer (shared layers have one key), or the
/// input itself.
fn op_key(t: &KerasTensor) -> usize {
    match &*t.node {
        Node::Layer { layer, .. } => layer.ptr(),
        Node::Input { .. } => t.id(),
    }
}

/// Walks from `t` to the inputs, appending each node after the nodes it reads (`order`, an
/// execution order) and numbering each operation when first met (`first_visit`, Keras's
/// traversal index).
fn visit(
    t: &KerasTensor,
    inputs: &[KerasTensor],
    seen: &mut HashMap<usize, ()>,
    first_visit: &mut HashMap<usize, usize>,
    order: &mut Vec<KerasTensor>,
) -> Result<()> {
    if seen.contains_key(&t.id()) {
        return Ok(());
    }
    let n = first_visit.len();
    first_visit.entry(op_key(t)).or_insert(n);
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
                visit(a, inputs, seen, first_visit, order)?;
            }
        }
    }
    seen.insert(t.id(), ());
    order.push(t.clone());
    Ok(())
}

/// The operations (inputs and layers, each by its first node in `order`) as Keras's
/// `map_graph` lists them: a node's depth is the longest path from it to an output (an output
/// node's is 0), an operation's the largest of its nodes' (which deepens the nodes that feed
/// it); deeper operations come first, and equal depths go by `first_visit`. An input that no
/// output uses comes last, at depth 0, before the operations first met.
fn keras_order(
    order: &[KerasTensor],
    inputs: &[KerasTensor],
    first_visit: &HashMap<usize, usize>,
) -> Vec<KerasTensor> {
    let (_, op_depth) = depths(order);
    let mut first_node: HashMap<usize, KerasTensor> = HashMap::new();
    for t in order {
        first_node.entry(op_key(t)).or_insert_with(|| t.clone());
    }
    let mut ops: Vec<(usize, i64, KerasTensor)> = first_node
        .into_iter()
        .map(|(key, t)| (op_depth[&key], first_visit[&key] as i64, t))
        .collect();
    for i in inputs {
        if !op_depth.contains_key(&i.id()) {
            ops.push((0, -1, i.clone()));
        }
    }
    ops.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ops.into_iter().map(|(_, _, t)| t).collect()
}

/// The depth of every node (by tensor id) and operation (by [`op_key`]), as [`keras_order`]
/// describes them.
fn depths(order: &[KerasTensor]) -> (HashMap<usize, usize>, HashMap<usize, usize>) {
    let mut node_depth: HashMap<usize, usize> = HashMap::new();
    let mut op_depth: HashMap<usize, usize> = HashMap::new();
    for t in order.iter().rev() {
        let key = op_key(t);
        let depth = node_depth
            .get(&t.id())
            .copied()
            .unwrap_or(0)
            .max(op_depth.get(&key).copied().unwrap_or(0));
        op_depth.insert(key, depth);
        node_depth.insert(t.id(), depth);
        if let Node::Layer { inputs: args, .. } = &*t.node {
            for a in args {
                let d = node_depth.entry(a.id()).or_insert(0);
                *d = (*d).max(depth + 1);
            }
        }
    }
    (node_depth, op_depth)
}

impl Functional {
    /// Whether Keras prints the model as a plain chain (no "Connected to" column): one node at
    /// every depth, no node taking several tensors, no layer applied twice.
    fn sequential_like(&self) -> bool {
        let (node_depth, _) = depths(&self.order);
        let mut per_depth: HashMap<usize, usize> = HashMap::new();
        let mut per_layer: HashMap<usize, usize> = HashMap::new();
        for t in self.order.iter() {
            *per_depth.entry(node_depth[&t.id()]).or_insert(0) += 1;
            if let Node::Layer { layer, inputs } = &*t.node {
                *per_layer.entry(layer.ptr()).or_insert(0) += 1;
                if inputs.len() > 1 {
                    return false;
                }
            }
        }
        per_depth.values().all(|n| *n == 1) && per_layer.values().all(|n| *n == 1)
    }

    /// Keras's "Connected to" cell of every operation (by [`op_key`]): each node's input tensors
    /// as `name[node_index][0]`.
    fn connections(&self) -> HashMap<usize, Vec<String>> {
        let mut refs: HashMap<usize, String> = HashMap::new();
        let mut nodes_of: HashMap<usize, usize> = HashMap::new();
        let mut out: HashMap<usize, Vec<String>> = HashMap::new();
        for t in self.order.iter() {
            match &*t.node {
                Node::Input { name } => {
                    refs.insert(t.id(), format!("{name}[0][0]"));
                }
                Node::Layer { layer, inputs } => {
                    let cell = out.entry(layer.ptr()).or_default();
                    cell.extend(inputs.iter().filter_map(|x| refs.get(&x.id()).cloned()));
                    let n = nodes_of.entry(layer.ptr()).or_insert(0);
                    refs.insert(t.id(), format!("{}[{n}][0]", layer.lock().name()));
                    *n += 1;
                }
            }
        }
        out
    }
}

impl Model for Functional {
    fn as_savable(&self) -> Option<&dyn crate::io::SavableModel> {
        Some(self)
    }
    fn output_names(&self) -> Vec<String> {
        self.outputs
            .iter()
            .map(|t| match &*t.node {
                Node::Input { name } => name.clone(),
                Node::Layer { layer, .. } => layer.lock().name().to_string(),
            })
            .collect()
    }
    fn named_variables(&self) -> Vec<(String, Variable)> {
        super::structural_names(self.layers.iter().map(|l| {
            let l = l.lock();
            (l.name().to_string(), l.variables())
        }))
    }
    fn legacy_named_variables(&self) -> Option<Vec<(String, Variable)>> {
        // The layers in the order they first run.
        let mut run: Vec<SharedLayer> = Vec::new();
        for t in self.order.iter() {
            if let Node::Layer { layer, .. } = &*t.node
                && !run.iter().any(|l| l.ptr() == layer.ptr())
            {
                run.push(layer.clone());
            }
        }
        let legacy = super::structural_names(run.iter().map(|l| {
            let l = l.lock();
            (l.name().to_string(), l.variables())
        }));
        let same = |a: &[(String, Variable)], b: &[(String, Variable)]| {
            a.iter().all(|(name, v)| {
                b.iter()
                    .any(|(n, w)| n == name && w.as_tensor().id() == v.as_tensor().id())
            })
        };
        (!same(&legacy, &self.named_variables())).then_some(legacy)
    }
    fn output_mask(&self) -> Result<Option<Tensor>> {
        match self.output_masks.as_slice() {
            [one] => Ok(one.clone()),
            several => match several.iter().position(Option::is_some) {
                None => Ok(None),
                Some(i) => Err(Error::value(format!(
                    "output {i} of model \"{}\" carries a mask (from `Embedding(mask_zero=true)` or `Masking`), and the model has {} outputs; ferrokeras weights the loss by an output mask for single-output models only. Consume the mask before the output (a recurrent layer without `return_sequences`)",
                    self.name,
                    several.len()
                ))),
            },
        }
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
        // Layer by layer, each layer's own order (Keras's `model.weights`, which `get_weights`
        // and `set_weights` follow).
        all
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
        let connections = (!self.sequential_like()).then(|| self.connections());
        let mut rows = Vec::new();
        for t in self.listed.iter() {
            let mut row = match &*t.node {
                Node::Input { name } => {
                    LayerSummary::new(format!("{name} (InputLayer)"), &t.shape, 0)
                }
                Node::Layer { layer, .. } => {
                    let l = layer.lock();
                    LayerSummary::new(
                        format!("{} ({})", l.name(), l.class_name()),
                        &t.shape,
                        l.count_params(),
                    )
                }
            };
            if let Some(c) = &connections {
                row.connected_to = match c.get(&op_key(t)) {
                    Some(refs) if !refs.is_empty() => refs.clone(),
                    _ => vec!["-".to_string()],
                };
            }
            rows.push(row);
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

/// `[null, d1, d2, ...]`: a shape with the batch axis as `null`, as Keras writes `batch_shape`.
pub(crate) fn batch_shape_json(shape: &[usize]) -> Value {
    let mut v = vec![Value::Null];
    v.extend(shape.iter().map(|d| json!(d)));
    Value::Array(v)
}

/// The name (if any) and shape (batch axis excluded) in the config of an `InputLayer` entry:
/// `{"batch_shape": [null, 4], "name": "input_layer"}` (the batch entry may also be an integer,
/// which is ignored).
pub(crate) fn input_layer_config(
    what: &str,
    config: &Value,
) -> Result<(Option<String>, Vec<usize>)> {
    let mut r = ConfigReader::new(what, config)?;
    let name = r.opt_string("name")?;
    let v = r.get("batch_shape").ok_or_else(|| {
        Error::value(format!(
            "invalid config of {what}: the required key `batch_shape` (e.g. [null, 784]) is missing; received {}",
            short(config)
        ))
    })?;
    let bad = || {
        r.invalid(
            "batch_shape",
            "a list: null (the batch axis), then non-negative integers, e.g. [null, 28, 28, 1]",
            v,
        )
    };
    let dims = v.as_array().ok_or_else(bad)?;
    let (batch, rest) = dims.split_first().ok_or_else(bad)?;
    if !(batch.is_null() || batch.as_u64().is_some()) {
        return Err(bad());
    }
    let shape = rest
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(bad)?;
    // Keras 3's other InputLayer keys, at the values ferrokeras supports (an input of any
    // numeric dtype is taken as it comes).
    if let Some(v) = r.get("dtype")
        && !v.is_string()
    {
        return Err(r.invalid("dtype", "a dtype name such as \"float32\"", v));
    }
    for key in ["sparse", "ragged", "optional"] {
        r.fixed(key, Value::Bool(false))?;
    }
    r.finish()?;
    Ok((name, shape))
}

/// The `InputLayer` config ferrokeras writes, as Keras 3 does (without a name for a
/// Sequential model's input, which Keras names itself).
pub(crate) fn input_layer_json(name: Option<&str>, shape: &[usize]) -> Value {
    let mut config = json!({
        "batch_shape": batch_shape_json(shape),
        "dtype": "float32",
        "sparse": false,
        "ragged": false,
        "optional": false,
    });
    if let Some(n) = name {
        config["name"] = json!(n);
    }
    config
}

/// A model's JSON as Keras 3 writes it: `{"module", "class_name", "config", "registered_name"}`.
pub(crate) fn model_json(class: &str, config: Value) -> Value {
    match class {
        "Functional" => json!({
            "module": "keras.src.models.functional",
            "class_name": "Functional",
            "config": config,
            "registered_name": "Functional",
        }),
        _ => json!({
            "module": "keras",
            "class_name": class,
            "config": config,
            "registered_name": null,
        }),
    }
}

/// The layers of a loaded model that their configs freeze (`"trainable": false`), by name.
pub(crate) fn frozen_in_config(layers: &[Value]) -> Vec<String> {
    layers
        .iter()
        .filter_map(|entry| {
            let config = entry.get("config")?;
            crate::layers::config::config_frozen(config)
                .then(|| {
                    config
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .flatten()
        })
        .collect()
}

/// The `class_name` of a `{"class_name": ..., "config": ...}` object (a model's or a layer's).
pub(crate) fn class_name_of<'a>(what: &str, value: &'a Value) -> Result<&'a str> {
    value
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::value(format!(
                "{what} needs a string `class_name`; received {}",
                short(value)
            ))
        })
}

/// Parses a model's JSON `{"class_name": <expected>, "config": {...}}` and returns its config.
pub(crate) fn model_json_config(json_text: &str, expected: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(json_text).map_err(|e| {
        Error::value(format!(
            "malformed model JSON ({e}): expected an object {{\"class_name\": \"{expected}\", \"config\": {{...}}}}"
        ))
    })?;
    let class = class_name_of("a model's JSON", &value)?;
    if class != expected {
        return Err(Error::value(format!(
            "expected the JSON of a model of class `{expected}`, received class_name `{class}`{}",
            if matches!(class, "Sequential" | "Functional") {
                format!(
                    " (use `{class}::from_json`, or `ferrokeras::io::model_from_json` for either)"
                )
            } else {
                String::new()
            }
        )));
    }
    let mut value = value;
    match value.get_mut("config").map(Value::take) {
        Some(config) => Ok(config),
        None => Err(Error::value(format!(
            "the JSON of a `{expected}` model has no `config` object; received {}",
            short(&value)
        ))),
    }
}

/// One node of a layer: the tensors it takes, as `[layer_name, node_index, tensor_index]`.
type NodeRefs = Vec<(String, usize)>;

fn tensor_ref(v: &Value, what: &str) -> Result<(String, usize)> {
    let bad = || {
        Error::value(format!(
            "invalid {what}: a tensor reference must be [layer_name, node_index, 0]; received {}",
            short(v)
        ))
    };
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(name), node, tensor]) => {
            let node = node
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(bad)?;
            if tensor.as_u64() != Some(0) {
                return Err(bad());
            }
            Ok((name.clone(), node))
        }
        _ => Err(bad()),
    }
}

/// `input_layers` / `output_layers`: a list of tensor references, or one reference
/// `["x", 0, 0]` (Keras 3 writes a model of one input or output so).
fn tensor_list(list: &[Value]) -> Vec<Value> {
    match list {
        [Value::String(_), ..] => vec![Value::Array(list.to_vec())],
        _ => list.to_vec(),
    }
}

/// The tensors one node of a layer takes: Keras 3's `{"args": [x or [x, ...]], "kwargs": {}}`,
/// each `x` a `{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, node,
/// 0]}}`, or the older list of `[layer, node, 0]` references.
fn node_refs(node: &Value, what: &str) -> Result<(NodeRefs, Vec<(String, Value)>)> {
    if let Some(list) = node.as_array() {
        let refs = list
            .iter()
            .map(|a| match a.as_array().map(Vec::as_slice) {
                // `[layer, node, tensor, kwargs]` with no keyword arguments.
                Some([n, i, t, kw]) if kw.as_object().is_some_and(|m| m.is_empty()) => {
                    tensor_ref(&json!([n, i, t]), what)
                }
                _ => tensor_ref(a, what),
            })
            .collect::<Result<_>>()?;
        return Ok((refs, Vec::new()));
    }
    let bad = || {
        Error::value(format!(
            "invalid {what}: expected {{\"args\": [tensor or list of tensors], \"kwargs\": {{}}}}; received {}",
            short(node)
        ))
    };
    let map = node.as_object().ok_or_else(bad)?;
    // A recorded `training` flag (Keras's RNNs record `training: false`) is replaced by the
    // model's own at run time, as Keras does whenever the model is called with `training`
    // set, which fit, evaluate and predict always do. A recorded `mask` (or `query_mask`,
    // `value_mask`, `key_mask`) is the mask of one of the layer's inputs, which ferrokeras
    // carries along with that input itself. A `key` tensor is the attention's third input;
    // other keyword arguments go to the layer ([`Layer::set_call_kwarg`]).
    let is_tensor =
        |v: &Value| v.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__");
    let mut rest = Vec::new();
    let mut key = None;
    if let Some(kwargs) = map.get("kwargs").and_then(Value::as_object) {
        for (k, v) in kwargs {
            let carried = matches!(
                k.as_str(),
                "mask" | "query_mask" | "value_mask" | "key_mask"
            );
            if v.is_null() || (k == "training" && v.is_boolean()) || (carried && is_tensor(v)) {
                continue;
            }
            if k == "key" && is_tensor(v) {
                key = Some(v);
                continue;
            }
            rest.push((k.clone(), v.clone()));
        }
    }
    if map.keys().any(|k| k != "args" && k != "kwargs") {
        return Err(bad());
    }
    let keras_tensor = |v: &Value| -> Result<(String, usize)> {
        match (
            v.get("class_name").and_then(Value::as_str),
            v.get("config").and_then(|c| c.get("keras_history")),
        ) {
            (Some("__keras_tensor__"), Some(history)) => tensor_ref(history, what),
            _ => Err(bad()),
        }
    };
    let mut refs: NodeRefs = match map.get("args").and_then(Value::as_array).map(Vec::as_slice) {
        Some([Value::Array(xs)]) => xs.iter().map(keras_tensor).collect::<Result<_>>()?,
        // Several positional tensors: `layer(query, value)`.
        Some(xs) if !xs.is_empty() => xs.iter().map(keras_tensor).collect::<Result<_>>()?,
        _ => return Err(bad()),
    };
    if let Some(k) = key {
        refs.push(keras_tensor(k)?);
    }
    Ok((refs, rest))
}

/// The ops (`keras.src.ops.numpy`) by which Keras records the masks its layers compute.
const MASK_OPS: [&str; 6] = [
    "NotEqual",
    "ExpandDims",
    "ZerosLike",
    "LogicalOr",
    "Concatenate",
    "Any",
];

fn ref_json((name, node): &(String, usize)) -> Value {
    json!([name, node, 0])
}

impl Functional {
    /// The architecture as Keras's `get_config()`: the model's name, its layers (the inputs as
    /// `InputLayer` entries, and every layer once, in Keras's order: see [`Functional::layers`])
    /// with the nodes each is applied at, and the input and output tensors. See
    /// [`crate::io::save_model`] for the format.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let x = Input::named(&[3], "features");
    /// let shared = SharedLayer::new(Dense::new(3).named("shared"));
    /// let y = shared.apply(&shared.apply(&x)?)?;
    /// let model = Functional::new(&[x], &[y])?.named("twice");
    /// let c = model.get_config()?;
    /// assert_eq!(c["name"], "twice");
    /// // Keras 3's nodes: the call's arguments, each input a `__keras_tensor__` with its history.
    /// let nodes = &c["layers"][1]["inbound_nodes"];
    /// assert_eq!(nodes[0]["args"][0]["config"]["keras_history"], serde_json::json!(["features", 0, 0]));
    /// assert_eq!(nodes[1]["args"][0]["config"]["keras_history"], serde_json::json!(["shared", 0, 0]));
    /// assert_eq!(c["output_layers"], serde_json::json!([["shared", 1, 0]]));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A layer that cannot describe itself ([`Layer::config`] is `None`; named in the message),
    /// or two layers or inputs with the same name.
    pub fn get_config(&self) -> Result<Value> {
        let mut refs: HashMap<usize, (String, usize)> = HashMap::new();
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut unique = |name: &str| -> Result<()> {
            if names.insert(name.to_string(), ()).is_some() {
                return Err(Error::value(format!(
                    "cannot describe model \"{}\": two of its layers or inputs are named `{name}`; names must be unique within a model to save it (rename one with `.named(...)`)",
                    self.name
                )));
            }
            Ok(())
        };
        let mut inputs: HashMap<usize, Value> = HashMap::new();
        for i in &self.inputs {
            let Node::Input { name } = &*i.node else {
                return Err(Error::state("internal: a functional input is not an Input"));
            };
            unique(name)?;
            refs.insert(i.id(), (name.clone(), 0));
            inputs.insert(
                i.id(),
                json!({
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": input_layer_json(Some(name), &i.shape),
                    "registered_name": null,
                    "name": name,
                    "inbound_nodes": [],
                }),
            );
        }
        let mut nodes: HashMap<usize, Vec<Value>> = HashMap::new();
        for t in &self.order {
            if let Node::Layer { layer, inputs } = &*t.node {
                // Keras 3's node: the call's arguments, the input tensor (or the list of them,
                // for a merge layer) as `__keras_tensor__` objects.
                let mut args = inputs
                    .iter()
                    .map(|x| {
                        let r = refs.get(&x.id()).ok_or_else(|| {
                            Error::state("internal: functional graph listed out of order")
                        })?;
                        Ok(json!({
                            "class_name": "__keras_tensor__",
                            "config": {
                                "shape": batch_shape_json(&x.shape),
                                "dtype": "float32",
                                "keras_history": ref_json(r),
                            },
                        }))
                    })
                    .collect::<Result<Vec<Value>>>()?;
                let l = layer.lock();
                let (args, kwargs) = if l.positional_inputs() {
                    (Value::Array(args), l.call_kwargs())
                } else if args.len() == 1 {
                    (json!([args.remove(0)]), l.call_kwargs())
                } else {
                    (json!([Value::Array(args)]), l.call_kwargs())
                };
                drop(l);
                let list = nodes.entry(layer.ptr()).or_default();
                let index = list.len();
                list.push(json!({"args": args, "kwargs": kwargs}));
                refs.insert(t.id(), (layer.lock().name().to_string(), index));
            }
        }
        let mut entries = Vec::new();
        for t in &self.listed {
            match &*t.node {
                Node::Input { .. } => entries.extend(inputs.remove(&t.id())),
                Node::Layer { layer, .. } => {
                    let l = layer.lock();
                    unique(l.name())?;
                    let mut entry = crate::layers::serialize(&**l)?;
                    entry["name"] = json!(l.name());
                    entry["inbound_nodes"] =
                        Value::Array(nodes.remove(&layer.ptr()).unwrap_or_default());
                    entries.push(entry);
                }
            }
        }
        let tensor_refs = |ts: &[KerasTensor]| -> Result<Vec<Value>> {
            ts.iter()
                .map(|t| {
                    refs.get(&t.id())
                        .map(ref_json)
                        .ok_or_else(|| Error::state("internal: functional tensor not listed"))
                })
                .collect()
        };
        Ok(json!({
            "name": self.name,
            "trainable": true,
            "layers": entries,
            "input_layers": tensor_refs(&self.inputs)?,
            "output_layers": tensor_refs(&self.outputs)?,
        }))
    }

    /// The architecture as JSON, `{"class_name": "Functional", "config": <get_config>}` (Keras's
    /// `model.to_json()`). Weights are not included: see [`crate::io::save_model`].
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let a = Input::new(&[4]);
    /// let b = Input::new(&[4]);
    /// let shared = SharedLayer::new(Dense::new(2));
    /// let sum = Add::new().apply_many(&[shared.apply(&a)?, shared.apply(&b)?])?;
    /// let model = Functional::new(&[a, b], &[sum])?;
    /// let copy = Functional::from_json(&model.to_json()?)?;
    /// assert_eq!(copy.to_json()?, model.to_json()?);
    /// assert_eq!(copy.variables().len(), 2); // the Dense layer is still shared
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`Functional::get_config`].
    pub fn to_json(&self) -> Result<String> {
        Ok(model_json("Functional", self.get_config()?).to_string())
    }

    /// Rebuilds a model from [`Functional::to_json`]'s output: the same layers (names included),
    /// shared layers still shared, with newly initialized weights.
    ///
    /// # Errors
    /// Malformed JSON, another `class_name`, or what [`Functional::from_config`] rejects.
    pub fn from_json(json_text: &str) -> Result<Self> {
        Self::from_config(&model_json_config(json_text, "Functional")?)
    }

    /// Rebuilds a model from [`Functional::get_config`]'s output (Keras's `from_config`): layers
    /// from the layer registry ([`crate::layers::from_config`]), applied node by node once the
    /// tensors they take exist. Restored names are reserved
    /// ([`crate::layers::reserve_name`]).
    ///
    /// # Errors
    /// A config that is not an object with `layers`, `input_layers` and `output_layers`, an
    /// unknown layer class, a bad layer config, a node that takes a tensor no layer produces, or a
    /// duplicate name: the message names the layer.
    pub fn from_config(config: &Value) -> Result<Self> {
        let what = "model class `Functional`";
        let mut r = ConfigReader::new(what, config)?;
        let name = r.opt_string("name")?;
        let mut list = |key: &str| -> Result<&Vec<Value>> {
            let v = r.get(key).ok_or_else(|| {
                Error::value(format!(
                    "invalid config of {what}: the required key `{key}` is missing; received {}",
                    short(config)
                ))
            })?;
            v.as_array().ok_or_else(|| r.invalid(key, "a list", v))
        };
        let layers = list("layers")?;
        let input_refs = &tensor_list(list("input_layers")?);
        let output_refs = &tensor_list(list("output_layers")?);
        // Keras 3's model keys: the model itself is not frozen here (its layers say so), and a
        // policy of its own is the global one's business.
        r.bool_or("trainable", true)?;
        r.dtype_policy("dtype")?;
        r.finish()?;
        let model_name = name.clone().unwrap_or_else(|| "functional".into());

        struct Pending {
            layer: SharedLayer,
            name: String,
            index: usize,
            args: NodeRefs,
        }
        let mut tensors: HashMap<(String, usize), KerasTensor> = HashMap::new();
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut pending: Vec<Pending> = Vec::new();
        for (i, entry) in layers.iter().enumerate() {
            let at = format!("layer entry {i} of functional model \"{model_name}\"");
            let mut e = ConfigReader::new(&at, entry)?;
            let class = e.opt_string("class_name")?.ok_or_else(|| {
                Error::value(format!(
                    "{at} needs a string `class_name`; received {}",
                    short(entry)
                ))
            })?;
            let entry_name = e.opt_string("name")?;
            let layer_config = e.get("config").ok_or_else(|| {
                Error::value(format!(
                    "{at} (class `{class}`) needs a `config` object; received {}",
                    short(entry)
                ))
            })?;
            let inbound = match e.get("inbound_nodes") {
                None => &[][..],
                Some(v) => v.as_array().map(Vec::as_slice).ok_or_else(|| {
                    e.invalid(
                        "inbound_nodes",
                        "a list of nodes, each {\"args\": [...], \"kwargs\": {}} or a list of [layer_name, node_index, 0]",
                        v,
                    )
                })?,
            };
            // Keras 3's entry keys, not needed to rebuild the layer.
            let module = e.get("module").and_then(Value::as_str);
            for key in ["registered_name", "build_config"] {
                e.get(key);
            }
            e.finish()?;
            // Keras records the masks its layers compute as ops of their own (`not_equal(ids,
            // 0)` for `Embedding(mask_zero=True)`, `logical_or` and `any` for merged masks),
            // read by the layers after them as their `mask`: ferrokeras computes the same masks
            // in its layers and carries them along, so these ops are left out.
            if module == Some("keras.src.ops.numpy") && MASK_OPS.contains(&class.as_str()) {
                continue;
            }
            let layer_name = if class == "InputLayer" {
                let (cfg_name, shape) =
                    input_layer_config(&format!("the `InputLayer` config of {at}"), layer_config)?;
                let name = entry_name
                    .or(cfg_name)
                    .ok_or_else(|| Error::value(format!("{at}: an `InputLayer` needs a `name`")))?;
                if !inbound.is_empty() {
                    return Err(Error::value(format!(
                        "{at}: the InputLayer `{name}` cannot have inbound nodes; received {}",
                        inbound.len()
                    )));
                }
                crate::layers::reserve_name(&name);
                tensors.insert((name.clone(), 0), Input::named(&shape, name.clone()));
                name
            } else {
                let layer = crate::layers::from_config(&class, layer_config)
                    .map_err(|err| Error::value(format!("{at}: {err}")))?;
                let name = layer.name().to_string();
                if let Some(n) = entry_name.filter(|n| *n != name) {
                    return Err(Error::value(format!(
                        "{at}: the entry is named `{n}`, but its layer config names the layer `{name}`"
                    )));
                }
                let shared = SharedLayer::from_box(layer);
                for (index, node) in inbound.iter().enumerate() {
                    let node_what = format!("node {index} of layer `{name}`");
                    let (args, kwargs) = node_refs(node, &node_what)?;
                    for (k, v) in kwargs {
                        if !shared.lock().set_call_kwarg(&k, &v)? {
                            return Err(Error::value(format!(
                                "invalid {node_what}: the call's keyword argument `{k}` ({}) is not supported; a node takes its input tensors only",
                                short(&v)
                            )));
                        }
                    }
                    if args.is_empty() {
                        return Err(Error::value(format!(
                            "invalid {node_what}: a node takes at least one tensor"
                        )));
                    }
                    pending.push(Pending {
                        layer: shared.clone(),
                        name: name.clone(),
                        index,
                        args,
                    });
                }
                name
            };
            if names.insert(layer_name.clone(), ()).is_some() {
                return Err(Error::value(format!(
                    "{at}: two layers of functional model \"{model_name}\" are named `{layer_name}`; layer names must be unique within a model"
                )));
            }
        }
        // Apply the nodes once their inputs exist (a shared layer's later node may take the output
        // of a layer listed after it).
        while !pending.is_empty() {
            let before = pending.len();
            let mut waiting = Vec::new();
            for p in pending {
                let args: Option<Vec<KerasTensor>> =
                    p.args.iter().map(|a| tensors.get(a).cloned()).collect();
                match args {
                    Some(args) => {
                        let out = p.layer.apply_many(&args).map_err(|e| {
                            Error::value(format!(
                                "functional model \"{model_name}\": applying node {} of layer `{}` failed: {e}",
                                p.index, p.name
                            ))
                        })?;
                        tensors.insert((p.name, p.index), out);
                    }
                    None => waiting.push(p),
                }
            }
            if waiting.len() == before {
                let p = &waiting[0];
                let missing = p
                    .args
                    .iter()
                    .find(|a| !tensors.contains_key(*a))
                    .map(ref_json)
                    .unwrap_or(Value::Null);
                return Err(Error::value(format!(
                    "functional model \"{model_name}\": node {} of layer `{}` takes the tensor {missing}, which no input or layer node of the model produces (or the nodes form a cycle)",
                    p.index, p.name
                )));
            }
            pending = waiting;
        }
        let resolve = |key: &str, list: &[Value]| -> Result<Vec<KerasTensor>> {
            list.iter()
                .map(|v| {
                    let what = format!("`{key}` entry of functional model \"{model_name}\"");
                    let r = tensor_ref(v, &what)?;
                    tensors.get(&r).cloned().ok_or_else(|| {
                        Error::value(format!(
                            "invalid {what}: no input or layer node produces the tensor {}",
                            ref_json(&r)
                        ))
                    })
                })
                .collect()
        };
        let inputs = resolve("input_layers", input_refs)?;
        let outputs = resolve("output_layers", output_refs)?;
        let mut model = Functional::new(&inputs, &outputs)?;
        if let Some(n) = name {
            crate::layers::reserve_name(&n);
            model = model.named(n);
        }
        let frozen = frozen_in_config(layers);
        for layer in model.layers() {
            let layer = layer.lock();
            if frozen.iter().any(|n| n == layer.name()) {
                layer.set_trainable(false);
            }
        }
        Ok(model)
    }
}
