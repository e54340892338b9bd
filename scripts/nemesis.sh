# shellcheck shell=bash disable=SC2154,SC2034
# (SC2154, SC2034: the globals of drill.sh and lib.sh, read and set here.)
# The random drill's nemesis, sourced by drill.sh (which sets $work, $cfg,
# $bin, $S and the helpers of lib.sh and drill.sh).
#
# From a seed alone, gen_schedule draws a schedule of faults: when each
# starts, how long it lasts, its kind and two numbers that pick its target
# and strength. The same seed gives the same schedule (schedule.txt in the
# drill's directory); which node a fault lands on is picked at run time
# from those numbers, among the nodes that fit (the leader of the moment,
# a voter that is up...), so it still depends on who leads. Faults overlap:
# a new fault of a kind that holds one state (the partition, the one-way
# blocks, the flaky network, one node's disk, one node's process) takes
# that state over, and the fault it replaced then ends without touching it.
#
# Kinds (weight): kill-node 2, kill-leader 2, kill-all 1 (SIGKILL, then
# restart), pause-node 1, pause-leader 1 (SIGSTOP, then SIGCONT), restart 1
# (SIGTERM and start again at once), partition-minority 2 (one voter cut
# off), partition-leader 2, partition-bridge 1 (two voters that cannot
# talk to each other, a third that talks to both), one-way 1 (the leader
# cannot send to a follower, or a follower to the leader), flaky 2 (every
# node drops 5-29 %, delays 0-39 ms with jitter, duplicates 0-19 % of its
# peer messages), disk-stall 2 (20-419 ms more per write and fsync), disk-full 1
# (writes fail with ENOSPC), disk-eio 1 (the next fsync fails: the node
# stops, and is started again when the fault ends), member 3 (a membership
# change or a leadership transfer, as membership-churn makes them).

nemesis_kinds=(kill-node kill-node kill-leader kill-leader kill-all pause-node pause-leader restart
               partition-minority partition-minority partition-leader partition-leader partition-bridge
               one-way flaky flaky disk-stall disk-stall disk-full disk-eio member member member)

# SEED SECONDS: the schedule, a line per start and end of a fault, by time:
# `MS start|end EVENT KIND DURATION_MS R P`.
gen_schedule() {
  local seed=$1 horizon=$(( $2 * 1000 )) t=300 ev=0 kind dur r p
  # Seeded inside the pipeline's subshell: bash seeds a subshell's RANDOM
  # afresh.
  { RANDOM=$seed
  while [ "$t" -lt "$horizon" ]; do
    ev=$((ev + 1))
    kind=${nemesis_kinds[RANDOM % ${#nemesis_kinds[@]}]}
    case "$kind" in
      restart|member) dur=0 ;;
      kill-all) dur=$(( 500 + RANDOM % 2000 )) ;;
      kill-*|pause-*|disk-eio) dur=$(( 500 + RANDOM % 3500 )) ;;
      *) dur=$(( 1000 + RANDOM % 5000 )) ;;
    esac
    r=$RANDOM; p=$RANDOM
    echo "$t start $ev $kind $dur $r $p"
    [ "$dur" = 0 ] || echo "$((t + dur)) end $ev $kind $dur $r $p"
    t=$(( t + 200 + RANDOM % 2300 ))
  done; } | sort -n -s -k1,1
}

# ---- what is in force --------------------------------------------------------

declare -A proc_owner=()   # node -> the event that killed or paused it
declare -A proc_state=()   # node -> down | paused
declare -A disk_owner=()   # node -> the event whose disk fault it has
declare -A disk_args=()    # node -> that fault's arguments
part_owner=""; part_arg=""
block_owner=""; block_cmds=()    # each: "NODE TO"
flaky_owner=""; flaky_drop=""; flaky_delay=""; flaky_jitter=""; flaky_dup=""
nem_started=0; nem_skipped=0
declare -A nem_count=()

fctl() { ctl_t 1 "$@" >/dev/null 2>&1 || true; }  # a fault command; a node that is down misses it

