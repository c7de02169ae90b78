using System.Globalization;
using Engine.Fuzz;

// engine-fuzz: the readers' fuzz targets (see tools/fuzz/README.md).
//   list                                   the targets and the reader each drives
//   seeds DIR [TARGET]                     write each target's seed corpus to DIR/TARGET/ (afl-fuzz -i)
//   mutate TARGET [--count N] [--seed S] [--from I] [--keep DIR]
//                                          the CI test's deterministic run (seeds, then inputs I..I+N-1); exit 1 on a failure
//   repro TARGET FILE                      run one input and print the outcome (a crash shows its stack trace)
//   prepare TARGET DIR                     lay the target's fixed files (weights beside a fuzzed config.json, …) in DIR
//   afl TARGET DIR                         the afl++ entry point (SharpFuzz) over a prepared DIR: a crash = an exception
//                                          that is not a one-line user error naming the file; those are correct refusals
static int Usage()
{
    Console.Error.WriteLine("usage: engine-fuzz list | seeds DIR [TARGET] | mutate TARGET [--count N] [--seed S] [--from I] [--keep DIR] | repro TARGET FILE | prepare TARGET DIR | afl TARGET DIR");
    return 2;
}

if (args.Length == 0) return Usage();
string Opt(string name, string dflt)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : dflt;
}

switch (args[0])
{
    case "list":
        foreach (var t in FuzzTargets.All) Console.WriteLine($"{t.Name,-22} {t.Reader}");
        return 0;

    case "seeds" when args.Length >= 2:
        {
            var corpus = SeedCorpus.Locate();
            foreach (var t in FuzzTargets.All.Where(t => args.Length < 3 || t.Name == args[2]))
            {
                string dir = Path.Combine(args[1], t.Name);
                Directory.CreateDirectory(dir);
                var seeds = t.Seeds(corpus);
                for (int i = 0; i < seeds.Count; i++) File.WriteAllBytes(Path.Combine(dir, $"seed{i}"), seeds[i]);
                Console.WriteLine($"{dir}: {seeds.Count} seeds");
            }
            return 0;
        }

    case "mutate" when args.Length >= 2:
        {
            var target = FuzzTargets.Get(args[1]);
            long count = long.Parse(Opt("--count", "10000"), CultureInfo.InvariantCulture);
            ulong seed = ulong.Parse(Opt("--seed", "13"), CultureInfo.InvariantCulture);
            long from = long.Parse(Opt("--from", "0"), CultureInfo.InvariantCulture);
            var stats = FuzzRunner.Run(target, SeedCorpus.Locate(), count, seed, from, keepFailures: Opt("--keep", "") is { Length: > 0 } k ? k : null);
            Console.WriteLine(stats);
            foreach (var f in stats.Failures.Take(20)) Console.WriteLine($"  input {f.Iteration} ({f.How}){(f.SavedInput != null ? " → " + f.SavedInput : "")}: {f.Problem}");
            return stats.Failures.Count == 0 ? 0 : 1;
        }

    case "repro" when args.Length >= 3:
        {
            var target = FuzzTargets.Get(args[1]);
            string dir = FuzzPaths.NewTempDir("repro");
            try
            {
                target.Prepare?.Invoke(dir, SeedCorpus.Locate());
                target.Run(File.ReadAllBytes(args[2]), dir);
                Console.WriteLine("accepted");
                return 0;
            }
            catch (Exception e)
            {
                string? problem = FuzzRunner.Check(e, dir);
                Console.WriteLine(problem == null ? $"refused ({e.GetType().Name}): {e.Message}" : $"FAILURE: {problem}");
                return problem == null ? 0 : 1;
            }
            finally { Directory.Delete(dir, recursive: true); }
        }

    case "prepare" when args.Length >= 3:
        {
            var target = FuzzTargets.Get(args[1]);
            Directory.CreateDirectory(args[2]);
            target.Prepare?.Invoke(args[2], SeedCorpus.Locate());
            return 0;
        }

    case "afl" when args.Length >= 3:
        {
            // the directory was laid by `prepare` with the uninstrumented build: no instrumented code runs before the fuzzer starts
            var target = FuzzTargets.Get(args[1]);
            string dir = Path.GetFullPath(args[2]);
            // OutOfProcess: the target runs in a child process, so a stack overflow or a fatal error is reported as a crash too
            SharpFuzz.Fuzzer.OutOfProcess.Run(stream =>
            {
                var ms = new MemoryStream();
                stream.CopyTo(ms);
                try { target.Run(ms.ToArray(), dir); }
                catch (Exception e) when (FuzzRunner.Check(e, dir) == null) { }   // a correct refusal; anything else escapes = crash
            });
            return 0;
        }

    default:
        return Usage();
}
