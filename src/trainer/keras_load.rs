//! A compiled Keras model file (`.keras`) as a trainer: the model, its compile options and its
//! optimizer's state, so that training goes on where Keras left it.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::Trainer;
use super::options::{Compile, LossSpec};
use crate::io::LoadedModel;
use crate::layers::config::ConfigReader;
use crate::metrics::MetricSpec;
use crate::model::Model;
use crate::optimizers::{Adam, LearningRate, Optimizer, RmsProp, Sgd};
use crate::{Error, Result};

/// The optimizer classes read from Keras's `compile_config`, and the slots each keeps per
/// trainable variable in Keras's order (`optimizer/vars` holds `iterations`, `learning_rate`,
/// then the slots: Adam's momentum and velocity interleaved per variable, then the AMSGrad
/// maxima; RMSprop's velocities, then its momenta, then its average gradients).
pub(super) enum Kind {
    Adam { amsgrad: bool },
    Sgd { momentum: bool },
    RmsProp { momentum: bool, centered: bool },
}

impl Kind {
    /// The kind of Keras's serialized optimizer `{"class_name": ..., "config": ...}`.
    pub(super) fn of_keras(v: &Value) -> Option<Kind> {
        let config = v.get("config")?;
        let flag = |k: &str| config.get(k).and_then(Value::as_bool).unwrap_or(false);
        let momentum = config
            .get("momentum")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        match v.get("class_name")?.as_str()? {
            "Adam" | "AdamW" => Some(Kind::Adam {
                amsgrad: flag("amsgrad"),
            }),
            "SGD" => Some(Kind::Sgd {
                momentum: momentum != 0.0,
            }),
            "RMSprop" => Some(Kind::RmsProp {
                momentum: momentum > 0.0,
                centered: flag("centered"),
            }),
            _ => None,
        }
    }

    /// Keras's groups of optimizer variables after the step count and learning rate, in order:
    /// each group is a list of our slot names taken per variable, interleaved. The moving
    /// averages (`use_ema`) and gradient accumulators come first, as Keras's `build` makes
    /// them before the class's own slots.
    pub(super) fn groups(&self, ema: bool, accumulation: bool) -> Vec<Vec<&'static str>> {
        let mut g = Vec::new();
        if ema {
            g.push(vec!["ema"]);
        }
        if accumulation {
            g.push(vec!["accumulator"]);
        }
        g.extend(self.own_groups());
        g
    }

    /// The class's own slot groups.
    fn own_groups(&self) -> Vec<Vec<&'static str>> {
        match self {
            Kind::Adam { amsgrad } => {
                let mut g = vec![vec!["m", "v"]];
                if *amsgrad {
                    g.push(vec!["vhat"]);
                }
                g
            }
            Kind::Sgd { momentum } => {
                if *momentum {
                    vec![vec!["momentum"]]
                } else {
                    Vec::new()
                }
            }
            Kind::RmsProp { momentum, centered } => {
                let mut g = vec![vec!["velocity"]];
                if *momentum {
                    g.push(vec!["momentum"]);
                }
                if *centered {
                    g.push(vec!["average_gradient"]);
                }
                g
            }
        }
    }
}

/// A number or null.
fn opt_f64(c: &mut ConfigReader, key: &str) -> Result<Option<f64>> {
    match c.get(key) {
        None => Ok(None),
        Some(v) => Ok(Some(c.f64_of(key, v)?)),
    }
}

/// A non-negative integer or null.
fn opt_u64(c: &mut ConfigReader, key: &str) -> Result<Option<u64>> {
    match c.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| c.invalid(key, "a non-negative integer or null", v)),
    }
}