# The member list (JSON) as a leader gives it, asked once of each node that
# runs and is not paused, a second at most each: the nemesis must not wait
# out a cluster it has itself left without a majority. Without a leader,
# the last list any node gave; the last one seen if none answers.
nem_last_ml=""
nem_ml() {
  local id ml view=""
  for id in $node_ids; do
    if ! running "$id" || [ "${proc_state[$id]:-}" = paused ]; then continue; fi
    ml=$(ctl_t 1 --node "$id" --json member list 2>/dev/null) || continue
    if [ -n "$(json_get leader <<<"$ml" 2>/dev/null)" ]; then nem_last_ml=$ml; echo "$ml"; return 0; fi
    view=$ml
  done
  [ -n "$view" ] && nem_last_ml=$view
  echo "$nem_last_ml"
}
nem_members() { ml_ids "$(nem_ml)"; }
nem_voters() { ml_voters "$(nem_ml)"; }
# The leader of the moment, asked a second at most (empty if none).
nem_leader() { ctl_t 1 leader 2>/dev/null || true; }

# WORDS minus the nodes this nemesis holds down or paused, and those not running.
nem_up() {
  local id out=""
  for id in $1; do
    [ -z "${proc_state[$id]:-}" ] && running "$id" && out="$out $id"
  done
  echo "${out# }"
}

wait_up() {  # ID: answers status (up to 5 s)
  local _i; for _i in $(seq 25); do ctl_t 1 --node "$1" status >/dev/null 2>&1 && return 0; sleep 0.2; done; return 1
}

# Faults are kept by each node in memory: a node started again gets the
# network faults in force, and its own disk fault, once it answers.
reapply_faults() {  # ID
  wait_up "$1" || return 0
  [ -n "$part_owner" ] && fctl fault partition "$part_arg"
  local bc; for bc in "${block_cmds[@]}"; do
    [ "${bc%% *}" = "$1" ] && fctl --node "$1" fault block --to "${bc#* }"
  done
  if [ -n "$flaky_owner" ]; then
    fctl --node "$1" fault drop --rate "$flaky_drop"
    fctl --node "$1" fault delay --ms "$flaky_delay" --jitter-ms "$flaky_jitter"
    fctl --node "$1" fault duplicate --rate "$flaky_dup"
  fi
  if [ -n "${disk_args[$1]:-}" ]; then
    # shellcheck disable=SC2086 # the arguments, one a word
    fctl --node "$1" fault disk ${disk_args[$1]}
  fi
}

clear_blocks() {
  local b n
  for b in "${block_cmds[@]}"; do n=${b%% *}; fctl --node "$n" fault block --to ''; done
  block_cmds=(); block_owner=""
}

# ---- one fault's start and end -------------------------------------------------

nem_skip() { nem_skipped=$((nem_skipped + 1)); log "event $1: $2: skipped ($3)"; }

