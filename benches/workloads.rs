//! Throughput of the four reference workloads, through `fit` and as plain loops, and the
//! machine's float32 GEMM rate. Run: `cargo bench --bench workloads` (add `-- w2 w4` to pick).
//!
//! W1 the guide's first model (Dense 32→1, mse, Adam, metric mae), 1000 samples, batch 32, via
//!    `fit`: steps/s.
//! W2 MLP 784→256→128→10 (relu), sparse softmax cross-entropy, Adam, batch 128: samples/s.
//! W3 Keras's MNIST convnet, batch 128: samples/s.
//! W4 the guide's GAN `train_step`, batch 64: steps/s.
//! Only steps after a warm-up are timed; the data is synthetic, of the real shapes. W2 (a run is
//! under half a second) and W4 run `fit` and the plain loop alternately nine and five times and
//! report medians (what `fit` costs: the median over back-to-back pairs of runs of the ratio of
//! their rates, and on the CPU the ratio of the median times from the end of one step to the end
//! of the next); W3 reports the median of three runs (this machine's speed moves by 10% within
//! seconds: medians of several short runs move less than one long run). A plain loop does the
//! work `fit` does, written by hand as the peers' PyTorch loop is (W2: shuffled batches, loss and
//! accuracy sums read once per epoch; W4: the same `train_step` on consecutive batches); W2 again
//! on consecutive rows, both ways.
//! `--policy mixed_bfloat16` (any Keras dtype policy name) sets the global dtype policy first;
//! `--tf32` lets float32 products on CUDA run in TensorFloat-32
//! (`runtime::enable_tensor_float_32_execution`).
//! `w4layers` (only when named) times W4's step layer by layer, forward and backward, and each
//! optimizer's update, next to the whole step: where a device spends it.
//! `--device cuda` (or `FERROKERAS_DEVICE=cuda`) runs them on the GPU in a `cuda` build, with the
//! data on the GPU (as a PyTorch loop would have it) and a device synchronisation before each
//! clock read.
//! The last column is the share of CPU time that a virtual machine's host gave to other machines
//! during the row's runs (`/proc/stat`'s steal): a run with a large share had fewer cores than it
//! was given, and compares with nothing.
//! The GEMM rate (square products of 2048 on the CPU, best of five timings) is taken before W3 and
//! again after W4; the last rows give W3's and W4's FLOP rates (the peers' analytic counts: W3
//! 14.65 MFLOP per sample, W4 40.1 GFLOP per step) as a share of the higher of the two.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ferrokeras::data::{ArrayAdapter, Dataset};
use ferrokeras::layers::{Conv2D, MaxPooling2D};
use ferrokeras::prelude::*;

#[path = "../examples/shared/gan.rs"]
#[allow(dead_code)]
mod gan;

fn dev() -> Device {
    ferrokeras::runtime::default_device()
}

/// Seconds since `t`, once the device has finished the work queued so far.
fn elapsed(t: Instant) -> Result<f64> {
    dev().synchronize()?;
    Ok(t.elapsed().as_secs_f64())
}

fn uniform(shape: &[usize]) -> Result<Tensor> {
    ferrokeras::random::uniform(shape, 0.0, 1.0, &dev())
}

fn labels(n: usize) -> Result<Tensor> {
    Ok((uniform(&[n])? * 10.0)?.floor()?.clamp(0f32, 9f32)?)
}

fn w1() -> Result<f64> {
    let inputs = Input::new(&[32]);
    let outputs = Dense::new(1).apply(&inputs)?;
    let mut model = Functional::new(&[inputs], &[outputs])?.compile(
        Compile::new()
            .optimizer("adam")
            .loss("mse")
            .metrics(["mae"]),
    )?;
    let (x, y) = (uniform(&[1000, 32])?, uniform(&[1000, 1])?);
    model.fit(
        (x.clone(), y.clone()),
        FitOptions::new().epochs(2).verbose(0),
    )?;
    let epochs = 30;
    let t = Instant::now();
    model.fit((x, y), FitOptions::new().epochs(epochs).verbose(0))?;
    Ok((epochs * 32) as f64 / elapsed(t)?)
}

