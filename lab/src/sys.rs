//! Running `ip`, `nft`, `tc` and `sysctl` for the lab. The lab is a harness, so it drives the
//! same tools a person would type; the router itself uses netlink directly.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::LabError;

/// Runs `program args…`, returning stdout; on failure the error names the command and
/// carries its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_with(program, args, &[], None)
}

/// Like [`run`], with extra environment variables and optional stdin.
pub fn run_with(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> anyhow::Result<String> {
    let line = || format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}` (is it installed?)", line()))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input)
            .with_context(|| format!("writing stdin of `{}`", line()))?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            line(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" (stdout: {})", stdout.trim())
            }
        );
    }
    Ok(stdout)
}

/// `ip -n NS args…`: an `ip` command applied inside namespace `ns`.
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full).map(drop)
}

/// `ip netns exec NS program args…`.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Sets a sysctl inside `ns`.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    exec_in(ns, "sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
}

/// The named network namespaces that exist.
pub fn namespaces() -> anyhow::Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Process ids running inside `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Fails with a clear message unless we are root with the tools the lab needs.
pub fn check_prerequisites() -> Result<(), LabError> {
    let unsupported = |why: String| Err(LabError::Unsupported(why));
    if !weft_sys::user::is_root() {
        return unsupported(
            "weft lab needs root (it creates network namespaces); run it with sudo".into(),
        );
    }
    for tool in crate::LAB_TOOLS {
        if run("sh", &["-c", &format!("command -v {tool}")]).is_err() {
            return unsupported(format!(
                "weft lab needs `{tool}` (Debian: apt-get install iproute2 nftables procps)"
            ));
        }
    }
    Ok(())
}
