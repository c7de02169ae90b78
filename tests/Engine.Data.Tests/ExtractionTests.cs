using System.IO.Compression;
using System.Text;
using Engine.Data.Extraction;
using Engine.Data.Prepare;
using Parquet;
using Parquet.Schema;
using UglyToad.PdfPig.Content;
using UglyToad.PdfPig.Core;
using UglyToad.PdfPig.Fonts.Standard14Fonts;
using UglyToad.PdfPig.Writer;

namespace Engine.Data.Tests;

/// <summary>engine prepare's readers: HTML, PDF, Parquet and zstd fixtures made here, and hostile inputs.</summary>
public class ExtractionTests
{
    const string Page = """
        <!DOCTYPE html><html><head><title>Results</title><style>p { color: red }</style><script>var tracking = 1;</script></head>
        <body>
        <nav><a href="/">Home</a> | <a href="/markets">Markets</a> | <a href="/login">Sign in</a></nav>
        <header><h1>Finance Daily</h1></header>
        <article>
          <h2>Quarterly results beat expectations</h2>
          <p>The company reported revenue of 4.2 billion dollars for the third quarter, up twelve percent from a year earlier,
             driven by strong demand for its cloud services and a recovery in advertising spending across its main markets.</p>
          <p>Operating margin widened to 31 percent as the firm kept costs flat while sales grew, and management raised its
             full-year outlook, citing a healthy order backlog and improving conditions in the semiconductor supply chain.</p>
          <table><tr><th>Year</th><th>Revenue</th><th>Margin</th></tr><tr><td>2023</td><td>3.75</td><td>28%</td></tr><tr><td>2024</td><td>4.20</td><td>31%</td></tr></table>
          <p>The ratio is <math alttext="\frac{a}{b}"><mi>a</mi></math> by definition, and analysts expect the trend to continue into next year.</p>
        </article>
        <footer>Copyright 2024 Finance Daily. All rights reserved. Cookie settings.</footer>
        </body></html>
        """;

    [Fact]
    public void Html_main_content_is_extracted_with_tables_as_Markdown_and_formulas_as_LaTeX()
    {
        var r = HtmlExtractor.Extract(Page, "page.html");
        Assert.True(r.MainContent);
        Assert.Contains("revenue of 4.2 billion dollars", r.Text);
        Assert.Contains("| Year | Revenue | Margin |\n| --- | --- | --- |\n| 2023 | 3.75 | 28% |\n| 2024 | 4.20 | 31% |", r.Text);
        Assert.Equal(1, r.Tables);
        Assert.Contains("$\\frac{a}{b}$", r.Text);
        Assert.DoesNotContain("Sign in", r.Text);
        Assert.DoesNotContain("tracking", r.Text);
        Assert.DoesNotContain("Cookie settings", r.Text);
        Assert.DoesNotContain("<p>", r.Text);
    }

    [Fact]
    public void Html_without_an_article_falls_back_to_the_body_without_navigation()
    {
        var r = HtmlExtractor.Extract("<html><body><nav>Menu Login</nav><div>Short note.</div><script>x()</script></body></html>", "x.html");
        Assert.False(r.MainContent);
        Assert.Equal("Short note.", r.Text);
    }

    static byte[] Pdf(params string[] lines)
    {
        var b = new PdfDocumentBuilder();
        var font = b.AddStandard14Font(Standard14Font.Helvetica);
        var page = b.AddPage(PageSize.A4);
        double y = 750;
        foreach (var l in lines) { page.AddText(l, 12, new PdfPoint(50, y), font); y -= 20; }
        var page2 = b.AddPage(PageSize.A4);
        page2.AddText("Second page text.", 12, new PdfPoint(50, 750), font);
        return b.Build();
    }

