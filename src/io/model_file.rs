//! Whole-model files: the architecture as JSON and the weights, in one safetensors file.
//!
//! The format is described at [`save_model`].

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use super::checkpoint::{TensorFile, read_tensors, write_tensors};
use crate::data::Data;
use crate::layers::LayerSummary;
use crate::model::{Functional, Model, Sequential};
use crate::tape::Variable;
use crate::{Error, Result};

/// The metadata key that holds the architecture.
pub const MODEL_CONFIG_KEY: &str = "model_config";
/// The `format` metadata of a model file.
pub const MODEL_FORMAT: &str = "ferrokeras.model";
/// The version of the model file format that this crate writes and reads.
pub const MODEL_FORMAT_VERSION: u32 = 2;

/// A model whose architecture can be described as JSON and rebuilt: [`Sequential`],
/// [`Functional`] and [`LoadedModel`].
pub trait SavableModel: Model {
    /// The architecture, `{"class_name": ..., "config": {...}}` (what `to_json` writes).
    ///
    /// # Errors
    /// A layer that cannot describe itself; the message names it and its class.
    fn model_config(&self) -> Result<Value>;

    /// Keras's `model.layers`: a functional model's inputs (`InputLayer`) and layers in
    /// Keras's order, a Sequential model's layers. Keras's own files (`.keras`) address
    /// weights by this list.
    fn keras_layers(&self) -> Vec<KerasLayer>;
}

/// One entry of [`SavableModel::keras_layers`].
///
/// ```
/// use ferrokeras::io::SavableModel;
/// use ferrokeras::layers::LSTM;
/// use ferrokeras::prelude::*;
/// let model = Sequential::new().input(&[5, 3]).add(LSTM::new(2));
/// let layers = model.keras_layers();
/// assert_eq!(layers[0].class, "LSTM");
/// assert_eq!(layers[0].groups[1].path, "cell/vars");
/// ```
#[derive(Clone)]
pub struct KerasLayer {
    /// The Keras class (`"Dense"`).
    pub class: String,
    /// The layer's name.
    pub name: String,
    /// Its variables as Keras's weight files group them ([`Layer::keras_vars`]).
    ///
    /// [`Layer::keras_vars`]: crate::layers::Layer::keras_vars
    pub groups: Vec<crate::layers::KerasVars>,
}

impl KerasLayer {
    /// The entry of `layer`.
    pub fn of(layer: &dyn crate::layers::Layer) -> Self {
        Self {
            class: layer.class_name().to_string(),
            name: layer.name().to_string(),
            groups: layer.keras_vars(),
        }
    }
}

impl SavableModel for Sequential {
    fn model_config(&self) -> Result<Value> {
        Ok(crate::model::model_json("Sequential", self.get_config()?))
    }
    fn keras_layers(&self) -> Vec<KerasLayer> {
        self.layers().iter().map(|l| KerasLayer::of(&**l)).collect()
    }
}

impl SavableModel for Functional {
    fn model_config(&self) -> Result<Value> {
        Ok(crate::model::model_json("Functional", self.get_config()?))
    }
    fn keras_layers(&self) -> Vec<KerasLayer> {
        self.keras_layer_list()
    }
}

impl SavableModel for LoadedModel {
    fn model_config(&self) -> Result<Value> {
        match self {
            LoadedModel::Sequential(m) => m.model_config(),
            LoadedModel::Functional(m) => m.model_config(),
        }
    }
    fn keras_layers(&self) -> Vec<KerasLayer> {
        match self {
            LoadedModel::Sequential(m) => m.keras_layers(),
            LoadedModel::Functional(m) => m.keras_layers(),
        }
    }
}

