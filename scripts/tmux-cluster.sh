#!/usr/bin/env bash
# One tmux pane per node (in the foreground, logs on screen) plus one for
# raft-ctl. Quit a node with Ctrl-C in its pane.
#   scripts/tmux-cluster.sh [--config FILE] [--release]
#
# Works from any directory. Builds first (cargo build) and runs the binaries
# from where cargo put them (CARGO_TARGET_DIR is followed). Each pane writes
# its node's PID file, so scripts/kill-node.sh and scripts/restart-node.sh
# work on these nodes too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
help_text() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
usage() { help_text >&2; exit 2; }
cfg="$root/cluster.toml"; profile=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --config) [ $# -ge 2 ] || usage; cfg="$2"; shift 2 ;;
    --release) profile=release; shift ;;
    -h|--help) help_text; exit 0 ;;
    *) usage ;;
  esac
done
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
use_config_and_bins
session=raftkit
if tmux has-session -t $session 2>/dev/null; then
  echo "a tmux session named $session exists already: tmux attach -t $session" >&2; exit 1
fi
first=1
for id in $(config_ids); do
  dir=$(node_dir "$id")
  # The pane's shell writes the PID file, then becomes the node: the
  # kill/restart scripts find it like any other. Every path is quoted for
  # that shell with printf %q.
  c=$(printf 'mkdir -p %q && echo $$ > %q && exec %q --config %q --id %q' \
    "$dir" "$dir/node.pid" "$bin/raft-node" "$cfg" "$id")
  if [ $first = 1 ]; then tmux new-session -d -s $session "$c"; first=0; else tmux split-window -t $session "$c"; fi
  tmux select-layout -t $session tiled >/dev/null
done
tmux split-window -t $session -c "$root" "bash"
tmux select-layout -t $session tiled >/dev/null
tmux send-keys -t $session "$(printf 'alias raft-ctl=%q' "$(printf '%q --config %q' "$bin/raft-ctl" "$cfg")")" Enter
# Let the nodes elect a leader (up to 20 s) before the first status.
for _ in $(seq 200); do
  [ -n "$(leader)" ] && break
  sleep 0.1
done
tmux send-keys -t $session "raft-ctl status" Enter
if [ -n "${RAFTKIT_TMUX_DETACHED:-}" ]; then
  echo "started tmux session $session (tmux attach -t $session)"
else
  exec tmux attach -t $session
fi
