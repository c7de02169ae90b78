#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention, flash backend only, forward and backward TFLOP/s for the attention shapes
`engine bench kernels` measures (Engine.Cuda.Bench.AttentionGrid.Default), printed as JSON; gpu_run.sh passes the file
to `engine bench kernels --sdpa` so each of our attention rows gets ratio_vs_sdpa, in the same run on the same GPU.

Same method as the C# harness (Engine.Cuda.Bench.GpuTimer): warm-up calls, one timed call to size the groups, then
REPEATS groups of back-to-back calls between two CUDA events; ms = median per-call time. bf16 inputs uniform in
[-1, 1] (never zeros), q/o laid out [B, T, H, D] and k/v [B, T, Hkv, D] like ours (transposed views, no copies).
The forward is timed with autograd recording (the training forward, which saves the logsumexp as ours does); the
backward is torch.autograd.grad(out, (q, k, v), dout) on a retained graph (no .grad accumulation in the timing).
GQA: enable_gqa=True where the flash kernel takes it; otherwise k/v are expanded to H heads with repeat_interleave
outside the timed region (the group sum of dk/dv is then not timed: "gqa" says which was used).
FLOPs, FlashAttention-2 convention: forward 4*B*H*T^2*D (x0.5 causal), backward 2.5 x forward.

Usage: python3 benchmarks/scripts/sdpa_bench.py [--out FILE] [--seq-lens 1024,2048] [--head-dims 64,128] ...
Exit 0 (every shape ran or recorded its error), 2 (no torch / no CUDA device: one line on stderr, error JSON written).
"""
import argparse
import datetime
import json
import math
import statistics
import sys

# Must equal Engine.Cuda.Bench.AttentionGrid.Default (a CPU test in tests/Engine.Cuda.Tests/Bench compares them).
DEFAULT_TOKENS = 16384
DEFAULT_HEADS = 32
DEFAULT_KV_HEADS = (8, 32)
DEFAULT_SEQ_LENS = (1024, 2048, 4096, 8192)
DEFAULT_HEAD_DIMS = (64, 128)

WARMUP, REPEATS, TARGET_MS, MIN_ITERS, MAX_ITERS = 3, 7, 20.0, 2, 1000


def shape_key(b, t, h, hkv, d, causal):
    """Same string as Engine.Cuda.Bench.KernelCosts.AttentionShapeKey."""
    return f"B={b} T={t} H={h} Hkv={hkv} D={d} {'causal' if causal else 'full'}"


def attention_flops(b, t, h, d, causal, backward):
    fwd = 4.0 * b * h * t * t * d * (0.5 if causal else 1.0)
    return 2.5 * fwd if backward else fwd


def time_ms(torch, fn):
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def group(iters):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    estimate = group(1)
    iters = MAX_ITERS if estimate <= 0 else int(min(max(math.ceil(TARGET_MS / estimate), MIN_ITERS), MAX_ITERS))
    samples = [group(iters) / iters for _ in range(REPEATS)]
    return statistics.median(samples), min(samples), max(samples), iters


def flash_only(torch):
    """A context manager factory that allows only the flash backend, and its description."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        return (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)), "torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)"
    except ImportError:
        return (lambda: torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False),
                "torch.backends.cuda.sdp_kernel(enable_flash=True, others off)")


