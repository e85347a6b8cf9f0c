//! The guide's GAN with ModelCheckpoint, CSVLogger, TensorBoard and BackupAndRestore attached: it
//! runs, writes its files, and a run interrupted mid-epoch and started again ends exactly like an
//! uninterrupted one (weights, both optimizers, History).
//!
//! One test in this binary: the global random generator is not shared with other tests.

use std::path::{Path, PathBuf};

use ferrokeras::callbacks::{CSVLogger, ModelCheckpoint, SaveFreq, TensorBoard};
use ferrokeras::data::Dataset;
use ferrokeras::prelude::*;
use ferrokeras::trainer::BackupAndRestore;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::test_tmp;

#[path = "../examples/shared/gan.rs"]
#[allow(dead_code)]
mod gan;

/// Final weights by structural name.
type Weights = Vec<(String, Vec<f32>)>;

/// Fails the run at one global batch, as a crash would.
struct CrashAt(usize, usize);

impl Callback for CrashAt {
    fn on_train_batch_end(
        &mut self,
        _: &mut CallbackContext,
        _: usize,
        _: &Logs,
    ) -> ferrokeras::Result<()> {
        self.1 += 1;
        if self.1 == self.0 {
            return Err(ferrokeras::Error::state("simulated crash"));
        }
        Ok(())
    }
}

fn run(dir: &Path, crash_at: Option<usize>) -> ferrokeras::Result<(History, Weights)> {
    ferrokeras::random::set_random_seed(21);
    let images = ferrokeras::random::uniform(
        &[6 * 8, 28, 28, 1],
        0.0,
        1.0,
        &ferrokeras::runtime::default_device(),
    )?;
    let ds = Dataset::from_tensor_slices(images)?
        .shuffle(32, Some(5))
        .batch(8, false);
    let g = gan::Gan::new(gan::discriminator()?, gan::generator(128)?, 128);
    let mut model = g.compile(
        Adam::new(3e-4),
        Adam::new(3e-4),
        BinaryCrossentropy::new().from_logits(true),
    );
    let mut opts = FitOptions::new()
        .epochs(2)
        .verbose(0)
        .callback(
            ModelCheckpoint::new(format!("{}/gan-{{epoch:02d}}.safetensors", dir.display()))
                .monitor("g_loss"),
        )
        .callback(CSVLogger::new(dir.join("log.csv")))
        .callback(TensorBoard::new(dir.join("tb")))
        .backup_and_restore(
            BackupAndRestore::new(dir.join("backup")).save_freq(SaveFreq::Batches(1)),
        );
    if let Some(n) = crash_at {
        opts = opts.callback(CrashAt(n, 0));
    }
    let history = model.fit(ds, opts)?;
    let weights = model
        .named_variables()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.value().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    Ok((history, weights))
}
fn fresh(name: &str) -> PathBuf {
    let d = test_tmp().join(format!("gan-resume-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn gan_with_callbacks_resumes_exactly_after_a_crash() {
    let a = fresh("straight");
    let (ha, wa) = run(&a, None).unwrap();
    for f in [
        "gan-01.safetensors",
        "gan-02.safetensors",
        "log.csv",
        "tb/train",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let ckpt = ferrokeras::io::read_tensors(&a.join("gan-02.safetensors")).unwrap();
    assert!(
        ckpt.tensors
            .keys()
            .any(|k| k.starts_with("model_state/d_optimizer/discriminator/"))
    );
    assert!(
        ckpt.tensors
            .keys()
            .any(|k| k.starts_with("model_state/g_optimizer/generator/"))
    );
    let csv = std::fs::read_to_string(a.join("log.csv")).unwrap();
    assert!(csv.starts_with("epoch,d_loss,g_loss"), "{csv}");
    assert_eq!(ha.get("d_loss").len(), 2);

    // Crash in the middle of the second epoch (batch 9 of 12), then run the same code again.
    let b = fresh("crashed");
    let err = run(&b, Some(9)).err().unwrap().to_string();
    assert!(err.contains("simulated crash"), "{err}");
    assert!(b.join("backup/backup.safetensors").exists());
    let (hb, wb) = run(&b, None).unwrap();
    assert_eq!(ha.history, hb.history);
    assert_eq!(ha.batch_history, hb.batch_history);
    assert_eq!(wa, wb);
}
