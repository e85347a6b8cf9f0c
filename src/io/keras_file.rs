//! Keras 3's native model files (`.keras`): a zip archive of `metadata.json`, `config.json`
//! (the model's JSON) and `model.weights.h5` (the weights, HDF5).
//!
//! The weights file holds, for each entry of Keras's `model.layers` (a functional model's
//! inputs included), a group `layers/{key}/vars` with the layer's variables as datasets `0`,
//! `1`, ... in Keras's order (trainable first, as created: a `Dense`'s kernel then bias; a
//! `BatchNormalization`'s gamma, beta, moving mean, moving variance); a layer built around a
//! cell (Keras's RNNs) keeps them in `layers/{key}/cell/vars` and an empty `layers/{key}/vars`.
//! `{key}` is the layer's class name in snake case, numbered when it repeats (`dense`,
//! `dense_1`, `conv2d`), not the layer's own name, which is kept as the group's `name`
//! attribute. Zip archives use Keras's uncompressed entries when written and are read stored
//! or deflated. HDF5 is read and written by the `hdf5-pure` crate (pure Rust; no system HDF5
//! library to install).

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use candle_core::{DType, Tensor};
use hdf5_pure::{AttrValue, FileBuilder, GroupBuilder};
use serde_json::{Value, json};

use super::model_file::{KerasLayer, LoadedModel, SavableModel};
use crate::layers::KerasVars;
use crate::{Error, Result};

/// The Keras version whose `.keras` layout this module writes (in `metadata.json`).
pub const KERAS_FORMAT_VERSION: &str = "3.15.1";

/// Keras's `naming.to_snake_case` of a class name: `Conv2D` → `conv2d`, `BatchNormalization` →
/// `batch_normalization`, `LeakyReLU` → `leaky_re_lu`, `InputLayer` → `input_layer`.
fn snake_case(class: &str) -> String {
    let chars: Vec<char> = class
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    // `(.)([A-Z][a-z]+)` → `\1_\2`: an underscore before a capital that starts a word (a capital
    // followed by lowercase letters), except at the start.
    let mut first = String::new();
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && c.is_ascii_uppercase() && chars.get(i + 1).is_some_and(char::is_ascii_lowercase)
        {
            first.push('_');
        }
        first.push(*c);
    }
    // `([a-z])([A-Z])` → `\1_\2`, then lowercase.
    let chars: Vec<char> = first.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && c.is_ascii_uppercase() && chars[i - 1].is_ascii_lowercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Each layer's key in the weights file (`dense`, `dense_1`, ...), in list order.
fn layer_keys(layers: &[KerasLayer]) -> Vec<String> {
    let mut used: HashMap<String, usize> = HashMap::new();
    layers
        .iter()
        .map(|l| {
            let base = snake_case(&l.class);
            match used.get_mut(&base) {
                Some(n) => {
                    *n += 1;
                    format!("{base}_{n}")
                }
                None => {
                    used.insert(base.clone(), 0);
                    base
                }
            }
        })
        .collect()
}

/// Saves `model` as a Keras 3 `.keras` file, which Keras's `keras.saving.load_model` reads
/// (and [`load_keras`] here): the architecture (Keras's JSON, as [`crate::io::save_model`]
/// writes it) and the weights. A compiled model's options and optimizer state are saved by
/// [`crate::trainer::Trainer::save`] to a `.keras` path.
///
/// ```
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// let mut model = Sequential::new()
///     .input(&[3])
///     .add(Dense::new(4).activation("relu")?)
///     .add(Dense::new(1));
/// let path = std::env::temp_dir().join("ferrokeras-doc.keras");
/// ferrokeras::io::save_keras(&model, &path)?;
/// let mut loaded = ferrokeras::io::load_keras(&path)?;
/// let x = Data::from(candle_core::Tensor::ones((2, 3), candle_core::DType::F32, &candle_core::Device::Cpu)?);
/// assert_eq!(
///     model.call(&x, false)?.tensor()?.to_vec2::<f32>()?,
///     loaded.call(&x, false)?.tensor()?.to_vec2::<f32>()?
/// );
/// # Ok(()) }
/// ```
///
/// # Errors
/// A layer that cannot describe itself (see [`SavableModel::model_config`]), or an unwritable
/// path.
pub fn save_keras(model: &dyn SavableModel, path: impl AsRef<Path>) -> Result<()> {
    save_keras_compiled(model, path.as_ref(), None)
}

