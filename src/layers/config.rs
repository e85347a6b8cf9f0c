//! Layer configurations: the JSON a layer describes itself with ([`Layer::config`]) and the
//! registry that rebuilds a layer from it ([`from_config`]).
//!
//! A configuration is a JSON object of the layer's constructor arguments, named as Keras names
//! them (`{"name": "dense", "units": 4, "activation": "relu", "use_bias": true, ...}`). Missing
//! optional keys take the constructor's default; a missing `name` gets a fresh automatic name.
//! Unknown keys are an error (rather than silently ignored options).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value, json};

use super::{
    Activation, ActivationLayer, Add, Average, AveragePooling1D, AveragePooling2D,
    BatchNormalization, CellKind, Concatenate, Conv1D, Conv2D, Conv2DTranspose, Cropping2D,
    DataFormat, Dense, Dropout, Embedding, Flatten, GRU, GlobalAveragePooling1D,
    GlobalAveragePooling2D, GlobalMaxPooling1D, GlobalMaxPooling2D, LSTM, Layer,
    LayerNormalization, LeakyReLU, Masking, MaxPooling1D, MaxPooling2D, Maximum, Minimum, Multiply,
    Padding, Permute, ReLU, Recurrent, Regularizer, RepeatVector, Rescaling, Reshape, SimpleRNN,
    Softmax, Subtract, UpSampling1D, UpSampling2D, ZeroPadding2D, reserve_name,
};
use crate::{Error, Result};

/// The class names [`from_config`] knows without registration.
pub const BUILTIN_LAYERS: &[&str] = &[
    "Activation",
    "Add",
    "Average",
    "AveragePooling1D",
    "AveragePooling2D",
    "BatchNormalization",
    "Bidirectional",
    "Concatenate",
    "Conv1D",
    "Conv2D",
    "Conv2DTranspose",
    "Cropping2D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Embedding",
    "Flatten",
    "GRU",
    "GaussianNoise",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "LSTM",
    "LayerNormalization",
    "LeakyReLU",
    "Masking",
    "MaxPooling1D",
    "MaxPooling2D",
    "Maximum",
    "Minimum",
    "MultiHeadAttention",
    "Multiply",
    "Normalization",
    "Permute",
    "RandomBrightness",
    "RandomContrast",
    "RandomFlip",
    "RandomRotation",
    "RandomTranslation",
    "RandomZoom",
    "ReLU",
    "RepeatVector",
    "Rescaling",
    "Reshape",
    "SeparableConv2D",
    "SimpleRNN",
    "Softmax",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "Subtract",
    "TimeDistributed",
    "UpSampling1D",
    "UpSampling2D",
    "ZeroPadding2D",
];

/// A constructor for a registered layer class: builds the layer from its configuration.
pub type LayerConstructor = fn(&Value) -> Result<Box<dyn Layer>>;

fn registry() -> &'static Mutex<BTreeMap<String, LayerConstructor>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<String, LayerConstructor>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Registers a layer class of your own, so that [`from_config`] (and so
/// [`load_model`](crate::io::load_model)) can rebuild it (Keras's `register_keras_serializable`).
/// The layer must also implement [`Layer::config`]. Registering a class again replaces the
/// constructor.
///
/// ```
/// use candle_core::Tensor;
/// use ferrokeras::layers::{Layer, from_config, register_layer};
/// use ferrokeras::Result;
///
/// struct Scale { name: String, factor: f64 }
/// impl Layer for Scale {
///     fn name(&self) -> &str { &self.name }
///     fn class_name(&self) -> &str { "Scale" }
///     fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> { Ok((x * self.factor)?) }
///     fn compute_output_shape(&self, s: &[usize]) -> Result<Vec<usize>> { Ok(s.to_vec()) }
///     fn config(&self) -> Option<serde_json::Value> {
///         Some(serde_json::json!({"name": self.name, "factor": self.factor}))
///     }
/// }
/// fn scale_from_config(c: &serde_json::Value) -> Result<Box<dyn Layer>> {
///     let bad = || ferrokeras::Error::value(format!("bad Scale config: {c}"));
///     Ok(Box::new(Scale {
///         name: c["name"].as_str().ok_or_else(bad)?.to_string(),
///         factor: c["factor"].as_f64().ok_or_else(bad)?,
///     }))
/// }
/// register_layer("Scale", scale_from_config).unwrap();
/// let layer = Scale { name: "scale".into(), factor: 2.0 };
/// let again = from_config("Scale", &layer.config().unwrap()).unwrap();
/// assert_eq!(again.name(), "scale");
/// ```
///
/// # Errors
/// A built-in class name ([`BUILTIN_LAYERS`]), which cannot be replaced.
pub fn register_layer(class_name: &str, constructor: LayerConstructor) -> Result<()> {
    if BUILTIN_LAYERS.contains(&class_name) {
        return Err(Error::value(format!(
            "cannot register layer class `{class_name}`: it is a built-in layer class; choose another class name"
        )));
    }
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(class_name.to_string(), constructor);
    Ok(())
}

/// Rebuilds a layer from its class name and configuration (what [`Layer::class_name`] and
/// [`Layer::config`] return). The layer is not built: its variables are created on first use.
/// The saved name is restored and reserved (see [`reserve_name`]).
///
/// ```
/// use ferrokeras::layers::{Dense, Layer, Regularizer, from_config};
/// let dense = Dense::new(4).activation("relu").unwrap().kernel_regularizer(Regularizer::L2(0.01));
/// let copy = from_config("Dense", &dense.config().unwrap()).unwrap();
/// assert_eq!(copy.name(), Layer::name(&dense)); // `Dense::name` is also a builder
/// assert_eq!(copy.config(), dense.config());
/// assert!(from_config("Dense", &serde_json::json!({"units": "four"})).is_err());
/// assert!(from_config("Densse", &serde_json::json!({})).is_err());
/// ```
///
/// # Errors
/// An unknown class name (neither built in nor registered with [`register_layer`]), or a
/// configuration that is not an object, lacks a required key, has a key of the wrong type or an
/// unknown key: the message names the class, the key, what was expected and what was received.
pub fn from_config(class_name: &str, config: &Value) -> Result<Box<dyn Layer>> {
    let layer = builtin(class_name, config)?;
    let layer = match layer {
        Some(l) => l,
        None => {
            let ctor = registry()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(class_name)
                .copied();
            match ctor {
                Some(ctor) => ctor(&without_common_keys(config))?,
                None => {
                    let registered: Vec<String> = registry()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .keys()
                        .cloned()
                        .collect();
                    return Err(Error::value(format!(
                        "Unknown layer class `{class_name}`. Expected one of the built-in layers ({}){}; register your own layer classes with `ferrokeras::layers::register_layer`",
                        BUILTIN_LAYERS.join(", "),
                        if registered.is_empty() {
                            String::new()
                        } else {
                            format!(" or a registered class ({})", registered.join(", "))
                        }
                    )));
                }
            }
        }
    };
    reserve_name(layer.name());
    Ok(layer)
}

