//! End-to-end: rotating the join secret of a running 3-node lab in three steps
//! (docs/design.md §3) by rewriting the file the routers poll, while pod traffic between
//! nodes is probed every 100 ms: no pod pair stops for over a second, every session ends on
//! the new secret (the old-secret gauge reads 0), and afterwards a router started with only
//! the old secret is refused.

use std::path::Path;
use std::time::{Duration, Instant};

use weft_tests::e2e::*;

const NEW: &str = "a new join secret for the rotation test, 32+ bytes";

/// Replaces the file's content in one step (write beside it, rename over it), as a
/// Kubernetes Secret volume swaps its content: a router never reads half a file.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until every member router has applied `reloads` contents and accepts `accepted`
/// secrets.
fn wait_applied(lab: &Lab, nodes: &[&str], reloads: u64, accepted: usize) {
    let start = Instant::now();
    for node in nodes {
        loop {
            let s = lab.status(node);
            let j = &s["join_secrets"];
            if j["reloads"] == reloads && j["accepted"].as_array().map(Vec::len) == Some(accepted) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{node} did not apply step {reloads}: {j}\n{}",
                lab.log_tail(node)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn primary(lab: &Lab, node: &str) -> String {
    lab.status(node)["join_secrets"]["accepted"][0]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_three_step_rotation_keeps_pod_traffic_flowing_and_locks_out_the_old_secret() {
    let test = "a_three_step_rotation_keeps_pod_traffic_flowing_and_locks_out_the_old_secret";
    if !can_run(test, &[]) {
        return;
    }
    // n4 starts with a secret of its own (refused), and is used at the end as a router that
    // knows only the old secret.
    let lab = Lab::up(
        "jsrt",
        &["--nodes", "4", "--pods", "1", "--wrong-secret", "4"],
    );
    let members = ["n1", "n2", "n3"];
    for a in members {
        for b in members.iter().filter(|b| **b != a) {
            assert!(
                lab.wait_peer(a, b, Duration::from_secs(30), |_| true)
                    .is_some(),
                "{a} has no tunnel to {b}: {}",
                lab.status(a)
            );
        }
    }
    let file = weft_lab::join_secret_file("jsrt");
    let old = std::fs::read_to_string(&file).unwrap();
    let old = old.trim();
    let old_primary = primary(&lab, "n1");

    // Pod traffic between every pair of nodes, both directions of each probe, every 100 ms.
    let pairs = [("n1-p1", "n2-p1"), ("n2-p1", "n3-p1"), ("n3-p1", "n1-p1")];
    let probers: Vec<Prober> = pairs
        .iter()
        .enumerate()
        .map(|(i, (from, to))| {
            let (a, b) = (lab.pod(from), lab.pod(to));
            Prober::start_marked(
                &a.namespace,
                &b.namespace,
                b.address,
                7300 + i as u16,
                Duration::from_millis(100),
                b"",
            )
        })
        .collect();
    let began = Instant::now();
    for p in &probers {
        assert!(
            p.wait_steady_after(began, 10, Duration::from_secs(15)),
            "no steady traffic before the rotation"
        );
    }
    let from = Instant::now();

    // Step 1: accept the new secret. Step 2: make it the primary. Step 3: remove the old.
    replace(&file, &format!("{old}\n{NEW}\n"));
    wait_applied(&lab, &members, 1, 2);
    std::thread::sleep(Duration::from_secs(3));
    replace(&file, &format!("{NEW}\n{old}\n"));
    wait_applied(&lab, &members, 2, 2);
    let new_primary = primary(&lab, "n1");
    assert_ne!(new_primary, old_primary);
    // Every session re-made with the new primary: the gauge reads 0 on every node, and every
    // peer says "primary".
    let start = Instant::now();
    for node in members {
        loop {
            let m = lab.metrics(node);
            let on_primary = lab.status(node)["peers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["state"] == "established" || p["state"] == "rekeying")
                .filter(|p| p["join_secret"] == "primary")
                .count();
            if gauge(&m, "weft_peers_old_join_secret") == Some(0) && on_primary == 2 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{node} still has peers on the old secret: {}",
                lab.status(node)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    let drained = start.elapsed();
    replace(&file, &format!("{NEW}\n"));
    wait_applied(&lab, &members, 3, 1);
    std::thread::sleep(Duration::from_secs(5));
    let to = Instant::now();

    let gaps: Vec<Duration> = probers.iter().map(|p| p.longest_gap(from, to)).collect();
    let worst = gaps.iter().max().copied().unwrap_or_default();
    report(&format!(
        "jsrt: rotation over {:.1}s, gauge at 0 on every node {:.1}s after step 2, longest \
         probe gap per pod pair {:?} (probes every 100 ms)",
        (to - from).as_secs_f64(),
        drained.as_secs_f64(),
        gaps
    ));
    assert!(
        worst < Duration::from_secs(1),
        "a pod pair stopped for {worst:?} during the rotation: {gaps:?}"
    );
    for node in members {
        let m = lab.metrics(node);
        assert_eq!(gauge(&m, "weft_peers_old_join_secret"), Some(0), "{node}");
        assert_eq!(
            gauge(&m, "weft_join_secret_reload_errors_total"),
            Some(0),
            "{node}"
        );
    }
    drop(probers);

    // A router started with only the old secret is refused (at mac1, before any Noise).
    let rejected = |lab: &Lab| -> u64 {
        lab.status("n1")["drops"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.replace('_', "").eq_ignore_ascii_case("badmac1"))
            .map(|(_, v)| v.as_u64().unwrap())
            .sum()
    };
    lab.lab(&["router", "stop", "n4"]);
    replace(&weft_lab::lab_dir("jsrt").join("wrong-join-secret"), old);
    let before = rejected(&lab);
    lab.lab(&["router", "start", "n4"]);
    let start = Instant::now();
    while rejected(&lab) == before && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        rejected(&lab) > before,
        "n1 refused nothing from n4: the test proves nothing. n4: {}",
        lab.log_tail("n4")
    );
    std::thread::sleep(Duration::from_secs(3));
    let outsider = lab.status("n4");
    let tunnels = outsider["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "established" || p["state"] == "rekeying")
        .count();
    assert_eq!(
        tunnels, 0,
        "a router with the old secret got a tunnel: {outsider}"
    );
    for node in members {
        let s = lab.status(node);
        assert_eq!(s["members"], 3, "{node}: {s}");
    }
}
