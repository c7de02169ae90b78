namespace Engine.Data;

/// <summary>
/// How an (instruction, input, output) example becomes tokens. The prompt is
/// <c>UserPrefix + instruction [+ InputSeparator + input] + AssistantPrefix</c>, the answer is <c>output</c> followed by
/// the EOS id. Each piece is encoded on its own and the ids concatenated, so the answer's first token never merges
/// with the prompt; generation must build prompts with <see cref="EncodePrompt"/> to match.
/// </summary>
public sealed record ChatTemplate(string UserPrefix, string InputSeparator, string AssistantPrefix)
{
    /// <summary><c>&lt;|user|&gt;\n{instruction}\n\n{input}\n&lt;|assistant|&gt;\n{output}EOS</c>.</summary>
    public static ChatTemplate Default { get; } = new("<|user|>\n", "\n\n", "\n<|assistant|>\n");

    /// <summary>The Stanford Alpaca layout.</summary>
    public static ChatTemplate Alpaca { get; } = new("### Instruction:\n", "\n\n### Input:\n", "\n\n### Response:\n");

    /// <summary>Prompt pieces as ids: (user prefix + instruction, input with its separator (empty when no input), assistant prefix).</summary>
    public (int[] Instruction, int[] Input, int[] Marker) EncodeParts(ITokenizer tokenizer, string instruction, string input)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        int[] head = Concat(tokenizer.Encode(UserPrefix), tokenizer.Encode(instruction));
        int[] inp = input.Length > 0 ? Concat(tokenizer.Encode(InputSeparator), tokenizer.Encode(input)) : [];
        return (head, inp, tokenizer.Encode(AssistantPrefix));
    }

    /// <summary>The full prompt ids, exactly as the instruction stream places them before the answer.</summary>
    public int[] EncodePrompt(ITokenizer tokenizer, string instruction, string input)
    {
        var (a, b, c) = EncodeParts(tokenizer, instruction, input);
        return [.. a, .. b, .. c];
    }

    /// <summary>The prompt as text (for display).</summary>
    public string RenderPrompt(string instruction, string input) =>
        UserPrefix + instruction + (input.Length > 0 ? InputSeparator + input : "") + AssistantPrefix;

    static int[] Concat(int[] a, int[] b) => [.. a, .. b];
}