/// One variable of a compiled model's optimizer, as Keras writes it under `optimizer/vars`.
pub(crate) enum OptimizerVar {
    /// The step count (an integer scalar).
    Count(i64),
    /// A float variable: the learning rate (a scalar) or a slot.
    Values(Tensor),
}

/// A compiled model's `compile_config` and its optimizer's variables, in Keras's order.
pub(crate) struct CompiledParts {
    pub(crate) compile_config: Value,
    pub(crate) optimizer_name: String,
    pub(crate) optimizer_vars: Vec<OptimizerVar>,
}

/// [`save_keras`], with the compile options and optimizer state of a compiled model when
/// given (`config.json`'s `compile_config`, `model.weights.h5`'s `optimizer/vars`).
pub(crate) fn save_keras_compiled(
    model: &dyn SavableModel,
    path: &Path,
    compiled: Option<&CompiledParts>,
) -> Result<()> {
    let mut config = model.model_config()?;
    if let (Some(c), Some(map)) = (compiled, config.as_object_mut()) {
        map.insert("compile_config".to_string(), c.compile_config.clone());
    }
    let metadata = json!({
        "keras_version": KERAS_FORMAT_VERSION,
        "ferrokeras_version": env!("CARGO_PKG_VERSION"),
    });
    let weights = weights_h5(model, compiled)?;
    let zip_err = |e: zip::result::ZipError| {
        Error::io(
            path,
            std::io::Error::other(format!("cannot build the archive: {e}")),
        )
    };
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    // Stored, as Keras writes; a fixed date, so that the same model gives the same bytes.
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    for (name, bytes) in [
        ("metadata.json", metadata.to_string().into_bytes()),
        ("config.json", config.to_string().into_bytes()),
        ("model.weights.h5", weights),
    ] {
        zip.start_file(name, stored).map_err(zip_err)?;
        zip.write_all(&bytes).map_err(|e| Error::io(path, e))?;
    }
    let bytes = zip.finish().map_err(zip_err)?.into_inner();
    super::write_atomic(path, &bytes)
}

/// The weights file: `layers/{key}/vars/{i}` for every layer (deeper for layers made of
/// sublayers, [`crate::layers::Layer::keras_vars`]), and the model's own (empty) `vars`.
fn weights_h5(model: &dyn SavableModel, compiled: Option<&CompiledParts>) -> Result<Vec<u8>> {
    let layers = model.keras_layers();
    let keys = layer_keys(&layers);
    let mut file = FileBuilder::new();
    let mut group = file.create_group("layers");
    for (l, key) in layers.iter().zip(&keys) {
        let mut layer = group.create_group(key);
        let paths: Vec<(Vec<&str>, &KerasVars)> = l
            .groups
            .iter()
            .map(|g| (g.path.split('/').collect(), g))
            .collect();
        add_groups(&mut layer, &paths)?;
        group.add_group(layer.finish());
    }
    file.add_group(group.finish());
    if let Some(c) = compiled {
        let mut opt = file.create_group("optimizer");
        let mut vars = opt.create_group("vars");
        vars.set_attr("name", AttrValue::String(c.optimizer_name.clone()));
        for (i, v) in c.optimizer_vars.iter().enumerate() {
            match v {
                OptimizerVar::Count(n) => {
                    vars.create_dataset(&i.to_string())
                        .with_i64_data(&[*n])
                        .with_shape(&[]);
                }
                OptimizerVar::Values(t) => {
                    let t = t.to_dtype(DType::F32)?;
                    let shape: Vec<u64> = t.dims().iter().map(|d| *d as u64).collect();
                    let values = t.flatten_all()?.to_vec1::<f32>()?;
                    vars.create_dataset(&i.to_string())
                        .with_f32_data(&values)
                        .with_shape(&shape);
                }
            }
        }
        opt.add_group(vars.finish());
        file.add_group(opt.finish());
    }
    let mut own = file.create_group("vars");
    own.set_attr("name", AttrValue::String(model.name().to_string()));
    file.add_group(own.finish());
    file.finish().map_err(|e| {
        Error::value(format!(
            "cannot encode the weights of model \"{}\" as HDF5: {e}",
            model.name()
        ))
    })
}

