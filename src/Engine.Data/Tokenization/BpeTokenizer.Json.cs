using System.Text.Json;
using System.Text.RegularExpressions;
using Engine.Data.Tokenization;

namespace Engine.Data;

public sealed partial class BpeTokenizer
{
    /// <summary>Sections of a loaded tokenizer.json the engine does not rebuild: written back as they were.</summary>
    sealed record RawSections(JsonElement Truncation, JsonElement Padding, JsonElement Normalizer, JsonElement PreTokenizer,
        JsonElement PostProcessor, JsonElement Decoder, bool MergesAsPairs);

    static readonly JsonWriterOptions WriterOptions = new() { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>
    /// Writes Hugging Face tokenizer.json. A loaded tokenizer keeps its normalizer, pre-tokenizer, post-processor,
    /// decoder, truncation and padding exactly; the model (vocab, merges, options) and added tokens (with their flags)
    /// are written from the current state, so an expanded tokenizer loads in Hugging Face with the engine's ids.
    /// A trained tokenizer gets Split + ByteLevel pre-tokenization and a ByteLevel decoder.
    /// </summary>
    public void Save(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir != null) Directory.CreateDirectory(dir);
        using var stream = File.Create(path);
        Write(stream);
    }

    /// <summary>The tokenizer.json text <see cref="Save"/> writes.</summary>
    public string ToJson()
    {
        using var stream = new MemoryStream();
        Write(stream);
        return System.Text.Encoding.UTF8.GetString(stream.GetBuffer(), 0, (int)stream.Length);
    }

