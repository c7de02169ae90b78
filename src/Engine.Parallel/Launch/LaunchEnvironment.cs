using System.Globalization;
using System.Text;

namespace Engine.Parallel.Launch;

/// <summary>Who started this process.</summary>
public enum LauncherKind
{
    /// <summary>Nobody: a single process.</summary>
    None,
    /// <summary>torchrun-style variables (RANK, WORLD_SIZE, …): torchrun, `engine launch --device cuda`, or by hand.</summary>
    Torchrun,
    /// <summary>Open MPI's mpirun (OMPI_COMM_WORLD_*).</summary>
    OpenMpi,
    /// <summary>Slurm's srun (SLURM_PROCID, …).</summary>
    Slurm,
}

/// <summary>
/// This process's place in the job.
/// </summary>
/// <param name="MasterAddr">Where rank 0 hosts the rendezvous store (MASTER_ADDR; under Slurm the first host of the
/// step's node list); null when not given.</param>
/// <param name="MpiRuntime">Started by an MPI runtime (mpirun, or srun with PMIx): MPI_Init forms the world.</param>
/// <param name="JobToken">ENGINE_JOB_TOKEN: the secret every rank presents to the rendezvous store.</param>
public sealed record RankInfo(
    int Rank, int WorldSize, int LocalRank, int LocalWorldSize,
    string? MasterAddr, int? MasterPort, LauncherKind Launcher, bool MpiRuntime, string? JobToken)
{
    public static readonly RankInfo Single = new(0, 1, 0, 1, null, null, LauncherKind.None, false, null);

    public override string ToString() =>
        $"rank {Rank}/{WorldSize} (local {LocalRank}/{LocalWorldSize}) via {Launcher}" +
        (MasterAddr is null ? "" : $", master {MasterAddr}:{MasterPort}") + (MpiRuntime ? ", MPI runtime" : "");
}

/// <summary>
/// Environment detection in one place. Precedence: torchrun-style variables (explicit, and what `engine launch`
/// sets), then Open MPI's, then Slurm's, else a single process. Malformed values are ArgumentExceptions naming the
/// variable.
/// <list type="bullet">
/// <item>torchrun: RANK, WORLD_SIZE, LOCAL_RANK (default RANK), LOCAL_WORLD_SIZE (default WORLD_SIZE), MASTER_ADDR,
/// MASTER_PORT.</item>
/// <item>Open MPI: OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE.</item>
/// <item>Slurm: SLURM_PROCID, SLURM_NTASKS (or SLURM_NPROCS), SLURM_LOCALID, the local task count from
/// SLURM_TASKS_PER_NODE ("2(x3),1") at SLURM_NODEID; the master is MASTER_ADDR or the first host of
/// SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST (compressed lists like node[01-03,07] expanded). PMIx
/// (srun --mpi=pmix) is seen through PMIX_RANK.</item>
/// </list>
/// </summary>
public static class LaunchEnvironment
{
    public const string TokenVariable = "ENGINE_JOB_TOKEN";
    /// <summary>Set to 1 by `engine launch` in every rank's environment: the launcher prefixes other ranks' lines.</summary>
    public const string LauncherVariable = "ENGINE_LAUNCHER";

    public static RankInfo Detect() => Detect(Environment.GetEnvironmentVariable);

    public static RankInfo Detect(Func<string, string?> env)
    {
        string? token = NonEmpty(env(TokenVariable));
        string? masterAddr = NonEmpty(env("MASTER_ADDR"));
        int? masterPort = Optional(env, "MASTER_PORT", 0, 65535);
        bool pmix = NonEmpty(env("PMIX_RANK")) is not null;

        if (NonEmpty(env("RANK")) is not null || NonEmpty(env("WORLD_SIZE")) is not null)
        {
            int size = Required(env, "WORLD_SIZE", 1, int.MaxValue);
            int rank = Required(env, "RANK", 0, size - 1);
            int localSize = Optional(env, "LOCAL_WORLD_SIZE", 1, size) ?? size;
            int localRank = Optional(env, "LOCAL_RANK", 0, localSize - 1) ?? rank % localSize;
            return new RankInfo(rank, size, localRank, localSize, masterAddr, masterPort, LauncherKind.Torchrun, false, token);
        }
        if (NonEmpty(env("OMPI_COMM_WORLD_RANK")) is not null)
        {
            int size = Required(env, "OMPI_COMM_WORLD_SIZE", 1, int.MaxValue);
            int rank = Required(env, "OMPI_COMM_WORLD_RANK", 0, size - 1);
            int localSize = Optional(env, "OMPI_COMM_WORLD_LOCAL_SIZE", 1, size) ?? 1;
            int localRank = Optional(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0, localSize - 1) ?? 0;
            return new RankInfo(rank, size, localRank, localSize, masterAddr, masterPort, LauncherKind.OpenMpi, true, token);
        }
        if (NonEmpty(env("SLURM_PROCID")) is not null)
        {
            string sizeVar = NonEmpty(env("SLURM_NTASKS")) is not null ? "SLURM_NTASKS" : "SLURM_NPROCS";
            int size = Required(env, sizeVar, 1, int.MaxValue);
            int rank = Required(env, "SLURM_PROCID", 0, size - 1);
            int nodeId = Optional(env, "SLURM_NODEID", 0, int.MaxValue) ?? 0;
            int localSize = NonEmpty(env("SLURM_STEP_TASKS_PER_NODE") ?? env("SLURM_TASKS_PER_NODE")) is { } tpn
                ? TasksOnNode(tpn, nodeId, "SLURM_TASKS_PER_NODE")
                : 1;
            int localRank = Optional(env, "SLURM_LOCALID", 0, int.MaxValue) ?? 0;
            if (localRank >= localSize) localSize = localRank + 1;
            string? nodes = NonEmpty(env("SLURM_STEP_NODELIST")) ?? NonEmpty(env("SLURM_JOB_NODELIST")) ?? NonEmpty(env("SLURM_NODELIST"));
            string? master = masterAddr ?? (nodes is null ? null : ExpandHostList(nodes)[0]);
            return new RankInfo(rank, size, localRank, localSize, master, masterPort, LauncherKind.Slurm, pmix, token);
        }
        return RankInfo.Single with { JobToken = token };
    }

