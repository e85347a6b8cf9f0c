//! The `TensorBoard` callback, read back by an independent reader written here (its own CRC32C,
//! its own TFRecord framing and protobuf decoding): every record's two checksums, the file-version
//! event, and every scalar against the `History` (and batch logs) of a real `fit`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use ferrokeras::callbacks::{TensorBoard, UpdateFreq};
use ferrokeras::prelude::*;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::test_tmp;

// ------------------------------------------------------------------------------------------------
// An independent event-file reader
// ------------------------------------------------------------------------------------------------

/// CRC-32C (Castagnoli), bit by bit.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// The payloads of a TFRecord file; panics on a bad checksum or a truncated record.
fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        assert!(pos + 12 <= bytes.len(), "truncated record header at {pos}");
        let len_bytes = &bytes[pos..pos + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        assert_eq!(len_crc, masked(len_bytes), "length CRC of record at {pos}");
        let start = pos + 12;
        assert!(start + len + 4 <= bytes.len(), "truncated record at {pos}");
        let payload = &bytes[start..start + len];
        let crc = u32::from_le_bytes(bytes[start + len..start + len + 4].try_into().unwrap());
        assert_eq!(crc, masked(payload), "payload CRC of record at {pos}");
        out.push(payload.to_vec());
        pos = start + len + 4;
    }
    out
}

/// A protobuf field: number and value.
#[derive(Debug)]
enum Field {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(Vec<u8>),
    Fixed32([u8; 4]),
}

fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

fn fields(b: &[u8]) -> Vec<(u64, Field)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos);
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(b, &mut pos)),
            1 => {
                pos += 8;
                Field::Fixed64(b[pos - 8..pos].try_into().unwrap())
            }
            2 => {
                let len = varint(b, &mut pos) as usize;
                pos += len;
                Field::Bytes(b[pos - len..pos].to_vec())
            }
            5 => {
                pos += 4;
                Field::Fixed32(b[pos - 4..pos].try_into().unwrap())
            }
            w => panic!("unexpected wire type {w}"),
        };
        out.push((num, f));
    }
    out
}

#[derive(Debug, Default)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    values: Vec<(String, f32)>,
}

fn decode_event(b: &[u8]) -> Event {
    let mut e = Event::default();
    for (num, f) in fields(b) {
        match (num, f) {
            (1, Field::Fixed64(v)) => e.wall_time = f64::from_le_bytes(v),
            (2, Field::Varint(v)) => e.step = v as i64,
            (3, Field::Bytes(v)) => e.file_version = Some(String::from_utf8(v).unwrap()),
            (5, Field::Bytes(summary)) => {
                for (num, f) in fields(&summary) {
                    let (1, Field::Bytes(value)) = (num, f) else {
                        panic!("unexpected Summary field {num}");
                    };
                    let (mut tag, mut simple) = (None, None);
                    for (num, f) in fields(&value) {
                        match (num, f) {
                            (1, Field::Bytes(t)) => tag = Some(String::from_utf8(t).unwrap()),
                            (2, Field::Fixed32(v)) => simple = Some(f32::from_le_bytes(v)),
                            (n, f) => panic!("unexpected Summary.Value field {n}: {f:?}"),
                        }
                    }
                    e.values.push((tag.unwrap(), simple.unwrap()));
                }
            }
            (n, f) => panic!("unexpected Event field {n}: {f:?}"),
        }
    }
    e
}

