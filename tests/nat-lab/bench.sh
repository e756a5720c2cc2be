#!/usr/bin/env bash
# -----------------------------------------------------------------------------
# NAT traversal figures, measured in the NAT lab (lab.sh) with real `formic
# node` processes: how long a node behind NAT takes to hold a relay
# reservation, and how often hole punching turns its relayed connections
# into direct ones, over TCP and over QUIC separately.
#
# Usage: tests/nat-lab/bench.sh [PEERS] [SETTLE_SECONDS] [PARTS]
#   PEERS           volunteers behind NAT, each behind its own router
#                   (default 7: 21 pairs, each pair one hole-punching try)
#   SETTLE_SECONDS  how long to let them find each other after the last
#                   reservation (default 60)
#   PARTS           which figures (default "tcp quic blobs"):
#                   tcp, quic: reservations and hole punching per transport;
#                   blobs: a 48 MiB input fetched between two peers behind
#                   NAT, hole-punched and (with the routers dropping each
#                   other's traffic) relayed, and the public node's traffic
#                   per unit of a 20-unit project computed behind NAT.
# Env: FORMIC_BIN (default target/release/formic, else target/debug/formic).
#
# One public node (`--kad-server --threads 0`) listens on the transport
# under test only, and so do the volunteers: every connection, relayed or
# punched, uses that transport. A pair counts as punched when both ends
# list each other as `direct` in `formic status --json`.
#
# Needs root, ip, iptables, python3 (for JSON), like lab.sh.
# -----------------------------------------------------------------------------
set -euo pipefail
cd "$(dirname "$0")/../.."

PEERS=${1:-7}
SETTLE=${2:-60}
PARTS=${3:-tcp quic blobs}
BIN=${FORMIC_BIN:-}
if [[ -z $BIN ]]; then
    if [[ -x target/release/formic ]]; then BIN=target/release/formic; else BIN=target/debug/formic; fi
fi
BIN=$(realpath "$BIN")
LAB=tests/nat-lab/lab.sh
PREFIX="fb$(( $$ % 100000 ))"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bash "$LAB" down "$PREFIX" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/config/formic"
# Nothing to compute here; no UPnP in the lab.
printf 'upnp = false\n' > "$WORK/config/formic/formic.toml"

# status NS DIR -> JSON on stdout (empty on failure)
status() {
    ip netns exec "$1" env XDG_CONFIG_HOME="$WORK/config" "$BIN" status --json --data-dir "$2" 2>/dev/null || true
}

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null || true; }

