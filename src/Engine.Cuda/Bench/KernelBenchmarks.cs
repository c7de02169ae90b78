using System.Text.Json.Nodes;
using Engine.Cuda.Interop;
using Engine.Cuda.Kernels;

namespace Engine.Cuda.Bench;

/// <summary>
/// Per-kernel GPU microbenchmarks (docs/KERNELS.md, "Microbenchmarks"): the device-to-device copy as the bandwidth
/// reference, every memory-bound kernel's achieved GB/s and its share of that copy, flash attention's TFLOP/s
/// (beside PyTorch SDPA's when <see cref="KernelBenchOptions.Sdpa"/> is given) and a cuBLAS bf16 GEMM as the
/// matrix-rate anchor. A measurement that fails records its error and the run goes on.
/// </summary>
public static class KernelBenchmarks
{
    /// <summary>What `engine bench kernels` prints (exit code 2) when <see cref="CudaDevice.TryCreate"/> fails.</summary>
    public static string NoDeviceMessage(string reason) => "no CUDA device: " + reason;

    public static BenchDeviceInfo Describe(CudaDevice dev)
    {
        dev.MakeCurrent();
        Check.Cu(NativeMethods.cuDeviceGet(out int handle, dev.Ordinal));
        Check.Cu(NativeMethods.cuDeviceGetAttribute(out int l2, CuDeviceAttribute.L2CacheSize, handle));
        return new BenchDeviceInfo(dev.Name, dev.ComputeMajor, dev.ComputeMinor, dev.MultiprocessorCount, dev.TotalMemoryBytes, l2, dev.DriverVersion);
    }

    /// <summary>Runs every benchmark of <paramref name="options"/> on <paramref name="dev"/> and returns the report
    /// (<see cref="BenchReport.Build"/>). <paramref name="log"/> gets one line per measurement as it completes.</summary>
    public static JsonObject Run(CudaDevice dev, KernelLibrary lib, KernelBenchOptions options, Action<string>? log = null)
    {
        options.Validate();
        var info = Describe(dev);
        var results = new List<Measurement>();
        using (var stream = new CudaStream())
        using (var allocator = new CachingAllocator())
        using (var random = new RandomChunks(allocator, stream, options.Seed))
        using (var timer = new GpuTimer(stream, options.Timing))
        {
            var r = new Runner(lib, stream, allocator, random, timer, results, log);
            r.Copy(options.CopyBytes);
            foreach (var shapes in options.Shapes) r.MemoryBound(shapes, options.Seed);
            if (options.Attention is { } grid)
            {
                r.Attention(grid);
                r.AttentionV2(grid);
            }
            if (options.GemmSize > 0) r.Gemm(options.GemmSize);
        }
        return BenchReport.Build(info, options, results, DateTime.UtcNow);
    }

