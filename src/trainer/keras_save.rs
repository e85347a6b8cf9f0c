//! A compiled model as a Keras `.keras` file: the model, its `compile_config` and its
//! optimizer's variables, which Keras's `keras.saving.load_model` (and [`Trainer::load_keras`])
//! restore to go on training.

use std::collections::HashMap;

use candle_core::Tensor;
use serde_json::{Value, json};

use super::keras_load::Kind;
use super::options::{Compile, LossSpec};
use crate::io::keras_file::{CompiledParts, OptimizerVar};
use crate::metrics::MetricSpec;
use crate::model::{Model, StepContext};
use crate::{Error, Result};

/// The losses and metrics of a `compile` as Keras's `compile_config` holds them (names as
/// given, objects serialized), or why Keras could not rebuild them.
pub(super) type KerasCompile = std::result::Result<Value, String>;

/// One loss or metric list: `null` when empty, the item alone when there is one, else a list.
fn list(items: Vec<Value>) -> Value {
    match items.len() {
        0 => Value::Null,
        1 => items.into_iter().next().unwrap_or(Value::Null),
        _ => Value::Array(items),
    }
}

/// The metrics of a `compile`: names as given, objects serialized.
fn metrics(ms: &[MetricSpec]) -> std::result::Result<Vec<Value>, String> {
    ms.iter()
        .map(|m| match m {
            MetricSpec::Name(n) => Ok(json!(n)),
            MetricSpec::Object(o) => o
                .keras_config()
                .ok_or_else(|| format!("metric `{}` has no Keras form", o.name())),
        })
        .collect()
}

/// Keras's `compile_config` without the optimizer (which is serialized when saving, with its
/// learning rate then).
pub(super) fn compile_parts(c: &Compile) -> KerasCompile {
    let losses: Vec<Value> = c
        .losses
        .iter()
        .map(|l| match l {
            LossSpec::Name(n) => Ok(json!(n)),
            LossSpec::Object(o) => o
                .keras_config()
                .ok_or_else(|| format!("loss `{}` has no Keras form", o.name())),
        })
        .collect::<std::result::Result<_, String>>()?;
    let metrics_list = metrics(&c.metrics)?;
    let weighted = metrics(&c.weighted_metrics)?;
    // Keras 3 takes a flat list of metrics for one output; several outputs take one list each.
    Ok(json!({
        "loss": list(losses),
        "loss_weights": c.loss_weights,
        "metrics": if metrics_list.is_empty() { Value::Null } else { Value::Array(metrics_list) },
        "weighted_metrics": if weighted.is_empty() { Value::Null } else { Value::Array(weighted) },
        "run_eagerly": false,
        "steps_per_execution": 1,
        "jit_compile": "auto",
    }))
}

/// What a `.keras` file keeps of a compile: the `compile_config` and the
/// optimizer's variables in Keras's order; `Ok(None)` when it was not compiled, compiled
/// without an optimizer, or with something Keras cannot rebuild (a loss, metric or optimizer
/// of your own).
pub(crate) fn compiled_parts(
    ctx: &StepContext,
    model: &dyn Model,
) -> Result<Option<CompiledParts>> {
    let Some(Ok(parts)) = &ctx.keras_compile else {
        return Ok(None);
    };
    let mut compile_config = parts.clone();
    // A flat list of metrics applies to every output here; Keras 3 wants one list per output.
    let outputs = model.output_names().len();
    if outputs > 1 {
        for key in ["metrics", "weighted_metrics"] {
            if let Some(list @ Value::Array(_)) = compile_config.get(key).cloned() {
                compile_config[key] = Value::Array(vec![list; outputs]);
            }
        }
    }
    // Keras's `compile` always has an optimizer: a compile without one is not saved.
    let Some(opt) = ctx.optimizer_ref() else {
        return Ok(None);
    };
    let Some(opt_config) = opt.keras_config() else {
        return Ok(None);
    };
    let kind = Kind::of_keras(&opt_config).ok_or_else(|| {
        Error::value(format!(
            "optimizer `{}` gives a Keras form ferrokeras does not know the variables of",
            opt.name()
        ))
    })?;
    let config = &opt_config["config"];
    let ema = config["use_ema"].as_bool().unwrap_or(false);
    let accumulation = config["gradient_accumulation_steps"]
        .as_u64()
        .is_some_and(|n| n > 0);
    let scheduled = config["learning_rate"].is_object();
    let state: HashMap<String, Tensor> = opt.state()?.into_iter().collect();
    let iterations = match state.get("iterations") {
        Some(t) => t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? as i64,
        None => 0,
    };
    let mut vars = vec![OptimizerVar::Count(iterations)];
    if !scheduled {
        vars.push(OptimizerVar::Values(Tensor::new(
            opt.learning_rate() as f32,
            &candle_core::Device::Cpu,
        )?));
    }
    // Slots exist once the optimizer has updated the variables (Keras builds it then).
    let variables = model.trainable_variables();
    let groups = kind.groups(ema, accumulation);
    let built = variables.iter().all(|v| {
        groups
            .iter()
            .flatten()
            .all(|slot| state.contains_key(&format!("{}/{slot}", v.name())))
    });
    if built && !variables.is_empty() && !groups.is_empty() {
        for slots in &groups {
            for v in &variables {
                for slot in slots {
                    let t = &state[&format!("{}/{slot}", v.name())];
                    vars.push(OptimizerVar::Values(
                        t.to_device(&candle_core::Device::Cpu)?,
                    ));
                }
            }
        }
    }
    if let Some(m) = compile_config.as_object_mut() {
        m.insert("optimizer".to_string(), opt_config);
    }
    Ok(Some(CompiledParts {
        compile_config,
        optimizer_name: opt.name().to_string(),
        optimizer_vars: vars,
    }))
}
