#!/usr/bin/env bash
# Failure drills: a fresh local cluster, a recorded load, a fault schedule,
# heal, settle, verify every node, check the history for linearizability.
#
#   scripts/drill.sh NAME [--seconds S] [--release] [--keep] [--snapshot-entries N] [--tls]
#   scripts/drill.sh random [--seed N] [--seconds S] ...
#
# NAME: leader-kill rolling-restart minority-partition leader-isolated
#       flaky-network pause crash-all majority-down replace-node
#       membership-churn, or all (these ten), or random.
# random        a nemesis draws a schedule of overlapping faults from the
#               seed (kills of a node, the leader or all; pauses; restarts;
#               partitions minority, leader, bridge and one-way; drop, delay
#               and duplication; disk stalls, full disk, fsync errors;
#               membership changes), under a load of 12 clients on 100 keys,
#               a quarter of the operations on one hot key. See
#               scripts/nemesis.sh. The verdict line names the seed.
# --seconds S   how long faults are injected (default 60; CI uses 10)
# --seed N      random: the schedule's seed (default: drawn from the clock)
# --release     use release binaries
# --keep        keep the drill's directory (kept anyway when a drill fails)
# --snapshot-entries N  nodes snapshot and compact every N applied entries
#               (default 5000, far below the node's default, so that faults
#               also hit snapshot writes and InstallSnapshot; 0 = never)
# --tls         every connection is mutual TLS (raft-ctl certs init; the
#               drill's raft-ctl calls show the admin certificate)
# DRILL_SEED=N  membership-churn makes the random draws of an earlier run again
#               (its seed is in the verdict's note and in drill.log)
#
# Ends with one verdict line per drill, which names the drill's picture: an
# SVG timeline next to its history (throughput, p50/p99 latency, the fault
# windows, the leader over time, elections); exits 0 only if every drill
# passed. Nodes are started and stopped by PID only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
all_drills=(leader-kill rolling-restart minority-partition leader-isolated flaky-network pause crash-all majority-down
            replace-node membership-churn)
usage() { echo "usage: $0 NAME|all|random [--seconds S] [--seed N] [--release] [--keep] [--snapshot-entries N] [--tls]   (NAME: ${all_drills[*]})" >&2; exit 2; }
name="${1:-}"; [ -n "$name" ] || usage
case "$name" in -h|--help) sed -n '2,/^[^#]/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;; esac
shift
seconds=60; profile=debug; keep=0; snapshot_entries=5000; tls=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="${2:?}"; shift 2 ;;
    --release) profile=release; shift ;;
    --keep) keep=1; shift ;;
    --snapshot-entries) snapshot_entries="${2:?}"; shift 2 ;;
    --seed) DRILL_SEED="${2:?}"; shift 2 ;;
    --tls) tls=1; shift ;;
    *) usage ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "--seconds takes whole seconds" >&2; exit 2 ;; esac
case "$snapshot_entries" in ''|*[!0-9]*) echo "--snapshot-entries takes a whole number" >&2; exit 2 ;; esac
case "${DRILL_SEED:-0}" in ''|*[!0-9]*) echo "--seed takes a whole number" >&2; exit 2 ;; esac
# Read by setup() in scripts/lib.sh.
cluster_extra="snapshot_entries = $snapshot_entries
snapshot_keep_entries = $(( snapshot_entries / 5 ))"
if [ "$name" != all ]; then
  case " ${all_drills[*]} random " in *" $name "*) ;; *) usage ;; esac
fi
if [ "$name" = random ] && [ -z "${DRILL_SEED:-}" ]; then
  DRILL_SEED=$(( $(date +%s%N) / 1000 % 1000000 ))
fi
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
# shellcheck source=scripts/nemesis.sh
. "$root/scripts/nemesis.sh"
build_bins "$profile"

# ---- one cluster per drill ---------------------------------------------------

