#!/bin/bash
# engine prepare as one Slurm job array per phase (datatrove's executor layout): phase P's N array tasks run
# `engine prepare --phase P --shard i/N` and need not run at once; each phase's array starts when the previous one
# succeeded (--dependency=afterok). Resubmitting after a failure reruns only unfinished tasks.
#   tools/slurm/prepare-array.sh CONFIG N [extra sbatch options...]
# ENGINE: the engine command (default `engine` on PATH).
set -euo pipefail
CONFIG=${1:?usage: prepare-array.sh CONFIG N [sbatch options...]}
N=${2:?usage: prepare-array.sh CONFIG N [sbatch options...]}
shift 2
ENGINE=${ENGINE:-engine}
PHASES="extract exact lines minhash near_local near_local_clusters near_global near_global_clusters tokenizer tokenize merge report"
prev=""
for phase in $PHASES; do
  id=$(sbatch --parsable --job-name="prepare-$phase" --array="0-$((N - 1))" --ntasks=1 --cpus-per-task=1 \
       ${prev:+--dependency=afterok:$prev} "$@" \
       --wrap "exec $ENGINE prepare --config '$CONFIG' --phase $phase --threads 1 --shard \$SLURM_ARRAY_TASK_ID/$N")
  echo "phase $phase: job $id"
  prev=$id
done
echo "last job: $prev (wait for it: srun --dependency=afterany:$prev true, or squeue -j $prev)"
