using Engine.Core;
using Engine.Core.Distributed;

namespace Engine.Parallel;

/// <summary>
/// The world of one process (no launcher, or world size 1): every collective is a copy or nothing, on any backend
/// (copies go through <see cref="IBackend.Copy"/>), completed before it returns.
/// </summary>
public sealed class SingleRankCommunicator(IBackend backend) : Communicator(0, 1, backend, "world", null)
{
    public override string Kind => "single";

    protected override ICommWork StartAllReduce(OpInfo op, Tensor buffer, ReduceOp reduce) => CompletedWork.Instance;

    protected override ICommWork StartReduceScatter(OpInfo op, Tensor input, Tensor output, ReduceOp reduce, bool inPlace)
    {
        if (!inPlace) Backend.Copy(input, output);
        return CompletedWork.Instance;
    }

    protected override ICommWork StartAllGather(OpInfo op, Tensor input, Tensor output, bool inPlace)
    {
        if (!inPlace) Backend.Copy(input, output);
        return CompletedWork.Instance;
    }

    protected override ICommWork StartBroadcast(OpInfo op, Tensor buffer, int root) => CompletedWork.Instance;

    // Unreachable: a one-rank world has no peer (the argument check refuses every peer).
    protected override ICommWork StartSend(OpInfo op, Tensor buffer, int peer) => throw new InvalidOperationException("no peer in a world of one");
    protected override ICommWork StartRecv(OpInfo op, Tensor buffer, int peer) => throw new InvalidOperationException("no peer in a world of one");

    protected override void RunBarrier(OpInfo op) { }
    protected override void RunAllReduce(OpInfo op, double[] values, ReduceOp reduce) { }
    protected override byte[] RunBroadcast(OpInfo op, byte[] data, int root) => data;
    protected override ICommunicator RunSplit(OpInfo op, int color, int key) => new SingleRankCommunicator(Backend);
}
