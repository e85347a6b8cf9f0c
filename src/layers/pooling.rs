//! Pooling and upsampling layers (channels-last, with a `data_format` option).
//!
//! Pooling is written with reshapes and reductions whose gradients candle computes correctly (its
//! own `max_pool2d` backward scales gradients and misplaces them on odd sizes). Windows that reach
//! past the input with "same" padding are padded with `-inf` for max and excluded from the count
//! for average, as Keras does.

use candle_core::{DType, Tensor};

use super::conv::{DataFormat, Padding};
use super::{Layer, unique_name};
use crate::{Error, Result};

fn to_nhwc(x: &Tensor, f: DataFormat) -> Result<Tensor> {
    Ok(match f {
        DataFormat::ChannelsLast => x.clone(),
        DataFormat::ChannelsFirst => x.permute((0, 2, 3, 1))?,
    })
}

fn from_nhwc(x: &Tensor, f: DataFormat) -> Result<Tensor> {
    Ok(match f {
        DataFormat::ChannelsLast => x.clone(),
        DataFormat::ChannelsFirst => x.permute((0, 3, 1, 2))?,
    })
}

fn check_rank4(layer: &str, x: &Tensor) -> Result<()> {
    if x.rank() != 4 {
        return Err(Error::value(format!(
            "Input 0 of layer \"{layer}\" is incompatible with the layer: expected ndim=4 (batch, height, width, channels), found ndim={}. Full shape received: {:?}",
            x.rank(),
            x.dims()
        )));
    }
    Ok(())
}

fn hw_of(shape: &[usize], f: DataFormat, layer: &str) -> Result<(usize, usize, usize)> {
    if shape.len() != 3 {
        return Err(Error::value(format!(
            "layer \"{layer}\" expects inputs of rank 4 (batch, height, width, channels); received rank {}",
            shape.len() + 1
        )));
    }
    Ok(match f {
        DataFormat::ChannelsLast => (shape[0], shape[1], shape[2]),
        DataFormat::ChannelsFirst => (shape[1], shape[2], shape[0]),
    })
}

fn out_len(input: usize, pool: usize, stride: usize, padding: Padding) -> usize {
    match padding {
        Padding::Valid => {
            if input < pool {
                0
            } else {
                (input - pool) / stride + 1
            }
        }
        Padding::Same => input.div_ceil(stride),
    }
}

/// The windows of a max pooling over an `(n, h, w, c)` input, as the CPU kernel takes them.
pub(crate) fn max_pool_geometry(
    (n, h, w, c): (usize, usize, usize, usize),
    spec: PoolFusion,
) -> Result<crate::kernels::pool::PoolGeometry> {
    let PoolFusion {
        pool,
        strides,
        padding,
    } = spec;
    let (oh, ow) = (
        out_len(h, pool.0, strides.0, padding),
        out_len(w, pool.1, strides.1, padding),
    );
    if oh == 0 || ow == 0 {
        return Err(Error::value(format!(
            "pooling window {pool:?} is larger than the input ({h}x{w}) with \"valid\" padding"
        )));
    }
    let need_h = (oh - 1) * strides.0 + pool.0;
    let need_w = (ow - 1) * strides.1 + pool.1;
    let (pt, pl) = match padding {
        Padding::Same => (need_h.saturating_sub(h) / 2, need_w.saturating_sub(w) / 2),
        Padding::Valid => (0, 0),
    };
    Ok(crate::kernels::pool::PoolGeometry {
        n,
        h,
        w,
        c,
        ph: pool.0,
        pw: pool.1,
        sh: strides.0,
        sw: strides.1,
        pt,
        pl,
        oh,
        ow,
    })
}

/// A channels-last max pooling that the layer before it may take into its own op (see
/// [`Layer::as_max_pool`]). Opaque: only ferrokeras's layers read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolFusion {
    pub(crate) pool: (usize, usize),
    pub(crate) strides: (usize, usize),
    pub(crate) padding: Padding,
}

/// Max or average over non-overlapping or overlapping windows of an NHWC tensor.
fn pool_nhwc(
    x: &Tensor,
    pool: (usize, usize),
    strides: (usize, usize),
    padding: Padding,
    max: bool,
) -> Result<Tensor> {
    pool_nhwc_with(x, pool, strides, padding, max, true)
}