run_transport() {
    local transport=$1 listen boot
    case $transport in
        tcp) listen=/ip4/0.0.0.0/tcp/4001 ;;
        quic) listen=/ip4/0.0.0.0/udp/4001/quic-v1 ;;
    esac
    bash "$LAB" down "$PREFIX" >/dev/null 2>&1 || true
    bash "$LAB" up "$PREFIX" 1 "$PEERS" >/dev/null
    local dir=$WORK/$transport
    mkdir -p "$dir"

    ip netns exec "$PREFIX-pub0" env XDG_CONFIG_HOME="$WORK/config" "$BIN" node \
        --data-dir "$dir/public" --kad-server --threads 0 --no-mdns --listen "$listen" \
        >"$dir/public.out" 2>"$dir/public.log" &
    PIDS+=($!)
    local tries=0
    until [[ -s $dir/public.out ]]; do
        sleep 0.2; tries=$((tries + 1)); (( tries < 150 )) || { echo "public node did not start" >&2; exit 1; }
    done
    local public_id
    public_id=$(head -1 "$dir/public.out")
    case $transport in
        tcp) boot=/ip4/198.18.0.2/tcp/4001/p2p/$public_id ;;
        quic) boot=/ip4/198.18.0.2/udp/4001/quic-v1/p2p/$public_id ;;
    esac

    local k started
    started=$(date +%s.%N)
    for ((k = 0; k < PEERS; k++)); do
        ip netns exec "$PREFIX-nat$k" env XDG_CONFIG_HOME="$WORK/config" "$BIN" node \
            --data-dir "$dir/v$k" --threads 0 --no-mdns --listen "$listen" --bootstrap "$boot" \
            >"$dir/v$k.out" 2>"$dir/v$k.log" &
        PIDS+=($!)
    done
    for ((k = 0; k < PEERS; k++)); do
        until [[ -s $dir/v$k.out ]]; do sleep 0.2; done
    done

    # Reservations.
    local deadline=$(( $(date +%s) + 180 )) reserved=0 times=()
    while (( reserved < PEERS )); do
        (( $(date +%s) < deadline )) || { echo "$transport: only $reserved of $PEERS reserved a relay in 180 s" >&2; break; }
        reserved=0; times=()
        for ((k = 0; k < PEERS; k++)); do
            local ms
            ms=$(status "$PREFIX-nat$k" "$dir/v$k" | json 'd.get("first_reservation_ms") or ""')
            if [[ -n $ms ]]; then reserved=$((reserved + 1)); times+=("$ms"); fi
        done
        sleep 1
    done

    sleep "$SETTLE"

    # Direct pairs and hole-punch events.
    local ids=() directs=() punched=0 failed=0
    for ((k = 0; k < PEERS; k++)); do
        ids[k]=$(head -1 "$dir/v$k.out")
        local s
        s=$(status "$PREFIX-nat$k" "$dir/v$k")
        directs[k]=$(echo "$s" | json '" ".join(c["peer"] for c in d.get("peer_connections", []) if c["kind"] == "direct")')
        punched=$((punched + $(echo "$s" | json 'd.get("hole_punches", {}).get("succeeded", 0)' || echo 0)))
        failed=$((failed + $(echo "$s" | json 'd.get("hole_punches", {}).get("failed", 0)' || echo 0)))
    done
    local pairs=0 direct_pairs=0 i j
    for ((i = 0; i < PEERS; i++)); do
        for ((j = i + 1; j < PEERS; j++)); do
            pairs=$((pairs + 1))
            if [[ " ${directs[i]} " == *" ${ids[j]} "* && " ${directs[j]} " == *" ${ids[i]} "* ]]; then
                direct_pairs=$((direct_pairs + 1))
            fi
        done
    done
    local sorted
    sorted=$(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')
    printf '%s: relay reservation after %s ms (%d of %d nodes); direct pairs %d of %d; DCUtR upgrades reported %d succeeded, %d failed (each counted at both ends)\n' \
        "$transport" "${sorted% }" "$reserved" "$PEERS" "$direct_pairs" "$pairs" "$punched" "$failed"

    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    bash "$LAB" down "$PREFIX" >/dev/null 2>&1 || true
}

# Bytes in + out of the public host's interface.
public_bytes() {
    ip -n "$PREFIX-pub0" -s -j link show eth0 \
        | python3 -c "import json,sys; s=json.load(sys.stdin)[0]['stats64']; print(s['rx']['bytes'] + s['tx']['bytes'])"
}

# Starts `formic node` in NS with CONFIG; prints its PeerId.
start_node() {
    local ns=$1 config=$2 dir=$3; shift 3
    ip netns exec "$ns" env XDG_CONFIG_HOME="$config" "$BIN" node --data-dir "$dir" --no-mdns "$@" \
        >"$dir.out" 2>"$dir.log" &
    PIDS+=($!)
    local tries=0
    until [[ -s $dir.out ]]; do
        sleep 0.2; tries=$((tries + 1)); (( tries < 150 )) || { echo "node $dir did not start" >&2; exit 1; }
    done
    head -1 "$dir.out"
}

# Publishes APP with INPUTS from the owner (nat0); prints the ProjectId.
publish() {
    local dir=$1 inputs=$2 boot=$3; shift 3
    ip netns exec "$PREFIX-nat0" env XDG_CONFIG_HOME="$WORK/config" "$BIN" publish \
        work-units/apps/primes.wat --inputs "$inputs" --quorum 2 --timeout 5m \
        --data-dir "$dir/owner" --no-mdns --bootstrap "$boot" "$@" 2>"$dir/publish.log"
}

