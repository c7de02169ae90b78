#!/usr/bin/env bash
# Every CPU benchmark suite, one after the other on a quiet machine, each against its peer measured in the same run
# (`engine bench all`): gemm (our SGEMM vs OpenBLAS via numpy), data (tokenization vs Microsoft.ML.Tokenizers, dedup),
# train (a full training step of the ~12M Llama vs PyTorch on the same exported weights and batches, with MFU),
# eval (perplexity and generation tokens/s). One engine.bench/1 file per suite in benchmarks/results/ (docs/BENCHMARKS.md).
# Pass --shared when other work runs on the machine: the files then say the figures are indicative only.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
dotnet build -c Release src/Engine.Cli >/dev/null
dotnet src/Engine.Cli/bin/Release/net10.0/engine.dll bench all "$@"