    /// <summary>
    /// Expands a Slurm host list: "node[01-03,07],gpu5,r[1-2]n[1-2]" → node01 node02 node03 node07 gpu5 r1n1 r1n2
    /// r2n1 r2n2 (zero padding kept; several bracket groups in one name multiply out).
    /// </summary>
    public static IReadOnlyList<string> ExpandHostList(string list)
    {
        var hosts = new List<string>();
        foreach (var item in SplitTopLevel(list))
        {
            if (item.Length == 0) continue;
            var partial = new List<string> { "" };
            int i = 0;
            while (i < item.Length)
            {
                int open = item.IndexOf('[', i);
                if (open < 0)
                {
                    partial = [.. partial.Select(p => p + item[i..])];
                    break;
                }
                int close = item.IndexOf(']', open);
                if (close < 0) throw new ArgumentException($"Slurm host list '{list}': unclosed '[' in '{item}'");
                string prefix = item[i..open];
                var ranges = ExpandRanges(item[(open + 1)..close], list);
                partial = [.. partial.SelectMany(p => ranges.Select(r => p + prefix + r))];
                i = close + 1;
            }
            hosts.AddRange(partial);
        }
        if (hosts.Count == 0) throw new ArgumentException($"Slurm host list '{list}' names no host");
        return hosts;
    }

    static IEnumerable<string> SplitTopLevel(string list)
    {
        var sb = new StringBuilder();
        int depth = 0;
        foreach (char c in list)
        {
            if (c == '[') depth++;
            else if (c == ']') depth--;
            if (c == ',' && depth == 0)
            {
                yield return sb.ToString().Trim();
                sb.Clear();
            }
            else sb.Append(c);
        }
        yield return sb.ToString().Trim();
    }

    static List<string> ExpandRanges(string spec, string list)
    {
        var result = new List<string>();
        foreach (var part in spec.Split(','))
        {
            var bounds = part.Split('-');
            if (bounds.Length == 1 && IsDigits(bounds[0])) { result.Add(bounds[0]); continue; }
            if (bounds.Length != 2 || !IsDigits(bounds[0]) || !IsDigits(bounds[1]))
                throw new ArgumentException($"Slurm host list '{list}': bad range '{part}'");
            long lo = long.Parse(bounds[0], CultureInfo.InvariantCulture), hi = long.Parse(bounds[1], CultureInfo.InvariantCulture);
            if (hi < lo || hi - lo > 1_000_000) throw new ArgumentException($"Slurm host list '{list}': bad range '{part}'");
            int width = bounds[0].Length;
            for (long v = lo; v <= hi; v++) result.Add(v.ToString(CultureInfo.InvariantCulture).PadLeft(width, '0'));
        }
        return result;
    }

    static bool IsDigits(string s) => s.Length > 0 && s.All(char.IsAsciiDigit);

    /// <summary>Tasks on node <paramref name="node"/> from Slurm's "2(x3),1" (two tasks on each of three nodes, then one).</summary>
    public static int TasksOnNode(string tasksPerNode, int node, string variable)
    {
        int index = 0;
        foreach (var part in tasksPerNode.Split(','))
        {
            int paren = part.IndexOf('(');
            string countText = paren < 0 ? part : part[..paren];
            int repeat = 1;
            if (paren >= 0)
            {
                string inner = part[(paren + 1)..].TrimEnd(')');
                if (!inner.StartsWith('x') || !int.TryParse(inner[1..], NumberStyles.None, CultureInfo.InvariantCulture, out repeat) || repeat < 1)
                    throw new ArgumentException($"{variable}={tasksPerNode}: bad repeat '{part}'");
            }
            if (!int.TryParse(countText, NumberStyles.None, CultureInfo.InvariantCulture, out int count) || count < 1)
                throw new ArgumentException($"{variable}={tasksPerNode}: bad count '{part}'");
            if (node < index + repeat) return count;
            index += repeat;
        }
        throw new ArgumentException($"{variable}={tasksPerNode} describes {index} nodes, not node {node}");
    }

    static string? NonEmpty(string? s) => string.IsNullOrWhiteSpace(s) ? null : s.Trim();

    static int Required(Func<string, string?> env, string name, int min, int max) =>
        Optional(env, name, min, max) ?? throw new ArgumentException($"{name} is not set (the other launcher variables are)");

    static int? Optional(Func<string, string?> env, string name, int min, int max)
    {
        string? s = NonEmpty(env(name));
        if (s is null) return null;
        if (!int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v))
            throw new ArgumentException($"{name}={s} is not a non-negative integer");
        if (v < min || v > max) throw new ArgumentException($"{name}={s} is outside {min}..{max}");
        return v;
    }
}