/// W5: an LSTM(64) (with `gru`, a GRU(64)) over sequences of 50 steps of 32 features, then
/// Dense(1), MSE, Adam, batch 32 (samples per second through `fit`).
fn w5(gru: bool) -> Result<f64> {
    let model = Sequential::new().input(&[50, 32]);
    let model = if gru {
        model.add(ferrokeras::layers::GRU::new(64))
    } else {
        model.add(ferrokeras::layers::LSTM::new(64))
    };
    let mut model = model
        .add(Dense::new(1))
        .compile(Compile::new().optimizer("adam").loss("mse"))?;
    let (x, y) = (uniform(&[512, 50, 32])?, uniform(&[512, 1])?);
    model.fit(
        (x.narrow(0, 0, 64)?, y.narrow(0, 0, 64)?),
        FitOptions::new().epochs(1).batch_size(32).verbose(0),
    )?;
    let t = Instant::now();
    model.fit(
        (x, y),
        FitOptions::new().epochs(1).batch_size(32).verbose(0),
    )?;
    Ok(512.0 / elapsed(t)?)
}

/// W6: a transformer block on sequences of 64 ids (vocabulary 1000, embeddings 64): token and
/// position embeddings, MultiHeadAttention(4 heads of 16), residual and LayerNormalization, a
/// feed-forward Dense(128, relu) → Dense(64) with its residual and LayerNormalization, then
/// average pooling and Dense(2); sparse cross-entropy, Adam, batch 32 (samples per second
/// through `fit`).
fn w6() -> Result<f64> {
    use ferrokeras::layers::{
        Embedding, GlobalAveragePooling1D, LayerNormalization, MultiHeadAttention,
    };
    let (len, d, n) = (64usize, 64usize, 512usize);
    let ids_in = Input::new(&[len]);
    let pos_in = Input::new(&[len]);
    let e = Embedding::new(1000, d).apply(&ids_in)?;
    let p = Embedding::new(len, d).apply(&pos_in)?;
    let h = Add::new().apply_many(&[e, p])?;
    let a = MultiHeadAttention::new(4, 16).apply_many(&[h.clone(), h.clone()])?;
    let h = LayerNormalization::new().apply(&Add::new().apply_many(&[h, a])?)?;
    let f = Dense::new(128).activation("relu")?.apply(&h)?;
    let f = Dense::new(d).apply(&f)?;
    let h = LayerNormalization::new().apply(&Add::new().apply_many(&[h, f])?)?;
    let h = GlobalAveragePooling1D::new().apply(&h)?;
    let out = Dense::new(2).apply(&h)?;
    let mut model = Functional::new(&[ids_in, pos_in], &[out])?.compile(
        Compile::new()
            .optimizer("adam")
            .loss(SparseCategoricalCrossentropy::new().from_logits(true)),
    )?;
    let dev = candle_core::Device::Cpu;
    let ids = (uniform(&[n, len])?.affine(499.5, 499.5)?).floor()?;
    let pos = Tensor::arange(0f32, len as f32, &dev)?
        .unsqueeze(0)?
        .repeat((n, 1))?;
    let y = (uniform(&[n, 1])?.affine(0.5, 0.5)?).round()?;
    let warm = Inputs::xy(
        vec![ids.narrow(0, 0, 64)?, pos.narrow(0, 0, 64)?],
        y.narrow(0, 0, 64)?,
    );
    model.fit(warm, FitOptions::new().epochs(1).batch_size(32).verbose(0))?;
    let t = Instant::now();
    model.fit(
        Inputs::xy(vec![ids, pos], y),
        FitOptions::new().epochs(1).batch_size(32).verbose(0),
    )?;
    Ok(n as f64 / elapsed(t)?)
}

