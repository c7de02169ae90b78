namespace Engine.Core;

/// <summary>
/// Writing a run's files failed (disk full, a read-only or unwritable output directory, a file where a directory must
/// be) or would fail (too little free space for the next save). The message is one line the CLI prints as is: what was
/// being written, the path, the cause, the fix and the last good checkpoint.
/// </summary>
public sealed class StorageException(string message, Exception? inner = null) : IOException(message, inner);
