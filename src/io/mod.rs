//! Files on disk: written atomically (temporary file, fsync, rename), never left half-written.

mod checkpoint;
pub(crate) mod keras_file;
mod model_file;

pub use checkpoint::{
    TensorFile, checkpoint_file, load_checkpoint, load_optimizer_state, load_weights,
    optimizer_state, read_tensors, restore_checkpoint_file, save_checkpoint, save_weights,
    write_tensors,
};
pub(crate) use checkpoint::{is_keras_weights, keras_layout};
pub use keras_file::{KERAS_FORMAT_VERSION, load_keras, save_keras};
pub(crate) use model_file::is_keras_path;
pub use model_file::{
    KerasLayer, LoadedModel, MODEL_CONFIG_KEY, MODEL_FORMAT, MODEL_FORMAT_VERSION, SavableModel,
    load_model, model_from_json, save_model,
};

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over `path`. A crash leaves either the old file or the new one.
///
/// ```
/// let dir = std::env::temp_dir().join("ferrokeras-doc-io");
/// std::fs::create_dir_all(&dir).unwrap();
/// ferrokeras::io::write_atomic(&dir.join("a.txt"), b"hello").unwrap();
/// assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"hello");
/// ```
///
/// # Errors
/// The directory is not writable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    // Unique per process and per call: threads writing the same file never share a temp file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp{}.{n}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Writes a grayscale or RGB image as PNG, atomically.
///
/// `pixels` are row-major `u8`, `channels` 1 (gray) or 3 (RGB).
///
/// ```
/// let path = std::env::temp_dir().join("ferrokeras-doc.png");
/// ferrokeras::io::write_png(&path, 2, 2, 1, &[0, 255, 255, 0]).unwrap();
/// assert!(std::fs::metadata(&path).unwrap().len() > 0);
/// ```
///
/// # Errors
/// A pixel buffer of the wrong size, or a file that cannot be written.
pub fn write_png(path: &Path, width: u32, height: u32, channels: u8, pixels: &[u8]) -> Result<()> {
    let expected = width as usize * height as usize * channels as usize;
    if pixels.len() != expected || !(channels == 1 || channels == 3) {
        return Err(Error::value(format!(
            "write_png: expected {width}x{height}x{channels} = {expected} bytes with 1 or 3 channels, received {} bytes",
            pixels.len()
        )));
    }
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width, height);
        enc.set_color(if channels == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc
            .write_header()
            .map_err(|e| Error::value(format!("PNG encoding failed: {e}")))?;
        w.write_image_data(pixels)
            .map_err(|e| Error::value(format!("PNG encoding failed: {e}")))?;
    }
    write_atomic(path, &buf)
}
