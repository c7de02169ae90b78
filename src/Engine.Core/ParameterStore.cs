namespace Engine.Core;

/// <summary>A parameter to lay out: its name and shape; StartAlign (elements, a multiple of
/// <see cref="ParameterStore.Alignment"/>) when it must start on a coarser boundary (a data-parallel bucket's first
/// parameter).</summary>
public sealed record ParameterSpec(string Name, int[] Shape, long StartAlign = 0)
{
    public long Numel => Core.Shape.Numel(Shape);
}

/// <summary>Where one parameter lives in the flat buffers, and its tensor (a view of the master buffer).</summary>
public sealed record ParameterSlot(string Name, int[] Shape, long Offset, long Numel, Tensor Tensor);

/// <summary>Supplies a parameter's gradient buffer on first use in a backward pass (ZeRO-2's gradient buckets).</summary>
public interface IGradientSource
{
    /// <summary>Returns the (zeroed) gradient view of <paramref name="parameter"/>, assigning it to its Grad.</summary>
    Tensor Acquire(Tensor parameter);
}

/// <summary>
/// The flat parameter store (llm.c's layout): one contiguous fp32 buffer of master weights and one of gradients; every
/// parameter is a view of the master buffer at a fixed offset and its gradient the view at the same offset of the
/// gradient buffer. The optimizer, gradient norm, clipping, EWC, checkpoints, data-parallel buckets and ZeRO shards
/// all work on ranges of these buffers, so one launch or one collective covers many parameters.
/// <para>
/// <b>Layout rule (the one place it is stated).</b> Parameters in registration order, each starting at a multiple of
/// <see cref="Alignment"/> elements (64 fp32 = 256 bytes: aligned for 128-bit vector loads, cuBLAS and NCCL); the
/// buffers hold <see cref="Capacity"/> elements: the end of the last parameter rounded up to a multiple of the
/// requested pad (data parallelism asks for world size × shard chunk, so equal shards cut nothing but padding).
/// Padding and gaps hold zeros in every buffer and stay zero: no parameter covers them, so no op writes them.
/// </para>
/// <para>
/// Re-layout (<see cref="Relayout"/>: vocabulary growth, sharding pad) allocates new buffers and new views: code must
/// not hold parameter tensors across it (look them up by name). <see cref="Version"/> changes with every layout.
/// </para>
/// </summary>
public sealed class ParameterStore : IDisposable
{
    /// <summary>Every parameter starts at a multiple of this many elements.</summary>
    public const int Alignment = 64;

    readonly Dictionary<string, int> index = new(StringComparer.Ordinal);
    readonly List<ParameterSlot> slots = new();

    public ParameterStore(IBackend backend, IEnumerable<ParameterSpec> specs, long padMultiple = 1)
    {
        Backend = backend;
        Build(specs.ToList(), padMultiple, fill: null);
    }

    public IBackend Backend { get; }
    Tensor? master;
    /// <summary>fp32 master weights [Capacity]; refused once <see cref="Rebind"/> sharded them (ZeRO-3).</summary>
    public Tensor Master => master ?? throw new InvalidOperationException(
        "the master weights are sharded across the data-parallel ranks (ZeRO-3): each rank holds only its slices (DataParallel.MasterBuffer); gather the units to read whole parameters");
    /// <summary>Whether the parameters are views of buffers another owner fills on use (<see cref="Rebind"/>: ZeRO-3).</summary>
    public bool IsRebound => master == null && slots.Count > 0;
    /// <summary>fp32 gradients [Capacity], or null while gradients come from a <see cref="IGradientSource"/> (ZeRO-2).</summary>
    public Tensor? Grads { get; private set; }
    /// <summary>End of the last parameter (elements).</summary>
    public long Used { get; private set; }
    /// <summary>Elements in each buffer (Used rounded up to the pad multiple).</summary>
    public long Capacity { get; private set; }
    /// <summary>The pad multiple the capacity was rounded to.</summary>
    public long PadMultiple { get; private set; }
    /// <summary>Changes with every layout (construction and <see cref="Relayout"/>).</summary>
    public int Version { get; private set; }
    static int versions;

    public IReadOnlyList<ParameterSlot> Slots => slots;

    /// <summary>The groups of parameters the model runs together, in slot order (empty when it declared none).</summary>
    public IReadOnlyList<ParameterUnit> Units => units;
    List<ParameterUnit> units = [];
    List<(int First, int Last)> unitSlots = [];

    /// <summary>Called by the model around each use of a unit (null = none): ZeRO-3 gathers and frees there.</summary>
    public IUnitHooks? Hooks { get; set; }