/// Every event file of a run directory, decoded: `tag -> [(step, value)]`, after checking the
/// file name and the file-version event that starts each file.
fn read_run(dir: &Path) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no event file in {}", dir.display());
    let mut out: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("events.out.tfevents.") && name.ends_with(".v2"),
            "{name}"
        );
        assert!(
            name.contains(&format!(".{}.", std::process::id())),
            "pid in {name}"
        );
        let recs = records(&std::fs::read(&f).unwrap());
        let first = decode_event(&recs[0]);
        assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
        assert!(first.values.is_empty());
        for r in &recs[1..] {
            let e = decode_event(r);
            assert!(
                e.wall_time > 1.6e9 && e.wall_time >= first.wall_time,
                "wall time {}",
                e.wall_time
            );
            assert!(e.file_version.is_none());
            assert_eq!(e.values.len(), 1, "one scalar per event");
            for (tag, v) in e.values {
                out.entry(tag).or_default().push((e.step, v));
            }
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// A real fit
// ------------------------------------------------------------------------------------------------

fn regression(n: usize, d: usize, phase: f32) -> (Tensor, Tensor) {
    let xs: Vec<f32> = (0..n * d)
        .map(|i| ((i as f32) * 0.731 + phase).sin())
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

fn model() -> Trainer<Sequential> {
    ferrokeras::random::set_random_seed(7);
    Sequential::new()
        .input(&[3])
        .add(Dense::new(4).activation("relu").unwrap())
        .add(Dense::new(1))
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.01))
                .loss("mse")
                .metrics(["mae"]),
        )
        .unwrap()
}
fn fresh_dir(name: &str) -> PathBuf {
    let dir = test_tmp().join(format!("tensorboard-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn epoch_series(values: &[f64]) -> Vec<(i64, f32)> {
    values
        .iter()
        .enumerate()
        .map(|(e, &v)| (e as i64, v as f32))
        .collect()
}

const EPOCHS: usize = 3;
const BATCHES: usize = 8; // 64 samples, batch size 8
const FREQ: usize = 3;

#[test]
fn scalars_match_the_history_of_a_real_fit() {
    let dir = fresh_dir("fit");
    let (x, y) = regression(64, 3, 0.2);
    let (vx, vy) = regression(24, 3, 1.3);
    // The batch logs (Keras's running means), as `TensorBoard` sees them.
    let batch_logs = Arc::new(Mutex::new(Vec::<Logs>::new()));
    let seen = batch_logs.clone();
    // What a reader finds on disk at the end of each epoch, before `fit` ends (flushing).
    let mid_fit = Arc::new(Mutex::new(Vec::<Vec<(i64, f32)>>::new()));
    let (mid, train_dir) = (mid_fit.clone(), dir.join("train"));
    let recorder = LambdaCallback::new()
        .on_batch_end(move |_, logs| {
            seen.lock().unwrap().push(logs.clone());
            Ok(())
        })
        .on_epoch_end(move |_, _| {
            let run = read_run(&train_dir);
            mid.lock().unwrap().push(run["epoch_loss"].clone());
            Ok(())
        });
    let mut m = model();
    let history = m
        .fit(
            (x, y),
            FitOptions::new()
                .epochs(EPOCHS)
                .batch_size(8)
                .shuffle(false)
                .validation_data((vx, vy))
                .verbose(0)
                .callback(TensorBoard::new(&dir).update_freq(FREQ))
                .callback(recorder),
        )
        .unwrap();
    let batch_logs = batch_logs.lock().unwrap();
    assert_eq!(batch_logs.len(), EPOCHS * BATCHES);

    // Training run: epoch scalars at step = epoch, learning rate, batch scalars every FREQ batches.
    let train = read_run(&dir.join("train"));
    let mut tags: Vec<&str> = train.keys().map(String::as_str).collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            "batch_loss",
            "batch_mae",
            "epoch_learning_rate",
            "epoch_loss",
            "epoch_mae"
        ]
    );
    assert_eq!(train["epoch_loss"], epoch_series(history.get("loss")));
    assert_eq!(train["epoch_mae"], epoch_series(history.get("mae")));
    assert_eq!(train["epoch_learning_rate"], epoch_series(&[0.01; EPOCHS]));
    for key in ["loss", "mae"] {
        let expected: Vec<(i64, f32)> = (1..=EPOCHS * BATCHES)
            .filter(|step| step % FREQ == 0)
            .map(|step| {
                let v = batch_logs[step - 1].get(key).unwrap();
                (step as i64, v as f32)
            })
            .collect();
        assert_eq!(train[&format!("batch_{key}")], expected, "batch_{key}");
        // The logs are the running means of the per-batch values that `History` records
        // (equal batch sizes, so plain means).
        let per_batch = &history.batch_history[key];
        for &(step, v) in &expected {
            let g = step as usize;
            let in_epoch = (g - 1) % BATCHES + 1;
            let batches = &per_batch[g - in_epoch..g];
            let mean = batches.iter().sum::<f64>() / batches.len() as f64;
            assert!(
                (mean as f32 - v).abs() <= 1e-5 * v.abs().max(1.0),
                "batch_{key} at {step}: {v} vs running mean {mean}"
            );
        }
        // The last batch of an epoch equals the epoch value.
        let last = batch_logs[BATCHES - 1].get(key).unwrap();
        assert!((last - history.get(key)[0]).abs() <= 1e-9 * last.abs().max(1.0));
    }

    // Validation run: `val_` values without the prefix, and evaluation vs optimizer iterations.
    let val = read_run(&dir.join("validation"));
    let mut tags: Vec<&str> = val.keys().map(String::as_str).collect();
    tags.sort();
    assert_eq!(
        tags,
        [
            "epoch_loss",
            "epoch_mae",
            "evaluation_loss_vs_iterations",
            "evaluation_mae_vs_iterations"
        ]
    );
    assert_eq!(val["epoch_loss"], epoch_series(history.get("val_loss")));
    assert_eq!(val["epoch_mae"], epoch_series(history.get("val_mae")));
    let iterations: Vec<i64> = (1..=EPOCHS).map(|e| (e * BATCHES) as i64).collect();
    for key in ["loss", "mae"] {
        let got = &val[&format!("evaluation_{key}_vs_iterations")];
        let expected: Vec<(i64, f32)> = iterations
            .iter()
            .zip(history.get(&format!("val_{key}")))
            .map(|(&s, &v)| (s, v as f32))
            .collect();
        assert_eq!(got, &expected);
    }

    // Flushed at each epoch: the values of epochs 0..=e were on disk at the end of epoch e.
    let mid = mid_fit.lock().unwrap();
    assert_eq!(mid.len(), EPOCHS);
    for (e, seen) in mid.iter().enumerate() {
        assert_eq!(seen, &epoch_series(&history.get("loss")[..=e]));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn epoch_updates_only_and_evaluate() {
    let dir = fresh_dir("epoch");
    let (x, y) = regression(40, 3, 0.4);
    let mut m = model();
    let tb = TensorBoard::new(&dir).update_freq(UpdateFreq::Epoch);
    assert_eq!(tb.log_dir(), dir.as_path());
    let history = m
        .fit(
            (x.clone(), y.clone()),
            FitOptions::new()
                .epochs(2)
                .batch_size(10)
                .verbose(0)
                .callback(tb),
        )
        .unwrap();
    let train = read_run(&dir.join("train"));
    assert!(
        train.keys().all(|k| k.starts_with("epoch_")),
        "{:?}",
        train.keys()
    );
    assert_eq!(train["epoch_loss"], epoch_series(history.get("loss")));
    // No validation in `fit`: no validation run.
    assert!(!dir.join("validation").exists());

    // `evaluate` with the callback writes the results at the optimizer's iteration count.
    let logs = m
        .evaluate(
            (x, y),
            EvaluateOptions::new()
                .verbose(0)
                .callback(TensorBoard::new(&dir)),
        )
        .unwrap();
    let val = read_run(&dir.join("validation"));
    assert_eq!(
        val["evaluation_loss_vs_iterations"],
        vec![(8, logs.get("loss").unwrap() as f32)]
    );
    assert_eq!(
        val["evaluation_mae_vs_iterations"],
        vec![(8, logs.get("mae").unwrap() as f32)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn steps_per_second_and_a_second_fit_start_new_files() {
    let dir = fresh_dir("speed");
    let (x, y) = regression(32, 3, 0.9);
    let mut m = model();
    for _ in 0..2 {
        m.fit(
            (x.clone(), y.clone()),
            FitOptions::new()
                .epochs(1)
                .batch_size(8)
                .verbose(0)
                .callback(
                    TensorBoard::new(&dir)
                        .update_freq("batch".parse::<UpdateFreq>().unwrap())
                        .write_steps_per_second(true),
                ),
        )
        .unwrap();
    }
    assert_eq!(std::fs::read_dir(dir.join("train")).unwrap().count(), 2);
    let train = read_run(&dir.join("train"));
    assert_eq!(train["epoch_steps_per_second"].len(), 2);
    assert!(
        train["epoch_steps_per_second"]
            .iter()
            .all(|&(_, v)| v > 0.0)
    );
    // Each fit counts its batches from 1.
    let steps: Vec<i64> = train["batch_loss"].iter().map(|p| p.0).collect();
    assert_eq!(steps, [1, 2, 3, 4, 1, 2, 3, 4]);
    assert_eq!(train["batch_steps_per_second"].len(), 8);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_settings_and_unwritable_dirs_are_errors() {
    let (x, y) = regression(16, 3, 0.1);
    let mut m = model();
    let err = m
        .fit(
            (x.clone(), y.clone()),
            FitOptions::new()
                .epochs(1)
                .verbose(0)
                .callback(TensorBoard::new(fresh_dir("zero")).update_freq(0)),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    assert!(err.to_string().contains("update_freq"), "{err}");
    assert!("sometimes".parse::<UpdateFreq>().is_err());

    // A log directory below a regular file cannot be created.
    let blocker = fresh_dir("blocker");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let err = m
        .fit(
            (x, y),
            FitOptions::new()
                .epochs(1)
                .verbose(0)
                .callback(TensorBoard::new(blocker.join("logs"))),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    std::fs::remove_file(&blocker).unwrap();
}
