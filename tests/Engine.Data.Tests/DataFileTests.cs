using System.IO.Compression;
using System.Text;

namespace Engine.Data.Tests;

/// <summary>gzip-compressed data files (the shipped data/ folder's form) and the one data-path resolver.</summary>
public class DataFileTests
{
    static byte[] Gzip(byte[] raw)
    {
        var ms = new MemoryStream();
        using (var z = new GZipStream(ms, CompressionLevel.SmallestSize, leaveOpen: true)) z.Write(raw);
        return ms.ToArray();
    }

    [Fact]
    public void Every_reader_reads_a_gz_file_as_its_plain_twin()
    {
        string dir = TestData.TempDir();
        foreach (var rel in new[] { "general_en/wikitext2_valid.txt", "general_en/tinyshakespeare.txt", "finance_zh/finnl_news.jsonl", "instruct/alpaca_zh_demo.json", "eval/fpb_test.csv" })
        {
            string text = TextDecoding.ReadFile(TestData.File(rel), InvalidUtf8Policy.Error);
            string name = Path.GetFileName(rel);
            File.WriteAllText(Path.Combine(dir, name), text);
            File.WriteAllBytes(Path.Combine(dir, name + ".gz"), Gzip(Encoding.UTF8.GetBytes(text)));
            Assert.Equal(Documents.Read(Path.Combine(dir, name)), Documents.Read(Path.Combine(dir, name + ".gz")));
            if (name.EndsWith(".json", StringComparison.Ordinal))
                Assert.Equal(Instructions.Read(Path.Combine(dir, name)), Instructions.Read(Path.Combine(dir, name + ".gz")));
        }
        // the stats count the text's bytes, not the compressed ones
        var stats = new DocumentReadStats();
        Documents.Read(Path.Combine(dir, "fpb_test.csv.gz"), null, stats).ToList();
        Assert.Equal(new FileInfo(Path.Combine(dir, "fpb_test.csv")).Length, stats.Bytes);
    }

    [Fact]
    public void Several_gzip_members_read_as_one_file()
    {
        string path = Path.Combine(TestData.TempDir(), "two.jsonl.gz");
        File.WriteAllBytes(path, [.. Gzip("{\"text\": \"first\"}\n"u8.ToArray()), .. Gzip("{\"text\": \"second\"}\n"u8.ToArray())]);
        Assert.Equal(["first", "second"], Documents.Read(path));
    }

    [Fact]
    public void Broken_gz_files_are_errors_naming_the_file()
    {
        string dir = TestData.TempDir();
        byte[] good = File.ReadAllBytes(TestData.File("eval/fpb_test.csv"));
        Assert.True(DataFile.IsGzip(TestData.File("eval/fpb_test.csv")), "the shipped file is stored compressed");
        void Refused(string name, byte[] bytes, string why)
        {
            string path = Path.Combine(dir, name);
            File.WriteAllBytes(path, bytes);
            var e = Assert.Throws<InvalidDataException>(() => Documents.Read(path));
            Assert.Contains(path, e.Message);
            Assert.Contains(why, e.Message);
        }
        foreach (int cut in new[] { 4, 8, 100, 20_000, good.Length - 10 })
            Refused($"cut{cut}.csv.gz", good[..^cut], "truncated gzip data");
        Refused("plain.csv.gz", "label,sentence\npositive,up\n"u8.ToArray(), "not gzip data");
        Refused("empty.csv.gz", [], "not gzip data");
        var flipped = (byte[])good.Clone();
        flipped[1000] ^= 0xFF;
        Refused("flipped.csv.gz", flipped, "corrupt gzip data");
    }

    [Fact]
    public void Inflating_past_the_limit_stops_there()
    {
        byte[] bomb = Gzip(new byte[1 << 20]);   // 1 MiB of zeros in about 1 KB
        var e = Assert.Throws<InvalidDataException>(() => DataFile.Gunzip(bomb, "bomb.gz", maxBytes: 100_000));
        Assert.Contains("bomb.gz: inflates to more than 100,000 bytes", e.Message);
        Assert.Equal(1 << 20, DataFile.Gunzip(bomb, "bomb.gz").Length);
    }

    [Fact]
    public void The_format_is_the_extension_before_gz()
    {
        Assert.Equal(".jsonl", DataFile.Extension("a/b.JSONL.gz"));
        Assert.Equal(".csv", DataFile.Extension("b.csv"));
        Assert.Equal(".json", DataFile.Extension("b.json.Gz"));
        Assert.Equal("", DataFile.Extension("b.gz"));
        string path = Path.Combine(TestData.TempDir(), "x.bin.gz");
        File.WriteAllBytes(path, Gzip("text"u8.ToArray()));
        Assert.Throws<NotSupportedException>(() => Documents.Read(path));
    }

