//! Weight initializers, Keras's `keras.initializers`: how a layer fills its variables when it is
//! built (`Dense::new(64).kernel_initializer("he_normal")`).
//!
//! Random initializers draw from the global generator ([`crate::random`], seeded by
//! `set_random_seed`), or, given a `seed`, from a generator of their own, so that a seeded
//! initializer gives the same values every time it is called (as in Keras). The values follow
//! Keras's distributions and scales; they are not Keras's exact numbers (another generator).

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, StandardNormal};
use serde_json::{Value, json};

use crate::{Error, Result};

/// Which fan [`Initializer::VarianceScaling`] divides its scale by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FanMode {
    /// The number of inputs of a unit.
    FanIn,
    /// The number of outputs.
    FanOut,
    /// Their mean.
    FanAvg,
}

/// The distribution of [`Initializer::VarianceScaling`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// A normal cut at two standard deviations, rescaled to keep the variance.
    TruncatedNormal,
    /// A normal.
    UntruncatedNormal,
    /// A uniform on `[-limit, limit]`.
    Uniform,
}

/// A weight initializer, by Keras class.
///
/// ```
/// use ferrokeras::initializers::Initializer;
/// let he: Initializer = "he_normal".parse().unwrap();
/// let w = he.init(&[256, 64], &candle_core::Device::Cpu).unwrap();
/// let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// let var = v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32;
/// assert!((var - 2.0 / 256.0).abs() < 0.1 * 2.0 / 256.0); // He: variance 2 / fan_in
/// assert!("glorot_sideways".parse::<Initializer>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Initializer {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Every value `value`.
    Constant(f32),
    /// Uniform on `[minval, maxval)` (Keras's defaults -0.05, 0.05).
    RandomUniform {
        /// Lower bound.
        minval: f32,
        /// Upper bound.
        maxval: f32,
        /// A seed of its own.
        seed: Option<u64>,
    },
    /// Normal (Keras's defaults mean 0, stddev 0.05).
    RandomNormal {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        stddev: f32,
        /// A seed of its own.
        seed: Option<u64>,
    },
    /// Normal with values beyond two standard deviations drawn again.
    TruncatedNormal {
        /// Mean.
        mean: f32,
        /// Standard deviation before truncation.
        stddev: f32,
        /// A seed of its own.
        seed: Option<u64>,
    },
    /// Keras's `VarianceScaling`: variance `scale / fan`; Glorot, He and LeCun are its cases.
    VarianceScaling {
        /// The variance's numerator.
        scale: f64,
        /// The fan it is divided by.
        mode: FanMode,
        /// The distribution.
        distribution: Distribution,
        /// A seed of its own.
        seed: Option<u64>,
        /// The Keras class it is written as (`"GlorotUniform"`, `"HeNormal"`, ...), or
        /// `"VarianceScaling"`.
        class: &'static str,
    },
    /// Keras's `Orthogonal` (the default recurrent kernel of `LSTM`, `GRU` and `SimpleRNN`):
    /// the Q factor of a normal matrix's QR decomposition, signs fixed so that R's diagonal is
    /// positive, times `gain`. The values are viewed as a matrix of `prod(shape[..-1])` rows
    /// and `shape[-1]` columns, whose rows (if fewer) or columns (otherwise) are orthonormal.
    Orthogonal {
        /// The factor applied to the orthogonal matrix.
        gain: f32,
        /// A seed of its own.
        seed: Option<u64>,
    },
}

/// The named cases of [`Initializer::VarianceScaling`]: class, snake name, scale, mode,
/// distribution.
const VARIANCE_SCALING: [(&str, &str, f64, FanMode, Distribution); 6] = [
    (
        "GlorotUniform",
        "glorot_uniform",
        1.0,
        FanMode::FanAvg,
        Distribution::Uniform,
    ),
    (
        "GlorotNormal",
        "glorot_normal",
        1.0,
        FanMode::FanAvg,
        Distribution::TruncatedNormal,
    ),
    (
        "HeUniform",
        "he_uniform",
        2.0,
        FanMode::FanIn,
        Distribution::Uniform,
    ),
    (
        "HeNormal",
        "he_normal",
        2.0,
        FanMode::FanIn,
        Distribution::TruncatedNormal,
    ),
    (
        "LecunUniform",
        "lecun_uniform",
        1.0,
        FanMode::FanIn,
        Distribution::Uniform,
    ),
    (
        "LecunNormal",
        "lecun_normal",
        1.0,
        FanMode::FanIn,
        Distribution::TruncatedNormal,
    ),
];

