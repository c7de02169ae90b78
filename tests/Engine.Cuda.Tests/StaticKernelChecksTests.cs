using System.Text.RegularExpressions;
using Engine.Cuda.Tests.Reference;

namespace Engine.Cuda.Tests;

/// <summary>
/// What the compiled kernels are, read without a GPU (CI: Debian's nvcc 11.8 and cuobjdump over build/native/kernels,
/// which .ci/run builds first): every kernel's registers, stack, static shared memory, spills and tensor-core
/// instructions equal the table in docs/KERNELS.md (a change is a diff to review: `ENGINE_UPDATE_KERNEL_TABLE=1`
/// rewrites the table), and the rules the docs state hold in the SASS. Skipped (and counted) without the toolchain
/// or with another nvcc than the one the table was recorded with.
/// </summary>
public class StaticKernelChecksTests
{
    const string TableNvcc = "11.8";
    const string Begin = "<!-- sass-table:begin (StaticKernelChecksTests; nvcc 11.8) -->", End = "<!-- sass-table:end -->";

    static (string Nvcc, string Cuobjdump, string Root) Toolchain()
    {
        string root = Repo.Root() ?? throw new InvalidOperationException("repository root not found");
        string? nvcc = Sass.Find("nvcc"), cuobjdump = Sass.Find("cuobjdump");
        if (nvcc is null || cuobjdump is null) Assert.Skip("no nvcc/cuobjdump on PATH (CI installs Debian's nvidia-cuda-toolkit)");
        return (nvcc, cuobjdump, root);
    }

    // cuobjdump -sass takes a minute or two over all fatbins on a loaded 2-core machine: read them once per run
    static readonly Lazy<List<SassFunction>> Cached = new(ReadKernels);

    static List<SassFunction> Kernels() => Cached.Value;

    static List<SassFunction> ReadKernels()
    {
        var (nvcc, cuobjdump, root) = Toolchain();
        string version = Sass.NvccVersion(nvcc);
        if (version != TableNvcc) Assert.Skip($"the table is nvcc {TableNvcc}'s; this nvcc is {version}");
        string dir = Path.Combine(root, "build", "native", "kernels");
        var fatbins = Directory.Exists(dir) ? Directory.GetFiles(dir, "*.fatbin").Where(f => !f.EndsWith("attention_sm90.fatbin", StringComparison.Ordinal)).ToList() : [];
        Assert.True(fatbins.Count > 0, $"no fatbins in {dir}: cmake -S . -B build/native && cmake --build build/native");
        var stale = fatbins.Where(f => File.GetLastWriteTimeUtc(f) < NewestSource(Path.Combine(root, "native", Path.GetFileNameWithoutExtension(f) + ".cu")))
            .Select(Path.GetFileName).ToList();
        Assert.True(stale.Count == 0, $"fatbins older than native/ ({string.Join(", ", stale)}): cmake --build build/native");
        return [.. fatbins.SelectMany(f => Sass.Read(cuobjdump, f))];
    }

