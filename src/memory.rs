//! Returning freed heap memory to the system after work that used much of it.

/// glibc keeps freed heap memory for reuse: after a flood, or a review that counted many
/// records, what the connections, requests and tallies used stays in its free lists (the
/// argon2 buffers are separate mappings, unmapped by their pool). Asking glibc to return what
/// is free lets an idle server's RSS really drop back. A few milliseconds at most; call it
/// after such work, not on every request.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator; it has no
    // preconditions and cannot affect live allocations.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`give_back_freed`] on the runtime's blocking threads, from async code: it locks every
/// arena in turn, which an async worker must not wait for. Must be called within a tokio
/// runtime.
pub fn give_back_freed_off_the_workers() {
    drop(tokio::task::spawn_blocking(give_back_freed));
}