fn mlp() -> Result<Sequential> {
    Ok(Sequential::new()
        .input(&[784])
        .add(Dense::new(256).activation("relu")?)
        .add(Dense::new(128).activation("relu")?)
        .add(Dense::new(10)))
}

/// One timed run: throughput over the whole run, and the median time from the end of one step to
/// the end of the next (robust to another process taking the CPU for part of the run).
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    step: f64,
}

/// The end of every step, as a `fit` callback or by hand.
#[derive(Clone, Default)]
struct Clock(std::sync::Arc<std::sync::Mutex<Vec<Instant>>>);

impl Clock {
    fn tick(&self) {
        if let Ok(mut v) = self.0.lock() {
            v.push(Instant::now());
        }
    }
    fn callback(&self) -> LambdaCallback {
        let c = self.clone();
        LambdaCallback::new().on_batch_end(move |_, _| {
            c.tick();
            Ok(())
        })
    }
    /// Median seconds between consecutive ticks (0 with fewer than two).
    fn median_step(&self) -> f64 {
        let v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        let mut d: Vec<f64> = v.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        d.sort_by(f64::total_cmp);
        d.get(d.len() / 2).copied().unwrap_or(0.0)
    }
}

/// W2 through `fit`; `shuffle` as `FitOptions::shuffle` (Keras's default: on).
fn w2_fit(shuffle: bool) -> Result<Run> {
    let mut model = mlp()?.compile(
        Compile::new()
            .optimizer("adam")
            .loss(SparseCategoricalCrossentropy::new().from_logits(true))
            .metrics(["accuracy"]),
    )?;
    let n = 60000;
    let (x, y) = (uniform(&[n, 784])?, labels(n)?);
    let warm = 128 * 10 + 96;
    model.fit(
        (x.narrow(0, 0, warm)?, y.narrow(0, 0, warm)?),
        FitOptions::new().batch_size(128).verbose(0),
    )?;
    let clock = Clock::default();
    let t = Instant::now();
    model.fit(
        (x, y),
        FitOptions::new()
            .batch_size(128)
            .shuffle(shuffle)
            .callback(clock.callback())
            .verbose(0),
    )?;
    Ok(Run {
        rate: n as f64 / elapsed(t)?,
        step: clock.median_step(),
    })
}

/// W2 as a hand-written loop (the peers' PyTorch loop): when `shuffle`, batches in a new random
/// order each epoch, gathered as `fit` gathers them ([`ArrayAdapter::batch`]); else consecutive
/// rows. Loss and accuracy summed on the device, read once at the end of the epoch.
fn w2_plain(shuffle: bool) -> Result<Run> {
    let mut model = mlp()?;
    let mut opt = Adam::new(0.001);
    let loss_fn = SparseCategoricalCrossentropy::new().from_logits(true);
    let n = 60000;
    let (x, y) = (uniform(&[n, 784])?, labels(n)?);
    let data = ArrayAdapter::new(x.into(), Some(y.into()), None, 128)?;
    let mut run = |count: usize| -> Result<Run> {
        let clock = Clock::default();
        let t = Instant::now();
        let order = shuffle.then(|| ferrokeras::random::permutation(n));
        let mut loss_sum = Tensor::zeros((), DType::F32, &dev())?;
        let mut hit_sum = Tensor::zeros((), DType::F32, &dev())?;
        for i in 0..count.div_ceil(128) {
            let batch = data.batch(i, order.as_deref())?;
            let (xb, yb, _) = batch.unpack()?;
            let (xb, yb) = (xb.tensor()?, yb.as_ref().map(|y| y.tensor()).transpose()?);
            let yb = yb.ok_or_else(|| ferrokeras::Error::value("W2 batches hold labels"))?;
            let logits = model.forward(xb, true)?;
            let loss = loss_fn.compute(yb, &logits, None)?;
            let vars = model.trainable_variables();
            let grads = GradientTape::gradient(&loss, &vars)?;
            opt.apply(&grads, &vars)?;
            loss_sum = (loss_sum + (loss.detach() * yb.dims()[0] as f64)?)?;
            let correct = logits.argmax(1)?.to_dtype(DType::F32)?.eq(yb)?;
            hit_sum = (hit_sum + correct.to_dtype(DType::F32)?.sum_all()?)?;
            clock.tick();
        }
        let (_loss, _hits) = (loss_sum.to_scalar::<f32>()?, hit_sum.to_scalar::<f32>()?);
        Ok(Run {
            rate: count as f64 / elapsed(t)?,
            step: clock.median_step(),
        })
    };
    run(128 * 10 + 96)?;
    run(n)
}

