//! weft-cni on its own, driven as a runtime drives it: concurrency, GC, STATUS, refusals of
//! bad input, rollback after a late failure, and the example conflist.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use common::*;
use serde_json::{Value, json};
use weft_cni::env::{Attachment, ContainerId, IfName};
use weft_cni::plugin::host_veth_name;

#[test]
fn hundred_parallel_adds_then_dels() {
    if !can_run("hundred_parallel_adds_then_dels") {
        return;
    }
    const N: usize = 100;
    let lab = Lab::new("wcpar", Flavor::Weft, "10.32.20.0/24");
    let pods: Vec<Netns> = (0..N).map(|i| lab.pod(&format!("p{i}"))).collect();
    let list = lab.conflist("1.1.0");
    let rt = lab.runtime();
    let paths: Vec<String> = pods.iter().map(|p| p.path()).collect();
    let ids: Vec<String> = (0..N).map(|i| format!("par{i}")).collect();
    let target = |i: usize| Target {
        container_id: &ids[i],
        ifname: "eth0",
        netns: Some(&paths[i]),
    };

    let started = Instant::now();
    let results: Vec<Result<Value, PluginRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (rt, list) = (&rt, &list);
                s.spawn(move || rt.add(list, target(i)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("{N} parallel ADDs took {:?}", started.elapsed());
    let mut addrs = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().unwrap_or_else(|e| panic!("ADD {i}: {e:?}"));
        let a = pod_address(r, "eth0");
        assert!(lab.block.cidr().contains(&a) && a != lab.block.gateway());
        assert!(addrs.insert(a), "address {a} handed out twice");
        // The kernel agrees with the result.
        assert_eq!(
            addresses_of(&pods[i].name, "eth0"),
            [format!("{a}/24")],
            "pod {i}"
        );
    }
    assert_eq!(lab.leases().len(), N);
    assert_eq!(lab.host_veths().len(), N);

    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (rt, list) = (&rt, &list);
                s.spawn(move || rt.del(list, target(i), true))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            h.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("DEL {i}: {e:?}"));
        }
    });
    eprintln!("{N} parallel DELs took {:?}", started.elapsed());
    assert!(lab.leases().is_empty(), "leases left: {:?}", lab.leases());
    assert!(
        lab.host_veths().is_empty(),
        "links left: {:?}",
        lab.host_veths()
    );
    for p in &pods {
        assert!(p.links().is_empty(), "{}: {:?}", p.name, p.links());
    }
}

#[test]
fn gc_removes_what_is_not_valid() {
    if !can_run("gc_removes_what_is_not_valid") {
        return;
    }
    let lab = Lab::new("wcgc", Flavor::Weft, "10.32.21.0/24");
    let list = lab.conflist("1.1.0");
    let rt = lab.runtime();
    let p1 = lab.pod("p1");
    let p2 = lab.pod("p2");
    let keep = Target {
        container_id: "keep",
        ifname: "eth0",
        netns: Some(&p1.path()),
    };
    let stale = Target {
        container_id: "stale",
        ifname: "eth0",
        netns: Some(&p2.path()),
    };
    let keep2 = Target {
        container_id: "stale",
        ifname: "net1",
        ..stale
    };
    for t in [keep, stale, keep2] {
        rt.add(&list, t).unwrap();
    }
    // A host veth on our bridge that no lease knows of (say, a lease removed by hand).
    let stray = "vweftdeadbeef00";
    ip(&[
        "-n",
        &lab.node.name,
        "link",
        "add",
        stray,
        "type",
        "veth",
        "peer",
        "name",
        "wcgc-peer",
    ]);
    ip(&["-n", &lab.node.name, "link", "set", stray, "master", "weft"]);
    // And one that is not ours: GC must leave it alone.
    ip(&[
        "-n",
        &lab.node.name,
        "link",
        "add",
        "other0",
        "type",
        "bridge",
    ]);
    assert_eq!(lab.leases().len(), 3);

    rt.gc(&list, &[("keep", "eth0"), ("stale", "net1")])
        .unwrap();
    assert_eq!(lab.leases().len(), 2);
    let stale_veth = host_veth_name(&Attachment {
        container_id: ContainerId::parse("stale").unwrap(),
        ifname: IfName::parse("eth0").unwrap(),
    });
    let veths = lab.host_veths();
    assert!(!veths.contains(&stale_veth), "{veths:?}");
    assert!(!veths.contains(&stray.to_owned()), "{veths:?}");
    assert!(veths.contains(&"other0".to_owned()), "{veths:?}");
    assert_eq!(p2.links(), ["net1"]);
    rt.check(&list, keep).unwrap();
    rt.check(&list, keep2).unwrap();

    // GC is a 1.1.0 operation, and without the list of valid attachments it refuses
    // rather than deleting everything.
    let old = lab.conflist("1.0.0");
    assert_eq!(rt.gc(&old, &[]).unwrap_err().code(), 1);
    let mut conf = lab.plugin_conf();
    conf["cniVersion"] = "1.1.0".into();
    conf["name"] = "podnet".into();
    let run = exec_plugin(
        &lab.node.name,
        "weft-cni",
        &[("CNI_COMMAND", "GC")],
        conf.to_string().as_bytes(),
    );
    assert_eq!(run.code(), 7);
    assert_eq!(lab.leases().len(), 2);

    // GC with nothing valid removes everything of ours.
    rt.gc(&list, &[]).unwrap();
    assert!(lab.leases().is_empty());
    assert_eq!(lab.host_veths(), ["other0"]);
    assert!(p1.links().is_empty() && p2.links().is_empty());
}

