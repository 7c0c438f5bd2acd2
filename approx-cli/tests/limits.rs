//! Resource limits on untrusted input, end to end through the `approx` binary: specs,
//! LUT tables, model files, tensor files, weights, checkpoints and data files that ask
//! for absurd sizes (a billion channels, a 2^40-element tensor, a 100k-layer model, a
//! header that claims more bytes than the file has) are refused with an error naming
//! the file or key, before any large allocation.
//!
//! Every command runs with its address space capped at 4 GiB (`ulimit -v`): honouring
//! any of these requests would need far more, so a loader that allocated before
//! checking would die of an allocation failure instead of printing the expected error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::with_limits;

/// Address-space cap of every command here, in KiB.
const ADDRESS_SPACE_KIB: u64 = 4 << 20;

/// Runs `approx ARGS` under the address-space cap, with two worker threads (each
/// thread reserves address space of its own).
fn approx_capped(args: &[&str]) -> Output {
    let mut approx = Command::new(env!("CARGO_BIN_EXE_approx"));
    approx.args(args).env("RAYON_NUM_THREADS", "2");
    with_limits(&approx, &format!("ulimit -v {ADDRESS_SPACE_KIB}"))
        .output()
        .expect("bash runs")
}

/// Runs `args` and checks that it fails with a clean error (exit code 1, or 2 for a
/// bad option value; a panic exits with 101, an allocation failure aborts) and every
/// one of `needles` in its message.
fn refused(args: &[&str], needles: &[&str]) {
    let o = approx_capped(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "{args:?} ended with {}: {stderr}",
        o.status
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: expected `{needle}` in:\n{stderr}"
        );
    }
}

/// A file of `len` bytes that starts with `head` and is zeros (a hole, no disk
/// space) after it.
fn sparse(path: &Path, head: &[u8], len: u64) -> PathBuf {
    std::fs::write(path, head).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
    path.to_path_buf()
}

/// Safetensors bytes: an 8-byte little-endian header length, then `header`, then `data`.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// A header that declares one f32 tensor `name` of 2^20 x 2^20 elements (4 TiB).
fn huge_tensor_header(name: &str) -> String {
    format!(
        r#"{{"{name}":{{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,{}]}}}}"#,
        4u64 << 40
    )
}

fn simulate(hw: &str, input: &Path, extra: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "simulate",
        "--hw",
        hw,
        "--op",
        "conv2d",
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let output = dir.path().join("out.safetensors");
    args.extend_from_slice(&["--output", output.to_str().unwrap()]);
    refused(&args, needles);
    assert!(!output.exists(), "{args:?} wrote its output");
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sc-conv.safetensors")
}

#[test]
fn absurd_hardware_specs_are_refused() {
    for (spec, key) in [
        ("sc:len=1000000000", "`len`"),
        ("sc:acc=or1000000000", "`acc`"),
        ("analog:tile_rows=1000000000", "`tile_rows`"),
        ("analog:inp_bits=1000000000", "`inp_bits`"),
        ("mult:bits=1000000000", "`bits`"),
        ("fxp:acc_bits=1000000000", "`acc_bits`"),
    ] {
        simulate(spec, &example(), &[], &[key]);
    }
    // A conv whose zero padding would make a 2e9 x 2e9-pixel input.
    simulate(
        "sc",
        &example(),
        &["--padding", "1000000000"],
        &["more than 4294967296 elements"],
    );
}

#[test]
fn absurd_lut_tables_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["huge.bin", "huge.txt"] {
        let table = sparse(&dir.path().join(name), b"", 1 << 40);
        let spec = format!("mult:lut={}", table.display());
        simulate(&spec, &example(), &[], &[name, "1099511627776 bytes"]);
    }
}

