//! Reductions and names that depend on shapes and on the model's outputs, against Keras 3
//! (`tests/fixtures/keras_semantics.json`, made by `make_keras_semantics_fixtures.py`).

use candle_core::{Device, Tensor};
use serde_json::Value;

use ferrokeras::layers::Dense;
use ferrokeras::losses::{BinaryCrossentropy, Huber, Loss, MeanAbsoluteError, MeanSquaredError};
use ferrokeras::metrics::{Accuracy, BinaryAccuracy, Metric};
use ferrokeras::model::LayerExt;
use ferrokeras::{Compile, Data, EvaluateOptions, Functional, Input, Model, ModelExt};

#[path = "support/fixtures.rs"]
mod support;
use support::tensor;

fn fixtures() -> Value {
    support::read("keras_semantics.json")
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{what}: {got} vs Keras {want}"
    );
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f32>().unwrap() as f64
}

/// Rank-1 targets weighted per sample: Keras divides the weighted sum by the number of weighted
/// values (the batch size), as for `(n, 1)` columns.
#[test]
fn weighted_losses_of_rank_one_targets() {
    let fx = &fixtures()["rank1_losses"];
    let (y, p, sw) = (tensor(&fx["y"]), tensor(&fx["p"]), tensor(&fx["sw"]));
    let col = |t: &Tensor| t.unsqueeze(1).unwrap();
    let losses: Vec<(&str, Box<dyn Loss>)> = vec![
        ("mse", Box::new(MeanSquaredError::new())),
        ("mae", Box::new(MeanAbsoluteError::new())),
        ("huber", Box::new(Huber::new(0.3))),
        ("bce", Box::new(BinaryCrossentropy::new())),
    ];
    for (name, loss) in losses {
        let want = &fx[name];
        let got = scalar(&loss.compute(&y, &p, None).unwrap());
        close(
            &format!("{name} rank 1"),
            got,
            want["rank1"].as_f64().unwrap(),
            1e-5,
        );
        let got = scalar(&loss.compute(&y, &p, Some(&sw)).unwrap());
        close(
            &format!("{name} rank 1 weighted"),
            got,
            want["rank1_weighted"].as_f64().unwrap(),
            1e-5,
        );
        let got = scalar(&loss.compute(&col(&y), &col(&p), Some(&sw)).unwrap());
        close(
            &format!("{name} (n, 1) weighted"),
            got,
            want["column_weighted"].as_f64().unwrap(),
            1e-5,
        );
    }
}

/// `Accuracy` and `BinaryAccuracy` over rank-1 batches of different sizes count samples, not
/// batches (Keras 3's element-wise `accuracy`).
#[test]
fn accuracies_of_rank_one_batches() {
    let fx = &fixtures()["rank1_accuracy"];
    let mut acc = Accuracy::new();
    for b in fx["accuracy_batches"].as_array().unwrap() {
        acc.update_state(&tensor(&b[0]), &tensor(&b[1]), None)
            .unwrap();
    }
    close(
        "accuracy",
        acc.result(),
        fx["accuracy"].as_f64().unwrap(),
        1e-6,
    );
    let mut bin = BinaryAccuracy::new();
    for b in fx["binary_batches"].as_array().unwrap() {
        bin.update_state(&tensor(&b[0]), &tensor(&b[1]), None)
            .unwrap();
    }
    close(
        "binary_accuracy",
        bin.result(),
        fx["binary_accuracy"].as_f64().unwrap(),
        1e-6,
    );
}

