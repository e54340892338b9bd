#!/usr/bin/env bash
# Send a signal to one node of the local cluster, by its PID file.
#   scripts/kill-node.sh ID [--signal KILL|TERM|STOP|CONT] [--config FILE]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
id="${1:?usage: $0 ID [--signal KILL|TERM|STOP|CONT] [--config FILE]}"; id="${id#n}"; shift
sig=KILL; config="$root/cluster.toml"
while [ $# -gt 0 ]; do
  case "$1" in
    --signal) sig="$2"; shift 2 ;;
    --config) config="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
d=$(awk -F'"' '/^data_dir *=/{print $2; exit}' "$config")
case "$d" in /*) ;; *) d="$(dirname "$config")/$d" ;; esac
pidf="$d/n$id/node.pid"
[ -f "$pidf" ] || { echo "no PID file $pidf: n$id is not running" >&2; exit 1; }
kill -s "$sig" "$(cat "$pidf")"
echo "sent SIG$sig to n$id (pid $(cat "$pidf"))"
case "$sig" in KILL|TERM) rm -f "$pidf" ;; esac