    /// <summary>The newest write time of a .cu file and the native/ headers it includes, transitively.</summary>
    static DateTime NewestSource(string cu)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var todo = new Stack<string>([cu]);
        var newest = DateTime.MinValue;
        while (todo.Count > 0)
        {
            string f = todo.Pop();
            if (!seen.Add(f) || !File.Exists(f)) continue;
            newest = File.GetLastWriteTimeUtc(f) > newest ? File.GetLastWriteTimeUtc(f) : newest;
            foreach (Match m in Regex.Matches(File.ReadAllText(f), "^#include \"([^\"]+)\"", RegexOptions.Multiline))
                todo.Push(Path.GetFullPath(Path.Combine(Path.GetDirectoryName(f)!, m.Groups[1].Value)));
        }
        return newest;
    }

    [Fact]
    public void ResourceUsageAndInstructionsAreTheTableInKernelsMd()
    {
        var kernels = Kernels();
        string root = Repo.Root()!;
        string doc = Path.Combine(root, "docs", "KERNELS.md");
        string text = File.ReadAllText(doc);
        int b = text.IndexOf(Begin, StringComparison.Ordinal), e = text.IndexOf(End, StringComparison.Ordinal);
        Assert.True(b >= 0 && e > b, $"docs/KERNELS.md has no {Begin} ... {End} section");
        string recorded = text[(b + Begin.Length)..e].Trim('\n');
        string measured = Sass.Table(kernels).Trim('\n');
        if (recorded == measured) return;
        if (Environment.GetEnvironmentVariable("ENGINE_UPDATE_KERNEL_TABLE") == "1")
        {
            File.WriteAllText(doc, text[..(b + Begin.Length)] + "\n" + measured + "\n" + text[e..]);
            return;
        }
        var was = recorded.Split('\n').ToHashSet();
        var now = measured.Split('\n').ToHashSet();
        Assert.Fail("the compiled kernels differ from the table in docs/KERNELS.md (review, then rerun with ENGINE_UPDATE_KERNEL_TABLE=1):\n"
            + string.Join("\n", recorded.Split('\n').Where(l => !now.Contains(l)).Select(l => "- " + l)) + "\n"
            + string.Join("\n", measured.Split('\n').Where(l => !was.Contains(l)).Select(l => "+ " + l)));
    }

    [Fact]
    public void TheRulesTheDocsStateHoldInTheSass()
    {
        var kernels = Kernels();
        var bad = new List<string>();
        void Rule(bool ok, SassFunction f, string what) { if (!ok) bad.Add($"{f.File}/{f.Name} ({f.Arch}): {what}"); }
        foreach (var f in kernels)
        {
            // FlashAttention-2 family: tensor cores, ldmatrix for every fragment, cp.async rings, spill-free (traits.cuh)
            if (Regex.IsMatch(f.Name, @"^attention_v2_(forward|backward)_d\d+$"))
            {
                foreach (var op in new[] { "HMMA", "LDSM", "LDGSTS" }) Rule(f.Has(op), f, "no " + op);
                Rule(!f.Has("LDL") && !f.Has("STL") && f.Local == 0, f, $"spills ({f.Local} bytes of local memory)");
            }
            if (Regex.IsMatch(f.Name, @"^attention_(forward|backward_dkdv|backward_dq)_d\d+$")) Rule(f.Has("HMMA"), f, "no HMMA");
            // fills store only
            if (f.Name.StartsWith("fill_", StringComparison.Ordinal)) Rule(!f.Has("LDG"), f, "reads global memory");
            // element-wise kernels: 8 elements per thread with 128-bit accesses on the aligned path
            if (f.File == "elementwise") Rule(f.HasWide("STG"), f, "no 16-byte store");
            if (f.File == "elementwise" && !f.Name.StartsWith("fill_", StringComparison.Ordinal)) Rule(f.HasWide("LDG"), f, "no 16-byte load");
            // no kernel outside attention spills; rope's local memory is the accurate sincosf's argument reduction for
            // |angle| > 105615 (a 7-word array), not a spill
            if (!f.Name.StartsWith("attention", StringComparison.Ordinal) && !f.Name.StartsWith("rope_", StringComparison.Ordinal))
                Rule(f.Local == 0 && !f.Has("STL"), f, "spills");
        }
        Assert.True(bad.Count == 0, string.Join("\n", bad));
        Assert.Contains(kernels, f => f.Name == "attention_v2_backward_d128" && f.Arch == "sm_90");   // the reader found the code
    }

    /// <summary>
    /// attention_sm90.cu (issue 23): the PTX ISA requires wgmma.fence between writing a wgmma's register operands and
    /// the wgmma that reads them, so between each wgmma.fence and its wgmma.commit_group no instruction may write a
    /// register that an mma_async of that group reads as A or accumulates into. nvcc 11.8 cannot assemble sm_90a but
    /// emits the PTX (ENGINE_SM90_SYNTAX_CHECK); the ordering is decided there.
    /// </summary>
    [Fact]
    public void Sm90ForwardWritesNoWgmmaOperandAfterTheFence()
    {
        var (nvcc, _, root) = Toolchain();
        string ptx = Path.Combine(Directory.CreateTempSubdirectory("engine-sm90-ptx-").FullName, "attention_sm90.ptx");
        var args = new List<string> { "-std=c++17", "-O3", "-I" + Path.Combine(root, "native"), "-DENGINE_SM90_SYNTAX_CHECK", "-arch=compute_90", "-ptx", "-o", ptx,
            Path.Combine(root, "native", "attention_sm90.cu") };
        if (Sass.NvccVersion(nvcc).StartsWith("11.", StringComparison.Ordinal) && Sass.Find("clang-14") is { } clang) args.InsertRange(0, ["-ccbin", clang]);
        Sass.Run(nvcc, [.. args]);
        var lines = File.ReadAllLines(ptx);
        int groups = 0, rsGroups = 0;
        for (int i = 0; i < lines.Length; i++)
        {
            if (!lines[i].Contains("wgmma.fence.sync.aligned", StringComparison.Ordinal)) continue;
            int end = i + 1;
            while (end < lines.Length && !lines[end].Contains("wgmma.commit_group", StringComparison.Ordinal)) end++;
            Assert.True(end < lines.Length, $"wgmma.fence at PTX line {i + 1} has no commit_group");
            groups++;
            var operands = new HashSet<string>(StringComparer.Ordinal);
            foreach (var l in lines[(i + 1)..end].Where(l => l.Contains("wgmma.mma_async", StringComparison.Ordinal)))
            {
                var braces = Regex.Matches(l, @"\{([^}]*)\}").Select(m => m.Groups[1].Value).ToList();   // accumulators, then A when in registers
                if (braces.Count > 1) rsGroups++;
                foreach (var group in braces) foreach (Match r in Regex.Matches(group, @"%[a-z]+\d+")) operands.Add(r.Value);
            }
            for (int j = i + 1; j < end; j++)
            {
                var m = Regex.Match(lines[j], @"^\s*\{?\s*([a-z][a-z0-9_.]*)\s+(%[a-z]+\d+)\s*,");
                if (m.Success && !m.Groups[1].Value.StartsWith("wgmma", StringComparison.Ordinal) && !m.Groups[1].Value.StartsWith("st", StringComparison.Ordinal)
                    && operands.Contains(m.Groups[2].Value))
                    Assert.Fail($"PTX line {j + 1}: '{lines[j].Trim()}' writes {m.Groups[2].Value}, an operand of a wgmma after the fence at line {i + 1}");
            }
        }
        Assert.True(groups >= 4, $"{groups} wgmma groups found (S = QK^T and O = PV for d64 and d128)");
        Assert.True(rsGroups > 0, "no wgmma with A in registers found");
    }
}
