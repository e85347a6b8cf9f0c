//! Layers: the [`Layer`] trait and the building blocks of the guide's models.
//!
//! A layer builds its variables on first use, from the shape of its input (without the batch axis),
//! as Keras layers do. Shapes in this module never include the batch axis.
//!
//! Every built-in layer describes itself as JSON with [`Layer::config`], and [`from_config`]
//! rebuilds it from its class name and that config (the registry model saving uses; layers of
//! your own join it with [`register_layer`]).

mod activation;
mod affine;
mod attention;
mod augment;
mod bidirectional;
pub(crate) mod config;
mod conv;
mod conv1d;
mod conv_generic;
mod core;
mod dense;
mod depthwise;
mod dropout;
mod embedding;
pub(crate) mod im2col;
mod masking;
mod noise;
mod norm;
mod normalization;
mod padding;
mod pooling;
mod recurrent;
mod reshape;
mod time_distributed;

pub use activation::{Activation, ActivationLayer, LeakyReLU, ReLU, Softmax};
pub use affine::{
    FillMode, Interpolation, RandomBrightness, RandomContrast, RandomRotation, RandomTranslation,
    RandomZoom,
};
pub use attention::MultiHeadAttention;
pub use augment::{FlipMode, RandomFlip};
pub use bidirectional::{Bidirectional, MergeMode};
pub use config::{
    BUILTIN_LAYERS, LayerConstructor, deserialize, from_config, register_layer, serialize,
};
pub use conv::{Conv2D, Conv2DTranspose, DataFormat, Padding, Size2};
pub use conv1d::Conv1D;
pub use core::{Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract};
pub use dense::{Dense, Regularizer};
pub use depthwise::{DepthwiseConv2D, SeparableConv2D};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use masking::Masking;
pub use noise::{GaussianNoise, SpatialDropout1D, SpatialDropout2D};
pub use norm::{BatchNormalization, LayerNormalization};
pub use normalization::Normalization;
pub use padding::{Cropping2D, Rescaling, Sides, ZeroPadding2D};
pub use pooling::{
    AveragePooling1D, AveragePooling2D, GlobalAveragePooling1D, GlobalAveragePooling2D,
    GlobalMaxPooling1D, GlobalMaxPooling2D, MaxPooling1D, MaxPooling2D, PoolFusion, UpSampling2D,
};
pub use recurrent::{
    CellKind, GRU, GruCell, LSTM, LstmCell, Recurrent, SimpleRNN, SimpleRnnCell, StepKind,
};
pub use reshape::{Flatten, Permute, RepeatVector, Reshape, UpSampling1D};
pub use time_distributed::TimeDistributed;

use candle_core::Tensor;

use crate::tape::Variable;
use crate::{Error, Result};

