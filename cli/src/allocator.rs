//! The `cairn` process's allocator: glibc's malloc with at most
//! [`MALLOC_ARENAS`] arenas instead of its default of 8 per core.
//!
//! Each glibc arena keeps the memory its threads freed for reuse by the same arena. RocksDB's
//! flush and compaction threads, the tokio transfer threads and the slot threads each allocate
//! in bursts (SST blocks, upload buffers, checkpoint scans), so with one arena per thread the
//! freed memory of one burst sits idle in its arena while another thread's burst maps fresh
//! pages: the process's RSS ends far above what it uses. Measured with `cairn run` (peak RSS
//! sampled by the run, same binary, `MALLOC_ARENA_MAX` set or not; `benches/RESULTS.md`,
//! 2026-12-05): the default run 318 -> 253 MiB on its 256 MiB budget, the 1M-key counter
//! 227 -> 156 MiB, the 64 MiB write-heavy run 205 -> 122 MiB; one arena saved no more and
//! four saved less.
//!
//! A host engine embedding Cairn owns its allocator: the same setting is
//! `MALLOC_ARENA_MAX=2` in its environment, or `mallopt(M_ARENA_MAX, 2)` at its start.

/// Arenas glibc may create.
pub const MALLOC_ARENAS: i32 = 2;

/// Limits glibc's malloc arenas to [`MALLOC_ARENAS`] unless `MALLOC_ARENA_MAX` is set (glibc
/// reads it itself: the user's choice wins). Call it first in `main`, before any thread is
/// started. Does nothing on other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of the C allocator; it is called before this
        // process starts any thread, and M_ARENA_MAX with a positive value is a documented
        // glibc parameter (a failure returns 0 and changes nothing).
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}
