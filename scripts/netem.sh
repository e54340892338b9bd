#!/usr/bin/env bash
# A cluster over real (virtual) network links: each node in its own Linux
# network namespace, joined to the others by a bridge, at its own address
# (10.x.y.ID:7001, the same port on every node), with a round-trip delay,
# jitter and loss on every link. Measures, for each round-trip time: the
# time to elect a new leader after the leader is killed, the commit
# latency of one client, and the throughput of many (--clients, one
# connection each; and --mux C/K: C clients over K connections, whose many
# requests in flight let pipelining show); and the same on loopback without
# namespaces, for comparison.
#
#   scripts/netem.sh [--rtt 0,2,20,80] [--jitter-pct 10] [--loss-pct 0.1]
#                    [--seconds 8] [--clients 64] [--mux 4096/32] [--elections 3] [--release]
#
# Needs root and `ip netns` (iproute2); skipped with a message where either
# is missing. The delay comes from `tc qdisc ... netem` on each node's link:
# half the round trip on each node's way out, so node-to-node traffic has
# the whole round trip, and the load generator (in the root namespace,
# outside the delays) half of it. Where the kernel has no netem, the nodes
# delay their own peer messages instead (`raft-ctl fault delay`, half the
# round trip each way; no jitter, which would reorder messages as TCP never
# does, and no loss), and the table says so. Election timeouts grow with
# the round trip (at least ten round trips, as etcd advises), heartbeats
# too (one round trip). Every namespace, link and node is removed at the
# end, also on failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: $0 [--rtt MS,MS...] [--jitter-pct P] [--loss-pct P] [--seconds S] [--clients C] [--mux C/K] [--elections N] [--release]" >&2; exit 2; }
rtts="0,2,20,80"; jitter_pct=10; loss_pct=0.1; seconds=8; clients=64; mux=4096/32; elections=3; profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --rtt) rtts="${2:?}"; shift 2 ;;
    --jitter-pct) jitter_pct="${2:?}"; shift 2 ;;
    --loss-pct) loss_pct="${2:?}"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --clients) clients="${2:?}"; shift 2 ;;
    --mux) mux="${2:?}"; shift 2 ;;
    --elections) elections="${2:?}"; shift 2 ;;
    --release) profile=release; shift ;;
    -h|--help) sed -n '2,/^[^#]/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done
mux_clients=${mux%/*}; mux_conns=${mux#*/}
for v in "$jitter_pct" "$seconds" "$clients" "$elections" "$mux_clients" "$mux_conns" ${rtts//,/ }; do
  case "$v" in ''|*[!0-9]*) echo "--rtt, --jitter-pct, --seconds, --clients, --mux and --elections take whole numbers" >&2; exit 2 ;; esac
done
case "$loss_pct" in ''|*[!0-9.]*) echo "--loss-pct takes a number" >&2; exit 2 ;; esac

skip() { echo "netem drill skipped: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "it needs root, to make network namespaces"
command -v ip >/dev/null || skip "no ip command (iproute2)"
tag="rk$(( $$ % 100000 ))"
ip netns add "${tag}probe" 2>/dev/null || skip "network namespaces are not available here (ip netns add failed)"
netem=1
if ! ip netns exec "${tag}probe" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then netem=0; fi
ip netns del "${tag}probe"

# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_bins "$profile"

work="$(mktemp -d "${TMPDIR:-/tmp}/raftkit-netem.XXXXXX")"
log() { echo "  $(date +%H:%M:%S) $*" >>"$work/netem.log"; }
net="10.$(( 100 + $$ % 100 )).$(( $$ / 100 % 250 ))"
made_ns=(); bridge=""; node_ids="1 2 3"
cleanup() {
  stop_nodes
  local ns; for ns in "${made_ns[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ -n "$bridge" ]; then ip link del "$bridge" 2>/dev/null || true; fi
  rm -rf "$work/data"
}
trap cleanup EXIT INT TERM

# The namespaces, veth pairs and bridge (once; delays change per row).
make_net() {
  bridge="${tag}br"
  ip link add "$bridge" type bridge
  ip addr add "$net.254/24" dev "$bridge"
  ip link set "$bridge" up
  local id ns
  for id in $node_ids; do
    ns="${tag}n$id"
    ip netns add "$ns"; made_ns+=("$ns")
    ip link add "${tag}h$id" type veth peer name "${tag}p$id"
    ip link set "${tag}p$id" netns "$ns"
    ip link set "${tag}h$id" master "$bridge"
    ip link set "${tag}h$id" up
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set "${tag}p$id" name eth0
    ip netns exec "$ns" ip addr add "$net.$id/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
  done
}

# A fresh cluster for one row: MODE (netns | loopback), RTT in ms.
start_cluster() {
  local mode=$1 rtt=$2 id addr
  stop_nodes
  rm -rf "$work/data"; mkdir -p "$work/data"
  cfg="$work/cluster.toml"
  local et=$(( rtt * 10 > 300 ? rtt * 10 : 300 )) hb=$(( rtt > 50 ? rtt : 50 ))
  printf '[cluster]\nname = "netem"\ndata_dir = "data"\nelection_timeout_ms = [%s, %s]\nheartbeat_interval_ms = %s\nsnapshot_entries = 0\n' \
    "$et" "$(( et * 2 ))" "$hb" >"$cfg"
  local ports=(); [ "$mode" = loopback ] && read -r -a ports <<<"$(pick_ports 3)"
  for id in $node_ids; do
    if [ "$mode" = loopback ]; then addr="127.0.0.1:${ports[id - 1]}"; else addr="$net.$id:7001"; fi
    printf '\n[[node]]\nid = %s\naddr = "%s"\n' "$id" "$addr" >>"$cfg"
  done
  node_ns=""; [ "$mode" = netns ] && node_ns=$tag
  for id in $node_ids; do start_node "$id"; done
  wait_leader "" >/dev/null || { echo "no leader ($mode, rtt $rtt ms): see $work/data/n*/node.log" >&2; exit 1; }
}

# The delay on every link (netem), or the nodes' own delay fault.
set_delay() {  # RTT
  local rtt=$1 half=$(( $1 / 2 )) jit id
  jit=$(( half * jitter_pct / 100 ))
  if [ "$netem" = 1 ]; then
    for id in $node_ids; do
      ip netns exec "${tag}n$id" tc qdisc replace dev eth0 root netem delay "${half}ms" "${jit}ms" loss "${loss_pct}%"
    done
  elif [ "$rtt" -gt 0 ]; then
    ctl fault delay --ms "$half" >/dev/null
  fi
}

# Median of the numbers on stdin.
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "?"}'; }

