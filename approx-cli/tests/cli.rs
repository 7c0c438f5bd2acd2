//! End-to-end tests of the `approx` binary: success paths cross-checked against the
//! library, and every error path with its exit code, message and (absent) output file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use approx_hw::{sc, Conv2dParams, HwSpec};
use candle_core::{Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn approx(args: &[&str]) -> Output {
    approx_with_env(args, &[])
}

fn approx_with_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_approx"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run approx")
}

/// Puts `file` into a Hugging Face hub cache under `cache` as `org/net` at `main`,
/// the layout `huggingface-cli download` leaves.
fn put_in_hub_cache(cache: &Path, file: &Path, name: &str) {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join("models--org--net");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::copy(file, snapshot.join(name)).unwrap();
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sc-conv.safetensors")
}

/// Writes a safetensors file of raw little-endian tensors `(name, dtype, shape, bytes)`.
fn write_file(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(n: usize, value: f32) -> Vec<u8> {
    (0..n).flat_map(|_| value.to_le_bytes()).collect()
}

fn read_output(path: &Path) -> (Vec<usize>, Vec<f32>, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("output").unwrap();
    assert_eq!(t.dtype(), Dtype::F32);
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (
        t.shape().to_vec(),
        values,
        meta.metadata().clone().unwrap_or_default(),
    )
}

fn example_tensors() -> (Tensor, Tensor) {
    let bytes = std::fs::read(example()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let load = |name: &str| {
        let v = st.tensor(name).unwrap();
        let data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Tensor::from_vec(data, v.shape(), &Device::Cpu).unwrap()
    };
    (load("input"), load("weight"))
}

#[test]
fn simulate_sc_conv_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let spec = "sc:len=32,acc=or2";
    let o = approx(&[
        "simulate",
        "--hw",
        spec,
        "--op",
        "conv2d",
        "--padding",
        "2",
        "--stride",
        "2",
        "--input",
        example().to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, values, meta) = read_output(&out);
    assert_eq!(shape, [2, 16, 6, 6]);
    assert_eq!(meta["approx.hw"], "sc:len=32,acc=or2,gen=lfsr-xnor");
    assert_eq!(meta["approx.op"], "conv2d");
    let (input, weight) = example_tensors();
    let HwSpec::Sc(sc) = spec.parse().unwrap() else {
        unreachable!()
    };
    let expect: Vec<f32> = sc::conv2d(&input, &weight, &sc, Conv2dParams::new(2, 2))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(values, expect);
    assert!(values.iter().any(|v| *v != 0.0), "all-zero output");
}

#[test]
fn simulate_exact_and_linear() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exact.safetensors");
    let o = approx(&[
        "simulate",
        "--hw",
        "exact",
        "--op",
        "conv2d",
        "--padding",
        "2",
        "--input",
        example().to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (input, weight) = example_tensors();
    let expect: Vec<f32> = input
        .conv2d(&weight, 2, 1, 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(read_output(&out).1, expect);

    let lin = dir.path().join("linear.safetensors");
    let input: Vec<u8> = (0..3 * 40)
        .flat_map(|i| ((i % 7) as f32 / 16.0).to_le_bytes())
        .collect();
    let weight: Vec<u8> = (0..5 * 40)
        .flat_map(|i| ((i % 9) as f32 / 16.0 - 0.25).to_le_bytes())
        .collect();
    write_file(
        &lin,
        &[
            ("input", Dtype::F32, vec![3, 40], input),
            ("weight", Dtype::F32, vec![5, 40], weight),
        ],
    );
    let out = dir.path().join("lin-out.safetensors");
    let o = approx(&[
        "simulate",
        "--hw",
        "sc:len=16,acc=or4",
        "--op",
        "linear",
        "--input",
        lin.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (shape, values, _) = read_output(&out);
    assert_eq!(shape, [3, 5]);
    assert!(
        values.iter().all(|v| (v * 16.0).fract() == 0.0),
        "SC outputs are multiples of 1/B"
    );
}

/// Runs a failing simulate and checks exit code, message and that no output appeared.
fn expect_failure(input: &Path, hw: &str, op: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let o = approx(&[
        "simulate",
        "--hw",
        hw,
        "--op",
        op,
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "output folder not empty"
    );
}

#[test]
fn simulate_bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    write_file(
        &p("missing.st"),
        &[("input", Dtype::F32, vec![1, 2, 4, 4], f32_bytes(32, 0.5))],
    );
    expect_failure(
        &p("missing.st"),
        "sc",
        "conv2d",
        "has no tensor `weight` (it has: input)",
    );

    write_file(
        &p("rank.st"),
        &[
            ("input", Dtype::F32, vec![2, 4, 4], f32_bytes(32, 0.5)),
            ("weight", Dtype::F32, vec![3, 2, 3, 3], f32_bytes(54, 0.1)),
        ],
    );
    expect_failure(
        &p("rank.st"),
        "sc",
        "conv2d",
        "rank 4 (NCHW), got shape [2, 4, 4]",
    );

    write_file(
        &p("channels.st"),
        &[
            ("input", Dtype::F32, vec![1, 2, 4, 4], f32_bytes(32, 0.5)),
            ("weight", Dtype::F32, vec![3, 5, 3, 3], f32_bytes(135, 0.1)),
        ],
    );
    expect_failure(
        &p("channels.st"),
        "sc",
        "conv2d",
        "weight has 5 input channels",
    );

    write_file(
        &p("dtype.st"),
        &[
            ("input", Dtype::F32, vec![1, 2, 4, 4], f32_bytes(32, 0.5)),
            ("weight", Dtype::F64, vec![3, 2, 3, 3], vec![0u8; 54 * 8]),
        ],
    );
    expect_failure(&p("dtype.st"), "sc", "conv2d", "tensor `weight` in");
    expect_failure(&p("dtype.st"), "sc", "conv2d", "is F64; expected F32");

    std::fs::write(p("garbage.st"), b"this is not a safetensors file at all").unwrap();
    expect_failure(
        &p("garbage.st"),
        "sc",
        "conv2d",
        "is not a valid safetensors file",
    );
    expect_failure(&p("does-not-exist.st"), "sc", "conv2d", "cannot read");
    expect_failure(
        &example(),
        "sc:acc=or99",
        "conv2d",
        "bad value `or99` for key `acc`",
    );
    expect_failure(
        &example(),
        "analog-ish",
        "conv2d",
        "unknown hardware kind `analog-ish`",
    );
    expect_failure(&example(), "sc", "linear", "rank 2");
}

#[test]
fn simulate_unwritable_output_fails_cleanly() {
    let o = approx(&[
        "simulate",
        "--hw",
        "sc",
        "--op",
        "conv2d",
        "--input",
        example().to_str().unwrap(),
        "--output",
        "/nonexistent-dir/out.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("cannot write `/nonexistent-dir/out.safetensors`"));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(approx(&["simulate", "--hw", "sc"]).status.code(), Some(2));
    assert_eq!(approx(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn hw_list_names_every_key() {
    let o = approx(&["hw", "list"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for word in [
        "exact",
        "sc",
        "len",
        "acc",
        "gen",
        "seed",
        "lfsr-xnor",
        "or16",
        "mult",
        "design",
        "lut",
        "mitchell",
        "analog",
        "out_noise",
        "tile_rows",
        "fxp",
        "acc_bits",
    ] {
        assert!(text.contains(word), "missing `{word}` in:\n{text}");
    }
}

#[test]
fn bench_kernels_json_records() {
    let o = approx(&[
        "bench",
        "kernels",
        "--json",
        "--batch",
        "2",
        "--rounds",
        "1",
        "--layer",
        "conv4",
        "--hw",
        "sc:len=8,acc=or1",
        "--hw",
        "exact",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["layer"], "conv4");
    assert_eq!(records[0]["hw"], "sc:len=8,acc=or1,gen=lfsr-xnor");
    for r in records {
        for key in ["ms", "f32_ms", "ratio"] {
            assert!(r[key].as_f64().unwrap() > 0.0, "{key} in {r}");
        }
    }
    let o = approx(&["bench", "kernels", "--layer", "conv9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown --layer `conv9`"));
}

#[test]
fn simulate_every_kind_matches_the_library() {
    let (input, weight) = example_tensors();
    for spec in [
        "mult:design=mitchell",
        "mult:design=bam2-6,bits=6,signed=false",
        "analog:seed=3",
        "fxp:bits=6",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.safetensors");
        let o = approx(&[
            "simulate",
            "--hw",
            spec,
            "--op",
            "conv2d",
            "--padding",
            "1",
            "--input",
            example().to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (shape, values, meta) = read_output(&out);
        let parsed: HwSpec = spec.parse().unwrap();
        assert_eq!(meta["approx.hw"], parsed.to_string());
        let layer = approx_hw::Layer::Conv2d(Conv2dParams::new(1, 1));
        let expect = approx_hw::forward(&parsed, layer, &input, &weight).unwrap();
        assert_eq!(shape, expect.dims());
        assert_eq!(
            values,
            expect.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{spec}"
        );
    }
}

#[test]
fn simulate_bad_lut_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let lut = dir.path().join("short.bin");
    std::fs::write(&lut, [0u8; 100]).unwrap();
    let hw = format!("mult:lut={}", lut.display());
    expect_failure(&example(), &hw, "conv2d", "short.bin");
    expect_failure(&example(), "mult:design=drum9", "conv2d", "`drum9`");
    expect_failure(&example(), "analog:out_bound=0", "conv2d", "out_bound");
}

#[test]
fn hw_inspect_reproduces_the_published_metrics() {
    let o = approx(&["hw", "inspect", "--hw", "mult:design=mitchell"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in ["MRED 3.79 %", "max rel 11.1 %", "WCE 4096"] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    let o = approx(&[
        "hw",
        "inspect",
        "--hw",
        "mult:design=kulkarni",
        "--json",
        "--samples",
        "16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let record: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let max_rel = record["metrics"]["max_rel_percent"].as_f64().unwrap();
    assert_eq!(format!("{max_rel:.1}"), "22.2");
    for spec in ["sc:len=32", "analog", "fxp", "exact"] {
        let o = approx(&[
            "hw",
            "inspect",
            "--hw",
            spec,
            "--json",
            "--samples",
            "16",
            "--bins",
            "4",
        ]);
        assert!(
            o.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let record: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let bins = record["dot_product"]["bins"].as_array().unwrap();
        assert_eq!(bins.len(), 4);
        let count: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(count, 16 * 32, "{spec}");
        assert!(record["metrics"].is_null());
    }
    let o = approx(&["hw", "inspect", "--hw", "fxp", "--bins", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bins"));
}

/// A quick fine-tune: MLP, 256 training and 128 test images of the embedded data.
fn quick_finetune(out: &Path, extra: &[&str]) -> Output {
    let mut args = quick_args(out);
    args.extend_from_slice(extra);
    approx(&args)
}

/// The arguments of [`quick_finetune`].
fn quick_args(out: &Path) -> Vec<&str> {
    vec![
        "finetune",
        "--model",
        "mlp",
        "--train-images",
        "256",
        "--test-images",
        "128",
        "--pretrain-epochs",
        "1",
        "--epochs",
        "2",
        "--schedule",
        "inject:1,accurate:1",
        "--batch",
        "32",
        "--out",
        out.to_str().unwrap(),
    ]
}

#[test]
fn finetune_writes_model_and_report_and_eval_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let json = dir.path().join("report-copy.json");
    let o = quick_finetune(&out, &["--json", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("hardware accuracy after"), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    for key in [
        "float_accuracy",
        "hw_accuracy_before",
        "hw_accuracy_after",
        "wall_seconds",
    ] {
        let v = report[key].as_f64().unwrap();
        assert!(
            v >= 0.0 && (key == "wall_seconds" || v <= 1.0),
            "{key} = {v}"
        );
    }
    assert_eq!(report["model"], "mlp");
    assert_eq!(report["hw"], "sc:len=32,acc=or2,gen=lfsr-xnor");
    assert_eq!(report["finetune"].as_array().unwrap().len(), 2);
    assert_eq!(
        std::fs::read(&json).unwrap(),
        std::fs::read(out.join("report.json")).unwrap()
    );
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 1 + 2, "{csv}");
    for (png, min_width) in [("learning-curves.png", 1000), ("error-profile.png", 400)] {
        let bytes = std::fs::read(out.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert!(
            width >= min_width && height >= 300,
            "{png}: {width}x{height}"
        );
    }
    let model = out.join("model.safetensors");
    let (_, meta) = {
        let bytes = std::fs::read(&model).unwrap();
        let (n, m) = SafeTensors::read_metadata(&bytes).unwrap();
        (n, m.metadata().clone().unwrap())
    };
    assert_eq!(meta["approx.model"], "mlp");
    assert_eq!(meta["approx.hw"], "sc:len=32,acc=or2,gen=lfsr-xnor");
    // eval on the recorded hardware reproduces the report's final accuracy.
    let o = approx(&[
        "eval",
        "--model",
        "mlp",
        "--weights",
        model.to_str().unwrap(),
        "--test-images",
        "128",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    let after = report["hw_accuracy_after"].as_f64().unwrap();
    assert!(
        line.contains(&format!("{:.2} %", 100.0 * after)),
        "{line} vs {after}"
    );
}

#[test]
fn finetune_and_eval_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--hw", "sc:len=7"], "bad --hw `sc:len=7`"),
        (
            vec!["--weights", "/nonexistent/w.safetensors"],
            "/nonexistent/w.safetensors",
        ),
        (vec!["--data", "mnist:/nonexistent"], "/nonexistent"),
    ];
    for (extra, needle) in cases {
        let o = quick_finetune(&out, &extra);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{extra:?}: expected `{needle}` in {stderr}"
        );
    }
    let o = approx(&[
        "finetune",
        "--schedule",
        "inject:0.5",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a bad --schedule is a usage error"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("sum to 0.5"));
    // Wrong model/weights pairing: MLP weights into LeNet-5.
    let mlp = dir.path().join("mlp.safetensors");
    let o = quick_finetune(&dir.path().join("a"), &["--max-steps", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = approx(&[
        "finetune",
        "--model",
        "mlp",
        "--train-images",
        "64",
        "--test-images",
        "32",
        "--pretrain-epochs",
        "1",
        "--epochs",
        "1",
        "--schedule",
        "accurate:1",
        "--out",
        dir.path().join("b").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::copy(dir.path().join("b/model.safetensors"), &mlp).unwrap();
    let o = approx(&[
        "eval",
        "--model",
        "lenet5",
        "--weights",
        mlp.to_str().unwrap(),
        "--test-images",
        "8",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("missing tensor `conv1.weight`")
            && stderr.contains("`fc1.weight` has shape [256, 784]"),
        "{stderr}"
    );
    // An output folder that cannot be created or written.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    let o = quick_finetune(&blocker.join("sub"), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot create output folder"), "{stderr}");
}

#[test]
fn checkpoint_segments_change_memory_not_results() {
    let dir = tempfile::tempdir().unwrap();
    // Clipped (the default), a checkpointed run updates after the backward; unclipped,
    // each block as soon as its backward ends.
    for clip in ["5", "off"] {
        let plain = dir.path().join(format!("plain-{clip}"));
        let segmented = dir.path().join(format!("segmented-{clip}"));
        let o = quick_finetune(&plain, &["--clip-grad", clip]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = quick_finetune(
            &segmented,
            &["--clip-grad", clip, "--checkpoint-segments", "2"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            std::fs::read(plain.join("model.safetensors")).unwrap(),
            std::fs::read(segmented.join("model.safetensors")).unwrap(),
            "--clip-grad {clip}"
        );
    }
}

#[test]
fn a_bad_clipping_norm_is_a_usage_error() {
    let o = approx(&["finetune", "--clip-grad", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("bad gradient clipping norm `0`"),
        "{stderr}"
    );
}

#[test]
fn finetune_stops_at_max_steps_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = quick_finetune(&out, &["--max-steps", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("stopped after --max-steps 5"));
    assert!(out.join("pretrain-checkpoint.safetensors").is_file());
    let o = quick_finetune(&out, &["--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn pretrain_then_finetune_from_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("float.safetensors");
    let json = dir.path().join("pretrain.json");
    let o = approx(&[
        "pretrain",
        "--model",
        "mlp",
        "--train-images",
        "256",
        "--test-images",
        "128",
        "--epochs",
        "1",
        "--batch",
        "32",
        "--out",
        weights.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let accuracy = record["float_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.3, "{record}");
    // The same weights through a hub reference resolved in the local cache.
    let cache = dir.path().join("hub");
    put_in_hub_cache(&cache, &weights, "float.safetensors");
    let out = dir.path().join("run");
    let mut args = quick_args(&out);
    args.extend(["--weights", "hf://org/net/float.safetensors"]);
    let o = approx_with_env(&args, &[("HF_HUB_CACHE", &cache)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = approx_with_env(
        &[
            "eval",
            "--model",
            "mlp",
            "--weights",
            "hf://org/net@v9/float.safetensors",
        ],
        &[("HF_HUB_CACHE", &cache)],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not in the Hugging Face cache")
            && stderr.contains("huggingface-cli download org/net float.safetensors --revision v9"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["float_accuracy"].as_f64().unwrap(),
        accuracy,
        "finetune measures the loaded model"
    );
    assert_eq!(report["pretrain_epochs"], 0);
}

#[test]
fn bench_train_compares_baseline_accelerated_and_float() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let o = approx(&[
        "bench",
        "train",
        "--model",
        "mlp",
        "--train-images",
        "128",
        "--test-images",
        "64",
        "--pretrain-epochs",
        "1",
        "--epochs",
        "2",
        "--schedule",
        "inject:1,accurate:1",
        "--batch",
        "32",
        "--out",
        dir.path().join("runs").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("speed-up"));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for run in ["baseline", "accelerated", "float"] {
        assert!(r[run]["wall_seconds"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r[run]["peak_rss_bytes"].as_u64().is_some() || r[run]["peak_rss_bytes"].is_null());
    }
    for run in ["baseline", "accelerated"] {
        let a = r[run]["hw_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{r}");
    }
    assert!(r["float"].get("hw_accuracy").is_none());
    for key in ["float_accuracy", "hw_accuracy"] {
        let a = r["start"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{r}");
    }
    assert_eq!(r["train_images"], 128);
    assert_eq!(r["test_images"], 64);
    assert!(r["baseline"]["schedule"]
        .as_str()
        .unwrap()
        .starts_with("accurate:1"));
    let speedup = r["speedup"].as_f64().unwrap();
    let ratio = r["baseline"]["wall_seconds"].as_f64().unwrap()
        / r["accelerated"]["wall_seconds"].as_f64().unwrap();
    assert!((speedup - ratio).abs() < 1e-9);
}
