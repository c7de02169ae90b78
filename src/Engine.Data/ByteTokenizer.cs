using System.Text;

namespace Engine.Data;

/// <summary>
/// Byte-level stand-in: ids 0..255 are UTF-8 bytes, 256 is EOS, 257 BOS. Lossless for any string.
/// </summary>
public sealed class ByteTokenizer : ITokenizer
{
    public int VocabSize => 258;
    public int EosId => 256;
    public int BosId => 257;

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        var ids = new int[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) ids[i] = bytes[i];
        return ids;
    }

    public string Decode(ReadOnlySpan<int> ids)
    {
        var bytes = new List<byte>(ids.Length);
        foreach (int id in ids)
        {
            if ((uint)id < 256) bytes.Add((byte)id);
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }
}
