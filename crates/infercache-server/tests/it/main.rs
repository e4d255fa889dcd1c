//! Integration tests: real servers on port 0 serving the real all-MiniLM-L6-v2.
//!
//! The model comes from `INFERCACHE_MODEL_DIR`, else it is fetched once into the
//! workspace's `target/model-cache`. Without it these tests fail, loudly: they never skip.

mod body_budget;
mod cache_control;
mod dashboard;
mod embeddings;
mod errors;
mod freshness;
mod heal;
mod kserve;
mod kserve_server;
mod kserve_upstream;
mod lifecycle;
mod metrics;
mod process;
mod promtool;
mod redis;
mod redis_tls;
mod replay;
mod support;
mod tls;
mod upstream;
