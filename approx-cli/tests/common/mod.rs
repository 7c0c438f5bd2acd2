//! Helpers shared by the integration tests that run the `approx` binary.

use std::process::{Command, Stdio};

/// `cmd` (program, arguments and environment) run through bash with `limits` (shell
/// commands such as `ulimit -f 100`) applied first; stdout discarded, stderr captured.
pub fn with_limits(cmd: &Command, limits: &str) -> Command {
    let mut limited = Command::new("bash");
    limited
        .arg("-c")
        .arg(format!("{limits} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limited
}
