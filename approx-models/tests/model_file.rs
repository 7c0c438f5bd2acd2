//! TOML model files: the example LeNet-5 file reproduces the built-in LeNet-5 bit for
//! bit, and bad or absurd files are refused with errors that name the layer, before
//! anything large is allocated.

use std::path::{Path, PathBuf};

use approx_models::{build, load, save, Architecture, HwMap, Limits, ModelFile, ModelKind};
use approx_train::mode::ExecMode;
use approx_train::model::Model;
use candle_core::{Device, Tensor};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lenet5.toml")
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn the_lenet5_file_reproduces_the_built_in_lenet5_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file: Architecture = example().to_str().unwrap().parse().unwrap();
    assert_eq!(file.name(), "lenet5-file");
    let x = Tensor::rand(0f32, 1f32, (4, 1, 28, 28), &Device::Cpu).unwrap();
    for hw in ["exact", "sc:len=32,acc=or2", "mult:design=drum4", "fxp"] {
        let map = HwMap::All(hw.parse().unwrap());
        let builtin = build(ModelKind::LeNet5, (1, 28, 28), 10, &map, ExecMode::Float, 9).unwrap();
        let weights = dir.path().join("lenet5.safetensors");
        save(&builtin, &weights, &map).unwrap();
        let from_file = load(
            &file,
            &weights,
            (1, 28, 28),
            10,
            &map,
            ExecMode::Float,
            false,
        )
        .unwrap();
        for mode in [ExecMode::Float, ExecMode::Accurate, ExecMode::ApproxFn] {
            builtin.set_mode(mode);
            from_file.set_mode(mode);
            for train in [false, true] {
                assert_eq!(
                    flat(&builtin.forward(&x, train).unwrap()),
                    flat(&from_file.forward(&x, train).unwrap()),
                    "{hw} {mode} train={train}"
                );
            }
        }
        // Fresh models from the same seed are the same too.
        let fresh = build(&file, (1, 28, 28), 10, &map, ExecMode::Float, 9).unwrap();
        assert_eq!(
            flat(&fresh.forward(&x, false).unwrap()),
            flat(
                &build(ModelKind::LeNet5, (1, 28, 28), 10, &map, ExecMode::Float, 9)
                    .unwrap()
                    .forward(&x, false)
                    .unwrap()
            )
        );
    }
}

/// A one-conv model file around `layer` (TOML of one `[[layers]]` table).
fn with_layer(layer: &str) -> String {
    format!("name = \"t\"\n[[layers]]\n{layer}\n[[layers]]\ntype = \"global-avg-pool\"\n")
}

fn check(text: &str, limits: Limits) -> Result<(), String> {
    ModelFile::parse(text, limits)?.check((1, 28, 28), 10, limits)
}

#[test]
fn bad_files_name_the_layer_and_what_is_wrong() {
    let limits = Limits::default();
    let cases: Vec<(String, &str)> = vec![
        ("name = \"t\"\nlayers = []\nextra = 1".into(), "unknown field `extra`"),
        (with_layer("type = \"conv\"\nname = \"c\"\nin = 1\nout = 10\nkernel = 3\nstrid = 2"), "unknown field `strid`"),
        (with_layer("type = \"convolution\""), "unknown variant `convolution`"),
        (with_layer("type = \"conv\"\nname = \"c\"\nin = 3\nout = 10\nkernel = 3"), "layer 1 (`c`): in = 3, but the input has 1 channels"),
        (with_layer("type = \"conv\"\nname = \"c\"\nin = 1\nout = 10\nkernel = 40"), "layer 1 (`c`): a 40-pixel window"),
        (with_layer("type = \"linear\"\nname = \"fc\"\nin = 784\nout = 10"), "add a flatten layer"),
        (with_layer("type = \"conv\"\nname = \"c\"\nin = 1\nout = 7\nkernel = 3"), "not the 10 class scores"),
        (with_layer("type = \"dropout\"\np = 1.5"), "p = 1.5 must be in [0, 1)"),
        (with_layer("type = \"conv\"\nname = \"c\"\nin = 1\nout = 1000000000\nkernel = 3"), "out = 1000000000 must be in 1..=65536"),
        (with_layer("type = \"conv\"\nname = \"c\"\nin = 1\nout = 10\nkernel = 3\nstride = 0"), "stride = 0 must be in 1..="),
        ("name = \"t\"\n[[layers]]\ntype = \"conv\"\nname = \"c\"\nin = 1\nout = 65536\nkernel = 64\npadding = 40\n[[layers]]\ntype = \"conv\"\nname = \"d\"\nin = 65536\nout = 65536\nkernel = 64\n".into(), "more than 268435456 parameters"),
    ];
    for (text, needle) in cases {
        let err = check(&text, limits).unwrap_err();
        assert!(
            err.contains(needle),
            "expected `{needle}` in: {err}\n--- for:\n{text}"
        );
    }
    // 100k layers are refused before any shape is worked out.
    let many = format!(
        "name = \"t\"\n{}",
        "[[layers]]\ntype = \"relu\"\n".repeat(100_000)
    );
    let err = check(
        &many,
        Limits {
            max_file_bytes: 10 << 20,
            ..limits
        },
    )
    .unwrap_err();
    assert!(
        err.contains("100000 layers, more than the limit of 10000"),
        "{err}"
    );
    // Files larger than the limit are not read.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, &many).unwrap();
    let err = ModelFile::read(&big).unwrap_err();
    assert!(
        err.contains("big.toml") && err.contains("more than the limit of 1048576 bytes"),
        "{err}"
    );
    // Through the architecture parser the file is named; a build names the model.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"t\"\n[[layers]]\ntype = \"relu\"\nfoo = 1\n").unwrap();
    let err = bad.to_str().unwrap().parse::<Architecture>().unwrap_err();
    assert!(err.contains("bad.toml") && err.contains("foo"), "{err}");
    let arch: Architecture = example().to_str().unwrap().parse().unwrap();
    let err = build(
        &arch,
        (3, 32, 32),
        10,
        &HwMap::All(approx_hw::HwSpec::Exact),
        ExecMode::Float,
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("model `lenet5-file`") && err.contains("in = 1, but the input has 3 channels"),
        "{err}"
    );
}
