using System.Numerics.Tensors;
using Engine.Cpu;
using Engine.Cpu.Ops;

namespace Engine.Core;

/// <summary>The reference backend: fp32 on the host, SIMD GEMM and the span kernels of Engine.Cpu.</summary>
public sealed class CpuBackend : IBackend
{
    public static CpuBackend Instance { get; } = new();

    readonly Dictionary<(RopeParams, int, int), (float[] Cos, float[] Sin)> ropeTables = new();
    readonly Lock ropeLock = new();

    public string Name => "cpu";

    public DType ActivationDType => DType.F32;

    public Tensor Empty(ReadOnlySpan<int> shape, DType dtype = DType.F32)
    {
        using var _p = Profiler.Op("empty", 0);
        return new(new CpuStorage(this, dtype, Shape.Numel(shape), zero: false), 0, shape.ToArray(), ownsStorage: true);
    }

    public Tensor Zeros(ReadOnlySpan<int> shape, DType dtype = DType.F32)
    {
        using var _p = Profiler.Op("zeros", Shape.Numel(shape) * dtype.Size());
        return new(new CpuStorage(this, dtype, Shape.Numel(shape), zero: true), 0, shape.ToArray(), ownsStorage: true);
    }

    public void Upload(Tensor dst, ReadOnlySpan<float> src)
    {
        using var _p = Profiler.Op("upload", dst);
        if (src.Length != dst.Numel) throw new ArgumentException($"upload of {src.Length} values into {dst.Describe()}");
        if (dst.DType == DType.BF16) BFloat16.FromFloat(src, dst.HalfSpan);
        else src.CopyTo(dst.Span);
    }

    public void Upload(Tensor dst, ReadOnlySpan<int> src)
    {
        using var _p = Profiler.Op("upload", dst);
        if (src.Length != dst.Numel) throw new ArgumentException($"upload of {src.Length} values into {dst.Describe()}");
        src.CopyTo(dst.IntSpan);
    }

    public void Download(Tensor src, Span<float> dst)
    {
        using var _p = Profiler.Op("download", src);
        switch (src.DType)
        {
            case DType.F32: src.Span.CopyTo(dst); break;
            case DType.BF16: BFloat16.ToFloat(src.HalfSpan, dst); break;
            case DType.I32:
                var s = src.IntSpan;
                for (int i = 0; i < s.Length; i++) dst[i] = s[i];
                break;
        }
    }

    public void Fill(Tensor t, float value)
    {
        using var _p = Profiler.Op("fill", t);
        switch (t.DType)
        {
            case DType.F32: t.Span.Fill(value); break;
            case DType.BF16: t.HalfSpan.Fill(BFloat16.FromFloat(value)); break;
            default: t.IntSpan.Fill(checked((int)value)); break;
        }
    }

    public void Copy(Tensor src, Tensor dst)
    {
        using var _p = Profiler.Op("copy", src, dst);
        if (src.Numel != dst.Numel) throw new ArgumentException($"copy {src.Describe()} → {dst.Describe()}: sizes differ");
        if (src.DType == dst.DType)
        {
            switch (src.DType)
            {
                case DType.F32: src.Span.CopyTo(dst.Span); break;
                case DType.BF16: src.HalfSpan.CopyTo(dst.HalfSpan); break;
                case DType.I32: src.IntSpan.CopyTo(dst.IntSpan); break;
            }
        }
        else if (src.DType == DType.F32 && dst.DType == DType.BF16) BFloat16.FromFloat(src.Span, dst.HalfSpan);
        else if (src.DType == DType.BF16 && dst.DType == DType.F32) BFloat16.ToFloat(src.HalfSpan, dst.Span);
        else throw new NotSupportedException($"copy {src.DType} → {dst.DType}");
    }