/// Keras's `BaseOptimizer` options, applied through each optimizer's builder.
macro_rules! base_options {
    ($o:expr, $c:expr) => {{
        let c: &mut ConfigReader = $c;
        let o = $o
            .clipnorm(opt_f64(c, "clipnorm")?)
            .clipvalue(opt_f64(c, "clipvalue")?)
            .global_clipnorm(opt_f64(c, "global_clipnorm")?)
            .gradient_accumulation_steps(opt_u64(c, "gradient_accumulation_steps")?)
            .use_ema(c.bool_or("use_ema", false)?)
            .ema_momentum(c.f64_or("ema_momentum", 0.99)?)
            .ema_overwrite_frequency(opt_u64(c, "ema_overwrite_frequency")?);
        o
    }};
}

/// A learning-rate schedule of Keras's `keras.optimizers.schedules` (serialized).
fn schedule_from_keras(v: &Value, what: &str) -> Result<LearningRate> {
    use crate::optimizers::{
        CosineDecay, ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, PolynomialDecay,
    };
    let class = v.get("class_name").and_then(Value::as_str).unwrap_or("");
    let empty = Value::Object(Default::default());
    let config = v.get("config").unwrap_or(&empty);
    let mut c = ConfigReader::new(
        &format!("the learning-rate schedule `{class}` of {what}"),
        config,
    )?;
    c.get("name");
    let steps = |c: &mut ConfigReader, key: &str| -> Result<u64> {
        let v = c.get(key).ok_or_else(|| {
            Error::value(format!(
                "the learning-rate schedule `{class}` needs `{key}`"
            ))
        })?;
        v.as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|x| x.fract() == 0.0 && *x >= 0.0)
                    .map(|x| x as u64)
            })
            .ok_or_else(|| c.invalid(key, "a non-negative integer", v))
    };
    let numbers = |c: &mut ConfigReader, key: &str| -> Result<Vec<f64>> {
        let v = c.get(key).ok_or_else(|| {
            Error::value(format!(
                "the learning-rate schedule `{class}` needs `{key}`"
            ))
        })?;
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| c.invalid(key, "a list of numbers", v))
    };
    let lr: LearningRate = match class {
        "ExponentialDecay" | "InverseTimeDecay" => {
            let initial = c.f64_or("initial_learning_rate", 0.0)?;
            let decay_steps = steps(&mut c, "decay_steps")?;
            let rate = c.f64_or("decay_rate", 0.0)?;
            let staircase = c.bool_or("staircase", false)?;
            if class == "ExponentialDecay" {
                ExponentialDecay::new(initial, decay_steps, rate)?
                    .staircase(staircase)
                    .into()
            } else {
                InverseTimeDecay::new(initial, decay_steps, rate)?
                    .staircase(staircase)
                    .into()
            }
        }
        "PiecewiseConstantDecay" => {
            let boundaries: Vec<u64> = numbers(&mut c, "boundaries")?
                .iter()
                .map(|b| *b as u64)
                .collect();
            PiecewiseConstantDecay::new(&boundaries, &numbers(&mut c, "values")?)?.into()
        }
        "PolynomialDecay" => PolynomialDecay::new(
            c.f64_or("initial_learning_rate", 0.0)?,
            steps(&mut c, "decay_steps")?,
            c.f64_or("end_learning_rate", 0.0001)?,
        )?
        .power(c.f64_or("power", 1.0)?)
        .cycle(c.bool_or("cycle", false)?)
        .into(),
        "CosineDecay" => {
            let target = opt_f64(&mut c, "warmup_target")?;
            CosineDecay::new(
                c.f64_or("initial_learning_rate", 0.0)?,
                steps(&mut c, "decay_steps")?,
            )?
            .alpha(c.f64_or("alpha", 0.0)?)
            .warmup_target(target)
            .warmup_steps(match c.get("warmup_steps") {
                None => 0,
                Some(_) => steps(&mut c, "warmup_steps")?,
            })
            .into()
        }
        other => {
            return Err(Error::value(format!(
                "{what}: the learning-rate schedule {other:?} is not read from a `.keras` file; ferrokeras reads ExponentialDecay, InverseTimeDecay, PiecewiseConstantDecay, PolynomialDecay and CosineDecay. Load the model with `ferrokeras::io::load_keras` and compile it yourself"
            )));
        }
    };
    c.finish()?;
    Ok(lr)
}

