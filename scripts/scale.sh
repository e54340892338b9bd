#!/usr/bin/env bash
# Big state: load N distinct keys into a fresh local 3-node cluster (release
# build, fsync on) and measure what a large state costs.
#
#   scripts/scale.sh [--keys N] [--clients C] [--value-size B]
#                    [--snapshot-entries E] [--only on|off] [--out FILE.jsonl] [--keep]
#
# --keys N              distinct keys to load (default 1000000; 10000000 on demand)
# --clients C           concurrent clients of the load (default 64)
# --value-size B        bytes per value (default 100)
# --snapshot-entries E  the nodes' snapshot_entries with snapshots on
#                       (default 100000, the node's default)
# --only on|off         one of the two clusters only
# --out FILE            also append every figure as one JSON line
# --keep                keep the temp dirs (node logs, data dirs)
# --bin-dir DIR         run raft-node and raft-ctl from DIR instead of building
#                       (e.g. an older raft-node next to this raft-ctl, to compare)
#
# Two clusters in turn, each in a temp dir on free ports: snapshots on
# (snapshot_entries = E) and off (snapshot_entries = 0). On each, first the
# 1 000-key put throughput for 10 s (the small-state reference), then the
# load of N distinct keys (`raft-ctl bench --op put --distinct-keys --total
# N`): its throughput and put latency (p99, p999, max over the whole load),
# and each node's resident memory at the end and at its peak. Then, on the
# snapshots-on cluster: each node's data dir size; a follower wiped
# (SIGKILL, its data dir removed, started empty) and the time until it has
# applied the leader's commit index, with the rate in MB/s of the leader's
# data dir (snapshot and log) it had to receive; a follower restarted
# (SIGTERM, start) and the time until it answers and until it has applied
# the commit index again; the whole cluster restarted (SIGTERM all, start
# all) and the time until a write is acknowledged. Prints one table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
help_text() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
keys=1000000; clients=64; value_size=100; snapshot_entries=100000; only=""; out=""; keep=""; bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) keys="${2:?}"; shift 2 ;;
    --clients) clients="${2:?}"; shift 2 ;;
    --value-size) value_size="${2:?}"; shift 2 ;;
    --snapshot-entries) snapshot_entries="${2:?}"; shift 2 ;;
    --only) only="${2:?}"; shift 2 ;;
    --out) out="${2:?}"; shift 2 ;;
    --keep) keep=1; shift ;;
    --bin-dir) bin_dir="${2:?}"; shift 2 ;;
    -h|--help) help_text; exit 0 ;;
    *) echo "unknown option $1" >&2; help_text >&2; exit 2 ;;
  esac
done
for n in "$keys" "$clients" "$value_size" "$snapshot_entries"; do
  case "$n" in ''|*[!0-9]*) echo "--keys, --clients, --value-size and --snapshot-entries take whole numbers" >&2; exit 2 ;; esac
done
case "$only" in ''|on|off) ;; *) echo "--only takes on or off" >&2; exit 2 ;; esac
log() { echo "  $(date +%H:%M:%S) $*" >&2; }
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
if [ -n "$bin_dir" ]; then
  bin="$(cd "$bin_dir" && pwd)"
  if [ ! -x "$bin/raft-node" ] || [ ! -x "$bin/raft-ctl" ]; then
    echo "no raft-node and raft-ctl in $bin_dir" >&2; exit 2
  fi
else
  build_bins release
fi
works=()
cleanup() {
  stop_nodes
  if [ -z "$keep" ]; then
    local w; for w in "${works[@]}"; do rm -rf "$w"; done
  else
    echo "kept: ${works[*]}" >&2
  fi
}
trap cleanup EXIT INT TERM