/// [`pool_nhwc`]; `own_kernel` false keeps candle's ops for max pooling on the CPU too (the
/// reference the kernel is tested against).
fn pool_nhwc_with(
    x: &Tensor,
    pool: (usize, usize),
    strides: (usize, usize),
    padding: Padding,
    max: bool,
    own_kernel: bool,
) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (oh, ow) = (
        out_len(h, pool.0, strides.0, padding),
        out_len(w, pool.1, strides.1, padding),
    );
    if oh == 0 || ow == 0 {
        return Err(Error::value(format!(
            "pooling window {pool:?} is larger than the input ({h}x{w}) with \"valid\" padding"
        )));
    }
    // Padding so that every window lies inside the (padded) input.
    let need_h = (oh - 1) * strides.0 + pool.0;
    let need_w = (ow - 1) * strides.1 + pool.1;
    let (pt, pl) = match padding {
        Padding::Same => (need_h.saturating_sub(h) / 2, need_w.saturating_sub(w) / 2),
        Padding::Valid => (0, 0),
    };
    if own_kernel && max && crate::kernels::takes(x) {
        let g = crate::kernels::pool::PoolGeometry {
            n,
            h,
            w,
            c,
            ph: pool.0,
            pw: pool.1,
            sh: strides.0,
            sw: strides.1,
            pt,
            pl,
            oh,
            ow,
        };
        return Ok(x
            .contiguous()?
            .apply_op1(crate::kernels::pool::MaxPool::new(g))?);
    }
    if x.elem_count() == 0 {
        // No values (an empty batch, or no channels): the output has none either, and candle's
        // reductions refuse empty tensors.
        return Ok(Tensor::zeros((n, oh, ow, c), x.dtype(), x.device())?);
    }
    let pb = need_h.saturating_sub(h + pt);
    let pr = need_w.saturating_sub(w + pl);
    let pad = |t: &Tensor, axis: usize, before: usize, after: usize, fill: f64| -> Result<Tensor> {
        if before == 0 && after == 0 {
            return Ok(t.clone());
        }
        let mut parts = Vec::new();
        let mut shape = t.dims().to_vec();
        if before > 0 {
            shape[axis] = before;
            parts.push(Tensor::full(fill as f32, shape.clone(), t.device())?);
        }
        parts.push(t.clone());
        if after > 0 {
            shape[axis] = after;
            parts.push(Tensor::full(fill as f32, shape.clone(), t.device())?);
        }
        Ok(Tensor::cat(&parts, axis)?)
    };
    let fill = if max { f64::NEG_INFINITY } else { 0.0 };
    let xp = pad(&pad(x, 1, pt, pb, fill)?, 2, pl, pr, fill)?;
    // (contiguous: candle's index_select needs it)
    let xp = xp
        .narrow(1, 0, need_h)?
        .narrow(2, 0, need_w)?
        .contiguous()?;
    // Overlapping windows: each window offset as a strided selection `(n, oh, ow, c, 1)`, in
    // row-major order within the window.
    let offsets = || -> Result<Vec<Tensor>> {
        let mut views = Vec::with_capacity(pool.0 * pool.1);
        for i in 0..pool.0 {
            for j in 0..pool.1 {
                let rows: Vec<u32> = (0..oh).map(|r| (r * strides.0 + i) as u32).collect();
                let cols: Vec<u32> = (0..ow).map(|q| (q * strides.1 + j) as u32).collect();
                let rows = Tensor::new(rows.as_slice(), x.device())?;
                let cols = Tensor::new(cols.as_slice(), x.device())?;
                views.push(
                    xp.index_select(&rows, 1)?
                        .index_select(&cols, 2)?
                        .unsqueeze(4)?,
                );
            }
        }
        Ok(views)
    };
    let pooled = if max {
        // Every window along a last axis, then its first largest element: `gather` sends the
        // gradient to that one element, as Keras does when a window has tied maxima (the gradient
        // of a `max` reduction would go in full to each of them).
        let windows = if strides == pool {
            xp.reshape((n, oh, pool.0, ow, pool.1, c))?
                .permute((0, 1, 3, 5, 2, 4))?
                .reshape((n, oh, ow, c, pool.0 * pool.1))?
        } else {
            Tensor::cat(&offsets()?, 4)?
        };
        // The first maximum of each window (Keras's choice among ties, which decides where the
        // gradient goes): argmax over the window of `is_max * (k - offset)`, whose largest value
        // is unique, since devices' argmax kernels may return any of several equal maxima.
        let k = windows.dim(4)?;
        let rank: Vec<f32> = (0..k).map(|i| (k - i) as f32).collect();
        let rank = Tensor::from_vec(rank, k, windows.device())?.to_dtype(windows.dtype())?;
        let is_max = windows
            .broadcast_eq(&windows.max_keepdim(4)?)?
            .to_dtype(windows.dtype())?;
        let first_max = is_max.broadcast_mul(&rank)?.argmax_keepdim(4)?;
        windows.gather(&first_max, 4)?.squeeze(4)?
    } else if strides == pool {
        // Non-overlapping windows: one reshape, two reductions.
        xp.reshape((n, oh, pool.0, ow, pool.1, c))?
            .sum_keepdim(4)?
            .sum_keepdim(2)?
            .reshape((n, oh, ow, c))?
    } else {
        // Overlapping windows: the sum of the window offsets.
        let mut acc: Option<Tensor> = None;
        for v in offsets()? {
            acc = Some(match acc {
                None => v,
                Some(a) => (a + v)?,
            });
        }
        acc.ok_or_else(|| Error::value("empty pooling window"))?
            .squeeze(4)?
    };
    if max {
        return Ok(pooled);
    }
    // Average: divide by the number of real (unpadded) elements in each window.
    let counts = pool_counts(pool, strides, (pt, pl), (h, w), (oh, ow));
    let counts = Tensor::from_vec(counts, (1, oh, ow, 1), x.device())?.to_dtype(pooled.dtype())?;
    Ok(pooled.broadcast_div(&counts)?)
}

