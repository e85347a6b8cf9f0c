//! Our own CPU kernels, plugged into candle as custom ops (with backward where they take part in
//! gradients). Each is used on the CPU for float32 tensors only; other devices and dtypes keep
//! candle's ops, so results agree everywhere (the tests compare each kernel with candle's op).

pub(crate) mod adam;
pub(crate) mod conv_act;
pub(crate) mod elementwise;
pub(crate) mod linear;
pub(crate) mod pool;