/// What the file's optimizer is: the optimizer, its slots, whether it keeps state beyond
/// them (moving averages, accumulated gradients), and whether its learning rate is a schedule
/// (Keras then keeps no `learning_rate` variable).
struct ReadOptimizer {
    optimizer: Box<dyn Optimizer>,
    kind: Kind,
    ema: bool,
    accumulation: bool,
    scheduled: bool,
}

/// The optimizer of Keras's serialized `{"class_name": "Adam", "config": {...}}`.
fn optimizer_from_keras(v: &Value) -> Result<ReadOptimizer> {
    let class = v.get("class_name").and_then(Value::as_str).unwrap_or("");
    let empty = Value::Object(Default::default());
    let config = v.get("config").unwrap_or(&empty);
    let what = format!("optimizer `{class}` in the file's `compile_config`");
    let mut c = ConfigReader::new(&what, config)?;
    c.get("name");
    let lr: LearningRate = match c.get("learning_rate") {
        Some(v @ Value::Object(_)) => schedule_from_keras(v, &what)?,
        Some(v) => c.f64_of("learning_rate", v)?.into(),
        None => 0.001.into(),
    };
    let scheduled = matches!(lr, LearningRate::Schedule(_));
    if let Some(v) = c.get("loss_scale_factor") {
        return Err(c.invalid("loss_scale_factor", "null", v));
    }
    let weight_decay = opt_f64(&mut c, "weight_decay")?;
    let (opt, kind): (Box<dyn Optimizer>, Kind) = match class {
        "Adam" | "AdamW" => {
            let amsgrad = c.bool_or("amsgrad", false)?;
            let default_decay = if class == "AdamW" { 0.004 } else { 0.0 };
            let o = Adam::new(lr.clone())
                .beta_1(c.f64_or("beta_1", 0.9)?)
                .beta_2(c.f64_or("beta_2", 0.999)?)
                .epsilon(c.f64_or("epsilon", 1e-7)?)
                .amsgrad(amsgrad)
                .weight_decay(weight_decay.unwrap_or(default_decay));
            (Box::new(base_options!(o, &mut c)), Kind::Adam { amsgrad })
        }
        "SGD" => {
            let momentum = c.f64_or("momentum", 0.0)?;
            let o = Sgd::new(lr.clone())
                .momentum(momentum)
                .nesterov(c.bool_or("nesterov", false)?)
                .weight_decay(weight_decay.unwrap_or(0.0));
            (
                Box::new(base_options!(o, &mut c)),
                Kind::Sgd {
                    momentum: momentum != 0.0,
                },
            )
        }
        "RMSprop" => {
            let momentum = c.f64_or("momentum", 0.0)?;
            let centered = c.bool_or("centered", false)?;
            let o = RmsProp::new(lr.clone())
                .rho(c.f64_or("rho", 0.9)?)
                .momentum(momentum)
                .epsilon(c.f64_or("epsilon", 1e-7)?)
                .centered(centered)
                .weight_decay(weight_decay.unwrap_or(0.0));
            (
                Box::new(base_options!(o, &mut c)),
                Kind::RmsProp {
                    momentum: momentum > 0.0,
                    centered,
                },
            )
        }
        other => {
            return Err(Error::value(format!(
                "the file's `compile_config` names optimizer {other:?}; ferrokeras reads \"Adam\", \"AdamW\", \"SGD\" and \"RMSprop\" from it. Load the model with `ferrokeras::io::load_keras` and compile it yourself"
            )));
        }
    };
    let ema = c.bool_or("use_ema", false)?;
    let accumulation = opt_u64(&mut c, "gradient_accumulation_steps")?.is_some_and(|n| n > 0);
    c.finish()?;
    Ok(ReadOptimizer {
        optimizer: opt,
        kind,
        ema,
        accumulation,
        scheduled,
    })
}