/// The number of real (unpadded) input elements in each pooling window (at least 1), computed
/// from the geometry on the host: nothing is read back from the device.
fn pool_counts(
    pool: (usize, usize),
    strides: (usize, usize),
    (pt, pl): (usize, usize),
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    // Real elements along one axis in the window starting at `start` (padded coordinates).
    let real = |start: usize, size: usize, before: usize, len: usize| {
        let lo = start.max(before);
        let hi = (start + size).min(before + len);
        hi.saturating_sub(lo)
    };
    let mut counts = Vec::with_capacity(oh * ow);
    for r in 0..oh {
        let rows = real(r * strides.0, pool.0, pt, h);
        for q in 0..ow {
            let cols = real(q * strides.1, pool.1, pl, w);
            counts.push((rows * cols).max(1) as f32);
        }
    }
    counts
}

macro_rules! pool_layer {
    ($(#[$doc:meta])* $ty:ident, $prefix:expr, $class:expr, $max:expr) => {
        $(#[$doc])*
        pub struct $ty {
            name: String,
            pool: (usize, usize),
            strides: Option<(usize, usize)>,
            padding: Padding,
            data_format: DataFormat,
        }
        impl $ty {
            /// A pooling layer over `pool_size` windows; strides default to the pool size.
            pub fn new(pool_size: (usize, usize)) -> Self {
                Self { name: unique_name($prefix), pool: pool_size, strides: None, padding: Padding::Valid, data_format: DataFormat::ChannelsLast }
            }
            /// Window strides.
            pub fn strides(mut self, s: (usize, usize)) -> Self {
                self.strides = Some(s);
                self
            }
            /// `"valid"` or `"same"`.
            ///
            /// # Errors
            /// Another string.
            pub fn padding(mut self, p: &str) -> Result<Self> {
                self.padding = p.parse()?;
                Ok(self)
            }
            /// Channels-last (default) or channels-first.
            pub fn data_format(mut self, f: DataFormat) -> Self {
                self.data_format = f;
                self
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
            fn strides_or_pool(&self) -> (usize, usize) {
                self.strides.unwrap_or(self.pool)
            }
            /// The strides, once pool size and strides are known to be positive.
            fn checked_strides(&self) -> Result<(usize, usize)> {
                let s = self.strides_or_pool();
                if self.pool.0 == 0 || self.pool.1 == 0 || s.0 == 0 || s.1 == 0 {
                    return Err(Error::value(format!(
                        "layer \"{}\": pool_size and strides must be >= 1; received pool_size={:?}, strides={s:?}; pass positive sizes, e.g. ({}, {})",
                        self.name, self.pool, self.pool.0.max(1), self.pool.1.max(1)
                    )));
                }
                Ok(s)
            }
        }
        impl Layer for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn class_name(&self) -> &str {
                $class
            }
            fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
                check_rank4(&self.name, x)?;
                let s = self.checked_strides()?;
                let xt = to_nhwc(&x.to_dtype(DType::F32)?, self.data_format)?;
                let y = pool_nhwc(&xt, self.pool, s, self.padding, $max)?;
                from_nhwc(&y, self.data_format)
            }
            fn as_max_pool(&self) -> Option<PoolFusion> {
                let s = self.strides_or_pool();
                ($max
                    && self.data_format == DataFormat::ChannelsLast
                    && self.pool.0 > 0
                    && self.pool.1 > 0
                    && s.0 > 0
                    && s.1 > 0)
                    .then_some(PoolFusion {
                        pool: self.pool,
                        strides: s,
                        padding: self.padding,
                    })
            }
            fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
                let (h, w, c) = hw_of(input_shape, self.data_format, &self.name)?;
                let s = self.checked_strides()?;
                let (oh, ow) = (out_len(h, self.pool.0, s.0, self.padding), out_len(w, self.pool.1, s.1, self.padding));
                if oh == 0 || ow == 0 {
                    return Err(Error::value(format!("layer \"{}\": pool size {:?} is larger than the input ({h}x{w})", self.name, self.pool)));
                }
                Ok(match self.data_format {
                    DataFormat::ChannelsLast => vec![oh, ow, c],
                    DataFormat::ChannelsFirst => vec![c, oh, ow],
                })
            }
            fn config(&self) -> Option<serde_json::Value> {
                Some(serde_json::json!({
                    "name": self.name,
                    "pool_size": [self.pool.0, self.pool.1],
                    "strides": self.strides.map(|s| [s.0, s.1]),
                    "padding": super::config::padding_json(self.padding),
                    "data_format": super::config::data_format_json(self.data_format),
                }))
            }
        }
    };
}

