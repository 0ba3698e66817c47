//! Seeing the mesh, end to end: `weft report` and the router's live page on a 3-node lab
//! through a block and an unblock, the page loaded in headless Chromium inside a node's
//! namespace (so the browser reaches nothing but that node's loopback and the lab).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_router::report::MeshReport;
use weft_tests::e2e::*;

/// `weft report --json` of `node`, from its control socket.
fn mesh_report(lab: &Lab, node: &str) -> MeshReport {
    let dir = lab.node(node).state_dir.to_str().unwrap().to_owned();
    let out = lab.weft(&["report", "--json", "--state-dir", &dir]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("weft report of {node}: {e}: {out}"))
}

/// Each link of a report as `"n1-n3"` → `"relayed via n2"`, by node names.
fn links(r: &MeshReport) -> BTreeMap<String, String> {
    let names: BTreeMap<&str, &str> = r
        .members
        .iter()
        .map(|m| (m.id.as_str(), m.name.as_str()))
        .collect();
    r.links
        .iter()
        .map(|l| {
            let mut pair = [names[l.a.as_str()], names[l.b.as_str()]];
            pair.sort();
            let state = match &l.via {
                Some(via) => format!("{} via {}", l.state, names[via.as_str()]),
                None => l.state.clone(),
            };
            (pair.join("-"), state)
        })
        .collect()
}

/// Waits until `node`'s report shows `want` for every pair it names; how long it took.
fn wait_links(lab: &Lab, node: &str, want: &[(&str, &str)], timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = links(&mesh_report(lab, node));
        if want
            .iter()
            .all(|(pair, state)| got.get(*pair).map(String::as_str) == Some(*state))
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{node}'s report did not show {want:?} within {timeout:?}: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An HTTP GET on `node`'s metrics listener, from inside its namespace: (head, body).
fn http_get(lab: &Lab, node: &str, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let text = in_netns(&lab.node(node).namespace, move || {
        let mut s = TcpStream::connect("127.0.0.1:6787").expect("metrics port");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_ascii_lowercase(), body.to_owned())
}

/// Where the screenshot goes: `WEFT_ARTIFACTS`, or `target/e2e-artifacts` beside the test
/// binaries, where CI collects it.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("WEFT_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            // target/debug/deps/e2e_report-HASH → target/e2e-artifacts
            exe.ancestors().nth(3).unwrap().join("e2e-artifacts")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium, run inside `ns`, on `url` with `args`: (stdout, stderr). Its profile is
/// a fresh directory, removed afterwards; background networking is off (and the namespace
/// reaches only the lab anyway).
fn chromium(ns: &str, profile: &Path, url: &str, args: &[&str]) -> (String, String) {
    let _ = std::fs::remove_dir_all(profile);
    let (ok, out, err) = run(
        Path::new("ip"),
        &[
            &[
                "netns",
                "exec",
                ns,
                "timeout",
                "60",
                "chromium",
                "--headless",
            ][..],
            &[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--enable-logging=stderr",
                "--v=0",
                // Lets the page's polls run: the DOM is dumped once 5 s of virtual time passed.
                "--virtual-time-budget=5000",
                "--window-size=1400,820",
                "--hide-scrollbars",
                &format!("--user-data-dir={}", profile.display()),
            ],
            args,
            &[url],
        ]
        .concat(),
    );
    let _ = std::fs::remove_dir_all(profile);
    assert!(ok, "chromium failed: {err}");
    (out, err)
}

/// The elements of `dom` with a class attribute starting with `class`, each as its tag text.
fn tags<'a>(dom: &'a str, class: &str) -> Vec<&'a str> {
    let needle = format!("class=\"{class}");
    dom.match_indices(&needle)
        .map(|(i, _)| {
            let start = dom[..i].rfind('<').unwrap();
            let end = i + dom[i..].find('>').unwrap();
            &dom[start..=end]
        })
        .collect()
}

