namespace Engine.Data;

/// <summary>
/// One training sequence. <see cref="Tokens"/> has length T+1: inputs are Tokens[0..T), targets Tokens[1..T+1).
/// <see cref="LossMask"/> has length T: LossMask[i] says whether target i (Tokens[i+1]) counts in the loss.
/// </summary>
public sealed record TrainingSample(int[] Tokens, bool[] LossMask, string Source)
{
    /// <summary>Sequence length T (number of input positions).</summary>
    public int Length => LossMask.Length;

    /// <summary>Number of targets that count in the loss.</summary>
    public int LossTokens
    {
        get
        {
            int n = 0;
            foreach (bool b in LossMask) if (b) n++;
            return n;
        }
    }
}

/// <summary>An endless, deterministic stream of samples whose position can be saved and restored.</summary>
public interface ISampleStream
{
    TrainingSample Next();
    SamplerState SaveState();
    void LoadState(SamplerState s);
}
