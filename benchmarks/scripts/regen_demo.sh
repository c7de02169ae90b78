#!/usr/bin/env bash
# Reruns the demo (`engine demo`, output in runs/demo/) and ships its results, then regenerates docs/results:
#   benchmarks/results/demo-<date>.md             the tables as report.md writes them, plus one paragraph on the run
#                                                 (command, commit, machine, wall time, the CPU time other processes used)
#   benchmarks/results/demo-<date>.json           report.json (per-stage figures; the dashboard reads it)
#   benchmarks/results/demo-<date>-metrics.jsonl.gz  every step's metrics: the dashboard's loss curves on a fresh clone
#   benchmarks/results/demo-<date>-loss_hybrid.png
#   docs/results/*.md                             `engine dashboard --docs docs/results`
# Then commit the results and docs together; the paragraph names the commit of the code that produced them.
#
# Usage: benchmarks/scripts/regen_demo.sh [--allow-dirty] [--note TEXT] [-- DEMO_ARGS...]
#   --allow-dirty  run with uncommitted changes under src/, configs/, data/ (the paragraph then says so)
#   --note TEXT    a sentence added to the paragraph, e.g. "the machine was shared with 3 other builds"
#   DEMO_ARGS      extra `engine demo` arguments (e.g. --scale 0.1 for a dry run of this script; the paragraph says so)
# Takes ~10 minutes on 2 cores. Needs only bash, git, the .NET SDK and coreutils.
set -euo pipefail
cd "$(dirname "$0")/../.."

allow_dirty=0
note=""
demo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --allow-dirty) allow_dirty=1 ;;
    --note) note="$2"; shift ;;
    --) shift; demo_args=("$@"); break ;;
    *) echo "regen_demo.sh: unknown option '$1' (--allow-dirty, --note TEXT, -- DEMO_ARGS)" >&2; exit 2 ;;
  esac
  shift
done

dirty=$(git status --porcelain -- src configs data Directory.Build.props Directory.Packages.props global.json)
if [ -n "$dirty" ] && [ "$allow_dirty" = 0 ]; then
  echo "regen_demo.sh: uncommitted changes to code, configs or data (the results would name the wrong commit):" >&2
  echo "$dirty" >&2
  echo "commit first, or pass --allow-dirty" >&2
  exit 1
fi
commit=$(git rev-parse --short HEAD)
[ -n "$dirty" ] && commit="$commit + uncommitted changes"

# build outside the timed run, as a user's second `dotnet run` would find it built
dotnet build -c Release src/Engine.Cli -v quiet -nologo >/dev/null

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# CPU seconds every process on the machine spent (/proc/stat, USER_HZ = 100) and those of this script's children (bash's
# `times`): what others used during the run is the difference; the load averages alone cannot tell (the 5- and 15-minute
# figures remember work that ended before the demo started)
busy() { awk '/^cpu / { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / 100 }' /proc/stat 2>/dev/null || echo 0; }
# (`times` runs in this shell, not in a $(...) subshell, which would have no children of its own)
tms=$(mktemp)
children() { tail -1 "$tms" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, t, "m"); s += t[1] * 60 + t[2] } printf "%.2f\n", s }'; }
load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
times >"$tms"; busy_before=$(busy); mine_before=$(children); start=$(date +%s.%N)
dotnet run -c Release --no-build --project src/Engine.Cli -- demo "${demo_args[@]}" | tee "$log"
times >"$tms"; busy_after=$(busy); mine_after=$(children); end=$(date +%s.%N)
rm -f "$tms"
load_after=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")

out=runs/demo
wall=$(sed -n 's/^wall time: \([0-9:]*\).*/\1/p' "$log" | tail -1)
[ -f "$out/report.md" ] && [ -n "$wall" ] || { echo "regen_demo.sh: the demo did not finish (no $out/report.md or wall time)" >&2; exit 1; }
measured=$(sed -n 's/^Measured on \(.*\)\.$/\1/p' "$out/report.md" | head -1)   # "CPU (N cores), date, commit X"
date=$(date -u +%F)
dst=benchmarks/results/demo-$date
cp "$out/report.md" "$dst.md"
cp "$out/report.json" "$dst.json"
gzip -9 -n -c "$out/metrics.jsonl" >"$dst-metrics.jsonl.gz"
[ -f "$out/loss_hybrid.png" ] && cp "$out/loss_hybrid.png" "$dst-loss_hybrid.png"

# other processes' share of the machine's CPU time during the run: above 10 %, the timings are indicative only
verdict=$(awk -v b0="$busy_before" -v b1="$busy_after" -v m0="$mine_before" -v m1="$mine_after" -v t0="$start" -v t1="$end" -v c="$(nproc)" 'BEGIN {
  other = (b1 - b0) - (m1 - m0); if (other < 0) other = 0; share = other / ((t1 - t0) * c)
  verdict = (share > 0.10) ? "the machine was shared with other work, so timings are indicative" : "no other significant load"
  printf "%s (other processes used %.0f%% of the %d cores during the run)", verdict, 100 * share, c }')
cmd="engine demo"
[ ${#demo_args[@]} -gt 0 ] && cmd="$cmd ${demo_args[*]}"
{
  echo
  echo "Run: \`$cmd\` at commit $commit; $measured; wall time $wall including data loading and tokenizer training, build"
  echo "excluded; load average (1, 5, 15 min) $load_before before and $load_after after on $(nproc) cores: $verdict."
  [ -n "$note" ] && echo "$note"
} >>"$dst.md"

dotnet run -c Release --no-build --project src/Engine.Cli -- dashboard --docs docs/results
echo "regen_demo.sh: wrote $dst.md, .json, -metrics.jsonl.gz and docs/results (commit $commit, wall $wall)"
