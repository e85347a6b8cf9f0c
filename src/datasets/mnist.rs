//! MNIST handwritten digits: 60,000 training and 10,000 test images, 28x28, uint8.
//!
//! [`load_data`] reads the four original IDX gzip files from a directory, checking their SHA-256
//! sums. It looks in `$FERROKERAS_MNIST_DIR` if set, else in [`super::cache_dir`]`/mnist`; files
//! missing there are downloaded from the usual mirrors (checksums verified before they are kept,
//! written to a temporary file and renamed). Offline and missing, it fails with an error that says
//! where it looked and how to provide the files. [`load_data_from`] reads an explicit directory.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The four files with their SHA-256 sums.
pub const FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    (
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
];

/// Mirrors that serve the original files.
pub const MIRRORS: [&str; 2] = [
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
];

/// `((x_train, y_train), (x_test, y_test))`: images `u8 (n, 28, 28)`, labels `u8 (n,)`.
pub type MnistSplits = ((Tensor, Tensor), (Tensor, Tensor));

/// Loads MNIST from the cache (downloading missing files when a network exists).
///
/// ```no_run
/// let ((x_train, y_train), (x_test, y_test)) = ferrokeras::datasets::mnist::load_data()?;
/// assert_eq!(x_train.dims(), &[60000, 28, 28]);
/// # Ok::<(), ferrokeras::Error>(())
/// ```
///
/// # Errors
/// Files missing and not downloadable (the message names the directory and the files to put
/// there), a checksum mismatch, or a malformed file.
pub fn load_data() -> Result<MnistSplits> {
    let dir = match std::env::var_os("FERROKERAS_MNIST_DIR") {
        Some(d) => PathBuf::from(d),
        None => super::cache_dir().join("mnist"),
    };
    for (name, sha) in FILES {
        let path = dir.join(name);
        if !path.exists() {
            download(&dir, name, sha)?;
        }
    }
    load_data_from(&dir)
}

/// Loads MNIST from the four `.gz` files in `dir`, verifying their checksums.
///
/// ```no_run
/// let ((x, y), _) = ferrokeras::datasets::mnist::load_data_from("data/mnist")?;
/// assert_eq!(y.dims(), &[60000]);
/// # Ok::<(), ferrokeras::Error>(())
/// ```
///
/// # Errors
/// A missing file, a checksum mismatch, or a malformed or truncated file.
pub fn load_data_from(dir: impl AsRef<Path>) -> Result<MnistSplits> {
    let dir = dir.as_ref();
    let read = |i: usize| -> Result<Vec<u8>> {
        let (name, sha) = FILES[i];
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| {
            Error::io(
                &path,
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e}. MNIST needs the files {} in `{}`; download them from one of {:?} or call `load_data()` to fetch them into the cache",
                        FILES.map(|f| f.0).join(", "),
                        dir.display(),
                        MIRRORS
                    ),
                ),
            )
        })?;
        verify(&path, &bytes, sha)?;
        gunzip(&path, &bytes)
    };
    let x_train = parse_images(&read(0)?, "train images")?;
    let y_train = parse_labels(&read(1)?, "train labels")?;
    let x_test = parse_images(&read(2)?, "test images")?;
    let y_test = parse_labels(&read(3)?, "test labels")?;
    if x_train.dims()[0] != y_train.dims()[0] || x_test.dims()[0] != y_test.dims()[0] {
        return Err(Error::value(format!(
            "MNIST files in `{}` disagree: {} train images for {} labels, {} test images for {} labels",
            dir.display(),
            x_train.dims()[0],
            y_train.dims()[0],
            x_test.dims()[0],
            y_test.dims()[0]
        )));
    }
    Ok(((x_train, y_train), (x_test, y_test)))
}

fn verify(path: &Path, bytes: &[u8], expected: &str) -> Result<()> {
    let got = Sha256::digest(bytes);
    let got: String = got.iter().map(|b| format!("{b:02x}")).collect();
    if got != expected {
        return Err(Error::value(format!(
            "checksum mismatch for `{}`: expected sha256 {expected}, found {got}. The file is corrupt or not the original MNIST file; delete it and load again.",
            path.display()
        )));
    }
    Ok(())
}