/// A layer's `{"module": "keras.layers", "class_name": ..., "config": {...}, "registered_name":
/// null}`, as Keras 3's `keras.layers.serialize` writes it: the config ([`Layer::config`]) with
/// Keras's `trainable` (false once every variable is frozen) and, for a layer with a policy of
/// its own ([`Layer::dtype_policy_name`]), `dtype` added. A registered class of your own gets its class name as
/// `registered_name` and no module.
///
/// ```
/// use ferrokeras::layers::{Dropout, Layer, serialize, deserialize};
/// let v = serialize(&Dropout::new(0.25).unwrap()).unwrap();
/// assert_eq!(v["module"], "keras.layers");
/// assert_eq!(v["class_name"], "Dropout");
/// assert_eq!(v["config"]["rate"], 0.25);
/// assert_eq!(v["config"]["trainable"], true);
/// assert!(v["config"].get("dtype").is_none()); // Dropout computes in its input's dtype
/// let d = serialize(&ferrokeras::layers::Dense::new(2)).unwrap();
/// assert_eq!(d["config"]["dtype"]["config"]["name"], "float32");
/// assert_eq!(serialize(deserialize(&v).unwrap().as_ref()).unwrap(), v);
/// ```
///
/// # Errors
/// A layer whose [`Layer::config`] is `None`; the message names its class.
pub fn serialize(layer: &dyn Layer) -> Result<Value> {
    match layer.config() {
        Some(mut config) => {
            if let Some(map) = config.as_object_mut() {
                map.insert("trainable".into(), json!(layer_trainable(layer)));
                // Only a policy of its own: a layer without one computes in its input's dtype,
                // and Keras gives it the global policy.
                if let Some(policy) = layer.dtype_policy_name() {
                    map.insert("dtype".into(), dtype_policy_json(&policy));
                }
            }
            let class = layer.class_name();
            Ok(if BUILTIN_LAYERS.contains(&class) {
                json!({
                    "module": "keras.layers",
                    "class_name": class,
                    "config": config,
                    "registered_name": null,
                })
            } else {
                json!({"class_name": class, "config": config, "registered_name": class})
            })
        }
        None if matches!(layer.class_name(), "Sequential" | "Functional") => {
            Err(Error::value(format!(
                "cannot save layer `{}` of class `{}`: nested models are not supported by model saving; save the inner model on its own, or rebuild the outer model in code and use `save_weights`",
                layer.name(),
                layer.class_name()
            )))
        }
        None => Err(Error::value(format!(
            "cannot save layer `{}` of class `{}`: it does not describe itself (`Layer::config` returns None). Implement `config` for it and register the class with `ferrokeras::layers::register_layer`",
            layer.name(),
            layer.class_name()
        ))),
    }
}

/// Rebuilds a layer from `{"class_name": ..., "config": {...}}` (Keras's
/// `keras.layers.deserialize`); see [`serialize`].
///
/// # Errors
/// A value without a string `class_name` or an object `config`, or what [`from_config`] rejects.
pub fn deserialize(value: &Value) -> Result<Box<dyn Layer>> {
    let class = value
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::value(format!(
                "a layer entry needs a string `class_name`; received {}",
                short(value)
            ))
        })?;
    let config = value.get("config").ok_or_else(|| {
        Error::value(format!(
            "the entry of layer class `{class}` needs a `config` object; received {}",
            short(value)
        ))
    })?;
    from_config(class, config)
}

/// Whether a layer counts as trainable in its saved config (Keras's `layer.trainable`): `false`
/// once every variable it has is frozen ([`Layer::set_trainable`]).
fn layer_trainable(layer: &dyn Layer) -> bool {
    let vars = layer.variables();
    vars.is_empty() || vars.iter().any(|v| !v.is_frozen())
}

/// A dtype policy as Keras 3 writes it.
pub(crate) fn dtype_policy_json(name: &str) -> Value {
    json!({
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": name},
        "registered_name": null,
    })
}

/// The config without the keys [`serialize`] adds to every layer's (`trainable`, `dtype`), for
/// the constructor of a registered class, which reads only its own.
fn without_common_keys(config: &Value) -> Value {
    let mut config = config.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("trainable");
        map.remove("dtype");
    }
    config
}

/// Whether a layer's saved config says it is frozen (`"trainable": false`); model loaders
/// freeze such layers once built.
pub(crate) fn config_frozen(config: &Value) -> bool {
    config.get("trainable") == Some(&Value::Bool(false))
}

