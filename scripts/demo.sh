#!/usr/bin/env bash
# The quick start: builds weft, brings up a 3-node lab (network namespaces on this machine,
# a real `weft router` per node, 2 pods per node attached by weft-cni), and shows pods on
# different nodes talking through the encrypted tunnels. Run as root. The lab stays up for
# you to explore; `./target/release/weft lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/release:$PATH"

scripts/install-deps.sh
echo "== building weft (release)"
cargo build --release --workspace --bins --locked

echo "== bringing up the lab: 3 nodes, 2 pods each"
weft lab up --nodes 3 --pods 2

status() { weft lab status --json; }
addr() { status | python3 -c "import json,sys; print(next(p['address'] for p in json.load(sys.stdin)['pods'] if p['name']=='$1'))"; }
# node NAME FIELD: a field of a node in the lab's state (namespace, state_dir, ...).
node() { status | python3 -c "import json,sys; print(next(n['$2'] for n in json.load(sys.stdin)['nodes'] if n['name']=='$1'))"; }
far=$(addr n3-p2)

echo
echo "== node n1 and its peers (weft status, from inside node n1)"
ip netns exec "$(node n1 namespace)" weft status --state-dir "$(node n1 state_dir)"

echo "== ping from pod n1-p1 (node n1) to pod n3-p2 ($far, node n3)"
weft lab exec n1-p1 -- ping -c 3 -i 0.2 -W 2 "$far" | tail -2

echo
echo "== TCP from n1-p1 to n3-p2 through the tunnel (iperf3, 3 s)"
weft lab exec n3-p2 -- iperf3 -s -1 -D >/dev/null
sleep 0.5
weft lab exec n1-p1 -- iperf3 -c "$far" -t 3 -f m | grep -E "sender|receiver"

echo
echo "== what the underlay sees while a pod pings with the pattern 'weft!weft!'"
pcap=$(mktemp /tmp/weft-demo.XXXXXX.pcap)
ip netns exec weft-u timeout 3 tcpdump -i sw -w "$pcap" -U -q 2>/dev/null &
sleep 1
weft lab exec n1-p1 -- ping -c 3 -i 0.2 -p 7765667421 "$far" >/dev/null
wait || true
tcpdump -r "$pcap" -nn -q 2>/dev/null | grep -v -i arp | head -6
if tcpdump -r "$pcap" -x 2>/dev/null | tr -d ' \n' | grep -qi 7765667421; then
  echo "!! the plaintext pattern appeared on the underlay"
  exit 1
fi
echo "   $(tcpdump -r "$pcap" -nn 2>/dev/null | grep -c 'UDP') UDP datagrams between nodes on port 6786; the pattern appears in none"
rm -f "$pcap"

echo
echo "The lab is still up. Try:"
echo "  ./target/release/weft lab status"
echo "  ./target/release/weft lab exec n2-p1 -- ping $far"
echo "  ip netns exec $(node n2 namespace) ./target/release/weft peers --state-dir $(node n2 state_dir)"
echo "  ./target/release/weft report --state-dir $(node n1 state_dir)"
echo "  ./target/release/weft lab ui n1     # prints a loopback address: the live page of n1"
echo "  ./target/release/weft lab down"