/// A model rebuilt by [`load_model`] or [`model_from_json`]: whichever class the file holds.
///
/// It implements [`Model`] (so it compiles, fits, evaluates and predicts as the original did)
/// and [`SavableModel`]; match on it, or use [`LoadedModel::into_sequential`] /
/// [`LoadedModel::into_functional`], to get the concrete model back.
///
/// ```
/// use ferrokeras::io::{LoadedModel, model_from_json};
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let json = Sequential::new().input(&[2]).add(Dense::new(1)).to_json()?;
/// match model_from_json(&json)? {
///     LoadedModel::Sequential(m) => assert_eq!(m.layers().len(), 1),
///     LoadedModel::Functional(_) => unreachable!(),
/// }
/// # Ok(()) }
/// ```
pub enum LoadedModel {
    /// A `"Sequential"` model.
    Sequential(Sequential),
    /// A `"Functional"` model.
    Functional(Functional),
}

impl LoadedModel {
    /// `"Sequential"` or `"Functional"`.
    pub fn class_name(&self) -> &'static str {
        match self {
            LoadedModel::Sequential(_) => "Sequential",
            LoadedModel::Functional(_) => "Functional",
        }
    }

    /// Rebuilds a model from `{"class_name": "Sequential" | "Functional", "config": {...}}`, with
    /// newly initialized weights.
    ///
    /// # Errors
    /// Another `class_name`, or a config that the class's `from_config` rejects.
    pub fn from_config(value: &Value) -> Result<Self> {
        let class = value
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::value(format!(
                    "a model's architecture needs a string `class_name` (\"Sequential\" or \"Functional\"); received {}",
                    crate::layers::config::short(value)
                ))
            })?;
        let config = value.get("config").ok_or_else(|| {
            Error::value(format!(
                "the architecture of a `{class}` model needs a `config` object"
            ))
        })?;
        match class {
            "Sequential" => Sequential::from_config(config).map(LoadedModel::Sequential),
            "Functional" => Functional::from_config(config).map(LoadedModel::Functional),
            other => Err(Error::value(format!(
                "Unknown model class `{other}`: expected \"Sequential\" or \"Functional\""
            ))),
        }
    }

    /// The Sequential model, or `Err(self)` for another class.
    ///
    /// # Errors
    /// `self` back when it is not Sequential.
    // The model itself comes back on a mismatch, as `Arc::try_unwrap` gives its argument back.
    #[allow(clippy::result_large_err)]
    pub fn into_sequential(self) -> std::result::Result<Sequential, Self> {
        match self {
            LoadedModel::Sequential(m) => Ok(m),
            other => Err(other),
        }
    }

    /// The functional model, or `Err(self)` for another class.
    ///
    /// # Errors
    /// `self` back when it is not Functional.
    // The model itself comes back on a mismatch, as `Arc::try_unwrap` gives its argument back.
    #[allow(clippy::result_large_err)]
    pub fn into_functional(self) -> std::result::Result<Functional, Self> {
        match self {
            LoadedModel::Functional(m) => Ok(m),
            other => Err(other),
        }
    }

    fn inner(&self) -> &dyn Model {
        match self {
            LoadedModel::Sequential(m) => m,
            LoadedModel::Functional(m) => m,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Model {
        match self {
            LoadedModel::Sequential(m) => m,
            LoadedModel::Functional(m) => m,
        }
    }
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedModel::{}(\"{}\")", self.class_name(), self.name())
    }
}

impl Model for LoadedModel {
    fn as_savable(&self) -> Option<&dyn crate::io::SavableModel> {
        Some(self)
    }
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner_mut().call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner().variables()
    }
    fn name(&self) -> &str {
        match self {
            LoadedModel::Sequential(m) => m.name(),
            LoadedModel::Functional(m) => m.name(),
        }
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        self.inner().losses()
    }
    fn summary_rows(&self) -> Vec<LayerSummary> {
        self.inner().summary_rows()
    }
    fn named_variables(&self) -> Vec<(String, Variable)> {
        self.inner().named_variables()
    }
    fn legacy_named_variables(&self) -> Option<Vec<(String, Variable)>> {
        self.inner().legacy_named_variables()
    }
    fn output_mask(&self) -> Result<Option<Tensor>> {
        self.inner().output_mask()
    }
    fn output_names(&self) -> Vec<String> {
        self.inner().output_names()
    }
}

