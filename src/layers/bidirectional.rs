//! `Bidirectional`: a recurrent layer run over the sequence both ways, its two outputs merged.

use candle_core::Tensor;
use serde_json::{Value, json};

use super::{KerasVars, Layer, unique_name};
use crate::tape::Variable;
use crate::{Error, Result};

/// How [`Bidirectional`] merges the forward and backward outputs (Keras's `merge_mode`).
///
/// ```
/// use ferrokeras::layers::MergeMode;
/// assert_eq!("ave".parse::<MergeMode>().unwrap(), MergeMode::Ave);
/// assert!("first".parse::<MergeMode>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeMode {
    /// Side by side on the last axis (Keras's default): twice the units.
    Concat,
    /// Their sum.
    Sum,
    /// Their product.
    Mul,
    /// Their mean.
    Ave,
}

impl MergeMode {
    const NAMES: [(&'static str, MergeMode); 4] = [
        ("concat", MergeMode::Concat),
        ("sum", MergeMode::Sum),
        ("mul", MergeMode::Mul),
        ("ave", MergeMode::Ave),
    ];
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("concat", |(n, _)| n)
    }
}

impl std::str::FromStr for MergeMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                Error::value(format!(
                    "Invalid merge mode. Received: {s:?}. Merge mode should be one of \"sum\", \"mul\", \"ave\", \"concat\" (a merge mode of None, two outputs, is not supported)"
                ))
            })
    }
}

/// Keras's `layers.Bidirectional`: runs a recurrent layer ([`SimpleRNN`], [`LSTM`], [`GRU`])
/// forward and a copy of it backward over the same sequence, and merges the two outputs
/// ([`MergeMode`], default concatenation). With `return_sequences`, the backward outputs are
/// put back in time order first, so that step `t` of the result sees the whole sequence.
///
/// As in Keras, the wrapped layer is rebuilt from its config: the forward copy is named
/// `forward_{name}`, the backward one `backward_{name}` with `go_backwards` set (so the
/// wrapped layer must run forward); the variables are the forward layer's, then the backward
/// layer's.
///
/// [`SimpleRNN`]: super::SimpleRNN
/// [`LSTM`]: super::LSTM
/// [`GRU`]: super::GRU
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{Bidirectional, Dense, LSTM, Layer};
/// let mut bi = Bidirectional::new(LSTM::new(4).return_sequences(true)).unwrap();
/// let x = Tensor::ones((2, 5, 3), DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(bi.call(&x, false).unwrap().dims(), &[2, 5, 8]);
/// assert_eq!(bi.count_params(), 2 * 4 * (3 * 4 + 4 * 4 + 4));
/// let mut summed = Bidirectional::new(LSTM::new(4)).unwrap().merge_mode("sum").unwrap();
/// assert_eq!(summed.call(&x, false).unwrap().dims(), &[2, 4]);
/// assert!(Bidirectional::new(Dense::new(2)).is_err()); // not a recurrent layer
/// assert!(Bidirectional::new(LSTM::new(2).go_backwards(true)).is_err()); // as in Keras
/// ```
pub struct Bidirectional {
    name: String,
    merge_mode: MergeMode,
    forward: Box<dyn Layer>,
    backward: Box<dyn Layer>,
    return_sequences: bool,
}

/// `go_backwards` and `return_sequences` of a recurrent layer's config.
fn recurrent_flags(layer: &dyn Layer, config: &Value) -> Result<(bool, bool)> {
    let flag = |key: &str| {
        config.get(key).and_then(Value::as_bool).ok_or_else(|| {
            Error::value(format!(
                "Bidirectional wraps a recurrent layer (SimpleRNN, LSTM, GRU, or one of your own whose config has `go_backwards` and `return_sequences`); layer \"{}\" ({}) has no boolean `{key}` in its config",
                layer.name(),
                layer.class_name()
            ))
        })
    };
    Ok((flag("go_backwards")?, flag("return_sequences")?))
}

