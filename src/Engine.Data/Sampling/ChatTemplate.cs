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

    /// <summary>The templates the engine trains with; <see cref="FromJinja"/> recognizes their Jinja forms.</summary>
    public static IReadOnlyList<ChatTemplate> Known { get; } = [Default, Alpaca];

    /// <summary>
    /// This format as a Hugging Face chat template (Jinja), for tokenizer_config.json and GGUF's tokenizer.chat_template:
    /// a user message renders as <c>UserPrefix + content</c>, the generation prompt (and every assistant message) opens
    /// with <c>AssistantPrefix</c>, an assistant message ends with the EOS token. A single user message with
    /// add_generation_prompt is exactly <see cref="RenderPrompt"/>(content, ""): the instruction and its input go in one
    /// message, joined by <see cref="InputSeparator"/>. Roles other than user and assistant raise an error (the format
    /// has no system turn), as Gemma's and Mistral's templates do.
    /// </summary>
    public string ToJinja() =>
        "{%- for message in messages -%}" +
        "{%- if message['role'] == 'user' -%}{{- " + Literal(UserPrefix) + " + message['content'] -}}" +
        "{%- elif message['role'] == 'assistant' -%}{{- " + Literal(AssistantPrefix) + " + message['content'] + eos_token -}}" +
        "{%- else -%}{{- raise_exception('this model was tuned without a ' + message['role'] + ' role: give user and assistant messages only') -}}" +
        "{%- endif -%}{%- endfor -%}" +
        "{%- if add_generation_prompt -%}{{- " + Literal(AssistantPrefix) + " -}}{%- endif -%}";

    /// <summary>The known template whose <see cref="ToJinja"/> is <paramref name="jinja"/>, or null.</summary>
    public static ChatTemplate? FromJinja(string? jinja) => jinja == null ? null : Known.FirstOrDefault(t => t.ToJinja() == jinja);

    /// <summary>The prompt ids of one user message with the generation prompt, as a Jinja chat API tokenizes it: the
    /// template's text and the message each encoded on their own (= <see cref="EncodePrompt"/> with no input).</summary>
    public int[] EncodeUserMessage(ITokenizer tokenizer, string content) => EncodePrompt(tokenizer, content, "");

    static string Literal(string s) => "'" + s.Replace("\\", "\\\\").Replace("'", "\\'").Replace("\n", "\\n").Replace("\r", "\\r").Replace("\t", "\\t") + "'";
}
