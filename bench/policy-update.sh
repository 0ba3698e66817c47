#!/usr/bin/env bash
# bench/policy-update.sh: how long a NetworkPolicy change takes to reach the kernel.
#
# Brings up a lab under --api (routers in Kubernetes mode against the lab's API server) with
# the cluster of bench/policy-cluster.py: 300 pods in 10 namespaces spread over NODES nodes
# (--pods 0 --model), and applies its 100 NetworkPolicies with kubectl. Then, UPDATES times,
# changes one policy (ns0/toggle: the address K of its ipBlock 198.51.100.K/32) with
# `kubectl apply` and times how long the new rules take to be in node n1's kernel:
#
#   write    when the change was written: the moment a `kubectl get --watch` on the policy,
#            started beforehand, receives the event (what the routers' own watches get)
#   in       when n1's router logged "NetworkPolicy rules replaced" for a table that holds
#            198.51.100.K (the log line is written once `nft -f` has returned; the marker is
#            checked with `nft list table ip weft` in n1's namespace before the update counts)
#   latency  in - write; also from kubectl's start (what a user waits, kubectl's own start-up
#            included)
#
# and splits the latency with the router's log: the debounce (100 ms, fixed in the router),
# the `nft -f` it timed (took_ms), and the rest (compute the model, render the script, read
# the old table's counters, the watch's own delay). Updates are 1 s apart, so that each is
# its own router turn. Then it times `nft -f` of n1's table alone, in a scratch namespace:
# the first load, and replacing the table with itself in one transaction as the router does.
#
# TOGGLE: all  the toggle policy selects every pod of ns0, which has pods on every node: every
#              router reloads its table on each update
#         n1   it selects only ns0's pods on n1: only n1's rules change (the other routers
#              compute, render, find the same script and load nothing)
#         both all's updates, then n1's, in the same lab
#
# Usage: bench/policy-update.sh [--help]     (as root, from anywhere in the repository)
#
# Environment (defaults after the =):
#   NODES=3          lab nodes (10 needs some 300 MB more memory than 3; see docs/performance.md)
#   TOGGLE=both      all, n1 or both (above)
#   UPDATES=15       timed updates per TOGGLE
#   NFT_RUNS=10      timed `nft -f` runs of each kind
#   PREFIX=wpolu     the lab's namespace prefix (bench/run.sh uses wbench, tests others)
#   NO_BUILD=0       1: skip `cargo build` and use the release binaries already built
#   CARGO_TARGET_DIR where cargo builds (default: target/ in the repository)
#   OUT=             a directory to keep the raw results in (per-update times, router logs, n1's
#                    table, the cluster files); by default a temporary directory, removed
#
# Needs: iproute2, nftables (nft), kubectl, jq, python3, coreutils (date), grep, sed, awk.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi
if [[ $# -gt 0 ]]; then
    echo "bench/policy-update.sh: no arguments expected (see --help); options are environment variables" >&2
    exit 2
fi

NODES=${NODES:-3}
TOGGLE=${TOGGLE:-both}
UPDATES=${UPDATES:-15}
NFT_RUNS=${NFT_RUNS:-10}
PREFIX=${PREFIX:-wpolu}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}
DEBOUNCE_MS=100  # router/src/kubernetes/policy.rs

die() { echo "bench/policy-update.sh: $*" >&2; exit 1; }
log() { echo "policy-update: $*" >&2; }

if ! [[ $NODES =~ ^[0-9]+$ ]] || ((NODES < 1 || NODES > 20)); then die "NODES must be 1-20"; fi
# Each update takes a new K of 198.51.100.K, 0-255, over both variants.
if ! [[ $UPDATES =~ ^[0-9]+$ ]] || ((UPDATES < 1 || UPDATES > 120)); then die "UPDATES must be 1-120"; fi
[[ $NFT_RUNS =~ ^[1-9][0-9]*$ ]] || die "NFT_RUNS must be a positive integer"
[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] || die "PREFIX must be 1-8 lowercase letters or digits"
case $TOGGLE in all) TOGGLES=(all) ;; n1) TOGGLES=(n1) ;; both) TOGGLES=(all n1) ;;
*) die "TOGGLE must be all, n1 or both" ;; esac
[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces)"
for tool in ip nft kubectl jq python3 date grep sed awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see --help)"
done
((BASH_VERSINFO[0] >= 5)) || die "needs bash 5 (EPOCHREALTIME)"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $TARGET == /* ]] || TARGET=$REPO/$TARGET
WEFT=$TARGET/release/weft
GEN=$REPO/bench/policy-cluster.py

WORK=$(mktemp -d /tmp/weft-polu.XXXXXX)
LAB_UP=0
SCRATCH=""
WATCHER=""
NODE_DIR=()

cleanup() {
    local rc=$?
    set +e
    if [[ -n $WATCHER ]]; then
        [[ -s $WORK/watch.pid ]] && kill "$(cat "$WORK/watch.pid")" 2>/dev/null
        kill "$WATCHER" 2>/dev/null
        wait "$WATCHER" 2>/dev/null
    fi
    [[ -z $SCRATCH ]] || ip netns del "$SCRATCH" 2>/dev/null
    if [[ $LAB_UP == 1 ]]; then
        if [[ -n $OUT ]]; then
            for ((i = 1; i <= NODES; i++)); do
                [[ -n ${NODE_DIR[i]:-} ]] && cp "${NODE_DIR[i]}/router.log" "$OUT/router-n$i.log" 2>/dev/null
            done
        fi
        "$WEFT" lab down --prefix "$PREFIX" >/dev/null || echo "policy-update: lab down failed" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n $OUT ]]; then mkdir -p "$OUT"; RAW=$OUT; else RAW=$WORK; fi

if [[ $NO_BUILD != 1 ]]; then
    log "cargo build --release --workspace --bins (target: $TARGET)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release --workspace --bins)
fi
[[ -x $WEFT && -x $TARGET/release/weft-cni ]] || die "no release binaries in $TARGET/release"

# --- lab and cluster ----------------------------------------------------------------------
python3 "$GEN" model --nodes "$NODES" >"$RAW/model.yaml"
python3 "$GEN" policies --toggle "${TOGGLES[0]}" --mark 0 >"$RAW/policies.yaml"

LAB_UP=1
log "weft lab up --nodes $NODES --pods 0 --api --model (300 pods) --prefix $PREFIX"
started=$EPOCHREALTIME
"$WEFT" lab up --nodes "$NODES" --pods 0 --api --model "$RAW/model.yaml" --prefix "$PREFIX" >&2
LAB_UP_S=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
"$WEFT" lab status --prefix "$PREFIX" --json >"$RAW/lab.json"
for ((i = 1; i <= NODES; i++)); do
    NODE_DIR[i]=$(jq -er --arg n "n$i" '.nodes[] | select(.name==$n) | .state_dir' "$RAW/lab.json")
done
N1=$(jq -er '.nodes[] | select(.name=="n1") | .namespace' "$RAW/lab.json")
KUBECONFIG_FILE=$("$WEFT" lab kubeconfig --prefix "$PREFIX")
kc() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }
N1_PODS=$(jq '[.pods[] | select(.node=="n1")] | length' "$RAW/lab.json")
ALL_PODS=$(jq '.pods | length' "$RAW/lab.json")
[[ $ALL_PODS == 300 ]] || die "the lab has $ALL_PODS pods, not 300"

# The router's log without colours.
n_log() { sed 's/\x1b\[[0-9;]*m//g' "${NODE_DIR[$1]}/router.log"; }
replaced() { n_log "$1" | grep 'NetworkPolicy rules replaced' || true; }
replaced_count() { replaced "$1" | wc -l; }
n1_table() { ip netns exec "$N1" nft list table ip weft 2>/dev/null; }
# (Not `n1_table | grep -q`: under pipefail, grep's early exit fails the pipeline.)
has_mark() { local t; t=$(n1_table); grep -Eq "198\.51\.100\.$1([^0-9]|$)" <<<"$t"; }
# Seconds since the epoch of a log line's leading RFC 3339 timestamp.
line_time() { date -u -d "$(awk '{ print $1 }' <<<"$1")" +%s.%N; }
took_ms() { sed -n 's/.*took_ms=\([0-9]*\).*/\1/p' <<<"$1"; }

