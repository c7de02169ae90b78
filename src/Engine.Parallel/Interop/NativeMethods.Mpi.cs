using System.Runtime.InteropServices;

namespace Engine.Parallel.Interop;

/// <summary>
/// Open MPI (libmpi.so.40, Debian's openmpi-bin + libopenmpi-dev), C names unchanged. Open MPI's ABI: MPI_Comm,
/// MPI_Datatype, MPI_Op, MPI_Info and MPI_Errhandler are pointers to exported globals (ompi_mpi_comm_world,
/// ompi_mpi_float, ompi_mpi_op_sum, …; <see cref="Mpi.MpiLibrary"/> resolves them), MPI_IN_PLACE is (void*)1 and
/// MPI_STATUS_IGNORE null. Every call is made on the one MPI thread (<see cref="Mpi.MpiRuntime"/>).
/// </summary>
public static unsafe partial class NativeMethods
{
    internal const string LibMpi = "libmpi";

    public const int MPI_SUCCESS = 0;
    public const int MPI_THREAD_FUNNELED = 1;
    public const int MPI_MAX_ERROR_STRING = 256;
    public const int MPI_MAX_PORT_NAME = 1024;
    public const int MPI_MAX_PROCESSOR_NAME = 256;
    public const int MPI_MAX_LIBRARY_VERSION_STRING = 256;
    public static readonly IntPtr MPI_IN_PLACE = 1;

    [LibraryImport(LibMpi)] public static partial int MPI_Initialized(out int flag);
    [LibraryImport(LibMpi)] public static partial int MPI_Finalized(out int flag);
    [LibraryImport(LibMpi)] public static partial int MPI_Init_thread(IntPtr argc, IntPtr argv, int required, out int provided);
    [LibraryImport(LibMpi)] public static partial int MPI_Finalize();
    [LibraryImport(LibMpi)] public static partial int MPI_Error_string(int errorcode, byte* text, out int length);
    [LibraryImport(LibMpi)] public static partial int MPI_Get_library_version(byte* version, out int length);
    [LibraryImport(LibMpi)] public static partial int MPI_Get_processor_name(byte* name, out int length);

    [LibraryImport(LibMpi)] public static partial int MPI_Comm_rank(IntPtr comm, out int rank);
    [LibraryImport(LibMpi)] public static partial int MPI_Comm_size(IntPtr comm, out int size);
    [LibraryImport(LibMpi)] public static partial int MPI_Comm_dup(IntPtr comm, out IntPtr newcomm);
    [LibraryImport(LibMpi)] public static partial int MPI_Comm_split(IntPtr comm, int color, int key, out IntPtr newcomm);
    [LibraryImport(LibMpi)] public static partial int MPI_Comm_free(ref IntPtr comm);
    [LibraryImport(LibMpi)] public static partial int MPI_Comm_set_errhandler(IntPtr comm, IntPtr errhandler);

    [LibraryImport(LibMpi)] public static partial int MPI_Allreduce(void* sendbuf, void* recvbuf, int count, IntPtr datatype, IntPtr op, IntPtr comm);
    [LibraryImport(LibMpi)] public static partial int MPI_Reduce_scatter_block(void* sendbuf, void* recvbuf, int recvcount, IntPtr datatype, IntPtr op, IntPtr comm);
    [LibraryImport(LibMpi)] public static partial int MPI_Allgather(void* sendbuf, int sendcount, IntPtr sendtype, void* recvbuf, int recvcount, IntPtr recvtype, IntPtr comm);
    [LibraryImport(LibMpi)] public static partial int MPI_Bcast(void* buffer, int count, IntPtr datatype, int root, IntPtr comm);
    [LibraryImport(LibMpi)] public static partial int MPI_Send(void* buf, int count, IntPtr datatype, int dest, int tag, IntPtr comm);
    /// <summary>MPI_Request is a pointer in Open MPI.</summary>
    [LibraryImport(LibMpi)] public static partial int MPI_Isend(void* buf, int count, IntPtr datatype, int dest, int tag, IntPtr comm, out IntPtr request);
    [LibraryImport(LibMpi)] public static partial int MPI_Test(ref IntPtr request, out int flag, void* status);
    [LibraryImport(LibMpi)] public static partial int MPI_Wait(ref IntPtr request, void* status);
    /// <summary><paramref name="status"/>: an MPI_Status (Open MPI: 24 bytes) or null for MPI_STATUS_IGNORE.</summary>
    [LibraryImport(LibMpi)] public static partial int MPI_Recv(void* buf, int count, IntPtr datatype, int source, int tag, IntPtr comm, void* status);
    [LibraryImport(LibMpi)] public static partial int MPI_Get_count(void* status, IntPtr datatype, out int count);
    [LibraryImport(LibMpi)] public static partial int MPI_Barrier(IntPtr comm);

    /// <summary>MPI_User_function: void (*)(void* invec, void* inoutvec, int* len, MPI_Datatype* datatype).</summary>
    [LibraryImport(LibMpi)] public static partial int MPI_Op_create(delegate* unmanaged[Cdecl]<void*, void*, int*, IntPtr*, void> function, int commute, out IntPtr op);
    [LibraryImport(LibMpi)] public static partial int MPI_Op_free(ref IntPtr op);

    // Dynamic process model: a world grown one rank at a time from singletons (torchrun-style start, ompi-server).
    [LibraryImport(LibMpi)] public static partial int MPI_Open_port(IntPtr info, byte* portName);
    [LibraryImport(LibMpi)] public static partial int MPI_Close_port(byte* portName);
    [LibraryImport(LibMpi)] public static partial int MPI_Comm_accept(byte* portName, IntPtr info, int root, IntPtr comm, out IntPtr newcomm);
    [LibraryImport(LibMpi)] public static partial int MPI_Comm_connect(byte* portName, IntPtr info, int root, IntPtr comm, out IntPtr newcomm);
    [LibraryImport(LibMpi)] public static partial int MPI_Intercomm_merge(IntPtr intercomm, int high, out IntPtr newintracomm);
}
