//! Every built-in model in every execution mode, save/load round trips, and strict
//! loading errors that name every offending tensor.

use std::collections::BTreeMap;

use approx_models::{build, load, save, HwMap, LoadError, ModelKind};
use approx_train::calibration::Calibration;
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use approx_train::optim::{Optimizer, OptimizerKind};
use approx_train::trainer;
use candle_core::{DType, Device, Tensor};

fn input(shape: (usize, usize, usize), n: usize) -> Tensor {
    let (c, h, w) = shape;
    let v: Vec<f32> = (0..n * c * h * w)
        .map(|i| ((i * 37 % 101) as f32) / 100.0)
        .collect();
    Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn every_model_runs_forward_and_backward_in_every_mode_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ModelKind::ALL {
        for (shape, hw) in [
            ((1, 28, 28), "sc:len=16,acc=or2"),
            ((3, 32, 32), "mult:design=drum4"),
        ] {
            if kind.check_input(shape).is_err() {
                continue;
            }
            let hw = kind.paper_map(hw.parse().unwrap());
            let net = build(kind, shape, 10, &hw, ExecMode::Float, 3).unwrap();
            let x = input(shape, 2);
            for mode in ExecMode::ALL {
                net.set_mode(mode);
                // Evaluation computes only values: the same bits.
                assert_eq!(
                    flat(&net.predict(&x).unwrap()),
                    flat(&net.forward(&x, false).unwrap()),
                    "{kind} {mode}"
                );
                let y = net.forward(&x, true).unwrap();
                assert_eq!(y.dims(), &[2, 10], "{kind} {mode}");
                let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                for l in net.hw_layers() {
                    assert!(
                        grads.get(l.weight()).is_some(),
                        "{kind} {mode}: no gradient for {}",
                        l.name()
                    );
                }
            }
            // A real calibration of the first layer (SC and mult: with a fixed
            // pattern), then other polynomials, all of which must round-trip.
            net.set_mode(ExecMode::Inject);
            net.hw_layers()[0].request_calibration();
            net.forward(&x, true).unwrap();
            let pattern = net.hw_layers()[0].fixed_pattern().expect("a fixed pattern");
            net.hw_layers()[0].set_calibration(Some(Calibration {
                bias: [0.01, 0.0, 0.0, 0.0, 0.0, 0.0],
                std: [0.02; 6],
                ..Calibration::default()
            }));
            let path = dir.path().join(format!("{kind}.safetensors"));
            save(&net, &path, &hw).unwrap();
            let back = load(kind, &path, shape, 10, &hw, ExecMode::Accurate, false).unwrap();
            net.set_mode(ExecMode::Accurate);
            assert_eq!(
                flat(&net.forward(&x, false).unwrap()),
                flat(&back.forward(&x, false).unwrap()),
                "{kind}"
            );
            assert_eq!(
                back.hw_layers()[0].calibration(),
                net.hw_layers()[0].calibration()
            );
            // The file's tensors are the parameters alone (PyTorch names).
            let bytes = std::fs::read(&path).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(file.names().len(), net.named_vars().len(), "{kind}");
            let loaded = back.hw_layers()[0].fixed_pattern().expect("pattern loaded");
            assert_eq!(loaded.dims(), pattern.dims(), "{kind}");
            assert_eq!(flat(&loaded), flat(&pattern), "{kind}");
            assert!(back.hw_layers()[1..]
                .iter()
                .all(|l| l.fixed_pattern().is_none()));
        }
    }
}

