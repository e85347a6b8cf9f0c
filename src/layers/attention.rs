//! `MultiHeadAttention`: Keras's multi-head scaled dot-product attention.

use candle_core::{D, DType, Device, Tensor};

use super::{Dropout, KerasVars, Layer, Regularizer, unique_name};
use crate::initializers::Initializer;
use crate::tape::Variable;
use crate::{Error, Result};

/// Keras's `layers.MultiHeadAttention`: each of `num_heads` heads projects the query, key and
/// value (`EinsumDense` kernels `(features, heads, key_dim)`), takes
/// `softmax(q k^T / sqrt(key_dim))` over the key positions, mixes the values with it, and one
/// more projection brings the heads back to the query's features (or `output_shape`).
///
/// It takes two or three inputs, `[query, value]` or `[query, value, key]` (the key is the
/// value by default), each `(batch, positions, features)`, with
/// [`Layer::call_many`] or, in a functional model, `apply_many`. Masks from
/// [`crate::layers::Embedding::mask_zero`] or [`crate::layers::Masking`] keep padded positions
/// out, as Keras's `query_mask` / `value_mask` / `key_mask` do; the output carries the query's
/// mask. [`MultiHeadAttention::use_causal_mask`] lets a position attend only to those before it
/// (a decoder), [`MultiHeadAttention::sliding_window`] only to those near it. Dropout acts on
/// the attention probabilities, in training.
///
/// Weights are Keras's, in Keras's order: the query, key, value and output kernels, each
/// followed by its bias; a `.keras` file keeps them under `query_dense`, `key_dense`,
/// `value_dense` and `output_dense`, as Keras does.
///
/// # Shapes
/// Query `(batch, T, Dq)`, value `(batch, S, Dv)`, key `(batch, S, Dk)`; output
/// `(batch, T, output_shape or Dq)`.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use ferrokeras::layers::{Layer, MultiHeadAttention};
/// let mut mha = MultiHeadAttention::new(2, 8).use_causal_mask(true);
/// let x = Tensor::ones((4, 5, 16), DType::F32, &Device::Cpu).unwrap();
/// let y = mha.call_many(&[x.clone(), x], false).unwrap(); // self-attention
/// assert_eq!(y.dims(), &[4, 5, 16]);
/// assert_eq!(mha.count_params(), 3 * (16 * 2 * 8 + 2 * 8) + (2 * 8 * 16 + 16));
/// ```
pub struct MultiHeadAttention {
    name: String,
    num_heads: usize,
    key_dim: usize,
    value_dim: Option<usize>,
    dropout: f32,
    use_bias: bool,
    output_shape: Option<usize>,
    sliding_window: Option<usize>,
    use_causal_mask: bool,
    kernel_initializer: Initializer,
    bias_initializer: Initializer,
    kernel_regularizer: Option<Regularizer>,
    bias_regularizer: Option<Regularizer>,
    seed: Option<u64>,
    /// The generator of a seeded layer's dropout masks.
    rng: Option<rand::rngs::StdRng>,
    weights: Option<Weights>,
    device: Device,
    policy: crate::mixed_precision::DTypePolicy,
}

/// One projection: an `EinsumDense` kernel and its bias.
struct Projection {
    kernel: Variable,
    bias: Option<Variable>,
}

/// The four projections, once built.
struct Weights {
    query: Projection,
    key: Projection,
    value: Projection,
    output: Projection,
}

impl Weights {
    fn all(&self) -> [&Projection; 4] {
        [&self.query, &self.key, &self.value, &self.output]
    }
}

