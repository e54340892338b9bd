#!/usr/bin/env bash
# One tmux pane per node (in the foreground, logs on screen) plus one for
# raft-ctl. Quit a node with Ctrl-C in its pane.
#   scripts/tmux-cluster.sh [--config FILE]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="$root/cluster.toml"
[ "${1:-}" = "--config" ] && config="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
(cd "$root" && cargo build -q --bins)
session=raftkit
if tmux has-session -t $session 2>/dev/null; then
  echo "a tmux session named $session exists already: tmux attach -t $session" >&2; exit 1
fi
dd=$(awk -F'"' '/^data_dir *=/{print $2; exit}' "$config")
case "$dd" in /*) ;; *) dd="$(dirname "$config")/$dd" ;; esac
ids=$(awk '/^\[\[node\]\]/{n=1} n&&/^id *=/{print $3; n=0}' "$config")
first=1
for id in $ids; do
  # The pane's shell writes the PID file, then becomes the node: the
  # kill/restart scripts find it like any other.
  c="sh -c 'mkdir -p \"$dd/n$id\"; echo \$\$ > \"$dd/n$id/node.pid\"; exec \"$root/target/debug/raft-node\" --config \"$config\" --id $id'"
  if [ $first = 1 ]; then tmux new-session -d -s $session "$c"; first=0; else tmux split-window -t $session "$c"; fi
  tmux select-layout -t $session tiled >/dev/null
done
tmux split-window -t $session -c "$root" "bash"
tmux select-layout -t $session tiled >/dev/null
tmux send-keys -t $session "alias raft-ctl='$root/target/debug/raft-ctl --config $config'" Enter
# Let the nodes elect a leader (up to 20 s) before the first status.
bin="$root/target/debug"
cfg="$config"
# shellcheck source=lib.sh
. "$root/scripts/lib.sh"
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
