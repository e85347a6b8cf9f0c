//! Training curves: a PNG of a [`History`], one panel per metric, training and validation
//! curves in the same panel (what a Keras user draws with matplotlib after `fit`).
//!
//! The image is drawn by this module (anti-aliased lines, an embedded 8×8 bitmap font), so
//! nothing is needed at run time: no font file, no plotting library.

use std::path::Path;

use crate::callbacks::History;
use crate::{Error, Result};

/// Layout of [`plot_history_with`]: the size of one panel and how many panels per row.
///
/// ```
/// use ferrokeras::plot::PlotOptions;
/// let o = PlotOptions::new().panel_size(400, 300).columns(3);
/// // 4 panels in rows of 3: 2 rows.
/// assert_eq!(o.image_size(4), (1200, 600));
/// assert_eq!(PlotOptions::new().image_size(3), (960, 640));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlotOptions {
    /// Width of one panel in pixels (at least 200).
    pub panel_width: u32,
    /// Height of one panel in pixels (at least 150).
    pub panel_height: u32,
    /// Panels per row (at least 1); fewer when there are fewer panels.
    pub columns: usize,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            panel_width: 480,
            panel_height: 320,
            columns: 2,
        }
    }
}

impl PlotOptions {
    /// 480×320 panels, 2 per row.
    pub fn new() -> Self {
        Self::default()
    }
    /// The size of one panel.
    pub fn panel_size(mut self, width: u32, height: u32) -> Self {
        self.panel_width = width;
        self.panel_height = height;
        self
    }
    /// Panels per row.
    pub fn columns(mut self, n: usize) -> Self {
        self.columns = n;
        self
    }
    /// `(width, height)` of the image for `panels` panels.
    pub fn image_size(&self, panels: usize) -> (u32, u32) {
        let (cols, rows) = self.grid(panels);
        (
            self.panel_width
                .saturating_mul(u32::try_from(cols).unwrap_or(u32::MAX)),
            self.panel_height
                .saturating_mul(u32::try_from(rows).unwrap_or(u32::MAX)),
        )
    }
    fn grid(&self, panels: usize) -> (usize, usize) {
        let cols = self.columns.max(1).min(panels.max(1));
        (cols, panels.max(1).div_ceil(cols))
    }
    fn check(&self) -> Result<()> {
        if self.panel_width < 200 || self.panel_height < 150 || self.columns == 0 {
            return Err(Error::value(format!(
                "plot_history: panels must be at least 200x150 pixels and `columns` at least 1. Received: panel_size=({}, {}), columns={}",
                self.panel_width, self.panel_height, self.columns
            )));
        }
        if self.panel_width > MAX_SIDE || self.panel_height > MAX_SIDE {
            return Err(Error::value(format!(
                "plot_history: panels must be at most {MAX_SIDE}x{MAX_SIDE} pixels. Received: panel_size=({}, {})",
                self.panel_width, self.panel_height
            )));
        }
        Ok(())
    }
}

/// The largest side of a panel, and of the whole image, in pixels.
const MAX_SIDE: u32 = 16384;

/// The metrics [`plot_history`] draws, one panel each, in order: `loss` first, then the other
/// training keys alphabetically, then `val_` keys that have no training counterpart (by their
/// name without the prefix).
///
/// ```
/// use ferrokeras::callbacks::History;
/// let mut h = History::new();
/// for k in ["mae", "loss", "val_loss", "val_mae", "val_auc"] {
///     h.history.insert(k.into(), vec![1.0]);
/// }
/// assert_eq!(ferrokeras::plot::panel_names(&h), ["loss", "mae", "auc"]);
/// ```
pub fn panel_names(history: &History) -> Vec<String> {
    let has = |k: &str| history.history.get(k).is_some_and(|v| !v.is_empty());
    let mut names: Vec<String> = history
        .history
        .keys()
        .filter(|k| !k.starts_with("val_") && has(k))
        .cloned()
        .collect();
    names.sort_by_key(|k| (k != "loss", k.clone()));
    for k in history.history.keys() {
        if let Some(base) = k.strip_prefix("val_")
            && has(k)
            && !names.iter().any(|n| n == base)
        {
            names.push(base.to_string());
        }
    }
    names
}