/// A layer: a function from tensors to a tensor, with variables built on first use.
///
/// Required: [`Layer::name`], [`Layer::call`] and [`Layer::compute_output_shape`]. Layers with
/// variables also implement [`Layer::variables`]; layers with several inputs (`Concatenate`)
/// implement [`Layer::call_many`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Dense, Layer};
/// let mut dense = Dense::new(4);
/// let y = dense.call(&Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(), false).unwrap();
/// assert_eq!(y.dims(), &[2, 4]);
/// assert_eq!(dense.count_params(), 3 * 4 + 4);
/// ```
pub trait Layer: Send {
    /// The unique name (`"dense"`, `"dense_1"`, ...).
    fn name(&self) -> &str;
    /// The class name shown by `summary()` (`"Dense"`).
    fn class_name(&self) -> &str;
    /// Creates the variables for inputs of `input_shape` (batch axis excluded). Called by `call`
    /// on first use; calling it again is a no-op.
    ///
    /// # Errors
    /// An input shape the layer cannot take.
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        let _ = input_shape;
        Ok(())
    }
    /// The forward pass on a batch. `training` switches dropout and similar behaviour.
    ///
    /// # Errors
    /// An input of the wrong shape, with the expected and received shapes.
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor>;
    /// The forward pass followed by activation `then` (the next layer of a [`Sequential`] is
    /// that activation), computed in one fused kernel where the layer can; `None` when it cannot
    /// (the caller then runs both layers). By default, `None`.
    ///
    /// [`Sequential`]: crate::Sequential
    ///
    /// # Errors
    /// As [`Layer::call`].
    fn call_fused(
        &mut self,
        x: &Tensor,
        training: bool,
        then: Activation,
    ) -> Result<Option<Tensor>> {
        let _ = (x, training, then);
        Ok(None)
    }
    /// The activation this layer is, if it is only an activation (`Activation`, `ReLU`,
    /// `LeakyReLU` layers). By default, `None`.
    fn as_activation(&self) -> Option<Activation> {
        None
    }
    /// The forward pass followed by activation `then` (if any) and the max pooling `pool`, in
    /// one fused op where the layer can (the activation's output never becomes a tensor of its
    /// own); `None` when it cannot. By default, `None`.
    ///
    /// # Errors
    /// As [`Layer::call`].
    fn call_fused_pool(
        &mut self,
        x: &Tensor,
        training: bool,
        then: Option<Activation>,
        pool: PoolFusion,
    ) -> Result<Option<Tensor>> {
        let _ = (x, training, then, pool);
        Ok(None)
    }
    /// The max pooling this layer is, if it is a channels-last `MaxPooling2D`. By default,
    /// `None`.
    fn as_max_pool(&self) -> Option<PoolFusion> {
        None
    }
    /// The forward pass of an input with a mask (Keras's `mask` argument): `mask` is
    /// `(batch, timesteps)`, 1 for the steps to use and 0 for padding, as made by
    /// [`Embedding::mask_zero`] or [`Masking`]. By default the mask is not used and
    /// [`Layer::call`] runs; layers that need it (the recurrent layers skip masked steps)
    /// override this.
    ///
    /// # Errors
    /// As [`Layer::call`]; a layer that Keras would compute differently with a mask and that
    /// does not support one here says so.
    fn call_masked(&mut self, x: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
        let _ = mask;
        self.call(x, training)
    }
    /// The mask of the output, given the input and its mask (Keras's `compute_mask`). By
    /// default `None`: the mask stops here, as in Keras for layers that do not support
    /// masking. Layers that keep the time axis and treat steps alone (`Dense`, activations,
    /// `Dropout`) pass it on; `Embedding` with `mask_zero` and `Masking` make one.
    ///
    /// # Errors
    /// A failing tensor operation.
    fn compute_mask(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        let _ = (x, mask);
        Ok(None)
    }
    /// The mask of the output of a layer with several inputs, given each input's mask or
    /// `None` (Keras's `compute_mask` with a list). By default `None`, the masks stop here;
    /// the merge layers combine them as Keras's do.
    ///
    /// # Errors
    /// A failing tensor operation.
    fn compute_mask_many(&self, xs: &[Tensor], masks: &[Option<Tensor>]) -> Result<Option<Tensor>> {
        let _ = (xs, masks);
        Ok(None)
    }
    /// The forward pass of a layer with several inputs; by default, requires exactly one.
    ///
    /// # Errors
    /// A number of inputs the layer does not take.
    fn call_many(&mut self, xs: &[Tensor], training: bool) -> Result<Tensor> {
        match xs {
            [x] => self.call(x, training),
            _ => Err(Error::value(format!(
                "layer `{}` takes one input, received {}",
                self.name(),
                xs.len()
            ))),
        }
    }
    /// Builds a layer with several inputs for their shapes (batch axis excluded); by default,
    /// [`Layer::build`] for one input and nothing for several (merge layers have no weights).
    ///
    /// # Errors
    /// Shapes the layer cannot take.
    fn build_many(&mut self, shapes: &[Vec<usize>]) -> Result<()> {
        match shapes {
            [s] => self.build(s),
            _ => Ok(()),
        }
    }
    /// The forward pass of a layer with several inputs, given each input's mask or `None`
    /// (Keras fills a layer's `query_mask`, `value_mask`, ... from its inputs' masks). By
    /// default the masks are not used and [`Layer::call_many`] runs; `MultiHeadAttention`
    /// uses them.
    ///
    /// # Errors
    /// As [`Layer::call_many`].
    fn call_many_masked(
        &mut self,
        xs: &[Tensor],
        masks: &[Option<Tensor>],
        training: bool,
    ) -> Result<Tensor> {
        let _ = masks;
        self.call_many(xs, training)
    }
    /// Whether a functional model's saved node lists this layer's inputs as positional
    /// arguments (`layer(query, value)`, Keras's `{"args": [q, v]}`) rather than as one list
    /// (`layer([a, b])`, a merge layer's `{"args": [[a, b]]}`). `false` by default.
    fn positional_inputs(&self) -> bool {
        false
    }
    /// The keyword arguments a functional model's saved node records for this layer's call
    /// (Keras's `"kwargs"`, such as `use_causal_mask`); none by default.
    fn call_kwargs(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }
    /// Takes one keyword argument of a saved node's call (see [`Layer::call_kwargs`]):
    /// `Ok(true)` when the layer takes it, `Ok(false)` (the default) when it does not.
    ///
    /// # Errors
    /// A value the layer does not take for that argument.
    fn set_call_kwarg(&mut self, key: &str, value: &serde_json::Value) -> Result<bool> {
        let _ = (key, value);
        Ok(false)
    }
    /// The output shape for an input shape (batch axis excluded).
    ///
    /// # Errors
    /// An input shape the layer cannot take.
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>>;
    /// The output shape for several input shapes; by default, requires exactly one.
    ///
    /// # Errors
    /// A number or shape of inputs the layer does not take.
    fn compute_output_shape_many(&self, shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
        match shapes {
            [s] => self.compute_output_shape(s),
            _ => Err(Error::value(format!(
                "layer `{}` takes one input, received {}",
                self.name(),
                shapes.len()
            ))),
        }
    }
    /// How Keras's weight files (`.keras`, `model.weights.h5`) keep this layer's variables: by
    /// default one group, `vars`, with all of them. Layers that Keras builds from sublayers
    /// keep theirs deeper (an `LSTM`'s under `cell/vars`).
    fn keras_vars(&self) -> Vec<KerasVars> {
        vec![KerasVars {
            path: "vars".to_string(),
            name: self.name().to_string(),
            variables: self.variables(),
        }]
    }
    /// Every variable, trainable first, in creation order (Keras's `weights`).
    fn variables(&self) -> Vec<Variable> {
        Vec::new()
    }
    /// Freezes (`false`) or unfreezes (`true`) the layer's variables (Keras's `layer.trainable`):
    /// `fit` leaves frozen ones alone, and a frozen `BatchNormalization` runs in inference mode,
    /// as in Keras. It acts on the variables the layer has: call it once the layer is built (a
    /// model given its input shape, or after a first call).
    ///
    /// ```
    /// use ferrokeras::prelude::*;
    /// let model = Sequential::new().input(&[4]).add(Dense::new(3)).add(Dense::new(1));
    /// model.layers()[0].set_trainable(false);
    /// assert_eq!(model.trainable_variables().len(), 2); // the second layer's kernel and bias
    /// assert_eq!(Model::non_trainable_variables(&model).len(), 2);
    /// ```
    fn set_trainable(&self, trainable: bool) {
        for v in self.variables() {
            v.set_trainable(trainable);
        }
    }
    /// The variables an optimizer updates.
    fn trainable_variables(&self) -> Vec<Variable> {
        self.variables()
            .into_iter()
            .filter(Variable::trainable)
            .collect()
    }
    /// The variables that are not trained by gradients (moving statistics).
    fn non_trainable_variables(&self) -> Vec<Variable> {
        self.variables()
            .into_iter()
            .filter(|v| !v.trainable())
            .collect()
    }
    /// Regularization losses for the current weights (Keras's `layer.losses`).
    ///
    /// # Errors
    /// A failing tensor operation.
    fn losses(&self) -> Result<Vec<Tensor>> {
        Ok(Vec::new())
    }
    /// Total number of scalars in the variables.
    fn count_params(&self) -> usize {
        self.variables().iter().map(Variable::elem_count).sum()
    }
    /// The layers inside this one, for `summary()` of nested models (empty for plain layers).
    fn sublayer_summaries(&self) -> Vec<LayerSummary> {
        Vec::new()
    }
    /// The layer's configuration as a JSON object of its constructor arguments, with Keras's key
    /// names (Keras's `get_config`): enough for [`from_config`] to rebuild the same layer (without
    /// its weights). Model saving ([`crate::io::save_model`]) stores it.
    ///
    /// `None`, the default, means the layer cannot be saved: saving a model that holds it fails
    /// with an error naming the layer's class. Every built-in layer returns `Some`; a layer of
    /// your own implements this and registers its class with [`register_layer`].
    ///
    /// ```
    /// use ferrokeras::layers::{Conv2D, Layer};
    /// let conv = Conv2D::new(8, (3, 3)).strides(2).padding("same").unwrap();
    /// let c = conv.config().unwrap();
    /// assert_eq!(c["filters"], 8);
    /// assert_eq!(c["kernel_size"], serde_json::json!([3, 3]));
    /// assert_eq!(c["strides"], serde_json::json!([2, 2]));
    /// assert_eq!(c["padding"], "same");
    /// ```
    fn config(&self) -> Option<serde_json::Value> {
        None
    }
    /// The name of the layer's own dtype policy (Keras's `layer.dtype_policy`), for the layers
    /// that have one (`Dense`, the convolutions, an `Activation` given `dtype`); `None`, the
    /// default, for a layer that computes in the dtype of its input. Saving writes it as the
    /// layer's `dtype`.
    fn dtype_policy_name(&self) -> Option<String> {
        None
    }
}