run_blobs() {
    local variant=$1 dir=$WORK/blobs-$1
    mkdir -p "$dir" "$WORK/pubconfig/formic" "$WORK/volconfig/formic"
    # The public node cannot hold the 48 MiB input (its quota is smaller), so
    # the volunteer must fetch it from the owner, behind the other NAT.
    printf 'upnp = false\ndisk_quota = "16MiB"\n' > "$WORK/pubconfig/formic/formic.toml"
    printf 'upnp = false\ncpu_threshold_percent = 100\nthreads = 1\nidle_after = "1s"\nrun_on_battery = true\n' \
        > "$WORK/volconfig/formic/formic.toml"
    bash "$LAB" down "$PREFIX" >/dev/null 2>&1 || true
    bash "$LAB" up "$PREFIX" 1 3 >/dev/null
    if [[ $variant == relayed ]]; then
        # Each router drops whatever the other NATed routers send, so hole
        # punching fails and traffic between them stays on the relay.
        local k j
        for k in 0 1 2; do
            for j in 0 1 2; do
                (( k == j )) && continue
                ip netns exec "$PREFIX-rtr$k" iptables -I FORWARD -i wan -s "198.18.0.$((100 + j))" -j DROP
            done
        done
    fi
    local public_id boot
    public_id=$(start_node "$PREFIX-pub0" "$WORK/pubconfig" "$dir/public" --kad-server --threads 0)
    boot=/ip4/198.18.0.2/tcp/4001/p2p/$public_id
    start_node "$PREFIX-nat1" "$WORK/volconfig" "$dir/v1" --threads 1 --bootstrap "$boot" >/dev/null
    start_node "$PREFIX-nat2" "$WORK/volconfig" "$dir/v2" --threads 1 --bootstrap "$boot" >/dev/null
    sleep 20 # reservations (about 14 s)

    # The public node's traffic per unit of a small project computed behind NAT.
    seq 0 19 | awk '{print $1*100000, ($1+1)*100000}' > "$dir/small.txt"
    local before after project
    before=$(public_bytes)
    project=$(publish "$dir" "$dir/small.txt" "$boot" --name small --replicate 2)
    local deadline=$(( $(date +%s) + 300 )) done_units=0
    while (( done_units < 20 && $(date +%s) < deadline )); do
        sleep 1
        done_units=$(status "$PREFIX-nat1" "$dir/v1" | json "max([p['validated'] for p in d.get('compute', {}).get('projects', []) if p['project'] == '$project'] or [0])")
        done_units=${done_units:-0}
    done
    after=$(public_bytes)
    printf 'blobs, %s: public node traffic %d bytes for %d validated units of a 20-unit project (%d bytes per unit)\n' \
        "$variant" $((after - before)) "$done_units" $(( (after - before) / (done_units > 0 ? done_units : 1) ))

    mkdir -p "$dir/big"
    head -c $((48 << 20)) /dev/urandom > "$dir/big/0"
    publish "$dir" "$dir/big" "$boot" --name big --replicate 1 >/dev/null
    local fetched
    fetched=$(grep -h "fetched blob" "$dir/v1.log" "$dir/v2.log" | grep "size=$((48 << 20))" | head -1 || true)
    local took=${fetched#*took_ms=}; took=${took%% *}
    local rate=${fetched#*mb_per_s=}; rate=${rate%% *}
    printf 'blobs, %s: 48 MiB input fetched between peers behind NAT in %s ms (%s MB/s)\n' "$variant" "${took:-?}" "${rate:-?}"

    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    bash "$LAB" down "$PREFIX" >/dev/null 2>&1 || true
}

echo "formic: $BIN; $PEERS peers behind NAT, ${SETTLE}s to settle; $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for part in $PARTS; do
    case $part in
        tcp | quic) run_transport "$part" ;;
        blobs) run_blobs direct; run_blobs relayed ;;
        *) echo "unknown part $part" >&2; exit 2 ;;
    esac
done
