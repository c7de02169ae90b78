namespace Engine.Data;

/// <summary>
/// The one place data paths are resolved, for configs, tests, benchmarks and tools: the repository's shipped
/// <c>data/</c> folder (or <c>$ENGINE_DATA_DIR</c>) and names <c>data:&lt;relative&gt;</c> under it. Shipped files are
/// stored gzip-compressed (<c>x.jsonl.gz</c>); a name without <c>.gz</c> finds its compressed twin, so the same config
/// works against the shipped folder and an uncompressed copy.
/// </summary>
public static class DataPaths
{
    /// <summary>Environment variable that overrides the search: the data folder itself (a user's own data).</summary>
    public const string EnvironmentVariable = "ENGINE_DATA_DIR";

    /// <summary>Config paths starting with this resolve under the data folder.</summary>
    public const string Prefix = "data:";

    /// <summary>The folder's licence and source list: a <c>data</c> folder holding it is the shipped data folder.</summary>
    public const string SourcesFile = "SOURCES.md";

    /// <summary>
    /// The data folder: <c>$ENGINE_DATA_DIR</c> when set (null when that folder does not exist), else the first
    /// <c>data/</c> holding <see cref="SourcesFile"/> found walking up from <see cref="AppContext.BaseDirectory"/>
    /// (the repository the binary was built in) and then from the current directory. Null when none exists.
    /// </summary>
    public static string? TryFind() =>
        TryFind(Environment.GetEnvironmentVariable(EnvironmentVariable), AppContext.BaseDirectory, Directory.GetCurrentDirectory());

    /// <summary><see cref="TryFind()"/> with the variable's value and the folders to walk up from given (tests).</summary>
    internal static string? TryFind(string? env, params string[] starts)
    {
        if (!string.IsNullOrEmpty(env)) return Directory.Exists(env) ? Path.GetFullPath(env) : null;
        foreach (var start in starts)
        {
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "data");
                if (System.IO.File.Exists(Path.Combine(candidate, SourcesFile))) return candidate;
            }
        }
        return null;
    }

    /// <summary>The data folder, or an error saying where it was looked for.</summary>
    public static string Find()
    {
        if (TryFind() is { } dir) return dir;
        string? env = Environment.GetEnvironmentVariable(EnvironmentVariable);
        throw new DirectoryNotFoundException(!string.IsNullOrEmpty(env)
            ? $"{EnvironmentVariable}={env} is not a directory"
            : $"data folder not found: no data/{SourcesFile} above {AppContext.BaseDirectory} or {Directory.GetCurrentDirectory()}; set {EnvironmentVariable}");
    }

    /// <summary>A file under the data folder, e.g. <c>File("general_en/tinyshakespeare.txt")</c> (its .gz twin when only that
    /// exists). A name that leaves the folder (<c>../</c>, an absolute path) is refused.</summary>
    public static string File(string relative) => WithCompressedTwin(Inside(Find(), relative));

    /// <summary><paramref name="relative"/> under <paramref name="root"/>; ArgumentException when it resolves outside it.</summary>
    internal static string Inside(string root, string relative)
    {
        string full = Path.GetFullPath(Path.Combine(root, relative)), top = Path.GetFullPath(root).TrimEnd(Path.DirectorySeparatorChar);
        if (!full.StartsWith(top + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ArgumentException($"{Prefix}{relative}: resolves to {full}, outside the data folder {top}; a {Prefix} path names a file inside it");
        return full;
    }

    /// <summary>
    /// A path from a config: <c>data:&lt;relative&gt;</c> under the data folder (see <see cref="File"/>), an absolute path
    /// as it is, anything else relative to <paramref name="baseDirectory"/> (the config's folder).
    /// </summary>
    public static string Resolve(string path, string baseDirectory)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (path.StartsWith(Prefix, StringComparison.Ordinal)) return File(path[Prefix.Length..]);
        return Path.IsPathRooted(path) ? path : Path.GetFullPath(Path.Combine(baseDirectory, path));
    }

    /// <summary><paramref name="path"/> when it exists or no <c>path.gz</c> does, else <c>path.gz</c>.</summary>
    public static string WithCompressedTwin(string path) =>
        !System.IO.File.Exists(path) && !DataFile.IsGzip(path) && System.IO.File.Exists(path + DataFile.GzipSuffix) ? path + DataFile.GzipSuffix : path;
}
