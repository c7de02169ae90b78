
namespace Engine.Core;

/// <summary>
/// The op interface every device implements. Semantics are fp32 math on row-major tensors; a backend may store
/// activations in bf16 (CUDA) as long as it meets the tolerances its tests state against the CPU reference.
/// "dst" arguments are overwritten unless the name says "accumulate". Inner code trusts shapes: the autograd
/// functions in <see cref="F"/> validate them once.
/// </summary>
public interface IBackend
{
    string Name { get; }

    /// <summary>
    /// Storage type of activations and their gradients (F32 on the CPU; BF16 on CUDA, where parameters, their
    /// gradients, optimizer state and statistics such as rstd/lse/losses stay F32). Ops keep their input's dtype.
    /// </summary>
    DType ActivationDType { get; }

    Tensor Empty(ReadOnlySpan<int> shape, DType dtype = DType.F32);
    Tensor Zeros(ReadOnlySpan<int> shape, DType dtype = DType.F32);

    void Upload(Tensor dst, ReadOnlySpan<float> src);
    void Upload(Tensor dst, ReadOnlySpan<int> src);
    void Download(Tensor src, Span<float> dst);
    void Fill(Tensor t, float value);
    void Copy(Tensor src, Tensor dst);

    /// <summary>c = alpha * op(a) op(b) + beta * c over the last two dims (a: [m,k] or [k,m]; b: [k,n] or [n,k]).</summary>
    void MatMul(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f);

    void Add(Tensor a, Tensor b, Tensor y);
    /// <summary>acc += alpha * x.</summary>
    void AddInPlace(Tensor acc, Tensor x, float alpha);
    void Scale(Tensor t, float s);
    /// <summary>t *= scalar[0] with the factor read on the device (a loss gradient seed): nothing is read back.</summary>
    void ScaleBy(Tensor t, Tensor scalar);
    double SumOfSquares(Tensor t);
    double Sum(Tensor t);
    /// <summary>result[0] (fp32) = <see cref="Sum"/>(x) / divisor, rounded once, on the device: nothing is read back
    /// (the scalar loss of a micro-batch; the training step reads its losses once at its end).</summary>
    void SumInto(Tensor x, Tensor result, float divisor);

