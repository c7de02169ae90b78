using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Training.Run;

/// <summary>
/// What one optimizer step's micro-batches report beside the loss, as named (sum, count) pairs: the language-model
/// loss per data source (Σ token losses, scored tokens), the alignment losses' accuracy (right, pairs), margin or clip
/// fraction (Σ, tokens). The loop reduces the loss and every pair across ranks in one collective, in the order of the
/// loss's account names (every rank has the same list), so the means are those of one process on the global batch.
/// The one place where a step's losses are summed.
/// <para>
/// Device-resident (issue 23: one host synchronization per step): after <see cref="Begin"/>, each micro-batch's scalar
/// loss (<see cref="AddLoss"/>) and per-token losses (<see cref="AddRows(Tensor, int[], string[])"/>) are copied into one
/// device buffer as they are computed (device-to-device: nothing waits), <see cref="FiniteGate"/> turns "every loss
/// finite" into a device scalar that AdamW folds into its clip factor, the optimizer's [Σg², norm, clip] joins the
/// buffer (<see cref="AddResult"/>), and <see cref="Read"/> downloads all of it at once. The sums are then taken on the
/// host in double, micro-batch by micro-batch and row by row in order — what a read per micro-batch summed before — so
/// the CPU path stays bit-exact. Without <see cref="Begin"/> (the pipeline schedule, the alignment losses' host values)
/// every account is added at once. Buffer layout: [micro-batch losses | their token losses in order | 3 optimizer values].
/// </para>
/// </summary>
public sealed class LossAccounting : IDisposable
{
    readonly Dictionary<string, (double Sum, long Count)> sums = new(StringComparer.Ordinal);
    readonly List<(int Offset, int[] Targets, string[] RowSources)> deferredRows = [];
    IBackend? device;
    Tensor? buffer, scratch, gate;
    int losses, tokenOffset, lossSlots, resultAt;

    public void Add(string name, double sum, long count)
    {
        var acc = sums.GetValueOrDefault(name);
        sums[name] = (acc.Sum + sum, acc.Count + count);
    }

    /// <summary>Per row of a [rows × T] micro-batch: the row's source gets its scored tokens' losses (targets -100 and
    /// below are not scored).</summary>
    public void AddRows(ReadOnlySpan<float> tokenLosses, int[] targets, string[] rowSources)
    {
        int rows = rowSources.Length, T = targets.Length / rows;
        for (int r = 0; r < rows; r++)
        {
            double sum = 0;
            long count = 0;
            for (int t = 0; t < T; t++)
                if (targets[r * T + t] >= 0) { sum += tokenLosses[r * T + t]; count++; }
            Add(rowSources[r], sum, count);
        }
    }

    /// <summary>As <see cref="AddRows(ReadOnlySpan{float}, int[], string[])"/> from the device's per-token losses: kept on
    /// the device until <see cref="Read"/> after <see cref="Begin"/>, else downloaded now.</summary>
    public void AddRows(Tensor tokenLosses, int[] targets, string[] rowSources)
    {
        if (device == null) { AddRows(tokenLosses.ToArray(), targets, rowSources); return; }
        if (tokenOffset + targets.Length > resultAt)
            throw new InvalidOperationException("a micro-batch's token losses exceed what Begin sized the step's buffer for");
        device.Copy(tokenLosses, buffer!.Range(tokenOffset, tokenLosses.Numel));
        deferredRows.Add((tokenOffset, targets, rowSources));
        tokenOffset += targets.Length;
    }

    /// <summary>Starts a device-resident step over this rank's micro-batches (sizes the buffer; reused across steps).</summary>
    public void Begin(IBackend backend, IReadOnlyList<Batch> micro)
    {
        device = backend;
        lossSlots = micro.Count;
        losses = 0;
        tokenOffset = lossSlots;
        resultAt = lossSlots + micro.Sum(b => b.Ids.Length);
        deferredRows.Clear();
        int need = resultAt + 3;
        if (buffer == null || buffer.Numel < need)
        {
            buffer?.Dispose();
            scratch?.Dispose();
            buffer = backend.Zeros([need]).Keep();
            scratch = backend.Zeros([Math.Max(1, lossSlots)]).Keep();
        }
        gate ??= backend.Zeros([1]).Keep();
    }