/// Rebuilds a model from its JSON architecture (Keras's `keras.models.model_from_json`), with
/// newly initialized weights: `Sequential::to_json` or `Functional::to_json` output.
///
/// ```
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let x = Input::new(&[4]);
/// let model = Functional::new(&[x.clone()], &[Dense::new(2).apply(&x)?])?;
/// let copy = ferrokeras::io::model_from_json(&model.to_json()?)?;
/// assert_eq!(copy.class_name(), "Functional");
/// assert!(ferrokeras::io::model_from_json("{not json").is_err());
/// # Ok(()) }
/// ```
///
/// # Errors
/// Malformed JSON, an unknown model or layer class, or a bad config (see
/// [`Sequential::from_config`] and [`Functional::from_config`]).
pub fn model_from_json(json_text: &str) -> Result<LoadedModel> {
    let value: Value = serde_json::from_str(json_text).map_err(|e| {
        Error::value(format!(
            "malformed model JSON ({e}): expected an object {{\"class_name\": \"Sequential\" or \"Functional\", \"config\": {{...}}}}"
        ))
    })?;
    LoadedModel::from_config(&value)
}

/// Saves a whole model, architecture and weights, in one safetensors file (format below).
/// [`load_model`] rebuilds it without the code that built it. A path ending in `.keras` gets
/// Keras 3's own format instead ([`super::save_keras`]), which Keras's `load_model` reads.
///
/// A compiled model ([`Trainer`](crate::Trainer)) is saved through its model:
/// `save_model(trainer.model(), path)`. The optimizer state and the compile options are not saved
/// (use [`save_checkpoint`](super::save_checkpoint) to resume training).
///
/// # File format
/// A `save_model` file is a safetensors file (readable by Python's `safetensors` package as it
/// is) with
/// - one tensor per variable, named by its structural name (`dense/kernel`, `dense_1/bias`,
///   `batch_normalization/moving_mean`, ...), exactly as [`save_weights`](super::save_weights)
///   writes them, so the file also loads with [`load_weights`](super::load_weights) into a model
///   built in code;
/// - string metadata: `format` = `ferrokeras.model`, `format_version` = `2`, `model_config` =
///   the architecture as compact JSON, and the data checksum every ferrokeras file carries.
///
/// `model_config` is Keras 3's JSON (`model.to_json()`), which Keras's `model_from_json` reads:
/// `{"module": "keras", "class_name": "Sequential", "config": {...}, "registered_name": null}`
/// (Functional: module `keras.src.models.functional`, `registered_name` `"Functional"`).
/// - Sequential: `{"name", "trainable", "dtype", "layers": [...], "build_input_shape"}`; the
///   first entry is the `InputLayer` when the input shape is known, its config `{"batch_shape":
///   [null, 784], "dtype": "float32", "sparse": false, "ragged": false, "optional": false}`.
/// - Functional: `{"name", "trainable", "layers": [...], "input_layers": [...],
///   "output_layers": [...]}`. Each layer entry also has `"name"` and `"inbound_nodes"`, in
///   Keras's order ([`Functional::layers`], inputs included). `inbound_nodes` lists each
///   application of the layer (a shared layer has several), in order; a node is `{"args":
///   [x], "kwargs": {}}`, `x` the tensor it takes (a list of them for `Concatenate`/`Add`), each
///   `{"class_name": "__keras_tensor__", "config": {"shape", "dtype", "keras_history":
///   [layer_name, node_index, 0]}}`, the output of node `node_index` of layer `layer_name` (an
///   input is node 0 of its `InputLayer`). `input_layers` and `output_layers` are such
///   references. The older node form, a list of references, is read too.
///
/// Each layer entry is `{"module": "keras.layers", "class_name", "config", "registered_name":
/// null}`; the config is what [`Layer::config`](crate::layers::Layer::config) returns, the
/// constructor arguments under Keras's names (regularizers as `{"class_name": "L2", "config":
/// {"l2": 0.01}}`), plus `trainable` and, for a layer with a policy of its own (`Dense`, the
/// convolutions, an `Activation` given one), `dtype`, a `DTypePolicy` object; initializers are
/// Keras's objects ([`crate::initializers::Initializer::to_json`]). Reading also takes what Keras
/// writes that ferrokeras has no setting for (constraints, `groups`, `renorm`, ...) at their
/// default values only: another value is an error. A layer whose `trainable` is false is frozen
/// once built.
///
/// ```
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let mut model = Sequential::new()
///     .input(&[3])
///     .add(Dense::new(8).activation("relu")?)
///     .add(Dense::new(1));
/// let path = std::env::temp_dir().join("ferrokeras-doc-model.safetensors");
/// ferrokeras::io::save_model(&model, &path)?;
///
/// let mut loaded = ferrokeras::io::load_model(&path)?;
/// let x = Data::from(candle_core::Tensor::ones((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu)?);
/// let a = model.call(&x, false)?.tensor()?.to_vec2::<f32>()?;
/// let b = loaded.call(&x, false)?.tensor()?.to_vec2::<f32>()?;
/// assert_eq!(a, b);
/// # Ok(()) }
/// ```
///
/// # Errors
/// A layer that cannot describe itself (its class is named: nested models and layers without
/// [`Layer::config`](crate::layers::Layer::config)), two variables with the same structural
/// name, or an unwritable path.
pub fn save_model(model: &dyn SavableModel, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if is_keras_path(path) {
        return super::save_keras(model, path);
    }
    let config = model.model_config()?;
    let mut file = TensorFile::default();
    for (name, v) in model.named_variables() {
        if file.tensors.insert(name.clone(), v.value()).is_some() {
            return Err(Error::value(format!(
                "cannot save model \"{}\": two of its variables have the structural name `{name}`",
                model.name()
            )));
        }
    }
    file.metadata.insert("format".into(), MODEL_FORMAT.into());
    file.metadata
        .insert("format_version".into(), MODEL_FORMAT_VERSION.to_string());
    file.metadata.insert(
        super::checkpoint::WEIGHT_NAMES_KEY.into(),
        super::checkpoint::WEIGHT_NAMES.into(),
    );
    file.metadata
        .insert(MODEL_CONFIG_KEY.into(), config.to_string());
    write_tensors(path, &file)
}

