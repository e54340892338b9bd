#!/usr/bin/env bash
# Start, stop or show a local raftkit cluster in the background.
#   scripts/cluster.sh start|stop|status [--config FILE] [--release]
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
# Node ids and data dirs come from the config itself.
nodes() {
  awk '/^\[\[node\]\]/{n=1} n&&/^id *=/{print $3; n=0}' "$config"; }
data_dir() {
  local d; d=$(awk -F'"' '/^data_dir *=/{print $2; exit}' "$config")
  case "$d" in /*) echo "$d" ;; *) echo "$(dirname "$config")/$d" ;; esac
}
build() {
  if [ "$profile" = release ]; then (cd "$root" && cargo build --release -q --bins); else (cd "$root" && cargo build -q --bins); fi
}
case "$cmd" in
  start)
    build
    dd="$(data_dir)"
    for id in $(nodes); do
      dir="$dd/n$id"; mkdir -p "$dir"
      if [ -f "$dir/node.pid" ] && kill -0 "$(cat "$dir/node.pid")" 2>/dev/null; then
        echo "n$id already running (pid $(cat "$dir/node.pid"))"; continue
      fi
      nohup "$bin/raft-node" --config "$config" --id "$id" >>"$dir/node.log" 2>&1 &
      echo $! >"$dir/node.pid"
      echo "started n$id (pid $!, log $dir/node.log)"
    done
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
