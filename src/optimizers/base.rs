//! What every optimizer shares (Keras's `BaseOptimizer`): the iteration counter, the learning rate,
//! per-variable slots, gradient clipping, gradient accumulation, the exponential moving average of
//! the variables, and the checkpoint state of all of these.
//!
//! One update ([`Base::apply`]) runs in Keras's order:
//! 1. with `gradient_accumulation_steps = n`, the gradient is added to the variable's accumulator;
//!    only on every n-th call is the average `(acc + g) / n` used (and the accumulator reset),
//!    otherwise the call stops here (step 5 still runs);
//! 2. gradients are clipped (`clipnorm`, `global_clipnorm` or `clipvalue`);
//! 3. the optimizer's own rule updates each variable with the learning rate at the raw call count;
//! 4. (the optimizer-specific rule may apply weight decay itself);
//! 5. with `use_ema`, the moving average of every variable is updated, and every
//!    `ema_overwrite_frequency` updates the variables are overwritten with it;
//! 6. the raw call count goes up by one.

use std::collections::HashMap;

use candle_core::{DType, Tensor, TensorId};

use super::LearningRate;
use crate::tape::Variable;
use crate::{Error, Result};

/// The state key suffix of a variable's gradient accumulator.
pub(super) const ACCUMULATOR: &str = "accumulator";
/// The state key suffix of a variable's moving average.
pub(super) const EMA: &str = "ema";

/// Keras's `BaseOptimizer` arguments shared by every optimizer (set through each optimizer's
/// builder methods).
#[derive(Clone, Debug)]
pub(super) struct Options {
    pub(super) clipnorm: Option<f64>,
    pub(super) clipvalue: Option<f64>,
    pub(super) global_clipnorm: Option<f64>,
    pub(super) gradient_accumulation_steps: Option<u64>,
    pub(super) use_ema: bool,
    pub(super) ema_momentum: f64,
    pub(super) ema_overwrite_frequency: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clipnorm: None,
            clipvalue: None,
            global_clipnorm: None,
            gradient_accumulation_steps: None,
            use_ema: false,
            ema_momentum: 0.99,
            ema_overwrite_frequency: None,
        }
    }
}

/// `Some(v)` only for a value that enables its feature (Keras: `if self.clipnorm and self.clipnorm > 0`).
fn positive(v: Option<f64>) -> Option<f64> {
    v.filter(|v| *v > 0.0)
}

impl Options {
    /// Keras's constructor checks, with its messages.
    fn validate(&self, opt: &str) -> Result<()> {
        let set = [self.clipnorm, self.clipvalue, self.global_clipnorm]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set > 1 {
            let show = |v: Option<f64>| v.map_or("None".to_string(), |v| v.to_string());
            return Err(Error::value(format!(
                "{opt}: Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. \
                 Received: clipnorm={}, clipvalue={}, global_clipnorm={}",
                show(self.clipnorm),
                show(self.clipvalue),
                show(self.global_clipnorm)
            )));
        }
        if let Some(n) = self.gradient_accumulation_steps
            && n < 2
        {
            return Err(Error::value(format!(
                "{opt}: `gradient_accumulation_steps` must be an integer >= 2. \
                 Received: gradient_accumulation_steps={n}"
            )));
        }
        if self.use_ema && !(0.0..=1.0).contains(&self.ema_momentum) {
            return Err(Error::value(format!(
                "{opt}: `ema_momentum` must be in the range [0, 1]. Received: ema_momentum={}",
                self.ema_momentum
            )));
        }
        Ok(())
    }

    /// The number of calls per update (1 without accumulation).
    fn steps_per_update(&self) -> u64 {
        self.gradient_accumulation_steps.unwrap_or(1).max(1)
    }
}

/// Per-variable state shared by every optimizer.
pub(super) struct Base {
    pub(super) lr: LearningRate,
    /// Raw number of `apply` calls (Keras's `optimizer._iterations`); with gradient accumulation
    /// the number of updates is `iterations / n`.
    pub(super) iterations: u64,
    pub(super) opts: Options,
    slots: HashMap<TensorId, Vec<Tensor>>,
    accumulators: HashMap<TensorId, Tensor>,
    emas: HashMap<TensorId, Tensor>,
    /// The name of every variable with state, for [`Base::state`].
    names: HashMap<TensorId, String>,
    slot_names: &'static [&'static str],
}