/// Two named outputs, a loss per output with loss weights, a metric and a weighted metric per
/// output, evaluated with sample weights in batches of 4: Keras's log keys (`{output}_loss`
/// before the loss weight, `{output}_mae`, `{output}_weighted_mae`) and values.
#[test]
fn multi_output_evaluation_logs() {
    let fx = &fixtures()["multi_output"];
    let inputs = Input::new(&[3]);
    let h = Dense::new(4)
        .activation("tanh")
        .unwrap()
        .named("hidden")
        .apply(&inputs)
        .unwrap();
    let price = Dense::new(1).named("price").apply(&h).unwrap();
    let scores = Dense::new(2).named("scores").apply(&h).unwrap();
    let mut model = Functional::new(&[inputs], &[price, scores]).unwrap();
    let weights: Vec<Tensor> = ["hidden", "price", "scores"]
        .iter()
        .flat_map(|l| fx["weights"][l].as_array().unwrap().iter().map(tensor))
        .collect();
    model.set_weights(&weights).unwrap();
    let mut model = model
        .compile(
            Compile::new()
                .optimizer("sgd")
                .losses(vec!["mse".into(), "mse".into()])
                .loss_weights(vec![1.0, 0.25])
                .metrics(["mae"])
                .weighted_metrics(["mae"]),
        )
        .unwrap();
    let x = Data::from(tensor(&fx["x"]));
    let y = Data::from(vec![tensor(&fx["y1"]), tensor(&fx["y2"])]);
    let logs = model
        .evaluate(
            ferrokeras::trainer::Inputs::xy(x, y),
            EvaluateOptions::new()
                .batch_size(4)
                .sample_weight(tensor(&fx["sw"]))
                .verbose(0),
        )
        .unwrap();
    let want = fx["logs"].as_object().unwrap();
    let mut keys: Vec<&str> = logs.keys().collect();
    keys.sort_unstable();
    let mut want_keys: Vec<&str> = want.keys().map(String::as_str).collect();
    want_keys.sort_unstable();
    assert_eq!(keys, want_keys);
    for (k, v) in want {
        close(k, logs.get(k).unwrap(), v.as_f64().unwrap(), 1e-5);
    }
}

/// `steps_per_epoch` beyond what is left of a pass: the epoch in which the data runs out ends
/// there, and the next one starts a new pass (Keras's steps per epoch, counted by a callback).
#[test]
fn steps_per_epoch_when_the_data_runs_out() {
    use std::sync::{Arc, Mutex};
    let fx = &fixtures()["steps_per_epoch_runs_out"];
    let n = fx["samples"].as_u64().unwrap() as usize;
    let u = |k: &str| fx[k].as_u64().unwrap() as usize;
    let x = ferrokeras::random::uniform(&[n, 2], -1.0, 1.0, &Device::Cpu).unwrap();
    let y = ferrokeras::random::uniform(&[n, 1], -1.0, 1.0, &Device::Cpu).unwrap();
    let mut model = ferrokeras::Sequential::new()
        .input(&[2])
        .add(Dense::new(1))
        .compile(Compile::new().optimizer("sgd").loss("mse"))
        .unwrap();
    let steps = Arc::new(Mutex::new(Vec::<u64>::new()));
    let (begin, end) = (steps.clone(), steps.clone());
    model
        .fit(
            (x, y),
            ferrokeras::FitOptions::new()
                .batch_size(u("batch_size"))
                .epochs(u("epochs"))
                .steps_per_epoch(u("steps_per_epoch"))
                .shuffle(false)
                .verbose(0)
                .callback(
                    ferrokeras::callbacks::LambdaCallback::new()
                        .on_epoch_begin(move |_, _| {
                            begin.lock().unwrap().push(0);
                            Ok(())
                        })
                        .on_batch_end(move |_, _| {
                            *end.lock().unwrap().last_mut().unwrap() += 1;
                            Ok(())
                        }),
                ),
        )
        .unwrap();
    let want: Vec<u64> = fx["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(*steps.lock().unwrap(), want);
}

/// `weight_decay` on SGD (with momentum), RMSprop and Adam: Keras's decoupled decay before each
/// update, step by step.
#[test]
fn weight_decay_on_every_optimizer() {
    use ferrokeras::Variable;
    use ferrokeras::optimizers::{Adam, Optimizer, RmsProp, Sgd};
    let fx = &fixtures()["weight_decay"];
    let grads: Vec<Tensor> = fx["grads"].as_array().unwrap().iter().map(tensor).collect();
    let optimizers: Vec<(&str, Box<dyn Optimizer>)> = vec![
        (
            "sgd",
            Box::new(Sgd::new(0.1).momentum(0.9).weight_decay(0.05)),
        ),
        ("rmsprop", Box::new(RmsProp::new(0.01).weight_decay(0.05))),
        ("adam", Box::new(Adam::new(0.01).weight_decay(0.05))),
    ];
    for (name, mut opt) in optimizers {
        let w = Variable::new("w", &tensor(&fx["w0"]), true).unwrap();
        for (step, (g, want)) in grads.iter().zip(fx[name].as_array().unwrap()).enumerate() {
            opt.apply(std::slice::from_ref(g), std::slice::from_ref(&w))
                .unwrap();
            let got = w.value().to_vec1::<f32>().unwrap();
            let want = tensor(want).to_vec1::<f32>().unwrap();
            for (a, b) in got.iter().zip(&want) {
                close(&format!("{name} step {step}"), *a as f64, *b as f64, 1e-5);
            }
        }
    }
}

/// `get_weights` goes layer by layer, each layer's trainable weights then its non-trainable ones
/// (Keras's `model.weights`), so lists pass between the two.
#[test]
fn get_weights_goes_layer_by_layer() {
    use ferrokeras::layers::BatchNormalization;
    let fx = &fixtures()["weights_order"];
    let model = ferrokeras::Sequential::new()
        .input(&[3])
        .add(Dense::new(4))
        .add(BatchNormalization::new())
        .add(Dense::new(2));
    let shapes: Vec<Vec<usize>> = model
        .get_weights()
        .iter()
        .map(|w| w.dims().to_vec())
        .collect();
    let want: Vec<Vec<usize>> = fx["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect()
        })
        .collect();
    assert_eq!(shapes, want);
    let names: Vec<String> = model
        .variables()
        .iter()
        .map(|v| v.name().rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "kernel",
            "bias",
            "gamma",
            "beta",
            "moving_mean",
            "moving_variance",
            "kernel",
            "bias"
        ]
    );
}

