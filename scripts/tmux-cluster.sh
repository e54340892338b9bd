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
ids=$(awk '/^\[\[node\]\]/{n=1} n&&/^id *=/{print $3; n=0}' "$config")
first=1
for id in $ids; do
  c="$root/target/debug/raft-node --config $config --id $id"
  if [ $first = 1 ]; then tmux new-session -d -s $session "$c"; first=0; else tmux split-window -t $session "$c"; fi
  tmux select-layout -t $session tiled >/dev/null
done
tmux split-window -t $session -c "$root" "bash"
tmux select-layout -t $session tiled >/dev/null
tmux send-keys -t $session "alias raft-ctl=$root/target/debug/raft-ctl; raft-ctl --config $config status" Enter
exec tmux attach -t $session
