//! Data shared by the integration tests.

use candle_core::Tensor;

/// Deterministic regression data on the default device: `n` samples of `d` features in [-1, 1],
/// and a linear target.
pub fn regression(n: usize, d: usize) -> (Tensor, Tensor) {
    let xs: Vec<f32> = (0..n * d)
        .map(|i| ((i as f32) * 0.731 + 0.2).sin())
        .collect();
    let ys: Vec<f32> = (0..n)
        .map(|r| {
            (0..d)
                .map(|c| xs[r * d + c] * (c as f32 + 1.0) * 0.3)
                .sum::<f32>()
                + 0.1
        })
        .collect();
    let dev = ferrokeras::runtime::default_device();
    (
        Tensor::from_vec(xs, (n, d), &dev).unwrap(),
        Tensor::from_vec(ys, (n, 1), &dev).unwrap(),
    )
}