/// A serialized Keras object's class and config, when its config holds only the keys in `plain`
/// at any value and `allowed` at the given values; `Err` names the first other option.
fn plain_object<'a>(v: &'a Value, what: &str, plain: &[&str]) -> Result<(&'a str, &'a Value)> {
    let class = v.get("class_name").and_then(Value::as_str).ok_or_else(|| {
        Error::value(format!(
            "{what} must be a name or a {{\"class_name\": ..., \"config\": ...}} object; received {v}"
        ))
    })?;
    let config = v.get("config").unwrap_or(&Value::Null);
    if let Some(map) = config.as_object()
        && let Some((k, val)) = map.iter().find(|(k, _)| !plain.contains(&k.as_str()))
    {
        return Err(Error::value(format!(
            "{what} `{class}` has option `{k}` = {val}, which ferrokeras does not read from a `.keras` file yet; load the model with `ferrokeras::io::load_keras` and compile it yourself"
        )));
    }
    Ok((class, config))
}

/// A loss of Keras's `compile_config`: a name, or a serialized loss.
fn loss_from_keras(v: &Value) -> Result<LossSpec> {
    if let Some(name) = v.as_str() {
        return Ok(LossSpec::from(name));
    }
    let (class, config) = plain_object(
        v,
        "a loss",
        &[
            "name",
            "reduction",
            "dtype",
            "from_logits",
            "label_smoothing",
            "axis",
            "delta",
            "ignore_class",
        ],
    )?;
    let mut c = ConfigReader::new(&format!("loss `{class}`"), config)?;
    c.get("name");
    c.get("dtype");
    if let Some(r) = c.get("reduction")
        && r.as_str() != Some("sum_over_batch_size")
    {
        return Err(c.invalid("reduction", "\"sum_over_batch_size\"", r));
    }
    if let Some(a) = c.get("axis")
        && a.as_i64() != Some(-1)
    {
        return Err(c.invalid("axis", "-1", a));
    }
    if let Some(v) = c.get("ignore_class") {
        return Err(c.invalid("ignore_class", "null", v));
    }
    let from_logits = c.bool_or("from_logits", false)?;
    let smoothing = c.f64_or("label_smoothing", 0.0)?;
    use crate::losses::{
        BinaryCrossentropy, CategoricalCrossentropy, Huber, SparseCategoricalCrossentropy,
    };
    let loss = match class {
        "BinaryCrossentropy" => LossSpec::from(
            BinaryCrossentropy::new()
                .from_logits(from_logits)
                .label_smoothing(smoothing),
        ),
        "CategoricalCrossentropy" => LossSpec::from(
            CategoricalCrossentropy::new()
                .from_logits(from_logits)
                .label_smoothing(smoothing),
        ),
        "SparseCategoricalCrossentropy" => {
            LossSpec::from(SparseCategoricalCrossentropy::new().from_logits(from_logits))
        }
        "Huber" => LossSpec::from(Huber::new(c.f64_or("delta", 1.0)?)),
        other => {
            if from_logits || smoothing != 0.0 {
                return Err(Error::value(format!(
                    "loss `{other}` in the file's `compile_config` has `from_logits` or `label_smoothing`, which it does not take"
                )));
            }
            LossSpec::Object(crate::losses::get(other)?)
        }
    };
    c.finish()?;
    Ok(loss)
}

