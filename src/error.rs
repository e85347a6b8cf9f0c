//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result`]. Messages follow Keras's style: they say what was
//! expected, what was received, and how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong in ferrokeras.
///
/// ```
/// use ferrokeras::Error;
/// let e = Error::value("expected `batch_size` >= 1. Received: batch_size=0");
/// assert!(e.to_string().contains("batch_size=0"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad argument or bad data from the caller (Keras's `ValueError`).
    #[error("{0}")]
    Value(String),
    /// Something used before it was configured, e.g. `fit` without an optimizer.
    #[error("{0}")]
    State(String),
    /// An error from the tensor library (shape mismatch inside an op, unsupported dtype, ...).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("I/O error on `{path}`: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Builds an [`Error::Value`] from a message.
    pub fn value(msg: impl Into<String>) -> Self {
        Error::Value(msg.into())
    }
    /// Builds an [`Error::State`] from a message.
    pub fn state(msg: impl Into<String>) -> Self {
        Error::State(msg.into())
    }
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
