namespace Engine.Data.Extraction;

/// <summary>
/// Named counts (records read, pages extracted, records skipped by reason, …) kept in ordinal key order, so a report
/// written from them is the same bytes however the work was split. Not thread-safe: one per task, merged after.
/// </summary>
public sealed class Counters
{
    public SortedDictionary<string, long> Values { get; } = new(StringComparer.Ordinal);

    public void Add(string name, long n = 1)
    {
        if (n != 0) Values[name] = Values.GetValueOrDefault(name) + n;
    }

    public long this[string name] => Values.GetValueOrDefault(name);

    public void Add(Counters other)
    {
        foreach (var (k, v) in other.Values) Add(k, v);
    }

    public void Add(IReadOnlyDictionary<string, long> other)
    {
        foreach (var (k, v) in other) Add(k, v);
    }
}