#[test]
fn absurd_tensor_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = sparse(&dir.path().join("big.safetensors"), b"", 1 << 40);
    simulate("sc", &big, &[], &["big.safetensors", "more than the limit"]);

    let claims = dir.path().join("claims.safetensors");
    std::fs::write(
        &claims,
        safetensors_bytes(&huge_tensor_header("input"), &[0; 64]),
    )
    .unwrap();
    simulate(
        "sc",
        &claims,
        &[],
        &["claims.safetensors", "not a valid safetensors file"],
    );

    let long_header = dir.path().join("header.safetensors");
    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&long_header, bytes).unwrap();
    simulate(
        "sc",
        &long_header,
        &[],
        &["header.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn absurd_models_and_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("wide.toml");
    std::fs::write(
        &model,
        "name = \"wide\"\n[[layers]]\ntype = \"conv\"\nname = \"c\"\nin = 1\nout = 1000000000\nkernel = 3\n",
    )
    .unwrap();
    let eval = |model: &str, weights: &Path, needles: &[&str]| {
        refused(
            &[
                "eval",
                "--model",
                model,
                "--weights",
                weights.to_str().unwrap(),
                "--test-images",
                "8",
            ],
            needles,
        )
    };
    let weights = dir.path().join("w.safetensors");
    std::fs::write(&weights, safetensors_bytes("{}", &[])).unwrap();
    eval(
        model.to_str().unwrap(),
        &weights,
        &["wide.toml", "out = 1000000000 must be in 1..=65536"],
    );

    let deep = dir.path().join("deep.toml");
    std::fs::write(
        &deep,
        format!(
            "name = \"deep\"\n{}",
            "[[layers]]\ntype = \"relu\"\n".repeat(100_000)
        ),
    )
    .unwrap();
    eval(
        deep.to_str().unwrap(),
        &weights,
        &["deep.toml", "more than the limit of 1048576 bytes"],
    );

    std::fs::write(
        &weights,
        safetensors_bytes(&huge_tensor_header("conv1.weight"), &[0; 64]),
    )
    .unwrap();
    eval(
        "tinyconv",
        &weights,
        &["w.safetensors", "not a valid safetensors file"],
    );

    let mut bytes = (1u64 << 40).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&weights, bytes).unwrap();
    eval(
        "tinyconv",
        &weights,
        &["w.safetensors", "header claims 1099511627776 bytes"],
    );
}

#[test]
fn absurd_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir(&out).unwrap();
    sparse(
        &out.join("pretrain-checkpoint.safetensors"),
        &safetensors_bytes(&huge_tensor_header("model.fc1.weight"), &[]),
        1 << 30,
    );
    refused(
        &[
            "finetune",
            "--model",
            "mlp",
            "--train-images",
            "64",
            "--test-images",
            "32",
            "--resume",
            "--out",
            out.to_str().unwrap(),
        ],
        &["checkpoint", "pretrain-checkpoint.safetensors"],
    );
}

#[test]
fn absurd_data_files_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let data = |name: &str, needles: &[&str]| {
        let out = dir.path().join("out");
        refused(
            &[
                "pretrain",
                "--model",
                "mlp",
                "--data",
                name,
                "--out",
                out.to_str().unwrap(),
            ],
            needles,
        )
    };
    // IDX images whose header asks for 2^40 pixels, in a 16-byte file.
    let mnist = dir.path().join("mnist");
    std::fs::create_dir(&mnist).unwrap();
    let mut header = 0x0803u32.to_be_bytes().to_vec();
    for d in [1u32 << 20, 1 << 10, 1 << 10] {
        header.extend(d.to_be_bytes());
    }
    std::fs::write(mnist.join("train-images-idx3-ubyte"), &header).unwrap();
    std::fs::write(
        mnist.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 0],
    )
    .unwrap();
    let spec = format!("mnist:{}", mnist.display());
    data(
        &spec,
        &["train-images-idx3-ubyte", "asks for more than the limit"],
    );

    // A 1 TiB CIFAR-10 batch (sparse).
    let cifar = dir.path().join("cifar");
    std::fs::create_dir(&cifar).unwrap();
    sparse(&cifar.join("data_batch_1.bin"), b"", 3073 << 30);
    let spec = format!("cifar10:{}", cifar.display());
    data(&spec, &["data_batch_1.bin", "past the limit"]);
}