/// `layer` rebuilt from its config under a new name, with `go_backwards` set to true for the
/// backward copy (as Keras does: a layer that already runs backwards has no forward copy).
fn copy_of(layer: &dyn Layer, name: &str, backward: bool) -> Result<Box<dyn Layer>> {
    let mut entry = super::serialize(layer)?;
    let config = entry["config"]
        .as_object_mut()
        .ok_or_else(|| Error::value("a layer config must be a JSON object"))?;
    config.insert("name".into(), json!(name));
    if backward {
        config.insert("go_backwards".into(), json!(true));
    }
    super::deserialize(&entry)
}

/// `layer` with `zero_output_for_mask` set to `return_sequences` (Keras's Bidirectional does
/// this to both layers, so that the two outputs at a masked step are zeros): rebuilt from its
/// config when the config has the key and another value.
fn zero_masked_outputs(layer: Box<dyn Layer>, return_sequences: bool) -> Result<Box<dyn Layer>> {
    let mut entry = super::serialize(layer.as_ref())?;
    let Some(config) = entry["config"].as_object_mut() else {
        return Ok(layer);
    };
    match config.get("zero_output_for_mask") {
        Some(v) if v.as_bool() != Some(return_sequences) => {
            config.insert("zero_output_for_mask".into(), json!(return_sequences));
            super::deserialize(&entry)
        }
        _ => Ok(layer),
    }
}

impl Bidirectional {
    /// Wraps `layer`, with a backward copy of it.
    ///
    /// # Errors
    /// A layer whose config has no `go_backwards` and `return_sequences` (not recurrent), that
    /// runs backwards already, or that cannot be rebuilt from its config.
    pub fn new(layer: impl Layer + 'static) -> Result<Self> {
        let config = layer.config().unwrap_or(Value::Null);
        recurrent_flags(&layer, &config)?;
        let base = layer.name();
        let base = base.strip_prefix("forward_").unwrap_or(base);
        let forward = copy_of(&layer, &format!("forward_{base}"), false)?;
        let base = layer.name();
        let base = base.strip_prefix("backward_").unwrap_or(base);
        let backward = copy_of(&layer, &format!("backward_{base}"), true)?;
        Self::from_parts(forward, backward)
    }

    /// Wraps `forward` and uses `backward` as the backward layer (Keras's `backward_layer`),
    /// as they are.
    ///
    /// # Errors
    /// Layers that are not recurrent, that run in the same direction, or that differ in
    /// `return_sequences`.
    pub fn with_backward_layer(
        forward: impl Layer + 'static,
        backward: impl Layer + 'static,
    ) -> Result<Self> {
        Self::from_parts(Box::new(forward), Box::new(backward))
    }

    fn from_parts(forward: Box<dyn Layer>, backward: Box<dyn Layer>) -> Result<Self> {
        let fc = forward.config().unwrap_or(Value::Null);
        let bc = backward.config().unwrap_or(Value::Null);
        let (fb, fs) = recurrent_flags(forward.as_ref(), &fc)?;
        let (bb, bs) = recurrent_flags(backward.as_ref(), &bc)?;
        if fb == bb {
            return Err(Error::value(format!(
                "Forward layer and backward layer should have different `go_backwards` value. Received: forward_layer.go_backwards {fb}, backward_layer.go_backwards={bb}"
            )));
        }
        if fs != bs {
            return Err(Error::value(format!(
                "Forward layer and backward layer are expected to have the same value for attribute \"return_sequences\", got \"{fs}\" for forward layer and \"{bs}\" for backward layer"
            )));
        }
        Ok(Self {
            name: unique_name("bidirectional"),
            merge_mode: MergeMode::Concat,
            forward: zero_masked_outputs(forward, fs)?,
            backward: zero_masked_outputs(backward, fs)?,
            return_sequences: fs,
        })
    }