fn gunzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::value(format!(
                "`{}` is not a valid gzip file: {e}",
                path.display()
            ))
        })?;
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX3 image file: magic 2051, count, rows, cols, then pixels.
///
/// # Errors
/// A wrong magic number or a payload shorter or longer than the header says.
pub fn parse_images(bytes: &[u8], what: &str) -> Result<Tensor> {
    if bytes.len() < 16 || be_u32(bytes, 0) != 2051 {
        return Err(Error::value(format!(
            "MNIST {what}: expected an IDX image file (magic 2051, 16-byte header), received {} bytes{}",
            bytes.len(),
            if bytes.len() >= 4 {
                format!(" with magic {}", be_u32(bytes, 0))
            } else {
                String::new()
            }
        )));
    }
    let (n, r, c) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    let expected = n * r * c;
    if bytes.len() - 16 != expected {
        return Err(Error::value(format!(
            "MNIST {what}: the header announces {n} images of {r}x{c} ({expected} bytes) but the file holds {} bytes of pixels (truncated or corrupt)",
            bytes.len() - 16
        )));
    }
    Ok(Tensor::from_vec(
        bytes[16..].to_vec(),
        (n, r, c),
        &Device::Cpu,
    )?)
}

/// Parses an IDX1 label file: magic 2049, count, then labels.
///
/// # Errors
/// A wrong magic number or a payload length that differs from the count.
pub fn parse_labels(bytes: &[u8], what: &str) -> Result<Tensor> {
    if bytes.len() < 8 || be_u32(bytes, 0) != 2049 {
        return Err(Error::value(format!(
            "MNIST {what}: expected an IDX label file (magic 2049, 8-byte header), received {} bytes",
            bytes.len()
        )));
    }
    let n = be_u32(bytes, 4) as usize;
    if bytes.len() - 8 != n {
        return Err(Error::value(format!(
            "MNIST {what}: the header announces {n} labels but the file holds {} (truncated or corrupt)",
            bytes.len() - 8
        )));
    }
    Ok(Tensor::from_vec(bytes[8..].to_vec(), n, &Device::Cpu)?)
}

fn download(dir: &Path, name: &str, sha: &str) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut failures = Vec::new();
    for mirror in MIRRORS {
        let url = format!("{mirror}{name}");
        let resp = ureq::get(&url)
            .timeout(std::time::Duration::from_secs(60))
            .call();
        let mut bytes = Vec::new();
        match resp {
            Ok(r) => {
                if let Err(e) = r.into_reader().take(64 << 20).read_to_end(&mut bytes) {
                    failures.push(format!("{url}: {e}"));
                    continue;
                }
            }
            Err(e) => {
                failures.push(format!("{url}: {e}"));
                continue;
            }
        }
        let target = dir.join(name);
        if let Err(e) = verify(&target, &bytes, sha) {
            failures.push(format!("{url}: {e}"));
            continue;
        }
        crate::io::write_atomic(&target, &bytes)?;
        return Ok(());
    }
    Err(Error::value(format!(
        "MNIST file `{name}` is not in `{}` and could not be downloaded ({}). Put the four original files ({}) in that directory, set FERROKERAS_MNIST_DIR to a directory that has them, or call `load_data_from(dir)`.",
        dir.display(),
        failures.join("; "),
        FILES.map(|f| f.0).join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_malformed_files_are_errors() {
        let mut good = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        good.extend([1u8; 8]);
        assert_eq!(parse_images(&good, "t").unwrap().dims(), &[2, 2, 2]);
        let err = parse_images(&good[..20], "t").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = parse_images(&[1, 2, 3], "t").unwrap_err().to_string();
        assert!(err.contains("magic 2051"), "{err}");
        let err = parse_labels(&[0, 0, 8, 1, 0, 0, 0, 5, 1], "l")
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 labels"), "{err}");
    }
}
