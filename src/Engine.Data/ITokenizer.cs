namespace Engine.Data;

/// <summary>A tokenizer as the trainer sees it: text to ids and back, plus the special ids.</summary>
public interface ITokenizer
{
    /// <summary>Number of ids the model's embedding must hold (base vocabulary + added/special tokens).</summary>
    int VocabSize { get; }

    /// <summary>End-of-sequence id, placed between packed documents.</summary>
    int EosId { get; }

    /// <summary>Beginning-of-sequence id, or -1 when the tokenizer has none.</summary>
    int BosId { get; }

    /// <summary>Encodes text without adding special tokens.</summary>
    int[] Encode(string text);

    /// <summary>Decodes ids back to text; special ids are skipped.</summary>
    string Decode(ReadOnlySpan<int> ids);

    /// <summary>The token an id stands for, spelled as tokenizer.json spells it (byte-level tokens in GPT-2's byte
    /// characters, added tokens as their content); null for an id the tokenizer does not use.</summary>
    string? IdToToken(int id);
}
