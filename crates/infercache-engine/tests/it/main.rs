//! Integration tests of the engine, in one binary: real files, real processes.

mod disk_accounting;
mod disk_crash;
mod disk_faults;
mod freshness;
mod hit_ratio;
mod local_reads;
mod regressions;
mod remote;
mod removals;