pool_layer!(
    /// Keras's `layers.MaxPooling2D`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, MaxPooling2D};
    /// let x = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((1, 4, 4, 1)).unwrap();
    /// let y = MaxPooling2D::new((2, 2)).call(&x, false).unwrap();
    /// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5.0, 7.0, 13.0, 15.0]);
    /// ```
    MaxPooling2D, "max_pooling2d", "MaxPooling2D", true
);
pool_layer!(
    /// Keras's `layers.AveragePooling2D`.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{AveragePooling2D, Layer};
    /// let x = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((1, 4, 4, 1)).unwrap();
    /// let y = AveragePooling2D::new((2, 2)).call(&x, false).unwrap();
    /// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.5, 4.5, 10.5, 12.5]);
    /// ```
    AveragePooling2D, "average_pooling2d", "AveragePooling2D", false
);

/// The maximum over axis 1 of `(n, h*w, c)`, with Keras's gradient: split evenly between tied
/// maxima (the gradient of candle's `max` goes in full to each of them).
/// The mean over the positions of `(n, positions, channels)`: our CPU kernel where it takes
/// the tensor, else candle's `mean`.
fn global_mean(flat: &Tensor) -> Result<Tensor> {
    let (n, p, c) = flat.dims3()?;
    if crate::kernels::takes(flat) && p > 0 {
        return Ok(flat
            .contiguous()?
            .apply_op1(crate::kernels::pool::GlobalMean { n, p, c })?);
    }
    Ok(flat.mean(1)?)
}

fn global_max(flat: &Tensor) -> Result<Tensor> {
    global_max_with(flat, true)
}

/// [`global_max`], with our CPU kernel where `own_kernel` allows (else candle's ops).
fn global_max_with(flat: &Tensor, own_kernel: bool) -> Result<Tensor> {
    let (n, p, c) = flat.dims3()?;
    if own_kernel && crate::kernels::takes(flat) && p > 0 {
        return Ok(flat
            .contiguous()?
            .apply_op1(crate::kernels::pool::GlobalMax { n, p, c })?);
    }
    if flat.elem_count() == 0 {
        // Nothing to pool (no positions gives Keras's -inf, as the kernel; no rows or channels
        // gives no values); candle's reductions refuse empty tensors.
        let fill = if p == 0 { f32::NEG_INFINITY } else { 0.0 };
        return Ok(Tensor::full(fill, (n, c), flat.device())?.to_dtype(flat.dtype())?);
    }
    // One node of the graph (`tape::node`): the maximum, and a gradient split evenly between
    // the positions that hold it (infinite maxima included).
    let xd = flat.detach();
    let m = xd.max_keepdim(1)?;
    let value = m.squeeze(1)?;
    crate::tape::node(&[flat], &value, move |g, _, _| {
        let hits = xd.broadcast_eq(&m)?.to_dtype(xd.dtype())?;
        let share = g.unsqueeze(1)?.div(&hits.sum_keepdim(1)?)?;
        Ok(vec![Some(hits.broadcast_mul(&share)?)])
    })
}

