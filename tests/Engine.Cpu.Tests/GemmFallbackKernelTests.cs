using System.Diagnostics;

namespace Engine.Cpu.Tests.Gemms;

/// <summary>
/// The AVX2 and scalar micro-kernels (and their packing paths) never run on an AVX-512 machine, so this reruns
/// every <see cref="GemmTests"/> test in a child process with the runtime's ISA knobs turned off.
/// </summary>
public class GemmFallbackKernelTests
{
    [Theory]
    [InlineData("DOTNET_EnableAVX512", "avx2-6x16")]
    [InlineData("DOTNET_EnableAVX2", "scalar-4x4")]
    public async Task GemmTests_PassWithIsaDisabled(string knob, string expectedKernel)
    {
        string host = Environment.ProcessPath!;
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet") psi.ArgumentList.Add(typeof(GemmTests).Assembly.Location);
        foreach (string arg in new[] { "-class", typeof(GemmTests).FullName!, "-parallel", "none" }) psi.ArgumentList.Add(arg);
        psi.Environment[knob] = "0";
        psi.Environment[GemmTests.ExpectedKernelVariable] = expectedKernel;

        using var p = Process.Start(psi)!;
        var token = TestContext.Current.CancellationToken;
        var stderr = p.StandardError.ReadToEndAsync(token);
        string stdout = await p.StandardOutput.ReadToEndAsync(token);
        await p.WaitForExitAsync(token).WaitAsync(TimeSpan.FromMinutes(2), token);
        Assert.True(p.ExitCode == 0, $"GemmTests with {knob}=0 failed (exit {p.ExitCode}):\n{stdout}\n{await stderr}");
        Assert.Contains("Failed: 0", stdout);
    }
}
