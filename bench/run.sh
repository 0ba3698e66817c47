#!/usr/bin/env bash
# bench/run.sh: weft's data-path benchmark (issue 5, item 7).
#
# In one run it builds the release binaries, brings up a 2-node lab (one pod per node) and
# measures TCP throughput (iperf3, one stream, RUNS runs of DURATION seconds each, median),
# ping round-trip time across the two nodes (idle, and alongside the transfers), and packets
# dropped inside the nodes, on up to three paths:
#
#   weft       pod n1-p1 -> pod n2-p1, through both weft routers (TUN + encrypted UDP 6786)
#   bare veth  node n1 -> node n2 over the underlay switch (198.18.0.1 -> 198.18.0.2), the
#              ceiling any overlay on this lab can reach
#   bare veth, 1 seg/packet
#              the same with n1's eth0 set to gso_max_segs 1, so that TCP crosses the veth
#              in MTU-sized packets instead of 64 KB offload segments: what the kernel alone
#              costs per packet, the ceiling of a tunnel without segmentation offloads
#   boringtun  node n1 -> node n2 through a userspace WireGuard tunnel (boringtun-cli, one
#              interface per node namespace, 198.19.254.1 <-> 198.19.254.2 over the underlay,
#              UDP 51820); only when boringtun-cli is on PATH
#
# and prints a table with each path's ratio to the bare veth. The rounds are interleaved
# (round 1: every path, round 2: every path, ...) so that load from other processes on the
# machine lands on all paths alike. Everything lives in the lab's namespaces; nothing is added
# to the root namespace, and the trap removes the lab, the tunnels and the temporary files
# whatever happens.
#
# Usage: bench/run.sh [--help]          (as root, from anywhere in the repository)
#
# Environment (defaults after the =):
#   RUNS=5            iperf3 runs per path; the table shows the median and the min-max
#   DURATION=5        seconds per iperf3 run (measured after a 1 s warm-up that iperf3 omits).
#                     Not SECONDS: that is bash's own running clock.
#   PINGS=50          pings per path per round (all rounds pooled for the median)
#   PING_INTERVAL=0.05  seconds between pings
#   PREFIX=wbench     the lab's namespace prefix (namespaces PREFIX-u, PREFIX-n1, ...)
#   BORINGTUN=auto    auto: measure boringtun when boringtun-cli is on PATH; 0: skip it;
#                     1: require it
#   NO_BUILD=0        1: skip `cargo build` and use the binaries already built
#   CARGO_TARGET_DIR  where cargo builds (default: target/ in the repository)
#   WEFT_REV=         what to call the source in the report when it is not a git checkout
#   OUT=              a directory to keep the raw results in (iperf3 JSON, ping output,
#                     router status and logs); by default they go to a temporary directory
#                     that is removed at the end
#
# Needs (Debian packages): iproute2, iperf3, jq, iputils-ping, mawk (or gawk), coreutils,
# sed, grep, git; for the boringtun row also wireguard-tools (wg) and boringtun-cli (not in
# Debian: `cargo install boringtun-cli`); a Rust toolchain unless NO_BUILD=1.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "bench/run.sh: no arguments expected (see --help); options are environment variables" >&2
    exit 2
fi

RUNS=${RUNS:-5}
DURATION=${DURATION:-5}
PINGS=${PINGS:-50}
PING_INTERVAL=${PING_INTERVAL:-0.05}
PREFIX=${PREFIX:-wbench}
BORINGTUN=${BORINGTUN:-auto}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}

die() { echo "bench/run.sh: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds)"
[[ $PINGS =~ ^[1-9][0-9]*$ ]] || die "PINGS must be a positive integer"
[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] || die "PREFIX must be 1-8 lowercase letters or digits"
[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces)"
for tool in ip iperf3 jq ping awk sort ss; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see --help for the packages)"
done
case $BORINGTUN in
auto) if command -v boringtun-cli >/dev/null && command -v wg >/dev/null; then BORINGTUN=1; else BORINGTUN=0; fi ;;
1) command -v boringtun-cli >/dev/null || die "BORINGTUN=1 but boringtun-cli is not on PATH"
   command -v wg >/dev/null || die "BORINGTUN=1 but wg (wireguard-tools) is not installed" ;;