fn write(path: &std::path::Path, tensors: &[(&str, Tensor)]) {
    let map: std::collections::HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn loading_errors_name_every_offending_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let shape = (1, 28, 28);
    let hw = HwMap::All(approx_hw::HwSpec::Exact);
    let net = build(ModelKind::Mlp, shape, 10, &hw, ExecMode::Float, 1).unwrap();
    let good: BTreeMap<String, Tensor> = net
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let mut tensors: Vec<(&str, Tensor)> = good
        .iter()
        .filter(|(n, _)| *n != "fc2.bias")
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    for (name, t) in tensors.iter_mut() {
        if *name == "fc1.bias" {
            *t = Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap();
        }
        if *name == "fc3.bias" {
            *t = Tensor::zeros(10, DType::U32, &Device::Cpu).unwrap();
        }
    }
    tensors.push((
        "extra.weight",
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    ));
    let path = dir.path().join("bad.safetensors");
    write(&path, &tensors);
    let err = load(
        ModelKind::Mlp,
        &path,
        shape,
        10,
        &hw,
        ExecMode::Float,
        false,
    )
    .err()
    .unwrap();
    let text = err.to_string();
    for needle in [
        "missing tensor `fc2.bias`",
        "tensor `fc1.bias` has shape [7], expected [256]",
        "tensor `fc3.bias` has dtype U32",
        "unexpected tensor `extra.weight`",
        "bad.safetensors",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    assert!(matches!(err, LoadError::Mismatch { ref problems, .. } if problems.len() == 4));
    // --allow-missing accepts the missing tensor but not the others.
    let err = load(ModelKind::Mlp, &path, shape, 10, &hw, ExecMode::Float, true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        !err.contains("fc2.bias") && err.contains("extra.weight"),
        "{err}"
    );

    // f16 and bf16 convert on load, to the values the half-precision file holds.
    let path16 = dir.path().join("half.safetensors");
    for dtype in [DType::BF16, DType::F16] {
        let half: Vec<(&str, Tensor)> = good
            .iter()
            .map(|(n, t)| (n.as_str(), t.to_dtype(dtype).unwrap()))
            .collect();
        write(&path16, &half);
        let net = load(
            ModelKind::Mlp,
            &path16,
            shape,
            10,
            &hw,
            ExecMode::Float,
            false,
        )
        .unwrap();
        let loaded: BTreeMap<String, Tensor> = net
            .named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        for (name, t) in &half {
            assert_eq!(
                flat(&loaded[*name]),
                flat(&t.to_dtype(DType::F32).unwrap()),
                "{dtype:?} {name}"
            );
        }
    }

    // Truncated and non-safetensors files.
    let bytes = std::fs::read(&path16).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let err = load(ModelKind::Mlp, &cut, shape, 10, &hw, ExecMode::Float, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );
    let junk = dir.path().join("junk.txt");
    std::fs::write(&junk, "hello").unwrap();
    let err = load(
        ModelKind::Mlp,
        &junk,
        shape,
        10,
        &hw,
        ExecMode::Float,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("junk.txt"), "{err}");
    let err = load(
        ModelKind::Mlp,
        &dir.path().join("nope"),
        shape,
        10,
        &hw,
        ExecMode::Float,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("nope"), "{err}");
}

/// Gradients of every parameter, and every named tensor after the step (batch-norm
/// running statistics included), of one training forward and backward.
fn step_state(net: &approx_models::Sequential, x: &Tensor) -> Vec<(String, Vec<f32>)> {
    let y = net.forward(x, true).unwrap();
    let mut grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    net.merge_recomputed_grads(&mut grads).unwrap();
    let mut out = Vec::new();
    for (name, var) in net.named_vars() {
        if let Some(g) = grads.get(&var) {
            out.push((format!("grad {name}"), flat(g)));
        }
        out.push((name, flat(var.as_tensor())));
    }
    out
}

#[test]
fn checkpointed_segments_give_the_plain_gradients_and_statistics() {
    let shape = (1, 28, 28);
    let x = input(shape, 3);
    for (hw, mode) in [
        ("sc:len=16,acc=or2", ExecMode::Accurate),
        ("sc:len=16,acc=or2", ExecMode::Inject),
        ("sc:len=16,acc=or2", ExecMode::ApproxFn),
        ("analog", ExecMode::ApproxFn),
        ("analog", ExecMode::Accurate),
        ("mult:design=drum4", ExecMode::Accurate),
        ("fxp", ExecMode::Accurate),
        ("fxp", ExecMode::Inject),
        ("exact", ExecMode::Float),
    ] {
        let hw = HwMap::All(hw.parse().unwrap());
        let plain = build(ModelKind::TinyConv, shape, 10, &hw, mode, 5).unwrap();
        for l in plain.hw_layers() {
            l.request_calibration();
        }
        let want = step_state(&plain, &x);
        for segments in [2, 3, 4] {
            let mut net = build(ModelKind::TinyConv, shape, 10, &hw, mode, 5).unwrap();
            net.set_checkpoint_segments(segments);
            assert_eq!(net.checkpoint_segments().len(), segments, "{hw} {segments}");
            for l in net.hw_layers() {
                l.request_calibration();
            }
            let got = step_state(&net, &x);
            assert_eq!(got.len(), want.len());
            for ((n1, v1), (n2, v2)) in got.iter().zip(&want) {
                assert_eq!(n1, n2);
                assert_eq!(v1, v2, "{hw} {mode} segments {segments}: {n1}");
            }
        }
    }
}

/// Two optimizer steps of a checkpointed TinyConv, each block's parameters updated as
/// soon as its backward ends (unclipped), give the weights of the plain model's steps
/// updated after the backward, bit for bit; and a clipped step (which updates after
/// the backward) still finds every block's gradients.
#[test]
fn updating_blocks_during_the_backward_gives_the_plain_steps() {
    let shape = (1, 28, 28);
    let x = input(shape, 4);
    let labels = Tensor::from_vec(vec![3u32, 1, 4, 1], 4, &Device::Cpu).unwrap();
    let hw = HwMap::All("sc:len=16,acc=or2".parse().unwrap());
    let run = |segments: usize, clip: Option<f64>| {
        let mut net = build(ModelKind::TinyConv, shape, 10, &hw, ExecMode::Accurate, 5).unwrap();
        net.set_checkpoint_segments(segments);
        assert_eq!(net.checkpointed_blocks().is_some(), segments > 0);
        let params = net.named_vars().into_iter().map(|(_, v)| v).collect();
        let mut opt =
            Optimizer::new(OptimizerKind::Adam { weight_decay: 1e-4 }, params, 1e-2).unwrap();
        for _ in 0..2 {
            trainer::train_step(&net, &mut opt, &x, &labels, 0.1, clip).unwrap();
        }
        net.named_vars()
            .into_iter()
            .map(|(name, v)| (name, flat(v.as_tensor())))
            .collect::<Vec<_>>()
    };
    let plain = run(0, None);
    for (segments, clip) in [(3, None), (4, None), (3, Some(1e30))] {
        let got = run(segments, clip);
        for ((n1, v1), (n2, v2)) in got.iter().zip(&plain) {
            assert_eq!(n1, n2);
            assert_eq!(v1, v2, "segments {segments}, clip {clip:?}: {n1}");
        }
    }
}

/// torchvision's `resnet18().state_dict()` keys and shapes, in its order (written out
/// from torchvision's module layout, independently of this crate's builder).
fn torchvision_resnet18_keys() -> Vec<(String, Vec<usize>)> {
    let mut keys = vec![("conv1.weight".to_string(), vec![64, 3, 7, 7])];
    let bn = |keys: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for k in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{p}.{k}"), vec![c]));
        }
        keys.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    bn(&mut keys, "bn1", 64);
    let mut inp = 64;
    for (layer, out) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        for block in 0..2 {
            let p = format!("layer{layer}.{block}");
            let first_in = if block == 0 { inp } else { out };
            keys.push((format!("{p}.conv1.weight"), vec![out, first_in, 3, 3]));
            bn(&mut keys, &format!("{p}.bn1"), out);
            keys.push((format!("{p}.conv2.weight"), vec![out, out, 3, 3]));
            bn(&mut keys, &format!("{p}.bn2"), out);
            if block == 0 && layer > 1 {
                keys.push((format!("{p}.downsample.0.weight"), vec![out, inp, 1, 1]));
                bn(&mut keys, &format!("{p}.downsample.1"), out);
            }
        }
        inp = out;
    }
    keys.push(("fc.weight".to_string(), vec![1000, 512]));
    keys.push(("fc.bias".to_string(), vec![1000]));
    keys
}