#[test]
fn status_follows_the_node_block() {
    if !can_run("status_follows_the_node_block") {
        return;
    }
    let lab = Lab::new("wcstat", Flavor::Weft, "10.32.22.0/24");
    let list = lab.conflist("1.1.0");
    let rt = lab.runtime();
    let ok = rt.status(&list);
    assert!(ok.success, "{ok:?}");
    assert!(
        ok.stdout.is_empty(),
        "STATUS prints nothing on success: {ok:?}"
    );
    assert_eq!(rt.status(&lab.conflist("1.0.0")).code(), 1);

    let block_file = lab.state.join("node-block.json");
    std::fs::remove_file(&block_file).unwrap();
    let down = rt.status(&list);
    assert_eq!(down.code(), 50);
    assert!(down.msg().contains("node-block.json"), "{}", down.msg());
    // ADD without a block: "try again later", and nothing is created.
    let pod = lab.pod("p");
    let t = Target {
        container_id: "early",
        ifname: "eth0",
        netns: Some(&pod.path()),
    };
    let err = rt.add(&list, t).unwrap_err();
    assert_eq!(err.code(), 11);
    assert!(lab.node.links().is_empty() && pod.links().is_empty() && lab.leases().is_empty());

    std::fs::write(&block_file, b"{\"version\":1,\"cidr\":\"10.32.22.5/24\"}").unwrap();
    assert_eq!(rt.status(&list).code(), 50);

    // The router publishes (again, as after a restart): STATUS is fine and ADD works.
    lab.block.write(&lab.state).unwrap();
    assert!(rt.status(&list).success);
    let a = pod_address(&rt.add(&list, t).unwrap(), "eth0");
    lab.block.write(&lab.state).unwrap();
    let p2 = lab.pod("p2");
    let t2 = Target {
        container_id: "later",
        ifname: "eth0",
        netns: Some(&p2.path()),
    };
    // The lease made before the "restart" still holds: the next pod gets another address.
    assert_ne!(pod_address(&rt.add(&list, t2).unwrap(), "eth0"), a);
    rt.check(&list, t).unwrap();
    rt.del(&list, t, true).unwrap();
    rt.del(&list, t2, true).unwrap();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !can_run("bad_input_is_refused_and_changes_nothing") {
        return;
    }
    let lab = Lab::new("wcbad", Flavor::Weft, "10.32.23.0/24");
    let pod = lab.pod("p");
    let path = pod.path();
    let mut good = lab.plugin_conf();
    good["cniVersion"] = "1.0.0".into();
    good["name"] = "podnet".into();
    let good = good.to_string();
    let add = |cid: &str, ifname: &str| {
        vec![
            ("CNI_COMMAND", "ADD".to_owned()),
            ("CNI_CONTAINERID", cid.to_owned()),
            ("CNI_IFNAME", ifname.to_owned()),
            ("CNI_NETNS", path.clone()),
        ]
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&good).unwrap();
        f(&mut v);
        v.to_string()
    };
    // (case, environment, stdin, expected CNI error code)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, u64);
    let cases: Vec<Case> = vec![
        ("no command", vec![], good.clone(), 4),
        ("bad ifname", add("c1", "eth/0"), good.clone(), 4),
        (
            "long ifname",
            add("c1", "eth0123456789012"),
            good.clone(),
            4,
        ),
        ("bad container id", add("-c1", "eth0"), good.clone(), 4),
        (
            "no netns",
            vec![
                ("CNI_COMMAND", "ADD".into()),
                ("CNI_CONTAINERID", "c1".into()),
                ("CNI_IFNAME", "eth0".into()),
            ],
            good.clone(),
            4,
        ),
        ("not json", add("c1", "eth0"), "{".into(), 6),
        (
            "old version",
            add("c1", "eth0"),
            with(&|v| v["cniVersion"] = "0.2.0".into()),
            1,
        ),
        (
            "bad mtu",
            add("c1", "eth0"),
            with(&|v| v["mtu"] = 20.into()),
            7,
        ),
        (
            "bad bridge",
            add("c1", "eth0"),
            with(&|v| v["bridge"] = "a:b".into()),
            7,
        ),
        (
            "relative stateDir",
            add("c1", "eth0"),
            with(&|v| v["stateDir"] = "x".into()),
            7,
        ),
        (
            "ipam",
            add("c1", "eth0"),
            with(&|v| v["ipam"] = json!({"type": "host-local"})),
            2,
        ),
        (
            "bad prevResult",
            add("c1", "eth0"),
            with(&|v| {
                v["prevResult"] = json!({"ips": [{"address": "10.0.0.1/24", "interface": 5}]})
            }),
            7,
        ),
        (
            "CHECK below 0.4.0",
            vec![
                ("CNI_COMMAND", "CHECK".into()),
                ("CNI_CONTAINERID", "c1".into()),
                ("CNI_IFNAME", "eth0".into()),
                ("CNI_NETNS", path.clone()),
            ],
            with(&|v| {
                v["cniVersion"] = "0.3.1".into();
                v["prevResult"] = json!({});
            }),
            1,
        ),
    ];
    for (name, env, stdin, code) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = exec_plugin(&lab.node.name, "weft-cni", &env, stdin.as_bytes());
        assert!(!run.success, "{name}: succeeded");
        assert_eq!(run.code(), code, "{name}: {}", run.stdout);
        assert!(!run.msg().is_empty(), "{name}");
        assert!(run.json().get("cniVersion").is_some(), "{name}");
        // Nothing was touched: no bridge, no veth, no pod interface, no lease store.
        assert!(
            lab.node.links().is_empty(),
            "{name}: {:?}",
            lab.node.links()
        );
        assert!(pod.links().is_empty(), "{name}");
        assert!(
            !lab.state.join("cni").exists(),
            "{name}: lease store created"
        );
    }
}

