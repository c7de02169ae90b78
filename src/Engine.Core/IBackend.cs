
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
    double SumOfSquares(Tensor t);
    double Sum(Tensor t);

    void RmsNormForward(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps);
    /// <summary>dx overwritten, dw accumulated.</summary>
    void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate);

    /// <summary>x, y: [B*T, H*D]. inverse=true is the backward rotation. x and y may alias.</summary>
    void Rope(Tensor x, Tensor y, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse);

    void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, AttentionDims d);
    /// <summary>dq, dk, dv overwritten.</summary>
    void AttentionBackward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dq, Tensor dk, Tensor dv, AttentionDims d);

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

    /// <summary>
    /// Bytes this backend's tensors could occupy in total, for the fit check before training
    /// (Trainer.CheckFits): host memory available to the process on the CPU; on a GPU the device's free memory plus
    /// what this process's allocator already holds (the model's own weights are allocated before the check).
    /// </summary>
    long AvailableMemoryBytes() => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
}
