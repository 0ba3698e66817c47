#!/usr/bin/env bash
# bench/run.sh: weft's data-path benchmark.
#
# In one run it builds the release binaries, brings up a 2-node lab (one pod per node) and
# measures, on up to seven paths: TCP throughput with one stream and with four (iperf3 -P 4;
# RUNS runs of DURATION seconds each, median), ping round-trip time across the two nodes
# (idle, and alongside the one-stream transfers), packets dropped inside the nodes, and for
# the tunnels the CPU time both tunnel processes spend per GB moved and their peak memory:
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
#   gotatun    the same through Mullvad's fork of boringtun (the `gotatun` binary of
#              gotatun-cli; 198.19.253.1 <-> 198.19.253.2, UDP 51821); only when gotatun is
#              on PATH
#   baseline   pod n1-p1 -> pod n2-p1 of a second lab run by other weft binaries (an earlier
#              commit's, from WEFT_BASELINE), to compare two versions of weft in one run;
#              only when WEFT_BASELINE is set
#   weft, API lab, no policy
#              pod bench/client (node n1) -> pod bench/server (node n2) of a second lab run
#              under --api (prefix API_PREFIX, pods from bench/policy-row-model.yaml): the
#              routers in Kubernetes mode against the lab's API server, enforcing
#              NetworkPolicy, with no NetworkPolicy in it (their table holds only the
#              masquerade); only with POLICY on
#   weft + policy
#              the same pods of the same lab with the NetworkPolicies of
#              bench/policy-row-policies.yaml applied (kubectl apply): they isolate the client
#              for egress and the server for ingress and allow the traffic, beside unrelated
#              ones that isolate the lab's other pods, so that every packet the nodes forward
#              meets the policy chain and every new connection walks both pods' chains. Each
#              round deletes the policies before the no-policy row and applies them before
#              this one, and waits until both nodes' tables show it
#
# and prints a table with each path's ratio to the bare veth, weft's ratios to boringtun and
# gotatun, and weft's figures against its performance targets. The rounds are interleaved
# (round 1: every path, round 2: every path, ...) so that load from other processes on the
# machine lands on all paths alike. Everything lives in the lab's namespaces; nothing is added
# to the root namespace, and the trap removes the lab, the tunnels and the temporary files
# whatever happens.
#
# Per path and round: PINGS idle pings; one iperf3 stream for 1 + DURATION s (the first
# second omitted) with 10 pings a second alongside it; then four streams (iperf3 -P 4) for as
# long. CPU-s/GB: user + system time of the path's two tunnel processes (both weft routers;
# both boringtun-cli or gotatun processes), all threads, from /proc/PID/stat (utime + stime,
# in CLK_TCK ticks) before and after each one-stream run, divided by the GB (10^9 bytes)
# received in it: iperf3's end.sum_received.bytes plus the bytes of the omitted warm-up
# second, which the CPU time also covers. Peak RSS: the larger VmHWM (/proc/PID/status) of
# the two tunnel processes, read after the last round.
#
# Usage: bench/run.sh [--help]          (as root, from anywhere in the repository)
#
# Environment (defaults after the =):
#   RUNS=5            iperf3 runs per path and stream count; the table shows the median and
#                     the min-max (the targets ask for medians of at least 5 runs)
#   DURATION=5        seconds per iperf3 run (measured after a 1 s warm-up that iperf3 omits).
#                     Not SECONDS: that is bash's own running clock.
#   PINGS=50          pings per path per round (all rounds pooled for the median)
#   PING_INTERVAL=0.05  seconds between pings
#   PREFIX=wbench     the lab's namespace prefix (namespaces PREFIX-u, PREFIX-n1, ...)
#   BORINGTUN=auto    auto: measure boringtun when boringtun-cli is on PATH; 0: skip it;
#                     1: require it
#   GOTATUN=auto      the same for gotatun (`cargo install gotatun-cli` installs `gotatun`)
#   WEFT_OFFLOAD=     on, off or auto: handed to the lab's routers through the environment
#                     (`weft lab up` passes its environment on to them) for their --offload
#                     flag; unset: the router's default. A router without that flag ignores it
#                     (the report says so).
#   NO_BUILD=0        1: skip `cargo build` and use the binaries already built
#   WEFT_BASELINE=    a directory holding release `weft` and `weft-cni` binaries of another
#                     version (for example an earlier commit's target/release): adds the
#                     baseline row, measured in a second lab (prefix BASE_PREFIX) side by side
#                     with this version in the same rounds, and their ratios
#   BASE_PREFIX=wbase the baseline lab's namespace prefix
#   WEFT_BASELINE_REV=  what to call the baseline in the report (default: its --version)
#   POLICY=auto       auto: the two NetworkPolicy rows when kubectl and nft are on PATH; 0: skip them;
#                     1: require them
#   API_PREFIX=wbapi  the --api lab's namespace prefix
#   CARGO_TARGET_DIR  where cargo builds (default: target/ in the repository)
#   WEFT_REV=         what to call the source in the report when it is not a git checkout
#   OUT=              a directory to keep the raw results in (iperf3 JSON, ping output,
#                     router status and logs, the tunnel processes' /proc status); by default
#                     they go to a temporary directory that is removed at the end
#
# Needs (Debian packages): iproute2, iperf3, jq, iputils-ping, mawk (or gawk), coreutils,
# sed, grep, git; kubectl and nftables (nft) for the NetworkPolicy rows; for the boringtun and gotatun rows also wireguard-tools (wg) and
# boringtun-cli or gotatun (not in Debian: `cargo install boringtun-cli`, `cargo install
# gotatun-cli`); a Rust toolchain unless NO_BUILD=1.
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
GOTATUN=${GOTATUN:-auto}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}
BASELINE=${WEFT_BASELINE:-}
BASE_PREFIX=${BASE_PREFIX:-wbase}
POLICY=${POLICY:-auto}
API_PREFIX=${API_PREFIX:-wbapi}