#[test]
fn failure_after_allocation_rolls_back() {
    if !can_run("failure_after_allocation_rolls_back") {
        return;
    }
    let lab = Lab::new("wcroll", Flavor::Weft, "10.32.24.0/24");
    let mut list = lab.conflist("1.0.0");
    // A route whose gateway is not on the pod's subnet: the kernel refuses it, after the
    // address was leased and the veth made.
    list.plugins[0]["routes"] = json!([{"dst": "10.96.0.0/12", "gw": "10.33.0.1"}]);
    let rt = lab.runtime();
    let pod = lab.pod("p");
    let t = Target {
        container_id: "roll",
        ifname: "eth0",
        netns: Some(&pod.path()),
    };
    let err = rt.add(&list, t).unwrap_err();
    assert_eq!(err.code(), 5, "{err:?}");
    assert!(err.msg().contains("10.96.0.0/12"), "{}", err.msg());
    assert!(lab.leases().is_empty(), "{:?}", lab.leases());
    assert!(lab.host_veths().is_empty(), "{:?}", lab.host_veths());
    assert!(pod.links().is_empty());

    // With routes the kernel accepts, the configured routes replace the default one.
    list.plugins[0]["routes"] =
        json!([{"dst": "10.32.0.0/12"}, {"dst": "10.96.0.0/12", "gw": "10.32.24.254"}]);
    let result = rt.add(&list, t).unwrap();
    assert_eq!(
        result["routes"],
        json!([{"dst": "10.32.0.0/12", "gw": "10.32.24.1"}, {"dst": "10.96.0.0/12", "gw": "10.32.24.254"}])
    );
    let routes = ip(&["-n", &pod.name, "route"]);
    assert!(!routes.contains("default"), "{routes}");
    assert!(
        routes.contains("10.96.0.0/12 via 10.32.24.254 dev eth0"),
        "{routes}"
    );
    rt.check(&list, t).unwrap();
    rt.del(&list, t, true).unwrap();
}