/// One row of `summary()`.
///
/// ```
/// use ferrokeras::layers::LayerSummary;
/// let row = LayerSummary::new("dense (Dense)", &[64], 50240);
/// assert!(row.built && row.connected_to.is_empty());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    /// `"dense (Dense)"`.
    pub name: String,
    /// Output shape without the batch axis.
    pub output_shape: Vec<usize>,
    /// Parameter count.
    pub params: usize,
    /// Whether the layer is built; Keras prints `?` and `0 (unbuilt)` for one that is not.
    pub built: bool,
    /// The tensors the layer takes, as Keras's "Connected to" column names them
    /// (`dense[0][0]`), for a functional model that is not a plain chain of layers (the table
    /// then has that column); empty otherwise.
    pub connected_to: Vec<String>,
}

impl LayerSummary {
    /// A built layer's row, without connections.
    pub fn new(name: impl Into<String>, output_shape: &[usize], params: usize) -> Self {
        Self {
            name: name.into(),
            output_shape: output_shape.to_vec(),
            params,
            built: true,
            connected_to: Vec::new(),
        }
    }
}

/// One group of a layer's variables in Keras's weight files ([`Layer::keras_vars`]).
///
/// ```
/// use ferrokeras::layers::{Dense, LSTM, Layer};
/// let mut lstm = LSTM::new(2);
/// lstm.build(&[5, 3]).unwrap();
/// let groups = lstm.keras_vars();
/// assert_eq!(groups[1].path, "cell/vars");
/// assert_eq!(groups[1].name, "lstm_cell");
/// assert_eq!(groups[1].variables.len(), 3);
/// let mut dense = Dense::new(2);
/// dense.build(&[3]).unwrap();
/// assert_eq!(dense.keras_vars()[0].path, "vars");
/// ```
#[derive(Clone)]
pub struct KerasVars {
    /// The group's path under the layer's own group (`"vars"`, `"cell/vars"`,
    /// `"forward_layer/cell/vars"`).
    pub path: String,
    /// The `name` attribute Keras gives the group: the layer's or the sublayer's name.
    pub name: String,
    /// The variables, datasets `0`, `1`, ... in this order.
    pub variables: Vec<Variable>,
}