    /// <summary>A micro-batch's scalar loss (a [1] tensor), kept on the device (after <see cref="Begin"/>).</summary>
    public void AddLoss(Tensor loss)
    {
        if (device == null || losses >= lossSlots) throw new InvalidOperationException("AddLoss needs Begin with a slot for every micro-batch");
        device.Copy(loss, buffer!.Range(losses++, 1));
    }

    /// <summary>
    /// A device scalar that is 0 when every micro-batch loss of the step is finite and NaN otherwise: Σ (0·loss)²
    /// (0·x is 0 for finite x, NaN for ±inf and NaN), summed over <paramref name="comm"/>'s ranks so that every rank
    /// gates alike. For <see cref="AdamW.Enqueue"/>.
    /// </summary>
    public Tensor FiniteGate(ICommunicator comm)
    {
        var be = device ?? throw new InvalidOperationException("FiniteGate needs Begin");
        if (losses == 0) be.Fill(gate!, 0f);
        else
        {
            var s = scratch!.Range(0, losses);
            be.Copy(buffer!.Range(0, losses), s);
            be.Scale(s, 0f);
            be.ChunkSumOfSquares(s, losses, gate!);
        }
        if (comm.WorldSize > 1) comm.AllReduce(gate!).Wait();
        return gate!;
    }

    /// <summary>Copies the optimizer's [Σg², norm, clip] (<see cref="AdamW.Enqueue"/>) into the buffer's tail.</summary>
    public void AddResult(Tensor result) => device!.Copy(result, buffer!.Range(resultAt, 3));

    /// <summary>The step's one read (after <see cref="Begin"/>): the loss summed over micro-batches in order, the token
    /// losses folded into their sources' accounts, and the optimizer's three values (NaN without
    /// <see cref="AddResult"/>).</summary>
    public (double Loss, float[] Result) Read(bool withResult)
    {
        if (device == null) throw new InvalidOperationException("Read needs Begin");
        var host = new float[withResult ? resultAt + 3 : Math.Max(losses, tokenOffset)];
        if (host.Length > 0) device.Download(buffer!.Range(0, host.Length), host);
        double loss = 0;
        for (int j = 0; j < losses; j++) loss += host[j];
        foreach (var (offset, targets, rows) in deferredRows) AddRows(host.AsSpan(offset, targets.Length), targets, rows);
        deferredRows.Clear();
        device = null;   // the step's device part is read: later adds are immediate until the next Begin
        return (loss, withResult ? host[resultAt..] : [float.NaN, float.NaN, float.NaN]);
    }

    public void Clear()
    {
        sums.Clear();
        deferredRows.Clear();
        device = null;
    }

    /// <summary>Sums <paramref name="loss"/> and every account over <paramref name="comm"/> in one all-reduce, in the
    /// order of <paramref name="names"/>; returns the global loss. An account not in the list is a programming error.</summary>
    public double Reduce(ICommunicator comm, double loss, IReadOnlyList<string> names)
    {
        foreach (var name in sums.Keys)
            if (!names.Contains(name))
                throw new InvalidOperationException($"a micro-batch reported '{name}', which its loss does not list ({string.Join(", ", names)})");
        var v = new double[1 + 2 * names.Count];
        v[0] = loss;
        for (int k = 0; k < names.Count; k++)
        {
            var acc = sums.GetValueOrDefault(names[k]);
            v[1 + 2 * k] = acc.Sum;
            v[2 + 2 * k] = acc.Count;
        }
        comm.AllReduce(v);
        sums.Clear();
        for (int k = 0; k < names.Count; k++) sums[names[k]] = (v[1 + 2 * k], (long)v[2 + 2 * k]);
        return v[0];
    }

    /// <summary>Sum ÷ count of every account that counted something.</summary>
    public Dictionary<string, double> Means() =>
        sums.Where(kv => kv.Value.Count > 0).ToDictionary(kv => kv.Key, kv => kv.Value.Sum / kv.Value.Count, StringComparer.Ordinal);

    public void Dispose()
    {
        buffer?.Dispose(); scratch?.Dispose(); gate?.Dispose();
        buffer = scratch = gate = null;
    }
}
