#!/usr/bin/env bash
# Every CPU benchmark, one after the other on a quiet machine, each against its reference measured in the same run:
#   gemm  — our SGEMM vs OpenBLAS (numpy, Debian's libopenblas0-pthread)
#   train — full training step of the ~12M Llama vs the same model in PyTorch (Debian's python3-torch)
#   eval  — perplexity-eval and generation tokens/s (KV cache vs the no-cache path)
#   data  — tokenization MB/s vs Microsoft.ML.Tokenizers, dedup documents/s
# Results land in benchmarks/results/*.json with machine, commit and date.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
dotnet build -c Release src/Engine.Cli >/dev/null
dotnet build -c Release benchmarks/Engine.Benchmarks >/dev/null
engine="dotnet src/Engine.Cli/bin/Release/net10.0/engine.dll"
dotnet run -c Release --no-build --project benchmarks/Engine.Benchmarks -- gemm
$engine bench train --steps 6
$engine bench eval
dotnet run -c Release --no-build --project benchmarks/Engine.Benchmarks -- data