#[test]
fn a_torchvision_resnet18_checkpoint_loads_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let keys = torchvision_resnet18_keys();
    assert_eq!(
        keys.len(),
        122,
        "torchvision's resnet18 has 122 state_dict entries"
    );
    let tensors: Vec<(&str, Tensor)> = keys
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let t = if name.ends_with("num_batches_tracked") {
                Tensor::new(7i64, &Device::Cpu).unwrap()
            } else if name.ends_with("running_var") {
                Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu).unwrap()
            } else {
                (Tensor::rand(-1f32, 1f32, shape.as_slice(), &Device::Cpu).unwrap() * 0.05)
                    .unwrap()
                    .affine(1.0, i as f64 * 1e-3)
                    .unwrap()
            };
            (name.as_str(), t)
        })
        .collect();
    let path = dir.path().join("resnet18.safetensors");
    write(&path, &tensors);
    let hw = ModelKind::ResNet18.paper_map("sc:len=16,acc=or2".parse().unwrap());
    let net = load(
        ModelKind::ResNet18,
        &path,
        (3, 64, 64),
        1000,
        &hw,
        ExecMode::Float,
        false,
    )
    .unwrap();
    let vars: BTreeMap<String, Tensor> = net
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    for (name, t) in &tensors {
        if name.ends_with("num_batches_tracked") {
            assert!(!vars.contains_key(*name));
            continue;
        }
        assert_eq!(flat(&vars[*name]), flat(t), "{name}");
    }
    assert_eq!(vars.len(), 122 - 20, "every tensor but num_batches_tracked");
    // The paper's map: the stem conv and fc exact, the 19 other convs on SC.
    let layers = net.hw_layers();
    assert_eq!(layers.len(), 21);
    for l in &layers {
        let exact = l.hw() == &approx_hw::HwSpec::Exact;
        assert_eq!(
            exact,
            l.name() == "conv1" || l.name() == "fc",
            "{}",
            l.name()
        );
    }
    let y = net.forward(&input((3, 64, 64), 1), false).unwrap();
    assert_eq!(y.dims(), &[1, 1000]);
    // A missing block is named.
    let cut: Vec<(&str, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("layer4.1.bn2"))
        .cloned()
        .collect();
    write(&path, &cut);
    let err = load(
        ModelKind::ResNet18,
        &path,
        (3, 64, 64),
        1000,
        &hw,
        ExecMode::Float,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("missing tensor `layer4.1.bn2.running_mean`"),
        "{err}"
    );
}

