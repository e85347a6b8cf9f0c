//! Keras's affine image augmentations, `RandomRotation`, `RandomTranslation` and `RandomZoom`:
//! in training, each image is resampled through a random affine map of its own (bilinear or
//! nearest, the outside filled by reflection, wrapping, the nearest pixel or a constant); at
//! inference the images pass unchanged. And its colour ones, `RandomContrast` and
//! `RandomBrightness` (one draw per image, the values clipped to the value range).
//!
//! The resampling is Keras's on JAX (`ops.image.affine_transform`, `jax.scipy.ndimage
//! .map_coordinates`), value for value: the source of output pixel `(y, x)` is
//! `(b0 x + b1 y + b2, a0 x + a1 y + a2)`, its neighbours weighted as there, outside ones fixed by
//! the fill mode's index rule (or, for a constant, taking `fill_value`). Built from a gather of
//! the source pixels and weighted sums, so it is differentiated and runs on every device.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};

use super::{DataFormat, Layer, unique_name};
use crate::{Error, Result};

/// How points outside the image are filled (Keras's `fill_mode`).
///
/// ```
/// use ferrokeras::layers::FillMode;
/// let m: FillMode = "wrap".parse().unwrap();
/// assert_eq!(m, FillMode::Wrap);
/// assert!("mirror".parse::<FillMode>().unwrap_err().to_string().contains("reflect"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillMode {
    /// `d c b a | a b c d | d c b a`: reflected about the edge of the last pixel (Keras's default).
    Reflect,
    /// `a b c d | a b c d | a b c d`: wrapped around to the opposite edge.
    Wrap,
    /// `k k k k | a b c d | k k k k`: the constant `fill_value`.
    Constant,
    /// `a a a a | a b c d | d d d d`: the nearest pixel.
    Nearest,
}

impl FillMode {
    fn name(self) -> &'static str {
        match self {
            FillMode::Reflect => "reflect",
            FillMode::Wrap => "wrap",
            FillMode::Constant => "constant",
            FillMode::Nearest => "nearest",
        }
    }

    /// JAX's index rule for an index `i` of an axis of `size` (`None` outside, for a constant).
    fn fix(self, i: i64, size: i64) -> Option<i64> {
        match self {
            FillMode::Constant => (0..size).contains(&i).then_some(i),
            FillMode::Nearest => Some(i.clamp(0, size - 1)),
            FillMode::Wrap => Some(i.rem_euclid(size)),
            FillMode::Reflect => {
                // floor((mirror(2i + 1, 2 size + 1) - 1) / 2), mirror(j, n) = |(j + s) mod 2s - s|
                // with s = n - 1.
                let s = 2 * size;
                let m = ((2 * i + 1 + s).rem_euclid(2 * s) - s).abs();
                Some((m - 1).div_euclid(2))
            }
        }
    }
}

impl std::str::FromStr for FillMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "reflect" => Ok(FillMode::Reflect),
            "wrap" => Ok(FillMode::Wrap),
            "constant" => Ok(FillMode::Constant),
            "nearest" => Ok(FillMode::Nearest),
            other => Err(Error::value(format!(
                "unknown `fill_mode` {other:?}; expected one of \"reflect\", \"wrap\", \"constant\", \"nearest\""
            ))),
        }
    }
}

/// How the image is sampled between pixels (Keras's `interpolation`).
///
/// ```
/// use ferrokeras::layers::Interpolation;
/// assert_eq!("nearest".parse::<Interpolation>().unwrap(), Interpolation::Nearest);
/// assert!("bicubic".parse::<Interpolation>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// The nearest pixel (halves rounded away from zero).
    Nearest,
    /// The four neighbours, weighted by distance (Keras's default).
    Bilinear,
}

impl Interpolation {
    fn name(self) -> &'static str {
        match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Bilinear => "bilinear",
        }
    }
}

impl std::str::FromStr for Interpolation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "nearest" => Ok(Interpolation::Nearest),
            "bilinear" => Ok(Interpolation::Bilinear),
            other => Err(Error::value(format!(
                "unknown `interpolation` {other:?}; expected \"nearest\" or \"bilinear\""
            ))),
        }
    }
}

/// The nodes of one coordinate: JAX's `(index, weight)` pairs.
fn nodes(coord: f32, interp: Interpolation) -> ([(i64, f32); 2], usize) {
    match interp {
        Interpolation::Nearest => ([(coord.round() as i64, 1.0), (0, 0.0)], 1),
        Interpolation::Bilinear => {
            let lower = coord.floor();
            let upper_w = coord - lower;
            let i = lower as i64;
            ([(i, 1.0 - upper_w), (i + 1, upper_w)], 2)
        }
    }
}

