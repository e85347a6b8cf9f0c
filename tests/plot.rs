//! `plot_history` / `History::plot`: the PNG of a real `fit` decodes, has the documented size,
//! shows both curves' colours; bad input is an `Error`, never a panic.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::Tensor;
use ferrokeras::callbacks::History;
use ferrokeras::plot::{PlotOptions, panel_names, plot_history, plot_history_with};
use ferrokeras::prelude::*;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::test_tmp;

const TRAIN_COLOR: [u8; 3] = [31, 119, 180];
const VAL_COLOR: [u8; 3] = [255, 127, 14];

fn regression(n: usize, d: usize) -> (Tensor, Tensor) {
    let xs: Vec<f32> = (0..n * d)
        .map(|i| ((i as f32) * 0.731 + 0.2).sin())
        .collect();
    let ys: Vec<f32> = (0..n)
        .map(|r| {
            (0..d)
                .map(|c| xs[r * d + c] * (c as f32 + 1.0) * 0.3)
                .sum::<f32>()
        })
        .collect();
    (
        Tensor::from_vec(xs, (n, d), &ferrokeras::runtime::default_device()).unwrap(),
        Tensor::from_vec(ys, (n, 1), &ferrokeras::runtime::default_device()).unwrap(),
    )
}
fn out_path(name: &str) -> PathBuf {
    let dir = test_tmp().join("plot");
    std::fs::create_dir_all(&dir).unwrap();
    // A path left by an earlier run would leak into this one's assertions.
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    let _ = std::fs::remove_file(&path);
    path
}

/// Decodes an RGB PNG: `(width, height, pixels)`.
fn decode(path: &PathBuf) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let px = buf[..info.buffer_size()]
        .chunks(3)
        .map(|c| [c[0], c[1], c[2]])
        .collect();
    (info.width, info.height, px)
}

fn count(px: &[[u8; 3]], color: [u8; 3]) -> usize {
    px.iter().filter(|p| **p == color).count()
}

#[test]
fn plot_of_a_real_fit() {
    ferrokeras::random::set_random_seed(3);
    let (x, y) = regression(96, 3);
    let mut model = Sequential::new()
        .input(&[3])
        .add(Dense::new(8).activation("relu").unwrap())
        .add(Dense::new(1))
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.02))
                .loss("mse")
                .metrics(["mae"]),
        )
        .unwrap();
    let history = model
        .fit(
            (x, y),
            FitOptions::new()
                .epochs(12)
                .batch_size(16)
                .validation_split(0.25)
                .verbose(0),
        )
        .unwrap();
    assert_eq!(panel_names(&history), ["loss", "mae"]);

    let path = out_path("fit.png");
    plot_history(&history, &path).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), PlotOptions::default().image_size(2));
    assert_eq!((w, h), (960, 320));
    let distinct: BTreeSet<[u8; 3]> = px.iter().copied().collect();
    assert!(distinct.len() > 20, "{} colours", distinct.len());
    let white = count(&px, [255, 255, 255]);
    assert!(
        white > px.len() / 2 && white < px.len() * 98 / 100,
        "{white} white"
    );
    // Both curves (and their legend swatches) are drawn, in each of the two panels.
    for half in 0..2 {
        let panel: Vec<[u8; 3]> = px
            .chunks(w as usize)
            .flat_map(|row| row[half * 480..(half + 1) * 480].iter().copied())
            .collect();
        assert!(
            count(&panel, TRAIN_COLOR) > 50,
            "train curve in panel {half}"
        );
        assert!(
            count(&panel, VAL_COLOR) > 50,
            "validation curve in panel {half}"
        );
    }

    // `History::plot` writes the same image; a layout changes the size.
    let same = out_path("same.png");
    history.plot(&same).unwrap();
    assert_eq!(std::fs::read(&same).unwrap(), std::fs::read(&path).unwrap());
    let tall = out_path("tall.png");
    let options = PlotOptions::new().panel_size(300, 200).columns(1);
    plot_history_with(&history, &tall, &options).unwrap();
    assert_eq!(decode(&tall).0, 300);
    assert_eq!(decode(&tall).1, 400);
}

#[test]
fn odd_histories_do_not_panic() {
    // One epoch, a NaN, a constant metric, validation every other epoch, a validation-only key.
    let mut h = History::new();
    h.epoch = vec![0, 1, 2, 3];
    h.history
        .insert("loss".into(), vec![1.0, f64::NAN, 0.5, 0.25]);
    h.history.insert("val_loss".into(), vec![1.2, 0.7]);
    h.history.insert("acc".into(), vec![0.5; 4]);
    h.history.insert("val_auc".into(), vec![0.6, 0.7, 0.8, 0.9]);
    h.history
        .insert("tiny".into(), vec![1e-7, 2e-7, 3e-7, 4e-7]);
    assert_eq!(panel_names(&h), ["loss", "acc", "tiny", "auc"]);
    let path = out_path("odd.png");
    plot_history(&h, &path).unwrap();
    assert_eq!(decode(&path).0, 960);
    assert_eq!(decode(&path).1, 640);

    let mut one = History::new();
    one.epoch = vec![0];
    one.history.insert("loss".into(), vec![0.3]);
    let path = out_path("one.png");
    plot_history(&one, &path).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), (480, 320));
    assert!(count(&px, TRAIN_COLOR) > 5, "a lone point is drawn");

    let mut nans = History::new();
    nans.history
        .insert("loss".into(), vec![f64::NAN, f64::INFINITY]);
    plot_history(&nans, out_path("nan.png")).unwrap();
}

#[test]
fn errors_not_panics() {
    let err = plot_history(&History::new(), out_path("empty.png")).unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    assert!(err.to_string().contains("empty"), "{err}");

    let mut h = History::new();
    h.history.insert("loss".into(), vec![1.0, 0.5]);
    let blocker = out_path("blocker");
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    let err = plot_history(&h, blocker.join("plot.png")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    let err = plot_history_with(
        &h,
        out_path("small.png"),
        &PlotOptions::new().panel_size(10, 10),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
}