/// Writes a PNG of the training curves of `history`: one panel per metric (see [`panel_names`]),
/// the training values in blue and the `val_` values in orange, epoch on the x axis, the metric's
/// name as the panel's title and a legend. Uses [`PlotOptions::default`] (480×320 panels, 2 per
/// row); the file is written atomically.
///
/// ```no_run
/// use ferrokeras::prelude::*;
/// # fn main() -> ferrokeras::Result<()> {
/// # let mut model = Sequential::new().input(&[3]).add(Dense::new(1))
/// #     .compile(Compile::new().optimizer("adam").loss("mse").metrics(["mae"]))?;
/// # let x = ferrokeras::random::uniform(&[32, 3], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// # let y = ferrokeras::random::uniform(&[32, 1], 0.0, 1.0, &candle_core::Device::Cpu)?;
/// let history = model.fit((x, y), FitOptions::new().epochs(10).validation_split(0.2).verbose(0))?;
/// ferrokeras::plot::plot_history(&history, "training.png")?;
/// // or: history.plot("training.png")?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// An empty history (nothing recorded), or a file that cannot be written.
pub fn plot_history(history: &History, path: impl AsRef<Path>) -> Result<()> {
    plot_history_with(history, path, &PlotOptions::default())
}

/// [`plot_history`] with a layout.
///
/// ```
/// use ferrokeras::callbacks::History;
/// use ferrokeras::plot::{PlotOptions, plot_history_with};
/// # fn main() -> ferrokeras::Result<()> {
/// let mut h = History::new();
/// h.epoch = vec![0, 1, 2];
/// h.history.insert("loss".into(), vec![1.0, 0.6, 0.4]);
/// h.history.insert("val_loss".into(), vec![1.1, 0.8, 0.7]);
/// let path = std::env::temp_dir().join("ferrokeras-doc-plot.png");
/// plot_history_with(&h, &path, &PlotOptions::new().panel_size(320, 240))?;
/// assert!(std::fs::metadata(&path).unwrap().len() > 0);
/// # Ok(()) }
/// ```
///
/// # Errors
/// An empty history, a panel smaller than 200×150, or a file that cannot be written.
pub fn plot_history_with(
    history: &History,
    path: impl AsRef<Path>,
    options: &PlotOptions,
) -> Result<()> {
    options.check()?;
    let names = panel_names(history);
    if names.is_empty() {
        return Err(Error::value(
            "plot_history: the history is empty (no metric has a recorded value); plot the `History` returned by `fit`",
        ));
    }
    let (width, height) = options.image_size(names.len());
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::value(format!(
            "plot_history: {} panels of {}x{} in {} columns make an image of {width}x{height} pixels, more than {MAX_SIDE} on a side; use smaller panels or more columns",
            names.len(),
            options.panel_width,
            options.panel_height,
            options.columns
        )));
    }
    let mut canvas = Canvas::new(width, height);
    let (cols, _) = options.grid(names.len());
    for (i, name) in names.iter().enumerate() {
        let ox = (i % cols) as u32 * options.panel_width;
        let oy = (i / cols) as u32 * options.panel_height;
        let series = series_of(history, name);
        draw_panel(
            &mut canvas,
            Rect {
                x: ox as f64,
                y: oy as f64,
                w: options.panel_width as f64,
                h: options.panel_height as f64,
            },
            name,
            &series,
        );
    }
    crate::io::write_png(path.as_ref(), width, height, 3, &canvas.px)
}

impl History {
    /// Writes a PNG of the training curves: [`plot_history`].
    ///
    /// ```no_run
    /// # fn run(history: ferrokeras::callbacks::History) -> ferrokeras::Result<()> {
    /// history.plot("training.png")?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`plot_history`].
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<()> {
        plot_history(self, path)
    }
}

const TRAIN_COLOR: [u8; 3] = [31, 119, 180];
const VAL_COLOR: [u8; 3] = [255, 127, 14];
const TEXT_COLOR: [u8; 3] = [30, 30, 30];
const AXIS_COLOR: [u8; 3] = [90, 90, 90];
const GRID_COLOR: [u8; 3] = [228, 228, 228];

struct Series {
    label: &'static str,
    color: [u8; 3],
    points: Vec<(f64, f64)>,
}

