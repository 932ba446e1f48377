//! The async runtime `meshgate serve` (and the benchmarks' in-process gateways) run on.

/// Threads of the runtime's pool for blocking work.
const BLOCKING_THREADS: usize = 16;
/// How long an idle thread of that pool waits for more work before it ends (tokio's default: 10 s).
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// The runtime answering requests. The log's writer runs on a thread of its own and is on the
/// path of every accepted webhook, so by default the runtime takes one worker thread fewer than
/// there are cores (at least one) and leaves the writer a core; `TOKIO_WORKER_THREADS` overrides.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    // Blocking work (reads of the log, files) is short, and at most 8 reads of the log run at
    // once. Unbounded, the pool still started a thread whenever none was idle at that instant: a
    // hundred under a burst, each with allocator arenas of its own (docs/benchmarks.md, "Memory
    // after a burst").
    builder.max_blocking_threads(BLOCKING_THREADS);
    // A thread that ends gives back the memory its allocator heap held: after a burst, within a
    // second rather than ten (docs/benchmarks.md, "Memory after a burst").
    builder.thread_keep_alive(BLOCKING_KEEP_ALIVE);
    builder.enable_all().build()
}