    private sealed class Runner(KernelLibrary lib, CudaStream stream, CachingAllocator allocator, RandomChunks random, GpuTimer timer,
        List<Measurement> results, Action<string>? log)
    {
        private void Measure(string group, KernelCost cost, Func<DeviceScope, Action> setup)
        {
            Measurement m;
            try
            {
                TimingResult t;
                using (var scope = new DeviceScope(allocator, stream, random))
                {
                    Action call = setup(scope);
                    t = timer.Time(call);
                }
                m = new Measurement(group, cost, t);
                string rate = cost.IsMemoryBound
                    ? $"{KernelCosts.GBps(cost.Bytes, t.MedianMs):F0} GB/s"
                    : $"{KernelCosts.Tflops(cost.Flops, t.MedianMs):F1} TFLOP/s";
                log?.Invoke($"{cost.Kernel} [{cost.Shape}] {t.MedianMs:F4} ms ({t.MinMs:F4}..{t.MaxMs:F4}, {t.Iters} x {t.Repeats}): {rate}");
            }
            catch (Exception e) when (e is CudaException or Engine.Core.DeviceOutOfMemoryException or ArgumentException or DllNotFoundException or EntryPointNotFoundException
                or FileNotFoundException or InvalidOperationException)
            {
                m = new Measurement(group, cost, null, $"{e.GetType().Name}: {e.Message}");
                log?.Invoke($"{cost.Kernel} [{cost.Shape}] failed: {e.Message}");
            }
            results.Add(m);
        }

        public void Copy(long bytes) => Measure("reference", KernelCosts.Copy(bytes), s =>
        {
            DevicePtr src = s.Bf16(bytes / 2), dst = s.Output(bytes);
            return () => stream.CopyDeviceToDevice(dst, src, bytes);
        });

        public void MemoryBound(ModelShapes sh, int seed)
        {
            string g = sh.Name;
            int rows = sh.Tokens, cols = sh.Hidden;
            Measure(g, KernelCosts.RmsNormForward(rows, cols), s =>
            {
                DevicePtr x = s.Bf16((long)rows * cols), w = s.Bf16(cols), y = s.Output(2L * rows * cols), rstd = s.Output(4L * rows);
                return () => lib.RmsNorm.Forward(stream, y, rstd, x, w, rows, cols, 1e-5f);
            });
            Measure(g, KernelCosts.RmsNormBackward(rows, cols), s =>
            {
                DevicePtr x = s.Bf16((long)rows * cols), w = s.Bf16(cols), dy = s.Bf16((long)rows * cols);
                DevicePtr y = s.Output(2L * rows * cols), rstd = s.Output(4L * rows);
                DevicePtr dx = s.Output(2L * rows * cols), dw = s.Output(4L * cols), partial = s.Output(RmsNormKernels.PartialBytes(rows, cols));
                lib.RmsNorm.Forward(stream, y, rstd, x, w, rows, cols, 1e-5f);   // the rstd the backward reads
                return () => lib.RmsNorm.Backward(stream, dx, dw, dy, x, w, rstd, rows, cols, partial, accumulateDw: false);
            });

            long n = (long)sh.Tokens * sh.Ffn;
            Measure(g, KernelCosts.SwiGluForward(sh.Tokens, sh.Ffn), s =>
            {
                DevicePtr gate = s.Bf16(n), up = s.Bf16(n), h = s.Output(2 * n);
                return () => lib.SwiGlu.Forward(stream, h, gate, up, n);
            });
            Measure(g, KernelCosts.SwiGluBackward(sh.Tokens, sh.Ffn), s =>
            {
                DevicePtr dh = s.Bf16(n), gate = s.Bf16(n), up = s.Bf16(n), dgate = s.Output(2 * n), dup = s.Output(2 * n);
                return () => lib.SwiGlu.Backward(stream, dgate, dup, dh, gate, up, n);
            });

            int t = sh.RopeSeqLen, b = sh.Tokens / t, d = sh.HeadDim;
            float[] invFreq = RopeKernels.InverseFrequencies(d, 10000.0);
            foreach (int heads in sh.KvHeads.Prepend(sh.Heads).Distinct())
                foreach (bool backward in new[] { false, true })
                    Measure(g, KernelCosts.Rope(backward, b, t, heads, d), s =>
                    {
                        long count = (long)b * t * heads * d;
                        DevicePtr x = s.Bf16(count), y = s.Output(2 * count), inv = s.Upload<float>(invFreq);
                        return backward
                            ? () => lib.Rope.Backward(stream, y, x, inv, b, t, heads, d)
                            : () => lib.Rope.Forward(stream, y, x, inv, b, t, heads, d);
                    });

            int vocab = sh.Vocabs[0];
            var rng = new Random(seed);
            var ids = new int[sh.Tokens];
            for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(vocab);
            Measure(g, KernelCosts.EmbeddingForward(sh.Tokens, vocab, cols), s =>
            {
                DevicePtr table = s.Bf16((long)vocab * cols), idsDev = s.Upload<int>(ids), output = s.Output(2L * sh.Tokens * cols);
                return () => lib.Embedding.Forward(stream, output, table, idsDev, sh.Tokens, vocab, cols);
            });
            var buckets = EmbeddingKernels.BuildBuckets(ids, vocab);
            Measure(g, KernelCosts.EmbeddingBackward(sh.Tokens, vocab, cols, buckets.Buckets), s =>
            {
                DevicePtr dtable = s.F32((long)vocab * cols), dout = s.Bf16((long)sh.Tokens * cols);
                DevicePtr order = s.Upload<int>(buckets.Order), start = s.Upload<int>(buckets.BucketStart), bid = s.Upload<int>(buckets.BucketId);
                return () => lib.Embedding.Backward(stream, dtable, dout, order, start, bid, buckets.Buckets, cols);
            });

            foreach (int v in sh.Vocabs)
            {
                var targets = new int[sh.Tokens];
                for (int i = 0; i < targets.Length; i++) targets[i] = rng.Next(v);
                Measure(g, KernelCosts.CrossEntropyForwardBackward(sh.Tokens, v), s =>
                {
                    DevicePtr logits = s.Bf16((long)sh.Tokens * v), tgt = s.Upload<int>(targets);
                    DevicePtr loss = s.Output(4L * sh.Tokens), lse = s.Output(4L * sh.Tokens);
                    float scale = 1f / sh.Tokens;
                    // In place: after the first call the logits hold dlogits; later calls stream the same bytes.
                    return () => lib.CrossEntropy.ForwardBackward(stream, logits, loss, lse, tgt, DevicePtr.Null, scale, sh.Tokens, v);
                });
            }

            long p = sh.AdamWParams;
            Measure(g, KernelCosts.AdamW(p), s =>
            {
                DevicePtr master = s.F32(p), m = s.F32(p), v = s.F32Positive(p), grad = s.F32(p), bf = s.Output(2 * p);
                var step = new AdamWStep(Lr: 1e-4f, Beta1: 0.9f, Beta2: 0.95f, Eps: 1e-8f, WeightDecay: 0.1f, Step: 1);
                return () => lib.AdamW.UpdateF32(stream, master, bf, m, v, grad, p, step);
            });

            long e = (long)sh.Tokens * sh.Hidden;
            Measure(g, KernelCosts.CastF32ToBf16(e), s =>
            {
                DevicePtr src = s.F32(e), dst = s.Output(2 * e);
                return () => lib.Elementwise.CastF32ToBf16(stream, dst, src, e);
            });
            Measure(g, KernelCosts.CastBf16ToF32(e), s =>
            {
                DevicePtr src = s.Bf16(e), dst = s.Output(4 * e);
                return () => lib.Elementwise.CastBf16ToF32(stream, dst, src, e);
            });
            Measure(g, KernelCosts.AddBf16(e), s =>
            {
                DevicePtr a = s.Bf16(e), bb = s.Bf16(e), o = s.Output(2 * e);
                return () => lib.Elementwise.AddBf16(stream, o, a, bb, e);
            });
            Measure(g, KernelCosts.AccumulateBf16F32(e), s =>
            {
                DevicePtr acc = s.F32(e), grad = s.Bf16(e);
                return () => lib.Elementwise.AccumulateBf16F32(stream, acc, grad, e);
            });
        }

        public void Attention(AttentionGrid grid)
        {
            foreach (var (b, t, kv, d) in grid.Cases())
            {
                if (Array.IndexOf(AttentionShape.V1HeadDims, d) < 0) continue;   // v1 lacks this head dim: v2 rows only
                var shape = new AttentionShape(b, t, grid.Heads, kv, d);
                long nq = (long)b * t * grid.Heads * d, nk = (long)b * t * kv * d;
                Measure("attention", KernelCosts.Attention(false, b, t, grid.Heads, kv, d, grid.Causal), s =>
                {
                    DevicePtr q = s.Bf16(nq), k = s.Bf16(nk), v = s.Bf16(nk), o = s.Output(2 * nq), lse = s.Output(shape.LseBytes);
                    return () => lib.Attention.Forward(stream, shape, q, k, v, o, lse, grid.Causal);
                });
                Measure("attention", KernelCosts.Attention(true, b, t, grid.Heads, kv, d, grid.Causal), s =>
                {
                    DevicePtr q = s.Bf16(nq), k = s.Bf16(nk), v = s.Bf16(nk), o = s.Output(2 * nq), lse = s.Output(shape.LseBytes);
                    DevicePtr dout = s.Bf16(nq), dq = s.Output(2 * nq), dk = s.Output(2 * nk), dv = s.Output(2 * nk), delta = s.Output(shape.LseBytes);
                    lib.Attention.Forward(stream, shape, q, k, v, o, lse, grid.Causal);   // o and lse the backward reads
                    return () => lib.Attention.Backward(stream, shape, q, k, v, o, lse, dout, dq, dk, dv, delta, grid.Causal);
                });
            }
        }

        /// <summary>attention_v2.cu on the same grid (its own rows, "attention_v2_fwd" / "attention_v2_bwd"); the backward
        /// time includes zeroing the sync array and the delta pass, as the backend runs it. On Hopper with the sm_90a
        /// fatbin built, also attention_sm90.cu's forward ("attention_sm90_fwd"); the v2 rows then stay on mma.sync.</summary>
        public void AttentionV2(AttentionGrid grid)
        {
            bool hopper = lib.AttentionV2.HopperPath;
            try { AttentionV2Rows(grid); }
            finally { lib.AttentionV2.HopperPath = hopper; }
        }

        private void AttentionV2Rows(AttentionGrid grid)
        {
            foreach (var (b, t, kv, d) in grid.Cases())
            {
                lib.AttentionV2.HopperPath = true;
                if (lib.AttentionV2.UsesHopperPath(d))
                {
                    var hs = new AttentionShape(b, t, grid.Heads, kv, d);
                    long hq = (long)b * t * grid.Heads * d, hk = (long)b * t * kv * d;
                    Measure("attention", KernelCosts.Attention(false, b, t, grid.Heads, kv, d, grid.Causal, "attention_sm90"), s =>
                    {
                        DevicePtr q = s.Bf16(hq), k = s.Bf16(hk), v = s.Bf16(hk), o = s.Output(2 * hq), lse = s.Output(hs.LseBytes);
                        return () => lib.AttentionV2.Forward(stream, hs, q, k, v, o, lse, grid.Causal);
                    });
                }
                lib.AttentionV2.HopperPath = false;
                var shape = new AttentionShape(b, t, grid.Heads, kv, d);
                long nq = (long)b * t * grid.Heads * d, nk = (long)b * t * kv * d;
                Measure("attention", KernelCosts.Attention(false, b, t, grid.Heads, kv, d, grid.Causal, "attention_v2"), s =>
                {
                    DevicePtr q = s.Bf16(nq), k = s.Bf16(nk), v = s.Bf16(nk), o = s.Output(2 * nq), lse = s.Output(shape.LseBytes);
                    return () => lib.AttentionV2.Forward(stream, shape, q, k, v, o, lse, grid.Causal);
                });
                Measure("attention", KernelCosts.Attention(true, b, t, grid.Heads, kv, d, grid.Causal, "attention_v2"), s =>
                {
                    DevicePtr q = s.Bf16(nq), k = s.Bf16(nk), v = s.Bf16(nk), o = s.Output(2 * nq), lse = s.Output(shape.LseBytes);
                    DevicePtr dout = s.Bf16(nq), dq = s.Output(2 * nq), dk = s.Output(2 * nk), dv = s.Output(2 * nk), delta = s.Output(shape.LseBytes);
                    DevicePtr acc = s.Output(AttentionV2Kernels.DqAccumBytes(shape)), sync = s.Output(AttentionV2Kernels.SyncBytes(shape));
                    lib.AttentionV2.Forward(stream, shape, q, k, v, o, lse, grid.Causal);
                    return () => lib.AttentionV2.Backward(stream, shape, q, k, v, o, lse, dout, dq, dk, dv, delta, acc, sync, grid.Causal);
                });
            }
        }

        public void Gemm(int size) => Measure("reference", KernelCosts.Gemm(size, size, size), s =>
        {
            long n = (long)size * size;
            DevicePtr a = s.Bf16(n), b = s.Bf16(n), c = s.Output(2 * n);
            var blas = s.Own(new CublasContext());
            return () => blas.Gemm(stream, false, false, size, size, size, a, b, c);
        });
    }
}
