using System.Buffers.Binary;
using System.Text;
using Engine.Core;
using Engine.Model;
using Engine.Model.Export;
using Engine.Model.IO;

namespace Engine.Fuzz.Tests;

/// <summary>safetensors files, sharded indexes, config.json and GGUF files built to break one rule each.</summary>
public class ModelFileHostileTests
{
    /// <summary>A safetensors file: u64 header length, the header bytes as given, then <paramref name="dataBytes"/> zero bytes.</summary>
    static byte[] SafeTensors(byte[] header, int dataBytes, ulong? claimedLength = null)
    {
        var b = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, claimedLength ?? (ulong)header.Length);
        header.CopyTo(b, 8);
        return b;
    }

    static byte[] SafeTensors(string header, int dataBytes) => SafeTensors(Encoding.UTF8.GetBytes(header), dataBytes);

    static InvalidDataException Refused(TempDir dir, byte[] file)
    {
        string path = dir.Write("m.safetensors", file);
        var e = Assert.Throws<InvalidDataException>(() => { using var f = SafeTensorsFile.Open(path); });
        Assert.Contains(path, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        return e;
    }

    [Fact]
    public void SafeTensorsHeaderWithAnInvalidUtf8ByteIsRefusedNamingTheOffset()
    {
        using var dir = new TempDir();
        var header = Encoding.UTF8.GetBytes("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""");
        header[3] = 0xFF;   // inside the name "a"… now an invalid byte
        Assert.Contains("not valid UTF-8 (byte 3", Refused(dir, SafeTensors(header, 4)).Message);
    }

    [Fact]
    public void ShapeWhoseSizeOverflows64BitsIsRefused()
    {
        using var dir = new TempDir();
        var e = Refused(dir, SafeTensors("""{"w":{"dtype":"F32","shape":[1099511627776,1073741824],"data_offsets":[0,4]}}""", 4));
        Assert.Contains("overflows 64 bits", e.Message);
    }

    [Fact]
    public void SpanMustEqualElementsTimesDtypeSize()
    {
        using var dir = new TempDir();
        var e = Refused(dir, SafeTensors("""{"w":{"dtype":"BF16","shape":[3],"data_offsets":[0,4]}}""", 4));
        Assert.Contains("is 6 bytes but data_offsets span 4", e.Message);
    }

    [Fact]
    public void DuplicateTensorNamesAndOverlapsAndGapsAreRefused()
    {
        using var dir = new TempDir();
        Assert.Contains("appears twice", Refused(dir, SafeTensors("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8)).Message);
        Assert.Contains("overlaps", Refused(dir, SafeTensors("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8)).Message);
        Assert.Contains("gap of 4 bytes", Refused(dir, SafeTensors("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", 8)).Message);
        Assert.Contains("invalid data_offsets", Refused(dir, SafeTensors("""{"a":{"dtype":"F32","shape":[1],"data_offsets":["0",4]}}""", 4)).Message);
    }

    [Fact]
    public void HeaderLengthBeyondTheBoundOrTheFileIsRefusedBeforeAllocating()
    {
        using var dir = new TempDir();
        var header = Encoding.UTF8.GetBytes("{}");
        Assert.Contains("exceeds the 100000000-byte bound", Refused(dir, SafeTensors(header, 0, claimedLength: 100_000_001)).Message);
        Assert.Contains("runs past the end", Refused(dir, SafeTensors(header, 0, claimedLength: 99_000_000)).Message);
    }

    [Fact]
    public void IndexNamingAShardOutsideTheDirectoryOrATensorTwiceIsRefused()
    {
        using var dir = new TempDir();
        string path = dir.Write(SafeTensorsIndex.IndexFile, """{"weight_map": {"a": "../x.safetensors"}}""");
        Assert.Contains("is not a file in the model directory", Assert.Throws<InvalidDataException>(() => SafeTensorsIndex.Read(path)).Message);
        dir.Write(SafeTensorsIndex.IndexFile, """{"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}}""");
        Assert.Contains("listed twice", Assert.Throws<InvalidDataException>(() => SafeTensorsIndex.Read(path)).Message);
        dir.Write(SafeTensorsIndex.IndexFile, """{"weight_map": {"a\ud800": "s1.safetensors"}}""");
        Assert.Contains(path, Assert.Throws<InvalidDataException>(() => SafeTensorsIndex.Read(path)).Message);
    }

    /// <summary>Writes a tiny model and replaces its config.json by <paramref name="edit"/>(the original).</summary>
    static (TempDir Dir, string ConfigPath) ModelWithConfig(Func<System.Text.Json.Nodes.JsonObject, System.Text.Json.Nodes.JsonObject> edit)
    {
        var dir = new TempDir();
        using (var m = SeedCorpus.TinyModel()) ModelIO.Save(m, dir.Path);
        string cfg = dir.File(ModelIO.ConfigFile);
        var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfg))!.AsObject();
        File.WriteAllText(cfg, edit(node).ToJsonString());
        return (dir, cfg);
    }

    [Theory]
    [InlineData("num_attention_heads", "0", "num_attention_heads must be positive")]
    [InlineData("vocab_size", "\"32\"", "'vocab_size' must be an integer")]
    [InlineData("vocab_size", "1e12", "'vocab_size' = 1e12 is not a 32-bit integer")]
    [InlineData("vocab_size", "2000000000", "the engine holds at most 2,147,483,647")]
    [InlineData("hidden_size", "1048576", "the engine holds at most 2,147,483,647")]
    [InlineData("num_hidden_layers", "100000", "describes a model of")]
    [InlineData("intermediate_size", "20000000", "describes a model of")]
    [InlineData("rope_theta", "1e400", "is not a finite number")]
    [InlineData("rms_norm_eps", "\"tiny\"", "'rms_norm_eps' must be a number")]
    public void HostileConfigJsonIsOneLineAndAllocatesNothingBig(string field, string value, string expected)
    {
        var (dir, cfg) = ModelWithConfig(o => { o[field] = System.Text.Json.Nodes.JsonNode.Parse(value); o.Remove("head_dim"); return o; });
        using (dir)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            var e = Assert.Throws<InvalidDataException>(() => { using var m = ModelIO.Load(dir.Path, CpuBackend.Instance); });
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.Contains(expected, e.Message);
            Assert.Contains(cfg, e.Message);
            Assert.DoesNotContain('\n', e.Message);
            Assert.True(allocated < 32 << 20, $"allocated {allocated:N0} bytes before refusing");   // the tiny model is ~10 KB
        }
    }

    [Fact]
    public void TheParameterLimitIsTheFlatStoresIntIndex()
    {
        var ok = new LlamaConfig { VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumLayers = 22, NumHeads = 32, NumKvHeads = 4 };
        Assert.True(ok.ParameterCountEstimate() < LlamaConfig.MaxParameters);   // TinyLlama 1.1B: fine
        ok.Validate();
        var big = ok with { NumLayers = 48 };                                    // ~2.25B: over
        Assert.True(big.ParameterCountEstimate() > LlamaConfig.MaxParameters);
        Assert.Contains("parameters", Assert.Throws<ArgumentException>(() => big.Validate()).Message);
        Assert.Equal(ok.ParameterCount(), ok.ParameterCountEstimate());
    }

    static byte[] Gguf(Action<BinaryWriter> tensors, ulong nTensors, ulong nKv, Action<BinaryWriter>? kv = null)
    {
        var ms = new MemoryStream();
        using (var w = new BinaryWriter(ms, Encoding.UTF8, leaveOpen: true))
        {
            w.Write("GGUF"u8);
            w.Write(3u);
            w.Write(nTensors);
            w.Write(nKv);
            kv?.Invoke(w);
            tensors(w);
            while (ms.Length % 32 != 0) w.Write((byte)0);
            w.Write(new byte[64]);
        }
        return ms.ToArray();
    }

    static void Str(BinaryWriter w, string s) { var b = Encoding.UTF8.GetBytes(s); w.Write((ulong)b.Length); w.Write(b); }

    [Fact]
    public void GgufTensorDimsWhoseProductOverflowsAreRefused()
    {
        using var dir = new TempDir();
        string path = dir.Write("m.gguf", Gguf(w =>
        {
            Str(w, "t");
            w.Write(4u);
            foreach (ulong d in new ulong[] { 1UL << 40, 1UL << 40, 1, 1 }) w.Write(d);
            w.Write((uint)GgmlType.F32);
            w.Write(0UL);
        }, 1, 0));
        var e = Assert.Throws<InvalidDataException>(() => { using var f = GgufFile.Open(path); });
        Assert.Contains("overflow 64 bits", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void GgufTensorNameWithControlCharactersGivesAOneLineMessage()
    {
        using var dir = new TempDir();
        string path = dir.Write("m.gguf", Gguf(w =>
        {
            Str(w, "bad\nname\u0007");
            w.Write(1u);
            w.Write(0UL);   // dimension 0: refused
            w.Write((uint)GgmlType.F32);
            w.Write(0UL);
        }, 1, 0));
        var e = Assert.Throws<InvalidDataException>(() => { using var f = GgufFile.Open(path); });
        Assert.Contains("bad\\nname\\u0007", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void GgufWithAOneDimensionalEmbeddingIsRefusedNotIndexedPastItsEnd()
    {
        using var dir = new TempDir();
        string path = dir.Write("m.gguf", Gguf(w =>
        {
            Str(w, "token_embd.weight");
            w.Write(1u);
            w.Write(8UL);
            w.Write((uint)GgmlType.F32);
            w.Write(0UL);
        }, 1, 1, kv => { Str(kv, "general.architecture"); kv.Write((uint)GgufValueType.String); Str(kv, "llama"); }));
        var e = Assert.Throws<InvalidDataException>(() => { using var m = GgufExport.Load(path, CpuBackend.Instance); });
        Assert.Contains("token_embd.weight has 1 dimensions", e.Message);
    }

    [Fact]
    public void GgufWhoseMetadataDescribesMoreParametersThanItHoldsIsRefusedBeforeAllocating()
    {
        using var dir = new TempDir();
        using var m = SeedCorpus.TinyModel(vocab: 258, hidden: 32, intermediate: 64, tied: true);
        string path = dir.File("m.gguf");
        GgufExport.Write(m, GgufVocab.EngineBytes(), path, GgufQuant.F16);
        var bytes = File.ReadAllBytes(path);
        // llama.block_count is a u32 value right after its key: make it 1,000,000 layers
        int at = IndexOf(bytes, "llama.block_count"u8) + "llama.block_count".Length + 4;
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(at), 1_000_000);
        File.WriteAllBytes(path, bytes);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<InvalidDataException>(() => { using var loaded = GgufExport.Load(path, CpuBackend.Instance); });
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 32 << 20);
        Assert.Contains(path, e.Message);
        Assert.Contains("parameters", e.Message);
    }

    static int IndexOf(byte[] hay, ReadOnlySpan<byte> needle) => hay.AsSpan().IndexOf(needle);
}
