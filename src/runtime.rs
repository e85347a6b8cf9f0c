//! Process-wide settings applied once, the first time a layer or model is created.
//!
//! glibc's allocator maps every buffer above 128 KiB with `mmap` and unmaps it on free, so each
//! tensor op that allocates a large buffer pays for fresh zeroed pages (measured: about half of a
//! training step's CPU time in the kernel). Raising the mmap and trim thresholds keeps those
//! buffers in the heap for reuse. This is done inside the library so that users need no
//! environment variable.

use std::sync::Once;

/// Applies the allocator settings (once; a no-op after the first call and on other platforms).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator tuning parameters; it is called once, before
        // this library allocates tensors, and takes plain integers.
        unsafe {
            const THRESHOLD: libc::c_int = 256 << 20;
            libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * THRESHOLD);
        }
    });
}
