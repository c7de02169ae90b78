using Engine.Core;

namespace Engine.Cuda.Backend;

/// <summary>
/// Device copies of RoPE inverse frequencies, one per distinct table. The kernel takes inv_freq on the device and
/// divides positions by a linear factor itself, so only NTK scaling changes the table: the key is (head dim, theta,
/// NTK factor or 1), and linear scaling or none with the same (D, theta) share one upload. Values are exactly
/// <see cref="RopeParams.InverseFrequencies"/> of the CPU reference (double math, stored fp32).
/// </summary>
public sealed class RopeFrequencyCache : IDisposable
{
    /// <summary>What determines inv_freq.</summary>
    public readonly record struct Key(int HeadDim, double Theta, double NtkFactor);

    private readonly Func<float[], DeviceBuffer> _upload;
    private readonly Dictionary<Key, DeviceBuffer> _tables = new();
    private readonly Lock _gate = new();

    /// <param name="upload">Copies a host table to a new device buffer (the backend: allocator + stream copy).</param>
    public RopeFrequencyCache(Func<float[], DeviceBuffer> upload) => _upload = upload;

    public static Key KeyOf(RopeParams p) => new(p.HeadDim, p.Theta, p.Scaling == RopeScalingKind.Ntk ? p.Factor : 1.0);

    /// <summary>The kernel's position divisor: the factor for linear scaling, else 1 (same fp32 value the CPU divides by).</summary>
    public static float LinearFactor(RopeParams p) => p.Scaling == RopeScalingKind.Linear ? (float)p.Factor : 1f;

    /// <summary>The host table for a key (what is uploaded).</summary>
    public static float[] HostTable(RopeParams p) => (p with { Scaling = p.Scaling == RopeScalingKind.Ntk ? RopeScalingKind.Ntk : RopeScalingKind.None }).InverseFrequencies();

    public int Count { get { lock (_gate) return _tables.Count; } }

    /// <summary>Device inv_freq [D/2] fp32 for <paramref name="p"/>, uploaded on first use.</summary>
    public DevicePtr Get(RopeParams p)
    {
        var key = KeyOf(p);
        lock (_gate)
        {
            if (!_tables.TryGetValue(key, out var buf))
            {
                buf = _upload(HostTable(p));
                _tables[key] = buf;
            }
            return buf.Ptr;
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            foreach (var b in _tables.Values) b.Dispose();
            _tables.Clear();
        }
    }
}
