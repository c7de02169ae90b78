using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Training;

/// <summary>
/// One training step's loss bookkeeping, kept on the device until the step ends (issue 23: one host synchronization
/// per step). Each micro-batch's scalar loss and per-token losses are copied into one buffer as they are computed
/// (device-to-device: nothing waits), <see cref="FiniteGate"/> turns "every loss finite" into a device scalar that
/// AdamW folds into its clip factor, the optimizer's [Σg², norm, clip] joins the buffer, and <see cref="Read"/>
/// downloads all of it at once. The sums are then taken on the host in double, micro-batch by micro-batch in order —
/// exactly what `loss.Item()` per micro-batch summed before — so the CPU path stays bit-exact.
/// Layout: [A micro-batch losses | token losses of micro-batch 0, 1, … | 3 optimizer values].
/// </summary>
public sealed class StepLosses(IBackend backend) : IDisposable
{
    Tensor? buffer, scratch, gate;
    IReadOnlyList<Batch> batches = [];
    int tokens, resultAt;

    /// <summary>Starts a step over this rank's micro-batches (sizes the buffer; reused across steps).</summary>
    public void Begin(IReadOnlyList<Batch> micro)
    {
        batches = micro;
        tokens = micro.Sum(b => b.Ids.Length);
        resultAt = micro.Count + tokens;
        int need = resultAt + 3;
        if (buffer == null || buffer.Numel < need)
        {
            buffer?.Dispose();
            scratch?.Dispose();
            buffer = backend.Zeros([need]).Keep();
            scratch = backend.Zeros([Math.Max(1, micro.Count)]).Keep();
        }
        gate ??= backend.Zeros([1]).Keep();
    }

    /// <summary>Micro-batch <paramref name="j"/>'s loss (one value) and per-token losses ([rows·T], 0 where ignored).</summary>
    public void Add(int j, Tensor loss, Tensor tokenLosses)
    {
        int offset = batches.Count + batches.Take(j).Sum(b => b.Ids.Length);
        backend.Copy(loss, buffer!.Range(j, 1));
        backend.Copy(tokenLosses, buffer.Range(offset, tokenLosses.Numel));
    }

    /// <summary>
    /// A device scalar that is 0 when every micro-batch loss of the step is finite and NaN otherwise: Σ (0·loss)²
    /// (0·x is 0 for finite x, NaN for ±inf and NaN), summed over <paramref name="comm"/>'s ranks so that every rank
    /// gates alike. For <see cref="AdamW.Enqueue"/>.
    /// </summary>
    public Tensor FiniteGate(ICommunicator comm)
    {
        int a = batches.Count;
        if (a == 0) backend.Fill(gate!, 0f);
        else
        {
            var s = scratch!.Range(0, a);
            backend.Copy(buffer!.Range(0, a), s);
            backend.Scale(s, 0f);
            backend.ChunkSumOfSquares(s, a, gate!);
        }
        if (comm.WorldSize > 1) comm.AllReduce(gate!).Wait();
        return gate!;
    }

    /// <summary>Copies the optimizer's [Σg², norm, clip] (<see cref="AdamW.Enqueue"/>) into the buffer's tail.</summary>
    public void AddResult(Tensor result) => backend.Copy(result, buffer!.Range(resultAt, 3));

    /// <summary>The one read: the loss summed over micro-batches, per source (loss sum, valid tokens), and the optimizer's
    /// three values (NaN when <see cref="AddResult"/> was not called).</summary>
    public (double Loss, Dictionary<string, (double Sum, long Count)> PerSource, float[] Result) Read(bool withResult)
    {
        var host = new float[withResult ? resultAt + 3 : resultAt];
        if (host.Length > 0) backend.Download(buffer!.Range(0, host.Length), host);
        double loss = 0;
        var perSource = new Dictionary<string, (double Sum, long Count)>(StringComparer.Ordinal);
        int offset = batches.Count;
        for (int j = 0; j < batches.Count; j++)
        {
            var b = batches[j];
            loss += host[j];
            int rows = b.RowSources.Length, T = b.Ids.Length / rows;
            for (int r = 0; r < rows; r++)
            {
                double sum = 0; long count = 0;
                for (int t = 0; t < T; t++)
                    if (b.Targets[r * T + t] != -100) { sum += host[offset + r * T + t]; count++; }
                var acc = perSource.GetValueOrDefault(b.RowSources[r]);
                perSource[b.RowSources[r]] = (acc.Sum + sum, acc.Count + count);
            }
            offset += b.Ids.Length;
        }
        float[] result = withResult ? host[resultAt..] : [float.NaN, float.NaN, float.NaN];
        return (loss, perSource, result);
    }

    public void Dispose()
    {
        buffer?.Dispose(); scratch?.Dispose(); gate?.Dispose();
        buffer = scratch = gate = null;
    }
}
