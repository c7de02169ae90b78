using Engine.Core;

namespace Engine.Cuda.Backend;

/// <summary>
/// The CUDA backend's argument validation, done once at the IBackend boundary before anything is enqueued. Every
/// message names the op, the argument's role and the tensor (<see cref="Tensor.Describe"/>). Pure functions of
/// shapes and dtypes, so the CPU tests check them on host tensors.
/// </summary>
public static class CudaOpChecks
{
    public static void Is(Tensor t, string op, string role, DType expected)
    {
        if (t.DType != expected) throw new ArgumentException($"{op}: {role} {t.Describe()} must be {expected}");
    }

    public static void IsFloat(Tensor t, string op, string role)
    {
        if (t.DType == DType.I32) throw new ArgumentException($"{op}: {role} {t.Describe()} must be F32 or BF16");
    }

    public static void Numel(Tensor t, string op, string role, long expected)
    {
        if (t.Numel != expected) throw new ArgumentException($"{op}: {role} {t.Describe()} must hold {expected} elements, has {t.Numel}");
    }

    public static void SameNumel(Tensor a, Tensor b, string op)
    {
        if (a.Numel != b.Numel) throw new ArgumentException($"{op}: {a.Describe()} and {b.Describe()} differ in size ({a.Numel} vs {b.Numel} elements)");
    }

    /// <summary>(m, n, k) of c = op(a) op(b) for 2-D tensors; c fp32 or bf16.</summary>
    public static (int M, int N, int K) MatMul(Tensor a, bool transA, Tensor b, bool transB, Tensor c)
    {
        if (a.Rank != 2 || b.Rank != 2 || c.Rank != 2) throw new ArgumentException($"MatMul takes 2-D tensors: {a.Describe()}, {b.Describe()}, {c.Describe()}");
        IsFloat(a, "MatMul", "a"); IsFloat(b, "MatMul", "b"); IsFloat(c, "MatMul", "c");
        int m = transA ? a.Shape[1] : a.Shape[0], k = transA ? a.Shape[0] : a.Shape[1];
        int kb = transB ? b.Shape[1] : b.Shape[0], n = transB ? b.Shape[0] : b.Shape[1];
        if (k != kb || c.Shape[0] != m || c.Shape[1] != n)
            throw new ArgumentException($"MatMul shapes disagree: op(a) [{m}, {k}] from {a.Describe()}{(transA ? " (transposed)" : "")}, op(b) [{kb}, {n}] from {b.Describe()}{(transB ? " (transposed)" : "")}, c {c.Describe()}");
        return (m, n, k);
    }

    /// <summary>rows of [rows, cols] for x and gain w (cols = w.Numel).</summary>
    public static int RmsNormRows(Tensor x, Tensor w, Tensor y, Tensor rstd, string op)
    {
        Is(x, op, "x", DType.BF16); Is(y, op, "y/dx", DType.BF16); Is(rstd, op, "rstd", DType.F32); IsFloat(w, op, "w");
        if (w.Numel == 0 || x.Numel % w.Numel != 0) throw new ArgumentException($"{op}: x {x.Describe()} is not rows of w {w.Describe()}");
        long rows = x.Numel / w.Numel;
        SameNumel(x, y, op);
        Numel(rstd, op, "rstd", rows);
        return checked((int)rows);
    }

    public static void Rope(Tensor x, Tensor y, RopeParams p, int batch, int seqLen, int heads)
    {
        Is(x, "Rope", "x", DType.BF16); Is(y, "Rope", "y", DType.BF16);
        if (p.HeadDim <= 0 || p.HeadDim % 2 != 0) throw new ArgumentException($"Rope: head dim {p.HeadDim} must be even and positive");
        long n = (long)batch * seqLen * heads * p.HeadDim;
        Numel(x, "Rope", "x", n); Numel(y, "Rope", "y", n);
    }

    public static AttentionDims Attention(string op, AttentionDims d, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse)
    {
        d.Validate();
        try { Kernels.AttentionSelection.For(Kernels.AttentionImpl.V2, d.HeadDim); }
        catch (ArgumentException e) { throw new ArgumentException($"{op}: {e.Message}"); }
        long n = (long)d.Batch * d.SeqLen;
        foreach (var (t, role, row) in new[] { (q, "q", d.QRow), (k, "k", d.KvRow), (v, "v", d.KvRow), (o, "o", d.QRow) })
        {
            Is(t, op, role, DType.BF16);
            Numel(t, op, role, n * row);
        }
        Is(lse, op, "lse", DType.F32);
        Numel(lse, op, "lse", (long)d.Batch * d.Heads * d.SeqLen);
        return d;
    }

    public static int Decode(Tensor q, Tensor kCache, Tensor vCache, Tensor o, int heads, int kvHeads, int headDim, int offset)
    {
        const string op = "AttentionDecode";
        foreach (var (t, role) in new[] { (q, "q"), (kCache, "kCache"), (vCache, "vCache"), (o, "o") }) Is(t, op, role, DType.BF16);
        if (q.Rank != 2 || q.Shape[1] != heads * headDim) throw new ArgumentException($"{op}: q {q.Describe()} is not [n, heads*headDim = {heads * headDim}]");
        int n = q.Shape[0];
        ExtrasKernels.ValidateDecode(n, heads, kvHeads, headDim, offset);
        SameNumel(q, o, op);
        long need = (long)(offset + n) * kvHeads * headDim;
        if (kCache.Numel < need || vCache.Numel < need)
            throw new ArgumentException($"{op}: KV cache {kCache.Describe()} / {vCache.Describe()} holds fewer than offset + n = {offset + n} positions of {kvHeads * headDim}");
        return n;
    }

    public static (int Tokens, int Vocab, int Cols) Embedding(Tensor ids, Tensor table, Tensor rows, string op, DType rowsDType)
    {
        Is(ids, op, "ids", DType.I32);
        if (ids.Rank != 1) throw new ArgumentException($"{op}: ids {ids.Describe()} must be [N]");
        if (table.Rank != 2) throw new ArgumentException($"{op}: table {table.Describe()} must be [V, C]");
        Is(rows, op, op == "EmbeddingForward" ? "y" : "dy", rowsDType);
        Numel(rows, op, op == "EmbeddingForward" ? "y" : "dy", (long)ids.Shape[0] * table.Shape[1]);
        return (ids.Shape[0], table.Shape[0], table.Shape[1]);
    }

    public static (int Rows, int Vocab) CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor lse)
    {
        const string op = "CrossEntropy";
        if (logits.Rank != 2) throw new ArgumentException($"{op}: logits {logits.Describe()} must be [N, V]");
        Is(logits, op, "logits", DType.BF16);
        Is(targets, op, "targets", DType.I32);
        Is(losses, op, "losses", DType.F32);
        Is(lse, op, "lse", DType.F32);
        int rows = logits.Shape[0];
        Numel(targets, op, "targets", rows); Numel(losses, op, "losses", rows); Numel(lse, op, "lse", rows);
        return (rows, logits.Shape[1]);
    }
}