#[test]
fn dns_and_mtu_from_the_config() {
    if !can_run("dns_and_mtu_from_the_config") {
        return;
    }
    let lab = Lab::new("wcdns", Flavor::Weft, "10.32.25.0/24");
    let mut list = lab.conflist("1.1.0");
    list.plugins[0]["mtu"] = 1300.into();
    list.plugins[0]["dns"] =
        json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
    let rt = lab.runtime();
    let pod = lab.pod("p");
    let t = Target {
        container_id: "dns",
        ifname: "eth0",
        netns: Some(&pod.path()),
    };
    let result = rt.add(&list, t).unwrap();
    assert_eq!(
        result["dns"],
        json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]})
    );
    assert_eq!(result["interfaces"][2]["mtu"], 1300);
    let link = ip(&["-n", &pod.name, "link", "show", "eth0"]);
    assert!(link.contains("mtu 1300"), "{link}");
    rt.del(&list, t, true).unwrap();
}

#[test]
fn example_conflist_is_valid_and_chains() {
    if !can_run("example_conflist_is_valid_and_chains") {
        return;
    }
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/10-weft.conflist"),
    )
    .unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["plugins"][0]["type"], "weft-cni");
    assert_eq!(v["plugins"][1]["type"], "portmap");
    assert_eq!(v["plugins"][2]["type"], "loopback");
    let lab = Lab::new("wcex", Flavor::Weft, "10.32.26.0/24");
    // Point the example at this test's state directory; everything else as shipped.
    v["plugins"][0]["stateDir"] = lab.state.to_string_lossy().into_owned().into();
    let list = ConfList::from_json(&v);
    let mut rt = lab.runtime();
    rt.port_mappings = Some(json!([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]));
    let pod = lab.pod("p");
    let t = Target {
        container_id: "example",
        ifname: "eth0",
        netns: Some(&pod.path()),
    };
    let result = rt.add(&list, t).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(result["cniVersion"], v["cniVersion"]);
    assert_eq!(result["interfaces"][0]["name"], "weft");
    rt.del(&list, t, true).unwrap();
    assert!(lab.leases().is_empty() && lab.host_veths().is_empty());
}

#[test]
fn second_in_a_chain_keeps_the_previous_result() {
    if !can_run("second_in_a_chain_keeps_the_previous_result") {
        return;
    }
    // weft-cni is meant to come first, but a plugin after another must pass the previous
    // result on: here loopback goes first and reports lo with 127.0.0.1.
    let lab = Lab::new("wcsecond", Flavor::Weft, "10.32.27.0/24");
    let list = ConfList {
        version: "1.0.0".into(),
        name: "podnet".into(),
        plugins: vec![json!({"type": "loopback"}), lab.plugin_conf()],
    };
    let rt = lab.runtime();
    let pod = lab.pod("p");
    let t = Target {
        container_id: "second",
        ifname: "eth0",
        netns: Some(&pod.path()),
    };
    let result = rt.add(&list, t).unwrap_or_else(|e| panic!("{e:?}"));
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 4, "{result}");
    assert_eq!(ifaces[0]["name"], "lo");
    // loopback's 127.0.0.1/8 and ::1/128 first, ours last, pointing at our pod interface.
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips[0]["address"], "127.0.0.1/8", "{result}");
    assert_eq!(ips.last().unwrap()["interface"], 3, "{result}");
    assert!(lab.block.cidr().contains(&pod_address(&result, "eth0")));
    rt.check(&list, t).unwrap();
    rt.del(&list, t, true).unwrap();
    assert!(lab.leases().is_empty() && lab.host_veths().is_empty());
}