fn w3() -> Result<f64> {
    let model = Sequential::new()
        .input(&[28, 28, 1])
        .add(Conv2D::new(32, (3, 3)).activation("relu")?)
        .add(MaxPooling2D::new((2, 2)))
        .add(Conv2D::new(64, (3, 3)).activation("relu")?)
        .add(MaxPooling2D::new((2, 2)))
        .add(Flatten::new())
        .add(Dropout::new(0.5)?)
        .add(Dense::new(10).activation("softmax")?);
    let mut model = model.compile(
        Compile::new()
            .loss("sparse_categorical_crossentropy")
            .optimizer("adam")
            .metrics(["accuracy"]),
    )?;
    let steps = 30;
    let n = 128 * steps;
    let (x, y) = (uniform(&[n, 28, 28, 1])?, labels(n)?);
    model.fit(
        (x.narrow(0, 0, 128 * 3)?, y.narrow(0, 0, 128 * 3)?),
        FitOptions::new().batch_size(128).verbose(0),
    )?;
    let t = Instant::now();
    model.fit((x, y), FitOptions::new().batch_size(128).verbose(0))?;
    Ok(n as f64 / elapsed(t)?)
}

fn gan_model() -> Result<Trainer<gan::Gan>> {
    let g = gan::Gan::new(gan::discriminator()?, gan::generator(128)?, 128);
    Ok(g.compile(
        Adam::new(3e-4),
        Adam::new(3e-4),
        BinaryCrossentropy::new().from_logits(true),
    ))
}

fn w4_fit(steps: usize) -> Result<Run> {
    let mut model = gan_model()?;
    let images = uniform(&[64 * (steps + 2), 28, 28, 1])?;
    let ds = Dataset::from_tensor_slices(images)?.batch(64, true);
    model.fit(ds.clone().take(2), FitOptions::new().verbose(0))?;
    let clock = Clock::default();
    let t = Instant::now();
    model.fit(
        ds.skip(2),
        FitOptions::new().callback(clock.callback()).verbose(0),
    )?;
    Ok(Run {
        rate: steps as f64 / elapsed(t)?,
        step: clock.median_step(),
    })
}

fn w4_plain(steps: usize) -> Result<Run> {
    let mut model = gan_model()?;
    let mut ctx = StepContext::new();
    let images = uniform(&[64 * (steps + 2), 28, 28, 1])?;
    for i in 0..2 {
        model.train_step(&mut ctx, &Data::from(images.narrow(0, i * 64, 64)?))?;
    }
    let clock = Clock::default();
    let t = Instant::now();
    for i in 2..steps + 2 {
        model.train_step(&mut ctx, &Data::from(images.narrow(0, i * 64, 64)?))?;
        clock.tick();
    }
    Ok(Run {
        rate: steps as f64 / elapsed(t)?,
        step: clock.median_step(),
    })
}

/// Median seconds of `f` over `reps` runs after two warm-ups, the device synchronised around
/// each run (so queued work is counted where it was queued).
fn time_op(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    dev().synchronize()?;
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        v.push(elapsed(t)?);
    }
    Ok(median(v))
}

