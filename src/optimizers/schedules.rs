//! Learning-rate schedules (Keras's `keras.optimizers.schedules`).

use crate::{Error, Result};

/// A learning rate as a function of the optimizer's iteration count (the raw number of `apply`
/// calls before the current one, as Keras passes `optimizer._iterations`).
///
/// ```
/// use ferrokeras::optimizers::{LearningRateSchedule, Sgd};
/// struct Halving;
/// impl LearningRateSchedule for Halving {
///     fn at(&self, step: u64) -> f64 {
///         0.1 * 0.5f64.powi((step / 100) as i32)
///     }
/// }
/// let sgd = Sgd::new(Halving);
/// ```
pub trait LearningRateSchedule: Send + Sync {
    /// The learning rate at `step` (0 for the first update).
    fn at(&self, step: u64) -> f64;
    /// The schedule as Keras serializes it (`{"module": "keras.optimizers.schedules",
    /// "class_name": ..., "config": ...}`), for `.keras` files; `None` (the default) for a
    /// schedule Keras does not have.
    ///
    /// ```
    /// use ferrokeras::optimizers::{ExponentialDecay, LearningRateSchedule};
    /// let c = ExponentialDecay::new(0.1, 10, 0.5).unwrap().keras_config().unwrap();
    /// assert_eq!(c["class_name"], "ExponentialDecay");
    /// assert_eq!(c["config"]["decay_steps"], 10);
    /// ```
    fn keras_config(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Keras's serialized form of a schedule.
fn serialized(class: &str, config: serde_json::Value) -> Option<serde_json::Value> {
    Some(serde_json::json!({
        "module": "keras.optimizers.schedules",
        "class_name": class,
        "config": config,
        "registered_name": null,
    }))
}

/// `decay_steps`, refused when 0 as Keras refuses it.
fn positive_decay_steps(decay_steps: u64) -> Result<u64> {
    if decay_steps == 0 {
        return Err(Error::value(
            "Argument `decay_steps` must be > 0. Received: decay_steps=0",
        ));
    }
    Ok(decay_steps)
}

/// `initial * decay_rate ^ (step / decay_steps)` (floored exponent with `staircase`), Keras's
/// `ExponentialDecay`.
///
/// ```
/// use ferrokeras::optimizers::{ExponentialDecay, LearningRateSchedule};
/// let s = ExponentialDecay::new(0.1, 10, 0.5).unwrap();
/// assert!(ExponentialDecay::new(0.1, 0, 0.5).is_err());
/// assert!((s.at(10) - 0.05).abs() < 1e-12);
/// assert!((s.staircase(true).at(15) - 0.05).abs() < 1e-12);
/// ```
#[derive(Clone, Debug)]
pub struct ExponentialDecay {
    initial: f64,
    decay_steps: u64,
    decay_rate: f64,
    staircase: bool,
}

impl ExponentialDecay {
    /// A decaying schedule.
    ///
    /// # Errors
    /// A `decay_steps` of 0 (Keras's message).
    pub fn new(initial_learning_rate: f64, decay_steps: u64, decay_rate: f64) -> Result<Self> {
        Ok(Self {
            initial: initial_learning_rate,
            decay_steps: positive_decay_steps(decay_steps)?,
            decay_rate,
            staircase: false,
        })
    }
    /// Decay in discrete steps.
    pub fn staircase(mut self, staircase: bool) -> Self {
        self.staircase = staircase;
        self
    }
}

impl LearningRateSchedule for ExponentialDecay {
    fn at(&self, step: u64) -> f64 {
        let mut p = step as f64 / self.decay_steps as f64;
        if self.staircase {
            p = p.floor();
        }
        self.initial * self.decay_rate.powf(p)
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        serialized(
            "ExponentialDecay",
            serde_json::json!({
                "initial_learning_rate": self.initial,
                "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate,
                "staircase": self.staircase,
                "name": "ExponentialDecay",
            }),
        )
    }
}

/// Keras's `PiecewiseConstantDecay`: `values[0]` while `step <= boundaries[0]`, `values[i]` while
/// `boundaries[i-1] < step <= boundaries[i]`, and the last value after the last boundary.
///
/// ```
/// use ferrokeras::optimizers::{LearningRateSchedule, PiecewiseConstantDecay};
/// let s = PiecewiseConstantDecay::new(&[3, 7], &[0.1, 0.05, 0.01]).unwrap();
/// assert_eq!([s.at(0), s.at(3), s.at(4), s.at(7), s.at(8)], [0.1, 0.1, 0.05, 0.05, 0.01]);
/// assert!(PiecewiseConstantDecay::new(&[3, 7], &[0.1, 0.05]).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct PiecewiseConstantDecay {
    boundaries: Vec<u64>,
    values: Vec<f64>,
}

impl PiecewiseConstantDecay {
    /// A step function of the iteration count.
    ///
    /// # Errors
    /// `values` not one longer than `boundaries` (Keras's message), or boundaries that do not
    /// strictly increase (Keras requires it without checking).
    pub fn new(boundaries: &[u64], values: &[f64]) -> Result<Self> {
        if boundaries.len() + 1 != values.len() {
            return Err(Error::value(format!(
                "The length of boundaries should be 1 less than the length of values. Received: \
                 boundaries={boundaries:?} of length {}, and values={values:?} of length {}.",
                boundaries.len(),
                values.len()
            )));
        }
        if boundaries.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::value(format!(
                "PiecewiseConstantDecay: `boundaries` must be strictly increasing. Received: \
                 boundaries={boundaries:?}"
            )));
        }
        Ok(Self {
            boundaries: boundaries.to_vec(),
            values: values.to_vec(),
        })
    }
}

