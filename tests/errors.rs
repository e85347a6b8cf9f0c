//! Bad user input never panics: every case returns a `ferrokeras::Error` whose message says what
//! was expected and what was received.

use candle_core::{DType, Device, Tensor};
use ferrokeras::prelude::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The message of an error result; fails the test (with `what`) when the result is `Ok`.
fn err_msg<T>(what: &str, r: Result<T>) -> String {
    assert!(r.is_err(), "{what}: expected an error, got Ok");
    match r {
        Ok(_) => unreachable!(),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{what}: {msg}");
            msg
        }
    }
}

/// Asserts that `msg` contains every fact in `facts`.
fn assert_mentions(msg: &str, facts: &[&str]) {
    for f in facts {
        assert!(
            msg.contains(f),
            "error message should mention {f:?}; message was:\n{msg}"
        );
    }
}

fn cpu() -> Device {
    ferrokeras::runtime::default_device()
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &cpu()).unwrap()
}

fn uniform(shape: &[usize]) -> Tensor {
    ferrokeras::random::uniform(shape, 0.0, 1.0, &cpu()).unwrap()
}

/// `Input(&[features]) -> Dense(units)`, compiled with adam + `loss`.
fn functional(features: usize, units: usize, loss: &str) -> Trainer<Functional> {
    let inputs = Input::new(&[features]);
    let outputs = Dense::new(units).apply(&inputs).unwrap();
    Functional::new(&[inputs], &[outputs])
        .unwrap()
        .compile(Compile::new().optimizer("adam").loss(loss))
        .unwrap()
}

fn quiet() -> FitOptions {
    FitOptions::new().verbose(0)
}

/// Integer class labels as float32 `(n,)`.
fn labels(v: &[f32]) -> Tensor {
    Tensor::new(v, &cpu()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Data validation in fit / evaluate / predict
// ---------------------------------------------------------------------------------------------

#[test]
fn fit_x_and_y_of_different_lengths() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "fit with 10 x and 8 y",
        model.fit((zeros(&[10, 3]), zeros(&[8, 1])), quiet()),
    );
    assert_mentions(&msg, &["same number of samples", "x[0]: 10", "y[0]: 8"]);
}

#[test]
fn fit_feature_size_mismatch() {
    let mut model = functional(32, 1, "mse");
    let msg = err_msg(
        "fit with 5 features into Input(32)",
        model.fit((zeros(&[10, 5]), zeros(&[10, 1])), quiet()),
    );
    assert_mentions(&msg, &["32", "[10, 5]", "expected shape=(None, 32)"]);
}

#[test]
fn evaluate_feature_size_mismatch() {
    let mut model = functional(32, 1, "mse");
    let msg = err_msg(
        "evaluate with 5 features into Input(32)",
        model.evaluate(
            (zeros(&[10, 5]), zeros(&[10, 1])),
            EvaluateOptions::new().verbose(0),
        ),
    );
    assert_mentions(&msg, &["32", "[10, 5]", "expected shape=(None, 32)"]);
}

#[test]
fn predict_feature_size_mismatch() {
    let mut model = functional(32, 1, "mse");
    let msg = err_msg(
        "predict with 5 features into Input(32)",
        model.predict(zeros(&[10, 5]), PredictOptions::new().verbose(0)),
    );
    assert_mentions(&msg, &["32", "[10, 5]", "expected shape=(None, 32)"]);
}

#[test]
fn sequential_fit_feature_size_mismatch() {
    let mut model = Sequential::new()
        .input(&[32])
        .add(Dense::new(1))
        .compile(Compile::new().optimizer("sgd").loss("mse"))
        .unwrap();
    let msg = err_msg(
        "Sequential fit with 5 features into input(32)",
        model.fit((zeros(&[10, 5]), zeros(&[10, 1])), quiet()),
    );
    assert_mentions(&msg, &["32", "[10, 5]"]);
}

#[test]
fn sequential_built_then_fed_other_feature_size() {
    // No declared input: the first call builds the model for 3 features; later data with 5 must
    // be rejected with both sizes.
    let mut model = Sequential::new()
        .add(Dense::new(1))
        .compile(Compile::new().optimizer("sgd").loss("mse"))
        .unwrap();
    model
        .fit((zeros(&[4, 3]), zeros(&[4, 1])), quiet())
        .unwrap();
    let msg = err_msg(
        "Sequential built for 3 features, fed 5",
        model.predict(zeros(&[4, 5]), PredictOptions::new().verbose(0)),
    );
    assert_mentions(&msg, &["3", "[4, 5]"]);
}

#[test]
fn sample_weight_of_wrong_length() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "fit with 10 samples and 7 sample weights",
        model.fit(
            (zeros(&[10, 3]), zeros(&[10, 1])),
            quiet().sample_weight(Tensor::ones(7, DType::F32, &cpu()).unwrap()),
        ),
    );
    assert_mentions(&msg, &["sample_weight: 7", "x[0]: 10", "y[0]: 10"]);
}

#[test]
fn evaluate_sample_weight_of_wrong_length() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "evaluate with 10 samples and 7 sample weights",
        model.evaluate(
            (zeros(&[10, 3]), zeros(&[10, 1])),
            EvaluateOptions::new()
                .verbose(0)
                .sample_weight(Tensor::ones(7, DType::F32, &cpu()).unwrap()),
        ),
    );
    assert_mentions(&msg, &["sample_weight: 7", "x[0]: 10"]);
}

#[test]
fn empty_data() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "fit on 0 samples",
        model.fit((zeros(&[0, 3]), zeros(&[0, 1])), quiet()),
    );
    assert_mentions(&msg, &["at least one sample", "0 samples"]);
    let msg = err_msg(
        "predict on 0 samples",
        model.predict(zeros(&[0, 3]), PredictOptions::new().verbose(0)),
    );
    assert_mentions(&msg, &["at least one sample", "0 samples"]);
}