/// A functional model lists its layers as Keras does, by depth from the outputs (deeper first,
/// ties in the order a walk from the outputs meets them): `layers`, the weights (`get_weights`
/// order) and the `get_config` layer list, for a short and a deep branch, two inputs at
/// different depths, and a layer shared at two depths.
#[test]
fn functional_layers_are_listed_in_keras_order() {
    use ferrokeras::layers::{Add, Concatenate};
    use ferrokeras::model::SharedLayer;
    let fx = &fixtures()["layer_order"];
    let dense = |units: usize, name: &str| Dense::new(units).named(name);
    let mut models: Vec<(&str, Functional)> = Vec::new();

    let x = Input::named(&[4], "x");
    let short = dense(2, "short").apply(&x).unwrap();
    let deep = dense(5, "deep_2")
        .apply(&dense(3, "deep_1").apply(&x).unwrap())
        .unwrap();
    let cat = Concatenate::new()
        .named("cat")
        .apply_many(&[short, deep])
        .unwrap();
    let y = dense(1, "out").apply(&cat).unwrap();
    models.push(("branches", Functional::new(&[x], &[y]).unwrap()));

    let a = Input::named(&[4], "a");
    let b = Input::named(&[6], "b");
    let h = dense(7, "h2")
        .apply(&dense(3, "h1").apply(&a).unwrap())
        .unwrap();
    let cat = Concatenate::new()
        .named("cat")
        .apply_many(&[b.clone(), h])
        .unwrap();
    let y = dense(1, "out").apply(&cat).unwrap();
    models.push(("two_inputs", Functional::new(&[a, b], &[y]).unwrap()));

    let x = Input::named(&[3], "x");
    let shared = SharedLayer::new(dense(3, "shared"));
    let h = shared
        .apply(&dense(3, "mid").apply(&shared.apply(&x).unwrap()).unwrap())
        .unwrap();
    let side = dense(3, "side").apply(&x).unwrap();
    let sum = Add::new().named("add").apply_many(&[side, h]).unwrap();
    let y = dense(2, "out").apply(&sum).unwrap();
    models.push(("shared", Functional::new(&[x], &[y]).unwrap()));

    for (name, model) in models {
        let want = &fx[name];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        let config = model.get_config().unwrap();
        let listed: Vec<String> = config["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            listed,
            strings(&want["config_layers"]),
            "{name}: get_config"
        );
        let layers: Vec<String> = model
            .layers()
            .iter()
            .map(|l| l.lock().name().to_string())
            .collect();
        let mut keras_layers = strings(&want["layers"]);
        keras_layers.retain(|l| !["x", "a", "b"].contains(&l.as_str()));
        assert_eq!(layers, keras_layers, "{name}: layers");
        let shapes: Vec<Vec<usize>> = model
            .variables()
            .iter()
            .map(|v| v.value().dims().to_vec())
            .collect();
        let keras_shapes: Vec<Vec<usize>> = want["shapes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect()
            })
            .collect();
        assert_eq!(shapes, keras_shapes, "{name}: weights");
        // The summary lists the inputs where Keras does.
        let text = Model::summary(&model);
        let positions: Vec<usize> = strings(&want["layers"])
            .iter()
            .map(|l| {
                text.find(&format!("{l} ("))
                    .unwrap_or_else(|| panic!("{name}: {l} missing"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{name}: summary order\n{text}"
        );
    }
}

/// Keras's other losses, by name: the unweighted and sample-weighted values, the gradient with
/// respect to `y_pred`, and the metric of the same function after two updates (the second
/// weighted), against Keras.
#[test]
fn more_losses_and_their_metrics_match_keras() {
    use ferrokeras::{GradientTape, Variable};
    let fx = &fixtures()["more_losses"];
    let cases = fx.as_object().unwrap();
    assert_eq!(cases.len(), 9);
    for (name, case) in cases {
        let loss = ferrokeras::losses::get(name).unwrap();
        assert_eq!(loss.name(), case["loss_name"].as_str().unwrap());
        let (t, p, sw) = (
            tensor(&case["y_true"]),
            tensor(&case["y_pred"]),
            tensor(&case["sample_weight"]),
        );
        let tol = 2e-5;
        close(
            name,
            scalar(&loss.compute(&t, &p, None).unwrap()),
            case["loss"].as_f64().unwrap(),
            tol,
        );
        let v = Variable::new("p", &p, true).unwrap();
        let weighted = loss.compute(&t, v.as_tensor(), Some(&sw)).unwrap();
        close(
            name,
            scalar(&weighted),
            case["weighted_loss"].as_f64().unwrap(),
            tol,
        );
        let g = GradientTape::gradient(&weighted, std::slice::from_ref(&v)).unwrap();
        let got = g[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = tensor(&case["grad"])
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            close(&format!("{name} gradient"), *a as f64, *b as f64, 1e-4);
        }
        let metric_name = case["metric_name"].as_str().unwrap();
        let mut metric = ferrokeras::metrics::get(metric_name).unwrap();
        assert_eq!(metric.name(), metric_name);
        metric.update_state(&t, &p, None).unwrap();
        let (t2, p2) = (
            t.narrow(0, 0, 2).unwrap(),
            (p.narrow(0, 0, 2).unwrap() * 0.9).unwrap(),
        );
        metric
            .update_state(&t2, &p2, Some(&sw.narrow(0, 0, 2).unwrap()))
            .unwrap();
        close(
            &format!("{name} metric"),
            metric.result(),
            case["metric"].as_f64().unwrap(),
            tol,
        );
    }
}

/// `Precision` and `Recall` at two thresholds, after each of two sample-weighted updates (a
/// (4, 1) batch, then a (2, 3) one: the weight of a sample weighs each of its values).
#[test]
fn precision_and_recall_match_keras() {
    use ferrokeras::metrics::{Precision, Recall};
    let fx = &fixtures()["confusion_metrics"];
    let batches: Vec<(Tensor, Tensor, Tensor)> = fx["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (tensor(&b[0]), tensor(&b[1]), tensor(&b[2])))
        .collect();
    for th in [0.5f32, 0.3] {
        let metrics: [(&str, Box<dyn Metric>); 2] = [
            (
                "Precision",
                Box::new(Precision::new().threshold(th).unwrap()),
            ),
            ("Recall", Box::new(Recall::new().threshold(th).unwrap())),
        ];
        for (class, mut m) in metrics {
            let want = &fx[format!("{class}@{th}")];
            for (i, (t, p, w)) in batches.iter().enumerate() {
                m.update_state(t, p, Some(w)).unwrap();
                close(
                    &format!("{class}@{th} after {}", i + 1),
                    m.result(),
                    want[i].as_f64().unwrap(),
                    1e-6,
                );
            }
        }
    }
    assert!(Precision::new().threshold(1.5).is_err());
}

/// `AUC` (ROC, interpolated) with 200 and 10 thresholds after each of two weighted updates of
/// 64 random scores, against Keras.
#[test]
fn auc_matches_keras() {
    use ferrokeras::metrics::AUC;
    let fx = &fixtures()["confusion_metrics"];
    let b = &fx["auc_batches"];
    let (t, p, w) = (tensor(&b[0]), tensor(&b[1]), tensor(&b[2]));
    for n in [200usize, 10] {
        let mut m = AUC::with_thresholds(n).unwrap();
        let want = &fx[format!("AUC@{n}")];
        for (i, (start, len)) in [(0, 40), (40, 24)].into_iter().enumerate() {
            m.update_state(
                &t.narrow(0, start, len).unwrap(),
                &p.narrow(0, start, len).unwrap(),
                Some(&w.narrow(0, start, len).unwrap()),
            )
            .unwrap();
            close(
                &format!("AUC@{n} after {}", i + 1),
                m.result(),
                want[i].as_f64().unwrap(),
                1e-5,
            );
        }
    }
    assert_eq!(ferrokeras::metrics::get("auc").unwrap().name(), "auc");
    assert!(AUC::with_thresholds(1).is_err());
}

/// `AUC` counts as Keras does where predictions leave `[0, 1]` (clipped: -0.5 is above the
/// first threshold, 1.5 not above the last) or sit on a threshold (1/3 is not above 1/3): the
/// four counts at every threshold, and the area.
#[test]
fn auc_counts_at_the_edges_match_keras() {
    use ferrokeras::metrics::AUC;
    let fx = &fixtures()["confusion_metrics"];
    let b = &fx["auc_edge_batch"];
    let (t, p, w) = (tensor(&b[0]), tensor(&b[1]), tensor(&b[2]));
    for n in [3usize, 4] {
        let mut m = AUC::with_thresholds(n).unwrap();
        m.update_state(&t, &p, Some(&w)).unwrap();
        let want = &fx[format!("AUC_edge_counts@{n}")];
        let state = m.state();
        for (kind, name) in ["tp", "fp", "tn", "fn"].iter().enumerate() {
            let got: Vec<f64> = (0..n).map(|i| state[4 * i + kind]).collect();
            let want: Vec<f64> = want[kind]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(got, want, "AUC@{n} {name}");
        }
        close(
            &format!("AUC_edge@{n}"),
            m.result(),
            fx[format!("AUC_edge@{n}")].as_f64().unwrap(),
            1e-6,
        );
    }
}

/// The cross-entropy metrics (of probabilities), and the sparse top-2 accuracy, after an
/// unweighted and a weighted update.
#[test]
fn crossentropy_metrics_match_keras() {
    let fx = &fixtures()["confusion_metrics"];
    let b = &fx["crossentropy_batches"];
    let (probs, ids, one_hot, binary, sw) = (
        tensor(&b[0]),
        tensor(&b[1]),
        tensor(&b[2]),
        tensor(&b[3]),
        tensor(&b[4]),
    );
    for (class, t) in [
        ("BinaryCrossentropy", binary),
        ("CategoricalCrossentropy", one_hot),
        ("SparseCategoricalCrossentropy", ids.clone()),
    ] {
        let want = &fx[class];
        let mut m = ferrokeras::metrics::get(class).unwrap();
        assert_eq!(m.name(), want["name"].as_str().unwrap());
        m.update_state(
            &t.narrow(0, 0, 4).unwrap(),
            &probs.narrow(0, 0, 4).unwrap(),
            None,
        )
        .unwrap();
        m.update_state(
            &t.narrow(0, 4, 2).unwrap(),
            &probs.narrow(0, 4, 2).unwrap(),
            Some(&sw.narrow(0, 4, 2).unwrap()),
        )
        .unwrap();
        close(class, m.result(), want["result"].as_f64().unwrap(), 1e-5);
    }
    let mut top2 = ferrokeras::metrics::SparseTopKCategoricalAccuracy::new().k(2);
    top2.update_state(
        &ids.narrow(0, 0, 4).unwrap(),
        &probs.narrow(0, 0, 4).unwrap(),
        None,
    )
    .unwrap();
    top2.update_state(
        &ids.narrow(0, 4, 2).unwrap(),
        &probs.narrow(0, 4, 2).unwrap(),
        Some(&sw.narrow(0, 4, 2).unwrap()),
    )
    .unwrap();
    let want = fx["SparseTopKCategoricalAccuracy@2"].as_f64().unwrap();
    close("SparseTopKCategoricalAccuracy", top2.result(), want, 1e-6);
}
