using System.Text;

namespace Engine.Data.Cleaning;

/// <summary>Cleaning rules (config section <c>[cleaning]</c>); each can be switched off and each drop is counted by rule name.</summary>
public sealed record CleaningOptions
{
    /// <summary>"nfkc", "nfc" or "none" (see <see cref="TextCleaner.NormalizationMethod"/>).</summary>
    public string Normalization { get; init; } = "nfkc";
    /// <summary>Remove C0/C1 control characters (except tab and newline) and invisible format characters; CRLF → LF.</summary>
    public bool RemoveControl { get; init; } = true;
    /// <summary>Remove short boilerplate lines (cookie notices, "all rights reserved", 责任编辑, …).</summary>
    public bool Boilerplate { get; init; } = true;
    public string[] BoilerplatePatterns { get; init; } =
    [
        "cookie", "privacy policy", "terms of use", "terms of service", "all rights reserved", "click here", "subscribe to",
        "sign up for", "javascript", "share this", "read more", "advertisement", "版权所有", "免责声明", "责任编辑", "点击查看", "扫描二维码", "关注我们",
    ];
    /// <summary>Lines longer than this are never treated as boilerplate.</summary>
    public int BoilerplateMaxLineChars { get; init; } = 200;
    public int MinChars { get; init; } = 30;
    public int MaxChars { get; init; } = 500_000;
    /// <summary>Gopher repetition rules.</summary>
    public bool Repetition { get; init; } = true;
    public double MaxDuplicateLineFraction { get; init; } = 0.30;
    public double MaxDuplicateLineCharFraction { get; init; } = 0.20;
    /// <summary>Max char fraction of the most frequent 2-, 3-, 4-gram.</summary>
    public double[] MaxTopNgramCharFraction { get; init; } = [0.20, 0.18, 0.16];
    /// <summary>Max char fraction covered by repeated 5- … 10-grams.</summary>
    public double[] MaxDuplicateNgramCharFraction { get; init; } = [0.15, 0.14, 0.13, 0.12, 0.11, 0.10];
    /// <summary>Max ratio of '#' and ellipses to words.</summary>
    public double MaxSymbolRatio { get; init; } = 0.10;
    /// <summary>Languages kept ("en", "zh"); empty keeps all.</summary>
    public string[] Languages { get; init; } = ["en", "zh"];

    public void Validate()
    {
        if (Normalization is not ("nfkc" or "nfc" or "none")) throw new ArgumentException($"cleaning.normalization must be nfkc, nfc or none (got '{Normalization}')");
        if (MinChars < 0 || MaxChars < MinChars) throw new ArgumentException($"cleaning.min_chars/max_chars must satisfy 0 <= min <= max (got {MinChars}, {MaxChars})");
        if (MaxTopNgramCharFraction.Length != 3) throw new ArgumentException("cleaning.max_top_ngram_char_fraction needs 3 values (n = 2, 3, 4)");
        if (MaxDuplicateNgramCharFraction.Length != 6) throw new ArgumentException("cleaning.max_duplicate_ngram_char_fraction needs 6 values (n = 5 … 10)");
        foreach (var l in Languages) if (l is not ("en" or "zh")) throw new ArgumentException($"cleaning.languages: unknown language '{l}' (en or zh)");
    }
}

/// <summary>Counts per cleaning rule.</summary>
public sealed class CleaningStats
{
    public long Input { get; set; }
    public long Output { get; set; }
    public long InputChars { get; set; }
    public long OutputChars { get; set; }
    public long DocumentsNormalized { get; set; }
    public long ControlCharsRemoved { get; set; }
    public long BoilerplateLinesRemoved { get; set; }
    /// <summary>Documents dropped, by rule name.</summary>
    public SortedDictionary<string, long> Dropped { get; } = new(StringComparer.Ordinal);
    /// <summary>Documents kept, by detected language.</summary>
    public SortedDictionary<string, long> Languages { get; } = new(StringComparer.Ordinal);

    public void Add(CleaningStats o)
    {
        Input += o.Input; Output += o.Output; InputChars += o.InputChars; OutputChars += o.OutputChars;
        DocumentsNormalized += o.DocumentsNormalized; ControlCharsRemoved += o.ControlCharsRemoved; BoilerplateLinesRemoved += o.BoilerplateLinesRemoved;
        foreach (var (k, v) in o.Dropped) Dropped[k] = Dropped.GetValueOrDefault(k) + v;
        foreach (var (k, v) in o.Languages) Languages[k] = Languages.GetValueOrDefault(k) + v;
    }
}

