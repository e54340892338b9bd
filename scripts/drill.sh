#!/usr/bin/env bash
# Failure drills: a fresh local cluster, a recorded load, a fault schedule,
# heal, settle, verify every node, check the history for linearizability.
#
#   scripts/drill.sh NAME [--seconds S] [--release] [--keep] [--snapshot-entries N]
#
# NAME: leader-kill rolling-restart minority-partition leader-isolated
#       flaky-network pause crash-all majority-down, or all.
# --seconds S   how long faults are injected (default 60; CI uses 10)
# --release     use release binaries
# --keep        keep the drill's directory (kept anyway when a drill fails)
# --snapshot-entries N  nodes snapshot and compact every N applied entries
#               (default 5000, far below the node's default, so that faults
#               also hit snapshot writes and InstallSnapshot; 0 = never)
#
# Ends with one verdict line per drill, which names the drill's picture: an
# SVG timeline next to its history (throughput, p50/p99 latency, the fault
# windows, the leader over time, elections); exits 0 only if every drill
# passed. Nodes are started and stopped by PID only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
all_drills=(leader-kill rolling-restart minority-partition leader-isolated flaky-network pause crash-all majority-down)
usage() { echo "usage: $0 NAME|all [--seconds S] [--release] [--keep] [--snapshot-entries N]   (NAME: ${all_drills[*]})" >&2; exit 2; }
name="${1:-}"; [ -n "$name" ] || usage
case "$name" in -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
shift
seconds=60; profile=debug; keep=0; snapshot_entries=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="${2:?}"; shift 2 ;;
    --release) profile=release; shift ;;
    --keep) keep=1; shift ;;
    --snapshot-entries) snapshot_entries="${2:?}"; shift 2 ;;
    *) usage ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "--seconds takes whole seconds" >&2; exit 2 ;; esac
case "$snapshot_entries" in ''|*[!0-9]*) echo "--snapshot-entries takes a whole number" >&2; exit 2 ;; esac
# Read by setup() in scripts/lib.sh.
cluster_extra="snapshot_entries = $snapshot_entries
snapshot_keep_entries = $(( snapshot_entries / 5 ))"
if [ "$name" != all ]; then
  case " ${all_drills[*]} " in *" $name "*) ;; *) usage ;; esac
fi
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_bins "$profile"

# ---- one cluster per drill ---------------------------------------------------

work=""; cfg=""; bench_pid=""; timeline_pid=""
now_ns() { "$bin/raft-ctl" now; }
log() { echo "  $(date +%H:%M:%S) $*" >>"$work/drill.log"; [ -n "${DRILL_VERBOSE:-}" ] && echo "  $*" >&2; return 0; }

stop_all() {
  stop_nodes
  if [ -n "$bench_pid" ]; then kill "$bench_pid" 2>/dev/null || true; wait "$bench_pid" 2>/dev/null || true; bench_pid=""; fi
  stop_timeline
}
# The status sampler behind the picture's leader band (by PID).
stop_timeline() {
  if [ -n "$timeline_pid" ]; then kill "$timeline_pid" 2>/dev/null || true; wait "$timeline_pid" 2>/dev/null || true; timeline_pid=""; fi
}
trap 'stop_all' EXIT INT TERM

followers_of() { for id in 1 2 3; do [ "$id" != "$1" ] && echo "$id"; done; return 0; }
elapsed_since() { echo $(( $(date +%s) - $1 )); }

notes=""
note() { notes="${notes:+$notes; }$*"; log "$*"; }
extra_check_args=()
drill_failed=0
must() { if ! "$@"; then drill_failed=1; note "FAILED: $*"; fi; }

# ---- fault schedules (each runs for about $S seconds) ------------------------

drill_leader_kill() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    local l; l=$(wait_leader) || { note "no leader"; return; }
    signal_node "$l" KILL; sleep 1
    start_node "$l"; sleep 2
  done
}

drill_rolling_restart() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    for id in 1 2 3; do
      signal_node "$id" TERM; sleep 0.5
      start_node "$id"; sleep 2
    done
  done
}

