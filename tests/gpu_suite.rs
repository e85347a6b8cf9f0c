//! Every integration test in one binary, for the CUDA check (`scripts/gpu-check.sh`): one
//! executable to carry to the GPU machine instead of one per file (each links candle's CUDA
//! kernels). Built only with the `cuda` feature; `scripts/gpu-check.sh prepare` fails when a test
//! file is missing here.

// Each test file brings its own copy of tests/support, as it does when built on its own.
#![allow(clippy::duplicate_mod)]

#[path = "attention.rs"]
mod attention;
#[path = "augmentation.rs"]
mod augmentation;
#[path = "callbacks.rs"]
mod callbacks;
#[path = "callbacks_builtin.rs"]
mod callbacks_builtin;
#[path = "convnet_accuracy.rs"]
mod convnet_accuracy;
#[path = "deferred_logs.rs"]
mod deferred_logs;
#[path = "errors.rs"]
mod errors;
#[path = "fit_api.rs"]
mod fit_api;
#[path = "gan.rs"]
mod gan;
#[path = "gan_resume.rs"]
mod gan_resume;
#[path = "gradcheck.rs"]
mod gradcheck;
#[path = "inputs.rs"]
mod inputs;
#[path = "keras_activations.rs"]
mod keras_activations;
#[path = "keras_compiled.rs"]
mod keras_compiled;
#[path = "keras_json.rs"]
mod keras_json;
#[path = "keras_layer_parity.rs"]
mod keras_layer_parity;
#[path = "keras_parity.rs"]
mod keras_parity;
#[path = "keras_semantics.rs"]
mod keras_semantics;
#[path = "masking.rs"]
mod masking;
#[path = "mixed_precision.rs"]
mod mixed_precision;
#[path = "model_file.rs"]
mod model_file;
#[path = "normalization.rs"]
mod normalization;
#[path = "optimizer_extras.rs"]
mod optimizer_extras;
#[path = "plot.rs"]
mod plot;
#[path = "recurrent.rs"]
mod recurrent;
#[path = "resume.rs"]
mod resume;
#[path = "saving.rs"]
mod saving;
#[path = "step_validation.rs"]
mod step_validation;
#[path = "tensorboard.rs"]
mod tensorboard;