/// Resamples `x (n, h, w, c)` (channels last) through one affine map per image, `[a0, a1, a2,
/// b0, b1, b2]`: output pixel `(y, x)` reads the input at `(b0 x + b1 y + b2, a0 x + a1 y + a2)`.
pub(crate) fn affine_transform(
    x: &Tensor,
    maps: &[[f32; 6]],
    interp: Interpolation,
    fill: FillMode,
    fill_value: f32,
) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    if maps.len() != n {
        return Err(Error::value(format!(
            "affine transform: {} maps for {n} images",
            maps.len()
        )));
    }
    let rows = n * h * w;
    if rows == 0 || c == 0 {
        return Ok(x.clone());
    }
    // Images outside any recorded graph (a model's input) on our CPU kernels: one pass, in
    // parallel over the images (the gather below is about ten passes over the batch).
    if crate::kernels::takes(x) && !x.track_op() {
        let src = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let out = resample_cpu(&src, (n, h, w, c), maps, interp, fill, fill_value);
        return Ok(Tensor::from_vec(out, (n, h, w, c), x.device())?);
    }
    let terms = match interp {
        Interpolation::Nearest => 1,
        Interpolation::Bilinear => 4,
    };
    // Per term: the source row, its weight, whether it is inside (a constant fill's outside).
    let mut idx = vec![vec![0u32; rows]; terms];
    let mut wts = vec![vec![0f32; rows]; terms];
    let mut inside = vec![vec![1u8; rows]; terms];
    let (hi, wi) = (h as i64, w as i64);
    for (b, m) in maps.iter().enumerate() {
        let [a0, a1, a2, b0, b1, b2] = *m;
        for yo in 0..h {
            for xo in 0..w {
                let (yf, xf) = (yo as f32, xo as f32);
                // As JAX computes them: the index vector times the matrix, then the offset.
                let ys = yf * b1 + xf * b0 + b2;
                let xs = yf * a1 + xf * a0 + a2;
                let r = (b * h + yo) * w + xo;
                let (yn, ny) = nodes(ys, interp);
                let (xn, nx) = nodes(xs, interp);
                let mut t = 0;
                for &(iy, wy) in &yn[..ny] {
                    for &(ix, wx) in &xn[..nx] {
                        match (fill.fix(iy, hi), fill.fix(ix, wi)) {
                            (Some(y), Some(x)) => {
                                idx[t][r] = ((b as i64 * hi + y) * wi + x) as u32;
                            }
                            _ => inside[t][r] = 0,
                        }
                        wts[t][r] = wy * wx;
                        t += 1;
                    }
                }
            }
        }
    }
    let dev = x.device();
    let src = x.reshape((rows, c))?;
    let constant = Tensor::full(fill_value, (rows, c), dev)?.to_dtype(x.dtype())?;
    let mut out: Option<Tensor> = None;
    for t in 0..terms {
        let i = Tensor::from_vec(std::mem::take(&mut idx[t]), rows, dev)?;
        let mut v = src.index_select(&i, 0)?;
        if fill == FillMode::Constant {
            let ok = Tensor::from_vec(std::mem::take(&mut inside[t]), (rows, 1), dev)?
                .broadcast_as((rows, c))?;
            v = ok.where_cond(&v, &constant)?;
        }
        let wt =
            Tensor::from_vec(std::mem::take(&mut wts[t]), (rows, 1), dev)?.to_dtype(x.dtype())?;
        let term = v.broadcast_mul(&wt)?;
        out = Some(match out {
            None => term,
            Some(o) => (o + term)?,
        });
    }
    let out = out.ok_or_else(|| Error::state("affine transform: no terms"))?;
    Ok(out.reshape((n, h, w, c))?)
}