drill_minority_partition() {
  local l f; l=$(wait_leader) || return
  f=$(followers_of "$l" | head -1)
  ctl fault partition "$f" >/dev/null; log "partition: n$f cut off"; event + "n$f cut off"
  sleep "$S"
  ctl fault heal >/dev/null; log "healed"; event - "n$f cut off"
}

drill_leader_isolated() {
  local l; l=$(wait_leader) || return
  local cut; cut=$(date +%s%N)
  ctl fault partition "$l" >/dev/null; log "partition: leader n$l cut off"; event + "leader n$l cut off"
  local stepped=0
  local r
  for _ in $(seq 100); do
    r=$(role_of "$l")
    if [ -n "$r" ] && [ "$r" != leader ]; then stepped=1; log "n$l is now $r"; break; fi
    sleep 0.1
  done
  must test "$stepped" = 1
  [ "$stepped" = 1 ] && note "old leader n$l stepped down within $(( ($(date +%s%N) - cut) / 1000000 )) ms"
  local nl; nl=$(wait_leader "$l") || nl=""
  must test -n "$nl"
  [ -n "$nl" ] && note "n$nl leads the majority"
  sleep "$(( S > 3 ? S - 3 : 1 ))"
  ctl fault heal >/dev/null; log "healed"; event - "leader n$l cut off"
}

drill_flaky_network() {
  ctl fault drop --rate 0.2 >/dev/null
  ctl fault delay --ms 20 --jitter-ms 30 >/dev/null
  log "every node: drop 20%, delay 20±30 ms"; event + "drop 20%, delay 20±30 ms"
  sleep "$S"
  ctl fault heal >/dev/null; log "healed"; event - "drop 20%, delay 20±30 ms"
}

drill_pause() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    local l; l=$(wait_leader) || return
    signal_node "$l" STOP; sleep 2
    signal_node "$l" CONT; sleep 2
  done
}

drill_crash_all() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    sleep 2
    local pids; pids=$(cat "$work"/data/n*/node.pid 2>/dev/null)
    for id in 1 2 3; do signal_node "$id" KILL nowait; done
    for p in $pids; do wait_dead "$p"; done
    sleep 1
    for id in $(printf '%s\n' 1 2 3 | shuf); do start_node "$id"; sleep 0.$((RANDOM % 5)); done
    wait_leader >/dev/null || note "no leader after restart"
  done
}

drill_majority_down() {
  sleep 2
  local l; l=$(wait_leader) || return
  local victims; victims=$(followers_of "$l" | tr '\n' ' ')
  local pids; pids=$(for id in $victims; do cat "$(pidfile "$id")"; done)
  for id in $victims; do signal_node "$id" KILL nowait; done
  for p in $pids; do wait_dead "$p"; done
  local down; down=$(now_ns)
  log "killed $victims(two of three)"
  sleep "$(( S > 6 ? S - 3 : 3 ))"
  local up; up=$(now_ns)
  local first=${victims%% *}
  start_node "$first"
  note "two nodes down for $(( (up - down) / 1000000000 )) s"
  # No write may be acknowledged while a majority is down (0.5 s of grace
  # for answers already on their way), and writes must resume afterwards.
  extra_check_args=(--no-acks-between "$((down + 500000000))" "$up" --acks-after "$up")
  sleep 3
  for id in $victims; do start_node "$id"; done
}

# ---- one drill ------------------------------------------------------------------

# A field of a JSON file (empty if the file or the field is missing);
# an array's elements come one a line.
json_field() { "$bin/raft-ctl" json "$2" "$1" 2>/dev/null || true; }

