//! End-to-end: a 2-minute soak (scripts/soak.sh) of a 4-node lab under churn — routers
//! killed and started, links blocked, loss and delay, pods added and deleted through weft-cni,
//! garbage and handshake floods — must leave no duplicate pod address, no lease without a
//! pod, no leak, and nothing after `weft lab down`. Two minutes of churn and the lab's setup
//! make it the longest test, so it is ignored by `cargo test` and run once by
//! scripts/test-all.sh (`--ignored`), not again in the run without offloads.

use std::path::Path;
use std::process::Command;

use weft_tests::e2e::*;

const PREFIX: &str = "wsk";

/// Removes the lab however the test ends (the script removes it too; this covers a panic or
/// a killed script).
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = run(&self.0, &["lab", "down", "--prefix", PREFIX]);
    }
}

/// The value of the table row `label` (the text after the label and its padding).
fn row<'t>(table: &'t str, label: &str) -> &'t str {
    table
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no row {label:?} in the soak's table:\n{table}"))
}

#[test]
#[ignore = "a 2-minute soak: scripts/test-all.sh runs it with --ignored"]
fn two_minutes_of_churn_leave_no_duplicate_no_orphan_no_leak_and_nothing_behind() {
    if !can_run(
        "two_minutes_of_churn_leave_no_duplicate_no_orphan_no_leak_and_nothing_behind",
        &["ping", "jq", "curl"],
    ) {
        return;
    }
    let weft = weft_bin();
    let _down = Down(weft.clone());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/soak.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("MINUTES", "2")
        .env("NODES", "4")
        .env("PREFIX", PREFIX)
        .env("WEFT", &weft)
        .env("STEP", "2")
        .env("SETTLE", "15")
        .output()
        .expect("running scripts/soak.sh");
    let table = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    report(&format!("soak table:\n{table}"));
    assert!(
        out.status.success(),
        "the soak failed ({}):\n{table}\n{log}",
        out.status
    );
    for label in [
        "duplicate pod addresses",
        "leases without a pod",
        "pods without a lease",
        "namespaces left after lab down",
        "links left after lab down",
        "routers left after lab down",
        "state left after lab down",
    ] {
        assert_eq!(row(&table, label), "0", "{label}:\n{table}\n{log}");
    }
    // The churn ran: every kind of action at least once.
    let head = table.lines().find(|l| l.starts_with("weft soak:")).unwrap();
    for action in [
        "kill=",
        "block=",
        "podadd=",
        "poddel=",
        "garbage=",
        "initiation=",
    ] {
        assert!(head.contains(action), "no {action} in {head}");
    }
}