/// A metric of Keras's `compile_config`: a name, or a serialized metric (its name, and the
/// options ferrokeras's metric of that class takes: `threshold`, `k`, one `thresholds` value).
fn metric_from_keras(v: &Value) -> Result<MetricSpec> {
    use crate::metrics::{
        BinaryAccuracy, Metric, Precision, Recall, SparseTopKCategoricalAccuracy,
        TopKCategoricalAccuracy,
    };
    if let Some(name) = v.as_str() {
        return Ok(MetricSpec::from(name));
    }
    let (class, config) = plain_object(
        v,
        "a metric",
        &[
            "name",
            "dtype",
            "threshold",
            "k",
            "thresholds",
            "top_k",
            "class_id",
        ],
    )?;
    let mut c = ConfigReader::new(&format!("metric `{class}`"), config)?;
    c.get("dtype");
    let name = c.get("name").and_then(Value::as_str).map(str::to_string);
    let k = |c: &mut ConfigReader| -> Result<usize> {
        match c.get("k") {
            None => Ok(5),
            Some(v) => v
                .as_u64()
                .map(|k| k as usize)
                .ok_or_else(|| c.invalid("k", "a positive integer", v)),
        }
    };
    let threshold = |c: &mut ConfigReader| -> Result<f32> {
        for key in ["top_k", "class_id"] {
            if let Some(v) = c.get(key) {
                return Err(c.invalid(key, "null", v));
            }
        }
        match c.get("thresholds") {
            None => Ok(0.5),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_number() => {
                Ok(a[0].as_f64().unwrap_or(0.5) as f32)
            }
            Some(v) if v.is_number() => Ok(v.as_f64().unwrap_or(0.5) as f32),
            Some(v) => Err(c.invalid("thresholds", "one number, or null", v)),
        }
    };
    let metric: Box<dyn Metric> = match class {
        "BinaryAccuracy" => {
            Box::new(BinaryAccuracy::new().threshold(c.f64_or("threshold", 0.5)? as f32))
        }
        "TopKCategoricalAccuracy" => Box::new(TopKCategoricalAccuracy::new().k(k(&mut c)?)),
        "SparseTopKCategoricalAccuracy" => {
            Box::new(SparseTopKCategoricalAccuracy::new().k(k(&mut c)?))
        }
        "Precision" => Box::new(Precision::new().threshold(threshold(&mut c)?)?),
        "Recall" => Box::new(Recall::new().threshold(threshold(&mut c)?)?),
        other => crate::metrics::get(other)?,
    };
    c.finish()?;
    Ok(MetricSpec::Object(match name {
        Some(n) => crate::metrics::renamed(metric, n),
        None => metric,
    }))
}

/// A list (or one, or null) of losses or metrics.
fn list<T>(v: Option<&Value>, one: impl Fn(&Value) -> Result<T>) -> Result<Vec<T>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        // One list per output: the same list for every output is ferrokeras's flat list.
        Some(Value::Array(items)) if items.iter().all(Value::is_array) && !items.is_empty() => {
            if items.iter().any(|i| i != &items[0]) {
                return Err(Error::value(
                    "metrics that differ between outputs in the file's `compile_config` are not read yet (a flat list applies every metric to every output here); load the model with `ferrokeras::io::load_keras` and compile it yourself",
                ));
            }
            items[0]
                .as_array()
                .map(|a| a.iter().map(&one).collect())
                .unwrap_or_else(|| Ok(Vec::new()))
        }
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(Value::Object(m)) if !m.contains_key("class_name") => Err(Error::value(
            "losses or metrics given per output name (a dict) in the file's `compile_config` are not read yet; load the model with `ferrokeras::io::load_keras` and compile it yourself",
        )),
        Some(v) => Ok(vec![one(v)?]),
    }
}

