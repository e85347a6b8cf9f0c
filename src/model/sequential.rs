//! `Sequential`: a plain stack of layers.

use candle_core::Tensor;
use serde_json::{Value, json};

use super::Model;
use super::functional::{
    batch_shape_json, class_name_of, frozen_in_config, input_layer_config, input_layer_json,
    model_json, model_json_config,
};
use crate::data::Data;
use crate::layers::config::{ConfigReader, short};
use crate::layers::{Layer, LayerSummary, check_input, unique_name};
use crate::tape::Variable;
use crate::{Error, Result};

/// A linear stack of layers, Keras's `keras.Sequential`.
///
/// With an input shape (Keras's `keras.Input(shape=...)` as first element) the layers are built
/// as they are added; without one, on the first call.
///
/// ```
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let mut model = Sequential::new()
///     .input(&[784])
///     .add(Dense::new(64).activation("relu")?)
///     .add(Dense::new(10));
/// model.build()?;
/// assert_eq!(model.count_params(), 784 * 64 + 64 + 64 * 10 + 10);
/// println!("{}", model.summary());
/// # Ok(()) }
/// ```
pub struct Sequential {
    name: String,
    layers: Vec<Box<dyn Layer>>,
    input_shape: Option<Box<[usize]>>,
    shapes: Vec<Vec<usize>>,
    error: Option<Box<str>>,
    /// Layers a loaded config froze (`"trainable": false`), frozen once built.
    freeze_when_built: Box<[String]>,
    /// The mask of the last call's output (from `Embedding::mask_zero` or `Masking`, kept by
    /// the layers after it), for the loss and metrics ([`Model::output_mask`]).
    output_mask: Option<Tensor>,
}

impl Default for Sequential {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequential {
    /// An empty model named `sequential`, `sequential_1`, ...
    pub fn new() -> Self {
        Self {
            name: unique_name("sequential"),
            layers: Vec::new(),
            input_shape: None,
            shapes: Vec::new(),
            error: None,
            freeze_when_built: Box::default(),
            output_mask: None,
        }
    }

    /// Sets the name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }

    /// Declares the input shape (batch axis excluded), as `keras.Input(shape=...)`.
    pub fn input(mut self, shape: &[usize]) -> Self {
        self.input_shape = Some(shape.into());
        self.shapes.clear();
        self.try_build_pending();
        self
    }

    /// Appends a layer.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Layer + 'static) -> Self {
        self.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn push(&mut self, layer: Box<dyn Layer>) {
        self.layers.push(layer);
        self.try_build_pending();
    }

    /// Removes the last layer and returns it (Keras's `model.pop()`); the model's output is then
    /// the previous layer's.
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// let mut model = Sequential::new().input(&[4]).add(Dense::new(8)).add(Dense::new(2));
    /// let last = model.pop().unwrap();
    /// assert_eq!(last.class_name(), "Dense");
    /// assert_eq!(model.layers().len(), 1);
    /// model.pop().unwrap();
    /// assert!(model.pop().err().unwrap().to_string().contains("no layers"));
    /// ```
    ///
    /// # Errors
    /// A model without layers.
    pub fn pop(&mut self) -> Result<Box<dyn Layer>> {
        let layer = self.layers.pop().ok_or_else(|| {
            Error::value(format!(
                "There are no layers in the model \"{}\": nothing to pop.",
                self.name
            ))
        })?;
        self.shapes.truncate(self.layers.len());
        // A layer that failed to build is gone: build what is left again.
        self.error = None;
        self.try_build_pending();
        Ok(layer)
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Layer>] {
        &self.layers
    }

    /// The layers, mutable.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Layer>] {
        &mut self.layers
    }

    /// Builds the layers not built yet from the known input shape; the first error is kept and
    /// reported by `build` or the first call.
    fn try_build_pending(&mut self) {
        let Some(input) = self.input_shape.clone() else {
            return;
        };
        if self.error.is_some() {
            return;
        }
        while self.shapes.len() < self.layers.len() {
            let i = self.shapes.len();
            let in_shape = if i == 0 {
                input.to_vec()
            } else {
                self.shapes[i - 1].clone()
            };
            let layer = &mut self.layers[i];
            let r = layer
                .build(&in_shape)
                .and_then(|_| layer.compute_output_shape(&in_shape));
            match r {
                Ok(s) => {
                    if self.freeze_when_built.iter().any(|n| n == layer.name()) {
                        layer.set_trainable(false);
                    }
                    self.shapes.push(s)
                }
                Err(e) => {
                    self.error = Some(
                        format!(
                            "Sequential model \"{}\": layer \"{}\" cannot take input shape {}: {e}",
                            self.name,
                            layer.name(),
                            super::summary::shape_str(&in_shape)
                        )
                        .into(),
                    );
                    return;
                }
            }
        }
    }