macro_rules! global_pool {
    ($(#[$doc:meta])* $ty:ident, $prefix:expr, $class:expr, $max:expr) => {
        $(#[$doc])*
        pub struct $ty {
            name: String,
            data_format: DataFormat,
        }
        impl $ty {
            /// A global pooling layer.
            pub fn new() -> Self {
                Self { name: unique_name($prefix), data_format: DataFormat::ChannelsLast }
            }
            /// Channels-last (default) or channels-first.
            pub fn data_format(mut self, f: DataFormat) -> Self {
                self.data_format = f;
                self
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
        }
        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Layer for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn class_name(&self) -> &str {
                $class
            }
            fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
                check_rank4(&self.name, x)?;
                let xt = to_nhwc(x, self.data_format)?;
                let (n, h, w, c) = xt.dims4()?;
                let flat = xt.reshape((n, h * w, c))?;
                if $max { global_max(&flat) } else { global_mean(&flat) }
            }
            fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
                let (_, _, c) = hw_of(input_shape, self.data_format, &self.name)?;
                Ok(vec![c])
            }
            fn config(&self) -> Option<serde_json::Value> {
                Some(serde_json::json!({
                    "name": self.name,
                    "data_format": super::config::data_format_json(self.data_format),
                }))
            }
        }
    };
}

global_pool!(
    /// Keras's `layers.GlobalMaxPooling2D`: the maximum over height and width.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{GlobalMaxPooling2D, Layer};
    /// let x = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap().reshape((1, 2, 2, 2)).unwrap();
    /// let y = GlobalMaxPooling2D::new().call(&x, false).unwrap();
    /// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![6.0, 7.0]]);
    /// ```
    GlobalMaxPooling2D, "global_max_pooling2d", "GlobalMaxPooling2D", true
);
global_pool!(
    /// Keras's `layers.GlobalAveragePooling2D`: the mean over height and width.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{GlobalAveragePooling2D, Layer};
    /// let x = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap().reshape((1, 2, 2, 2)).unwrap();
    /// let y = GlobalAveragePooling2D::new().call(&x, false).unwrap();
    /// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3.0, 4.0]]);
    /// ```
    GlobalAveragePooling2D, "global_average_pooling2d", "GlobalAveragePooling2D", false
);

macro_rules! pool_layer_1d {
    ($(#[$doc:meta])* $ty:ident, $inner:ident, $prefix:expr, $class:expr) => {
        $(#[$doc])*
        pub struct $ty {
            name: String,
            pool: usize,
            strides: Option<usize>,
            padding: Padding,
            data_format: DataFormat,
        }
        impl $ty {
            /// A pooling layer over windows of `pool_size` steps; strides default to the pool
            /// size.
            pub fn new(pool_size: usize) -> Self {
                Self {
                    name: unique_name($prefix),
                    pool: pool_size,
                    strides: None,
                    padding: Padding::Valid,
                    data_format: DataFormat::ChannelsLast,
                }
            }
            /// The step between windows.
            pub fn strides(mut self, s: usize) -> Self {
                self.strides = Some(s);
                self
            }
            /// `"valid"` or `"same"`.
            ///
            /// # Errors
            /// Another string.
            pub fn padding(mut self, p: &str) -> Result<Self> {
                self.padding = p.parse()?;
                Ok(self)
            }
            /// Channels-last (default: `(batch, steps, features)`) or channels-first.
            pub fn data_format(mut self, f: DataFormat) -> Self {
                self.data_format = f;
                self
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
            /// The same pooling over one-row images (the 2-D layer does the work; built
            /// directly, so that no layer name is drawn).
            fn as_2d(&self) -> $inner {
                $inner {
                    name: self.name.clone(),
                    pool: (1, self.pool),
                    strides: Some((1, self.strides.unwrap_or(self.pool))),
                    padding: self.padding,
                    data_format: self.data_format,
                }
            }
            /// The axis a row of one is added at: before the steps.
            fn row_axis(&self) -> usize {
                match self.data_format {
                    DataFormat::ChannelsLast => 1,
                    DataFormat::ChannelsFirst => 2,
                }
            }
        }
        impl Layer for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn class_name(&self) -> &str {
                $class
            }
            fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
                if x.rank() != 3 {
                    return Err(Error::value(format!(
                        "Input 0 of layer \"{}\" is incompatible with the layer: expected ndim=3 (batch, steps, features), found ndim={}. Full shape received: {:?}",
                        self.name,
                        x.rank(),
                        x.dims()
                    )));
                }
                let axis = self.row_axis();
                let y = self.as_2d().call(&x.unsqueeze(axis)?, training)?;
                Ok(y.squeeze(axis)?)
            }
            fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
                if input_shape.len() != 2 {
                    return Err(Error::value(format!(
                        "layer \"{}\" needs inputs of shape (batch, steps, features); received (None, {input_shape:?})",
                        self.name
                    )));
                }
                let axis = self.row_axis() - 1;
                let mut shape = input_shape.to_vec();
                shape.insert(axis, 1);
                let mut out = self.as_2d().compute_output_shape(&shape)?;
                out.remove(axis);
                Ok(out)
            }
            fn config(&self) -> Option<serde_json::Value> {
                let padding = match self.padding {
                    Padding::Valid => "valid",
                    Padding::Same => "same",
                };
                Some(serde_json::json!({
                    "name": self.name,
                    "pool_size": [self.pool],
                    "strides": [self.strides.unwrap_or(self.pool)],
                    "padding": padding,
                    "data_format": super::config::data_format_json(self.data_format),
                }))
            }
        }
    };
}