#[test]
fn batch_size_zero() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "fit with batch_size 0",
        model.fit((zeros(&[10, 3]), zeros(&[10, 1])), quiet().batch_size(0)),
    );
    assert_mentions(&msg, &["batch_size", ">= 1", "batch_size=0"]);
    let msg = err_msg(
        "evaluate with batch_size 0",
        model.evaluate(
            (zeros(&[10, 3]), zeros(&[10, 1])),
            EvaluateOptions::new().verbose(0).batch_size(0),
        ),
    );
    assert_mentions(&msg, &["batch_size=0"]);
    let msg = err_msg(
        "predict with batch_size 0",
        model.predict(
            zeros(&[10, 3]),
            PredictOptions::new().verbose(0).batch_size(0),
        ),
    );
    assert_mentions(&msg, &["batch_size=0"]);
}

#[test]
fn validation_split_of_one() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "validation_split=1.0",
        model.fit(
            (zeros(&[10, 3]), zeros(&[10, 1])),
            quiet().validation_split(1.0),
        ),
    );
    assert_mentions(&msg, &["[0, 1)", "validation_split=1"]);
}

#[test]
fn validation_split_negative() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "validation_split=-0.1",
        model.fit(
            (zeros(&[10, 3]), zeros(&[10, 1])),
            quiet().validation_split(-0.1),
        ),
    );
    assert_mentions(&msg, &["[0, 1)", "validation_split=-0.1"]);
}

#[test]
fn validation_split_leaving_no_training_sample() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "validation_split=0.5 of 1 sample",
        model.fit(
            (zeros(&[1, 3]), zeros(&[1, 1])),
            quiet().validation_split(0.5),
        ),
    );
    assert_mentions(&msg, &["1 samples", "validation_split=0.5"]);
}

/// Integer labels do not tell how many classes there are (the data may lack the last ones): a
/// weight for a class no label names is ignored, as Keras ignores it.
#[test]
fn class_weight_for_a_class_the_labels_lack() {
    let inputs = Input::new(&[3]);
    let outputs = Dense::new(3)
        .activation("softmax")
        .unwrap()
        .apply(&inputs)
        .unwrap();
    let mut model = Functional::new(&[inputs], &[outputs])
        .unwrap()
        .compile(
            Compile::new()
                .optimizer("adam")
                .loss("sparse_categorical_crossentropy"),
        )
        .unwrap();
    let y = labels(&[0.0, 1.0, 1.0, 1.0, 0.0, 1.0]);
    let h = model
        .fit(
            (uniform(&[6, 3]), y),
            quiet().class_weight([(0, 1.0), (1, 1.0), (2, 2.0)]),
        )
        .unwrap();
    assert!(h.get("loss")[0].is_finite());
}

#[test]
fn class_weight_for_missing_class_one_hot() {
    let mut model = functional(3, 3, "categorical_crossentropy");
    let y = Tensor::new(&[[1f32, 0.0, 0.0], [0.0, 1.0, 0.0]], &cpu()).unwrap();
    let msg = err_msg(
        "class_weight {5: 2.0} with one-hot targets of 3 classes",
        model.fit((zeros(&[2, 3]), y), quiet().class_weight([(5, 2.0)])),
    );
    assert_mentions(&msg, &["class 5", "3 classes"]);
}

// ---------------------------------------------------------------------------------------------
// compile shorthands
// ---------------------------------------------------------------------------------------------

fn small_model() -> Functional {
    let inputs = Input::new(&[3]);
    let outputs = Dense::new(1).apply(&inputs).unwrap();
    Functional::new(&[inputs], &[outputs]).unwrap()
}

#[test]
fn unknown_optimizer_shorthand() {
    let msg = err_msg(
        "optimizer \"adamm\"",
        small_model().compile(Compile::new().optimizer("adamm").loss("mse")),
    );
    assert_mentions(&msg, &["optimizer", "\"adamm\"", "\"adam\"", "\"sgd\""]);
}

#[test]
fn unknown_loss_shorthand() {
    let msg = err_msg(
        "loss \"msee\"",
        small_model().compile(Compile::new().optimizer("adam").loss("msee")),
    );
    assert_mentions(&msg, &["loss", "\"msee\"", "\"mse\""]);
}

#[test]
fn unknown_metric_shorthand() {
    let msg = err_msg(
        "metric \"accurcy\"",
        small_model().compile(
            Compile::new()
                .optimizer("adam")
                .loss("mse")
                .metrics(["accurcy"]),
        ),
    );
    assert_mentions(&msg, &["metric", "\"accurcy\"", "\"accuracy\""]);
}

#[test]
fn unknown_weighted_metric_shorthand() {
    let msg = err_msg(
        "weighted metric \"maee\"",
        small_model().compile(
            Compile::new()
                .optimizer("adam")
                .loss("mse")
                .weighted_metrics(["maee"]),
        ),
    );
    assert_mentions(&msg, &["metric", "\"maee\"", "\"mae\""]);
}

#[test]
fn unknown_activation_shorthand() {
    let msg = err_msg(
        "Dense activation \"swishy\"",
        Dense::new(4).activation("swishy"),
    );
    assert_mentions(&msg, &["activation", "\"swishy\"", "\"relu\""]);
    let msg = err_msg("ActivationLayer \"Relu\"", ActivationLayer::new("Relu"));
    assert_mentions(&msg, &["\"Relu\"", "\"relu\""]);
}

// ---------------------------------------------------------------------------------------------
// Steps without what they need
// ---------------------------------------------------------------------------------------------

#[test]
fn fit_without_loss() {
    let mut model = small_model()
        .compile(Compile::new().optimizer("adam"))
        .unwrap();
    let msg = err_msg(
        "fit with an optimizer but no loss",
        model.fit((zeros(&[4, 3]), zeros(&[4, 1])), quiet()),
    );
    assert_mentions(&msg, &["No loss to compute", "compile()"]);
}

