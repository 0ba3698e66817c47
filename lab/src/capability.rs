//! Whether a test that builds network namespaces can run here: the one check that the lab's
//! own tests and the end-to-end tests share (docs/design.md §9).
//!
//! Such a test needs root and a few tools. Where they are missing it is skipped, and says so
//! where a person sees it: libtest captures what `print!`/`eprint!` write from a test, so the
//! notice is written to the process's stderr directly, which `cargo test` shows between the
//! test lines. Under `CI=true` a skip is a failure instead: the test panics.
//!
//! Self-contained (std only, its own `geteuid`) so that it can move into the system layer
//! unchanged.

use std::io::Write;
use std::path::Path;

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// Whether test `test` can run: root, and every program of `tools` on `PATH`. Otherwise it
/// prints why the test is skipped (past libtest's capture) and returns false; under
/// `CI=true` it panics with the same reason.
pub fn can_run(test: &str, tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { geteuid() } == 0;
    let Some(why) = missing(root, tools) else {
        return true;
    };
    let ci = std::env::var("CI").as_deref() == Ok("true");
    skip(&mut std::io::stderr(), test, &why, ci);
    false
}

/// What keeps a test from running, if anything.
fn missing(root: bool, tools: &[&str]) -> Option<String> {
    if !root {
        return Some("not root (it makes network namespaces)".into());
    }
    let absent: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if absent.is_empty() {
        return None;
    }
    Some(format!("missing programs: {}", absent.join(", ")))
}

/// Whether an executable file named `tool` is in a directory of `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        Path::new(&dir)
            .join(tool)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Reports the skip of `test` on `out`, or panics when `ci`: a skip in CI is a failure.
fn skip(out: &mut dyn Write, test: &str, why: &str, ci: bool) {
    if ci {
        panic!("{test}: cannot run ({why}), and CI=true makes a skip a failure");
    }
    // One write, so that the lines of tests running in parallel do not cut through it.
    let notice = format!(
        "\n!!!!! SKIPPED {test}: {why}; run it as root with iproute2, nftables and the \
         programs it names !!!!!\n\n"
    );
    let _ = out.write_all(notice.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_tools_present_means_it_runs() {
        assert_eq!(missing(true, &["sh"]), None);
        assert_eq!(missing(true, &[]), None);
    }

    #[test]
    fn the_reason_names_what_is_missing() {
        assert!(missing(false, &["sh"]).unwrap().contains("not root"));
        let why = missing(true, &["sh", "weft-no-such-program"]).unwrap();
        assert!(why.contains("weft-no-such-program"), "{why}");
        assert!(!why.contains("sh,"), "{why}");
    }

    #[test]
    fn a_skip_outside_ci_is_reported_loudly() {
        let mut out = Vec::new();
        skip(&mut out, "some_test", "not root", false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("SKIPPED some_test: not root"), "{text}");
    }

    #[test]
    #[should_panic(expected = "CI=true makes a skip a failure")]
    fn a_skip_under_ci_is_a_failure() {
        skip(&mut Vec::new(), "some_test", "not root", true);
    }
}
