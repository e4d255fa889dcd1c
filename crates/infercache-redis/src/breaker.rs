//! The circuit breaker in front of Redis: `failsafe`'s state machine, with its state kept
//! where stats and metrics can read it.
//!
//! Closed: every operation calls Redis. After `failures` consecutive failures (errors or
//! timeouts) it opens: operations skip Redis (misses, dropped writes) for a delay that
//! grows from `min_open` to `max_open`. Then it is half-open: one operation at a time (the
//! tier's prober, which probes on its own so recovery needs no traffic, or a request) is
//! let through as the probe, the others still skip Redis; success closes it, failure opens
//! it again. (failsafe alone lets every caller through while half-open, which against an
//! unresponsive Redis would cost each of them a full timeout.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis is in use.
    Closed,
    /// Redis is not called.
    Open,
    /// The next call probes Redis.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Open delays doubling from a start to a cap. failsafe's own backoffs start at whole
/// seconds, too slow for a cache that must resume within seconds of Redis returning.
#[derive(Debug, Clone)]
struct Doubling {
    next: Duration,
    max: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
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
    machine: StateMachine<ConsecutiveFailures<Doubling>, Observer>,
    observed: Observer,
    /// A half-open probe is in flight.
    probing: Arc<AtomicBool>,
}

impl Breaker {
    /// Opens after `failures` consecutive failures, for `min_open` growing to `max_open`.
    pub fn new(failures: u32, min_open: Duration, max_open: Duration) -> Self {
        let observed = Observer::default();
        let backoff = Doubling {
            next: min_open,
            max: max_open.max(min_open),
        };
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