log "kubectl apply: 100 NetworkPolicies"
kc apply -f "$RAW/policies.yaml" >"$RAW/apply-initial.txt"
for ((k = 0; k < 600; k++)); do has_mark 0 && break; sleep 0.1; done
has_mark 0 || die "n1's rules do not hold the toggle policy 60 s after the apply (see n1's router.log)"
sleep 2  # every router's first model loaded

n1_table >"$RAW/table-n1.nft"
TABLE_BYTES=$(wc -c <"$RAW/table-n1.nft")
TABLE_RULES=$(grep -cE '(return|drop|accept|jump|vmap)' "$RAW/table-n1.nft" || true)
TABLE_CHAINS=$(grep -c '^\s*chain ' "$RAW/table-n1.nft" || true)

# --- timed updates --------------------------------------------------------------------------
# The watcher: one line per event on the toggle policy, with when it arrived.
# kubectl writes its pid first: the cleanup ends the pipeline by ending kubectl (the reading
# loop, a subshell, keeps the script's traps and would outlive a signal of its own).
(
    echo "$BASHPID" >"$WORK/watch.pid"
    exec kubectl --kubeconfig "$KUBECONFIG_FILE" get networkpolicy toggle -n ns0 --watch-only \
        -o 'jsonpath={.spec.ingress[0].from[0].ipBlock.cidr}{"\n"}' 2>"$RAW/watch.err"
) | while IFS= read -r line; do echo "$EPOCHREALTIME $line"; done >"$RAW/watch.txt" &
WATCHER=$!
sleep 2