/// [`affine_transform`]'s arithmetic on host values, image by image in parallel: each output
/// value is the sum, in JAX's order, of each neighbour's weight times its value (or the fill
/// value, outside with a constant fill).
fn resample_cpu(
    src: &[f32],
    (n, h, w, c): (usize, usize, usize, usize),
    maps: &[[f32; 6]],
    interp: Interpolation,
    fill: FillMode,
    fill_value: f32,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; n * h * w * c];
    let (hi, wi) = (h as i64, w as i64);
    let image = h * w * c;
    out.par_chunks_mut(image)
        .zip(src.par_chunks(image))
        .zip(maps.par_iter())
        .for_each(|((dst, img), m)| {
            let [a0, a1, a2, b0, b1, b2] = *m;
            for yo in 0..h {
                for xo in 0..w {
                    let (yf, xf) = (yo as f32, xo as f32);
                    let ys = yf * b1 + xf * b0 + b2;
                    let xs = yf * a1 + xf * a0 + a2;
                    let (yn, ny) = nodes(ys, interp);
                    let (xn, nx) = nodes(xs, interp);
                    let o = &mut dst[(yo * w + xo) * c..(yo * w + xo + 1) * c];
                    let mut first = true;
                    for &(iy, wy) in &yn[..ny] {
                        for &(ix, wx) in &xn[..nx] {
                            let wt = wy * wx;
                            let at = match (fill.fix(iy, hi), fill.fix(ix, wi)) {
                                (Some(y), Some(x)) => Some((y as usize * w + x as usize) * c),
                                _ => None,
                            };
                            for (ch, v) in o.iter_mut().enumerate() {
                                let s = at.map_or(fill_value, |a| img[a + ch]);
                                let term = s * wt;
                                *v = if first { term } else { *v + term };
                            }
                            first = false;
                        }
                    }
                }
            }
        });
    out
}

/// A uniform draw in `[lo, hi)` from the layer's generator (`seed`), or the global one.
fn uniform(seed: &mut Option<(u64, rand::rngs::StdRng)>, lo: f32, hi: f32) -> f32 {
    let u: f32 = match seed {
        Some((_, g)) => g.r#gen(),
        None => crate::random::rng().r#gen(),
    };
    lo + (hi - lo) * u
}

/// `(height, width)` of a batch of images in `format`, checked to be rank 4.
fn image_size(layer: &str, class: &str, format: DataFormat, x: &Tensor) -> Result<(usize, usize)> {
    if x.rank() != 4 {
        return Err(Error::value(format!(
            "layer \"{layer}\" ({class}) expects a batch of images ({}); received shape {:?}",
            match format {
                DataFormat::ChannelsLast => "batch, height, width, channels",
                DataFormat::ChannelsFirst => "batch, channels, height, width",
            },
            x.dims()
        )));
    }
    let d = x.dims();
    Ok(match format {
        DataFormat::ChannelsLast => (d[1], d[2]),
        DataFormat::ChannelsFirst => (d[2], d[3]),
    })
}

/// What the three layers share: the fill, the interpolation, the layout and the generator.
#[derive(Clone)]
struct Resampling {
    fill_mode: FillMode,
    fill_value: f32,
    interpolation: Interpolation,
    data_format: DataFormat,
    /// Keras's `seed`, and the generator it starts; without one, the global generator.
    seed: Option<(u64, rand::rngs::StdRng)>,
}

impl Resampling {
    fn new() -> Self {
        Self {
            fill_mode: FillMode::Reflect,
            fill_value: 0.0,
            interpolation: Interpolation::Bilinear,
            data_format: DataFormat::ChannelsLast,
            seed: None,
        }
    }