impl Base {
    pub(super) fn new(lr: LearningRate, slot_names: &'static [&'static str]) -> Self {
        Self {
            lr,
            iterations: 0,
            opts: Options::default(),
            slots: HashMap::new(),
            accumulators: HashMap::new(),
            emas: HashMap::new(),
            names: HashMap::new(),
            slot_names,
        }
    }

    /// Keras's `optimizer.iterations`: the number of updates applied (calls / accumulation steps).
    pub(super) fn updates(&self) -> u64 {
        self.iterations / self.opts.steps_per_update()
    }

    /// The learning rate the next call uses (schedules see the raw call count, as in Keras).
    pub(super) fn learning_rate(&self) -> f64 {
        self.lr.at(self.iterations)
    }

    /// Replaces a constant rate; a schedule is refused, with Keras's message.
    pub(super) fn set_learning_rate(&mut self, lr: f64) -> Result<()> {
        match self.lr {
            super::LearningRate::Constant(_) => {
                self.lr = super::LearningRate::Constant(lr);
                Ok(())
            }
            super::LearningRate::Schedule(_) => Err(Error::value(
                "This optimizer was created with a `LearningRateSchedule` object as its `learning_rate` constructor argument, hence its learning rate is not settable. If you need the learning rate to be settable, you should instantiate the optimizer with a float `learning_rate` argument.",
            )),
        }
    }

    /// Keras's serialized optimizer: `BaseOptimizer`'s options (the current learning rate, or
    /// the schedule), then `extra`, the class's own.
    pub(super) fn keras_config(
        &self,
        class: &str,
        name: &str,
        weight_decay: f64,
        extra: serde_json::Value,
    ) -> Option<serde_json::Value> {
        let lr = match &self.lr {
            super::LearningRate::Constant(v) => serde_json::json!(v),
            super::LearningRate::Schedule(s) => s.keras_config()?,
        };
        let o = &self.opts;
        // Keras's AdamW turns a null `weight_decay` into its default 0.004: write the number.
        let wd = if weight_decay != 0.0 || class == "AdamW" {
            serde_json::json!(weight_decay)
        } else {
            serde_json::Value::Null
        };
        let mut config = serde_json::json!({
            "name": name,
            "learning_rate": lr,
            "weight_decay": wd,
            "clipnorm": o.clipnorm,
            "global_clipnorm": o.global_clipnorm,
            "clipvalue": o.clipvalue,
            "use_ema": o.use_ema,
            "ema_momentum": o.ema_momentum,
            "ema_overwrite_frequency": o.ema_overwrite_frequency,
            "loss_scale_factor": null,
            "gradient_accumulation_steps": o.gradient_accumulation_steps,
        });
        if let (Some(c), serde_json::Value::Object(e)) = (config.as_object_mut(), extra) {
            c.extend(e);
        }
        Some(serde_json::json!({
            "module": "keras.optimizers",
            "class_name": class,
            "config": config,
            "registered_name": null,
        }))
    }

    /// Keras's count of the optimizer's variables' values, once an update ran (see
    /// `Optimizer::variable_count`).
    pub(super) fn variable_count(&self) -> Option<usize> {
        if self.iterations == 0 {
            return None;
        }
        let rate = usize::from(matches!(self.lr, super::LearningRate::Constant(_)));
        let slots: usize = self
            .slots
            .values()
            .flatten()
            .chain(self.accumulators.values())
            .chain(self.emas.values())
            .map(Tensor::elem_count)
            .sum();
        Some(1 + rate + slots)
    }

    pub(super) fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let dev = candle_core::Device::Cpu;
        let mut out = vec![(
            "iterations".to_string(),
            Tensor::new(self.iterations as i64, &dev)?,
        )];
        let name = |id: &TensorId| self.names.get(id).cloned().unwrap_or_default();
        for (id, slots) in &self.slots {
            for (i, t) in slots.iter().enumerate() {
                let slot = self.slot_names.get(i).copied().unwrap_or("slot");
                // A fresh buffer of the slot's own values (a slot may be a view of a larger one).
                out.push((format!("{}/{slot}", name(id)), t.force_contiguous()?));
            }
        }
        for (id, t) in &self.accumulators {
            out.push((format!("{}/{ACCUMULATOR}", name(id)), t.clone()));
        }
        for (id, t) in &self.emas {
            out.push((format!("{}/{EMA}", name(id)), t.clone()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Restores a [`Base::state`]; checks everything before changing anything.
    pub(super) fn load_state(
        &mut self,
        opt: &str,
        state: &[(String, Tensor)],
        vars: &[Variable],
    ) -> Result<()> {
        let mut slots: HashMap<TensorId, Vec<Option<Tensor>>> = HashMap::new();
        let mut accumulators = Vec::new();
        let mut emas = Vec::new();
        let mut names = Vec::new();
        let mut iterations = None;
        for (key, t) in state {
            if key == "iterations" {
                if t.elem_count() != 1 {
                    return Err(Error::value(format!(
                        "{opt}: the optimizer state entry `iterations` must be a scalar, found shape {:?}",
                        t.dims()
                    )));
                }
                let it = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
                if !(it >= 0.0 && it.fract() == 0.0) {
                    return Err(Error::value(format!(
                        "{opt}: the optimizer state entry `iterations` must be a non-negative integer, found {it}"
                    )));
                }
                iterations = Some(it as u64);
                continue;
            }
            let (var_name, slot) = key.rsplit_once('/').ok_or_else(|| {
                Error::value(format!(
                    "{opt}: unexpected optimizer state entry `{key}` (expected `iterations` or `{{variable}}/{{slot}}`)"
                ))
            })?;
            let v = vars.iter().find(|v| v.name() == var_name).ok_or_else(|| {
                Error::value(format!(
                    "{opt}: the optimizer state has an entry `{key}` for variable `{var_name}`, which the model does not have"
                ))
            })?;
            if t.dims() != v.shape().dims() {
                return Err(Error::value(format!(
                    "{opt}: optimizer state entry `{key}` has shape {:?}, but variable `{var_name}` has shape {:?}",
                    t.dims(),
                    v.shape().dims()
                )));
            }
            // A copy: slots are updated in place, and must not change the caller's tensors.
            let value = t
                .to_device(v.as_tensor().device())?
                .to_dtype(v.dtype())?
                .copy()?;
            names.push((v.id(), v.name().to_string()));
            if slot == ACCUMULATOR {
                if self.opts.gradient_accumulation_steps.is_none() {
                    return Err(Error::value(format!(
                        "{opt}: the optimizer state has a gradient accumulator `{key}`, but this \
                         optimizer does not accumulate gradients; set `gradient_accumulation_steps` \
                         as when the state was saved"
                    )));
                }
                accumulators.push((v.id(), value));
            } else if slot == EMA {
                if !self.opts.use_ema {
                    return Err(Error::value(format!(
                        "{opt}: the optimizer state has a moving average `{key}`, but this optimizer \
                         does not keep one; set `use_ema(true)` as when the state was saved"
                    )));
                }
                emas.push((v.id(), value));
            } else {
                let i = self.slot_names.iter().position(|s| *s == slot).ok_or_else(|| {
                    Error::value(format!(
                        "{opt}: unknown slot `{slot}` in optimizer state entry `{key}`; this optimizer has slots {:?} (and `{ACCUMULATOR}`, `{EMA}` when enabled)",
                        self.slot_names
                    ))
                })?;
                let entry = slots
                    .entry(v.id())
                    .or_insert_with(|| vec![None; self.slot_names.len()]);
                entry[i] = Some(value);
            }
        }
        let mut complete = Vec::with_capacity(slots.len());
        for (id, list) in slots {
            // Slots are used in order (Adam keeps `vhat` only with AMSGrad): a prefix must be present.
            let present = list.iter().take_while(|t| t.is_some()).count();
            if list[present..].iter().any(Option::is_some) {
                let var = names
                    .iter()
                    .find(|(i, _)| *i == id)
                    .map_or("?", |(_, n)| n.as_str());
                return Err(Error::value(format!(
                    "{opt}: the optimizer state misses slot `{var}/{}`",
                    self.slot_names[present]
                )));
            }
            complete.push((id, list.into_iter().flatten().collect::<Vec<_>>()));
        }
        // Everything is valid: commit.
        self.names.extend(names);
        self.slots.extend(complete);
        self.accumulators.extend(accumulators);
        self.emas.extend(emas);
        if let Some(it) = iterations {
            self.iterations = it;
        }
        Ok(())
    }

    /// One Keras `apply` (see the module documentation for the order of the steps). `update` is the
    /// optimizer's rule for one variable: `(gradient, value, slots, learning rate, step)` to the new
    /// value (or `None` when it wrote the value and slots in place), where `step` counts updates
    /// from 1. Slots are never shared with tensors outside the optimizer (state goes in and out as
    /// copies), so a rule may update them in place.
    pub(super) fn apply(
        &mut self,
        name: &str,
        n_slots: usize,
        grads: &[Tensor],
        vars: &[Variable],
        mut update: impl FnMut(&Tensor, &Tensor, &mut [Tensor], f64, u64) -> Result<Option<Tensor>>,
    ) -> Result<()> {
        self.apply_all(name, n_slots, grads, vars, |gs, ws, slots, lr, step| {
            gs.iter()
                .zip(ws)
                .zip(slots)
                .map(|((g, w), s)| update(g, w, s, lr, step))
                .collect()
        })
    }

    /// [`Base::apply`] with the rule given every variable of the step at once, so that it can
    /// update them together: `(gradients, values, slots, learning rate, step)` to one new value
    /// (or `None`) per variable. A variable listed twice is updated twice, one after the other.
    pub(super) fn apply_all(
        &mut self,
        name: &str,
        n_slots: usize,
        grads: &[Tensor],
        vars: &[Variable],
        mut update: impl FnMut(
            &[Tensor],
            &[Tensor],
            &mut [Vec<Tensor>],
            f64,
            u64,
        ) -> Result<Vec<Option<Tensor>>>,
    ) -> Result<()> {
        self.opts.validate(name)?;
        if grads.len() != vars.len() {
            return Err(Error::value(format!(
                "{name}: received {} gradients for {} variables; pass one gradient per variable, in the same order",
                grads.len(),
                vars.len()
            )));
        }
        for (g, v) in grads.iter().zip(vars) {
            if g.dims() != v.shape().dims() {
                return Err(Error::value(format!(
                    "{name}: the gradient for variable `{}` has shape {:?}, but the variable has shape {:?}",
                    v.name(),
                    g.dims(),
                    v.shape().dims()
                )));
            }
        }
        for v in vars {
            if let Some(s) = self.slots.get(&v.id())
                && s.len() < n_slots
            {
                return Err(Error::value(format!(
                    "{name}: variable `{}` has {} optimizer slot(s) {:?} from a loaded state, but this optimizer's settings need {n_slots} {:?}; load a state saved with the same settings (e.g. amsgrad, momentum), or change the settings to match it",
                    v.name(),
                    s.len(),
                    &self.slot_names[..s.len().min(self.slot_names.len())],
                    &self.slot_names[..n_slots.min(self.slot_names.len())],
                )));
            }
        }
        let mut grads = grads
            .iter()
            .zip(vars)
            .map(|(g, v)| g.detach().to_dtype(v.dtype()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        for v in vars {
            self.names
                .entry(v.id())
                .or_insert_with(|| v.name().to_string());
        }

        let raw = self.iterations;
        let n = self.opts.steps_per_update();
        let is_update_step = (raw + 1).is_multiple_of(n);
        if n > 1 {
            for (g, v) in grads.iter_mut().zip(vars) {
                let acc = match self.accumulators.get(&v.id()) {
                    Some(a) => a.clone(),
                    None => g.zeros_like()?,
                };
                if is_update_step {
                    *g = ((&*g + &acc)? / n as f64)?;
                    self.accumulators.insert(v.id(), acc.zeros_like()?);
                } else {
                    self.accumulators.insert(v.id(), (&*g + &acc)?);
                }
            }
        }

        if is_update_step {
            let grads = self.clip(grads)?;
            let lr = self.lr.at(raw);
            let step = raw / n + 1;
            let mut seen = std::collections::HashSet::new();
            let groups: Vec<std::ops::Range<usize>> = if vars.iter().all(|v| seen.insert(v.id())) {
                std::iter::once(0..vars.len()).collect()
            } else {
                (0..vars.len()).map(|i| i..i + 1).collect()
            };
            for range in groups {
                let (grads, vars) = (&grads[range.clone()], &vars[range]);
                let values: Vec<Tensor> = vars.iter().map(|v| v.value()).collect();
                let mut slots = vars
                    .iter()
                    .zip(&values)
                    .map(|(v, value)| match self.slots.remove(&v.id()) {
                        Some(s) => Ok(s),
                        None => (0..n_slots)
                            .map(|_| value.zeros_like())
                            .collect::<candle_core::Result<Vec<_>>>(),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let new_values = update(grads, &values, &mut slots, lr, step);
                for (v, s) in vars.iter().zip(slots) {
                    self.slots.insert(v.id(), s);
                }
                // `None`: the rule updated the value (which shares the variable's storage) in place.
                for (v, new_value) in vars.iter().zip(new_values?) {
                    if let Some(new_value) = new_value {
                        v.assign(&new_value)?;
                    }
                }
            }
        }

        if self.opts.use_ema {
            self.update_ema(vars, raw / n)?;
        }
        self.iterations += 1;
        Ok(())
    }

    /// Keras's `_clip_gradients`: `clipnorm` per gradient, else `global_clipnorm`, else `clipvalue`.
    fn clip(&self, grads: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if let Some(c) = positive(self.opts.clipnorm) {
            // g * c / max(||g||, c)
            grads
                .iter()
                .map(|g| {
                    let norm = g.sqr()?.sum_all()?.sqrt()?;
                    Ok((g * c)?.broadcast_div(&norm.maximum(c)?)?)
                })
                .collect()
        } else if let Some(c) = positive(self.opts.global_clipnorm) {
            let Some(first) = grads.first() else {
                return Ok(grads);
            };
            let dev = first.device().clone();
            let squares = grads
                .iter()
                .map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_device(&dev))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
            // c * min(1 / norm, 1 / c), made NaN by a non-finite norm (Keras's `clip_by_global_norm`
            // adds `norm - norm`; `norm * 0` is the same: 0, or NaN for an infinite or NaN norm).
            let scale = ((norm.recip()?.minimum(1.0 / c)? * c)? + (&norm * 0.0)?)?;
            grads
                .iter()
                .map(|g| {
                    let s = scale.to_dtype(g.dtype())?.to_device(g.device())?;
                    Ok(g.broadcast_mul(&s)?)
                })
                .collect()
        } else if let Some(c) = positive(self.opts.clipvalue) {
            grads.iter().map(|g| Ok(g.clamp(-c, c)?)).collect()
        } else {
            Ok(grads)
        }
    }

    /// Keras's `_update_model_variables_moving_average` (with `updates` = Keras's `iterations`
    /// before this call is counted), then the periodic overwrite.
    fn update_ema(&mut self, vars: &[Variable], updates: u64) -> Result<()> {
        // Keras starts the average at the first value: momentum 0 while `iterations == 0`.
        let m = if updates == 0 {
            0.0
        } else {
            self.opts.ema_momentum
        };
        for v in vars {
            let value = v.value();
            let avg = match self.emas.get(&v.id()) {
                Some(avg) if m > 0.0 => ((avg * m)? + (&value * (1.0 - m))?)?,
                // A copy: `value` shares storage with the variable.
                _ => value.copy()?,
            };
            self.emas.insert(v.id(), avg);
        }
        if let Some(f) = self.opts.ema_overwrite_frequency.filter(|f| *f > 0)
            && (updates + 1).is_multiple_of(f)
        {
            self.overwrite_with_ema(vars)?;
        }
        Ok(())
    }

    /// Assigns each variable's moving average to it (variables without one are left alone).
    pub(super) fn overwrite_with_ema(&self, vars: &[Variable]) -> Result<()> {
        for v in vars {
            if let Some(avg) = self.emas.get(&v.id()) {
                v.assign(avg)?;
            }
        }
        Ok(())
    }

    /// Swaps every variable with its moving average (`SwapEMAWeights`).
    pub(super) fn swap_ema(&mut self, vars: &[Variable]) -> Result<()> {
        self.need_ema()?;
        for v in vars {
            if let Some(avg) = self.emas.get_mut(&v.id()) {
                let current = v.value().copy()?;
                v.assign(avg)?;
                *avg = current;
            }
        }
        Ok(())
    }

    /// Sets every moving average to its variable's value (`SwapEMAWeights` at the end of `fit`,
    /// with the averages in the model).
    pub(super) fn copy_to_ema(&mut self, vars: &[Variable]) -> Result<()> {
        self.need_ema()?;
        for v in vars {
            if let Some(avg) = self.emas.get_mut(&v.id()) {
                *avg = v.value().copy()?;
            }
        }
        Ok(())
    }

    fn need_ema(&self) -> Result<()> {
        if self.opts.use_ema {
            Ok(())
        } else {
            Err(Error::value(
                "SwapEMAWeights must be used when `use_ema=True` is set on the optimizer. Received: use_ema=False. Build the optimizer with `.use_ema(true)`.",
            ))
        }
    }

    /// Keras's `finalize_variable_values`: with `use_ema`, the variables take their moving averages.
    pub(super) fn finalize_variable_values(&self, vars: &[Variable]) -> Result<()> {
        if self.opts.use_ema {
            self.overwrite_with_ema(vars)?;
        }
        Ok(())
    }
}

/// The slots of several variables as one flat tensor per slot, so that an update rule built from
/// candle's element-wise ops runs each op once for all of them instead of once per variable
/// (off the CPU, every op is a kernel launch and a fresh buffer: Adam is about a dozen per
/// variable). The variables' slots are views of the flat tensors; the flat tensors are kept
/// between steps and reused while the slots are still the views handed out (state loaded in
/// between replaces them, and the next step gathers the new ones).
#[derive(Default)]
pub(super) struct FlatSlots {
    handed_out: Vec<TensorId>,
    whole: Vec<Tensor>,
}

impl FlatSlots {
    /// How many flat tensors are kept (one per slot; none before the first joint update).
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.whole.len()
    }

    /// One flat tensor per slot index: the slots of all variables, in order.
    pub(super) fn gather(&self, slots: &[Vec<Tensor>], n_slots: usize) -> Result<Vec<Tensor>> {
        let ids = slots.iter().flat_map(|s| s.iter().map(|t| t.id()));
        if self.whole.len() == n_slots && ids.eq(self.handed_out.iter().copied()) {
            return Ok(self.whole.clone());
        }
        (0..n_slots)
            .map(|j| {
                let parts = slots
                    .iter()
                    .map(|s| s[j].flatten_all())
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?)
            })
            .collect()
    }

    /// Sets every variable's slots to views of the new flat tensors, and keeps them.
    pub(super) fn scatter(
        &mut self,
        whole: Vec<Tensor>,
        slots: &mut [Vec<Tensor>],
        shapes: &[candle_core::Shape],
    ) -> Result<()> {
        self.handed_out.clear();
        for (s, (offset, shape)) in slots.iter_mut().zip(offsets(shapes)) {
            for (j, flat) in whole.iter().enumerate() {
                s[j] = flat.narrow(0, offset, shape.elem_count())?.reshape(shape)?;
                self.handed_out.push(s[j].id());
            }
        }
        self.whole = whole;
        Ok(())
    }
}

/// Each shape with the offset of its first value in the flat concatenation.
pub(super) fn offsets(
    shapes: &[candle_core::Shape],
) -> impl Iterator<Item = (usize, &candle_core::Shape)> {
    shapes.iter().scan(0, |at, s| {
        let start = *at;
        *at += s.elem_count();
        Some((start, s))
    })
}