impl LearningRateSchedule for PiecewiseConstantDecay {
    fn at(&self, step: u64) -> f64 {
        let i = self.boundaries.partition_point(|&b| b < step);
        self.values[i]
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        serialized(
            "PiecewiseConstantDecay",
            serde_json::json!({
                "boundaries": self.boundaries,
                "values": self.values,
                "name": "PiecewiseConstant",
            }),
        )
    }
}

/// Keras's `PolynomialDecay`: from `initial` to `end_learning_rate` over `decay_steps` as
/// `(initial - end) * (1 - step / decay_steps) ^ power + end`, then `end`. With `cycle`,
/// `decay_steps` becomes the first multiple of itself that is at least `step` (one `decay_steps`
/// at step 0), so the decay restarts.
///
/// ```
/// use ferrokeras::optimizers::{LearningRateSchedule, PolynomialDecay};
/// let s = PolynomialDecay::new(0.1, 10, 0.01).unwrap();
/// assert!((s.at(5) - 0.055).abs() < 1e-12); // linear by default (power 1)
/// assert!((s.at(50) - 0.01).abs() < 1e-12);
/// let c = PolynomialDecay::new(0.1, 10, 0.0).unwrap().power(2.0).cycle(true);
/// assert!((c.at(15) - 0.1 * 0.25 * 0.25).abs() < 1e-12); // decays over 20 steps now
/// ```
#[derive(Clone, Debug)]
pub struct PolynomialDecay {
    initial: f64,
    decay_steps: u64,
    end: f64,
    power: f64,
    cycle: bool,
}

impl PolynomialDecay {
    /// A linear decay (power 1, no cycling; Keras's default `end_learning_rate` is 0.0001).
    ///
    /// # Errors
    /// A `decay_steps` of 0 (Keras's message).
    pub fn new(
        initial_learning_rate: f64,
        decay_steps: u64,
        end_learning_rate: f64,
    ) -> Result<Self> {
        Ok(Self {
            initial: initial_learning_rate,
            decay_steps: positive_decay_steps(decay_steps)?,
            end: end_learning_rate,
            power: 1.0,
            cycle: false,
        })
    }
    /// The power of the polynomial (default 1).
    pub fn power(mut self, power: f64) -> Self {
        self.power = power;
        self
    }
    /// Whether to restart the decay after `decay_steps` (default `false`).
    pub fn cycle(mut self, cycle: bool) -> Self {
        self.cycle = cycle;
        self
    }
}

impl LearningRateSchedule for PolynomialDecay {
    fn at(&self, step: u64) -> f64 {
        let mut s = step as f64;
        let mut decay_steps = self.decay_steps as f64;
        if self.cycle {
            let multiplier = if step == 0 {
                1.0
            } else {
                (s / decay_steps).ceil()
            };
            decay_steps *= multiplier;
        } else {
            s = s.min(decay_steps);
        }
        let p = s / decay_steps;
        (self.initial - self.end) * (1.0 - p).powf(self.power) + self.end
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        serialized(
            "PolynomialDecay",
            serde_json::json!({
                "initial_learning_rate": self.initial,
                "decay_steps": self.decay_steps,
                "end_learning_rate": self.end,
                "power": self.power,
                "cycle": self.cycle,
                "name": "PolynomialDecay",
            }),
        )
    }
}

/// Keras's `InverseTimeDecay`: `initial / (1 + decay_rate * step / decay_steps)` (the quotient
/// floored with `staircase`).
///
/// ```
/// use ferrokeras::optimizers::{InverseTimeDecay, LearningRateSchedule};
/// let s = InverseTimeDecay::new(0.1, 2, 0.5).unwrap();
/// assert!((s.at(2) - 0.1 / 1.5).abs() < 1e-12);
/// assert!((s.staircase(true).at(3) - 0.1 / 1.5).abs() < 1e-12);
/// ```
#[derive(Clone, Debug)]
pub struct InverseTimeDecay {
    initial: f64,
    decay_steps: u64,
    decay_rate: f64,
    staircase: bool,
}