#[test]
fn fit_without_optimizer() {
    let mut model = small_model().compile(Compile::new().loss("mse")).unwrap();
    let msg = err_msg(
        "fit with a loss but no optimizer",
        model.fit((zeros(&[4, 3]), zeros(&[4, 1])), quiet()),
    );
    assert_mentions(&msg, &["no optimizer", "compile", "optimizer(\"adam\")"]);
}

#[test]
fn fit_with_compiled_loss_but_no_targets() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "fit(x) with a compiled loss",
        model.fit(zeros(&[4, 3]), quiet()),
    );
    assert_mentions(&msg, &["targets", "`y`"]);
}

/// A model whose `train_step` unpacks the data itself, as the guide's custom steps do.
struct Unpacking {
    inner: Functional,
}

impl Model for Unpacking {
    fn call(&mut self, x: &Data, training: bool) -> Result<Data> {
        self.inner.call(x, training)
    }
    fn variables(&self) -> Vec<Variable> {
        self.inner.variables()
    }
    fn train_step(&mut self, ctx: &mut StepContext, data: &Data) -> Result<Logs> {
        let (x, y, sw) = data.unpack()?;
        let y_pred = self.call(x, true)?;
        let loss = self.compute_loss(ctx, x, y, &y_pred, sw)?;
        let vars = self.trainable_variables();
        let grads = GradientTape::gradient(&loss, &vars)?;
        ctx.optimizer()?.apply(&grads, &vars)?;
        Ok(self.get_metrics_result(ctx))
    }
}

#[test]
fn custom_step_with_four_element_tuple() {
    let mut model = Trainer::new(Unpacking {
        inner: small_model(),
    })
    .compile(Compile::new().optimizer("sgd").loss("mse"))
    .unwrap();
    let four = Data::Tuple(vec![
        zeros(&[2, 3]).into(),
        zeros(&[2, 1]).into(),
        zeros(&[2]).into(),
        zeros(&[2]).into(),
    ]);
    let msg = err_msg("train_on_batch with 4 elements", model.train_on_batch(four));
    assert_mentions(
        &msg,
        &["(x, y, sample_weight)", "4 elements", "shape=[2, 3]"],
    );
}

#[test]
fn unpack_xy_without_targets() {
    let data = Data::from(zeros(&[2, 3]));
    let msg = err_msg("unpack_xy on a bare tensor", data.unpack_xy());
    assert_mentions(&msg, &["needs targets", "(x, y)", "shape=[2, 3]"]);
}

// ---------------------------------------------------------------------------------------------
// Weights and layers
// ---------------------------------------------------------------------------------------------

#[test]
fn set_weights_wrong_number() {
    let mut model = small_model();
    let msg = err_msg(
        "set_weights with 1 tensor for 2 variables",
        model.set_weights(&[zeros(&[3, 1])]),
    );
    assert_mentions(
        &msg,
        &["expected 2 tensors", "received 1", "/kernel", "/bias"],
    );
}