/// <summary>
/// Document cleaning: Unicode normalization, control/invisible characters, boilerplate lines, then filters — length,
/// language (Chinese vs English by script), Gopher repetition (duplicate lines, top n-grams, duplicate n-grams) and
/// symbol ratio. "Words" are whitespace-separated tokens with every Han character its own word; for Chinese the
/// n-gram rules use 2n characters for Gopher's n words (a Chinese word averages about two characters).
/// </summary>
public sealed class TextCleaner
{
    readonly CleaningOptions _o;

    public TextCleaner(CleaningOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _o = options;
    }

    static readonly bool IcuNormalization = "\uFB01".Normalize(NormalizationForm.FormKC) == "fi";

    /// <summary>What "nfkc"/"nfc" do in this process: ICU normalization, or — under InvariantGlobalization, where
    /// string.Normalize is a no-op — a built-in compatibility subset (full-width ASCII → ASCII, ideographic and other
    /// Unicode spaces → space, Latin ligatures → letters) for nfkc and nothing for nfc.</summary>
    public static string NormalizationMethod => IcuNormalization ? "icu" : "builtin-subset";

    /// <summary>Cleans one document: the cleaned text, or null with the name of the rule that dropped it.</summary>
    public (string? Text, string? DropReason) Clean(string doc, CleaningStats stats)
    {
        ArgumentNullException.ThrowIfNull(doc);
        stats.Input++;
        stats.InputChars += doc.Length;
        string text = doc;
        if (_o.Normalization != "none")
        {
            string n = Normalize(text, _o.Normalization);
            if (!ReferenceEquals(n, text) && n != text) stats.DocumentsNormalized++;
            text = n;
        }
        if (_o.RemoveControl) text = RemoveControl(text, stats);
        if (_o.Boilerplate) text = RemoveBoilerplate(text, stats);
        text = text.Trim();
        string? reason = Filter(text, out string lang);
        if (reason != null)
        {
            stats.Dropped[reason] = stats.Dropped.GetValueOrDefault(reason) + 1;
            return (null, reason);
        }
        stats.Output++;
        stats.OutputChars += text.Length;
        stats.Languages[lang] = stats.Languages.GetValueOrDefault(lang) + 1;
        return (text, null);
    }

    string? Filter(string text, out string lang)
    {
        lang = DetectLanguage(text);
        if (text.Length < _o.MinChars) return "too_short";
        if (text.Length > _o.MaxChars) return "too_long";
        if (_o.Languages.Length > 0 && Array.IndexOf(_o.Languages, lang) < 0) return "language";
        var words = Words(text);
        if (_o.MaxSymbolRatio > 0 && words.Count > 0)
        {
            int symbols = 0;
            for (int i = 0; i < text.Length; i++)
            {
                if (text[i] == '#' || text[i] == '…') symbols++;
                else if (text[i] == '.' && i + 2 < text.Length && text[i + 1] == '.' && text[i + 2] == '.') { symbols++; i += 2; }
            }
            if (symbols / (double)words.Count > _o.MaxSymbolRatio) return "symbol_ratio";
        }
        if (_o.Repetition) return Repetition(text, words, lang == "zh" ? 2 : 1);
        return null;
    }

    string? Repetition(string text, List<string> words, int scale)
    {
        var lines = text.Split('\n').Select(l => l.Trim()).Where(l => l.Length > 0).ToList();
        if (lines.Count > 1)
        {
            var seen = new HashSet<string>();
            int dupLines = 0, dupChars = 0, chars = 0;
            foreach (var l in lines)
            {
                chars += l.Length;
                if (!seen.Add(l)) { dupLines++; dupChars += l.Length; }
            }
            if (dupLines / (double)lines.Count > _o.MaxDuplicateLineFraction) return "duplicate_lines";
            if (dupChars / (double)chars > _o.MaxDuplicateLineCharFraction) return "duplicate_line_chars";
        }
        long totalChars = 0;
        foreach (var w in words) totalChars += w.Length;
        if (totalChars == 0) return null;
        for (int rule = 2; rule <= 4; rule++)
        {
            int n = rule * scale;
            if (words.Count < n + 1) break;
            var counts = new Dictionary<string, int>(StringComparer.Ordinal);
            string? best = null;
            int bestCount = 0;
            for (int i = 0; i + n <= words.Count; i++)
            {
                string g = string.Join('\u0001', words.GetRange(i, n));
                int c = counts.GetValueOrDefault(g) + 1;
                counts[g] = c;
                if (c > bestCount) { bestCount = c; best = g; }
            }
            if (bestCount > 1 && best != null)
            {
                double frac = bestCount * (best.Length - (n - 1)) / (double)totalChars;
                if (frac > _o.MaxTopNgramCharFraction[rule - 2]) return $"top_{rule}gram";
            }
        }
        for (int rule = 5; rule <= 10; rule++)
        {
            int n = rule * scale;
            if (words.Count < 2 * n) break;
            var first = new Dictionary<string, int>(StringComparer.Ordinal);
            var covered = new bool[words.Count];
            for (int i = 0; i + n <= words.Count; i++)
            {
                string g = string.Join('\u0001', words.GetRange(i, n));
                if (first.TryGetValue(g, out int j))
                {
                    for (int k = 0; k < n; k++) { covered[i + k] = true; covered[j + k] = true; }
                }
                else first[g] = i;
            }
            long dup = 0;
            for (int i = 0; i < words.Count; i++) if (covered[i]) dup += words[i].Length;
            if (dup / (double)totalChars > _o.MaxDuplicateNgramCharFraction[rule - 5]) return $"duplicate_{rule}gram";
        }
        return null;
    }