/// Writes under `parent` the groups at `paths` (what is left of each path, and its
/// variables), in the order they first appear: a path's last part holds the variables as
/// datasets `0`, `1`, ... and the `name` attribute.
fn add_groups(parent: &mut GroupBuilder, paths: &[(Vec<&str>, &KerasVars)]) -> Result<()> {
    let mut firsts: Vec<&str> = Vec::new();
    for (p, _) in paths {
        if let Some(f) = p.first()
            && !firsts.contains(f)
        {
            firsts.push(f);
        }
    }
    for first in firsts {
        let mut g = parent.create_group(first);
        let mut deeper = Vec::new();
        for (p, vars) in paths.iter().filter(|(p, _)| p.first() == Some(&first)) {
            if p.len() > 1 {
                deeper.push((p[1..].to_vec(), *vars));
                continue;
            }
            g.set_attr("name", AttrValue::String(vars.name.clone()));
            for (i, v) in vars.variables.iter().enumerate() {
                let t = v.value().to_dtype(DType::F32)?;
                let shape: Vec<u64> = t.dims().iter().map(|d| *d as u64).collect();
                let values = t.flatten_all()?.to_vec1::<f32>()?;
                g.create_dataset(&i.to_string())
                    .with_f32_data(&values)
                    .with_shape(&shape);
            }
        }
        add_groups(&mut g, &deeper)?;
        parent.add_group(g.finish());
    }
    Ok(())
}

/// Loads a Keras 3 `.keras` file, written by Keras (`model.save("model.keras")`) or by
/// [`save_keras`]: the model is rebuilt from `config.json` (as
/// [`crate::io::model_from_json`] does) and takes the weights of `model.weights.h5`. The
/// compile options and optimizer state in the file are left aside
/// ([`crate::trainer::Trainer::load_keras`] restores them).
///
/// # Errors
/// A missing file, not a zip archive, or one without `config.json` / `model.weights.h5`; an
/// architecture ferrokeras cannot rebuild (the layer and option are named); weights missing,
/// extra or of another shape than the architecture's (the layer and variable are named).
pub fn load_keras(path: impl AsRef<Path>) -> Result<LoadedModel> {
    Ok(read_keras(path.as_ref())?.model)
}

/// What a `.keras` file holds: its `config.json` (with Keras's `compile_config` when the model
/// was saved compiled), the weights file (with Keras's optimizer variables), and the model
/// rebuilt with its weights.
pub(crate) struct KerasArchive {
    pub(crate) config: Value,
    pub(crate) weights: hdf5_pure::File,
    pub(crate) model: LoadedModel,
}

/// Reads a `.keras` file (see [`load_keras`]).
pub(crate) fn read_keras(path: &Path) -> Result<KerasArchive> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let not_keras = |what: String| {
        Error::value(format!(
            "`{}` is not a Keras model file: {what}; expected a zip archive with `config.json` and `model.weights.h5`, as Keras's `model.save(\"model.keras\")` writes",
            path.display()
        ))
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| not_keras(format!("not a zip archive ({e})")))?;
    let mut entry = |name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| not_keras(format!("no `{name}` ({e})")))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).map_err(|e| Error::io(path, e))?;
        Ok(out)
    };
    let config = entry("config.json")?;
    let weights = entry("model.weights.h5")?;
    let value: Value = serde_json::from_slice(&config)
        .map_err(|e| not_keras(format!("`config.json` is not JSON ({e})")))?;
    let model = LoadedModel::from_config(&value).map_err(|e| {
        Error::value(format!(
            "cannot rebuild the model saved in `{}`: {e}",
            path.display()
        ))
    })?;
    let h5 = hdf5_pure::File::from_bytes(weights)
        .map_err(|e| not_keras(format!("`model.weights.h5` is not HDF5 ({e})")))?;
    assign_layers(&h5, &model, path)?;
    Ok(KerasArchive {
        config: value,
        weights: h5,
        model,
    })
}

/// Reads every layer's variables from `h5` (Keras's `layers/{key}/...` groups) and assigns
/// them once all are read and checked: nothing changes when one is missing or misshapen.
fn assign_layers(h5: &hdf5_pure::File, model: &dyn SavableModel, path: &Path) -> Result<()> {
    let layers = model.keras_layers();
    let keys = layer_keys(&layers);
    let mut pending = Vec::new();
    for (l, key) in layers.iter().zip(&keys) {
        for g in &l.groups {
            pending.extend(read_group(
                h5,
                &format!("layers/{key}/{}", g.path),
                l,
                g,
                path,
            )?);
        }
    }
    for (v, t) in pending {
        v.assign(&t)?;
    }
    Ok(())
}

/// Saves `model`'s weights as Keras's weights file (`model.save_weights("m.weights.h5")`):
/// the `model.weights.h5` of a `.keras` archive, alone; `compiled` adds a compiled
/// model's optimizer, as Keras's file of a compiled model holds it.
pub(crate) fn save_weights_h5(
    model: &dyn SavableModel,
    path: &Path,
    compiled: Option<&CompiledParts>,
) -> Result<()> {
    let bytes = weights_h5(model, compiled)?;
    super::write_atomic(path, &bytes)
}

