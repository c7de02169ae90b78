using System.Numerics.Tensors;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Cpu;
using Tensor = Engine.Core.Tensor;

namespace Engine.Parallel;

/// <summary>
/// Element-wise reductions over host buffers, in one place (the thread communicator, MPI's Avg and bf16 operators,
/// the self-test reference).
/// <para><b>Precision.</b> fp32: accumulated in fp32 in rank order, ((x0 + x1) + x2) + …; Avg divides that sum by the
/// world size. bf16: widened to fp32, accumulated in rank order, rounded to bf16 once (nearest even). Max/Min are
/// exact. The same per-element arithmetic serves all-reduce and reduce-scatter, so a slice of one is bitwise the
/// other.</para>
/// </summary>
public static class HostReduce
{
    const int Block = 1024;

    /// <summary>dst[i] = op over q of sources[q][start + i] for i &lt; count. dst may be one of the sources' same
    /// range (each block is read before it is written).</summary>
    public static void Fold(IReadOnlyList<Tensor> sources, long start, long count, Tensor dst, long dstStart, ReduceOp op)
    {
        int n = sources.Count;
        Span<float> acc = stackalloc float[Block];
        Span<float> tmp = stackalloc float[Block];
        for (long b = 0; b < count; b += Block)
        {
            int len = (int)Math.Min(Block, count - b);
            var a = acc[..len];
            var t = tmp[..len];
            Load(sources[0], start + b, a);
            for (int q = 1; q < n; q++)
            {
                Load(sources[q], start + b, t);
                Combine(a, t, op);
            }
            if (op == ReduceOp.Avg) TensorPrimitives.Divide(a, n, a);
            Store(a, dst, dstStart + b);
        }
    }

    /// <summary>acc = acc op x (Avg accumulates a sum).</summary>
    public static void Combine(Span<float> acc, ReadOnlySpan<float> x, ReduceOp op)
    {
        switch (op)
        {
            case ReduceOp.Sum or ReduceOp.Avg: TensorPrimitives.Add(acc, x, acc); break;
            case ReduceOp.Max: TensorPrimitives.Max(acc, x, acc); break;
            case ReduceOp.Min: TensorPrimitives.Min(acc, x, acc); break;
        }
    }

    public static void Combine(Span<double> acc, ReadOnlySpan<double> x, ReduceOp op)
    {
        switch (op)
        {
            case ReduceOp.Sum or ReduceOp.Avg: TensorPrimitives.Add(acc, x, acc); break;
            case ReduceOp.Max: TensorPrimitives.Max(acc, x, acc); break;
            case ReduceOp.Min: TensorPrimitives.Min(acc, x, acc); break;
        }
    }

    /// <summary>Divides a summed buffer by the world size in place (Avg after a library sum).</summary>
    public static void DivideInPlace(Tensor t, int worldSize)
    {
        if (t.DType == DType.F32)
        {
            TensorPrimitives.Divide(t.Span, worldSize, t.Span);
            return;
        }
        var h = t.HalfSpan;
        for (int i = 0; i < h.Length; i++) h[i] = BFloat16.FromFloat(BFloat16.ToFloat(h[i]) / worldSize);
    }

    static void Load(Tensor t, long index, Span<float> dst)
    {
        if (t.DType == DType.F32) t.Span.Slice((int)index, dst.Length).CopyTo(dst);
        else BFloat16.ToFloat(t.HalfSpan.Slice((int)index, dst.Length), dst);
    }

    static void Store(ReadOnlySpan<float> src, Tensor t, long index)
    {
        if (t.DType == DType.F32) src.CopyTo(t.Span.Slice((int)index, src.Length));
        else BFloat16.FromFloat(src, t.HalfSpan.Slice((int)index, src.Length));
    }

    /// <summary>Copies elements [srcStart, srcStart + count) of src to dst at dstStart (same dtype).</summary>
    public static void CopyRange(Tensor src, long srcStart, Tensor dst, long dstStart, long count)
    {
        if (count == 0) return;
        if (src.DType == DType.F32) src.Span.Slice((int)srcStart, (int)count).CopyTo(dst.Span.Slice((int)dstStart, (int)count));
        else src.HalfSpan.Slice((int)srcStart, (int)count).CopyTo(dst.HalfSpan.Slice((int)dstStart, (int)count));
    }
}
