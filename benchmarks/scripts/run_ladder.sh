#!/usr/bin/env bash
# Runs the shipped CPU ladder (configs/ladder_finance.toml: 5 bases, 36 grid points, the held-out xl point, then the
# fits) and copies its results where the dashboard reads them:
#   benchmarks/results/ladder_finance/ladder.json        engine.ladder/1: points, fits, validation, target, ratio, curves
#   benchmarks/results/ladder_finance/report.md          the tables (machine, date, commit in its first lines)
#   benchmarks/results/ladder_finance/loss_vs_compute.png, loss_vs_ratio.png
#   benchmarks/results/ladder_finance/points/*.json      every point's result (engine.ladder.point/1)
# Resumable: rerunning continues from the finished points in runs/ladder_finance/. Wall time and the machine's other
# load are printed; run it on a quiet machine (target: <= ~30 minutes on 2 cores).
# Usage: benchmarks/scripts/run_ladder.sh [-- LADDER_ARGS...]   (e.g. -- --set fit.bootstrap=50)
set -euo pipefail
cd "$(dirname "$0")/../.."
args=()
if [ "${1:-}" = "--" ]; then shift; args=("$@"); fi
out=benchmarks/results/ladder_finance
start=$(date +%s)
read -r _ u1 n1 s1 i1 _ < /proc/stat
dotnet run -c Release --project src/Engine.Cli -- ladder -c configs/ladder_finance.toml "${args[@]}"
read -r _ u2 n2 s2 i2 _ < /proc/stat
wall=$(( $(date +%s) - start ))
busy=$(( (u2 + n2 + s2) - (u1 + n1 + s1) )); total=$(( busy + i2 - i1 ))
echo "wall ${wall} s; the whole machine's CPU busy $(( total > 0 ? 100 * busy / total : 0 )) % over the run (this run's own share included)"
mkdir -p "$out/points"
cp runs/ladder_finance/ladder.json runs/ladder_finance/report.md runs/ladder_finance/loss_vs_compute.png runs/ladder_finance/loss_vs_ratio.png "$out/"
for f in runs/ladder_finance/points/*/result.json; do cp "$f" "$out/points/$(basename "$(dirname "$f")").json"; done
echo "results in $out; commit them with the code that produced them"
