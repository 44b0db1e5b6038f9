//! The runtime one export runs on, shared by `b24sense export`/`demo` and the bench's export child so that the
//! bench measures what users run.
//!
//! One worker thread: an export's pace is the portal's 2 requests/s, and one worker does it with ~20 % less CPU
//! than two (`scale-1k`, docs/benchmarks.md), because two idle workers keep waking each other for every task.
//! One glibc malloc arena: with the default (up to 8 per core) each thread that allocates (the worker, the main
//! thread, the SQLite thread, blocking DNS look-ups) gets its own heap, and the ~256 KiB download, chunk and gRPC
//! buffers one thread frees are kept by its arena instead of being reused by the next upload: `realistic-2k` at 32
//! calls in flight peaked at 73–75 MiB, with one arena at 55–56 MiB, same wall time and CPU (2 arenas: 71 MiB).
//! With one worker thread there is no lock contention to pay for it. `TOKIO_WORKER_THREADS` and
//! `MALLOC_ARENA_MAX`, when set, are left to tokio and glibc.

/// Builds the export runtime (see the module doc).
pub fn export_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        b.worker_threads(1);
        single_malloc_arena();
    }
    b.enable_all().build()
}

/// Called before the runtime starts its threads.
fn single_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_ARENA_MAX: std::os::raw::c_int = -8;
        extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only changes allocator tuning; called before the runtime starts its threads.
            unsafe { mallopt(M_ARENA_MAX, 1) };
        }
    }
}
