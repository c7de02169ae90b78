#!/usr/bin/env bash
# Regenerates the demo's results and the README's demo table from one run of the README's own command
# (`dotnet run -c Release --project src/Engine.Cli -- demo`, output in runs/demo/):
#   benchmarks/results/demo-<date>.md     the table as report.md writes it (machine, date, commit in its first line)
#   benchmarks/results/demo-<date>.json   report.json (per-stage figures; the dashboard reads it)
#   benchmarks/results/demo-<date>-loss_hybrid.png
#   README.md                             the block between the demo-table markers: command, commit, machine, load, wall time, table
# Then commit the results and README together; the README names the commit of the code that produced them.
#
# Usage: benchmarks/scripts/regen_readme.sh [--allow-dirty] [--note TEXT] [-- DEMO_ARGS...]
#   --allow-dirty  run with uncommitted changes under src/, configs/, data/ (the table is then marked as such)
#   --note TEXT    a sentence added under the table, e.g. "the machine was shared with 3 other builds"
#   DEMO_ARGS      extra `engine demo` arguments (e.g. --scale 0.1 for a dry run of this script; the README says so)
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
    *) echo "regen_readme.sh: unknown option '$1' (--allow-dirty, --note TEXT, -- DEMO_ARGS)" >&2; exit 2 ;;
  esac
  shift
done

dirty=$(git status --porcelain -- src configs data Directory.Build.props Directory.Packages.props global.json)
if [ -n "$dirty" ] && [ "$allow_dirty" = 0 ]; then
  echo "regen_readme.sh: uncommitted changes to code, configs or data (the README would name the wrong commit):" >&2
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
[ -f "$out/report.md" ] && [ -n "$wall" ] || { echo "regen_readme.sh: the demo did not finish (no $out/report.md or wall time)" >&2; exit 1; }
measured=$(sed -n 's/^Measured on \(.*\)\.$/\1/p' "$out/report.md" | head -1)   # "CPU (N cores), date, commit X"
date=$(date -u +%F)
dst=benchmarks/results/demo-$date
cp "$out/report.md" "$dst.md"
cp "$out/report.json" "$dst.json"
[ -f "$out/loss_hybrid.png" ] && cp "$out/loss_hybrid.png" "$dst-loss_hybrid.png"

# other processes' share of the machine's CPU time during the run: above 10 %, the timings are indicative only
verdict=$(awk -v b0="$busy_before" -v b1="$busy_after" -v m0="$mine_before" -v m1="$mine_after" -v t0="$start" -v t1="$end" -v c="$(nproc)" 'BEGIN {
  other = (b1 - b0) - (m1 - m0); if (other < 0) other = 0; share = other / ((t1 - t0) * c)
  verdict = (share > 0.10) ? "the machine was shared with other work, so timings are indicative" : "no other significant load"
  printf "%s (other processes used %.0f%% of the %d cores during the run)", verdict, 100 * share, c }')
cmd="dotnet run -c Release --project src/Engine.Cli -- demo"
[ ${#demo_args[@]} -gt 0 ] && cmd="$cmd ${demo_args[*]}"
block=$(mktemp)
{
  echo "<!-- demo-table:begin (written by benchmarks/scripts/regen_readme.sh: edit the script, not this block) -->"
  echo "Output of \`$cmd\` at commit $commit (the code that ran; results and README are committed after it):"
  echo "$measured; wall time $wall including data loading and tokenizer training, build excluded; load average"
  echo "(1, 5, 15 min) $load_before before and $load_after after the run on $(nproc) cores: $verdict."
  echo "\`benchmarks/results/demo-$date.md\`, \`.json\`, \`-loss_hybrid.png\`."
  [ -n "$note" ] && echo "$note"
  echo
  # the report's tables, a blank line between two (adjacent rows would merge them in Markdown)
  awk '/^\|/ { if (gap && seen) print ""; print; seen = 1; gap = 0; next } { gap = 1 }' "$out/report.md"
  echo "<!-- demo-table:end -->"
} >"$block"

grep -q '^<!-- demo-table:begin' README.md && grep -q '^<!-- demo-table:end -->' README.md \
  || { echo "regen_readme.sh: README.md has no demo-table markers" >&2; exit 1; }
awk -v block="$block" '
  /^<!-- demo-table:begin/ { while ((getline line < block) > 0) print line; skip = 1; next }
  /^<!-- demo-table:end -->/ { skip = 0; next }
  !skip { print }' README.md >README.md.tmp && mv README.md.tmp README.md
rm -f "$block"
echo "regen_readme.sh: wrote $dst.md, $dst.json and README.md's demo table (commit $commit, wall $wall)"
