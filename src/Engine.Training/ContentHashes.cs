using System.Security.Cryptography;
using System.Text.Json;
using Engine.Core;

namespace Engine.Training;

/// <summary>
/// The content identity of every file a resume depends on — data files, tokenizer files, init_from weights, a LoRA
/// run's base, a recipe's finished-stage weights — as a streamed SHA-256. A resume compares contents, not names or
/// sizes: a same-size edit ("quick" → "QUICK") is refused, a corpus moved (and the config updated) or a run directory
/// copied elsewhere resumes. Files inside a run directory are named relative to it (<see cref="Record"/>,
/// <see cref="Verify"/>), so a copied run directory checks its own files, never the original's.
/// <para>
/// Hashes are cached by (path, device, inode, size, modification and change time in nanoseconds): a large corpus costs
/// one read, not one per start. The cache is a JSON file, <c>$ENGINE_HASH_CACHE</c> (<c>off</c> disables it) or
/// <c>$XDG_CACHE_HOME/engine/content-hashes.json</c> (<c>~/.cache/…</c>); written atomically, newest
/// <see cref="MaxEntries"/> kept. The change time cannot be set by a user, so even an edit that restores the
/// modification time (<c>touch -r</c>) is hashed again.
/// </para>
/// </summary>
public static class ContentHashes
{
    public const string CacheVariable = "ENGINE_HASH_CACHE";
    public const int MaxEntries = 10_000;

    sealed record Entry(ulong Device, ulong Inode, long Size, long ModifiedNs, long ChangedNs, string Sha256, long UsedAt);

    static readonly Lock gate = new();
    static Dictionary<string, Entry>? cache;
    static string? loadedFrom;

    /// <summary>Bytes hashed from disk in this process (the cache's misses), for tests and the docs' measurement.</summary>
    public static long BytesHashed { get; private set; }

    /// <summary>The cache file in use, or null when caching is off.</summary>
    public static string? CachePath
    {
        get
        {
            string? env = Environment.GetEnvironmentVariable(CacheVariable);
            if (env == "off") return null;
            if (!string.IsNullOrEmpty(env)) return Path.GetFullPath(env);
            string? root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            if (string.IsNullOrEmpty(root))
            {
                string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
                if (string.IsNullOrEmpty(home)) return null;
                root = Path.Combine(home, ".cache");
            }
            return Path.Combine(root, "engine", "content-hashes.json");
        }
    }