impl<L: Layer + ?Sized> Layer for Box<L> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn class_name(&self) -> &str {
        (**self).class_name()
    }
    fn build(&mut self, input_shape: &[usize]) -> Result<()> {
        (**self).build(input_shape)
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        (**self).call(x, training)
    }
    fn call_many(&mut self, xs: &[Tensor], training: bool) -> Result<Tensor> {
        (**self).call_many(xs, training)
    }
    fn call_many_masked(
        &mut self,
        xs: &[Tensor],
        masks: &[Option<Tensor>],
        training: bool,
    ) -> Result<Tensor> {
        (**self).call_many_masked(xs, masks, training)
    }
    fn build_many(&mut self, shapes: &[Vec<usize>]) -> Result<()> {
        (**self).build_many(shapes)
    }
    fn positional_inputs(&self) -> bool {
        (**self).positional_inputs()
    }
    fn call_kwargs(&self) -> serde_json::Map<String, serde_json::Value> {
        (**self).call_kwargs()
    }
    fn set_call_kwarg(&mut self, key: &str, value: &serde_json::Value) -> Result<bool> {
        (**self).set_call_kwarg(key, value)
    }
    fn call_fused(
        &mut self,
        x: &Tensor,
        training: bool,
        then: Activation,
    ) -> Result<Option<Tensor>> {
        (**self).call_fused(x, training, then)
    }
    fn as_activation(&self) -> Option<Activation> {
        (**self).as_activation()
    }
    fn call_fused_pool(
        &mut self,
        x: &Tensor,
        training: bool,
        then: Option<Activation>,
        pool: PoolFusion,
    ) -> Result<Option<Tensor>> {
        (**self).call_fused_pool(x, training, then, pool)
    }
    fn as_max_pool(&self) -> Option<PoolFusion> {
        (**self).as_max_pool()
    }
    fn call_masked(&mut self, x: &Tensor, mask: Option<&Tensor>, training: bool) -> Result<Tensor> {
        (**self).call_masked(x, mask, training)
    }
    fn compute_mask(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Option<Tensor>> {
        (**self).compute_mask(x, mask)
    }
    fn compute_mask_many(&self, xs: &[Tensor], masks: &[Option<Tensor>]) -> Result<Option<Tensor>> {
        (**self).compute_mask_many(xs, masks)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        (**self).compute_output_shape(input_shape)
    }
    fn compute_output_shape_many(&self, shapes: &[Vec<usize>]) -> Result<Vec<usize>> {
        (**self).compute_output_shape_many(shapes)
    }
    fn keras_vars(&self) -> Vec<KerasVars> {
        (**self).keras_vars()
    }
    fn variables(&self) -> Vec<Variable> {
        (**self).variables()
    }
    fn trainable_variables(&self) -> Vec<Variable> {
        (**self).trainable_variables()
    }
    fn non_trainable_variables(&self) -> Vec<Variable> {
        (**self).non_trainable_variables()
    }
    fn losses(&self) -> Result<Vec<Tensor>> {
        (**self).losses()
    }
    fn count_params(&self) -> usize {
        (**self).count_params()
    }
    fn sublayer_summaries(&self) -> Vec<LayerSummary> {
        (**self).sublayer_summaries()
    }
    fn config(&self) -> Option<serde_json::Value> {
        (**self).config()
    }
    fn dtype_policy_name(&self) -> Option<String> {
        (**self).dtype_policy_name()
    }
}