    /// <summary>
    /// Declares the model's units: every parameter in exactly one unit, each unit a run of consecutive slots, the units
    /// in slot order (so a unit is a contiguous range of the flat buffers). Kept across <see cref="Relayout"/> while the
    /// names stay.
    /// </summary>
    public void DefineUnits(IEnumerable<ParameterUnit> list)
    {
        var u = list.ToList();
        unitSlots = ResolveUnits(u) ?? throw new ArgumentException(
            $"units [{string.Join(", ", u.Select(x => x.Name))}] do not cover the store's {Count} parameters once each, in order, as runs of consecutive slots");
        units = u;
    }

    /// <summary>Slots [First, Last] of unit <paramref name="unit"/>.</summary>
    public (int First, int Last) UnitSlots(int unit) => unitSlots[unit];

    List<(int, int)>? ResolveUnits(List<ParameterUnit> u)
    {
        var ranges = new List<(int, int)>();
        int next = 0;
        foreach (var unit in u)
        {
            if (unit.Parameters.Count == 0) return null;
            int first = next;
            foreach (var name in unit.Parameters)
                if (!index.TryGetValue(name, out int i) || i != next++) return null;
            ranges.Add((first, next - 1));
        }
        return next == Count ? ranges : null;
    }
    /// <summary>The specs of the current layout (with their start alignments), in slot order.</summary>
    public IReadOnlyList<ParameterSpec> LayoutSpecs { get; private set; } = [];
    public int Count => slots.Count;
    public bool Contains(string name) => index.ContainsKey(name);

    public ParameterSlot Slot(string name) => index.TryGetValue(name, out int i) ? slots[i]
        : throw new KeyNotFoundException($"no parameter named '{name}'");

    public Tensor this[string name] => Slot(name).Tensor;

    public static long AlignUp(long x, long multiple) => multiple <= 1 ? x : (x + multiple - 1) / multiple * multiple;

    /// <summary>Offsets of specs laid out by the rule above (the same function the store uses).</summary>
    public static (long[] Offsets, long Used) Layout(IReadOnlyList<ParameterSpec> specs)
    {
        var offsets = new long[specs.Count];
        long at = 0;
        for (int i = 0; i < specs.Count; i++)
        {
            at = AlignUp(at, Math.Max(Alignment, specs[i].StartAlign));
            offsets[i] = at;
            at += specs[i].Numel;
        }
        return (offsets, at);
    }

    /// <summary>
    /// New buffers for a new set of parameters and/or pad multiple. Each new parameter's values come from
    /// <paramref name="fill"/>(name, its old tensor or null, the new tensor); without fill, a parameter of the same
    /// name and shape keeps its values and any other starts at zero. Flags (RequiresGrad, Frozen) carry over by name.
    /// Gradients restart at zero.
    /// </summary>
    public void Relayout(IEnumerable<ParameterSpec>? specs = null, long? padMultiple = null, Action<string, Tensor?, Tensor>? fill = null)
    {
        if (IsRebound) throw new InvalidOperationException("the parameters are sharded (ZeRO-3): lay the store out before sharding it");
        var list = (specs ?? Specs()).ToList();
        var oldMaster = master!;
        var oldGrads = Grads;
        var old = slots.ToDictionary(s => s.Name, s => s.Tensor, StringComparer.Ordinal);
        fill ??= (name, o, n) =>
        {
            if (o != null && o.Shape.AsSpan().SequenceEqual(n.Shape)) Backend.Copy(o, n);
        };
        Build(list, padMultiple ?? PadMultiple, (name, fresh) =>
        {
            old.TryGetValue(name, out var o);
            if (o != null) { fresh.RequiresGrad = o.RequiresGrad; fresh.Frozen = o.Frozen; }
            fill(name, o, fresh);
        });
        oldGrads?.Dispose();
        oldMaster.Dispose();
    }