work=""; cfg=""; bench_pid=""; timeline_pid=""
now_ns() { "$bin/raft-ctl" now; }
log() { echo "  $(date +%H:%M:%S) $*" >>"$work/drill.log"; [ -n "${DRILL_VERBOSE:-}" ] && echo "  $*" >&2; return 0; }

stop_all() {
  stop_nodes
  if [ -n "$bench_pid" ]; then kill "$bench_pid" 2>/dev/null || true; wait "$bench_pid" 2>/dev/null || true; bench_pid=""; fi
  stop_timeline
}
# The status sampler behind the picture's leader band (by PID).
stop_timeline() {
  if [ -n "$timeline_pid" ]; then kill "$timeline_pid" 2>/dev/null || true; wait "$timeline_pid" 2>/dev/null || true; timeline_pid=""; fi
}
trap 'stop_all' EXIT INT TERM

followers_of() { for id in $node_ids; do [ "$id" != "$1" ] && echo "$id"; done; return 0; }
elapsed_since() { echo $(( $(date +%s) - $1 )); }

notes=""
note() { notes="${notes:+$notes; }$*"; log "$*"; }
extra_check_args=()
drill_failed=0
must() { if ! "$@"; then drill_failed=1; note "FAILED: $*"; fi; }

# ---- fault schedules (each runs for about $S seconds) ------------------------

drill_leader_kill() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    local l; l=$(wait_leader) || { note "no leader"; return; }
    signal_node "$l" KILL; sleep 1
    start_node "$l"; sleep 2
  done
}

drill_rolling_restart() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    for id in 1 2 3; do
      signal_node "$id" TERM; sleep 0.5
      start_node "$id"; sleep 2
    done
  done
}

drill_minority_partition() {
  local l f; l=$(wait_leader) || return
  f=$(followers_of "$l" | head -1)
  ctl fault partition "$f" >/dev/null; log "partition: n$f cut off"; event + "n$f cut off"
  sleep "$S"
  ctl fault heal >/dev/null; log "healed"; event - "n$f cut off"
}

drill_leader_isolated() {
  local l; l=$(wait_leader) || return
  local cut; cut=$(date +%s%N)
  ctl fault partition "$l" >/dev/null; log "partition: leader n$l cut off"; event + "leader n$l cut off"
  local stepped=0
  local r
  for _ in $(seq 100); do
    r=$(role_of "$l")
    if [ -n "$r" ] && [ "$r" != leader ]; then stepped=1; log "n$l is now $r"; break; fi
    sleep 0.1
  done
  must test "$stepped" = 1
  [ "$stepped" = 1 ] && note "old leader n$l stepped down within $(( ($(date +%s%N) - cut) / 1000000 )) ms"
  local nl; nl=$(wait_leader "$l") || nl=""
  must test -n "$nl"
  [ -n "$nl" ] && note "n$nl leads the majority"
  sleep "$(( S > 3 ? S - 3 : 1 ))"
  ctl fault heal >/dev/null; log "healed"; event - "leader n$l cut off"
}

drill_flaky_network() {
  ctl fault drop --rate 0.2 >/dev/null
  ctl fault delay --ms 20 --jitter-ms 30 >/dev/null
  log "every node: drop 20%, delay 20±30 ms"; event + "drop 20%, delay 20±30 ms"
  sleep "$S"
  ctl fault heal >/dev/null; log "healed"; event - "drop 20%, delay 20±30 ms"
}

drill_pause() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    local l; l=$(wait_leader) || return
    signal_node "$l" STOP; sleep 2
    signal_node "$l" CONT; sleep 2
  done
}

drill_crash_all() {
  local t0; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    sleep 2
    local pids; pids=$(cat "$work"/data/n*/node.pid 2>/dev/null)
    for id in 1 2 3; do signal_node "$id" KILL nowait; done
    for p in $pids; do wait_dead "$p"; done
    sleep 1
    # shellcheck disable=SC2031 # (the seeded RANDOM of nemesis.sh lives in its own subshell)
    for id in $(printf '%s\n' 1 2 3 | shuf); do start_node "$id"; sleep 0.$((RANDOM % 5)); done
    wait_leader >/dev/null || note "no leader after restart"
  done
}

