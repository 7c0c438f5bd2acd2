//! Crash safety and determinism of whole runs of the `approx` binary: a fine-tune
//! killed with SIGKILL at random moments and resumed each time ends with the same model
//! file as an uninterrupted run, and one and two threads give the same bits.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::with_limits;

/// A short fine-tune of TinyConv on 256 embedded images into `out`.
fn finetune(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_approx"));
    cmd.args([
        "finetune",
        "--model",
        "tinyconv",
        "--train-images",
        "256",
        "--test-images",
        "64",
        "--pretrain-epochs",
        "2",
        "--epochs",
        "2",
        "--schedule",
        "inject:1,accurate:1",
        "--batch",
        "32",
        "--out",
        out.to_str().expect("utf-8 temp path"),
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

fn model_bytes(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("model.safetensors")).expect("the run wrote its model")
}

#[test]
fn a_run_killed_at_random_moments_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let started = Instant::now();
    let o = finetune(&reference, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = started.elapsed();

    // Kill points spread over the run (a fixed pseudo-random sequence, so a failure
    // can be replayed), then one last resume that runs to the end.
    let out = dir.path().join("killed");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut kills = 0;
    for attempt in 0..12 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let fraction = (state % 1000) as f64 / 1000.0;
        let resume: &[&str] = if attempt == 0 { &[] } else { &["--resume"] };
        let mut child = finetune(&out, resume).spawn().unwrap();
        // Early enough that a resumed run is still working: each resume starts
        // again from the last epoch checkpoint.
        std::thread::sleep(full.mul_f64(0.05 + 0.3 * fraction));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
        }
        if kills == 4 {
            break;
        }
        if out.join("model.safetensors").is_file() {
            break;
        }
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed before the run finished"
    );
    let o = finetune(&out, &["--resume"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        model_bytes(&out),
        model_bytes(&reference),
        "the killed and resumed run ends with other weights"
    );
    // No temporary files are left behind.
    for entry in std::fs::read_dir(&out).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "left behind: {name}");
    }
}

/// A run killed in the middle of writing a checkpoint resumes from the last complete
/// one to the uninterrupted result, and the partial temporary file is cleaned up. The
/// kill is exact: `ulimit -f` just above the largest pretraining checkpoint, so that
/// the kernel kills the process (SIGXFSZ) mid-write of the first fine-tuning
/// checkpoint, which is larger (it also holds the calibrations).
#[test]
fn a_run_killed_during_a_checkpoint_write_resumes_to_the_uninterrupted_result() {
    use std::os::unix::process::ExitStatusExt;
    const SIGXFSZ: i32 = 25;
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let o = finetune(&reference, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pretrain_bytes = std::fs::metadata(reference.join("pretrain-checkpoint.safetensors"))
        .unwrap()
        .len();
    let blocks = pretrain_bytes.div_ceil(1024);

    let out = dir.path().join("killed");
    let o = with_limits(
        &finetune(&out, &[]),
        &format!("ulimit -c 0; ulimit -f {blocks}"),
    )
    .output()
    .unwrap();
    assert_eq!(
        o.status.signal(),
        Some(SIGXFSZ),
        "the run was not killed by the file-size limit ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let partial: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(
        partial
            .iter()
            .any(|n| n.starts_with(".finetune-checkpoint")),
        "killed outside a checkpoint write: {partial:?}"
    );

    let o = finetune(&out, &["--resume"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(model_bytes(&out), model_bytes(&reference));
    assert_no_partial_files(&out);
}

#[test]
fn one_and_two_threads_give_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut models = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("threads-{threads}"));
        let o = finetune(&out, &[])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        models.push(model_bytes(&out));
    }
    assert_eq!(models[0], models[1]);
}

/// Checks that `out` holds no temporary file and that every safetensors file in it
/// is whole (its header and data parse).
fn assert_no_partial_files(out: &Path) {
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "left behind: {name}");
        if name.ends_with(".safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                safetensors::SafeTensors::deserialize(&bytes).is_ok(),
                "partial file: {name}"
            );
        }
    }
}

/// A disk that fills up mid-run: `ulimit -f` caps every file the run writes at
/// 100 KiB, and with SIGXFSZ ignored a write past it fails with EFBIG, as one on a
/// full disk fails with ENOSPC. The model checkpoints are larger than that.
#[test]
fn a_full_disk_is_a_clear_error_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = with_limits(&finetune(&out, &[]), "trap '' XFSZ; ulimit -f 100")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write `") && stderr.contains("File too large"),
        "{stderr}"
    );
    assert!(!out.join("model.safetensors").exists());
    assert_no_partial_files(&out);
}

/// A read-only output folder is refused before any work, naming the folder, and
/// `simulate` into it fails without a file. As root (who may write anywhere) the
/// commands run as the unprivileged user 65534, from copies of the binary and input in
/// the test's folder (the checkout may sit where that user cannot reach).
#[test]
fn a_read_only_output_folder_is_a_clear_error() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = std::fs::metadata(dir.path()).unwrap().uid() == 0;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sc-conv.safetensors");
    let (bin, input) = if root {
        let (bin, input) = (
            dir.path().join("approx"),
            dir.path().join("input.safetensors"),
        );
        std::fs::copy(env!("CARGO_BIN_EXE_approx"), &bin).unwrap();
        std::fs::copy(&example, &input).unwrap();
        std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
        (bin, input)
    } else {
        (PathBuf::from(env!("CARGO_BIN_EXE_approx")), example)
    };
    let out = dir.path().join("read-only");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o555)).unwrap();
    let run = |args: Vec<&std::ffi::OsStr>| {
        let mut cmd = Command::new(&bin);
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
        if root {
            cmd.uid(65534).gid(65534);
        }
        cmd.output().unwrap()
    };

    let o = run(finetune(&out, &[]).get_args().collect());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "output folder `{}` is not writable",
            out.display()
        )) && stderr.contains("Permission denied"),
        "{stderr}"
    );

    let target = out.join("out.safetensors");
    let o = run(vec![
        "simulate".as_ref(),
        "--hw".as_ref(),
        "sc".as_ref(),
        "--op".as_ref(),
        "conv2d".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        target.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write `{}`", target.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}
