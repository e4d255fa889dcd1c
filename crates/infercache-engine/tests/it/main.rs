//! Integration tests of the engine, in one binary: real files, real processes.

mod disk_accounting;
mod disk_crash;
mod disk_faults;
mod freshness;
mod hit_ratio;
mod local_reads;
mod memory_accounting;
mod regressions;
mod remote;
mod removals;

/// The `infercache` binary's allocator: the memory tier charges its size classes, and the
/// accounting tests compare those charges with the resident set.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
