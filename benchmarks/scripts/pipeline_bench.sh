#!/usr/bin/env bash
# Pipeline bubble on CPU ranks (Open MPI through `engine launch`): P stages × M micro-batches of the byte-level
# Shakespeare model (8 layers), 1F1B, one core per rank (DOTNET_PROCESSOR_COUNT=1). Every stage times what it waits
# for a neighbour inside each step after the first; the trainer prints the world's average idle share beside
# (P−1)/(M+P−1). Writes benchmarks/results/pipeline-<date>.json. With fewer cores than P ranks the stages share cores
# (stated in the file): a stage that computes then runs slower, which hides part of the bubble.
# Usage: bash benchmarks/scripts/pipeline_bench.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-6}
dotnet build src/Engine.Cli -c Release -v q >/dev/null
E=$PWD/src/Engine.Cli/bin/Release/net10.0/engine
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 DOTNET_PROCESSOR_COUNT=1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
rows=()
for P in 2 4; do
  for M in 4 8 16; do
    log="$tmp/p$P-m$M.log"
    "$E" launch --nproc-per-node "$P" -- train --config configs/tiny_shakespeare.toml \
      --set train.steps="$steps" --set train.eval_every=0 --set train.batch_size=2 --set train.grad_accum=1 \
      --set model.num_layers=8 --set parallel.pp="$P" --set parallel.micro_batches="$M" \
      --set output.dir="\"$tmp/run-p$P-m$M\"" >"$log" 2>&1 || { cat "$log"; exit 1; }
    line=$(tr '\n' ' ' <"$log" | tr -s ' ' | grep -oE 'stages idle [0-9.]+ ?%.*' | head -1 | sed -E 's/ %/%/g')
    measured=$(sed -E 's/stages idle ([0-9.]+)%.*/\1/' <<<"$line")
    theory=$(sed -E 's/.*= ([0-9.]+)% for P.*/\1/' <<<"$line")
    tps=$(tr '\n' ' ' <"$log" | grep -oE '[0-9]+ tokens/s' | tail -1 | grep -oE '[0-9]+')
    echo "P=$P M=$M: measured idle $measured% vs theory $theory%, $tps tok/s"
    rows+=("{\"pp\": $P, \"micro_batches\": $M, \"measured_idle\": $(awk "BEGIN{print $measured/100}"), \"theory\": $(awk "BEGIN{print $theory/100}"), \"tokens_per_s\": ${tps:-0}}")
  done
done
file=benchmarks/results/pipeline-$(date -u +%Y-%m-%d-%H%M).json
ROWS="$(printf '%s\n' "${rows[@]}")" STEPS="$steps" COMMIT="$(git rev-parse HEAD)" FILE="$file" python3 - <<'PY'
import json, os, datetime, platform
rows = [json.loads(l) for l in os.environ["ROWS"].splitlines() if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
run = {"schema": "engine.bench/1", "suite": "pipeline", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
       "commit": os.environ["COMMIT"], "command": "bash benchmarks/scripts/pipeline_bench.sh " + os.environ["STEPS"],
       "machine": {"cpu_model": cpu, "cores": os.cpu_count(), "os": platform.platform(), "gpus": []},
       "config": {"model": "configs/tiny_shakespeare.toml, 8 layers", "batch": "micro-batch 2 x 128 tokens", "schedule": "1f1b",
                  "steps": int(os.environ["STEPS"]), "ranks": "Open MPI, one core each (DOTNET_PROCESSOR_COUNT=1)"},
       "method": "the first step is not timed; per stage: time waiting in receives and send completions inside RunStep / RunStep wall time, averaged over all ranks; peer = the theoretical bubble (P-1)/(M+P-1)",
       "notes": ["P=4 on %d cores oversubscribes" % os.cpu_count()], "benchmarks": []}
for r in rows:
    run["benchmarks"].append({"name": f"pp{r['pp']}_m{r['micro_batches']}_idle", "group": "pipeline", "device": "cpu", "unit": "fraction",
        "better": "lower", "median": r["measured_idle"], "repeats": 1, "warmup": 1, "peer": {"name": "theory (P-1)/(M+P-1)", "median": r["theory"]},
        "ratio": r["theory"] / r["measured_idle"] if r["measured_idle"] > 0 else None,
        "params": {"pp": r["pp"], "micro_batches": r["micro_batches"], "tokens_per_s": r["tokens_per_s"]}})
json.dump(run, open(os.environ["FILE"], "w"), indent=1)
print("wrote " + os.environ["FILE"])
PY