    public void MatMul(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f)
    {
        using var _p = Profiler.Op("matmul", a, b, c);
        if (a.Rank != 2 || b.Rank != 2 || c.Rank != 2) throw new ArgumentException($"MatMul takes 2-D tensors: {a.Describe()}, {b.Describe()}, {c.Describe()}");
        int m = transA ? a.Shape[1] : a.Shape[0], k = transA ? a.Shape[0] : a.Shape[1];
        int kb = transB ? b.Shape[1] : b.Shape[0], n = transB ? b.Shape[0] : b.Shape[1];
        if (k != kb || c.Shape[0] != m || c.Shape[1] != n)
            throw new ArgumentException($"MatMul shapes disagree: op(a) [{m}, {k}], op(b) [{kb}, {n}], c {Shape.Format(c.Shape)}");
        Gemm.Sgemm(transA, transB, m, n, k, alpha, a.Span, a.Shape[1], b.Span, b.Shape[1], beta, c.Span, n);
    }

    public void Add(Tensor a, Tensor b, Tensor y)
    {
        using var _p = Profiler.Op("add", a, b, y);
        TensorPrimitives.Add(a.Span, b.Span, y.Span);
    }

    public void AddInPlace(Tensor acc, Tensor x, float alpha)
    {
        using var _p = Profiler.Op("add_in_place", acc, x);
        if (alpha == 1f) TensorPrimitives.Add(acc.Span, x.Span, acc.Span);
        else TensorPrimitives.MultiplyAdd(x.Span, alpha, acc.Span, acc.Span);
    }

    public void Scale(Tensor t, float s)
    {
        using var _p = Profiler.Op("scale", t);
        TensorPrimitives.Multiply(t.Span, s, t.Span);
    }

    public double SumOfSquares(Tensor t)
    {
        using var _p = Profiler.Op("sum_of_squares", t);
        // chunked fp32 partials summed in double: accurate and deterministic
        var s = t.Span;
        double total = 0;
        for (int i = 0; i < s.Length; i += 65536)
            total += TensorPrimitives.SumOfSquares(s.Slice(i, Math.Min(65536, s.Length - i)));
        return total;
    }

    public void SumInto(Tensor x, Tensor result, float divisor)
    {
        double total = Sum(x);
        using var _p = Profiler.Op("sum_into", result);
        result.Span[0] = (float)(total / divisor);
    }

    public void ScaleBy(Tensor t, Tensor scalar) => Scale(t, scalar.Span[0]);

    public double Sum(Tensor t)
    {
        using var _p = Profiler.Op("sum", t);
        var s = t.Span;
        double total = 0;
        for (int i = 0; i < s.Length; i += 65536)
            total += TensorPrimitives.Sum(s.Slice(i, Math.Min(65536, s.Length - i)));
        return total;
    }

    public void RmsNormForward(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps)
    {
        using var _p = Profiler.Op("rmsnorm_forward", x, w, y, rstd);
        RmsNormCpu.Forward(x.Span, w.Span, y.Span, rstd.Span, (int)(x.Numel / w.Numel), (int)w.Numel, eps);
    }