#[test]
fn vit_attention_matmuls_are_exact_unless_a_map_names_them() {
    let shape = (1, 28, 28);
    let x = input(shape, 2);
    let all = HwMap::All("mult:design=drum4".parse().unwrap());
    let net = build(ModelKind::Vit, shape, 10, &all, ExecMode::Accurate, 1).unwrap();
    assert_eq!(net.hw_layers().len(), 1 + 4 * 4 + 1);
    let mapped: HwMap =
        "blocks.*=mult:design=drum4,patch_embed.*=mult:design=drum4,head=mult:design=drum4"
            .parse()
            .unwrap();
    let with_matmuls = build(ModelKind::Vit, shape, 10, &mapped, ExecMode::Accurate, 1).unwrap();
    // Same layers on the same hardware; only the attention matmuls differ.
    for (a, b) in net.hw_layers().iter().zip(with_matmuls.hw_layers()) {
        assert_eq!(a.hw(), b.hw(), "{}", a.name());
    }
    let y_exact_attention = flat(&net.forward(&x, false).unwrap());
    let y = with_matmuls.forward(&x, true).unwrap();
    assert_ne!(
        flat(&y),
        y_exact_attention,
        "mapped matmuls change the output"
    );
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for l in with_matmuls.hw_layers() {
        assert!(grads.get(l.weight()).is_some(), "{}", l.name());
    }
    // In float mode both are the float model.
    net.set_mode(ExecMode::Float);
    with_matmuls.set_mode(ExecMode::Float);
    assert_eq!(
        flat(&net.forward(&x, false).unwrap()),
        flat(&with_matmuls.forward(&x, false).unwrap())
    );
}

/// A fixed pattern whose values do not fill its shape is refused, naming the file,
/// the metadata key and the layer.
#[test]
fn a_malformed_fixed_pattern_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let shape = (1, 28, 28);
    let hw = HwMap::All("sc:len=16".parse().unwrap());
    let net = build(ModelKind::Mlp, shape, 10, &hw, ExecMode::Float, 1).unwrap();
    let vars = net.named_vars();
    let tensors: Vec<(&str, &Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor()))
        .collect();
    let path = dir.path().join("pattern.safetensors");
    let meta = std::collections::HashMap::from([(
        "approx.fixed_pattern".to_string(),
        r#"{"fc1": {"shape": [256], "values": [0.5, 0.25]}}"#.to_string(),
    )]);
    approx_train::io::write_safetensors(&path, &tensors, meta).unwrap();
    let err = load(
        ModelKind::Mlp,
        &path,
        shape,
        10,
        &hw,
        ExecMode::Float,
        false,
    )
    .err()
    .unwrap()
    .to_string();
    for needle in [
        "pattern.safetensors",
        "approx.fixed_pattern",
        "layer `fc1`",
        "2 values for shape [256]",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
}