    [Fact]
    public void Pdf_text_is_extracted_page_by_page()
    {
        var counts = new Counters();
        string text = PdfExtractor.Extract(Pdf("Net interest income rose in the quarter.", "Deposits were stable."), "a.pdf", counts);
        Assert.Contains("Net interest income rose in the quarter.", text);
        Assert.Contains("Deposits were stable.", text);
        Assert.Contains("Second page text.", text);
        Assert.Equal(2, counts["pdf_pages"]);
        var e = Assert.Throws<InvalidDataException>(() => PdfExtractor.Extract(Pdf("x")[..200], "cut.pdf", counts));
        Assert.StartsWith("cut.pdf: not a readable PDF", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    static string WriteParquet(string dir, string name, string column, string[][] groups)
    {
        var field = new DataField<string>(column);
        var id = new DataField<int>("id");
        string path = Path.Combine(dir, name);
        using (var fs = File.Create(path))
        {
            var w = ParquetWriter.CreateAsync(new ParquetSchema(field, id), fs).GetAwaiter().GetResult();
            int n = 0;
            foreach (var g in groups)
            {
                using var rg = w.CreateRowGroup();
                rg.WriteAsync(field, g, null).GetAwaiter().GetResult();
                rg.WriteAsync<int>(id, Enumerable.Range(n, g.Length).ToArray().AsMemory(), null, null, CancellationToken.None).GetAwaiter().GetResult();
                n += g.Length;
            }
            w.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        return path;
    }

    [Fact]
    public void Parquet_column_is_read_by_row_group_and_ranges_split_it()
    {
        string dir = TestData.TempDir();
        string path = WriteParquet(dir, "a.parquet", "content", [["first doc", "second doc"], ["third doc"], ["fourth doc", ""]]);
        var counts = new Counters();
        var o = new InputOptions { Field = "content" };
        Assert.Equal(["first doc", "second doc", "third doc", "fourth doc"], InputReader.Read(new InputPart(path), InputFormat.Auto, o, counts).ToList());
        Assert.Equal(3, counts["parquet_row_groups"]);
        Assert.Equal(1, counts["empty_records"]);
        Assert.Equal(["third doc", "fourth doc"], InputReader.Read(new InputPart(path, 1, 3), InputFormat.Parquet, o, new Counters()).ToList());
        Assert.Equal(3, ParquetInput.RowGroups(path));
        var missing = Assert.Throws<InvalidDataException>(() => InputReader.Read(new InputPart(path), InputFormat.Parquet, new InputOptions { Field = "body" }, counts).ToList());
        Assert.Contains("no column 'body' (columns: content, id)", missing.Message);
        string cut = Path.Combine(dir, "cut.parquet");
        File.WriteAllBytes(cut, File.ReadAllBytes(path)[..^40]);
        var e = Assert.Throws<InvalidDataException>(() => InputReader.Read(new InputPart(cut), InputFormat.Parquet, o, counts).ToList());
        Assert.StartsWith(cut + ": not a readable Parquet file", e.Message);
    }

    [Fact]
    public void A_Parquet_footer_that_made_the_reader_loop_is_refused_before_it_is_parsed()
    {
        // Parquet.Net 6.1.0 looped for minutes skipping a list whose mutated count is ~2^31; the footer walk refuses it
        // at once, and ParquetInput.Timeout (here 3 s) is what would refuse it if the walk let it through
        string path = Path.Combine(AppContext.BaseDirectory, "Fixtures", "parquet-loop.parquet");
        var saved = ParquetInput.Timeout;
        ParquetInput.Timeout = TimeSpan.FromSeconds(3);
        try
        {
            foreach (var read in new Action[] { () => InputReader.Read(new InputPart(path), InputFormat.Parquet, new InputOptions(), new Counters()).ToList(), () => ParquetInput.RowGroups(path) })
            {
                var e = Assert.Throws<InvalidDataException>(read);
                Assert.StartsWith(path + ": not a readable Parquet file (its footer's metadata is malformed at byte ", e.Message);
                Assert.DoesNotContain('\n', e.Message);
            }
        }
        finally { ParquetInput.Timeout = saved; }
    }

    [Fact]
    public void The_footer_walk_accepts_every_file_Parquet_Net_writes_and_refuses_each_cut()
    {
        string dir = TestData.TempDir();
        string path = WriteParquet(dir, "ok.parquet", "text", [["a", "b"], ["c"], ["d", "e", "f"]]);
        byte[] bytes = File.ReadAllBytes(path);
        using (var fs = File.OpenRead(path)) ParquetFooter.Check(path, fs);
        // every byte of the footer and its length changed one way: refused with one line or accepted — never a loop or a crash
        int footer = BitConverter.ToInt32(bytes, bytes.Length - 8);
        for (int i = bytes.Length - 8 - footer; i < bytes.Length; i++)
        {
            var copy = (byte[])bytes.Clone();
            copy[i] ^= 0xFF;
            File.WriteAllBytes(path, copy);
            using var fs = File.OpenRead(path);
            try { ParquetFooter.Check(path, fs); }
            catch (InvalidDataException e) { Assert.StartsWith(path + ": not a readable Parquet file (", e.Message); }
        }
        File.WriteAllBytes(path, bytes[..^1]);
        using (var fs = File.OpenRead(path))
            Assert.Contains("does not end with the Parquet magic PAR1", Assert.Throws<InvalidDataException>(() => ParquetFooter.Check(path, fs)).Message);
    }

    static readonly string Jsonl = string.Concat(Enumerable.Range(0, 200).Select(i => $"{{\"text\": \"document number {i} with some words\"}}\n"));

    [Fact]
    public void Zstd_and_gzip_JSONL_stream_and_truncation_is_one_error_naming_the_file()
    {
        string dir = TestData.TempDir();
        byte[] raw = Encoding.UTF8.GetBytes(Jsonl);
        string zst = Path.Combine(dir, "a.jsonl.zst"), gz = Path.Combine(dir, "a.jsonl.gz");
        File.WriteAllBytes(zst, new ZstdSharp.Compressor(3).Wrap(raw).ToArray());
        using (var f = File.Create(gz)) using (var z = new GZipStream(f, CompressionLevel.Optimal)) z.Write(raw);
        foreach (var p in new[] { zst, gz })
        {
            var docs = InputReader.Read(new InputPart(p), InputFormat.Auto, new InputOptions(), new Counters()).ToList();
            Assert.Equal(200, docs.Count);
            Assert.Equal("document number 199 with some words", docs[^1]);
            string cut = p.Replace("a.jsonl", "cut.jsonl");
            var bytes = File.ReadAllBytes(p);
            File.WriteAllBytes(cut, bytes[..(bytes.Length / 2)]);
            var e = Assert.Throws<InvalidDataException>(() => InputReader.Read(new InputPart(cut), InputFormat.Auto, new InputOptions(), new Counters()).ToList());
            Assert.StartsWith(cut + ":", e.Message);
            Assert.Contains("truncated", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        string notZstd = Path.Combine(dir, "plain.jsonl.zst");
        File.WriteAllBytes(notZstd, raw);
        Assert.Contains("not Zstandard data", Assert.Throws<InvalidDataException>(() => InputReader.Read(new InputPart(notZstd), InputFormat.Auto, new InputOptions(), new Counters()).ToList()).Message);
    }

    [Fact]
    public void Jsonl_byte_ranges_give_each_record_to_exactly_one_range()
    {
        string dir = TestData.TempDir();
        string path = Path.Combine(dir, "big.jsonl");
        File.WriteAllText(path, Jsonl);
        long size = new FileInfo(path).Length;
        var all = new List<string>();
        for (long start = 0; start < size; start += 333)
            all.AddRange(InputReader.Read(new InputPart(path, start, Math.Min(size, start + 333)), InputFormat.Jsonl, new InputOptions(), new Counters()));
        Assert.Equal(InputReader.Read(new InputPart(path), InputFormat.Jsonl, new InputOptions(), new Counters()), all);
        Assert.Equal(200, all.Count);
    }

    /// <summary>A stream of one line of <c>length</c> bytes, then a short JSON line, made as it is read (nothing held).</summary>
    sealed class LongLineStream(long length) : Stream
    {
        readonly byte[] _tail = "\n{\"text\": \"after the long line\"}\n"u8.ToArray();
        long _pos;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => length + _tail.Length;
        public override long Position { get => _pos; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = 0;
            while (n < count && _pos < Length)
            {
                buffer[offset + n++] = _pos < length ? (byte)'a' : _tail[_pos - length];
                _pos++;
                if (_pos < length && n < count)
                {
                    int run = (int)Math.Min(count - n, length - _pos);
                    buffer.AsSpan(offset + n, run).Fill((byte)'a');
                    n += run;
                    _pos += run;
                }
            }
            return n;
        }
    }

    [Fact]
    public void A_one_gigabyte_line_is_skipped_with_bounded_memory()
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var reader = new BoundedLineReader(new LongLineStream(1L << 30), max: 1 << 20);
        Assert.True(reader.Next(out var line, out _, out bool tooLong));
        Assert.True(tooLong);
        Assert.Empty(line);
        Assert.True(reader.Next(out line, out long at, out tooLong));
        Assert.False(tooLong);
        Assert.Equal("{\"text\": \"after the long line\"}", Encoding.UTF8.GetString(line));
        Assert.Equal((1L << 30) + 1, at);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < 8 << 20, $"{allocated:N0} bytes allocated reading a 1 GiB line (bounded by the 1 MiB limit)");
    }

    [Fact]
    public void Invalid_utf8_records_are_repaired_dropped_or_refused_by_policy()
    {
        string dir = TestData.TempDir();
        string path = Path.Combine(dir, "bad.jsonl");
        File.WriteAllBytes(path, [.. "{\"text\": \"good record\"}\n{\"text\": \"bad "u8, 0xC3, 0x28, .. " byte\"}\n{oops\n"u8]);
        var c = new Counters();
        var repaired = InputReader.Read(new InputPart(path), InputFormat.Auto, new InputOptions { InvalidUtf8 = InvalidUtf8Policy.Repair }, c).ToList();
        Assert.Equal(["good record", "bad \uFFFD( byte"], repaired);
        Assert.Equal(1, c["invalid_utf8_records_repaired"]);
        Assert.Equal(1, c["malformed_records"]);
        c = new Counters();
        Assert.Equal(["good record"], InputReader.Read(new InputPart(path), InputFormat.Auto, new InputOptions { InvalidUtf8 = InvalidUtf8Policy.Drop }, c).ToList());
        Assert.Equal(1, c["invalid_utf8_records_dropped"]);
        var e = Assert.Throws<InvalidDataException>(() => InputReader.Read(new InputPart(path), InputFormat.Auto, new InputOptions { InvalidUtf8 = InvalidUtf8Policy.Error }, new Counters()).ToList());
        Assert.Equal($"{path}: invalid UTF-8 in the record at byte 24 (set invalid_utf8 to repair or drop)", e.Message);
    }

    [Fact]
    public void Prepare_reads_every_format_counts_extractions_and_skips_hostile_files()
    {
        string root = TestData.TempDir(), dir = Path.Combine(root, "in");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "page.html"), Page);
        File.WriteAllBytes(Path.Combine(dir, "report.pdf"), Pdf("Net interest income rose in the quarter as deposit costs fell and loan growth held up across the regions.", "Deposits were stable."));
        WriteParquet(dir, "rows.parquet", "text", [["Parquet row one holds enough words to pass the length filter easily.", "Parquet row two also holds enough words to pass the length filter."]]);
        File.WriteAllBytes(Path.Combine(dir, "rows.jsonl.zst"), new ZstdSharp.Compressor(3).Wrap(Encoding.UTF8.GetBytes(
            "{\"text\": \"A zstd compressed record with enough words to pass the filters.\"}\n")).ToArray());
        byte[] gz;
        using (var ms = new MemoryStream())
        {
            using (var z = new GZipStream(ms, CompressionLevel.Optimal, leaveOpen: true)) z.Write(Encoding.UTF8.GetBytes(Jsonl));
            gz = ms.ToArray();
        }
        File.WriteAllBytes(Path.Combine(dir, "cut.jsonl.gz"), gz[..(gz.Length / 2)]);
        File.WriteAllBytes(Path.Combine(dir, "binary.jsonl"), [0, 1, 2, 3, 0, 10]);
        File.WriteAllBytes(Path.Combine(dir, "fake.pdf"), "not a pdf at all"u8.ToArray());
        File.WriteAllText(Path.Combine(root, "p.toml"), $$"""
            output_dir = "out"
            [[sources]]
            name = "mixed"
            files = ["{{dir.Replace("\\", "/")}}/*.*"]
            [cleaning]
            min_chars = 10
            [tokenizer]
            vocab_size = 300
            """);
        var cfg = PrepareConfig.Load(Path.Combine(root, "p.toml"));
        var r = PreparePipeline.Run(cfg, null, TestContext.Current.CancellationToken);
        Assert.True(r.SkippedFiles.Count == 3, string.Join("\n", r.SkippedFiles));
        Assert.Contains(r.SkippedFiles, m => m.Contains("cut.jsonl.gz") && m.Contains("truncated"));
        Assert.Contains(r.SkippedFiles, m => m.Contains("binary.jsonl") && m.Contains("binary content"));
        Assert.Contains(r.SkippedFiles, m => m.Contains("fake.pdf") && m.Contains("not a readable PDF"));
        Assert.All(r.SkippedFiles, m => Assert.DoesNotContain('\n', m));
        Assert.Equal(1, r.Extraction["html_pages"]);
        Assert.Equal(1, r.Extraction["html_tables_markdown"]);
        Assert.Equal(2, r.Extraction["pdf_pages"]);
        Assert.Equal(2, r.Extraction["parquet_rows"]);
        Assert.Equal(1, r.Extraction["jsonl_records"]);
        Assert.Equal(3, r.Extraction["files_skipped"]);
        var ex = r.Stages.Single(s => s.Stage == "extract");
        Assert.Equal(5, ex.DocumentsOut);   // html, pdf, 2 parquet rows, 1 zstd record; nothing from the skipped files
    }
}
