#!/usr/bin/env python3
"""bench/policy-cluster.py: the cluster bench/policy-update.sh times rule updates on.

The same shape as policy/benches/support/mod.rs (the engine's benchmark): 300 pods in 10
namespaces spread over the lab's nodes, 100 NetworkPolicies mixing pod and namespace
selectors, ipBlocks with except, numbered and named ports, ingress and egress. Here the
pods get their addresses from the lab (weft-cni), so the ipBlocks are written against the
lab's cluster range, and one of the 100 policies is the "toggle" policy that the update
benchmark changes.

  bench/policy-cluster.py model --nodes N          Namespaces and Pods for `weft lab up --model`
  bench/policy-cluster.py policies --toggle T       the 100 NetworkPolicies (kubectl apply -f)
  bench/policy-cluster.py toggle --toggle T --mark K
                                                    only the toggle policy, with marker K

Each writes its objects on stdout as YAML documents, one JSON object each (JSON is YAML):
both `weft lab up --model` and `kubectl apply -f` read them. (Not one `v1` List: kubectl's
validation asks the server for a List schema that the lab's API server does not serve.)

The toggle policy (namespace ns0, name toggle) isolates pods for ingress and allows, among
other things, TCP 8080 from the ipBlock 198.51.100.K/32 (documentation space, no pod has it),
K = --mark (0-255). The address 198.51.100.K then appears in the rules of every node that
holds a pod the policy selects, so changing K is a change whose arrival in the kernel can be
seen in `nft list table ip weft`. --toggle all: it selects every pod of ns0, which has pods
on every node; --toggle n1: only ns0's pods on node n1 (label weft-bench/node=n1), so the
other nodes' rules do not change.
"""

import argparse
import json
import sys

NAMESPACES = 10
PODS_PER_NAMESPACE = 30
POLICIES = 100  # the toggle policy included
NODE_LABEL = "weft-bench/node"


def model(nodes):
    items = []
    for n in range(NAMESPACES):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": f"ns{n}", "labels": {"team": f"t{n % 3}"}},
            }
        )
    for n in range(NAMESPACES):
        for p in range(PODS_PER_NAMESPACE):
            i = n * PODS_PER_NAMESPACE + p
            node = f"n{i % nodes + 1}"
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"p{p}",
                        "namespace": f"ns{n}",
                        "labels": {
                            "app": f"app{p % 5}",
                            "tier": ["web", "db", "cache"][p % 3],
                            NODE_LABEL: node,
                        },
                    },
                    "spec": {
                        "nodeName": node,
                        "containers": [
                            {
                                "name": "c",
                                "ports": [
                                    {"containerPort": 8080, "name": "http"},
                                    {"containerPort": 5353, "name": "dns", "protocol": "UDP"},
                                ],
                            }
                        ],
                    },
                }
            )
    return items


def policy(i):
    """Policy i of the 99 fixed ones: the four kinds of policy/benches/support/mod.rs."""
    ns = f"ns{i % NAMESPACES}"
    kind = i % 4
    if kind == 0:
        spec = {
            "podSelector": {"matchLabels": {"app": f"app{i % 5}"}},
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": "http"}]}
            ],
        }
    elif kind == 1:
        spec = {
            "podSelector": {
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db", "cache"]}]
            },
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": "t1"}},
                            "podSelector": {"matchLabels": {"tier": "web"}},
                        }
                    ],
                    "ports": [{"port": 5432, "endPort": 5440}],
                }
            ],
        }
    elif kind == 2:
        spec = {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.0.0/16", "except": ["10.32.1.0/24"]}}]}],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}]},
                {
                    "to": [{"namespaceSelector": {}}],
                    "ports": [{"port": "dns", "protocol": "UDP"}, {"port": 8080}],
                },
            ],
        }
    else:
        spec = {
            "podSelector": {"matchLabels": {"tier": "cache"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]}],
        }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": f"pol{i}"},
        "spec": spec,
    }


def toggle(which, mark):
    selector = {} if which == "all" else {"matchLabels": {NODE_LABEL: "n1"}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "ns0", "name": "toggle"},
        "spec": {
            "podSelector": selector,
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": f"198.51.100.{mark}/32"}}],
                    "ports": [{"port": 8080, "protocol": "TCP"}],
                },
                {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": "http"}]},
            ],
        },
    }


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("what", choices=["model", "policies", "toggle"])
    ap.add_argument("--nodes", type=int, default=3, help="the lab's nodes (model; default 3)")
    ap.add_argument("--toggle", choices=["all", "n1"], default="all", help="which pods the toggle policy selects")
    ap.add_argument("--mark", type=int, default=0, help="K of the toggle policy's 198.51.100.K/32 (0-255)")
    a = ap.parse_args()
    if a.nodes < 1 or a.nodes > 200:
        ap.error("--nodes must be 1-200")
    if not 0 <= a.mark <= 255:
        ap.error("--mark must be 0-255")
    if a.what == "model":
        items = model(a.nodes)
    elif a.what == "policies":
        items = [policy(i) for i in range(POLICIES - 1)] + [toggle(a.toggle, a.mark)]
    else:
        items = [toggle(a.toggle, a.mark)]
    for item in items:
        sys.stdout.write("---\n")
        json.dump(item, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