die() { echo "bench/run.sh: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer (seconds)"
[[ $PINGS =~ ^[1-9][0-9]*$ ]] || die "PINGS must be a positive integer"
[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] || die "PREFIX must be 1-8 lowercase letters or digits"
if [[ -n $BASELINE ]]; then
    [[ $BASE_PREFIX =~ ^[a-z0-9]{1,8}$ ]] || die "BASE_PREFIX must be 1-8 lowercase letters or digits"
    [[ $BASE_PREFIX != "$PREFIX" ]] || die "BASE_PREFIX must differ from PREFIX"
    [[ -x $BASELINE/weft && -x $BASELINE/weft-cni ]] ||
        die "WEFT_BASELINE=$BASELINE holds no executable weft and weft-cni"
    BASELINE=$(cd "$BASELINE" && pwd)
fi
case $POLICY in
auto) if command -v kubectl >/dev/null && command -v nft >/dev/null; then POLICY=1; else POLICY=0; fi ;;
1) command -v kubectl >/dev/null || die "POLICY=1 but kubectl is not on PATH"
   command -v nft >/dev/null || die "POLICY=1 but nft (nftables) is not on PATH" ;;
0) ;;
*) die "POLICY must be auto, 0 or 1" ;;
esac
if [[ $POLICY == 1 ]]; then
    [[ $API_PREFIX =~ ^[a-z0-9]{1,8}$ ]] || die "API_PREFIX must be 1-8 lowercase letters or digits"
    [[ $API_PREFIX != "$PREFIX" && $API_PREFIX != "$BASE_PREFIX" ]] ||
        die "API_PREFIX must differ from PREFIX and BASE_PREFIX"
fi
case ${WEFT_OFFLOAD-unset} in
unset | on | off | auto) ;;
*) die "WEFT_OFFLOAD must be on, off or auto (or unset)" ;;
esac
[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces)"
for tool in ip iperf3 jq ping awk sort ss getconf; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see --help for the packages)"
done

# WireGuard implementations: the path's name -> its binary (both take the same arguments and
# serve wg's UAPI socket in /var/run/wireguard).
declare -A WG_BIN=([boringtun]=boringtun-cli [gotatun]=gotatun)
declare -A WANT=([boringtun]=$BORINGTUN [gotatun]=$GOTATUN)
WG_PATHS=()
for impl in boringtun gotatun; do
    knob=${impl^^} bin=${WG_BIN[$impl]}
    case ${WANT[$impl]} in
    auto) if command -v "$bin" >/dev/null && command -v wg >/dev/null; then WG_PATHS+=("$impl"); fi ;;
    1) command -v "$bin" >/dev/null || die "$knob=1 but $bin is not on PATH"
       command -v wg >/dev/null || die "$knob=1 but wg (wireguard-tools) is not installed"
       WG_PATHS+=("$impl") ;;
    0) ;;
    *) die "$knob must be auto, 0 or 1" ;;
    esac
