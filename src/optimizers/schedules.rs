//! Learning-rate schedules.

/// A learning rate as a function of the optimizer's iteration count.
pub trait LearningRateSchedule: Send + Sync {
    /// The learning rate at `step` (0 for the first update).
    fn at(&self, step: u64) -> f64;
}

/// `initial * decay_rate ^ (step / decay_steps)` (floored exponent with `staircase`), Keras's
/// `ExponentialDecay`.
///
/// ```
/// use ferrokeras::optimizers::{ExponentialDecay, LearningRateSchedule};
/// let s = ExponentialDecay::new(0.1, 10, 0.5);
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
    /// A decaying schedule (a `decay_steps` of 0 is treated as 1).
    pub fn new(initial_learning_rate: f64, decay_steps: u64, decay_rate: f64) -> Self {
        Self {
            initial: initial_learning_rate,
            decay_steps: decay_steps.max(1),
            decay_rate,
            staircase: false,
        }
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
}