/// Loads Keras's weights file (`model.save_weights("m.weights.h5")`, or [`save_weights_h5`])
/// into `model`; returns the file, for its optimizer variables.
pub(crate) fn load_weights_h5(model: &dyn SavableModel, path: &Path) -> Result<hdf5_pure::File> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let h5 = hdf5_pure::File::from_bytes(bytes).map_err(|e| {
        Error::value(format!(
            "`{}` is not a Keras weights file: not HDF5 ({e})",
            path.display()
        ))
    })?;
    assign_layers(&h5, model, path)?;
    Ok(h5)
}

/// The values for the variables of `vars` (one group of layer `l`), from the datasets of
/// `group`: each variable with its value, checked, to be assigned once every group is read.
fn read_group(
    h5: &hdf5_pure::File,
    group: &str,
    l: &KerasLayer,
    vars: &KerasVars,
    path: &Path,
) -> Result<Vec<(crate::tape::Variable, Tensor)>> {
    let (class, name) = (&l.class, &l.name);
    let not_keras = |what: String| {
        Error::value(format!(
            "`{}` is not a Keras model file: {what}",
            path.display()
        ))
    };
    if vars.variables.is_empty() {
        return Ok(Vec::new());
    }
    let stored: Vec<String> = match h5.group(group) {
        Ok(g) => g
            .datasets()
            .map_err(|e| not_keras(format!("cannot list `{group}` in the weights ({e})")))?,
        Err(_) => {
            return Err(Error::value(format!(
                "`{}` holds no weights for layer \"{name}\" ({class}): the weights have no group `{group}`; the file and the model do not match",
                path.display()
            )));
        }
    };
    if stored.len() != vars.variables.len() {
        return Err(Error::value(format!(
            "layer \"{name}\" ({class}) has {} variables, but `{}` stores {} for it under `{group}`; is the layer built? (a Sequential model needs an input shape)",
            vars.variables.len(),
            path.display(),
            stored.len()
        )));
    }
    let mut out = Vec::with_capacity(vars.variables.len());
    for (i, v) in vars.variables.iter().enumerate() {
        let dataset = format!("{group}/{i}");
        let read = || -> std::result::Result<(Vec<usize>, Vec<f32>), hdf5_pure::Error> {
            let d = h5.dataset(&dataset)?;
            let shape = d.shape()?.iter().map(|s| *s as usize).collect();
            // Integer variables (a `Normalization`'s `count`) are read as floats.
            let values = match d.read_f32() {
                Ok(v) => v,
                Err(_) => d.read_i64()?.into_iter().map(|x| x as f32).collect(),
            };
            Ok((shape, values))
        };
        let (shape, values) = read()
            .map_err(|e| not_keras(format!("cannot read `{dataset}` in the weights ({e})")))?;
        if shape != v.shape().dims() {
            return Err(Error::value(format!(
                "the weights in `{}` do not match its architecture: `{dataset}` (layer \"{name}\", variable `{}`) has shape {shape:?}, the layer expects {:?}",
                path.display(),
                v.name(),
                v.shape().dims()
            )));
        }
        let t = Tensor::from_vec(values, shape, v.as_tensor().device())?
            .to_dtype(v.as_tensor().dtype())?;
        out.push((v.clone(), t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keras's class-name keys.
    #[test]
    fn snake_case_is_keras_s() {
        for (class, key) in [
            ("Dense", "dense"),
            ("Conv2D", "conv2d"),
            ("Conv2DTranspose", "conv2d_transpose"),
            ("BatchNormalization", "batch_normalization"),
            ("LeakyReLU", "leaky_re_lu"),
            ("ReLU", "re_lu"),
            ("InputLayer", "input_layer"),
            ("GlobalAveragePooling2D", "global_average_pooling2d"),
            ("UpSampling2D", "up_sampling2d"),
            ("MaxPooling2D", "max_pooling2d"),
            ("LayerNormalization", "layer_normalization"),
        ] {
            assert_eq!(snake_case(class), key, "{class}");
        }
        let layers: Vec<KerasLayer> = ["Dense", "Conv2D", "Dense", "Dense"]
            .iter()
            .map(|c| KerasLayer {
                class: c.to_string(),
                name: String::new(),
                groups: Vec::new(),
            })
            .collect();
        assert_eq!(
            layer_keys(&layers),
            ["dense", "conv2d", "dense_1", "dense_2"]
        );
    }
}