    public void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate)
    {
        using var _p = Profiler.Op("rmsnorm_backward", dy, x, w, rstd, dx, dwAccumulate);
        RmsNormCpu.Backward(dy.Span, x.Span, w.Span, rstd.Span, dx.Span, dwAccumulate.Span, (int)(x.Numel / w.Numel), (int)w.Numel);
    }

    public void Rope(Tensor x, Tensor y, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse)
    {
        using var _p = Profiler.Op("rope", x, y);
        (float[] cos, float[] sin) tables;
        lock (ropeLock)
        {
            var key = (p, seqLen, positionOffset);
            if (!ropeTables.TryGetValue(key, out tables))
            {
                if (ropeTables.Count > 64) ropeTables.Clear();
                tables = RopeCpu.Tables(p.InverseFrequencies(), p.PositionDivisor, seqLen, positionOffset);
                ropeTables[key] = tables;
            }
        }
        RopeCpu.Apply(x.Span, y.Span, batch, seqLen, heads, p.HeadDim, tables.cos, tables.sin, inverse);
    }

    static AttentionCpu.Dims Kernel(AttentionDims d) =>
        new(d.Batch, d.SeqLen, d.Heads, d.KvHeads, d.HeadDim, d.AlibiMaxBias) { Causal = d.Causal, HeadOffset = d.HeadOffset, TotalHeads = d.TotalHeads };

    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, AttentionDims d)
    {
        using var _p = Profiler.Op("attention_forward", q, k, v, o, lse);
        AttentionCpu.Forward(q.Span, k.Span, v.Span, o.Span, lse.Span, Kernel(d));
    }

    public void AttentionBackward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dq, Tensor dk, Tensor dv, AttentionDims d)
    {
        using var _p = Profiler.Op("attention_backward", dout, q, k, v, o, lse, dq, dk, dv);
        AttentionCpu.Backward(dout.Span, q.Span, k.Span, v.Span, o.Span, lse.Span, dq.Span, dk.Span, dv.Span, Kernel(d));
    }

    public void AttentionMerge(Tensor o, Tensor lse, Tensor oBlock, Tensor lseBlock, int batch, int seqLen, int heads, int headDim)
    {
        using var _p = Profiler.Op("attention_merge", o, lse, oBlock, lseBlock);
        AttentionCpu.Merge(o.Span, lse.Span, oBlock.Span, lseBlock.Span, batch, seqLen, heads, headDim);
    }

    public void AttentionDecode(Tensor q, Tensor kCache, Tensor vCache, Tensor o, int heads, int kvHeads, int headDim, int positionOffset, float alibiMaxBias = 0f)
    {
        using var _p = Profiler.Op("attention_decode", q, kCache, vCache, o);
        AttentionCpu.Decode(q.Span, kCache.Span, vCache.Span, o.Span, q.Shape[0], heads, kvHeads, headDim, positionOffset, alibiMaxBias);
    }

    public void SwiGluForward(Tensor gate, Tensor up, Tensor h)
    {
        using var _p = Profiler.Op("swiglu_forward", gate, up, h);
        SwiGluCpu.Forward(gate.Span, up.Span, h.Span);
    }

    public void SwiGluBackward(Tensor dh, Tensor gate, Tensor up, Tensor dgate, Tensor dup)
    {
        using var _p = Profiler.Op("swiglu_backward", dh, gate, up, dgate, dup);
        SwiGluCpu.Backward(dh.Span, gate.Span, up.Span, dgate.Span, dup.Span);
    }

    public void EmbeddingForward(Tensor ids, Tensor table, Tensor y)
    {
        using var _p = Profiler.Op("embedding_forward", ids, table, y);
        EmbeddingCpu.Forward(ids.IntSpan, table.Span, y.Span, table.Shape[0], table.Shape[1]);
    }

    public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtableAccumulate)
    {
        using var _p = Profiler.Op("embedding_backward", ids, dy, dtableAccumulate);
        EmbeddingCpu.Backward(ids.IntSpan, dy.Span, dtableAccumulate.Span, dtableAccumulate.Shape[1]);
    }

    public void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor lse, float zLoss, bool writeGradient, float gradScale, float maxZLoss = 0f)
    {
        using var _p = Profiler.Op("cross_entropy", logits, targets, losses, lse);
        CrossEntropyCpu.Forward(logits.Span, targets.IntSpan, losses.Span, lse.Span, logits.Shape[0], logits.Shape[1], zLoss, writeGradient, gradScale, maxZLoss);
    }

    public void CrossEntropyShardStats(Tensor logits, Tensor targets, int vocabStart, Tensor stats)
    {
        using var _p = Profiler.Op("cross_entropy_shard_stats", logits, targets, stats);
        CrossEntropyCpu.ShardStats(logits.Span, targets.IntSpan, stats.Span, logits.Shape[0], logits.Shape[1], vocabStart);
    }

    public void CrossEntropyShardGradient(Tensor logits, Tensor targets, int vocabStart, Tensor lse, float zLoss, float gradScale)
    {
        using var _p = Profiler.Op("cross_entropy_shard_gradient", logits, targets, lse);
        CrossEntropyCpu.ShardGradient(logits.Span, targets.IntSpan, lse.Span, logits.Shape[0], logits.Shape[1], vocabStart, zLoss, gradScale);
    }

    public void ChunkSumOfSquares(Tensor x, int chunk, Tensor partials)
    {
        using var _p = Profiler.Op("chunk_sum_of_squares", x, partials);
        ArgumentOutOfRangeException.ThrowIfLessThan(chunk, 1);
        var xs = x.Span;
        var ps = partials.Span;
        long chunks = (xs.Length + (long)chunk - 1) / chunk;
        if (ps.Length < chunks) throw new ArgumentException($"ChunkSumOfSquares: {partials.Describe()} holds fewer than {chunks} partials");
        unsafe
        {
            fixed (float* px = xs, pp = ps)
            {
                float* a = px, b = pp;
                int n = xs.Length;
                Parallelism.For((int)chunks, 8, (lo, hi) =>
                {
                    for (int c = lo; c < hi; c++)
                    {
                        int start = c * chunk, len = Math.Min(chunk, n - start);
                        b[c] = TensorPrimitives.SumOfSquares(new ReadOnlySpan<float>(a + start, len));
                    }
                });
            }
        }
    }

    public void GradNormFinalize(Tensor partials, float maxNorm, Tensor result)
    {
        using var _p = Profiler.Op("grad_norm_finalize", partials, result);
        double s = 0;
        foreach (float p in partials.Span) s += p;
        float sum = (float)s, norm = (float)Math.Sqrt(s);
        var r = result.Span;
        r[0] = sum;
        r[1] = norm;
        r[2] = !float.IsFinite(sum) ? float.NaN : maxNorm > 0 ? MathF.Min(1f, maxNorm / (norm + 1e-6f)) : 1f;
    }

    public void AdamW(Tensor master, Tensor grad, Tensor m, Tensor v, ReadOnlySpan<AdamWRun> runs, AdamWStep step, Tensor? gradScale = null)
    {
        using var _p = Profiler.Op("adamw", AdamWBytes(runs));
        float scale = step.GradScale;
        if (gradScale != null)
        {
            float s = gradScale.Span[0];
            if (!float.IsFinite(s)) return;
            scale *= s;
        }
        Span<float> pw = master.Span, pg = grad.Span, pm = m.Span, pv = v.Span;
        foreach (var r in runs)
        {
            int n = checked((int)r.Count);
            AdamWCpu.Update(pw.Slice((int)r.Master, n), pg.Slice((int)r.Grad, n), pm.Slice((int)r.State, n), pv.Slice((int)r.State, n),
                step.Lr, step.Beta1, step.Beta2, step.Eps, r.WeightDecay, step.Step, scale);
        }
    }

    public double Ewc(Tensor param, Tensor anchor, Tensor fisher, Tensor grad, float lambda)
    {
        using var _p = Profiler.Op("ewc", param, anchor, fisher, grad);
        var p = param.Span; var a = anchor.Span; var f = fisher.Span; var g = grad.Span;
        double penalty = 0;
        for (int i = 0; i < p.Length; i++)
        {
            float d = p[i] - a[i];
            penalty += (double)f[i] * d * d;
            g[i] += lambda * f[i] * d;
        }
        return 0.5 * lambda * penalty;
    }

    public void AddSquare(Tensor acc, Tensor x)
    {
        using var _p = Profiler.Op("add_square", acc, x);
        TensorPrimitives.FusedMultiplyAdd(x.Span, x.Span, acc.Span, acc.Span);
    }

    /// <summary>Bytes an AdamW launch touches: master, gradient, m and v (fp32) of every run.</summary>
    static long AdamWBytes(ReadOnlySpan<AdamWRun> runs)
    {
        long n = 0;
        foreach (var r in runs) n += r.Count;
        return 16 * n;
    }
}
