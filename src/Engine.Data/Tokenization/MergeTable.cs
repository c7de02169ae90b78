namespace Engine.Data.Tokenization;

/// <summary>
/// (left id, right id) → (rank, merged id), open addressing with linear probing over one array of 64-bit keys:
/// the BPE inner loop does one lookup per adjacent pair, and this is ~2x faster than a Dictionary of tuples.
/// A pair set twice keeps the later rank (as Hugging Face's BPE builds its merge map).
/// </summary>
internal sealed class MergeTable
{
    const long Empty = -1;   // never a key: ids are non-negative, so the top bit of a key is 0
    long[] _keys;
    int[] _ranks;
    int[] _ids;
    int _shift, _count;

    public MergeTable(int capacity)
    {
        int size = 16;
        while (size < capacity * 2) size <<= 1;
        _keys = new long[size];
        Array.Fill(_keys, Empty);
        _ranks = new int[size];
        _ids = new int[size];
        _shift = 64 - System.Numerics.BitOperations.Log2((uint)size);
    }

    public int Count => _count;

    static long Key(int a, int b) => ((long)a << 32) | (uint)b;

    int Slot(long key) => (int)(((ulong)key * 0x9E3779B97F4A7C15UL) >> _shift);

    public void Set(int a, int b, int rank, int id)
    {
        if ((_count + 1) * 2 > _keys.Length) Grow();
        long key = Key(a, b);
        int mask = _keys.Length - 1;
        for (int i = Slot(key); ; i = (i + 1) & mask)
        {
            if (_keys[i] == Empty) { _keys[i] = key; _count++; }
            else if (_keys[i] != key) continue;
            _ranks[i] = rank;
            _ids[i] = id;
            return;
        }
    }

    public bool TryGet(int a, int b, out int rank, out int id)
    {
        long key = Key(a, b);
        var keys = _keys;
        int mask = keys.Length - 1;
        for (int i = Slot(key); ; i = (i + 1) & mask)
        {
            long k = keys[i];
            if (k == key) { rank = _ranks[i]; id = _ids[i]; return true; }
            if (k == Empty) { rank = 0; id = 0; return false; }
        }
    }

    void Grow()
    {
        var (keys, ranks, ids) = (_keys, _ranks, _ids);
        _keys = new long[keys.Length * 2];
        Array.Fill(_keys, Empty);
        _ranks = new int[keys.Length * 2];
        _ids = new int[keys.Length * 2];
        _shift--;
        _count = 0;
        for (int i = 0; i < keys.Length; i++)
            if (keys[i] != Empty) Set((int)(keys[i] >> 32), (int)keys[i], ranks[i], ids[i]);
    }
}