pool_layer_1d!(
    /// Keras's `layers.MaxPooling1D`: the maximum of each window of steps.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{Layer, MaxPooling1D};
    /// let x = Tensor::new(&[[[1f32], [4.0], [2.0], [3.0], [9.0]]], &Device::Cpu).unwrap();
    /// let y = MaxPooling1D::new(2).call(&x, false).unwrap();
    /// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![4.0, 3.0]);
    /// ```
    MaxPooling1D, MaxPooling2D, "max_pooling1d", "MaxPooling1D"
);
pool_layer_1d!(
    /// Keras's `layers.AveragePooling1D`: the mean of each window of steps ("same" padding
    /// averages only the steps inside).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{AveragePooling1D, Layer};
    /// let x = Tensor::new(&[[[1f32], [4.0], [2.0], [3.0], [9.0]]], &Device::Cpu).unwrap();
    /// let y = AveragePooling1D::new(2).padding("same").unwrap().call(&x, false).unwrap();
    /// assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![2.5, 2.5, 9.0]);
    /// ```
    AveragePooling1D, AveragePooling2D, "average_pooling1d", "AveragePooling1D"
);

macro_rules! global_pool_1d {
    ($(#[$doc:meta])* $ty:ident, $prefix:expr, $class:expr, $max:expr) => {
        $(#[$doc])*
        pub struct $ty {
            name: String,
            data_format: DataFormat,
        }
        impl $ty {
            /// A global pooling layer over the steps of `(batch, steps, features)` inputs.
            pub fn new() -> Self {
                Self { name: unique_name($prefix), data_format: DataFormat::ChannelsLast }
            }
            /// Channels-last (default: `(batch, steps, features)`) or channels-first
            /// (`(batch, features, steps)`).
            pub fn data_format(mut self, f: DataFormat) -> Self {
                self.data_format = f;
                self
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
        }
        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Layer for $ty {
            fn name(&self) -> &str {
                &self.name
            }
            fn class_name(&self) -> &str {
                $class
            }
            fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
                if x.rank() != 3 {
                    return Err(Error::value(format!(
                        "Input 0 of layer \"{}\" is incompatible with the layer: expected ndim=3 (batch, steps, features), found ndim={}. Full shape received: {:?}",
                        self.name,
                        x.rank(),
                        x.dims()
                    )));
                }
                let flat = match self.data_format {
                    DataFormat::ChannelsLast => x.clone(),
                    DataFormat::ChannelsFirst => x.transpose(1, 2)?,
                };
                if $max { global_max(&flat) } else { global_mean(&flat) }
            }
            /// Keras's average over the unmasked steps only (a max ignores the mask, as Keras's).
            fn call_masked(
                &mut self,
                x: &Tensor,
                mask: Option<&Tensor>,
                training: bool,
            ) -> Result<Tensor> {
                let (Some(m), false, 3) = (mask, $max, x.rank()) else {
                    return self.call(x, training);
                };
                let flat = match self.data_format {
                    DataFormat::ChannelsLast => x.clone(),
                    DataFormat::ChannelsFirst => x.transpose(1, 2)?,
                };
                let m = m.to_dtype(flat.dtype())?.unsqueeze(2)?;
                Ok(flat.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?)
            }
            fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
                match (input_shape, self.data_format) {
                    ([_, c], DataFormat::ChannelsLast) | ([c, _], DataFormat::ChannelsFirst) => {
                        Ok(vec![*c])
                    }
                    _ => Err(Error::value(format!(
                        "layer \"{}\" needs inputs of shape (batch, steps, features); received (None, {input_shape:?})",
                        self.name
                    ))),
                }
            }
            fn config(&self) -> Option<serde_json::Value> {
                Some(serde_json::json!({
                    "name": self.name,
                    "data_format": super::config::data_format_json(self.data_format),
                    "keepdims": false,
                }))
            }
        }
    };
}

global_pool_1d!(
    /// Keras's `layers.GlobalMaxPooling1D`: the maximum over the steps (a gradient split
    /// evenly between tied maxima, as Keras's).
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{GlobalMaxPooling1D, Layer};
    /// let x = Tensor::new(&[[[1f32, 5.0], [3.0, 2.0]]], &Device::Cpu).unwrap();
    /// let y = GlobalMaxPooling1D::new().call(&x, false).unwrap();
    /// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![3.0, 5.0]]);
    /// ```
    GlobalMaxPooling1D, "global_max_pooling1d", "GlobalMaxPooling1D", true
);
global_pool_1d!(
    /// Keras's `layers.GlobalAveragePooling1D`: the mean over the steps.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use ferrokeras::layers::{GlobalAveragePooling1D, Layer};
    /// let x = Tensor::new(&[[[1f32, 5.0], [3.0, 2.0]]], &Device::Cpu).unwrap();
    /// let y = GlobalAveragePooling1D::new().call(&x, false).unwrap();
    /// assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![2.0, 3.5]]);
    /// ```
    GlobalAveragePooling1D, "global_average_pooling1d", "GlobalAveragePooling1D", false
);

/// Keras's `layers.UpSampling2D` (nearest neighbour): repeats rows and columns.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, UpSampling2D};
/// let x = Tensor::ones((1, 2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
/// assert_eq!(UpSampling2D::new((2, 2)).call(&x, false).unwrap().dims(), &[1, 4, 6, 4]);
/// ```
pub struct UpSampling2D {
    name: String,
    size: (usize, usize),
    data_format: DataFormat,
}

impl UpSampling2D {
    /// Upsampling by `size` (rows, columns).
    pub fn new(size: (usize, usize)) -> Self {
        Self {
            name: unique_name("up_sampling2d"),
            size,
            data_format: DataFormat::ChannelsLast,
        }
    }
    /// Channels-last (default) or channels-first.
    pub fn data_format(mut self, f: DataFormat) -> Self {
        self.data_format = f;
        self
    }
    /// Overrides the generated name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        crate::layers::rename(&mut self.name, name.into());
        self
    }
}