run_drill() {
  local d=$1
  S=$seconds; notes=""; extra_check_args=(); drill_failed=0; events_file=""
  setup "drill-$d"
  events_file="$work/events.txt"
  log "drill $d, $S s of faults, in $work"
  wait_leader >/dev/null || { echo "$d: no leader at start" >&2; stop_all; return 1; }
  local up=0
  for _ in $(seq 100); do
    all_up && { up=1; break; }
    sleep 0.1
  done
  [ "$up" = 1 ] || { echo "$d: not every node came up (see $work/data/n*/node.log)" >&2; stop_all; return 1; }
  local hist="$work/history.jsonl" picture="$work/history.svg"
  # Bounded: it stops by itself long after the drill, if nothing stops it.
  "$bin/raft-ctl" --config "$cfg" timeline --out "$work/timeline.jsonl" --seconds "$((S + 600))" \
    >/dev/null 2>"$work/timeline.err" &
  timeline_pid=$!
  "$bin/raft-ctl" --config "$cfg" bench --op kv --keys 10 --clients 6 --read-pct 40 \
    --duration "$((S + 4))" --warmup 0 --op-timeout 3 --record "$hist" --json --quiet \
    >"$work/bench.json" 2>"$work/bench.err" &
  bench_pid=$!
  sleep 1
  "drill_${d//-/_}"
  # Heal whatever is left: faults, stopped and dead nodes.
  ctl fault heal >/dev/null 2>&1 || true
  for id in 1 2 3; do
    [ -f "$(pidfile "$id")" ] && kill -s CONT "$(cat "$(pidfile "$id")")" 2>/dev/null && event - "n$id paused"
    start_node "$id"
  done
  local brc=0; wait "$bench_pid" || brc=$?; bench_pid=""
  local load_end; load_end=$(now_ns)
  stop_timeline
  [ "$brc" = 0 ] || { drill_failed=1; note "bench failed: $(tail -1 "$work/bench.err")"; }
  local settle_out; settle_out=$(ctl settle --history "$hist" --wait 90 2>&1) || { drill_failed=1; note "settle: $settle_out"; }
  log "$settle_out"
  local check_out crc=0
  check_out=$("$bin/raft-ctl" check "$hist" "${extra_check_args[@]}" 2>&1) || crc=$?
  echo "$check_out" >"$work/check.out"
  [ "$crc" = 0 ] || drill_failed=1
  local b="$work/bench.json"
  local ok failed unknown leaders gap verdict
  ok=$(json_field "$b" ok); failed=$(json_field "$b" failed); unknown=$(json_field "$b" unknown)
  leaders=$(json_field "$b" leaders_seen | sed 's/^/n/' | paste -sd, -); gap=$(json_field "$b" max_write_gap_ms)
  verdict=PASS; [ "$drill_failed" = 0 ] || verdict=FAIL
  local check_line; check_line=$(echo "$check_out" | tail -1)
  local line; line=$(printf '%-19s %s  ops ok %s failed %s unknown %s  leaders %s  longest without a write %s ms  check: %s' \
    "$d" "$verdict" "${ok:-?}" "${failed:-?}" "${unknown:-?}" "${leaders:-?}" "${gap:-?}" "$check_line")
  if ! "$bin/raft-ctl" plot --history "$hist" --timeline "$work/timeline.jsonl" --events "$events_file" \
      --until "$load_end" --title "drill $d: $verdict ($S s of faults)" \
      --subtitle "$(echo "$line" | cut -c27-)" --out "$picture" >/dev/null 2>"$work/plot.err"; then
    picture="none ($(tail -1 "$work/plot.err"))"
  fi
  echo "$line  picture: $picture"
  [ -n "$notes" ] && echo "                    ($notes)"
  events_file=""
  stop_all
  if [ "$verdict" = FAIL ] || [ "$keep" = 1 ]; then
    echo "                    kept: $work (history.jsonl, history.svg, timeline.jsonl, events.txt, bench.json, check.out, drill.log, data/n*/node.log)"
  else
    # Everything but the picture.
    find "$work" -mindepth 1 -maxdepth 1 ! -name history.svg -exec rm -rf {} +
  fi
  [ "$verdict" = PASS ]
}

if [ "$name" = all ]; then
  failures=0; summary=()
  out="$(mktemp "${TMPDIR:-/tmp}/raftkit-drill-out.XXXXXX")"
  for d in "${all_drills[@]}"; do
    run_drill "$d" >"$out" || failures=$((failures + 1))
    cat "$out"
    summary+=("$(head -1 "$out")")
  done
  rm -f "$out"
  echo
  echo "summary ($seconds s of faults per drill):"
  printf '%s\n' "${summary[@]}" | awk '{printf "  %-19s %s\n", $1, $2}'
  echo "$(( ${#all_drills[@]} - failures ))/${#all_drills[@]} drills passed"
  [ "$failures" = 0 ]
else
  run_drill "$name" || exit 1
fi
