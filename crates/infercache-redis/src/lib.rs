//! The shared Redis tier of infercache: one cache for many nodes.
//!
//! [`RedisTier`] implements the engine's [`infercache_engine::RemoteTier`] on a Redis
//! server or a Redis Cluster (the `redis` crate: a connection manager that reconnects by
//! itself, or a cluster connection):
//!
//! - **Values** live under `{prefix}v:{key hex}` with a TTL on every key; each carries its
//!   full key digest and a CRC32 ([`codec`]), so a damaged or foreign value is dropped and
//!   counted, never served. A batch is one `MGET`; writes are one pipeline.
//! - **Faults.** Connect and command timeouts of 50 ms and a circuit breaker
//!   ([`breaker`]): after repeated failures Redis is not called (misses, dropped writes),
//!   a prober pings it, and the tier resumes when it answers. A node starts and serves
//!   while Redis is down.
//! - **Invalidation everywhere.** Epochs live in the hash `{prefix}epochs`; a bump is a
//!   script that raises it to `max(redis, local) + 1` and publishes the change on the
//!   channel of the same name. Every node listens, and on every (re)subscription and
//!   every few seconds pushes its own epochs and adopts Redis's, so a node that missed
//!   messages while disconnected catches up. Epochs only grow.
//! - **Distributed single flight.** A node computing a key holds `{prefix}l:{key hex}`
//!   (`SET NX PX`, renewed while computing, released in the round trip that stores the
//!   value, retried while Redis stalls); other nodes wait for a value fresh for them,
//!   bounded, and compute themselves if the lease vanishes without one (its holder died,
//!   or the value was not to be stored). A lease whose reply came late, or whose caller
//!   gave up, is released with its token: none is left behind.
//! - **Managed local Redis** ([`managed`]): `infercache serve --redis auto`.

pub mod breaker;
pub mod codec;
pub mod config;
pub mod error;
pub mod managed;
#[cfg(feature = "test-support")]
pub mod testing;
mod tier;

pub use config::{RedisConfig, Target, WriteMode};
pub use error::RedisTierError;
pub use infercache_engine::BreakerState;
/// The Redis client this crate is built on, for other crates' own Redis commands (the
/// job queue of distributed bulk jobs) on connections made by [`RedisConfig::client`].
pub use redis;
pub use tier::RedisTier;