fn builtin(class: &str, config: &Value) -> Result<Option<Box<dyn Layer>>> {
    if !BUILTIN_LAYERS.contains(&class) {
        return Ok(None);
    }
    let mut c = ConfigReader::new(&format!("layer class `{class}`"), config)?;
    let name = c.opt_string("name")?;
    // Keys every Keras 3 layer config carries: `trainable` (applied by the model loaders once
    // the layer is built) and `dtype` (a policy of its own where the layer has one).
    c.bool_or("trainable", true)?;
    let policy = c.dtype_policy("dtype")?;
    let own_policy = policy
        .clone()
        .filter(|p| *p != crate::mixed_precision::global_policy().name());
    c.keras_options(class)?;
    let layer: Box<dyn Layer> = match class {
        "Dense" => {
            let mut d = Dense::new(c.req_usize("units")?)
                .with_activation(c.activation("activation")?)
                .use_bias(c.bool_or("use_bias", true)?);
            if let Some(p) = &own_policy {
                d = d.dtype(p)?;
            }
            if let Some(i) = c.initializer_of("kernel_initializer")? {
                d = d.with_kernel_initializer(i);
            }
            if let Some(i) = c.initializer_of("bias_initializer")? {
                d = d.with_bias_initializer(i);
            }
            if let Some(r) = c.regularizer("kernel_regularizer")? {
                d = d.kernel_regularizer(r);
            }
            if let Some(r) = c.regularizer("bias_regularizer")? {
                d = d.bias_regularizer(r);
            }
            Box::new(named(d, name, Dense::named))
        }
        "Activation" => {
            let a = c.activation("activation")?;
            let mut l = ActivationLayer::from_activation(a);
            // Kept even when it is the global policy: a float32 activation after bfloat16
            // layers casts up (Keras's advice for a model's last activation).
            if let Some(p) = &policy {
                l = l.dtype(p)?;
            }
            Box::new(named(l, name, ActivationLayer::named))
        }
        "ReLU" => Box::new(named(ReLU::new(), name, ReLU::named)),
        "Softmax" => {
            let axis = match c.get("axis").cloned() {
                Some(Value::Array(items)) if items.len() == 1 => items[0]
                    .as_i64()
                    .and_then(|a| isize::try_from(a).ok())
                    .ok_or_else(|| c.invalid("axis", "an integer", &items[0]))?,
                Some(v @ Value::Array(_)) => {
                    return Err(c.invalid(
                        "axis",
                        "one axis (a softmax over several axes is not supported)",
                        &v,
                    ));
                }
                _ => c.isize_or("axis", -1)?,
            };
            Box::new(named(Softmax::new().axis(axis), name, Softmax::named))
        }
        "LeakyReLU" => {
            let slope = c.f32_or("negative_slope", 0.3)?;
            Box::new(named(LeakyReLU::new(slope), name, LeakyReLU::named))
        }
        "Dropout" => {
            let rate = c.req_f32("rate")?;
            let mut d = Dropout::new(rate)?;
            if let Some(seed) = c.seed()? {
                d = d.seed(seed);
            }
            if let Some(v) = c.get("noise_shape") {
                let shape = v
                    .as_array()
                    .and_then(|dims| {
                        dims.iter()
                            .map(|d| match d {
                                Value::Null => Some(None),
                                d => d.as_u64().and_then(|n| usize::try_from(n).ok()).map(Some),
                            })
                            .collect::<Option<Vec<Option<usize>>>>()
                    })
                    .ok_or_else(|| {
                        c.invalid(
                            "noise_shape",
                            "a list of sizes or nulls, batch axis included",
                            v,
                        )
                    })?;
                d = d.noise_shape(&shape);
            }
            Box::new(named(d, name, Dropout::named))
        }
        "Flatten" => {
            let f = c.data_format("data_format")?;
            Box::new(named(Flatten::new().data_format(f), name, Flatten::named))
        }
        "RepeatVector" => Box::new(named(
            RepeatVector::new(c.req_usize("n")?),
            name,
            RepeatVector::named,
        )),
        "UpSampling1D" => Box::new(named(
            UpSampling1D::new(c.opt_single("size")?.unwrap_or(2)),
            name,
            UpSampling1D::named,
        )),
        "Permute" => {
            let v = c.required("dims")?.clone();
            let dims = v
                .as_array()
                .and_then(|items| {
                    items
                        .iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| c.invalid("dims", "a list of axis numbers from 1", &v))?;
            Box::new(named(Permute::new(&dims), name, Permute::named))
        }
        "Reshape" => {
            let target = c.req_i64_list("target_shape")?;
            Box::new(named(Reshape::new(&target), name, Reshape::named))
        }
        "Concatenate" => {
            let axis = c.isize_or("axis", -1)?;
            Box::new(named(
                Concatenate::new().axis(axis),
                name,
                Concatenate::named,
            ))
        }
        "Add" => Box::new(named(Add::new(), name, Add::named)),
        "Subtract" => Box::new(named(Subtract::new(), name, Subtract::named)),
        "Multiply" => Box::new(named(Multiply::new(), name, Multiply::named)),
        "Average" => Box::new(named(Average::new(), name, Average::named)),
        "Maximum" => Box::new(named(Maximum::new(), name, Maximum::named)),
        "Minimum" => Box::new(named(Minimum::new(), name, Minimum::named)),
        "Conv2D" | "Conv2DTranspose" => {
            let filters = c.req_usize("filters")?;
            let kernel = c.req_pair("kernel_size")?;
            let strides = c.pair_or("strides", (1, 1))?;
            let padding = c.padding("padding")?;
            let dilation = c.pair_or("dilation_rate", (1, 1))?;
            let activation = c.activation("activation")?;
            let use_bias = c.bool_or("use_bias", true)?;
            let data_format = c.data_format("data_format")?;
            let policy = own_policy
                .clone()
                .unwrap_or_else(|| crate::mixed_precision::global_policy().name().to_string());
            let kernel_reg = c.regularizer("kernel_regularizer")?;
            let bias_reg = c.regularizer("bias_regularizer")?;
            let kernel_init = c
                .initializer_of("kernel_initializer")?
                .unwrap_or_else(crate::initializers::Initializer::glorot_uniform);
            let bias_init = c
                .initializer_of("bias_initializer")?
                .unwrap_or(crate::initializers::Initializer::Zeros);
            if class == "Conv2D" {
                let mut l = Conv2D::new(filters, kernel)
                    .dtype(&policy)?
                    .maybe_regularizers(kernel_reg, bias_reg)
                    .with_kernel_initializer(kernel_init)
                    .with_bias_initializer(bias_init)
                    .strides(strides)
                    .dilation_rate(dilation)
                    .use_bias(use_bias)
                    .data_format(data_format)
                    .with_activation(activation)
                    .padding(padding_str(padding))?;
                if let Some(n) = name {
                    l = l.named(n);
                }
                Box::new(l)
            } else {
                let output_padding = c.opt_pair("output_padding")?;
                let mut l = Conv2DTranspose::new(filters, kernel)
                    .dtype(&policy)?
                    .maybe_regularizers(kernel_reg, bias_reg)
                    .with_kernel_initializer(kernel_init)
                    .with_bias_initializer(bias_init)
                    .strides(strides)
                    .dilation_rate(dilation)
                    .use_bias(use_bias)
                    .data_format(data_format)
                    .with_activation(activation)
                    .padding(padding_str(padding))?;
                if let Some(p) = output_padding {
                    l = l.output_padding(p);
                }
                if let Some(n) = name {
                    l = l.named(n);
                }
                Box::new(l)
            }
        }
        "SpatialDropout1D" | "SpatialDropout2D" | "GaussianNoise" => {
            let seed = c.seed()?;
            match class {
                "GaussianNoise" => {
                    let mut l = super::GaussianNoise::new(c.f64_or("stddev", 0.0)?);
                    if let Some(s) = seed {
                        l = l.seed(s);
                    }
                    Box::new(named(l, name, super::GaussianNoise::named))
                }
                "SpatialDropout1D" => {
                    let mut l = super::SpatialDropout1D::new(c.f32_or("rate", 0.0)?)?;
                    if let Some(s) = seed {
                        l = l.seed(s);
                    }
                    Box::new(named(l, name, super::SpatialDropout1D::named))
                }
                _ => {
                    let mut l = super::SpatialDropout2D::new(c.f32_or("rate", 0.0)?)?
                        .data_format(c.data_format("data_format")?);
                    if let Some(s) = seed {
                        l = l.seed(s);
                    }
                    Box::new(named(l, name, super::SpatialDropout2D::named))
                }
            }
        }
        "RandomFlip" => {
            let mode: super::FlipMode = match c.get("mode") {
                None => super::FlipMode::HorizontalAndVertical,
                Some(v) => v
                    .as_str()
                    .ok_or_else(|| {
                        c.invalid(
                            "mode",
                            "\"horizontal\", \"vertical\" or \"horizontal_and_vertical\"",
                            v,
                        )
                    })?
                    .parse()?,
            };
            let mut l = super::RandomFlip::new(mode).data_format(c.data_format("data_format")?);
            if let Some(seed) = c.seed()? {
                l = l.seed(seed);
            }
            Box::new(named(l, name, super::RandomFlip::named))
        }
        "RandomContrast" | "RandomBrightness" => {
            let factor = c.factor("factor")?;
            let range = match c.factor("value_range")? {
                Some(Factor::Pair(a, b)) => (a, b),
                Some(Factor::One(v)) => (v, v),
                None => (0.0, 255.0),
            };
            let format = c.data_format("data_format")?;
            let seed = c.seed()?;
            // A single number is Keras's constructor argument; a pair its stored bounds.
            let (single, factor) = match factor {
                Some(Factor::One(f)) => (true, (f, f)),
                Some(Factor::Pair(a, b)) => (false, (a, b)),
                None => {
                    return Err(Error::value(format!(
                        "invalid config of layer class `{class}`: the required key `factor` is missing"
                    )));
                }
            };
            if class == "RandomContrast" {
                let mut l = if single {
                    super::RandomContrast::new(factor.1)?
                } else {
                    super::RandomContrast::new(0.0)?.factor_range(factor.0, factor.1)?
                };
                l = l.value_range(range.0, range.1)?.data_format(format);
                if let Some(s) = seed {
                    l = l.seed(s);
                }
                Box::new(named(l, name, super::RandomContrast::named))
            } else {
                let mut l = if single {
                    super::RandomBrightness::new(factor.1)?
                } else {
                    super::RandomBrightness::new(0.0)?.factor_range(factor.0, factor.1)?
                };
                l = l.value_range(range.0, range.1)?.data_format(format);
                if let Some(s) = seed {
                    l = l.seed(s);
                }
                Box::new(named(l, name, super::RandomBrightness::named))
            }
        }
        "RandomRotation" | "RandomTranslation" | "RandomZoom" => {
            let fill: super::FillMode = match c.opt_string("fill_mode")? {
                Some(s) => s.parse()?,
                None => super::FillMode::Reflect,
            };
            let value = c.f64_or("fill_value", 0.0)? as f32;
            let interp: super::Interpolation = match c.opt_string("interpolation")? {
                Some(s) => s.parse()?,
                None => super::Interpolation::Bilinear,
            };
            let format = c.data_format("data_format")?;
            let seed = c.seed()?;
            macro_rules! common {
                ($l:expr) => {{
                    let mut l = $l
                        .fill_mode(fill)
                        .fill_value(value)
                        .interpolation(interp)
                        .data_format(format);
                    if let Some(s) = seed {
                        l = l.seed(s);
                    }
                    l
                }};
            }
            // A number `f` is the bounds `[-|f|, |f|]`.
            let mut factor = |key: &str| -> Result<Option<(f32, f32)>> {
                Ok(c.factor(key)?.map(|f| match f {
                    Factor::One(f) => (-f.abs(), f.abs()),
                    Factor::Pair(a, b) => (a, b),
                }))
            };
            let need = |key: &str, f: Option<(f32, f32)>| -> Result<(f32, f32)> {
                f.ok_or_else(|| {
                    Error::value(format!(
                        "invalid config of layer class `{class}`: the required key `{key}` is missing"
                    ))
                })
            };
            match class {
                "RandomRotation" => {
                    let (lo, hi) = need("factor", factor("factor")?)?;
                    let l = super::RandomRotation::new(0.0)?.factor_range(lo, hi)?;
                    Box::new(named(common!(l), name, super::RandomRotation::named))
                }
                "RandomTranslation" => {
                    let (hl, hh) = need("height_factor", factor("height_factor")?)?;
                    let (wl, wh) = need("width_factor", factor("width_factor")?)?;
                    let l = super::RandomTranslation::new(0.0, 0.0)?
                        .height_range(hl, hh)?
                        .width_range(wl, wh)?;
                    Box::new(named(common!(l), name, super::RandomTranslation::named))
                }
                _ => {
                    let (hl, hh) = need("height_factor", factor("height_factor")?)?;
                    let mut l = super::RandomZoom::new(0.0)?.height_range(hl, hh)?;
                    if let Some((wl, wh)) = factor("width_factor")? {
                        l = l.width_range(wl, wh)?;
                    }
                    Box::new(named(common!(l), name, super::RandomZoom::named))
                }
            }
        }
        "Normalization" => {
            let axis: Vec<isize> = match c.get("axis") {
                None => vec![-1],
                Some(Value::Null) => Vec::new(),
                Some(v) => {
                    let one = |x: &Value| x.as_i64().map(|a| a as isize);
                    match v {
                        Value::Array(a) => a.iter().map(one).collect::<Option<Vec<_>>>(),
                        other => one(other).map(|a| vec![a]),
                    }
                    .ok_or_else(|| c.invalid("axis", "an integer, a list of integers or null", v))?
                }
            };
            let mut l = super::Normalization::new()
                .axis(&axis)
                .invert(c.bool_or("invert", false)?);
            let stats =
                |c: &mut ConfigReader, key: &str| -> Result<Option<(Vec<f64>, Vec<usize>)>> {
                    match c.get(key) {
                        None | Some(Value::Null) => Ok(None),
                        Some(v) => flatten_numbers(v).map(Some).ok_or_else(|| {
                            c.invalid(key, "null, a number or nested lists of numbers", v)
                        }),
                    }
                };
            match (stats(&mut c, "mean")?, stats(&mut c, "variance")?) {
                (None, None) => {}
                (Some((m, ms)), Some((v, vs))) if ms == vs => {
                    l = l.mean_variance(&m, &v, &ms)?;
                }
                _ => {
                    return Err(Error::value(format!(
                        "invalid config of layer class `Normalization`: `mean` and `variance` must both be given, with the same shape; received mean={} and variance={}",
                        short(c.map.get("mean").unwrap_or(&Value::Null)),
                        short(c.map.get("variance").unwrap_or(&Value::Null))
                    )));
                }
            }
            Box::new(named(l, name, super::Normalization::named))
        }
        "DepthwiseConv2D" | "SeparableConv2D" => {
            use super::{DepthwiseConv2D, SeparableConv2D};
            let kernel = c.req_pair("kernel_size")?;
            let strides = c.pair_or("strides", (1, 1))?;
            let padding = padding_str(c.padding("padding")?);
            let dilation = c.pair_or("dilation_rate", (1, 1))?;
            let multiplier = match c.get("depth_multiplier") {
                None => 1,
                Some(v) => v
                    .as_u64()
                    .filter(|m| *m > 0)
                    .ok_or_else(|| c.invalid("depth_multiplier", "a positive integer", v))?
                    as usize,
            };
            let activation = c.activation("activation")?;
            let use_bias = c.bool_or("use_bias", true)?;
            let data_format = c.data_format("data_format")?;
            let depthwise_init = c.initializer_of("depthwise_initializer")?;
            let bias_init = c.initializer_of("bias_initializer")?;
            let depthwise_reg = c.regularizer("depthwise_regularizer")?;
            let bias_reg = c.regularizer("bias_regularizer")?;
            macro_rules! common {
                ($l:expr) => {{
                    let mut l = $l
                        .strides(strides)
                        .padding(padding)?
                        .dilation_rate(dilation)
                        .depth_multiplier(multiplier)
                        .with_activation(activation)
                        .use_bias(use_bias)
                        .data_format(data_format);
                    if let Some(p) = &own_policy {
                        l = l.dtype(p)?;
                    }
                    if let Some(i) = depthwise_init {
                        l = l.with_depthwise_initializer(i);
                    }
                    if let Some(i) = bias_init {
                        l = l.with_bias_initializer(i);
                    }
                    if let Some(r) = depthwise_reg {
                        l = l.depthwise_regularizer(r);
                    }
                    if let Some(r) = bias_reg {
                        l = l.bias_regularizer(r);
                    }
                    if let Some(n) = name {
                        l = l.named(n);
                    }
                    l
                }};
            }
            if class == "DepthwiseConv2D" {
                Box::new(common!(DepthwiseConv2D::new(kernel)))
            } else {
                let mut l = SeparableConv2D::new(c.req_usize("filters")?, kernel);
                if let Some(i) = c.initializer_of("pointwise_initializer")? {
                    l = l.with_pointwise_initializer(i);
                }
                if let Some(r) = c.regularizer("pointwise_regularizer")? {
                    l = l.pointwise_regularizer(r);
                }
                Box::new(common!(l))
            }
        }
        "MaxPooling2D" | "AveragePooling2D" => {
            let pool = c.pair_or("pool_size", (2, 2))?;
            let strides = c.opt_pair("strides")?;
            let padding = c.padding("padding")?;
            let data_format = c.data_format("data_format")?;
            if class == "MaxPooling2D" {
                let mut l = MaxPooling2D::new(pool)
                    .data_format(data_format)
                    .padding(padding_str(padding))?;
                if let Some(s) = strides {
                    l = l.strides(s);
                }
                Box::new(named(l, name, MaxPooling2D::named))
            } else {
                let mut l = AveragePooling2D::new(pool)
                    .data_format(data_format)
                    .padding(padding_str(padding))?;
                if let Some(s) = strides {
                    l = l.strides(s);
                }
                Box::new(named(l, name, AveragePooling2D::named))
            }
        }
        "GlobalMaxPooling2D" => {
            let f = c.data_format("data_format")?;
            Box::new(named(
                GlobalMaxPooling2D::new().data_format(f),
                name,
                GlobalMaxPooling2D::named,
            ))
        }
        "GlobalAveragePooling2D" => {
            let f = c.data_format("data_format")?;
            Box::new(named(
                GlobalAveragePooling2D::new().data_format(f),
                name,
                GlobalAveragePooling2D::named,
            ))
        }
        "UpSampling2D" => {
            let size = c.pair_or("size", (2, 2))?;
            let f = c.data_format("data_format")?;
            let interpolation = c.opt_string("interpolation")?;
            if let Some(i) = interpolation.filter(|i| i != "nearest") {
                return Err(c.invalid(
                    "interpolation",
                    "\"nearest\" (the only interpolation supported)",
                    &json!(i),
                ));
            }
            Box::new(named(
                UpSampling2D::new(size).data_format(f),
                name,
                UpSampling2D::named,
            ))
        }
        "BatchNormalization" => {
            let axis = c.isize_or("axis", -1)?;
            let momentum = c.f64_or("momentum", 0.99)?;
            let epsilon = c.f64_or("epsilon", 1e-3)?;
            let center = c.bool_or("center", true)?;
            let scale = c.bool_or("scale", true)?;
            let mut inits = [
                crate::initializers::Initializer::Ones,
                crate::initializers::Initializer::Zeros,
                crate::initializers::Initializer::Zeros,
                crate::initializers::Initializer::Ones,
            ];
            let keys = [
                "gamma_initializer",
                "beta_initializer",
                "moving_mean_initializer",
                "moving_variance_initializer",
            ];
            for (slot, key) in inits.iter_mut().zip(keys) {
                if let Some(i) = c.initializer_of(key)? {
                    *slot = i;
                }
            }
            Box::new(named(
                BatchNormalization::new()
                    .momentum(momentum)
                    .epsilon(epsilon)
                    .center(center)
                    .scale(scale)
                    .axis(axis)
                    .initializers(inits),
                name,
                BatchNormalization::named,
            ))
        }
        "Conv1D" => {
            let kernel_size = c.opt_single("kernel_size")?.ok_or_else(|| {
                c.invalid(
                    "kernel_size",
                    "an integer or a list of one integer",
                    &Value::Null,
                )
            })?;
            let mut l = Conv1D::new(c.req_usize("filters")?, kernel_size)
                .strides(c.opt_single("strides")?.unwrap_or(1))
                .dilation_rate(c.opt_single("dilation_rate")?.unwrap_or(1))
                .with_activation(c.activation("activation")?)
                .use_bias(c.bool_or("use_bias", true)?)
                .data_format(c.data_format("data_format")?);
            if let Some(p) = c.get("padding") {
                let p = p
                    .as_str()
                    .ok_or_else(|| c.invalid("padding", "\"valid\", \"same\" or \"causal\"", p))?;
                l = l.padding(p)?;
            }
            if let Some(p) = &own_policy {
                l = l.dtype(p)?;
            }
            if let Some(i) = c.initializer_of("kernel_initializer")? {
                l = l.with_kernel_initializer(i);
            }
            if let Some(i) = c.initializer_of("bias_initializer")? {
                l = l.with_bias_initializer(i);
            }
            if let Some(r) = c.regularizer("kernel_regularizer")? {
                l = l.kernel_regularizer(r);
            }
            if let Some(r) = c.regularizer("bias_regularizer")? {
                l = l.bias_regularizer(r);
            }
            Box::new(named(l, name, Conv1D::named))
        }
        "MaxPooling1D" | "AveragePooling1D" => {
            let pool = c.opt_single("pool_size")?.unwrap_or(2);
            let strides = c.opt_single("strides")?;
            let padding = padding_str(c.padding("padding")?);
            let f = c.data_format("data_format")?;
            if class == "MaxPooling1D" {
                let mut l = MaxPooling1D::new(pool).padding(padding)?.data_format(f);
                if let Some(s) = strides {
                    l = l.strides(s);
                }
                Box::new(named(l, name, MaxPooling1D::named))
            } else {
                let mut l = AveragePooling1D::new(pool).padding(padding)?.data_format(f);
                if let Some(s) = strides {
                    l = l.strides(s);
                }
                Box::new(named(l, name, AveragePooling1D::named))
            }
        }
        "GlobalMaxPooling1D" => {
            let f = c.data_format("data_format")?;
            Box::new(named(
                GlobalMaxPooling1D::new().data_format(f),
                name,
                GlobalMaxPooling1D::named,
            ))
        }
        "GlobalAveragePooling1D" => {
            let f = c.data_format("data_format")?;
            Box::new(named(
                GlobalAveragePooling1D::new().data_format(f),
                name,
                GlobalAveragePooling1D::named,
            ))
        }
        "ZeroPadding2D" | "Cropping2D" => {
            let key = if class == "ZeroPadding2D" {
                "padding"
            } else {
                "cropping"
            };
            let sides = match c.get(key) {
                None if class == "ZeroPadding2D" => ((1, 1), (1, 1)),
                None => ((0, 0), (0, 0)),
                Some(v) => c.sides_of(key, v)?,
            };
            let f = c.data_format("data_format")?;
            if class == "ZeroPadding2D" {
                Box::new(named(
                    ZeroPadding2D::new(sides).data_format(f),
                    name,
                    ZeroPadding2D::named,
                ))
            } else {
                Box::new(named(
                    Cropping2D::new(sides).data_format(f),
                    name,
                    Cropping2D::named,
                ))
            }
        }
        "Rescaling" => {
            let mut l = Rescaling::new(c.f64_or("scale", 1.0)?, c.f64_or("offset", 0.0)?);
            if let Some(p) = &own_policy {
                l = l.dtype(p)?;
            }
            Box::new(named(l, name, Rescaling::named))
        }
        "Embedding" => {
            let mut e = Embedding::new(c.req_usize("input_dim")?, c.req_usize("output_dim")?)
                .mask_zero(c.bool_or("mask_zero", false)?);
            if let Some(p) = &own_policy {
                e = e.dtype(p)?;
            }
            if let Some(i) = c.initializer_of("embeddings_initializer")? {
                e = e.embeddings_initializer(i);
            }
            if let Some(r) = c.regularizer("embeddings_regularizer")? {
                e = e.embeddings_regularizer(r);
            }
            Box::new(named(e, name, Embedding::named))
        }
        "LayerNormalization" => {
            let axes: Vec<isize> = match c.get("axis") {
                None => vec![-1],
                Some(v) => {
                    let int = |v: &Value| v.as_i64().and_then(|n| isize::try_from(n).ok());
                    match v {
                        Value::Array(items) => items.iter().map(int).collect::<Option<Vec<_>>>(),
                        v => int(v).map(|a| vec![a]),
                    }
                    .ok_or_else(|| c.invalid("axis", "an integer or a list of integers", v))?
                }
            };
            let epsilon = c.f64_or("epsilon", 1e-3)?;
            let center = c.bool_or("center", true)?;
            let scale = c.bool_or("scale", true)?;
            let gamma = c
                .initializer_of("gamma_initializer")?
                .unwrap_or(crate::initializers::Initializer::Ones);
            let beta = c
                .initializer_of("beta_initializer")?
                .unwrap_or(crate::initializers::Initializer::Zeros);
            let (gr, br) = (
                c.regularizer("gamma_regularizer")?,
                c.regularizer("beta_regularizer")?,
            );
            Box::new(named(
                LayerNormalization::new()
                    .axes(&axes)
                    .epsilon(epsilon)
                    .center(center)
                    .scale(scale)
                    .initializers(gamma, beta)
                    .regularizers(gr, br),
                name,
                LayerNormalization::named,
            ))
        }
        "SimpleRNN" => {
            let l: SimpleRNN = recurrent_from(&mut c, name, own_policy.as_deref())?;
            Box::new(l)
        }
        "LSTM" => {
            let l: LSTM = recurrent_from(&mut c, name, own_policy.as_deref())?;
            Box::new(l.unit_forget_bias(c.bool_or("unit_forget_bias", true)?))
        }
        "TimeDistributed" => {
            let inner = super::deserialize(c.required("layer")?)?;
            Box::new(named(
                super::TimeDistributed::from_box(inner),
                name,
                super::TimeDistributed::named,
            ))
        }
        "Masking" => Box::new(named(
            Masking::new(c.f64_or("mask_value", 0.0)?),
            name,
            Masking::named,
        )),
        "MultiHeadAttention" => {
            let mut l =
                super::MultiHeadAttention::new(c.req_usize("num_heads")?, c.req_usize("key_dim")?)
                    .use_bias(c.bool_or("use_bias", true)?);
            if let Some(v) = c.get("value_dim").filter(|v| !v.is_null()) {
                let d = v
                    .as_u64()
                    .ok_or_else(|| c.invalid("value_dim", "a positive integer or null", v))?;
                l = l.value_dim(d as usize);
            }
            l = l.dropout(c.f32_or("dropout", 0.0)?)?;
            match c.get("output_shape") {
                None | Some(Value::Null) => {}
                Some(v) => {
                    let one = match v {
                        Value::Array(a) if a.len() == 1 => a[0].as_u64(),
                        other => other.as_u64(),
                    };
                    let d = one.ok_or_else(|| {
                        c.invalid(
                            "output_shape",
                            "null, an integer or a list of one integer",
                            v,
                        )
                    })?;
                    l = l.output_shape(d as usize);
                }
            }
            match c.get("attention_axes") {
                None | Some(Value::Null) => {}
                Some(v) => {
                    let axes = match v {
                        Value::Array(a) => a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>(),
                        other => other.as_i64().map(|a| vec![a]),
                    };
                    if !matches!(axes.as_deref(), Some([1]) | Some([-2])) {
                        return Err(c.invalid(
                            "attention_axes",
                            "null or [1] (attention over the positions of (batch, positions, features) inputs)",
                            v,
                        ));
                    }
                }
            }
            if let Some(v) = c.get("sliding_window").filter(|v| !v.is_null()) {
                let w = v
                    .as_u64()
                    .filter(|w| *w > 0)
                    .ok_or_else(|| c.invalid("sliding_window", "a positive integer or null", v))?;
                l = l.sliding_window(w as usize);
            }
            if let Some(p) = &own_policy {
                l = l.dtype(p)?;
            }
            if let Some(i) = c.initializer_of("kernel_initializer")? {
                l = l.with_kernel_initializer(i);
            }
            if let Some(i) = c.initializer_of("bias_initializer")? {
                l = l.with_bias_initializer(i);
            }
            if let Some(r) = c.regularizer("kernel_regularizer")? {
                l = l.kernel_regularizer(r);
            }
            if let Some(r) = c.regularizer("bias_regularizer")? {
                l = l.bias_regularizer(r);
            }
            if let Some(seed) = c.seed()? {
                l = l.seed(seed);
            }
            Box::new(named(l, name, super::MultiHeadAttention::named))
        }
        "Bidirectional" => {
            if c.map.get("merge_mode").is_some_and(Value::is_null) {
                return Err(c.invalid(
                    "merge_mode",
                    "\"concat\", \"sum\", \"mul\" or \"ave\" (a merge mode of None, which returns two outputs, is not supported)",
                    &Value::Null,
                ));
            }
            let mode = c.opt_string("merge_mode")?;
            let layer = c.required("layer")?;
            let backward = c.get("backward_layer");
            Box::new(super::Bidirectional::from_keras(
                layer,
                backward,
                mode.as_deref(),
                name,
            )?)
        }
        "GRU" => {
            let l: GRU = recurrent_from(&mut c, name, own_policy.as_deref())?;
            Box::new(l.reset_after(c.bool_or("reset_after", true)?))
        }
        _ => return Ok(None),
    };
    c.finish()?;
    Ok(Some(layer))
}

/// The options `SimpleRNN`, `LSTM` and `GRU` share.
fn recurrent_from<C: CellKind>(
    c: &mut ConfigReader,
    name: Option<String>,
    policy: Option<&str>,
) -> Result<Recurrent<C>> {
    let mut l = Recurrent::<C>::new(c.req_usize("units")?)
        .return_sequences(c.bool_or("return_sequences", false)?)
        .go_backwards(c.bool_or("go_backwards", false)?)
        .zero_output_for_mask(c.bool_or("zero_output_for_mask", false)?)
        .use_bias(c.bool_or("use_bias", true)?)
        .with_activation(match c.get("activation") {
            None => Activation::Tanh,
            Some(_) => c.activation("activation")?,
        });
    if C::GATES > 1
        && let Some(v) = c.get("recurrent_activation")
    {
        let a = v
            .as_str()
            .ok_or_else(|| c.invalid("recurrent_activation", "an activation name", v))?;
        l = l.recurrent_activation(a)?;
    }
    if let Some(p) = policy {
        l = l.dtype(p)?;
    }
    if let Some(i) = c.initializer_of("kernel_initializer")? {
        l = l.kernel_initializer(i);
    }
    if let Some(i) = c.initializer_of("recurrent_initializer")? {
        l = l.recurrent_initializer(i);
    }
    if let Some(i) = c.initializer_of("bias_initializer")? {
        l = l.bias_initializer(i);
    }
    if let Some(r) = c.regularizer("kernel_regularizer")? {
        l = l.kernel_regularizer(r);
    }
    if let Some(r) = c.regularizer("recurrent_regularizer")? {
        l = l.recurrent_regularizer(r);
    }
    if let Some(r) = c.regularizer("bias_regularizer")? {
        l = l.bias_regularizer(r);
    }
    let dropout = c.f32_or("dropout", 0.0)?;
    let recurrent_dropout = c.f32_or("recurrent_dropout", 0.0)?;
    // Keras clips both rates into [0, 1].
    l = l
        .dropout(dropout.clamp(0.0, 0.999_999))?
        .recurrent_dropout(recurrent_dropout.clamp(0.0, 0.999_999))?;
    if C::GATES > 1
        && let Some(seed) = c.seed()?
    {
        l = l.seed(seed);
    }
    Ok(named(l, name, Recurrent::named))
}

/// A number or nested lists of numbers: the values in order and the shape.
fn flatten_numbers(v: &Value) -> Option<(Vec<f64>, Vec<usize>)> {
    match v {
        Value::Array(items) => {
            let mut values = Vec::new();
            let mut inner: Option<Vec<usize>> = None;
            for item in items {
                let (vals, shape) = flatten_numbers(item)?;
                if inner.as_ref().is_some_and(|s| *s != shape) {
                    return None;
                }
                inner = Some(shape);
                values.extend(vals);
            }
            let mut shape = vec![items.len()];
            shape.extend(inner.unwrap_or_default());
            Some((values, shape))
        }
        other => Some((vec![other.as_f64()?], Vec::new())),
    }
}

fn named<L>(layer: L, name: Option<String>, set: fn(L, String) -> L) -> L {
    match name {
        Some(n) => set(layer, n),
        None => layer,
    }
}

/// A JSON value, shortened for an error message.
pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}...", s.chars().take(117).collect::<String>())
    } else {
        s
    }
}