def bench_case(torch, flash, b, t, h, hkv, d, causal):
    F = torch.nn.functional
    dev, dt = "cuda", torch.bfloat16
    q_leaf = torch.empty(b, t, h, d, device=dev, dtype=dt).uniform_(-1, 1).requires_grad_()
    k_leaf = torch.empty(b, t, hkv, d, device=dev, dtype=dt).uniform_(-1, 1).requires_grad_()
    v_leaf = torch.empty(b, t, hkv, d, device=dev, dtype=dt).uniform_(-1, 1).requires_grad_()

    def call(k, v, gqa):
        with flash():
            if gqa:
                return F.scaled_dot_product_attention(q_leaf.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                      is_causal=causal, enable_gqa=True)
            return F.scaled_dot_product_attention(q_leaf.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)

    if hkv == h:
        mode, k, v = "mha", k_leaf, v_leaf
        forward = lambda: call(k, v, False)
    else:
        try:
            call(k_leaf, v_leaf, True)
            mode, k, v = "enable_gqa", k_leaf, v_leaf
            forward = lambda: call(k, v, True)
        except (TypeError, RuntimeError):
            mode = "repeat_interleave"
            k = k_leaf.detach().repeat_interleave(h // hkv, dim=2).requires_grad_()
            v = v_leaf.detach().repeat_interleave(h // hkv, dim=2).requires_grad_()
            forward = lambda: call(k, v, False)

    key = shape_key(b, t, h, hkv, d, causal)
    rows = []
    ms, lo, hi, iters = time_ms(torch, forward)
    flops = attention_flops(b, t, h, d, causal, False)
    rows.append({"kernel": "sdpa_flash_fwd", "shape": key, "ms": round(ms, 5), "ms_min": round(lo, 5), "ms_max": round(hi, 5),
                 "iters": iters, "repeats": REPEATS, "flops": flops, "tflops": round(flops / (ms * 1e9), 2), "gqa": mode})

    out = forward()
    dout = torch.empty_like(out).uniform_(-1, 1)
    inputs = (q_leaf, k, v)
    backward = lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)
    ms, lo, hi, iters = time_ms(torch, backward)
    flops = attention_flops(b, t, h, d, causal, True)
    rows.append({"kernel": "sdpa_flash_bwd", "shape": key, "ms": round(ms, 5), "ms_min": round(lo, 5), "ms_max": round(hi, 5),
                 "iters": iters, "repeats": REPEATS, "flops": flops, "tflops": round(flops / (ms * 1e9), 2), "gqa": mode})
    return rows


def ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the JSON here (default: stdout)")
    ap.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="batch = tokens / T")
    ap.add_argument("--heads", type=int, default=DEFAULT_HEADS)
    ap.add_argument("--kv-heads", type=ints, default=DEFAULT_KV_HEADS)
    ap.add_argument("--seq-lens", type=ints, default=DEFAULT_SEQ_LENS)
    ap.add_argument("--head-dims", type=ints, default=DEFAULT_HEAD_DIMS)
    ap.add_argument("--full", action="store_true", help="non-causal (default causal)")
    a = ap.parse_args()
    causal = not a.full

    def emit(obj):
        text = json.dumps(obj, indent=2)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
        else:
            print(text)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        import torch
    except ImportError as e:
        print(f"no CUDA device: PyTorch is not importable ({e})", file=sys.stderr)
        emit({"tool": "sdpa_bench", "date": date, "error": f"torch not importable: {e}", "measurements": []})
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False", file=sys.stderr)
        emit({"tool": "sdpa_bench", "date": date, "torch": torch.__version__, "error": "no CUDA device", "measurements": []})
        return 2

    flash, flash_desc = flash_only(torch)
    rows = []
    for d in a.head_dims:
        for t in a.seq_lens:
            for hkv in a.kv_heads:
                b = max(1, a.tokens // t)
                try:
                    rows.extend(bench_case(torch, flash, b, t, a.heads, hkv, d, causal))
                except Exception as e:  # one shape failing (OOM, no flash kernel) must not lose the others
                    key = shape_key(b, t, a.heads, hkv, d, causal)
                    for kernel in ("sdpa_flash_fwd", "sdpa_flash_bwd"):
                        rows.append({"kernel": kernel, "shape": key, "error": f"{type(e).__name__}: {e}".splitlines()[0]})
                torch.cuda.empty_cache()
                last = rows[-1]
                print(f"[sdpa] {last['shape']}: " + ", ".join(
                    f"{r['kernel']} {r.get('tflops', 'error')}" for r in rows[-2:]), file=sys.stderr)

    emit({
        "tool": "sdpa_bench",
        "date": date,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "backend": flash_desc,
        "dtype": "bfloat16",
        "causal": causal,
        "flops": "FlashAttention-2 convention: forward 4*B*H*T^2*D (x0.5 causal), backward 2.5 x forward",
        "timing": f"CUDA events; {WARMUP} warm-up calls, {REPEATS} groups sized to ~{TARGET_MS} ms; ms = median per-call time",
        "measurements": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
