#!/usr/bin/env bash
# The mutation suite: plants each hand-written mistake of scripts/mutants.txt
# in a copy of the working tree, one at a time, and requires raft-sim to
# catch it (a violation or a panic) within the seed budget.
#
#   scripts/mutants.sh [--only NAME] [--seeds N] [--list] [--check]
#
# --only NAME   run just this mutant (repeatable)
# --seeds N     seeds per cluster size (default 1000)
# --list        print the mutants' names and mistakes, and exit
# --check       only check that every mutant's snippet occurs exactly once
#
# The working tree (tracked and untracked files that are not ignored) is
# copied once to a temporary directory; raft-sim is built there in release,
# into $MUTANTS_TARGET_DIR (default target/mutants, kept between runs so that
# only our crate is rebuilt). The unmutated build must pass the same seeds
# first. Then, for each mutant: apply it, build, run
#   raft-sim --seeds N --nodes 3 --stop
# and, if that finds nothing,
#   raft-sim --seeds N --nodes 5 --first-seed 10001 --stop
# and, if that finds nothing, 3 nodes with the membership fixed (no spare
# nodes, no operator: the classic fault mix; nodes "3c" in the table)
#   raft-sim --seeds N --nodes 3 --spares 0 --membership-change 0 --stop
# and restore the file. Prints a table and "N of M mutants caught"; exits
# non-zero if any mutant was missed (or did not build, or did not apply).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mutants_file="$root/scripts/mutants.txt"
usage() { echo "usage: $0 [--only NAME]... [--seeds N] [--list] [--check]" >&2; exit 2; }
seeds=1000; only=(); list=0; check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only+=("${2:?--only takes a mutant name}"); shift 2 ;;
    --seeds) seeds="${2:?--seeds takes a number}"; shift 2 ;;
    --list) list=1; shift ;;
    --check) check=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done
case "$seeds" in ''|*[!0-9]*|0) echo "--seeds takes a whole number above 0" >&2; exit 2 ;; esac

# ---- parsing ---------------------------------------------------------------
# Parallel arrays, one element per mutant; snippets keep their newlines.
names=(); files=(); mistakes=(); finds=(); replaces=()

# Drops the newlines at the end of $1 (blank lines closing a block).
trim_end() {
  local s="$1"
  while [ "${s%$'\n'}" != "$s" ]; do s="${s%$'\n'}"; done
  printf '%s' "$s"
}

flush_block() {
  [ -n "$cur_name" ] || return 0
  if [ -z "$cur_file" ] || [ -z "$cur_mistake" ] || [ "$saw_find" != 1 ] || [ "$saw_replace" != 1 ]; then
    echo "error: $mutants_file: mutant '$cur_name' needs file:, mistake:, --- find and --- replace" >&2
    exit 2
  fi
  names+=("$cur_name"); files+=("$cur_file"); mistakes+=("$cur_mistake")
  finds+=("$(trim_end "$cur_find")"); replaces+=("$(trim_end "$cur_replace")")
}

parse_mutants() {
  local line section=header
  cur_name=""; cur_file=""; cur_mistake=""; cur_find=""; cur_replace=""; saw_find=0; saw_replace=0
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "=== "*)
        flush_block
        cur_name="${line#=== }"; cur_file=""; cur_mistake=""; cur_find=""; cur_replace=""
        saw_find=0; saw_replace=0; section=meta
        continue ;;
      "--- find") [ "$section" = header ] || { section="find"; saw_find=1; continue; } ;;
      "--- replace") [ "$section" = header ] || { section="replace"; saw_replace=1; continue; } ;;
    esac
    case "$section" in
      header) ;;
      meta)
        case "$line" in
          "file: "*) cur_file="${line#file: }" ;;
          "mistake: "*) cur_mistake="${line#mistake: }" ;;
          "") ;;
          *) echo "error: $mutants_file: unexpected line in '$cur_name': $line" >&2; exit 2 ;;
        esac ;;
      find) cur_find+="$line"$'\n' ;;
      replace) cur_replace+="$line"$'\n' ;;
    esac
  done < "$mutants_file"
  flush_block
}

parse_mutants
count="${#names[@]}"
[ "$count" -gt 0 ] || { echo "error: no mutants in $mutants_file" >&2; exit 2; }
for ((k = 0; k < count; k++)); do
  for ((j = k + 1; j < count; j++)); do
    [ "${names[k]}" != "${names[j]}" ] || { echo "error: mutant '${names[k]}' is listed twice" >&2; exit 2; }
  done
done

if [ "$list" = 1 ]; then
  for ((k = 0; k < count; k++)); do printf '%-32s %-24s %s\n' "${names[k]}" "${files[k]}" "${mistakes[k]}"; done
  exit 0
fi

selected=()
if [ "${#only[@]}" -eq 0 ]; then
  for ((k = 0; k < count; k++)); do selected+=("$k"); done
else
  for want in "${only[@]}"; do
    found=""
    for ((k = 0; k < count; k++)); do [ "${names[k]}" != "$want" ] || found="$k"; done
    [ -n "$found" ] || { echo "error: no mutant named '$want' (see --list)" >&2; exit 2; }
    selected+=("$found")
  done
fi

# ---- applying --------------------------------------------------------------