nem_start() {  # EVENT KIND DUR R P
  local ev=$1 kind=$2 r=$4 p=$5 id ids l v
  case "$kind" in
    kill-node|pause-node|restart|kill-leader|pause-leader)
      if [ "${kind%-leader}" != "$kind" ]; then
        id=$(nem_leader)
        if [ -z "$id" ] || [ -n "${proc_state[$id]:-}" ]; then nem_skip "$ev" "$kind" "no leader to take"; return; fi
      else
        ids=$(nem_up "$(nem_members)")
        [ -n "$ids" ] || { nem_skip "$ev" "$kind" "no member up"; return; }
        id=$(pick_word "$ids" "$r")
      fi
      case "$kind" in
        kill-*) signal_node "$id" KILL; proc_state[$id]=down; proc_owner[$id]=$ev ;;
        pause-*) signal_node "$id" STOP; proc_state[$id]=paused; proc_owner[$id]=$ev ;;
        restart) signal_node "$id" TERM; start_node "$id"; reapply_faults "$id" ;;
      esac ;;
    kill-all)
      ids=$(nem_up "$(nem_members)")
      [ -n "$ids" ] || { nem_skip "$ev" "$kind" "no member up"; return; }
      local pids="" f
      for id in $ids; do f=$(pidfile "$id"); [ -f "$f" ] && pids="$pids $(cat "$f")"; done
      for id in $ids; do signal_node "$id" KILL nowait; proc_state[$id]=down; proc_owner[$id]=$ev; done
      for f in $pids; do wait_dead "$f"; done ;;
    partition-minority|partition-leader)
      if [ "$kind" = partition-leader ]; then id=$(nem_leader); else id=$(pick_word "$(nem_voters)" "$r"); fi
      [ -n "$id" ] || { nem_skip "$ev" "$kind" "no node to cut off"; return; }
      [ -n "$part_owner" ] && event - "partition (event $part_owner)"
      part_owner=$ev; part_arg=$id
      fctl fault partition "$id"
      event + "partition (event $ev)"; log "event $ev: n$id cut off" ;;
    partition-bridge|one-way)
      v=$(nem_voters)
      [ "$(words "$v")" -ge 3 ] || { nem_skip "$ev" "$kind" "fewer than three voters"; return; }
      clear_blocks
      local a b c
      if [ "$kind" = partition-bridge ]; then
        a=$(pick_word "$v" "$r"); c=$(pick_word "$v" $((r + 1)))
        block_cmds=("$a $c" "$c $a")
        log "event $ev: n$a and n$c cannot talk (the others bridge them)"
      else
        l=$(nem_leader); [ -n "$l" ] || { nem_skip "$ev" "$kind" "no leader"; return; }
        b=$(pick_word "$(for id in $v; do [ "$id" != "$l" ] && echo "$id"; done | paste -sd' ' -)" "$r")
        if [ $((p % 2)) = 0 ]; then block_cmds=("$l $b"); else block_cmds=("$b $l"); fi
        log "event $ev: one way: ${block_cmds[0]% *} cannot send to ${block_cmds[0]#* }"
      fi
      block_owner=$ev
      local bc; for bc in "${block_cmds[@]}"; do fctl --node "${bc%% *}" fault block --to "${bc#* }"; done
      event + "blocked (event $ev)" ;;
    flaky)
      [ -n "$flaky_owner" ] && event - "flaky (event $flaky_owner)"
      flaky_owner=$ev
      flaky_drop=$(printf '0.%02d' $(( 5 + p % 25 ))); flaky_delay=$(( r % 40 )); flaky_jitter=$(( r / 40 % 30 ))
      flaky_dup=$(printf '0.%02d' $(( p / 25 % 20 )))
      fctl fault drop --rate "$flaky_drop"
      fctl fault delay --ms "$flaky_delay" --jitter-ms "$flaky_jitter"
      fctl fault duplicate --rate "$flaky_dup"
      log "event $ev: drop $flaky_drop, delay $flaky_delay±$flaky_jitter ms, duplicate $flaky_dup"
      event + "flaky (event $ev)" ;;
    disk-stall|disk-full|disk-eio)
      if [ $((p % 3)) = 0 ]; then id=$(nem_leader); else id=$(pick_word "$(nem_up "$(nem_members)")" "$r"); fi
      if [ -z "$id" ] || [ -n "${proc_state[$id]:-}" ]; then nem_skip "$ev" "$kind" "no node up to take"; return; fi
      local args
      case "$kind" in
        disk-stall) args="stall --ms $(( 20 + p % 400 ))" ;;
        disk-full) args="full" ;;
        disk-eio) args="error eio"; proc_state[$id]=down; proc_owner[$id]=$ev ;;
      esac
      disk_owner[$id]=$ev; [ "$kind" = disk-eio ] || disk_args[$id]=$args
      # shellcheck disable=SC2086 # the arguments, one a word
      fctl --node "$id" fault disk $args
      log "event $ev: n$id disk $args"; event + "n$id disk $args" ;;
    member)
      local ml; ml=$(nem_ml)
      if [ -z "$ml" ] || [ -z "$(json_get leader <<<"$ml" 2>/dev/null)" ] || ml_changing "$ml"; then nem_skip "$ev" "$kind" "no leader, or a change under way"; return; fi
      local voters learners members others="" acts=(transfer)
      voters=$(ml_voters "$ml"); learners=$(ml_role_ids "$ml" learner); members=$(ml_ids "$ml")
      for id in $node_ids; do has_word "$members" "$id" || others="$others $id"; done
      [ -n "$others" ] && acts+=(add-learner add-voter)
      [ -n "$learners" ] && acts+=(promote remove-learner)
      [ "$(words "$voters")" -ge 4 ] && acts+=(remove-voter remove-voter)
      local act=${acts[p % ${#acts[@]}]}
      log "event $ev: member $act (voters $voters; learners ${learners:-none})"
      case "$act" in
        add-learner|add-voter)
          id=$(pick_word "$others" "$r")
          running "$id" || { start_node "$id"; reapply_faults "$id"; }
          if [ "$act" = add-learner ]; then churn_change "$id" learner member add "$id" --learner
          else churn_change "$id" voter member add "$id"; fi ;;
        promote) id=$(pick_word "$learners" "$r"); churn_change "$id" voter member promote "$id" ;;
        remove-learner) id=$(pick_word "$learners" "$r"); churn_change "$id" absent member remove "$id" ;;
        remove-voter) id=$(pick_word "$voters" "$r"); churn_change "$id" absent member remove "$id" ;;
        transfer)
          ids=$(nem_up "$voters"); [ -n "$ids" ] || { nem_skip "$ev" "$kind" "no voter up"; return; }
          id=$(pick_word "$ids" "$r"); churn_change "$id" leads transfer-leader "$id" ;;
      esac ;;
  esac
  nem_started=$((nem_started + 1)); nem_count[$kind]=$(( ${nem_count[$kind]:-0} + 1 ))
}