/// Whether `path` names a Keras `.keras` file.
pub(crate) fn is_keras_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("keras"))
}

/// Loads a model saved by [`save_model`]: rebuilds the architecture from the file's JSON (layers
/// from the registry [`crate::layers::from_config`], names restored), builds it, and assigns the
/// saved weights. Predictions equal the saved model's exactly. A `.keras` file (a zip archive,
/// from Keras's `model.save` or [`super::save_keras`]) is read by [`super::load_keras`].
///
/// Returns a [`LoadedModel`]: an enum of the two savable classes, which implements [`Model`]
/// itself. The model lives on the CPU. Building draws initial values from the global random
/// generator, as building the model in code does, before the saved weights replace them. The
/// restored layer and model names are reserved
/// ([`crate::layers::reserve_name`]): automatic names made later in the process do not repeat
/// them.
///
/// # Errors
/// A missing, corrupt or truncated file; a file without an architecture (a weights file from
/// `save_weights` or a checkpoint: use `load_weights` / `load_checkpoint` on a model built in
/// code); a newer format version; malformed JSON, an unknown model or layer class, or a bad
/// config; weights that do not match the architecture (the first missing, extra or
/// differently shaped tensor is named).
pub fn load_model(path: impl AsRef<Path>) -> Result<LoadedModel> {
    let path = path.as_ref();
    let zip_magic = || {
        let mut magic = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| &magic == b"PK\x03\x04")
    };
    if is_keras_path(path) || zip_magic() {
        return super::load_keras(path);
    }
    let file = read_tensors(path)?;
    let json = architecture_of(&file, path)?;
    let value: Value = serde_json::from_str(json).map_err(|e| {
        Error::value(format!(
            "`{}` holds a malformed architecture ({e}): expected the JSON object {{\"class_name\": \"Sequential\" or \"Functional\", \"config\": {{...}}}} written by `save_model`",
            path.display()
        ))
    })?;
    let model = LoadedModel::from_config(&value).map_err(|e| {
        Error::value(format!(
            "cannot rebuild the model saved in `{}`: {e}",
            path.display()
        ))
    })?;
    let vars = match (
        &model,
        file.metadata.get("format_version").map(String::as_str),
    ) {
        // Format 1 listed a functional model's layers in the order they first run, and named
        // the weights by that order; format 2 lists them in Keras's order.
        (LoadedModel::Functional(m), Some("1")) => {
            let listed: Vec<&str> = value["config"]["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["class_name"] != "InputLayer")
                .filter_map(|e| e["config"]["name"].as_str().or(e["name"].as_str()))
                .collect();
            let layers = m.layers();
            crate::model::structural_names(listed.iter().filter_map(|name| {
                layers.iter().find_map(|l| {
                    let l = l.lock();
                    (l.name() == *name).then(|| (l.name().to_string(), l.variables()))
                })
            }))
        }
        _ => model.named_variables(),
    };
    assign_exact(vars, &file.tensors, path)?;
    Ok(model)
}

