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
bin="$root/target/${RAFTKIT_PROFILE:-debug}"
cfg="$config"
# shellcheck source=lib.sh
. "$here/lib.sh"
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
  kill -TERM "$(cat "$pidf")"; for _ in $(seq 50); do kill -0 "$(cat "$pidf")" 2>/dev/null || break; sleep 0.1; done
fi
mkdir -p "$d/n$id"
nohup "$bin/raft-node" --config "$config" --id "$id" >>"$d/n$id/node.log" 2>&1 &
pid=$!
echo $pid >"$pidf"
# Return once the node answers; a node that exits at start (its port in
# use, a damaged log) is named with the end of its log.
for _ in $(seq 300); do
  if ! alive "$pid"; then
    echo "n$id exited at start; the end of $d/n$id/node.log:" >&2
    tail -n 3 "$d/n$id/node.log" | sed 's/^/  /' >&2
    rm -f "$pidf"; exit 1
  fi
  role=$(role_of "$id")
  if [ -n "$role" ] && [ "$role" != down ]; then
    echo "restarted n$id (pid $pid)"; exit 0
  fi
  sleep 0.1
done
echo "n$id (pid $pid) does not answer after 30 s: see $d/n$id/node.log" >&2
exit 1
