//! The process's heap (issue 26): glibc's allocator, kept to one arena, and
//! the pages a storm of connections freed handed back to the system.
//!
//! Chosen with figures (benches/README.md, "Allocators"): at full rate one
//! arena peaks 3 MiB lower than glibc's default of one per thread (a batch
//! is allocated by the thread that reads it and freed by the stream's
//! writer; with an arena per thread each kept its own peak) at the same
//! records/s; jemalloc and mimalloc peaked 15 MiB higher.

use crate::ingest::net::guard::closed_so_far;

/// One malloc arena for the whole process, unless `MALLOC_ARENA_MAX` in
/// the environment says otherwise. Called before any thread is started.
pub fn one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a parameter of glibc's allocator, which is
    // the one in use; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hand freed heap memory back to the kernel after connections closed.
///
/// glibc keeps what a connection freed in its arenas for reuse, so after a
/// storm of thousands of connections the process would keep their peak
/// for good. Every `every`, if any connection closed meanwhile, the
/// arenas' free pages are returned (`malloc_trim`, a walk of the free
/// lists: cheap next to thousands of connections, and only after closes).
pub async fn give_back_memory(every: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
    let mut seen = closed_so_far();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = closed_so_far();
        if now != seen {
            seen = now;
            // SAFETY: malloc_trim has no preconditions; glibc's allocator is the one in use.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}