/// `VarianceScaling`'s `mode` and `distribution` values, by Keras name.
const MODES: [(&str, FanMode); 3] = [
    ("fan_in", FanMode::FanIn),
    ("fan_out", FanMode::FanOut),
    ("fan_avg", FanMode::FanAvg),
];
const DISTRIBUTIONS: [(&str, Distribution); 3] = [
    ("truncated_normal", Distribution::TruncatedNormal),
    ("untruncated_normal", Distribution::UntruncatedNormal),
    ("uniform", Distribution::Uniform),
];

/// The Keras name of a `mode` or `distribution` value.
fn keras_name<T: PartialEq>(table: &[(&'static str, T)], value: &T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| v == value)
        .map_or("", |(n, _)| n)
}

const NAMES: &str = "\"zeros\", \"ones\", \"constant\", \"orthogonal\", \"random_uniform\", \"random_normal\", \"truncated_normal\", \"variance_scaling\", \"glorot_uniform\", \"glorot_normal\", \"he_uniform\", \"he_normal\", \"lecun_uniform\", \"lecun_normal\" (or their Keras class names)";

impl std::str::FromStr for Initializer {
    type Err = Error;
    /// A Keras name (`"he_normal"`) or class name (`"HeNormal"`), with Keras's defaults.
    fn from_str(s: &str) -> Result<Self> {
        Self::from_class(s, &Value::Null)
    }
}

impl Initializer {
    /// Glorot (Xavier) uniform, Keras's default kernel initializer.
    pub fn glorot_uniform() -> Self {
        Self::named_scaling(0, None)
    }

    fn named_scaling(i: usize, seed: Option<u64>) -> Self {
        let (class, _, scale, mode, distribution) = VARIANCE_SCALING[i];
        Initializer::VarianceScaling {
            scale,
            mode,
            distribution,
            seed,
            class,
        }
    }

    /// The initializer of a Keras class or name with its `config` (`null` or `{}` for the
    /// defaults).
    fn from_class(class: &str, config: &Value) -> Result<Self> {
        let get = |key: &str, default: f64| -> Result<f64> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                    Error::value(format!(
                        "initializer {class}: `{key}` must be a finite number; received {v}"
                    ))
                }),
            }
        };
        let seed = match config.get("seed") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                Error::value(format!(
                    "initializer {class}: `seed` must be a non-negative integer or null; received {v}"
                ))
            })?),
        };
        if let Some(i) = VARIANCE_SCALING
            .iter()
            .position(|(c, n, ..)| *c == class || *n == class)
        {
            return Ok(Self::named_scaling(i, seed));
        }
        Ok(match class {
            "Zeros" | "zeros" => Initializer::Zeros,
            "Ones" | "ones" => Initializer::Ones,
            "Constant" | "constant" => Initializer::Constant(get("value", 0.0)? as f32),
            "Orthogonal" | "orthogonal" => Initializer::Orthogonal {
                gain: get("gain", 1.0)? as f32,
                seed,
            },
            "RandomUniform" | "random_uniform" => Initializer::RandomUniform {
                minval: get("minval", -0.05)? as f32,
                maxval: get("maxval", 0.05)? as f32,
                seed,
            },
            "RandomNormal" | "random_normal" => Initializer::RandomNormal {
                mean: get("mean", 0.0)? as f32,
                stddev: get("stddev", 0.05)? as f32,
                seed,
            },
            "TruncatedNormal" | "truncated_normal" => Initializer::TruncatedNormal {
                mean: get("mean", 0.0)? as f32,
                stddev: get("stddev", 0.05)? as f32,
                seed,
            },
            "VarianceScaling" | "variance_scaling" => {
                let text = |key: &str, default: &str| -> String {
                    config
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or(default)
                        .to_string()
                };
                let mode = text("mode", "fan_in");
                let mode = MODES.iter().find(|(n, _)| *n == mode).map(|(_, m)| *m).ok_or_else(|| {
                    Error::value(format!(
                        "initializer VarianceScaling: `mode` must be \"fan_in\", \"fan_out\" or \"fan_avg\"; received {mode:?}"
                    ))
                })?;
                let dist = text("distribution", "truncated_normal");
                let distribution = DISTRIBUTIONS
                    .iter()
                    .find(|(n, _)| *n == dist)
                    .map(|(_, d)| *d)
                    .ok_or_else(|| {
                        Error::value(format!(
                            "initializer VarianceScaling: `distribution` must be \"truncated_normal\", \"untruncated_normal\" or \"uniform\"; received {dist:?}"
                        ))
                    })?;
                let scale = get("scale", 1.0)?;
                if scale <= 0.0 {
                    return Err(Error::value(format!(
                        "initializer VarianceScaling: `scale` must be positive; received {scale}"
                    )));
                }
                Initializer::VarianceScaling {
                    scale,
                    mode,
                    distribution,
                    seed,
                    class: "VarianceScaling",
                }
            }
            other => {
                return Err(Error::value(format!(
                    "Could not interpret initializer identifier: {other:?}. Expected one of {NAMES}."
                )));
            }
        })
    }

    /// Reads Keras's JSON for an initializer: a name (`"he_normal"`) or
    /// `{"class_name": "HeNormal", "config": {"seed": null}}`.
    ///
    /// # Errors
    /// An unknown class, or a bad option.
    pub fn from_json(v: &Value) -> Result<Self> {
        match v {
            Value::String(s) => s.parse(),
            Value::Object(m) => match m.get("class_name").and_then(Value::as_str) {
                Some(class) => Self::from_class(class, m.get("config").unwrap_or(&Value::Null)),
                None => Err(Error::value(format!(
                    "an initializer object needs a string `class_name`; received {v}"
                ))),
            },
            other => Err(Error::value(format!(
                "an initializer must be a name such as \"he_normal\" or a {{\"class_name\": ..., \"config\": ...}} object; received {other}"
            ))),
        }
    }

    /// Keras 3's JSON for the initializer (`keras.initializers.serialize`).
    ///
    /// ```
    /// use ferrokeras::initializers::Initializer;
    /// let j = "he_normal".parse::<Initializer>().unwrap().to_json();
    /// assert_eq!(j["class_name"], "HeNormal");
    /// assert_eq!(Initializer::from_json(&j).unwrap(), "he_normal".parse().unwrap());
    /// ```
    pub fn to_json(&self) -> Value {
        let f = crate::layers::config::f32_json;
        let (class, config) = match self {
            Initializer::Zeros => ("Zeros", json!({})),
            Initializer::Ones => ("Ones", json!({})),
            Initializer::Constant(v) => ("Constant", json!({"value": f(*v)})),
            Initializer::RandomUniform {
                minval,
                maxval,
                seed,
            } => (
                "RandomUniform",
                json!({"minval": f(*minval), "maxval": f(*maxval), "seed": seed}),
            ),
            Initializer::Orthogonal { gain, seed } => {
                ("Orthogonal", json!({"seed": seed, "gain": f(*gain)}))
            }
            Initializer::RandomNormal { mean, stddev, seed } => (
                "RandomNormal",
                json!({"mean": f(*mean), "stddev": f(*stddev), "seed": seed}),
            ),
            Initializer::TruncatedNormal { mean, stddev, seed } => (
                "TruncatedNormal",
                json!({"mean": f(*mean), "stddev": f(*stddev), "seed": seed}),
            ),
            Initializer::VarianceScaling {
                scale,
                mode,
                distribution,
                seed,
                class,
            } => {
                if *class == "VarianceScaling" {
                    let mode = keras_name(&MODES, mode);
                    let distribution = keras_name(&DISTRIBUTIONS, distribution);
                    (
                        "VarianceScaling",
                        json!({"scale": scale, "mode": mode, "distribution": distribution, "seed": seed}),
                    )
                } else {
                    (*class, json!({"seed": seed}))
                }
            }
        };
        json!({
            "module": "keras.initializers",
            "class_name": class,
            "config": config,
            "registered_name": null,
        })
    }

    /// A float32 tensor of `shape` on `device`, filled as the initializer says. Fans are Keras's:
    /// a vector's length, a matrix's rows and columns, and for a convolution kernel
    /// `(kh, kw, a, b)` the receptive field times `a` (in) and `b` (out).
    ///
    /// # Errors
    /// A shape whose size overflows, or a tensor that cannot be created on `device`.
    pub fn init(&self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let uniform = |low: f32, high: f32, seed: &Option<u64>| -> Result<Tensor> {
            match seed {
                None => crate::random::uniform(shape, low, high, device),
                Some(s) => {
                    let mut g = rand::rngs::StdRng::seed_from_u64(*s);
                    let n = count(shape)?;
                    let data: Vec<f32> = (0..n)
                        .map(|_| g.gen_range(0.0f32..1.0) * (high - low) + low)
                        .collect();
                    Ok(Tensor::from_vec(data, shape, device)?)
                }
            }
        };
        Ok(match self {
            Initializer::Zeros => Tensor::zeros(shape, DType::F32, device)?,
            Initializer::Ones => Tensor::ones(shape, DType::F32, device)?,
            Initializer::Constant(v) => (Tensor::ones(shape, DType::F32, device)? * f64::from(*v))?,
            Initializer::RandomUniform {
                minval,
                maxval,
                seed,
            } => uniform(*minval, *maxval, seed)?,
            Initializer::RandomNormal { mean, stddev, seed } => {
                normal(shape, *mean, *stddev, false, seed, device)?
            }
            Initializer::Orthogonal { gain, seed } => orthogonal(shape, *gain, seed, device)?,
            Initializer::TruncatedNormal { mean, stddev, seed } => {
                normal(shape, *mean, *stddev, true, seed, device)?
            }
            Initializer::VarianceScaling {
                scale,
                mode,
                distribution,
                seed,
                ..
            } => {
                let (fan_in, fan_out) = fans(shape);
                let fan = match mode {
                    FanMode::FanIn => fan_in,
                    FanMode::FanOut => fan_out,
                    FanMode::FanAvg => (fan_in + fan_out) / 2.0,
                };
                let fan = fan.max(1.0);
                match distribution {
                    // The limit in float32 (Glorot's `sqrt(6 / (fan_in + fan_out))` to the bit).
                    Distribution::Uniform => {
                        let limit = ((3.0 * scale) as f32 / fan as f32).sqrt();
                        uniform(-limit, limit, seed)?
                    }
                    // Keras's constant: the standard deviation of a unit normal cut at ±2.
                    Distribution::TruncatedNormal => {
                        let stddev = ((scale / fan).sqrt() / 0.879_625_661_034_239_8) as f32;
                        normal(shape, 0.0, stddev, true, seed, device)?
                    }
                    Distribution::UntruncatedNormal => {
                        normal(shape, 0.0, (scale / fan).sqrt() as f32, false, seed, device)?
                    }
                }
            }
        })
    }
}

