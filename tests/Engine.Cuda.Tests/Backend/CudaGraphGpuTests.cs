using Engine.Core;

namespace Engine.Cuda.Tests.Backend;

/// <summary>
/// CUDA-graph capture (issue 23): a forward + backward through cuBLAS GEMMs, the fused gate|up SwiGLU and the fused
/// residual RMSNorm, then the clip norm and an AdamW update, is captured once and replayed on new inputs (written into
/// the captured input tensors before each replay); after every replay the state equals the same work run eagerly on a
/// twin state, bit for bit — the same kernels on the same data. Uploads and host reads inside a capture are refused
/// with a message. Skipped without a GPU.
/// </summary>
[Collection("gpu")]
public class CudaGraphGpuTests
{
    const int N = 64, C = 128, F = 256;

    /// <summary>One twin of the state the step reads and writes.</summary>
    sealed class State
    {
        public required Tensor X, Dy, Wgu, Wdown, Norm, GradGu, GradDown, M, V, Partials, Result;

        /// <summary>y = rmsnorm(x + swiglu(x W_guᵀ) W_downᵀ); backward from dy (also the residual stream's gradient);
        /// the clip factor of W_gu's gradient and an AdamW step on W_gu reading it on the device.</summary>
        public void Step(IBackend be)
        {
            using var scope = new TensorScope();
            var gu = be.Empty([N, 2 * F], DType.BF16);
            be.MatMul(X, false, Wgu, true, gu);
            var h = be.Empty([N, F], DType.BF16);
            be.SwiGluFusedForward(gu, h);
            var down = be.Empty([N, C], DType.BF16);
            be.MatMul(h, false, Wdown, true, down);
            var hsum = be.Empty([N, C], DType.BF16);
            var y = be.Empty([N, C], DType.BF16);
            var rstd = be.Empty([N]);
            be.RmsNormResidualForward(X, down, Norm, hsum, y, rstd, 1e-5f);
            var dsum = be.Empty([N, C], DType.BF16);
            var dnorm = be.Zeros([C]);
            be.RmsNormResidualBackward(Dy, hsum, Norm, rstd, dsum, dnorm, Dy);
            be.MatMul(dsum, true, h, false, GradDown, 1f, 1f);
            var dh = be.Empty([N, F], DType.BF16);
            be.MatMul(dsum, false, Wdown, false, dh);
            var dgu = be.Empty([N, 2 * F], DType.BF16);
            be.SwiGluFusedBackward(dh, gu, dgu);
            be.MatMul(dgu, true, X, false, GradGu, 1f, 1f);
            be.ChunkSumOfSquares(GradGu, 4096, Partials);
            be.GradNormFinalize(Partials, 1f, Result);
            // the step count is a kernel argument: a captured AdamW replays step 1's bias correction (see docs/KERNELS.md)
            be.AdamW(Wgu, GradGu, M, V, [new AdamWRun(0, 0, 0, Wgu.Numel, 0.1f)], new AdamWStep(1e-3f, 0.9f, 0.95f, 1e-8f, 0f, 1), Result.Range(2, 1));
        }
    }

    [Fact]
    public void ACapturedStepReplaysLikeTheEagerStepOnNewInputs()
    {
        var be = GpuBackend.Require();
        var rng = new Random(9);
        float[] wgu = Data.Bf16Values(rng, 2 * F * C, 0.1f), wdown = Data.Bf16Values(rng, C * F, 0.1f), norm = Data.Bf16Values(rng, C, 1f);
        State Twin()
        {
            Tensor Kept(Tensor t) => t.Keep();
            var s = new State
            {
                X = Kept(be.Zeros([N, C], DType.BF16)),
                Dy = Kept(be.Zeros([N, C], DType.BF16)),
                Wgu = Kept(be.Empty([2 * F, C])),
                Wdown = Kept(be.Empty([C, F])),
                Norm = Kept(be.Empty([C])),
                GradGu = Kept(be.Zeros([2 * F, C])),
                GradDown = Kept(be.Zeros([C, F])),
                M = Kept(be.Zeros([2 * F * C])),
                V = Kept(be.Zeros([2 * F * C])),
                Partials = Kept(be.Zeros([(2 * F * C + 4095) / 4096])),
                Result = Kept(be.Zeros([3])),
            };
            be.Upload(s.Wgu, wgu); be.Upload(s.Wdown, wdown); be.Upload(s.Norm, norm);
            return s;
        }
        var graphed = Twin();
        var eager = Twin();
        // a warm-up step on both twins (zero inputs): the steady state is what is captured — the optimizer's run table
        // and the bf16 shadows exist by then, as after a real training step
        graphed.Step(be);
        eager.Step(be);

        using var graph = be.Capture(() => graphed.Step(be));   // records only: nothing ran
        Assert.True(graph.Nodes > 8, $"{graph.Nodes} nodes captured");
        for (int replay = 0; replay < 3; replay++)
        {
            float[] x = Data.Bf16Values(rng, N * C, 2f), dy = Data.Bf16Values(rng, N * C, 1f);
            foreach (var st in new[] { graphed, eager }) { be.Upload(st.X, x); be.Upload(st.Dy, dy); }
            graph.Replay(be.Stream);
            eager.Step(be);
            Assert.Equal(eager.GradGu.ToArray(), graphed.GradGu.ToArray());       // accumulated over the replays alike
            Assert.Equal(eager.GradDown.ToArray(), graphed.GradDown.ToArray());
            Assert.Equal(eager.Result.ToArray(), graphed.Result.ToArray());
            Assert.Equal(eager.Wgu.ToArray(), graphed.Wgu.ToArray());             // the update ran in the graph too
        }
        Assert.Equal(3, graph.Replays);
        Assert.True(graph.Pool.Bytes > 0);

        // uploads and host reads inside a capture are refused, and the backend works afterwards
        var t = be.Empty([4]).Keep();
        Assert.Contains("upload inside a CUDA-graph capture", Assert.Throws<InvalidOperationException>(() => be.Capture(() => be.Upload(t, [1f, 2f, 3f, 4f]))).Message);
        Assert.Contains("host wait inside a CUDA-graph capture", Assert.Throws<InvalidOperationException>(() => be.Capture(() => t.ToArray())).Message);
        be.Upload(t, [1f, 2f, 3f, 4f]);
        Assert.Equal([1f, 2f, 3f, 4f], t.ToArray());
    }
}
