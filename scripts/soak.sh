#!/usr/bin/env bash
# Soak: the random drill (scripts/drill.sh random) for many seeds in a row,
# then a summary table.
#
#   scripts/soak.sh [--runs N] [--seconds S] [--first-seed N] [--release] [--tls] [--out DIR]
#
# --runs N        how many seeds (default 100)
# --seconds S     seconds of faults per run (default 60)
# --first-seed N  seeds N, N+1, ... (default: drawn from the clock, printed)
# --release       release binaries
# --tls           every run with mutual TLS (drill.sh --tls)
# --out DIR       where the summary, each run's verdict and the directories
#                 of failing runs go (default: a new temp dir, printed)
#
# A failing run's directory (history, schedule, node logs, drill log) is
# kept and named in the table; passing runs keep their picture only. Exits
# 0 only if every run passed: linearizable, nothing acknowledged lost
# (settle), every node agreeing at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { echo "usage: $0 [--runs N] [--seconds S] [--first-seed N] [--release] [--tls] [--out DIR]" >&2; exit 2; }
runs=100; seconds=60; first=""; release=(); tls=(); out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="${2:?}"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --first-seed) first="${2:?}"; shift 2 ;;
    --release) release=(--release); shift ;;
    --tls) tls=(--tls); shift ;;
    --out) out="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) usage ;;
  esac
done
for v in "$runs" "$seconds" "${first:-0}"; do
  case "$v" in ''|*[!0-9]*) echo "--runs, --seconds and --first-seed take whole numbers" >&2; exit 2 ;; esac
done
[ -n "$first" ] || first=$(( $(date +%s) % 100000 * 10 ))
[ -n "$out" ] || out="$(mktemp -d "${TMPDIR:-/tmp}/raftkit-soak.XXXXXX")"
mkdir -p "$out"
summary="$out/summary.txt"
echo "soak: $runs runs of $seconds s, seeds $first..$((first + runs - 1)), in $out"

# Stopped (TERM, INT): the running drill is stopped too, and cleans up its
# nodes (its own trap).
drill_pid=""
on_stop() { [ -n "$drill_pid" ] && kill -s TERM "$drill_pid" 2>/dev/null; wait 2>/dev/null; exit 130; }
trap on_stop INT TERM

pass=0; fail=0; t_start=$(date +%s)
printf '%-8s %-5s %9s %8s %8s %-12s %9s  %s\n' seed verdict ok failed unknown leaders gap_ms "check / kept" >"$summary"
for i in $(seq 0 $((runs - 1))); do
  seed=$((first + i))
  log="$out/run-$seed.txt"
  rc=0
  # In the background, so that a TERM reaches on_stop at once.
  TMPDIR="$out" "$root/scripts/drill.sh" random --seed "$seed" --seconds "$seconds" "${release[@]}" "${tls[@]}" >"$log" 2>&1 &
  drill_pid=$!
  wait "$drill_pid" || rc=$?
  drill_pid=""
  line=$(grep -m1 '^random --seed' "$log" || true)
  if [ "$rc" = 0 ] && [ -n "$line" ]; then pass=$((pass + 1)); verdict=PASS; else fail=$((fail + 1)); verdict=FAIL; fi
  # The verdict line's numbers (see drill.sh): ops ok N failed N unknown N leaders L ... write G ms check: C
  ok=$(sed -n 's/.* ops ok \([0-9]*\).*/\1/p' <<<"$line"); failed=$(sed -n 's/.* failed \([0-9]*\).*/\1/p' <<<"$line")
  unknown=$(sed -n 's/.* unknown \([0-9]*\).*/\1/p' <<<"$line"); leaders=$(sed -n 's/.* leaders \([^ ]*\).*/\1/p' <<<"$line")
  gap=$(sed -n 's/.* write \([0-9]*\) ms.*/\1/p' <<<"$line"); check=$(sed -n 's/.* check: \(.*\)  picture:.*/\1/p' <<<"$line")
  kept=$(sed -n 's/.*kept: \([^ ]*\).*/\1/p' "$log" | head -1)
  [ "$verdict" = FAIL ] && [ -z "$check" ] && check="$(tail -1 "$log")"
  printf '%-8s %-5s %9s %8s %8s %-12s %9s  %s\n' "$seed" "$verdict" "${ok:-?}" "${failed:-?}" "${unknown:-?}" \
    "${leaders:-?}" "${gap:-?}" "${check:-?}${kept:+ (kept: $kept)}" | tee -a "$summary"
done
elapsed=$(( $(date +%s) - t_start ))
{
  echo
  echo "$pass/$runs runs passed (linearizable, nothing lost), $fail failed, in $((elapsed / 60)) min $((elapsed % 60)) s; seeds $first..$((first + runs - 1)), $seconds s of faults each"
} | tee -a "$summary"
echo "summary: $summary"
[ "$fail" = 0 ]