drill_majority_down() {
  sleep 2
  local l; l=$(wait_leader) || return
  local victims; victims=$(followers_of "$l" | tr '\n' ' ')
  local pids; pids=$(for id in $victims; do cat "$(pidfile "$id")"; done)
  for id in $victims; do signal_node "$id" KILL nowait; done
  for p in $pids; do wait_dead "$p"; done
  local down; down=$(now_ns)
  log "killed $victims(two of three)"
  sleep "$(( S > 6 ? S - 3 : 3 ))"
  local up; up=$(now_ns)
  local first=${victims%% *}
  start_node "$first"
  note "two nodes down for $(( (up - down) / 1000000000 )) s"
  # No write may be acknowledged while a majority is down (0.5 s of grace
  # for answers already on their way), and writes must resume afterwards.
  extra_check_args=(--no-acks-between "$((down + 500000000))" "$up" --acks-after "$up")
  sleep 3
  for id in $victims; do start_node "$id"; done
}

# ---- membership changes ---------------------------------------------------------

# The member list as the leader gives it (JSON), asked through each running
# node in turn for up to 3 s: a node that knows no leader answers with its
# own view (a removed node that keeps running does so for good). Without a
# leader, the last such view; empty if no node answered.
member_list() {
  local ml view="" id _i
  for _i in 1 2 3 4 5 6 7 8 9 10; do
    for id in $node_ids; do
      running "$id" || continue
      ml=$(ctl_t 2 --node "$id" --json member list 2>/dev/null) || continue
      if [ -n "$(json_get leader <<<"$ml" 2>/dev/null)" ]; then echo "$ml"; return 0; fi
      view=$ml
    done
    sleep 0.3
  done
  echo "$view"
}
# From a member list: every member's id, one a word; the voters (of the
# new half while joint); the learners; whether a change is under way.
ml_ids() { json_get 'members.*.id' <<<"$1" 2>/dev/null | paste -sd' ' -; }
ml_role_ids() {  # LIST ROLE
  local ids roles
  ids=$(json_get 'members.*.id' <<<"$1" 2>/dev/null) || return 0
  roles=$(json_get 'members.*.role' <<<"$1" 2>/dev/null) || return 0
  paste -d' ' <(echo "$ids") <(echo "$roles") | awk -v r="$2" '$2 == r {print $1}' | paste -sd' ' -
}
ml_voters() {
  local v id out=""; v=$(ml_role_ids "$1" voter)
  [ "$(json_get joint <<<"$1" 2>/dev/null)" = true ] || { echo "$v"; return 0; }
  for id in $v; do
    [ "$(json_get "members.id=$id.in_new" <<<"$1" 2>/dev/null)" = true ] && out="$out $id"
  done
  echo "${out# }"
}
ml_changing() { [ "$(json_get changing <<<"$1" 2>/dev/null)" = true ]; }
words() { wc -w <<<"$1"; }  # how many words
has_word() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }

# The members each answering node knows (voters and learners of its newest
# membership), one id a word: the fallback when no leader answers.
status_member_ids() {
  local st; st=$(ctl --json status 2>/dev/null) || return 0
  { json_get '*.membership.voters' <<<"$st"; json_get '*.membership.learners' <<<"$st"; } 2>/dev/null \
    | grep -E '^[0-9]+$' | sort -nu | paste -sd' ' -
}