    /// <summary>The SHA-256 (lower-case hex) of a regular file's contents: from the cache when the file is unchanged,
    /// else streamed from disk.</summary>
    public static string Sha256(string path)
    {
        string full = Path.GetFullPath(FileStat.RequireRegular(path, "file"));
        var st = FileStat.Get(full);
        lock (gate)
        {
            var entries = Load();
            if (entries.TryGetValue(full, out var e) && e.Device == st.Device && e.Inode == st.Inode && e.Size == st.Size
                && e.ModifiedNs == st.ModifiedNs && e.ChangedNs == st.ChangedNs && st.ModifiedNs != 0)
            {
                entries[full] = e with { UsedAt = DateTime.UtcNow.Ticks };
                return e.Sha256;
            }
        }
        string hash;
        using (var s = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 20, FileOptions.SequentialScan))
            hash = Convert.ToHexStringLower(SHA256.HashData(s));
        var after = FileStat.Get(full);
        lock (gate)
        {
            BytesHashed += st.Size;
            // a file written while it was read is not cached (its hash may match neither version)
            if (after == st) Load()[full] = new Entry(st.Device, st.Inode, st.Size, st.ModifiedNs, st.ChangedNs, hash, DateTime.UtcNow.Ticks);
            Save();
        }
        return hash;
    }

    /// <summary>"NAME sha256:HEX": a file as an exact-resume setting (the name for messages, the contents for the check).</summary>
    public static string Describe(string path) => $"{Path.GetFileName(path)} sha256:{Sha256(path)}";

    /// <summary>A weights directory (init_from, a LoRA base, an earlier stage) as its config.json and weight files
    /// (*.safetensors and the shard index), each described by <see cref="Describe"/>, in name order.</summary>
    public static string DescribeWeights(string dir)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"weights directory not found: {dir}");
        var files = Directory.GetFiles(dir).Where(f => f.EndsWith(".safetensors", StringComparison.Ordinal)
            || Path.GetFileName(f) is "config.json" or "model.safetensors.index.json").Order(StringComparer.Ordinal);
        return string.Join("; ", files.Select(Describe));
    }

    /// <summary>Every file under <paramref name="dirs"/> (recursively) by its path relative to <paramref name="runDir"/>
    /// ('/'-separated) and its SHA-256: what a finished recipe stage's record keeps of its outputs.</summary>
    public static Dictionary<string, string> Record(string runDir, params string[] dirs)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var dir in dirs.Where(Directory.Exists))
            foreach (var f in Directory.GetFiles(dir, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
                d[Relative(runDir, f)] = Sha256(f);
        return d;
    }

    /// <summary>
    /// Checks the files <see cref="Record"/> listed in <paramref name="record"/> (paths relative to
    /// <paramref name="runDir"/>) before they are used: each must be there, inside the run directory, with its SHA-256.
    /// InvalidDataException naming the first that is not, and the way out.
    /// </summary>
    public static void Verify(string runDir, IReadOnlyDictionary<string, string> files, string record)
    {
        string root = Path.GetFullPath(runDir).TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
        foreach (var (rel, hash) in files.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            string full = Path.GetFullPath(Path.Combine(runDir, rel));
            if (!full.StartsWith(root, StringComparison.Ordinal))
                throw new InvalidDataException($"{record}: file '{ErrorText.OneLine(rel, 200)}' lies outside the run directory {runDir}");
            if (!File.Exists(full))
                throw new InvalidDataException($"{record}: {rel} is missing (the stage's output was removed): restore it, or delete {record} to run the stage again");
            if (Sha256(full) != hash)
                throw new InvalidDataException($"{record}: {rel} does not match its SHA-256 in the record (changed after the stage finished): restore it, or delete {record} to run the stage again");
        }
    }

    /// <summary><paramref name="path"/> relative to <paramref name="runDir"/>, '/'-separated (absolute when outside it).</summary>
    public static string Relative(string runDir, string path)
    {
        string rel = Path.GetRelativePath(Path.GetFullPath(runDir), Path.GetFullPath(path));
        return rel.StartsWith("..", StringComparison.Ordinal) || Path.IsPathRooted(rel) ? Path.GetFullPath(path) : rel.Replace('\\', '/');
    }

    static Dictionary<string, Entry> Load()
    {
        string? path = CachePath;
        if (cache != null && loadedFrom == path) return cache;
        cache = new Dictionary<string, Entry>(StringComparer.Ordinal);
        loadedFrom = path;
        if (path != null && File.Exists(path))
        {
            try { cache = JsonSerializer.Deserialize<Dictionary<string, Entry>>(File.ReadAllText(path)) ?? cache; }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or NotSupportedException) { }   // a damaged cache is a cold one
        }
        return cache;
    }

    /// <summary>Writes the cache (tmp + rename: a reader never sees half a file); a cache that cannot be written is
    /// simply not kept.</summary>
    static void Save()
    {
        if (loadedFrom is not { } path || cache == null) return;
        try
        {
            if (cache.Count > MaxEntries)
                foreach (var old in cache.OrderBy(kv => kv.Value.UsedAt).Take(cache.Count - MaxEntries).Select(kv => kv.Key).ToList())
                    cache.Remove(old);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string tmp = $"{path}.{Environment.ProcessId}.tmp";
            File.WriteAllText(tmp, JsonSerializer.Serialize(cache));
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