/// A real copy of every weight (`get_weights` may share storage with the variables).
fn snapshot(model: &Functional) -> Vec<Vec<f32>> {
    model
        .get_weights()
        .iter()
        .map(|w| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

#[test]
fn set_weights_wrong_shape() {
    let mut model = small_model();
    let before = snapshot(&model);
    let msg = err_msg(
        "set_weights with a (4, 1) kernel for a (3, 1) variable",
        model.set_weights(&[zeros(&[4, 1]), zeros(&[1])]),
    );
    assert_mentions(&msg, &["/kernel", "[3, 1]", "[4, 1]"]);
    assert_eq!(
        before,
        snapshot(&model),
        "a rejected set_weights changed the weights"
    );
}

#[test]
fn set_weights_wrong_bias_shape() {
    let mut model = small_model();
    let msg = err_msg(
        "set_weights with a (2,) bias for a (1,) variable",
        model.set_weights(&[zeros(&[3, 1]), zeros(&[2])]),
    );
    assert_mentions(&msg, &["/bias", "[1]", "[2]"]);
}

#[test]
fn set_weights_rejected_assigns_nothing() {
    let mut model = small_model();
    let before = snapshot(&model);
    let r = model.set_weights(&[zeros(&[3, 1]), zeros(&[2])]);
    assert!(r.is_err());
    assert_eq!(
        before,
        snapshot(&model),
        "a rejected set_weights must not overwrite the kernel before rejecting the bias"
    );
}

#[test]
fn get_weights_is_a_snapshot() {
    let mut model = small_model();
    let saved = model.get_weights();
    let copy: Vec<Vec<f32>> = saved
        .iter()
        .map(|w| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    model.set_weights(&[zeros(&[3, 1]), zeros(&[1])]).unwrap();
    let saved_now: Vec<Vec<f32>> = saved
        .iter()
        .map(|w| w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    assert_eq!(
        copy, saved_now,
        "tensors returned by get_weights() changed after set_weights"
    );
}

#[test]
fn reshape_impossible_target_on_call() {
    let mut r = Reshape::new(&[5]);
    let msg = err_msg("Reshape (12,) -> (5,)", r.call(&zeros(&[2, 12]), false));
    assert_mentions(
        &msg,
        &["total size", "input_shape=[12]", "target_shape=[5]"],
    );
    let mut r = Reshape::new(&[5, -1]);
    let msg = err_msg("Reshape (12,) -> (5, -1)", r.call(&zeros(&[2, 12]), false));
    assert_mentions(&msg, &["input_shape=[12]", "target_shape=[5, -1]"]);
    let mut r = Reshape::new(&[-1, -1]);
    let msg = err_msg("Reshape with two -1", r.call(&zeros(&[2, 12]), false));
    assert_mentions(&msg, &["target_shape=[-1, -1]"]);
}

#[test]
fn reshape_impossible_target_in_graph() {
    let inputs = Input::new(&[12]);
    let msg = err_msg(
        "Reshape applied to Input(12) with target (5,)",
        Reshape::new(&[5]).apply(&inputs),
    );
    assert_mentions(&msg, &["input_shape=[12]", "target_shape=[5]"]);
}

#[test]
fn reshape_impossible_target_in_sequential() {
    let mut model = Sequential::new().input(&[12]).add(Reshape::new(&[5]));
    let msg = err_msg("Sequential Reshape (12,) -> (5,)", model.build());
    assert_mentions(&msg, &["input_shape=[12]", "target_shape=[5]"]);
}

#[test]
fn reshape_target_whose_size_overflows() {
    // Used to panic with "attempt to multiply with overflow".
    let mut r = Reshape::new(&[i64::MAX, 4]);
    let msg = err_msg("Reshape to (i64::MAX, 4)", r.call(&zeros(&[2, 8]), false));
    assert_mentions(
        &msg,
        &["input_shape=[8]", "target_shape=[9223372036854775807, 4]"],
    );
    let msg = err_msg(
        "Reshape of a huge symbolic input",
        Reshape::new(&[-1]).apply(&Input::new(&[usize::MAX, 2])),
    );
    assert_mentions(&msg, &["total size", "target_shape=[-1]"]);
    let msg = err_msg(
        "Flatten of a huge symbolic input",
        Flatten::new().apply(&Input::new(&[usize::MAX, 2])),
    );
    assert_mentions(&msg, &["Flatten", "overflows"]);
}

#[test]
fn activations_on_integer_inputs_do_not_panic() {
    // candle has no sigmoid/tanh/exp kernels for integers and used to panic ("no unary function
    // for u8"); integer inputs are now cast to float32, as Keras does.
    let x = Tensor::new(&[[0u8, 1, 2], [3, 4, 5]], &cpu()).unwrap();
    for name in [
        "linear",
        "relu",
        "sigmoid",
        "tanh",
        "softmax",
        "leaky_relu",
        "gelu",
    ] {
        let act: Activation = name.parse().unwrap();
        let y = act.apply(&x);
        assert!(y.is_ok(), "{name} on u8: {:?}", y.err());
        assert_eq!(y.unwrap().dtype(), DType::F32, "{name}");
    }
    let w = Tensor::new(&[1i64, -2, 3], &cpu()).unwrap();
    let p = Regularizer::L1L2 { l1: 0.5, l2: 0.25 }.penalty(&w).unwrap();
    assert_eq!(p.to_scalar::<f32>().unwrap(), 0.5 * 6.0 + 0.25 * 14.0);
}

#[test]
fn integer_data_into_an_activation_layer_trains() {
    let inputs = Input::new(&[3]);
    let h = ActivationLayer::new("sigmoid")
        .unwrap()
        .apply(&inputs)
        .unwrap();
    let outputs = Dense::new(1).apply(&h).unwrap();
    let mut model = Functional::new(&[inputs], &[outputs])
        .unwrap()
        .compile(Compile::new().optimizer("sgd").loss("mse"))
        .unwrap();
    let x = Tensor::ones((4, 3), DType::U8, &cpu()).unwrap();
    let r = model.fit((x, zeros(&[4, 1])), quiet());
    assert!(r.is_ok(), "{:?}", r.err().map(|e| e.to_string()));
}

#[test]
fn dropout_rate_one() {
    let msg = err_msg("Dropout(1.0)", Dropout::new(1.0));
    assert_mentions(&msg, &["rate", "between 0 and 1", "rate=1"]);
    let msg = err_msg("Dropout(-0.5)", Dropout::new(-0.5));
    assert_mentions(&msg, &["rate=-0.5"]);
    let msg = err_msg("Dropout(NaN)", Dropout::new(f32::NAN));
    assert_mentions(&msg, &["rate=NaN"]);
}

#[test]
fn functional_graph_disconnected() {
    let a = Input::named(&[3], "input_a");
    let b = Input::named(&[3], "input_b");
    let sum = Add::new().apply_many(&[a.clone(), b]).unwrap();
    let out = Dense::new(1).apply(&sum).unwrap();
    let msg = err_msg(
        "Functional with an unlisted input",
        Functional::new(&[a], &[out]),
    );
    assert_mentions(&msg, &["Graph disconnected", "input_b", "(None, 3)"]);
}

#[test]
fn functional_wrong_number_of_inputs() {
    let a = Input::new(&[3]);
    let b = Input::new(&[2]);
    let h = Concatenate::new()
        .apply_many(&[a.clone(), b.clone()])
        .unwrap();
    let out = Dense::new(1).apply(&h).unwrap();
    let mut model = Functional::new(&[a, b], &[out]).unwrap();
    let msg = err_msg(
        "two-input model called with one tensor",
        model.call(&Data::from(zeros(&[4, 3])), false),
    );
    assert_mentions(&msg, &["expects 2 input(s)", "received 1"]);
}

#[test]
fn dense_on_rank_one_tensor() {
    let mut d = Dense::new(4);
    let msg = err_msg("Dense on shape (3,)", d.call(&zeros(&[3]), false));
    assert_mentions(&msg, &["min_ndim=2", "ndim=1", "[3]"]);
    // The failed call must not leave a half-built layer behind.
    assert!(d.variables().is_empty() || d.call(&zeros(&[2, 3]), false).is_ok());
}

#[test]
fn dense_on_scalar_input_shape() {
    let msg = err_msg("Dense on Input(())", Dense::new(4).apply(&Input::new(&[])));
    assert_mentions(&msg, &["Dense", "feature axis"]);
}

#[test]
fn dense_called_with_other_feature_size_after_build() {
    let mut d = Dense::new(4);
    d.call(&zeros(&[2, 3]), false).unwrap();
    let msg = err_msg(
        "Dense(3 features) on 5 features",
        d.call(&zeros(&[2, 5]), false),
    );
    assert_mentions(&msg, &["value 3", "[2, 5]"]);
}

#[test]
fn add_of_mismatched_shapes() {
    let msg = err_msg(
        "Add of (3,) and (4,)",
        Add::new().apply_many(&[Input::new(&[3]), Input::new(&[4])]),
    );
    assert_mentions(&msg, &["incompatible shapes", "[3]", "[4]"]);
    let msg = err_msg(
        "Add of (4, 5) and (5,)",
        Add::new().apply_many(&[Input::new(&[4, 5]), Input::new(&[5])]),
    );
    assert_mentions(&msg, &["same rank", "[4, 5]", "[5]"]);
    // Axes of size 1 broadcast, as Keras's merge layers do.
    let sum = Add::new()
        .apply_many(&[Input::new(&[4, 5]), Input::new(&[1, 5])])
        .unwrap();
    assert_eq!(sum.shape(), &[4, 5]);
    let msg = err_msg(
        "Add call on (2, 3) and (2, 4)",
        Add::new().call_many(&[zeros(&[2, 3]), zeros(&[2, 4])], false),
    );
    assert_mentions(&msg, &["[2, 3]", "[2, 4]"]);
}

#[test]
fn concatenate_of_mismatched_shapes() {
    let msg = err_msg(
        "Concatenate of (3, 2) and (4, 5) on the last axis",
        Concatenate::new().apply_many(&[Input::new(&[3, 2]), Input::new(&[4, 5])]),
    );
    assert_mentions(&msg, &["matching shapes", "[3, 2]", "[4, 5]"]);
    let msg = err_msg(
        "Concatenate call on (2, 3) and (3, 3)",
        Concatenate::new().call_many(&[zeros(&[2, 3]), zeros(&[3, 3])], false),
    );
    assert_mentions(&msg, &["[2, 3]", "[3, 3]"]);
}

// ---------------------------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------------------------

#[test]
fn sparse_categorical_label_out_of_range() {
    let loss = SparseCategoricalCrossentropy::new();
    let y = labels(&[0.0, 3.0]);
    let p = Tensor::new(&[[0.2f32, 0.3, 0.5], [0.1, 0.1, 0.8]], &cpu()).unwrap();
    let msg = err_msg("label 3 for 3 classes", loss.compute(&y, &p, None));
    assert_mentions(&msg, &["label value of 3", "[0, 3)"]);
    let msg = err_msg(
        "label -1 for 3 classes",
        loss.compute(&labels(&[-1.0, 0.0]), &p, None),
    );
    assert_mentions(&msg, &["label value of -1", "[0, 3)"]);
}

#[test]
fn sparse_categorical_with_zero_classes() {
    let msg = err_msg(
        "sparse CCE on predictions with 0 classes",
        SparseCategoricalCrossentropy::new().compute(&labels(&[0.0, 1.0]), &zeros(&[2, 0]), None),
    );
    assert_mentions(&msg, &["[0, 0)"]);
}

#[test]
fn probability_losses_on_integer_predictions_do_not_panic() {
    let y = Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &cpu()).unwrap();
    let p = Tensor::new(&[[0u8, 1], [1, 0]], &cpu()).unwrap();
    let losses: Vec<Box<dyn Loss>> = vec![
        Box::new(BinaryCrossentropy::new()),
        Box::new(CategoricalCrossentropy::new()),
    ];
    for loss in &losses {
        // Either cast (Keras's behaviour) or a clear error naming the dtype; never a panic.
        if let Err(e) = loss.compute(&y, &p, None) {
            assert_mentions(&e.to_string(), &["U8"]);
        }
    }
    if let Err(e) = SparseCategoricalCrossentropy::new().compute(&labels(&[0.0, 1.0]), &p, None) {
        assert_mentions(&e.to_string(), &["U8"]);
    }
}

#[test]
fn sparse_categorical_label_out_of_range_in_fit() {
    let mut model = functional(3, 3, "sparse_categorical_crossentropy");
    let msg = err_msg(
        "fit with label 7 for 3 classes",
        model.fit((zeros(&[4, 3]), labels(&[0.0, 1.0, 7.0, 2.0])), quiet()),
    );
    assert_mentions(&msg, &["label value of 7", "[0, 3)"]);
}

#[test]
fn loss_shape_mismatch() {
    let msg = err_msg(
        "mse with y_true (2, 3) and y_pred (2, 4)",
        MseLoss::new().compute(&zeros(&[2, 3]), &zeros(&[2, 4]), None),
    );
    assert_mentions(&msg, &["same shape", "[2, 3]", "[2, 4]"]);
}

#[test]
fn loss_sample_weight_shape_mismatch() {
    let msg = err_msg(
        "mse with 3 weights for 2 samples",
        MseLoss::new().compute(
            &zeros(&[2, 1]),
            &zeros(&[2, 1]),
            Some(&Tensor::ones(3, DType::F32, &cpu()).unwrap()),
        ),
    );
    assert_mentions(&msg, &["sample_weight", "[3]"]);
}

#[test]
fn fit_targets_of_wrong_shape() {
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "fit with y of (4, 2) for a 1-unit output",
        model.fit((uniform(&[4, 3]), uniform(&[4, 2])), quiet()),
    );
    assert_mentions(&msg, &["[4, 2]", "[4, 1]"]);
}

/// Degenerate but valid shapes (an empty batch, images with no channels, more images than the
/// convolution blocks hold) run forward and backward through the CPU kernels without panicking,
/// with the shapes Keras gives.
#[test]
fn empty_batches_and_channelless_images_do_not_panic() {
    for (shape, conv_out, pooled) in [
        ([0usize, 6, 6, 1], [0usize, 2, 2, 4], [0usize, 3, 3, 1]),
        ([2, 6, 6, 0], [2, 2, 2, 4], [2, 3, 3, 0]),
        ([9, 6, 6, 1], [9, 2, 2, 4], [9, 3, 3, 1]),
    ] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
        let mut m = Sequential::new()
            .input(&shape[1..])
            .add(
                ferrokeras::layers::Conv2D::new(4, (3, 3))
                    .activation("relu")
                    .unwrap(),
            )
            .add(ferrokeras::layers::MaxPooling2D::new((2, 2)));
        let y = m.call(&Data::from(x.clone()), true).unwrap();
        let y = y.tensor().unwrap();
        assert_eq!(y.dims(), conv_out.as_slice(), "{shape:?}");
        // No input channels: every output is relu(bias) = 0 (bias starts at zero).
        if shape[3] == 0 {
            let top = y
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(top, 0.0);
        }
        let vars = m.trainable_variables();
        let grads = GradientTape::gradient(&y.sum_all().unwrap(), &vars).unwrap();
        assert_eq!(grads.len(), 2, "{shape:?}");
        let mut p = Sequential::new()
            .input(&shape[1..])
            .add(ferrokeras::layers::MaxPooling2D::new((2, 2)));
        let z = p.call(&Data::from(x), true).unwrap();
        assert_eq!(z.tensor().unwrap().dims(), pooled.as_slice(), "{shape:?}");
    }
}

/// Pooling with a zero pool size or stride is refused wherever the layer meets its input: while
/// a model is assembled (shape inference), when a saved configuration is loaded, and when called.
#[test]
fn pooling_with_zero_sizes() {
    use ferrokeras::layers::{AveragePooling2D, MaxPooling2D};
    let assembled = Sequential::new()
        .input(&[8, 8, 1])
        .add(MaxPooling2D::new((2, 2)).strides((2, 0)));
    let msg = err_msg(
        "MaxPooling2D strides (2, 0) in a Sequential",
        assembled.compute_output_shape(&[8, 8, 1]),
    );
    assert_mentions(&msg, &["pool_size and strides must be >= 1", "(2, 0)"]);
    let msg = err_msg(
        "AveragePooling2D((0, 0)) applied to an Input",
        AveragePooling2D::new((0, 0)).apply(&Input::new(&[8, 8, 1])),
    );
    assert_mentions(&msg, &["pool_size=(0, 0)"]);
    let mut called = Sequential::new().add(MaxPooling2D::new((0, 2)));
    let msg = err_msg(
        "MaxPooling2D((0, 2)) called without a declared input",
        called.call(&Data::from(zeros(&[1, 8, 8, 1])), false),
    );
    assert_mentions(&msg, &["pool_size=(0, 2)"]);
    // A saved configuration with a zero stride loads, and is refused once it meets a shape.
    let json = Sequential::new()
        .input(&[8, 8, 1])
        .add(MaxPooling2D::new((2, 2)))
        .to_json()
        .unwrap()
        .replace("\"strides\":null", "\"strides\":[0,0]");
    assert!(json.contains("[0,0]"), "{json}");
    let msg = err_msg(
        "a saved MaxPooling2D with strides 0",
        Sequential::from_json(&json),
    );
    assert_mentions(&msg, &["strides=(0, 0)"]);
}

/// BatchNormalization over no features, or over an empty batch, gives the (empty) input back and
/// leaves its moving statistics as they were (a mean over no rows would be NaN).
#[test]
fn batch_normalization_of_nothing() {
    use ferrokeras::layers::{BatchNormalization, Layer};
    let mut bn = BatchNormalization::new();
    let y = bn.call(&zeros(&[4, 0]), true).unwrap();
    assert_eq!(y.dims(), &[4, 0]);
    let mut bn = BatchNormalization::new();
    bn.call(&uniform(&[3, 2]), true).unwrap();
    let before: Vec<Vec<f32>> = bn
        .variables()
        .iter()
        .map(|v| v.value().to_vec1().unwrap())
        .collect();
    let y = bn.call(&zeros(&[0, 2]), true).unwrap();
    assert_eq!(y.dims(), &[0, 2]);
    let after: Vec<Vec<f32>> = bn
        .variables()
        .iter()
        .map(|v| v.value().to_vec1().unwrap())
        .collect();
    assert_eq!(before, after);
    assert!(after.iter().flatten().all(|v| v.is_finite()));
}

/// Compiled metrics built for two outputs and then given one say so.
#[test]
fn compiled_metrics_given_fewer_outputs() {
    use ferrokeras::metrics::CompiledMetrics;
    let mut m = CompiledMetrics::new(vec!["mae".into()]).unwrap();
    let two = |t: &Tensor| Data::from(vec![t.clone(), t.clone()]);
    let y = uniform(&[4, 1]);
    m.update_state(&two(&y), &two(&y), None).unwrap();
    let msg = err_msg(
        "compiled metrics built for 2 outputs, updated with 1",
        m.update_state(&Data::from(y.clone()), &Data::from(y), None),
    );
    assert_mentions(&msg, &["built for 2 outputs", "1 target(s)"]);
}

/// An optimizer state saved without AMSGrad (or momentum) loads into an optimizer that needs the
/// slot, and its first update says which slot is missing instead of indexing past the slots.
#[test]
fn optimizer_state_missing_a_slot_that_the_settings_need() {
    use ferrokeras::optimizers::{Adam, Optimizer, RmsProp};
    let w = Variable::new("w", &uniform(&[3]), true).unwrap();
    let g = [uniform(&[3])];
    let mut plain = Adam::new(0.1);
    plain.apply(&g, std::slice::from_ref(&w)).unwrap();
    let state = plain.state().unwrap();
    let mut ams = Adam::new(0.1).amsgrad(true);
    ams.load_state(&state, std::slice::from_ref(&w)).unwrap();
    let before = w.value().to_vec1::<f32>().unwrap();
    let msg = err_msg(
        "AMSGrad update from a state without vhat",
        ams.apply(&g, std::slice::from_ref(&w)),
    );
    assert_mentions(&msg, &["`w`", "2 optimizer slot(s)", "need 3", "amsgrad"]);
    assert_eq!(
        w.value().to_vec1::<f32>().unwrap(),
        before,
        "nothing applied"
    );
    // RMSprop keeps velocity, momentum and average gradient; a hand-made state of velocity only.
    let velocity: Vec<(String, Tensor)> = vec![("w/velocity".into(), uniform(&[3]))];
    let mut rms = RmsProp::new(0.1).momentum(0.9);
    rms.load_state(&velocity, std::slice::from_ref(&w)).unwrap();
    let msg = err_msg(
        "RMSprop with momentum from a velocity-only state",
        rms.apply(&g, std::slice::from_ref(&w)),
    );
    assert_mentions(&msg, &["1 optimizer slot(s)", "need 3"]);
}

/// A caller-supplied sample order that is not one entry per sample is refused.
#[test]
fn array_adapter_batch_with_a_bad_order() {
    use ferrokeras::data::ArrayAdapter;
    let a = ArrayAdapter::new(
        Data::from(uniform(&[10, 2])),
        Some(Data::from(uniform(&[10, 1]))),
        None,
        4,
    )
    .unwrap();
    let msg = err_msg("an empty order", a.batch(0, Some(&[])));
    assert_mentions(&msg, &["10 samples", "received 0 entries"]);
    let order: Vec<usize> = (0..10).map(|i| if i == 5 { 42 } else { i }).collect();
    let msg = err_msg("an order with index 42", a.batch(1, Some(&order)));
    assert_mentions(&msg, &["below 10", "42"]);
    let msg = err_msg("batch usize::MAX", a.batch(usize::MAX, None));
    assert_mentions(&msg, &["past the end", "3 batches"]);
}

/// Checkpoint path templates with a multi-byte character in the spec, or absurd widths, are
/// unsupported specs, not panics.
#[test]
fn checkpoint_templates_with_odd_specs() {
    use ferrokeras::callbacks::format_template;
    let mut logs = Logs::new();
    logs.insert("val_loss", 0.5);
    for t in [
        "m-{val_loss:.2é}",
        "m-{epoch:070000d}",
        "m-{val_loss:.70000f}",
        "m-{epoch:0xd}",
    ] {
        let msg = err_msg(t, format_template(t, 1, None, &logs));
        assert_mentions(&msg, &["unsupported format spec"]);
    }
    assert_eq!(
        format_template("m-{epoch:03d}-{val_loss:.1f}", 7, None, &logs).unwrap(),
        "m-007-0.5"
    );
}

/// Huge buffer sizes cost only what the buffers hold, and a repeat count whose product
/// overflows is an endless dataset.
#[test]
fn datasets_with_huge_buffers() {
    use ferrokeras::data::{Cardinality, Dataset};
    let ds = Dataset::from_tensor_slices(Data::from(uniform(&[5, 2]))).unwrap();
    let n = |d: &Dataset| d.iter().collect::<Result<Vec<_>>>().unwrap().len();
    assert_eq!(n(&ds.clone().shuffle(usize::MAX, Some(1))), 5);
    assert_eq!(n(&ds.clone().batch(usize::MAX, false)), 1);
    assert_eq!(n(&ds.clone().prefetch(usize::MAX)), 5);
    assert_eq!(
        ds.clone().repeat(Some(usize::MAX)).cardinality(),
        Cardinality::Infinite
    );
    assert_eq!(ds.repeat(Some(3)).cardinality(), Cardinality::Finite(15));
}

/// Convolutions refuse zero strides even before they are built, and images of no height or
/// width, with messages instead of an arithmetic panic.
#[test]
fn convolutions_of_empty_images_and_unbuilt_zero_strides() {
    use ferrokeras::layers::{Conv2D, Conv2DTranspose, Layer};
    let msg = err_msg(
        "Conv2D strides 0, shape inference",
        Conv2D::new(8, (3, 3))
            .strides(0)
            .compute_output_shape(&[28, 28, 1]),
    );
    assert_mentions(&msg, &["strides=(0, 0)"]);
    let msg = err_msg(
        "Conv2DTranspose dilation 0, shape inference",
        Conv2DTranspose::new(8, (3, 3))
            .dilation_rate((1, 0))
            .compute_output_shape(&[7, 7, 1]),
    );
    assert_mentions(&msg, &["dilation_rate=(1, 0)"]);
    for same in [false, true] {
        let conv = Conv2D::new(4, (3, 3));
        let conv = if same {
            conv.padding("same").unwrap()
        } else {
            conv
        };
        let mut m = Sequential::new().input(&[0, 8, 1]).add(conv);
        let msg = err_msg(
            "Conv2D on 0x8 images",
            m.call(&Data::from(zeros(&[1, 0, 8, 1])), false),
        );
        assert_mentions(&msg, &["at least 1x1", "height 0 and width 8"]);
    }
    let mut t = Sequential::new()
        .input(&[4, 0, 1])
        .add(Conv2DTranspose::new(2, (3, 3)).strides(2).output_padding(1));
    let msg = err_msg(
        "Conv2DTranspose on 4x0 images",
        t.call(&Data::from(zeros(&[1, 4, 0, 1])), false),
    );
    assert_mentions(&msg, &["height 4 and width 0"]);
}

/// Sizes that overflow: random tensors of too many values, an MNIST header announcing more pixels
/// than a usize counts, a history plot too large to draw.
#[test]
fn sizes_that_overflow() {
    let msg = err_msg(
        "uniform of 2^40 x 2^40",
        ferrokeras::random::uniform(&[1 << 40, 1 << 40], 0.0, 1.0, &cpu()),
    );
    assert_mentions(&msg, &["more values than a usize counts"]);
    let msg = err_msg(
        "normal of 2^40 x 2^40",
        ferrokeras::random::normal(&[1 << 40, 1 << 40], 0.0, 1.0, &cpu()),
    );
    assert_mentions(&msg, &["more values than a usize counts"]);
    let mut header = vec![0, 0, 8, 3];
    for v in [u32::MAX; 3] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    header.extend_from_slice(&[0; 8]);
    let msg = err_msg(
        "MNIST header of 2^32 images of 2^32 x 2^32",
        ferrokeras::datasets::mnist::parse_images(&header, "train images"),
    );
    assert_mentions(&msg, &["more than a usize counts", "8 bytes of pixels"]);
    let mut h = History::default();
    h.history.insert("loss".into(), vec![1.0, 0.5]);
    let dir = std::env::temp_dir().join(format!("fk-plot-{}", std::process::id()));
    let opts = ferrokeras::plot::PlotOptions::new().panel_size(u32::MAX, u32::MAX);
    let msg = err_msg(
        "a plot of 2^32 pixels a side",
        ferrokeras::plot::plot_history_with(&h, dir.join("h.png"), &opts),
    );
    assert_mentions(&msg, &["at most 16384x16384"]);
    assert!(!dir.join("h.png").exists());
}

/// Zero sizes that used to be taken as 1 are refused: a dataset's batch or shuffle buffer of 0
/// (when read, as the builders return no `Result`), `validation_freq` 0 and
/// `validation_batch_size` 0.
#[test]
fn zero_sizes_that_are_not_one() {
    use ferrokeras::data::Dataset;
    let data = (uniform(&[6, 3]), uniform(&[6, 1]));
    let ds = Dataset::from_tensor_slices(Data::from(vec![data.0.clone(), data.1.clone()])).unwrap();
    let mut model = functional(3, 1, "mse");
    let msg = err_msg(
        "fit on a dataset batched by 0",
        model.fit(ds.clone().batch(0, false), quiet()),
    );
    assert_mentions(&msg, &["Dataset::batch", "batch_size=0"]);
    let msg = err_msg(
        "a dataset shuffled with a buffer of 0",
        ds.clone()
            .shuffle(0, None)
            .batch(2, false)
            .iter()
            .collect::<Result<Vec<_>>>(),
    );
    assert_mentions(&msg, &["Dataset::shuffle", "buffer_size=0"]);
    let msg = err_msg(
        "validation_freq 0",
        model.fit(
            data.clone(),
            quiet().validation_data(data.clone()).validation_freq(0),
        ),
    );
    assert_mentions(&msg, &["validation_freq", ">= 1", "validation_freq=0"]);
    let msg = err_msg(
        "validation_batch_size 0 with validation_split",
        model.fit(
            data.clone(),
            quiet().validation_split(0.5).validation_batch_size(0),
        ),
    );
    assert_mentions(&msg, &["validation_batch_size=0"]);
    // Nothing was trained by the refused calls; a valid fit still runs.
    let h = model
        .fit(
            data.clone(),
            quiet().validation_data(data).validation_freq(2).epochs(2),
        )
        .unwrap();
    assert_eq!(h.history["val_loss"].len(), 1);
}

/// Settings Keras refuses: a BinaryAccuracy threshold outside (0, 1), an SGD momentum outside
/// [0, 1] (a negative one was plain SGD).
#[test]
fn thresholds_and_momenta_out_of_range() {
    use ferrokeras::metrics::{BinaryAccuracy, Metric};
    use ferrokeras::optimizers::{Optimizer, Sgd};
    let y = Tensor::new(&[1f32, 0.0], &cpu()).unwrap();
    for th in [0.0, 1.0, -0.5, f32::NAN] {
        let mut m = BinaryAccuracy::new().threshold(th);
        let msg = err_msg("BinaryAccuracy threshold", m.update_state(&y, &y, None));
        assert_mentions(&msg, &["threshold", "(0, 1)"]);
    }
    let w = Variable::new("w", &uniform(&[2]), true).unwrap();
    let before = w.value().to_vec1::<f32>().unwrap();
    let msg = err_msg(
        "SGD momentum -0.5",
        Sgd::new(0.1)
            .momentum(-0.5)
            .apply(&[uniform(&[2])], std::slice::from_ref(&w)),
    );
    assert_mentions(&msg, &["momentum", "[0, 1]", "-0.5"]);
    assert_eq!(w.value().to_vec1::<f32>().unwrap(), before);
}

/// Keras refuses strides and dilation both above 1 in a convolution, and two layers of one name
/// in a functional model.
#[test]
fn strided_dilated_convolutions_and_duplicate_names() {
    use ferrokeras::layers::{Conv2D, Conv2DTranspose};
    let msg = err_msg(
        "Conv2D strides 2 dilation 2",
        Conv2D::new(2, (3, 3))
            .strides(2)
            .dilation_rate(2)
            .apply(&Input::new(&[9, 9, 1])),
    );
    assert_mentions(
        &msg,
        &["`strides > 1`", "strides=(2, 2)", "dilation_rate=(2, 2)"],
    );
    let msg = err_msg(
        "Conv2DTranspose strides 2 dilation 2",
        Conv2DTranspose::new(2, (3, 3))
            .strides(2)
            .dilation_rate(2)
            .apply(&Input::new(&[4, 4, 1])),
    );
    assert_mentions(&msg, &["`strides > 1`"]);
    let x = Input::new(&[3]);
    let a = Dense::new(2).named("same").apply(&x).unwrap();
    let b = Dense::new(2).named("same").apply(&a).unwrap();
    let msg = err_msg(
        "two layers named same",
        Functional::new(&[x], &[b]).map(|_| ()),
    );
    assert_mentions(&msg, &["\"same\" is used 2 times"]);
}

/// A schedule over 0 steps is refused when built, with Keras's message (it used to run as 1).
#[test]
fn schedules_over_zero_steps() {
    use ferrokeras::optimizers::{
        CosineDecay, ExponentialDecay, InverseTimeDecay, PolynomialDecay,
    };
    let errors = [
        ExponentialDecay::new(0.1, 0, 0.5).err(),
        PolynomialDecay::new(0.1, 0, 0.0).err(),
        InverseTimeDecay::new(0.1, 0, 0.5).err(),
        CosineDecay::new(0.1, 0).err(),
    ];
    for e in errors {
        let e = e.expect("decay_steps 0 accepted").to_string();
        assert!(e.contains("`decay_steps` must be > 0"), "{e}");
    }
}