# The nodes the heal restarts: the current members as the leader lists
# them, else as the nodes that answer know them, else every node the drill
# did not retire (remove and stop). A node that is not a member stays as
# the drill left it: stopped if stopped.
retired_ids=""
heal_ids() {
  local m; m=$(ml_ids "$(member_list)")
  [ -n "$m" ] || m=$(status_member_ids)
  if [ -z "$m" ]; then
    local id; for id in $node_ids; do has_word "$retired_ids" "$id" || m="$m $id"; done
  fi
  echo "$m"
}

# Waits until the leader lists ID as WANT (learner, voter or absent) with no
# change under way; 1 after TENTHS (default 200) tenths of a second.
wait_membership() {  # ID WANT [TENTHS]
  local ml _i
  for _i in $(seq "${3:-200}"); do
    ml=$(member_list)
    if [ -n "$ml" ] && ! ml_changing "$ml"; then
      case "$2" in
        absent) has_word "$(ml_ids "$ml")" "$1" || return 0 ;;
        *) has_word "$(ml_role_ids "$ml" "$2")" "$1" && return 0 ;;
      esac
    fi
    sleep 0.1
  done
  return 1
}

# `raft-ctl member ARGS`, retried while the leader refuses for a passing
# reason (a change or a transfer under way, a new leader, a learner still
# catching up) or no leader answers, until the leader lists ID as WANT;
# 1 after about SECONDS, or at once on any other refusal (in $change_err).
change_err=""
member_change() {  # SECONDS ID WANT member-args...
  local secs=$1 id=$2 want=$3; shift 3
  local t0 out rc; t0=$(date +%s)
  while [ "$(elapsed_since "$t0")" -lt "$secs" ]; do
    wait_membership "$id" "$want" 1 && return 0
    rc=0; out=$(ctl member "$@" 2>&1 >/dev/null) || rc=$?
    log "member $*: exit $rc${out:+ ($out)}"
    [ "$rc" = 0 ] && { wait_membership "$id" "$want" 50 && return 0; change_err="member $*: answered but the leader does not list n$id as $want"; return 1; }
    change_err="member $*: $out"
    case "$out" in
      *"in progress"*|*"not yet committed"*|*"entries behind"*|*"being handed"*|*Unavailable*|*"no node"*|*"no leader"*) ;;
      *) [ "$rc" = 1 ] && return 1 ;;
    esac
    sleep 0.3
  done
  return 1
}

# The term of the leader (empty if none).
leader_term() { ctl --json leader 2>/dev/null | json_get term 2>/dev/null || true; }
# What a node's status says it is: leader, follower, learner, non-member...
member_of() { ctl --json status 2>/dev/null | json_get "id=$1.member" 2>/dev/null || true; }

# ---- membership drills (their own cluster shapes: see cluster_shape) ----------

# Replace n1 by n4 under load: n4 starts as a non-member and must disturb
# nobody; it is added as a learner, promoted once caught up, n1 is removed
# and stopped for good; the new voters then survive a leader kill.
drill_replace_node() {
  local t0; t0=$(date +%s)
  local term0 term1; term0=$(leader_term)
  sleep 2
  wait_leader "" >/dev/null || true
  term1=$(leader_term)
  local r4 t4; r4=$(member_of 4); t4=$(ctl --json status 2>/dev/null | json_get id=4.term 2>/dev/null) || t4=""
  must test "$r4" = non-member
  must test -n "$term0"
  must test -n "$term1"
  # A non-member disturbs the cluster only by asking for votes at a higher
  # term: n4 must still be at term 0 and must never have campaigned. The
  # voters' own term may still move for a reason of theirs (a leader whose
  # followers' acknowledgements came late on a loaded machine steps down by
  # CheckQuorum); the note says so.
  must test "$t4" = 0
  if grep -q "starting pre-vote\|starting election" "$work/data/n4/node.log"; then must false "n4 campaigned as a non-member"; fi
  local moved="stayed"; [ "$term0" = "$term1" ] || moved="moved without n4 (a voter's own election)"
  note "n4 waited 2 s as a $r4 (its term $t4, never campaigned); the cluster's term $moved: $term0->$term1"
  local behind; behind=$(json_get last_index <<<"$(member_list)" 2>/dev/null) || behind="?"
  member_change 30 4 learner add 4 --learner || { must false "$change_err"; return; }
  log "n4 is a learner"
  member_change 60 4 voter promote 4 || { must false "$change_err"; return; }
  log "n4 is a voter"
  note "n4 caught up on a log of $behind entries"
  member_change 30 1 absent remove 1 || { must false "$change_err"; return; }
  log "n1 is removed"
  signal_node 1 TERM
  retired_ids="$retired_ids 1"
  note "n4 replaced n1 after $(elapsed_since "$t0") s (voters: $(ml_voters "$(member_list)"))"
  # The new voters alone: kill their leader once, it must be replaced.
  if [ "$(elapsed_since "$t0")" -lt $(( S - 3 )) ]; then
    local l; l=$(wait_leader) || { note "no leader after the replacement"; must false; return; }
    signal_node "$l" KILL; sleep 1
    local nl; nl=$(wait_leader "$l") || nl=""
    must test -n "$nl"
    [ -n "$nl" ] && log "n$nl leads after n$l was killed"
    start_node "$l"
  fi
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do sleep 1; done
}

