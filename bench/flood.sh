#!/usr/bin/env bash
# bench/flood.sh: what a flood does to a weft node, measured in the lab.
#
# Brings up a 3-node lab (one pod per node) and, while the pods of n2 and n3 ping the pod of
# n1 every 100 ms (ping -i 0.1: each ping crosses the flooded node both ways), runs phases of
# FLOOD_SECONDS each against n1's router with `weft lab flood`:
#
#   quiet            no flood: the baseline for handshakes and drops
#   init, 1 source   valid handshake initiations (the lab's join secret: a rogue member), a
#                    new ephemeral key each, from one address, at the highest rate one thread
#                    of this machine reaches
#   init, N sources  the same round robin over SOURCES addresses of the underlay range
#   garbage          random bytes (1-200 of them) from one address
#
# and prints one table, a row per phase:
#
#   sent/s, sent     datagrams the flood tool sent (its own count) and their rate
#   answered         datagrams that came back to the flooder (n1's handshake responses; for
#                    garbage, stale-index notices)
#   counted          n1's weft_drops_total, all reasons, during the phase (before/after
#                    /metrics), + the handshake responses among the answers: every flood
#                    datagram the router accounts for (drops of the pods' own traffic would
#                    count too)
#   unaccounted      sent - counted (negative: the router counted more than the flood sent,
#                    e.g. drops of the pods' own traffic)
#   rcvbuf           UDP receive-buffer errors in n1's namespace during the phase
#                    (/proc/net/snmp, Udp RcvbufErrors): datagrams the kernel dropped before
#                    the router could read them; the router cannot count these
#   loss n2, loss n3 ping loss % of n2's and n3's pod to n1's pod during the phase
#   handshakes       weft_handshakes_total of all three routers during the phase: sessions
#                    (re-)made, both ends counting. Every session is rekeyed after 120 s, so
#                    every other phase of 60 s holds one rekey of each of the 3 pairs (6):
#                    that is the clock, not the flood
#   peer down        `peer down` lines in the three routers' logs during the phase: tunnels
#                    lost (a re-handshake the flood caused would follow one)
#   RSS peak         VmHWM of n1's router after the phase (the peak since it started)
#   load             the 1-minute load average at the end of the phase
#
# and the drop reasons of each phase below it. Targets: loss <= 1%, no more handshakes
# than the rekeys, no peer down, RSS < 40 MiB, unaccounted 0.
#
# Usage: bench/flood.sh [--help]   (as root, from anywhere in the repository)
#
# Environment (defaults after the =):
#   FLOOD_SECONDS=60   seconds per phase
#   SOURCES=1000       source addresses of the many-source flood (at most 4096)
#   PREFIX=wflood      the lab's namespace prefix
#   NO_BUILD=0         1: use the release binaries already built
#   CARGO_TARGET_DIR   where cargo builds (default: target/ in the repository)
#   OUT=               a directory to keep the raw results in (metrics, flood reports,
#                      ping output, router logs)
#
# Needs: iproute2, jq, iputils-ping, curl, awk; a Rust toolchain unless NO_BUILD=1.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
fi
[[ $# -eq 0 ]] || { echo "bench/flood.sh: no arguments expected (see --help)" >&2; exit 2; }

FLOOD_SECONDS=${FLOOD_SECONDS:-60}
SOURCES=${SOURCES:-1000}
PREFIX=${PREFIX:-wflood}
NO_BUILD=${NO_BUILD:-0}
OUT=${OUT:-}

die() { echo "bench/flood.sh: $*" >&2; exit 1; }
log() { echo "flood: $*" >&2; }

[[ $FLOOD_SECONDS =~ ^[1-9][0-9]*$ ]] || die "FLOOD_SECONDS must be a positive integer"
[[ $SOURCES =~ ^[1-9][0-9]*$ && $SOURCES -le 4096 ]] || die "SOURCES must be 1 to 4096"
[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] || die "PREFIX must be 1-8 lowercase letters or digits"
[[ $(id -u) -eq 0 ]] || die "run as root (network namespaces)"
for tool in ip jq ping curl awk; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
[[ $TARGET == /* ]] || TARGET=$REPO/$TARGET
WEFT=$TARGET/release/weft

WORK=$(mktemp -d /tmp/weft-flood.XXXXXX)
PIDS=()
LAB_UP=0
cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    if [[ $LAB_UP == 1 ]]; then
        if [[ -n $OUT ]]; then
            for i in 1 2 3; do cp "/run/weft-lab/$PREFIX/n$i/router.log" "$OUT/router-n$i.log" 2>/dev/null; done
        fi
        "$WEFT" lab down --prefix "$PREFIX" >/dev/null || echo "flood: lab down failed" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [[ -n $OUT ]]; then mkdir -p "$OUT"; RAW=$OUT; else RAW=$WORK; fi

if [[ $NO_BUILD != 1 ]]; then
    log "cargo build --release -p weft -p weft-cni (target: $TARGET)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release -p weft -p weft-cni --bins)
fi
[[ -x $WEFT && -x $TARGET/release/weft-cni ]] || die "no release binaries in $TARGET/release"

LAB_UP=1
log "weft lab up --nodes 3 --pods 1 --prefix $PREFIX"
"$WEFT" lab up --nodes 3 --pods 1 --prefix "$PREFIX" >&2
"$WEFT" lab status --prefix "$PREFIX" --json >"$RAW/lab.json"
jqs() { jq -er "$1" "$RAW/lab.json"; }
NS=(unused "$(jqs '.nodes[0].namespace')" "$(jqs '.nodes[1].namespace')" "$(jqs '.nodes[2].namespace')")
P1_ADDR=$(jqs '.pods[] | select(.name=="n1-p1") | .address')

metrics() { ip netns exec "${NS[$1]}" curl -sf --max-time 10 http://127.0.0.1:6787/metrics; }
# sum_drops FILE: every weft_drops_total line's value, summed.
sum_drops() { awk '/^weft_drops_total\{/ {s += $NF} END {printf "%d", s}' "$1"; }
handshakes() { awk '/^weft_handshakes_total / {print $NF}' "$1"; }
rcvbuf() {
    ip netns exec "${NS[1]}" cat /proc/net/snmp |
        awk '/^Udp:/ {if (!h) {for (i = 1; i <= NF; i++) col[$i] = i; h = 1} else print $col["RcvbufErrors"]}'
}
router_pid() { "$WEFT" lab status --prefix "$PREFIX" --json | jq -er '.nodes[0].router_pid'; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$(router_pid)/status"; }

# Settle: the first handshakes and gossip are over before the quiet phase starts.
sleep 5

ROWS=()
REASONS=()
phase() {
    local name=$1 kind=$2 sources=$3 tag=${1// /_}
    tag=${tag//,/}
    log "phase: $name (${FLOOD_SECONDS}s)"
    for i in 1 2 3; do metrics "$i" >"$RAW/$tag-before-n$i.prom"; done
    local rb_before; rb_before=$(rcvbuf)
    DOWNS_BEFORE=(0)
    for i in 1 2 3; do DOWNS_BEFORE[$i]=$(grep -c 'peer down' "/run/weft-lab/$PREFIX/n$i/router.log" || true); done
    # Pings start together with the flood and last as long.
    local pings=$((FLOOD_SECONDS * 10))
    ip netns exec "$PREFIX-n2-p1" ping -q -n -i 0.1 -c "$pings" -W 1 "$P1_ADDR" >"$RAW/$tag-ping-n2.txt" 2>&1 &
    local p2=$!
    ip netns exec "$PREFIX-n3-p1" ping -q -n -i 0.1 -c "$pings" -W 1 "$P1_ADDR" >"$RAW/$tag-ping-n3.txt" 2>&1 &
    local p3=$!
    PIDS+=("$p2" "$p3")
    if [[ $kind == none ]]; then
        sleep "$FLOOD_SECONDS"
        echo '{"datagrams":0,"answers":0,"responses":0,"rate":0}' >"$RAW/$tag-flood.json"
    else
        "$WEFT" lab flood n1 --prefix "$PREFIX" --kind "$kind" --sources "$sources" \
            --seconds "$FLOOD_SECONDS" --json >"$RAW/$tag-flood.json"
    fi
    wait "$p2" "$p3" || true
    PIDS=()
    sleep 1
    for i in 1 2 3; do metrics "$i" >"$RAW/$tag-after-n$i.prom"; done
    local rb_after; rb_after=$(rcvbuf)
    local load; load=$(cut -d' ' -f1 /proc/loadavg)
    local sent answered rate
    sent=$(jq -r .datagrams "$RAW/$tag-flood.json")
    answered=$(jq -r .answers "$RAW/$tag-flood.json")
    rate=$(jq -r '.rate | floor' "$RAW/$tag-flood.json")
    local drops=$(($(sum_drops "$RAW/$tag-after-n1.prom") - $(sum_drops "$RAW/$tag-before-n1.prom")))
    # A handshake response answers an initiation the router did not drop; anything else
    # that comes back (a stale-index notice for garbage) answers a datagram it also counted.
    local counted=$((drops + $(jq -r .responses "$RAW/$tag-flood.json")))
    local downs=0 lines
    for i in 1 2 3; do
        lines=$(grep -c 'peer down' "/run/weft-lab/$PREFIX/n$i/router.log" || true)
        downs=$((downs + lines - ${DOWNS_BEFORE[$i]}))
    done
    local hs=0
    for i in 1 2 3; do
        hs=$((hs + $(handshakes "$RAW/$tag-after-n$i.prom") - $(handshakes "$RAW/$tag-before-n$i.prom")))
    done
    loss() { grep -o '[0-9.]*% packet loss' "$1" | cut -d% -f1; }
    ROWS+=("$(printf '%-18s %9s %10s %9s %10s %11s %8s %7s %7s %10s %10s %8s %5s' \
        "$name" "$rate" "$sent" "$answered" "$counted" "$((sent - counted))" \
        "$((rb_after - rb_before))" "$(loss "$RAW/$tag-ping-n2.txt")" \
        "$(loss "$RAW/$tag-ping-n3.txt")" "$hs" "$downs" "$(($(hwm_kib) / 1024))MiB" "$load")")
    # Drop reasons that moved on n1 in this phase.
    local moved
    moved=$(join -a2 -e0 -o '0,1.2,2.2' \
        <(grep '^weft_drops_total{' "$RAW/$tag-before-n1.prom" | sed 's/weft_drops_total{reason="\([a-z_]*\)"}/\1/' | sort) \
        <(grep '^weft_drops_total{' "$RAW/$tag-after-n1.prom" | sed 's/weft_drops_total{reason="\([a-z_]*\)"}/\1/' | sort) |
        awk '$3 - $2 > 0 {printf "%s%s=%d", sep, $1, $3 - $2; sep=", "}')
    REASONS+=("$(printf '%-18s %s' "$name" "${moved:-none}")")
}

phase "quiet" none 1
phase "init, 1 source" initiation 1
phase "init, $SOURCES sources" initiation "$SOURCES"
phase "garbage" garbage 1

echo
echo "weft flood figures: 3-node lab, n1's router flooded ${FLOOD_SECONDS}s per phase; $(nproc) CPUs; $("$WEFT" --version 2>/dev/null || echo weft)"
printf '%-18s %9s %10s %9s %10s %11s %8s %7s %7s %10s %10s %8s %5s\n' \
    phase sent/s sent answered counted unaccounted rcvbuf "loss2%" "loss3%" handshakes "peer down" "RSS peak" load
for r in "${ROWS[@]}"; do echo "$r"; done
echo
echo "n1's drops by reason during each phase:"
for r in "${REASONS[@]}"; do echo "$r"; done