/// The training and validation series of one panel, with their epochs.
fn series_of(history: &History, name: &str) -> Vec<Series> {
    let mut out = Vec::new();
    let train = history.get(name);
    let epochs_for = |n: usize| -> Vec<f64> {
        if history.epoch.len() == n {
            history.epoch.iter().map(|&e| e as f64).collect()
        } else {
            (0..n).map(|e| e as f64).collect()
        }
    };
    let train_x = epochs_for(train.len());
    if !train.is_empty() {
        out.push(Series {
            label: "train",
            color: TRAIN_COLOR,
            points: train_x.iter().copied().zip(train.iter().copied()).collect(),
        });
    }
    let val = history.get(&format!("val_{name}"));
    if !val.is_empty() {
        let all = if train.is_empty() {
            epochs_for(history.epoch.len().max(val.len()))
        } else {
            train_x
        };
        out.push(Series {
            label: "validation",
            color: VAL_COLOR,
            points: val_epochs(&all, val.len())
                .into_iter()
                .zip(val.iter().copied())
                .collect(),
        });
    }
    out
}

/// The epochs of `n` validation values among `epochs`: all of them when as many, else those of a
/// `validation_freq` that yields exactly `n` (`(epoch + 1) % freq == 0`), else the last `n`.
fn val_epochs(epochs: &[f64], n: usize) -> Vec<f64> {
    if epochs.len() == n {
        return epochs.to_vec();
    }
    for freq in 2..=epochs.len().max(2) {
        let picked: Vec<f64> = epochs
            .iter()
            .copied()
            .filter(|&e| (e as usize + 1).is_multiple_of(freq))
            .collect();
        if picked.len() == n {
            return picked;
        }
    }
    if epochs.len() > n {
        epochs[epochs.len() - n..].to_vec()
    } else {
        (0..n).map(|e| e as f64).collect()
    }
}

#[derive(Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