/// A unique name from a prefix, as Keras names layers: `dense`, `dense_1`, `dense_2`, ...
///
/// ```
/// let a = ferrokeras::layers::unique_name("my_block");
/// let b = ferrokeras::layers::unique_name("my_block");
/// assert_eq!(a, "my_block");
/// assert_eq!(b, "my_block_1");
/// ```
pub fn unique_name(prefix: &str) -> String {
    crate::runtime::init();
    let mut counts = config::name_counts()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let n = counts.entry(prefix.to_string()).or_insert(0);
    let name = if *n == 0 {
        prefix.to_string()
    } else {
        format!("{prefix}_{n}")
    };
    *n += 1;
    let issued = (prefix.to_string(), name.clone(), *n);
    LAST_ISSUED.with(|last| *last.borrow_mut() = Some(issued));
    name
}

thread_local! {
    /// The last name [`unique_name`] gave on this thread: its prefix, the name and the prefix's
    /// count just after.
    static LAST_ISSUED: std::cell::RefCell<Option<(String, String, usize)>> =
        const { std::cell::RefCell::new(None) };
}

/// Replaces an automatic name by the user's (the layers' and models' `named`). When `old` is
/// the last name [`unique_name`] gave, it is given back, so `Dense::new(4).named("head")` does
/// not use up `dense`: as in Keras, where `Dense(4, name="head")` never draws an automatic name,
/// the next `Dense::new` is still `dense`. Only while no other name of that prefix was given
/// since (on any thread).
pub(crate) fn rename(old: &mut String, new: String) {
    let mut counts = config::name_counts()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    LAST_ISSUED.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((prefix, name, after)) = last.as_ref()
            && name == old
            && let Some(n) = counts.get_mut(prefix)
            && *n == *after
        {
            *n -= 1;
            *last = None;
        }
    });
    *old = new;
}

