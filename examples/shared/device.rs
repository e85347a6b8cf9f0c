//! `--device cpu|cuda|cuda:N|auto` for the examples (default `auto`: CUDA when this build has the
//! `cuda` feature and a GPU answers, else the CPU). The pick becomes the default device: layers
//! put their weights there and `fit` moves each batch there.

use candle_core::Device;
use ferrokeras::Result;

/// The device named on the command line, set as the default device.
pub fn from_args() -> Result<Device> {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .iter()
        .position(|a| a == "--device")
        .map(|i| {
            args.get(i + 1).cloned().ok_or_else(|| {
                ferrokeras::Error::value("--device needs a value: cpu, cuda, cuda:N or auto")
            })
        })
        .transpose()?
        .unwrap_or_else(|| "auto".to_string());
    let device = ferrokeras::runtime::device_from_name(&name)?;
    ferrokeras::runtime::set_default_device(&device);
    println!("device: {}", if device.is_cpu() { "cpu" } else { "cuda" });
    Ok(device)
}