    /// A uniform draw in `[lo, hi)`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        uniform(&mut self.seed, lo, hi)
    }

    /// `(height, width)` of a batch of images, checked to be rank 4.
    fn size(&self, layer: &str, class: &str, x: &Tensor) -> Result<(usize, usize)> {
        image_size(layer, class, self.data_format, x)
    }

    /// `x` resampled through `maps` (one per image), in the input's layout and as floats.
    fn apply(&self, x: &Tensor, maps: &[[f32; 6]]) -> Result<Tensor> {
        let x = crate::ops::to_float(x)?;
        let nhwc = match self.data_format {
            DataFormat::ChannelsLast => x,
            DataFormat::ChannelsFirst => x.permute((0, 2, 3, 1))?.contiguous()?,
        };
        let y = affine_transform(
            &nhwc,
            maps,
            self.interpolation,
            self.fill_mode,
            self.fill_value,
        )?;
        Ok(match self.data_format {
            DataFormat::ChannelsLast => y,
            DataFormat::ChannelsFirst => y.permute((0, 3, 1, 2))?.contiguous()?,
        })
    }

    fn config(&self, name: &str) -> serde_json::Map<String, serde_json::Value> {
        let v = serde_json::json!({
            "name": name,
            "data_format": super::config::data_format_json(self.data_format),
            "fill_mode": self.fill_mode.name(),
            "fill_value": super::config::f32_json(self.fill_value),
            "interpolation": self.interpolation.name(),
            "seed": self.seed.as_ref().map(|(s, _)| *s),
        });
        match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

/// Keras's factor rule: a number `f` gives `[-|f|, |f|]`, a pair its sorted bounds; each within
/// `bounds`.
fn factor_range(what: &str, lo: f32, hi: f32, bounds: (f32, f32)) -> Result<(f32, f32)> {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if !(lo.is_finite() && hi.is_finite()) || lo < bounds.0 || hi > bounds.1 {
        return Err(Error::value(format!(
            "`{what}` must be within [{}, {}]; received ({lo}, {hi})",
            bounds.0, bounds.1
        )));
    }
    Ok((lo, hi))
}

macro_rules! resampling_builders {
    ($ty:ident) => {
        impl $ty {
            /// How points outside the image are filled (default [`FillMode::Reflect`]).
            pub fn fill_mode(mut self, m: FillMode) -> Self {
                self.r.fill_mode = m;
                self
            }
            /// The value of [`FillMode::Constant`] (default 0).
            pub fn fill_value(mut self, v: f32) -> Self {
                self.r.fill_value = v;
                self
            }
            /// How the image is sampled (default [`Interpolation::Bilinear`]).
            pub fn interpolation(mut self, i: Interpolation) -> Self {
                self.r.interpolation = i;
                self
            }
            /// Where the channel axis is (default channels last).
            pub fn data_format(mut self, f: DataFormat) -> Self {
                self.r.data_format = f;
                self
            }
            /// A seed of its own: the same seed gives the same draws.
            pub fn seed(mut self, seed: u64) -> Self {
                self.r.seed = Some((seed, rand::rngs::StdRng::seed_from_u64(seed)));
                self
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
        }
    };
}

/// Keras's `layers.RandomRotation`: in training, each image turned about its centre by an
/// angle drawn uniformly from `factor` (fractions of a full turn; positive is counter-clockwise).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{FillMode, Layer, RandomRotation};
/// // A quarter turn, exactly (both bounds 0.25): the top row becomes the left column.
/// let mut turn = RandomRotation::new(0.25).unwrap().factor_range(0.25, 0.25).unwrap();
/// let x = Tensor::arange(0f32, 4.0, &Device::Cpu).unwrap().reshape((1, 2, 2, 1)).unwrap();
/// assert_eq!(turn.call(&x, false).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), [0.0, 1.0, 2.0, 3.0]);
/// let y = turn.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// let rounded: Vec<f32> = y.iter().map(|v| v.round()).collect();
/// assert_eq!(rounded, [1.0, 3.0, 0.0, 2.0]);
/// ```
pub struct RandomRotation {
    name: String,
    factor: (f32, f32),
    r: Resampling,
}

resampling_builders!(RandomRotation);

impl RandomRotation {
    /// Angles in `[-|factor|, |factor|]` of a full turn (`factor` within [-1, 1]).
    ///
    /// # Errors
    /// A factor outside [-1, 1].
    pub fn new(factor: f32) -> Result<Self> {
        let f = factor.abs();
        Ok(Self {
            name: unique_name("random_rotation"),
            factor: factor_range("factor", -f, f, (-1.0, 1.0))?,
            r: Resampling::new(),
        })
    }
    /// Angles in `[lo, hi]` of a full turn (Keras's pair of bounds).
    ///
    /// # Errors
    /// Bounds outside [-1, 1].
    pub fn factor_range(mut self, lo: f32, hi: f32) -> Result<Self> {
        self.factor = factor_range("factor", lo, hi, (-1.0, 1.0))?;
        Ok(self)
    }
}

impl Layer for RandomRotation {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "RandomRotation"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        let (h, w) = self.r.size(&self.name, "RandomRotation", x)?;
        if !training {
            return Ok(x.clone());
        }
        let (lo, hi) = (self.factor.0 * 360.0, self.factor.1 * 360.0);
        let maps: Vec<[f32; 6]> = (0..x.dims()[0])
            .map(|_| {
                let angle = self.r.uniform(lo, hi) * (std::f32::consts::PI / 180.0);
                let (cx, cy) = (0.5 * (w as f32 - 1.0), 0.5 * (h as f32 - 1.0));
                let (cos, sin) = (angle.cos(), angle.sin());
                // Keras's `_compute_affine_matrix` with no translation, shear or scaling.
                let (a0, a1) = (cos, -sin);
                let (b0, b1) = (sin, cos);
                [
                    a0,
                    a1,
                    cx - cx * a0 - cy * a1,
                    b0,
                    b1,
                    cy - cx * b0 - cy * b1,
                ]
            })
            .collect();
        self.r.apply(x, &maps)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        let mut m = self.r.config(&self.name);
        m.insert(
            "factor".into(),
            serde_json::json!([
                super::config::f32_json(self.factor.0),
                super::config::f32_json(self.factor.1)
            ]),
        );
        Some(serde_json::Value::Object(m))
    }
}

/// Keras's `layers.RandomTranslation`: in training, each image shifted by fractions of its
/// height and width drawn uniformly from `height_factor` and `width_factor` (positive: down and
/// right).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{FillMode, Layer, RandomTranslation};
/// // Half the width to the right, exactly, the outside filled with zeros.
/// let mut shift = RandomTranslation::new(0.0, 0.0).unwrap()
///     .width_range(0.5, 0.5).unwrap().fill_mode(FillMode::Constant);
/// let x = Tensor::new(&[[[[1f32], [2.0], [3.0], [4.0]]]], &Device::Cpu).unwrap(); // 1x4
/// let y = shift.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(y, [0.0, 0.0, 1.0, 2.0]);
/// ```
pub struct RandomTranslation {
    name: String,
    height: (f32, f32),
    width: (f32, f32),
    r: Resampling,
}

resampling_builders!(RandomTranslation);

impl RandomTranslation {
    /// Shifts in `[-|height_factor|, |height_factor|]` of the height and likewise for the width
    /// (each within [-1, 1]).
    ///
    /// # Errors
    /// A factor outside [-1, 1].
    pub fn new(height_factor: f32, width_factor: f32) -> Result<Self> {
        let (h, w) = (height_factor.abs(), width_factor.abs());
        Ok(Self {
            name: unique_name("random_translation"),
            height: factor_range("height_factor", -h, h, (-1.0, 1.0))?,
            width: factor_range("width_factor", -w, w, (-1.0, 1.0))?,
            r: Resampling::new(),
        })
    }
    /// Vertical shifts in `[lo, hi]` of the height.
    ///
    /// # Errors
    /// Bounds outside [-1, 1].
    pub fn height_range(mut self, lo: f32, hi: f32) -> Result<Self> {
        self.height = factor_range("height_factor", lo, hi, (-1.0, 1.0))?;
        Ok(self)
    }
    /// Horizontal shifts in `[lo, hi]` of the width.
    ///
    /// # Errors
    /// Bounds outside [-1, 1].
    pub fn width_range(mut self, lo: f32, hi: f32) -> Result<Self> {
        self.width = factor_range("width_factor", lo, hi, (-1.0, 1.0))?;
        Ok(self)
    }
}

impl Layer for RandomTranslation {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "RandomTranslation"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        let (h, w) = self.r.size(&self.name, "RandomTranslation", x)?;
        if !training {
            return Ok(x.clone());
        }
        let n = x.dims()[0];
        // Keras draws every image's height shift, then every image's width shift.
        let dy: Vec<f32> = (0..n)
            .map(|_| self.r.uniform(self.height.0, self.height.1) * h as f32)
            .collect();
        let dx: Vec<f32> = (0..n)
            .map(|_| self.r.uniform(self.width.0, self.width.1) * w as f32)
            .collect();
        let maps: Vec<[f32; 6]> = dy
            .iter()
            .zip(&dx)
            .map(|(&dy, &dx)| [1.0, 0.0, -dx, 0.0, 1.0, -dy])
            .collect();
        self.r.apply(x, &maps)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        let mut m = self.r.config(&self.name);
        let pair = |(a, b): (f32, f32)| {
            serde_json::json!([super::config::f32_json(a), super::config::f32_json(b)])
        };
        m.insert("height_factor".into(), pair(self.height));
        m.insert("width_factor".into(), pair(self.width));
        Some(serde_json::Value::Object(m))
    }
}

