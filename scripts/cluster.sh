#!/usr/bin/env bash
# Start, stop or show a local raftkit cluster in the background.
#   scripts/cluster.sh start|stop|status [--config FILE] [--release]
#
# --config FILE  the cluster (default: cluster.toml of this checkout); a
#                relative data_dir in it is relative to the file's directory
# --release      release binaries (give it to stop, kill-node.sh and
#                restart-node.sh too, or they build the debug ones)
#
# Works from any directory. Builds first (cargo build), and runs the
# binaries from where cargo put them (CARGO_TARGET_DIR is followed).
# `start` returns once every node answers and one leads. If nodes exit at
# start (a port in use, a damaged log), it names each with the end of its
# log, says which nodes still run (if any), and fails.
# Each node writes its PID to <its data dir>/node.pid and logs to
# <its data dir>/node.log (`raft-ctl config data-dir --id N` prints the
# dir). Nodes are stopped by PID file, never by name: SIGTERM, then SIGKILL
# after 5 s.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
help_text() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
usage() { help_text >&2; exit 2; }
cmd="${1:-}"; shift || true
cfg="$root/cluster.toml"; profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || usage; cfg="$2"; shift 2 ;;
    --release) profile=release; shift ;;
    -h|--help) help_text; exit 0 ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
case "$cmd" in start|stop|status) ;; -h|--help|help) help_text; exit 0 ;; *) usage ;; esac
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
use_config_and_bins

# Each node's data dir, from the config (raft-ctl reads it).
declare -A dir_of
ids=$(config_ids)
for id in $ids; do dir_of[$id]=$(node_dir "$id"); done
pid_of() { cat "${dir_of[$1]}/node.pid" 2>/dev/null; }
running_ids() {
  local id pid out=""
  for id in $ids; do
    pid=$(pid_of "$id") && alive "$pid" && out="$out n$id"
  done
  echo "${out# }"
}

# Some nodes exited at start: name each with the end of its log, then say
# which nodes run, if any.
report_exits() {  # IDS... (the nodes started now)
  # Nodes started together often fail together (a build that cannot run,
  # a data dir on a full disk): before saying which run, wait (up to 10 s)
  # until each node started now has exited or answers.
  local id pid st up="" settled dead=0 deadline=$((SECONDS + 10))
  while [ "$SECONDS" -lt "$deadline" ]; do
    settled=1
    for id in "$@"; do
      pid=$(pid_of "$id") || continue
      alive "$pid" || continue
      case " $up " in *" $id "*) ;; *) settled=0 ;; esac
    done
    [ "$settled" = 1 ] && break
    st=$(ctl --json leader 2>/dev/null) || true
    up=$({ json_get up <<<"$st" 2>/dev/null || true; } | tr '\n' ' ')
    sleep 0.1
  done
  for id in "$@"; do
    pid=$(pid_of "$id") || continue
    alive "$pid" && continue
    dead=$((dead + 1))
    echo "n$id (pid $pid) exited at start; the end of ${dir_of[$id]}/node.log:" >&2
    tail -n 5 "${dir_of[$id]}/node.log" | sed 's/^/  /' >&2
    rm -f "${dir_of[$id]}/node.pid"
  done
  up=$(running_ids)
  if [ -z "$up" ]; then
    if [ "$dead" = "$#" ]; then
      echo "every node exited at start: none is running" >&2
    else
      echo "no node is running" >&2
    fi
  else
    echo "still running: $up; '$0 stop${cfg_arg}' stops them" >&2
  fi
  exit 1
}

# Returns once the cluster can serve: every node runs and answers, and one
# node leads.
wait_ready() {  # IDS... (the nodes started now)
  local id pid st l i=0 deadline=$((SECONDS + 30))
  while [ "$SECONDS" -lt "$deadline" ]; do
    for id in "$@"; do
      pid=$(pid_of "$id") || continue
      alive "$pid" || report_exits "$@"
    done
    # A node that cannot start usually exits within a second: watch for
    # that before asking the nodes, which can take a read timeout (5 s)
    # when another program holds a node's port.
    i=$((i + 1))
    if [ "$i" -le 10 ]; then sleep 0.1; continue; fi
    st=$(ctl --json leader 2>/dev/null) || true
    l=$(json_get leader <<<"$st" 2>/dev/null) || l=""
    if [ -n "$l" ] && [ -z "$(json_get down <<<"$st" 2>/dev/null)" ]; then
      echo "leader: n$l (term $(json_get term <<<"$st"))"; return 0
    fi
    sleep 0.1
  done
  echo "not every node answers, or no leader, after 30 s: see '$0 status${cfg_arg}' and the logs" >&2
  exit 1
}

cfg_arg=""; [ "$cfg" = "$root/cluster.toml" ] || cfg_arg=" --config $cfg"
[ "$profile" = debug ] || cfg_arg="$cfg_arg --release"
case "$cmd" in
  start)
    started=()
    for id in $ids; do
      dir="${dir_of[$id]}"; mkdir -p "$dir"
      if pid=$(pid_of "$id") && alive "$pid"; then
        echo "n$id already running (pid $pid)"; continue
      fi
      nohup "$bin/raft-node" --config "$cfg" --id "$id" >>"$dir/node.log" 2>&1 &
      echo $! >"$dir/node.pid"
      echo "started n$id (pid $!, log $dir/node.log)"
      started+=("$id")
    done
    wait_ready "${started[@]}"
    ;;
  stop)
    for id in $ids; do
      pid=$(pid_of "$id") || continue
      if ! alive "$pid"; then
        :
      elif stop_pid "$pid" 50; then
        echo "stopped n$id (pid $pid)"
      else
        echo "n$id (pid $pid) still runs after SIGKILL" >&2
      fi
      rm -f "${dir_of[$id]}/node.pid"
    done
    ;;
  status)
    "$bin/raft-ctl" --config "$cfg" status
    ;;
esac
