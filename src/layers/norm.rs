//! `BatchNormalization` and `LayerNormalization`.

use candle_core::{DType, Device, Tensor};

use super::{Layer, unique_name};
use crate::initializers::Initializer;
use crate::tape::Variable;
use crate::{Error, Result};

/// Keras's `layers.BatchNormalization` over the last axis: in training, normalizes with the batch
/// statistics and updates the moving statistics (`moving = moving * momentum + batch * (1 -
/// momentum)`); in inference, uses the moving statistics. The moving statistics are non-trainable
/// variables. Without `center` there is no offset `beta`; without `scale` no factor `gamma`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{BatchNormalization, Layer};
/// let mut bn = BatchNormalization::new();
/// let x = Tensor::new(&[[1f32, 2.0], [3.0, 6.0]], &Device::Cpu).unwrap();
/// let y = bn.call(&x, true).unwrap();
/// let col0 = y.to_vec2::<f32>().unwrap().iter().map(|r| r[0]).collect::<Vec<_>>();
/// assert!((col0[0] + col0[1]).abs() < 1e-5); // zero mean per feature
/// assert_eq!(bn.non_trainable_variables().len(), 2);
/// ```
pub struct BatchNormalization {
    name: String,
    momentum: f64,
    epsilon: f64,
    center: bool,
    scale: bool,
    /// The features axis (Keras's `axis`, -1 by default; 1 for channels-first images).
    axis: isize,
    /// gamma, beta, moving mean, moving variance (Keras's ones, zeros, zeros, ones).
    initializers: [Initializer; 4],
    gamma: Option<Variable>,
    beta: Option<Variable>,
    moving_mean: Option<Variable>,
    moving_var: Option<Variable>,
    device: Device,
}