/// A router's control socket in miniature: answers each connection's request with the next
/// of `answers`, after recording the request and whether that ADD's host end (named beside
/// the answer) was up at that moment.
fn fake_router(
    socket: &Path,
    node: String,
    answers: Vec<(&'static str, String)>,
) -> std::thread::JoinHandle<Vec<(Value, bool)>> {
    use std::io::{BufRead, Write};
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (answer, veth) in answers {
            let (c, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&c).read_line(&mut line).unwrap();
            let shown = ip(&["-n", &node, "-o", "link", "show", &veth]);
            assert!(shown.contains(&veth), "no {veth} while ADD waits: {shown}");
            let up = shown.contains(",UP");
            seen.push((serde_json::from_str(&line).unwrap(), up));
            (&c).write_all(answer.as_bytes()).unwrap();
        }
        seen
    })
}

#[test]
fn with_policy_add_waits_for_the_router_and_undoes_everything_without_it() {
    if !can_run("with_policy_add_waits_for_the_router_and_undoes_everything_without_it") {
        return;
    }
    let lab = Lab::new("wcpol", Flavor::Weft, "10.32.28.0/24");
    let socket = lab.state.join("control.sock");
    let mut conf = lab.plugin_conf();
    conf["cniVersion"] = json!("1.1.0");
    conf["name"] = json!("podnet");
    conf["policy"] = json!({"control_socket": socket, "timeout_seconds": 2});
    let stdin = conf.to_string();
    let pods: Vec<Netns> = ["a", "b", "c", "d"].iter().map(|n| lab.pod(n)).collect();
    let add = |i: usize, args: &str| {
        let (id, netns) = (format!("pol{i}"), pods[i].path());
        exec_plugin(
            &lab.node.name,
            "weft-cni",
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", args),
            ],
            stdin.as_bytes(),
        )
    };
    let kubelet =
        |name: &str| format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}");
    let veth_of = |i: usize| {
        host_veth_name(&Attachment {
            container_id: ContainerId::parse(&format!("pol{i}")).unwrap(),
            ifname: IfName::parse("eth0").unwrap(),
        })
    };
    let router = fake_router(
        &socket,
        lab.node.name.clone(),
        vec![
            ("{\"result\":\"pod_ready\",\"enforced\":true}\n", veth_of(0)),
            (
                "{\"result\":\"error\",\"message\":\"pod default/b: the API server says it is Failed\"}\n",
                veth_of(1),
            ),
        ],
    );

    // The router confirms: the pod is attached, its host end up only now.
    let a = add(0, &kubelet("a"));
    assert!(a.success, "{a:?}");
    let address = pod_address(&a.json(), "eth0");
    let veth = veth_of(0);
    assert!(ip(&["-n", &lab.node.name, "-o", "link", "show", &veth]).contains(",UP"));
    assert!(
        ping(&pods[0].name, lab.block.gateway()),
        "a reaches its gateway"
    );

    // The router refuses: code 11 with its reason, and nothing of b is left.
    let b = add(1, &kubelet("b"));
    assert_eq!(b.code(), 11, "{b:?}");
    assert!(
        b.msg().contains("the API server says it is Failed"),
        "{}",
        b.msg()
    );
    let seen = router.join().unwrap();
    assert_eq!(
        seen[0].0,
        json!({"command": "pod_added", "namespace": "default", "name": "a",
            "address": address.to_string()})
    );
    assert!(
        !seen[0].1 && !seen[1].1,
        "a host end was up while waiting: {seen:?}"
    );
    assert_eq!(lab.host_veths(), std::slice::from_ref(&veth));
    assert_eq!(lab.leases(), [address.to_string()]);
    assert!(
        pods[1].links().iter().all(|l| l == "lo"),
        "{:?}",
        pods[1].links()
    );

    // No router at all: code 11 at once; no pod named: code 4 before anything is made.
    std::fs::remove_file(&socket).unwrap();
    let c = add(2, &kubelet("c"));
    assert_eq!(c.code(), 11, "{c:?}");
    assert!(
        c.msg().contains("cannot reach the weft router"),
        "{}",
        c.msg()
    );
    let d = add(3, "IgnoreUnknown=1");
    assert_eq!(d.code(), 4, "{d:?}");
    assert!(d.msg().contains("K8S_POD_NAMESPACE"), "{}", d.msg());
    assert_eq!(lab.host_veths(), [veth]);
    assert_eq!(lab.leases(), [address.to_string()]);
}