    void Build(List<ParameterSpec> specs, long padMultiple, Action<string, Tensor>? fill)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(padMultiple, 1);
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in specs)
        {
            if (!names.Add(s.Name)) throw new ArgumentException($"parameter '{s.Name}' is registered twice");
            if (s.Shape.Any(d => d <= 0)) throw new ArgumentException($"parameter '{s.Name}' has shape {Core.Shape.Format(s.Shape)}: every dimension must be positive");
            if (s.StartAlign < 0 || s.StartAlign % Alignment != 0) throw new ArgumentException($"parameter '{s.Name}': start alignment {s.StartAlign} is not a multiple of {Alignment}");
        }
        var (offsets, used) = Layout(specs);
        long capacity = Math.Max(AlignUp(Math.Max(used, 1), padMultiple), 1);
        if (capacity > int.MaxValue)
            throw new ArgumentException($"{capacity:N0} parameters in one flat store: a process holds at most {int.MaxValue:N0} (tensor shapes are int); " +
                "split the model into pipeline stages (parallel.pp) so that each stage's parameters fit");
        var master = Backend.Zeros([checked((int)capacity)]).Keep();
        var grads = Backend.Zeros([checked((int)capacity)]).Keep();
        index.Clear();
        slots.Clear();
        for (int i = 0; i < specs.Count; i++)
        {
            var t = master.Slice(offsets[i], specs[i].Shape).Keep();
            t.Name = specs[i].Name;
            t.IsParameter = true;
            t.RequiresGrad = true;
            t.Grad = grads.Slice(offsets[i], specs[i].Shape).Keep();
            index[specs[i].Name] = i;
            slots.Add(new ParameterSlot(specs[i].Name, (int[])specs[i].Shape.Clone(), offsets[i], specs[i].Numel, t));
            fill?.Invoke(specs[i].Name, t);
        }
        this.master = master;
        Grads = grads;
        LayoutSpecs = specs.ToList();
        var resolved = ResolveUnits(units);
        if (resolved == null) units = [];
        unitSlots = resolved ?? [];
        Used = used;
        Capacity = capacity;
        PadMultiple = padMultiple;
        Version = Interlocked.Increment(ref versions);
    }

    /// <summary>
    /// ZeRO-3: every parameter becomes <paramref name="view"/>(slot index, slot) — a view of a buffer its owner fills while the
    /// parameter's unit is in use (the gathered weights) — and the flat master and gradient buffers are freed. Offsets
    /// and capacity stay: they are the frame the owner cuts its slices from. Flags (RequiresGrad, Frozen) and the
    /// gradient source carry over; <see cref="Master"/> then refuses, naming why.
    /// </summary>
    public void Rebind(Func<int, ParameterSlot, Tensor> view)
    {
        for (int i = 0; i < slots.Count; i++)
        {
            var old = slots[i].Tensor;
            var t = view(i, slots[i]);
            if (!t.Shape.AsSpan().SequenceEqual(slots[i].Shape)) throw new ArgumentException($"{slots[i].Name}: the rebound view is {Core.Shape.Format(t.Shape)}, the parameter {Core.Shape.Format(slots[i].Shape)}");
            t.Keep();
            t.Name = slots[i].Name;
            t.IsParameter = true;
            t.RequiresGrad = old.RequiresGrad;
            t.Frozen = old.Frozen;
            t.GradSource = old.GradSource;
            slots[i] = slots[i] with { Tensor = t };
        }
        Grads?.Dispose();
        Grads = null;
        master?.Dispose();
        master = null;
        Version = Interlocked.Increment(ref versions);
    }

    /// <summary>The current parameters as specs (names, shapes; no start alignment).</summary>
    public List<ParameterSpec> Specs() => slots.Select(s => new ParameterSpec(s.Name, s.Shape)).ToList();

    /// <summary>Zeros the gradient buffer (one fill) — or does nothing while gradients come from a source.</summary>
    public void ZeroGrads()
    {
        if (Grads != null) Backend.Fill(Grads, 0f);
    }

    /// <summary>
    /// Frees the gradient buffer: every parameter's Grad becomes null and is supplied by <paramref name="source"/> on
    /// first use (ZeRO-2 keeps only gradient buckets and the rank's shard). <see cref="AttachGradients"/> undoes it.
    /// </summary>
    public void DetachGradients(IGradientSource source)
    {
        foreach (var s in slots) { s.Tensor.Grad = null; s.Tensor.GradSource = source; }
        Grads?.Dispose();
        Grads = null;
    }

    /// <summary>A fresh zeroed gradient buffer with every parameter's Grad a view of it again.</summary>
    public void AttachGradients()
    {
        if (Grads != null) return;
        var grads = Backend.Zeros([checked((int)Capacity)]).Keep();
        foreach (var s in slots)
        {
            s.Tensor.GradSource = null;
            s.Tensor.Grad = grads.Slice(s.Offset, s.Shape).Keep();
        }
        Grads = grads;
    }

    public void Dispose()
    {
        Grads?.Dispose();
        master?.Dispose();
        master = null;
        Grads = null;
        slots.Clear();
        index.Clear();
    }
}
