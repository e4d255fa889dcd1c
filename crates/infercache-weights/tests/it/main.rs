//! The integration tests of infercache-weights, in one binary: real files, real servers
//! on loopback, a real `redis-server`, the real all-MiniLM-L6-v2.

mod chunking;
mod client;
mod common;
mod faults;
mod minilm;
mod redis_tier;
mod server;
