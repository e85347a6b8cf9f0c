use candle_core::{DType, Device, Tensor};
use ferrokeras::prelude::*;
fn run<T>(name: &str, f: impl FnOnce() -> Result<T> + std::panic::UnwindSafe) {
    match std::panic::catch_unwind(f) {
        Ok(Ok(_)) => println!("{name}: OK"),
        Ok(Err(e)) => println!("{name}: ERR {}", e.to_string().lines().next().unwrap()),
        Err(_) => println!("{name}: PANIC"),
    }
}
#[test]
fn probe() {
    let y = || Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap();
    let p = || Tensor::new(&[[0u8, 1], [1, 0]], &Device::Cpu).unwrap();
    let losses: Vec<(
        &str,
        Box<dyn Fn() -> Box<dyn Loss> + std::panic::RefUnwindSafe>,
    )> = vec![
        ("mse", Box::new(|| Box::new(MseLoss::new()))),
        ("mae", Box::new(|| Box::new(MaeLoss::new()))),
        ("huber", Box::new(|| Box::new(Huber::new(1.0)))),
        ("bce", Box::new(|| Box::new(BinaryCrossentropy::new()))),
        (
            "bce logits",
            Box::new(|| Box::new(BinaryCrossentropy::new().from_logits(true))),
        ),
        ("cce", Box::new(|| Box::new(CategoricalCrossentropy::new()))),
        (
            "cce logits",
            Box::new(|| Box::new(CategoricalCrossentropy::new().from_logits(true))),
        ),
    ];
    for (n, l) in &losses {
        run(&format!("{n} u8 pred"), || l().compute(&y(), &p(), None));
        run(&format!("{n} f64 pred"), || {
            l().compute(&y(), &p().to_dtype(DType::F64).unwrap(), None)
        });
    }
    run("scce u8 pred", || {
        SparseCategoricalCrossentropy::new().compute(
            &Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap(),
            &p(),
            None,
        )
    });
    run("scce logits u8 pred", || {
        SparseCategoricalCrossentropy::new()
            .from_logits(true)
            .compute(
                &Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap(),
                &p(),
                None,
            )
    });
    let ms: Vec<(
        &str,
        Box<dyn Fn() -> Box<dyn Metric> + std::panic::RefUnwindSafe>,
    )> = vec![
        ("mae", Box::new(|| Box::new(MeanAbsoluteError::new()))),
        ("mse", Box::new(|| Box::new(MeanSquaredError::new()))),
        ("rmse", Box::new(|| Box::new(RootMeanSquaredError::new()))),
        ("bacc", Box::new(|| Box::new(BinaryAccuracy::new()))),
        ("cacc", Box::new(|| Box::new(CategoricalAccuracy::new()))),
        (
            "topk",
            Box::new(|| Box::new(TopKCategoricalAccuracy::new())),
        ),
        (
            "sacc",
            Box::new(|| Box::new(SparseCategoricalAccuracy::new())),
        ),
        ("acc", Box::new(|| Box::new(Accuracy::new()))),
    ];
    for (n, m) in &ms {
        run(&format!("metric {n} u8 pred"), || {
            m().update_state(&y(), &p(), None)
        });
        run(&format!("metric {n} shape mismatch"), || {
            m().update_state(
                &y(),
                &Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap(),
                None,
            )
        });
        run(&format!("metric {n} sw wrong"), || {
            m().update_state(
                &y(),
                &y(),
                Some(&Tensor::ones(5, DType::F32, &Device::Cpu).unwrap()),
            )
        });
        run(&format!("metric {n} 0 batch"), || {
            m().update_state(
                &Tensor::zeros((0, 2), DType::F32, &Device::Cpu).unwrap(),
                &Tensor::zeros((0, 2), DType::F32, &Device::Cpu).unwrap(),
                None,
            )
        });
    }
}
