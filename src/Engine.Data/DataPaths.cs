namespace Engine.Data;

/// <summary>Locates the shipped data folder (<c>shared/data</c>) for tests, benchmarks and configs.</summary>
public static class DataPaths
{
    /// <summary>Environment variable that overrides the search: the data folder itself.</summary>
    public const string EnvironmentVariable = "ENGINE_DATA_DIR";

    /// <summary>
    /// The data folder: <c>$ENGINE_DATA_DIR</c> when set, else the first <c>shared/data</c> found walking up from
    /// <see cref="AppContext.BaseDirectory"/> and then from the current directory. Null when none exists.
    /// </summary>
    public static string? TryFind()
    {
        string? env = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrEmpty(env)) return Directory.Exists(env) ? Path.GetFullPath(env) : null;
        foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "shared", "data");
                if (Directory.Exists(candidate)) return candidate;
            }
        }
        return null;
    }

    /// <summary>The data folder, or an error saying where it was looked for.</summary>
    public static string Find() => TryFind() ?? throw new DirectoryNotFoundException(
        $"shipped data folder not found: set {EnvironmentVariable} or place 'shared/data' above {AppContext.BaseDirectory}");

    /// <summary>A file under the data folder, e.g. <c>File("general_en/tinyshakespeare.txt")</c>.</summary>
    public static string File(string relative) => Path.Combine(Find(), relative);
}
