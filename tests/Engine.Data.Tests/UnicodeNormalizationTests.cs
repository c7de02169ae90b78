using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Engine.Data.Tokenization;

namespace Engine.Data.Tests;

public class UnicodeNormalizationTests
{
    [Theory]
    [InlineData("e\u0301", "\u00e9", "e\u0301", "\u00e9", "e\u0301")]
    [InlineData("\u00e9", "\u00e9", "e\u0301", "\u00e9", "e\u0301")]
    [InlineData("\uF900", "\u8C48", "\u8C48", "\u8C48", "\u8C48")]                          // CJK compatibility ideograph: a singleton
    [InlineData("\u1100\u1161\u11A8", "\uAC01", "\u1100\u1161\u11A8", "\uAC01", "\u1100\u1161\u11A8")] // Hangul, algorithmic
    [InlineData("\uAC01", "\uAC01", "\u1100\u1161\u11A8", "\uAC01", "\u1100\u1161\u11A8")]
    [InlineData("ｆｕｌｌ①½", "ｆｕｌｌ①½", "ｆｕｌｌ①½", "full11⁄2", "full11⁄2")]                 // compatibility forms change only under NFK*
    [InlineData("a\u0307\u0323", "\u1EA1\u0307", "a\u0323\u0307", "\u1EA1\u0307", "a\u0323\u0307")] // marks reordered by class, then composed
    [InlineData("\u0301abc", "\u0301abc", "\u0301abc", "\u0301abc", "\u0301abc")]            // leading mark stays
    [InlineData("plain ASCII 中文", "plain ASCII 中文", "plain ASCII 中文", "plain ASCII 中文", "plain ASCII 中文")]
    public void Known_forms(string input, string nfc, string nfd, string nfkc, string nfkd)
    {
        Assert.Equal(nfc, UnicodeNormalization.Normalize(input, NormalizationForm.FormC));
        Assert.Equal(nfd, UnicodeNormalization.Normalize(input, NormalizationForm.FormD));
        Assert.Equal(nfkc, UnicodeNormalization.Normalize(input, NormalizationForm.FormKC));
        Assert.Equal(nfkd, UnicodeNormalization.Normalize(input, NormalizationForm.FormKD));
    }

    [Fact]
    public void Unchanged_text_is_returned_as_is()
    {
        string s = "Profit rose 12% in Q1; 利润增长。";
        Assert.Same(s, UnicodeNormalization.Normalize(s, NormalizationForm.FormC));
    }

    /// <summary>Every code point alone, and mark sequences around every composite, against Python's unicodedata.</summary>
    [Fact]
    public void Matches_Python_unicodedata_on_every_code_point_and_composite()
    {
        string? python = FindPython();
        if (python == null) Assert.Skip("python3 is not on PATH (the oracle for this test)");
        var inputs = new List<string>();
        for (int cp = 0; cp < 0x110000; cp++)
        {
            if (cp is >= 0xD800 and <= 0xDFFF) continue;
            var r = new Rune(cp);
            if (Rune.GetUnicodeCategory(r) == System.Globalization.UnicodeCategory.OtherNotAssigned && cp > 0xFFFF) continue;
            inputs.Add(r.ToString());
        }
        // each composite's canonical decomposition, with marks before, between and after
        foreach (var s in inputs.ToList())
        {
            string d = UnicodeNormalization.Normalize(s, NormalizationForm.FormD);
            if (d.Length > 1 && d != s) { inputs.Add(d); inputs.Add("x" + d + "\u0323\u0301"); inputs.Add(d + "\u0334"); }
        }
        inputs.Add("\u1100\u1161\u11A8\u1100\u1161\uAC00\u11A8");
        string dir = TestData.TempDir();
        string input = Path.Combine(dir, "in.jsonl"), output = Path.Combine(dir, "out.jsonl");
        File.WriteAllLines(input, inputs.Select(s => JsonSerializer.Serialize(s)));
        var psi = new ProcessStartInfo(python) { RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("import json,sys,unicodedata as u\nw=open(sys.argv[2],'w')\nfor l in open(sys.argv[1]):\n s=json.loads(l)\n w.write(json.dumps([u.normalize(f,s) for f in ('NFC','NFD','NFKC','NFKD')])+'\\n')\nprint(u.unidata_version,file=sys.stderr)");
        psi.ArgumentList.Add(input);
        psi.ArgumentList.Add(output);
        using var p = Process.Start(psi)!;
        string version = p.StandardError.ReadToEnd().Trim();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        var forms = new[] { NormalizationForm.FormC, NormalizationForm.FormD, NormalizationForm.FormKC, NormalizationForm.FormKD };
        var bad = new List<string>();
        int i = 0;
        foreach (var line in File.ReadLines(output))
        {
            var expected = JsonSerializer.Deserialize<string[]>(line)!;
            for (int f = 0; f < 4; f++)
            {
                string got = UnicodeNormalization.Normalize(inputs[i], forms[f]);
                if (got != expected[f]) bad.Add($"{forms[f]} of {Hex(inputs[i])}: {Hex(got)} vs Python {Hex(expected[f])}");
            }
            i++;
        }
        Assert.Equal(inputs.Count, i);
        // Unicode versions add characters; one that Python's data knows and ours does not is the only allowed difference.
        Assert.True(bad.Count == 0 || version != UnicodeNormalization.UnicodeVersion,
            $"{bad.Count} differences from Python (Unicode {version}, tables {UnicodeNormalization.UnicodeVersion}):\n" + string.Join("\n", bad.Take(10)));
    }

    static string Hex(string s) => string.Join(" ", s.EnumerateRunes().Select(r => r.Value.ToString("X4")));

    static string? FindPython()
    {
        foreach (var name in new[] { "python3", "/usr/bin/python3" })
        {
            try
            {
                using var p = Process.Start(new ProcessStartInfo(name, "--version") { RedirectStandardOutput = true, RedirectStandardError = true })!;
                p.WaitForExit();
                if (p.ExitCode == 0) return name;
            }
            catch (System.ComponentModel.Win32Exception) { }
        }
        return null;
    }
}
