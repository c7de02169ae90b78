using Engine.Core.Distributed;

namespace Engine.Training.Alignment;

/// <summary>
/// Host work over n items split across the ranks of a communicator — item i on rank i mod N, each rank's items in one
/// call — with every rank ending with every item's result: each rank's values at their items' places and zeros
/// elsewhere, summed in one all-reduce (exact: x + 0 = x). For per-sequence work whose inputs every rank holds
/// (PPO's rollouts and their statistics).
/// </summary>
public static class RankShards
{
    public static double[][] Map(ICommunicator comm, int count, Func<IReadOnlyList<int>, double[][]> compute)
    {
        int world = comm.WorldSize, rank = comm.Rank;
        var mine = Enumerable.Range(0, count).Where(i => i % world == rank).ToList();
        var part = mine.Count > 0 ? compute(mine) : [];
        if (part.Length != mine.Count) throw new InvalidOperationException($"{part.Length} results for {mine.Count} items");
        if (world == 1) return part;
        var lengths = new double[count];
        for (int k = 0; k < mine.Count; k++) lengths[mine[k]] = part[k].Length;
        comm.AllReduce(lengths);
        var offsets = new long[count + 1];
        for (int i = 0; i < count; i++) offsets[i + 1] = offsets[i] + (long)lengths[i];
        var all = new double[offsets[count]];
        for (int k = 0; k < mine.Count; k++) part[k].CopyTo(all, offsets[mine[k]]);
        comm.AllReduce(all);
        var result = new double[count][];
        for (int i = 0; i < count; i++) result[i] = all[(int)offsets[i]..(int)offsets[i + 1]];
        return result;
    }
}