/// Keras's `layers.RandomZoom`: in training, each image scaled about its centre. A draw `z` from
/// `height_factor` reads the image over `1 + z` of its height: positive values zoom out,
/// negative ones in. Without a width factor the width is scaled by the same draw.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, RandomZoom};
/// // Reading half the image (zoom in by 2), exactly.
/// let mut zoom = RandomZoom::new(0.5).unwrap().height_range(-0.5, -0.5).unwrap();
/// let x = Tensor::new(&[[[[0f32], [0.0], [0.0]], [[0.0], [9.0], [0.0]], [[0.0], [0.0], [0.0]]]], &Device::Cpu).unwrap();
/// let y = zoom.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(y[4], 9.0); // the centre stays
/// assert_eq!(y[0], 2.25); // a corner reads halfway to the centre
/// ```
pub struct RandomZoom {
    name: String,
    height: (f32, f32),
    width: Option<(f32, f32)>,
    r: Resampling,
}

resampling_builders!(RandomZoom);

impl RandomZoom {
    /// Zooms in `[-|height_factor|, |height_factor|]`, the width by the same draw
    /// (`height_factor` within (-1, 1]).
    ///
    /// # Errors
    /// A factor outside (-1, 1].
    pub fn new(height_factor: f32) -> Result<Self> {
        let h = height_factor.abs();
        Ok(Self {
            name: unique_name("random_zoom"),
            height: zoom_range("height_factor", -h, h)?,
            width: None,
            r: Resampling::new(),
        })
    }
    /// Height zooms in `[lo, hi]`.
    ///
    /// # Errors
    /// Bounds outside (-1, 1].
    pub fn height_range(mut self, lo: f32, hi: f32) -> Result<Self> {
        self.height = zoom_range("height_factor", lo, hi)?;
        Ok(self)
    }
    /// Width zooms of their own, in `[lo, hi]` (Keras's `width_factor`).
    ///
    /// # Errors
    /// Bounds outside (-1, 1].
    pub fn width_range(mut self, lo: f32, hi: f32) -> Result<Self> {
        self.width = Some(zoom_range("width_factor", lo, hi)?);
        Ok(self)
    }
}

