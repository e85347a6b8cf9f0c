//! The guide's GAN pieces on real MNIST: a few steps with a fixed seed, finite losses, and each
//! half of the step updating only its own network.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use ferrokeras::data::Dataset;
use ferrokeras::layers::{Conv2D, Conv2DTranspose, GlobalMaxPooling2D};
use ferrokeras::prelude::*;

fn mnist_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist")
}

fn load_mnist() -> ferrokeras::datasets::mnist::MnistSplits {
    let dir = mnist_dir();
    if dir.exists() {
        ferrokeras::datasets::mnist::load_data_from(&dir).unwrap()
    } else {
        ferrokeras::datasets::mnist::load_data().unwrap()
    }
}

#[test]
fn mnist_has_the_published_shapes_and_labels() {
    let ((x, y), (xt, yt)) = load_mnist();
    assert_eq!(x.dims(), &[60000, 28, 28]);
    assert_eq!(y.dims(), &[60000]);
    assert_eq!(xt.dims(), &[10000, 28, 28]);
    assert_eq!(yt.dims(), &[10000]);
    assert_eq!(x.dtype(), DType::U8);
    let first: Vec<u8> = y.narrow(0, 0, 10).unwrap().to_vec1().unwrap();
    assert_eq!(first, vec![5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    let first_test: Vec<u8> = yt.narrow(0, 0, 10).unwrap().to_vec1().unwrap();
    assert_eq!(first_test, vec![7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    let labels: Vec<u8> = y.to_vec1().unwrap();
    let mut counts = [0usize; 10];
    labels.iter().for_each(|l| counts[*l as usize] += 1);
    assert_eq!(
        counts,
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    let mean = x
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        / 255.0;
    assert!((mean - 0.1307).abs() < 1e-4, "pixel mean {mean}");
}

#[test]
fn corrupt_and_truncated_mnist_files_are_reported() {
    let dir = std::env::temp_dir().join(format!("ferrokeras-mnist-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, _) in ferrokeras::datasets::mnist::FILES {
        let src = mnist_dir().join(name);
        let bytes = std::fs::read(&src).unwrap_or_else(|_| vec![0u8; 100]);
        std::fs::write(dir.join(name), &bytes[..bytes.len() / 2]).unwrap();
    }
    let err = ferrokeras::datasets::mnist::load_data_from(&dir)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("train-images"),
        "{err}"
    );
    let missing = std::env::temp_dir().join("ferrokeras-mnist-does-not-exist");
    let err = ferrokeras::datasets::mnist::load_data_from(&missing)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("ferrokeras-mnist-does-not-exist")
            && err.contains("train-images-idx3-ubyte.gz"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn discriminator() -> Sequential {
    Sequential::new()
        .input(&[28, 28, 1])
        .add(Conv2D::new(64, (3, 3)).strides(2).padding("same").unwrap())
        .add(LeakyReLU::new(0.2))
        .add(Conv2D::new(128, (3, 3)).strides(2).padding("same").unwrap())
        .add(LeakyReLU::new(0.2))
        .add(GlobalMaxPooling2D::new())
        .add(Dense::new(1))
}

fn generator(latent: usize) -> Sequential {
    Sequential::new()
        .input(&[latent])
        .add(Dense::new(7 * 7 * 128))
        .add(LeakyReLU::new(0.2))
        .add(Reshape::new(&[7, 7, 128]))
        .add(
            Conv2DTranspose::new(128, (4, 4))
                .strides(2)
                .padding("same")
                .unwrap(),
        )
        .add(LeakyReLU::new(0.2))
        .add(
            Conv2DTranspose::new(128, (4, 4))
                .strides(2)
                .padding("same")
                .unwrap(),
        )
        .add(LeakyReLU::new(0.2))
        .add(
            Conv2D::new(1, (7, 7))
                .padding("same")
                .unwrap()
                .activation("sigmoid")
                .unwrap(),
        )
}

struct Gan {
    d: Sequential,
    g: Sequential,
    d_opt: Adam,
    g_opt: Adam,
    loss: BinaryCrossentropy,
    /// Whether each half changed only its own network (checked inside the step).
    checks: Vec<(bool, bool)>,
}

fn snapshot(vars: &[Variable]) -> Vec<Tensor> {
    vars.iter().map(|v| v.snapshot().unwrap()).collect()
}

fn changed(before: &[Tensor], vars: &[Variable]) -> bool {
    before.iter().zip(vars).any(|(b, v)| {
        (b - v.value())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    })
}

impl Model for Gan {
    fn call(&mut self, z: &Data, training: bool) -> ferrokeras::Result<Data> {
        Ok(self.g.forward(z.tensor()?, training)?.into())
    }
    fn variables(&self) -> Vec<Variable> {
        let mut v = self.d.variables();
        v.extend(self.g.variables());
        v
    }
    fn train_step(&mut self, _ctx: &mut StepContext, data: &Data) -> ferrokeras::Result<Logs> {
        let real = data.tensor()?;
        let n = real.dims()[0];
        let dev = real.device().clone();
        let (dv, gv) = (self.d.trainable_variables(), self.g.trainable_variables());
        let (d0, g0) = (snapshot(&dv), snapshot(&gv));
        let z = ferrokeras::random::normal(&[n, 128], 0.0, 1.0, &dev)?;
        let fake = self.g.forward(&z, true)?;
        let images = Tensor::cat(&[&fake, real], 0)?;
        let labels = Tensor::cat(
            &[
                Tensor::ones((n, 1), DType::F32, &dev)?,
                Tensor::zeros((n, 1), DType::F32, &dev)?,
            ],
            0,
        )?;
        let labels =
            (labels + (ferrokeras::random::uniform(&[2 * n, 1], 0.0, 1.0, &dev)? * 0.05)?)?;
        let d_loss = self
            .loss
            .compute(&labels, &self.d.forward(&images, true)?, None)?;
        let grads = GradientTape::gradient(&d_loss, &dv)?;
        self.d_opt.apply(&grads, &dv)?;
        let d_half = changed(&d0, &dv) && !changed(&g0, &gv);
        let (d1, g1) = (snapshot(&dv), snapshot(&gv));
        let z = ferrokeras::random::normal(&[n, 128], 0.0, 1.0, &dev)?;
        let preds = self.d.forward(&self.g.forward(&z, true)?, true)?;
        let g_loss = self
            .loss
            .compute(&Tensor::zeros((n, 1), DType::F32, &dev)?, &preds, None)?;
        let grads = GradientTape::gradient(&g_loss, &gv)?;
        self.g_opt.apply(&grads, &gv)?;
        let g_half = changed(&g1, &gv) && !changed(&d1, &dv);
        self.checks.push((d_half, g_half));
        let mut logs = Logs::new();
        logs.insert("d_loss", d_loss.to_scalar::<f32>()? as f64);
        logs.insert("g_loss", g_loss.to_scalar::<f32>()? as f64);
        Ok(logs)
    }
}

#[test]
fn gan_steps_on_mnist_update_only_their_own_network() {
    ferrokeras::random::set_random_seed(42);
    let ((x, _), _) = load_mnist();
    let images = (x.narrow(0, 0, 512).unwrap().to_dtype(DType::F32).unwrap() / 255.0)
        .unwrap()
        .reshape((512, 28, 28, 1))
        .unwrap();
    let ds = Dataset::from_tensor_slices(images)
        .unwrap()
        .shuffle(256, Some(1))
        .batch(16, false)
        .take(3);
    let gan = Gan {
        d: discriminator(),
        g: generator(128),
        d_opt: Adam::new(3e-4),
        g_opt: Adam::new(3e-4),
        loss: BinaryCrossentropy::new().from_logits(true),
        checks: Vec::new(),
    };
    let mut trainer = Trainer::new(gan);
    let history = trainer
        .fit(ds, FitOptions::new().epochs(1).verbose(0))
        .unwrap();
    for key in ["d_loss", "g_loss"] {
        let v = history.get(key);
        assert_eq!(v.len(), 1, "{key}");
        assert!(v[0].is_finite() && v[0] > 0.0, "{key} = {}", v[0]);
    }
    assert_eq!(trainer.checks.len(), 3);
    assert!(
        trainer.checks.iter().all(|(d, g)| *d && *g),
        "{:?}",
        trainer.checks
    );
    // The generator makes images of the right shape, in [0, 1].
    let z = Tensor::randn(0f32, 1.0, (4, 128), &ferrokeras::runtime::default_device()).unwrap();
    let img = trainer
        .call(&z.into(), false)
        .unwrap()
        .into_tensor()
        .unwrap();
    assert_eq!(img.dims(), &[4, 28, 28, 1]);
    let (lo, hi) = (
        img.min_all().unwrap().to_scalar::<f32>().unwrap(),
        img.max_all().unwrap().to_scalar::<f32>().unwrap(),
    );
    assert!(lo >= 0.0 && hi <= 1.0);
}

#[test]
fn png_grid_is_written_and_decodes() {
    let path = std::env::temp_dir().join(format!("ferrokeras-grid-{}.png", std::process::id()));
    let pixels: Vec<u8> = (0..56 * 56).map(|i| (i % 256) as u8).collect();
    ferrokeras::io::write_png(&path, 56, 56, 1, &pixels).unwrap();
    let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (56, 56));
    assert_eq!(&buf[..info.buffer_size()], pixels.as_slice());
    std::fs::remove_file(&path).ok();
    let err = ferrokeras::io::write_png(&path, 3, 3, 1, &[0; 4])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("9 bytes") && err.contains("received 4"),
        "{err}"
    );
}

#[test]
fn concurrent_atomic_writes_of_one_file_never_fail() {
    let path = std::env::temp_dir().join(format!("ferrokeras-atomic-{}.bin", std::process::id()));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let p = path.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    ferrokeras::io::write_atomic(&p, &[i as u8; 1000]).unwrap();
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 1000);
    assert!(
        bytes.iter().all(|b| *b == bytes[0]),
        "a file mixes two writes"
    );
    std::fs::remove_file(&path).ok();
}
