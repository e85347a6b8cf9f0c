//! Exact resume: a training killed with SIGKILL at random moments (mid-epoch included) and started
//! again with the same command ends with the same weights and History as an uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use ferrokeras::callbacks::SaveFreq;
use ferrokeras::prelude::*;
use ferrokeras::trainer::BackupAndRestore;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::test_tmp;

const CHILD_ENV: &str = "FERROKERAS_RESUME_CHILD_DIR";

/// The training every run performs; writes its final weights and History into `out`.
fn train(out: &Path, sleep_ms: u64) -> ferrokeras::Result<()> {
    ferrokeras::random::set_random_seed(11);
    let x =
        ferrokeras::random::uniform(&[600, 8], 0.0, 1.0, &ferrokeras::runtime::default_device())?;
    let y = x.sum_keepdim(1)?.affine(0.25, 0.0)?.sin()?;
    let model = Sequential::new()
        .input(&[8])
        .add(Dense::new(16).activation("relu")?)
        .add(Dropout::new(0.2)?)
        .add(Dense::new(1));
    let mut model = model.compile(
        Compile::new()
            .optimizer(Adam::new(0.01).amsgrad(true))
            .loss("mse")
            .metrics(["mae"]),
    )?;
    let slow = LambdaCallback::new().on_batch_end(move |_, _| {
        std::thread::sleep(Duration::from_millis(sleep_ms));
        Ok(())
    });
    let history = model.fit(
        (x, y),
        FitOptions::new()
            .epochs(3)
            .batch_size(20)
            .validation_split(0.1)
            .verbose(0)
            .callback(slow)
            .backup_and_restore(
                BackupAndRestore::new(out.join("backup")).save_freq(SaveFreq::Batches(4)),
            ),
    )?;
    model.save_weights(out.join("final.safetensors"))?;
    let mut text = String::new();
    for (k, v) in history.history.iter().chain(history.batch_history.iter()) {
        let bits: Vec<String> = v.iter().map(|x| format!("{:016x}", x.to_bits())).collect();
        text += &format!("{k} {}\n", bits.join(" "));
    }
    text += &format!("epochs {:?}\n", history.epoch);
    std::fs::write(out.join("history.txt"), text).map_err(|e| ferrokeras::Error::io(out, e))?;
    Ok(())
}

/// Runs the training when started as a child by the tests below (a no-op otherwise).
#[test]
fn resume_child() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        train(Path::new(&dir), 8).unwrap();
    }
}

fn child(dir: &Path) -> Command {
    // The test's full name: `resume_child` here, `resume::resume_child` when this file is a
    // module of the one-binary suite (tests/gpu_suite.rs).
    let name = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::resume_child"),
        None => "resume_child".to_string(),
    };
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}
fn fresh_dir(name: &str) -> PathBuf {
    let d = test_tmp().join(format!("resume-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn weights_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let f = ferrokeras::io::read_tensors(path).unwrap();
    f.tensors
        .into_iter()
        .map(|(k, t): (String, Tensor)| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (k, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect()
}

#[test]
fn killed_runs_resume_exactly() {
    let reference = fresh_dir("reference");
    let out = child(&reference).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let resumed = fresh_dir("killed");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut kills = Vec::new();
    let mut resumed_from_backup = 0;
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no completion; kills at {kills:?} ms"
        );
        if resumed.join("backup/backup.safetensors").exists() {
            resumed_from_backup += 1;
        }
        let mut c = child(&resumed).spawn().unwrap();
        let wait = 120 + next() % 600;
        std::thread::sleep(Duration::from_millis(wait));
        match c.try_wait().unwrap() {
            Some(status) => {
                let mut err = String::new();
                use std::io::Read;
                c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                assert!(
                    status.success(),
                    "child failed after kills at {kills:?} ms: {err}"
                );
                if kills.len() >= 3 && resumed_from_backup >= 2 {
                    break;
                }
                // Finished too early: start over with shorter waits until it was killed enough.
                std::fs::remove_dir_all(&resumed).unwrap();
                std::fs::create_dir_all(&resumed).unwrap();
                kills.clear();
                resumed_from_backup = 0;
            }
            None => {
                c.kill().unwrap(); // SIGKILL
                c.wait().unwrap();
                kills.push(wait);
            }
        }
    }
    assert!(
        !resumed.join("backup/backup.safetensors").exists(),
        "the backup is deleted at the end"
    );
    eprintln!("killed at {kills:?} ms; {resumed_from_backup} restarts resumed from a backup");
    let (a, b) = (
        std::fs::read_to_string(reference.join("history.txt")).unwrap(),
        std::fs::read_to_string(resumed.join("history.txt")).unwrap(),
    );
    assert_eq!(
        a, b,
        "History differs after kills at {kills:?} ms (seed {seed})"
    );
    assert_eq!(
        weights_bytes(&reference.join("final.safetensors")),
        weights_bytes(&resumed.join("final.safetensors")),
        "weights differ after kills at {kills:?} ms (seed {seed})"
    );
}

#[test]
fn a_corrupt_backup_is_reported_not_used() {
    let dir = fresh_dir("corrupt");
    std::fs::create_dir_all(dir.join("backup")).unwrap();
    std::fs::write(
        dir.join("backup/backup.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}garbage",
    )
    .unwrap();
    let err = train(&dir, 0).unwrap_err().to_string();
    assert!(
        err.contains("backup.safetensors") && err.contains("corrupt"),
        "{err}"
    );
}