# Kill the leader, time until another node leads (ms), start it again.
# RTT: the delay to give the restarted node again.
election_ms() {
  local l t0 nl rtt=$1
  l=$(wait_leader "") || { echo "?"; return; }
  t0=$(date +%s%N)
  signal_node "$l" KILL >/dev/null
  nl=""
  for _ in $(seq 600); do
    nl=$(leader); [ -n "$nl" ] && [ "$nl" != "$l" ] && break
    sleep 0.02
  done
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
  start_node "$l"; sleep 1
  set_delay "$rtt"  # the restarted node's own delay fault, when the nodes delay
}

bench_json() {  # CLIENTS [CONNS]
  ctl bench --op put --clients "$1" --conns "${2:-0}" --duration "$seconds" --warmup 1 --json --quiet 2>>"$work/netem.log"
}
ms_of() { json_get "$1" <<<"$2" | awk '{printf "%.2f", $1/1000}'; }
per_s() { json_get ops_per_s <<<"$1" | awk '{printf "%.0f", $1}'; }

columns() { printf '%-10s %6s %11s %9s %9s %10s %9s %12s %9s\n' "$@"; }
row() {  # MODE RTT
  local mode=$1 rtt=$2 e=() one many muxed _i
  start_cluster "$mode" "$rtt"
  set_delay "$rtt"
  sleep 1
  for _i in $(seq "$elections"); do e+=("$(election_ms "$rtt")"); wait_leader "" >/dev/null || true; done
  one=$(bench_json 1); many=$(bench_json "$clients"); muxed=$(bench_json "$mux_clients" "$mux_conns")
  local how="netns"
  [ "$mode" = loopback ] && how="loopback"
  if [ "$mode" = netns ] && [ "$rtt" -gt 0 ]; then
    if [ "$netem" = 1 ]; then how="netem"; else how="node delay"; fi
  fi
  columns "$how" "$rtt" "$(printf '%s\n' "${e[@]}" | median)" "$(ms_of lat.p50 "$one")" "$(ms_of lat.p99 "$one")" \
    "$(per_s "$many")" "$(ms_of lat.p99 "$many")" "$(per_s "$muxed")" "$(ms_of lat.p99 "$muxed")"
}

if [ "$netem" = 1 ]; then
  echo "links: netem delay (half the round trip on each node's way out), jitter ${jitter_pct}% of it, loss ${loss_pct}%"
else
  echo "links: this kernel has no netem (tc: unknown qdisc kind); the nodes delay their own peer messages instead (raft-ctl fault delay: half the round trip each way; no jitter, no loss)"
fi
echo "3 nodes, fsync on, puts of 100 bytes on 1000 keys; election: median of $elections leader kills; $seconds s per load; log: $work/netem.log"
make_net
columns links rtt_ms election_ms "c=1 p50" "c=1 p99" "c=$clients/s" "p99_ms" "c=$mux/s" "p99_ms"
row loopback 0
for rtt in ${rtts//,/ }; do row netns "$rtt"; done