/// Keras's `compute_fans`.
fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [a, b] => (*a as f64, *b as f64),
        _ => {
            let receptive: usize = shape[..shape.len() - 2].iter().product();
            let (a, b) = (shape[shape.len() - 2], shape[shape.len() - 1]);
            ((a * receptive) as f64, (b * receptive) as f64)
        }
    }
}

fn count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .ok_or_else(|| Error::value(format!("the shape {shape:?} has too many values")))
}

/// Normal values, optionally cut at two standard deviations (drawn again beyond), from the
/// global generator or from a seed of their own.
fn normal(
    shape: &[usize],
    mean: f32,
    stddev: f32,
    truncated: bool,
    seed: &Option<u64>,
    device: &Device,
) -> Result<Tensor> {
    let n = count(shape)?;
    let draw = |g: &mut dyn rand::RngCore| -> Vec<f32> {
        (0..n)
            .map(|_| {
                loop {
                    let z: f32 = StandardNormal.sample(g);
                    if !truncated || z.abs() <= 2.0 {
                        break z * stddev + mean;
                    }
                }
            })
            .collect()
    };
    let data = match seed {
        Some(s) => draw(&mut rand::rngs::StdRng::seed_from_u64(*s)),
        None => draw(&mut *crate::random::rng()),
    };
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// Keras's `Orthogonal`: `a`, normal of shape `(max(rows, cols), min(rows, cols))`, gives Q
/// of `a = QR` with R's diagonal made positive, which is what Gram-Schmidt on `a`'s columns
/// computes (in f64 here: the matrices are small, and no linear-algebra crate is needed);
/// transposed when the rows are fewer.
fn orthogonal(shape: &[usize], gain: f32, seed: &Option<u64>, device: &Device) -> Result<Tensor> {
    let cols = shape.last().copied().unwrap_or(1);
    let rows = count(shape)? / cols.max(1);
    if rows == 0 || cols == 0 {
        return Ok(Tensor::zeros(shape, DType::F32, device)?);
    }
    let (m, n) = (rows.max(cols), rows.min(cols));
    let a = normal(&[m, n], 0.0, 1.0, false, seed, &Device::Cpu)?.to_vec2::<f32>()?;
    // q[j]: column j of Q.
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(n);
    for j in 0..n {
        let mut v: Vec<f64> = a.iter().map(|row| f64::from(row[j])).collect();
        for prev in &q {
            let dot: f64 = prev.iter().zip(&v).map(|(p, x)| p * x).sum();
            v.iter_mut().zip(prev).for_each(|(x, p)| *x -= dot * p);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        q.push(v);
    }
    let g = f64::from(gain);
    // Row-major `rows x cols`: Q (m x n) itself, or its transpose when rows < cols.
    let data: Vec<f32> = if rows >= cols {
        (0..m)
            .flat_map(|i| q.iter().map(move |col| (g * col[i]) as f32))
            .collect()
    } else {
        q.iter()
            .flat_map(|col| col.iter().map(|x| (g * x) as f32))
            .collect()
    };
    Ok(Tensor::from_vec(data, shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(t: &Tensor) -> (f32, f32, f32) {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        (mean, var, max)
    }

    /// Every Keras shorthand gives Keras's variance for a convolution kernel's fans, the
    /// truncated ones stay within two (pre-truncation) standard deviations, and a seed repeats.
    #[test]
    fn variances_and_bounds_as_keras() {
        let shape = [3, 3, 32, 64]; // fan_in 288, fan_out 576
        let (fi, fo) = (288.0f32, 576.0f32);
        let cases = [
            ("glorot_uniform", 2.0 / (fi + fo)),
            ("glorot_normal", 2.0 / (fi + fo)),
            ("he_uniform", 2.0 / fi),
            ("he_normal", 2.0 / fi),
            ("lecun_uniform", 1.0 / fi),
            ("lecun_normal", 1.0 / fi),
        ];
        // Seeded, so that the sample (18 432 values: a standard error of about 1% on the
        // variance) is the same at every run, whatever other tests draw meanwhile.
        for (i, (name, want)) in cases.into_iter().enumerate() {
            let config = json!({"class_name": name, "config": {"seed": 100 + i}});
            let init = Initializer::from_json(&config).unwrap();
            let (mean, var, max) = stats(&init.init(&shape, &Device::Cpu).unwrap());
            assert!(
                mean.abs() < 0.01 * want.sqrt() * 10.0,
                "{name}: mean {mean}"
            );
            assert!(
                (var - want).abs() < 0.03 * want,
                "{name}: var {var} vs {want}"
            );
            let bound = if name.ends_with("uniform") {
                (3.0 * want).sqrt()
            } else {
                2.0 * want.sqrt() / 0.879_625_7
            };
            assert!(max <= bound * 1.0001, "{name}: {max} beyond {bound}");
        }
        let seeded =
            Initializer::from_json(&json!({"class_name": "HeNormal", "config": {"seed": 3}}))
                .unwrap();
        let a = seeded.init(&[4, 5], &Device::Cpu).unwrap();
        let b = seeded.init(&[4, 5], &Device::Cpu).unwrap();
        assert_eq!(stats(&a), stats(&b));
        let (_, var, _) = stats(&Initializer::Constant(0.5).init(&[3], &Device::Cpu).unwrap());
        assert_eq!(var, 0.0);
    }

    #[test]
    fn json_round_trips_and_bad_options_are_errors() {
        for name in [
            "zeros",
            "ones",
            "glorot_uniform",
            "he_normal",
            "lecun_uniform",
            "random_normal",
            "truncated_normal",
            "random_uniform",
        ] {
            let init: Initializer = name.parse().unwrap();
            assert_eq!(
                Initializer::from_json(&init.to_json()).unwrap(),
                init,
                "{name}"
            );
        }
        let vs = json!({"class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_out", "distribution": "uniform", "seed": null}});
        let init = Initializer::from_json(&vs).unwrap();
        assert_eq!(init.to_json()["config"], vs["config"]);
        let bad = json!({"class_name": "VarianceScaling", "config": {"mode": "fan_sideways"}});
        assert!(
            Initializer::from_json(&bad)
                .unwrap_err()
                .to_string()
                .contains("fan_sideways")
        );
        assert!("Identity".parse::<Initializer>().is_err());
    }

    /// Orthogonal rows or columns (whichever are fewer), scaled by the gain; seeds repeat.
    #[test]
    fn orthogonal_is_orthonormal() {
        let init = Initializer::from_json(
            &json!({"class_name": "Orthogonal", "config": {"gain": 2.0, "seed": 7}}),
        )
        .unwrap();
        assert_eq!(init.to_json()["config"], json!({"seed": 7, "gain": 2.0}));
        for shape in [vec![5usize, 20], vec![20, 5], vec![2, 3, 6], vec![4, 4]] {
            let t = init.init(&shape, &Device::Cpu).unwrap();
            assert_eq!(t.dims(), &shape[..]);
            let cols = *shape.last().unwrap();
            let m = t.reshape(((), cols)).unwrap();
            let (r, c) = m.dims2().unwrap();
            let gram = if r < c {
                m.matmul(&m.t().unwrap())
            } else {
                m.t().unwrap().matmul(&m)
            }
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
            for (i, row) in gram.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let want = if i == j { 4.0 } else { 0.0 };
                    assert!((v - want).abs() < 1e-4, "{shape:?}: gram[{i}][{j}] = {v}");
                }
            }
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                init.init(&shape, &Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            );
        }
    }
}
