namespace Engine.Data.Tokenization;

/// <summary>
/// GPT-2's byte-to-character table: each of the 256 byte values maps to one printable character (space → 'Ġ',
/// newline → 'Ċ'), so byte-level tokens are ordinary strings in tokenizer.json.
/// </summary>
public static class ByteLevel
{
    static readonly char[] ByteToChar = Build();
    static readonly Dictionary<char, byte> CharToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    static char[] Build()
    {
        var map = new char[256];
        var direct = new bool[256];
        for (int b = '!'; b <= '~'; b++) direct[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) direct[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) direct[b] = true;
        int n = 0;
        for (int b = 0; b < 256; b++) map[b] = direct[b] ? (char)b : (char)(256 + n++);
        return map;
    }

    public static char Char(byte b) => ByteToChar[b];

    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        return string.Create(bytes.Length, bytes.ToArray(), (span, arr) =>
        {
            for (int i = 0; i < arr.Length; i++) span[i] = ByteToChar[arr[i]];
        });
    }

    /// <summary>The bytes a byte-level token string stands for; false when it holds a character outside the table.</summary>
    public static bool TryDecode(string token, out byte[] bytes)
    {
        bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            if (!CharToByte.TryGetValue(token[i], out bytes[i])) return false;
        }
        return true;
    }
}
