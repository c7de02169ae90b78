using System.Buffers.Binary;
using System.Text;
using Engine.Core;
using Engine.Model.IO;
using Engine.Tests.Model;

namespace Engine.Tests.IO;

public class SafeTensorsTests
{
    [Fact]
    public void ExportedModelLoadsBackBitIdentical()
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 21);
        ModelIO.Save(m, dir.Path);
        using var back = ModelIO.Load(dir.Path, CpuBackend.Instance);
        Assert.Equal(m.Config, back.Config);
        foreach (var (name, t) in m.Parameters)
        {
            var a = t.ToArray();
            var b = back[name].ToArray();
            Assert.Equal(a.Length, b.Length);
            for (int i = 0; i < a.Length; i++) Assert.Equal(BitConverter.SingleToUInt32Bits(a[i]), BitConverter.SingleToUInt32Bits(b[i]));
        }
        // and the file is byte-identical when written again
        ModelIO.Save(back, Path.Combine(dir.Path, "again"));
        Assert.Equal(File.ReadAllBytes(dir.File(ModelIO.WeightsFile)), File.ReadAllBytes(Path.Combine(dir.Path, "again", ModelIO.WeightsFile)));
    }

    [Fact]
    public void Bf16ExportRoundsToNearestEven()
    {
        using var dir = new TempDir();
        float[] v = [1f, 1f + MathF.Pow(2, -8), -3.14159f, 1e-3f];
        SafeTensorsWriter.Write(dir.File("a.safetensors"), [new SafeTensorWrite("w", [4], v, "BF16")]);
        using var f = SafeTensorsFile.Open(dir.File("a.safetensors"));
        Assert.Equal("BF16", f["w"].DType);
        var back = f.ReadFloat32("w");
        for (int i = 0; i < v.Length; i++) Assert.Equal(Engine.Cpu.BFloat16.Round(v[i]), back[i]);
    }

    [Fact]
    public void HeaderIsAlignedAndReadableByTheSpec()
    {
        using var dir = new TempDir();
        SafeTensorsWriter.Write(dir.File("a.safetensors"), [new SafeTensorWrite("x", [2, 3], new float[6])], new Dictionary<string, string> { ["k"] = "v" });
        var bytes = File.ReadAllBytes(dir.File("a.safetensors"));
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.Contains("\"x\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}", header);
        Assert.Contains("\"__metadata__\":{\"k\":\"v\"}", header);
        Assert.Equal(8 + (long)n + 24, bytes.Length);
    }

    static byte[] Build(string header, int dataBytes, ulong? lengthOverride = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var b = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, lengthOverride ?? (ulong)h.Length);
        h.CopyTo(b, 8);
        return b;
    }

    public static TheoryData<string, byte[], string> Corrupt => new()
    {
        { "short file", new byte[5], "shorter than the 8-byte header" },
        { "huge header length", Build("{}", 0, 1UL << 40), "exceeds" },
        { "header past end", Build("{}", 0, 4096), "runs past the end" },
        { "not json", Build("{not json", 0), "not valid JSON" },
        { "unknown dtype", Build("{\"a\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4), "unknown dtype 'Q7'" },
        { "shape × dtype ≠ span", Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4), "is 8 bytes but data_offsets span 4" },
        { "offsets out of range", Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 2), "data section is 2 bytes" },
        { "overlap", Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8), "overlaps" },
        { "gap", Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8), "gap of 4 bytes" },
        { "negative dim", Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4), "invalid dimension" },
        { "no offsets", Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), "data_offsets" },
    };

    [Theory]
    [MemberData(nameof(Corrupt))]
    public void CorruptFilesAreRefusedWithAClearMessage(string what, byte[] file, string expected)
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("bad.safetensors"), file);
        var e = Assert.Throws<InvalidDataException>(() => SafeTensorsFile.Open(dir.File("bad.safetensors")));
        Assert.Contains("invalid safetensors file", e.Message);
        Assert.True(e.Message.Contains(expected, StringComparison.Ordinal), $"{what}: message '{e.Message}' lacks '{expected}'");
    }

    [Fact]
    public void TruncatedModelFileIsRefused()
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 2);
        ModelIO.Save(m, dir.Path);
        var path = dir.File(ModelIO.WeightsFile);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^100]);
        var e = Assert.Throws<InvalidDataException>(() => ModelIO.Load(dir.Path, CpuBackend.Instance));
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void WrongShapeOrMissingTensorIsNamed()
    {
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(), 2);
        ModelIO.Save(m, dir.Path);
        // a config that disagrees with the weights
        File.WriteAllText(dir.File(ModelIO.ConfigFile), (m.Config with { IntermediateSize = 32 }).ToHuggingFaceJson());
        var e = Assert.Throws<InvalidDataException>(() => ModelIO.Load(dir.Path, CpuBackend.Instance));
        Assert.Contains("mlp.gate_proj.weight", e.Message);
    }

    [Fact]
    public void FailedWriteKeepsThePreviousFile()
    {
        using var dir = new TempDir();
        var path = dir.File("w.safetensors");
        SafeTensorsWriter.Write(path, [new SafeTensorWrite("a", [1], new float[] { 1 })]);
        var before = File.ReadAllBytes(path);
        Assert.Throws<ArgumentException>(() => SafeTensorsWriter.Write(path, [new SafeTensorWrite("a", [3], new float[] { 1, 2 })]));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void HuggingFaceConfigRoundTripsAndRejectsOtherModels()
    {
        var cfg = TestModels.Tiny() with { RopeScaling = Engine.Core.RopeScalingKind.Linear, RopeScalingFactor = 2 };
        var back = Engine.Model.LlamaConfig.FromHuggingFaceJson(cfg.ToHuggingFaceJson());
        Assert.Equal(cfg, back);
        var e = Assert.Throws<InvalidDataException>(() => Engine.Model.LlamaConfig.FromHuggingFaceJson("{\"model_type\":\"gpt2\"}"));
        Assert.Contains("gpt2", e.Message);
        var e2 = Assert.Throws<InvalidDataException>(() => Engine.Model.LlamaConfig.FromHuggingFaceJson("{\"model_type\":\"llama\",\"hidden_size\":8}"));
        Assert.Contains("num_attention_heads", e2.Message);
    }
}
