#!/usr/bin/env bash
# scripts/soak.sh: a weft lab under churn for MINUTES, then one table of what it left behind.
#
# Brings up a lab of NODES nodes (one pod each, the "steady" pods) and, while every pair of
# steady pods pings both ways (ping -i 0.2, timestamps kept), churns it until the time is up,
# one action after another, in a fixed rotation with random nodes:
#
#   router kill/start   SIGKILL a router (a crash), start it again after 3 s; never n1's,
#                       so one router lives through the whole run
#   block/unblock       drop the underlay between two nodes at the switch for 10 s
#   netem               loss 3% and 20 ms delay on a node's underlay link (tc netem on both
#                       ends, inside the lab's namespaces) for 10 s
#   pod add             a pod attached through weft-cni (`weft lab pod add`), which must
#                       reach a steady pod on another node within 5 s
#   pod del             a pod added earlier deleted through weft-cni DEL (`weft lab pod del`)
#   flood               5 s of garbage, or of handshake initiations from 50 addresses, at one
#                       node (`weft lab flood`)
#   secret rotation     once, half-way (ROTATE=1): the lab's join-secret file, which every
#                       node reads, becomes "old\nnew", then "new\nold", then "new", 20 s
#                       apart (the routers must re-read it and keep every tunnel)
#
# At the end every impairment is lifted and every router runs again; after SETTLE seconds
# the pings stop and the script prints ONE table: duplicate pod addresses, leases without a
# pod and pods without a lease (weft-cni's lease files on every node against the lab's
# pods), each router's open file descriptors and RSS at the start and the end, drops by
# reason (all routers, since their last start), the longest outage of each steady pod pair,
# new pods that could not reach a steady pod, and, after `weft lab down`, the namespaces,
# links (in this namespace), processes and state left. It exits 1 if a duplicate address, an
# orphaned lease, a leak (a router's descriptors grew by more than FD_SLACK, or its RSS is
# above RSS_LIMIT_MIB) or anything left after `weft lab down` is found, 2 on a usage error.
# Not part of the normal test run; tests/tests/e2e_soak.rs runs it for 2 minutes.
#
# Usage: scripts/soak.sh [--help]   (as root, from anywhere in the repository)
#
# Environment (defaults after the =):
#   MINUTES=30        how long to churn
#   NODES=4           nodes in the lab (3 to 9)
#   PREFIX=wsoak      the lab's namespace prefix
#   ROTATE=1          0: skip the join-secret rotation
#   STEP=4            seconds between actions
#   SETTLE=20         seconds after the churn before the pings stop
#   FD_SLACK=16       descriptors a router may gain between start and end
#   RSS_LIMIT_MIB=64  the largest RSS a router may end with
#   WEFT=             the weft binary (weft-cni beside it); default: a release build
#                     (built first unless NO_BUILD=1)
#   OUT=              a directory to keep the raw results in (pings, logs, metrics)
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi
usage() { echo "scripts/soak.sh: $*" >&2; exit 2; }
[[ $# -eq 0 ]] || usage "no arguments expected (see --help)"

MINUTES=${MINUTES:-30}
NODES=${NODES:-4}
PREFIX=${PREFIX:-wsoak}
ROTATE=${ROTATE:-1}
STEP=${STEP:-4}
SETTLE=${SETTLE:-20}
FD_SLACK=${FD_SLACK:-16}
RSS_LIMIT_MIB=${RSS_LIMIT_MIB:-64}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}

[[ $MINUTES =~ ^[1-9][0-9]*$ ]] || usage "MINUTES must be a positive integer"
[[ $NODES =~ ^[3-9]$ ]] || usage "NODES must be 3 to 9"
[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] || usage "PREFIX must be 1-8 lowercase letters or digits"
[[ $ROTATE == 0 || $ROTATE == 1 ]] || usage "ROTATE must be 0 or 1"
for v in STEP SETTLE FD_SLACK RSS_LIMIT_MIB; do
    [[ ${!v} =~ ^[0-9]+$ ]] || usage "$v must be a non-negative integer"
done
[[ $(id -u) -eq 0 ]] || usage "run as root (network namespaces)"
for tool in ip tc jq ping curl awk; do
    command -v "$tool" >/dev/null || usage "$tool is not installed"
done

log() { echo "soak $(date -u +%T): $*" >&2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${WEFT:-} ]]; then
    TARGET=${CARGO_TARGET_DIR:-$REPO/target}
    [[ $TARGET == /* ]] || TARGET=$REPO/$TARGET
    WEFT=$TARGET/release/weft
    if [[ $NO_BUILD != 1 ]]; then
        (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release -p weft -p weft-cni --bins)
    fi
fi
[[ -x $WEFT && -x $(dirname "$WEFT")/weft-cni ]] || usage "no weft and weft-cni at $WEFT"

WORK=$(mktemp -d /tmp/weft-soak.XXXXXX)
if [[ -n $OUT ]]; then mkdir -p "$OUT"; RAW=$OUT; else RAW=$WORK; fi
PING_PIDS=()
LAB_UP=0
DOWN_DONE=0
cleanup() {
    local rc=$?
    set +e
    for pid in "${PING_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    if [[ $LAB_UP == 1 && $DOWN_DONE == 0 ]]; then
        "$WEFT" lab down --prefix "$PREFIX" >/dev/null || echo "soak: lab down failed" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

lab() { "$WEFT" lab "$@" --prefix "$PREFIX"; }
links_here() { ip -o link show | wc -l; }
LINKS_BEFORE=$(links_here)

LAB_UP=1
log "weft lab up --nodes $NODES --pods 1 --prefix $PREFIX"
lab up --nodes "$NODES" --pods 1 >"$RAW/up.txt"
STATE_DIR=/run/weft-lab/$PREFIX
SECRET=$STATE_DIR/join-secret
status() { lab status --json; }
node_ns() { echo "$PREFIX-n$1"; }
router_pid() { status | jq -er ".nodes[$(($1 - 1))].router_pid // empty"; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
metrics() { ip netns exec "$(node_ns "$1")" curl -sf --max-time 10 http://127.0.0.1:6787/metrics; }
pod_addr() { status | jq -er ".pods[] | select(.name==\"$1\") | .address"; }

# The routers settle (first gossip, first rekeys of nothing) before the start is measured.
sleep 5
declare -A FD_START RSS_START STEADY_ADDR
for i in $(seq 1 "$NODES"); do
    pid=$(router_pid "$i")
    FD_START[$i]=$(fds "$pid")
    RSS_START[$i]=$(rss_mib "$pid")
    STEADY_ADDR[$i]=$(pod_addr "n$i-p1")
done

# Pings between every pair of steady pods, both ways, timestamped (-D) to find outages.
T0=$(date +%s.%N)
for a in $(seq 1 "$NODES"); do
    for b in $(seq 1 "$NODES"); do
        [[ $a != "$b" ]] || continue
        ip netns exec "$PREFIX-n$a-p1" ping -n -D -i 0.2 -W 1 "${STEADY_ADDR[$b]}" \
            >"$RAW/ping-$a-$b.txt" 2>&1 &
        PING_PIDS+=($!)
    done
done

# --- the churn ------------------------------------------------------------------------------
NETEM=1
if ! ip netns exec "$PREFIX-u" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    NETEM=0
    log "this kernel has no netem: the netem action drops 3% at the switch (nftables), no delay"
else
    ip netns exec "$PREFIX-u" tc qdisc del dev lo root
fi
# Loss without netem: a table of the soak's own in the switch's namespace (the lab's table
# is weftlab, which `lab block` replaces whole).
switch_loss() { # NODE on|off
    local u=$PREFIX-u
    if [[ $2 == on ]]; then
        printf 'table bridge weftsoak {\n chain forward {\n  type filter hook forward priority -1;\n  iifname "n%s" numgen random mod 100 < 3 drop\n  oifname "n%s" numgen random mod 100 < 3 drop\n }\n}\n' "$1" "$1" |
            ip netns exec "$u" nft -f -
    else
        ip netns exec "$u" nft delete table bridge weftsoak
    fi
}
other_node() { # a node other than $1
    local o=$1
    while [[ $o == "$1" ]]; do o=$((RANDOM % NODES + 1)); done
    echo "$o"
}
CHURN_PODS=()
NEW_POD_FAILED=0
NEW_PODS=0
ROTATED=skipped
ACTIONS=0
declare -A DONE
act() {
    local what=$1 n=$((RANDOM % NODES + 1))
    case $what in
    kill)
        # n1's router is never killed: its descriptors and RSS at the end are those of one
        # process that lived through the whole churn.
        n=$((RANDOM % (NODES - 1) + 2))
        log "router kill n$n; start again in 3 s"
        lab router kill "n$n" >/dev/null
        sleep 3
        lab router start "n$n" >/dev/null ;;
    block)
        local o; o=$(other_node "$n")
        log "block $n-$o for 10 s"
        lab block "$n-$o" >/dev/null
        sleep 10
        lab unblock "$n-$o" >/dev/null ;;
    netem)
        if [[ $NETEM == 0 ]]; then
            log "loss 3% at the switch on n$n's port for 10 s (nftables)"
            switch_loss "$n" on
            sleep 10
            switch_loss "$n" off
            DONE[$what]=$((${DONE[$what]:-0} + 1))
            ACTIONS=$((ACTIONS + 1))
            return 0
        fi
        log "netem loss 3% delay 20ms on n$n for 10 s"
        ip netns exec "$PREFIX-u" tc qdisc replace dev "n$n" root netem loss 3% delay 20ms
        ip netns exec "$(node_ns "$n")" tc qdisc replace dev eth0 root netem loss 3% delay 20ms
        sleep 10
        ip netns exec "$PREFIX-u" tc qdisc del dev "n$n" root
        ip netns exec "$(node_ns "$n")" tc qdisc del dev eth0 root ;;
    podadd)
        local out name o
        out=$(lab pod add "n$n")
        name=${out%% *}
        CHURN_PODS+=("$name")
        NEW_PODS=$((NEW_PODS + 1))
        o=$(other_node "$n")
        log "pod add: $out; pinging n$o-p1"
        if ! ip netns exec "$PREFIX-$name" ping -n -q -c 1 -w 5 "${STEADY_ADDR[$o]}" >/dev/null; then
            NEW_POD_FAILED=$((NEW_POD_FAILED + 1))
            log "new pod $name could not reach n$o-p1 within 5 s"
        fi ;;
    poddel)
        [[ ${#CHURN_PODS[@]} -gt 0 ]] || return 0
        local k=$((RANDOM % ${#CHURN_PODS[@]}))
        log "pod del ${CHURN_PODS[k]}"
        lab pod del "${CHURN_PODS[k]}" >/dev/null
        CHURN_PODS=("${CHURN_PODS[@]:0:k}" "${CHURN_PODS[@]:k+1}") ;;
    garbage)
        log "garbage flood at n$n for 5 s"
        lab flood "n$n" --kind garbage --seconds 5 --json >>"$RAW/floods.jsonl" ;;
    initiation)
        log "initiation flood (50 sources) at n$n for 5 s"
        lab flood "n$n" --kind initiation --sources 50 --seconds 5 --json >>"$RAW/floods.jsonl" ;;
    rotate)
        [[ $ROTATE == 1 ]] || return 0
        local old new
        old=$(head -n1 "$SECRET")
        new=$("$WEFT" keygen --join-secret)
        log "secret rotation: old+new, then new+old, then new, 20 s apart"
        printf '%s\n%s\n' "$old" "$new" >"$SECRET.tmp" && mv "$SECRET.tmp" "$SECRET"
        sleep 20
        printf '%s\n%s\n' "$new" "$old" >"$SECRET.tmp" && mv "$SECRET.tmp" "$SECRET"
        sleep 20
        printf '%s\n' "$new" >"$SECRET.tmp" && mv "$SECRET.tmp" "$SECRET"
        sleep 20
        ROTATED=done ;;
    esac
    DONE[$what]=$((${DONE[$what]:-0} + 1))
    ACTIONS=$((ACTIONS + 1))
}
ROTATION=(kill podadd block garbage netem poddel initiation podadd kill block poddel netem)
END=$(($(date +%s) + MINUTES * 60))
HALF=$(($(date +%s) + MINUTES * 30))
k=0
while [[ $(date +%s) -lt $END ]]; do
    if [[ $ROTATED == skipped && $ROTATE == 1 && $(date +%s) -ge $HALF ]]; then
        act rotate
    else
        act "${ROTATION[k % ${#ROTATION[@]}]}"
        k=$((k + 1))
    fi
    sleep "$STEP"
done
log "churn over after $ACTIONS actions; every router runs, nothing is impaired; settling ${SETTLE}s"
sleep "$SETTLE"
T1=$(date +%s.%N)
for pid in "${PING_PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
for pid in "${PING_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PING_PIDS=()

# --- what is left ---------------------------------------------------------------------------
status >"$RAW/lab-end.json"
FAIL=()
# Pod addresses: the lab's pods, and the leases every node's weft-cni holds.
DUPS=$(jq -r '.pods[].address' "$RAW/lab-end.json" | sort | uniq -d | wc -l)
LEASE_DUPS=$(for i in $(seq 1 "$NODES"); do ls "$STATE_DIR/n$i/cni/leases" 2>/dev/null; done | sort | uniq -d | wc -l)
DUPS=$((DUPS + LEASE_DUPS))
ORPHANS=0
MISSING=0
for i in $(seq 1 "$NODES"); do
    for f in "$STATE_DIR/n$i"/cni/leases/*; do
        [[ -e $f ]] || continue
        cid=$(jq -r '.containerID' "$f")
        if ! jq -e --arg c "$cid" --arg n "n$i" \
            'any(.pods[]; .node == $n and ("lab-" + .namespace) == $c)' "$RAW/lab-end.json" >/dev/null; then
            ORPHANS=$((ORPHANS + 1))
            log "lease $(basename "$f") on n$i belongs to $cid, which is no pod of the lab"
        fi
    done
done
while read -r node addr; do
    [[ -e $STATE_DIR/$node/cni/leases/$addr ]] || { MISSING=$((MISSING + 1)); log "pod $addr on $node has no lease"; }
done < <(jq -r '.pods[] | "\(.node) \(.address)"' "$RAW/lab-end.json")
[[ $DUPS -eq 0 ]] || FAIL+=("$DUPS duplicate pod addresses")
[[ $ORPHANS -eq 0 ]] || FAIL+=("$ORPHANS leases without a pod")
[[ $MISSING -eq 0 ]] || FAIL+=("$MISSING pods without a lease")

ROUTER_ROWS=()
for i in $(seq 1 "$NODES"); do
    pid=$(router_pid "$i")
    if [[ -z $pid || ! -d /proc/$pid ]]; then
        FAIL+=("the router of n$i is not running at the end")
        ROUTER_ROWS+=("$(printf '  n%-3s %9s %9s %12s %12s' "$i" "${FD_START[$i]}" - "${RSS_START[$i]}" -)")
        continue
    fi
    fd_end=$(fds "$pid")
    rss_end=$(rss_mib "$pid")
    ROUTER_ROWS+=("$(printf '  n%-3s %9s %9s %12s %12s' "$i" "${FD_START[$i]}" "$fd_end" "${RSS_START[$i]}" "$rss_end")")
    [[ $fd_end -le $((FD_START[$i] + FD_SLACK)) ]] ||
        FAIL+=("n$i's router holds $fd_end descriptors, ${FD_START[$i]} at the start")
    awk -v r="$rss_end" -v l="$RSS_LIMIT_MIB" 'BEGIN {exit !(r <= l)}' ||
        FAIL+=("n$i's router's RSS is $rss_end MiB, over $RSS_LIMIT_MIB")
    metrics "$i" >"$RAW/metrics-n$i.prom" || true
done
DROPS=$(cat "$RAW"/metrics-n*.prom 2>/dev/null | awk -F'[{}"]' '/^weft_drops_total\{/ {split($0, v, " "); d[$3] += v[2]} END {for (r in d) printf "%s=%d\n", r, d[r]}' | sort | paste -sd' ')

# Longest outage per steady pair: the longest time without a reply, from the start of the
# pings to the first reply, between replies, and from the last reply to the end.
OUTAGE_ROWS=()
WORST=0
for a in $(seq 1 "$NODES"); do
    for b in $(seq 1 "$NODES"); do
        [[ $a != "$b" ]] || continue
        gap=$(awk -v t0="$T0" -v t1="$T1" '
            /bytes from/ { t = substr($1, 2, length($1) - 2) + 0; if (t - last > g) g = t - last; last = t }
            BEGIN { last = t0 } END { if (t1 - last > g) g = t1 - last; printf "%.1f", g }' "$RAW/ping-$a-$b.txt")
        OUTAGE_ROWS+=("n$a-p1->n$b-p1 ${gap}s")
    done
done

DOWN_DONE=1
lab down >/dev/null
NS_LEFT=$(ip netns list | awk '{print $1}' | grep -c "^$PREFIX-" || true)
LINKS_LEFT=$(($(links_here) - LINKS_BEFORE))
[[ $LINKS_LEFT -ge 0 ]] || LINKS_LEFT=0
# SIGKILL is delivered at once but the exit is not: a router counts as left if it still
# runs (not a zombie) 10 s after `lab down` returned.
alive() { [[ -r /proc/$1/stat ]] && ! awk '{exit $3 != "Z"}' "/proc/$1/stat" 2>/dev/null; }
PROCS_LEFT=0
for i in $(seq 1 "$NODES"); do
    pid=$(jq -r ".nodes[$((i - 1))].router_pid // empty" "$RAW/lab-end.json")
    [[ -n $pid ]] || continue
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then PROCS_LEFT=$((PROCS_LEFT + 1)); fi
done
STATE_LEFT=0
[[ -e $STATE_DIR ]] && STATE_LEFT=1
[[ $NS_LEFT -eq 0 ]] || FAIL+=("$NS_LEFT namespaces left after lab down")
[[ $LINKS_LEFT -eq 0 ]] || FAIL+=("$LINKS_LEFT links left in this namespace after lab down")
[[ $PROCS_LEFT -eq 0 ]] || FAIL+=("$PROCS_LEFT routers still running after lab down")
[[ $STATE_LEFT -eq 0 ]] || FAIL+=("$STATE_DIR left after lab down")

actions=$(for a in "${!DONE[@]}"; do echo "$a=${DONE[$a]}"; done | sort | paste -sd' ')
echo
echo "weft soak: $NODES nodes, $MINUTES min of churn ($ACTIONS actions: $actions), secret rotation $ROTATED, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %s\n' "duplicate pod addresses" "$DUPS"
printf '%-34s %s\n' "leases without a pod" "$ORPHANS"
printf '%-34s %s\n' "pods without a lease" "$MISSING"
printf '%-34s %s of %s\n' "new pods that reached no pod" "$NEW_POD_FAILED" "$NEW_PODS"
printf '%-34s %s\n' "namespaces left after lab down" "$NS_LEFT"
printf '%-34s %s\n' "links left after lab down" "$LINKS_LEFT"
printf '%-34s %s\n' "routers left after lab down" "$PROCS_LEFT"
printf '%-34s %s\n' "state left after lab down" "$STATE_LEFT"
printf '%-34s %s\n' "drops by reason (all routers)" "${DROPS:-none}"
echo "routers: open descriptors and RSS (MiB), start and end (n1's lived through it all; the others' ends are of their last restart)"
printf '  %-4s %9s %9s %12s %12s\n' node fd-start fd-end rss-start rss-end
for r in "${ROUTER_ROWS[@]}"; do echo "$r"; done
echo "longest outage per steady pod pair"
printf '  %s\n' "${OUTAGE_ROWS[@]}" | paste -d' ' - - - | column -t | sed 's/^/  /'
if [[ ${#FAIL[@]} -gt 0 ]]; then
    echo "SOAK FAILED:"
    printf '  %s\n' "${FAIL[@]}"
    exit 1
fi
echo "soak passed: no duplicate, no orphan, no leak, nothing left"