/// Where a GAN step's time goes, layer by layer: each layer of `model` alone on the output of
/// the one before, its forward pass (training mode), and its forward and backward passes (the
/// gradient of `sum(y * r)` for its variables, and for its input except at the first layer
/// unless `input_grad`), each timed on its own with the device synchronised. Returns the last
/// output and the summed times.
fn layer_profile(
    label: &str,
    model: &mut Sequential,
    x: Tensor,
    input_grad: bool,
) -> Result<(Tensor, f64, f64)> {
    let (mut x, mut fwd_sum, mut both_sum) = (x, 0.0, 0.0);
    for (i, layer) in model.layers_mut().iter_mut().enumerate() {
        let y = layer.call(&x, true)?.detach();
        let r = uniform(y.dims())?;
        let fwd = time_op(10, || layer.call(&x, true).map(drop))?;
        let xv = Variable::new("x", &x, true)?;
        let mut vars: Vec<Variable> = layer
            .variables()
            .into_iter()
            .filter(Variable::trainable)
            .collect();
        let with_x = i > 0 || input_grad;
        if with_x {
            vars.push(xv.clone());
        }
        let both = time_op(10, || {
            let y = layer.call(if with_x { xv.as_tensor() } else { &x }, true)?;
            GradientTape::gradient(&(y * &r)?.sum_all()?, &vars).map(drop)
        })?;
        println!(
            "| {label} {} | {:?} | {:.3} | {:.3} |",
            layer.name(),
            y.dims(),
            fwd * 1e3,
            (both - fwd) * 1e3
        );
        fwd_sum += fwd;
        both_sum += both;
        x = y;
    }
    Ok((x, fwd_sum, both_sum))
}

/// W4's step, taken apart: every layer of the generator and of the discriminator (forward, and
/// backward), each optimizer's update, next to the whole step. For finding where a device spends
/// the step (`workloads --device cuda w4layers`); not part of the default run.
fn w4_layers() -> Result<()> {
    let mut gan = gan::Gan::new(gan::discriminator()?, gan::generator(128)?, 128);
    println!("| W4 layer | output | forward ms | backward ms |");
    println!("|---|---|---|---|");
    let z = ferrokeras::random::normal(&[64, 128], 0.0, 1.0, &dev())?;
    let (fake, gf, gb) = layer_profile("G", &mut gan.generator, z, false)?;
    // The discriminator sees 128 images in its own step (64 generated, 64 real); its input
    // gradient is needed in the generator's step.
    let images = Tensor::cat(&[&fake, &uniform(&[64, 28, 28, 1])?], 0)?;
    let (_, df, db) = layer_profile("D", &mut gan.discriminator, images, true)?;
    let mut adam_ms = 0.0;
    for (label, vars) in [
        ("G", gan.generator.trainable_variables()),
        ("D", gan.discriminator.trainable_variables()),
    ] {
        let grads = vars
            .iter()
            .map(|v| uniform(v.as_tensor().dims()))
            .collect::<Result<Vec<_>>>()?;
        let mut opt = Adam::new(3e-4);
        let t = time_op(10, || opt.apply(&grads, &vars))?;
        println!(
            "| {label} Adam update | {} variables | {:.3} | |",
            vars.len(),
            t * 1e3
        );
        adam_ms += t * 1e3;
    }
    let step = 1.0 / w4_plain(20)?.rate;
    println!(
        "| sums | G {:.3} + {:.3}, D {:.3} + {:.3}, Adam {adam_ms:.3} | whole step {:.3} ms | |",
        gf * 1e3,
        (gb - gf) * 1e3,
        df * 1e3,
        (db - df) * 1e3,
        step * 1e3
    );
    Ok(())
}

