using Engine.Core;

namespace Engine.Tests;

/// <summary>
/// The CPU backend behind an <see cref="IBackend"/> of its own, for fake devices in tests (counting host reads, claiming
/// fused projections): tensors it makes carry it as their backend, every op runs on <see cref="CpuBackend"/>, and the
/// members a fake needs to observe are virtual. The interface's default members (fused-projection ops) are not
/// implemented here, so a fake runs their defaults — through its own <see cref="CopyColumns"/>.
/// </summary>
public class CpuDelegatingBackend : IBackend
{
    protected static readonly CpuBackend Cpu = CpuBackend.Instance;

    public virtual string Name => "delegating-cpu";
    public DType ActivationDType => DType.F32;
    public virtual bool FusesProjections => false;
    public Tensor Empty(ReadOnlySpan<int> shape, DType dtype = DType.F32) => Tensor.Create(new CpuStorage(this, dtype, Shape.Numel(shape), zero: false), shape);
    public Tensor Zeros(ReadOnlySpan<int> shape, DType dtype = DType.F32) => Tensor.Create(new CpuStorage(this, dtype, Shape.Numel(shape), zero: true), shape);
    public void Upload(Tensor dst, ReadOnlySpan<float> src) => Cpu.Upload(dst, src);
    public void Upload(Tensor dst, ReadOnlySpan<int> src) => Cpu.Upload(dst, src);
    public virtual void Download(Tensor src, Span<float> dst) => Cpu.Download(src, dst);
    public void Fill(Tensor t, float value) => Cpu.Fill(t, value);
    public void Copy(Tensor src, Tensor dst) => Cpu.Copy(src, dst);
    public virtual void CopyColumns(Tensor src, int srcCol, Tensor dst, int dstCol, int cols) => ((IBackend)Cpu).CopyColumns(src, srcCol, dst, dstCol, cols);
    public void MatMul(Tensor a, bool transA, Tensor b, bool transB, Tensor c, float alpha = 1f, float beta = 0f) => Cpu.MatMul(a, transA, b, transB, c, alpha, beta);
    public void Add(Tensor a, Tensor b, Tensor y) => Cpu.Add(a, b, y);
    public void AddInPlace(Tensor acc, Tensor x, float alpha) => Cpu.AddInPlace(acc, x, alpha);
    public void Scale(Tensor t, float s) => Cpu.Scale(t, s);
    public void ScaleBy(Tensor t, Tensor scalar) => Cpu.ScaleBy(t, scalar);
    public virtual double SumOfSquares(Tensor t) => Cpu.SumOfSquares(t);
    public virtual double Sum(Tensor t) => Cpu.Sum(t);
    public void SumInto(Tensor x, Tensor result, float divisor) => Cpu.SumInto(x, result, divisor);
    public void RmsNormForward(Tensor x, Tensor w, Tensor y, Tensor rstd, float eps) => Cpu.RmsNormForward(x, w, y, rstd, eps);
    public void RmsNormBackward(Tensor dy, Tensor x, Tensor w, Tensor rstd, Tensor dx, Tensor dwAccumulate) => Cpu.RmsNormBackward(dy, x, w, rstd, dx, dwAccumulate);
    public void Rope(Tensor x, Tensor y, RopeParams p, int batch, int seqLen, int heads, int positionOffset, bool inverse) => Cpu.Rope(x, y, p, batch, seqLen, heads, positionOffset, inverse);
    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, AttentionDims d) => Cpu.AttentionForward(q, k, v, o, lse, d);
    public void AttentionBackward(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor dq, Tensor dk, Tensor dv, AttentionDims d) =>
        Cpu.AttentionBackward(dout, q, k, v, o, lse, dq, dk, dv, d);
    public void AttentionDecode(Tensor q, Tensor kCache, Tensor vCache, Tensor o, int heads, int kvHeads, int headDim, int positionOffset, float alibiMaxBias = 0f) =>
        Cpu.AttentionDecode(q, kCache, vCache, o, heads, kvHeads, headDim, positionOffset, alibiMaxBias);
    public void SwiGluForward(Tensor gate, Tensor up, Tensor h) => Cpu.SwiGluForward(gate, up, h);
    public void SwiGluBackward(Tensor dh, Tensor gate, Tensor up, Tensor dgate, Tensor dup) => Cpu.SwiGluBackward(dh, gate, up, dgate, dup);
    public void EmbeddingForward(Tensor ids, Tensor table, Tensor y) => Cpu.EmbeddingForward(ids, table, y);
    public void EmbeddingBackward(Tensor ids, Tensor dy, Tensor dtableAccumulate) => Cpu.EmbeddingBackward(ids, dy, dtableAccumulate);
    public virtual void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor lse, float zLoss, bool writeGradient, float gradScale, float maxZLoss = 0f) =>
        Cpu.CrossEntropy(logits, targets, losses, lse, zLoss, writeGradient, gradScale, maxZLoss);
    public void ChunkSumOfSquares(Tensor x, int chunk, Tensor partials) => Cpu.ChunkSumOfSquares(x, chunk, partials);
    public void GradNormFinalize(Tensor partials, float maxNorm, Tensor result) => Cpu.GradNormFinalize(partials, maxNorm, result);
    public void AdamW(Tensor master, Tensor grad, Tensor m, Tensor v, ReadOnlySpan<AdamWRun> runs, AdamWStep step, Tensor? gradScale = null) =>
        Cpu.AdamW(master, grad, m, v, runs, step, gradScale);
    public virtual double Ewc(Tensor param, Tensor anchor, Tensor fisher, Tensor grad, float lambda) => Cpu.Ewc(param, anchor, fisher, grad, lambda);
    public void AddSquare(Tensor acc, Tensor x) => Cpu.AddSquare(acc, x);
}
