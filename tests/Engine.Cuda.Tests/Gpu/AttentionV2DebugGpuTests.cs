using System.Diagnostics;
using Engine.Cuda.Kernels;

namespace Engine.Cuda.Tests.Gpu;

/// <summary>
/// The ordered dQ sum of attention_v2.cu's backward waits on a flag its predecessor key tile publishes. Built with
/// ENGINE_DEBUG_KERNELS the wait is bounded and traps: a backward whose first tile never starts must fail, not hang.
/// A trap ends the CUDA context, so the launch runs in a child process (this test app, the explicit test below) with
/// the debug build's kernels (ENGINE_KERNELS_DEBUG_DIR: gpu_run.sh phase 2 builds them). Skipped without a GPU or
/// without that build.
/// </summary>
[Collection("gpu")]
public class AttentionV2DebugGpuTests
{
    const string ChildVariable = "ENGINE_TEST_TRAP_CHILD", DebugDirVariable = "ENGINE_KERNELS_DEBUG_DIR";
    const string Child = "Engine.Cuda.Tests.Gpu.AttentionV2DebugGpuTests.ChildBackwardWithoutItsFirstTile";

    [Fact]
    public async Task DqSpinWaitTrapsInsteadOfHanging()
    {
        GpuTest.Require();
        string? dir = Environment.GetEnvironmentVariable(DebugDirVariable);
        if (dir is null || !File.Exists(Path.Combine(dir, "attention_v2.fatbin")))
            Assert.Skip($"needs a debug build of the kernels in {DebugDirVariable} (cmake -DENGINE_DEBUG_KERNELS=ON; gpu_run.sh --phase 2 builds it)");
        string app = Path.Combine(AppContext.BaseDirectory, "Engine.Cuda.Tests");
        string xml = Path.Combine(Directory.CreateTempSubdirectory("engine-trap-").FullName, "child.xml");
        var psi = new ProcessStartInfo(app, ["-explicit", "on", "-method", Child, "-noColor", "-xml", xml])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.Environment[ChildVariable] = "1";
        psi.Environment["ENGINE_KERNELS_DIR"] = dir;
        var ct = TestContext.Current.CancellationToken;
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEndAsync(ct);
        var errors = p.StandardError.ReadToEndAsync(ct);
        // the debug wait traps after 2^25 polls (2 s at the very least, ~10 s typical); 100 s means it hangs
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(TimeSpan.FromSeconds(100));
        try { await p.WaitForExitAsync(limit.Token); }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            p.Kill(true);
            Assert.Fail("the child's backward still waits after 100 s: the debug build's dQ spin-wait did not trap");
        }
        string log = await output + await errors;
        Assert.True(p.ExitCode == 0, $"child exit {p.ExitCode}:\n{log}");
        Assert.Contains("passed=\"1\"", File.ReadAllText(xml));
    }

    /// <summary>Run only as the child of <see cref="DqSpinWaitTrapsInsteadOfHanging"/>: one head, two key tiles; the
    /// tile holding ticket 0 never starts, so key tile 1 waits on its flag until the debug build traps.</summary>
    [Fact(Explicit = true)]
    public void ChildBackwardWithoutItsFirstTile()
    {
        if (Environment.GetEnvironmentVariable(ChildVariable) != "1") Assert.Skip("the child process of DqSpinWaitTrapsInsteadOfHanging");
        var g = GpuTest.Require();
        int B = 1, T = 256, H = 1, Hkv = 1, D = 64;
        var shape = new AttentionShape(B, T, H, Hkv, D);
        var rng = new Random(5);
        long n = (long)B * T * H * D;
        using var q = g.UploadBf16(Data.Bf16Values(rng, n));
        using var k = g.UploadBf16(Data.Bf16Values(rng, n));
        using var v = g.UploadBf16(Data.Bf16Values(rng, n));
        using var dout = g.UploadBf16(Data.Bf16Values(rng, n));
        using var o = g.Zeros(2 * n);
        using var lse = g.Zeros(shape.LseBytes);
        using var delta = g.Zeros(shape.LseBytes);
        using var acc = g.Zeros(AttentionV2Kernels.DqAccumBytes(shape));
        using var sync = g.Zeros(AttentionV2Kernels.SyncBytes(shape));
        using var dq = g.Zeros(2 * n);
        using var dk = g.Zeros(2 * n);
        using var dv = g.Zeros(2 * n);
        var att = g.Kernels.AttentionV2;
        att.HopperPath = false;
        att.Forward(g.Stream, shape, q.Ptr, k.Ptr, v.Ptr, o.Ptr, lse.Ptr, causal: false);
        g.Stream.Synchronize();
        Assert.True(T / KernelTraits.AttnV2BwdBlockN(D) >= 2, "two key tiles: the second waits on the first");
        Assert.Throws<CudaException>(() =>
        {
            att.BackwardWithMissingPredecessors(g.Stream, shape, q.Ptr, k.Ptr, v.Ptr, o.Ptr, lse.Ptr, dout.Ptr, dq.Ptr, dk.Ptr, dv.Ptr,
                delta.Ptr, acc.Ptr, sync.Ptr, causal: false, skippedTickets: 1);
            g.Stream.Synchronize();
        });
    }
}
