using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Engine.Data.Prepare;

/// <summary>
/// The shared work folder of one prepare run: every phase's task writes its files here and then its manifest
/// (<c>manifests/&lt;phase&gt;/&lt;task&gt;.json</c>: each output's size and SHA-256, the task's counts). A task whose manifest is
/// there and whose outputs match it is finished: a rerun skips it (resume), whichever rank or array task ran it.
/// Outputs are written under a temporary name, fsynced and renamed; the manifest last, the same way (<see cref="Durable"/>,
/// as the trainer's checkpoints), so a kill -9 at any point leaves either a finished task or one that reruns.
/// </summary>
public sealed class WorkDir(string root)
{
    public string Root { get; } = Path.GetFullPath(root);

    public string File(string relative) => Path.Combine(Root, relative);

    static string TaskName(int task) => $"{task:D5}";

    string ManifestPath(string phase, int task) => File(Path.Combine("manifests", phase, TaskName(task) + ".json"));

    public static string Tmp(string path) => path + ".tmp";

    /// <summary>Creates the folder of <paramref name="path"/> and returns the temporary name to write it under.</summary>
    public static string Begin(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        return Tmp(path);
    }

    /// <summary>
    /// Finishes a task: each output (already written to its temporary name, except those <paramref name="inPlace"/>)
    /// is fsynced and renamed, then the manifest with sizes, hashes and <paramref name="stats"/> is written the same way.
    /// </summary>
    public void Commit(string phase, int task, IReadOnlyList<string> outputs, JsonObject stats, double seconds, IReadOnlyCollection<string>? inPlace = null)
    {
        var files = new JsonArray();
        var dirs = new HashSet<string>(StringComparer.Ordinal);
        foreach (var path in outputs)
        {
            bool direct = inPlace?.Contains(path) == true;
            string src = direct ? path : Tmp(path);
            Durable.SyncFile(src);
            if (!direct) System.IO.File.Move(src, path, overwrite: true);
            dirs.Add(Path.GetDirectoryName(path)!);
            files.Add(new JsonObject { ["path"] = Path.GetRelativePath(Root, path), ["bytes"] = new FileInfo(path).Length, ["sha256"] = Sha256(path) });
        }
        foreach (var d in dirs) Durable.SyncDirectory(d);
        var manifest = new JsonObject { ["phase"] = phase, ["task"] = task, ["files"] = files, ["stats"] = stats, ["seconds"] = seconds };
        string mp = ManifestPath(phase, task);
        string tmp = Begin(mp);
        Durable.WriteAllText(tmp, manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        System.IO.File.Move(tmp, mp, overwrite: true);
        Durable.SyncDirectory(Path.GetDirectoryName(mp)!);
    }

    /// <summary>The task's manifest when the task finished and its outputs are intact (sizes; with <paramref name="verifyHashes"/> also SHA-256), else null.</summary>
    public JsonObject? Finished(string phase, int task, bool verifyHashes)
    {
        string mp = ManifestPath(phase, task);
        if (!System.IO.File.Exists(mp)) return null;
        JsonObject m;
        try { m = JsonNode.Parse(System.IO.File.ReadAllText(mp)) as JsonObject ?? throw new JsonException("not an object"); }
        catch (JsonException) { return null; }   // a manifest cut by a crash before its rename cannot be here; a damaged one reruns the task
        if (m["files"] is not JsonArray files) return null;
        foreach (var f in files)
        {
            string p = File(f!["path"]!.GetValue<string>());
            if (!System.IO.File.Exists(p) || new FileInfo(p).Length != f["bytes"]!.GetValue<long>()) return null;
            if (verifyHashes && Sha256(p) != f["sha256"]!.GetValue<string>()) return null;
        }
        return m;
    }

    public bool IsFinished(string phase, int task) => Finished(phase, task, verifyHashes: false) != null;

    /// <summary>The manifest of a task another phase needs finished (an error naming it otherwise).</summary>
    public JsonObject Manifest(string phase, int task)
    {
        string mp = ManifestPath(phase, task);
        if (!System.IO.File.Exists(mp)) throw new PrepareException($"{mp}: phase '{phase}' task {task} has not finished");
        return (JsonObject)JsonNode.Parse(System.IO.File.ReadAllText(mp))!;
    }

    public static string Sha256(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    /// <summary>Records a rank's failure so ranks waiting on files stop (file barrier mode).</summary>
    public void MarkFailed(int rank, string message)
    {
        string p = File(Path.Combine("failed", $"rank{rank:D5}.txt"));
        Directory.CreateDirectory(Path.GetDirectoryName(p)!);
        System.IO.File.WriteAllText(p, message);
    }

    /// <summary>Removes this rank's failure record of an earlier run (at the start of a run).</summary>
    public void ClearFailed(int rank)
    {
        string p = File(Path.Combine("failed", $"rank{rank:D5}.txt"));
        if (System.IO.File.Exists(p)) System.IO.File.Delete(p);
    }

    /// <summary>A failure recorded after <paramref name="since"/> by any rank, or null.</summary>
    public string? FailureSince(DateTime since)
    {
        string d = File("failed");
        if (!Directory.Exists(d)) return null;
        foreach (var f in Directory.GetFiles(d).Order(StringComparer.Ordinal))
            if (System.IO.File.GetLastWriteTimeUtc(f) >= since) return $"{Path.GetFileNameWithoutExtension(f)}: {System.IO.File.ReadAllText(f).Trim()}";
        return null;
    }
}
