#!/usr/bin/env bash
# -----------------------------------------------------------------------------
# nat-lab: a throw-away "home NAT" network built from Linux network namespaces.
#
# Integration tests use it to run Formic nodes that sit behind consumer-style
# NAT routers (MASQUERADE + "drop unsolicited inbound") next to nodes that sit
# directly on a public network, so that NAT traversal / hole punching can be
# exercised on one machine without touching the host's own networking.
#
# Usage:
#   lab.sh up    PREFIX N_PUBLIC N_NATED   build the topology, print a summary
#   lab.sh down  PREFIX                    remove everything, idempotent
#   lab.sh check PREFIX                    self-test of an existing lab
#
# Topology (K = 0, 1, 2, ...):
#
#   PREFIX-inet   "the internet": bridge br0, 198.18.0.0/24, no IP of its own.
#                 198.18.0.0/15 is the RFC 2544 benchmarking range: it is not
#                 routed on the real internet, yet address classifiers
#                 (is_private()/is_global()-style checks) do NOT treat it as
#                 RFC 1918 private, so software under test sees "public" peers.
#   PREFIX-pubK   public host, eth0 = 198.18.0.(2+K)/24, bridged into inet.
#   PREFIX-rtrK   home router: wan = 198.18.0.(100+K)/24 (bridged into inet),
#                 lan = 10.(K+1).0.1/24; ip_forward=1, MASQUERADE on wan,
#                 stateful firewall dropping unsolicited inbound from wan.
#   PREFIX-natK   NATed host, eth0 = 10.(K+1).0.2/24, default route via router.
#
# Everything (bridge, veths, firewall rules, sysctls) lives inside the lab's own
# namespaces; nothing is created in the root namespace.  Deleting the
# namespaces therefore removes every trace of the lab, and several labs with
# different prefixes can coexist (each has its own private "internet", so the
# same addresses can be reused).
#
# `up` prints one machine-readable line per host on stdout (logs go to stderr):
#   pubK PREFIX-pubK 198.18.0.(2+K)
#   natK PREFIX-natK 10.(K+1).0.2 router-wan 198.18.0.(100+K)
# -----------------------------------------------------------------------------
set -euo pipefail

readonly WAN_NET=198.18.0      # /24 of the simulated internet
readonly PUB_BASE=2            # pubK  -> 198.18.0.(PUB_BASE+K)
readonly RTR_BASE=100          # rtrK  -> 198.18.0.(RTR_BASE+K)
readonly MAX_PUB=$((RTR_BASE - PUB_BASE))   # keep public and router ranges disjoint
readonly MAX_NAT=$((254 - RTR_BASE + 1))    # last usable host address is .254

PROG=$(basename "$0")

usage() {
    cat >&2 <<EOF
usage: $PROG up    PREFIX N_PUBLIC N_NATED
       $PROG down  PREFIX
       $PROG check PREFIX

  up     (re)build the lab; prints one line per host on stdout:
           pubK PREFIX-pubK <ip>
           natK PREFIX-natK <lan-ip> router-wan <router-wan-ip>
  down   delete all namespaces (and thus bridge/veths/rules) of PREFIX;
         succeeds even if nothing exists
  check  self-test an existing lab (NAT, inbound drop, TCP/UDP hole punching)

PREFIX: 1-16 chars of [A-Za-z0-9_] (used only in namespace names; interface
names are fixed and short because each lives in its own namespace).
N_PUBLIC: 0..$MAX_PUB   N_NATED: 0..$MAX_NAT
Must run as root. Needs: ip (iproute2), iptables, python3, timeout.
EOF
    exit 2
}

log() { echo "[nat-lab] $*" >&2; }
die() { echo "[nat-lab] ERROR: $*" >&2; exit 1; }

# Run a command inside a namespace.  Always via `ip netns exec` so that the
# command also gets the namespace's /sys and /proc/sys/net view (sysctl works).
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

validate_prefix() {
    # No '-' or regex metacharacters: `down` matches namespaces with an
    # anchored regex, and a prefix like "a" must never match "a-b-inet".
    [[ ${1:-} =~ ^[A-Za-z0-9_]{1,16}$ ]] || die "invalid PREFIX '${1:-}' (1-16 chars of [A-Za-z0-9_])"
}