impl Layer for UpSampling2D {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "UpSampling2D"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> Result<Tensor> {
        check_rank4(&self.name, x)?;
        let xt = to_nhwc(x, self.data_format)?;
        let (n, h, w, c) = xt.dims4()?;
        let (sh, sw) = self.size;
        let y = xt
            .reshape((n, h, 1, w, 1, c))?
            .broadcast_as((n, h, sh, w, sw, c))?
            .contiguous()?
            .reshape((n, h * sh, w * sw, c))?;
        from_nhwc(&y, self.data_format)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        let (h, w, c) = hw_of(input_shape, self.data_format, &self.name)?;
        Ok(match self.data_format {
            DataFormat::ChannelsLast => vec![h * self.size.0, w * self.size.1, c],
            DataFormat::ChannelsFirst => vec![c, h * self.size.0, w * self.size.1],
        })
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({
            "name": self.name,
            "size": [self.size.0, self.size.1],
            "data_format": super::config::data_format_json(self.data_format),
            "interpolation": "nearest",
        }))
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::GradientTape;
    use crate::kernels::max_rel;
    use crate::tape::Variable;
    use candle_core::Device;

    #[test]
    fn max_pool_kernel_matches_candle_values_and_gradients() {
        let dev = Device::Cpu;
        for (h, w, c, pool, strides, padding) in [
            (4, 4, 3, (2, 2), (2, 2), Padding::Valid),
            (5, 7, 2, (2, 2), (2, 2), Padding::Valid),
            (5, 7, 2, (2, 2), (2, 2), Padding::Same),
            (6, 5, 4, (3, 3), (1, 1), Padding::Same),
            (6, 5, 1, (3, 2), (2, 1), Padding::Valid),
            (7, 7, 5, (3, 3), (2, 2), Padding::Same),
            (26, 26, 32, (2, 2), (2, 2), Padding::Valid),
            // Strides larger than the windows (inputs in no window) and non-square windows.
            (7, 8, 3, (2, 2), (3, 3), Padding::Valid),
            (5, 9, 1, (2, 3), (2, 3), Padding::Same),
            (6, 9, 2, (2, 2), (3, 2), Padding::Same),
        ] {
            // Rounded values, so that windows hold tied maxima.
            let x = (crate::kernels::fixed_randn(2.0, (3, h, w, c), &dev).unwrap())
                .round()
                .unwrap();
            let xv = Variable::new("x", &x, true).unwrap();
            let ours = pool_nhwc_with(xv.as_tensor(), pool, strides, padding, true, true).unwrap();
            let theirs =
                pool_nhwc_with(xv.as_tensor(), pool, strides, padding, true, false).unwrap();
            let case = format!("{h}x{w}x{c} {pool:?} {strides:?} {padding:?}");
            assert_eq!(ours.dims(), theirs.dims(), "{case}");
            assert!(max_rel(&ours, &theirs) < 1e-6, "forward {case}");
            let up = crate::kernels::fixed_randn(1.0, ours.dims(), &dev).unwrap();
            let g1 = GradientTape::gradient(
                &(&ours * &up).unwrap().sum_all().unwrap(),
                std::slice::from_ref(&xv),
            )
            .unwrap();
            let g2 = GradientTape::gradient(
                &(&theirs * &up).unwrap().sum_all().unwrap(),
                std::slice::from_ref(&xv),
            )
            .unwrap();
            assert!(max_rel(&g1[0], &g2[0]) < 1e-6, "gradient {case}");
        }
    }