/// An `f32` as a JSON number with its shortest decimal form (`0.01`, not `0.009999999776482582`),
/// which reads back as the same `f32`. Non-finite values become `null`.
pub(crate) fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// An activation as JSON: its Keras name, or `{"name": "leaky_relu", "negative_slope": s}` for a
/// leaky ReLU whose slope differs from the `"leaky_relu"` default (0.2).
pub(crate) fn activation_json(a: Activation) -> Value {
    match a {
        Activation::LeakyRelu(s) if s != 0.2 => {
            json!({"name": "leaky_relu", "negative_slope": f32_json(s)})
        }
        other => json!(other.name()),
    }
}

/// A regularizer as Keras 3 writes one: `{"class_name": "L2", "config": {"l2": 0.01}}`.
pub(crate) fn regularizer_json(r: Option<Regularizer>) -> Value {
    match r {
        None => Value::Null,
        Some(Regularizer::L1(l1)) => json!({"class_name": "L1", "config": {"l1": f32_json(l1)}}),
        Some(Regularizer::L2(l2)) => json!({"class_name": "L2", "config": {"l2": f32_json(l2)}}),
        Some(Regularizer::L1L2 { l1, l2 }) => {
            json!({"class_name": "L1L2", "config": {"l1": f32_json(l1), "l2": f32_json(l2)}})
        }
    }
}