0) ;;
*) die "BORINGTUN must be auto, 0 or 1" ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $TARGET == /* ]] || TARGET=$REPO/$TARGET
WEFT=$TARGET/release/weft

# --- what the trap removes --------------------------------------------------------------
WORK=$(mktemp -d /tmp/weft-bench.XXXXXX)
PIDS=()          # iperf3 servers and boringtun processes we started
BT_IFS=()        # boringtun interfaces (their UAPI sockets live in the shared /var/run)
LAB_UP=0

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ifname in "${BT_IFS[@]}"; do rm -f "/var/run/wireguard/$ifname.sock"; done
    if [[ $LAB_UP == 1 ]]; then
        if [[ -n $OUT ]]; then
            for i in 1 2; do
                cp "/run/weft-lab/$PREFIX/n$i/router.log" "$OUT/router-n$i.log" 2>/dev/null
            done
        fi
        "$WEFT" lab down --prefix "$PREFIX" >/dev/null || echo "bench: lab down failed" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n $OUT ]]; then mkdir -p "$OUT"; RAW=$OUT; else RAW=$WORK; fi

# --- build and lab ------------------------------------------------------------------------
if [[ $NO_BUILD != 1 ]]; then
    log "cargo build --release --workspace --bins (target: $TARGET)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release --workspace --bins)
fi
[[ -x $WEFT && -x $TARGET/release/weft-cni ]] || die "no release binaries in $TARGET/release"

LAB_UP=1  # from here on, `lab down` runs on exit (also after a half-built `lab up`)
log "weft lab up --nodes 2 --pods 1 --prefix $PREFIX"
"$WEFT" lab up --nodes 2 --pods 1 --prefix "$PREFIX" >&2
"$WEFT" lab status --prefix "$PREFIX" --json >"$RAW/lab.json"

jqs() { jq -er "$1" "$RAW/lab.json"; }
N1=$(jqs '.nodes[] | select(.name=="n1") | .namespace')
N2=$(jqs '.nodes[] | select(.name=="n2") | .namespace')
N1_ADDR=$(jqs '.nodes[] | select(.name=="n1") | .underlay | split("/")[0]')
N2_ADDR=$(jqs '.nodes[] | select(.name=="n2") | .underlay | split("/")[0]')
P1=$(jqs '.pods[] | select(.node=="n1") | .namespace')
P2=$(jqs '.pods[] | select(.node=="n2") | .namespace')
P2_ADDR=$(jqs '.pods[] | select(.node=="n2") | .address')
POD_MTU=$(jqs '.pod_mtu')

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Waits (up to 30 s) until `ping` from namespace $1 reaches $2.
wait_reachable() {
    local ns=$1 addr=$2 what=$3 i
    for ((i = 0; i < 60; i++)); do
        if in_ns "$ns" ping -n -c 1 -W 1 "$addr" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    die "$what: $addr is not reachable from $ns after 30 s"
}

wait_reachable "$N1" "$N2_ADDR" "bare veth"
wait_reachable "$P1" "$P2_ADDR" "weft (pod n1-p1 -> pod n2-p1)"

# --- boringtun ----------------------------------------------------------------------------
BT_ADDR=(unused 198.19.254.1 198.19.254.2)
BT_PORT=51820
BT_MTU=1420  # 1500 - 80, wg-quick's default for an IPv4/IPv6 underlay
if [[ $BORINGTUN == 1 ]]; then
    mkdir -p /var/run/wireguard
    for i in 1 2; do
        BT_IFS[i]="wbt$PREFIX$i"
        rm -f "/var/run/wireguard/${BT_IFS[i]}.sock"  # left by a crashed run
        (umask 077 && wg genkey >"$WORK/bt$i.key")
        wg pubkey <"$WORK/bt$i.key" >"$WORK/bt$i.pub"
    done
    for i in 1 2; do
        ns=$([[ $i == 1 ]] && echo "$N1" || echo "$N2")
        # Foreground in the background, so that we hold its pid; it keeps root (no setuid
        # dance) since it lives and dies with the lab's namespace.
        ip netns exec "$ns" boringtun-cli --foreground --disable-drop-privileges "${BT_IFS[i]}" \
            >"$RAW/boringtun-n$i.log" 2>&1 &
        PIDS+=($!)
    done
    for i in 1 2; do
        ns=$([[ $i == 1 ]] && echo "$N1" || echo "$N2")
        j=$((3 - i))
        peer_underlay=$([[ $j == 1 ]] && echo "$N1_ADDR" || echo "$N2_ADDR")
        for ((k = 0; k < 50; k++)); do
            [[ -S /var/run/wireguard/${BT_IFS[i]}.sock ]] && ip -n "$ns" link show "${BT_IFS[i]}" >/dev/null 2>&1 && break
            sleep 0.1
        done
        [[ -S /var/run/wireguard/${BT_IFS[i]}.sock ]] || die "boringtun-cli did not start in $ns (log: $(cat "$RAW/boringtun-n$i.log"))"
        in_ns "$ns" wg set "${BT_IFS[i]}" listen-port "$BT_PORT" private-key "$WORK/bt$i.key" \
            peer "$(cat "$WORK/bt$j.pub")" endpoint "$peer_underlay:$BT_PORT" \
            allowed-ips "${BT_ADDR[j]}/32"
        ip -n "$ns" addr add "${BT_ADDR[i]}/24" dev "${BT_IFS[i]}"
        ip -n "$ns" link set "${BT_IFS[i]}" mtu "$BT_MTU" up
    done
    wait_reachable "$N1" "${BT_ADDR[2]}" "boringtun"
fi

# --- servers ------------------------------------------------------------------------------
# One iperf3 server in pod n2-p1 (weft) and one in node n2 (bare veth and boringtun).
start_server() {
    local ns=$1 name=$2 k
    ip netns exec "$ns" iperf3 -s >"$RAW/iperf3-server-$name.log" 2>&1 &
    PIDS+=($!)
    for ((k = 0; k < 50; k++)); do
        in_ns "$ns" ss -Htln 'sport = :5201' | grep -q . && return 0
        sleep 0.1
    done
    die "iperf3 server in $ns did not start"
}
start_server "$P2" pod
start_server "$N2" node

# path key -> (client namespace, server address, label)
# bare1 is the bare veth with node n1's eth0 limited to one segment per GSO packet
# (gso_max_segs 1), so that TCP crosses it in MTU-sized packets as it crosses a tunnel that
# has no segmentation offload: the kernel's own per-packet ceiling on this machine.
PATHS=(bare bare1 weft)
declare -A CLIENT=([bare]=$N1 [bare1]=$N1 [weft]=$P1)
declare -A SERVER=([bare]=$N2_ADDR [bare1]=$N2_ADDR [weft]=$P2_ADDR)
declare -A LABEL=([bare]="bare veth (node->node)" [bare1]="bare veth, 1 seg/packet"
    [weft]="weft (pod->pod)")
GSO_SEGS=$(ip -n "$N1" -d -j link show eth0 | jq -r '.[0].gso_max_segs')
if [[ $BORINGTUN == 1 ]]; then
    PATHS+=(boringtun)
    CLIENT[boringtun]=$N1 SERVER[boringtun]=${BT_ADDR[2]}
    LABEL[boringtun]="boringtun (node->node)"
fi

# --- measure ------------------------------------------------------------------------------
# Where packets are lost inside the two node namespaces: datagrams the kernel dropped because
# a UDP socket's receive buffer was full (weft's or boringtun's, on either node), plus packets
# dropped on the way into a tunnel device's queue (TX on weft-tun or the boringtun interface:
# the router did not read fast enough). Summed over both nodes, read before and after each run.
tun_dev() { # path, node number -> its tunnel device in that node's namespace (or nothing)
    case $1 in weft) echo weft-tun ;; boringtun) echo "${BT_IFS[$2]}" ;; esac
}
drop_counter() {
    local p=$1 i ns dev total=0 n
    for i in 1 2; do
        ns=$([[ $i == 1 ]] && echo "$N1" || echo "$N2")
        n=$(in_ns "$ns" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) k[i] = $i; h = 1 }
            else for (i = 1; i <= NF; i++) if (k[i] == "RcvbufErrors") print $i }' /proc/net/snmp)
        total=$((total + n))
        dev=$(tun_dev "$p" "$i")
        if [[ -n $dev ]]; then
            n=$(ip -n "$ns" -s -j link show "$dev" | jq -r '.[0].stats64.tx.dropped')
            total=$((total + n))
        fi
    done
    echo "$total"
}

LOADED_PINGS=$(((DURATION - 1) * 10)); ((LOADED_PINGS > 0)) || LOADED_PINGS=1
iperf_once() {
    local p=$1 r=$2 f="$RAW/iperf3-$1-$2.json" try
    local before
    before=$(drop_counter "$p")
    for try in 1 2 3; do
        # Round-trip time under load: pings alongside the transfer, from 1.5 s in (past the
        # omitted warm-up second) to 0.5 s before its end, 10 a second.
        (sleep 1.5 && exec ip netns exec "${CLIENT[$p]}" ping -n -c "$LOADED_PINGS" -i 0.1 -W 2 \
            "${SERVER[$p]}") >"$RAW/ping-loaded-$p-$r.txt" 2>&1 &
        local pinger=$!
        if in_ns "${CLIENT[$p]}" iperf3 -c "${SERVER[$p]}" -t "$DURATION" -O 1 -J >"$f" 2>&1; then
            wait "$pinger" || true
            sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' "$RAW/ping-loaded-$p-$r.txt" >>"$WORK/lrtt-$p"
            jq -er '.end.sum_received.bits_per_second' "$f" >>"$WORK/bps-$p"
            jq -er '.end.sum_sent.retransmits // 0' "$f" >>"$WORK/retr-$p"
            echo $(($(drop_counter "$p") - before)) >>"$WORK/drops-$p"
            return 0
        fi
        kill "$pinger" 2>/dev/null || true
        wait "$pinger" 2>/dev/null || true
        log "iperf3 $p run $r failed (try $try): $(jq -r '.error // empty' "$f" 2>/dev/null || head -c 300 "$f")"
        sleep 1
    done
    die "iperf3 on path $p failed three times (see $f)"
}

ping_once() {
    local p=$1 r=$2 f="$RAW/ping-$1-$2.txt"
    # Not fatal on loss: the loss is reported.
    in_ns "${CLIENT[$p]}" ping -n -c "$PINGS" -i "$PING_INTERVAL" -W 1 "${SERVER[$p]}" >"$f" 2>&1 || true
    sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' "$f" >>"$WORK/rtt-$p"
    echo "$PINGS" >>"$WORK/sent-$p"
}

for p in "${PATHS[@]}"; do : >"$WORK/bps-$p"; : >"$WORK/retr-$p"; : >"$WORK/drops-$p"; : >"$WORK/lrtt-$p"; : >"$WORK/rtt-$p"; : >"$WORK/sent-$p"; done
for ((r = 1; r <= RUNS; r++)); do
    for p in "${PATHS[@]}"; do
        log "round $r/$RUNS: $p"
        [[ $p != bare1 ]] || ip -n "$N1" link set eth0 gso_max_segs 1
        ping_once "$p" "$r"
        iperf_once "$p" "$r"
        [[ $p != bare1 ]] || ip -n "$N1" link set eth0 gso_max_segs "$GSO_SEGS"
    done
done

if [[ -n $OUT ]]; then
    for i in 1 2; do
        ns=$([[ $i == 1 ]] && echo "$N1" || echo "$N2")
        in_ns "$ns" "$WEFT" status --json --state-dir "/run/weft-lab/$PREFIX/n$i" \
            >"$RAW/weft-status-n$i.json" 2>&1 || true
        ip -n "$ns" -s link >"$RAW/links-n$i.txt" 2>&1 || true
        in_ns "$ns" cat /proc/net/snmp >"$RAW/snmp-n$i.txt" 2>&1 || true
    done
fi

# --- report -------------------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
minimum() { sort -g | head -n1; }
maximum() { sort -g | tail -n1; }

BARE=$(median <"$WORK/bps-bare")
cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
if rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    git -C "$REPO" diff --quiet HEAD -- || rev="$rev + uncommitted changes"
else
    rev="${WEFT_REV:-unknown (not a git checkout; set WEFT_REV)}"
fi

echo
if [[ $NO_BUILD == 1 ]]; then
    rev="binaries not rebuilt (NO_BUILD=1; weft built $(date -u -r "$WEFT" '+%Y-%m-%d %H:%M UTC')), source here: $rev"
fi
echo "weft benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), weft $rev"
echo "machine: $(nproc) CPUs ($cpu), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "iperf3: 1 TCP stream, $RUNS runs x ${DURATION} s (+1 s omitted) per path; ping: $RUNS x $PINGS at ${PING_INTERVAL} s idle, $RUNS x $LOADED_PINGS at 0.1 s loaded"
echo "pod MTU $POD_MTU; boringtun MTU $BT_MTU; underlay MTU 1500"
echo
printf '%-24s %14s %15s %9s %8s %8s %10s %7s %10s\n' PATH "Gbit/s median" "min-max" "vs bare" "retr" "drops" "ping ms" "loss" "loaded ms"
for p in "${PATHS[@]}"; do
    med=$(median <"$WORK/bps-$p")
    lo=$(minimum <"$WORK/bps-$p")
    hi=$(maximum <"$WORK/bps-$p")
    retr=$(median <"$WORK/retr-$p")
    drops=$(median <"$WORK/drops-$p")
    lrtt=$(median <"$WORK/lrtt-$p")
    rtt=$(median <"$WORK/rtt-$p")
    sent=$(awk '{ s += $1 } END { print s }' "$WORK/sent-$p")
    got=$(wc -l <"$WORK/rtt-$p")
    awk -v l="${LABEL[$p]}" -v m="$med" -v lo="$lo" -v hi="$hi" -v b="$BARE" -v retr="$retr" \
        -v drops="$drops" -v lrtt="$lrtt" -v rtt="$rtt" -v sent="$sent" -v got="$got" 'BEGIN {
        printf "%-24s %14.2f %7.2f-%-7.2f %8.1f%% %8d %8d %10.3f %6.1f%% %10.3f\n",
            l, m / 1e9, lo / 1e9, hi / 1e9, 100 * m / b, retr, drops, rtt, 100 * (sent - got) / sent, lrtt }'
done
echo
echo "(vs bare: throughput median / bare veth median; retr: median TCP retransmissions per run;"
echo " drops: median per run of UDP receive-buffer drops + tunnel-device queue drops on both nodes;"
echo " ping: median RTT of an idle path over all rounds; loss: its ping loss;"
echo " loaded: median RTT of pings sent alongside the iperf3 transfers, 10 a second)"
[[ $BORINGTUN == 1 ]] || echo "(boringtun row skipped: boringtun-cli or wg not found, or BORINGTUN=0)"
[[ -z $OUT ]] || echo "(raw results in $OUT)"