# One word of LIST (words), chosen by R (a number the caller drew from
# $RANDOM, so that the seeded sequence stays in this shell).
pick_word() {  # LIST R
  local w; read -r -a w <<<"$1"
  echo "${w[$2 % ${#w[@]}]}"
}
ctl_t() { "$bin/raft-ctl" --config "$cfg" --timeout "$1" "${@:2}"; }

# One change of the churn: `raft-ctl member ARGS` (or transfer-leader);
# counts it as ok (then the leader must list ID as WANT), refused (with the
# leader's reason), or unknown (its leader went away; the membership must
# still settle, one way or the other). Anything else fails the drill.
# With churn_kill_ms set (and churn_kill_leader), that leader is killed
# that many ms after the change was sent: it is then down ($churn_down).
churn_ok=0; churn_refused=0; churn_unknown=0; churn_kill_ms=""; churn_kill_leader=""; churn_down=""; churn_kills=0
churn_resent=0
churn_change() {  # ID WANT ctl-args...
  local id=$1 want=$2; shift 2
  local out rc=0 err="$work/change.err"
  ctl_t 15 "$@" >/dev/null 2>"$err" &
  local cpid=$!
  if [ -n "$churn_kill_ms" ] && [ -n "$churn_kill_leader" ]; then
    sleep "$(printf '0.%03d' "$churn_kill_ms")"
    signal_node "$churn_kill_leader" KILL; churn_down=$churn_kill_leader; churn_kills=$((churn_kills + 1))
    log "killed the leader n$churn_kill_leader ${churn_kill_ms} ms into the change"
  fi
  wait "$cpid" || rc=$?
  out=$(cat "$err")
  case "$rc:$out" in
    0:*)
      churn_ok=$((churn_ok + 1)); log "$*: ok"
      if [ "$want" != leads ] && ! wait_membership "$id" "$want" 50; then
        must false "$*: answered ok but the leader does not list n$id as $want"
      fi ;;
    1:*"(Refused)"*|2:*"(BadRequest)"*)
      if [ "$want" != leads ] && wait_membership "$id" "$want" 1; then
        # Made after all: its leader was killed once it had the change,
        # and raft-ctl sent the change again to the next leader, which had
        # completed it already. Only a kill explains that.
        churn_resent=$((churn_resent + 1)); log "$*: refused, yet made: $out"
        [ -n "$churn_kill_ms" ] || must false "$*: refused ($out), yet the leader lists n$id as $want"
      else
        churn_refused=$((churn_refused + 1)); log "$*: refused: $out"
      fi ;;
    *"(Unavailable)"*|3:*|4:*)
      churn_unknown=$((churn_unknown + 1)); log "$*: outcome unknown (exit $rc): $out"
      wait_membership 0 absent 300 || must false "$*: the membership did not settle within 30 s after an unknown outcome" ;;
    *) must false "$*: unclear answer (exit $rc): $out" ;;
  esac
  return 0
}

