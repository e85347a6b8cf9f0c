//! Whole-model files: architecture as JSON plus weights, saved and loaded without the building code.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Tensor};
use ferrokeras::io::{LoadedModel, load_model, model_from_json, save_model};
use ferrokeras::layers::{
    Activation, AveragePooling2D, BUILTIN_LAYERS, BatchNormalization, Conv2D, Conv2DTranspose,
    DataFormat, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D, UpSampling2D,
};
use ferrokeras::prelude::*;
use serde_json::{Value, json};

#[path = "support/scratch.rs"]
mod scratch;
use scratch::test_tmp;

/// The tests share the process-wide random generator and name counters: run them one at a time so
/// that each seeded model is the same on every run.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
fn tmp(name: &str) -> PathBuf {
    let dir = test_tmp().join("model-file");
    std::fs::create_dir_all(&dir).unwrap();
    // A path left by an earlier run would leak into this one's assertions.
    let path = dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    let _ = std::fs::remove_file(&path);
    path
}

fn uniform(shape: &[usize]) -> Tensor {
    ferrokeras::random::uniform(shape, -1.0, 1.0, &ferrokeras::runtime::default_device()).unwrap()
}

fn values(data: &Data) -> Vec<Vec<f32>> {
    data.flatten()
        .iter()
        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn weights(m: &dyn Model) -> Vec<(String, Vec<f32>)> {
    m.named_variables()
        .into_iter()
        .map(|(n, v)| (n, v.value().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

/// Every layer type a Sequential can chain, with non-default options.
fn conv_stack() -> Sequential {
    Sequential::new()
        .named("conv_stack")
        .input(&[8, 8, 3])
        .add(
            Conv2D::new(4, (3, 3))
                .padding("same")
                .unwrap()
                .activation("relu")
                .unwrap(),
        )
        .add(BatchNormalization::new().momentum(0.9).epsilon(1e-4))
        .add(MaxPooling2D::new((2, 2)))
        .add(
            Conv2DTranspose::new(3, (3, 3))
                .strides(2)
                .padding("same")
                .unwrap()
                .output_padding(1)
                .use_bias(false),
        )
        .add(
            Conv2D::new(2, (3, 3))
                .dilation_rate(2)
                .with_activation(Activation::LeakyRelu(0.05)),
        )
        .add(
            AveragePooling2D::new((2, 2))
                .strides((1, 1))
                .padding("same")
                .unwrap(),
        )
        .add(UpSampling2D::new((2, 1)))
        .add(Conv2D::new(3, (1, 1)).data_format(DataFormat::ChannelsFirst))
        .add(Flatten::new())
        .add(Dropout::new(0.3).unwrap())
        .add(
            Dense::new(16)
                .activation("relu")
                .unwrap()
                .kernel_regularizer(Regularizer::L2(1e-3))
                .bias_regularizer(Regularizer::L1(1e-4)),
        )
        .add(ActivationLayer::new("tanh").unwrap())
        .add(LeakyReLU::new(0.1))
        .add(ReLU::new())
        .add(Reshape::new(&[2, -1, 2]))
        .add(GlobalMaxPooling2D::new())
        .add(
            Dense::new(3)
                .activation("softmax")
                .unwrap()
                .use_bias(false)
                .kernel_regularizer(Regularizer::L1L2 { l1: 1e-5, l2: 2e-5 }),
        )
}

#[test]
fn sequential_with_every_layer_type_round_trips_with_equal_predictions() {
    let _g = serial();
    ferrokeras::random::set_random_seed(1);
    let mut model = conv_stack();
    let x = Data::from(uniform(&[5, 8, 8, 3]));
    // A training pass moves the BatchNormalization statistics away from their initial values.
    model.call(&x, true).unwrap();
    let expected = model.call(&x, false).unwrap();

    let path = tmp("conv_stack.safetensors");
    save_model(&model, &path).unwrap();
    let mut loaded = load_model(&path).unwrap();
    assert_eq!(loaded.class_name(), "Sequential");
    assert_eq!(loaded.name(), "conv_stack");
    assert_eq!(values(&loaded.call(&x, false).unwrap()), values(&expected));
    assert_eq!(weights(&loaded), weights(&model));
    assert_eq!(loaded.summary(), model.summary());
    assert_eq!(
        Model::losses(&loaded).unwrap().len(),
        Model::losses(&model).unwrap().len()
    );

    let loaded = loaded.into_sequential().unwrap();
    assert_eq!(loaded.to_json().unwrap(), model.to_json().unwrap());
    let names = |m: &Sequential| -> Vec<String> {
        m.layers().iter().map(|l| l.name().to_string()).collect()
    };
    assert_eq!(names(&loaded), names(&model));

    // The file is also a plain weights file for a model built in code.
    ferrokeras::random::set_random_seed(2);
    let mut rebuilt = conv_stack();
    ferrokeras::io::load_weights(&mut rebuilt, &path).unwrap();
    assert_eq!(values(&rebuilt.call(&x, false).unwrap()), values(&expected));
}

#[test]
fn sequential_json_is_keras_like_and_keeps_every_option() {
    let _g = serial();
    let model = conv_stack();
    let v: Value = serde_json::from_str(&model.to_json().unwrap()).unwrap();
    assert_eq!(v["class_name"], "Sequential");
    assert_eq!(v["config"]["name"], "conv_stack");
    let layers = v["config"]["layers"].as_array().unwrap();
    assert_eq!(layers[0]["class_name"], "InputLayer");
    assert_eq!(layers[0]["config"]["batch_shape"], json!([null, 8, 8, 3]));
    let find = |class: &str| -> &Value {
        &layers
            .iter()
            .find(|l| l["class_name"] == class)
            .unwrap_or_else(|| panic!("no {class}"))["config"]
    };
    let t = find("Conv2DTranspose");
    assert_eq!(t["strides"], json!([2, 2]));
    assert_eq!(t["padding"], "same");
    assert_eq!(t["output_padding"], json!([1, 1]));
    assert_eq!(t["use_bias"], false);
    let bn = find("BatchNormalization");
    assert_eq!(bn["momentum"], 0.9);
    assert_eq!(bn["epsilon"], 1e-4);
    let dense = find("Dense");
    assert_eq!(dense["units"], 16);
    assert_eq!(dense["activation"], "relu");
    assert_eq!(
        dense["kernel_regularizer"],
        json!({"class_name": "L2", "config": {"l2": 0.001}})
    );
    assert_eq!(
        dense["bias_regularizer"],
        json!({"class_name": "L1", "config": {"l1": 0.0001}})
    );
    assert_eq!(find("LeakyReLU")["negative_slope"], 0.1);
    assert_eq!(find("Dropout")["rate"], 0.3);
    assert_eq!(find("Reshape")["target_shape"], json!([2, -1, 2]));
    let dilated = layers
        .iter()
        .find(|l| l["config"]["dilation_rate"] == json!([2, 2]))
        .unwrap();
    assert_eq!(
        dilated["config"]["activation"],
        json!({"name": "leaky_relu", "negative_slope": 0.05})
    );
    assert!(
        layers
            .iter()
            .any(|l| l["config"]["data_format"] == "channels_first")
    );

    // Architecture only: the same JSON, fresh weights.
    let copy = Sequential::from_json(&model.to_json().unwrap()).unwrap();
    assert_eq!(copy.to_json().unwrap(), model.to_json().unwrap());
    assert_eq!(copy.count_params(), model.count_params());
    assert_ne!(weights(&copy), weights(&model));
}

/// One config per built-in class, with non-default options: `from_config(config)` describes itself
/// with the same config.
#[test]
fn every_builtin_layer_config_round_trips() {
    let _g = serial();
    let layers: Vec<Box<dyn Layer>> = vec![
        Box::new(ActivationLayer::new("sigmoid").unwrap()),
        Box::new(ActivationLayer::from_activation(Activation::LeakyRelu(
            0.125,
        ))),
        Box::new(ferrokeras::layers::Add::new()),
        Box::new(ferrokeras::layers::Average::new()),
        Box::new(
            ferrokeras::layers::AveragePooling1D::new(3)
                .strides(2)
                .padding("same")
                .unwrap(),
        ),
        Box::new(ferrokeras::layers::MaxPooling1D::new(2).data_format(DataFormat::ChannelsFirst)),
        Box::new(ferrokeras::layers::Maximum::new()),
        Box::new(ferrokeras::layers::Minimum::new()),
        Box::new(ferrokeras::layers::Multiply::new()),
        Box::new(ferrokeras::layers::Subtract::new()),
        Box::new(
            AveragePooling2D::new((3, 2))
                .strides((1, 2))
                .padding("same")
                .unwrap()
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(BatchNormalization::new().momentum(0.5).epsilon(0.01)),
        Box::new(
            ferrokeras::layers::Bidirectional::new(
                ferrokeras::layers::GRU::new(3).return_sequences(true),
            )
            .unwrap()
            .merge_mode("mul")
            .unwrap(),
        ),
        Box::new(Concatenate::new().axis(1)),
        Box::new(
            ferrokeras::layers::Conv1D::new(3, 5)
                .strides(2)
                .padding("causal")
                .unwrap()
                .activation("tanh")
                .unwrap()
                .data_format(DataFormat::ChannelsFirst)
                .kernel_regularizer(Regularizer::L2(0.5)),
        ),
        Box::new(
            ferrokeras::layers::Cropping2D::new(((1, 2), (0, 3)))
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(
            Conv2D::new(7, (2, 5))
                .strides(3)
                .padding("same")
                .unwrap()
                .dilation_rate(2)
                .activation("gelu")
                .unwrap()
                .use_bias(false)
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(
            Conv2DTranspose::new(5, (4, 4))
                .strides((2, 3))
                .output_padding((1, 2))
                .activation("sigmoid")
                .unwrap(),
        ),
        Box::new(
            Dense::new(9)
                .activation("leaky_relu")
                .unwrap()
                .use_bias(false)
                .kernel_regularizer(Regularizer::L1L2 { l1: 0.5, l2: 0.25 }),
        ),
        Box::new(Dropout::new(0.75).unwrap()),
        Box::new(
            ferrokeras::layers::Embedding::new(100, 6)
                .mask_zero(true)
                .embeddings_initializer(ferrokeras::initializers::Initializer::Constant(0.5))
                .embeddings_regularizer(Regularizer::L2(0.125)),
        ),
        Box::new(Flatten::new()),
        Box::new(
            ferrokeras::layers::GlobalAveragePooling1D::new()
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(GlobalAveragePooling2D::new().data_format(DataFormat::ChannelsFirst)),
        Box::new(ferrokeras::layers::GlobalMaxPooling1D::new()),
        Box::new(GlobalMaxPooling2D::new()),
        Box::new(
            ferrokeras::layers::GRU::new(3)
                .reset_after(false)
                .go_backwards(true)
                .recurrent_activation("hard_sigmoid")
                .unwrap()
                .recurrent_dropout(0.25)
                .unwrap()
                .seed(5),
        ),
        Box::new(
            ferrokeras::layers::LSTM::new(4)
                .return_sequences(true)
                .unit_forget_bias(false)
                .use_bias(false)
                .dropout(0.5)
                .unwrap()
                .recurrent_initializer(ferrokeras::initializers::Initializer::Orthogonal {
                    gain: 2.0,
                    seed: Some(1),
                })
                .recurrent_regularizer(Regularizer::L2(0.5)),
        ),
        Box::new(
            ferrokeras::layers::SimpleRNN::new(2)
                .activation("relu")
                .unwrap()
                .bias_regularizer(Regularizer::L1(0.25)),
        ),
        Box::new(
            ferrokeras::layers::LayerNormalization::new()
                .axes(&[1, -1])
                .epsilon(0.25)
                .center(false)
                .regularizers(Some(Regularizer::L1(0.5)), None),
        ),
        Box::new(LeakyReLU::new(0.01)),
        Box::new(ferrokeras::layers::Masking::new(-1.5)),
        Box::new(ferrokeras::layers::GaussianNoise::new(0.25).seed(2)),
        Box::new(
            ferrokeras::layers::SpatialDropout1D::new(0.5)
                .unwrap()
                .seed(3),
        ),
        Box::new(
            ferrokeras::layers::SpatialDropout2D::new(0.25)
                .unwrap()
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(
            ferrokeras::layers::RandomFlip::new(ferrokeras::layers::FlipMode::Vertical)
                .seed(4)
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(
            ferrokeras::layers::RandomContrast::new(0.3)
                .unwrap()
                .value_range(-1.0, 1.0)
                .unwrap()
                .seed(5),
        ),
        Box::new(
            ferrokeras::layers::RandomBrightness::new(0.2)
                .unwrap()
                .factor_range(-0.1, 0.4)
                .unwrap()
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(
            ferrokeras::layers::RandomRotation::new(0.2)
                .unwrap()
                .factor_range(-0.1, 0.3)
                .unwrap()
                .fill_mode(ferrokeras::layers::FillMode::Constant)
                .fill_value(2.5)
                .interpolation(ferrokeras::layers::Interpolation::Nearest)
                .seed(9),
        ),
        Box::new(
            ferrokeras::layers::RandomTranslation::new(0.1, 0.2)
                .unwrap()
                .fill_mode(ferrokeras::layers::FillMode::Wrap)
                .data_format(DataFormat::ChannelsFirst),
        ),
        Box::new(
            ferrokeras::layers::RandomZoom::new(0.3)
                .unwrap()
                .width_range(-0.2, 0.4)
                .unwrap(),
        ),
        Box::new(
            ferrokeras::layers::Normalization::new()
                .axis(&[1, -1])
                .invert(true),
        ),
        Box::new(
            ferrokeras::layers::Normalization::new()
                .mean_variance(&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.5, 0.25, 2.0], &[2, 2])
                .unwrap(),
        ),
        Box::new(
            ferrokeras::layers::DepthwiseConv2D::new((3, 2))
                .strides(2)
                .padding("same")
                .unwrap()
                .depth_multiplier(3)
                .data_format(DataFormat::ChannelsFirst)
                .activation("relu")
                .unwrap()
                .use_bias(false)
                .depthwise_regularizer(Regularizer::L1(0.25)),
        ),
        Box::new(
            ferrokeras::layers::SeparableConv2D::new(5, 3)
                .dilation_rate((1, 2))
                .depth_multiplier(2)
                .pointwise_regularizer(Regularizer::L2(0.5))
                .bias_regularizer(Regularizer::L1(0.125)),
        ),
        Box::new(
            ferrokeras::layers::MultiHeadAttention::new(3, 4)
                .value_dim(2)
                .dropout(0.125)
                .unwrap()
                .use_bias(false)
                .output_shape(7)
                .sliding_window(3)
                .seed(9)
                .kernel_regularizer(Regularizer::L2(0.5)),
        ),
        Box::new(ferrokeras::layers::TimeDistributed::new(
            Conv2D::new(2, (3, 3)).padding("same").unwrap(),
        )),
        Box::new(MaxPooling2D::new((2, 3))),
        Box::new(ReLU::new()),
        Box::new(ferrokeras::layers::Rescaling::new(0.25, -1.5)),
        Box::new(Reshape::new(&[-1, 4, 2])),
        Box::new(ferrokeras::layers::RepeatVector::new(4)),
        Box::new(ferrokeras::layers::Permute::new(&[3, 1, 2])),
        Box::new(ferrokeras::layers::UpSampling1D::new(3)),
        Box::new(ferrokeras::layers::Softmax::new().axis(1)),
        Box::new(UpSampling2D::new((3, 1)).data_format(DataFormat::ChannelsFirst)),
        Box::new(ferrokeras::layers::ZeroPadding2D::new((2, 3))),
    ];
    let mut classes: Vec<&str> = layers.iter().map(|l| l.class_name()).collect();
    classes.sort();
    classes.dedup();
    assert_eq!(classes, BUILTIN_LAYERS);
    for layer in &layers {
        let config = layer.config().unwrap();
        let copy = ferrokeras::layers::from_config(layer.class_name(), &config).unwrap();
        assert_eq!(copy.class_name(), layer.class_name());
        assert_eq!(copy.name(), layer.name());
        assert_eq!(copy.config().unwrap(), config, "{}", layer.class_name());
    }
    // Keras's shorthands and defaults are accepted.
    let d = ferrokeras::layers::from_config(
        "Dense",
        &json!({"units": 2, "kernel_regularizer": "l2", "bias_regularizer": null}),
    )
    .unwrap();
    assert_eq!(
        d.config().unwrap()["kernel_regularizer"],
        json!({"class_name": "L2", "config": {"l2": 0.01}})
    );
    assert_eq!(d.config().unwrap()["activation"], "linear");
    let c = ferrokeras::layers::from_config("Conv2D", &json!({"filters": 2, "kernel_size": 3}))
        .unwrap();
    assert_eq!(c.config().unwrap()["kernel_size"], json!([3, 3]));
    // An RNN option ferrokeras does not support is refused by name.
    let err = ferrokeras::layers::from_config("LSTM", &json!({"units": 2, "return_state": true}))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("return_state"), "{err}");
    let err = ferrokeras::layers::from_config("GRU", &json!({"units": 2, "stateful": true}))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("stateful"), "{err}");
    let err = ferrokeras::layers::from_config(
        "Bidirectional",
        &json!({"layer": {"class_name": "LSTM", "config": {"units": 2}}, "merge_mode": null}),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("merge_mode") && err.contains("two outputs"),
        "{err}"
    );
    // Keras's check: the two layers must run in opposite directions.
    let same = ferrokeras::layers::Bidirectional::with_backward_layer(
        ferrokeras::layers::LSTM::new(2),
        ferrokeras::layers::LSTM::new(2),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(same.contains("different `go_backwards`"), "{same}");
}

/// Two inputs, a layer shared by both branches (its second node takes the output of a layer listed
/// after it), `Concatenate`, `Add`, and two outputs.
fn two_tower() -> Functional {
    let a = Input::named(&[6], "features");
    let b = Input::named(&[4, 4, 2], "image");
    let pooled = GlobalAveragePooling2D::new().apply(&b).unwrap();
    let shared = SharedLayer::new(Dense::new(5).activation("relu").unwrap().named("tower"));
    let sa = shared.apply(&a).unwrap();
    let hb = Dense::new(6).apply(&pooled).unwrap();
    let sb = shared.apply(&hb).unwrap();
    let cat = Concatenate::new()
        .apply_many(&[sa.clone(), sb.clone()])
        .unwrap();
    let sum = ferrokeras::layers::Add::new()
        .apply_many(&[sa, sb])
        .unwrap();
    let out1 = Dense::new(1).named("score").apply(&cat).unwrap();
    let out2 = Dense::new(3)
        .activation("softmax")
        .unwrap()
        .named("class")
        .apply(&sum)
        .unwrap();
    Functional::new(&[a, b], &[out1, out2])
        .unwrap()
        .named("two_tower")
}

#[test]
fn functional_with_two_inputs_a_shared_layer_and_two_outputs_round_trips() {
    let _g = serial();
    ferrokeras::random::set_random_seed(3);
    let mut model = two_tower();
    let x = Data::from(vec![uniform(&[7, 6]), uniform(&[7, 4, 4, 2])]);
    let expected = model.call(&x, false).unwrap();
    assert_eq!(expected.flatten().len(), 2);

    let path = tmp("two_tower.safetensors");
    save_model(&model, &path).unwrap();
    let mut loaded = load_model(&path).unwrap();
    assert_eq!(loaded.class_name(), "Functional");
    assert_eq!(values(&loaded.call(&x, false).unwrap()), values(&expected));
    // The shared Dense is one layer: one kernel and one bias, not two of each.
    assert_eq!(model.variables().len(), 8);
    assert_eq!(loaded.variables().len(), 8);
    assert_eq!(weights(&loaded), weights(&model));
    assert_eq!(loaded.summary(), model.summary());
    // The per-output losses and metrics of the loaded model are named after its output layers.
    assert_eq!(Model::output_names(&loaded), ["score", "class"]);

    let loaded = loaded.into_functional().unwrap();
    assert_eq!(loaded.name(), "two_tower");
    assert_eq!(loaded.layers().len(), model.layers().len());
    let tower: Vec<_> = loaded
        .layers()
        .iter()
        .filter(|l| l.lock().name() == "tower")
        .collect();
    assert_eq!(tower.len(), 1);
    assert_eq!(loaded.to_json().unwrap(), model.to_json().unwrap());

    // The nodes: the shared layer is applied twice, the second time to a later layer's output.
    let c = model.get_config().unwrap();
    let entry = c["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "tower")
        .unwrap();
    let history =
        |node: usize| entry["inbound_nodes"][node]["args"][0]["config"]["keras_history"].clone();
    assert_eq!(history(0), json!(["features", 0, 0]));
    let second = history(1);
    let second = second[0].as_str().unwrap();
    assert!(second.starts_with("dense"), "{second}");
    assert_eq!(
        c["input_layers"],
        json!([["features", 0, 0], ["image", 0, 0]])
    );
    assert_eq!(
        c["output_layers"],
        json!([["score", 0, 0], ["class", 0, 0]])
    );
}

#[test]
fn a_trained_model_evaluates_to_the_identical_loss_after_loading() {
    let _g = serial();
    ferrokeras::random::set_random_seed(4);
    let x = uniform(&[64, 5]);
    let y = uniform(&[64, 2]);
    let model = Sequential::new()
        .input(&[5])
        .add(
            Dense::new(8)
                .activation("relu")
                .unwrap()
                .kernel_regularizer(Regularizer::L2(1e-3)),
        )
        .add(BatchNormalization::new())
        .add(Dropout::new(0.2).unwrap())
        .add(Dense::new(2));
    let compile = || {
        Compile::new()
            .optimizer("adam")
            .loss("mse")
            .metrics(["mae"])
    };
    let mut trainer = model.compile(compile()).unwrap();
    trainer
        .fit(
            (x.clone(), y.clone()),
            FitOptions::new().epochs(2).batch_size(16).verbose(0),
        )
        .unwrap();
    let before = trainer
        .evaluate((x.clone(), y.clone()), EvaluateOptions::new().verbose(0))
        .unwrap();

    let path = tmp("trained.safetensors");
    save_model(trainer.model(), &path).unwrap();
    let mut loaded = load_model(&path).unwrap().compile(compile()).unwrap();
    let after = loaded
        .evaluate((x.clone(), y.clone()), EvaluateOptions::new().verbose(0))
        .unwrap();
    assert_eq!(after.get("loss"), before.get("loss"));
    assert_eq!(after.get("mae"), before.get("mae"));
    assert!(before.get("loss").unwrap() > 0.0);
    // The loaded model trains on.
    loaded
        .fit((x, y), FitOptions::new().epochs(1).verbose(0))
        .unwrap();
    // A loaded model saves again.
    let again = tmp("trained-again.safetensors");
    save_model(loaded.model(), &again).unwrap();
    assert_eq!(
        weights(&load_model(&again).unwrap()),
        weights(loaded.model())
    );
}

#[test]
fn names_are_restored_and_later_automatic_names_do_not_repeat_them() {
    let _g = serial();
    let json = json!({"class_name": "Sequential", "config": {"name": "restored_model", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [null, 3]}},
        {"class_name": "Dense", "config": {"name": "dense_900", "units": 2}},
    ]}})
    .to_string();
    let m = Sequential::from_json(&json).unwrap();
    assert_eq!(m.name(), "restored_model");
    assert_eq!(m.layers()[0].name(), "dense_900");
    let fresh = Dense::new(1);
    let fresh = Layer::name(&fresh);
    let n: usize = fresh.rsplit('_').next().unwrap().parse().unwrap();
    assert!(n > 900, "{fresh}");
    assert_eq!(Sequential::new().named("x").name(), "x");
    assert_ne!(Sequential::new().name(), "restored_model");
}

/// A layer of our own: saved through `Layer::config` and a registered constructor.
struct Scale {
    name: String,
    factor: f64,
}

impl Layer for Scale {
    fn name(&self) -> &str {
        &self.name
    }
    fn class_name(&self) -> &str {
        "Scale"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> ferrokeras::Result<Tensor> {
        Ok((x * self.factor)?)
    }
    fn compute_output_shape(&self, s: &[usize]) -> ferrokeras::Result<Vec<usize>> {
        Ok(s.to_vec())
    }
    fn config(&self) -> Option<Value> {
        Some(json!({"name": self.name, "factor": self.factor}))
    }
}

fn scale_from_config(c: &Value) -> ferrokeras::Result<Box<dyn Layer>> {
    let bad = || ferrokeras::Error::value(format!("bad Scale config: {c}"));
    Ok(Box::new(Scale {
        name: c["name"].as_str().ok_or_else(bad)?.to_string(),
        factor: c["factor"].as_f64().ok_or_else(bad)?,
    }))
}

/// A layer that cannot describe itself.
struct Opaque;

impl Layer for Opaque {
    fn name(&self) -> &str {
        "opaque"
    }
    fn class_name(&self) -> &str {
        "OpaqueLayer"
    }
    fn call(&mut self, x: &Tensor, _training: bool) -> ferrokeras::Result<Tensor> {
        Ok(x.clone())
    }
    fn compute_output_shape(&self, s: &[usize]) -> ferrokeras::Result<Vec<usize>> {
        Ok(s.to_vec())
    }
}

#[test]
fn registered_custom_layers_save_and_load() {
    let _g = serial();
    ferrokeras::layers::register_layer("Scale", scale_from_config).unwrap();
    let mut model = Sequential::new().input(&[2]).add(Dense::new(2)).add(Scale {
        name: "times_three".into(),
        factor: 3.0,
    });
    let x = Data::from(uniform(&[4, 2]));
    let path = tmp("custom.safetensors");
    save_model(&model, &path).unwrap();
    let mut loaded = load_model(&path).unwrap();
    assert_eq!(
        values(&loaded.call(&x, false).unwrap()),
        values(&model.call(&x, false).unwrap())
    );
    let err = ferrokeras::layers::register_layer("Dense", scale_from_config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("built-in"), "{err}");
}

fn err_of<T>(r: ferrokeras::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn layers_that_cannot_be_saved_are_named() {
    let _g = serial();
    let model = Sequential::new().input(&[2]).add(Dense::new(2)).add(Opaque);
    let path = tmp("opaque.safetensors");
    let err = err_of(save_model(&model, &path));
    assert!(
        err.contains("OpaqueLayer") && err.contains("opaque") && err.contains("config"),
        "{err}"
    );
    assert!(!path.exists());
    let err = err_of(model.to_json());
    assert!(err.contains("OpaqueLayer"), "{err}");

    let inner = Sequential::new().input(&[2]).add(Dense::new(2));
    let outer = Sequential::new().input(&[2]).add(inner);
    let err = err_of(save_model(&outer, &path));
    assert!(
        err.contains("Sequential") && err.contains("nested"),
        "{err}"
    );

    // Two layers of one functional model with the same name could not be told apart in the
    // JSON: the model is refused when built, as Keras refuses it.
    let x = Input::new(&[2]);
    let h = Dense::new(2).named("same").apply(&x).unwrap();
    let y = Dense::new(2).named("same").apply(&h).unwrap();
    let err = err_of(Functional::new(&[x], &[y]).map(|_| ()));
    assert!(err.contains("\"same\"") && err.contains("unique"), "{err}");
}

#[test]
fn unknown_classes_and_malformed_json_are_errors() {
    let _g = serial();
    let json = Sequential::new()
        .input(&[3])
        .add(Dense::new(2))
        .to_json()
        .unwrap();
    // An unknown layer class.
    let err = err_of(model_from_json(&json.replace("\"Dense\"", "\"Densse\"")));
    assert!(
        err.contains("Unknown layer class `Densse`") && err.contains("Dense"),
        "{err}"
    );
    // An unknown model class.
    let err = err_of(model_from_json(
        &json.replace("\"Sequential\"", "\"Sequentially\""),
    ));
    assert!(
        err.contains("Unknown model class `Sequentially`") && err.contains("\"Functional\""),
        "{err}"
    );
    // Malformed JSON.
    for text in ["{\"class_name\": ", "", "[1, 2]", "{\"config\": {}}"] {
        let err = err_of(model_from_json(text));
        assert!(
            err.contains("malformed model JSON") || err.contains("class_name"),
            "{text}: {err}"
        );
    }
    let err = err_of(Sequential::from_json("not json"));
    assert!(err.contains("malformed model JSON"), "{err}");
    // The wrong class for the type asked for.
    let err = err_of(Functional::from_json(&json));
    assert!(
        err.contains("expected the JSON of a model of class `Functional`")
            && err.contains("`Sequential`"),
        "{err}"
    );
    // A bad option: the layer, the key, what was expected and what was received.
    let err = err_of(model_from_json(
        &json.replace("\"units\":2", "\"units\":\"two\""),
    ));
    assert!(
        err.contains("Dense")
            && err.contains("`units`")
            && err.contains("non-negative integer")
            && err.contains("\"two\""),
        "{err}"
    );
    let err = err_of(model_from_json(
        &json.replace("\"units\":2", "\"units\":2,\"groups\":4"),
    ));
    assert!(err.contains("unknown key(s) `groups`"), "{err}");
    let err = err_of(model_from_json(
        &json.replace("\"activation\":\"linear\"", "\"activation\":\"swishy\""),
    ));
    assert!(err.contains("swishy"), "{err}");
    let err = err_of(model_from_json(
        &json.replace("\"batch_shape\":[null,3]", "\"batch_shape\":\"3\""),
    ));
    assert!(err.contains("batch_shape"), "{err}");
    // A functional node that takes a tensor nothing produces.
    let x = Input::named(&[2], "x");
    let y = Dense::new(1).named("y").apply(&x).unwrap();
    let fj = Functional::new(&[x], &[y]).unwrap().to_json().unwrap();
    let history = "\"keras_history\":[\"x\",0,0]";
    assert!(fj.contains(history), "{fj}");
    let err = err_of(model_from_json(
        &fj.replace(history, "\"keras_history\":[\"z\",0,0]"),
    ));
    assert!(err.contains("[\"z\",0,0]") && err.contains("`y`"), "{err}");
    let err = err_of(model_from_json(
        &fj.replace(history, "\"keras_history\":[\"x\",0]"),
    ));
    assert!(err.contains("[layer_name, node_index, 0]"), "{err}");
    // The older node format, a list of references, still reads.
    let legacy = fj.replace(
        &format!(
            "{{\"args\":[{{\"class_name\":\"__keras_tensor__\",\"config\":{{\"dtype\":\"float32\",{history},\"shape\":[null,2]}}}}],\"kwargs\":{{}}}}"
        ),
        "[[\"x\",0,0]]",
    );
    assert!(!legacy.contains("__keras_tensor__"), "{legacy}");
    assert!(model_from_json(&legacy).is_ok());
}

#[test]
fn files_without_an_architecture_or_with_a_bad_one_are_errors() {
    let _g = serial();
    let model = Sequential::new().input(&[3]).add(Dense::new(2));
    // A weights-only file.
    let weights_path = tmp("weights-only.safetensors");
    ferrokeras::io::save_weights(&model, &weights_path).unwrap();
    let err = err_of(load_model(&weights_path));
    assert!(
        err.contains("holds no model architecture")
            && err.contains("weights-only")
            && err.contains("load_weights")
            && err.contains("model_config"),
        "{err}"
    );
    // A safetensors file from elsewhere.
    let mut plain = ferrokeras::io::TensorFile::default();
    plain.tensors.insert(
        "w".into(),
        Tensor::zeros(2, DType::F32, &ferrokeras::runtime::default_device()).unwrap(),
    );
    let plain_path = tmp("plain.safetensors");
    ferrokeras::io::write_tensors(&plain_path, &plain).unwrap();
    let err = err_of(load_model(&plain_path));
    assert!(
        err.contains("holds no model architecture") && err.contains("without a `format`"),
        "{err}"
    );
    // A missing file.
    let err = err_of(load_model(tmp("missing.safetensors")));
    assert!(err.contains("missing.safetensors"), "{err}");
    // Not safetensors at all.
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let err = err_of(load_model(&junk));
    assert!(err.contains("truncated or corrupt"), "{err}");

    let path = tmp("small.safetensors");
    save_model(&model, &path).unwrap();
    let file = ferrokeras::io::read_tensors(&path).unwrap();
    assert_eq!(file.metadata["format"], "ferrokeras.model");
    assert_eq!(file.metadata["format_version"], "2");
    let with_config = |config: &str| {
        let mut f = file.clone();
        f.metadata.insert("model_config".into(), config.into());
        let p = tmp("edited.safetensors");
        ferrokeras::io::write_tensors(&p, &f).unwrap();
        err_of(load_model(&p))
    };
    let config = &file.metadata["model_config"];
    // Malformed architecture JSON.
    let err = with_config("{\"class_name\": \"Seq");
    assert!(err.contains("malformed architecture"), "{err}");
    // Unknown layer class inside a file.
    let err = with_config(&config.replace("\"Dense\"", "\"Dense3D\""));
    assert!(err.contains("Unknown layer class `Dense3D`"), "{err}");
    // Weights that do not fit the architecture.
    let err = with_config(&config.replace("\"units\":2", "\"units\":4"));
    assert!(
        err.contains("do not match its architecture") && err.contains("dense/kernel"),
        "{err}"
    );
    let err = with_config(&config.replace(
        "{\"class_name\":\"Dense\"",
        "{\"class_name\":\"Dense\",\"config\":{\"units\":2,\"name\":\"extra\"}},{\"class_name\":\"Dense\"",
    ));
    assert!(err.contains("do not match its architecture"), "{err}");
    // A newer format version.
    let mut newer = file.clone();
    newer.metadata.insert("format_version".into(), "3".into());
    let p = tmp("newer.safetensors");
    ferrokeras::io::write_tensors(&p, &newer).unwrap();
    let err = err_of(load_model(&p));
    assert!(err.contains("format version 3"), "{err}");
}

#[test]
fn an_unbuilt_sequential_saves_its_layers_and_builds_on_first_call() {
    let _g = serial();
    let model = Sequential::new().add(Dense::new(3)).add(Dense::new(1));
    let path = tmp("unbuilt.safetensors");
    save_model(&model, &path).unwrap();
    let mut loaded = load_model(&path).unwrap();
    assert!(loaded.variables().is_empty());
    let y = loaded.call(&Data::from(uniform(&[2, 4])), false).unwrap();
    assert_eq!(y.tensor().unwrap().dims(), &[2, 1]);
}

#[test]
fn loaded_model_matches_on_kind() {
    let _g = serial();
    let m = model_from_json(
        &Sequential::new()
            .input(&[2])
            .add(Dense::new(1))
            .to_json()
            .unwrap(),
    )
    .unwrap();
    assert!(matches!(m, LoadedModel::Sequential(_)));
    let Err(m) = m.into_functional() else {
        panic!("a Sequential is not a Functional")
    };
    assert_eq!(
        format!("{m:?}").split('(').next(),
        Some("LoadedModel::Sequential")
    );
}

/// A model file of format 1 named a branched functional model's weights by the order its layers
/// first run; format 2 names them in Keras's order. A format-1 file still loads each weight into
/// its own layer, even where two layers have weights of one shape.
#[test]
fn format_one_files_keep_their_weight_names() {
    let _g = serial();
    let x = Input::named(&[4], "x");
    let (a, b, c) = (Dense::new(2), Dense::new(2), Dense::new(2));
    let (na, nb) = (Layer::name(&a).to_string(), Layer::name(&b).to_string());
    let short = a.apply(&x).unwrap();
    let deep = c.apply(&b.apply(&x).unwrap()).unwrap();
    let y = Concatenate::new().apply_many(&[short, deep]).unwrap();
    let mut model = Functional::new(&[x], &[y]).unwrap();
    // Keras's order puts the deeper branch's first layer first.
    let order: Vec<String> = model
        .layers()
        .iter()
        .map(|l| l.lock().name().to_string())
        .collect();
    assert_eq!(order[..2], [nb.clone(), na.clone()]);
    let path = tmp("format-one.safetensors");
    save_model(&model, &path).unwrap();

    // The same model as format 1 wrote it: layers listed as they first run (a, b, c), and the
    // weights named by that order, so `dense` is a's and `dense_1` b's.
    let mut file = ferrokeras::io::read_tensors(&path).unwrap();
    file.metadata.insert("format_version".into(), "1".into());
    let mut config: Value = serde_json::from_str(&file.metadata["model_config"]).unwrap();
    let layers = config["config"]["layers"].as_array_mut().unwrap();
    let pos = |layers: &Vec<Value>, n: &str| layers.iter().position(|e| e["name"] == n).unwrap();
    let (ia, ib) = (pos(layers, &na), pos(layers, &nb));
    layers.swap(ia, ib);
    file.metadata
        .insert("model_config".into(), config.to_string());
    let swapped: std::collections::BTreeMap<String, Tensor> = file
        .tensors
        .iter()
        .map(|(k, t)| {
            let k = if let Some(rest) = k.strip_prefix("dense/") {
                format!("dense_1/{rest}")
            } else if let Some(rest) = k.strip_prefix("dense_1/") {
                format!("dense/{rest}")
            } else {
                k.clone()
            };
            (k, t.clone())
        })
        .collect();
    file.tensors = swapped;
    let old = tmp("format-one-edited.safetensors");
    ferrokeras::io::write_tensors(&old, &file).unwrap();

    let mut loaded = load_model(&old).unwrap();
    let input = Data::from(uniform(&[3, 4]));
    assert_eq!(
        values(&loaded.call(&input, false).unwrap()),
        values(&model.call(&input, false).unwrap())
    );
}

/// Weights files written before layer lists followed Keras's order (no `weight_names`
/// metadata) named a branched functional model's weights by the order its layers first run;
/// `load_weights` reads them under those names, and files written now under Keras's.
#[test]
fn weights_files_without_weight_names_use_the_run_order() {
    let _g = serial();
    let build = || {
        let x = Input::named(&[4], "x");
        let (a, b, c) = (Dense::new(2), Dense::new(2), Dense::new(2));
        let short = a.apply(&x).unwrap();
        let deep = c.apply(&b.apply(&x).unwrap()).unwrap();
        let y = Concatenate::new().apply_many(&[short, deep]).unwrap();
        Functional::new(&[x], &[y]).unwrap()
    };
    let mut model = build();
    let input = Data::from(uniform(&[3, 4]));
    let want = values(&model.call(&input, false).unwrap());
    let path = tmp("order.weights.safetensors");
    ferrokeras::io::save_weights(&model, &path).unwrap();
    let mut copy = build();
    ferrokeras::io::load_weights(&mut copy, &path).unwrap();
    assert_eq!(values(&copy.call(&input, false).unwrap()), want);

    // As an older version wrote it: no metadata, `dense` the first layer to run (a), `dense_1`
    // the next (b).
    let mut file = ferrokeras::io::read_tensors(&path).unwrap();
    assert_eq!(file.metadata["weight_names"], "keras_order");
    file.metadata.remove("weight_names");
    file.tensors = file
        .tensors
        .into_iter()
        .map(|(k, t)| {
            let k = match k.split_once('/') {
                Some(("dense", rest)) => format!("dense_1/{rest}"),
                Some(("dense_1", rest)) => format!("dense/{rest}"),
                _ => k,
            };
            (k, t)
        })
        .collect();
    let old = tmp("order-old.weights.safetensors");
    ferrokeras::io::write_tensors(&old, &file).unwrap();
    let mut copy = build();
    ferrokeras::io::load_weights(&mut copy, &old).unwrap();
    assert_eq!(values(&copy.call(&input, false).unwrap()), want);
}

/// A model of one's own made of parts ([`Model::submodels`]): its weights are named
/// `{part}/{the part's name}`, and a weights file from before layer lists followed Keras's
/// order still loads each weight into its layer inside a branched functional part.
#[test]
fn models_made_of_parts_name_and_load_their_parts_weights() {
    let _g = serial();
    struct Composite {
        body: Functional,
        head: Sequential,
    }
    impl Model for Composite {
        fn call(&mut self, x: &Data, training: bool) -> ferrokeras::Result<Data> {
            let h = self.body.call(x, training)?;
            self.head.call(&h, training)
        }
        fn variables(&self) -> Vec<Variable> {
            let mut v = self.body.variables();
            v.extend(self.head.variables());
            v
        }
        fn submodels(&self) -> Vec<(&str, &dyn Model)> {
            vec![("body", &self.body), ("head", &self.head)]
        }
    }
    let build = || {
        let x = Input::named(&[4], "x");
        let (a, b, c) = (Dense::new(2), Dense::new(2), Dense::new(2));
        let short = a.apply(&x).unwrap();
        let deep = c.apply(&b.apply(&x).unwrap()).unwrap();
        let y = Concatenate::new().apply_many(&[short, deep]).unwrap();
        Composite {
            body: Functional::new(&[x], &[y]).unwrap(),
            head: Sequential::new().input(&[4]).add(Dense::new(1)),
        }
    };
    let mut model = build();
    let names: Vec<String> = model
        .named_variables()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            "body/dense/kernel",
            "body/dense/bias",
            "body/dense_1/kernel",
            "body/dense_1/bias",
            "body/dense_2/kernel",
            "body/dense_2/bias",
            "head/dense/kernel",
            "head/dense/bias"
        ]
    );
    let input = Data::from(uniform(&[3, 4]));
    let want = values(&model.call(&input, false).unwrap());
    let path = tmp("parts.weights.safetensors");
    ferrokeras::io::save_weights(&model, &path).unwrap();
    let mut copy = build();
    ferrokeras::io::load_weights(&mut copy, &path).unwrap();
    assert_eq!(values(&copy.call(&input, false).unwrap()), want);

    // As an older version wrote it: the body's first two layers named by the order they run.
    let mut file = ferrokeras::io::read_tensors(&path).unwrap();
    file.metadata.remove("weight_names");
    file.tensors = file
        .tensors
        .into_iter()
        .map(|(k, t)| {
            let k = match k.split_once('/') {
                Some(("body", rest)) if rest.starts_with("dense/") => {
                    format!("body/dense_1/{}", &rest[6..])
                }
                Some(("body", rest)) if rest.starts_with("dense_1/") => {
                    format!("body/dense/{}", &rest[8..])
                }
                _ => k,
            };
            (k, t)
        })
        .collect();
    let old = tmp("parts-old.weights.safetensors");
    ferrokeras::io::write_tensors(&old, &file).unwrap();
    let mut copy = build();
    ferrokeras::io::load_weights(&mut copy, &old).unwrap();
    assert_eq!(values(&copy.call(&input, false).unwrap()), want);

    // A wrapper whose one part is named "": the part's own names.
    struct Wrapper(Functional);
    impl Model for Wrapper {
        fn call(&mut self, x: &Data, training: bool) -> ferrokeras::Result<Data> {
            self.0.call(x, training)
        }
        fn variables(&self) -> Vec<Variable> {
            self.0.variables()
        }
        fn submodels(&self) -> Vec<(&str, &dyn Model)> {
            vec![("", &self.0)]
        }
    }
    let wrapper = Wrapper(build().body);
    let names = |v: Vec<(String, Variable)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(
        names(wrapper.named_variables()),
        names(wrapper.0.named_variables())
    );
    assert_eq!(
        names(wrapper.legacy_named_variables().unwrap()),
        names(wrapper.0.legacy_named_variables().unwrap())
    );
}

/// A text-style model (Embedding, LayerNormalization) trains with `fit`, saves and loads with
/// the same predictions, and its JSON rebuilds the same layers.
#[test]
fn embedding_and_layer_normalization_train_save_and_load() {
    use ferrokeras::layers::{Embedding, LayerNormalization};
    let _g = serial();
    ferrokeras::random::set_random_seed(3);
    let dev = ferrokeras::runtime::default_device();
    // Sequences of 5 ids in [0, 8); the label says whether id 3 occurs.
    let (n, len) = (256, 5);
    let ids: Vec<f32> = (0..n * len).map(|i| ((i * 7 + i / 3) % 8) as f32).collect();
    let labels: Vec<f32> = ids
        .chunks(len)
        .map(|s| s.contains(&3.0) as u8 as f32)
        .collect();
    let x = Tensor::from_vec(ids, (n, len), &dev).unwrap();
    let y = Tensor::from_vec(labels, (n, 1), &dev).unwrap();
    let model = Sequential::new()
        .input(&[len])
        .add(Embedding::new(8, 4))
        .add(LayerNormalization::new())
        .add(Flatten::new())
        .add(Dense::new(1).activation("sigmoid").unwrap());
    let mut trainer = Trainer::new(model)
        .compile(
            Compile::new()
                .optimizer(Adam::new(0.05))
                .loss("binary_crossentropy")
                .metrics(["accuracy"]),
        )
        .unwrap();
    let h = trainer
        .fit(
            (x.clone(), y),
            FitOptions::new().epochs(15).batch_size(32).verbose(0),
        )
        .unwrap();
    let acc = h.get("accuracy");
    assert!(acc[acc.len() - 1] > 0.95, "accuracy {acc:?}");

    let model = trainer.model();
    let path = tmp("embedding.safetensors");
    save_model(model, &path).unwrap();
    let mut loaded = load_model(&path).unwrap();
    let names: Vec<(String, Vec<usize>)> = loaded
        .named_variables()
        .into_iter()
        .map(|(n, v)| (n, v.value().dims().to_vec()))
        .collect();
    assert_eq!(
        names,
        [
            ("embedding/embeddings".to_string(), vec![8, 4]),
            ("layer_normalization/gamma".to_string(), vec![4]),
            ("layer_normalization/beta".to_string(), vec![4]),
            ("dense/kernel".to_string(), vec![20, 1]),
            ("dense/bias".to_string(), vec![1]),
        ]
    );
    let input = Data::from(x.narrow(0, 0, 16).unwrap());
    let mut original = model_from_json(&model.to_json().unwrap()).unwrap();
    assert_eq!(original.variables().len(), 5);
    let trained = trainer.model_mut();
    assert_eq!(
        values(&loaded.call(&input, false).unwrap()),
        values(&trained.call(&input, false).unwrap())
    );
    assert!(original.call(&input, false).is_ok());
}