fn padding_str(p: Padding) -> &'static str {
    match p {
        Padding::Valid => "valid",
        Padding::Same => "same",
    }
}

pub(crate) fn padding_json(p: Padding) -> Value {
    json!(padding_str(p))
}

pub(crate) fn data_format_json(f: DataFormat) -> Value {
    json!(match f {
        DataFormat::ChannelsLast => "channels_last",
        DataFormat::ChannelsFirst => "channels_first",
    })
}

/// Reads the keys of one configuration object, with errors that name the object, the key, what
/// was expected and what was received; [`ConfigReader::finish`] rejects keys never read.
pub(crate) struct ConfigReader<'a> {
    what: String,
    map: &'a Map<String, Value>,
    read: Vec<String>,
}

/// A factor as Keras configs hold it ([`ConfigReader::factor`]).
#[derive(Clone, Copy)]
pub(crate) enum Factor {
    /// One number (the layer's constructor argument).
    One(f32),
    /// A pair of bounds, as given.
    Pair(f32, f32),
}

impl<'a> ConfigReader<'a> {
    /// `what` names the object in messages (`"layer class `Dense`"`).
    pub(crate) fn new(what: &str, config: &'a Value) -> Result<Self> {
        let map = config.as_object().ok_or_else(|| {
            Error::value(format!(
                "the config of {what} must be a JSON object; received {}",
                short(config)
            ))
        })?;
        Ok(Self {
            what: what.to_string(),
            map,
            read: Vec::new(),
        })
    }