    #[test]
    fn global_max_kernel_matches_candle_values_and_split_gradients() {
        let dev = Device::Cpu;
        for (n, p, c) in [(1, 1, 1), (3, 4, 5), (2, 49, 128), (4, 9, 17), (5, 1, 3)] {
            // Rounded values, so that columns hold tied maxima (the gradient is split evenly).
            let x = (crate::kernels::fixed_randn(1.5, (n, p, c), &dev).unwrap())
                .round()
                .unwrap();
            let xv = Variable::new("x", &x, true).unwrap();
            let ours = global_max_with(xv.as_tensor(), true).unwrap();
            let theirs = global_max_with(xv.as_tensor(), false).unwrap();
            let case = format!("{n}x{p}x{c}");
            assert_eq!(ours.dims(), &[n, c], "{case}");
            assert!(max_rel(&ours, &theirs) < 1e-6, "forward {case}");
            let up = crate::kernels::fixed_randn(1.0, (n, c), &dev).unwrap();
            let grad = |y: &Tensor| {
                GradientTape::gradient(
                    &(y * &up).unwrap().sum_all().unwrap(),
                    std::slice::from_ref(&xv),
                )
                .unwrap()
                .remove(0)
            };
            assert!(
                max_rel(&grad(&ours), &grad(&theirs)) < 1e-6,
                "gradient {case}"
            );
        }
        // Three tied maxima in one column share its gradient; infinities are maxima too.
        let x = Tensor::new(
            &[[
                [2f32, f32::NEG_INFINITY],
                [2.0, f32::INFINITY],
                [1.0, 0.0],
                [2.0, f32::INFINITY],
            ]],
            &dev,
        )
        .unwrap();
        let xv = Variable::new("x", &x, true).unwrap();
        for own_kernel in [true, false] {
            let y = global_max_with(xv.as_tensor(), own_kernel).unwrap();
            assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![2.0, f32::INFINITY]]);
            let up = Tensor::new(&[[3f32, 1.0]], &dev).unwrap();
            let g = GradientTape::gradient(
                &(&y * &up).unwrap().sum_all().unwrap(),
                std::slice::from_ref(&xv),
            )
            .unwrap();
            assert_eq!(
                g[0].to_vec3::<f32>().unwrap(),
                vec![vec![
                    vec![1.0, 0.0],
                    vec![1.0, 0.5],
                    vec![0.0, 0.0],
                    vec![1.0, 0.5]
                ]],
                "own kernel: {own_kernel}"
            );
        }
        // A NaN shows in the result (a diverging model stays visible).
        let x = Tensor::new(&[[[1f32], [f32::NAN], [3.0]]], &dev).unwrap();
        let y = global_max_with(&x, true).unwrap();
        assert!(y.to_vec2::<f32>().unwrap()[0][0].is_nan());
    }
}
