using Engine.Data;
using Engine.Data.Cleaning;

namespace Engine.Data.Tests;

public class CleaningTests
{
    static readonly string Prose = "The committee judged that the economy continued to expand at a moderate pace while inflation " +
        "remained somewhat below its longer-run objective, and members expected labor market conditions to improve further.";

    static (string? Text, string? Reason, CleaningStats Stats) Clean(string doc, CleaningOptions? o = null)
    {
        var stats = new CleaningStats();
        var (t, r) = new TextCleaner(o ?? new CleaningOptions()).Clean(doc, stats);
        return (t, r, stats);
    }

    [Fact]
    public void Keeps_ordinary_English_and_Chinese_prose()
    {
        Assert.Null(Clean(Prose).Reason);
        var zh = Documents.Read(TestData.File("finance_zh/cnews_finance.jsonl")).First();
        var (t, r, s) = Clean(zh);
        Assert.Null(r);
        Assert.Equal(1, s.Languages["zh"]);
        Assert.NotNull(t);
    }

    [Fact]
    public void Normalizes_and_strips_control_and_invisible_characters()
    {
        var (t, _, s) = Clean("Ｐｒｏｆｉｔ\u3000rose\u200B 5%\u0007 in the ﬁrst quarter,\r\nwhile costs fell\u00AD sharply across all segments.");
        Assert.Equal("Profit rose 5% in the first quarter,\nwhile costs fell sharply across all segments.", t);
        Assert.Equal(1, s.DocumentsNormalized);
        Assert.Equal(3, s.ControlCharsRemoved);
        var (none, _, _) = Clean("Ｐｒｏｆｉｔ rose 5% in the first quarter while costs fell sharply.", new CleaningOptions { Normalization = "none" });
        Assert.StartsWith("Ｐｒｏｆｉｔ", none);
    }

    [Fact]
    public void Length_filters()
    {
        Assert.Equal("too_short", Clean("Too short.").Reason);
        Assert.Equal("too_long", Clean(Prose, new CleaningOptions { MaxChars = 50 }).Reason);
    }

    [Fact]
    public void Language_by_script()
    {
        Assert.Equal("en", TextCleaner.DetectLanguage(Prose));
        Assert.Equal("zh", TextCleaner.DetectLanguage("央行宣布下调存款准备金率0.5个百分点，释放长期资金约1万亿元。"));
        Assert.Equal("zh", TextCleaner.DetectLanguage("A股三大指数集体收涨，沪指涨0.5%，GDP数据好于预期。"));
        Assert.Equal("other", TextCleaner.DetectLanguage("Доходы компании выросли на 5% — 12345 ... !!!"));
        Assert.Equal("language", Clean("Доходы компании выросли на пять процентов в первом квартале текущего года.").Reason);
        Assert.Null(Clean("Доходы компании выросли на пять процентов в первом квартале текущего года.", new CleaningOptions { Languages = [] }).Reason);
    }

    [Fact]
    public void Gopher_repetition_rules()
    {
        string dupLines = string.Join("\n", Enumerable.Repeat("Buy cheap watches now at our store today", 5).Append(Prose));
        Assert.Equal("duplicate_lines", Clean(dupLines).Reason);
        string topNgram = Prose + " " + string.Concat(Enumerable.Repeat("best price best price ", 20));
        Assert.Equal("top_2gram", Clean(topNgram).Reason);
        string longRepeat = Prose + " " + Prose + " " + Prose;
        Assert.StartsWith("duplicate_", Clean(longRepeat).Reason);
        string zhSpam = "点击领取红包点击领取红包点击领取红包点击领取红包点击领取红包点击领取红包，今日股市小幅上涨。";
        Assert.NotNull(Clean(zhSpam).Reason);
        Assert.Null(Clean(longRepeat, new CleaningOptions { Repetition = false }).Reason);
    }

    [Fact]
    public void Symbol_ratio_rule()
    {
        Assert.Equal("symbol_ratio", Clean("#deal #sale #cheap #now #win big prizes ... today ... only ... here #ad #promo").Reason);
    }

    [Fact]
    public void Boilerplate_lines_are_removed_and_counted()
    {
        var (t, r, s) = Clean(Prose + "\nAll Rights Reserved. Privacy Policy\n责任编辑：王伟\nClick here to subscribe to our newsletter.");
        Assert.Null(r);
        Assert.Equal(Prose, t);
        Assert.Equal(3, s.BoilerplateLinesRemoved);
    }

    [Fact]
    public void Every_shipped_file_mostly_survives_default_cleaning()
    {
        var cleaner = new TextCleaner(new CleaningOptions());
        // FOMC minutes are not here: 60 KB of formulaic prose, each one above Gopher's 15% repeated-5-gram limit.
        // TAT-QA passages carry tables whose repeated cells trip the n-gram rules on about a third of them.
        foreach (var (rel, min) in new[] { ("general_en/wikitext2_valid.txt", 0.8), ("general_zh/cnews_general.jsonl", 0.8), ("finance_en/tatqa_reports.jsonl", 0.6), ("finance_zh/finna_news.jsonl", 0.8) })
        {
            var stats = new CleaningStats();
            foreach (var d in Documents.Read(TestData.File(rel)).Take(300)) cleaner.Clean(d, stats);
            Assert.True(stats.Output >= min * stats.Input, $"{rel}: kept {stats.Output}/{stats.Input}: {string.Join(", ", stats.Dropped.Select(kv => $"{kv.Key}={kv.Value}"))}");
        }
    }

    [Fact]
    public void Quality_classifier_separates_curated_from_web_like_text()
    {
        var curated = Documents.Read(TestData.File("general_en/wikitext2_valid.txt"))
            .Concat(Documents.Read(TestData.File("finance_en/fomc_minutes.jsonl")))
            .Concat(Documents.Read(TestData.File("finance_en/tatqa_reports.jsonl"))).ToList();
        var web = Documents.Read(TestData.File("general_en/c4_demo.jsonl")).ToList();
        var rng = new Random(5);
        curated = curated.OrderBy(_ => rng.Next()).ToList();
        web = web.OrderBy(_ => rng.Next()).ToList();
        int nc = curated.Count * 3 / 4, nw = web.Count * 3 / 4;
        var model = QualityClassifier.Train(curated[..nc], web[..nw], seed: 3);
        var testPos = curated[nc..]; var testNeg = web[nw..];
        double acc = (testPos.Count(t => model.Score(t) >= 0.5) + testNeg.Count(t => model.Score(t) < 0.5)) / (double)(testPos.Count + testNeg.Count);
        Assert.True(acc >= 0.85, $"held-out accuracy {acc:P1}");
        Assert.Throws<ArgumentException>(() => QualityClassifier.Train(curated, []));
    }
}
