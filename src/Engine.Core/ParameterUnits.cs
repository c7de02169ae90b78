namespace Engine.Core;

/// <summary>
/// A group of a store's parameters that a model runs as one piece (PyTorch's module: the token embedding, one
/// transformer block, the final norm, the LM head): consecutive slots of the store, named by <see cref="Name"/>.
/// </summary>
public sealed record ParameterUnit(string Name, IReadOnlyList<string> Parameters);

/// <summary>
/// Callbacks around each use of a unit (PyTorch's module forward pre/post hooks and backward pre/post hooks), called by
/// the model with the unit's index in <see cref="ParameterStore.Units"/>: before and after its forward as it runs; before
/// and after its backward when backward reaches the marks the forward left on the tape (<see cref="F.OnBackward"/>). A
/// unit may be used more than once per forward (a tied head reads the embedding again); every Before has its After.
/// The model knows nothing of what the hooks do (ZeRO-3 gathers a unit's weights before a use and frees them after).
/// </summary>
public interface IUnitHooks
{
    void BeforeForward(int unit);
    void AfterForward(int unit);
    void BeforeBackward(int unit);
    void AfterBackward(int unit);
}