impl Trainer<LoadedModel> {
    /// Keras's `keras.saving.load_model("model.keras")`: the model, its weights and, when Keras
    /// saved it compiled, its compile options (optimizer, with its learning-rate schedule if
    /// any; losses, loss weights, metrics) and its optimizer's state (the step count, the
    /// learning rate and every slot), so that `fit` goes on exactly where Keras's training
    /// stopped. Without a `compile_config` the trainer
    /// is not compiled ([`Trainer::new`]).
    ///
    /// ```no_run
    /// use ferrokeras::prelude::*;
    /// # fn main() -> ferrokeras::Result<()> {
    /// let mut trainer = Trainer::load_keras("trained_in_keras.keras")?;
    /// # let (x, y) = (candle_core::Tensor::zeros((4, 3), candle_core::DType::F32, &candle_core::Device::Cpu)?, candle_core::Tensor::zeros((4, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?);
    /// trainer.fit((x, y), FitOptions::new().epochs(1))?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// What [`crate::io::load_keras`] refuses; compile options ferrokeras does not read from a
    /// file (another optimizer class or learning-rate schedule, losses or metrics per output
    /// name, metrics with options), each named; optimizer variables that do not match the
    /// model's trainable variables.
    pub fn load_keras(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let archive = crate::io::keras_file::read_keras(path)?;
        let within = |e: Error| {
            Error::value(format!(
                "cannot compile the model of `{}`: {e}",
                path.display()
            ))
        };
        let Some(cc) = archive
            .config
            .get("compile_config")
            .filter(|v| !v.is_null())
        else {
            return Ok(Trainer::new(archive.model));
        };
        let mut compile = Compile::new();
        let mut read = None;
        if let Some(o) = cc.get("optimizer").filter(|v| !v.is_null()) {
            let r = match o.as_str() {
                Some(name) => {
                    let lower = name.to_ascii_lowercase();
                    let (o, k) = match lower.as_str() {
                        "adam" | "adamw" => (
                            crate::optimizers::get(&lower)?,
                            Kind::Adam { amsgrad: false },
                        ),
                        "sgd" => (
                            crate::optimizers::get("sgd")?,
                            Kind::Sgd { momentum: false },
                        ),
                        "rmsprop" => (
                            crate::optimizers::get("rmsprop")?,
                            Kind::RmsProp {
                                momentum: false,
                                centered: false,
                            },
                        ),
                        _ => {
                            return Err(within(Error::value(format!(
                                "unknown optimizer {name:?}"
                            ))));
                        }
                    };
                    ReadOptimizer {
                        optimizer: o,
                        kind: k,
                        ema: false,
                        accumulation: false,
                        scheduled: false,
                    }
                }
                None => optimizer_from_keras(o).map_err(within)?,
            };
            compile.optimizer = Some(super::options::OptimizerSpec::Object(r.optimizer));
            read = Some((r.kind, r.ema, r.accumulation, r.scheduled));
        }
        compile.losses = list(cc.get("loss"), loss_from_keras).map_err(within)?;
        if let Some(w) = cc.get("loss_weights").filter(|v| !v.is_null()) {
            let weights = w
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| {
                    within(Error::value(format!(
                        "`loss_weights` must be a list of numbers; received {w}"
                    )))
                })?;
            compile.loss_weights = Some(weights);
        }
        compile.metrics = list(cc.get("metrics"), metric_from_keras).map_err(within)?;
        compile.weighted_metrics =
            list(cc.get("weighted_metrics"), metric_from_keras).map_err(within)?;
        let mut trainer = Trainer::new(archive.model)
            .compile(compile)
            .map_err(within)?;
        if let Some((kind, ema, accumulation, scheduled)) = read {
            let layout = VarsLayout {
                kind: &kind,
                ema,
                accumulation,
                scheduled,
            };
            load_optimizer_vars(&mut trainer, &archive.weights, &layout, path)?;
        }
        Ok(trainer)
    }
}

/// Restores the optimizer's variables of a Keras weights file into `trainer`'s optimizer,
/// laid out as that optimizer's Keras form says; nothing when the trainer has no optimizer with
/// a Keras form, or the file holds no optimizer variables.
pub(super) fn load_optimizer_from_h5<M: Model>(
    trainer: &mut Trainer<M>,
    h5: &hdf5_pure::File,
    path: &Path,
) -> Result<()> {
    let Some(config) = trainer
        .context()
        .optimizer_ref()
        .and_then(|o| o.keras_config())
    else {
        return Ok(());
    };
    let Some(kind) = Kind::of_keras(&config) else {
        return Ok(());
    };
    let c = &config["config"];
    let layout = VarsLayout {
        kind: &kind,
        ema: c["use_ema"].as_bool().unwrap_or(false),
        accumulation: c["gradient_accumulation_steps"]
            .as_u64()
            .is_some_and(|n| n > 0),
        scheduled: c["learning_rate"].is_object(),
    };
    load_optimizer_vars(trainer, h5, &layout, path)
}