    void RmsNormForward(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps);
    /// <summary>dx overwritten, dw accumulated.</summary>
    void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate);

    /// <summary>The residual add fused into the norm: h = x + residual, then y = RMSNorm(h) (rstd saved). One pass
    /// on a GPU; by default (the CPU) exactly <see cref="Add"/> then <see cref="RmsNormForward"/>.</summary>
    void RmsNormResidualForward(Tensor x, Tensor residual, Tensor w, Tensor h, Tensor y, Tensor rstd, float eps)
    {
        Add(x, residual, h);
        RmsNormForward(h, w, y, rstd, eps);
    }

    /// <summary><see cref="RmsNormBackward"/> over h with the gradient that reaches h through the residual stream
    /// added: dx = norm_backward(dy) + dresidual (dx must not alias dresidual). One kernel on a GPU; by default the
    /// two ops.</summary>
    void RmsNormResidualBackward(Tensor dy, Tensor h, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate, Tensor dresidual)
    {
        RmsNormBackward(dy, h, w, rstd, dx, dwAccumulate);
        AddInPlace(dx, dresidual, 1f);
    }

    /// <summary>x, y: [B*T, H*D]. inverse=true is the backward rotation. x and y may alias.</summary>
    void Rope(Tensor x, Tensor y, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse);

    void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, AttentionDims d);
    /// <summary>dq, dk, dv overwritten.</summary>
    void AttentionBackward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dq, Tensor dk, Tensor dv, AttentionDims d);

    /// <summary>
    /// Flash-style merge of one more key block's attention into a running result (context parallelism): per query row
    /// and head lse' = log(e^lse + e^lseB), o' = o·e^(lse − lse') + oB·e^(lseB − lse'); o, oB [B*T, H*D], lse, lseB fp32
    /// [B, H, T]; o and lse in place. The default runs the CPU reference through the host (a device kernel later).
    /// </summary>
    void AttentionMerge(Tensor o, Tensor lse, Tensor oBlock, Tensor lseBlock, int batch, int seqLen, int heads, int headDim)
    {
        var (ho, hl, hob, hlb) = (new float[o.Numel], new float[lse.Numel], new float[oBlock.Numel], new float[lseBlock.Numel]);
        Download(o, ho); Download(lse, hl); Download(oBlock, hob); Download(lseBlock, hlb);
        Engine.Cpu.Ops.AttentionCpu.Merge(ho, hl, hob, hlb, batch, seqLen, heads, headDim);
        Upload(o, ho);
        Upload(lse, hl);
    }

    /// <summary>KV-cache attention of n new queries (positions offset..) against cached k/v [offset+n, Hkv*D]; alibiMaxBias
    /// &gt; 0 adds ALiBi's bias as <see cref="AttentionDims.AlibiMaxBias"/> does.</summary>
    void AttentionDecode(Tensor q, Tensor kCache, Tensor vCache, Tensor o, int heads, int kvHeads, int headDim, int positionOffset, float alibiMaxBias = 0f);

    void SwiGluForward(Tensor gate, Tensor up, Tensor h);
    void SwiGluBackward(Tensor dh, Tensor gate, Tensor up, Tensor dgate, Tensor dup);

    void EmbeddingForward(Tensor ids, Tensor table, Tensor y);
    void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtableAccumulate);

    /// <summary>Per-row loss and logsumexp; with writeGradient the logits are replaced by gradScale * dloss/dlogits.</summary>
    /// <remarks>maxZLoss adds Baichuan 2's max-z term maxZLoss·(max_j x_ij)² per valid row (its gradient goes to the first
    /// maximal logit).</remarks>
    void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor lse, float zLoss, bool writeGradient, float gradScale, float maxZLoss = 0f);

    /// <summary>
    /// Vocabulary-parallel cross-entropy, first half: stats (fp32 [N, 3]) = per row of this rank's logits shard [N, Vr]
    /// (vocabulary rows [vocabStart, vocabStart + Vr)) its max, Σ exp(x − max) and the target's logit (0 when another
    /// rank holds the target). The default runs the CPU reference through the host (a device kernel later).
    /// </summary>
    void CrossEntropyShardStats(Tensor logits, Tensor targets, int vocabStart, Tensor stats)
    {
        int rows = logits.Shape[0], vocab = logits.Shape[1];
        var x = new float[logits.Numel];
        Download(logits, x);
        var s = new float[rows * 3];
        Engine.Cpu.Ops.CrossEntropyCpu.ShardStats(x, HostInts(targets), s, rows, vocab, vocabStart);
        Upload(stats, s);
    }

    /// <summary>
    /// Vocabulary-parallel cross-entropy, second half: the logits shard is overwritten by gradScale · d loss / d logits
    /// given each row's global logsumexp (fp32 [N]); ignored rows become zero. Default: the CPU reference via the host.
    /// </summary>
    void CrossEntropyShardGradient(Tensor logits, Tensor targets, int vocabStart, Tensor lse, float zLoss, float gradScale)
    {
        int rows = logits.Shape[0], vocab = logits.Shape[1];
        var x = new float[logits.Numel];
        Download(logits, x);
        var z = new float[rows];
        Download(lse, z);
        Engine.Cpu.Ops.CrossEntropyCpu.ShardGradient(x, HostInts(targets), z, rows, vocab, vocabStart, zLoss, gradScale);
        Upload(logits, x);
    }

    /// <summary>An int32 tensor's values on the host.</summary>
    private int[] HostInts(Tensor t)
    {
        var f = new float[t.Numel];
        Download(t, f);
        var r = new int[f.Length];
        for (int i = 0; i < f.Length; i++) r[i] = (int)f[i];
        return r;
    }

    /// <summary>
    /// partials[i] (fp32) = Σ x² over elements [i·chunk, (i+1)·chunk) of x; the last chunk may be shorter. A chunk's
    /// value depends only on its elements (fixed order), so norms over flat buffers are layout-independent.
    /// </summary>
    void ChunkSumOfSquares(Tensor x, int chunk, Tensor partials);

    /// <summary>
    /// result (fp32 [3]) = [s, √s, clip] for s = Σ partials summed in a fixed order; clip = min(1, maxNorm / (√s + 1e-6))
    /// when maxNorm &gt; 0, else 1; clip is NaN when s is not finite. On a device nothing is read back.
    /// </summary>
    void GradNormFinalize(Tensor partials, float maxNorm, Tensor result);

    /// <summary>
    /// Multi-tensor AdamW over runs of flat fp32 buffers (PyTorch's formula; see AdamWCpu): each run updates
    /// master, m and v in place from grad. <paramref name="gradScale"/> (an fp32 scalar tensor, e.g. the clip factor
    /// of <see cref="GradNormFinalize"/>) multiplies step.GradScale; when it is not finite nothing is written.
    /// </summary>
    void AdamW(Tensor master, Tensor grad, Tensor m, Tensor v, ReadOnlySpan<AdamWRun> runs, AdamWStep step, Tensor? gradScale = null);

    /// <summary>EWC: grad += lambda * fisher * (param - anchor); returns lambda/2 * sum fisher * (param - anchor)^2.</summary>
    double Ewc(Tensor param, Tensor anchor, Tensor fisher, Tensor grad, float lambda);

    /// <summary>acc += x * x (elementwise; Fisher accumulation).</summary>
    void AddSquare(Tensor acc, Tensor x);

    // ---- fused projections (issue 23): one GEMM for q|k|v and one for gate|up, whose [N, Σout] outputs the ops
    // below read in place. The defaults compose the ops above through column copies (slow, exact: the CPU and tests);
    // a GPU backend runs its kernels on the fused rows directly (row strides) and says so with FusesProjections.

    /// <summary>Whether the model runs q|k|v and gate|up as one GEMM each on this backend (F.FusedLinear,
    /// F.FusedQkvAttention, F.FusedSwiGlu). The CPU keeps the separate ops: its results stay bit-exact with the
    /// golden losses.</summary>
    bool FusesProjections => false;

    /// <summary>dst[:, dstCol, +cols) = src[:, srcCol, +cols) for rank-2 tensors of one dtype.</summary>
    void CopyColumns(Tensor src, int srcCol, Tensor dst, int dstCol, int cols)
    {
        int rows = src.Shape[0], sw = src.Shape[1], dw = dst.Shape[1];
        for (int r = 0; r < rows; r++) Copy(src.Range((long)r * sw + srcCol, cols), dst.Range((long)r * dw + dstCol, cols));
    }

    /// <summary>RoPE in place on columns [col, col + heads·D) of x [B·T, row] (q or k inside a fused q|k|v row).</summary>
    void RopeColumns(Tensor x, int col, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse)
    {
        int width = heads * p.HeadDim;
        using var t = Empty([x.Shape[0], width], x.DType);
        CopyColumns(x, col, t, 0, width);
        Rope(t, t, p, batch, seqLen, heads, positionOffset, inverse);
        CopyColumns(t, 0, x, col, width);
    }

    /// <summary>Causal attention with q, k, v read from a fused buffer qkv [B·T, (H + 2·Hkv)·D] (q | k | v).</summary>
    void AttentionForwardFused(Tensor qkv, Tensor o, Tensor lse, AttentionDims d)
    {
        int n = qkv.Shape[0];
        using var q = Empty([n, d.QRow], qkv.DType);
        using var k = Empty([n, d.KvRow], qkv.DType);
        using var v = Empty([n, d.KvRow], qkv.DType);
        CopyColumns(qkv, 0, q, 0, d.QRow); CopyColumns(qkv, d.QRow, k, 0, d.KvRow); CopyColumns(qkv, d.QRow + d.KvRow, v, 0, d.KvRow);
        AttentionForward(q, k, v, o, lse, d);
    }

    /// <summary>The backward of <see cref="AttentionForwardFused"/>: dq | dk | dv written into dqkv (same layout).</summary>
    void AttentionBackwardFused(Tensor dout, Tensor qkv, Tensor o, Tensor lse, Tensor dqkv, AttentionDims d)
    {
        int n = qkv.Shape[0];
        using var q = Empty([n, d.QRow], qkv.DType);
        using var k = Empty([n, d.KvRow], qkv.DType);
        using var v = Empty([n, d.KvRow], qkv.DType);
        CopyColumns(qkv, 0, q, 0, d.QRow); CopyColumns(qkv, d.QRow, k, 0, d.KvRow); CopyColumns(qkv, d.QRow + d.KvRow, v, 0, d.KvRow);
        using var dq = Empty([n, d.QRow], qkv.DType);
        using var dk = Empty([n, d.KvRow], qkv.DType);
        using var dv = Empty([n, d.KvRow], qkv.DType);
        AttentionBackward(dout, q, k, v, o, lse, dq, dk, dv, d);
        CopyColumns(dq, 0, dqkv, 0, d.QRow); CopyColumns(dk, 0, dqkv, d.QRow, d.KvRow); CopyColumns(dv, 0, dqkv, d.QRow + d.KvRow, d.KvRow);
    }

    /// <summary>h [N, F] = silu(gate)·up for gu [N, 2F] whose rows are gate | up (one GEMM's output).</summary>
    void SwiGluFusedForward(Tensor gu, Tensor h)
    {
        int n = gu.Shape[0], f = gu.Shape[1] / 2;
        using var g = Empty([n, f], gu.DType);
        using var u = Empty([n, f], gu.DType);
        CopyColumns(gu, 0, g, 0, f); CopyColumns(gu, f, u, 0, f);
        SwiGluForward(g, u, h);
    }

    /// <summary>dgu [N, 2F] (dgate | dup per row) from dh [N, F].</summary>
    void SwiGluFusedBackward(Tensor dh, Tensor gu, Tensor dgu)
    {
        int n = gu.Shape[0], f = gu.Shape[1] / 2;
        using var g = Empty([n, f], gu.DType);
        using var u = Empty([n, f], gu.DType);
        CopyColumns(gu, 0, g, 0, f); CopyColumns(gu, f, u, 0, f);
        using var dg = Empty([n, f], gu.DType);
        using var du = Empty([n, f], gu.DType);
        SwiGluBackward(dh, g, u, dg, du);
        CopyColumns(dg, 0, dgu, 0, f); CopyColumns(du, 0, dgu, f, f);
    }

    /// <summary>
    /// Bytes this backend's tensors could occupy in total, for the fit check before training
    /// (Trainer.CheckFits): host memory available to the process on the CPU; on a GPU the device's free memory plus
    /// what this process's allocator already holds (the model's own weights are allocated before the check).
    /// </summary>
    long AvailableMemoryBytes() => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
}
