//! Integration tests of the Redis tier, in one binary, against real `redis-server`
//! processes (a missing Redis fails them; it never skips them).

mod cluster;
mod faults;
mod harness;
mod lease;
mod local_reads;
mod managed;
mod removals;
mod tier;
mod tls;