/// Keras's zoom bounds: within (-1, 1] (a zoom of -1 would read a single point).
fn zoom_range(what: &str, lo: f32, hi: f32) -> Result<(f32, f32)> {
    let (lo, hi) = factor_range(what, lo, hi, (-1.0, 1.0))?;
    if lo <= -1.0 {
        return Err(Error::value(format!(
            "`{what}` must be within (-1, 1]; received ({lo}, {hi})"
        )));
    }
    Ok((lo, hi))
}

impl Layer for RandomZoom {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "RandomZoom"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        let (h, w) = self.r.size(&self.name, "RandomZoom", x)?;
        if !training {
            return Ok(x.clone());
        }
        let n = x.dims()[0];
        let zy: Vec<f32> = (0..n)
            .map(|_| 1.0 + self.r.uniform(self.height.0, self.height.1))
            .collect();
        let zx: Vec<f32> = match self.width {
            Some((lo, hi)) => (0..n).map(|_| 1.0 + self.r.uniform(lo, hi)).collect(),
            None => zy.clone(),
        };
        let maps: Vec<[f32; 6]> = zy
            .iter()
            .zip(&zx)
            .map(|(&zy, &zx)| {
                let x_off = ((w as f32 - 1.0) / 2.0) * (1.0 - zx);
                let y_off = ((h as f32 - 1.0) / 2.0) * (1.0 - zy);
                [zx, 0.0, x_off, 0.0, zy, y_off]
            })
            .collect();
        self.r.apply(x, &maps)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        let mut m = self.r.config(&self.name);
        let pair = |(a, b): (f32, f32)| {
            serde_json::json!([super::config::f32_json(a), super::config::f32_json(b)])
        };
        m.insert("height_factor".into(), pair(self.height));
        m.insert(
            "width_factor".into(),
            self.width.map_or(serde_json::Value::Null, pair),
        );
        Some(serde_json::Value::Object(m))
    }
}

/// What [`RandomContrast`] and [`RandomBrightness`] share: the factor's bounds, the value range
/// the outputs are clipped to, the layout and the generator.
#[derive(Clone)]
struct ColorShift {
    factor: (f32, f32),
    value_range: (f32, f32),
    data_format: DataFormat,
    seed: Option<(u64, rand::rngs::StdRng)>,
}

impl ColorShift {
    /// One draw per image, `(n, 1, 1, 1)` of `x`'s dtype, from `lo + (hi - lo) u`.
    fn draws(&mut self, x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
        let n = x.dims()[0];
        let v: Vec<f32> = (0..n).map(|_| uniform(&mut self.seed, lo, hi)).collect();
        Ok(Tensor::from_vec(v, (n, 1, 1, 1), x.device())?.to_dtype(x.dtype())?)
    }

    fn check(&self, layer: &str, class: &str, x: &Tensor) -> Result<()> {
        image_size(layer, class, self.data_format, x).map(|_| ())
    }

    fn config(&self, name: &str) -> serde_json::Value {
        let f = super::config::f32_json;
        serde_json::json!({
            "name": name,
            "data_format": super::config::data_format_json(self.data_format),
            "factor": [f(self.factor.0), f(self.factor.1)],
            "value_range": [f(self.value_range.0), f(self.value_range.1)],
            "seed": self.seed.as_ref().map(|(s, _)| *s),
        })
    }
}