    [Fact]
    public void Data_names_resolve_under_the_data_folder_and_find_the_gz_twin()
    {
        string root = TestData.TempDir();
        string data = Path.Combine(root, "data");
        Directory.CreateDirectory(Path.Combine(data, "eval"));
        File.WriteAllText(Path.Combine(data, DataPaths.SourcesFile), "");
        File.WriteAllText(Path.Combine(data, "eval", "plain.csv"), "x");
        File.WriteAllBytes(Path.Combine(data, "eval", "packed.csv.gz"), Gzip("x"u8.ToArray()));
        string deep = Path.Combine(root, "src", "bin", "Release");
        Directory.CreateDirectory(deep);

        // walking up from a folder inside the repository finds its data/ (the folder holding SOURCES.md)
        Assert.Equal(data, DataPaths.TryFind(null, deep));
        Assert.Null(DataPaths.TryFind(null, Path.Combine(root, "..")));            // nothing above the temp folder
        Assert.Equal(data, DataPaths.TryFind(null, Path.GetTempPath(), deep));     // the next start is tried
        // the variable wins; a missing folder named there is no data folder
        Assert.Equal(Path.Combine(data, "eval"), DataPaths.TryFind(Path.Combine(data, "eval"), deep));
        Assert.Null(DataPaths.TryFind(Path.Combine(root, "nowhere"), deep));

        Assert.Equal(Path.Combine(data, "eval", "plain.csv"), DataPaths.WithCompressedTwin(Path.Combine(data, "eval", "plain.csv")));
        Assert.Equal(Path.Combine(data, "eval", "packed.csv.gz"), DataPaths.WithCompressedTwin(Path.Combine(data, "eval", "packed.csv")));
        Assert.Equal(Path.Combine(data, "eval", "missing.csv"), DataPaths.WithCompressedTwin(Path.Combine(data, "eval", "missing.csv")));

        // config paths: data:… under the process's data folder, relative ones against the config's folder
        Assert.Equal(TestData.File("eval/fpb_test.csv"), DataPaths.Resolve("data:eval/fpb_test.csv", root));
        Assert.EndsWith(Path.Combine("eval", "fpb_test.csv.gz"), DataPaths.Resolve("data:eval/fpb_test.csv", root));
        Assert.Equal(Path.Combine(root, "runs", "x"), DataPaths.Resolve("src/../runs/x", root));
        Assert.Equal("/abs/file.txt", DataPaths.Resolve("/abs/file.txt", root));
    }

    [Theory]
    [InlineData("data:../../../etc/passwd")]
    [InlineData("data:eval/../../outside.txt")]
    [InlineData("data:/etc/passwd")]
    public void Data_names_cannot_leave_the_data_folder(string name)
    {
        var e = Assert.Throws<ArgumentException>(() => DataPaths.Resolve(name, TestData.TempDir()));
        Assert.Contains($"{name}: resolves to ", e.Message);
        Assert.Contains("outside the data folder", e.Message);
    }

    /// <summary>A device never ends (/dev/zero read whole ran out of memory after 18 s) and a FIFO without a writer blocks
    /// forever: every reader refuses both by name before opening them.</summary>
    [Fact]
    public void Devices_and_fifos_are_refused_by_name_before_they_are_read()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "device and FIFO detection needs statx (Linux)");
        var e = Assert.Throws<InvalidDataException>(() => Documents.Read("/dev/zero"));
        Assert.Equal("data file /dev/zero is a character device, not a regular file: data, configs and weights are read from regular files (a device never ends, a FIFO blocks)", e.Message);
        Assert.Contains("/dev/urandom is a character device", Assert.Throws<InvalidDataException>(() => Instructions.Read("/dev/urandom")).Message);
        Assert.Contains("is a character device", Assert.Throws<InvalidDataException>(() => BpeTokenizer.Load("/dev/zero")).Message);
        Assert.Contains("is a character device", Assert.Throws<InvalidDataException>(() => DataFile.ReadAllBytes("/dev/zero")).Message);
        string fifo = Path.Combine(TestData.TempDir(), "pipe.jsonl");
        using (var mk = System.Diagnostics.Process.Start("mkfifo", [fifo])) mk.WaitForExit();
        var f = Assert.Throws<InvalidDataException>(() => Documents.Read(fifo));
        Assert.Equal($"data file {fifo} is a FIFO (named pipe), not a regular file: data, configs and weights are read from regular files (a device never ends, a FIFO blocks)", f.Message);
        Assert.Equal($"data file not found: {fifo}.missing", Assert.Throws<FileNotFoundException>(() => Documents.Read(fifo + ".missing")).Message);
    }

    /// <summary>A line past the stated limit (TextDecoding.MaxLineBytes) is refused naming its number and size, before
    /// it is decoded, split or tokenized; a .json document (one value, often one line) is not cut by it.</summary>
    [Fact]
    public void A_line_longer_than_the_limit_is_refused_naming_it()
    {
        string dir = TestData.TempDir(), path = Path.Combine(dir, "long.txt");
        const int head = 11;   // "first line\n"
        var bytes = new byte[head + TextDecoding.MaxLineBytes + 1];
        bytes.AsSpan().Fill((byte)'a');
        "first line\n"u8.CopyTo(bytes);
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<InvalidDataException>(() => Documents.Read(path));
        Assert.Equal($"{path}: line 2 holds {TextDecoding.MaxLineBytes + 1:N0} bytes, more than the {TextDecoding.MaxLineBytes:N0} a line may hold " +
            "(a line is tokenized whole; memory grows with it): break the text into lines", e.Message);
        // at the limit exactly: read
        File.WriteAllBytes(path, bytes.AsSpan(0, head + TextDecoding.MaxLineBytes).ToArray());
        var docs = Documents.Read(path).ToList();
        Assert.Equal(["first line", new string('a', TextDecoding.MaxLineBytes)], docs);
        // a .json document is one value, whatever its lines
        string json = Path.Combine(dir, "one.json");
        File.WriteAllText(json, "[{\"text\": \"" + new string('b', TextDecoding.MaxLineBytes) + "\"}]");
        Assert.Equal(TextDecoding.MaxLineBytes, Assert.Single(Documents.Read(json)).Length);
    }
}
