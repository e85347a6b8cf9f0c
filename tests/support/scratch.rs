//! Scratch space for the integration tests that write files.

use std::path::PathBuf;

/// Cargo's scratch directory for integration tests (inside `target/`, reused by name across runs, so
/// nothing piles up in the system's temp directory); the system's one where that path is not writable
/// (a test binary run on another machine).
pub fn test_tmp() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if std::fs::create_dir_all(&dir).is_ok() {
        dir
    } else {
        std::env::temp_dir().join("ferrokeras-tests")
    }
}