/// Runs a plain loop as `fit` runs its own: on rayon's pool on the CPU, on this thread elsewhere.
fn plain_loop<T: Send>(run: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if dev().is_cpu() {
        ferrokeras::runtime::run_on_pool(run)
    } else {
        run()
    }
}

/// Side of the square products that [`gemm_peak`] times.
fn gemm_side() -> usize {
    if dev().is_cpu() { 2048 } else { 8192 }
}

/// float32 GEMM rate of candle's matmul on this machine (GFLOP/s): the best of five timings of
/// a few products each, as the peers' `gemm_peak.py` takes the best of its runs (a peak, on a
/// machine whose clock moves with its neighbours' load).
fn gemm_peak() -> Result<f64> {
    let n = gemm_side();
    let a = Tensor::randn(0f32, 1.0, (n, n), &dev())?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &dev())?;
    let _ = a.matmul(&b)?;
    dev().synchronize()?;
    let reps = if dev().is_cpu() { 3 } else { 10 };
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            let c = a.matmul(&b)?;
            let _ = c.dtype() == DType::F32;
        }
        best = best.max(2.0 * (n * n * n * reps) as f64 / elapsed(t)? / 1e9);
    }
    Ok(best)
}

/// Multiply-adds of a convolution producing `pixels` outputs of `cout` channels from
/// `k`×`k` windows over `cin` channels (a transposed one: `pixels` its inputs).
fn conv_macs(pixels: usize, k: usize, cin: usize, cout: usize) -> f64 {
    (pixels * k * k * cin * cout) as f64
}

/// FLOPs of one W3 training sample: twice the multiply-adds forward, and backward twice the
/// forward (the rule the peers' `flops.py` uses): 14.65 MFLOP.
fn w3_flops_per_sample() -> f64 {
    let forward = conv_macs(26 * 26, 3, 1, 32) + conv_macs(11 * 11, 3, 32, 64) + 1600.0 * 10.0;
    2.0 * forward * 3.0
}

/// FLOPs of one W4 step (batch 64): the generator forward for the discriminator's step, the
/// discriminator forward and backward over 128 images, then both forward and backward over 64
/// for the generator's step (40.1 GFLOP, as the peers count it).
fn w4_flops_per_step() -> f64 {
    let generator = 128.0 * 6272.0
        + conv_macs(7 * 7, 4, 128, 128)
        + conv_macs(14 * 14, 4, 128, 128)
        + conv_macs(28 * 28, 7, 128, 1);
    let discriminator = conv_macs(14 * 14, 3, 1, 64) + conv_macs(7 * 7, 3, 64, 128) + 128.0;
    let fwd = |macs: f64, n: f64| 2.0 * macs * n;
    fwd(generator, 64.0)
        + 3.0 * fwd(discriminator, 128.0)
        + 3.0 * fwd(generator, 64.0)
        + 3.0 * fwd(discriminator, 64.0)
}

/// `reps` alternating runs of `a` and `b` (this machine is noisy; alternating keeps the
/// comparison fair).
fn interleaved<T>(
    reps: usize,
    mut a: impl FnMut() -> Result<T>,
    mut b: impl FnMut() -> Result<T>,
) -> Result<(Vec<T>, Vec<T>)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..reps {
        if i % 2 == 0 {
            xs.push(a()?);
            ys.push(b()?);
        } else {
            ys.push(b()?);
            xs.push(a()?);
        }
    }
    Ok((xs, ys))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Medians of the rates of runs, and of their median step times.
fn medians(runs: &[Run]) -> (f64, f64) {
    (
        median(runs.iter().map(|r| r.rate).collect()),
        median(runs.iter().map(|r| r.step).collect()),
    )
}

/// What `fit` costs over the plain loop, in percent: the median over the pairs of runs made
/// back to back (a slow phase of the machine then slows both runs of a pair) of
/// `plain rate / fit rate - 1`.
fn paired_cost(fit: &[f64], plain: &[f64]) -> f64 {
    median(fit.iter().zip(plain).map(|(f, p)| p / f - 1.0).collect()) * 100.0
}

