//! The circuit breaker in front of Redis: `failsafe`'s state machine, with its state kept
//! where stats and metrics can read it.
//!
//! Closed: every operation calls Redis. After `failures` consecutive failures (connection
//! errors or timeouts; an error reply such as `OOM` or `READONLY` is an answer, which
//! fails only its command and counts as a success here) it opens: operations skip Redis (misses, dropped writes) for a delay that
//! grows from `min_open` to `max_open`. Then it is half-open: one operation at a time (the
//! tier's prober, which probes on its own so recovery needs no traffic, or a request) is
//! let through as the probe, the others still skip Redis; success closes it, failure opens
//! it again. (failsafe alone lets every caller through while half-open, which against an
//! unresponsive Redis would cost each of them a full timeout.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};
use infercache_engine::BreakerState;

/// Open delays doubling from `min_open` to `max_open`: backon's exponential backoff, in
/// the `Clone` iterator failsafe's policy takes. failsafe keeps a fresh copy and clones it
/// each time the breaker closes; backon's iterator is not `Clone`, so a clone is built anew
/// from the builder, which is what a fresh copy is. (failsafe's own backoffs start at
/// whole seconds, too slow for a cache that must resume within seconds of Redis
/// returning.)
#[derive(Debug)]
struct OpenDelays {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl OpenDelays {
    fn new(min_open: Duration, max_open: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min_open)
            .with_max_delay(max_open.max(min_open))
            .without_max_times();
        Self {
            builder,
            delays: builder.build(),
        }
    }
}

impl Clone for OpenDelays {
    fn clone(&self) -> Self {
        Self {
            builder: self.builder,
            delays: self.builder.build(),
        }
    }
}

impl Iterator for OpenDelays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.delays.next()
    }
}

#[derive(Debug, Default)]
struct Observed {
    state: AtomicU8,
    opened: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct Observer(Arc<Observed>);

impl Instrument for Observer {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.0.state.store(1, Ordering::Release);
        self.0.opened.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("redis tier: circuit breaker open, Redis is not called");
    }

    fn on_half_open(&self) {
        self.0.state.store(2, Ordering::Release);
    }

    fn on_closed(&self) {
        if self.0.state.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis tier: circuit breaker closed, Redis is in use again");
        }
    }
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<OpenDelays>, Observer>,
    observed: Observer,
    /// A half-open probe is in flight.
    probing: Arc<AtomicBool>,
}

impl Breaker {
    /// Opens after `failures` consecutive failures, for `min_open` growing to `max_open`.
    pub fn new(failures: u32, min_open: Duration, max_open: Duration) -> Self {
        let observed = Observer::default();
        let backoff = OpenDelays::new(min_open, max_open);
        let policy = failure_policy::consecutive_failures(failures.max(1), backoff);
        let machine = failsafe::Config::new()
            .failure_policy(policy)
            .instrument(observed.clone())
            .build();
        Self {
            machine,
            observed,
            probing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether to call Redis now: always when closed, never when open, and for one caller
    /// at a time when half-open. A permitted call must end in `success` or `failure`.
    pub fn permits(&self) -> bool {
        if !self.machine.is_call_permitted() {
            return false;
        }
        self.state() != BreakerState::HalfOpen
            || self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Records a successful call.
    pub fn success(&self) {
        self.machine.on_success();
        self.probing.store(false, Ordering::Release);
    }

    /// A permitted call that ended without a result (its caller was cancelled): lets the
    /// next caller probe.
    pub fn abandon(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failed call.
    pub fn failure(&self) {
        self.machine.on_error();
        self.probing.store(false, Ordering::Release);
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match self.observed.0.state.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Times it opened.
    pub fn opened(&self) -> u64 {
        self.observed.0.opened.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_delays_double_to_the_cap_and_a_clone_starts_over() {
        let ms = Duration::from_millis;
        let mut d = OpenDelays::new(ms(250), ms(2000));
        let first: Vec<Duration> = d.by_ref().take(5).collect();
        assert_eq!(first, [ms(250), ms(500), ms(1000), ms(2000), ms(2000)]);
        assert_eq!(d.clone().next(), Some(ms(250)));
    }

    #[test]
    fn opens_after_consecutive_failures_then_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(30), Duration::from_millis(60));
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "failures were not consecutive"
        );
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened(), 1);
        assert!(!b.permits());
        std::thread::sleep(Duration::from_millis(80));
        assert!(b.permits(), "the probe is let through");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.permits(), "one probe at a time");
        b.failure();
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a failed probe opens it again"
        );
        assert_eq!(b.opened(), 2);
        std::thread::sleep(Duration::from_millis(100));
        assert!(b.permits());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.permits());
    }
}