echo "toggle update k start exit write in total_write_ms total_start_ms took_ms rest_ms reloaded_nodes" >"$RAW/updates.txt"
mark=0
for toggle in "${TOGGLES[@]}"; do
    if [[ $toggle != "${TOGGLES[0]}" ]]; then
        # The switch from one variant to the other is an update of its own, not timed.
        mark=$((mark + 1))
        python3 "$GEN" toggle --toggle "$toggle" --mark "$mark" >"$WORK/toggle.yaml"
        kc apply -f "$WORK/toggle.yaml" >/dev/null
        for ((k = 0; k < 300; k++)); do has_mark "$mark" && break; sleep 0.1; done
        has_mark "$mark" || die "the switch to TOGGLE=$toggle did not reach n1 in 30 s"
        sleep 2
    fi
    for ((u = 1; u <= UPDATES; u++)); do
        mark=$((mark + 1))
        python3 "$GEN" toggle --toggle "$toggle" --mark "$mark" >"$WORK/toggle.yaml"
        declare -a before=()
        for ((i = 1; i <= NODES; i++)); do before[i]=$(replaced_count "$i"); done
        t_start=$EPOCHREALTIME
        kc apply -f "$WORK/toggle.yaml" >/dev/null
        t_exit=$EPOCHREALTIME
        # Wait for n1's next replacement whose table holds the marker (poll every 20 ms).
        line="" seen=${before[1]}
        for ((k = 0; k < 1500; k++)); do
            n=$(replaced_count 1)
            if ((n > seen)); then
                if has_mark "$mark"; then
                    # The marker is in: the replacement that put it there is the last one.
                    line=$(replaced 1 | tail -n1)
                    break
                fi
                seen=$n
            fi
            sleep 0.02
        done
        [[ -n $line ]] || die "update $u ($toggle): 198.51.100.$mark not in n1's rules after 30 s"
        sleep 1  # the other routers finish, and the next update is a turn of its own
        t_write=$(awk -v m="198.51.100.$mark/32" '$2 == m { print $1; exit }' "$RAW/watch.txt")
        [[ -n $t_write ]] || { log "update $u: the watch missed it; using kubectl's exit"; t_write=$t_exit; }
        t_in=$(line_time "$line")
        took=$(took_ms "$line")
        reloaded=0
        for ((i = 1; i <= NODES; i++)); do
            (($(replaced_count "$i") > before[i])) && reloaded=$((reloaded + 1))
        done
        awk -v tg="$toggle" -v u="$u" -v k="$mark" -v s="$t_start" -v e="$t_exit" -v w="$t_write" \
            -v i="$t_in" -v took="$took" -v d="$DEBOUNCE_MS" -v r="$reloaded" 'BEGIN {
            tw = 1000 * (i - w); ts = 1000 * (i - s)
            printf "%s %d %d %.6f %.6f %.6f %.6f %.1f %.1f %d %.1f %d\n", tg, u, k, s, e, w, i,
                tw, ts, took, tw - d - took, r }' >>"$RAW/updates.txt"
        log "TOGGLE=$toggle update $u/$UPDATES: $(tail -n1 "$RAW/updates.txt" | awk '{ print $8 " ms from the write, " $9 " ms from kubectl start, nft -f " $10 " ms" }')"
    done