    void Write(Stream stream)
    {
        using var w = new Utf8JsonWriter(stream, WriterOptions);
        w.WriteStartObject();
        w.WriteString("version", "1.0");
        WriteRaw(w, "truncation", _raw?.Truncation);
        WriteRaw(w, "padding", _raw?.Padding);
        w.WriteStartArray("added_tokens");
        foreach (var t in _added.Tokens.OrderBy(t => t.Id))
        {
            w.WriteStartObject();
            w.WriteNumber("id", t.Id);
            w.WriteString("content", t.Content);
            w.WriteBoolean("single_word", t.SingleWord);
            w.WriteBoolean("lstrip", t.LStrip);
            w.WriteBoolean("rstrip", t.RStrip);
            w.WriteBoolean("normalized", t.Normalized);
            w.WriteBoolean("special", t.Special);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        WriteRaw(w, "normalizer", _raw?.Normalizer);
        if (_raw != null) WriteRaw(w, "pre_tokenizer", _raw.PreTokenizer);
        else { w.WritePropertyName("pre_tokenizer"); WritePre(w, _pre); }
        WriteRaw(w, "post_processor", _raw?.PostProcessor);
        if (_raw != null) WriteRaw(w, "decoder", _raw.Decoder);
        else
        {
            w.WriteStartObject("decoder");
            w.WriteString("type", "ByteLevel");
            w.WriteBoolean("add_prefix_space", true);
            w.WriteBoolean("trim_offsets", true);
            w.WriteBoolean("use_regex", true);
            w.WriteEndObject();
        }
        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        if (_model.UnkToken == null) w.WriteNull("unk_token"); else w.WriteString("unk_token", _model.UnkToken);
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", _model.FuseUnk);
        w.WriteBoolean("byte_fallback", _model.ByteFallback);
        w.WriteBoolean("ignore_merges", _model.IgnoreMerges);
        w.WriteStartObject("vocab");
        var tokens = _model.TokensSpan;
        for (int id = 0; id < tokens.Length; id++)
            if (tokens[id] is { } tok) w.WriteNumber(tok, id);
        w.WriteEndObject();
        w.WriteStartArray("merges");
        bool pairs = _raw?.MergesAsPairs ?? false;
        foreach (var (a, b) in _model.Merges) pairs |= tokens[a]!.Contains(' ') || tokens[b]!.Contains(' ');
        foreach (var (a, b) in _model.Merges)
        {
            if (pairs) { w.WriteStartArray(); w.WriteStringValue(tokens[a]); w.WriteStringValue(tokens[b]); w.WriteEndArray(); }
            else w.WriteStringValue(tokens[a] + " " + tokens[b]);
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndObject();
    }

    static void WriteRaw(Utf8JsonWriter w, string name, JsonElement? value)
    {
        w.WritePropertyName(name);
        if (value is { } v && v.ValueKind != JsonValueKind.Undefined) v.WriteTo(w);
        else w.WriteNullValue();
    }

    static void WritePre(Utf8JsonWriter w, PreTokenizer pre)
    {
        w.WriteStartObject();
        w.WriteString("type", "Sequence");
        w.WriteStartArray("pretokenizers");
        foreach (var step in pre.Steps)
        {
            w.WriteStartObject();
            switch (step)
            {
                case PreTokenizer.SplitStep s:
                    w.WriteString("type", "Split");
                    w.WriteStartObject("pattern");
                    w.WriteString(s.IsRegex ? "Regex" : "String", s.Pattern);
                    w.WriteEndObject();
                    w.WriteString("behavior", s.Behavior.ToString());
                    w.WriteBoolean("invert", s.Invert);
                    break;
                case PreTokenizer.DigitsStep d:
                    w.WriteString("type", "Digits");
                    w.WriteBoolean("individual_digits", d.Individual);
                    break;
                case PreTokenizer.ByteLevelStep b:
                    w.WriteString("type", "ByteLevel");
                    w.WriteBoolean("add_prefix_space", b.AddPrefixSpace);
                    w.WriteBoolean("trim_offsets", true);
                    w.WriteBoolean("use_regex", b.UseRegex);
                    break;
                case PreTokenizer.MetaspaceStep m:
                    w.WriteString("type", "Metaspace");
                    w.WriteString("replacement", m.Replacement.ToString());
                    w.WriteString("prepend_scheme", m.PrependScheme);
                    w.WriteBoolean("split", m.SplitPieces);
                    break;
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>
    /// Reads a Hugging Face tokenizer.json with a BPE model — byte-level (GPT-2, Llama 3, Qwen) or SentencePiece-style
    /// (Llama 2, Mistral, Baichuan 2: Prepend/Replace normalizers or Metaspace, byte_fallback, unk) — its normalizer,
    /// pre-tokenizer, decoder and added tokens (ids assigned as Hugging Face assigns them on load). Refused with an error
    /// naming the file and the part: other model types (WordPiece, Unigram), subword prefixes/suffixes, BPE dropout, and
    /// normalizer / pre-tokenizer / decoder kinds outside those listed on <see cref="Normalizer"/>,
    /// <see cref="PreTokenizer"/> and <see cref="TokenDecoder"/>. The post-processor (special tokens added around a
    /// sequence) is kept for Save but not applied: <see cref="Encode"/> adds no special tokens.
    /// EOS/BOS are the given names, else the first of the usual names (&lt;|endoftext|&gt;, &lt;/s&gt;, …) found among
    /// added tokens, else -1.
    /// </summary>
    public static BpeTokenizer Load(string path, string? eosToken = null, string? bosToken = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        FileStat.RequireRegular(path, "tokenizer file");
        return Parse(File.ReadAllBytes(path), path, eosToken, bosToken);
    }

    /// <summary>As <see cref="Load"/>, from tokenizer.json text held in memory; <paramref name="source"/> names it in messages.</summary>
    public static BpeTokenizer FromJson(string json, string source, string? eosToken = null, string? bosToken = null) =>
        Parse(System.Text.Encoding.UTF8.GetBytes(json), source, eosToken, bosToken);

    static BpeTokenizer Parse(byte[] utf8, string path, string? eosToken, string? bosToken)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(utf8); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({ErrorText.OneLine(e.Message)})", e); }
        using (doc)
        {
            try
            {
                var tokenizer = FromJson(doc.RootElement, path, eosToken, bosToken);
                tokenizer.SourcePath = path;
                return tokenizer;
            }
            catch (InvalidDataException e)
            {
                // every message names the file, on one line (token strings from the file end up in messages)
                throw new InvalidDataException(e.Message.StartsWith(path, StringComparison.Ordinal) ? ErrorText.OneLine(e.Message) : $"{path}: {ErrorText.OneLine(e.Message)}", e);
            }
            catch (NotSupportedException e)
            {
                throw new NotSupportedException(e.Message.StartsWith(path, StringComparison.Ordinal) ? ErrorText.OneLine(e.Message) : $"{path}: {ErrorText.OneLine(e.Message)}", e);
            }
            catch (InvalidOperationException e)
            {
                throw new InvalidDataException($"{path}: a field has the wrong JSON type ({ErrorText.OneLine(e.Message)})", e);
            }
        }
    }

    static JsonElement Section(JsonElement root, string name) =>
        root.TryGetProperty(name, out var e) ? e.Clone() : default;

    static BpeTokenizer FromJson(JsonElement root, string path, string? eos, string? bos)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: no 'model' object (not a tokenizer.json)");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(missing)";
        if (type != "BPE") throw new NotSupportedException($"{path}: tokenizer model type '{type}' is not supported (only BPE)");
        foreach (var opt in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.TryGetProperty(opt, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0)
                throw new NotSupportedException($"{path}: model.{opt} is set; only BPE without subword affixes is supported");
        if (model.TryGetProperty("dropout", out var dr) && dr.ValueKind == JsonValueKind.Number && !(dr.TryGetDouble(out double dropout) && dropout <= 0))
            throw new NotSupportedException($"{path}: model.dropout is {dr.GetRawText()}; BPE dropout (random merges) is not supported");
        if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: model.vocab missing or not an object");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabEl.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id)) throw new InvalidDataException($"{path}: model.vocab['{p.Name}'] is not an integer id");
            vocab[p.Name] = id;
        }
        var merges = new List<(int, int)>();
        bool mergesAsPairs = false;
        if (model.TryGetProperty("merges", out var mergesEl) && mergesEl.ValueKind != JsonValueKind.Null)
        {
            if (mergesEl.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{path}: model.merges is not an array");
            int r = 0;
            foreach (var m in mergesEl.EnumerateArray())
            {
                string? a, b;
                if (m.ValueKind == JsonValueKind.String)
                {
                    var s = m.GetString()!;
                    int sp = s.Length > 1 ? s.IndexOf(' ', 1) : -1;
                    if (sp < 0) throw new InvalidDataException($"{path}: merge {r} '{s}' is not 'a b'");
                    a = s[..sp]; b = s[(sp + 1)..];
                }
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2) { a = m[0].GetString(); b = m[1].GetString(); mergesAsPairs = true; }
                else throw new InvalidDataException($"{path}: merge {r} is neither 'a b' nor [a, b]");
                if (a == null || b == null || !vocab.TryGetValue(a, out int ia) || !vocab.TryGetValue(b, out int ib))
                    throw new InvalidDataException($"{path}: merge {r} ('{a}' '{b}') uses a token that is not in the vocabulary");
                merges.Add((ia, ib));
                r++;
            }
        }
        var steps = new List<PreTokenizer.Step>();
        if (root.TryGetProperty("pre_tokenizer", out var preEl) && preEl.ValueKind == JsonValueKind.Object)
            ParsePre(preEl, steps, path);
        var normalizer = root.TryGetProperty("normalizer", out var normEl) ? Normalizer.Parse(normEl, path) : null;
        var decoder = root.TryGetProperty("decoder", out var decEl) ? TokenDecoder.Parse(decEl, path) : null;
        bool byteLevel = steps.Any(s => s is PreTokenizer.ByteLevelStep);
        string? unk = model.TryGetProperty("unk_token", out var u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;
        bool Flag(string name) => model.TryGetProperty(name, out var f) && f.ValueKind == JsonValueKind.True;
        var bpe = new BpeModel(vocab, merges, byteLevel, unk, Flag("byte_fallback"), Flag("fuse_unk"), Flag("ignore_merges"));

        // Added tokens, numbered as Hugging Face numbers them on load (add_tokens in file order): a content already
        // added or in the model vocabulary keeps that id, any other takes the next id from the model's size.
        var added = new List<AddedToken>();
        var byContent = new Dictionary<string, int>(StringComparer.Ordinal);
        int next = vocab.Count;
        if (root.TryGetProperty("added_tokens", out var addedEl) && addedEl.ValueKind == JsonValueKind.Array)
        {
            foreach (var a in addedEl.EnumerateArray())
            {
                if (!a.TryGetProperty("content", out var c) || c.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}: an added_tokens entry lacks a string 'content'");
                string content = c.GetString()!;
                if (content.Length == 0) continue;
                bool special = a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                bool Bool(string name, bool dflt) => a.TryGetProperty(name, out var f) ? f.ValueKind == JsonValueKind.True : dflt;
                int id = byContent.TryGetValue(content, out int known) ? known : vocab.TryGetValue(content, out int vid) ? vid : next++;
                if (!vocab.ContainsKey(content) && bpe.IdToToken(id) != null)
                    throw new InvalidDataException($"{path}: added token '{content}' would take id {id}, which the model vocabulary already uses for '{bpe.IdToToken(id)}'");
                byContent[content] = id;
                added.RemoveAll(x => x.Content == content);
                added.Add(new AddedToken(id, content, special)
                {
                    Normalized = Bool("normalized", !special),
                    LStrip = Bool("lstrip", false),
                    RStrip = Bool("rstrip", false),
                    SingleWord = Bool("single_word", false),
                });
            }
        }
        var raw = new RawSections(Section(root, "truncation"), Section(root, "padding"), Section(root, "normalizer"), Section(root, "pre_tokenizer"),
            Section(root, "post_processor"), Section(root, "decoder"), mergesAsPairs);
        return new BpeTokenizer(bpe, new PreTokenizer(steps), normalizer, decoder, added, eos, bos, raw);
    }

    static void ParsePre(JsonElement e, List<PreTokenizer.Step> steps, string path)
    {
        string type = e.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        switch (type)
        {
            case "Sequence":
                if (!e.TryGetProperty("pretokenizers", out var list) || list.ValueKind != JsonValueKind.Array)
                    throw new InvalidDataException($"{path}: pre_tokenizer Sequence without 'pretokenizers'");
                foreach (var p in list.EnumerateArray()) ParsePre(p, steps, path);
                break;
            case "ByteLevel":
                bool prefix = e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True;
                bool useRegex = !e.TryGetProperty("use_regex", out var ur) || ur.ValueKind != JsonValueKind.False;
                steps.Add(new PreTokenizer.ByteLevelStep(prefix, useRegex, useRegex ? PreTokenizer.Compile(PreTokenizer.Gpt2Pattern) : null));
                break;
            case "Digits":
                steps.Add(new PreTokenizer.DigitsStep(e.TryGetProperty("individual_digits", out var ind) && ind.ValueKind == JsonValueKind.True));
                break;
            case "Metaspace":
                var (rep, scheme, split) = TokenDecoder.MetaspaceOptions(e, path, "pre_tokenizer");
                steps.Add(new PreTokenizer.MetaspaceStep(rep, scheme, split));
                break;
            case "Split":
                if (!e.TryGetProperty("pattern", out var pat) || pat.ValueKind != JsonValueKind.Object)
                    throw new InvalidDataException($"{path}: pre_tokenizer Split without a 'pattern' object");
                string behavior = e.TryGetProperty("behavior", out var bh) ? bh.GetString() ?? "" : "";
                if (!Enum.TryParse<PreTokenizer.Behavior>(behavior, out var b) || !Enum.IsDefined(b))
                    throw new NotSupportedException($"{path}: Split behavior '{behavior}' is not supported (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)");
                bool invert = e.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True;
                bool isRegex = pat.TryGetProperty("Regex", out var rx);
                string? source = isRegex ? rx.GetString() : pat.TryGetProperty("String", out var str) ? str.GetString() : null;
                if (source == null) throw new InvalidDataException($"{path}: Split pattern has neither 'Regex' nor 'String'");
                Regex regex;
                try { regex = PreTokenizer.Compile(isRegex ? source : Regex.Escape(source)); }
                catch (ArgumentException ex) { throw new NotSupportedException($"{path}: Split regex is not valid in .NET ({ErrorText.OneLine(ex.Message)})", ex); }
                steps.Add(new PreTokenizer.SplitStep(regex, source, isRegex, b, invert));
                break;
            default:
                throw new NotSupportedException($"{path}: pre_tokenizer type '{type}' is not supported (Sequence, ByteLevel, Split, Digits, Metaspace)");
        }
    }
}