/// The architecture JSON of a file, with an error that says what the file is when it has none.
fn architecture_of<'a>(file: &'a TensorFile, path: &Path) -> Result<&'a str> {
    let format = file.metadata.get("format").map(String::as_str);
    if let Some(v) = file.metadata.get("format_version")
        && format == Some(MODEL_FORMAT)
    {
        match v.parse::<u32>() {
            Ok(n) if n <= MODEL_FORMAT_VERSION => {}
            _ => {
                return Err(Error::value(format!(
                    "`{}` is a model file of format version {v}, but this version of ferrokeras reads versions up to {MODEL_FORMAT_VERSION}; upgrade ferrokeras",
                    path.display()
                )));
            }
        }
    }
    file.metadata
        .get(MODEL_CONFIG_KEY)
        .map(String::as_str)
        .ok_or_else(|| {
            let what = match format {
                Some("ferrokeras.weights") => {
                    "a weights-only file (format `ferrokeras.weights`, written by `save_weights`): build the model in code and use `ferrokeras::io::load_weights`".to_string()
                }
                Some("ferrokeras.checkpoint") => {
                    "a training checkpoint (format `ferrokeras.checkpoint`): build the model in code and use `load_checkpoint`".to_string()
                }
                Some(other) => format!("a file of format `{other}`"),
                None => format!(
                    "a safetensors file without a `format` entry (metadata keys: {})",
                    if file.metadata.is_empty() {
                        "none".to_string()
                    } else {
                        file.metadata.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ),
            };
            Error::value(format!(
                "`{}` holds no model architecture: expected a file written by `ferrokeras::io::save_model` (format `{MODEL_FORMAT}`, with the metadata entry `{MODEL_CONFIG_KEY}`), but it is {what}",
                path.display()
            ))
        })
}

/// Assigns every tensor to the variable of the same structural name, after checking that the
/// names are exactly the model's and every shape matches (nothing is assigned otherwise).
fn assign_exact(
    vars: Vec<(String, Variable)>,
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let mismatch = |why: String| {
        Error::value(format!(
            "the weights in `{}` do not match its architecture: {why}",
            path.display()
        ))
    };
    for (name, v) in &vars {
        match tensors.get(name) {
            None => {
                return Err(mismatch(format!(
                    "the model has a variable `{name}` (shape {:?}) that the file has no tensor for",
                    v.shape().dims()
                )));
            }
            Some(t) if t.dims() != v.shape().dims() => {
                return Err(mismatch(format!(
                    "tensor `{name}` has shape {:?} in the file but {:?} in the model",
                    t.dims(),
                    v.shape().dims()
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !vars.iter().any(|(n, _)| n == *k)) {
        return Err(mismatch(format!(
            "the file has a tensor `{extra}` that the model does not have"
        )));
    }
    for (name, v) in &vars {
        if let Some(t) = tensors.get(name) {
            v.assign(&t.to_device(v.as_tensor().device())?)?;
        }
    }
    Ok(())
}
