#!/usr/bin/env bash
# Send a signal to one node of the local cluster, by its PID file.
#   scripts/kill-node.sh ID [--signal KILL|TERM|STOP|CONT] [--config FILE] [--release]
#
# ID             1 or n1
# --signal SIG   default KILL; after KILL or TERM the PID file is removed
# --config FILE  the cluster (default: cluster.toml of this checkout)
# --release      use the release build of raft-ctl to read the config
# Works from any directory; the PID file is <the node's data dir>/node.pid,
# as scripts/cluster.sh and scripts/restart-node.sh write it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
help_text() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
usage() { help_text >&2; exit 2; }
case "${1:-}" in '') usage ;; -h|--help) help_text; exit 0 ;; esac
id="${1#n}"; shift
case "$id" in ''|*[!0-9]*) echo "bad node id $id: want 1 or n1" >&2; usage ;; esac
sig=KILL; cfg="$root/cluster.toml"; profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --signal) [ $# -ge 2 ] || usage; sig="${2#SIG}"; shift 2 ;;
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
[ -f "$pidf" ] || { echo "no PID file $pidf: n$id is not running" >&2; exit 1; }
pid=$(cat "$pidf")
if ! alive "$pid"; then
  echo "n$id (pid $pid) is not running; removed its stale PID file" >&2
  rm -f "$pidf"; exit 1
fi
kill -s "$sig" "$pid"
echo "sent SIG$sig to n$id (pid $pid)"
case "$sig" in KILL|TERM) rm -f "$pidf" ;; esac
