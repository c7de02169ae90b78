using System.Text;
using Engine.Data;

namespace Engine.Data.Tests;

public class DocumentsTests
{
    [Fact]
    public void Every_shipped_file_reads_into_documents()
    {
        foreach (var rel in TestData.AllFiles())
        {
            var stats = new DocumentReadStats();
            var docs = Documents.Read(TestData.File(rel), null, stats).ToList();
            Assert.True(docs.Count > 0, $"{rel}: no documents");
            Assert.All(docs, d => Assert.False(string.IsNullOrWhiteSpace(d), $"{rel}: blank document"));
            Assert.Equal(0, stats.MalformedRecordsSkipped);
        }
    }

    [Fact]
    public void WikiText_splits_on_top_level_headings_only()
    {
        var docs = Documents.Read(TestData.File("general_en/wikitext2_valid.txt")).ToList();
        Assert.True(docs.Count > 30, $"expected dozens of articles, got {docs.Count}");
        Assert.All(docs, d => Assert.Matches(@"^= [^=].* =", d));
        Assert.StartsWith("= Homarus gammarus =", docs[0]);
        Assert.Contains(" = = ", docs[0]); // sub-headings stay inside the article
    }

    [Fact]
    public void Plain_text_merges_blank_line_blocks_to_a_few_KB()
    {
        var docs = Documents.Read(TestData.File("general_en/tinyshakespeare.txt")).ToList();
        Assert.True(docs.Count > 100);
        Assert.All(docs, d => Assert.InRange(d.Length, 1, 6000));
        Assert.StartsWith("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.", docs[0]);
    }

    [Fact]
    public void Csv_takes_the_sentence_column_with_quoting()
    {
        string dir = TestData.TempDir();
        string path = Path.Combine(dir, "x.csv");
        File.WriteAllText(path, "label,sentence\npositive,\"Profit rose , \"\"strongly\"\" in Q1\"\nneutral,plain one\nbroken\n");
        var stats = new DocumentReadStats();
        var docs = Documents.Read(path, null, stats).ToList();
        Assert.Equal(["Profit rose , \"strongly\" in Q1", "plain one"], docs);
        Assert.Equal(1, stats.MalformedRecordsSkipped);
        var fpb = Documents.Read(TestData.File("eval/fpb_test.csv")).ToList();
        Assert.Equal(969, fpb.Count);
        Assert.DoesNotContain(fpb, d => d is "positive" or "negative" or "neutral");
    }

    [Fact]
    public void Jsonl_uses_text_else_instruction_fields_and_counts_bad_lines()
    {
        string dir = TestData.TempDir();
        string path = Path.Combine(dir, "x.jsonl");
        File.WriteAllText(path, "{\"text\": \"hello\"}\n{not json\n{\"instruction\": \"Q\", \"input\": \"\", \"output\": \"A\"}\n{\"other\": 1}\n\n");
        var stats = new DocumentReadStats();
        var docs = Documents.Read(path, null, stats).ToList();
        Assert.Equal(["hello", "Q\nA"], docs);
        Assert.Equal(2, stats.MalformedRecordsSkipped);
    }

    [Fact]
    public void Bad_inputs_are_clear_errors_or_counted()
    {
        string dir = TestData.TempDir();
        var missing = Assert.Throws<FileNotFoundException>(() => Documents.Read(Path.Combine(dir, "nope.txt")).ToList());
        Assert.Contains("nope.txt", missing.Message);

        string empty = Path.Combine(dir, "empty.jsonl");
        File.WriteAllBytes(empty, []);
        var st = new DocumentReadStats();
        Assert.Empty(Documents.Read(empty, null, st));
        Assert.Equal(1, st.EmptyFiles);

        string bin = Path.Combine(dir, "bin.txt");
        File.WriteAllBytes(bin, [0x7F, 0x45, 0x4C, 0x46, 0, 0, 1, 2]);
        var e1 = Assert.Throws<InvalidDataException>(() => Documents.Read(bin).ToList());
        Assert.Contains("bin.txt", e1.Message);
        Assert.Contains("binary", e1.Message);

        // GBK-encoded Chinese is not UTF-8: error by default, repaired or dropped on request, counted.
        string gbk = Path.Combine(dir, "gbk.txt");
        File.WriteAllBytes(gbk, [.. Encoding.UTF8.GetBytes("good line\n"), 0xD6, 0xD0, 0xCE, 0xC4, 0x0A, .. Encoding.UTF8.GetBytes("another good line\n")]);
        var e2 = Assert.Throws<InvalidDataException>(() => Documents.Read(gbk).ToList());
        Assert.Contains("gbk.txt", e2.Message);
        Assert.Contains("offset 10", e2.Message);
        var rs = new DocumentReadStats();
        var repaired = Documents.Read(gbk, new DocumentReadOptions { InvalidUtf8 = InvalidUtf8Policy.Repair }, rs).Single();
        Assert.Contains('\uFFFD', repaired);
        Assert.Equal(1, rs.InvalidUtf8LinesRepaired);
        var ds = new DocumentReadStats();
        var dropped = Documents.Read(gbk, new DocumentReadOptions { InvalidUtf8 = InvalidUtf8Policy.Drop }, ds).Single();
        Assert.Equal("good line\nanother good line", dropped);
        Assert.Equal(1, ds.InvalidUtf8LinesDropped);

        // UTF-16 with a byte-order mark is decoded.
        string u16 = Path.Combine(dir, "u16.txt");
        File.WriteAllBytes(u16, [.. Encoding.Unicode.GetPreamble(), .. Encoding.Unicode.GetBytes("利率 rose")]);
        Assert.Equal("利率 rose", Documents.Read(u16).Single());

        string notJson = Path.Combine(dir, "garbage.jsonl");
        File.WriteAllText(notJson, "this is not json\nnor this\n");
        var e3 = Assert.Throws<InvalidDataException>(() => Documents.Read(notJson).ToList());
        Assert.Contains("garbage.jsonl", e3.Message);

        string unknown = Path.Combine(dir, "x.parquet");
        File.WriteAllText(unknown, "x");
        Assert.Throws<NotSupportedException>(() => Documents.Read(unknown).ToList());
    }

    [Fact]
    public void Instructions_read_alpaca_jsonl_and_self_instruct()
    {
        var en = Instructions.Read(TestData.File("instruct/alpaca_en_demo.json")).ToList();
        Assert.Equal(999, en.Count); // the file holds 999 records
        Assert.Equal("Describe a process of making crepes.", en[0].Instruction);
        Assert.Equal("", en[0].Input);
        var tat = Instructions.Read(TestData.File("instruct/fin_en_tatqa_qa.jsonl")).ToList();
        Assert.Equal(834, tat.Count);
        Assert.All(tat, x => Assert.NotEmpty(x.Output));
        var seed = Instructions.Read(TestData.File("instruct/self_instruct_seed_tasks.jsonl")).ToList();
        Assert.True(seed.Count >= 175, $"one example per instance, got {seed.Count}");
        Assert.StartsWith("Is there anything I can eat for a breakfast", seed[0].Instruction);

        string dir = TestData.TempDir();
        string bad = Path.Combine(dir, "bad.json");
        File.WriteAllText(bad, "[{\"text\": \"no instruction here\"}]");
        var e = Assert.Throws<InvalidDataException>(() => Instructions.Read(bad).ToList());
        Assert.Contains("bad.json", e.Message);
    }
}