done

# --- nft -f of the table alone ----------------------------------------------------------------
# In a scratch namespace, timed from inside it (one `ip netns exec` for the lot: its own
# start-up is not the router's to pay): the first load; the router's replacement (create,
# delete and recreate in one transaction) of the table by itself; the router's counter read
# (`nft -j list counters`, before every replacement); and nft's start-up alone (listing the
# tables, with the table in place and without). Each with nft's process start-up, which the
# router pays too.
SCRATCH="$PREFIX-nft"
ip netns add "$SCRATCH"
{ echo "table ip weft"; echo "delete table ip weft"; cat "$RAW/table-n1.nft"; } >"$WORK/replace.nft"
# The router writes peers as merged ranges, much as nft lists them. Before it did, it spelt
# them out as the engine's disjoint prefixes and left the merging to nft: that form is
# rebuilt here (each range becomes its prefixes) and timed beside the other, in one run.
python3 - "$WORK/replace.nft" >"$WORK/router-form.nft" <<'PY'
import ipaddress, re, sys
text = open(sys.argv[1]).read()
def spell(m):
    a, b = (ipaddress.IPv4Address(x) for x in m.group(0).split("-"))
    return ", ".join(str(n) for n in ipaddress.summarize_address_range(a, b))
ip = r"\d+\.\d+\.\d+\.\d+"
# A range alone after a match is wrapped in braces first, so that it can become a set.
text = re.sub(r"(addr )(%s-%s)(?= )" % (ip, ip), r"\1{ \2 }", text)
sys.stdout.write(re.sub(r"%s-%s" % (ip, ip), spell, text))
PY
# shellcheck disable=SC2016  # expanded by the inner bash
ip netns exec "$SCRATCH" bash -c '
    set -e
    ms() { awk -v s="$1" -v e="$2" "BEGIN { printf \"%.1f\\n\", 1000 * (e - s) }"; }
    for ((r = 1; r <= $1; r++)); do
        nft delete table ip weft 2>/dev/null || true
        s=$EPOCHREALTIME; nft -f "$2"; e=$EPOCHREALTIME; ms "$s" "$e" >>"$4/nft-first"
        s=$EPOCHREALTIME; nft -f "$3"; e=$EPOCHREALTIME; ms "$s" "$e" >>"$4/nft-replace"
        s=$EPOCHREALTIME; nft -f "$5"; e=$EPOCHREALTIME; ms "$s" "$e" >>"$4/nft-router-form"
        s=$EPOCHREALTIME; nft -j list counters table ip weft >/dev/null; e=$EPOCHREALTIME
        ms "$s" "$e" >>"$4/nft-counters"
        s=$EPOCHREALTIME; nft list tables >/dev/null; e=$EPOCHREALTIME; ms "$s" "$e" >>"$4/nft-full"
        nft delete table ip weft
        s=$EPOCHREALTIME; nft list tables >/dev/null; e=$EPOCHREALTIME; ms "$s" "$e" >>"$4/nft-empty"
    done' nft-timing "$NFT_RUNS" "$RAW/table-n1.nft" "$WORK/replace.nft" "$WORK" "$WORK/router-form.nft" ||
    die "nft -f of n1's table in a scratch namespace failed"