    /// How the two outputs are merged, by Keras name: `"concat"` (default), `"sum"`, `"mul"`,
    /// `"ave"`.
    ///
    /// # Errors
    /// Another name.
    pub fn merge_mode(mut self, mode: &str) -> Result<Self> {
        self.merge_mode = mode.parse()?;
        Ok(self)
    }

    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }

    /// The forward layer.
    pub fn forward_layer(&self) -> &dyn Layer {
        self.forward.as_ref()
    }

    /// The backward layer.
    pub fn backward_layer(&self) -> &dyn Layer {
        self.backward.as_ref()
    }

    /// Rebuilds the layer from Keras's config (`layer`, `backward_layer`, `merge_mode`).
    pub(crate) fn from_keras(
        layer: &Value,
        backward: Option<&Value>,
        merge_mode: Option<&str>,
        name: Option<String>,
    ) -> Result<Self> {
        let forward = super::deserialize(layer)?;
        let mut bi = match backward {
            Some(b) => Self::from_parts(forward, super::deserialize(b)?)?,
            None => {
                let name = forward.name().to_string();
                let base = name.strip_prefix("forward_").unwrap_or(&name);
                let backward = copy_of(forward.as_ref(), &format!("backward_{base}"), true)?;
                Self::from_parts(forward, backward)?
            }
        };
        if let Some(m) = merge_mode {
            bi.merge_mode = m.parse()?;
        }
        if let Some(n) = name {
            bi = bi.named(n);
        }
        Ok(bi)
    }

    fn merge(&self, y: Tensor, y_rev: Tensor) -> Result<Tensor> {
        let y_rev = if self.return_sequences {
            let t = y_rev.dim(1)?;
            let rev: Vec<u32> = (0..t as u32).rev().collect();
            y_rev.index_select(&Tensor::new(rev.as_slice(), y_rev.device())?, 1)?
        } else {
            y_rev
        };
        Ok(match self.merge_mode {
            MergeMode::Concat => Tensor::cat(&[&y, &y_rev], y.rank() - 1)?,
            MergeMode::Sum => (y + y_rev)?,
            MergeMode::Mul => (y * y_rev)?,
            MergeMode::Ave => ((y + y_rev)? * 0.5)?,
        })
    }
}

impl Layer for Bidirectional {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Bidirectional"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        self.forward.build(input_shape)?;
        self.backward.build(input_shape)
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.call_masked(x, None, training)
    }
    fn call_masked(&mut self, x: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
        let y = self.forward.call_masked(x, mask, training)?;
        let y_rev = self.backward.call_masked(x, mask, training)?;
        self.merge(y, y_rev)
    }
    fn compute_mask(&self, _x: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        Ok(if self.return_sequences {
            mask.cloned()
        } else {
            None
        })
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let mut shape = self.forward.compute_output_shape(input_shape)?;
        if self.merge_mode == MergeMode::Concat
            && let Some(last) = shape.last_mut()
        {
            *last *= 2;
        }
        Ok(shape)
    }
    fn variables(&self) -> Vec<Variable> {
        let mut v = self.forward.variables();
        v.extend(self.backward.variables());
        v
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut l = self.forward.losses()?;
        l.extend(self.backward.losses()?);
        Ok(l)
    }
    fn keras_vars(&self) -> Vec<KerasVars> {
        let mut groups = vec![KerasVars {
            path: "vars".into(),
            name: self.name.clone(),
            variables: Vec::new(),
        }];
        for (dir, layer) in [
            ("forward_layer", &self.forward),
            ("backward_layer", &self.backward),
        ] {
            groups.extend(layer.keras_vars().into_iter().map(|mut g| {
                g.path = format!("{dir}/{}", g.path);
                g
            }));
        }
        groups
    }
    fn dtype_policy_name(&self) -> Option<String> {
        self.forward.dtype_policy_name()
    }
    fn config(&self) -> Option<Value> {
        Some(json!({
            "name": self.name,
            "merge_mode": self.merge_mode.name(),
            "layer": super::serialize(self.forward.as_ref()).ok()?,
            "backward_layer": super::serialize(self.backward.as_ref()).ok()?,
        }))
    }
}
