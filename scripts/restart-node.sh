#!/usr/bin/env bash
# Restart one node of the local cluster (stop it by PID file if running).
#   scripts/restart-node.sh ID [--config FILE]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
id="${1:?usage: $0 ID [--config FILE]}"; id="${id#n}"; shift
config="$root/cluster.toml"
[ "${1:-}" = "--config" ] && config="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
d=$(awk -F'"' '/^data_dir *=/{print $2; exit}' "$config")
case "$d" in /*) ;; *) d="$(dirname "$config")/$d" ;; esac
pidf="$d/n$id/node.pid"
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  kill -TERM "$(cat "$pidf")"; for _ in $(seq 50); do kill -0 "$(cat "$pidf")" 2>/dev/null || break; sleep 0.1; done
fi
mkdir -p "$d/n$id"
nohup "$root/target/${RAFTKIT_PROFILE:-debug}/raft-node" --config "$config" --id "$id" >>"$d/n$id/node.log" 2>&1 &
echo $! >"$pidf"
echo "restarted n$id (pid $!)"