# Random membership changes, leadership transfers and kills for $S seconds
# on five nodes (voters n1..n3 at first; n4 and n5 wait as non-members).
# Every change completes (the leader then lists it) or is refused with a
# reason; one whose answer was lost with its leader (a quarter of the
# changes of voters lose it: SIGKILL 0-150 ms after the change was sent)
# must still end, one way or the other. At least three voters at every step. A removed node is
# stopped or left running, at random; n4 and n5 restart empty when added
# again (n1..n3 keep their data: an empty one would bootstrap as an initial
# voter). DRILL_SEED=N makes the same random draws again (what they pick
# still depends on timing: who leads, who caught up).
drill_membership_churn() {
  local seed=${DRILL_SEED:-$(( $(date +%s%N) / 1000 % 1000000 ))}
  RANDOM=$seed
  note "seed $seed (DRILL_SEED=$seed draws the same again)"
  churn_ok=0; churn_refused=0; churn_unknown=0; churn_down=""; churn_kills=0; churn_resent=0
  local t0; t0=$(date +%s)
  local step=0
  while [ "$(elapsed_since "$t0")" -lt "$S" ]; do
    step=$((step + 1))
    local r1=$RANDOM r2=$RANDOM r3=$RANDOM r4=$RANDOM
    if [ -n "$churn_down" ] && [ $((r3 % 2)) = 0 ]; then start_node "$churn_down"; churn_down=""; fi
    local ml; ml=$(member_list)
    if [ -z "$ml" ]; then log "step $step: no leader answers"; sleep 0.5; continue; fi
    if ml_changing "$ml"; then
      wait_membership 0 absent 300 || must false "a change stayed under way for 30 s"
      continue
    fi
    local voters learners members others="" id
    voters=$(ml_voters "$ml"); learners=$(ml_role_ids "$ml" learner); members=$(ml_ids "$ml")
    [ "$(words "$voters")" -ge 3 ] || must false "only $(words "$voters") voters: $voters"
    for id in $node_ids; do has_word "$members" "$id" || others="$others $id"; done
    local up_voters="" leader_id
    for id in $voters; do [ "$id" != "$churn_down" ] && up_voters="$up_voters $id"; done
    leader_id=$(json_get leader <<<"$ml" 2>/dev/null) || leader_id=""
    local acts=(transfer)
    [ -n "$others" ] && acts+=(add-learner add-learner add-voter)
    [ -n "$learners" ] && acts+=(promote promote remove-learner)
    [ "$(words "$voters")" -ge 4 ] && acts+=(remove-voter remove-voter)
    [ -z "$churn_down" ] && acts+=(kill)
    local act=${acts[r1 % ${#acts[@]}]}
    # Now and then, a change of voters loses its leader on the way.
    churn_kill_ms=""; churn_kill_leader=""
    case "$act" in add-voter|promote|remove-voter)
      if [ -z "$churn_down" ] && [ $((r4 % 4)) = 0 ] && [ -n "$leader_id" ]; then
        churn_kill_ms=$((r4 / 4 % 150)); churn_kill_leader=$leader_id
      fi ;;
    esac
    log "step $step: voters $voters; learners ${learners:-none}; leader ${leader_id:+n}${leader_id:-none}; down ${churn_down:-none}: $act"
    case "$act" in
      add-learner|add-voter)
        id=$(pick_word "$others" "$r2")
        running "$id" || start_node "$id"
        if [ "$act" = add-learner ]; then
          churn_change "$id" learner member add "$id" --learner
        else
          churn_change "$id" voter member add "$id"
        fi ;;
      promote) id=$(pick_word "$learners" "$r2"); churn_change "$id" voter member promote "$id" ;;
      remove-learner|remove-voter)
        if [ "$act" = remove-learner ]; then id=$(pick_word "$learners" "$r2"); else id=$(pick_word "$voters" "$r2"); fi
        local before=$churn_ok
        churn_change "$id" absent member remove "$id"
        if [ "$churn_ok" != "$before" ] && [ $((r3 / 2 % 2)) = 0 ]; then
          signal_node "$id" TERM
          [ "$id" = "$churn_down" ] && churn_down=""
          if [ "$id" -gt 3 ]; then mv "$work/data/n$id" "$work/data/n$id.removed-$step"; log "n$id stopped, its data dir set aside"
          else log "n$id stopped"; fi
        fi ;;
      transfer)
        [ -n "$up_voters" ] || continue
        id=$(pick_word "$up_voters" "$r2")
        churn_change "$id" leads transfer-leader "$id" ;;
      kill)
        local alive_members=""
        for id in $members; do running "$id" && alive_members="$alive_members $id"; done
        id=$(pick_word "$alive_members" "$r2")
        signal_node "$id" KILL; churn_down=$id; churn_kills=$((churn_kills + 1))
        [ "$id" = "$leader_id" ] && log "killed the leader n$id" ;;
    esac
    sleep "0.$((r3 % 5))"
  done
  [ -n "$churn_down" ] && start_node "$churn_down"
  wait_membership 0 absent 300 || must false "the membership did not settle at the end"
  local ml; ml=$(member_list)
  local resent=""; [ "$churn_resent" = 0 ] || resent=", $churn_resent refused yet made (sent again after a leader kill)"
  note "$step steps: $churn_ok changes done, $churn_refused refused, $churn_unknown unknown$resent, $churn_kills kills; voters at the end: $(ml_voters "$ml"), learners: $(ml_role_ids "$ml" learner)"
}

