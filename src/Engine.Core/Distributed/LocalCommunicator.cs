namespace Engine.Core.Distributed;

/// <summary>The world of one process: every collective is a copy or nothing; Split returns a new world of one.</summary>
public sealed class LocalCommunicator(IBackend backend) : ICommunicator
{
    public int Rank => 0;
    public int WorldSize => 1;
    public string Kind => "local";
    public IBackend Backend { get; } = backend;
    public CommStats Stats { get; } = new();

    public ICommWork AllReduce(Tensor buffer, ReduceOp op = ReduceOp.Sum) => CompletedWork.Instance;

    public ICommWork ReduceScatter(Tensor input, Tensor output, ReduceOp op = ReduceOp.Sum) => Copy(input, output);

    public ICommWork AllGather(Tensor input, Tensor output) => Copy(input, output);

    public ICommWork Broadcast(Tensor buffer, int root) => Check(root);

    public ICommWork Send(Tensor buffer, int peer) => throw new ArgumentOutOfRangeException(nameof(peer), $"send to rank {peer} in a world of one rank");

    public ICommWork Recv(Tensor buffer, int peer) => throw new ArgumentOutOfRangeException(nameof(peer), $"receive from rank {peer} in a world of one rank");

    public void Barrier() { }

    public void AllReduce(Span<double> values, ReduceOp op = ReduceOp.Sum) { }

    public byte[] Broadcast(ReadOnlySpan<byte> data, int root)
    {
        Check(root);
        return data.ToArray();
    }

    public ICommunicator Split(int color, int key) => new LocalCommunicator(Backend);

    public void Abort(string reason) { }

    public void Dispose() { }

    ICommWork Copy(Tensor input, Tensor output)
    {
        if (input.Numel != output.Numel) throw new ArgumentException($"{input.Describe()} → {output.Describe()}: a world of one rank needs equal sizes");
        if (!ReferenceEquals(input.Storage, output.Storage) || input.Offset != output.Offset) Backend.Copy(input, output);
        return CompletedWork.Instance;
    }

    static ICommWork Check(int root) => root == 0 ? CompletedWork.Instance
        : throw new ArgumentOutOfRangeException(nameof(root), $"root {root} in a world of one rank");
}