macro_rules! color_builders {
    ($ty:ident) => {
        impl $ty {
            /// The range of the pixel values: outputs are clipped to it (default `(0, 255)`).
            ///
            /// # Errors
            /// A bound that is not finite.
            pub fn value_range(mut self, lo: f32, hi: f32) -> Result<Self> {
                if !(lo.is_finite() && hi.is_finite()) {
                    return Err(Error::value(format!(
                        "`value_range` must be two finite numbers; received ({lo}, {hi})"
                    )));
                }
                self.c.value_range = if lo <= hi { (lo, hi) } else { (hi, lo) };
                Ok(self)
            }
            /// Where the channel axis is (default channels last).
            pub fn data_format(mut self, f: DataFormat) -> Self {
                self.c.data_format = f;
                self
            }
            /// A seed of its own: the same seed gives the same draws.
            pub fn seed(mut self, seed: u64) -> Self {
                self.c.seed = Some((seed, rand::rngs::StdRng::seed_from_u64(seed)));
                self
            }
            /// Overrides the generated name.
            pub fn named(mut self, name: impl Into<String>) -> Self {
                crate::layers::rename(&mut self.name, name.into());
                self
            }
        }
    };
}

/// Keras's `layers.RandomContrast`: in training, each image's values moved away from (or toward)
/// their per-channel mean by a factor drawn from `[1 - lower, 1 + upper]`, then clipped to the
/// value range. As in Keras 3, a single number `f` gives the bounds `(0, f)`: factors from 1 to
/// `1 + f`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, RandomContrast};
/// // Both bounds give a factor of 2 exactly: (-1, 1) → [1 - (-1), 1 + 1].
/// let mut c = RandomContrast::new(0.5).unwrap().factor_range(-1.0, 1.0).unwrap();
/// let x = Tensor::new(&[[[[10f32], [20.0]]]], &Device::Cpu).unwrap(); // mean 15
/// let y = c.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(y, [5.0, 25.0]);
/// ```
pub struct RandomContrast {
    name: String,
    c: ColorShift,
}

color_builders!(RandomContrast);

impl RandomContrast {
    /// Factors in `[1, 1 + factor]` (Keras's bounds `(0, factor)`, `factor` within [0, 1]).
    ///
    /// # Errors
    /// A factor outside [0, 1].
    pub fn new(factor: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&factor) {
            return Err(Error::value(format!(
                "`factor` must be within [0, 1]; received {factor}"
            )));
        }
        Ok(Self {
            name: unique_name("random_contrast"),
            c: ColorShift {
                factor: (0.0, factor),
                value_range: (0.0, 255.0),
                data_format: DataFormat::ChannelsLast,
                seed: None,
            },
        })
    }
    /// Keras's pair of bounds `(lower, upper)`: factors in `[1 - lower, 1 + upper]` (the first
    /// at most 1, the second at least 0, as given; then sorted).
    ///
    /// # Errors
    /// Bounds outside those limits.
    pub fn factor_range(mut self, a: f32, b: f32) -> Result<Self> {
        // Keras's checks, on the pair as given (then sorted).
        if !(a.is_finite() && b.is_finite()) || a > 1.0 || b < 0.0 {
            return Err(Error::value(format!(
                "`factor` must be a pair within [0, 1] (the first at most 1, the second at least 0); received ({a}, {b})"
            )));
        }
        self.c.factor = if a <= b { (a, b) } else { (b, a) };
        Ok(self)
    }
}

impl Layer for RandomContrast {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "RandomContrast"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.c.check(&self.name, "RandomContrast", x)?;
        if !training {
            return Ok(x.clone());
        }
        let x = crate::ops::to_float(x)?;
        let (lo, hi) = (1.0 - self.c.factor.0, 1.0 + self.c.factor.1);
        let f = self.c.draws(&x, lo, hi)?;
        let (h_axis, w_axis) = match self.c.data_format {
            DataFormat::ChannelsLast => (1, 2),
            DataFormat::ChannelsFirst => (2, 3),
        };
        // Keras's mean: over the height, then over the width.
        let mean = x.mean_keepdim(h_axis)?.mean_keepdim(w_axis)?;
        let y = x
            .broadcast_sub(&mean)?
            .broadcast_mul(&f)?
            .broadcast_add(&mean)?;
        let (a, b) = self.c.value_range;
        Ok(y.clamp(a, b)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(self.c.config(&self.name))
    }
}