    /// <summary>Whitespace-separated words, with each Han character a word of its own.</summary>
    public static List<string> Words(string text)
    {
        var words = new List<string>();
        int start = -1;
        for (int i = 0; i <= text.Length; i++)
        {
            char c = i < text.Length ? text[i] : ' ';
            bool han = IsHan(c);
            if (char.IsWhiteSpace(c) || han)
            {
                if (start >= 0) { words.Add(text[start..i]); start = -1; }
                if (han) words.Add(c.ToString());
            }
            else if (start < 0) start = i;
        }
        return words;
    }

    public static bool IsHan(char c) => c is >= '\u3400' and <= '\u4DBF' or >= '\u4E00' and <= '\u9FFF' or >= '\uF900' and <= '\uFAFF';

    /// <summary>"zh" when Han characters are at least a third as many as Latin letters, "en" when Latin letters dominate, else "other".</summary>
    public static string DetectLanguage(string text)
    {
        int han = 0, latin = 0;
        foreach (char c in text)
        {
            if (IsHan(c)) han++;
            else if (char.IsAsciiLetter(c) || (c is >= '\u00C0' and <= '\u024F' && char.IsLetter(c))) latin++;
        }
        if (han + latin < 5) return "other";
        return han * 3 >= latin ? "zh" : "en";
    }

    static string Normalize(string text, string form)
    {
        if (IcuNormalization) return text.Normalize(form == "nfkc" ? NormalizationForm.FormKC : NormalizationForm.FormC);
        if (form != "nfkc") return text;
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            string? rep = c switch
            {
                >= '\uFF01' and <= '\uFF5E' => ((char)(c - 0xFEE0)).ToString(),
                '\u3000' or '\u00A0' or (>= '\u2000' and <= '\u200A') or '\u202F' or '\u205F' => " ",
                '\uFB00' => "ff",
                '\uFB01' => "fi",
                '\uFB02' => "fl",
                '\uFB03' => "ffi",
                '\uFB04' => "ffl",
                '\uFB05' or '\uFB06' => "st",
                _ => null,
            };
            if (rep == null) { sb?.Append(c); continue; }
            sb ??= new StringBuilder(text, 0, i, text.Length);
            sb.Append(rep);
        }
        return sb?.ToString() ?? text;
    }

    static bool IsInvisible(char c) => c is '\u00AD' or (>= '\u200B' and <= '\u200F') or (>= '\u202A' and <= '\u202E')
        or (>= '\u2060' and <= '\u2064') or (>= '\u2066' and <= '\u2069') or '\uFEFF';

    static string RemoveControl(string text, CleaningStats stats)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            bool drop = (c < ' ' && c is not '\n' and not '\t' and not '\r') || (c >= '\u007F' && c <= '\u009F') || IsInvisible(c);
            if (c == '\r')
            {
                sb ??= new StringBuilder(text, 0, i, text.Length);
                if (i + 1 >= text.Length || text[i + 1] != '\n') sb.Append('\n');
                continue;
            }
            if (drop)
            {
                sb ??= new StringBuilder(text, 0, i, text.Length);
                stats.ControlCharsRemoved++;
                continue;
            }
            sb?.Append(c);
        }
        return sb?.ToString() ?? text;
    }

    string RemoveBoilerplate(string text, CleaningStats stats)
    {
        if (_o.BoilerplatePatterns.Length == 0) return text;
        var lines = text.Split('\n');
        var kept = new List<string>(lines.Length);
        int removed = 0;
        foreach (var line in lines)
        {
            bool boiler = line.Length <= _o.BoilerplateMaxLineChars && _o.BoilerplatePatterns.Any(p => line.Contains(p, StringComparison.OrdinalIgnoreCase));
            if (boiler) removed++;
            else kept.Add(line);
        }
        if (removed == 0) return text;
        stats.BoilerplateLinesRemoved += removed;
        return string.Join('\n', kept);
    }
}