validate_count() {
    local what=$1 val=$2 max=$3
    [[ $val =~ ^[0-9]+$ ]] || die "$what must be a non-negative integer, got '$val'"
    (( val <= max )) || die "$what must be <= $max (address plan), got $val"
}

need_tools() {
    (( EUID == 0 )) || die "must run as root (network namespaces, iptables)"
    local t missing=()
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
    (( ${#missing[@]} == 0 )) || die "missing tools: ${missing[*]} (Debian: apt-get install -y iproute2 iptables python3 coreutils)"
}

# All namespaces belonging to PREFIX, exactly as `up` names them.
lab_namespaces() {
    local p=$1
    ip netns list 2>/dev/null | awk '{print $1}' \
        | grep -E "^${p}-(inet|pub[0-9]+|rtr[0-9]+|nat[0-9]+)$" || true
}

# Indices K of the existing PREFIX-<kind>K namespaces, sorted numerically.
lab_indices() {
    local p=$1 kind=$2
    lab_namespaces "$p" | sed -nE "s/^${p}-${kind}([0-9]+)$/\1/p" | sort -n
}

# ----------------------------------------------------------------------------- down
cmd_down() {
    local p=$1 ns pids
    for ns in $(lab_namespaces "$p"); do
        # Processes left inside a namespace (lab nodes, check helpers) keep it
        # alive -- and its veths/bridge with it -- even after `ip netns del`
        # removes the name.  Kill exactly those PIDs so the lab really goes away.
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
        # Deleting the namespace destroys its interfaces; a veth dies together
        # with its peer in the other namespace, so no per-link cleanup needed.
        ip netns del "$ns" 2>/dev/null || true
    done
    # Be explicit when something could not be removed, but never fail: `down`
    # is used as a best-effort cleanup (traps, before `up`).
    local left
    left=$(lab_namespaces "$p")
    if [[ -n $left ]]; then
        log "warning: namespaces still present after down: ${left//$'\n'/ }"
    fi
    return 0
}

# ----------------------------------------------------------------------------- up
# Baseline settings every namespace gets before any link is created, so that
# interfaces created later inherit the "default" values.
ns_init() {
    local ns=$1
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
    # Strict reverse-path filtering would drop asymmetric or NAT'ed paths in
    # odd corner cases; this is a lab, so turn it off everywhere.  Both "all"
    # and "default" matter: the effective value is max(all, <iface>).
    nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    # The lab is IPv4-only on purpose: with IPv6 on, hosts would get link-local
    # addresses and an unfiltered (no ip6tables) path across the bridge that
    # could bypass the simulated NAT.  Loopback keeps ::1 since only the
    # "default" template (used for interfaces created from now on) is changed.
    if [[ -e /proc/sys/net/ipv6 ]]; then
        nsx "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    fi
}

# Per-interface rp_filter too: "default" only applies at creation time in the
# namespace where the device is created, and a veth peer created "into"
# another namespace may have been initialised from the creator's template.
iface_sysctls() {
    local ns=$1 dev=$2
    nsx "$ns" sysctl -qw "net.ipv4.conf.${dev}.rp_filter=0"
    if [[ -e /proc/sys/net/ipv6 ]]; then
        nsx "$ns" sysctl -qw "net.ipv6.conf.${dev}.disable_ipv6=1"
    fi
}

cmd_up() {
    local p=$1 npub=$2 nnat=$3 k
    local inet="$p-inet"

    # Re-running `up` must give a fresh, known state, not fail on "File exists".
    cmd_down "$p"

    # If anything below fails, don't leave half a lab behind.
    trap 'log "up failed, cleaning up"; cmd_down "$p"' ERR

    # --- the internet: a plain L2 bridge in its own namespace -----------------
    ns_init "$inet"
    nsx "$inet" ip link add br0 type bridge stp_state 0 forward_delay 0
    nsx "$inet" ip link set br0 up
    # If br_netfilter is loaded on the host, bridged frames would be passed to
    # this namespace's (empty) iptables/conntrack.  Harmless but confusing;
    # the internet should be a dumb wire.
    if nsx "$inet" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
        nsx "$inet" sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
            net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0
    fi

    # --- public hosts ----------------------------------------------------------
    for ((k = 0; k < npub; k++)); do
        local ns="$p-pub$k" ip="$WAN_NET.$((PUB_BASE + k))"
        ns_init "$ns"
        # Create the pair inside the inet namespace with the peer placed
        # directly into the host namespace: no temporary names in the root
        # namespace, so nothing can clash with host interfaces or other labs.
        nsx "$inet" ip link add "p$k" type veth peer name eth0 netns "$ns"
        nsx "$inet" ip link set "p$k" master br0 up
        iface_sysctls "$ns" eth0
        nsx "$ns" ip addr add "$ip/24" dev eth0
        nsx "$ns" ip link set eth0 up
        # Deliberately no default route: the whole "internet" is this /24, so
        # anything else fails fast with ENETUNREACH instead of timing out.
    done

    # --- NATed hosts, each behind its own router ------------------------------
    for ((k = 0; k < nnat; k++)); do
        local rtr="$p-rtr$k" host="$p-nat$k"
        local wan_ip="$WAN_NET.$((RTR_BASE + k))"
        local lan_net="10.$((k + 1)).0" # distinct LANs, so logs are unambiguous
        ns_init "$rtr"
        ns_init "$host"

        # WAN side: router <-> internet bridge.
        nsx "$inet" ip link add "r$k" type veth peer name wan netns "$rtr"
        nsx "$inet" ip link set "r$k" master br0 up
        # LAN side: router <-> host (a point-to-point "home LAN").
        nsx "$rtr" ip link add lan type veth peer name eth0 netns "$host"
        iface_sysctls "$rtr" wan
        iface_sysctls "$rtr" lan
        iface_sysctls "$host" eth0

        nsx "$rtr" ip addr add "$wan_ip/24" dev wan
        nsx "$rtr" ip addr add "$lan_net.1/24" dev lan
        nsx "$rtr" ip link set wan up
        nsx "$rtr" ip link set lan up
        # Only routers forward; hosts keep the namespace default (0).
        nsx "$rtr" sysctl -qw net.ipv4.ip_forward=1

        nsx "$host" ip addr add "$lan_net.2/24" dev eth0
        nsx "$host" ip link set eth0 up
        nsx "$host" ip route add default via "$lan_net.1" dev eth0

        # Home-router firewall.  -w: wait for the xtables lock instead of
        # failing if several labs are being built concurrently.
        local ipt=(nsx "$rtr" iptables -w)
        # Source NAT to the WAN address.  MASQUERADE keeps the original source
        # port when it is free on the WAN side (endpoint-independent mapping in
        # practice), which is what makes hole punching possible at all.
        "${ipt[@]}" -t nat -A POSTROUTING -o wan -j MASQUERADE
        # Default-deny forwarding; then allow replies, and new flows LAN->WAN.
        "${ipt[@]}" -P FORWARD DROP
        "${ipt[@]}" -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        "${ipt[@]}" -A FORWARD -i lan -o wan -m conntrack --ctstate NEW -j ACCEPT
        # Explicit (the policy would do it too) so the counters show how much
        # unsolicited/invalid traffic from the internet was dropped.
        "${ipt[@]}" -A FORWARD -i wan -j DROP
        # The router itself also ignores unsolicited inbound: a silent DROP
        # (not REJECT) like most home routers.  This matters for hole punching:
        # a SYN/datagram that arrives before the local mapping exists must be
        # dropped without creating a confirmed conntrack entry or sending an
        # RST/ICMP back that would tear down the peer's mapping.
        "${ipt[@]}" -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        "${ipt[@]}" -A INPUT -i wan -j DROP
    done

    trap - ERR

    # Machine-readable summary on stdout (and nothing else goes to stdout).
    for ((k = 0; k < npub; k++)); do
        echo "pub$k $p-pub$k $WAN_NET.$((PUB_BASE + k))"
    done
    for ((k = 0; k < nnat; k++)); do
        echo "nat$k $p-nat$k 10.$((k + 1)).0.2 router-wan $WAN_NET.$((RTR_BASE + k))"
    done
    log "lab '$p' up: $npub public host(s), $nnat NATed host(s)"
}

# ----------------------------------------------------------------------------- check
# Small python3 helpers.  Each is run inside a namespace under `timeout`, so a
# hung socket can never hang the check.  Python code uses only double quotes so
# it can live in single-quoted bash strings.

# TCP server: ARGS port accept_timeout.  Prints READY once listening, then
# PEER <ip> <port> of the first connection, or NOCONN.
PY_TCP_SERVER='
import socket, sys
port, t = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port)); s.listen(8); print("READY", flush=True)
s.settimeout(t)
try:
    c, a = s.accept(); print("PEER", a[0], a[1], flush=True); c.sendall(b"hello\n"); c.close()
except socket.timeout:
    print("NOCONN", flush=True)
'

# TCP client: ARGS ip port timeout.  Exit 0 only if connected (and got data).
PY_TCP_CLIENT='
import socket, sys
ip, port, t = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(); s.settimeout(t)
try:
    s.connect((ip, port)); d = s.recv(64)
    print("CONNECTED", *s.getsockname(), d.decode(errors="replace").strip()); sys.exit(0)
except socket.timeout:
    print("TIMEOUT")
except ConnectionRefusedError:
    print("REFUSED")
except OSError as e:
    print("ERROR", e)
sys.exit(1)
'

# UDP server: ARGS port timeout.  Prints READY, then GOT <ip> <port> <data> or NOTHING.
PY_UDP_SERVER='
import socket, sys
port, t = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
print("READY", flush=True); s.settimeout(t)
try:
    d, a = s.recvfrom(256); print("GOT", a[0], a[1], d.decode(errors="replace"), flush=True)
except socket.timeout:
    print("NOTHING", flush=True)
'

# UDP sender: ARGS ip port count.  Several datagrams, spaced out, to be sure.
PY_UDP_SEND='
import socket, sys, time
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    try: s.sendto(b"probe%d" % i, (ip, port))
    except OSError as e: print("SENDERR", e)
    time.sleep(0.1)
print("SENT", n)
'

# TCP hole punch (simultaneous open): ARGS local_port peer_ip peer_port duration tag.
# Binds the SAME local port on every attempt (SO_REUSEADDR/SO_REUSEPORT) so
# the NAT mapping (and the peer's expectation) stays the same, and keeps
# connecting to the peer's public endpoint with short timeouts until it works.
PY_TCP_PUNCH='
import socket, sys, time
lp, ip, pp, dur, tag = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
end = time.time() + dur; n = 0; last = None
while time.time() < end:
    n += 1
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", lp))
    s.settimeout(max(0.2, min(1.0, end - time.time())))
    try:
        s.connect((ip, pp))
    except OSError as e:
        last = repr(e); s.close(); time.sleep(0.05); continue
    s.settimeout(3); s.sendall(tag.encode() + b"\n"); d = b""
    try:
        while not d.endswith(b"\n"):
            c = s.recv(64)
            if not c: break
            d += c
    except OSError as e:
        last = repr(e)
    peer = s.getpeername(); s.close()
    if d:
        print("CONNECTED attempts=%d peer=%s:%d got=%s" % (n, peer[0], peer[1], d.decode().strip())); sys.exit(0)
    print("CONNECTED-NO-DATA attempts=%d peer=%s:%d last=%s" % (n, peer[0], peer[1], last)); sys.exit(1)
print("FAILED attempts=%d last=%s" % (n, last)); sys.exit(1)
'

# UDP hole punch: ARGS local_port peer_ip peer_port duration tag.  Sends to the
# peer every 0.2 s from the bound port; once something arrives it sends a few
# more so the peer surely receives too, then reports.
PY_UDP_PUNCH='
import socket, sys, time
lp, ip, pp, dur, tag = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", lp)); s.settimeout(0.2)
end = time.time() + dur; got = None; extra = 0; sent = 0
while time.time() < end and extra < 10:
    try: s.sendto(tag.encode(), (ip, pp)); sent += 1
    except OSError: pass
    try:
        d, a = s.recvfrom(256)
        if got is None: got = (a, d)
    except OSError:
        pass
    if got: extra += 1
if got:
    print("GOT from=%s:%d data=%s sent=%d" % (got[0][0], got[0][1], got[1].decode(errors="replace"), sent)); sys.exit(0)
print("NOTHING sent=%d" % sent); sys.exit(1)
'

CHECK_TMP=""
BG_PIDS=()
TMP_ROUTES=() # "ns|route" to delete on exit

check_cleanup() {
    local pid r
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${BG_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for r in "${TMP_ROUTES[@]}"; do
        # shellcheck disable=SC2086
        nsx "${r%%|*}" ip route del ${r#*|} 2>/dev/null || true
    done
    [[ -n $CHECK_TMP && -d $CHECK_TMP ]] && rm -rf "$CHECK_TMP"
    return 0
}

# bg_py NS OUTFILE TIMEOUT_S SCRIPT ARGS... : run a helper in the background.
# The PID (of `timeout`) is left in $LAST_PID and recorded for cleanup.
LAST_PID=""
bg_py() {
    local ns=$1 out=$2 t=$3 script=$4; shift 4
    timeout "$t" ip netns exec "$ns" python3 -u -c "$script" "$@" >"$out" 2>&1 &
    LAST_PID=$!
    BG_PIDS+=("$LAST_PID")
}

# Wait until a background server printed READY (it is listening/bound).
wait_ready() {
    local f=$1 i
    for ((i = 0; i < 100; i++)); do
        grep -q '^READY' "$f" 2>/dev/null && return 0
        sleep 0.05
    done
    die "helper did not become ready: $f: $(cat "$f" 2>/dev/null)"
}

# Wait for a background helper; its exit status goes to $RC (never fails).
# Not `rc=$(wait ...)`: a command substitution is a subshell, which cannot
# wait for children of this shell.
RC=0
wait_rc() { RC=0; wait "$1" || RC=$?; }

FAILS=0
pass() { echo "PASS  $*"; }
fail() { echo "FAIL  $*"; FAILS=$((FAILS + 1)); }
skip() { echo "SKIP  $*"; }

# Diagnostics for a failed NAT test: firewall counters and conntrack state.
dump_router() {
    local rtr=$1
    echo "----- diagnostics for $rtr -----"
    nsx "$rtr" iptables -w -L -v -n 2>&1 | sed 's/^/  /'
    nsx "$rtr" iptables -w -t nat -L POSTROUTING -v -n 2>&1 | sed 's/^/  /'
    if command -v conntrack >/dev/null 2>&1; then
        nsx "$rtr" conntrack -L 2>&1 | sed 's/^/  /'
    else
        nsx "$rtr" cat /proc/net/nf_conntrack 2>/dev/null | sed 's/^/  /' || true
    fi
}

# punch_test tcp|udp LABEL PORT DELAY_S: hole punch between the first two
# NATed hosts (uses $p, $a, $b, $na, $nb, $wa, $wb, $T of cmd_check via bash's
# dynamic scoping).  Both bind PORT and target the other's router WAN:PORT;
# the second host starts DELAY_S later.  Returns non-zero on failure.
punch_test() {
    local kind=$1 label=$2 port=$3 delay=$4 script pa pb rca rcb ok=0 what
    if [[ $kind == tcp ]]; then
        script=$PY_TCP_PUNCH; what="TCP hole punch (simultaneous open)"
    else
        script=$PY_UDP_PUNCH; what="UDP hole punch"
    fi
    what+=" nat$a<->nat$b port $port, nat$b starts ${delay}s late"
    bg_py "$na" "$T/$label.a" 20 "$script" "$port" "$wb" "$port" 8 "hello-from-nat$a"; pa=$LAST_PID
    sleep "$delay"
    bg_py "$nb" "$T/$label.b" 20 "$script" "$port" "$wa" "$port" 8 "hello-from-nat$b"; pb=$LAST_PID
    wait_rc "$pa"; rca=$RC; wait_rc "$pb"; rcb=$RC
    # Success = both ends got the other's greeting, from the other's router
    # WAN address and the SAME port (i.e. MASQUERADE preserved the port).
    if (( rca == 0 && rcb == 0 )); then
        if [[ $kind == tcp ]]; then
            grep -q "peer=$wb:$port got=hello-from-nat$b" "$T/$label.a" \
                && grep -q "peer=$wa:$port got=hello-from-nat$a" "$T/$label.b" && ok=1
        else
            grep -q "from=$wb:$port data=hello-from-nat$b" "$T/$label.a" \
                && grep -q "from=$wa:$port data=hello-from-nat$a" "$T/$label.b" && ok=1
        fi
    fi
    if (( ok )); then
        pass "$label $what:"
    else
        fail "$label $what (rc $rca/$rcb):"
    fi
    echo "      nat$a: $(tr '\n' ' ' <"$T/$label.a")"
    echo "      nat$b: $(tr '\n' ' ' <"$T/$label.b")"
    if (( ! ok )); then
        dump_router "$p-rtr$a"; dump_router "$p-rtr$b"
        return 1
    fi
    return 0
}

cmd_check() {
    local p=$1
    local pubs nats
    mapfile -t pubs < <(lab_indices "$p" pub)
    mapfile -t nats < <(lab_indices "$p" nat)
    [[ -n $(lab_namespaces "$p" | grep -x "$p-inet" || true) ]] \
        || die "lab '$p' does not exist (run: $PROG up $p N_PUBLIC N_NATED)"

    CHECK_TMP=$(mktemp -d /tmp/nat-lab-check.XXXXXX)
    trap check_cleanup EXIT

    # Random port base per run: conntrack entries from a previous check run
    # (TCP TIME_WAIT, UDP streams) can live for minutes in the routers; fresh
    # ports keep runs independent without needing to flush conntrack.
    local base=$((20000 + (RANDOM % 2000) * 16))
    local T=$CHECK_TMP
    echo "nat-lab check '$p': ${#pubs[@]} public, ${#nats[@]} NATed; ports $base..$((base + 15))"

    # ------------------------------------------------------------------ 1
    if (( ${#pubs[@]} >= 1 && ${#nats[@]} >= 1 )); then
        local pub="$p-pub${pubs[0]}" nat="$p-nat${nats[0]}" rtr="$p-rtr${nats[0]}"
        local pub_ip="$WAN_NET.$((PUB_BASE + pubs[0]))" wan_ip="$WAN_NET.$((RTR_BASE + nats[0]))"
        local srv rc

        # 1a: TCP NATed -> public; the server must see the router's WAN IP.
        bg_py "$pub" "$T/1a.srv" 10 "$PY_TCP_SERVER" $((base + 0)) 5; srv=$LAST_PID
        wait_ready "$T/1a.srv"
        rc=0; nsx "$nat" timeout 10 python3 -u -c "$PY_TCP_CLIENT" "$pub_ip" $((base + 0)) 3 >"$T/1a.cli" 2>&1 || rc=$?
        wait "$srv" 2>/dev/null || true
        if (( rc == 0 )) && grep -q "^PEER $wan_ip " "$T/1a.srv"; then
            pass "1a TCP nat->pub: connected; public host saw source $(grep '^PEER' "$T/1a.srv" | cut -d' ' -f2-) (router WAN, masquerade OK)"
        else
            fail "1a TCP nat->pub: client='$(cat "$T/1a.cli")' server='$(tr '\n' ' ' <"$T/1a.srv")' (expected PEER $wan_ip)"
            dump_router "$rtr"
        fi

        # 1b: UDP NATed -> public, same source check.
        bg_py "$pub" "$T/1b.srv" 10 "$PY_UDP_SERVER" $((base + 1)) 4; srv=$LAST_PID
        wait_ready "$T/1b.srv"
        nsx "$nat" timeout 10 python3 -u -c "$PY_UDP_SEND" "$pub_ip" $((base + 1)) 3 >"$T/1b.cli" 2>&1 || true
        wait "$srv" 2>/dev/null || true
        if grep -q "^GOT $wan_ip " "$T/1b.srv"; then
            pass "1b UDP nat->pub: received from $(grep '^GOT' "$T/1b.srv" | cut -d' ' -f2-3) (router WAN)"
        else
            fail "1b UDP nat->pub: server='$(tr '\n' ' ' <"$T/1b.srv")' (expected GOT $wan_ip ...)"
        fi

        # ---------------------------------------------------------------- 2
        # 2a: unsolicited TCP from the internet to the router's WAN address.
        # A listener on the NATed host (no port forward exists, so it must see
        # nothing) and one on the router itself (INPUT must drop, so the
        # client must time out rather than get REFUSED/RST).
        local hsrv rsrv out
        bg_py "$nat" "$T/2a.hsrv" 12 "$PY_TCP_SERVER" $((base + 2)) 7; hsrv=$LAST_PID
        bg_py "$rtr" "$T/2a.rsrv" 12 "$PY_TCP_SERVER" $((base + 3)) 7; rsrv=$LAST_PID
        wait_ready "$T/2a.hsrv"; wait_ready "$T/2a.rsrv"
        out=$(nsx "$pub" timeout 10 python3 -u -c "$PY_TCP_CLIENT" "$wan_ip" $((base + 2)) 2 2>&1 || true)
        if [[ $out == TIMEOUT ]]; then
            pass "2a TCP pub->router-wan:$((base + 2)) (NATed host listening behind it): $out (dropped)"
        else
            fail "2a TCP pub->router-wan:$((base + 2)): expected TIMEOUT, got '$out'"
        fi
        out=$(nsx "$pub" timeout 10 python3 -u -c "$PY_TCP_CLIENT" "$wan_ip" $((base + 3)) 2 2>&1 || true)
        if [[ $out == TIMEOUT ]]; then
            pass "2a TCP pub->router-wan:$((base + 3)) (router itself listening): $out (INPUT drop)"
        else
            fail "2a TCP pub->router-wan:$((base + 3)) (router listening): expected TIMEOUT, got '$out'"
        fi

        # 2b: same with UDP: neither the host nor the router may receive.
        local uh ur
        bg_py "$nat" "$T/2b.hsrv" 8 "$PY_UDP_SERVER" $((base + 4)) 3; uh=$LAST_PID
        bg_py "$rtr" "$T/2b.rsrv" 8 "$PY_UDP_SERVER" $((base + 5)) 3; ur=$LAST_PID
        wait_ready "$T/2b.hsrv"; wait_ready "$T/2b.rsrv"
        nsx "$pub" timeout 5 python3 -u -c "$PY_UDP_SEND" "$wan_ip" $((base + 4)) 5 >/dev/null 2>&1 || true
        nsx "$pub" timeout 5 python3 -u -c "$PY_UDP_SEND" "$wan_ip" $((base + 5)) 5 >/dev/null 2>&1 || true
        wait "$uh" 2>/dev/null || true; wait "$ur" 2>/dev/null || true
        if grep -q '^NOTHING' "$T/2b.hsrv" && grep -q '^NOTHING' "$T/2b.rsrv"; then
            pass "2b UDP pub->router-wan (host and router listening): nothing received (dropped)"
        else
            fail "2b UDP pub->router-wan: host='$(tr '\n' ' ' <"$T/2b.hsrv")' router='$(tr '\n' ' ' <"$T/2b.rsrv")'"
        fi

        # 2c: a malicious neighbour on the internet routes the private LAN via
        # the router's WAN address.  Only FORWARD's "drop new from wan" stops
        # this, so test it explicitly (temporary route, removed on exit).
        local lan_net="10.$((nats[0] + 1)).0.0/24" lan_ip="10.$((nats[0] + 1)).0.2"
        nsx "$pub" ip route add "$lan_net" via "$wan_ip" dev eth0
        TMP_ROUTES+=("$pub|$lan_net via $wan_ip dev eth0")
        out=$(nsx "$pub" timeout 10 python3 -u -c "$PY_TCP_CLIENT" "$lan_ip" $((base + 2)) 2 2>&1 || true)
        nsx "$pub" ip route del "$lan_net" via "$wan_ip" dev eth0 2>/dev/null || true
        if [[ $out == TIMEOUT ]]; then
            pass "2c TCP pub->$lan_ip (LAN routed via router WAN): $out (FORWARD drop)"
        else
            fail "2c TCP pub->$lan_ip via router WAN: expected TIMEOUT, got '$out'"
        fi
        wait "$hsrv" 2>/dev/null || true; wait "$rsrv" 2>/dev/null || true
        if grep -q '^NOCONN' "$T/2a.hsrv" && grep -q '^NOCONN' "$T/2a.rsrv"; then
            pass "2  no unsolicited TCP connection reached the NATed host or the router"
        else
            fail "2  unsolicited TCP reached: host='$(tr '\n' ' ' <"$T/2a.hsrv")' router='$(tr '\n' ' ' <"$T/2a.rsrv")'"
        fi
    else
        skip "1/2 need >= 1 public and >= 1 NATed host"
    fi

    # ------------------------------------------------------------------ 3
    local tcp_punch=skipped udp_punch=skipped
    if (( ${#nats[@]} >= 2 )); then
        local a=${nats[0]} b=${nats[1]}
        local na="$p-nat$a" nb="$p-nat$b"
        local wa="$WAN_NET.$((RTR_BASE + a))" wb="$WAN_NET.$((RTR_BASE + b))"

        # 3a: baseline -- without punching from nat1, nat0 cannot reach nat1's
        # router (otherwise the punch test would prove nothing).
        local out
        out=$(nsx "$na" timeout 10 python3 -u -c "$PY_TCP_CLIENT" "$wb" $((base + 10)) 2 2>&1 || true)
        if [[ $out == TIMEOUT ]]; then
            pass "3a TCP nat$a->rtr$b WAN without punching: $out (as expected)"
        else
            fail "3a TCP nat$a->rtr$b WAN without punching: expected TIMEOUT, got '$out'"
        fi

        # 3b/3c: TCP simultaneous open.  Both sides bind the same port number
        # and keep connecting to each other's WAN endpoint; MASQUERADE
        # preserves the port, so one side's outgoing SYN creates exactly the
        # conntrack entry the other side's SYN matches (as a "reply").
        # Run it once with both sides starting together and once with nat$b
        # starting 1.5 s late, so nat$a's first SYNs are dropped at rtr$b and
        # the retry loop has to do its job (the realistic rendezvous case).
        local tcp_ok=1 udp_ok=1
        punch_test tcp "3b" $((base + 6)) 0   || tcp_ok=0
        punch_test tcp "3c" $((base + 7)) 1.5 || tcp_ok=0
        # 3d/3e: UDP hole punch, same two timings.
        punch_test udp "3d" $((base + 8)) 0   || udp_ok=0
        punch_test udp "3e" $((base + 9)) 1.5 || udp_ok=0
        (( tcp_ok )) && tcp_punch=success || tcp_punch=FAILED
        (( udp_ok )) && udp_punch=success || udp_punch=FAILED
    else
        skip "3 hole punching needs >= 2 NATed hosts"
    fi

    echo "hole punching: TCP=$tcp_punch UDP=$udp_punch"
    if (( FAILS > 0 )); then
        echo "nat-lab check '$p': $FAILS FAILED" >&2
        return 1
    fi
    echo "nat-lab check '$p': all passed"
}

# ----------------------------------------------------------------------------- main
main() {
    (( $# >= 1 )) || usage
    local cmd=$1; shift
    case $cmd in
        up)
            (( $# == 3 )) || usage
            validate_prefix "$1"
            validate_count N_PUBLIC "$2" "$MAX_PUB"
            validate_count N_NATED "$3" "$MAX_NAT"
            need_tools ip iptables sysctl
            cmd_up "$1" "$2" "$3"
            ;;
        down)
            (( $# == 1 )) || usage
            validate_prefix "$1"
            need_tools ip
            cmd_down "$1"
            ;;
        check)
            (( $# == 1 )) || usage
            validate_prefix "$1"
            need_tools ip iptables python3 timeout
            cmd_check "$1"
            ;;
        -h|--help|help) usage ;;
        *) usage ;;
    esac
}

main "$@"