# The cluster a drill starts with: NODES [INITIAL_MEMBERS] for setup
# (nothing: the three-node default).
cluster_shape() {
  case "$1" in
    replace-node) echo "4 1,2,3" ;;
    membership-churn|random) echo "5 1,2,3" ;;
  esac
  return 0
}

# ---- one drill ------------------------------------------------------------------

# A field of a JSON file (empty if the file or the field is missing);
# an array's elements come one a line.
json_field() { "$bin/raft-ctl" json "$2" "$1" 2>/dev/null || true; }

run_drill() {
  local d=$1
  S=$seconds; notes=""; extra_check_args=(); drill_failed=0; events_file=""; retired_ids=""
  local shape; read -r -a shape <<<"$(cluster_shape "$d")"
  setup "drill-$d" "${shape[@]}"
  events_file="$work/events.txt"
  log "drill $d, $S s of faults, in $work"
  wait_leader >/dev/null || { echo "$d: no leader at start" >&2; stop_all; return 1; }
  local up=0
  for _ in $(seq 100); do
    all_up && { up=1; break; }
    sleep 0.1
  done
  [ "$up" = 1 ] || { echo "$d: not every node came up (see $work/data/n*/node.log)" >&2; stop_all; return 1; }
  local hist="$work/history.jsonl" picture="$work/history.svg"
  # Bounded: it stops by itself long after the drill, if nothing stops it.
  "$bin/raft-ctl" --config "$cfg" timeline --out "$work/timeline.jsonl" --seconds "$((S + 600))" \
    >/dev/null 2>"$work/timeline.err" &
  timeline_pid=$!
  local load=(--keys 10 --clients 6)
  [ "$d" = random ] && load=(--keys 100 --clients 12 --hot-key-pct 25)
  "$bin/raft-ctl" --config "$cfg" bench --op kv "${load[@]}" --read-pct 40 \
    --duration "$((S + 4))" --warmup 0 --op-timeout 3 --record "$hist" --json --quiet \
    >"$work/bench.json" 2>"$work/bench.err" &
  bench_pid=$!
  sleep 1
  "drill_${d//-/_}"
  # Heal whatever is left: faults, stopped and dead nodes.
  ctl fault heal >/dev/null 2>&1 || true
  for id in $node_ids; do
    [ -f "$(pidfile "$id")" ] && kill -s CONT "$(cat "$(pidfile "$id")")" 2>/dev/null && event - "n$id paused"
  done
  for id in $(heal_ids); do start_node "$id"; done
  local brc=0; wait "$bench_pid" || brc=$?; bench_pid=""
  local load_end; load_end=$(now_ns)
  stop_timeline
  [ "$brc" = 0 ] || { drill_failed=1; note "bench failed: $(tail -1 "$work/bench.err")"; }
  local settle_out; settle_out=$(ctl settle --history "$hist" --wait 90 2>&1) || { drill_failed=1; note "settle: $settle_out"; }
  log "$settle_out"
  local check_out crc=0
  check_out=$("$bin/raft-ctl" check "$hist" "${extra_check_args[@]}" 2>&1) || crc=$?
  echo "$check_out" >"$work/check.out"
  [ "$crc" = 0 ] || drill_failed=1
  local b="$work/bench.json"
  local ok failed unknown leaders gap verdict
  ok=$(json_field "$b" ok); failed=$(json_field "$b" failed); unknown=$(json_field "$b" unknown)
  leaders=$(json_field "$b" leaders_seen | sed 's/^/n/' | paste -sd, -); gap=$(json_field "$b" max_write_gap_ms)
  verdict=PASS; [ "$drill_failed" = 0 ] || verdict=FAIL
  local check_line; check_line=$(echo "$check_out" | tail -1)
  local label=$d; [ "$d" = random ] && label="random --seed $DRILL_SEED"
  local line; line=$(printf '%-19s %s  ops ok %s failed %s unknown %s  leaders %s  longest without a write %s ms  check: %s' \
    "$label" "$verdict" "${ok:-?}" "${failed:-?}" "${unknown:-?}" "${leaders:-?}" "${gap:-?}" "$check_line")
  if ! "$bin/raft-ctl" plot --history "$hist" --timeline "$work/timeline.jsonl" --events "$events_file" \
      --until "$load_end" --title "drill $d: $verdict ($S s of faults)" \
      --subtitle "${line#"$(printf '%-19s %s  ' "$label" "$verdict")"}" --out "$picture" >/dev/null 2>"$work/plot.err"; then
    picture="none ($(tail -1 "$work/plot.err"))"
  fi
  echo "$line  picture: $picture"
  [ -n "$notes" ] && echo "                    ($notes)"
  events_file=""
  stop_all
  if [ "$verdict" = FAIL ] || [ "$keep" = 1 ]; then
    echo "                    kept: $work (history.jsonl, history.svg, timeline.jsonl, events.txt, bench.json, check.out, drill.log, data/n*/node.log)"
  else
    # Everything but the picture.
    find "$work" -mindepth 1 -maxdepth 1 ! -name history.svg -exec rm -rf {} +
  fi
  [ "$verdict" = PASS ]
}

if [ "$name" = all ]; then
  failures=0; summary=()
  out="$(mktemp "${TMPDIR:-/tmp}/raftkit-drill-out.XXXXXX")"
  for d in "${all_drills[@]}"; do
    run_drill "$d" >"$out" || failures=$((failures + 1))
    cat "$out"
    summary+=("$(head -1 "$out")")
  done
  rm -f "$out"
  echo
  echo "summary ($seconds s of faults per drill):"
  printf '%s\n' "${summary[@]}" | awk '{printf "  %-19s %s\n", $1, $2}'
  echo "$(( ${#all_drills[@]} - failures ))/${#all_drills[@]} drills passed"
  [ "$failures" = 0 ]
else
  run_drill "$name" || exit 1
fi
