//! Whether a test that builds network namespaces can run here: the one check that the CNI
//! plugin's tests, the lab's own tests and the end-to-end tests share (docs/design.md §9).
//!
//! Such a test needs root, a few programs on `PATH` and sometimes a few files (the reference
//! CNI plugins a comparison runs). Where they are missing it is skipped, and says so where a
//! person sees it: libtest captures what `print!`/`eprint!` write from a test, so the notice
//! is written to the process's stderr directly, which `cargo test` shows between the test
//! lines. Under `CI=true` a skip is a failure instead: the test panics, since a skipped
//! namespace test in CI would be a silent hole.

use std::io::Write;
use std::path::Path;

/// Whether test `test` can run: root, and every program of `tools` on `PATH`. Otherwise it
/// prints why the test is skipped (past libtest's capture) and returns false; under
/// `CI=true` it panics with the same reason.
pub fn can_run(test: &str, tools: &[&str]) -> bool {
    can_run_with(test, tools, &[])
}

/// Like [`can_run`], and also every file of `files` must exist (a plugin the test runs by its
/// path, say).
pub fn can_run_with(test: &str, tools: &[&str], files: &[&str]) -> bool {
    let Some(why) = missing(crate::is_root(), tools, files) else {
        return true;
    };
    let ci = std::env::var("CI").as_deref() == Ok("true");
    skip(&mut std::io::stderr(), test, &why, ci);
    false
}

/// What keeps a test from running, if anything.
fn missing(root: bool, tools: &[&str], files: &[&str]) -> Option<String> {
    if !root {
        return Some("not root (it makes network namespaces)".into());
    }
    let mut absent = Vec::new();
    let programs: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if !programs.is_empty() {
        absent.push(format!("missing programs: {}", programs.join(", ")));
    }
    let paths: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| !Path::new(f).exists())
        .collect();
    if !paths.is_empty() {
        absent.push(format!("missing files: {}", paths.join(", ")));
    }
    (!absent.is_empty()).then(|| absent.join("; "))
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
         programs and files it names !!!!!\n\n"
    );
    let _ = out.write_all(notice.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_tools_present_means_it_runs() {
        assert_eq!(missing(true, &["sh"], &[]), None);
        assert_eq!(missing(true, &[], &[]), None);
        assert_eq!(missing(true, &["sh"], &["/"]), None);
    }

    #[test]
    fn the_reason_names_what_is_missing() {
        assert!(missing(false, &["sh"], &[]).unwrap().contains("not root"));
        let why = missing(true, &["sh", "weft-no-such-program"], &[]).unwrap();
        assert!(why.contains("weft-no-such-program"), "{why}");
        assert!(!why.contains("sh,"), "{why}");
    }

    #[test]
    fn a_missing_file_is_named_too() {
        let why = missing(true, &["sh"], &["/", "/weft-no-such-file"]).unwrap();
        assert_eq!(why, "missing files: /weft-no-such-file");
        let why = missing(true, &["weft-no-such-program"], &["/weft-no-such-file"]).unwrap();
        assert!(why.contains("programs: weft-no-such-program"), "{why}");
        assert!(why.contains("files: /weft-no-such-file"), "{why}");
        // Not being root says it all: nothing else is worth checking.
        let why = missing(false, &[], &["/weft-no-such-file"]).unwrap();
        assert!(!why.contains("weft-no-such-file"), "{why}");
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