/// Marks `name` as taken, so that [`unique_name`] never returns it later: after reserving
/// `dense_3`, automatic names continue at `dense_4` or later (`dense_3` alone also reserves the
/// prefix `dense_3`). Loading a model ([`from_config`], [`crate::io::load_model`]) reserves every
/// restored name; a restored name can still equal the name of a layer that already exists in the
/// process (the original model's, say), as in Keras.
///
/// ```
/// use ferrokeras::layers::{reserve_name, unique_name};
/// reserve_name("my_unit_7");
/// assert_eq!(unique_name("my_unit"), "my_unit_8");
/// reserve_name("other_unit");
/// assert_eq!(unique_name("other_unit"), "other_unit_1");
/// ```
pub fn reserve_name(name: &str) {
    let mut counts = config::name_counts()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let n = counts.entry(name.to_string()).or_insert(0);
    *n = (*n).max(1);
    if let Some((head, tail)) = name.rsplit_once('_')
        && !head.is_empty()
        && !tail.is_empty()
        && tail.chars().all(|c| c.is_ascii_digit())
        && let Some(k) = tail.parse::<usize>().ok().and_then(|k| k.checked_add(1))
    {
        let n = counts.entry(head.to_string()).or_insert(0);
        *n = (*n).max(k);
    }
}

/// Checks that a batch has the rank and trailing dimensions a layer expects.
/// `Layer::compute_mask` of the layers that pass a mask on unchanged (Keras's
/// `supports_masking = True` without a `compute_mask` of their own).
macro_rules! passes_mask {
    () => {
        fn compute_mask(
            &self,
            _x: &candle_core::Tensor,
            mask: Option<&candle_core::Tensor>,
        ) -> $crate::Result<Option<candle_core::Tensor>> {
            Ok(mask.cloned())
        }
    };
}
pub(crate) use passes_mask;

/// The error of a layer that Keras computes differently when its input has a mask, and
/// that does not take one here.
pub(crate) fn refuses_mask(layer: &dyn Layer, mask: Option<&Tensor>) -> Result<()> {
    match mask {
        None => Ok(()),
        Some(_) => Err(Error::value(format!(
            "layer \"{}\" ({}) received a masked input (from `Embedding(mask_zero=true)` or `Masking`); Keras uses the mask in this layer's computation, which ferrokeras does not support yet. Consume the mask first (a recurrent layer without `return_sequences`), or drop `mask_zero`/`Masking`",
            layer.name(),
            layer.class_name()
        ))),
    }
}

pub(crate) fn check_input(layer: &str, x: &Tensor, expected: &[usize]) -> Result<()> {
    let dims = x.dims();
    if dims.len() != expected.len() + 1 || &dims[1..] != expected {
        let exp: Vec<String> = std::iter::once("None".to_string())
            .chain(expected.iter().map(|d| d.to_string()))
            .collect();
        return Err(Error::value(format!(
            "Input 0 of layer \"{layer}\" is incompatible with the layer: expected shape=({}), found shape={:?}. Check the feature size of your data against the model's input.",
            exp.join(", "),
            dims
        )));
    }
    Ok(())
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    /// `named` right after `new` gives the automatic name back, as Keras never draws one for a
    /// named layer; a name given since, or a second rename, keeps the count.
    #[test]
    fn named_layers_leave_the_automatic_names() {
        let mut a = unique_name("naming_probe");
        assert_eq!(a, "naming_probe");
        rename(&mut a, "head".into());
        assert_eq!(a, "head");
        assert_eq!(unique_name("naming_probe"), "naming_probe");
        let mut b = unique_name("naming_probe");
        assert_eq!(b, "naming_probe_1");
        let c = unique_name("naming_probe");
        rename(&mut b, "body".into());
        assert_eq!(c, "naming_probe_2");
        assert_eq!(unique_name("naming_probe"), "naming_probe_3");
        let mut d = unique_name("naming_probe");
        rename(&mut d, "x".into());
        rename(&mut d, "y".into());
        assert_eq!(unique_name("naming_probe"), "naming_probe_4");
        // Through a layer and a model.
        let head = crate::layers::Dense::new(1).named("naming_head");
        assert_eq!(crate::layers::Layer::name(&head), "naming_head");
    }
}