fn draw_panel(c: &mut Canvas, panel: Rect, title: &str, series: &[Series]) {
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite();
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(finite)
        .collect();
    let (mut x0, mut x1) = min_max(pts.iter().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (mut y0, mut y1) = min_max(pts.iter().map(|p| p.1)).unwrap_or((0.0, 1.0));
    if x1 - x0 < 1.0 {
        x0 -= 0.5;
        x1 += 0.5;
    } else {
        let pad = (x1 - x0) * 0.03;
        x0 -= pad;
        x1 += pad;
    }
    if y1 - y0 <= f64::EPSILON * y0.abs().max(y1.abs()).max(1e-300) * 16.0 {
        let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
        y0 -= pad;
        y1 += pad;
    } else {
        let pad = (y1 - y0) * 0.06;
        y0 -= pad;
        y1 += pad;
    }
    let y_ticks = nice_ticks(y0, y1, ((panel.h - 80.0) / 40.0).clamp(2.0, 8.0) as usize);
    let x_ticks: Vec<f64> =
        nice_ticks(x0, x1, ((panel.w - 100.0) / 60.0).clamp(2.0, 10.0) as usize)
            .into_iter()
            .filter(|t| t.fract() == 0.0)
            .collect();
    let y_step = if y_ticks.len() > 1 {
        y_ticks[1] - y_ticks[0]
    } else {
        (y1 - y0).abs()
    };
    let y_labels: Vec<String> = y_ticks.iter().map(|&t| format_tick(t, y_step)).collect();
    let label_w = y_labels
        .iter()
        .map(|l| text_width(l, 1))
        .fold(0.0, f64::max);

    let plot = Rect {
        x: panel.x + label_w + 16.0,
        y: panel.y + 36.0,
        w: panel.w - label_w - 16.0 - 18.0,
        h: panel.h - 36.0 - 40.0,
    };
    let map_x = |x: f64| plot.x + (x - x0) / (x1 - x0) * plot.w;
    let map_y = |y: f64| plot.y + plot.h - (y - y0) / (y1 - y0) * plot.h;

    // Title, legend.
    c.text(plot.x, panel.y + 12.0, title, 2, TEXT_COLOR);
    let mut lx = panel.x + panel.w - 14.0;
    for s in series.iter().rev() {
        lx -= text_width(s.label, 1);
        c.text(lx, panel.y + 16.0, s.label, 1, TEXT_COLOR);
        lx -= 24.0;
        let mut mask = Mask::new(c.w, c.h);
        mask.segment((lx, panel.y + 19.5), (lx + 18.0, panel.y + 19.5), 1.1);
        mask.disk((lx + 9.0, panel.y + 19.5), 2.6);
        c.paint(&mask, s.color);
        lx -= 14.0;
    }

    // Grid, axes, ticks and their labels.
    for (t, label) in y_ticks.iter().zip(&y_labels) {
        let y = map_y(*t).round();
        if y < plot.y - 0.5 || y > plot.y + plot.h + 0.5 {
            continue;
        }
        c.fill(plot.x, y, plot.w, 1.0, GRID_COLOR);
        c.fill(plot.x - 4.0, y, 4.0, 1.0, AXIS_COLOR);
        c.text(
            plot.x - 7.0 - text_width(label, 1),
            y - 3.5,
            label,
            1,
            TEXT_COLOR,
        );
    }
    let x_step = if x_ticks.len() > 1 {
        x_ticks[1] - x_ticks[0]
    } else {
        1.0
    };
    for t in &x_ticks {
        let x = map_x(*t).round();
        if x < plot.x - 0.5 || x > plot.x + plot.w + 0.5 {
            continue;
        }
        c.fill(x, plot.y, 1.0, plot.h, GRID_COLOR);
        c.fill(x, plot.y + plot.h, 1.0, 4.0, AXIS_COLOR);
        let label = format_tick(*t, x_step);
        c.text(
            x - text_width(&label, 1) / 2.0,
            plot.y + plot.h + 8.0,
            &label,
            1,
            TEXT_COLOR,
        );
    }
    c.stroke_rect(plot, AXIS_COLOR);
    c.text(
        plot.x + plot.w / 2.0 - text_width("epoch", 1) / 2.0,
        plot.y + plot.h + 22.0,
        "epoch",
        1,
        TEXT_COLOR,
    );
    if pts.is_empty() {
        let msg = "no finite value";
        c.text(
            plot.x + plot.w / 2.0 - text_width(msg, 1) / 2.0,
            plot.y + plot.h / 2.0,
            msg,
            1,
            AXIS_COLOR,
        );
        return;
    }

    // Curves: lines between consecutive finite points, markers when there are few points.
    for s in series {
        let mut mask = Mask::new(c.w, c.h);
        let px: Vec<Option<(f64, f64)>> = s
            .points
            .iter()
            .map(|p| finite(p).then(|| (map_x(p.0), map_y(p.1))))
            .collect();
        for w in px.windows(2) {
            if let [Some(a), Some(b)] = w {
                mask.segment(*a, *b, 1.1);
            }
        }
        let markers = s.points.len() <= 60;
        for (i, p) in px.iter().enumerate() {
            let alone =
                (i == 0 || px[i - 1].is_none()) && px.get(i + 1).is_none_or(Option::is_none);
            if let Some(p) = p
                && (markers || alone)
            {
                mask.disk(*p, 2.8);
            }
        }
        mask.clip(plot);
        c.paint(&mask, s.color);
    }
}

fn min_max(it: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    it.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Round tick values (1, 2 or 5 × 10^k apart) inside `[lo, hi]`, about `target` of them.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![lo];
    }
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// A tick label with as many decimals as the step needs; scientific notation for very large or
/// very small values.
fn format_tick(v: f64, step: f64) -> String {
    if v.abs() < step.abs() * 1e-6 {
        return "0".into();
    }
    let a = v.abs();
    if a >= 1e6 || step.abs() < 1e-4 {
        let digits = ((a.log10().floor() - step.abs().log10().floor()).max(0.0) as usize).min(6);
        return format!("{v:.digits$e}");
    }
    let decimals = (-step.abs().log10().floor()).clamp(0.0, 8.0) as usize;
    format!("{v:.decimals$}")
}

fn text_width(s: &str, scale: u32) -> f64 {
    (s.chars().count() * 8 * scale as usize) as f64
}

/// An RGB image.
struct Canvas {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32) -> Self {
        Self {
            w,
            h,
            px: vec![255; w as usize * h as usize * 3],
        }
    }

    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 || alpha <= 0.0 {
            return;
        }
        let i = (y as usize * self.w as usize + x as usize) * 3;
        let a = alpha.min(1.0);
        for (k, &c) in color.iter().enumerate() {
            let old = self.px[i + k] as f32;
            self.px[i + k] = (old + (c as f32 - old) * a).round() as u8;
        }
    }

    fn fill(&mut self, x: f64, y: f64, w: f64, h: f64, color: [u8; 3]) {
        let (x0, y0) = (x.round() as i64, y.round() as i64);
        let (x1, y1) = ((x + w).round() as i64, (y + h).round() as i64);
        for yy in y0..y1.max(y0 + 1) {
            for xx in x0..x1.max(x0 + 1) {
                self.blend(xx, yy, color, 1.0);
            }
        }
    }

    fn stroke_rect(&mut self, r: Rect, color: [u8; 3]) {
        self.fill(r.x, r.y, r.w, 1.0, color);
        self.fill(r.x, r.y + r.h, r.w + 1.0, 1.0, color);
        self.fill(r.x, r.y, 1.0, r.h, color);
        self.fill(r.x + r.w, r.y, 1.0, r.h, color);
    }

    /// Text in the embedded 8×8 font, each font pixel drawn as a `scale`×`scale` square, with its
    /// top-left corner at `(x, y)`. Characters outside ASCII show as `?`.
    fn text(&mut self, x: f64, y: f64, s: &str, scale: u32, color: [u8; 3]) {
        let (x, y, scale) = (x.round() as i64, y.round() as i64, scale as i64);
        for (n, ch) in s.chars().enumerate() {
            let code = if ch.is_ascii() {
                ch as usize
            } else {
                b'?' as usize
            };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.blend(
                                    x + (n as i64 * 8 + col) * scale + dx,
                                    y + row as i64 * scale + dy,
                                    color,
                                    1.0,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn paint(&mut self, mask: &Mask, color: [u8; 3]) {
        for (i, &a) in mask.cov.iter().enumerate() {
            if a > 0.0 {
                let (x, y) = (i % mask.w, i / mask.w);
                self.blend(x as i64, y as i64, color, a);
            }
        }
    }
}

/// Anti-aliased coverage of one shape (the max over its parts, so joints are not darker).
struct Mask {
    w: usize,
    h: usize,
    cov: Vec<f32>,
}

impl Mask {
    fn new(w: u32, h: u32) -> Self {
        Self {
            w: w as usize,
            h: h as usize,
            cov: vec![0.0; w as usize * h as usize],
        }
    }

    /// A round-capped segment of half-width `hw` between two points (pixel centres at +0.5).
    fn segment(&mut self, a: (f64, f64), b: (f64, f64), hw: f64) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        self.cover(a, b, hw, |px, py| {
            let t = if len2 > 0.0 {
                (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
            ((px - cx).powi(2) + (py - cy).powi(2)).sqrt()
        });
    }

    fn disk(&mut self, c: (f64, f64), r: f64) {
        self.cover(c, c, r, |px, py| {
            ((px - c.0).powi(2) + (py - c.1).powi(2)).sqrt()
        });
    }

    fn cover(&mut self, a: (f64, f64), b: (f64, f64), r: f64, dist: impl Fn(f64, f64) -> f64) {
        let x0 = (a.0.min(b.0) - r - 1.0).floor().max(0.0) as usize;
        let y0 = (a.1.min(b.1) - r - 1.0).floor().max(0.0) as usize;
        let x1 = ((a.0.max(b.0) + r + 1.0).ceil().max(0.0) as usize).min(self.w);
        let y1 = ((a.1.max(b.1) + r + 1.0).ceil().max(0.0) as usize).min(self.h);
        for y in y0..y1 {
            for x in x0..x1 {
                let d = dist(x as f64 + 0.5, y as f64 + 0.5);
                let cov = (r + 0.5 - d).clamp(0.0, 1.0) as f32;
                let slot = &mut self.cov[y * self.w + x];
                *slot = slot.max(cov);
            }
        }
    }

    /// Keeps only the pixels inside `r` (plus the stroke's half-width).
    fn clip(&mut self, r: Rect) {
        let (x0, y0) = ((r.x - 3.0).floor(), (r.y - 3.0).floor());
        let (x1, y1) = ((r.x + r.w + 4.0).ceil(), (r.y + r.h + 4.0).ceil());
        for y in 0..self.h {
            for x in 0..self.w {
                let (fx, fy) = (x as f64, y as f64);
                if fx < x0 || fx >= x1 || fy < y0 || fy >= y1 {
                    self.cov[y * self.w + x] = 0.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        let labels: Vec<String> = nice_ticks(0.0, 1.0, 5)
            .iter()
            .map(|&t| format_tick(t, 0.2))
            .collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(nice_ticks(0.0, 9.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(nice_ticks(0.0, 9.0, 4), vec![0.0, 5.0]);
        assert_eq!(format_tick(4.0, 2.0), "4");
        assert_eq!(format_tick(1.5e-5, 5e-6), "1.5e-5");
    }

    #[test]
    fn validation_every_other_epoch() {
        assert_eq!(val_epochs(&[0.0, 1.0, 2.0, 3.0], 2), vec![1.0, 3.0]);
        assert_eq!(val_epochs(&[0.0, 1.0, 2.0], 3), vec![0.0, 1.0, 2.0]);
    }
}