nem_end() {  # EVENT KIND
  local ev=$1 kind=$2 id
  case "$kind" in
    kill-*|pause-*)
      local order=""
      for id in "${!proc_owner[@]}"; do [ "${proc_owner[$id]}" = "$ev" ] && order="$order $id"; done
      for id in $order; do
        if [ "${proc_state[$id]}" = paused ]; then signal_node "$id" CONT
        else start_node "$id"; fi
        unset "proc_owner[$id]" "proc_state[$id]"
      done
      for id in $order; do reapply_faults "$id"; done ;;
    partition-bridge|one-way)
      [ "$block_owner" = "$ev" ] || return 0
      clear_blocks; event - "blocked (event $ev)"; log "event $ev: blocks over" ;;
    partition-*)
      [ "$part_owner" = "$ev" ] || return 0
      fctl fault partition none; part_owner=""; part_arg=""
      event - "partition (event $ev)"; log "event $ev: partition over" ;;
    flaky)
      [ "$flaky_owner" = "$ev" ] || return 0
      fctl fault drop --rate 0; fctl fault delay --ms 0; fctl fault duplicate --rate 0
      flaky_owner=""; event - "flaky (event $ev)"; log "event $ev: network fine again" ;;
    disk-*)
      for id in "${!disk_owner[@]}"; do
        [ "${disk_owner[$id]}" = "$ev" ] || continue
        unset "disk_owner[$id]" "disk_args[$id]"
        if [ "$kind" = disk-eio ] && [ "${proc_owner[$id]:-}" = "$ev" ]; then
          unset "proc_owner[$id]" "proc_state[$id]"
          if running "$id"; then fctl --node "$id" fault disk ok
          else log "event $ev: n$id stopped on its fsync error"; start_node "$id"; reapply_faults "$id"; fi
        else
          fctl --node "$id" fault disk ok
        fi
        event - "n$id disk $( [ "$kind" = disk-stall ] && echo stall || echo "${kind#disk-}")"
        log "event $ev: n$id disk fine again"
      done ;;
  esac
  return 0
}

# The drill: the schedule of $DRILL_SEED over $S seconds, each line at its
# time (a slow step delays those after it; the order stays).
drill_random() {
  local seed=${DRILL_SEED:?}
  proc_owner=(); proc_state=(); disk_owner=(); disk_args=(); nem_count=()
  part_owner=""; block_owner=""; block_cmds=(); flaky_owner=""; nem_started=0; nem_skipped=0; nem_last_ml=""
  churn_ok=0; churn_refused=0; churn_unknown=0; churn_kill_ms=""; churn_kill_leader=""; churn_down=""; churn_resent=0
  gen_schedule "$seed" "$S" >"$work/schedule.txt"
  note "seed $seed (drill.sh random --seed $seed draws the same schedule again)"
  local t0; t0=$(date +%s%N)
  local ms act ev kind dur r p
  while read -r ms act ev kind dur r p; do
    local now=$(( ($(date +%s%N) - t0) / 1000000 ))
    [ "$ms" -gt "$now" ] && sleep "$(printf '%d.%03d' $(( (ms - now) / 1000 )) $(( (ms - now) % 1000 )))"
    log "t=${ms}ms $act $ev $kind"
    if [ "$act" = start ]; then nem_start "$ev" "$kind" "$dur" "$r" "$p"; else nem_end "$ev" "$kind"; fi
  done <"$work/schedule.txt"
  local k summary=""
  for k in "${!nem_count[@]}"; do summary="$summary $k ${nem_count[$k]},"; done
  note "$(grep -c ' start ' "$work/schedule.txt") faults drawn, $nem_started made, $nem_skipped skipped:${summary%,}; changes $churn_ok done, $churn_refused refused, $churn_unknown unknown"
}