    /// Builds every layer from the declared input shape.
    ///
    /// # Errors
    /// No input shape declared, or a layer that cannot take its input.
    pub fn build(&mut self) -> Result<()> {
        if self.input_shape.is_none() {
            return Err(Error::value(format!(
                "Sequential model \"{}\" has no input shape: call `.input(&[...])` or call the model on data first",
                self.name
            )));
        }
        self.try_build_pending();
        match &self.error {
            Some(e) => Err(Error::value(e.to_string())),
            None => Ok(()),
        }
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

    /// The forward pass on a tensor.
    ///
    /// # Errors
    /// Input of the wrong shape, or a layer failing.
    pub fn forward(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        Layer::call(self, x, training)
    }

    /// The summary table.
    pub fn summary(&self) -> String {
        Model::summary(self)
    }

    /// The architecture as Keras's `get_config()`: `{"name": ..., "layers": [...]}`, where the
    /// layers start with `{"class_name": "InputLayer", "config": {"batch_shape": [null, ...]}}`
    /// when the input shape is known, followed by one `{"class_name": ..., "config": ...}` per
    /// layer ([`Layer::config`]).
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let model = Sequential::new().named("mlp").input(&[3]).add(Dense::new(2).named("out"));
    /// let c = model.get_config()?;
    /// assert_eq!(c["layers"][0]["config"]["batch_shape"], serde_json::json!([null, 3]));
    /// assert_eq!(c["layers"][1]["class_name"], "Dense");
    /// assert_eq!(c["layers"][1]["config"]["name"], "out");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A layer that cannot describe itself ([`Layer::config`] is `None`); the message names it and
    /// its class.
    pub fn get_config(&self) -> Result<Value> {
        let mut layers = Vec::new();
        if let Some(shape) = &self.input_shape {
            layers.push(json!({
                "module": "keras.layers",
                "class_name": "InputLayer",
                "config": input_layer_json(None, shape),
                "registered_name": null,
            }));
        }
        for l in &self.layers {
            layers.push(crate::layers::serialize(l.as_ref())?);
        }
        let mut config = json!({
            "name": self.name,
            "trainable": true,
            "dtype": crate::layers::config::dtype_policy_json(
                crate::mixed_precision::global_policy().name()
            ),
            "layers": layers,
        });
        if let Some(shape) = &self.input_shape {
            config["build_input_shape"] = batch_shape_json(shape);
        }
        Ok(config)
    }

    /// The architecture as JSON, `{"class_name": "Sequential", "config": <get_config>}` (Keras's
    /// `model.to_json()`). Weights are not included: see [`crate::io::save_model`].
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let model = Sequential::new()
    ///     .input(&[8])
    ///     .add(Dense::new(4).activation("relu")?.kernel_regularizer(Regularizer::L2(1e-4)))
    ///     .add(Dropout::new(0.5)?)
    ///     .add(Dense::new(1));
    /// let json = model.to_json()?;
    /// let copy = Sequential::from_json(&json)?; // same architecture, fresh weights
    /// assert_eq!(copy.to_json()?, json);
    /// assert_eq!(copy.count_params(), model.count_params());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`Sequential::get_config`].
    pub fn to_json(&self) -> Result<String> {
        Ok(model_json("Sequential", self.get_config()?).to_string())
    }

    /// Rebuilds a model from [`Sequential::to_json`]'s output, with newly initialized weights
    /// (built when the JSON has an input shape).
    ///
    /// # Errors
    /// Malformed JSON, another `class_name`, or what [`Sequential::from_config`] rejects.
    pub fn from_json(json_text: &str) -> Result<Self> {
        Self::from_config(&model_json_config(json_text, "Sequential")?)
    }

    /// Rebuilds a model from [`Sequential::get_config`]'s output (Keras's `from_config`): each
    /// layer from the layer registry ([`crate::layers::from_config`]). Restored names are
    /// reserved ([`crate::layers::reserve_name`]).
    ///
    /// # Errors
    /// A config that is not an object, an `InputLayer` anywhere but first, an unknown layer class
    /// or a bad layer config (the message gives the layer's position), or layers that cannot take
    /// the declared input shape.
    pub fn from_config(config: &Value) -> Result<Self> {
        let mut r = ConfigReader::new("model class `Sequential`", config)?;
        let name = r.opt_string("name")?;
        let layers = match r.get("layers") {
            None => &[][..],
            Some(v) => v
                .as_array()
                .map(Vec::as_slice)
                .ok_or_else(|| r.invalid("layers", "a list of layer entries", v))?,
        };
        // Keras 3's model keys: the input shape of a model built without an `InputLayer` entry.
        r.bool_or("trainable", true)?;
        r.dtype_policy("dtype")?;
        let build_shape = match r.get("build_input_shape") {
            None => None,
            Some(v) => Some(
                input_layer_config(
                    "the `build_input_shape` of model class `Sequential`",
                    &json!({ "batch_shape": v }),
                )?
                .1,
            ),
        };
        r.finish()?;
        let mut model = match name {
            Some(n) => {
                crate::layers::reserve_name(&n);
                Self {
                    name: n,
                    layers: Vec::new(),
                    input_shape: None,
                    shapes: Vec::new(),
                    error: None,
                    freeze_when_built: Box::default(),
                    output_mask: None,
                }
            }
            None => Self::new(),
        };
        model.freeze_when_built = frozen_in_config(layers).into();
        for (i, entry) in layers.iter().enumerate() {
            let at = format!("layer entry {i} of Sequential model \"{}\"", model.name);
            let class = class_name_of(&at, entry)?;
            if class == "InputLayer" {
                if i != 0 {
                    return Err(Error::value(format!(
                        "{at}: an `InputLayer` can only be the first entry of a Sequential model's layers"
                    )));
                }
                let config = entry.get("config").ok_or_else(|| {
                    Error::value(format!(
                        "{at} needs a `config` object; received {}",
                        short(entry)
                    ))
                })?;
                let (_, shape) = input_layer_config(&format!("the `InputLayer` of {at}"), config)?;
                model = model.input(&shape);
                continue;
            }
            let layer = crate::layers::deserialize(entry)
                .map_err(|e| Error::value(format!("{at}: {e}")))?;
            model.push(layer);
        }
        if model.input_shape.is_none()
            && let Some(shape) = build_shape
        {
            model = model.input(&shape);
        }
        if model.input_shape.is_some() {
            model.build()?;
        }
        Ok(model)
    }
}

impl Layer for Sequential {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Sequential"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.input_shape.is_none() {
            self.input_shape = Some(input_shape.into());
        }
        Sequential::build(self)
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if let Some(e) = &self.error {
            return Err(Error::value(e.to_string()));
        }
        match &self.input_shape {
            Some(s) => check_input(&self.name, x, s)?,
            None => {
                if x.rank() == 0 {
                    return Err(Error::value("Sequential input needs a batch axis"));
                }
                self.input_shape = Some(x.dims()[1..].into());
                Sequential::build(self)?;
            }
        }
        // A layer followed by an activation layer runs as one fused kernel where it can (the
        // GAN's transposed convolutions and their LeakyReLU): same values, one pass fewer.
        let mut h = x.clone();
        let mut i = 0;
        self.output_mask = None;
        let mut mask: Option<Tensor> = None;
        while i < self.layers.len() {
            // Once a layer has made a mask, every layer takes it (and the fused paths, which
            // take none, are left aside).
            let made = match mask {
                None => self.layers[i].compute_mask(&h, None)?,
                Some(_) => None,
            };
            if mask.is_some() || made.is_some() {
                let layer = &mut self.layers[i];
                let y = layer.call_masked(&h, mask.as_ref(), training)?;
                mask = match made {
                    Some(m) => Some(m),
                    None => layer.compute_mask(&h, mask.as_ref())?,
                };
                h = y;
                i += 1;
                continue;
            }
            let act = self.layers.get(i + 1).and_then(|l| l.as_activation());
            // [layer, activation, max pooling] and [layer, max pooling]: one op where it can.
            let (pool, skip) = match act {
                Some(_) => (self.layers.get(i + 2).and_then(|l| l.as_max_pool()), 3),
                None => (self.layers.get(i + 1).and_then(|l| l.as_max_pool()), 2),
            };
            if let Some(pool) = pool
                && let Some(y) = self.layers[i].call_fused_pool(&h, training, act, pool)?
            {
                h = y;
                i += skip;
                continue;
            }
            if let Some(then) = act
                && let Some(y) = self.layers[i].call_fused(&h, training, then)?
            {
                h = y;
                i += 2;
                continue;
            }
            h = self.layers[i].call(&h, training)?;
            i += 1;
        }
        self.output_mask = mask;
        Ok(h)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let mut s = input_shape.to_vec();
        for l in &self.layers {
            s = l.compute_output_shape(&s)?;
        }
        Ok(s)
    }
    fn variables(&self) -> Vec<Variable> {
        let all: Vec<Variable> = self.layers.iter().flat_map(|l| l.variables()).collect();
        // Layer by layer, each layer's own order (Keras's `model.weights`, which `get_weights`
        // and `set_weights` follow).
        all
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for l in &self.layers {
            out.extend(l.losses()?);
        }
        Ok(out)
    }
    fn sublayer_summaries(&self) -> Vec<LayerSummary> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let name = format!("{} ({})", l.name(), l.class_name());
                match self.shapes.get(i) {
                    Some(shape) => LayerSummary::new(name, shape, l.count_params()),
                    None => LayerSummary {
                        built: false,
                        ..LayerSummary::new(name, &[], 0)
                    },
                }
            })
            .collect()
    }
}

impl Model for Sequential {
    fn as_savable(&self) -> Option<&dyn crate::io::SavableModel> {
        Some(self)
    }
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        Ok(Data::Tensor(Layer::call(self, x.tensor()?, training)?))
    }
    fn output_mask(&self) -> Result<Option<Tensor>> {
        Ok(self.output_mask.clone())
    }
    fn named_variables(&self) -> Vec<(String, Variable)> {
        super::structural_names(
            self.layers
                .iter()
                .map(|l| (l.name().to_string(), l.variables())),
        )
    }
    fn variables(&self) -> Vec<Variable> {
        Layer::variables(self)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        Layer::losses(self)
    }
    fn summary_rows(&self) -> Vec<LayerSummary> {
        self.sublayer_summaries()
    }
}
