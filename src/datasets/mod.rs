//! Datasets ready to train on (Keras's `keras.datasets`).

pub mod mnist;

use std::path::PathBuf;

/// The directory datasets are cached in: `$FERROKERAS_HOME/datasets` if set, else
/// `$XDG_CACHE_HOME/ferrokeras/datasets`, else `~/.cache/ferrokeras/datasets`.
///
/// ```
/// let dir = ferrokeras::datasets::cache_dir();
/// assert!(dir.ends_with("datasets"));
/// ```
pub fn cache_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("FERROKERAS_HOME") {
        return PathBuf::from(home).join("datasets");
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("ferrokeras").join("datasets");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("ferrokeras").join("datasets")
}