impl MultiHeadAttention {
    /// Attention with `num_heads` heads of size `key_dim` (for the query and key; the value's
    /// heads have `value_dim`, by default `key_dim`).
    pub fn new(num_heads: usize, key_dim: usize) -> Self {
        Self {
            name: unique_name("multi_head_attention"),
            num_heads,
            key_dim,
            value_dim: None,
            dropout: 0.0,
            use_bias: true,
            output_shape: None,
            sliding_window: None,
            use_causal_mask: false,
            kernel_initializer: Initializer::glorot_uniform(),
            bias_initializer: Initializer::Zeros,
            kernel_regularizer: None,
            bias_regularizer: None,
            seed: None,
            rng: None,
            weights: None,
            device: crate::runtime::default_device(),
            policy: crate::mixed_precision::global_policy(),
        }
    }
    /// The size of each value head (default `key_dim`).
    pub fn value_dim(mut self, value_dim: usize) -> Self {
        self.value_dim = Some(value_dim);
        self
    }
    /// Dropout on the attention probabilities, in training.
    ///
    /// # Errors
    /// A rate outside `[0, 1)`.
    pub fn dropout(mut self, rate: f32) -> Result<Self> {
        // The layer checks the rate as Keras's `Dropout` does.
        Dropout::new(rate)?;
        self.dropout = rate;
        Ok(self)
    }
    /// Whether the projections have biases (default true).
    pub fn use_bias(mut self, use_bias: bool) -> Self {
        self.use_bias = use_bias;
        self
    }
    /// The output's features (default: the query's).
    pub fn output_shape(mut self, features: usize) -> Self {
        self.output_shape = Some(features);
        self
    }
    /// Each query position attends only to key positions less than `window` away (Keras's
    /// `sliding_window`).
    pub fn sliding_window(mut self, window: usize) -> Self {
        self.sliding_window = Some(window);
        self
    }
    /// Each query position attends only to key positions at or before its own (Keras's
    /// `use_causal_mask=True` in the call; a saved functional model records it with the node).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, MultiHeadAttention};
    /// let mut mha = MultiHeadAttention::new(1, 2).use_causal_mask(true);
    /// let x = Tensor::new(&[[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]]], &Device::Cpu).unwrap();
    /// let y = mha.call_many(&[x.clone(), x.clone()], false).unwrap();
    /// // The first position sees itself only: changing the later ones leaves it as it is.
    /// let x2 = Tensor::new(&[[[1f32, 0.0], [5.0, -3.0], [2.0, 7.0]]], &Device::Cpu).unwrap();
    /// let y2 = mha.call_many(&[x2.clone(), x2], false).unwrap();
    /// let first = |t: &Tensor| t.get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
    /// assert_eq!(first(&y), first(&y2));
    /// ```
    pub fn use_causal_mask(mut self, causal: bool) -> Self {
        self.use_causal_mask = causal;
        self
    }
    /// How the kernels start, by Keras name (default `"glorot_uniform"`).
    ///
    /// # Errors
    /// An unknown name.
    pub fn kernel_initializer(mut self, name: &str) -> Result<Self> {
        self.kernel_initializer = name.parse()?;
        Ok(self)
    }
    /// How the biases start, by Keras name (default `"zeros"`).
    ///
    /// # Errors
    /// An unknown name.
    pub fn bias_initializer(mut self, name: &str) -> Result<Self> {
        self.bias_initializer = name.parse()?;
        Ok(self)
    }
    /// Sets the kernels' initializer.
    pub fn with_kernel_initializer(mut self, init: Initializer) -> Self {
        self.kernel_initializer = init;
        self
    }
    /// Sets the biases' initializer.
    pub fn with_bias_initializer(mut self, init: Initializer) -> Self {
        self.bias_initializer = init;
        self
    }
    /// Penalty on each kernel, added to the model's losses.
    pub fn kernel_regularizer(mut self, r: Regularizer) -> Self {
        self.kernel_regularizer = Some(r);
        self
    }
    /// Penalty on each bias, added to the model's losses.
    pub fn bias_regularizer(mut self, r: Regularizer) -> Self {
        self.bias_regularizer = Some(r);
        self
    }
    /// A seed for the dropout masks of this layer alone.
    pub fn seed(mut self, seed: u64) -> Self {
        use rand::SeedableRng;
        self.seed = Some(seed);
        self.rng = Some(rand::rngs::StdRng::seed_from_u64(seed));
        self
    }
    /// Sets the dtype policy by name (`"float32"`, `"mixed_bfloat16"`, ...).
    ///
    /// # Errors
    /// An unknown policy name.
    pub fn dtype(mut self, name: &str) -> Result<Self> {
        self.policy = crate::mixed_precision::DTypePolicy::new(name)?;
        Ok(self)
    }
    /// The device variables are created on (the default device unless set).
    pub fn device(mut self, device: &Device) -> Self {
        self.device = device.clone();
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    /// The number of heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }
    /// The size of each query and key head.
    pub fn key_dim(&self) -> usize {
        self.key_dim
    }

    fn v_dim(&self) -> usize {
        self.value_dim.unwrap_or(self.key_dim)
    }

    /// `(positions, features)` of one input, or a message naming the input.
    fn sample_shape<'a>(&self, what: &str, shape: &'a [usize]) -> Result<&'a [usize]> {
        match shape {
            [_, f] if *f > 0 => Ok(shape),
            _ => Err(Error::value(format!(
                "layer \"{}\" (MultiHeadAttention): the {what} must be (batch, positions, features); received a sample shape {shape:?}. Attention over other axes (Keras's `attention_axes`) is not supported",
                self.name
            ))),
        }
    }

    /// Builds the projections for per-sample shapes `[query, value, key?]`.
    fn build_projections(&mut self, shapes: &[Vec<usize>]) -> Result<()> {
        if self.weights.is_some() {
            return Ok(());
        }
        let (q, v, k) = self.input_shapes(shapes)?;
        if self.num_heads == 0 || self.key_dim == 0 || self.v_dim() == 0 {
            return Err(Error::value(format!(
                "layer \"{}\" (MultiHeadAttention) needs num_heads, key_dim and value_dim >= 1; received num_heads={}, key_dim={}, value_dim={}",
                self.name,
                self.num_heads,
                self.key_dim,
                self.v_dim()
            )));
        }
        let (n, dk, dv) = (self.num_heads, self.key_dim, self.v_dim());
        let out = self.output_shape.unwrap_or(q[1]);
        let make = |part: &str, kernel: [usize; 3], bias: &[usize]| -> Result<Projection> {
            let k = self.kernel_initializer.init(&kernel, &self.device)?;
            let kernel = Variable::new(format!("{}/{part}/kernel", self.name), &k, true)?;
            let bias = if self.use_bias {
                let b = self.bias_initializer.init(bias, &self.device)?;
                Some(Variable::new(
                    format!("{}/{part}/bias", self.name),
                    &b,
                    true,
                )?)
            } else {
                None
            };
            Ok(Projection { kernel, bias })
        };
        self.weights = Some(Weights {
            query: make("query", [q[1], n, dk], &[n, dk])?,
            key: make("key", [k[1], n, dk], &[n, dk])?,
            value: make("value", [v[1], n, dv], &[n, dv])?,
            output: make("attention_output", [n, dv, out], &[out])?,
        });
        Ok(())
    }

    /// The query, value and key sample shapes (the key is the value's when not given).
    fn input_shapes<'a>(
        &self,
        shapes: &'a [Vec<usize>],
    ) -> Result<(&'a [usize], &'a [usize], &'a [usize])> {
        let (q, v, k) = match shapes {
            [q, v] => (q, v, v),
            [q, v, k] => (q, v, k),
            _ => {
                return Err(Error::value(format!(
                    "layer \"{}\" (MultiHeadAttention) takes [query, value] or [query, value, key]; received {} input(s)",
                    self.name,
                    shapes.len()
                )));
            }
        };
        let (q, v, k) = (
            self.sample_shape("query", q)?,
            self.sample_shape("value", v)?,
            self.sample_shape("key", k)?,
        );
        if k[0] != v[0] {
            return Err(Error::value(format!(
                "layer \"{}\" (MultiHeadAttention): the key and value must have the same number of positions; received key {k:?} and value {v:?}",
                self.name
            )));
        }
        Ok((q, v, k))
    }

    /// `(batch, heads, positions, size)`: `x (batch, positions, features)` through `p`.
    fn project(&self, x: &Tensor, p: &Projection) -> Result<Tensor> {
        let (b, l, f) = x.dims3()?;
        let kd = p.kernel.shape().dims().to_vec();
        // On the CPU, the projection, its bias and the split into heads as one op.
        {
            let kernel = self.policy.cast(p.kernel.as_tensor())?;
            let bias = match &p.bias {
                Some(b) => Some(self.policy.cast(b.as_tensor())?),
                None => None,
            };
            let linear = crate::kernels::elementwise::Act::Linear;
            if let Some(y) =
                crate::kernels::dense::dense(x, &kernel, bias.as_ref(), linear, false, Some(kd[1]))?
            {
                return Ok(y);
            }
        }
        let kernel = self
            .policy
            .cast(p.kernel.as_tensor())?
            .reshape((f, kd[1] * kd[2]))?;
        // Our fused CPU kernels for the product and the bias where they take the tensors.
        let mut y = crate::kernels::linear::linear(&x.reshape((b * l, f))?, &kernel)?;
        if let Some(bias) = &p.bias {
            let bias = self.policy.cast(bias.as_tensor())?.reshape(kd[1] * kd[2])?;
            y = super::Activation::Linear.apply_with_bias(&y, &bias)?;
        }
        Ok(y.reshape((b, l, kd[1], kd[2]))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keras's `_compute_attention_mask`: `(batch or 1, T, S)`, 1 where a query position may
    /// attend to a key position; `None` when nothing is masked.
    fn attention_mask(
        &self,
        t: usize,
        s: usize,
        masks: &[Option<Tensor>],
        dev: &Device,
    ) -> Result<Option<Tensor>> {
        let as_f32 = |m: &Tensor| -> Result<Tensor> { Ok(m.gt(0.5)?.to_dtype(DType::F32)?) };
        let mut mask: Option<Tensor> = None;
        let mut and = |m: Tensor| -> Result<()> {
            mask = Some(match mask.take() {
                None => m,
                Some(a) => a.broadcast_mul(&m)?,
            });
            Ok(())
        };
        if let Some(Some(q)) = masks.first() {
            and(as_f32(q)?.unsqueeze(2)?)?;
        }
        for m in masks.iter().skip(1).flatten() {
            and(as_f32(m)?.unsqueeze(1)?)?;
        }
        if self.use_causal_mask || self.sliding_window.is_some() {
            let mut band = vec![0f32; t * s];
            for i in 0..t {
                for j in 0..s {
                    let causal = !self.use_causal_mask || i >= j;
                    let near = self.sliding_window.is_none_or(|w| i.abs_diff(j) < w);
                    band[i * s + j] = f32::from(u8::from(causal && near));
                }
            }
            and(Tensor::from_vec(band, (1, t, s), dev)?)?;
        }
        Ok(mask)
    }
}

impl Layer for MultiHeadAttention {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "MultiHeadAttention"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.call_many(std::slice::from_ref(x), training)
    }
    fn build_many(&mut self, shapes: &[Vec<usize>]) -> Result<()> {
        self.build_projections(shapes)
    }
    fn call_many(&mut self, xs: &[Tensor], training: bool) -> Result<Tensor> {
        self.call_many_masked(xs, &[], training)
    }
    fn call_many_masked(
        &mut self,
        xs: &[Tensor],
        masks: &[Option<Tensor>],
        training: bool,
    ) -> Result<Tensor> {
        let shapes: Vec<Vec<usize>> = xs
            .iter()
            .map(|x| x.dims().get(1..).unwrap_or(&[]).to_vec())
            .collect();
        let (q_shape, v_shape, _) = self.input_shapes(&shapes)?;
        let (t, s) = (q_shape[0], v_shape[0]);
        self.build_projections(&shapes)?;
        let batch = xs[0].dims()[0];
        if xs.iter().any(|x| x.dims()[0] != batch) {
            return Err(Error::value(format!(
                "layer \"{}\" (MultiHeadAttention): the inputs have different batch sizes: {:?}",
                self.name,
                xs.iter().map(|x| x.dims()[0]).collect::<Vec<_>>()
            )));
        }
        let w = self
            .weights
            .as_ref()
            .ok_or_else(|| Error::state("MultiHeadAttention not built"))?;
        for (x, p, what) in [
            (&xs[0], &w.query, "query"),
            (&xs[1], &w.value, "value"),
            (xs.get(2).unwrap_or(&xs[1]), &w.key, "key"),
        ] {
            let want = p.kernel.shape().dims()[0];
            if x.dims()[2] != want {
                return Err(Error::value(format!(
                    "layer \"{}\" (MultiHeadAttention): the {what} has {} features, but the layer was built for {want}; received shape {:?}",
                    self.name,
                    x.dims()[2],
                    x.dims()
                )));
            }
        }
        let dt = self.policy.compute_dtype();
        let cast = |x: &Tensor| -> Result<Tensor> {
            Ok(if x.dtype() == dt {
                x.clone()
            } else {
                x.to_dtype(dt)?
            })
        };
        let (query, value) = (cast(&xs[0])?, cast(&xs[1])?);
        let key = match xs.get(2) {
            Some(k) => cast(k)?,
            None => value.clone(),
        };
        let q = self.project(&query, &w.query)?;
        let k = self.project(&key, &w.key)?;
        let v = self.project(&value, &w.value)?;
        let mask = self
            .attention_mask(t, s, masks, xs[0].device())?
            .map(|m| -> Result<Tensor> {
                Ok(m.unsqueeze(1)?
                    .broadcast_as((batch, self.num_heads, t, s))?
                    .gt(0.5)?
                    .contiguous()?)
            })
            .transpose()?;
        let keep = 1.0 - self.dropout;
        let drop = if training && self.dropout > 0.0 {
            let shape = [batch, self.num_heads, t, s];
            let dev = xs[0].device();
            let m = match &mut self.rng {
                Some(g) => {
                    use rand::Rng;
                    crate::random::dropout_mask_from(&shape, keep, g.r#gen(), dev)?
                }
                None => crate::random::dropout_mask(&shape, keep, dev)?,
            };
            Some(m)
        } else {
            None
        };
        // Keras computes the scores itself when it drops some (its fused attention otherwise):
        // masked positions are then zero, even in a row masked throughout.
        let scale = 1.0 / (self.key_dim as f64).sqrt();
        let mixed = attention(&q, &k, &v, scale, mask, self.dropout > 0.0, drop)?;
        let mixed = mixed.to_dtype(dt)?; // (batch, heads, T, value_dim)
        let w = self
            .weights
            .as_ref()
            .ok_or_else(|| Error::state("MultiHeadAttention not built"))?;
        let (n, dv) = (self.num_heads, self.v_dim());
        // On the CPU, the merge of the heads, the projection and its bias as one op.
        {
            let kernel = self.policy.cast(w.output.kernel.as_tensor())?;
            let bias = match &w.output.bias {
                Some(b) => Some(self.policy.cast(b.as_tensor())?),
                None => None,
            };
            let linear = crate::kernels::elementwise::Act::Linear;
            if let Some(y) =
                crate::kernels::dense::dense(&mixed, &kernel, bias.as_ref(), linear, true, None)?
            {
                return Ok(y);
            }
        }
        let mixed = mixed
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * t, n * dv))?;
        let out_dim = w.output.kernel.shape().dims()[2];
        let kernel = self
            .policy
            .cast(w.output.kernel.as_tensor())?
            .reshape((n * dv, out_dim))?;
        let mut y = crate::kernels::linear::linear(&mixed, &kernel)?;
        if let Some(b) = &w.output.bias {
            y = super::Activation::Linear.apply_with_bias(&y, &self.policy.cast(b.as_tensor())?)?;
        }
        Ok(y.reshape((batch, t, out_dim))?)
    }
    fn compute_mask_many(
        &self,
        _xs: &[Tensor],
        masks: &[Option<Tensor>],
    ) -> Result<Option<Tensor>> {
        Ok(masks.first().cloned().flatten())
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.compute_output_shape_many(&[input_shape.to_vec()])
    }
    fn compute_output_shape_many(&self, shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
        let (q, _, _) = self.input_shapes(shapes)?;
        Ok(vec![q[0], self.output_shape.unwrap_or(q[1])])
    }
    fn positional_inputs(&self) -> bool {
        true
    }
    fn call_kwargs(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if self.use_causal_mask {
            m.insert("use_causal_mask".into(), true.into());
        }
        m
    }
    fn set_call_kwarg(&mut self, key: &str, value: &serde_json::Value) -> Result<bool> {
        let flag = || {
            value.as_bool().ok_or_else(|| {
                Error::value(format!(
                    "layer \"{}\" (MultiHeadAttention): `{key}` must be true or false; received {value}",
                    self.name
                ))
            })
        };
        match key {
            "use_causal_mask" => {
                self.use_causal_mask = flag()?;
                Ok(true)
            }
            "return_attention_scores" => {
                if flag()? {
                    return Err(Error::value(format!(
                        "layer \"{}\" (MultiHeadAttention): `return_attention_scores=True` (two outputs) is not supported",
                        self.name
                    )));
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    fn keras_vars(&self) -> Vec<KerasVars> {
        let group = |path: &str, name: &str, p: Option<&Projection>| KerasVars {
            path: path.to_string(),
            name: name.to_string(),
            variables: p
                .map(|p| std::iter::once(&p.kernel).chain(&p.bias).cloned().collect())
                .unwrap_or_default(),
        };
        let w = self.weights.as_ref();
        vec![
            group("vars", &self.name, None),
            group("query_dense/vars", "query", w.map(|w| &w.query)),
            group("key_dense/vars", "key", w.map(|w| &w.key)),
            group("value_dense/vars", "value", w.map(|w| &w.value)),
            group(
                "output_dense/vars",
                "attention_output",
                w.map(|w| &w.output),
            ),
            group("_dropout_layer/vars", "dropout", None),
            group("_softmax/vars", "softmax", None),
        ]
    }
    fn variables(&self) -> Vec<Variable> {
        self.weights
            .iter()
            .flat_map(|w| w.all())
            .flat_map(|p| std::iter::once(&p.kernel).chain(&p.bias).cloned())
            .collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for p in self.weights.iter().flat_map(|w| w.all()) {
            if let Some(r) = &self.kernel_regularizer {
                out.push(r.penalty(p.kernel.as_tensor())?);
            }
            if let (Some(r), Some(b)) = (&self.bias_regularizer, &p.bias) {
                out.push(r.penalty(b.as_tensor())?);
            }
        }
        Ok(out)
    }
    fn dtype_policy_name(&self) -> Option<String> {
        Some(self.policy.name().to_string())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.v_dim(),
            "dropout": super::config::f32_json(self.dropout),
            "use_bias": self.use_bias,
            "use_gate": false,
            "output_shape": self.output_shape.map(|o| vec![o]),
            "attention_axes": [1],
            "sliding_window": self.sliding_window,
            "kernel_initializer": self.kernel_initializer.to_json(),
            "bias_initializer": self.bias_initializer.to_json(),
            "kernel_regularizer": super::config::regularizer_json(self.kernel_regularizer),
            "bias_regularizer": super::config::regularizer_json(self.bias_regularizer),
            "activity_regularizer": null,
            "kernel_constraint": null,
            "bias_constraint": null,
            "seed": self.seed,
        }))
    }
}

