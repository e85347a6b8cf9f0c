//! Weights and checkpoints in the safetensors format.
//!
//! Tensors are named by their structural path (`dense_1/kernel`), so the files read in Python's
//! `safetensors` package as they are. A checkpoint adds the optimizer's state (`optimizer/...`), the
//! model's own extra state (`model_state/...`, e.g. a GAN's two optimizers) and metadata. Every file
//! carries a SHA-256 of its tensor data in its metadata, checked on load: a corrupt or truncated file
//! is reported, never silently used. Files are written atomically (temporary file, fsync, rename).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

use crate::model::{Model, StepContext};
use crate::{Error, Result};

const CHECKSUM_KEY: &str = "ferrokeras.sha256";

/// A checkpoint's content: named tensors and string metadata.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Tensors by name, sorted.
    pub tensors: BTreeMap<String, Tensor>,
    /// Metadata (without the checksum entry).
    pub metadata: BTreeMap<String, String>,
}

fn data_checksum(st: &SafeTensors<'_>) -> String {
    let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        if let Ok(view) = st.tensor(&n) {
            h.update(n.as_bytes());
            h.update(view.data());
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes tensors and metadata as one safetensors file, atomically, with a data checksum.
///
/// # Errors
/// A tensor that cannot be serialized, or an unwritable path.
pub fn write_tensors(path: &Path, file: &TensorFile) -> Result<()> {
    let tensors: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let serialize = |meta: HashMap<String, String>| -> Result<Vec<u8>> {
        safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
            .map_err(|e| Error::value(format!("could not serialize `{}`: {e}", path.display())))
    };
    let mut meta: HashMap<String, String> = file.metadata.clone().into_iter().collect();
    let unsigned = serialize(meta.clone())?;
    let st = SafeTensors::deserialize(&unsigned).map_err(|e| {
        Error::value(format!(
            "internal: re-reading serialized tensors failed: {e}"
        ))
    })?;
    meta.insert(CHECKSUM_KEY.to_string(), data_checksum(&st));
    crate::io::write_atomic(path, &serialize(meta)?)
}

/// Reads a file written by [`write_tensors`] (or any safetensors file), onto the CPU.
///
/// # Errors
/// A missing file, a file that is not safetensors (truncated or corrupt), or a checksum mismatch.
pub fn read_tensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |why: String| {
        Error::value(format!(
            "`{}` is not a valid checkpoint ({why}); the file is truncated or corrupt. Delete it or restore it from a backup.",
            path.display()
        ))
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    if let Some(expected) = metadata.remove(CHECKSUM_KEY) {
        let got = data_checksum(&st);
        if got != expected {
            return Err(corrupt(format!(
                "its data checksum is {got}, but it was written with {expected}"
            )));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| corrupt(e.to_string()))?
        .into_iter()
        .collect();
    Ok(TensorFile { tensors, metadata })
}

/// Assigns `tensors` to `vars` by name, after checking every name and shape (nothing is assigned
/// when anything does not match).
fn assign_by_name(
    vars: &[(String, crate::Variable)],
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    for (name, v) in vars {
        match tensors.get(name) {
            None => {
                return Err(Error::value(format!(
                    "`{}` does not match the model: it has no tensor `{}` (shape {:?}). The file holds: {}",
                    path.display(),
                    name,
                    v.shape().dims(),
                    tensors
                        .keys()
                        .take(8)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            Some(t) if t.dims() != v.shape().dims() => {
                return Err(Error::value(format!(
                    "`{}` does not match the model: tensor `{}` has shape {:?} in the file but {:?} in the model",
                    path.display(),
                    name,
                    t.dims(),
                    v.shape().dims()
                )));
            }
            Some(_) => {}
        }
    }
    for (name, v) in vars {
        if let Some(t) = tensors.get(name) {
            v.assign(&t.to_device(v.as_tensor().device())?)?;
        }
    }
    Ok(())
}

/// `"{variable name}/{slot}"` with the variable's structural name in place of its own.
fn to_structural(key: &str, named: &[(String, crate::Variable)]) -> String {
    named
        .iter()
        .find_map(|(s, v)| {
            key.strip_prefix(v.name())
                .filter(|rest| rest.starts_with('/'))
                .map(|rest| format!("{s}{rest}"))
        })
        .unwrap_or_else(|| key.to_string())
}

/// The inverse of [`to_structural`].
fn from_structural(key: &str, named: &[(String, crate::Variable)]) -> String {
    named
        .iter()
        .find_map(|(s, v)| {
            key.strip_prefix(s.as_str())
                .filter(|rest| rest.starts_with('/') && rest[1..].find('/').is_none())
                .map(|rest| format!("{}{rest}", v.name()))
        })
        .unwrap_or_else(|| key.to_string())
}

/// An optimizer's [`crate::optimizers::Optimizer::state`] with variables named structurally
/// (`named` as from [`Model::named_variables`]), for a model that keeps its own optimizers (a GAN's
/// [`Model::extra_state`]).
///
/// # Errors
/// A state that cannot be read.
pub fn optimizer_state(
    opt: &dyn crate::optimizers::Optimizer,
    named: &[(String, crate::Variable)],
) -> Result<Vec<(String, Tensor)>> {
    Ok(opt
        .state()?
        .into_iter()
        .map(|(k, t)| (to_structural(&k, named), t))
        .collect())
}

/// Restores an [`optimizer_state`].
///
/// # Errors
/// A state that does not fit the variables.
pub fn load_optimizer_state(
    opt: &mut dyn crate::optimizers::Optimizer,
    state: &[(String, Tensor)],
    named: &[(String, crate::Variable)],
) -> Result<()> {
    let state: Vec<(String, Tensor)> = state
        .iter()
        .map(|(k, t)| (from_structural(k, named), t.clone()))
        .collect();
    let vars: Vec<crate::Variable> = named.iter().map(|(_, v)| v.clone()).collect();
    opt.load_state(&state, &vars)
}

/// The metadata key that says how a file names its weights; files without it come from before
/// layer lists followed Keras's order ([`Model::legacy_named_variables`]).
pub(crate) const WEIGHT_NAMES_KEY: &str = "weight_names";
/// Its value: structural names in Keras's layer order.
pub(crate) const WEIGHT_NAMES: &str = "keras_order";

/// The model's variables under the names `file` gives them.
fn names_for(model: &dyn Model, file: &TensorFile) -> Vec<(String, crate::Variable)> {
    match file.metadata.get(WEIGHT_NAMES_KEY) {
        Some(_) => model.named_variables(),
        None => model
            .legacy_named_variables()
            .unwrap_or_else(|| model.named_variables()),
    }
}

/// Saves every variable of `model` to a safetensors file (`"dense_1/kernel"` → tensor), or,
/// for a path ending in `.weights.h5`, to Keras 3's weights file (what Keras's
/// `model.save_weights("m.weights.h5")` writes and `model.load_weights` reads).
///
/// ```
/// use ferrokeras::prelude::*;
/// let model = Sequential::new().input(&[3]).add(Dense::new(2));
/// let path = std::env::temp_dir().join("ferrokeras-doc.weights.safetensors");
/// ferrokeras::io::save_weights(&model, &path).unwrap();
/// let mut again = model; // a model of the same structure
/// ferrokeras::io::load_weights(&mut again, &path).unwrap();
/// // Keras's own format:
/// let keras = std::env::temp_dir().join("ferrokeras-doc.weights.h5");
/// ferrokeras::io::save_weights(&again, &keras).unwrap();
/// ferrokeras::io::load_weights(&mut again, &keras).unwrap();
/// ```
///
/// # Errors
/// An unwritable path; for `.weights.h5`, a model of your own (Keras's layout lists the layers
/// of a `Sequential`, functional or loaded model).
pub fn save_weights(model: &dyn Model, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if is_keras_weights(path) {
        return super::keras_file::save_weights_h5(keras_layout(model, path)?, path, None);
    }
    refuse_other_h5(path)?;
    let mut file = TensorFile::default();
    for (name, v) in model.named_variables() {
        file.tensors.insert(name, v.value());
    }
    file.metadata
        .insert("format".into(), "ferrokeras.weights".into());
    file.metadata
        .insert(WEIGHT_NAMES_KEY.into(), WEIGHT_NAMES.into());
    write_tensors(path, &file)
}

/// Whether `path` names Keras 3's weights file (`*.weights.h5`, as Keras requires).
pub(crate) fn is_keras_weights(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".weights.h5"))
}

/// Keras's rule for weights files: an HDF5 name ends in `.weights.h5`; a safetensors file is
/// not given an `.h5` name.
pub(crate) fn refuse_other_h5(path: &Path) -> Result<()> {
    if path.extension().is_some_and(|e| e == "h5") {
        return Err(Error::value(format!(
            "The filename must end in `.weights.h5` (Keras's weights file) or `.safetensors`. Received: filepath={}",
            path.display()
        )));
    }
    Ok(())
}

/// `model` as Keras's files list its layers, or why it cannot be.
pub(crate) fn keras_layout<'a>(
    model: &'a dyn Model,
    path: &Path,
) -> Result<&'a dyn super::SavableModel> {
    model.as_savable().ok_or_else(|| {
        Error::value(format!(
            "`{}` is in one of Keras's formats, which list the layers of a Sequential, functional or loaded model; model \"{}\" is a model of your own. Use a `.safetensors` path instead",
            path.display(),
            model.name()
        ))
    })
}

/// Loads weights saved by [`save_weights`] (or any safetensors file with the model's variable
/// names); a path ending in `.h5` is read as Keras 3's weights file (Keras's
/// `model.save_weights("m.weights.h5")`), layer by layer in Keras's order.
///
/// # Errors
/// A missing or corrupt file, or a file that does not match the model (the first missing name or
/// differing shape is named; nothing is assigned then).
pub fn load_weights(model: &mut dyn Model, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if path.extension().is_some_and(|e| e == "h5") {
        super::keras_file::load_weights_h5(keras_layout(model, path)?, path)?;
        return Ok(());
    }
    let file = read_tensors(path)?;
    let vars = names_for(model, &file);
    if let Some(extra) = file.tensors.keys().find(|k| {
        !k.starts_with("optimizer/")
            && !k.starts_with("model_state/")
            && !vars.iter().any(|(n, _)| n == k.as_str())
    }) {
        return Err(Error::value(format!(
            "`{}` does not match the model: it has a tensor `{extra}` that the model does not have (the model's variables: {})",
            path.display(),
            vars.iter()
                .take(8)
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    assign_by_name(&vars, &file.tensors, path)
}

/// The tensors of a checkpoint: weights by structural name, `optimizer/...` and `model_state/...`.
///
/// # Errors
/// A state that cannot be read.
pub fn checkpoint_file(model: &dyn Model, compiled: &StepContext) -> Result<TensorFile> {
    let mut file = TensorFile::default();
    let named = model.named_variables();
    for (name, v) in &named {
        file.tensors.insert(name.clone(), v.value());
    }
    if let Some(opt) = compiled.optimizer.as_deref() {
        for (k, t) in opt.state()? {
            file.tensors
                .insert(format!("optimizer/{}", to_structural(&k, &named)), t);
        }
    }
    for (k, t) in model.extra_state()? {
        file.tensors.insert(format!("model_state/{k}"), t);
    }
    file.metadata
        .insert("format".into(), "ferrokeras.checkpoint".into());
    file.metadata
        .insert(WEIGHT_NAMES_KEY.into(), WEIGHT_NAMES.into());
    Ok(file)
}

/// Restores what [`checkpoint_file`] built (entries under other prefixes are left to the caller).
///
/// # Errors
/// A file that does not match the model or its optimizer (named in the message).
pub fn restore_checkpoint_file(
    model: &mut dyn Model,
    compiled: &mut StepContext,
    file: &TensorFile,
    path: &Path,
) -> Result<()> {
    let named = names_for(model, file);
    assign_by_name(&named, &file.tensors, path)?;
    let strip = |prefix: &str| -> Vec<(String, Tensor)> {
        file.tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|s| (s.to_string(), t.clone())))
            .collect()
    };
    let opt_state: Vec<(String, Tensor)> = strip("optimizer/")
        .into_iter()
        .map(|(k, t)| (from_structural(&k, &named), t))
        .collect();
    if let Some(opt) = compiled.optimizer.as_deref_mut() {
        opt.load_state(&opt_state, &model.trainable_variables())?;
    }
    model.load_extra_state(&strip("model_state/"))
}

/// Saves weights, the compiled optimizer's state, the model's extra state
/// ([`Model::extra_state`]) and `metadata` in one file.
///
/// # Errors
/// An unwritable path or a state that cannot be read.
pub fn save_checkpoint(
    model: &dyn Model,
    compiled: &StepContext,
    path: impl AsRef<Path>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut file = checkpoint_file(model, compiled)?;
    file.metadata.extend(metadata.clone());
    write_tensors(path.as_ref(), &file)
}

/// Restores a [`save_checkpoint`] file; returns its metadata.
///
/// # Errors
/// A missing or corrupt file, or one that does not match the model or its optimizer.
pub fn load_checkpoint(
    model: &mut dyn Model,
    compiled: &mut StepContext,
    path: impl AsRef<Path>,
) -> Result<BTreeMap<String, String>> {
    let path = path.as_ref();
    let file = read_tensors(path)?;
    restore_checkpoint_file(model, compiled, &file, path)?;
    Ok(file.metadata)
}
