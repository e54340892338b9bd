#!/usr/bin/env bash
# Restart one node of the local cluster: stop it by PID file if it runs
# (SIGTERM, then SIGKILL after 5 s), start it, wait until it answers.
#   scripts/restart-node.sh ID [--config FILE] [--release]
#
# ID             1 or n1
# --config FILE  the cluster (default: cluster.toml of this checkout)
# --release      release binaries
# Works from any directory. Builds first (cargo build) and runs raft-node
# from where cargo put it (CARGO_TARGET_DIR is followed). A node that exits
# at start (its port in use, a damaged log) is named with the end of its
# log <data dir>/node.log, and the script fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
help_text() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
usage() { help_text >&2; exit 2; }
case "${1:-}" in '') usage ;; -h|--help) help_text; exit 0 ;; esac
id="${1#n}"; shift
case "$id" in ''|*[!0-9]*) echo "bad node id $id: want 1 or n1" >&2; usage ;; esac
cfg="$root/cluster.toml"; profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || usage; cfg="$2"; shift 2 ;;
    --release) profile=release; shift ;;
    -h|--help) help_text; exit 0 ;;
    *) echo "unknown option $1" >&2; usage ;;
  esac
done
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
use_config_and_bins
dir=$(node_dir "$id")
pidf="$dir/node.pid"
if [ -f "$pidf" ]; then
  old=$(cat "$pidf")
  stop_pid "$old" 50 || { echo "n$id (pid $old) still runs after SIGKILL" >&2; exit 1; }
  rm -f "$pidf"
fi
mkdir -p "$dir"
nohup "$bin/raft-node" --config "$cfg" --id "$id" >>"$dir/node.log" 2>&1 &
pid=$!
echo "$pid" >"$pidf"
# Return once the node answers.
for _ in $(seq 300); do
  if ! alive "$pid"; then
    echo "n$id (pid $pid) exited at start; the end of $dir/node.log:" >&2
    tail -n 5 "$dir/node.log" | sed 's/^/  /' >&2
    rm -f "$pidf"; exit 1
  fi
  if [ -n "$(role_of "$id")" ]; then
    echo "restarted n$id (pid $pid)"; exit 0
  fi
  sleep 0.1
done
echo "n$id (pid $pid) does not answer after 30 s: see $dir/node.log" >&2
exit 1