results="$(mktemp "${TMPDIR:-/tmp}/raftkit-scale.XXXXXX")"
works+=("$results")
# One figure: NAME VALUE (a number, or a JSON value).
record() {
  local line="{\"mode\": \"$mode\", \"what\": \"$1\", \"value\": $2}"
  echo "$line" >>"$results"
  [ -z "$out" ] || echo "$line" >>"$out"
}
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
# A node's field of `raft-ctl status` (empty when it does not answer).
status_of() {  # ID FIELD
  ctl --json status 2>/dev/null | json_get "id=$1.$2" 2>/dev/null || true
}
# Waits (up to SECS) until node ID has applied INDEX; prints nothing.
wait_applied() {  # ID INDEX SECS
  local deadline=$((SECONDS + $3)) a
  while [ "$SECONDS" -lt "$deadline" ]; do
    revive "$1"
    a=$(status_of "$1" last_applied)
    if [ -n "$a" ] && [ "$a" -ge "$2" ]; then return 0; fi
    sleep 0.05
  done
  echo "n$1 did not apply $2 within $3 s" >&2; return 1
}
wait_answers() {  # ID SECS
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    revive "$1"
    [ -n "$(status_of "$1" role)" ] && return 0
    sleep 0.02
  done
  echo "n$1 did not answer within $2 s" >&2; return 1
}
dir_bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
# Starts node ID once its port is free. The wait loops call `revive`,
# which starts it again if it exited (its port taken in between by another
# process of this machine: the log says so).
restart() {  # ID
  local port
  port=$(ctl config addr --id "$1"); port=${port##*:}
  for _ in $(seq 100); do port_free "$port" && break; sleep 0.1; done
  start_node "$1"
}
revive() {  # ID...
  local id
  for id in "$@"; do
    running "$id" && continue
    log "n$id exited: $(tail -n 1 "$work/data/n$id/node.log"); starting it again"
    rm -f "$(pidfile "$id")"
    restart "$id"
  done
}
follower_of() {  # LEADER: a follower's id
  local id; for id in 1 2 3; do [ "$id" != "$1" ] && { echo "$id"; return; }; done
}
bench_json() { "$bin/raft-ctl" --config "$cfg" --json --timeout 10 bench "$@" --target leader --quiet; }

run_mode() {  # on|off
  mode=$1
  local entries=$snapshot_entries
  [ "$mode" = off ] && entries=0
  cluster_extra="snapshot_entries = $entries"
  log "snapshots $mode: a fresh cluster (snapshot_entries = $entries)"
  setup "scale-$mode"
  works+=("$work")
  # shellcheck disable=SC2119 # no node to skip
  wait_leader >/dev/null || { echo "no leader" >&2; exit 1; }
  log "1 000-key puts for 10 s ($clients clients)"
  record small "$(bench_json --op put --clients "$clients" --keys 1000 --value-size "$value_size" \
    --warmup 2 --duration 10)"
  log "loading $keys distinct keys ($clients clients)"
  record load "$(bench_json --op put --clients "$clients" --distinct-keys --value-size "$value_size" \
    --warmup 0 --total "$keys" --op-timeout 30)"
  [ "$mode" = on ] || { stop_nodes; return 0; }

  local leader follower commit t0 id
  # shellcheck disable=SC2119 # no node to skip
  leader=$(wait_leader) || { echo "no leader after the load" >&2; exit 1; }
  follower=$(follower_of "$leader")
  commit=$(status_of "$leader" commit_index)
  for id in 1 2 3; do record "data_dir_bytes_n$id" "$(dir_bytes "$work/data/n$id")"; done
  record leader_snapshot_bytes "$(stat -c %s "$work/data/n$leader/snapshot" 2>/dev/null || echo 0)"

  log "wiping follower n$follower and catching it up"
  signal_node "$follower" KILL
  rm -rf "$work/data/n$follower"
  t0=$(now); restart "$follower"
  wait_applied "$follower" "$commit" 600
  record catch_up_s "$(since "$t0")"
  record caught_up_dir_bytes "$(dir_bytes "$work/data/n$follower")"

  log "restarting follower n$follower"
  signal_node "$follower" TERM
  t0=$(now); restart "$follower"
  wait_answers "$follower" 120
  record follower_answers_s "$(since "$t0")"
  wait_applied "$follower" "$commit" 120
  record follower_applied_s "$(since "$t0")"

  log "restarting the whole cluster"
  for id in 1 2 3; do signal_node "$id" TERM; done
  t0=$(now); for id in 1 2 3; do restart "$id"; done
  local deadline=$((SECONDS + 300))
  until ctl put scale-restart ok >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "no write acknowledged within 300 s of the restart" >&2; exit 1; }
    revive 1 2 3
    sleep 0.05
  done
  record cluster_write_s "$(since "$t0")"
  stop_nodes
}

[ "$only" = off ] || run_mode on
[ "$only" = on ] || run_mode off

python3 - "$results" "$keys" "$value_size" "$snapshot_entries" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys, value_size, every = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
v = {(r["mode"], r["what"]): r["value"] for r in rows}
def ms(us): return f"{us / 1000:.1f}"
print(f"{keys:,} distinct keys, {value_size}-byte values; snapshots on = every {every:,} entries")
print()
print("| snapshots | 1 000-key puts/s | load puts/s | load/1 000-key | p99 ms | p999 ms | max ms | nodes' RSS MiB at the end (peak) |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for mode in ("on", "off"):
    load, small = v.get((mode, "load")), v.get((mode, "small"))
    if not load:
        continue
    lat = load["lat"]
    rss = ", ".join(f"{n} {load['node_rss_mib'][n]:.0f} ({load['node_peak_rss_mib'][n]:.0f})"
                    for n in sorted(load.get("node_rss_mib", {})))
    ratio = f"{load['ops_per_s'] / small['ops_per_s']:.2f}" if small and small["ops_per_s"] else "-"
    print(f"| {mode} | {small['ops_per_s'] if small else 0:,.0f} | {load['ops_per_s']:,.0f} | {ratio} | "
          f"{ms(lat['p99'])} | {ms(lat['p999'])} | {ms(lat['max'])} | {rss} |")
    errs = load.get("errors", 0) + load.get("unknown", 0)
    if errs:
        print(f"|  | (load: {load['errors']} errors, {load['unknown']} unknown outcomes) |")
if ("on", "catch_up_s") in v:
    mib = 1 << 20
    snap = v[("on", "leader_snapshot_bytes")]
    got = v[("on", "caught_up_dir_bytes")]
    t = v[("on", "catch_up_s")]
    print()
    print("| after the load (snapshots on) | |")
    print("|---|---:|")
    for n in (1, 2, 3):
        print(f"| n{n} data dir | {v[('on', f'data_dir_bytes_n{n}')] / mib:,.0f} MiB |")
    print(f"| leader's snapshot file | {snap / mib:,.0f} MiB |")
    print(f"| wiped follower caught up in | {t:.2f} s |")
    print(f"| ... its data dir then | {got / mib:,.0f} MiB |")
    print(f"| catch-up rate (its data dir / time) | {got / 1e6 / max(t, 1e-9):,.0f} MB/s |")
    print(f"| follower restart: answers after | {v[('on', 'follower_answers_s')]:.2f} s |")
    print(f"| follower restart: applied the commit index after | {v[('on', 'follower_applied_s')]:.2f} s |")
    print(f"| whole cluster restart: first write acknowledged after | {v[('on', 'cluster_write_s')]:.2f} s |")
EOF
