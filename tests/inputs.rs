//! `fit` on what users hold: candle tensors, ndarray arrays and `.npy` files written by numpy.

use ferrokeras::prelude::*;
use ferrokeras::trainer::Inputs;

/// The same initial weights at every call, whatever other tests draw from the global generator
/// meanwhile (an initializer with a seed of its own).
fn model() -> Trainer<Sequential> {
    let init = ferrokeras::initializers::Initializer::RandomUniform {
        minval: -0.1,
        maxval: 0.1,
        seed: Some(3),
    };
    Sequential::new()
        .input(&[32])
        .add(Dense::new(1).with_kernel_initializer(init))
        .compile(Compile::new().optimizer("sgd").loss("mse").metrics(["mae"]))
        .unwrap()
}

#[test]
fn ndarray_npy_and_tensor_inputs_train_identically() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (xp, yp) = (dir.join("guide_x.npy"), dir.join("guide_y.npy"));
    let x = ferrokeras::data::read_npy(&xp).unwrap();
    let y = ferrokeras::data::read_npy(&yp).unwrap();
    let opts = || FitOptions::new().epochs(2).shuffle(false).verbose(0);

    let mut a = model();
    let ha = a.fit((x.clone(), y.clone()), opts()).unwrap();

    let mut b = model();
    let hb = b
        .fit(Inputs::from_npy(&xp, Some(&yp)).unwrap(), opts())
        .unwrap();

    let xa: Vec<Vec<f32>> = x.to_vec2().unwrap();
    let ya: Vec<Vec<f32>> = y.to_vec2().unwrap();
    let xnd = ndarray::Array2::from_shape_fn((1000, 32), |(i, j)| xa[i][j] as f64);
    let ynd = ndarray::Array2::from_shape_fn((1000, 1), |(i, j)| ya[i][j] as f64);
    let mut c = model();
    let hc = c
        .fit(Inputs::from_ndarray(&xnd, Some(&ynd)).unwrap(), opts())
        .unwrap();

    assert_eq!(ha.get("loss").len(), 2);
    for (h, name) in [(&hb, "npy"), (&hc, "ndarray")] {
        for key in ["loss", "mae"] {
            for (u, v) in ha.get(key).iter().zip(h.get(key)) {
                assert!(
                    (u - v).abs() <= 1e-6 * u.abs().max(1.0),
                    "{name} {key}: {u} vs {v}"
                );
            }
        }
    }
    let missing = Inputs::from_npy(dir.join("nope.npy"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("nope.npy"), "{missing}");
}

/// `prefetch` prepares elements on another thread; on a GPU that thread queues its work on a
/// stream of its own, and the consumer's thread on another. The elements reach the consumer
/// finished: the source (fifty additions queued by this thread just before), then fifty more
/// additions per element on the preparing thread, read at once on this thread, are exactly
/// 100 everywhere (an element handed over before its work is done reads less).
#[test]
fn prefetched_elements_are_finished_on_the_consumers_thread() {
    use candle_core::{DType, Tensor};
    use ferrokeras::data::Dataset;
    let dev = ferrokeras::runtime::default_device();
    let width = 1 << 20;
    let mut x = Tensor::zeros((6, width), DType::F32, &dev).unwrap();
    for _ in 0..50 {
        x = (x + 1.0).unwrap();
    }
    let ds = Dataset::from_tensor_slices(x)
        .unwrap()
        .map(|d| {
            d.map(&mut |t| {
                let mut t = t.clone();
                for _ in 0..50 {
                    t = (t + 1.0)?;
                }
                Ok(t)
            })
        })
        .prefetch(2);
    for round in 0..2 {
        let mut n = 0;
        for e in ds.iter() {
            let t = e.unwrap().into_tensor().unwrap();
            let v = t.to_vec1::<f32>().unwrap();
            assert_eq!(v.len(), width);
            let wrong = v.iter().filter(|&&x| x != 100.0).count();
            assert_eq!(
                wrong, 0,
                "round {round}, element {n}: {wrong} values not yet 100"
            );
            n += 1;
        }
        assert_eq!(n, 6);
    }
}

/// Dict elements are batched by key, whatever order each element lists its keys in (as
/// `tf.nest` sorts them); an element missing a key is an error.
#[test]
fn dict_elements_batch_by_key() {
    use candle_core::{Device, Tensor};
    use ferrokeras::data::{Cardinality, Dataset};
    let s = |v: f32| Data::from(Tensor::new(v, &Device::Cpu).unwrap());
    let elements = move |swap_second: bool, rename: bool| {
        let ds = Dataset::from_fn(Cardinality::Finite(2), move || {
            let a = Data::Dict(vec![("a".into(), s(1.0)), ("b".into(), s(10.0))]);
            let b = if swap_second {
                Data::Dict(vec![("b".into(), s(20.0)), ("a".into(), s(2.0))])
            } else if rename {
                Data::Dict(vec![("a".into(), s(2.0)), ("c".into(), s(20.0))])
            } else {
                Data::Dict(vec![("a".into(), s(2.0)), ("b".into(), s(20.0))])
            };
            Box::new(vec![Ok(a), Ok(b)].into_iter())
        });
        ds.batch(2, false).iter().next().unwrap()
    };
    for swap in [false, true] {
        let batch = elements(swap, false).unwrap();
        let Data::Dict(items) = batch else {
            panic!("a dict")
        };
        let get = |k: &str| {
            items
                .iter()
                .find(|(n, _)| n == k)
                .unwrap()
                .1
                .tensor()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get("a"), vec![1.0, 2.0], "swapped: {swap}");
        assert_eq!(get("b"), vec![10.0, 20.0], "swapped: {swap}");
    }
    let err = elements(false, true).unwrap_err().to_string();
    assert!(err.contains("no key \"b\""), "{err}");
}

/// `take` of a dataset of unknown length stays unknown, and repeating an empty dataset forever
/// ends at once (as `tf.data`), instead of spinning.
#[test]
fn take_of_unknown_and_endless_repeat_of_nothing() {
    use ferrokeras::data::{Cardinality, Dataset};
    let empty = Dataset::from_fn(Cardinality::Unknown, || Box::new(std::iter::empty()));
    assert_eq!(empty.clone().take(5).cardinality(), Cardinality::Unknown);
    let forever = empty.repeat(None);
    assert_eq!(forever.iter().count(), 0);
    let one = Dataset::from_fn(Cardinality::Unknown, || {
        Box::new(std::iter::once(Ok(Data::from(
            candle_core::Tensor::new(1f32, &candle_core::Device::Cpu).unwrap(),
        ))))
    });
    assert_eq!(one.clone().repeat(Some(3)).iter().count(), 3);
    assert_eq!(one.repeat(None).take(7).iter().count(), 7);
}
