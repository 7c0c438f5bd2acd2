//! Allocator settings for training on glibc.
//!
//! glibc's malloc serves large blocks with fresh `mmap`s (above a threshold that it
//! raises as blocks are freed, up to 32 MiB) and gives the free top of its heaps back to
//! the OS. A training step allocates and frees the same activation- and gradient-sized
//! blocks every step (candle's backward alone allocates a zeroed gradient and a sum
//! per node), so without fixed thresholds each step page-faults them in again, with the
//! kernel zeroing every page: on TinyConv's float step that was 15 % of the time. Fixed
//! thresholds keep those blocks in the heap for the next step. Peak memory does not
//! grow: a freed block is reused, not added to.
//!
//! The thresholds govern the main heap only: a thread other than the process's main
//! thread (the trainer's large-stack thread, rayon's workers) allocates from an arena
//! of 64 MiB `mmap`ed heaps, which glibc shrinks with `MADV_DONTNEED` as blocks are
//! freed, and the next step faults the pages in again (about 2000 faults, 8 MiB, per
//! float TinyConv step). One arena, the main heap, serves every thread instead.

use std::sync::Once;

/// Blocks up to this size (the largest glibc accepts) come from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;

/// Free heap tops up to this size stay with the process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: libc::c_int = 1 << 30;

/// Makes glibc's malloc keep freed blocks for reuse (see the module docs). Idempotent;
/// a no-op on other C libraries, whose allocators do not have the problem to the same
/// degree. [`crate::trainer::on_large_stack`] calls it.
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `mallopt` takes plain integers and only adjusts malloc's parameters
        // (under its own lock); invalid values are refused with a 0 return.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    });
}

/// Gives the heap's free memory back to the OS (glibc's `malloc_trim`), so that the
/// resident set is the memory in use: the memory example calls it between training
/// steps to measure a step on top of the training state alone. A no-op on other C
/// libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the OS, under malloc's lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `len` zeros written by rayon's pool (see [`approx_hw::buffer::zeros`]).
pub use approx_hw::buffer::zeros;