impl InverseTimeDecay {
    /// A continuous inverse-time decay.
    ///
    /// # Errors
    /// A `decay_steps` of 0 (Keras's message).
    pub fn new(initial_learning_rate: f64, decay_steps: u64, decay_rate: f64) -> Result<Self> {
        Ok(Self {
            initial: initial_learning_rate,
            decay_steps: positive_decay_steps(decay_steps)?,
            decay_rate,
            staircase: false,
        })
    }
    /// Decay in discrete steps.
    pub fn staircase(mut self, staircase: bool) -> Self {
        self.staircase = staircase;
        self
    }
}

impl LearningRateSchedule for InverseTimeDecay {
    fn at(&self, step: u64) -> f64 {
        let mut p = step as f64 / self.decay_steps as f64;
        if self.staircase {
            p = p.floor();
        }
        self.initial / (1.0 + self.decay_rate * p)
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        serialized(
            "InverseTimeDecay",
            serde_json::json!({
                "initial_learning_rate": self.initial,
                "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate,
                "staircase": self.staircase,
                "name": "InverseTimeDecay",
            }),
        )
    }
}

/// Keras's `CosineDecay`, with optional linear warmup.
///
/// Without a warmup target: `initial * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)`
/// with `s = min(step, decay_steps)`. With [`CosineDecay::warmup_target`]: a linear ramp from
/// `initial` to the target over `warmup_steps`, then the cosine decay above from the target (to
/// `alpha * target`) over the next `decay_steps`.
///
/// ```
/// use ferrokeras::optimizers::{CosineDecay, LearningRateSchedule};
/// let s = CosineDecay::new(0.1, 10).unwrap().alpha(0.1);
/// assert!((s.at(5) - 0.055).abs() < 1e-12);
/// assert!((s.at(100) - 0.01).abs() < 1e-12);
/// let w = CosineDecay::new(0.0, 10).unwrap().warmup_target(0.1).warmup_steps(4);
/// assert!((w.at(2) - 0.05).abs() < 1e-12); // halfway up the ramp
/// assert!((w.at(4) - 0.1).abs() < 1e-12); // the decay starts from the target
/// assert!(w.at(14).abs() < 1e-12);
/// ```
#[derive(Clone, Debug)]
pub struct CosineDecay {
    initial: f64,
    decay_steps: u64,
    alpha: f64,
    warmup_target: Option<f64>,
    warmup_steps: u64,
}

impl CosineDecay {
    /// A cosine decay to 0 (`alpha` 0) without warmup.
    ///
    /// # Errors
    /// A `decay_steps` of 0 (Keras's message).
    pub fn new(initial_learning_rate: f64, decay_steps: u64) -> Result<Self> {
        Ok(Self {
            initial: initial_learning_rate,
            decay_steps: positive_decay_steps(decay_steps)?,
            alpha: 0.0,
            warmup_target: None,
            warmup_steps: 0,
        })
    }
    /// The final learning rate as a fraction of the decay's starting value (default 0).
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// The learning rate reached at the end of the warmup, where the decay starts; `None` (the
    /// default) skips the warmup, and then `warmup_steps` is ignored, as in Keras.
    pub fn warmup_target(mut self, target: impl Into<Option<f64>>) -> Self {
        self.warmup_target = target.into();
        self
    }
    /// The length of the linear warmup (default 0).
    pub fn warmup_steps(mut self, steps: u64) -> Self {
        self.warmup_steps = steps;
        self
    }

    fn decay(&self, step: f64, from: f64) -> f64 {
        let fraction = step / self.decay_steps as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * fraction).cos());
        from * ((1.0 - self.alpha) * cosine + self.alpha)
    }
}

impl LearningRateSchedule for CosineDecay {
    fn at(&self, step: u64) -> f64 {
        let decay_steps = self.decay_steps as f64;
        let Some(target) = self.warmup_target else {
            return self.decay((step as f64).min(decay_steps), self.initial);
        };
        let warmup = self.warmup_steps as f64;
        let s = (step as f64).min(decay_steps + warmup);
        if s < warmup {
            (target - self.initial) * (s / warmup) + self.initial
        } else {
            self.decay(s - warmup, target)
        }
    }
    fn keras_config(&self) -> Option<serde_json::Value> {
        serialized(
            "CosineDecay",
            serde_json::json!({
                "initial_learning_rate": self.initial,
                "decay_steps": self.decay_steps,
                "alpha": self.alpha,
                "name": "CosineDecay",
                "warmup_target": self.warmup_target,
                "warmup_steps": self.warmup_steps,
            }),
        )
    }
}
