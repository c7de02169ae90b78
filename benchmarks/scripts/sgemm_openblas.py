#!/usr/bin/python3
"""OpenBLAS sgemm timings through numpy, with the same shapes and timing method as `Engine.Benchmarks gemm`.

Usage: OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 /usr/bin/python3 sgemm_openblas.py [--samples S]
       [--min-sample-s T] [--serve] name:ta:tb:m:n:k:batch ...
Prints one JSON object: {"blas": {...libraries mapped...}, "results": [{name, ms, gflops, samples_s}, ...]}
(ms/gflops from the median sample; samples_s = per-call seconds of every sample).
--serve: prints {"blas": ...} as one line, then answers each spec read from stdin with one result line; the C#
harness alternates rounds of ours and these per shape and takes the median over all samples.

Timing (identical to the C# harness): warm-up (>= 2 calls and >= 0.25 s), iterations calibrated so one sample
takes >= min-sample-s, then S samples of per-call time. ta/tb are 0/1: transposed operands are transposed *views*
of C-contiguous float32 arrays, so numpy hands sgemm the transpose flag (no copy). batch > 1 uses np.matmul on
stacked arrays, which calls sgemm once per item.
"""
import json
import os
import sys
import time

import numpy as np

import blas_kernel


def blas_info():
    """Which BLAS shared object this process mapped (Debian's openblas-pthread) and its kernel (blas_kernel.py)."""
    info = blas_kernel.describe()
    info.update({"numpy": np.__version__,
                 "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")})
    try:
        import threadpoolctl  # optional
        info["threadpoolctl"] = threadpoolctl.threadpool_info()
    except ImportError:
        pass
    return info


def operands(ta, tb, m, n, k, batch, rng):
    def mat(rows, cols):
        shape = (batch, rows, cols) if batch > 1 else (rows, cols)
        return rng.uniform(-1, 1, size=shape).astype(np.float32)

    def t(x):
        return np.swapaxes(x, -1, -2)

    a = t(mat(k, m)) if ta else mat(m, k)
    b = t(mat(n, k)) if tb else mat(k, n)
    c = np.empty((batch, m, n) if batch > 1 else (m, n), dtype=np.float32)
    return a, b, c


def time_call(fn, samples, min_sample_s):
    t0, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - t0 < 0.25:
        fn()
        calls += 1
    iters = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_sample_s:
            break
        iters = max(iters * 2, int(iters * min_sample_s / max(dt, 1e-9) * 1.2))
    per_call = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        per_call.append((time.perf_counter() - t0) / iters)
    return per_call


def main(argv):
    samples, min_sample_s, specs = 7, 0.1, []
    i = 0
    while i < len(argv):
        if argv[i] == "--samples":
            samples = int(argv[i + 1]); i += 2
        elif argv[i] == "--min-sample-s":
            min_sample_s = float(argv[i + 1]); i += 2
        else:
            specs.append(argv[i]); i += 1
    rng = np.random.default_rng(0)
    if "--serve" in specs:
        print(json.dumps({"blas": blas_info()}), flush=True)
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(run_spec(line.strip(), rng, samples, min_sample_s)), flush=True)
        return
    results = [run_spec(spec, rng, samples, min_sample_s) for spec in specs]
    print(json.dumps({"blas": blas_info(), "results": results}))


_operands = {}


def run_spec(spec, rng, samples, min_sample_s):
    name, ta, tb, m, n, k, batch = spec.split(":")
    ta, tb, m, n, k, batch = ta == "1", tb == "1", int(m), int(n), int(k), int(batch)
    if spec not in _operands:  # rounds of one shape reuse its operands
        _operands.clear()
        _operands[spec] = operands(ta, tb, m, n, k, batch, rng)
    a, b, c = _operands[spec]
    per_call = time_call(lambda: np.matmul(a, b, out=c), samples, min_sample_s)
    sec = sorted(per_call)[len(per_call) // 2]
    flops = 2.0 * m * n * k * batch
    return {"name": name, "ms": sec * 1e3, "gflops": flops / sec / 1e9, "samples_s": per_call}


if __name__ == "__main__":
    main(sys.argv[1:])
