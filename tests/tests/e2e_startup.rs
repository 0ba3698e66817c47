//! End-to-end: the probes and the CNI configuration while a router waits for discovery. A
//! kubelet's liveness probe must see a router that waits for its podCIDR as alive, and its
//! readiness probe as not ready, until the block comes; and the conflist (what makes the
//! kubelet call the node's network ready) must not exist before then: a real router in a
//! namespace of its own, against the fake API server in the same namespace, writing into CNI
//! directories the test owns.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::e2e::*;
use weft_tests::fake_kube::{FakeApi, node};

const NS: &str = "hsp-n1";

/// The namespace, the router and the files: gone when dropped, also on failure.
struct Guard {
    router: Option<std::process::Child>,
    dir: std::path::PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut r) = self.router.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
        let _ = run(Path::new("ip"), &["netns", "del", NS]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on the router's status listener: the HTTP status code, or None.
fn probe(path: &'static str) -> Option<u16> {
    in_netns(NS, move || {
        let mut s = TcpStream::connect("127.0.0.1:6787").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.split_whitespace().nth(1)?.parse().ok()
    })
}

#[test]
fn probes_say_alive_and_not_ready_while_the_router_waits_for_its_pod_cidr() {
    if !can_run(
        "probes_say_alive_and_not_ready_while_the_router_waits_for_its_pod_cidr",
        &[],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join("weft-hsp");
    let _ = run(Path::new("ip"), &["netns", "del", NS]);
    let _ = std::fs::remove_dir_all(&dir);
    let mut guard = Guard {
        router: None,
        dir: dir.clone(),
    };
    let (ok, _, err) = run(Path::new("ip"), &["netns", "add", NS]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(Path::new("ip"), &["-n", NS, "link", "set", "lo", "up"]);
    assert!(ok, "{err}");
    let api = FakeApi::start(
        ([127, 0, 0, 1], 0).into(),
        Some(format!("/run/netns/{NS}").into()),
    );
    // A Node without a podCIDR yet: the controller manager has not assigned one.
    api.add_node(node("n1", "198.18.0.1", None));
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::set_permissions(dir.join("state"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join("kubeconfig"), api.kubeconfig("127.0.0.1")).unwrap();
    let weft = weft_bin();
    let (ok, secret, _) = run(&weft, &["keygen", "--join-secret"]);
    assert!(ok);
    std::fs::write(dir.join("secret"), secret.trim()).unwrap();
    std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // The init container's half: the plugin alone, into a bin directory of the test's.
    let (bin_dir, conf_dir) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    let (ok, out, err) = run(
        &weft,
        &[
            "install-cni",
            "--only=plugin",
            &format!("--cni-bin-dir={}", bin_dir.display()),
        ],
    );
    assert!(ok, "weft install-cni --only=plugin: {err}");
    assert!(out.contains("installed"), "{out}");
    let conflist = conf_dir.join(weft_cni::install::CONFLIST_NAME);
    assert!(
        !conflist.exists(),
        "install-cni --only=plugin wrote a conflist"
    );
    let log = std::fs::File::create(dir.join("router.log")).unwrap();
    guard.router = Some(
        Command::new("ip")
            .args(["netns", "exec", NS])
            .arg(&weft)
            .args(["router", "--name=n1", "--kubernetes", "--node-name=n1"])
            .arg(format!("--kubeconfig={}", dir.join("kubeconfig").display()))
            .arg(format!("--state-dir={}", dir.join("state").display()))
            .arg(format!(
                "--join-secret-file={}",
                dir.join("secret").display()
            ))
            .arg("--underlay-mtu=1500")
            .arg(format!("--cni-conf-dir={}", conf_dir.display()))
            .arg(format!("--cni-bin-dir={}", bin_dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the router"),
    );
    let log = || std::fs::read_to_string(dir.join("router.log")).unwrap_or_default();

    let start = Instant::now();
    while probe("/healthz").is_none() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // What the startupProbe in deploy/weft.yaml has to cover.
    report(&format!(
        "hsp: /healthz answered {:.2}s after the router was started",
        start.elapsed().as_secs_f64()
    ));
    assert_eq!(
        probe("/healthz"),
        Some(200),
        "no health answer while waiting for the podCIDR: {}",
        log()
    );
    // Longer than /healthz's staleness bound (15 s): alive all along, never ready.
    let waiting = Instant::now();
    while waiting.elapsed() < Duration::from_secs(17) {
        assert_eq!(probe("/healthz"), Some(200), "{}", log());
        assert_eq!(probe("/readyz"), Some(503), "{}", log());
        assert!(
            !conflist.exists(),
            "a conflist before the router has its block: {}",
            log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    api.modify_node("n1", |n| {
        n["spec"]["podCIDR"] = "10.32.1.0/24".into();
        n["spec"]["podCIDRs"] = serde_json::json!(["10.32.1.0/24"]);
    });
    let ready = Instant::now();
    while probe("/readyz") != Some(200) {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "not ready 20 s after the podCIDR came: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(probe("/healthz"), Some(200), "{}", log());
    // Ready means the conflist is there, and it is one weft-cni accepts for this node.
    let bytes = std::fs::read(&conflist)
        .unwrap_or_else(|e| panic!("ready, but no {}: {e}: {}", conflist.display(), log()));
    let list: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut first = list["plugins"][0].clone();
    first["cniVersion"] = list["cniVersion"].clone();
    first["name"] = list["name"].clone();
    let conf = weft_cni::config::NetConf::parse(first.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("weft-cni refuses the router's conflist: {e}"));
    assert_eq!(conf.mtu, 1375, "the pod MTU of a 1500-byte underlay");
    assert_eq!(conf.state_dir, dir.join("state"));
    assert_eq!(first["type"], weft_cni::install::PLUGIN_NAME);
    report(&format!(
        "hsp: ready {:.1}s after the podCIDR was assigned",
        ready.elapsed().as_secs_f64()
    ));
}