/// Pairs of W2 runs per row: a run takes under half a second on two cores, where the machine's
/// speed moves by several percent between runs; five pairs left the median ratio ±5% apart from
/// one sitting's round to the next.
const W2_PAIRS: usize = 9;

/// One W2 row: `fit` against the plain loop, by throughput and (on the CPU, where every step
/// of both ends synchronously) by median step time.
fn w2_row(label: &str, shuffle: bool) -> Result<()> {
    let t = cpu_ticks();
    let (f, p) = interleaved(
        W2_PAIRS,
        || w2_fit(shuffle),
        || plain_loop(|| w2_plain(shuffle)),
    )?;
    let (fr, pr, cost) = fit_cost(&f, &p);
    println!(
        "| {label} | {fr:.0} | {pr:.0} (fit costs {cost}) | samples/s | {} |",
        stolen_since(t)
    );
    Ok(())
}

/// The median rates of interleaved `fit` and plain-loop runs, and what `fit` costs: by paired
/// throughput, and (on the CPU, where every step of both ends synchronously) by median step time.
fn fit_cost(f: &[Run], p: &[Run]) -> (f64, f64, String) {
    let ((fr, fs), (pr, ps)) = (medians(f), medians(p));
    let rates = |runs: &[Run]| runs.iter().map(|r| r.rate).collect::<Vec<_>>();
    let by_step = if dev().is_cpu() {
        let (fs, ps, unit) = if fs < 0.1 {
            (fs * 1e6, ps * 1e6, "µs")
        } else {
            (fs * 1e3, ps * 1e3, "ms")
        };
        format!(
            "; median step {fs:.0} vs {ps:.0} {unit}, fit costs {:+.1}%",
            (fs / ps - 1.0) * 100.0
        )
    } else {
        String::new()
    };
    let cost = format!("{:+.1}%{by_step}", paired_cost(&rates(f), &rates(p)));
    (fr, pr, cost)
}

/// The machine's CPU time counters from `/proc/stat` (Linux): time the host gave to other
/// machines ("steal") and all time, in clock ticks. `None` where there is no such file.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() == 8).then(|| (v[7], v.iter().sum()))
}

/// The share of CPU time a virtual machine's host took away since `start` (a run with a large
/// share ran on fewer cores than it was given: compare only runs with a small one).
fn stolen_since(start: Option<(u64, u64)>) -> String {
    match (start, cpu_ticks()) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            format!("{:.1}%", 100.0 * (s1 - s0) as f64 / (t1 - t0) as f64)
        }
        _ => "–".to_string(),
    }
}