/// Keras's `layers.RandomBrightness`: in training, each image shifted by a value drawn from
/// `factor` (a fraction of the value range, in [-1, 1]) times the range's width, then clipped
/// to the value range.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use ferrokeras::layers::{Layer, RandomBrightness};
/// // A tenth of the range [0, 255] added, exactly.
/// let mut b = RandomBrightness::new(0.1).unwrap().factor_range(0.1, 0.1).unwrap();
/// let x = Tensor::new(&[[[[10f32], [250.0]]]], &Device::Cpu).unwrap();
/// let y = b.call(&x, true).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
/// assert_eq!(y, [35.5, 255.0]); // the second clipped
/// ```
pub struct RandomBrightness {
    name: String,
    c: ColorShift,
}

color_builders!(RandomBrightness);

impl RandomBrightness {
    /// Shifts in `[-|factor|, |factor|]` of the value range (`factor` within [-1, 1]).
    ///
    /// # Errors
    /// A factor outside [-1, 1].
    pub fn new(factor: f32) -> Result<Self> {
        let f = factor.abs();
        Ok(Self {
            name: unique_name("random_brightness"),
            c: ColorShift {
                factor: factor_range("factor", -f, f, (-1.0, 1.0))?,
                value_range: (0.0, 255.0),
                data_format: DataFormat::ChannelsLast,
                seed: None,
            },
        })
    }
    /// Shifts in `[lo, hi]` of the value range (Keras's pair of bounds).
    ///
    /// # Errors
    /// Bounds outside [-1, 1].
    pub fn factor_range(mut self, lo: f32, hi: f32) -> Result<Self> {
        self.c.factor = factor_range("factor", lo, hi, (-1.0, 1.0))?;
        Ok(self)
    }
}

impl Layer for RandomBrightness {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "RandomBrightness"
    }
    fn call(&mut self, x: &Tensor, training: bool) -> Result<Tensor> {
        self.c.check(&self.name, "RandomBrightness", x)?;
        if !training {
            return Ok(x.clone());
        }
        let x = crate::ops::to_float(x)?;
        let (a, b) = self.c.value_range;
        let (lo, hi) = self.c.factor;
        // Keras: the draw, then times the range's width.
        let delta = (self.c.draws(&x, lo, hi)? * f64::from(b - a))?;
        Ok(x.broadcast_add(&delta)?.clamp(a, b)?)
    }
    fn compute_output_shape(&self, input_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(input_shape.to_vec())
    }
    fn config(&self) -> Option<serde_json::Value> {
        Some(self.c.config(&self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JAX's index rules, against the patterns Keras documents for an axis of 4 pixels.
    /// The one-pass CPU resampling (plain images) and the gather (images in a recorded graph)
    /// give the same values, for every fill mode and interpolation.
    #[test]
    fn both_resampling_paths_agree() {
        let dev = candle_core::Device::Cpu;
        let x = crate::kernels::fixed_randn(1.0, (2, 5, 6, 3), &dev).unwrap();
        let tracked = crate::tape::Variable::new("x", &x, true).unwrap();
        let maps = [
            [0.8, -0.6, 2.1, 0.6, 0.8, -0.9],
            [1.3, 0.0, -1.7, 0.0, 0.7, 2.2],
        ];
        for fill in [
            FillMode::Reflect,
            FillMode::Wrap,
            FillMode::Constant,
            FillMode::Nearest,
        ] {
            for interp in [Interpolation::Bilinear, Interpolation::Nearest] {
                let a = affine_transform(&x, &maps, interp, fill, 0.5).unwrap();
                let b = affine_transform(tracked.as_tensor(), &maps, interp, fill, 0.5).unwrap();
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{fill:?} {interp:?}");
            }
        }
    }

    #[test]
    fn fill_modes_follow_the_documented_patterns() {
        let seq = |m: FillMode| -> Vec<Option<i64>> { (-4..8).map(|i| m.fix(i, 4)).collect() };
        let some = |v: &[i64]| v.iter().map(|&i| Some(i)).collect::<Vec<_>>();
        // d c b a | a b c d | d c b a
        assert_eq!(
            seq(FillMode::Reflect),
            some(&[3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0])
        );
        // a b c d | a b c d | a b c d
        assert_eq!(
            seq(FillMode::Wrap),
            some(&[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
        );
        // a a a a | a b c d | d d d d
        assert_eq!(
            seq(FillMode::Nearest),
            some(&[0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3])
        );
        let c = seq(FillMode::Constant);
        assert!(c[..4].iter().all(Option::is_none) && c[8..].iter().all(Option::is_none));
        assert_eq!(&c[4..8], some(&[0, 1, 2, 3]).as_slice());
    }
}