/// `op(a) · op(b)` over the batch and head axes, `op` transposing the last two axes where asked:
/// our CPU kernel (each small product on one thread, transposed operands read in place) where it
/// takes the tensors, else candle's `matmul`.
fn mm(a: &Tensor, a_t: bool, b: &Tensor, b_t: bool) -> candle_core::Result<Tensor> {
    if let Some(y) = crate::kernels::linear::batched(a, a_t, b, b_t)? {
        return Ok(y);
    }
    let a = if a_t { a.t()? } else { a.clone() };
    let b = if b_t { b.t()? } else { b.clone() };
    a.matmul(&b)
}

/// Scaled dot-product attention as one node of the recorded graph ([`crate::tape::node`]):
/// `softmax((q · scale) k^T)` over the key positions, `-1e9` where `mask` (u8,
/// `(batch, heads, T, S)`) is 0, zeroed there too with `zero_masked`, times the dropout mask
/// `drop` (0 or `1 / keep`), times `v`. Differentiated as a whole: two products for the value
/// and probability gradients, the softmax's `p (dp - sum(dp p))`, two products for the query
/// and key; candle's ops would take a reduction and a broadcast for each step of the softmax.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<Tensor>,
    zero_masked: bool,
    drop: Option<Tensor>,
) -> Result<Tensor> {
    // The query scaled in its own dtype, as Keras scales it before the product.
    let (qd, kd, vd) = ((q.detach() * scale)?, k.detach(), v.detach());
    let in_dt = qd.dtype();
    let f32 = |t: &Tensor| -> candle_core::Result<Tensor> {
        if t.dtype() == DType::F32 {
            Ok(t.clone())
        } else {
            t.to_dtype(DType::F32)
        }
    };
    let (qf, kf, vf) = (f32(&qd)?, f32(&kd)?, f32(&vd)?);
    let mut scores = mm(&qf, false, &kf, true)?;
    // Our CPU kernel where it takes the tensors: the masked fill and the softmax in one pass.
    let p = match crate::kernels::softmax::masked_softmax(&scores, mask.as_ref())? {
        Some(p) => p,
        None => {
            if let Some(m) = &mask {
                scores = m.where_cond(&scores, &scores.ones_like()?.affine(0.0, -1e9)?)?;
            }
            let max = scores.max_keepdim(D::Minus1)?;
            let e = scores.broadcast_sub(&max)?.exp()?;
            e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?
        }
    };
    let mut used = p.clone();
    if zero_masked && let Some(m) = &mask {
        used = m.where_cond(&used, &used.zeros_like()?)?;
    }
    if let Some(d) = &drop {
        used = (used * d)?;
    }
    let out = mm(&used, false, &vf, false)?.to_dtype(in_dt)?;
    let y = crate::tape::node(&[q, k, v], &out, move |g, _y, needs| {
        let g = f32(g)?;
        let dv = if needs[2] {
            Some(mm(&used, true, &g, false)?.to_dtype(in_dt)?)
        } else {
            None
        };
        if !needs[0] && !needs[1] {
            return Ok(vec![None, None, dv]);
        }
        let mut dp = mm(&g, false, &vf, true)?;
        if let Some(d) = &drop {
            dp = (dp * d)?;
        }
        if zero_masked && let Some(m) = &mask {
            dp = m.where_cond(&dp, &dp.zeros_like()?)?;
        }
        let ds = match crate::kernels::softmax::masked_softmax_grad(&p, &dp, mask.as_ref())? {
            Some(ds) => ds,
            None => {
                let dot = (&dp * &p)?.sum_keepdim(D::Minus1)?;
                let mut ds = (&p * dp.broadcast_sub(&dot)?)?;
                if let Some(m) = &mask {
                    ds = m.where_cond(&ds, &ds.zeros_like()?)?;
                }
                ds
            }
        };
        let dq = if needs[0] {
            Some((mm(&ds, false, &kf, false)? * scale)?.to_dtype(in_dt)?)
        } else {
            None
        };
        let dk = if needs[1] {
            Some(mm(&ds, true, &qf, false)?.to_dtype(in_dt)?)
        } else {
            None
        };
        Ok(vec![dq, dk, dv])
    })?;
    Ok(y)
}