fn main() -> Result<()> {
    ferrokeras::random::set_random_seed(0);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--device") {
        let name = args.get(i + 1).map_or("cpu", String::as_str);
        ferrokeras::runtime::set_default_device(&ferrokeras::runtime::device_from_name(name)?);
    }
    if let Some(i) = args.iter().position(|a| a == "--policy") {
        let name = args.get(i + 1).map_or("float32", String::as_str);
        ferrokeras::mixed_precision::set_global_policy(name)?;
        println!("dtype policy: {name}");
    }
    if args.iter().any(|a| a == "--tf32") {
        ferrokeras::runtime::enable_tensor_float_32_execution(true);
        println!("float32 products in TensorFloat-32 (on CUDA)");
    }
    let picked: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with('-')
                && (*i == 0 || !["--device", "--policy"].contains(&args[i - 1].as_str()))
        })
        .map(|(_, a)| a.clone())
        .collect();
    // A GPU step is short: time more of them.
    let w4_steps = if dev().is_cpu() { 6 } else { 100 };
    println!("device: {}", if dev().is_cpu() { "cpu" } else { "cuda" });
    let want = |w: &str| picked.is_empty() || picked.iter().any(|p| p == w);
    println!(
        "| workload | ferrokeras via fit | plain loop (no fit) | unit | CPU time taken by the host |"
    );
    println!("|---|---|---|---|---|");
    if want("w1") {
        let t = cpu_ticks();
        let r = w1()?;
        println!(
            "| W1 guide Dense 32→1, batch 32 | {r:.0} | – | steps/s | {} |",
            stolen_since(t)
        );
    }
    if want("w2") {
        // The plain loops run where `fit` runs its loop: on rayon's pool, on the CPU.
        w2_row("W2 MLP 784-256-128-10, batch 128", true)?;
        // Both again on consecutive rows (no gather of shuffled rows).
        w2_row("W2, consecutive rows (`shuffle=false`)", false)?;
    }
    // The GEMM peak is timed before the convolution workloads and after them (the machine's
    // clock moves): their efficiency is against the higher of the two.
    let mut peaks = Vec::new();
    let gemm_row = |peaks: &mut Vec<f64>| -> Result<()> {
        let t = cpu_ticks();
        let r = gemm_peak()?;
        println!(
            "| float32 GEMM {n}³ (candle matmul, best of 5) | {r:.1} | – | GFLOP/s | {} |",
            stolen_since(t),
            n = gemm_side(),
        );
        peaks.push(r);
        Ok(())
    };
    if want("gemm") {
        gemm_row(&mut peaks)?;
    }
    let mut achieved = Vec::new();
    if want("w3") {
        let t = cpu_ticks();
        let runs = (0..3).map(|_| w3()).collect::<Result<Vec<_>>>()?;
        let r = median(runs);
        println!(
            "| W3 MNIST convnet, batch 128 | {r:.0} | – | samples/s | {} |",
            stolen_since(t)
        );
        achieved.push(("W3", r * w3_flops_per_sample() / 1e9));
    }
    if want("w4") {
        let t = cpu_ticks();
        let (f, p) = interleaved(5, || w4_fit(w4_steps), || plain_loop(|| w4_plain(w4_steps)))?;
        let (f, p, cost) = fit_cost(&f, &p);
        println!(
            "| W4 guide GAN step, batch 64 | {f:.2} | {p:.2} (fit costs {cost}) | steps/s | {} |",
            stolen_since(t)
        );
        achieved.push(("W4", f * w4_flops_per_step() / 1e9));
    }
    if want("w5") {
        let t = cpu_ticks();
        let runs = (0..3).map(|_| w5(false)).collect::<Result<Vec<_>>>()?;
        let r = median(runs);
        println!(
            "| W5 LSTM(64), 50 steps of 32 features, batch 32 | {r:.0} | – | samples/s | {} |",
            stolen_since(t)
        );
    }
    if want("w5gru") {
        let t = cpu_ticks();
        let runs = (0..3).map(|_| w5(true)).collect::<Result<Vec<_>>>()?;
        let r = median(runs);
        println!(
            "| W5 with GRU(64) | {r:.0} | – | samples/s | {} |",
            stolen_since(t)
        );
    }
    if want("w6") {
        let t = cpu_ticks();
        let runs = (0..3).map(|_| w6()).collect::<Result<Vec<_>>>()?;
        let r = median(runs);
        println!(
            "| W6 transformer block, 64 ids, d 64, 4 heads, batch 32 | {r:.0} | – | samples/s | {} |",
            stolen_since(t)
        );
    }
    if picked.iter().any(|p| p == "w4layers") {
        w4_layers()?;
    }
    if want("gemm") && !achieved.is_empty() {
        gemm_row(&mut peaks)?;
    }
    if let Some(peak) = peaks.iter().copied().reduce(f64::max) {
        for (w, gflops) in achieved {
            println!(
                "| {w} FLOP efficiency (via fit) | {gflops:.1} | – | GFLOP/s = {:.0}% of {peak:.1} | |",
                100.0 * gflops / peak
            );
        }
    }
    Ok(())
}
