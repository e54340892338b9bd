# shellcheck shell=bash
# Shared by every script. Expects $root (the checkout).
#
# The cluster scripts (cluster.sh, kill-node.sh, restart-node.sh,
# tmux-cluster.sh) call build_bins, set $cfg, and use the config and node
# helpers; drill.sh and bench.sh also run throwaway clusters in a temp dir
# (setup, start_node, stop_nodes: they set $work). Nodes are started and
# stopped by PID file only, never by name.
: "${root:?lib.sh needs \$root, the checkout}"

# ---- binaries and config -----------------------------------------------------

# Builds the binaries and sets $bin to the directory cargo put them in, which
# cargo knows and the script does not (CARGO_TARGET_DIR, build.target-dir in
# a cargo config, --target): cargo runs raft-ctl from there, and raft-ctl
# says where it is. PROFILE: debug (default) or release.
build_bins() {  # [PROFILE]
  local profile_args=()
  [ "${1:-debug}" = release ] && profile_args=(--release)
  # A relative CARGO_TARGET_DIR means what it means here, not in $root.
  if [ -n "${CARGO_TARGET_DIR:-}" ] && [ "${CARGO_TARGET_DIR#/}" = "$CARGO_TARGET_DIR" ]; then
    export CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR"
  fi
  (cd "$root" && cargo build -q --bins "${profile_args[@]}") || {
    echo "error: cargo build failed (in $root)" >&2; exit 1; }
  bin=$(cd "$root" && cargo run -q "${profile_args[@]}" --bin raft-ctl -- bin-dir) || {
    echo "error: cannot ask raft-ctl where cargo put it (cargo run --bin raft-ctl -- bin-dir)" >&2; exit 1; }
  if [ ! -x "$bin/raft-node" ]; then
    echo "error: no raft-node next to raft-ctl in $bin" >&2; exit 1
  fi
}

# The absolute path of FILE, from the caller's current directory.
abs_path() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }

# After a script's options: $cfg must exist (made absolute), and the binaries
# of $profile are built and found ($bin).
use_config_and_bins() {
  [ -f "$cfg" ] || { echo "error: no config file $cfg" >&2; exit 2; }
  cfg="$(abs_path "$cfg")"
  build_bins "${profile:-debug}"
}

# What $cfg says, read by raft-ctl (raft-node's own parser): one value each.
config_ids() { "$bin/raft-ctl" --config "$cfg" config ids; }
node_dir() { "$bin/raft-ctl" --config "$cfg" config data-dir --id "$1"; }
# The value at PATH of the JSON document on stdin (see `raft-ctl help json`).
json_get() { "$bin/raft-ctl" json "$1"; }