    pub(crate) fn invalid(&self, key: &str, expected: &str, got: &Value) -> Error {
        Error::value(format!(
            "invalid config of {}: `{key}` must be {expected}; received {}",
            self.what,
            short(got)
        ))
    }

    /// Keras's `seed`: a non-negative integer, or `None` when absent or `null`.
    pub(crate) fn seed(&mut self) -> Result<Option<u64>> {
        match self.get("seed") {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.invalid("seed", "a non-negative integer or null", v)),
        }
    }

    /// A Keras factor of an augmentation layer: one number or a pair of numbers; `None` when
    /// absent or `null`.
    pub(crate) fn factor(&mut self, key: &str) -> Result<Option<Factor>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(f) = v.as_f64() {
            return Ok(Some(Factor::One(f as f32)));
        }
        match v.as_array().map(|a| a.as_slice()) {
            Some([a, b]) => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => Ok(Some(Factor::Pair(a as f32, b as f32))),
                _ => Err(self.invalid(key, "a number or a pair of numbers", v)),
            },
            _ => Err(self.invalid(key, "a number or a pair of numbers", v)),
        }
    }

    /// The value of `key`; `None` when absent or `null`.
    pub(crate) fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.read.push(key.to_string());
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&mut self, key: &str) -> Result<&'a Value> {
        self.get(key).ok_or_else(|| {
            Error::value(format!(
                "invalid config of {}: the required key `{key}` is missing (keys present: {})",
                self.what,
                self.map.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub(crate) fn opt_string(&mut self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.invalid(key, "a string", other)),
        }
    }

    fn as_usize(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.invalid(key, "a non-negative integer", v))
    }

    pub(crate) fn req_usize(&mut self, key: &str) -> Result<usize> {
        let v = self.required(key)?;
        self.as_usize(key, v)
    }

    fn isize_or(&mut self, key: &str, default: isize) -> Result<isize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_i64()
                .and_then(|n| isize::try_from(n).ok())
                .ok_or_else(|| self.invalid(key, "an integer", v)),
        }
    }

    pub(crate) fn bool_or(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.invalid(key, "true or false", other)),
        }
    }

    pub(crate) fn f64_of(&self, key: &str, v: &Value) -> Result<f64> {
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.invalid(key, "a finite number", v))
    }

    pub(crate) fn f64_or(&mut self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.f64_of(key, v),
        }
    }

    fn f32_of(&self, key: &str, v: &Value) -> Result<f32> {
        let x = self.f64_of(key, v)? as f32;
        if x.is_finite() {
            Ok(x)
        } else {
            Err(self.invalid(key, "a number in the float32 range", v))
        }
    }

    fn f32_or(&mut self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.f32_of(key, v),
        }
    }

    fn req_f32(&mut self, key: &str) -> Result<f32> {
        let v = self.required(key)?;
        self.f32_of(key, v)
    }

    fn req_i64_list(&mut self, key: &str) -> Result<Vec<i64>> {
        let v = self.required(key)?;
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.invalid(key, "a list of integers", v))
    }

    /// One integer, or a list of one (a 1-D layer's `kernel_size`, `strides`, `pool_size`);
    /// `None` when absent or null.
    fn opt_single(&mut self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = match v {
                    Value::Array(items) if items.len() == 1 => items[0].as_u64(),
                    v => v.as_u64(),
                };
                n.and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| self.invalid(key, "an integer or a list of one integer", v))
            }
        }
    }

    /// `((top, bottom), (left, right))` from an integer, `[rows, columns]`, or
    /// `[[top, bottom], [left, right]]`, as Keras writes `padding` and `cropping`.
    fn sides_of(&self, key: &str, v: &Value) -> Result<((usize, usize), (usize, usize))> {
        let bad = || {
            self.invalid(
                key,
                "an integer, a list of two integers, or two lists of two integers",
                v,
            )
        };
        if let Some(items) = v.as_array()
            && items.len() == 2
            && items.iter().all(Value::is_array)
        {
            let a = self.pair_of(key, &items[0]).map_err(|_| bad())?;
            let b = self.pair_of(key, &items[1]).map_err(|_| bad())?;
            return Ok((a, b));
        }
        let (r, c) = self.pair_of(key, v).map_err(|_| bad())?;
        Ok(((r, r), (c, c)))
    }

    /// A pair `[a, b]`, or one integer `a` meaning `[a, a]`, as Keras accepts.
    fn pair_of(&self, key: &str, v: &Value) -> Result<(usize, usize)> {
        let bad = || self.invalid(key, "an integer or a list of two integers", v);
        if let Some(n) = v.as_u64() {
            let n = usize::try_from(n).map_err(|_| bad())?;
            return Ok((n, n));
        }
        match v.as_array().map(Vec::as_slice) {
            Some([a, b]) => Ok((
                self.as_usize(key, a).map_err(|_| bad())?,
                self.as_usize(key, b).map_err(|_| bad())?,
            )),
            _ => Err(bad()),
        }
    }

    fn req_pair(&mut self, key: &str) -> Result<(usize, usize)> {
        let v = self.required(key)?;
        self.pair_of(key, v)
    }

    fn pair_or(&mut self, key: &str, default: (usize, usize)) -> Result<(usize, usize)> {
        self.opt_pair(key).map(|p| p.unwrap_or(default))
    }

    fn opt_pair(&mut self, key: &str) -> Result<Option<(usize, usize)>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => self.pair_of(key, v).map(Some),
        }
    }

    fn padding(&mut self, key: &str) -> Result<Padding> {
        match self.get(key) {
            None => Ok(Padding::Valid),
            Some(Value::String(s)) => s.parse(),
            Some(other) => Err(self.invalid(key, "\"valid\" or \"same\"", other)),
        }
    }

    fn data_format(&mut self, key: &str) -> Result<DataFormat> {
        match self.get(key) {
            None => Ok(DataFormat::ChannelsLast),
            Some(Value::String(s)) if s == "channels_last" => Ok(DataFormat::ChannelsLast),
            Some(Value::String(s)) if s == "channels_first" => Ok(DataFormat::ChannelsFirst),
            Some(other) => Err(self.invalid(key, "\"channels_last\" or \"channels_first\"", other)),
        }
    }

    /// A dtype policy: its name (`"float32"`), or Keras 3's object
    /// `{"class_name": "DTypePolicy", "config": {"name": "float32"}}`.
    pub(crate) fn dtype_policy(&mut self, key: &str) -> Result<Option<String>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let name = match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => match m.get("class_name").and_then(Value::as_str) {
                Some("DTypePolicy" | "FloatDTypePolicy") => m
                    .get("config")
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            },
            _ => None,
        };
        let name = name.ok_or_else(|| {
            self.invalid(
                key,
                "a dtype policy name such as \"float32\", or {\"class_name\": \"DTypePolicy\", \"config\": {\"name\": ...}}",
                v,
            )
        })?;
        crate::mixed_precision::DTypePolicy::new(&name)
            .map_err(|e| Error::value(format!("invalid config of {}: `{key}`: {e}", self.what)))?;
        Ok(Some(name))
    }

    /// A key Keras writes that ferrokeras supports at one value only (Keras's default): absent,
    /// `null` or `allowed` pass; anything else is an error that says what is supported.
    pub(crate) fn fixed(&mut self, key: &str, allowed: Value) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if *v == allowed => Ok(()),
            Some(v) => Err(self.invalid(
                key,
                &format!("{allowed} (the only value ferrokeras supports)"),
                v,
            )),
        }
    }

    /// An initializer the layer takes (`Dense`, the convolutions).
    fn initializer_of(&mut self, key: &str) -> Result<Option<crate::initializers::Initializer>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => crate::initializers::Initializer::from_json(v)
                .map(Some)
                .map_err(|e| {
                    Error::value(format!("invalid config of {}: `{key}`: {e}", self.what))
                }),
        }
    }

    /// The Keras 3 options of `class` that ferrokeras supports at their default only
    /// (constraints, `groups`, `renorm`, ...): another value is an error.
    fn keras_options(&mut self, class: &str) -> Result<()> {
        let nulls: &[&str] = match class {
            "Dense" => &[
                "kernel_constraint",
                "bias_constraint",
                "activity_regularizer",
                "quantization_config",
                "lora_rank",
            ],
            "Conv2D" | "Conv2DTranspose" => &[
                "kernel_constraint",
                "bias_constraint",
                "activity_regularizer",
            ],
            "BatchNormalization" => &[
                "beta_regularizer",
                "gamma_regularizer",
                "beta_constraint",
                "gamma_constraint",
                "renorm_clipping",
            ],
            "LayerNormalization" => &["beta_constraint", "gamma_constraint"],
            "SimpleRNN" | "LSTM" | "GRU" => &[
                "kernel_constraint",
                "recurrent_constraint",
                "bias_constraint",
                "activity_regularizer",
            ],
            "Conv1D" => &[
                "kernel_constraint",
                "bias_constraint",
                "activity_regularizer",
            ],
            "Embedding" => &[
                "embeddings_constraint",
                "activity_regularizer",
                "quantization_config",
                "lora_rank",
                "lora_alpha",
                "input_length",
            ],
            "ReLU" => &["max_value"],
            "DepthwiseConv2D" => &[
                "activity_regularizer",
                "depthwise_constraint",
                "bias_constraint",
            ],
            "SeparableConv2D" => &[
                "activity_regularizer",
                "depthwise_constraint",
                "pointwise_constraint",
                "bias_constraint",
            ],
            "MultiHeadAttention" => &[
                "activity_regularizer",
                "kernel_constraint",
                "bias_constraint",
            ],
            _ => &[],
        };
        for key in nulls {
            self.fixed(key, Value::Null)?;
        }
        match class {
            "Dense" | "Conv2D" | "Conv2DTranspose" => {
                if class == "Conv2D" {
                    self.fixed("groups", json!(1))?;
                }
                if class == "Dense" {
                    self.fixed("lora_alpha", Value::Null)?;
                }
            }
            "BatchNormalization" => {
                self.fixed("synchronized", json!(false))?;
                self.fixed("renorm", json!(false))?;
                // Read only with `renorm`.
                self.get("renorm_momentum");
            }
            "ReLU" => {
                for key in ["negative_slope", "threshold"] {
                    if let Some(v) = self.get(key)
                        && v.as_f64() != Some(0.0)
                    {
                        return Err(self.invalid(key, "0 (the only value ferrokeras's ReLU supports; use LeakyReLU for a slope)", v));
                    }
                }
            }
            "LayerNormalization" => {
                if let Some(v) = self.get("rms_scaling")
                    && v != &json!(false)
                {
                    return Err(self.invalid(
                        "rms_scaling",
                        "false (Keras deprecates `rms_scaling=True`, which scales by the variance)",
                        v,
                    ));
                }
            }
            "GlobalMaxPooling2D"
            | "GlobalAveragePooling2D"
            | "GlobalMaxPooling1D"
            | "GlobalAveragePooling1D" => {
                self.fixed("keepdims", json!(false))?;
            }
            "Conv1D" => {
                self.fixed("groups", json!(1))?;
            }
            "MultiHeadAttention" => {
                self.fixed("use_gate", json!(false))?;
            }
            "SimpleRNN" | "LSTM" | "GRU" => {
                self.fixed("return_state", json!(false))?;
                self.fixed("stateful", json!(false))?;
                // Unrolling changes how the loop is compiled, not its numbers.
                self.bool_or("unroll", false)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A Keras activation name, or `{"name": "leaky_relu", "negative_slope": s}`.
    fn activation(&mut self, key: &str) -> Result<Activation> {
        match self.get(key) {
            None => Ok(Activation::Linear),
            Some(Value::String(s)) => s.parse(),
            Some(v @ Value::Object(m)) => {
                let bad = || {
                    self.invalid(
                        key,
                        "an activation name or {\"name\": \"leaky_relu\", \"negative_slope\": <number>}",
                        v,
                    )
                };
                match (
                    m.get("name").and_then(Value::as_str),
                    m.get("negative_slope"),
                ) {
                    (Some("leaky_relu"), Some(s)) if m.len() == 2 => Ok(Activation::LeakyRelu(
                        self.f32_of(key, s).map_err(|_| bad())?,
                    )),
                    _ => Err(bad()),
                }
            }
            Some(other) => Err(self.invalid(key, "an activation name such as \"relu\"", other)),
        }
    }

    /// `{"class_name": "L1" | "L2" | "L1L2", "config": {"l1": .., "l2": ..}}`, or the Keras
    /// shorthands `"l1"`, `"l2"`, `"l1_l2"` (factor 0.01).
    fn regularizer(&mut self, key: &str) -> Result<Option<Regularizer>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let expected = "null, \"l1\", \"l2\", \"l1_l2\" or {\"class_name\": \"L1\" | \"L2\" | \"L1L2\", \"config\": {\"l1\": <number>, \"l2\": <number>}}";
        let bad = || self.invalid(key, expected, v);
        if let Value::String(s) = v {
            return match s.as_str() {
                "l1" => Ok(Some(Regularizer::L1(0.01))),
                "l2" => Ok(Some(Regularizer::L2(0.01))),
                "l1_l2" => Ok(Some(Regularizer::L1L2 { l1: 0.01, l2: 0.01 })),
                _ => Err(bad()),
            };
        }
        let class = v
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(bad)?;
        let empty = Value::Object(Map::new());
        let cfg = v.get("config").unwrap_or(&empty);
        let mut r = ConfigReader::new(&format!("the `{key}` of {}", self.what), cfg)?;
        let reg = match class {
            "L1" => Regularizer::L1(r.f32_or("l1", 0.01)?),
            "L2" => Regularizer::L2(r.f32_or("l2", 0.01)?),
            "L1L2" => Regularizer::L1L2 {
                l1: r.f32_or("l1", 0.0)?,
                l2: r.f32_or("l2", 0.0)?,
            },
            _ => return Err(bad()),
        };
        r.finish()?;
        Ok(Some(reg))
    }

    /// Rejects the keys that were never read.
    pub(crate) fn finish(&self) -> Result<()> {
        let unknown: Vec<&String> = self
            .map
            .keys()
            .filter(|k| !self.read.iter().any(|r| r == *k))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(Error::value(format!(
            "invalid config of {}: unknown key(s) {} (the keys it takes: {})",
            self.what,
            unknown
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", "),
            self.read.join(", ")
        )))
    }
}

/// Counts per name prefix, shared by [`super::unique_name`] and [`reserve_name`].
pub(crate) fn name_counts() -> &'static Mutex<HashMap<String, usize>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    COUNTS.get_or_init(|| Mutex::new(HashMap::new()))
}