/// What the page drew, from the DOM Chromium dumped: (nodes, edges), after checking that no
/// script error was caught by the page or logged on the console.
fn drawn(dom: &str, console: &str) -> (Vec<String>, Vec<String>) {
    // Chromium's own pages (chrome://…) log too, about themselves: not the page's.
    let console_lines: Vec<&str> = console
        .lines()
        .filter(|l| l.contains(":CONSOLE") && !l.contains("source: chrome://"))
        .collect();
    assert!(
        console_lines.is_empty(),
        "the console logged: {console_lines:#?}"
    );
    assert!(
        dom.contains(r#"<pre id="errors" hidden="">"#) && !dom.contains("error: "),
        "the page caught errors: {dom}"
    );
    let nodes = tags(dom, "node").into_iter().map(str::to_owned).collect();
    let edges = tags(dom, "edge").into_iter().map(str::to_owned).collect();
    (nodes, edges)
}

/// `weft report` and the page show the lab's mesh through a block and an unblock; the page
/// runs without a script error under its Content-Security-Policy, and neither shows a secret.
#[test]
fn the_report_and_the_page_follow_a_block_and_an_unblock() {
    if !can_run(
        "the_report_and_the_page_follow_a_block_and_an_unblock",
        &["chromium"],
    ) {
        return;
    }
    let lab = Lab::up("rpa", &["--nodes", "3", "--pods", "1"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let direct = [
        ("n1-n2", "direct"),
        ("n1-n3", "direct"),
        ("n2-n3", "direct"),
    ];
    for node in ["n1", "n2", "n3"] {
        wait_links(&lab, node, &direct, Duration::from_secs(15));
    }

    // The page: its assets under a strict policy, and the report it polls.
    let (head, body) = http_get(&lab, "n1", "/");
    assert!(head.split(' ').nth(1) == Some("200"), "{head}");
    assert!(
        head.contains(&format!(
            "content-security-policy: {}",
            weft_router::ui::CONTENT_SECURITY_POLICY
        )),
        "{head}"
    );
    assert!(body.contains("/ui/app.js"));
    for asset in ["/ui/app.js", "/ui/style.css", "/report.json"] {
        let (head, _) = http_get(&lab, "n1", asset);
        assert!(head.split(' ').nth(1) == Some("200"), "{asset}: {head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'"),
            "{asset}"
        );
    }
    let profile = std::env::temp_dir().join(format!("rpa-chromium-{}", std::process::id()));
    let ns = lab.node("n1").namespace.clone();
    let url = "http://127.0.0.1:6787/";
    let (dom, console) = chromium(&ns, &profile, url, &["--dump-dom"]);
    let (nodes, edges) = drawn(&dom, &console);
    assert_eq!(nodes.len(), 3, "{nodes:#?}");
    assert_eq!(edges.len(), 3, "{edges:#?}");
    assert!(
        edges.iter().all(|e| e.contains("edge direct")),
        "{edges:#?}"
    );

    // Block n1–n3 while a pod of n1 talks to a pod of n3 (a path is judged by its traffic,
    // docs/design.md §4): they go through n2, and every report says so.
    let (a, b) = (lab.pod("n1-p1").clone(), lab.pod("n3-p1").clone());
    let probe = Prober::start(&a.namespace, &b.namespace, b.address, 7100);
    lab.lab(&["block", "1-3"]);
    let relayed = [("n1-n3", "relayed via n2")];
    let took = wait_links(&lab, "n1", &relayed, Duration::from_secs(15));
    report(&format!(
        "rpa: n1's report shows n1-n3 relayed {:.1}s after the block",
        took.as_secs_f64()
    ));
    wait_links(&lab, "n3", &relayed, Duration::from_secs(15));
    // n2 learns it by gossip: both ends list each other as unreachable.
    wait_links(&lab, "n2", &relayed, Duration::from_secs(15));
    let r = mesh_report(&lab, "n1");
    drop(probe);
    let key = |name: &str| {
        r.members
            .iter()
            .find(|m| m.name == name)
            .unwrap()
            .id
            .clone()
    };
    let tunnel = r
        .tunnels
        .iter()
        .find(|t| t.name.as_deref() == Some("n3"))
        .unwrap();
    assert_eq!(tunnel.path.as_deref(), Some("relayed"));
    assert_eq!(tunnel.via, Some(key("n2")));
    assert!(tunnel.tx_packets > 0 && tunnel.rx_packets > 0, "{tunnel:?}");
    // The probe's 20 datagrams a second show in the router's sampled rate.
    let rate = tunnel
        .rate
        .expect("a rate: the router has sampled for over 10 s");
    assert!(rate.tx_packets > 2.0 && rate.tx_bytes > 0.0, "{rate:?}");

    // Let the page's 1 s poll see the new report, then draw it.
    std::thread::sleep(Duration::from_millis(1500));
    let shot = artifacts().join("report-page.png");
    let (dom, console) = chromium(&ns, &profile, url, &["--dump-dom"]);
    let (nodes, edges) = drawn(&dom, &console);
    assert_eq!((nodes.len(), edges.len()), (3, 3), "{nodes:#?} {edges:#?}");
    let relayed_edges: Vec<_> = edges
        .iter()
        .filter(|e| e.contains("edge relayed"))
        .collect();
    assert_eq!(relayed_edges.len(), 1, "{edges:#?}");
    let e = relayed_edges[0];
    assert!(e.contains(&format!("data-via=\"{}\"", key("n2"))), "{e}");
    assert!(
        e.contains(&format!("\"{}\"", key("n1"))) && e.contains(&format!("\"{}\"", key("n3"))),
        "{e}"
    );
    let _ = std::fs::remove_file(&shot);
    let shot_arg = format!("--screenshot={}", shot.display());
    chromium(&ns, &profile, url, &[&shot_arg]);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    report(&format!(
        "rpa: screenshot of the page at {}",
        shot.display()
    ));

    // Neither the report nor the page shows a secret: the join secret, or any node's key.
    let mut secrets = vec![std::fs::read_to_string(weft_lab::join_secret_file("rpa")).unwrap()];
    for n in &lab.nodes {
        secrets.push(std::fs::read_to_string(n.state_dir.join("key")).unwrap());
    }
    let (_, json) = http_get(&lab, "n1", "/report.json");
    let text = lab.weft(&[
        "report",
        "--state-dir",
        lab.node("n1").state_dir.to_str().unwrap(),
    ]);
    for secret in &secrets {
        let secret = secret.trim();
        assert!(secret.len() >= 16);
        for (what, shown) in [("report.json", &json), ("text", &text), ("page", &dom)] {
            assert!(!shown.contains(secret), "the {what} shows a secret");
        }
    }

    // Unblock: direct again.
    lab.lab(&["unblock", "1-3"]);
    let took = wait_links(&lab, "n1", &[("n1-n3", "direct")], Duration::from_secs(60));
    report(&format!(
        "rpa: n1's report shows n1-n3 direct {:.1}s after the unblock",
        took.as_secs_f64()
    ));
    wait_links(&lab, "n2", &[("n1-n3", "direct")], Duration::from_secs(15));
}

/// `weft lab ui` makes a node's page reachable on a loopback port of this machine, adds
/// nothing else outside the lab, and stops when the lab goes down.
#[test]
fn lab_ui_forwards_a_loopback_port_to_a_nodes_page_until_the_lab_goes() {
    use std::io::BufRead;
    if !can_run(
        "lab_ui_forwards_a_loopback_port_to_a_nodes_page_until_the_lab_goes",
        &[],
    ) {
        return;
    }
    let lab = Lab::up("rpb", &["--nodes", "2", "--pods", "0"]);
    lab.wait_full_mesh(Duration::from_secs(30));
    let mut child = std::process::Command::new(&lab.weft)
        .args(["lab", "ui", "n2", "--prefix", "rpb"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("weft lab ui");
    // Killed whatever happens below (it stops by itself when the lab goes).
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut child = Kill(child);
    let url = lines.next().expect("a line").unwrap();
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("{url:?}: {e}"));
    assert!(addr.ip().is_loopback(), "{addr}");

    let get = |path: &str| -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let page = get("/").unwrap();
    assert!(page.contains(" 200 "), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy"),
        "{page}"
    );
    let (_, json) = get("/report.json")
        .unwrap()
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap();
    let r: MeshReport = serde_json::from_str(&json).unwrap();
    assert_eq!(r.node.name, "n2", "the page is n2's");
    assert_eq!(r.members.len(), 2);

    // Down with the lab: the forwarder exits by itself and its port closes.
    lab.lab(&["down"]);
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "weft lab ui: {status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "weft lab ui still runs after the lab went down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(TcpStream::connect(addr).is_err(), "{addr} still listens");
}

/// Every state the page draws, and names another node chose that try to be markup: the
/// router's page routes serve a hand-made report inside a namespace of this test's own (only
/// its loopback), and headless Chromium draws it without a console message and without
/// turning a name into an element.
#[test]
fn the_page_draws_every_state_and_never_turns_a_name_into_markup() {
    use weft_router::report::*;
    if !can_run(
        "the_page_draws_every_state_and_never_turns_a_name_into_markup",
        &["chromium"],
    ) {
        return;
    }
    // The namespace, removed whatever happens.
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = run(Path::new("ip"), &["netns", "del", &self.0]);
        }
    }
    let ns = Ns(format!("rpc-ui-{}", std::process::id()));
    let _ = run(Path::new("ip"), &["netns", "del", &ns.0]);
    assert!(run(Path::new("ip"), &["netns", "add", &ns.0]).0);
    assert!(run(Path::new("ip"), &["-n", &ns.0, "link", "set", "lo", "up"]).0);

    let hostile = r#"<img src=x onerror="document.title='owned'">"#;
    let member = |id: &str, name: &str| MemberReport {
        id: id.into(),
        name: name.into(),
        this_node: id == "A",
        incarnation: 1,
        record_version: 1,
        announced: vec!["198.18.0.1:6786".parse().unwrap()],
        seen: vec![],
        blocks: vec!["10.32.1.0/24".into()],
        unreachable: vec![],
    };
    let link = |a: &str, b: &str, state: &str, via: Option<&str>, sees: (bool, bool)| LinkReport {
        a: a.into(),
        b: b.into(),
        state: state.into(),
        via: via.map(Into::into),
        a_sees_b: sees.0,
        b_sees_a: sees.1,
        asymmetric: sees.0 != sees.1,
        local: a == "A" || b == "A",
    };
    let tunnel = |peer: &str, state: &str, path: Option<&str>| TunnelReport {
        peer: peer.into(),
        name: Some(peer.to_lowercase()),
        state: state.into(),
        path: path.map(Into::into),
        via: None,
        endpoint: None,
        rtt_ms: Some(0.5),
        tx_bytes: 1000,
        rx_bytes: 2000,
        tx_packets: 10,
        rx_packets: 20,
        handshake_age_secs: Some(3),
        cipher: Some(DATA_CIPHER.into()),
        mtu: 1375,
        rate: None,
        recent: vec![],
    };
    let report = MeshReport {
        schema: SCHEMA_VERSION,
        node: ReportingNode {
            id: "A".into(),
            name: "a".into(),
            version: "test".into(),
            listen: "198.18.0.1:6786".parse().unwrap(),
            pod_mtu: 1375,
        },
        members: vec![
            member("A", "a"),
            member("B", hostile),
            member("C", "c"),
            member("D", "d"),
        ],
        links: vec![
            link("A", "B", "handshaking", None, (true, true)),
            link("A", "C", "down", None, (false, false)),
            link("A", "D", "direct", None, (true, true)),
            link("B", "C", "relayed", Some("D"), (false, true)),
            link("B", "D", "direct", None, (true, true)),
            link("C", "D", "direct", None, (true, true)),
        ],
        tunnels: vec![
            tunnel("B", "handshaking", None),
            tunnel("C", "idle", None),
            tunnel("D", "established", Some("direct")),
        ],
        drops: BTreeMap::from([(hostile.to_string(), 1)]),
    };
    // Published as the driver does: whenever the page has asked for it.
    let published = weft_router::ui::Published::default();
    published.update(&report);
    let driver = published.clone();
    std::thread::spawn(move || {
        loop {
            if driver.wanted() {
                driver.update(&report);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let listener = in_netns(&ns.0, || {
        std::net::TcpListener::bind("127.0.0.1:6787").unwrap()
    });
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app: axum::Router = weft_router::ui::routes(published);
            axum::serve(listener, app).await
        })
    });

    let profile = std::env::temp_dir().join(format!("rpc-chromium-{}", std::process::id()));
    let (dom, console) = chromium(&ns.0, &profile, "http://127.0.0.1:6787/", &["--dump-dom"]);
    let (nodes, edges) = drawn(&dom, &console);
    assert_eq!(nodes.len(), 4, "{nodes:#?}");
    assert_eq!(edges.len(), 6, "{edges:#?}");
    for class in [
        "edge handshaking local",
        "edge down local",
        "edge direct local",
        "edge relayed asymmetric",
        "edge direct\"",
    ] {
        assert!(
            edges.iter().any(|e| e.contains(class)),
            "no {class}: {edges:#?}"
        );
    }
    assert!(!dom.contains("<img"), "a name became markup: {dom}");
    assert!(
        dom.contains("&lt;img src=x"),
        "the hostile name is shown as text"
    );
    assert!(dom.contains("<title>weft mesh</title>"), "the handler ran");
}