# Occurrences of $2 in the text $1 (non-overlapping).
occurrences() {
  local text="$1" needle="$2" without
  without="${text//"$needle"/}"
  echo $(( (${#text} - ${#without}) / ${#needle} ))
}

# Writes mutant $1 into the tree at $2; fails loudly unless its snippet
# occurs exactly once in its file.
apply_mutant() {
  local k="$1" tree="$2" path content n
  path="$tree/${files[k]}"
  [ -f "$path" ] || { echo "error: mutant '${names[k]}': no file ${files[k]}" >&2; return 1; }
  IFS= read -r -d '' content < "$path" || true
  n="$(occurrences "$content" "${finds[k]}")"
  if [ "$n" != 1 ]; then
    echo "error: mutant '${names[k]}': its snippet occurs $n times in ${files[k]}, not once" >&2
    return 1
  fi
  printf '%s' "${content/"${finds[k]}"/"${replaces[k]}"}" > "$path"
}

if [ "$check" = 1 ]; then
  bad=0
  for k in "${selected[@]}"; do
    content=""
    IFS= read -r -d '' content < "$root/${files[k]}" || true
    n="$(occurrences "$content" "${finds[k]}")"
    if [ "$n" = 1 ]; then echo "ok       ${names[k]}"; else echo "BAD      ${names[k]}: snippet occurs $n times in ${files[k]}"; bad=1; fi
  done
  exit "$bad"
fi

# ---- the run ---------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/raftkit-mutants.XXXXXX")"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

tree="$work/tree"
mkdir -p "$tree"
(cd "$root" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
  [ -e "$f" ] || continue # deleted in the working tree
  mkdir -p "$tree/$(dirname "$f")"
  cp "$f" "$tree/$f" # new mtimes: the first build sees every change
done)
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$root/target/mutants}"
# Each mutant rebuilds only our crate: incremental, without debug info.
export CARGO_INCREMENTAL=1 CARGO_PROFILE_RELEASE_DEBUG=0
sim="$CARGO_TARGET_DIR/release/raft-sim"
log="$work/build.log"

build() {
  (cd "$tree" && cargo build --release --quiet --bin raft-sim) > "$log" 2>&1
}

# Runs raft-sim with the given arguments; sets run_out to its output and
# returns its exit code.
run_sim() {
  local rc=0
  run_out="$("$sim" "$@" --stop 2>&1)" || rc=$?
  return "$rc"
}

# The first violation in run_out: "seed check".
first_violation() {
  local line
  line="$(grep -m1 '^seed [0-9]*: VIOLATION: ' <<< "$run_out" || true)"
  [ -n "$line" ] || { echo "- exit-without-violation-line"; return; }
  local seed="${line#seed }"; seed="${seed%%:*}"
  local check="${line#*VIOLATION: }"
  echo "$seed $check"
}

started=$SECONDS
echo "building the unmutated tree in $CARGO_TARGET_DIR ..."
build || { cat "$log" >&2; echo "error: the unmutated tree does not build" >&2; exit 2; }
# The passes: 3 nodes, 5 nodes, then 3 nodes with the membership fixed
# (no spare nodes, no operator): the classic fault mix, where a deposed
# leader's stale read is likelier to meet a client.
passes=("3|--nodes 3 --first-seed 1" "5|--nodes 5 --first-seed 10001" "3c|--nodes 3 --first-seed 1 --spares 0 --membership-change 0")
for pass in "${passes[@]}"; do
  nodes="${pass%%|*}"; read -r -a pass_args <<< "${pass#*|}"
  if ! run_sim --seeds "$seeds" "${pass_args[@]}"; then
    echo "$run_out" >&2
    echo "error: the unmutated tree fails on $nodes nodes; fix it before running mutants" >&2
    exit 2
  fi
  echo "unmutated: $(tail -n1 <<< "$run_out")"
done

results=(); caught=0; total=0
for k in "${selected[@]}"; do
  total=$((total + 1))
  name="${names[k]}"; file="${files[k]}"
  cp -p "$tree/$file" "$work/original"
  t0=$SECONDS
  if ! apply_mutant "$k" "$tree"; then
    results+=("$name|APPLY-FAILED|-|-|snippet not found exactly once in $file")
    cp "$work/original" "$tree/$file"
    continue
  fi
  if ! build; then
    cp "$work/original" "$tree/$file"
    sed -n '1,30p' "$log" >&2
    results+=("$name|BUILD-FAILED|-|-|the mutant does not compile")
    continue
  fi
  verdict="missed"; nodes_hit="-"; seed="-"; check="no violation in $seeds seeds on 3 and 5 nodes, nor on 3 with a fixed membership"
  for pass in "${passes[@]}"; do
    nodes="${pass%%|*}"; read -r -a pass_args <<< "${pass#*|}"
    if ! run_sim --seeds "$seeds" "${pass_args[@]}"; then
      read -r seed check <<< "$(first_violation)"
      verdict="caught"; nodes_hit="$nodes"
      break
    fi
  done
  cp "$work/original" "$tree/$file"
  [ "$verdict" != caught ] || caught=$((caught + 1))
  # The table shows the violation's first words; the replay line has all.
  check="${check//|//}"; check="${check:0:110}"
  results+=("$name|$verdict|$nodes_hit|$seed|$check")
  printf '%-30s %-7s nodes=%-2s seed=%-6s (%ss) %s\n' "$name" "$verdict" "$nodes_hit" "$seed" "$((SECONDS - t0))" "$check"
done

echo
printf '%-30s %-12s %-5s %-6s %s\n' mutant result nodes seed check
printf '%-30s %-12s %-5s %-6s %s\n' ------ ------ ----- ---- -----
for r in "${results[@]}"; do
  IFS='|' read -r name verdict nodes_hit seed check <<< "$r"
  printf '%-30s %-12s %-5s %-6s %s\n' "$name" "$verdict" "$nodes_hit" "$seed" "$check"
done
echo
echo "$caught of $total mutants caught ($seeds seeds per cluster size, $((SECONDS - started))s)"
[ "$caught" = "$total" ]