# ---- throwaway clusters (drill.sh, bench.sh) -----------------------------------

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_ports() {  # [N]: N (default three) distinct free ports
  local ports=() p
  while [ ${#ports[@]} -lt "${1:-3}" ]; do
    # Below the kernel's ephemeral range (32768+), where clients' own
    # connections could hold a port.
    p=$(( 20000 + RANDOM % 12000 ))
    case " ${ports[*]} " in *" $p "*) continue ;; esac
    port_free "$p" && ports+=("$p")
  done
  echo "${ports[@]}"
}

ctl() { "$bin/raft-ctl" --config "$cfg" --timeout 5 "$@"; }

# NAME [NODES [INITIAL_MEMBERS]]: a fresh cluster of NODES nodes (default 3,
# ids 1..NODES) in a new temp dir, every node started; INITIAL_MEMBERS (like
# 1,2,3) becomes [cluster] initial_members, and the other nodes start as
# non-members that wait to be added. $cluster_extra: more [cluster] lines.
# With tls=1: `raft-ctl certs init` makes a CA and certificates in
# $work/certs and cluster.toml gets a [tls] section whose client certificate
# is the admin one, so that every raft-ctl call of a script may also inject
# faults and change members.
# Sets $work, $cfg and $node_ids (every [[node]] id, one a word).
setup() {
  local count=${2:-3} members=${3:-}
  work="$(mktemp -d "${TMPDIR:-/tmp}/raftkit-$1.XXXXXX")"
  cfg="$work/cluster.toml"
  node_ids=$(seq -s ' ' 1 "$count")
  local ports; read -r -a ports <<<"$(pick_ports "$count")"
  cat >"$cfg" <<EOF
[cluster]
name = "drill"
data_dir = "data"
election_timeout_ms = [300, 600]
heartbeat_interval_ms = 50
${members:+initial_members = [$members]}
${cluster_extra:-}
EOF
  local id
  for id in $node_ids; do
    printf '\n[[node]]\nid = %s\naddr = "127.0.0.1:%s"\n' "$id" "${ports[id - 1]}" >>"$cfg"
  done
  if [ "${tls:-0}" = 1 ]; then add_tls; fi
  for id in $node_ids; do start_node "$id"; done
}

# Certificates for every node of $cfg, and its [tls] section (see setup).
add_tls() {
  "$bin/raft-ctl" certs init --dir "$work/certs" --nodes "${node_ids// /,}" >/dev/null || {
    echo "error: raft-ctl certs init failed in $work" >&2; exit 1; }
  cat >>"$cfg" <<'EOF'

[tls]
ca = "certs/ca.pem"
cert = "certs/n{id}.pem"
key = "certs/n{id}.key"
client_cert = "certs/admin.pem"
client_key = "certs/admin.key"
EOF
}

# A fault schedule for pictures of a run (`raft-ctl plot --events`): when
# $events_file is set, each line is `NS + LABEL` (a window opens), `NS -
# LABEL` (it closes) or `NS ! LABEL` (an instant), NS on the clock of
# `raft-ctl now`, the clock of histories.
event() {  # + | - | !, LABEL
  [ -n "${events_file:-}" ] || return 0
  echo "$("$bin/raft-ctl" now) $1 $2" >>"$events_file"
}

pidfile() { echo "$work/data/n$1/node.pid"; }
# Its PID file names a live process (a zombie is not: a node that exited
# on its own, say after an fsync error, may wait unreaped).
running() { local f; f=$(pidfile "$1"); [ -f "$f" ] && alive "$(cat "$f")"; }
# $node_ns (netem.sh): when set, node ID runs in network namespace
# ${node_ns}nID (`ip netns exec` execs it, so the PID is still the node's).
start_node() {
  local id=$1; mkdir -p "$work/data/n$id"
  running "$id" && return 0
  local pre=(); [ -n "${node_ns:-}" ] && pre=(ip netns exec "${node_ns}n$id")
  # In a subshell, so that the shell does not report the node's death.
  ( nohup "${pre[@]}" "$bin/raft-node" --config "$cfg" --id "$id" >>"$work/data/n$id/node.log" 2>&1 &
    echo $! >"$(pidfile "$id")" )
  log "started n$id (pid $(cat "$(pidfile "$id")"))"
  event - "n$id down"
}
# Alive: exists and is not a zombie waiting to be reaped (without /proc,
# existing is enough).
alive() {  # PID
  kill -0 "$1" 2>/dev/null || return 1
  local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }  # the state follows the command name, which may hold spaces
  [ "${stat%% *}" != Z ]
}
wait_dead() {  # PID [TENTHS]
  local _i; for _i in $(seq "${2:-50}"); do alive "$1" || return 0; sleep 0.1; done; return 1
}
# SIGTERM, then SIGKILL if it still runs after TENTHS (default 50) tenths of
# a second; returns once it is gone (1 if even SIGKILL did not end it).
stop_pid() {  # PID [TENTHS]
  alive "$1" || return 0
  kill -s TERM "$1" 2>/dev/null || true
  kill -s CONT "$1" 2>/dev/null || true  # a stopped process handles TERM once continued
  wait_dead "$1" "${2:-50}" && return 0
  echo "pid $1 still runs $(( ${2:-50} / 10 )) s after SIGTERM: SIGKILL" >&2
  kill -s KILL "$1" 2>/dev/null || true
  wait_dead "$1" 50
}
signal_node() {  # ID SIGNAL [nowait]
  local f pid; f=$(pidfile "$1")
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  log "SIG$2 n$1"
  case "$2" in
    TERM) event + "n$1 down"; rm -f "$f"; stop_pid "$pid" 100 ;;
    KILL) event + "n$1 down"; kill -s KILL "$pid" 2>/dev/null || true
          rm -f "$f"; [ "${3:-}" = nowait ] || wait_dead "$pid" ;;
    STOP) event + "n$1 paused"; kill -s STOP "$pid" 2>/dev/null || true ;;
    CONT) kill -s CONT "$pid" 2>/dev/null || true; event - "n$1 paused" ;;
    *) kill -s "$2" "$pid" 2>/dev/null || true ;;
  esac
  return 0
}
stop_nodes() {
  [ -n "${work:-}" ] || return 0  # stopped before any cluster was set up
  for id in ${node_ids:-1 2 3}; do
    local f; f=$(pidfile "$id")
    if [ -f "$f" ]; then
      kill -s CONT "$(cat "$f")" 2>/dev/null || true
      signal_node "$id" KILL
    fi
  done
}

# The node that says it leads in the highest term (empty if none).
leader() { ctl leader 2>/dev/null || true; }
# The node's role (empty when it does not answer).
role_of() { ctl --json status 2>/dev/null | json_get "id=$1.role" 2>/dev/null || true; }
# Every node answers.
all_up() {
  local st down
  st=$(ctl --json leader 2>/dev/null) || true  # exit 3: no leader (yet)
  down=$(json_get down <<<"$st" 2>/dev/null) || return 1
  [ -z "$down" ]
}
wait_leader() {  # [EXCEPT_ID]
  local l
  for _ in $(seq 300); do
    l=$(leader)
    if [ -n "$l" ] && [ "$l" != "${1:-}" ]; then echo "$l"; return 0; fi
    sleep 0.1
  done
  return 1
}
