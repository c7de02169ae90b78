namespace Engine.Parallel.Tests;

/// <summary>
/// The single-file `engine` (tools/publish.sh: self-contained, kernels embedded): published into a temporary folder,
/// copied alone into a clean directory with no repository, .NET SDK path or build tree around it, it runs
/// `engine doctor` and a short `engine train` on a text file written there.
/// </summary>
public class SingleFileTests
{
    static readonly TimeSpan Limit = TimeSpan.FromMinutes(20);

    static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "tools", "publish.sh"))) return d.FullName;
        throw new DirectoryNotFoundException("tools/publish.sh not found above " + AppContext.BaseDirectory);
    }

    [Fact]
    public async Task PublishedBinaryRunsDoctorAndATrainingRunFromACleanDirectory()
    {
        string publish = Directory.CreateTempSubdirectory("engine-publish-").FullName;
        string clean = Directory.CreateTempSubdirectory("engine-clean-").FullName;
        try
        {
            var env = EngineProcess.BaseEnvironment();
            var pub = await EngineProcess.Run("bash", [Path.Combine(RepoRoot(), "tools", "publish.sh"), publish], env, Limit);
            Assert.True(pub.ExitCode == 0, pub.All);
            string exe = Path.Combine(clean, "engine");
            File.Copy(Path.Combine(publish, "engine"), exe);
            if (OperatingSystem.IsLinux()) File.SetUnixFileMode(exe, File.GetUnixFileMode(Path.Combine(publish, "engine")));
            Assert.Single(Directory.GetFiles(clean));                  // one file: no engine.dll, no runtime beside it

            var childEnv = new Dictionary<string, string?>(env) { ["HOME"] = clean, ["XDG_CACHE_HOME"] = Path.Combine(clean, "cache"), ["DOTNET_ROOT"] = null };
            var doctor = await EngineProcess.Run(exe, ["doctor"], childEnv, Limit);
            Assert.True(doctor.ExitCode == 0, doctor.All);
            Assert.Contains("single file", doctor.Stdout);
            bool kernelsBuilt = Directory.Exists(Path.Combine(RepoRoot(), "build", "native", "kernels"));
            if (kernelsBuilt) Assert.Contains("elementwise", doctor.Stdout);   // the embedded fatbins are listed

            File.WriteAllText(Path.Combine(clean, "text.txt"), string.Concat(Enumerable.Repeat("To be, or not to be, that is the question. ", 400)));
            File.WriteAllText(Path.Combine(clean, "run.toml"), """
                [model]
                hidden_size = 32
                intermediate_size = 64
                num_layers = 2
                num_heads = 2
                num_kv_heads = 1
                max_position_embeddings = 32
                [data]
                train = ["text.txt"]
                tokenizer = "byte"
                valid_fraction = 0.1
                [train]
                seq_len = 32
                batch_size = 2
                steps = 3
                [output]
                dir = "out"
                """);
            var train = await EngineProcess.Run(exe, ["train", "--config", Path.Combine(clean, "run.toml")], childEnv, Limit);
            Assert.True(train.ExitCode == 0, train.All);
            Assert.True(File.Exists(Path.Combine(clean, "out", "final", "model.safetensors")), train.All);
        }
        finally
        {
            try { Directory.Delete(publish, true); } catch (IOException) { }
            try { Directory.Delete(clean, true); } catch (IOException) { }
        }
    }
}
