//! Kernels per training step on the path that devices other than the CPU take
//! (`FERROKERAS_KERNELS=candle`), counted as calls into a patched copy of candle's CPU backend: on
//! candle's CUDA backend each is a kernel launch and a fresh buffer. Built and run by
//! `scripts/kernel-count.sh`; not part of the crate.
//!
//! `kernel_count [w4] [w2]`: W4 the guide's GAN `train_step`, W2 the MLP through `fit` (the
//! difference of a 30-step and a 10-step fit, over 20). Set `KERNEL_COUNT_SITES=1` for the calls
//! by the ferrokeras function that asked for them.

use candle_core::DType;
use ferrokeras::prelude::*;
use std::collections::BTreeMap;

#[path = "../../../examples/shared/gan.rs"]
#[allow(dead_code)]
mod gan;

/// Prints the kernels per step (graph-node tallies apart) and, when collected, the call sites of
/// the last `site_steps` steps.
fn show(label: &str, counts: &BTreeMap<&'static str, u64>, steps: f64, site_steps: f64) {
    // Host-device transfers, the pass-through clones of custom ops and the dispatch of a graph
    // node (whose op is counted as itself) are not kernels.
    let not_kernel = |k: &str| {
        k.starts_with("node:")
            || matches!(
                k,
                "node-dispatch"
                    | "storage_from_slice"
                    | "storage_from_cpu_storage"
                    | "storage_from_cpu_storage_owned"
                    | "to_cpu_storage"
                    | "try_clone"
            )
    };
    let total: u64 = counts.iter().filter(|(k, _)| !not_kernel(k)).map(|(_, v)| v).sum();
    println!("== {label}: {:.1} kernels per step", total as f64 / steps);
    let mut rows: Vec<_> = counts.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1));
    for (k, n) in rows {
        println!("   {k:28} {:8.1}", *n as f64 / steps);
    }
    let mut sites: Vec<_> = candle_core::opcount::take_sites().into_iter().collect();
    sites.sort_by(|a, b| b.1.cmp(&a.1));
    for (k, n) in sites.iter().take(200) {
        println!("{:7.1} {k}", *n as f64 / site_steps);
    }
}

fn main() -> Result<()> {
    let dev = ferrokeras::runtime::default_device();
    let picked: Vec<String> = std::env::args().skip(1).collect();
    let want = |w: &str| picked.is_empty() || picked.iter().any(|x| x == w);
    if want("w4") {
        // Kernel counts do not depend on the batch size: a small batch keeps the run short.
        let batch = 8;
        let g = gan::Gan::new(gan::discriminator()?, gan::generator(128)?, 128);
        let mut model = g.compile(
            Adam::new(3e-4),
            Adam::new(3e-4),
            BinaryCrossentropy::new().from_logits(true),
        );
        let mut ctx = StepContext::new();
        let images = ferrokeras::random::uniform(&[batch * 5, 28, 28, 1], 0.0, 1.0, &dev)?;
        let step = |m: &mut Trainer<gan::Gan>, ctx: &mut StepContext, i: usize| -> Result<()> {
            m.train_step(ctx, &Data::from(images.narrow(0, i * batch, batch)?))?;
            Ok(())
        };
        for i in 0..2 {
            step(&mut model, &mut ctx, i)?;
        }
        candle_core::opcount::take();
        candle_core::opcount::take_sites();
        for i in 2..5 {
            step(&mut model, &mut ctx, i)?;
        }
        show("W4 train_step", &candle_core::opcount::take(), 3.0, 3.0);
    }
    if want("w2") {
        let mut model = Sequential::new()
            .input(&[784])
            .add(Dense::new(256).activation("relu")?)
            .add(Dense::new(128).activation("relu")?)
            .add(Dense::new(10))
            .compile(
                Compile::new()
                    .optimizer("adam")
                    .loss(SparseCategoricalCrossentropy::new().from_logits(true))
                    .metrics(["accuracy"]),
            )?;
        let n = 128 * 30;
        let x = ferrokeras::random::uniform(&[n, 784], 0.0, 1.0, &dev)?;
        let y = (ferrokeras::random::uniform(&[n], 0.0, 1.0, &dev)? * 10.0)?
            .floor()?
            .to_dtype(DType::F32)?;
        let mut fit = |steps: usize| -> Result<BTreeMap<&'static str, u64>> {
            candle_core::opcount::take();
            candle_core::opcount::take_sites();
            let (x, y) = (x.narrow(0, 0, 128 * steps)?, y.narrow(0, 0, 128 * steps)?);
            model.fit((x, y), FitOptions::new().batch_size(128).verbose(0))?;
            Ok(candle_core::opcount::take())
        };
        fit(4)?;
        let short = fit(10)?;
        let long = fit(30)?;
        let per_step: BTreeMap<_, _> = long
            .iter()
            .map(|(k, v)| (*k, v.saturating_sub(short.get(k).copied().unwrap_or(0))))
            .collect();
        show("W2 fit step", &per_step, 20.0, 30.0);
    }
    Ok(())
}
