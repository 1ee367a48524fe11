//! The C allocator, set for a journal's write pattern.
//!
//! sled (the store) allocates a fresh buffer of up to a few hundred KiB
//! per log segment and per rewritten tree node, and frees it from another
//! thread once written. With glibc's defaults such buffers are `mmap`ed
//! and unmapped one by one, or trimmed off the heap's top and faulted in
//! again: measured on a busy proxy (400,000 pipelined requests), ~25,000
//! page faults and ~200 `mmap`/`munmap` pairs per run, a visible share of
//! its CPU (README, "Proxy throughput"). Keeping such buffers on the heap
//! and the heap's free top mapped removes nearly all of it once the heap
//! has grown to its working size.

/// Largest allocation served from the heap rather than by its own `mmap`.
const MMAP_THRESHOLD: libc::c_int = 8 << 20;
/// Free memory kept at the heap's top before it is given back.
const TRIM_THRESHOLD: libc::c_int = 64 << 20;

/// Sets glibc's allocator for a process that runs a journal (call it
/// first thing, before other threads start). Both values stay bounded,
/// so what is held back from the system is at most `TRIM_THRESHOLD` per
/// arena.
pub fn tune_for_journal() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists, it races with no allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
