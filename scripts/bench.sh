#!/usr/bin/env bash
# raftkit's benchmark matrix: a fresh local 3-node cluster (release build,
# fsync on) for every cell, `raft-ctl bench` at the leader, one table.
#
#   scripts/bench.sh [--clients "1 8 64 256"] [--conns K] [--ops "put get"] [--duration S]
#                    [--warmup S] [--reps N] [--out FILE.jsonl]
#                    [--etcd ETCD.jsonl [--etcd-harness bench-etcd-matrix.sh]] [--tls]
#
# --tls           every connection is mutual TLS (certificates made by
#                 raft-ctl certs init for each cell's cluster)
# --conns K       the clients share K connections (raft-ctl bench --conns,
#                 kvbench --conns); default 0: one connection per client
# --out           also write raft-ctl bench's JSON lines (one per cell and rep)
# --etcd          JSON lines from ../shared/bench/bench-etcd-matrix.sh (kvbench)
#                 made in the same sitting: adds etcd's figures and the ratios
# --etcd-harness  run that harness for each cell and rep just before raftkit's
#                 run of it, appending to the --etcd file: the two alternate,
#                 so a machine that speeds up or slows down during the sitting
#                 moves both alike. Both run at this script's niceness.
# With --reps N > 1 each cell shows the run with the median ops/s.
# Also measures the floor (fdatasync p50 + loopback round trip), at the start
# and before every c=1 put run, and checks the c=1 put latency against 1.5 x
# the floor (medians over those measurements).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
clients="1 8 64 256"; conns=0; tls=0; ops="put get"; duration=20; warmup=5; reps=1; out=""; etcd=""; harness=""
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients="$2"; shift 2 ;;
    --conns) conns="$2"; shift 2 ;;
    --ops) ops="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --etcd) etcd="$2"; shift 2 ;;
    --etcd-harness) harness="$2"; shift 2 ;;
    --tls) tls=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) sed -n '2,25p' "$0" >&2; exit 2 ;;
  esac
done
if [ -n "$harness" ] && [ -z "$etcd" ]; then
  echo "--etcd-harness needs --etcd FILE for etcd's results" >&2; exit 2
fi
log() { :; }
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
build_bins release
trap 'stop_nodes' EXIT INT TERM

results="$(mktemp "${TMPDIR:-/tmp}/raftkit-bench.XXXXXX")"
floors="$(mktemp "${TMPDIR:-/tmp}/raftkit-floor.XXXXXX")"
measure_floor() {
  local f; f=$("$bin/raft-ctl" floor --dir "$bin" --seconds 3 --json)
  echo "$f" >>"$floors"; echo "floor: $f" >&2
}
measure_floor

for op in $ops; do
  for c in $clients; do
    for rep in $(seq "$reps"); do
      if [ -n "$harness" ]; then
        SIZES=3 TARGETS=leader OPS="$op" CLIENTS="$c" CONNS="$conns" DURATION="$duration" \
          WARMUP="$warmup" REPS=1 NICE=0 "$harness" "$etcd" >/dev/null
      fi
      if [ "$op" = put ] && [ "$c" = 1 ]; then measure_floor; fi
      setup "bench-$op-c$c"
      # shellcheck disable=SC2119 # no node to skip
      wait_leader >/dev/null || { echo "no leader" >&2; exit 1; }
      # Reads need keys to read: write them first.
      if [ "$op" = get ]; then
        "$bin/raft-ctl" --config "$cfg" bench --op put --clients 16 --keys 1000 --total 2000 \
          --warmup 0 --quiet >/dev/null
      fi
      line=$("$bin/raft-ctl" --config "$cfg" --json bench --op "$op" --clients "$c" --conns "$conns" --keys 1000 \
        --value-size 100 --warmup "$warmup" --duration "$duration" --target leader --quiet)
      echo "$line" >>"$results"
      [ -n "$out" ] && echo "$line" >>"$out"
      echo "  $op c=$c rep $rep: $line" >&2
      stop_nodes
      rm -rf "$work"
    done
  done
done

if [ "$tls" = 1 ]; then echo "connections: mutual TLS (--tls)"; else echo "connections: plain TCP"; fi
python3 - "$results" "$floors" "$etcd" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
floors = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
etcd = {}
if sys.argv[3]:
    for l in open(sys.argv[3]):
        if not l.strip():
            continue
        d = json.loads(l)
        lab = d.get("label", "")
        op = d.get("op") or next((p.split("=")[1] for p in lab.split() if p.startswith("op=")), None)
        c = d.get("clients") or next((int(p.split("=")[1]) for p in lab.split() if p.startswith("c=")), None)
        k = next((int(p.split("=")[1]) for p in lab.split() if p.startswith("conns=")), 0)
        etcd.setdefault((op, int(c), min(k, int(c)) if k else int(c)), []).append(d)
def median(ds):
    ds = sorted(ds, key=lambda d: d["ops_per_s"])
    return ds[len(ds) // 2]
cells = {}
for r in rows:
    cells.setdefault((r["op"], r["clients"], r.get("conns", r["clients"])), []).append(r)
hdr = "| op | clients | conns | raftkit ops/s | p50 ms | p99 ms | node CPU µs/op |"
sep = "|---|---:|---:|---:|---:|---:|---:|"
if etcd:
    hdr += " etcd ops/s | etcd p99 ms | etcd CPU µs/op | ops/s ratio | p99 ratio |"
    sep += "---:|---:|---:|---:|---:|"
print(hdr); print(sep)
for (op, c, k), ds in cells.items():
    d = median(ds)
    cpu = d.get("node_cpu_us_per_op")
    line = f"| {op} | {c} | {k} | {d['ops_per_s']:,.0f} | {d['lat']['p50']/1000:.2f} | {d['lat']['p99']/1000:.2f} | {cpu if cpu is not None else '-'} |"
    if etcd:
        e = etcd.get((op, c, k))
        if e:
            e = median(e)
            w = e.get("cpu", {}).get("watched", {})
            wsum = sum(w.values()) if isinstance(w, dict) else (w or 0)
            ecpu = (wsum / 100.0) * 1e6 / e["ops_per_s"] if e["ops_per_s"] else 0
            line += f" {e['ops_per_s']:,.0f} | {e['lat']['p99']/1000:.2f} | {ecpu:,.0f} | {d['ops_per_s']/e['ops_per_s']:.1f}x | {d['lat']['p99']/max(e['lat']['p99'],1):.2f} |"
        else:
            line += " - | - | - | - | - |"
    print(line)
def mid(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
f50 = mid([f["fdatasync_p50_us"] for f in floors])
rtt = mid([f["rtt_p50_us"] for f in floors])
target = 1.5 * (f50 + rtt)
c1 = cells.get(("put", 1, 1))
print()
print(f"floor (median of {len(floors)}): fdatasync p50 {f50:.0f} µs, loopback round trip p50 {rtt:.0f} µs; 1.5 x floor = {target:.0f} µs")
if c1:
    p50 = median(c1)["lat"]["p50"]
    print(f"c=1 put p50 {p50} µs: {'within' if p50 <= target else 'ABOVE'} 1.5 x floor")
EOF
rm -f "$results" "$floors"
