# Shared by scripts/drill.sh and scripts/bench.sh: a throwaway local
# cluster in a temp dir. Expects $bin (binaries) and sets $work, $cfg.
# Nodes are started and stopped by PID file only. The cluster scripts
# (cluster.sh, restart-node.sh, tmux-cluster.sh) set $bin and $cfg
# themselves and use only alive, ctl, leader and role_of.

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_ports() {
  local ports=() p
  while [ ${#ports[@]} -lt 3 ]; do
    # Below the kernel's ephemeral range (32768+), where clients' own
    # connections could hold a port.
    p=$(( 20000 + RANDOM % 12000 ))
    port_free "$p" && ports+=("$p")
  done
  echo "${ports[@]}"
}

ctl() { "$bin/raft-ctl" --config "$cfg" --timeout 5 "$@"; }

setup() {  # NAME: a fresh 3-node cluster in a new temp dir ($cluster_extra: more [cluster] lines)
  work="$(mktemp -d "${TMPDIR:-/tmp}/raftkit-$1.XXXXXX")"
  cfg="$work/cluster.toml"
  read -r p1 p2 p3 <<<"$(pick_ports)"
  cat >"$cfg" <<EOF
[cluster]
name = "drill"
data_dir = "data"
election_timeout_ms = [300, 600]
heartbeat_interval_ms = 50
${cluster_extra:-}

[[node]]
id = 1
addr = "127.0.0.1:$p1"

[[node]]
id = 2
addr = "127.0.0.1:$p2"

[[node]]
id = 3
addr = "127.0.0.1:$p3"
EOF
  for id in 1 2 3; do start_node "$id"; done
}

pidfile() { echo "$work/data/n$1/node.pid"; }
running() { local f; f=$(pidfile "$1"); [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
start_node() {
  local id=$1; mkdir -p "$work/data/n$id"
  running "$id" && return 0
  # In a subshell, so that the shell does not report the node's death.
  ( nohup "$bin/raft-node" --config "$cfg" --id "$id" >>"$work/data/n$id/node.log" 2>&1 &
    echo $! >"$(pidfile "$id")" )
  log "started n$id (pid $(cat "$(pidfile "$id")"))"
}
# Alive: exists and is not a zombie waiting to be reaped.
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
wait_dead() {  # PID [TENTHS]
  local i; for i in $(seq "${2:-50}"); do alive "$1" || return 0; sleep 0.1; done; return 1
}
signal_node() {  # ID SIGNAL [nowait]
  local f pid; f=$(pidfile "$1")
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -s "$2" "$pid" 2>/dev/null || true
  log "SIG$2 n$1"
  case "$2" in
    KILL) rm -f "$f"; [ "${3:-}" = nowait ] || wait_dead "$pid" ;;
    TERM) rm -f "$f"; wait_dead "$pid" 100 || kill -s KILL "$pid" 2>/dev/null; wait_dead "$pid" ;;
  esac
  return 0
}
stop_nodes() {
  [ -n "${work:-}" ] || return 0  # stopped before any cluster was set up
  for id in 1 2 3; do
    local f; f=$(pidfile "$id")
    if [ -f "$f" ]; then
      kill -s CONT "$(cat "$f")" 2>/dev/null || true
      signal_node "$id" KILL
    fi
  done
}

# The node that says it leads in the highest term (empty if none).
leader() { ctl status 2>/dev/null | awk '$3=="leader" && $4>t {t=$4; id=substr($1,2)} END{print id}'; }
role_of() { ctl status 2>/dev/null | awk -v n="n$1" '$1==n {print $3}'; }
wait_leader() {  # [EXCEPT_ID]
  local l
  for _ in $(seq 300); do
    l=$(leader)
    if [ -n "$l" ] && [ "$l" != "${1:-}" ]; then echo "$l"; return 0; fi
    sleep 0.1
  done
  return 1
}
