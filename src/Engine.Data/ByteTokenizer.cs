using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Data.Tokenization;

namespace Engine.Data;

/// <summary>
/// Byte-level stand-in: ids 0..255 are UTF-8 bytes, 256 is EOS, 257 BOS. Lossless for any string.
/// </summary>
public sealed class ByteTokenizer : ITokenizer
{
    public const string EosToken = "<|endoftext|>", BosToken = "<|startoftext|>";

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

    public string? IdToToken(int id) => id switch
    {
        >= 0 and < 256 => ByteLevel.Char((byte)id).ToString(),
        256 => EosToken,
        257 => BosToken,
        _ => null,
    };

    /// <summary>
    /// This tokenizer as a Hugging Face tokenizer.json: a byte-level BPE with the 256 byte tokens at ids 0–255 and no
    /// merges (so every byte is its own token, as here), EOS 256 and BOS 257 as special tokens. transformers,
    /// tokenizers and llama.cpp (through the GGUF vocabulary) then produce the engine's ids.
    /// </summary>
    public static string ToTokenizerJson()
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteLevel.Char((byte)b).ToString()] = b;
        JsonObject Added(int id, string content) => new()
        {
            ["id"] = id,
            ["content"] = content,
            ["single_word"] = false,
            ["lstrip"] = false,
            ["rstrip"] = false,
            ["normalized"] = false,
            ["special"] = true,
        };
        var o = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(Added(256, EosToken), Added(257, BosToken)),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false },
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray(),
            },
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
    }

    /// <summary>Whether a loaded tokenizer.json is this tokenizer (256 byte tokens, no merges, EOS 256, BOS 257, nothing else).</summary>
    public static bool Is(BpeTokenizer t)
    {
        if (t.VocabSize != 258 || t.MergeCount != 0 || !t.IsByteLevel || t.EosId != 256 || t.BosId != 257 || t.AddedTokens.Count != 2) return false;
        for (int b = 0; b < 258; b++)
            if (t.IdToToken(b) != (b < 256 ? ByteLevel.Char((byte)b).ToString() : b == 256 ? EosToken : BosToken)) return false;
        return t.Encode("a é\n") is [(int)'a', (int)' ', 0xC3, 0xA9, (int)'\n'];
    }
}