impl Default for BatchNormalization {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchNormalization {
    /// Keras defaults: momentum 0.99, epsilon 1e-3.
    pub fn new() -> Self {
        Self {
            name: unique_name("batch_normalization"),
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
            axis: -1,
            initializers: [
                Initializer::Ones,
                Initializer::Zeros,
                Initializer::Zeros,
                Initializer::Ones,
            ],
            gamma: None,
            beta: None,
            moving_mean: None,
            moving_var: None,
            device: crate::runtime::default_device(),
        }
    }
    /// Momentum of the moving statistics.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Variance epsilon.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }
    /// The features axis, counted with the batch axis (Keras's `axis`: -1 by default, 1 after a
    /// channels-first convolution); statistics are taken over every other axis.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{BatchNormalization, Layer};
    /// let mut bn = BatchNormalization::new().axis(1);
    /// let x = ferrokeras::random::uniform(&[4, 3, 5, 5], 0.0, 1.0, &Device::Cpu).unwrap();
    /// let y = bn.call(&x, true).unwrap();
    /// assert_eq!(bn.variables()[0].value().dims(), &[3]); // one gamma per channel
    /// let channel_mean = y.mean_keepdim(0).unwrap().mean_keepdim(2).unwrap().mean_keepdim(3).unwrap();
    /// assert!(channel_mean.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    /// ```
    pub fn axis(mut self, axis: isize) -> Self {
        self.axis = axis;
        self
    }
    /// The features axis of an input of `rank` (batch included), if valid.
    fn resolve_axis(&self, rank: usize) -> Result<usize> {
        let a = if self.axis < 0 {
            rank as isize + self.axis
        } else {
            self.axis
        };
        if a <= 0 || a >= rank as isize {
            return Err(Error::value(format!(
                "layer \"{}\": `axis` {} is not a features axis of inputs of rank {rank} (batch included); expected 1..{} or a negative index",
                self.name,
                self.axis,
                rank.saturating_sub(1)
            )));
        }
        Ok(a as usize)
    }
    /// How `gamma`, `beta`, the moving mean and the moving variance start (Keras's
    /// `gamma_initializer`, `beta_initializer`, `moving_mean_initializer`,
    /// `moving_variance_initializer`; by default ones, zeros, zeros, ones).
    ///
    /// ```
    /// use ferrokeras::initializers::Initializer;
    /// use ferrokeras::layers::{BatchNormalization, Layer};
    /// let mut bn = BatchNormalization::new().initializers([
    ///     Initializer::Constant(0.5), Initializer::Zeros, Initializer::Zeros, Initializer::Ones,
    /// ]);
    /// bn.build(&[2]).unwrap();
    /// assert_eq!(bn.variables()[0].value().to_vec1::<f32>().unwrap(), vec![0.5, 0.5]);
    /// ```
    pub fn initializers(mut self, initializers: [Initializer; 4]) -> Self {
        self.initializers = initializers;
        self
    }
    /// Whether to add the learned offset `beta` (default true; Keras's `center`).
    ///
    /// ```
    /// use ferrokeras::layers::{BatchNormalization, Layer};
    /// let mut bn = BatchNormalization::new().center(false).scale(false);
    /// bn.build(&[3]).unwrap();
    /// assert_eq!(bn.variables().len(), 2); // the moving statistics only
    /// ```
    pub fn center(mut self, center: bool) -> Self {
        self.center = center;
        self
    }
    /// Whether to multiply by the learned factor `gamma` (default true; Keras's `scale`).
    pub fn scale(mut self, scale: bool) -> Self {
        self.scale = scale;
        self
    }
    /// The device variables are created on.
    pub fn device(mut self, d: &Device) -> Self {
        self.device = d.clone();
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for BatchNormalization {
    fn call_masked(&mut self, x: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
        super::refuses_mask(self, mask)?;
        self.call(x, training)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "BatchNormalization"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.moving_mean.is_some() {
            return Ok(());
        }
        if input_shape.is_empty() {
            return Err(Error::value(format!(
                "layer \"{}\" needs inputs with a feature axis",
                self.name
            )));
        }
        let c = input_shape[self.resolve_axis(input_shape.len() + 1)? - 1];
        let init = |i: usize| self.initializers[i].init(&[c], &self.device);
        if self.scale {
            self.gamma = Some(Variable::new(
                format!("{}/gamma", self.name),
                &init(0)?,
                true,
            )?);
        }
        if self.center {
            self.beta = Some(Variable::new(
                format!("{}/beta", self.name),
                &init(1)?,
                true,
            )?);
        }
        self.moving_mean = Some(Variable::new(
            format!("{}/moving_mean", self.name),
            &init(2)?,
            false,
        )?);
        self.moving_var = Some(Variable::new(
            format!("{}/moving_variance", self.name),
            &init(3)?,
            false,
        )?);
        Ok(())
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        if x.rank() < 2 {
            return Err(Error::value(format!(
                "layer \"{}\" needs a batch axis and a feature axis; received shape {:?}",
                self.name,
                x.dims()
            )));
        }
        self.build(&x.dims()[1..])?;
        let axis = self.resolve_axis(x.rank())?;
        if axis + 1 != x.rank() {
            // The features axis moved last, normalized, and moved back.
            let mut to_last: Vec<usize> = (0..x.rank()).collect();
            to_last[axis..].rotate_left(1);
            let mut back: Vec<usize> = (0..x.rank()).collect();
            back[axis..].rotate_right(1);
            let last = self.normalize(&x.permute(to_last)?.contiguous()?, training)?;
            return Ok(last.permute(back)?.contiguous()?);
        }
        self.normalize(x, training)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn variables(&self) -> Vec<Variable> {
        [&self.gamma, &self.beta, &self.moving_mean, &self.moving_var]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "gamma_initializer": self.initializers[0].to_json(),
            "beta_initializer": self.initializers[1].to_json(),
            "moving_mean_initializer": self.initializers[2].to_json(),
            "moving_variance_initializer": self.initializers[3].to_json(),
        }))
    }
}

impl BatchNormalization {
    /// Normalizes `x` over every axis but the last.
    fn normalize(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        let (Some(mm), Some(mv)) = (&self.moving_mean, &self.moving_var) else {
            return Err(Error::state("BatchNormalization not built"));
        };
        let c = x.dims()[x.rank() - 1];
        if c != mm.elem_count() {
            return Err(Error::value(format!(
                "Input 0 of layer \"{}\" is incompatible with the layer: expected axis -1 of input shape to have value {}, but received input with shape {:?}",
                self.name,
                mm.elem_count(),
                x.dims()
            )));
        }
        if x.elem_count() == 0 {
            // An empty batch, or no features: nothing to normalize, and no statistics to fold into
            // the moving averages (a mean over no rows would write NaN into them).
            return Ok(x.clone());
        }
        let rows = x.elem_count() / c;
        let flat = x.reshape((rows, c))?;
        // A frozen layer normalizes with its moving statistics, and leaves them alone, even in
        // training (Keras's `BatchNormalization` with `trainable=False`).
        let training = training && !mm.is_frozen();
        let (mean, var) = if training {
            let mean = flat.mean_keepdim(0)?;
            let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
            let m = self.momentum;
            mm.assign(&((mm.value() * m)? + (mean.detach().squeeze(0)? * (1.0 - m))?)?)?;
            mv.assign(&((mv.value() * m)? + (var.detach().squeeze(0)? * (1.0 - m))?)?)?;
            (mean, var)
        } else {
            (mm.value().unsqueeze(0)?, mv.value().unsqueeze(0)?)
        };
        let inv = (var + self.epsilon)?.sqrt()?.recip()?;
        let mut y = flat.broadcast_sub(&mean)?.broadcast_mul(&inv)?;
        if let Some(gamma) = &self.gamma {
            y = y.broadcast_mul(&gamma.as_tensor().unsqueeze(0)?)?;
        }
        if let Some(beta) = &self.beta {
            y = y.broadcast_add(&beta.as_tensor().unsqueeze(0)?)?;
        }
        Ok(y.reshape(x.dims())?)
    }
}

/// Keras's `layers.LayerNormalization`: each sample normalized over `axis` (the last by
/// default) with its own mean and variance, `(x - mean) / sqrt(var + epsilon) * gamma + beta`,
/// computed in float32 whatever the input's dtype (the output has the input's dtype). `gamma`
/// and `beta` have the shape of the normalized axes.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, LayerNormalization};
/// let mut ln = LayerNormalization::new();
/// let x = Tensor::new(&[[1f32, 2.0, 3.0], [10.0, 10.0, 40.0]], &Device::Cpu).unwrap();
/// let y = ln.call(&x, true).unwrap().to_vec2::<f32>().unwrap();
/// assert!(y.iter().all(|row| row.iter().sum::<f32>().abs() < 1e-5)); // zero mean per sample
/// assert!((y[0][2] - 1.2238).abs() < 1e-3); // 1 / sqrt(2/3 + 1e-3)
/// assert_eq!(ln.variables().len(), 2); // gamma, beta
/// ```
pub struct LayerNormalization {
    name: String,
    /// The normalized axes, counted with the batch axis (negative from the end).
    axes: Vec<isize>,
    epsilon: f64,
    center: bool,
    scale: bool,
    /// gamma, beta (Keras's ones, zeros).
    initializers: [Initializer; 2],
    regularizers: [Option<super::Regularizer>; 2],
    gamma: Option<Variable>,
    beta: Option<Variable>,
    built: bool,
    device: Device,
}

impl Default for LayerNormalization {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerNormalization {
    /// Keras defaults: the last axis, epsilon 1e-3, with `gamma` and `beta`.
    pub fn new() -> Self {
        Self {
            name: unique_name("layer_normalization"),
            axes: vec![-1],
            epsilon: 1e-3,
            center: true,
            scale: true,
            initializers: [Initializer::Ones, Initializer::Zeros],
            regularizers: [None, None],
            gamma: None,
            beta: None,
            built: false,
            device: crate::runtime::default_device(),
        }
    }
    /// The axis to normalize over, counted with the batch axis (Keras's `axis`: -1 by default).
    pub fn axis(self, axis: isize) -> Self {
        self.axes(&[axis])
    }
    /// Several axes to normalize over together (Keras's `axis=[1, 2]`).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, LayerNormalization};
    /// let mut ln = LayerNormalization::new().axes(&[1, 2]);
    /// let x = ferrokeras::random::uniform(&[2, 3, 4], 0.0, 1.0, &Device::Cpu).unwrap();
    /// let y = ln.call(&x, true).unwrap();
    /// assert_eq!(ln.variables()[0].value().dims(), &[3, 4]);
    /// let per_sample = y.flatten_from(1).unwrap().mean(1).unwrap().to_vec1::<f32>().unwrap();
    /// assert!(per_sample.iter().all(|m| m.abs() < 1e-5));
    /// ```
    pub fn axes(mut self, axes: &[isize]) -> Self {
        self.axes = axes.to_vec();
        self
    }
    /// Variance epsilon (default 1e-3).
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }
    /// Whether to add the learned offset `beta` (default true; Keras's `center`).
    pub fn center(mut self, center: bool) -> Self {
        self.center = center;
        self
    }
    /// Whether to multiply by the learned factor `gamma` (default true; Keras's `scale`).
    pub fn scale(mut self, scale: bool) -> Self {
        self.scale = scale;
        self
    }
    /// How `gamma` and `beta` start (Keras's `gamma_initializer`, `beta_initializer`; by
    /// default ones and zeros).
    pub fn initializers(mut self, gamma: Initializer, beta: Initializer) -> Self {
        self.initializers = [gamma, beta];
        self
    }
    /// Penalties on `gamma` and `beta` (Keras's `gamma_regularizer`, `beta_regularizer`).
    pub fn regularizers(
        mut self,
        gamma: Option<super::Regularizer>,
        beta: Option<super::Regularizer>,
    ) -> Self {
        self.regularizers = [gamma, beta];
        self
    }
    /// The device variables are created on.
    pub fn device(mut self, d: &Device) -> Self {
        self.device = d.clone();
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
    /// The normalized axes of an input of `rank` (batch included), sorted, if valid.
    fn resolve_axes(&self, rank: usize) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(self.axes.len());
        for &axis in &self.axes {
            let a = if axis < 0 { rank as isize + axis } else { axis };
            if a <= 0 || a >= rank as isize {
                return Err(Error::value(format!(
                    "layer \"{}\": axis {axis} is not a normalizable axis of inputs of rank {rank} (batch included); expected 1..{} or a negative index. Received: axis={:?}",
                    self.name,
                    rank.saturating_sub(1),
                    self.axes
                )));
            }
            out.push(a as usize);
        }
        out.sort_unstable();
        out.dedup();
        if out.is_empty() {
            return Err(Error::value(format!(
                "layer \"{}\": `axis` names no axis; pass at least one",
                self.name
            )));
        }
        Ok(out)
    }
}

impl Layer for LayerNormalization {
    super::passes_mask!();
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "LayerNormalization"
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        if self.built {
            return Ok(());
        }
        let axes = self.resolve_axes(input_shape.len() + 1)?;
        let shape: Vec<usize> = axes.iter().map(|a| input_shape[a - 1]).collect();
        let init = |i: usize| self.initializers[i].init(&shape, &self.device);
        if self.scale {
            self.gamma = Some(Variable::new(
                format!("{}/gamma", self.name),
                &init(0)?,
                true,
            )?);
        }
        if self.center {
            self.beta = Some(Variable::new(
                format!("{}/beta", self.name),
                &init(1)?,
                true,
            )?);
        }
        self.built = true;
        Ok(())
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        if x.rank() < 2 {
            return Err(Error::value(format!(
                "layer \"{}\" needs a batch axis and at least one more; received shape {:?}",
                self.name,
                x.dims()
            )));
        }
        self.build(&x.dims()[1..])?;
        let axes = self.resolve_axes(x.rank())?;
        let mut broadcast = vec![1; x.rank()];
        for &a in &axes {
            broadcast[a] = x.dims()[a];
        }
        let param = |v: &Option<Variable>| -> Result<Option<Tensor>> {
            let Some(v) = v else { return Ok(None) };
            let t = v.as_tensor();
            let want: Vec<usize> = axes.iter().map(|&a| broadcast[a]).collect();
            if t.dims() != want.as_slice() {
                return Err(Error::value(format!(
                    "Input 0 of layer \"{}\" is incompatible with the layer: expected the normalized axes {axes:?} of the input to have sizes {:?}, but received input with shape {:?}",
                    self.name,
                    t.dims(),
                    x.dims()
                )));
            }
            Ok(Some(t.to_dtype(DType::F32)?.reshape(broadcast.as_slice())?))
        };
        let (gamma, beta) = (param(&self.gamma)?, param(&self.beta)?);
        if x.elem_count() == 0 {
            return Ok(x.clone());
        }
        let x32 = x.to_dtype(DType::F32)?;
        // The normalized axes trailing (the last one, as in a transformer): one node.
        let n: usize = axes.iter().map(|&a| x.dims()[a]).product();
        if axes
            .iter()
            .enumerate()
            .all(|(i, &a)| a == x.rank() - axes.len() + i)
        {
            // Our CPU kernel where it takes the tensors (with gamma and beta, the default).
            if let (Some(g), Some(b)) = (&self.gamma, &self.beta)
                && let Some(y) = crate::kernels::layer_norm::layer_norm(
                    &x32,
                    g.as_tensor(),
                    b.as_tensor(),
                    n,
                    self.epsilon,
                )?
            {
                return Ok(y.to_dtype(x.dtype())?);
            }
            let rows = x.elem_count() / n;
            let y = layer_norm_node(
                &x32.reshape((rows, n))?,
                gamma.map(|g| g.reshape((1, n))).transpose()?.as_ref(),
                beta.map(|b| b.reshape((1, n))).transpose()?.as_ref(),
                self.epsilon,
            )?;
            return Ok(y.reshape(x.dims())?.to_dtype(x.dtype())?);
        }
        let mean = x32.mean_keepdim(axes.as_slice())?;
        let centered = x32.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(axes.as_slice())?;
        let mut y = centered.broadcast_mul(&(var + self.epsilon)?.sqrt()?.recip()?)?;
        if let Some(g) = gamma {
            y = y.broadcast_mul(&g)?;
        }
        if let Some(b) = beta {
            y = y.broadcast_add(&b)?;
        }
        Ok(y.to_dtype(x.dtype())?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        self.resolve_axes(input_shape.len() + 1)?;
        Ok(input_shape.to_vec())
    }
    fn variables(&self) -> Vec<Variable> {
        [&self.gamma, &self.beta]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        for (r, v) in self.regularizers.iter().zip([&self.gamma, &self.beta]) {
            if let (Some(r), Some(v)) = (r, v) {
                out.push(r.penalty(v.as_tensor())?);
            }
        }
        Ok(out)
    }
    fn config(&self) -> Option<serde_json::Value> {
        let axis = match self.axes.as_slice() {
            [a] => serde_json::json!(a),
            many => serde_json::json!(many),
        };
        Some(serde_json::json!({
            "name": self.name,
            "axis": axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "rms_scaling": false,
            "gamma_initializer": self.initializers[0].to_json(),
            "beta_initializer": self.initializers[1].to_json(),
            "gamma_regularizer": super::config::regularizer_json(self.regularizers[0]),
            "beta_regularizer": super::config::regularizer_json(self.regularizers[1]),
        }))
    }
}

/// Layer normalization of the rows of `x (rows, n)`, times `gamma (1, n)` plus `beta (1, n)`,
/// as one node of the recorded graph ([`crate::tape::node`]), differentiated as a whole:
/// `dx = r (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂))` with `dx̂ = g gamma`, `dgamma = sum(g x̂)` and
/// `dbeta = sum(g)` over the rows (as products with a row of ones). candle's ops would take
/// a reduction and a broadcast for each of the ten steps.
fn layer_norm_node(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    epsilon: f64,
) -> Result<Tensor> {
    let xd = x.detach();
    let (rows, _) = xd.dims2()?;
    let mean = xd.mean_keepdim(1)?;
    let centered = xd.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(1)?;
    let r = (var + epsilon)?.sqrt()?.recip()?;
    let xhat = centered.broadcast_mul(&r)?;
    let gd = gamma.map(Tensor::detach);
    let mut y = match &gd {
        Some(g) => xhat.broadcast_mul(g)?,
        None => xhat.clone(),
    };
    if let Some(b) = beta {
        y = y.broadcast_add(&b.detach())?;
    }
    let mut args = vec![x];
    args.extend(gamma);
    args.extend(beta);
    let (has_gamma, has_beta) = (gamma.is_some(), beta.is_some());
    let node = crate::tape::node(&args, &y, move |g, _y, needs| {
        let ones = Tensor::ones((1, rows), g.dtype(), g.device())?;
        let dxhat = match &gd {
            Some(gm) => g.broadcast_mul(gm)?,
            None => g.clone(),
        };
        let mut grads = Vec::with_capacity(3);
        grads.push(if needs[0] {
            let m1 = dxhat.mean_keepdim(1)?;
            let m2 = (&dxhat * &xhat)?.mean_keepdim(1)?;
            let inner = dxhat.broadcast_sub(&m1)?.sub(&xhat.broadcast_mul(&m2)?)?;
            Some(inner.broadcast_mul(&r)?)
        } else {
            None
        });
        let mut i = 1;
        if has_gamma {
            grads.push(needs[i].then(|| ones.matmul(&(g * &xhat)?)).transpose()?);
            i += 1;
        }
        if has_beta {
            grads.push(needs[i].then(|| ones.matmul(g)).transpose()?);
        }
        Ok(grads)
    })?;
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `center` and `scale` the output is the standardized input,
    /// `(x - mean) / sqrt(var + eps)`; with them a trained `gamma`/`beta` still applies; the
    /// variables are Keras's (gamma, beta, moving mean, moving variance, missing ones left out).
    #[test]
    fn center_and_scale_are_optional() {
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 6.0], [5.0, 1.0]], &Device::Cpu).unwrap();
        let mut bare = BatchNormalization::new().center(false).scale(false);
        let y = bare.call(&x, true).unwrap().to_vec2::<f32>().unwrap();
        let cols = [[1f32, 3.0, 5.0], [2.0, 6.0, 1.0]];
        for (j, col) in cols.iter().enumerate() {
            let mean = col.iter().sum::<f32>() / 3.0;
            let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 3.0;
            for (i, v) in col.iter().enumerate() {
                let want = (v - mean) / (var + 1e-3).sqrt();
                assert!((y[i][j] - want).abs() < 1e-5, "{} vs {want}", y[i][j]);
            }
        }
        let names: Vec<String> = bare
            .variables()
            .iter()
            .map(|v| v.name().to_string())
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names[0].ends_with("moving_mean") && names[1].ends_with("moving_variance"));
        let mut no_scale = BatchNormalization::new().scale(false);
        no_scale.build(&[2]).unwrap();
        let vars = no_scale.variables();
        assert_eq!(vars.len(), 3);
        assert!(vars[0].name().ends_with("beta"));
        vars[0]
            .assign(&Tensor::new(&[10f32, 20.0], &Device::Cpu).unwrap())
            .unwrap();
        let y2 = no_scale.call(&x, true).unwrap().to_vec2::<f32>().unwrap();
        assert!((y2[0][0] - (y[0][0] + 10.0)).abs() < 1e-4);
        assert!((y2[2][1] - (y[2][1] + 20.0)).abs() < 1e-4);
    }
}