/// What `optimizer/vars` holds: the step count, the learning rate unless it is a schedule,
/// then the slots of `kind`.
struct VarsLayout<'a> {
    kind: &'a Kind,
    ema: bool,
    accumulation: bool,
    scheduled: bool,
}

/// Reads `optimizer/vars` (Keras's order) into the trainer's optimizer: nothing when Keras
/// never built it (no step taken).
fn load_optimizer_vars<M: Model>(
    trainer: &mut Trainer<M>,
    h5: &hdf5_pure::File,
    layout: &VarsLayout,
    path: &Path,
) -> Result<()> {
    let kind = layout.kind;
    // The step count, and the learning rate when it is a variable.
    let head = if layout.scheduled { 1 } else { 2 };
    let group = "optimizer/vars";
    let Ok(g) = h5.group(group) else {
        return Ok(());
    };
    let count = g
        .datasets()
        .map_err(|e| {
            Error::value(format!(
                "cannot list `{group}` in `{}`: {e}",
                path.display()
            ))
        })?
        .len();
    if count == 0 {
        return Ok(());
    }
    if count < head {
        return Err(Error::value(format!(
            "`{}`: `{group}` holds {count} variable(s); Keras writes the step count (and a learning rate that is not a schedule) first",
            path.display()
        )));
    }
    let read = |i: usize| -> Result<(Vec<usize>, Vec<f32>)> {
        let name = format!("{group}/{i}");
        let d = h5.dataset(&name).map_err(|e| {
            Error::value(format!("cannot read `{name}` in `{}`: {e}", path.display()))
        })?;
        let shape = d
            .shape()
            .map_err(|e| Error::value(format!("cannot read `{name}`: {e}")))?
            .iter()
            .map(|s| *s as usize)
            .collect();
        let values = match d.read_f32() {
            Ok(v) => v,
            Err(_) => d
                .read_i64()
                .map_err(|e| Error::value(format!("cannot read `{name}`: {e}")))?
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        };
        Ok((shape, values))
    };
    let (_, iterations) = read(0)?;
    let lr = if layout.scheduled {
        Vec::new()
    } else {
        read(1)?.1
    };
    let vars = trainer.model().trainable_variables();
    let groups = kind.groups(layout.ema, layout.accumulation);
    let slots_per_var: usize = groups.iter().map(Vec::len).sum();
    let expected = head + slots_per_var * vars.len();
    if count == head {
        // Compiled and saved before any step: no slots yet.
    } else if count != expected {
        return Err(Error::value(format!(
            "`{}`: `{group}` holds {count} variables, but the optimizer of this model ({} trainable variables, {slots_per_var} slot(s) each) has {expected}",
            path.display(),
            vars.len()
        )));
    }
    let dev = Device::Cpu;
    let mut state = vec![(
        "iterations".to_string(),
        Tensor::new(iterations.first().copied().unwrap_or(0.0) as i64, &dev)?,
    )];
    if count > head {
        let mut i = head;
        for slots in &groups {
            for v in &vars {
                for slot in slots {
                    let (shape, values) = read(i)?;
                    if shape != v.shape().dims() {
                        return Err(Error::value(format!(
                            "`{}`: optimizer variable {i} (slot `{slot}` of `{}`) has shape {shape:?}, the variable {:?}",
                            path.display(),
                            v.name(),
                            v.shape().dims()
                        )));
                    }
                    let t = Tensor::from_vec(values, shape, &dev)?
                        .to_dtype(DType::F32)?
                        .to_device(v.as_tensor().device())?;
                    state.push((format!("{}/{slot}", v.name()), t));
                    i += 1;
                }
            }
        }
    }
    let opt = trainer.context().optimizer()?;
    opt.load_state(&state, &vars)?;
    if let Some(lr) = lr.first() {
        opt.set_learning_rate(f64::from(*lr))?;
    }
    Ok(())
}