done
has_wg() { [[ " ${WG_PATHS[*]} " == *" $1 "* ]]; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $TARGET == /* ]] || TARGET=$REPO/$TARGET
WEFT=$TARGET/release/weft

# --- what the trap removes --------------------------------------------------------------
WORK=$(mktemp -d /tmp/weft-bench.XXXXXX)
PIDS=()          # iperf3 servers and WireGuard processes we started
WG_IFS=()        # WireGuard interfaces (their UAPI sockets live in the shared /var/run)
LAB_UP=0
BASE_UP=0
API_UP=0
NODE_DIR=()      # the nodes' state directories, from `weft lab status --json`
API_DIR=()       # the same for the --api lab

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ifname in "${WG_IFS[@]}"; do rm -f "/var/run/wireguard/$ifname.sock"; done
    if [[ $LAB_UP == 1 ]]; then
        if [[ -n $OUT ]]; then
            for i in 1 2; do
                [[ -n ${NODE_DIR[i]:-} ]] && cp "${NODE_DIR[i]}/router.log" "$OUT/router-n$i.log" 2>/dev/null
            done
        fi
        "$WEFT" lab down --prefix "$PREFIX" >/dev/null || echo "bench: lab down failed" >&2
    fi
    if [[ $BASE_UP == 1 ]]; then
        "$BASELINE/weft" lab down --prefix "$BASE_PREFIX" >/dev/null ||
            echo "bench: baseline lab down failed" >&2
    fi
    if [[ $API_UP == 1 ]]; then
        if [[ -n $OUT ]]; then
            for i in 1 2; do
                [[ -n ${API_DIR[i]:-} ]] && cp "${API_DIR[i]}/router.log" "$OUT/router-api-n$i.log" 2>/dev/null
            done
        fi
        "$WEFT" lab down --prefix "$API_PREFIX" >/dev/null || echo "bench: API lab down failed" >&2
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

# The lab starts its routers with its own environment, so WEFT_OFFLOAD reaches them as the
# env default of their --offload flag (clap ignores it where the flag does not exist yet).
if [[ -n ${WEFT_OFFLOAD:-} ]]; then
    export WEFT_OFFLOAD
    if "$WEFT" router --help 2>/dev/null | grep -q -- '--offload'; then
        OFFLOAD_NOTE="WEFT_OFFLOAD=$WEFT_OFFLOAD (to the routers through the lab's environment)"
    else
        OFFLOAD_NOTE="WEFT_OFFLOAD=$WEFT_OFFLOAD set, but this weft's router has no --offload flag: ignored"
        log "$OFFLOAD_NOTE"
    fi
else
    OFFLOAD_NOTE="router default (WEFT_OFFLOAD unset)"
fi

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
NODE_NS=(unused "$N1" "$N2")
NODE_ADDR=(unused "$N1_ADDR" "$N2_ADDR")
NODE_DIR=(unused "$(jqs '.nodes[] | select(.name=="n1") | .state_dir')" \
    "$(jqs '.nodes[] | select(.name=="n2") | .state_dir')")

# The tunnel processes of each path, both nodes: path -> "pid1 pid2". The lab records its
# routers' pids (`ip netns exec` execs the router, so the pid it started is the router's).
declare -A TPIDS=()
# The router pids of nodes n1 and n2 in a lab's status JSON ($1), checked to be running.
router_pids() {
    local pids pid
    pids=$(jq -er '[.nodes[] | select(.name=="n1" or .name=="n2") | .router_pid | tostring] | join(" ")' "$1")
    for pid in $pids; do
        [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || die "router pid $pid (from $1) is not running"
    done
    echo "$pids"
}
TPIDS[weft]=$(router_pids "$RAW/lab.json")

# The baseline: a second lab of the same shape, run by the other binaries. Its namespaces
# carry their own prefix, so the two labs' addresses never meet.
if [[ -n $BASELINE ]]; then
    BASE_UP=1
    log "baseline: $BASELINE/weft lab up --nodes 2 --pods 1 --prefix $BASE_PREFIX"
    "$BASELINE/weft" lab up --nodes 2 --pods 1 --prefix "$BASE_PREFIX" >&2
    "$BASELINE/weft" lab status --prefix "$BASE_PREFIX" --json >"$RAW/lab-baseline.json"
    jqb() { jq -er "$1" "$RAW/lab-baseline.json"; }
    B_N1=$(jqb '.nodes[] | select(.name=="n1") | .namespace')
    B_N2=$(jqb '.nodes[] | select(.name=="n2") | .namespace')
    B_P1=$(jqb '.pods[] | select(.node=="n1") | .namespace')
    B_P2=$(jqb '.pods[] | select(.node=="n2") | .namespace')
    B_P2_ADDR=$(jqb '.pods[] | select(.node=="n2") | .address')
    TPIDS[baseline]=$(router_pids "$RAW/lab-baseline.json")
    BASE_REV=${WEFT_BASELINE_REV:-$("$BASELINE/weft" --version 2>&1 | head -n1)}
fi

# The NetworkPolicy lab: 2 nodes under --api with the pods of bench/policy-row-model.yaml.
if [[ $POLICY == 1 ]]; then
    API_UP=1
    log "NetworkPolicy rows: weft lab up --nodes 2 --pods 0 --api --model bench/policy-row-model.yaml --prefix $API_PREFIX"
    "$WEFT" lab up --nodes 2 --pods 0 --api --model "$REPO/bench/policy-row-model.yaml" \
        --prefix "$API_PREFIX" >&2
    "$WEFT" lab status --prefix "$API_PREFIX" --json >"$RAW/lab-api.json"
    jqa() { jq -er "$1" "$RAW/lab-api.json"; }
    A_N1=$(jqa '.nodes[] | select(.name=="n1") | .namespace')
    A_N2=$(jqa '.nodes[] | select(.name=="n2") | .namespace')
    API_DIR=(unused "$(jqa '.nodes[] | select(.name=="n1") | .state_dir')" \
        "$(jqa '.nodes[] | select(.name=="n2") | .state_dir')")
    A_CLIENT=$(jqa '.pods[] | select(.name=="bench/client") | .namespace')
    A_CLIENT_ADDR=$(jqa '.pods[] | select(.name=="bench/client") | .address')
    A_SERVER=$(jqa '.pods[] | select(.name=="bench/server") | .namespace')
    A_SERVER_ADDR=$(jqa '.pods[] | select(.name=="bench/server") | .address')
    TPIDS[api]=$(router_pids "$RAW/lab-api.json")
    TPIDS[apipol]=${TPIDS[api]}
    API_KUBECONFIG=$("$WEFT" lab kubeconfig --prefix "$API_PREFIX")
fi
kc() { kubectl --kubeconfig "$API_KUBECONFIG" "$@"; }
# Whether the NetworkPolicy lab's tables hold the policy row's rules: the client's egress
# chain on n1 and the server's ingress chain on n2 ("yes"), no policy chain at all ("no"), or
# something in between.
api_tables() {
    local t1 t2
    t1=$(ip netns exec "$A_N1" nft list table ip weft 2>/dev/null || true)
    t2=$(ip netns exec "$A_N2" nft list table ip weft 2>/dev/null || true)
    if [[ $t1 == *"chain out-$A_CLIENT_ADDR "* && $t2 == *"chain in-$A_SERVER_ADDR "* ]]; then
        echo yes
    elif [[ $t1 != *"chain pod-policy"* && $t2 != *"chain pod-policy"* ]]; then
        echo no
    else
        echo partly
    fi
}
# Puts the policies in (yes) or takes them out (no), then waits (up to 30 s) until both
# nodes' tables show it, so that the row measures the rules it is named after.
set_policies() {
    local want=$1 k
    if [[ $want == yes ]]; then
        kc apply -f "$REPO/bench/policy-row-policies.yaml" >>"$RAW/kubectl-api.txt"
    else
        kc delete --ignore-not-found -f "$REPO/bench/policy-row-policies.yaml" >>"$RAW/kubectl-api.txt"
    fi
    for ((k = 0; k < 300; k++)); do
        [[ $(api_tables) == "$want" ]] && return 0
        sleep 0.1
    done
    die "NetworkPolicy lab: the tables are not '$want' 30 s after kubectl (see the routers' logs)"
}

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
[[ -z $BASELINE ]] || wait_reachable "$B_P1" "$B_P2_ADDR" "baseline (pod n1-p1 -> pod n2-p1)"
[[ $POLICY != 1 ]] || wait_reachable "$A_CLIENT" "$A_SERVER_ADDR" "API lab (pod bench/client -> bench/server)"

# --- WireGuard tunnels (boringtun, gotatun) -----------------------------------------------
# One interface per node namespace and implementation, a /24 of 198.19.0.0/16 (benchmark
# space, like the lab's underlay) each, over the underlay.
declare -A WG_NET=([boringtun]=198.19.254 [gotatun]=198.19.253)
declare -A WG_PORT=([boringtun]=51820 [gotatun]=51821)
declare -A WG_IFP=([boringtun]=wbt [gotatun]=wgt)  # + PREFIX + node: at most 12 characters
declare -A SERVER_ADDR=()
WG_MTU=1420  # 1500 - 80, wg-quick's default for an IPv4/IPv6 underlay

wg_dev() { echo "${WG_IFP[$1]}$PREFIX$2"; }

start_wg() {
    local impl=$1 bin=${WG_BIN[$1]} i j k dev pids=()
    mkdir -p /var/run/wireguard
    for i in 1 2; do
        dev=$(wg_dev "$impl" "$i")
        WG_IFS+=("$dev")
        rm -f "/var/run/wireguard/$dev.sock"  # left by a crashed run
        (umask 077 && wg genkey >"$WORK/$impl$i.key")
        wg pubkey <"$WORK/$impl$i.key" >"$WORK/$impl$i.pub"
    done
    for i in 1 2; do
        # Foreground in the background, so that we hold its pid (`ip netns exec` execs it);
        # it keeps root (no setuid dance) since it lives and dies with the lab's namespace.
        ip netns exec "${NODE_NS[i]}" "$bin" --foreground --disable-drop-privileges \
            "$(wg_dev "$impl" "$i")" >"$RAW/$impl-n$i.log" 2>&1 &
        PIDS+=($!)
        pids+=($!)
    done
    TPIDS[$impl]="${pids[*]}"
    for i in 1 2; do
        dev=$(wg_dev "$impl" "$i")
        j=$((3 - i))
        for ((k = 0; k < 50; k++)); do
            [[ -S /var/run/wireguard/$dev.sock ]] && ip -n "${NODE_NS[i]}" link show "$dev" >/dev/null 2>&1 && break
            sleep 0.1
        done
        [[ -S /var/run/wireguard/$dev.sock ]] || die "$bin did not start in ${NODE_NS[i]} (log: $(cat "$RAW/$impl-n$i.log"))"
        in_ns "${NODE_NS[i]}" wg set "$dev" listen-port "${WG_PORT[$impl]}" private-key "$WORK/$impl$i.key" \
            peer "$(cat "$WORK/$impl$j.pub")" endpoint "${NODE_ADDR[j]}:${WG_PORT[$impl]}" \
            allowed-ips "${WG_NET[$impl]}.$j/32"
        ip -n "${NODE_NS[i]}" addr add "${WG_NET[$impl]}.$i/24" dev "$dev"
        ip -n "${NODE_NS[i]}" link set "$dev" mtu "$WG_MTU" up
    done
    SERVER_ADDR[$impl]=${WG_NET[$impl]}.2
    wait_reachable "$N1" "${SERVER_ADDR[$impl]}" "$impl"
}
for impl in "${WG_PATHS[@]}"; do start_wg "$impl"; done

# --- servers ------------------------------------------------------------------------------
# One iperf3 server in pod n2-p1 (weft) and one in node n2 (bare veth and the WireGuard paths).
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
[[ -z $BASELINE ]] || start_server "$B_P2" baseline
[[ $POLICY != 1 ]] || start_server "$A_SERVER" api

# path key -> (client namespace, server address, label)
# bare1 is the bare veth with node n1's eth0 limited to one segment per GSO packet
# (gso_max_segs 1), so that TCP crosses it in MTU-sized packets as it crosses a tunnel that
# has no segmentation offload: the kernel's own per-packet ceiling on this machine.
PATHS=(bare bare1 weft)
declare -A CLIENT=([bare]=$N1 [bare1]=$N1 [weft]=$P1)
declare -A SERVER=([bare]=$N2_ADDR [bare1]=$N2_ADDR [weft]=$P2_ADDR)
declare -A LABEL=([bare]="bare veth (node->node)" [bare1]="bare veth, 1 seg/packet"
    [weft]="weft (pod->pod)" [boringtun]="boringtun (node->node)" [gotatun]="gotatun (node->node)")
GSO_SEGS=$(ip -n "$N1" -d -j link show eth0 | jq -r '.[0].gso_max_segs')
if [[ -n $BASELINE ]]; then
    PATHS+=(baseline)
    CLIENT[baseline]=$B_P1 SERVER[baseline]=$B_P2_ADDR LABEL[baseline]="weft baseline (pod->pod)"
fi
if [[ $POLICY == 1 ]]; then
    PATHS+=(api apipol)
    CLIENT[api]=$A_CLIENT SERVER[api]=$A_SERVER_ADDR LABEL[api]="weft, API lab, no policy"
    CLIENT[apipol]=$A_CLIENT SERVER[apipol]=$A_SERVER_ADDR LABEL[apipol]="weft + policy"
fi
for impl in "${WG_PATHS[@]}"; do
    PATHS+=("$impl")
    CLIENT[$impl]=$N1 SERVER[$impl]=${SERVER_ADDR[$impl]}
done

# --- measure ------------------------------------------------------------------------------
# Where packets are lost inside the two node namespaces: datagrams the kernel dropped because
# a UDP socket's receive buffer was full (weft's or a WireGuard process's, on either node), plus
# packets dropped on the way into a tunnel device's queue (TX on weft-tun or the WireGuard
# interface: the tunnel process did not read fast enough). Summed over both nodes, read before
# and after each one-stream run.
tun_dev() { # path, node number -> its tunnel device in that node's namespace (or nothing)
    case $1 in weft | baseline | api | apipol) echo weft-tun ;; boringtun | gotatun) wg_dev "$1" "$2" ;; esac
}
path_ns() { # path, node number -> that node's namespace (the baseline has a lab of its own)
    if [[ $1 == baseline ]]; then
        if [[ $2 == 1 ]]; then echo "$B_N1"; else echo "$B_N2"; fi
    elif [[ $1 == api || $1 == apipol ]]; then
        if [[ $2 == 1 ]]; then echo "$A_N1"; else echo "$A_N2"; fi
    else
        echo "${NODE_NS[$2]}"
    fi
}
drop_counter() {
    local p=$1 i dev total=0 n ns
    for i in 1 2; do
        ns=$(path_ns "$p" "$i")
        # shellcheck disable=SC2016  # awk's own $i, not the shell's
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

# User + system CPU time, in clock ticks, of a path's tunnel processes (0 for the bare paths).
# /proc/PID/stat of a process's main thread counts all its threads, live and exited; fields
# 14 and 15 (utime, stime) are the 12th and 13th after the parenthesised command name.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() {
    local pid total=0 t
    for pid in ${TPIDS[$1]:-}; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) ||
            die "$1: tunnel process $pid is gone (see its log)"
        total=$((total + t))
    done
    echo "$total"
}

# The larger VmHWM (peak resident set, KiB) of a path's tunnel processes.
peak_rss_kib() {
    local pid max=0 kib
    for pid in ${TPIDS[$1]}; do
        kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) ||
            die "$1: tunnel process $pid is gone (see its log)"
        ((kib > max)) && max=$kib
    done
    echo "$max"
}

LOADED_PINGS=$(((DURATION - 1) * 10)); ((LOADED_PINGS > 0)) || LOADED_PINGS=1
# One iperf3 run of $3 parallel streams on path $1 in round $2. The one-stream run also
# measures the loaded RTT, the drops, the retransmissions and the tunnel's CPU time.
iperf_once() {
    local p=$1 r=$2 n=$3 f="$RAW/iperf3-$1-P$3-$2.json" try before cpu0 cpu1 bytes pinger=
    for try in 1 2 3; do
        if [[ $n == 1 ]]; then
            before=$(drop_counter "$p")
            # Round-trip time under load: pings alongside the transfer, from 1.5 s in (past
            # the omitted warm-up second) to 0.5 s before its end, 10 a second.
            (sleep 1.5 && exec ip netns exec "${CLIENT[$p]}" ping -n -c "$LOADED_PINGS" -i 0.1 -W 2 \
                "${SERVER[$p]}") >"$RAW/ping-loaded-$p-$r.txt" 2>&1 &
            pinger=$!
            cpu0=$(cpu_ticks "$p")
        fi
        if in_ns "${CLIENT[$p]}" iperf3 -c "${SERVER[$p]}" -P "$n" -t "$DURATION" -O 1 -J >"$f" 2>&1; then
            [[ $n != 1 ]] || cpu1=$(cpu_ticks "$p")
            jq -er '.end.sum_received.bits_per_second' "$f" >>"$WORK/bps$n-$p"
            [[ $n == 1 ]] || return 0
            wait "$pinger" || true
            sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' "$RAW/ping-loaded-$p-$r.txt" >>"$WORK/lrtt-$p"
            jq -er '.end.sum_sent.retransmits // 0' "$f" >>"$WORK/retr-$p"
            echo $(($(drop_counter "$p") - before)) >>"$WORK/drops-$p"
            if [[ -n ${TPIDS[$p]:-} ]]; then
                # The CPU time covers the whole run, the omitted warm-up second included; so do
                # the bytes: end.sum_received leaves that second out, the intervals marked
                # omitted hold it (as sent; what was in flight then arrives within the run).
                bytes=$(jq -er '.end.sum_received.bytes
                    + ([.intervals[] | select(.sum.omitted) | .sum.bytes] | add // 0)' "$f")
                awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v b="$bytes" \
                    'BEGIN { printf "%.3f\n", (t / hz) / (b / 1e9) }' >>"$WORK/cpu-$p"
            fi
            return 0
        fi
        if [[ -n $pinger ]]; then
            kill "$pinger" 2>/dev/null || true
            wait "$pinger" 2>/dev/null || true
        fi
        log "iperf3 -P $n $p run $r failed (try $try): $(jq -r '.error // empty' "$f" 2>/dev/null || head -c 300 "$f")"
        sleep 1
    done
    die "iperf3 -P $n on path $p failed three times (see $f)"
}

ping_once() {
    local p=$1 r=$2 f="$RAW/ping-$1-$2.txt"
    # Not fatal on loss: the loss is reported.
    in_ns "${CLIENT[$p]}" ping -n -c "$PINGS" -i "$PING_INTERVAL" -W 1 "${SERVER[$p]}" >"$f" 2>&1 || true
    sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' "$f" >>"$WORK/rtt-$p"
    echo "$PINGS" >>"$WORK/sent-$p"
}

for p in "${PATHS[@]}"; do
    for k in bps1 bps4 retr drops lrtt rtt sent cpu; do : >"$WORK/$k-$p"; done
done
for ((r = 1; r <= RUNS; r++)); do
    for p in "${PATHS[@]}"; do
        log "round $r/$RUNS: $p"
        [[ $p != bare1 ]] || ip -n "$N1" link set eth0 gso_max_segs 1
        [[ $p != api ]] || set_policies no
        [[ $p != apipol ]] || set_policies yes
        ping_once "$p" "$r"
        iperf_once "$p" "$r" 1
        iperf_once "$p" "$r" 4
        [[ $p != bare1 ]] || ip -n "$N1" link set eth0 gso_max_segs "$GSO_SEGS"
    done
done

# Peak memory after all rounds, and (with OUT) what the tunnel processes' /proc says.
declare -A RSS=()
for p in "${PATHS[@]}"; do
    [[ -n ${TPIDS[$p]:-} ]] || continue
    RSS[$p]=$(peak_rss_kib "$p")
    if [[ -n $OUT ]]; then
        for pid in ${TPIDS[$p]}; do
            { echo "== $p pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline")"; cat "/proc/$pid/status"; } \
                >>"$RAW/tunnel-processes.txt" 2>&1 || true
        done
    fi
done

if [[ -n $OUT ]]; then
    for i in 1 2; do
        in_ns "${NODE_NS[i]}" "$WEFT" status --json --state-dir "${NODE_DIR[i]}" \
            >"$RAW/weft-status-n$i.json" 2>&1 || true
        ip -n "${NODE_NS[i]}" -s link >"$RAW/links-n$i.txt" 2>&1 || true
        in_ns "${NODE_NS[i]}" cat /proc/net/snmp >"$RAW/snmp-n$i.txt" 2>&1 || true
    done
    if [[ $POLICY == 1 ]]; then
        for i in 1 2; do
            ns=$A_N1; [[ $i == 1 ]] || ns=$A_N2
            in_ns "$ns" nft list table ip weft >"$RAW/api-table-n$i.nft" 2>&1 || true
            in_ns "$ns" "$WEFT" status --json --state-dir "${API_DIR[i]}" \
                >"$RAW/weft-status-api-n$i.json" 2>&1 || true
        done
    fi
fi
# The size of the policy row's rules (the last round left them in), for the report.
if [[ $POLICY == 1 ]]; then
    API_RULES=$( (in_ns "$A_N1" nft list table ip weft; in_ns "$A_N2" nft list table ip weft) 2>/dev/null |
        grep -cE '(return|drop|accept|jump|vmap)' || true)
fi

# --- report -------------------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
minimum() { sort -g | head -n1; }
maximum() { sort -g | tail -n1; }
# "median min max" of a file of numbers ("nan nan nan" when it is empty)
stats() {
    [[ -s $1 ]] || { echo "nan nan nan"; return; }
    echo "$(median <"$1") $(minimum <"$1") $(maximum <"$1")"
}

cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
if rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    git -C "$REPO" diff --quiet HEAD -- || rev="$rev + uncommitted changes"
else
    rev="${WEFT_REV:-unknown (not a git checkout; set WEFT_REV)}"
fi
versions=""
for impl in "${WG_PATHS[@]}"; do
    versions+="${versions:+, }$("${WG_BIN[$impl]}" --version 2>&1 | head -n1)"
done

echo
if [[ $NO_BUILD == 1 ]]; then
    rev="binaries not rebuilt (NO_BUILD=1; weft built $(date -u -r "$WEFT" '+%Y-%m-%d %H:%M UTC')), source here: $rev"
fi
echo "weft benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), weft $rev"
echo "machine: $(nproc) CPUs ($cpu), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "iperf3: 1 TCP stream and 4 (-P 4), $RUNS runs x ${DURATION} s (+1 s omitted) each per path; ping: $RUNS x $PINGS at ${PING_INTERVAL} s idle, $RUNS x $LOADED_PINGS at 0.1 s loaded"
echo "pod MTU $POD_MTU; WireGuard MTU $WG_MTU; underlay MTU 1500; weft offload: $OFFLOAD_NOTE"
echo "tunnels beside weft: ${versions:-none}"
[[ -z $BASELINE ]] || echo "baseline: $BASE_REV ($BASELINE), in lab $BASE_PREFIX"
[[ $POLICY != 1 ]] || echo "NetworkPolicy rows: lab $API_PREFIX under --api, 10 pods, 6 policies; with them, $API_RULES rules (lines with a verdict) on the two nodes"
echo

# The summary: throughput, ratio, latency, CPU, memory. Values kept for the ratios below.
declare -A MED1=() MED4=() CPU=() RTT=()
printf '%-24s %7s %11s %8s %7s %11s %8s %8s %11s %8s\n' PATH "1x Gb/s" "min-max" "vs bare" \
    "4x Gb/s" "min-max" "ping ms" "CPU-s/GB" "min-max" "RSS MiB"
for p in "${PATHS[@]}"; do
    read -r m1 lo1 hi1 <<<"$(stats "$WORK/bps1-$p")"
    read -r m4 lo4 hi4 <<<"$(stats "$WORK/bps4-$p")"
    read -r mc loc hic <<<"$(stats "$WORK/cpu-$p")"
    rtt=$(median <"$WORK/rtt-$p")
    MED1[$p]=$m1 MED4[$p]=$m4 CPU[$p]=$mc RTT[$p]=$rtt
    awk -v l="${LABEL[$p]}" -v m1="$m1" -v lo1="$lo1" -v hi1="$hi1" -v b="${MED1[bare]}" \
        -v m4="$m4" -v lo4="$lo4" -v hi4="$hi4" -v rtt="$rtt" -v mc="$mc" -v loc="$loc" \
        -v hic="$hic" -v rss="${RSS[$p]:-nan}" 'BEGIN {
        printf "%-24s %7.2f %5.2f-%-5.2f %7.1f%% %7.2f %5.2f-%-5.2f %8.3f ", l, m1 / 1e9, lo1 / 1e9,
            hi1 / 1e9, 100 * m1 / b, m4 / 1e9, lo4 / 1e9, hi4 / 1e9, rtt
        if (mc == "nan") printf "%8s %11s ", "-", "-"
        else printf "%8.2f %5.2f-%-5.2f ", mc, loc, hic
        if (rss == "nan") printf "%8s\n", "-"; else printf "%8.1f\n", rss / 1024 }'
done
echo
echo "(1x, 4x: median receiver throughput of one TCP stream and of four (-P 4) with min-max;"
echo " vs bare: 1-stream median / bare veth 1-stream median; ping: median idle RTT over all rounds;"
echo " CPU-s/GB: user+system time of both tunnel processes during a one-stream run / GB (1e9 bytes)"
echo " received, median; RSS: the larger peak resident set (VmHWM) of the two, after all rounds)"
echo

printf '%-24s %8s %8s %7s %10s\n' "one-stream runs" "retr" "drops" "loss" "loaded ms"
for p in "${PATHS[@]}"; do
    sent=$(awk '{ s += $1 } END { print s }' "$WORK/sent-$p")
    got=$(wc -l <"$WORK/rtt-$p")
    awk -v l="${LABEL[$p]}" -v retr="$(median <"$WORK/retr-$p")" -v drops="$(median <"$WORK/drops-$p")" \
        -v lrtt="$(median <"$WORK/lrtt-$p")" -v sent="$sent" -v got="$got" 'BEGIN {
        printf "%-24s %8d %8d %6.1f%% %10.3f\n", l, retr, drops, 100 * (sent - got) / sent, lrtt }'
done
echo "(retr: median TCP retransmissions per run; drops: median per run of UDP receive-buffer drops"
echo " + tunnel-device queue drops on both nodes; loss: idle ping loss; loaded: median RTT of pings"
echo " sent alongside the one-stream transfers, 10 a second)"
echo

# weft against each WireGuard path (weft's figure / theirs), and against its targets.
for impl in "${WG_PATHS[@]}"; do
    awk -v w1="${MED1[weft]}" -v w4="${MED4[weft]}" -v wc="${CPU[weft]}" -v o1="${MED1[$impl]}" \
        -v o4="${MED4[$impl]}" -v oc="${CPU[$impl]}" -v name="$impl" 'BEGIN {
        printf "weft / %s: 1 stream %.2fx, 4 streams %.2fx, CPU-s/GB %.2fx\n",
            name, w1 / o1, w4 / o4, wc / oc }'
done
if [[ -n $BASELINE ]]; then
    awk -v w1="${MED1[weft]}" -v w4="${MED4[weft]}" -v wc="${CPU[weft]}" -v wr="${RTT[weft]}" \
        -v o1="${MED1[baseline]}" -v o4="${MED4[baseline]}" -v oc="${CPU[baseline]}" \
        -v ob="${RTT[baseline]}" 'BEGIN {
        printf "weft / baseline: 1 stream %.2fx, 4 streams %.2fx, CPU-s/GB %.2fx, ping %+.3f ms\n",
            w1 / o1, w4 / o4, wc / oc, wr - ob }'
fi
if [[ $POLICY == 1 ]]; then
    awk -v w1="${MED1[apipol]}" -v w4="${MED4[apipol]}" -v wc="${CPU[apipol]}" -v wr="${RTT[apipol]}" \
        -v o1="${MED1[api]}" -v o4="${MED4[api]}" -v oc="${CPU[api]}" -v ob="${RTT[api]}" 'BEGIN {
        printf "weft + policy / no policy: 1 stream %.3fx, 4 streams %.3fx, CPU-s/GB %.3fx, ping %+.3f ms\n",
            w1 / o1, w4 / o4, wc / oc, wr - ob }'
fi
if has_wg boringtun; then
    bt1=${MED1[boringtun]} bt4=${MED4[boringtun]} btc=${CPU[boringtun]}
else
    bt1=nan bt4=nan btc=nan
fi
awk -v w1="${MED1[weft]}" -v w4="${MED4[weft]}" -v wc="${CPU[weft]}" -v b1="${MED1[bare]}" \
    -v wr="${RTT[weft]}" -v br="${RTT[bare]}" -v rss="${RSS[weft]}" -v bt1="$bt1" -v bt4="$bt4" \
    -v btc="$btc" 'function verdict(ok) { return ok ? "met" : "missed" }
    BEGIN {
    print "performance targets (weft):"
    printf "  1 stream >= 40%% of bare veth       %8.1f%%       %s\n", 100 * w1 / b1, verdict(w1 >= 0.4 * b1)
    if (bt1 == "nan") print "  vs boringtun                        no boringtun row"
    else {
        printf "  1 stream >= 10x boringtun          %8.2fx       %s\n", w1 / bt1, verdict(w1 >= 10 * bt1)
        printf "  4 streams >= 10x boringtun         %8.2fx       %s\n", w4 / bt4, verdict(w4 >= 10 * bt4)
        printf "  CPU-s/GB <= 0.1x boringtun         %8.2fx       %s\n", wc / btc, verdict(wc <= 0.1 * btc)
    }
    printf "  ping <= bare veth + 0.1 ms         %+8.3f ms    %s\n", wr - br, verdict(wr <= br + 0.1)
    printf "  peak RSS <= 20 MiB                 %8.1f MiB   %s\n", rss / 1024, verdict(rss <= 20 * 1024)
    }'
((RUNS >= 5)) || echo "(the targets ask for medians of at least 5 runs; this run had RUNS=$RUNS)"
[[ $POLICY == 1 ]] || echo "(NetworkPolicy rows skipped: kubectl or nft not found, or POLICY=0)"
has_wg boringtun || echo "(boringtun row skipped: boringtun-cli or wg not found, or BORINGTUN=0)"
has_wg gotatun || echo "(gotatun row skipped: gotatun or wg not found, or GOTATUN=0)"
[[ -z $OUT ]] || echo "(raw results in $OUT)"