# --- report ---------------------------------------------------------------------------------
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
mmm() { # "median (min-max)" of a column of numbers on stdin
    local v; v=$(cat)
    printf '%s (%s-%s)' "$(median <<<"$v")" "$(sort -g <<<"$v" | head -n1)" "$(sort -g <<<"$v" | tail -n1)"
}
col() { awk -v t="$1" -v c="$2" 'NR > 1 && $1 == t { print $c }' "$RAW/updates.txt"; }

if rev=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    git -C "$REPO" diff --quiet HEAD -- || rev="$rev + uncommitted changes"
else
    rev=unknown
fi
[[ $NO_BUILD != 1 ]] || rev="binaries built $(date -u -r "$WEFT" '+%Y-%m-%d %H:%M UTC'), source here: $rev"
cpu=$(awk -F: '/model name/ { sub(/^ +/, "", $2); print $2; exit }' /proc/cpuinfo)
echo
echo "weft NetworkPolicy update benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), weft $rev"
echo "machine: $(nproc) CPUs ($cpu), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "lab: $NODES nodes, $ALL_PODS pods in 10 namespaces ($N1_PODS on n1), 100 NetworkPolicies; up in ${LAB_UP_S} s"
echo "n1's table: $TABLE_BYTES bytes as listed, $TABLE_CHAINS chains, $TABLE_RULES rules (lines with a verdict)"
echo
printf '%-7s %-26s %-26s %-22s %-22s %s\n' TOGGLE "write->in ms" "kubectl start->in ms" "nft -f (router) ms" \
    "rest ms" "nodes reloaded"
for toggle in "${TOGGLES[@]}"; do
    printf '%-7s %-26s %-26s %-22s %-22s %s\n' "$toggle" "$(col "$toggle" 8 | mmm)" "$(col "$toggle" 9 | mmm)" \
        "$(col "$toggle" 10 | mmm)" "$(col "$toggle" 11 | mmm)" "$(col "$toggle" 12 | median)"
done
echo "(median (min-max) of $UPDATES updates each; write: a kubectl watch on the policy got the event;"
echo " in: n1's router logged the replacement that loaded the marker; nft -f (router): its took_ms;"
echo " rest: write->in less the ${DEBOUNCE_MS} ms debounce and the nft -f: compute, render, counter"
echo " read, the router's watch; nodes reloaded: routers that replaced their table for the update)"
echo
echo "nft -f of n1's table alone (scratch namespace, $NFT_RUNS runs, ms, median (min-max)):"
echo "  first load          $(mmm <"$WORK/nft-first")"
echo "  replace with itself $(mmm <"$WORK/nft-replace")"
echo "  replace, prefixes   $(mmm <"$WORK/nft-router-form")  (ranges spelt out as prefixes, as the router wrote them before it merged them: $(wc -c <"$WORK/router-form.nft") bytes)"
echo "  counter read        $(mmm <"$WORK/nft-counters")  (nft -j list counters table ip weft)"
echo "  nft list tables     $(mmm <"$WORK/nft-full")  (start-up and cache, the table in place)"
echo "  nft list tables     $(mmm <"$WORK/nft-empty")  (start-up, no table)"
[[ -z $OUT ]] || echo "(raw results in $OUT)"
