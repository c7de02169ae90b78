using Engine.Data;
using Engine.Data.Shards;

namespace Engine.Data.Tests;

public class ShardTests
{
    static string Write(string dir, string name, IEnumerable<int[]> docs, int vocab)
    {
        string basePath = Path.Combine(dir, name);
        using var w = new ShardWriter(basePath, vocab);
        foreach (var d in docs) w.Add(d);
        w.Complete();
        return basePath;
    }

    [Theory]
    [InlineData(1500)]      // uint16
    [InlineData(100_000)]   // int32
    public void Write_read_validate_round_trip(int vocab)
    {
        var rng = new Random(3);
        var docs = Enumerable.Range(0, 200).Select(i => Enumerable.Range(0, rng.Next(0, 300)).Select(_ => rng.Next(vocab)).ToArray()).ToList();
        string b = Write(TestData.TempDir(), "s", docs, vocab);
        using (var r = ShardReader.Open(b, verifyChecksums: true))
        {
            Assert.Equal(vocab <= 65536 ? TokenDType.UInt16 : TokenDType.Int32, r.DType);
            Assert.Equal(200, r.DocumentCount);
            Assert.Equal(docs.Sum(d => (long)d.Length), r.TokenCount);
            for (int i = 0; i < docs.Count; i++) Assert.Equal(docs[i], r.Document(i));
            var part = new int[5];
            int longDoc = docs.FindIndex(d => d.Length >= 20);
            r.Read(longDoc, 10, part);
            Assert.Equal(docs[longDoc][10..15], part);
        }
        var v = ShardValidator.Validate(b);
        Assert.True(v.Ok, string.Join("; ", v.Problems));
        Assert.Equal(200, v.Documents);
    }

    [Fact]
    public void Shard_feeds_the_packed_stream_like_memory_does()
    {
        var tok = TestData.SmallTokenizer;
        var texts = Documents.Read(TestData.File("finance_en/fomc_statements.jsonl")).Take(30).ToList();
        var mem = InMemoryTokenSource.FromTexts(texts, tok);
        string b = Write(TestData.TempDir(), "fomc", texts.Select(tok.Encode), tok.VocabSize);
        using var shard = ShardReader.Open(b);
        var s1 = new PackedPretrainStream(mem, 64, tok.EosId, 9);
        var s2 = new PackedPretrainStream(shard, 64, tok.EosId, 9);
        for (int i = 0; i < 200; i++) Assert.Equal(s1.Next().Tokens, s2.Next().Tokens);
    }

    [Fact]
    public void Corrupt_truncated_and_mismatched_shards_are_refused()
    {
        string dir = TestData.TempDir();
        var docs = Enumerable.Range(0, 50).Select(i => Enumerable.Range(i, 40).ToArray()).ToList();
        string good = Write(dir, "good", docs, 1000);
        string other = Write(dir, "other", docs.Take(49), 1000);

        string Copy(string name)
        {
            string b = Path.Combine(dir, name);
            File.Copy(good + ".bin", b + ".bin", true);
            File.Copy(good + ".idx", b + ".idx", true);
            return b;
        }
        void Refused(string b, string expect, bool needsChecksum = false)
        {
            if (!needsChecksum) Assert.Contains(expect, Assert.Throws<InvalidDataException>(() => ShardReader.Open(b).Dispose()).Message);
            var v = ShardValidator.Validate(b);
            Assert.False(v.Ok);
            Assert.Contains(v.Problems, p => p.Contains(expect));
        }

        string trunc = Copy("trunc");
        using (var f = new FileStream(trunc + ".bin", FileMode.Open)) f.SetLength(f.Length - 7);
        Refused(trunc, "truncated");

        string tiny = Copy("tiny");
        File.WriteAllBytes(tiny + ".bin", [1, 2, 3]);
        Refused(tiny, "shorter than");

        string flipped = Copy("flipped");
        var bytes = File.ReadAllBytes(flipped + ".bin");
        bytes[200] ^= 0x10;
        File.WriteAllBytes(flipped + ".bin", bytes);
        using (ShardReader.Open(flipped)) { } // structure is fine; only the checksum can tell
        Assert.Throws<InvalidDataException>(() => ShardReader.Open(flipped, verifyChecksums: true));
        Refused(flipped, "checksum mismatch", needsChecksum: true);

        string magic = Copy("magic");
        bytes = File.ReadAllBytes(magic + ".bin");
        bytes[0] = (byte)'X';
        File.WriteAllBytes(magic + ".bin", bytes);
        Refused(magic, "bad magic");

        string version = Copy("version");
        bytes = File.ReadAllBytes(version + ".idx");
        bytes[8] = 9;
        File.WriteAllBytes(version + ".idx", bytes);
        Refused(version, "version 9");

        string mismatched = Copy("mismatched");
        File.Copy(other + ".idx", mismatched + ".idx", true);
        Refused(mismatched, "index counts");

        string offsets = Copy("offsets");
        bytes = File.ReadAllBytes(offsets + ".idx");
        BitConverter.GetBytes(5000L).CopyTo(bytes, ShardFormat.HeaderBytes + 8 * 3);
        File.WriteAllBytes(offsets + ".idx", bytes);
        Refused(offsets, "offset 4");

        Assert.Throws<FileNotFoundException>(() => ShardReader.Open(Path.Combine(dir, "absent")));
        Assert.False(ShardValidator.Validate(Path.Combine(dir, "absent")).Ok);
        Assert.Throws<ArgumentOutOfRangeException>(() => { using var w = new ShardWriter(Path.Combine(dir, "v"), 10); w.Add([3, 10]); });
        Assert.False(File.Exists(Path.Combine(dir, "v.bin")));
    }
}
