#!/usr/bin/env bash
# Start, stop or show a local raftkit cluster in the background.
#   scripts/cluster.sh start|stop|status [--config FILE] [--release]
# `start` returns once every node answers and one leads, or fails naming
# the node that exited and the end of its log.
# Each node writes its PID to DATA_DIR/n<id>/node.pid and logs to
# DATA_DIR/n<id>/node.log. Nodes are stopped by PID file, never by name.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cmd="${1:-}"; shift || true
config="$root/cluster.toml"; profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    --release) profile=release; shift ;;
    *) echo "usage: $0 start|stop|status [--config FILE] [--release]" >&2; exit 2 ;;
  esac
done
bin="$root/target/$profile"
cfg="$config"
# shellcheck source=lib.sh
. "$here/lib.sh"
# Node ids and data dirs come from the config itself.
nodes() {
  awk '/^\[\[node\]\]/{n=1} n&&/^id *=/{print $3; n=0}' "$config"; }
data_dir() {
  local d; d=$(awk -F'"' '/^data_dir *=/{print $2; exit}' "$config")
  case "$d" in /*) echo "$d" ;; *) echo "$(dirname "$config")/$d" ;; esac
}
# Returns once the cluster can serve: every node just started runs and
# answers, and one node leads. A node that exits at once (its port in use,
# a data dir it may not write, a damaged log) is named with the end of its
# log.
wait_ready() {  # DATA_DIR IDS...
  local dd=$1 id pid st l failed=0; shift
  for _ in $(seq 300); do
    for id in "$@"; do
      pid=$(cat "$dd/n$id/node.pid" 2>/dev/null) || continue
      if ! alive "$pid"; then
        echo "n$id exited at start; the end of $dd/n$id/node.log:" >&2
        tail -n 3 "$dd/n$id/node.log" | sed 's/^/  /' >&2
        rm -f "$dd/n$id/node.pid"; failed=1
      fi
    done
    if [ $failed = 1 ]; then
      echo "the other nodes keep running; '$0 stop' stops them" >&2; exit 1
    fi
    st=$(ctl status 2>/dev/null) || true
    l=$(awk '$3 == "leader" { print $1 " (term " $4 ")"; exit }' <<<"$st")
    if [ -n "$l" ] && ! awk '$3 == "down" { found = 1 } END { exit !found }' <<<"$st"; then
      echo "leader: $l"; return 0
    fi
    sleep 0.1
  done
  echo "not every node answers, or no leader, after 30 s: see '$0 status' and the logs" >&2
  exit 1
}
build() {
  if [ "$profile" = release ]; then (cd "$root" && cargo build --release -q --bins); else (cd "$root" && cargo build -q --bins); fi
}
case "$cmd" in
  start)
    build
    dd="$(data_dir)"; started=""
    for id in $(nodes); do
      dir="$dd/n$id"; mkdir -p "$dir"
      if [ -f "$dir/node.pid" ] && kill -0 "$(cat "$dir/node.pid")" 2>/dev/null; then
        echo "n$id already running (pid $(cat "$dir/node.pid"))"; continue
      fi
      nohup "$bin/raft-node" --config "$config" --id "$id" >>"$dir/node.log" 2>&1 &
      echo $! >"$dir/node.pid"
      echo "started n$id (pid $!, log $dir/node.log)"
      started="$started $id"
    done
    # shellcheck disable=SC2086 # the ids are words
    wait_ready "$dd" $started
    ;;
  stop)
    dd="$(data_dir)"
    for id in $(nodes); do
      pidf="$dd/n$id/node.pid"
      [ -f "$pidf" ] || continue
      pid="$(cat "$pidf")"
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        echo "stopped n$id (pid $pid)"
      fi
      rm -f "$pidf"
    done
    ;;
  status)
    "$bin/raft-ctl" --config "$config" status
    ;;
  *) echo "usage: $0 start|stop|status [--config FILE] [--release]" >&2; exit 2 ;;
esac
